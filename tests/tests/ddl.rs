//! DDL in the stream: schema changes to a replicated table on the master reach the slaves at
//! their point of the change-set stream, under concurrent writes, through a cascade; what
//! cannot follow is refused on the master; a slave that cannot follow stops with a clear error,
//! applies nothing, and resumes once fixed.

use replicate::cycle::Outcome;
use rserv_tests::oracle::{self, options};
use rserv_tests::pair::{assert_ok, number, Pair, DB};
use rserv_tests::roles::try_sql;
use rserv_tests::{run_replicate, Cluster};
use std::sync::atomic::{AtomicBool, Ordering};

/// The shape of `table` as `pg_dump` would compare it: columns (name, type, NOT NULL, default,
/// comment), constraints, indexes (rserv's own triggers aside), as text.
fn shape(c: &Cluster, table: &str) -> Vec<String> {
    c.query_strings(
        DB,
        &format!(
            "SELECT 'column ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                    || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
                    || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
                    || coalesce(' comment ' || col_description(a.attrelid, a.attnum), '')
               FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attrelid = '{table}'::regclass AND a.attnum > 0 AND NOT a.attisdropped
             UNION ALL
             SELECT 'constraint ' || conname || ' ' || pg_get_constraintdef(oid)
               FROM pg_constraint WHERE conrelid = '{table}'::regclass
             UNION ALL
             SELECT 'index ' || pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = '{table}'::regclass
             ORDER BY 1"
        ),
    )
    .into_iter()
    .map(|r| r[0].clone().unwrap_or_default())
    .collect()
}

fn assert_same(p: &Pair, table: &str, what: &str) {
    assert_eq!(
        shape(&p.master, table),
        shape(&p.slave, table),
        "after {what}: the slave's {table} is not shaped like the master's"
    );
    assert_eq!(
        Pair::rows(&p.master, table),
        Pair::rows(&p.slave, table),
        "after {what}: {table} differs"
    );
}

#[test]
fn schema_changes_follow_the_stream_under_writes() {
    let p = Pair::start("ddl");
    p.master.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, a text, b int, w int NOT NULL DEFAULT 0);
         INSERT INTO t SELECT i, 'a' || i, i % 7 - 3, 0 FROM generate_series(1, 200) i;
         SELECT rserv_add_table('t');",
    );
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "create tables");
    assert_same(&p, "t", "the initial copy");
    let mut s = p.session();
    // the run above had no --server: the slave is known by its node id, as server 1
    let opts = options(1);

    // a writer keeps changing rows (only columns no step touches) while the steps run
    let stop = AtomicBool::new(false);
    let steps: &[(&str, &str)] = &[
        ("ADD COLUMN with a constant default", "ALTER TABLE t ADD COLUMN c text DEFAULT 'x'"),
        ("ADD COLUMN with a default computed once (now())", "ALTER TABLE t ADD COLUMN d timestamptz DEFAULT now()"),
        ("ADD COLUMN with a volatile default (a rewrite)", "ALTER TABLE t ADD COLUMN e float8 DEFAULT random()"),
        ("SET DEFAULT", "ALTER TABLE t ALTER COLUMN c SET DEFAULT 'y'"),
        ("DROP DEFAULT", "ALTER TABLE t ALTER COLUMN c DROP DEFAULT; ALTER TABLE t ALTER COLUMN c SET DEFAULT 'z'"),
        (
            "SET NOT NULL after fixing the rows in the same transaction",
            "BEGIN; UPDATE t SET c = 'fixed' WHERE id % 3 = 0; UPDATE t SET c = 'was null' WHERE c IS NULL;
             ALTER TABLE t ALTER COLUMN c SET NOT NULL; COMMIT",
        ),
        ("DROP NOT NULL", "ALTER TABLE t ALTER COLUMN c DROP NOT NULL"),
        (
            "ADD CONSTRAINT CHECK after fixing the rows",
            "BEGIN; UPDATE t SET b = abs(b); ALTER TABLE t ADD CONSTRAINT b_positive CHECK (b >= 0); COMMIT",
        ),
        ("ALTER COLUMN TYPE (a rewrite)", "ALTER TABLE t ALTER COLUMN b TYPE bigint"),
        ("ALTER COLUMN TYPE without a rewrite", "ALTER TABLE t ALTER COLUMN a TYPE varchar(40)"),
        ("CREATE INDEX", "CREATE INDEX t_w ON t (w); CREATE UNIQUE INDEX t_a_id ON t (a, id)"),
        ("DROP CONSTRAINT, DROP INDEX", "ALTER TABLE t DROP CONSTRAINT b_positive; DROP INDEX t_w"),
        ("COMMENT", "COMMENT ON TABLE t IS 'the table'; COMMENT ON COLUMN t.a IS 'a column'"),
        ("DROP COLUMN", "ALTER TABLE t DROP COLUMN e"),
        (
            "several changes in one transaction",
            "BEGIN; ALTER TABLE t ADD COLUMN f int DEFAULT 1; UPDATE t SET f = id WHERE id < 50;
             ALTER TABLE t ALTER COLUMN f SET DEFAULT 2; ALTER TABLE t DROP COLUMN d; COMMIT",
        ),
    ];
    // a failing step must stop the writer too, or the scope would wait for it forever
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|sc| {
        let _stop_writer = StopOnDrop(&stop);
        let writer = sc.spawn(|| {
            let mut w = p.master.connect(DB);
            let mut i = 0i64;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = 1 + (i * 37) % 260;
                let done = w.batch_execute(&format!(
                    "INSERT INTO t (id, w) VALUES ({id}, 1) ON CONFLICT (id) DO UPDATE SET w = t.w + 1;
                     DELETE FROM t WHERE id = {} AND w > 3;",
                    1 + (i * 53) % 260
                ));
                // a step that updates rows and then alters the table may deadlock with it
                if let Err(e) = done {
                    assert_eq!(
                        e.code(),
                        Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED),
                        "writer: {e}"
                    );
                }
            }
            i
        });
        for (what, sql) in steps {
            // either side of a deadlock may be the one PostgreSQL cancels: a step is one
            // transaction, so it is simply run again
            for attempt in 1.. {
                match p.master.connect(DB).batch_execute(sql) {
                    Ok(()) => break,
                    Err(e)
                        if attempt < 5
                            && e.code()
                                == Some(&postgres::error::SqlState::T_R_DEADLOCK_DETECTED) => {}
                    Err(e) => panic!("{what}: {e:?}"),
                }
            }
            let checked = oracle::assert_cycle(&mut s, &opts, what);
            assert!(
                matches!(checked.outcome, Outcome::Applied { .. }),
                "{what}: nothing was applied"
            );
            assert_eq!(
                shape(&p.master, "t"),
                shape(&p.slave, "t"),
                "after {what}: the slave's t is not shaped like the master's"
            );
        }
        stop.store(true, Ordering::Relaxed);
        let writes = writer.join().expect("writer thread");
        assert!(writes > 0, "the writer never ran");
    });
    oracle::assert_cycle(&mut s, &opts, "after the writer stopped");
    assert_same(&p, "t", "the last cycle");

    // renames: the slave's table follows (the oracle reads tables by the slave's names, so
    // these are compared after the cycle)
    for (what, sql, table) in [
        ("RENAME COLUMN", "ALTER TABLE t RENAME COLUMN a TO a2", "t"),
        (
            "RENAME of a key column",
            "ALTER TABLE t RENAME COLUMN id TO ident",
            "t",
        ),
        (
            "RENAME TABLE",
            "ALTER TABLE t RENAME TO t2; UPDATE t2 SET w = w + 10 WHERE ident < 5",
            "t2",
        ),
        (
            "SET SCHEMA",
            "CREATE SCHEMA other; ALTER TABLE t2 SET SCHEMA other",
            "other.t2",
        ),
    ] {
        p.master.execute(DB, sql);
        s.cycle().unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_same(&p, table, what);
    }
    p.master.execute(
        DB,
        "UPDATE other.t2 SET a2 = 'after the renames' WHERE ident % 10 = 1; DELETE FROM other.t2 WHERE ident = 2",
    );
    s.cycle().expect("a cycle after the renames");
    assert_same(&p, "other.t2", "changes after the renames");
    let registered = p
        .slave
        .query_strings(DB, "SELECT tname, key::text FROM _rserv_slave_tables_");
    assert_eq!(
        registered,
        vec![vec![
            Some("other.t2".to_string()),
            Some("{ident}".to_string())
        ]],
        "the slave's registration follows the renames"
    );
}

#[test]
fn what_cannot_follow_is_refused_on_the_master() {
    let p = Pair::start("ddl-refuse");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v int)", "t", None);
    let mut m = p.master.connect(DB);
    for (sql, needle) in [
        ("ALTER TABLE t ALTER COLUMN v SET NOT NULL, ALTER COLUMN v ADD GENERATED ALWAYS AS IDENTITY", "identity"),
        ("ALTER TABLE t DROP COLUMN id", "removes key column"),
    ] {
        let err = try_sql(&mut m, sql).expect_err(sql);
        assert!(err.contains(needle), "{sql}: {err}");
        assert!(err.contains("HINT"), "{sql}: the error says what to do instead: {err}");
    }
    assert_eq!(number(&p.master, "SELECT count(*) FROM _rserv_ddl_"), 0);
    // the slave's own table cannot be renamed away from its master's name
    let mut s = p.slave.connect(DB);
    let err = try_sql(&mut s, "ALTER TABLE t RENAME TO t_local").expect_err("slave rename");
    assert!(err.contains("rename it on the master"), "{err}");
}

#[test]
fn a_slave_that_cannot_follow_stops_cleanly_and_resumes() {
    let p = Pair::start("ddl-stop");
    p.master.execute(
        DB,
        "CREATE TABLE m (region text, id int, v text, PRIMARY KEY (region, id)) PARTITION BY LIST (region);
         CREATE TABLE m_a PARTITION OF m FOR VALUES IN ('a');
         INSERT INTO m SELECT 'a', i, 'v' FROM generate_series(1, 20) i;
         SELECT rserv_add_table('m');",
    );
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "create tables");
    // a table of the slave's own takes the name of the partition the master creates next
    p.slave.execute(DB, "CREATE TABLE m_b (x int)");
    p.master.execute(
        DB,
        "CREATE TABLE m_b PARTITION OF m FOR VALUES IN ('b');
         INSERT INTO m SELECT 'b', i, 'w' FROM generate_series(1, 5) i;
         UPDATE m SET v = 'changed' WHERE region = 'a' AND id < 4;",
    );
    let before = p.slave.query_strings(DB, "SELECT rserv_slave_sync_id()");
    let out = p.replicate(&[DB, DB]);
    assert!(
        !out.status.success(),
        "the slave could not follow, yet replicate succeeded"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("m_b"),
        "the error names the partition: {stderr}"
    );
    assert_eq!(
        p.slave.query_strings(DB, "SELECT rserv_slave_sync_id()"),
        before,
        "nothing of the change set was applied"
    );
    assert_eq!(
        number(&p.slave, "SELECT count(*) FROM m WHERE v = 'changed'"),
        0
    );
    // fixed on the slave: the next run resumes
    p.slave.execute(DB, "DROP TABLE m_b");
    p.sync();
    assert_same(&p, "m", "the resumed run");
    assert_same(&p, "m_b", "the resumed run");
    // later partitions and detached ones follow with no manual step
    p.master.execute(
        DB,
        "CREATE TABLE m_c PARTITION OF m FOR VALUES IN ('c');
         INSERT INTO m VALUES ('c', 1, 'c');
         ALTER TABLE m DETACH PARTITION m_a;",
    );
    p.sync();
    assert_same(&p, "m", "a new partition and a detached one");
    let attached = |c: &Cluster| {
        c.query_strings(
            DB,
            "SELECT relid::text FROM pg_partition_tree('m') ORDER BY 1",
        )
    };
    assert_eq!(attached(&p.master), attached(&p.slave));
}

#[test]
fn schema_changes_pass_down_a_cascade() {
    let cs = rserv_tests::pair::start_clusters(&["ddl-a", "ddl-b", "ddl-c"]);
    let (a, b, c) = (&cs[0], &cs[1], &cs[2]);
    a.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 100) i;
         SELECT rserv_add_table('t');",
    );
    let run = |from: &Cluster, to: &Cluster, extra: &[&str]| {
        let fh = from.socket_dir().display().to_string();
        let th = to.socket_dir().display().to_string();
        let mut args = vec![
            format!("--masterhost={fh}"),
            format!("--masterport={}", from.port()),
            format!("--slavehost={th}"),
            format!("--slaveport={}", to.port()),
            "--user=postgres".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([DB.to_string(), DB.to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_ok(&run_replicate(&refs), "replicate");
    };
    run(a, b, &["--create-tables"]);
    b.execute(DB, "SELECT rserv_add_table('t')");
    run(b, c, &["--create-tables"]);
    a.execute(
        DB,
        "ALTER TABLE t ADD COLUMN n int DEFAULT 5;
         ALTER TABLE t RENAME COLUMN v TO label;
         ALTER TABLE t ALTER COLUMN n TYPE bigint;
         CREATE INDEX t_label ON t (label);
         UPDATE t SET n = id WHERE id < 10;",
    );
    run(a, b, &[]);
    run(b, c, &[]);
    for (name, x) in [("B", b), ("C", c)] {
        assert_eq!(
            shape(a, "t"),
            shape(x, "t"),
            "{name}'s t is not shaped like A's"
        );
        assert_eq!(
            Pair::rows(a, "t"),
            Pair::rows(x, "t"),
            "{name}'s t differs from A's"
        );
    }
}

/// A DROP of an index, trigger or policy says only which schema lost something: rserv looks at
/// every replicated table of that schema, but never waits for one another transaction has
/// locked (an open TRUNCATE or ALTER of an unrelated table) — the DROP did not change it. And
/// the dropped index still reaches the slave.
#[test]
fn a_drop_never_waits_for_unrelated_tables() {
    let p = Pair::start("ddl-drop");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.table("CREATE TABLE busy (id int PRIMARY KEY)", "busy", None);
    p.master
        .execute(DB, "CREATE INDEX t_v ON t (v); INSERT INTO busy VALUES (1)");
    p.sync();
    assert_same(&p, "t", "the index arrived");
    let mut holder = p.master.connect(DB);
    holder
        .batch_execute("BEGIN; TRUNCATE busy")
        .expect("an open TRUNCATE of another table");
    let mut c = p.master.connect(DB);
    let dropped = try_sql(&mut c, "SET lock_timeout = '5s'; DROP INDEX t_v");
    holder.batch_execute("ROLLBACK").expect("rollback");
    assert!(
        dropped.is_ok(),
        "DROP INDEX waited for the unrelated TRUNCATE: {dropped:?}"
    );
    p.sync();
    assert_same(&p, "t", "the index is gone on the slave too");
}

/// A table with a trigger of its own (pagila's `last_updated`): a schema change sends its
/// definition, triggers included, and the slave compares its triggers with the master's
/// (regression: that comparison once failed with "operator is not unique: text || "char"",
/// which stopped replication at the first DDL on any table with a user trigger).
#[test]
fn schema_changes_of_a_table_with_triggers() {
    let p = Pair::start("ddl-trig");
    let function = "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN NEW.changed = now(); RETURN NEW; END $$;";
    p.master.execute(
        DB,
        &format!(
            "{function}
             CREATE TABLE t (id int PRIMARY KEY, v text, changed timestamptz);
             CREATE TRIGGER t_touch BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch();
             CREATE TRIGGER t_off BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION touch();
             ALTER TABLE t DISABLE TRIGGER t_off;
             INSERT INTO t SELECT i, 'v', NULL FROM generate_series(1, 10) i;
             SELECT rserv_add_table('t');"
        ),
    );
    p.slave.execute(DB, function);
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "create tables");
    let triggers = |c: &Cluster| {
        c.query_strings(
            DB,
            "SELECT tgname || ' ' || tgenabled::text || ' ' || pg_get_triggerdef(oid) FROM pg_trigger
              WHERE tgrelid = 't'::regclass AND tgname NOT LIKE '\\_rserv%' ORDER BY 1",
        )
    };
    assert_eq!(triggers(&p.master), triggers(&p.slave));
    p.master.execute(
        DB,
        "ALTER TABLE t ADD COLUMN n int DEFAULT 1; UPDATE t SET v = 'w' WHERE id < 4;
         ALTER TABLE t ENABLE TRIGGER t_off;",
    );
    p.sync();
    assert_same(&p, "t", "ADD COLUMN on a table with triggers");
    assert_eq!(triggers(&p.master), triggers(&p.slave));
}

/// `rserv_execute_ddl`: a script of schema changes runs on the master as its caller and every
/// slave follows at that point of the stream (rebuilt from the recorded definitions, never from
/// the script's text); a script with a statement rserv cannot follow, or that changes no
/// replicated table, is refused with nothing of it left.
#[test]
fn execute_ddl_runs_on_the_master_and_follows_to_the_slaves() {
    let p = Pair::start("ddl-exec");
    p.master.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, a text);
         CREATE TABLE u (id int PRIMARY KEY, x int);
         INSERT INTO t SELECT i, 'a' || i FROM generate_series(1, 20) i;
         SELECT rserv_add_table('t');
         CREATE ROLE alice LOGIN;",
    );
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "create tables");
    let mut m = p.master.connect(DB);
    let changed = rserv_tests::roles::try_value(
        &mut m,
        "SELECT rserv_execute_ddl($$
             CREATE TYPE kind AS ENUM ('small', 'big');
             ALTER TABLE t ADD COLUMN k kind DEFAULT 'small', ADD COLUMN n int NOT NULL DEFAULT 0;
             CREATE INDEX t_n ON t (n);
             COMMENT ON COLUMN t.k IS 'how big';
             ALTER TABLE t SET (fillfactor = 90)$$)",
    )
    .expect("the script runs");
    assert_eq!(changed.as_deref(), Some("4"), "four definition changes");
    p.master
        .execute(DB, "UPDATE t SET k = 'big', n = id WHERE id % 2 = 0");
    assert_ok(&p.replicate(&[DB, DB]), "replicate the script");
    assert_same(&p, "t", "rserv_execute_ddl");
    let fillfactor = "SELECT reloptions::text FROM pg_class WHERE oid = 't'::regclass";
    assert_eq!(
        p.slave.query_strings(DB, fillfactor),
        p.master.query_strings(DB, fillfactor)
    );

    let refused = |sql: &str, needle: &str| {
        let err = try_sql(
            &mut p.master.connect(DB),
            &format!("SELECT rserv_execute_ddl($${sql}$$)"),
        )
        .expect_err(sql);
        assert!(err.contains(needle), "{sql}: {err}");
    };
    // a kind rserv does not follow: refused before anything runs
    refused(
        "ALTER TABLE t ADD COLUMN gone int; GRANT SELECT ON t TO alice",
        "statement 2 cannot follow to the slaves",
    );
    refused(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "statement 1 cannot follow",
    );
    // no replicated table changed: nothing would reach the slaves
    refused("CREATE INDEX u_x ON u (x)", "changed no replicated table");
    // it runs as its caller: alice does not own t
    p.master
        .execute(DB, "SELECT rserv_grant_replication('alice')");
    let mut a = rserv_tests::roles::connect_as(&p.master, "alice");
    let err = try_sql(
        &mut a,
        "SELECT rserv_execute_ddl('ALTER TABLE public.t ADD COLUMN gone int')",
    )
    .expect_err("alice may not alter t");
    assert!(err.contains("must be owner"), "{err}");
    let left = "SELECT count(*)::text FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'gone'
                UNION ALL SELECT count(*)::text FROM pg_class WHERE relname = 'u_x'";
    assert_eq!(
        p.master.query_strings(DB, left),
        vec![vec![Some("0".to_string())], vec![Some("0".to_string())]],
        "a refused script leaves nothing"
    );
}
