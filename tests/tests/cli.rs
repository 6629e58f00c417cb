//! The command line as a new user meets it: databases named only in the connection strings,
//! slaves without --server (see also many_slaves.rs), --help and --version, and the log
//! (plain and colourless in a file, coloured only on a terminal, JSON on request).

use rserv_tests::daemon::{eventually, Daemon};
use rserv_tests::pair::{assert_fails, assert_ok, Pair, DB};
use rserv_tests::{replicate_bin, run_replicate, Cluster};
use std::process::{Command, Stdio};

/// A connection string that names no database.
fn no_db(c: &Cluster) -> String {
    format!(
        "host={} port={} user=postgres",
        c.socket_dir().display(),
        c.port()
    )
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Master and slave hold the same rows in `table` (false while the slave lacks it).
fn same(p: &Pair, table: &str) -> bool {
    let rows = |c: &Cluster| -> Option<Vec<String>> {
        let q = format!("SELECT t::text FROM {table} t ORDER BY 1");
        let rows = c.connect(DB).query(&q, &[]).ok()?;
        Some(rows.iter().map(|r| r.get(0)).collect())
    };
    let m = rows(&p.master);
    m.is_some() && m == rows(&p.slave)
}

fn run(args: &[String]) -> std::process::Output {
    run_replicate(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

#[test]
fn databases_named_in_connection_strings_need_no_arguments() {
    let p = Pair::start("cli-db");
    p.master.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT rserv_add_table('t');
         INSERT INTO t VALUES (1, 'a'), (2, 'b');",
    );
    let (m, s) = (p.master.conninfo(DB), p.slave.conninfo(DB));
    let both = |rest: &[&str]| {
        let mut a = vec![
            "--master".to_string(),
            m.clone(),
            "--slave".into(),
            s.clone(),
        ];
        a.extend(rest.iter().map(|x| x.to_string()));
        a
    };
    // one cycle, check and status with no database argument
    assert_ok(&run(&both(&["--create-tables"])), "one cycle");
    p.assert_equal("t");
    let out = run(&both(&["check"]));
    assert_ok(&out, "check");
    assert!(stdout(&out).contains("equal"), "{}", stdout(&out));
    let out = run(&[
        "--master".into(),
        m.clone(),
        "status".into(),
        "--json".into(),
    ]);
    assert_ok(&out, "status");
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(st["slaves"][0]["server"], 1, "{st}");
    // one database argument: the side whose connection string names none
    p.master.execute(DB, "INSERT INTO t VALUES (3, 'c')");
    assert_ok(
        &run(&[
            "--master".into(),
            m.clone(),
            "--slave".into(),
            no_db(&p.slave),
            DB.into(),
        ]),
        "SLAVEDB only",
    );
    p.assert_equal("t");
    // single-database commands too, [DB] TABLE included
    p.master
        .execute(DB, "CREATE TABLE u (id int PRIMARY KEY, w int)");
    assert_ok(
        &run(&[
            "--master".into(),
            m.clone(),
            "master-add-table".into(),
            "u".into(),
            "w".into(),
        ]),
        "master-add-table TABLE COLUMN",
    );
    assert_eq!(
        p.master.query_strings(
            DB,
            "SELECT watched_columns::text FROM rserv_table_list() WHERE table_name = 'u'"
        ),
        vec![vec![Some("{w}".to_string())]]
    );
    let out = run(&["--slave".into(), s.clone(), "sync-id".into()]);
    assert_ok(&out, "sync-id");
    assert!(
        stdout(&out).trim().parse::<i64>().is_ok(),
        "{}",
        stdout(&out)
    );
    // the daemon, from connection strings alone
    let mut args = vec!["run".to_string(), "--interval=0.2".into()];
    args.extend(both(&[]));
    let d = Daemon::start(&args);
    p.master
        .execute(DB, "UPDATE t SET v = 'daemon' WHERE id = 1");
    eventually(60, "the daemon's change on the slave", || same(&p, "t"));
    // the line follows the commit that made the change visible
    eventually(30, "the daemon's log line", || {
        d.log().contains("change set applied")
    });
    let log = d.log();
    assert!(d.stop().success());
    assert!(
        !log.contains('\u{1b}'),
        "no ANSI escapes when stderr is a file:\n{log}"
    );
}

#[test]
fn a_missing_database_is_a_clear_usage_error() {
    // nothing listens there: the error comes before any connection attempt
    let ci = "host=127.0.0.1 port=1 user=postgres";
    for (args, side) in [
        (vec!["--master", ci, "--slave", ci], "master"),
        (vec!["--master", ci, "--slave", ci, "run"], "master"),
        (vec!["--master", ci, "--slave", ci, "check"], "master"),
        (vec!["--master", ci, "status"], "master"),
        (vec!["--slave", ci, "sync-id"], "slave"),
        (
            vec![
                "--master",
                "host=127.0.0.1 port=1 dbname=app",
                "--slave",
                ci,
            ],
            "slave",
        ),
    ] {
        let out = run_replicate(&args);
        assert_fails(
            &out,
            2,
            &[
                &format!("no {side} database"),
                &format!("{}DB", side.to_uppercase()),
                &format!("--{side}"),
            ],
        );
    }
    let out = run_replicate(&["--master", ci, "--slave", ci, "app"]);
    assert_fails(&out, 2, &["give both MASTERDB and SLAVEDB"]);
}

#[test]
fn help_and_version() {
    let out = run_replicate(&["--version"]);
    assert_ok(&out, "--version");
    let text = stdout(&out);
    assert!(
        text.starts_with("replicate 1.1.")
            && text.contains("talks to the rserv extension 1.0.x and 1.1.x"),
        "{text}"
    );
    // the seed-compatible flags have descriptions too (every option: see cli.rs's unit test)
    let out = run_replicate(&["run", "--help"]);
    assert_ok(&out, "run --help");
    let text = stdout(&out);
    for line in [
        "Master host or socket directory",
        "Slave port",
        "Master user name",
        "The slave's id on the master",
        "Log lines as text",
        "Master database (may be left out when --master names it)",
    ] {
        assert!(text.contains(line), "run --help lacks {line:?}:\n{text}");
    }
    let out = run_replicate(&["master-add-table", "--help"]);
    assert!(
        stdout(&out).contains("[DB] TABLE [COLUMN]"),
        "{}",
        stdout(&out)
    );
}

/// The seed's pipeline registers its slave as server 0 without knowing the slave database; the
/// one-shot command without --server finds that registration by the change set the slave
/// applied last, binds it, and keeps using it: one slave, one id, one log horizon. The
/// pipeline's commands, without --server, use the master's only slave.
#[test]
fn the_seed_pipeline_and_the_one_shot_command_agree_on_the_slave_id() {
    let p = Pair::start("cli-seed");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v int)", "t", None);
    p.master.execute(
        DB,
        "INSERT INTO t SELECT g, g FROM generate_series(1, 20) g",
    );
    let file = p.master.socket_dir().join("change.set");
    let f = file.to_str().unwrap();
    assert_ok(&p.replicate(&["prepare", DB, "--output", f]), "prepare");
    assert_ok(&p.replicate(&["apply", DB, "--input", f]), "apply");
    let id = p.replicate(&["sync-id", DB]);
    let id = stdout(&id).trim().to_string();
    assert_ok(&p.replicate(&["master-sync", DB, &id]), "master-sync");
    let slaves = || {
        p.master.query_strings(
            DB,
            "SELECT server::text, slave_node::text FROM rserv_status WHERE server IS NOT NULL ORDER BY server",
        )
    };
    assert_eq!(
        slaves(),
        vec![vec![Some("0".into()), None]],
        "the seed's id, no node"
    );
    p.master.execute(DB, "UPDATE t SET v = -v WHERE id <= 5");
    p.sync();
    p.assert_equal("t");
    let node = p.slave.query_strings(DB, "SELECT rserv_node_id()")[0][0].clone();
    assert_eq!(
        slaves(),
        vec![vec![Some("0".into()), node.clone()]],
        "bound, not added"
    );
    // and the pipeline again: the only slave
    p.master.execute(DB, "DELETE FROM t WHERE id > 15");
    assert_ok(
        &p.replicate(&["prepare", DB, "--output", f]),
        "prepare again",
    );
    assert_ok(&p.replicate(&["apply", DB, "--input", f]), "apply again");
    let id = stdout(&p.replicate(&["sync-id", DB])).trim().to_string();
    assert_ok(&p.replicate(&["master-sync", DB, &id]), "master-sync again");
    p.assert_equal("t");
    assert_ok(&p.replicate(&["clean-log", DB]), "clean-log");
    assert_eq!(
        p.master
            .query_strings(DB, "SELECT count(*)::text FROM _rserv_log_")[0][0]
            .as_deref(),
        Some("0"),
        "no second registration holds the log"
    );
    assert_eq!(slaves(), vec![vec![Some("0".into()), node]]);
}

/// A slave of a configuration file without `server`: known by its node id.
#[test]
fn a_configured_slave_needs_no_server_id() {
    let p = Pair::start("cli-cfg");
    p.master.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY); SELECT rserv_add_table('t');
         INSERT INTO t SELECT generate_series(1, 10);",
    );
    let cfg = p.master.socket_dir().join("replicate.toml");
    std::fs::write(
        &cfg,
        format!(
            "[master]\nconninfo = \"{}\"\n\n[[slave]]\ncreate_tables = true\nconninfo = \"{}\"\n\n\
             [run]\ninterval = 0.2\n",
            p.master.conninfo(DB),
            p.slave.conninfo(DB)
        ),
    )
    .unwrap();
    let d = Daemon::start(&[
        "run".into(),
        "--log-format=json".into(),
        "--config".into(),
        cfg.display().to_string(),
    ]);
    eventually(60, "the configured slave's copy", || same(&p, "t"));
    // (the daemon logs it once the cycle that applied the copy has returned)
    eventually(30, "the slave's id in the log", || {
        d.log().contains("slave identified")
    });
    let log = d.log();
    assert!(d.stop().success());
    // JSON lines for log shippers: every line an object with level, target and message
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["target"].is_string()));
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "slave identified" && l["server"] == 1),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "change set applied" && l["syncid"].is_i64()),
        "{log}"
    );
}

/// `--log-format json` for a one-shot command: the --verbose lines and results as objects.
#[test]
fn one_shot_json_log() {
    let p = Pair::start("cli-json");
    p.table("CREATE TABLE t (id int PRIMARY KEY)", "t", None);
    p.master.execute(DB, "INSERT INTO t VALUES (1)");
    let out = p.replicate(&["--verbose", "--log-format", "json", DB, DB]);
    assert_ok(&out, "one cycle, JSON log");
    let messages: Vec<String> = stderr(&out)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            v["message"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m == ">>>>>>>>>>>>> Prepare Snapshot"),
        "{messages:?}"
    );
    // and the plain style keeps the seed's lines
    p.master.execute(DB, "INSERT INTO t VALUES (2)");
    let out = p.replicate(&["--verbose", DB, DB]);
    assert_ok(&out, "one cycle, text log");
    let text = stderr(&out);
    assert!(
        text.lines().any(|l| l == ">>>>>>>>>>>>> Prepare Snapshot")
            && text
                .lines()
                .any(|l| l.starts_with("Snapshot applied: change set ")),
        "{text}"
    );
}

/// Colour on a terminal only: the daemon under a pseudo-terminal (script(1)) colours its
/// level names; a one-shot command's plain lines never have colour.
#[test]
fn colour_only_on_a_terminal() {
    // nothing listens on port 1: the daemon logs "starting" and its failed attempts
    let ci = "host=127.0.0.1 port=1 user=postgres dbname=app connect_timeout=2";
    let on_terminal = |args: &str| {
        let cmd = format!("{} {args}", replicate_bin().display());
        let out = Command::new("timeout")
            .args(["-k", "2", "4", "script", "-qec", &cmd, "/dev/null"])
            .env("HOME", "/nonexistent/rserv-tests-home")
            .stdin(Stdio::null())
            .output()
            .expect("script(1) runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let daemon = on_terminal(&format!("run --master '{ci}' --slave '{ci}'"));
    assert!(daemon.contains("starting"), "{daemon}");
    assert!(
        daemon.contains("\u{1b}["),
        "the daemon's log on a terminal is coloured:\n{daemon:?}"
    );
    let one_shot = on_terminal(&format!("--master '{ci}' --slave '{ci}'"));
    assert!(one_shot.contains("could not connect"), "{one_shot}");
    assert!(!one_shot.contains('\u{1b}'), "{one_shot:?}");
    // the same daemon with stderr in a file: no escapes
    let d = Daemon::start(&[
        "run".into(),
        "--master".into(),
        ci.into(),
        "--slave".into(),
        ci.into(),
    ]);
    eventually(30, "the daemon's first failed attempt", || {
        d.log().contains("replication interrupted")
    });
    let log = d.log();
    d.stop();
    assert!(!log.contains('\u{1b}'), "{log:?}");
}
