//! Change sets that tell inserted identities from updated ones (issue 18): the slave loads
//! inserted rows without deleting first and updates rows in place (UPSERT sections), except
//! where updating in place could collide (another unique index, GENERATED ALWAYS identity
//! columns) or the slave reads only rserv 1.0's sections.
//!
//! `random_windows_apply_exactly` draws windows of every kind of change (inserts, updates,
//! key changes, deletes, deletes and re-inserts, inserts then updates, swaps of a unique
//! column, key changes between equal keys stored differently) on tables of every shape the
//! apply treats differently, and checks every table after every cycle.

use rserv_tests::pair::{assert_ok, number, Pair, DB};
use rserv_tests::rng::Rng;

/// Tables the apply handles differently: (name, DDL). Each has an int `id`-like key and
/// some text to change.
const TABLES: [(&str, &str); 6] = [
    // plain: updated in place
    (
        "plain",
        "CREATE TABLE plain (id int PRIMARY KEY, v text, n int)",
    ),
    // another unique column: replaced (delete, insert)
    (
        "uniq",
        "CREATE TABLE uniq (id int PRIMARY KEY, code int NOT NULL UNIQUE, v text)",
    ),
    // a non-key GENERATED ALWAYS identity: replaced
    (
        "ident",
        "CREATE TABLE ident (id int PRIMARY KEY, g int GENERATED ALWAYS AS IDENTITY, v text)",
    ),
    // only key columns: nothing to update
    (
        "keyonly",
        "CREATE TABLE keyonly (id int, v text, PRIMARY KEY (id, v))",
    ),
    // partitioned: updated in place through the root
    (
        "part",
        "CREATE TABLE part (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
         CREATE TABLE part_lo PARTITION OF part FOR VALUES FROM (MINVALUE) TO (500);
         CREATE TABLE part_hi PARTITION OF part FOR VALUES FROM (500) TO (MAXVALUE)",
    ),
    // numeric key: 1.0 and 1.00 are one identity with two texts
    ("numk", "CREATE TABLE numk (id numeric PRIMARY KEY, v text)"),
];

fn setup(name: &str) -> Pair {
    let p = Pair::start(name);
    for (table, ddl) in TABLES {
        p.table(ddl, table, None);
    }
    p.master.execute(
        DB,
        "INSERT INTO plain SELECT g, 'p' || g, g FROM generate_series(1, 40) g;
         INSERT INTO uniq SELECT g, g, 'u' || g FROM generate_series(1, 40) g;
         INSERT INTO ident (id, v) SELECT g, 'i' || g FROM generate_series(1, 40) g;
         INSERT INTO keyonly SELECT g, 'k' || g FROM generate_series(1, 40) g;
         INSERT INTO part SELECT g * 25, 'r' || g FROM generate_series(1, 40) g;
         INSERT INTO numk SELECT g, 'n' || g FROM generate_series(1, 40) g;",
    );
    p.sync();
    p
}

fn assert_all_equal(p: &Pair, what: &str) {
    for (table, _) in TABLES {
        let m = Pair::rows(&p.master, table);
        let s = Pair::rows(&p.slave, table);
        assert_eq!(
            m, s,
            "{what}: table {table} differs between master and slave"
        );
    }
}

/// One random statement on `table`, for keys in 1..=60 (about a third of them free).
fn statement(rng: &mut Rng, table: &str) -> String {
    let k = rng.range(1, 60);
    let k2 = rng.range(1, 60);
    let tag = rng.digits(4);
    let id = |k: i64| if table == "part" { k * 25 } else { k };
    let (a, b) = (id(k), id(k2));
    match (table, rng.below(7)) {
        (_, 0) => match table {
            "uniq" => format!(
                "INSERT INTO uniq VALUES ({a}, {}, 'new {tag}') ON CONFLICT DO NOTHING",
                1000 + a
            ),
            "ident" => format!("INSERT INTO ident (id, v) VALUES ({a}, 'new {tag}') ON CONFLICT DO NOTHING"),
            "keyonly" => format!("INSERT INTO keyonly VALUES ({a}, 'new {tag}') ON CONFLICT DO NOTHING"),
            "plain" => format!("INSERT INTO plain VALUES ({a}, 'new {tag}', 0) ON CONFLICT DO NOTHING"),
            _ => format!("INSERT INTO {table} VALUES ({a}, 'new {tag}') ON CONFLICT DO NOTHING"),
        },
        // every column is the key: an update is a key change (one row, several share an id)
        ("keyonly", 1 | 2) => format!(
            "UPDATE keyonly SET v = 'upd {tag}' WHERE ctid = (SELECT ctid FROM keyonly WHERE id = {a} LIMIT 1)"
        ),
        (_, 1 | 2) => format!("UPDATE {table} SET v = 'upd {tag}' WHERE id = {a}"),
        // a key change to a free key (moves between partitions too)
        (_, 3) => format!(
            "UPDATE {table} SET id = {b} WHERE id = {a} AND NOT EXISTS (SELECT 1 FROM {table} WHERE id = {b})"
        ),
        (_, 4) => format!("DELETE FROM {table} WHERE id = {a}"),
        // delete and insert the same identity again
        ("uniq", 5) => format!(
            "DELETE FROM uniq WHERE id = {a}; INSERT INTO uniq VALUES ({a}, {}, 'again {tag}') ON CONFLICT DO NOTHING",
            2000 + a
        ),
        ("ident", 5) => format!(
            "DELETE FROM ident WHERE id = {a}; INSERT INTO ident (id, v) VALUES ({a}, 'again {tag}')"
        ),
        ("plain", 5) => format!(
            "DELETE FROM plain WHERE id = {a}; INSERT INTO plain VALUES ({a}, 'again {tag}', 1)"
        ),
        (_, 5) => format!(
            "DELETE FROM {table} WHERE id = {a}; INSERT INTO {table} VALUES ({a}, 'again {tag}') ON CONFLICT DO NOTHING"
        ),
        // two rows swap their unique codes (in place, row by row, this would collide)
        // (the master does it in three steps, through a value nobody holds)
        ("uniq", _) => format!(
            "DO $$ DECLARE ca int; cb int; BEGIN \
               SELECT code INTO ca FROM uniq WHERE id = {a}; \
               SELECT code INTO cb FROM uniq WHERE id = {b}; \
               IF ca IS NOT NULL AND cb IS NOT NULL AND {a} <> {b} THEN \
                 UPDATE uniq SET code = -ca WHERE id = {a}; \
                 UPDATE uniq SET code = ca WHERE id = {b}; \
                 UPDATE uniq SET code = cb WHERE id = {a}; \
               END IF; END $$"
        ),
        // the same number stored with another scale: the key's text changes, not its value
        ("numk", _) => format!("UPDATE numk SET id = id::numeric(10,2) WHERE id = {a}"),
        // inserted, then updated in the same window
        (_, _) => format!(
            "{}; UPDATE {table} SET v = v || ' then updated' WHERE id = {a}",
            statement_insert(table, a, &tag)
        ),
    }
}

fn statement_insert(table: &str, a: i64, tag: &str) -> String {
    match table {
        "uniq" => format!(
            "INSERT INTO uniq VALUES ({a}, {}, 'ins {tag}') ON CONFLICT DO NOTHING",
            3000 + a
        ),
        "ident" => {
            format!("INSERT INTO ident (id, v) VALUES ({a}, 'ins {tag}') ON CONFLICT DO NOTHING")
        }
        "plain" => format!("INSERT INTO plain VALUES ({a}, 'ins {tag}', 2) ON CONFLICT DO NOTHING"),
        _ => format!("INSERT INTO {table} VALUES ({a}, 'ins {tag}') ON CONFLICT DO NOTHING"),
    }
}

#[test]
fn random_windows_apply_exactly() {
    let p = setup("inplace-gen");
    let mut rng = Rng::for_test("RSERV_INPLACE_SEED", 18, "random_windows_apply_exactly");
    let file = p.master.data_dir().with_file_name("inplace.rserv");
    let file = file.display().to_string();
    let mut kinds = std::collections::BTreeSet::new();
    for round in 0..25 {
        // a few transactions per window, each touching a few tables
        for _ in 0..rng.range(1, 4) {
            let mut tx = String::from("BEGIN;");
            for _ in 0..rng.range(1, 6) {
                let (table, _) = TABLES[rng.below(TABLES.len())];
                tx.push_str(&statement(&mut rng, table));
                tx.push(';');
            }
            tx.push_str("COMMIT;");
            p.master.execute(DB, &tx);
        }
        // the change set kept (--debug): which sections it used
        assert_ok(
            &p.replicate(&["--snapshot", &file, "--debug", DB, DB]),
            &format!("round {round}"),
        );
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for kind in ["DELETE", "UPSERT", "INSERT"] {
            if text.contains(&format!("\"section\":\"{kind}\""))
                || text.contains(&format!("-- {kind} "))
            {
                kinds.insert(kind);
            }
        }
        assert_all_equal(&p, &format!("round {round}"));
    }
    // the test exercised what it is about
    assert!(
        kinds.contains("UPSERT") && kinds.contains("INSERT") && kinds.contains("DELETE"),
        "sections seen: {kinds:?}"
    );
}

/// A log row of rserv 1.0's trigger says "not deleted" for an insert too: such an identity
/// arrives in an UPSERT section, where the slave lacks it, and is inserted.
#[test]
fn identities_logged_without_insert_mark_still_arrive() {
    let p = setup("inplace-old-log");
    p.master.execute(
        DB,
        "BEGIN;
         INSERT INTO plain VALUES (500, 'logged as 1.0 did', 5);
         UPDATE _rserv_log_ SET deleted = false WHERE key = '{500}' AND deleted IS NULL;
         COMMIT;",
    );
    assert_eq!(
        number(
            &p.master,
            "SELECT count(*) FROM _rserv_log_ WHERE key = '{500}' AND deleted IS FALSE"
        ),
        1,
        "the insert is logged as rserv 1.0 logged it"
    );
    let out = p.sync();
    assert!(out.contains("applied"), "{out}");
    p.assert_equal("plain");
    assert_eq!(
        number(&p.slave, "SELECT count(*) FROM plain WHERE id = 500"),
        1
    );
}

/// Change sets written to a file name no slave: they use only rserv 1.0's sections (every
/// changed identity deleted, then inserted), which every slave applies.
#[test]
fn change_sets_for_an_unknown_reader_use_no_upsert() {
    let p = setup("inplace-file");
    p.master.execute(
        DB,
        "UPDATE plain SET v = 'changed' WHERE id <= 10; INSERT INTO plain VALUES (100, 'new', 0);",
    );
    let server = number(
        &p.master,
        "SELECT server FROM rserv_status WHERE server IS NOT NULL ORDER BY server LIMIT 1",
    )
    .to_string();
    let file = p.master.data_dir().with_file_name("unknown-reader.rserv");
    let file = file.display().to_string();
    assert_ok(
        &p.replicate(&["--server", &server, "prepare", DB, "-o", &file]),
        "prepare to a file",
    );
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(!text.contains("UPSERT"), "the file uses UPSERT:\n{text}");
    assert!(
        !text.contains("upsert"),
        "the file declares upsert:\n{text}"
    );
    assert_ok(&p.replicate(&["apply", DB, "-i", &file]), "apply the file");
    p.assert_equal("plain");
}

/// Two change sets prepared before the slave confirmed either (two `replicate` runs at once, or
/// a lost confirm) have overlapping windows: the second one's rows logged as inserted may be on
/// the slave already, applied by the first. They are replaced, not loaded a second time
/// (which failed with a duplicate key: found by `concurrency::concurrent_replicate_runs`).
#[test]
fn overlapping_windows_replace_inserted_rows() {
    let p = setup("inplace-overlap");
    p.master.execute(
        DB,
        "INSERT INTO plain VALUES (200, 'first window', 0); UPDATE plain SET v = 'one' WHERE id = 1",
    );
    let mut s = p.session();
    let server = number(
        &p.master,
        "SELECT server FROM rserv_status WHERE server IS NOT NULL ORDER BY server LIMIT 1",
    );
    let node: String = s
        .slave
        .query_one("SELECT rserv_node_id()::text", &[])
        .expect("slave node id")
        .get(0);
    let target = replicate::master::Target {
        server: server as i32,
        slave_node: Some(node),
        tables: None,
        verbose: false,
        in_place: true,
    };
    let mut first = Vec::new();
    replicate::master::prepare(&mut s.master, &s.master_rs, &target, &mut first, None)
        .expect("first prepare")
        .expect("a change set");
    p.master.execute(
        DB,
        "INSERT INTO plain VALUES (201, 'second window', 0); UPDATE plain SET v = 'two' WHERE id = 2",
    );
    let mut second = Vec::new();
    replicate::master::prepare(&mut s.master, &s.master_rs, &target, &mut second, None)
        .expect("second prepare")
        .expect("a change set");
    let text = String::from_utf8_lossy(&second);
    assert!(
        text.contains("-- INSERT ") && text.contains("200\t"),
        "the second change set carries the first one's insert again:\n{text}"
    );
    for (i, cs) in [first, second].into_iter().enumerate() {
        let applied = replicate::slave::apply(&mut s.slave, &s.slave_rs, &cs[..])
            .unwrap_or_else(|e| panic!("change set {}: {e}", i + 1));
        assert!(
            matches!(applied, replicate::slave::Outcome::Applied { .. }),
            "change set {}: {applied:?}",
            i + 1
        );
    }
    p.assert_equal("plain");
}
