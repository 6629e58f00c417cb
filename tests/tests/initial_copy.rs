//! The initial copy of a table rserv created (`replicate --create-tables`) loads the rows into
//! the table without its primary key, unique and exclusion constraints and builds them after
//! the load, in the same transaction (src/apply_keys.rs). What must hold: the slave ends with
//! exactly the master's constraints and rows; a constraint something else depends on is left
//! in place; no transaction commits with a constraint missing, and rows that break one leave
//! the slave as it was.

use rserv_tests::pair::{assert_ok, number, Pair, DB};
use rserv_tests::rng::Rng;

/// Constraints of `table` (of kinds p, u, x) made after rserv registered it on the slave:
/// OIDs come from one counter, so a constraint with a higher OID than the protection trigger
/// registration made was built again after the load.
fn rebuilt(c: &rserv_tests::Cluster, table: &str) -> i64 {
    number(
        c,
        &format!(
            "SELECT count(*) FROM pg_constraint con WHERE con.conrelid = '{table}'::regclass \
               AND con.contype IN ('p', 'u', 'x') \
               AND con.oid > (SELECT t.oid FROM pg_trigger t \
                               WHERE t.tgrelid = '{table}'::regclass AND t.tgname = '_rserv_protect_t_')"
        ),
    )
}

fn key_constraints(c: &rserv_tests::Cluster, table: &str) -> i64 {
    number(
        c,
        &format!(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = '{table}'::regclass \
               AND contype IN ('p', 'u', 'x')"
        ),
    )
}

/// One generated table: its DDL, the column registered as its key (None: the primary key) and
/// how many index-backed constraints it has.
struct Generated {
    name: String,
    ddl: String,
    key: Option<&'static str>,
    keyed: usize,
}

fn generate(rng: &mut Rng, i: usize) -> Generated {
    let name = format!("g{i}");
    let mut parts = vec![
        "id int NOT NULL".to_string(),
        "a int NOT NULL".to_string(),
        "b text".to_string(),
        "c int NOT NULL".to_string(),
        "d int".to_string(),
    ];
    let mut keyed = 0;
    // the identity: a primary key of one or two columns (maybe with INCLUDE or fillfactor),
    // or a unique NOT NULL column registered as the key
    let key = match rng.below(4) {
        0 => {
            parts.push(format!("CONSTRAINT {name}_pk PRIMARY KEY (id)"));
            None
        }
        1 => {
            parts.push(format!("CONSTRAINT {name}_pk PRIMARY KEY (id, a)"));
            None
        }
        2 => {
            parts.push(format!("CONSTRAINT {name}_pk PRIMARY KEY (id) INCLUDE (b)"));
            None
        }
        _ => {
            parts.push(format!("CONSTRAINT {name}_c_key UNIQUE (c)"));
            Some("c")
        }
    };
    keyed += 1;
    if key.is_none() && rng.below(2) == 0 {
        parts.push(format!("CONSTRAINT {name}_c_key UNIQUE (c)"));
        keyed += 1;
    }
    if rng.below(2) == 0 {
        parts.push(format!("CONSTRAINT {name}_b_key UNIQUE (b)"));
        keyed += 1;
    }
    if rng.below(2) == 0 {
        parts.push(format!(
            "CONSTRAINT {name}_ac_key UNIQUE (a, c) DEFERRABLE INITIALLY DEFERRED"
        ));
        keyed += 1;
    }
    if rng.below(2) == 0 {
        parts.push(format!(
            "CONSTRAINT {name}_d_excl EXCLUDE USING btree (d WITH =)"
        ));
        keyed += 1;
    }
    if rng.below(2) == 0 {
        parts.push(format!("CONSTRAINT {name}_a_check CHECK (a >= 0)"));
    }
    let ddl = format!("CREATE TABLE {name} ({})", parts.join(", "));
    Generated {
        name,
        ddl,
        key,
        keyed,
    }
}

#[test]
fn keys_are_built_after_the_load_exactly_as_on_the_master() {
    let mut rng = Rng::for_test("RSERV_SEED", 7, "initial_copy");
    let p = Pair::start("initcopy");
    let tables: Vec<Generated> = (0..6).map(|i| generate(&mut rng, i)).collect();
    for t in &tables {
        let rows = 50 + rng.below(400);
        let register = match t.key {
            Some(k) => format!("SELECT rserv_add_table('{}', '{k}')", t.name),
            None => format!("SELECT rserv_add_table('{}')", t.name),
        };
        p.master.execute(
            DB,
            &format!(
                "{};
                 INSERT INTO {name} SELECT g, g % 7, CASE WHEN g % 5 = 0 THEN NULL ELSE 'b' || g END,
                        1000 + g, CASE WHEN g % 3 = 0 THEN NULL ELSE g END
                   FROM generate_series(1, {rows}) g;
                 {register};",
                t.ddl,
                name = t.name
            ),
        );
    }
    // a table referenced by another's foreign key: the reference is post-data (made after
    // both copies), so the referenced key is rebuilt too
    p.master.execute(
        DB,
        "CREATE TABLE parent (id int PRIMARY KEY, v text);
         CREATE TABLE child (id int PRIMARY KEY, pid int REFERENCES parent);
         INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 100) g;
         INSERT INTO child SELECT g, 1 + g % 100 FROM generate_series(1, 300) g;
         SELECT rserv_add_table('parent'); SELECT rserv_add_table('child');",
    );
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "initial copy");
    let all: Vec<String> = tables
        .iter()
        .map(|t| t.name.clone())
        .chain(["parent".to_string(), "child".to_string()])
        .collect();
    for t in &all {
        p.assert_equal(t);
        assert_eq!(
            Pair::shape(&p.master, t),
            Pair::shape(&p.slave, t),
            "table {t}: constraints and indexes differ"
        );
    }
    for t in &tables {
        assert_eq!(
            rebuilt(&p.slave, &t.name),
            t.keyed as i64,
            "table {} ({}): every index-backed constraint is built after the load",
            t.name,
            t.ddl
        );
    }
    assert_eq!(rebuilt(&p.slave, "parent"), 1);
    // the keys work: later change sets find rows by them (updates, deletes, key changes)
    let mut work = String::new();
    for t in &tables {
        work.push_str(&format!(
            "UPDATE {n} SET b = 'u' || id WHERE id % 4 = 0;
             DELETE FROM {n} WHERE id % 9 = 0;
             UPDATE {n} SET c = c + 100000 WHERE id % 11 = 0;
             INSERT INTO {n} VALUES (100000, 1, 'new', 777777, NULL);",
            n = t.name
        ));
    }
    work.push_str(
        "UPDATE parent SET v = 'changed' WHERE id < 10; DELETE FROM child WHERE id > 250;",
    );
    p.master.execute(DB, &work);
    assert_ok(&p.replicate(&[DB, DB]), "a change set after the copy");
    for t in &all {
        p.assert_equal(t);
    }
    assert_ok(&p.replicate(&["check", DB, DB]), "replicate check");
}

#[test]
fn a_key_something_depends_on_stays_in_place() {
    let p = Pair::start("initcopy-dep");
    p.master.execute(
        DB,
        "CREATE TABLE p (id int PRIMARY KEY, v text, w int UNIQUE, k int UNIQUE, c int UNIQUE);
         INSERT INTO p SELECT g, 'v' || g, g, g, g FROM generate_series(1, 500) g;
         SELECT rserv_add_table('p');",
    );
    // the slave makes and registers the table as --create-tables would, then a DBA builds on
    // its keys before the first copy: a view that groups by the primary key (it depends on
    // the constraint), a local table whose foreign key references a unique column, an index
    // storage parameter and a comment (pg_get_constraintdef() would not make them again)
    p.create_on_slave("p");
    p.slave.execute(
        DB,
        "CREATE VIEW pv AS SELECT id, v FROM p GROUP BY id;
         CREATE TABLE local_ref (w int REFERENCES p (w));
         ALTER INDEX p_k_key SET (fillfactor = 60);
         COMMENT ON CONSTRAINT p_c_key ON p IS 'kept';",
    );
    let before = p.slave.query_strings(
        DB,
        "SELECT conname, oid::text FROM pg_constraint WHERE conrelid = 'p'::regclass \
          AND contype IN ('p', 'u') ORDER BY 1",
    );
    assert_eq!(before.len(), 4);
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "initial copy");
    p.assert_equal("p");
    let after = p.slave.query_strings(
        DB,
        "SELECT conname, oid::text FROM pg_constraint WHERE conrelid = 'p'::regclass \
          AND contype IN ('p', 'u') ORDER BY 1",
    );
    assert_eq!(
        before, after,
        "constraints others depend on are the same objects"
    );
    assert_eq!(number(&p.slave, "SELECT count(*) FROM pv"), 500);
    assert_eq!(
        p.slave.query_strings(
            DB,
            "SELECT array_to_string(reloptions, ','), \
                    (SELECT description FROM pg_description WHERE objoid = \
                      (SELECT oid FROM pg_constraint WHERE conname = 'p_c_key')) \
               FROM pg_class WHERE relname = 'p_k_key'"
        ),
        vec![vec![Some("fillfactor=60".into()), Some("kept".into())]]
    );
    p.master.execute(
        DB,
        "UPDATE p SET v = 'x' WHERE id <= 20; DELETE FROM p WHERE id > 490;",
    );
    assert_ok(&p.replicate(&[DB, DB]), "a change set after the copy");
    p.assert_equal("p");
}

/// A slave session inside an apply transaction whose initial copy of `p` has just emptied it
/// (the TRUNCATE section).
fn truncated(p: &Pair) -> postgres::Client {
    let mut c = p.slave.connect(DB);
    c.batch_execute(
        "BEGIN; SELECT rserv_apply_begin(1, '11111111-2222-3333-4444-555555555555', rserv_version())",
    )
    .expect("apply begin");
    c.execute(
        "SELECT rserv_apply_stage('TRUNCATE', 'public', 'p', ARRAY[]::text[], ARRAY['id'])",
        &[],
    )
    .expect("truncate section");
    c
}

#[test]
fn no_initial_copy_commits_without_its_keys() {
    let p = Pair::start("initcopy-commit");
    p.pending_table_p();
    assert_eq!(key_constraints(&p.slave, "p"), 2);
    // a client that stops after the TRUNCATE section and commits
    let mut c = truncated(&p);
    let inside: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = 'p'::regclass AND contype IN ('p', 'u')",
            &[],
        )
        .expect("count")
        .get(0);
    assert_eq!(inside, 0, "the load runs without the keys");
    let err = c
        .batch_execute("COMMIT")
        .expect_err("a commit without the keys must fail");
    let msg = err
        .as_db_error()
        .map(|e| format!("{} {}", e.message(), e.hint().unwrap_or_default()))
        .unwrap_or_else(|| err.to_string());
    assert!(
        msg.contains("initial copy of public.p is not finished") && msg.contains("rserv_apply_end"),
        "{msg}"
    );
    drop(c);
    assert_eq!(key_constraints(&p.slave, "p"), 2, "the keys are there");
    assert_eq!(
        number(
            &p.slave,
            "SELECT count(*) FROM _rserv_slave_tables_ WHERE needs_copy"
        ),
        1,
        "the table still waits for its copy"
    );

    // the same, but rserv_apply_end() is called: the keys are made again, and the commit holds
    let mut c = truncated(&p);
    c.batch_execute("SELECT rserv_apply_end(); COMMIT")
        .expect("end and commit");
    assert_eq!(key_constraints(&p.slave, "p"), 2, "the keys are back");
}

#[test]
fn a_savepoint_rolled_back_neither_hides_nor_doubles_a_key() {
    let p = Pair::start("initcopy-savepoint");
    p.pending_table_p();
    // the keys made again inside a savepoint that is rolled back: they are missing once more,
    // and the commit must see that
    let mut c = truncated(&p);
    c.batch_execute("SAVEPOINT s; SELECT rserv_apply_end(); ROLLBACK TO SAVEPOINT s")
        .expect("keys made, then rolled back");
    let err = c
        .batch_execute("COMMIT")
        .expect_err("a commit without the keys must fail");
    assert!(
        err.as_db_error().is_some_and(|e| e
            .message()
            .contains("initial copy of public.p is not finished")),
        "{err}"
    );
    drop(c);
    assert_eq!(key_constraints(&p.slave, "p"), 2);
    // the drop rolled back to a savepoint: the keys are there again, and making them again
    // must not fail on them
    let mut c = p.slave.connect(DB);
    c.batch_execute(
        "BEGIN; SELECT rserv_apply_begin(1, '11111111-2222-3333-4444-555555555555', rserv_version());
         SAVEPOINT s;
         SELECT rserv_apply_stage('TRUNCATE', 'public', 'p', ARRAY[]::text[], ARRAY['id']);
         ROLLBACK TO SAVEPOINT s;
         SELECT rserv_apply_end(); COMMIT",
    )
    .expect("a rolled-back drop leaves nothing to make again");
    assert_eq!(key_constraints(&p.slave, "p"), 2);
}

#[test]
fn rows_that_break_a_key_leave_the_slave_as_it_was() {
    let p = Pair::start("initcopy-dup");
    p.pending_table_p();
    let mut c = truncated(&p);
    let copy: String = c
        .query_one(
            "SELECT rserv_apply_stage('INSERT', 'public', 'p', ARRAY['id', 'v', 'u'], ARRAY['id'])",
            &[],
        )
        .expect("insert section")
        .get(0);
    // a damaged change set: two rows with one identity (no index stops them while loading)
    {
        use std::io::Write;
        let mut w = c.copy_in(copy.as_str()).expect("copy");
        w.write_all(b"1\tone\t1\n2\ttwo\t2\n1\tagain\t3\n")
            .expect("write rows");
        w.finish().expect("the load itself passes");
    }
    let err = c
        .execute(
            "SELECT rserv_apply_merge('INSERT', 'public', 'p', ARRAY['id', 'v', 'u'], ARRAY['id'])",
            &[],
        )
        .expect_err("building the primary key must fail");
    let msg = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_else(|| err.to_string());
    assert!(msg.contains("could not create unique index"), "{msg}");
    c.batch_execute("ROLLBACK").expect("rollback");
    drop(c);
    assert_eq!(key_constraints(&p.slave, "p"), 2, "the keys are there");
    assert_eq!(number(&p.slave, "SELECT count(*) FROM p"), 0);
    assert_eq!(
        number(
            &p.slave,
            "SELECT count(*) FROM _rserv_slave_tables_ WHERE needs_copy"
        ),
        1
    );
    // and the real copy then goes through
    p.master.execute(
        DB,
        "INSERT INTO p SELECT g, 'v' || g, g FROM generate_series(1, 50) g",
    );
    assert_ok(&p.replicate(&[DB, DB]), "initial copy");
    p.assert_equal("p");
    assert_eq!(key_constraints(&p.slave, "p"), 2);
}
