//! Partitions of a replicated partitioned table made by its owner, who is no superuser
//! (adversary 27b, g3): CREATE TABLE … PARTITION OF and ATTACH PARTITION clone rserv's capture
//! trigger, which PostgreSQL allows only with EXECUTE on `_rserv_log_()`; so that function is
//! executable by everyone, and refuses to log through any trigger rserv did not make
//! (`src/capture_check.rs`). alice owns the tables and may register them (granted by the
//! extension's owner); she is no superuser.

use rserv_tests::pair::{assert_ok, number, Pair, DB};
use rserv_tests::roles::{
    self, connect_as, create_roles, exec_as, replicate_as, try_sql, OWNER, REPL,
};
use rserv_tests::Cluster;

const TREE: &str = "CREATE TABLE m (id int, at date, v text, PRIMARY KEY (id, at))
                        PARTITION BY RANGE (at);
                    CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');";

fn log_rows(c: &Cluster) -> i64 {
    number(c, "SELECT count(*) FROM _rserv_log_")
}

#[test]
fn an_owner_who_is_no_superuser_adds_and_attaches_partitions() {
    let p = roles::start_pair("part-own");
    for c in [&p.master, &p.slave] {
        create_roles(c, &["alice"]);
        exec_as(c, OWNER, "SELECT rserv_grant_replication('alice')");
        exec_as(c, "alice", TREE);
    }
    exec_as(
        &p.master,
        "alice",
        "INSERT INTO m SELECT g, date '2026-03-01' + g, 'a' || g FROM generate_series(1, 20) g;
         SELECT rserv_add_table('m'); GRANT SELECT ON m TO rserv_repl;",
    );
    exec_as(&p.slave, "alice", "SELECT rserv_slave_add_table('m')");
    assert_ok(&replicate_as(&p, REPL, &[DB, DB]), "first copy");

    // each of these needed EXECUTE on _rserv_log_() for alice
    exec_as(
        &p.master,
        "alice",
        "CREATE TABLE m_2027 PARTITION OF m FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         INSERT INTO m SELECT g, date '2027-02-01' + g, 'b' || g FROM generate_series(1, 10) g;
         CREATE TABLE m_2028 (LIKE m INCLUDING ALL);
         INSERT INTO m_2028 SELECT g, date '2028-02-01' + g, 'c' || g FROM generate_series(1, 5) g;
         ALTER TABLE m ATTACH PARTITION m_2028 FOR VALUES FROM ('2028-01-01') TO ('2029-01-01');",
    );
    assert_ok(&replicate_as(&p, REPL, &[DB, DB]), "the new partitions");
    p.assert_equal("m");
    // and their rows are captured like any other
    exec_as(
        &p.master,
        "alice",
        "UPDATE m SET v = v || '!' WHERE id % 2 = 0;
         DELETE FROM m WHERE id = 3;
         UPDATE m SET at = date '2027-12-31' WHERE id = 5 AND at < '2027-01-01';
         TRUNCATE m_2028;",
    );
    assert_ok(
        &replicate_as(&p, REPL, &[DB, DB]),
        "changes in the new partitions",
    );
    p.assert_equal("m");
    assert_eq!(
        Pair::rows(&p.slave, "m").len(),
        20 + 10 - 2,
        "2026: 20 rows, 2027: 10, id 3 deleted from both, m_2028 truncated"
    );
}

/// A table owner attaching `_rserv_log_()` to a table of hers by hand (as a row trigger, as a
/// TRUNCATE trigger, under rserv's own trigger names, pointing at another owner's replicated
/// table) writes nothing into the log: the write is refused, naming the trigger.
#[test]
fn a_trigger_rserv_did_not_make_logs_nothing() {
    let cs = roles::start(&["part-spoof"]);
    let c = &cs[0];
    create_roles(c, &["alice", "mallory"]);
    exec_as(c, OWNER, "SELECT rserv_grant_replication('alice')");
    exec_as(c, "alice", TREE);
    exec_as(c, "alice", "SELECT rserv_add_table('m')");
    let root = c.query_strings(DB, "SELECT 'm'::regclass::oid::text")[0][0]
        .clone()
        .expect("m's oid");
    let mut mal = connect_as(c, "mallory");
    // one table of mallory's per attempt: a trigger named like rserv's cannot be dropped again
    // (rserv's drop guard takes it for a partition's), which only ever locks her own table
    let attempts = [
        (
            "x",
            "AFTER INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION _rserv_log_('@1', '1')".to_string(),
            "INSERT INTO {t} VALUES (1)",
        ),
        (
            "_rserv_trigger_t_",
            "AFTER INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION _rserv_log_('1', 'id')".to_string(),
            "INSERT INTO {t} VALUES (2)",
        ),
        (
            "_rserv_truncate_t_",
            "BEFORE TRUNCATE ON {t} FOR EACH STATEMENT EXECUTE FUNCTION _rserv_log_('@root')"
                .to_string(),
            "TRUNCATE {t}",
        ),
        (
            "_rserv_truncate_p_",
            format!(
                "BEFORE TRUNCATE ON {{t}} FOR EACH STATEMENT EXECUTE FUNCTION _rserv_log_('@part', '{root}', '1', '2')"
            ),
            "TRUNCATE {t}",
        ),
    ];
    let before = log_rows(c);
    for (i, (name, definition, write)) in attempts.iter().enumerate() {
        let t = format!("mt{i}");
        try_sql(
            &mut mal,
            &format!("CREATE TABLE {t} (id int PRIMARY KEY); INSERT INTO {t} VALUES (100)"),
        )
        .expect("mallory's table");
        let attached = try_sql(
            &mut mal,
            &format!("CREATE TRIGGER {name} {}", definition.replace("{t}", &t)),
        );
        if attached.is_ok() {
            let write = write.replace("{t}", &t);
            let refused = try_sql(&mut mal, &write);
            assert!(
                refused
                    .as_ref()
                    .is_err_and(|e| e.contains("was not made by rserv") && e.contains(name)),
                "trigger {name}: {write} -> {refused:?}"
            );
        }
        assert_eq!(log_rows(c), before, "trigger {name} wrote into the log");
    }

    // alice's own look-alike on a table she then attaches to her replicated tree is replaced
    // by rserv's (it named another root and other key columns)
    let other = c.query_strings(DB, "SELECT 'mt0'::regclass::oid::text")[0][0]
        .clone()
        .expect("mt0's oid");
    exec_as(
        c,
        "alice",
        &format!(
            "CREATE TABLE m_2027 (LIKE m INCLUDING ALL);
             CREATE TRIGGER _rserv_truncate_p_ BEFORE TRUNCATE ON m_2027 FOR EACH STATEMENT
                 EXECUTE FUNCTION _rserv_log_('@part', '{other}', '3');
             INSERT INTO m_2027 VALUES (1, '2027-05-01', 'x'), (2, '2027-06-01', 'y');
             ALTER TABLE m ATTACH PARTITION m_2027 FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');"
        ),
    );
    let triggers = c.query_strings(
        DB,
        "SELECT count(DISTINCT g.tgargs)::text FROM pg_trigger g
          WHERE g.tgname = '_rserv_truncate_p_'
            AND g.tgrelid IN ('m_2026'::regclass, 'm_2027'::regclass)",
    );
    assert_eq!(
        triggers[0][0].as_deref(),
        Some("1"),
        "m_2027 kept a TRUNCATE trigger rserv did not make"
    );
    let logged = log_rows(c);
    exec_as(c, "alice", "TRUNCATE m_2027");
    let mine = c.query_strings(
        DB,
        &format!("SELECT count(*)::text FROM _rserv_log_ WHERE reloid = {root}"),
    );
    assert!(
        log_rows(c) > logged && mine[0][0].as_deref() != Some("0"),
        "the TRUNCATE of m_2027 is logged for m"
    );
}

/// The capture trigger's check reads rserv's catalog as its owner: a writer with no USAGE on
/// the extension's schema (rserv installed in a schema of its own) is captured as before, in a
/// plain table and in a partition alice added.
#[test]
fn a_writer_without_usage_on_rservs_schema_is_captured() {
    let c = roles::start_with_rserv_in_its_own_schema("part-usage");
    exec_as(
        &c,
        "alice",
        &format!(
            "{TREE}
             CREATE TABLE plain (id int PRIMARY KEY, v text);
             GRANT INSERT, UPDATE, DELETE, SELECT ON m, plain TO clerk;"
        ),
    );
    c.execute(
        DB,
        "SELECT rs.rserv_add_table('m'); SELECT rs.rserv_add_table('plain');",
    );
    exec_as(
        &c,
        "alice",
        "CREATE TABLE m_2027 PARTITION OF m FOR VALUES FROM ('2027-01-01') TO ('2028-01-01')",
    );
    let mut clerk = connect_as(&c, "clerk");
    assert!(
        try_sql(&mut clerk, "SELECT 1 FROM rs._rserv_tables_")
            .is_err_and(|e| e.contains("permission denied")),
        "clerk has no USAGE on rs"
    );
    try_sql(
        &mut clerk,
        "INSERT INTO plain VALUES (1, 'a'), (2, 'b');
         INSERT INTO m VALUES (1, '2026-05-01', 'x'), (2, '2027-05-01', 'y');
         UPDATE m SET v = 'z' WHERE id = 2;",
    )
    .expect("clerk writes to replicated tables");
    let logged = c.query_strings(
        DB,
        "SELECT reloid::regclass::text, count(*)::text FROM rs._rserv_log_ GROUP BY 1 ORDER BY 1",
    );
    assert_eq!(
        logged,
        vec![
            vec![Some("m".to_string()), Some("3".to_string())],
            vec![Some("plain".to_string()), Some("2".to_string())],
        ],
        "every change of clerk's logged"
    );
}

/// A REPEATABLE READ transaction whose snapshot is older than the table's registration, or
/// than the partition it writes into, or than a unique index on a watched table: PostgreSQL
/// fires the capture trigger it sees now, and its checks and configuration read rserv's
/// catalog as of now too (not as of the snapshot, which would refuse the write or log it
/// wrongly). Every such write reaches the slave.
#[test]
fn writers_with_snapshots_older_than_the_registration_are_captured() {
    let p = Pair::start("part-rr");
    let setup = format!(
        "{TREE}
         CREATE TABLE late (id int PRIMARY KEY, v text);
         CREATE TABLE w (id int PRIMARY KEY, a text, b text NOT NULL);"
    );
    p.both(&setup);
    p.master.execute(
        DB,
        "INSERT INTO m VALUES (1, '2026-05-01', 'x');
         INSERT INTO w VALUES (1, 'a', 'b1');
         SELECT rserv_add_table('m'); SELECT rserv_add_table('w', 'a');",
    );
    p.slave.execute(
        DB,
        "SELECT rserv_slave_add_table('m'); SELECT rserv_slave_add_table('w');",
    );
    assert_ok(&p.replicate(&[DB, DB]), "first copy");
    let mut old = p.master.connect(DB);
    old.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .expect("the old snapshot");
    p.master.execute(
        DB,
        "SELECT rserv_add_table('late');
         CREATE TABLE m_2027 PARTITION OF m FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');
         CREATE UNIQUE INDEX w_b ON w (b);",
    );
    p.slave.execute(DB, "SELECT rserv_slave_add_table('late')");
    old.batch_execute(
        "INSERT INTO late VALUES (1, 'old snapshot');
         INSERT INTO m VALUES (2, '2027-05-01', 'into the new partition');
         UPDATE w SET b = 'b2' WHERE id = 1;
         COMMIT",
    )
    .expect("the old transaction's writes");
    assert_ok(&p.replicate(&[DB, DB]), "the old transaction's writes");
    for t in ["late", "m", "w"] {
        p.assert_equal(t);
    }
    assert_eq!(Pair::rows(&p.slave, "late").len(), 1, "late's row arrived");
}
