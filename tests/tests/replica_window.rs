//! The apply's replica window (`src/replica_window.rs`): replica mode stays on across a change
//! set's statements, and with `rserv.replica_session` across change sets, but only for a
//! caller that may set `session_replication_role` itself; rserv's schema work and its other
//! functions run in the session's own mode.

use rserv_tests::daemon::{eventually, Daemon};
use rserv_tests::pair::{assert_ok, Pair, DB};
use rserv_tests::roles::{self, connect_as, create_roles, exec_as, try_sql, try_value, REPL};
use rserv_tests::{run_replicate, Cluster};

const FORGED_MASTER: &str = "00000000-0000-4000-8000-00000000f00d";

fn mode(client: &mut postgres::Client) -> String {
    try_value(client, "SHOW session_replication_role")
        .expect("SHOW session_replication_role")
        .unwrap_or_default()
}

/// Begins applying (forged) change set `syncid` in a new transaction of `client`.
fn begin(client: &mut postgres::Client, syncid: i64) {
    try_sql(
        client,
        &format!("BEGIN; SELECT rserv_apply_begin({syncid}, '{FORGED_MASTER}', rserv_version())"),
    )
    .expect("the apply begins");
}

/// A replicator that may not set replica mode never has it outside rserv's statements, even
/// when it asks to keep it; one granted SET on it (PostgreSQL 15 and later) and a superuser
/// keep it between change sets when they ask, and lose it at rserv's next other function.
#[test]
fn only_a_role_that_may_set_replica_mode_keeps_it() {
    let cs = roles::start(&["rw-roles"]);
    let c = &cs[0];
    create_roles(c, &["repl_set"]);
    exec_as(c, "app_owner", "SELECT rserv_grant_replication('repl_set')");
    c.execute(
        "postgres",
        "GRANT SET ON PARAMETER session_replication_role TO repl_set",
    );

    // the plain replicator: per-statement replica mode only
    let mut r = connect_as(c, REPL);
    try_sql(&mut r, "SET rserv.replica_session = on").expect("SET");
    begin(&mut r, 1);
    assert_eq!(mode(&mut r), "origin", "inside the apply, for {REPL}");
    try_sql(&mut r, "COMMIT").expect("COMMIT");
    assert_eq!(mode(&mut r), "origin", "after the apply, for {REPL}");

    // may set it itself: kept for the next change set while it asks
    for (user, syncid) in [("repl_set", 2), ("postgres", 4)] {
        let mut s = connect_as(c, user);
        try_sql(&mut s, "SET rserv.replica_session = on").expect("SET");
        begin(&mut s, syncid);
        assert_eq!(mode(&mut s), "replica", "inside the apply, for {user}");
        try_sql(&mut s, "COMMIT").expect("COMMIT");
        assert_eq!(mode(&mut s), "replica", "after the apply, for {user}");
        // rserv's other functions run in the session's own mode, and leave it there
        try_value(&mut s, "SELECT rserv_node_id()").expect("rserv_node_id");
        assert_eq!(
            mode(&mut s),
            "origin",
            "after another rserv function, for {user}"
        );
        // without the setting, the window ends with the transaction
        try_sql(&mut s, "SET rserv.replica_session = off").expect("SET");
        begin(&mut s, syncid + 1);
        assert_eq!(mode(&mut s), "replica", "inside the apply, for {user}");
        try_sql(&mut s, "COMMIT").expect("COMMIT");
        assert_eq!(
            mode(&mut s),
            "origin",
            "after a transaction's window, for {user}"
        );
    }

    // a session that stops acting as a role that may: the window closes at its next apply
    let mut s = connect_as(c, "postgres");
    try_sql(&mut s, "SET rserv.replica_session = on").expect("SET");
    begin(&mut s, 6);
    try_sql(&mut s, "COMMIT").expect("COMMIT");
    assert_eq!(mode(&mut s), "replica", "after the superuser's apply");
    try_sql(&mut s, &format!("SET ROLE {REPL}")).expect("SET ROLE");
    begin(&mut s, 7);
    assert_eq!(
        mode(&mut s),
        "origin",
        "inside {REPL}'s apply after SET ROLE"
    );
    try_sql(&mut s, "COMMIT").expect("COMMIT");
    assert_eq!(mode(&mut s), "origin", "after {REPL}'s apply");
}

/// The daemon keeps its slave session in replica mode between change sets; a change set with
/// schema changes must still run them in the session's own mode, as before: the slave's event
/// triggers (rserv's DDL guards, a DBA's audit) see them, and they pass down a cascade.
#[test]
fn schema_changes_pass_down_a_cascade_of_daemons() {
    let cs = rserv_tests::pair::start_clusters(&["rw-a", "rw-b", "rw-c"]);
    let (a, b, c) = (&cs[0], &cs[1], &cs[2]);
    a.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 100) i;
         SELECT rserv_add_table('t');",
    );
    let once = |from: &Cluster, to: &Cluster| {
        let out = run_replicate(&[
            "--master",
            &from.conninfo(DB),
            "--slave",
            &to.conninfo(DB),
            "--create-tables",
            DB,
            DB,
        ]);
        assert_ok(&out, "replicate");
    };
    once(a, b);
    b.execute(DB, "SELECT rserv_add_table('t')");
    once(b, c);
    b.execute(
        DB,
        "CREATE TABLE ddl_seen (tag text);
         CREATE FUNCTION note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.ddl_seen SELECT command_tag FROM pg_event_trigger_ddl_commands(); END $$;
         CREATE EVENT TRIGGER note_ddl ON ddl_command_end EXECUTE FUNCTION note_ddl();",
    );
    let daemon = |from: &Cluster, to: &Cluster| {
        Daemon::start(&[
            "run".into(),
            "--interval=0.2".into(),
            "--master".into(),
            from.conninfo(DB),
            "--slave".into(),
            to.conninfo(DB),
            DB.into(),
            DB.into(),
        ])
    };
    let ab = daemon(a, b);
    let bc = daemon(b, c);
    // rows first: the daemons' sessions are in replica mode when the schema change arrives
    for round in 0..3 {
        a.execute(
            DB,
            &format!("UPDATE t SET v = v || '{round}' WHERE id % 3 = {round}"),
        );
        let want = Pair::rows(a, "t");
        eventually(60, "rows reach C", || Pair::rows(c, "t") == want);
    }
    a.execute(
        DB,
        "ALTER TABLE t ADD COLUMN n int DEFAULT 5;
         CREATE INDEX t_v ON t (v);
         UPDATE t SET n = id WHERE id < 10;",
    );
    a.execute(DB, "INSERT INTO t VALUES (101, 'after', 7)");
    let want = Pair::rows(a, "t");
    eventually(60, "the schema change and rows reach C", || {
        Pair::rows(c, "t") == want
    });
    let indexes = |x: &Cluster| {
        x.query_strings(
            DB,
            "SELECT indexname FROM pg_indexes WHERE tablename = 't' ORDER BY 1",
        )
    };
    assert_eq!(indexes(a), indexes(c), "C's indexes of t differ from A's");
    let seen: Vec<String> = b
        .query_strings(DB, "SELECT DISTINCT tag FROM ddl_seen ORDER BY 1")
        .into_iter()
        .flatten()
        .flatten()
        .collect();
    for tag in ["ALTER TABLE", "CREATE INDEX"] {
        assert!(
            seen.iter().any(|t| t == tag),
            "B's event trigger did not see the {tag} rserv applied there (saw {seen:?})"
        );
    }
    drop(ab);
    drop(bc);
}

/// A close that is rolled back (the transaction that called another rserv function failed, or
/// went back to a savepoint) brings the window back whole: the next rserv function closes it
/// again, and the session never stays in replica mode behind rserv's back.
#[test]
fn a_rolled_back_close_leaves_no_replica_mode_behind() {
    let cs = roles::start(&["rw-rollback"]);
    let c = &cs[0];
    let mut s = connect_as(c, "postgres");
    try_sql(&mut s, "SET rserv.replica_session = on").expect("SET");
    let mut syncid = 10;
    let mut open_window = |s: &mut postgres::Client| {
        syncid += 1;
        begin(s, syncid);
        try_sql(s, "COMMIT").expect("COMMIT");
        assert_eq!(mode(s), "replica", "after the apply");
    };
    // the whole transaction rolls back: by ROLLBACK, or by an error
    for ending in ["ROLLBACK", "SELECT 1 / 0"] {
        open_window(&mut s);
        let _ = try_sql(&mut s, &format!("BEGIN; SELECT rserv_node_id(); {ending}"));
        let _ = try_sql(&mut s, "ROLLBACK");
        assert_eq!(
            mode(&mut s),
            "replica",
            "the close was undone by {ending:?}"
        );
        try_value(&mut s, "SELECT rserv_node_id()").expect("rserv_node_id");
        assert_eq!(
            mode(&mut s),
            "origin",
            "rserv's next function after {ending:?}"
        );
    }
    // back to a savepoint taken inside a transaction's window
    try_sql(&mut s, "SET rserv.replica_session = off").expect("SET");
    begin(&mut s, 30);
    try_sql(
        &mut s,
        "SAVEPOINT a; SELECT rserv_node_id(); ROLLBACK TO SAVEPOINT a",
    )
    .expect("savepoint");
    assert_eq!(mode(&mut s), "replica", "back at the savepoint");
    try_value(&mut s, "SELECT rserv_node_id()").expect("rserv_node_id");
    assert_eq!(
        mode(&mut s),
        "origin",
        "rserv's next function in the transaction"
    );
    try_sql(&mut s, "COMMIT").expect("COMMIT");
    assert_eq!(mode(&mut s), "origin", "after the transaction");
    // and the session's own DDL is seen by event triggers again (rserv's guards among them)
    c.execute(
        DB,
        "CREATE TABLE ddl_seen (tag text);
         CREATE FUNCTION note_ddl() RETURNS event_trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO public.ddl_seen SELECT command_tag FROM pg_event_trigger_ddl_commands(); END $$;
         CREATE EVENT TRIGGER note_ddl ON ddl_command_end EXECUTE FUNCTION note_ddl();",
    );
    try_sql(&mut s, "CREATE TABLE after_window (id int)").expect("CREATE TABLE");
    assert_eq!(
        try_value(&mut s, "SELECT count(*)::text FROM ddl_seen").expect("count"),
        Some("1".to_string()),
        "the event trigger did not see the session's DDL"
    );
}

/// The window's record is rserv's alone: a replicator cannot read or set it, and whatever a
/// superuser writes into it, a close only ever leaves replica mode, never enters it.
#[test]
fn a_forged_window_record_changes_no_mode() {
    let cs = roles::start(&["rw-forged"]);
    let c = &cs[0];
    let mut r = connect_as(c, REPL);
    // (before rserv's library is loaded, the name is anyone's placeholder: load it)
    try_value(&mut r, "SELECT rserv_node_id()").expect("rserv_node_id");
    for sql in [
        "SET rserv.replica_window = 'session:origin'",
        "SELECT pg_catalog.set_config('rserv.replica_window', 'transaction:origin', false)",
        "SHOW rserv.replica_window",
    ] {
        let e = try_sql(&mut r, sql).expect_err(sql);
        assert!(
            e.contains("42501") || e.contains("permission denied"),
            "{sql} as {REPL}: {e}"
        );
    }
    let mut s = connect_as(c, "postgres");
    for (by_hand, record, after) in [
        ("origin", "session:replica", "origin"),
        ("origin", "transaction:replica", "origin"),
        ("local", "session:garbage", "local"),
        ("replica", "nonsense", "replica"),
        ("replica", "session:local", "local"),
    ] {
        try_sql(
            &mut s,
            &format!(
                "SET session_replication_role = {by_hand}; SET rserv.replica_window = '{record}'"
            ),
        )
        .expect("SET");
        try_value(&mut s, "SELECT rserv_node_id()").expect("rserv_node_id");
        assert_eq!(mode(&mut s), after, "mode {by_hand} with record {record:?}");
        assert_eq!(
            try_value(&mut s, "SHOW rserv.replica_window").expect("SHOW"),
            Some(String::new()),
            "the record after a close (mode {by_hand}, record {record:?})"
        );
    }
}
