//! Adversary review 27b, of commit 6a700bb (src/internal_ddl.rs: the "internal DDL" mark holds
//! only at the utility nesting depth of rserv's own statements). A test that passes means the
//! property holds; the findings' tests fail on 6a700bb.
//!
//! Findings, and where each stands (every test below passes now):
//! - HIGH f1 (the mark's design): rserv also ran plain DML on a user's table while holding a
//!   mark: ddl::apply_section emptied a recopied table with `DELETE FROM` (as its owner) under
//!   internal_ddl(). The owner's ENABLE ALWAYS statement trigger on it ran one level below the
//!   mark, and its EXECUTE'd DDL landed exactly on it: it renamed a received slave table past
//!   the guard (replicate exits 0, the master's later changes lost with a WARNING). Fixed: the
//!   DELETE runs before the mark is taken, and internal_ddl.rs says why no DML may run under
//!   one; `_rserv_own_triggers_ddl_()` also needs the mark at the current depth. Tests f1_*.
//! - MEDIUM g2 (older): the drop guard returned early for every DROP EXTENSION, not just
//!   rserv's: an owner with CREATE on the database added her replicated table to a trusted
//!   extension of hers and dropped the extension. Fixed: only a drop that takes rserv itself
//!   passes (finalize.sql and the 1.0.0 -> 1.1.0 script). Test g2_*.
//! - LOW g1 (older): DROP DOMAIN ... CASCADE dropped a replicated table's key column (the drop
//!   guard did not look at columns); loud afterwards: every write to the table was refused.
//!   Fixed later: the drop guard refuses a key column dropped by any command but ALTER TABLE
//!   (whose drops the ALTER guard checks). Test g1_*.
//! - LOW g3 (older): a non-superuser owner of a replicated partitioned table could not add or
//!   attach a partition ("permission denied for function "): the cloned capture trigger needs
//!   EXECUTE on _rserv_log_(), which was revoked from PUBLIC. Fixed later: the function is
//!   executable by everyone and refuses triggers rserv did not make (src/capture_check.rs,
//!   tests/tests/partition_owners.rs).
//! - held: guard_caught_errors_at_nested_levels_do_not_lower_the_depth;
//!   guard_owner_row_security_policy_read_by_partition_reconcile_cannot_pass_rserv_ddl_guards.

use rserv_tests::pair::{number, Pair, DB};
use rserv_tests::roles::{connect_as, try_sql};

/// q and x received by the slave and copied; on the slave both belong to alice, with schema f.
fn setup(name: &str) -> Pair {
    let p = Pair::start(name);
    for c in [&p.master, &p.slave] {
        c.execute("postgres", "CREATE ROLE alice LOGIN");
        c.execute(
            DB,
            "GRANT CREATE ON SCHEMA public TO alice; CREATE SCHEMA f;",
        );
    }
    p.master.execute(
        DB,
        "CREATE TABLE q (id int PRIMARY KEY, v text); INSERT INTO q VALUES (1, 'q');
         CREATE TABLE x (id int PRIMARY KEY, v int); INSERT INTO x VALUES (1, 1), (2, 2);
         SELECT rserv_add_table('q'); SELECT rserv_add_table('x');",
    );
    rserv_tests::pair::assert_ok(&p.replicate(&["--create-tables", DB, DB]), "copy q, x");
    p.slave.execute(
        DB,
        "ALTER TABLE q OWNER TO alice; ALTER TABLE x OWNER TO alice; ALTER SCHEMA f OWNER TO alice;",
    );
    let mut a = connect_as(&p.slave, "alice");
    let direct = try_sql(&mut a, "ALTER TABLE q RENAME TO q_renamed");
    assert!(direct.is_err(), "the guard refuses alice: {direct:?}");
    p
}

fn assert_not_renamed(p: &Pair, out: &std::process::Output, what: &str) {
    eprintln!(
        "replicate: {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let renamed = number(
        &p.slave,
        "SELECT count(*) FROM pg_class WHERE relname = 'q_renamed'",
    );
    assert_eq!(renamed, 0, "{what} renamed q past the guard");
}

/// A slave following a master's table rewrite empties its table with a DELETE (plain SPI DML,
/// not a utility statement) while rserv's mark is held: the owner's DELETE trigger on it runs
/// at the depth of rserv's own statements, and its DDL must still meet the guards.
#[test]
fn f1_owner_delete_trigger_during_a_recopy_cannot_pass_rserv_ddl_guards() {
    let p = setup("adv27b-recopy");
    let mut a = connect_as(&p.slave, "alice");
    try_sql(
        &mut a,
        "CREATE FUNCTION f.tr() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF to_regclass('public.q') IS NOT NULL THEN
             EXECUTE 'ALTER TABLE public.q RENAME TO q_renamed';
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER x_del BEFORE DELETE ON x FOR EACH STATEMENT EXECUTE FUNCTION f.tr();
         ALTER TABLE x ENABLE ALWAYS TRIGGER x_del;",
    )
    .expect("alice's trigger");
    drop(a);
    // a rewrite on the master: the slave gets x whole
    p.master
        .execute(DB, "ALTER TABLE x ALTER COLUMN v TYPE bigint");
    let out = p.replicate(&[DB, DB]);
    assert_not_renamed(&p, &out, "alice's DELETE trigger in a recopy");
}

/// The consequence of f1: after the owner's trigger renamed received table q during a recopy,
/// the master's later changes to q still reach the slave, or replicate says they cannot.
#[test]
fn f1_consequence_master_changes_to_q_after_the_recopy_reach_the_slave_or_fail_loudly() {
    let p = setup("adv27b-recopy2");
    let mut a = connect_as(&p.slave, "alice");
    try_sql(
        &mut a,
        "CREATE FUNCTION f.tr() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF to_regclass('public.q') IS NOT NULL THEN
             EXECUTE 'ALTER TABLE public.q RENAME TO q_renamed';
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER x_del BEFORE DELETE ON x FOR EACH STATEMENT EXECUTE FUNCTION f.tr();
         ALTER TABLE x ENABLE ALWAYS TRIGGER x_del;",
    )
    .expect("alice's trigger");
    drop(a);
    p.master
        .execute(DB, "ALTER TABLE x ALTER COLUMN v TYPE bigint");
    let first = p.replicate(&[DB, DB]);
    eprintln!(
        "first replicate: {:?}\n{}",
        first.status.code(),
        String::from_utf8_lossy(&first.stderr)
    );
    p.master.execute(
        DB,
        "INSERT INTO q VALUES (2, 'after'); UPDATE q SET v = 'changed' WHERE id = 1",
    );
    let second = p.replicate(&[DB, DB]);
    eprintln!(
        "second replicate: {:?}\n{}",
        second.status.code(),
        String::from_utf8_lossy(&second.stderr)
    );
    let third = p.replicate(&[DB, DB]);
    eprintln!(
        "third replicate: {:?}\n{}",
        third.status.code(),
        String::from_utf8_lossy(&third.stderr)
    );
    let rel = if number(
        &p.slave,
        "SELECT count(*) FROM pg_class WHERE relname = 'q_renamed'",
    ) > 0
    {
        "q_renamed"
    } else {
        "q"
    };
    let got = number(
        &p.slave,
        &format!("SELECT count(*) FROM {rel} WHERE (id = 2) OR (id = 1 AND v = 'changed')"),
    );
    eprintln!("slave {rel} holds {got} of the master's 2 changes");
    assert!(
        got == 2 || !second.status.success() || !third.status.success(),
        "the master's changes to q silently did not reach the slave ({rel})"
    );
}

/// On a master: the DDL guard reconciles the partitions of a replicated partitioned table after
/// an ATTACH, and logs the rows the attached partition brought by reading it (a SELECT, not a
/// utility statement) as its owner under rserv's mark. A row-security policy of the owner's
/// (FORCE ROW LEVEL SECURITY) runs there, at the depth of rserv's own statements: its DDL must
/// still meet the guards (here: dropping another replicated table). Held: rserv reads with
/// row_security off, so a policy that would apply makes the ATTACH fail instead.
#[test]
fn guard_owner_row_security_policy_read_by_partition_reconcile_cannot_pass_rserv_ddl_guards() {
    let p = Pair::start("adv27b-rls");
    let m = &p.master;
    m.execute("postgres", "CREATE ROLE alice LOGIN");
    m.execute(
        DB,
        "GRANT CREATE ON SCHEMA public TO alice; CREATE SCHEMA f AUTHORIZATION alice;
         CREATE TABLE q (id int PRIMARY KEY, v text); INSERT INTO q VALUES (1, 'q');
         CREATE TABLE pt (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE pt1 PARTITION OF pt FOR VALUES FROM (0) TO (100);
         SELECT rserv_add_table('q'); SELECT rserv_add_table('pt');
         ALTER TABLE q OWNER TO alice; ALTER TABLE pt OWNER TO alice; ALTER TABLE pt1 OWNER TO alice;",
    );
    let mut a = connect_as(m, "alice");
    let direct = try_sql(&mut a, "DROP TABLE q");
    assert!(direct.is_err(), "the guard refuses alice: {direct:?}");
    try_sql(
        &mut a,
        "CREATE FUNCTION f.pol() RETURNS bool LANGUAGE plpgsql AS $$
         BEGIN
           IF to_regclass('public.q') IS NOT NULL THEN
             EXECUTE 'DROP TABLE public.q';
           END IF;
           RETURN true;
         END $$;
         CREATE TABLE pt2 (id int NOT NULL, v text); INSERT INTO pt2 VALUES (150, 'x');
         ALTER TABLE pt2 ADD PRIMARY KEY (id);
         CREATE POLICY pol ON pt2 USING (f.pol());
         ALTER TABLE pt2 ENABLE ROW LEVEL SECURITY; ALTER TABLE pt2 FORCE ROW LEVEL SECURITY;",
    )
    .expect("alice's partition");
    // (alice's own ATTACH is refused: "permission denied for function", see the report) the
    // database's administrator attaches her partition
    let mut admin = connect_as(m, "postgres");
    let attached = try_sql(
        &mut admin,
        "ALTER TABLE pt ATTACH PARTITION pt2 FOR VALUES FROM (100) TO (200)",
    );
    eprintln!("attach: {attached:?}");
    let q = number(m, "SELECT count(*) FROM pg_class WHERE relname = 'q'");
    assert_eq!(
        q, 1,
        "alice's row-security policy dropped replicated table q past the guard"
    );
}

/// (older than 6a700bb) The drop guard lets every DROP EXTENSION through (meant for DROP
/// EXTENSION rserv). A table owner with CREATE on the database installs a trusted extension,
/// makes her replicated table a member of it, and drops the extension: the table goes.
#[test]
fn g2_owner_drop_of_her_own_extension_cannot_drop_a_replicated_table() {
    let p = Pair::start("adv27b-ext");
    let m = &p.master;
    m.execute("postgres", "CREATE ROLE alice LOGIN");
    m.execute(
        DB,
        "GRANT CREATE ON SCHEMA public TO alice; GRANT CREATE ON DATABASE app TO alice;
         CREATE TABLE q (id int PRIMARY KEY, v text); INSERT INTO q VALUES (1, 'q');
         SELECT rserv_add_table('q'); ALTER TABLE q OWNER TO alice;",
    );
    rserv_tests::pair::assert_ok(&p.replicate(&["--create-tables", DB, DB]), "copy q");
    let mut a = connect_as(m, "alice");
    let direct = try_sql(&mut a, "DROP TABLE q");
    assert!(direct.is_err(), "the guard refuses alice: {direct:?}");
    let out = try_sql(
        &mut a,
        "CREATE EXTENSION hstore; ALTER EXTENSION hstore ADD TABLE q; DROP EXTENSION hstore",
    );
    eprintln!("drop extension: {out:?}");
    let q = number(m, "SELECT count(*) FROM pg_class WHERE relname = 'q'");
    if q == 0 {
        let r = p.replicate(&[DB, DB]);
        eprintln!(
            "replicate after: {:?}\n{}",
            r.status.code(),
            String::from_utf8_lossy(&r.stderr)
        );
    }
    assert_eq!(
        q, 1,
        "DROP EXTENSION dropped replicated table q past the guard"
    );
}

/// Held: the p1 attack (owner code in a post-data index expression), with the owner's code
/// first making errors inside nested utility statements at several levels and catching them
/// (EXCEPTION blocks), and running its DDL through CALL, DO, a SQL function and EXECUTE of a
/// CREATE SCHEMA with elements: none of it reaches the depth of rserv's own statements.
#[test]
fn guard_caught_errors_at_nested_levels_do_not_lower_the_depth() {
    let p = Pair::start("adv27b-depth");
    for c in [&p.master, &p.slave] {
        c.execute("postgres", "CREATE ROLE alice LOGIN");
        c.execute(
            DB,
            "GRANT CREATE ON SCHEMA public TO alice; CREATE SCHEMA f;
             CREATE FUNCTION f.k(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS 'BEGIN RETURN $1; END';",
        );
    }
    p.master.execute(
        DB,
        "CREATE TABLE q (id int PRIMARY KEY, v text); INSERT INTO q VALUES (1, 'q');
         SELECT rserv_add_table('q');",
    );
    rserv_tests::pair::assert_ok(&p.replicate(&["--create-tables", DB, DB]), "copy q");
    p.master.execute(
        DB,
        "CREATE TABLE x (id int PRIMARY KEY); CREATE INDEX x_k ON x ((f.k(id)));
         INSERT INTO x SELECT generate_series(1, 5); SELECT rserv_add_table('x');",
    );
    p.create_on_slave("x");
    p.slave.execute(
        DB,
        "ALTER TABLE q OWNER TO alice; ALTER TABLE x OWNER TO alice;
         ALTER SCHEMA f OWNER TO alice; ALTER FUNCTION f.k(int) OWNER TO alice;
         GRANT CREATE ON DATABASE app TO alice;",
    );
    let mut a = connect_as(&p.slave, "alice");
    try_sql(
        &mut a,
        "CREATE PROCEDURE f.pr() LANGUAGE plpgsql AS $$
         BEGIN
           BEGIN EXECUTE 'ALTER TABLE public.q RENAME TO q_renamed'; EXCEPTION WHEN others THEN NULL; END;
         END $$;
         CREATE FUNCTION f.sqlf() RETURNS void LANGUAGE sql AS $$ ALTER TABLE public.q RENAME TO q_renamed $$;
         CREATE FUNCTION f.ddl() RETURNS void LANGUAGE plpgsql AS $$
         DECLARE i int;
         BEGIN
           IF to_regclass('public.q') IS NULL THEN RETURN; END IF;
           -- errors deep inside nested utility statements, caught at various levels
           BEGIN EXECUTE 'CREATE TABLE f.z (a int, a int)'; EXCEPTION WHEN others THEN NULL; END;
           BEGIN EXECUTE 'DO $d$ BEGIN EXECUTE ''DO $e$ BEGIN EXECUTE ''''CREATE TABLE f.z (a int, a int)''''; END $e$''; END $d$';
           EXCEPTION WHEN others THEN NULL; END;
           BEGIN EXECUTE 'CREATE TABLE f.s (id serial, CHECK (1/0 = 1))'; EXCEPTION WHEN others THEN NULL; END;
           BEGIN EXECUTE 'CREATE SCHEMA g CREATE TABLE t1 (a int) CREATE TABLE t1 (a int)'; EXCEPTION WHEN others THEN NULL; END;
           BEGIN EXECUTE 'EXPLAIN ANALYZE CREATE TABLE f.c AS SELECT 1/0'; EXCEPTION WHEN others THEN NULL; END;
           BEGIN EXECUTE 'CALL f.pr()'; EXCEPTION WHEN others THEN NULL; END;
           FOR i IN 1..3 LOOP
             BEGIN EXECUTE 'ALTER TABLE public.q RENAME TO q_renamed'; EXCEPTION WHEN others THEN NULL; END;
             BEGIN PERFORM f.sqlf(); EXCEPTION WHEN others THEN NULL; END;
             BEGIN EXECUTE 'CREATE SCHEMA h CREATE TABLE t2 (a int)'; EXECUTE 'ALTER TABLE public.q RENAME TO q_renamed';
             EXCEPTION WHEN others THEN NULL; END;
           END LOOP;
           EXECUTE 'CREATE TABLE IF NOT EXISTS f.ran (a int)';
         END $$;
         CREATE OR REPLACE FUNCTION f.k(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
         BEGIN
           PERFORM f.ddl();
           RETURN $1;
         END $$",
    )
    .expect("alice's functions");
    drop(a);
    let out = p.replicate(&["--create-tables", DB, DB]);
    eprintln!(
        "replicate: {:?}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let renamed = number(
        &p.slave,
        "SELECT count(*) FROM pg_class WHERE relname = 'q_renamed'",
    );
    assert_eq!(renamed, 0, "alice's code renamed q past the guard");
    assert_eq!(
        number(
            &p.slave,
            "SELECT count(*) FROM pg_class WHERE relname = 'ran'"
        ),
        1,
        "alice's code ran"
    );
    // the depth is right again afterwards: rserv's own DDL still passes (a rename on the master)
    p.master.execute(DB, "ALTER TABLE q RENAME TO q2");
    rserv_tests::pair::assert_ok(&p.replicate(&[DB, DB]), "the slave follows the rename");
    assert_eq!(
        number(
            &p.slave,
            "SELECT count(*) FROM pg_class WHERE relname = 'q2'"
        ),
        1
    );
}

/// g1: a command other than ALTER TABLE that would drop a replicated table's key column (DROP
/// DOMAIN … CASCADE, on the master and on a slave) is refused, naming the column; a non-key
/// column may go that way.
#[test]
fn g1_drop_domain_cascade_cannot_drop_a_replicated_key_column() {
    let p = Pair::start("adv27b-g1");
    p.both(
        "CREATE DOMAIN kd AS int; CREATE DOMAIN vd AS text;
         CREATE TABLE k (id kd PRIMARY KEY, v text, w vd);",
    );
    p.master.execute(
        DB,
        "INSERT INTO k VALUES (1, 'a', 'x'); SELECT rserv_add_table('k');",
    );
    p.slave.execute(DB, "SELECT rserv_slave_add_table('k')");
    rserv_tests::pair::assert_ok(&p.replicate(&[DB, DB]), "copy k");
    for c in [&p.master, &p.slave] {
        let refused = try_sql(&mut c.connect(DB), "DROP DOMAIN kd CASCADE");
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("drops key column id of table public.k")),
            "{}: {refused:?}",
            c.name()
        );
        assert_eq!(
            number(c, "SELECT count(*) FROM pg_attribute WHERE attrelid = 'k'::regclass AND attname = 'id' AND NOT attisdropped"),
            1,
            "{}: the key column is still there",
            c.name()
        );
        try_sql(&mut c.connect(DB), "DROP DOMAIN vd CASCADE").expect("a non-key column may go");
    }
    p.master.execute(
        DB,
        "INSERT INTO k VALUES (2, 'b'); UPDATE k SET v = 'A' WHERE id = 1;",
    );
    rserv_tests::pair::assert_ok(&p.replicate(&[DB, DB]), "k still replicates");
    p.assert_equal("k");
}
