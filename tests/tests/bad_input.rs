//! Bad input and misuse: each case is a clear error, and both databases stay as they were.

use rserv_tests::pair::{assert_fails, assert_ok, Pair, DB};
use rserv_tests::{run_replicate, run_replicate_env, Cluster};

/// What must not change on a failed run: the slave's rows and sync id, the master's log.
fn state(p: &Pair, table: &str) -> (Vec<String>, Vec<String>, String) {
    let sync = p
        .slave
        .query_strings(DB, "SELECT coalesce(rserv_slave_sync_id()::text, 'none')")[0][0]
        .clone()
        .unwrap_or_default();
    let log = Pair::rows(&p.master, "_rserv_log_");
    (Pair::rows(&p.slave, table), log, sync)
}

fn pair_with_changes(name: &str) -> Pair {
    let p = Pair::start(name);
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.master
        .execute(DB, "INSERT INTO t VALUES (1, 'a'), (2, 'b')");
    p.sync();
    p.master.execute(
        DB,
        "UPDATE t SET v = 'changed' WHERE id = 1; INSERT INTO t VALUES (3, 'c')",
    );
    p
}

/// A table the slave expects but the master does not replicate: a clear error, nothing applied.
/// (The converse is normal: each slave receives the tables it registered.)
#[test]
fn table_registered_on_one_side_only() {
    let p = pair_with_changes("oneside");
    p.both("CREATE TABLE u (id int PRIMARY KEY)");
    p.slave.execute(DB, "SELECT rserv_slave_add_table('u')");
    // the other tables keep flowing; the one the master lacks is named in a warning (a slave
    // table's owner must not be able to stop replication by registering a table)
    let out = p.replicate(&[DB, DB]);
    assert_ok(&out, "replicate with a table the master lacks");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARNING")
            && stderr.contains("the slave receives public.u but this master does not replicate it")
            && stderr.contains("rserv_add_table('public.u')"),
        "{stderr}"
    );
    p.assert_equal("t");
    // registered on the master only: the slave simply does not receive it...
    p.slave.execute(DB, "SELECT rserv_slave_remove_table('u')");
    p.master.execute(
        DB,
        "SELECT rserv_add_table('u'); INSERT INTO u VALUES (1), (2)",
    );
    p.sync();
    p.assert_equal("t");
    assert_eq!(Pair::rows(&p.slave, "u"), Vec::<String>::new());
    // ...until it registers it: then the table arrives whole (initial copy)
    p.slave.execute(DB, "SELECT rserv_slave_add_table('u')");
    p.sync();
    p.assert_equal("u");
}

/// A slave table that lacks a column of the master's (made so on the slave, not by a schema
/// change, which the slave would follow): a clear error naming it, nothing applied.
#[test]
fn column_missing_on_slave() {
    let p = pair_with_changes("missingcol");
    p.slave.execute(DB, "ALTER TABLE t DROP COLUMN v");
    p.master.execute(
        DB,
        "ALTER TABLE t ADD COLUMN extra int DEFAULT 7; UPDATE t SET v = 'x' WHERE id = 2",
    );
    let before = state(&p, "t");
    let out = p.replicate(&[DB, DB]);
    assert_fails(
        &out,
        1,
        &[
            "column \"v\" of table public.t",
            "does not exist on this slave",
        ],
    );
    assert_eq!(state(&p, "t"), before);
    p.slave.execute(DB, "ALTER TABLE t ADD COLUMN v text");
    p.sync();
    // the slave's columns are in another order now: compare them by name
    let q = "SELECT id, v, extra FROM t ORDER BY id";
    assert_eq!(p.master.query_strings(DB, q), p.slave.query_strings(DB, q));
}

#[test]
fn extension_missing() {
    let m = Cluster::start("noext-m");
    let s = Cluster::start("noext-s");
    for c in [&m, &s] {
        c.create_db(DB);
    }
    m.execute(DB, "CREATE EXTENSION rserv");
    let args = |extra: &[&str]| {
        let mut v = vec![
            format!("--masterhost={}", m.socket_dir().display()),
            format!("--masterport={}", m.port()),
            format!("--slavehost={}", s.socket_dir().display()),
            format!("--slaveport={}", s.port()),
            "--user=postgres".into(),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let a = args(&[DB, DB]);
    let out = run_replicate(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_fails(
        &out,
        1,
        &[
            "slave: the rserv extension is not installed in database \"app\"",
            "CREATE EXTENSION rserv",
        ],
    );
}

fn snapshot(p: &Pair) -> (std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!(
        "rserv-bad-{}-{}",
        std::process::id(),
        p.master.port()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("snap");
    assert_ok(
        &p.replicate(&["prepare", DB, "--output", file.to_str().unwrap()]),
        "prepare",
    );
    let text = std::fs::read_to_string(&file).unwrap();
    (file, text)
}

#[test]
fn damaged_snapshots_are_refused() {
    let p = pair_with_changes("damaged");
    let (file, good) = snapshot(&p);
    let before = state(&p, "t");
    let lines: Vec<&str> = good.lines().collect();
    let join = |l: &[&str]| l.join("\n") + "\n";
    let data_line = lines
        .iter()
        .position(|l| l.starts_with("3\t"))
        .expect("a data line");
    let mut reordered = lines.clone();
    reordered.swap(data_line, data_line - 1);
    let mut duplicated = lines.clone();
    duplicated.insert(data_line, lines[data_line]);
    let cases: Vec<(&str, String, &str)> = vec![
        ("truncated", good[..good.len() / 2].to_string(), "truncated"),
        ("no end line", join(&lines[..lines.len() - 1]), "end line"),
        (
            "corrupted",
            good.replacen("changed", "chanGed", 1),
            "checksum",
        ),
        ("reordered", join(&reordered), "invalid snapshot"),
        ("duplicated row", join(&duplicated), "checksum"),
        (
            "not a snapshot",
            "hello\n".to_string(),
            "not an rserv snapshot",
        ),
        ("empty", String::new(), "empty"),
    ];
    for (what, text, needle) in cases {
        std::fs::write(&file, &text).unwrap();
        let out = p.replicate(&["apply", DB, "--input", file.to_str().unwrap()]);
        assert_fails(&out, 4, &["invalid snapshot", needle]);
        assert_eq!(state(&p, "t"), before, "{what}: slave changed");
    }
    // another rserv version on the master is no reason to refuse (tests/tests/rolling.rs), but
    // another change-set format or a feature this replicate does not know is, before anything
    // is read (a newer release's change set: apply it with that release's replicate)
    let format2 = good.replacen("-- RSERV SNAPSHOT 1\n", "-- RSERV SNAPSHOT 2\n", 1);
    let header_end = good.find("}\n").expect("the header's end");
    let unknown_feature = format!(
        "{},\"features\":[\"hologram\"]{}",
        &good[..header_end],
        &good[header_end..]
    );
    for (what, text, needle) in [
        ("format 2", format2, "the change set is in format 2"),
        ("a feature", unknown_feature, "uses feature \"hologram\""),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = p.replicate(&["apply", DB, "--input", file.to_str().unwrap()]);
        assert_fails(&out, 1, &[needle, "with the replicate of"]);
        assert_eq!(state(&p, "t"), before, "{what}: slave changed");
    }
    // the good file still applies
    std::fs::write(&file, &good).unwrap();
    assert_ok(
        &p.replicate(&["apply", DB, "--input", file.to_str().unwrap()]),
        "apply good",
    );
    p.assert_equal("t");
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[test]
fn slave_refuses_a_second_master() {
    let p = pair_with_changes("twomasters");
    let other = Cluster::start("twomasters-o");
    other.create_db(DB);
    other.execute(DB, "CREATE EXTENSION rserv; CREATE TABLE t (id int PRIMARY KEY, v text); SELECT rserv_add_table('t'); INSERT INTO t VALUES (99, 'other')");
    let before = state(&p, "t");
    let out = run_replicate(&[
        &format!("--masterhost={}", other.socket_dir().display()),
        &format!("--masterport={}", other.port()),
        &format!("--slavehost={}", p.slave.socket_dir().display()),
        &format!("--slaveport={}", p.slave.port()),
        "--user=postgres",
        DB,
        DB,
    ]);
    assert_fails(&out, 1, &["this slave follows master"]);
    assert_eq!(state(&p, "t"), before);
}

#[test]
fn local_writes_on_the_slave_are_refused() {
    let p = pair_with_changes("protect");
    let mut c = p.slave.connect(DB);
    let err = c.batch_execute("UPDATE t SET v = 'local'").unwrap_err();
    let msg = rserv_tests::describe_pg_error(&err);
    assert!(
        msg.contains("replication slave table; local UPDATE refused"),
        "{msg}"
    );
    assert!(msg.contains("rserv.allow_slave_writes"), "{msg}");
    c.batch_execute("SET rserv.allow_slave_writes = on; UPDATE t SET v = 'local' WHERE id = 2")
        .unwrap();
    // the next change set brings the row back to the master's state only if it changed there;
    // here it did not, so the slave keeps its local value: that is what the switch is for
    assert_eq!(
        p.slave.query_strings(DB, "SELECT v FROM t WHERE id = 2")[0][0].as_deref(),
        Some("local")
    );
}

#[test]
fn connection_failures() {
    // nothing listens on this port
    let out = run_replicate(&["--host=127.0.0.1", "--port=1", "--user=postgres", DB, DB]);
    assert_fails(
        &out,
        3,
        &["master: could not connect to host=127.0.0.1 port=1"],
    );
    // settings that cannot be right are bad input (2), nothing was contacted
    for (conninfo, says) in [
        ("host=127.0.0.1 port=abc dbname=app", "port"),
        ("host=127.0.0.1 frobnicate=1 dbname=app", "frobnicate"),
    ] {
        let out = run_replicate(&["--master", conninfo, "--slave", conninfo, DB, DB]);
        assert_fails(&out, 2, &[says]);
    }

    let dir = std::env::temp_dir().join(format!("rserv-hba-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hba = dir.join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all postgres trust\nlocal all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    // the server (user postgres) must be able to read it
    std::process::Command::new("chmod")
        .args(["-R", "a+rX", dir.to_str().unwrap()])
        .status()
        .unwrap();
    let hba_setting = hba.display().to_string();
    let p = Pair {
        master: Cluster::start_with("pw-m", &[("hba_file", &hba_setting)]),
        slave: Cluster::start_with("pw-s", &[("hba_file", &hba_setting)]),
    };
    for c in [&p.master, &p.slave] {
        c.create_db(DB);
        c.execute(
            DB,
            "CREATE EXTENSION rserv; CREATE ROLE repl LOGIN SUPERUSER PASSWORD 'sesame-42'",
        );
        c.execute(DB, "CREATE TABLE t (id int PRIMARY KEY)");
    }
    p.master
        .execute(DB, "SELECT rserv_add_table('t'); INSERT INTO t VALUES (1)");
    p.slave.execute(DB, "SELECT rserv_slave_add_table('t')");
    let args = [
        format!("--masterhost={}", p.master.socket_dir().display()),
        format!("--masterport={}", p.master.port()),
        format!("--slavehost={}", p.slave.socket_dir().display()),
        format!("--slaveport={}", p.slave.port()),
        "--user=repl".to_string(),
        DB.to_string(),
        DB.to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let wrong = run_replicate_env(&args, &[("PGPASSWORD", "wrong-password-7")]);
    assert_fails(
        &wrong,
        3,
        &["password authentication failed for user \"repl\""],
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&wrong.stdout),
        String::from_utf8_lossy(&wrong.stderr)
    );
    assert!(
        !all.contains("wrong-password-7"),
        "the password was printed: {all}"
    );
    assert_eq!(Pair::rows(&p.slave, "t"), Vec::<String>::new());
    // the right password from PGPASSWORD, then from a password file
    assert_ok(
        &run_replicate_env(&args, &[("PGPASSWORD", "sesame-42")]),
        "PGPASSWORD",
    );
    p.master.execute(DB, "INSERT INTO t VALUES (2)");
    let pass = dir.join("pgpass");
    std::fs::write(&pass, "*:*:*:repl:sesame-42\n").unwrap();
    std::process::Command::new("chmod")
        .args(["600", pass.to_str().unwrap()])
        .status()
        .unwrap();
    assert_ok(
        &run_replicate_env(&args, &[("PGPASSFILE", pass.to_str().unwrap())]),
        "PGPASSFILE",
    );
    p.assert_equal("t");
    // a password flag works but warns that ps shows it
    let mut flagged = args.clone();
    flagged.insert(0, "--password=sesame-42");
    let out = run_replicate(&flagged);
    assert_ok(&out, "--password");
    assert!(String::from_utf8_lossy(&out.stderr).contains("visible to other users in ps output"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn incompatible_column_type() {
    let p = Pair::start("coltype");
    p.master
        .execute(DB, "CREATE TABLE t (id int PRIMARY KEY, v text, n int)");
    // bigint can take the master's int; int cannot take the master's text
    p.slave
        .execute(DB, "CREATE TABLE t (id int PRIMARY KEY, v int, n bigint)");
    p.master.execute(
        DB,
        "SELECT rserv_add_table('t'); INSERT INTO t VALUES (1, '12', 3)",
    );
    p.slave.execute(DB, "SELECT rserv_slave_add_table('t')");
    let out = p.replicate(&[DB, DB]);
    assert_fails(
        &out,
        1,
        &[
            "column \"v\" of table public.t is text on the master but integer on this slave",
            "ALTER TABLE public.t ALTER COLUMN v TYPE text",
        ],
    );
    assert_eq!(Pair::rows(&p.slave, "t"), Vec::<String>::new());
    p.slave
        .execute(DB, "ALTER TABLE t ALTER COLUMN v TYPE text");
    p.sync();
    assert_eq!(Pair::rows(&p.slave, "t"), vec!["(1,12,3)".to_string()]);
}
