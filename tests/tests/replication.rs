//! End-to-end replication between two real clusters: the seed's walkthrough, DML of every
//! kind, keys, watched columns, open transactions, snapshot files.

use rserv_tests::pair::{assert_ok, Pair, DB};
use rserv_tests::{run_replicate, Cluster};

/// The seed, step by step: booktown's customer table, `MasterAddTable booktown customer
/// lastname`, Nathan → Nathaniel, then `Replicate --user=pma --host=... booktown booktown`.
#[test]
fn seed_walkthrough() {
    let (m, s) = std::thread::scope(|sc| {
        let m = sc.spawn(|| Cluster::start("seed-m"));
        let s = sc.spawn(|| Cluster::start("seed-s"));
        (m.join().unwrap(), s.join().unwrap())
    });
    for c in [&m, &s] {
        c.execute("postgres", "CREATE ROLE pma LOGIN SUPERUSER");
        c.execute("postgres", "CREATE DATABASE booktown OWNER pma");
        c.execute(
            "booktown",
            "CREATE TABLE customer (cust_id integer PRIMARY KEY, lastname text, firstname text);
             INSERT INTO customer VALUES (10, 'Nathan', 'John'), (11, 'Holloway', 'Ed'), (12, 'Johnson', 'Jill');",
        );
    }
    let mhost = m.socket_dir().display().to_string();
    let shost = s.socket_dir().display().to_string();
    let (mport, sport) = (m.port().to_string(), s.port().to_string());
    // MasterInit / MasterAddTable / SlaveInit / SlaveAddTable as subcommands.
    for args in [
        vec![
            "--user=pma",
            "--host",
            &mhost,
            "--port",
            &mport,
            "master-init",
            "booktown",
        ],
        vec![
            "--user=pma",
            "--host",
            &mhost,
            "--port",
            &mport,
            "master-add-table",
            "booktown",
            "customer",
            "lastname",
        ],
        vec![
            "--user=pma",
            "--host",
            &shost,
            "--port",
            &sport,
            "slave-init",
            "booktown",
        ],
        vec![
            "--user=pma",
            "--host",
            &shost,
            "--port",
            &sport,
            "slave-add-table",
            "booktown",
            "customer",
            "lastname",
        ],
    ] {
        assert_ok(&run_replicate(&args), &format!("{args:?}"));
    }
    // The seed's trap: running MasterAddTable twice is now a notice, not a ten-object clean-up.
    let again = run_replicate(&[
        "--user=pma",
        "--host",
        &mhost,
        "--port",
        &mport,
        "master-add-table",
        "booktown",
        "customer",
        "lastname",
    ]);
    assert_ok(&again, "second master-add-table");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already registered"));

    m.execute(
        "booktown",
        "UPDATE customer SET lastname = 'Nathaniel' WHERE cust_id = 10",
    );
    // The seed's command line, with both hosts local clusters.
    let out = run_replicate(&[
        "--user=pma",
        "--host=local",
        &format!("--masterhost={mhost}"),
        &format!("--masterport={mport}"),
        &format!("--slavehost={shost}"),
        &format!("--slaveport={sport}"),
        "booktown",
        "booktown",
    ]);
    assert_ok(&out, "Replicate booktown booktown");
    let row = s.query_strings(
        "booktown",
        "SELECT lastname FROM customer WHERE cust_id = 10",
    );
    assert_eq!(row[0][0].as_deref(), Some("Nathaniel"));
    let sid = run_replicate(&[
        "--user=pma",
        "--host",
        &shost,
        "--port",
        &sport,
        "sync-id",
        "booktown",
    ]);
    assert_ok(&sid, "sync-id");
    assert_eq!(String::from_utf8_lossy(&sid.stdout).trim(), "1");
}

#[test]
fn inserts_updates_deletes_and_key_changes() {
    let p = Pair::start("dml");
    p.table(
        "CREATE TABLE item (region text, id int, name text, qty numeric, PRIMARY KEY (region, id))",
        "item",
        None,
    );
    p.both("INSERT INTO item SELECT 'eu', g, 'n' || g, g FROM generate_series(1, 50) g");
    let m = &p.master;
    m.execute(
        DB,
        "INSERT INTO item VALUES ('us', 1, 'new', 1.5), ('us', 2, E'tab\\tnew\\nline', NULL)",
    );
    m.execute(DB, "UPDATE item SET qty = qty * 2 WHERE id % 3 = 0");
    m.execute(DB, "DELETE FROM item WHERE id BETWEEN 40 AND 45");
    // key change, and two keys swapped in one transaction
    m.execute(
        DB,
        "UPDATE item SET id = 1000 WHERE region = 'eu' AND id = 1",
    );
    m.execute(
        DB,
        "BEGIN; UPDATE item SET id = -2 WHERE region = 'eu' AND id = 2;
                UPDATE item SET id = 2 WHERE region = 'eu' AND id = 3;
                UPDATE item SET id = 3 WHERE region = 'eu' AND id = -2; COMMIT;",
    );
    // delete and re-insert of a key; a key changed and changed back
    m.execute(DB, "DELETE FROM item WHERE region = 'eu' AND id = 10; INSERT INTO item VALUES ('eu', 10, 'again', 10)");
    m.execute(DB, "UPDATE item SET id = 2000 WHERE region = 'eu' AND id = 11; UPDATE item SET id = 11 WHERE id = 2000");
    p.sync();
    p.assert_equal("item");
    // A second round on top of the first.
    m.execute(
        DB,
        "UPDATE item SET name = upper(name); DELETE FROM item WHERE region = 'us'",
    );
    p.sync();
    p.assert_equal("item");
    // Nothing changed: in sync, nothing applied.
    let out = p.sync();
    assert!(out.contains("in sync"), "{out}");
}

/// "Replication only occurs when the column specified ... is modified."
#[test]
fn watched_columns() {
    let p = Pair::start("watched");
    p.table(
        "CREATE TABLE customer (cust_id int PRIMARY KEY, lastname text, firstname text, notes text);
         INSERT INTO customer VALUES (10, 'Nathan', 'John', 'a'), (11, 'Smith', 'Ann', 'b');",
        "customer",
        Some("lastname"),
    );
    // the first change set is the initial copy: the whole table
    p.sync();
    p.assert_equal("customer");
    let m = &p.master;
    m.execute(
        DB,
        "UPDATE customer SET firstname = 'Johnny' WHERE cust_id = 10",
    );
    p.sync();
    let slave = |sql: &str| p.slave.query_strings(DB, sql)[0][0].clone();
    // only an unwatched column changed: not replicated
    assert_eq!(
        slave("SELECT firstname FROM customer WHERE cust_id = 10").as_deref(),
        Some("John")
    );
    m.execute(
        DB,
        "UPDATE customer SET lastname = 'Nathaniel' WHERE cust_id = 10",
    );
    p.sync();
    // a watched change carries the whole current row
    p.assert_equal("customer");
    // running MasterAddTable again with another column watches that one too
    m.execute(DB, "SELECT rserv_add_table('customer', 'firstname')");
    m.execute(
        DB,
        "UPDATE customer SET firstname = 'Annie' WHERE cust_id = 11",
    );
    p.sync();
    assert_eq!(
        slave("SELECT firstname FROM customer WHERE cust_id = 11").as_deref(),
        Some("Annie")
    );
    m.execute(
        DB,
        "UPDATE customer SET notes = 'ignored' WHERE cust_id = 11",
    );
    p.sync();
    assert_eq!(
        slave("SELECT notes FROM customer WHERE cust_id = 11").as_deref(),
        Some("b")
    );
    // INSERT and DELETE always replicate
    m.execute(DB, "INSERT INTO customer VALUES (12, 'New', 'Guy', 'c'); DELETE FROM customer WHERE cust_id = 10");
    p.sync();
    assert_eq!(Pair::rows(&p.slave, "customer").len(), 2);
    assert_eq!(
        slave("SELECT count(*) FROM customer WHERE cust_id = 12").as_deref(),
        Some("1")
    );
}

/// A transaction that is open while a sync is prepared arrives with a later sync.
#[test]
fn open_transaction_arrives_later() {
    let p = Pair::start("opentx");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    let mut writer = p.master.connect(DB);
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (1, 'early')")
        .unwrap();
    // a transaction that started before but commits during the window
    let mut other = p.master.connect(DB);
    other
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT 1")
        .unwrap();
    p.master
        .execute(DB, "INSERT INTO t VALUES (2, 'committed')");
    p.sync();
    assert_eq!(Pair::rows(&p.slave, "t"), vec!["(2,committed)".to_string()]);
    other
        .batch_execute("INSERT INTO t VALUES (3, 'late writer'); COMMIT")
        .unwrap();
    writer.batch_execute("COMMIT").unwrap();
    p.sync();
    p.assert_equal("t");
    assert_eq!(Pair::rows(&p.slave, "t").len(), 3);
}

/// TRUNCATE, then rows inserted after it in the same transaction.
#[test]
fn truncate_is_replicated() {
    let p = Pair::start("trunc");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.both("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 100) g");
    p.master.execute(
        DB,
        "BEGIN; TRUNCATE t; INSERT INTO t VALUES (7, 'after'); COMMIT;",
    );
    p.sync();
    p.assert_equal("t");
    assert_eq!(Pair::rows(&p.slave, "t"), vec!["(7,after)".to_string()]);
}

/// PrepareSnapshot | ApplySnapshot; MasterSync `GetSyncID`: the file path of the seed.
#[test]
fn snapshot_file_tools() {
    let p = Pair::start("file");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.master.execute(
        DB,
        "INSERT INTO t VALUES (1, 'one'), (2, E'two\\\\with backslash')",
    );
    let dir = std::env::temp_dir().join(format!("rserv-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("snap");
    let f = file.to_str().unwrap();
    assert_ok(&p.replicate(&["prepare", DB, "--output", f]), "prepare");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.starts_with("-- RSERV SNAPSHOT 1\n-- SYNCID 1 "),
        "{text}"
    );
    assert!(text.ends_with('\n') && text.contains("\n-- OK {"), "{text}");
    assert_ok(&p.replicate(&["apply", DB, "--input", f]), "apply");
    p.assert_equal("t");
    // the same file again is a no-op
    let again = p.replicate(&["apply", DB, "--input", f]);
    assert_ok(&again, "apply again");
    assert!(String::from_utf8_lossy(&again.stderr).contains("skipped"));
    let id = p.replicate(&["sync-id", DB]);
    assert_ok(&id, "sync-id");
    let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
    assert_ok(&p.replicate(&["master-sync", DB, &id]), "master-sync");
    // confirming twice says so and fails
    assert_eq!(
        p.replicate(&["master-sync", DB, &id]).status.code(),
        Some(1)
    );
    // --snapshot keeps the seed's file-based cycle; --debug keeps the file
    p.master.execute(DB, "UPDATE t SET v = 'uno' WHERE id = 1");
    let kept = dir.join("kept");
    let k = format!("--snapshot={}", kept.display());
    assert_ok(
        &p.replicate(&[&k, "--debug", DB, DB]),
        "replicate --snapshot",
    );
    assert!(kept.exists());
    p.assert_equal("t");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The log is cleaned after confirmation, and only up to what the slave has.
#[test]
fn clean_log_keeps_what_the_slave_needs() {
    let p = Pair::start("clean");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v int)", "t", None);
    p.master.execute(
        DB,
        "INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g",
    );
    p.sync();
    let log = |c: &Cluster| {
        c.query_strings(DB, "SELECT count(*) FROM _rserv_log_")[0][0]
            .clone()
            .unwrap()
    };
    assert_eq!(log(&p.master), "0");
    // nothing left that any slave needs and nobody writing: the log was truncated, not
    // deleted row by row (a DELETE leaves the heap at its size until VACUUM)
    let heap = |c: &Cluster| {
        c.query_strings(DB, "SELECT pg_relation_size('_rserv_log_')")[0][0]
            .clone()
            .unwrap()
    };
    assert_eq!(heap(&p.master), "0");
    // prepared but not applied: clean-log must keep the rows
    p.master
        .execute(DB, "UPDATE t SET v = v + 1 WHERE id <= 10");
    let out = p.replicate(&["prepare", DB, "--output", "/dev/null"]);
    assert_ok(&out, "prepare");
    assert_ok(&p.replicate(&["clean-log", DB]), "clean-log");
    assert_eq!(log(&p.master), "10");
    // a writer's open transaction holds the log: clean-up deletes around it, never waits
    let mut writer = p.master.connect(DB);
    writer
        .batch_execute("BEGIN; INSERT INTO t VALUES (5000, 1)")
        .unwrap();
    p.sync();
    p.assert_equal("t");
    assert_eq!(log(&p.master), "0");
    writer.batch_execute("COMMIT").unwrap();
    p.sync();
    p.assert_equal("t");
    assert_eq!(Pair::rows(&p.slave, "t").len(), 1001);
    assert_eq!(log(&p.master), "0");
    assert_eq!(heap(&p.master), "0");
}
