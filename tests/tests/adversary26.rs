//! Adversary review 26, of the changes since 5d6173e (the apply's replica window, `set_local`
//! without a statement, the extension schema kept for the transaction, the confirm's
//! asynchronous commit, replicate's statement cache). Each finding's test failed before its
//! fix; the other tests are attacks that held, kept as guards.
//!
//! - HIGH (privilege escalation) f1: `catalog::ext_schema()` kept the extension's schema name
//!   for the rest of the transaction, though the schema can be renamed, or the extension
//!   dropped and created elsewhere, inside that transaction (or inside a savepoint that is then
//!   rolled back). The database owner (not a superuser: rserv is a trusted extension, and the
//!   owner of schema `public`, where it is installed by default) then puts a lookalike of one
//!   of rserv's catalog tables (a view calling its own function) under the cached name, and
//!   the next rserv function, a SECURITY DEFINER owned by the bootstrap superuser, reads it:
//!   the owner's function runs as the bootstrap superuser (`ALTER ROLE ... SUPERUSER`).
//!   Reproduced by `a_renamed_extension_schema_is_not_read_under_its_old_name`,
//!   `a_recreated_extension_is_not_read_through_its_old_schema` and
//!   `a_savepoint_rolled_back_leaves_no_stale_extension_schema`.
//!   FIXED: the kept name is forgotten at every relation or schema invalidation (relcache and
//!   `pg_namespace` syscache callbacks), which PostgreSQL delivers for a rename, a DROP or
//!   CREATE EXTENSION and a rolled-back savepoint, as well as at the transaction's end.
//! - guards (held): `no_replica_mode_left_by_exception_blocks_prepare_or_discard`: a plain
//!   replicator's apply inside a plpgsql EXCEPTION block never leaves replica mode behind; a
//!   window opened in a block that fails is rolled back with its record; PREPARE TRANSACTION
//!   ends a transaction's window and keeps a session's, which rserv's next function closes;
//!   DISCARD ALL and RESET ALL drop mode and record together.
//!   `a_confirm_lost_in_a_master_crash_loses_nothing`: the confirm commits without waiting for
//!   the disk; a master crash that loses it leaves the master one change set behind the slave,
//!   and the next cycle confirms the slave's own record again and goes on from there.
//! - HIGH (privilege escalation) p1 (found on the way, older than the changes reviewed):
//!   `renaming_the_extension_schema_hands_no_guard_to_its_owner`: rserv's event-trigger guards
//!   (`sql/finalize.sql`, SECURITY DEFINER, bootstrap superuser) call rserv's functions as
//!   `@extschema@.name()`, a name fixed at CREATE EXTENSION. The owner of that schema (the
//!   database owner, for `public`) renames it, creates a schema of the old name holding
//!   functions of the same names, and the next DDL that fires a guard runs them as the
//!   bootstrap superuser. FIXED: a guard on ALTER SCHEMA (`_rserv_guard_schema_`) refuses
//!   to let the extension's schema lose the name its functions are called by.

use replicate::cycle::{self, CycleOptions, Endpoints};
use rserv_tests::pair::{Pair, DB};
use rserv_tests::roles::{self, connect_as, is_superuser, try_sql, try_value, OWNER, REPL};
use rserv_tests::Cluster;

const FORGED_MASTER: &str = "00000000-0000-4000-8000-00000000f00d";
const LOOKALIKE_NODE: &str = "00000000-0000-4000-8000-000000000026";

/// The last row's first column of the last statement of `sql` that returned rows.
fn last_value(client: &mut postgres::Client, sql: &str) -> Result<Option<String>, String> {
    let msgs = client
        .simple_query(sql)
        .map_err(|e| rserv_tests::describe_pg_error(&e))?;
    let mut last = None;
    for m in msgs {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            last = Some(r.get(0).map(str::to_owned));
        }
    }
    Ok(last.flatten())
}

/// A lookalike of rserv's `_rserv_node_` in `schema`: a view whose rows come from a function
/// of the database owner's that tries to make it a superuser (it can only when a superuser
/// runs it).
fn lookalike(schema: &str) -> String {
    format!(
        "CREATE FUNCTION {schema}.adv26_escalate() RETURNS uuid LANGUAGE plpgsql AS $f$
         BEGIN
           BEGIN
             EXECUTE 'ALTER ROLE {OWNER} SUPERUSER';
           EXCEPTION WHEN insufficient_privilege THEN NULL;
           END;
           RETURN '{LOOKALIKE_NODE}'::uuid;
         END $f$;
         CREATE VIEW {schema}._rserv_node_ AS SELECT {schema}.adv26_escalate() AS node_id;"
    )
}

/// Runs the database owner's attack `sql` (one transaction, ending with a call of
/// `rserv_node_id()`), commits it if it got that far, and checks that no lookalike was read
/// with rserv's rights.
fn attack(c: &Cluster, sql: &str, what: &str) {
    let mut o = connect_as(c, OWNER);
    assert!(!is_superuser(c, OWNER), "{OWNER} starts as a plain role");
    let got = last_value(&mut o, &format!("BEGIN; {sql}"));
    let _ = try_sql(&mut o, "COMMIT");
    assert!(
        !is_superuser(c, OWNER),
        "{what}: rserv read the lookalike as the bootstrap superuser: {OWNER} is now a superuser \
         (rserv_node_id() returned {got:?})"
    );
    assert_ne!(
        got,
        Ok(Some(LOOKALIKE_NODE.to_string())),
        "{what}: rserv_node_id() read the lookalike table"
    );
}

/// f1: the owner of the extension's schema renames it and puts a lookalike under the old name
/// in the same transaction.
#[test]
fn a_renamed_extension_schema_is_not_read_under_its_old_name() {
    let cs = roles::start(&["a26-rename"]);
    attack(
        &cs[0],
        &format!(
            "SELECT rserv_node_id();
             ALTER SCHEMA public RENAME TO rserv_home;
             CREATE SCHEMA public;
             {}
             SELECT rserv_home.rserv_node_id();",
            lookalike("public")
        ),
        "schema renamed in the transaction",
    );
}

/// f1: the extension's owner drops it and creates it in another schema, leaving a lookalike
/// where it was, in one transaction.
#[test]
fn a_recreated_extension_is_not_read_through_its_old_schema() {
    let cs = roles::start(&["a26-recreate"]);
    attack(
        &cs[0],
        &format!(
            "SELECT rserv_node_id();
             DROP EXTENSION rserv;
             CREATE SCHEMA rserv_home;
             CREATE EXTENSION rserv SCHEMA rserv_home;
             {}
             SELECT rserv_home.rserv_node_id();",
            lookalike("public")
        ),
        "extension dropped and created elsewhere in the transaction",
    );
}

/// f1: the schema rserv used inside a savepoint that was rolled back is not used after it.
#[test]
fn a_savepoint_rolled_back_leaves_no_stale_extension_schema() {
    let cs = roles::start(&["a26-savepoint"]);
    attack(
        &cs[0],
        &format!(
            "CREATE SCHEMA elsewhere;
             SAVEPOINT s;
             DROP EXTENSION rserv;
             CREATE EXTENSION rserv SCHEMA elsewhere;
             SELECT elsewhere.rserv_node_id();
             ROLLBACK TO SAVEPOINT s;
             {}
             SELECT public.rserv_node_id();",
            lookalike("elsewhere")
        ),
        "savepoint rolled back",
    );
}

fn mode(client: &mut postgres::Client) -> String {
    try_value(client, "SHOW session_replication_role")
        .expect("SHOW session_replication_role")
        .unwrap_or_default()
}

fn record(client: &mut postgres::Client) -> String {
    try_value(client, "SHOW rserv.replica_window")
        .expect("SHOW rserv.replica_window")
        .unwrap_or_default()
}

fn apply_begin(syncid: i64) -> String {
    format!("SELECT rserv_apply_begin({syncid}, '{FORGED_MASTER}', rserv_version())")
}

/// Guard: the replica window never outlives what opened it where a plpgsql EXCEPTION block,
/// PREPARE TRANSACTION, DISCARD ALL or RESET ALL intervene.
#[test]
fn no_replica_mode_left_by_exception_blocks_prepare_or_discard() {
    let c = Cluster::start_with("a26-window", &[("max_prepared_transactions", "4")]);
    roles::setup(&c);

    // a plain replicator asking for the session window, its apply inside EXCEPTION blocks
    let mut r = connect_as(&c, REPL);
    try_sql(&mut r, "SET rserv.replica_session = on").expect("SET");
    for (syncid, fails) in [(1, true), (2, false)] {
        let raise = if fails { "RAISE EXCEPTION 'x';" } else { "" };
        try_sql(
            &mut r,
            &format!(
                "BEGIN;
                 DO $$ BEGIN
                   BEGIN PERFORM {}; {raise}
                   EXCEPTION WHEN raise_exception THEN NULL; END;
                 END $$;",
                apply_begin(syncid).trim_start_matches("SELECT ")
            ),
        )
        .expect("the block");
        assert_eq!(mode(&mut r), "origin", "{REPL} inside its transaction");
        try_sql(&mut r, "COMMIT").expect("COMMIT");
        assert_eq!(mode(&mut r), "origin", "{REPL} after its transaction");
    }

    let mut s = connect_as(&c, "postgres");
    // a superuser's window opened in a block that fails is rolled back, record and all
    try_sql(&mut s, "SET rserv.replica_session = on").expect("SET");
    try_sql(
        &mut s,
        &format!(
            "BEGIN;
             DO $$ BEGIN
               BEGIN PERFORM {}; RAISE EXCEPTION 'x';
               EXCEPTION WHEN raise_exception THEN NULL; END;
             END $$;",
            apply_begin(10).trim_start_matches("SELECT ")
        ),
    )
    .expect("the block");
    assert_eq!(mode(&mut s), "origin", "after the failed block");
    assert_eq!(record(&mut s), "", "the record after the failed block");
    try_sql(&mut s, "ROLLBACK").expect("ROLLBACK");

    // PREPARE TRANSACTION: a session's window stays (and rserv's next function closes it), a
    // transaction's ends
    try_sql(
        &mut s,
        &format!("BEGIN; {}; PREPARE TRANSACTION 'a26'", apply_begin(11)),
    )
    .expect("prepare");
    assert_eq!(mode(&mut s), "replica", "a session window after PREPARE");
    try_value(&mut s, "SELECT rserv_node_id()").expect("rserv_node_id");
    assert_eq!(
        mode(&mut s),
        "origin",
        "rserv's next function after PREPARE"
    );
    assert_eq!(record(&mut s), "", "the record after the close");
    try_sql(&mut s, "COMMIT PREPARED 'a26'").expect("COMMIT PREPARED");
    try_sql(&mut s, "SET rserv.replica_session = off").expect("SET");
    try_sql(
        &mut s,
        &format!("BEGIN; {}; PREPARE TRANSACTION 'a26b'", apply_begin(12)),
    )
    .expect("prepare");
    assert_eq!(
        mode(&mut s),
        "origin",
        "a transaction's window after PREPARE"
    );
    assert_eq!(record(&mut s), "", "a transaction's record after PREPARE");
    try_sql(&mut s, "ROLLBACK PREPARED 'a26b'").expect("ROLLBACK PREPARED");

    // DISCARD ALL and RESET ALL take mode and record together
    try_sql(&mut s, "SET rserv.replica_session = on").expect("SET");
    for (syncid, reset) in [(13, "DISCARD ALL"), (14, "RESET ALL")] {
        try_sql(&mut s, "SET rserv.replica_session = on").expect("SET");
        try_sql(&mut s, &format!("BEGIN; {}; COMMIT", apply_begin(syncid))).expect("apply");
        assert_eq!(mode(&mut s), "replica", "a session window before {reset}");
        try_sql(&mut s, reset).expect(reset);
        assert_eq!(mode(&mut s), "origin", "after {reset}");
        assert_eq!(record(&mut s), "", "the record after {reset}");
    }
}

/// p1 (found on the way, older than the changes reviewed): rserv's event-trigger functions
/// (`sql/finalize.sql`, SECURITY DEFINER, owned by the bootstrap superuser) call rserv's
/// functions by the schema name `@extschema@` had at CREATE EXTENSION. The owner of that
/// schema (the database owner for `public`) renames it, creates another schema of the old name
/// with functions of the same names, and the next DDL that fires a guard runs them as the
/// bootstrap superuser.
#[test]
fn renaming_the_extension_schema_hands_no_guard_to_its_owner() {
    let cs = roles::start(&["a26-guards"]);
    let c = &cs[0];
    let mut o = connect_as(c, OWNER);
    // another schema may still be renamed
    try_sql(
        &mut o,
        "CREATE SCHEMA adv26_other; ALTER SCHEMA adv26_other RENAME TO adv26_renamed",
    )
    .expect("renaming another schema");
    let escalate = |name: &str| {
        format!(
            "CREATE FUNCTION public.{name}() RETURNS bool LANGUAGE plpgsql AS $f$
             BEGIN
               BEGIN
                 EXECUTE 'ALTER ROLE {OWNER} SUPERUSER';
               EXCEPTION WHEN insufficient_privilege THEN NULL;
               END;
               RETURN true; -- (rserv changing its own triggers: the guard lets it pass)
             END $f$;"
        )
    };
    let got = try_sql(
        &mut o,
        &format!(
            "ALTER SCHEMA public RENAME TO rserv_home;
             CREATE SCHEMA public;
             {}
             {}
             CREATE TABLE public.adv26_fires_the_guard (id int);",
            escalate("_rserv_internal_ddl_"),
            escalate("_rserv_own_triggers_ddl_")
        ),
    );
    assert!(
        !is_superuser(c, OWNER),
        "rserv's DDL guard ran the schema owner's lookalike as the bootstrap superuser: {OWNER} \
         is now a superuser ({got:?})"
    );
    let e = got.expect_err("renaming the extension's schema is refused");
    assert!(e.contains("cannot be renamed"), "{e}");
    // nor in replica mode, for an owner who may set it (event triggers are ORIGIN by default)
    c.execute(
        "postgres",
        &format!("GRANT SET ON PARAMETER session_replication_role TO {OWNER}"),
    );
    let e = try_sql(
        &mut o,
        "SET session_replication_role = replica; ALTER SCHEMA public RENAME TO rserv_home",
    )
    .expect_err("renaming the extension's schema in replica mode is refused");
    assert!(e.contains("cannot be renamed"), "in replica mode: {e}");
}

/// Guard: the confirm commits without waiting for the disk; a master crash that loses it
/// loses no change.
#[test]
fn a_confirm_lost_in_a_master_crash_loses_nothing() {
    // durable commits, but asynchronous ones stay in the WAL buffers for up to ten seconds
    let p = Pair::start_with(
        "a26-confirm",
        &[
            ("synchronous_commit", "on"),
            ("wal_writer_delay", "10000ms"),
        ],
    );
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.master.execute(
        DB,
        "INSERT INTO t SELECT g, 'a' FROM generate_series(1, 50) g",
    );
    p.sync();
    p.master.execute(
        DB,
        "UPDATE t SET v = 'b' WHERE id <= 10; DELETE FROM t WHERE id > 45",
    );
    // a cycle that does not clean the log (whose durable commit would flush the confirm),
    // its sessions still open (a backend's exit may flush it too)
    let mut session = p.session();
    {
        let mut ep = Endpoints {
            master: &mut session.master,
            master_rs: &session.master_rs,
            slave: &mut session.slave,
            slave_rs: &session.slave_rs,
        };
        let outcome = cycle::run(
            &mut ep,
            &CycleOptions::default(),
            &mut cycle::Session::default(),
            None,
        )
        .expect("the cycle");
        assert!(
            matches!(outcome, cycle::Outcome::Applied { .. }),
            "{outcome:?}"
        );
    }
    // the confirm of that change set is likely in the master's WAL buffers only
    p.master.stop_immediate();
    drop(session);
    p.master.start_again();
    // (usually lost: the last change set is still unconfirmed on the master)
    let unconfirmed = roles::value(
        &p.master,
        "SELECT count(*) FROM _rserv_sync_ WHERE status = 0",
    );
    eprintln!("unconfirmed change sets on the master after its crash: {unconfirmed:?}");
    p.master.execute(
        DB,
        "INSERT INTO t VALUES (100, 'c'); UPDATE t SET v = 'd' WHERE id = 1",
    );
    p.sync();
    p.assert_equal("t");
    p.master.execute(DB, "DELETE FROM t WHERE id = 2");
    p.sync();
    p.assert_equal("t");
}
