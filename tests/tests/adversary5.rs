//! Adversary review 5, of branch `failover` at 4dc330b (switchover, failover, rejoin, the fence,
//! the takeover record, the roles in `rserv_status`). Each test is one finding, reproduced on
//! real clusters; it failed on 4dc330b and passes once the finding is fixed. Ranked by
//! severity:
//!
//! - HIGH (security) e1 `rejoin_never_runs_a_table_owners_cast_as_the_operator`: `replicate
//!   rejoin` (and `failover`'s repair and `check`, which share the code) read keys as
//!   `key::text`. A table owner who owns the key's type (an enum, her table's row type) creates
//!   `CREATE CAST (mood AS text) WITH FUNCTION her_function`, and replicate's session (the
//!   operator, a superuser) runs her function: she makes herself superuser. FIXED: keys are
//!   read with `pg_catalog.format('%s', key)`, the type's output function, which no cast can
//!   replace (replicate/src/check.rs, `Table::key_array`).
//! - HIGH (correctness) e2 `rejoin_with_a_boolean_key_keeps_the_old_masters_rows`: the same
//!   `key::text` is not the text the capture trigger logs (the output function): for a `bool`
//!   key `true::text` is 'true', the log holds 't' (likewise `char(n)`, `inet`). Rejoin then
//!   finds neither side's row for the old master's change, reports it "(no row) | (no row)",
//!   saves nothing, is not refused without `--discard-divergent`, and its final `check
//!   --repair` overwrites the old master's row: committed data discarded without a trace and
//!   without the flag. FIXED by the same change as e1.
//! - HIGH (correctness) e3 `the_fence_holds_against_allow_slave_writes`: the fence is the
//!   slave's protection trigger, and that trigger lets any session through that sets the
//!   USERSET `rserv.allow_slave_writes = on` (a slave's escape hatch). On a fenced master (a
//!   switchover after the promotion: two writable masters; a deposed master during rejoin) the
//!   write commits, is captured, and never reaches the new master: the row is lost, and in
//!   rejoin it is not in the divergent-rows file either. FIXED: while `_rserv_fence_` holds
//!   its row the trigger refuses whatever the setting (src/slave_registry.rs,
//!   `_rserv_protect_`). Residual, FIXED later (e3b
//!   `the_fence_holds_against_a_snapshot_older_than_it`): a REPEATABLE READ writer whose
//!   snapshot is older than the fence's commit does not see that row and still passed with
//!   the setting. The setting now lets a write through only on a table this database
//!   receives (or a partition of one), which a fence does not change
//!   (`_rserv_slave_tables_.reloid`, readable to PUBLIC); not by the relcache's capture
//!   trigger, which a cascading slave's received tables carry too (the test checks a cascade).
//! - HIGH (correctness) e4 `ddl_on_a_fenced_master_is_refused`: the fence blocks DML only. A
//!   schema change on a fenced master after the last change set (`ALTER TABLE ... TYPE ...
//!   USING`, which rewrites every row; ADD/DROP COLUMN; ATTACH/DETACH PARTITION) commits, is
//!   recorded for slaves nobody will prepare for, and the demote turns the old master into a
//!   slave that silently differs from its master. FIXED: the DDL guards refuse a recorded
//!   schema change or partition change of a replicated table while the master is fenced
//!   (src/fence.rs `refuse_ddl_while_fenced`, called from src/ddl/record.rs and
//!   src/partitions.rs).
//! - MEDIUM (security) e5 `divergent_rows_file_is_safe_to_load_with_psql`: the file "psql can
//!   load" writes keys and the new master's rows into `--` comment lines unescaped; a key
//!   holding a newline puts the table owner's SQL on a line of its own, which the operator's
//!   psql (a superuser) runs. And it followed a symlink planted at the file's path (the
//!   default name is predictable, in the current directory). FIXED: comment text has its line
//!   breaks escaped, the file starts with `\set ON_ERROR_STOP on` (a COPY that fails would
//!   otherwise have psql run its data lines as SQL), and it is written to a new file renamed
//!   into place (replicate/src/divergence.rs `save`).
//!
//! Left open by the review, fixed afterwards (each test failed before its fix):
//! - MEDIUM (correctness) e6 `failover_stopped_before_a_repair_leaves_the_slave_refusing_to_apply`:
//!   `replicate failover` killed between `rserv_repoint` and the `check --repair` of a slave
//!   that was behind left that slave following the new master while lacking the old master's
//!   last transactions; nothing recorded that it still needed the comparison, so a `replicate
//!   run` started instead of re-running `failover` never repaired it (silently inconsistent).
//!   FIXED: `rserv_repoint(..., behind)` records `_rserv_slave_sync_.needs_check`;
//!   `rserv_apply_begin` refuses change sets while it is set ("run replicate failover again,
//!   or replicate check --repair"), except in a session that compares
//!   (`rserv_slave_check_begin`, called by `check`), and a comparison that finds both sides
//!   equal clears it (`rserv_slave_check_end`); `rserv_status.in_progress` says 'check', and
//!   `replicate switchover` to such a slave is refused before its fence (src/failover.rs,
//!   replicate/src/check.rs).
//! - MEDIUM (correctness) e7 `a_switchover_never_erases_an_unfinished_failover`:
//!   `rserv_demote` deleted `_rserv_takeover_` even when that recorded a failover whose old
//!   master had not rejoined (completed IS NULL). After failover A->B and then a switchover
//!   B->C before A came back, nothing recorded what A committed after the takeover point, and
//!   no guard recognised A as deposed: A, back, was writable next to C, and `replicate rejoin`
//!   could not run. FIXED: `rserv_demote` refuses while a failover takeover is incomplete,
//!   naming the old master ("rejoin it first, or give it up with rserv_takeover_done(old)"),
//!   and `replicate switchover` says the same before it fences anything (src/takeover.rs
//!   `refuse_unfinished_failover`, replicate/src/switchover.rs `refuse_before_fence`). Carrying
//!   the record over to the new master was not chosen: `_rserv_takeover_` holds one takeover,
//!   and a second master to rejoin through would only lengthen the chain.
//! - LOW e8: rejoin's report on stdout printed keys and rows raw (terminal control characters,
//!   fake lines in logs). FIXED with e5 (the same escaping; no test of its own).
//!
//! Checked and held up: who may call the new functions (fence, unfence, promote and demote need
//! a replicator acting as every table's owner; adopt, repoint, takeover_done and changed_since
//! give a replicator nothing it could not do with apply/prepare already); rserv's own trigger
//! DDL while `own_triggers` is set runs no user code (CREATE/DROP TRIGGER); the fence's
//! NOWAIT loop and 2PC naming; rejoin re-run after a stop at each step (failover.rs covers it);
//! the takeover point's log kept by the old master's clean-up (the new master stays
//! registered there).
//!
//! Run: `RSERV_PG_BINDIR=…/bin cargo test -p rserv-tests --test adversary5 -- --test-threads=1`.

use rserv_tests::bank::{self, total, try_write};
use rserv_tests::pair::{assert_ok, between, conn_args, database_arg, start_clusters, DB};
use rserv_tests::roles::{exec_as, is_superuser, output_text, role_exists};
use rserv_tests::{pg_bindir, run_replicate, Cluster, Stepped};
use std::process::Output;

fn value(c: &Cluster, sql: &str) -> String {
    c.query_strings(DB, sql)[0][0].clone().unwrap_or_default()
}

/// `replicate failover` of `slave` (its master is down).
fn failover(slave: &Cluster) -> Output {
    run_replicate(&["--user=postgres", "failover", &database_arg(slave)])
}

/// `replicate rejoin` of `old` with `new`, saving divergent rows in `file`.
fn rejoin(new: &Cluster, old: &Cluster, file: &std::path::Path, discard: bool) -> Output {
    let mut args = conn_args(new, old);
    args.push("rejoin".into());
    if discard {
        args.push("--discard-divergent".into());
    }
    args.extend([
        "--divergent-file".into(),
        file.display().to_string(),
        DB.into(),
        DB.into(),
    ]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run_replicate(&refs)
}

fn scratch(what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("rserv-adv5-{what}-{}.sql", std::process::id()))
}

/// `table` replicated from `m` to `s` (created there by replicate), then `m` killed and `s`
/// promoted by failover; `m` is back, unfenced, as a master that missed the takeover.
fn failed_over(m: &Cluster, s: &Cluster, ddl: &str, table: &str, rows: &str) {
    m.execute(DB, ddl);
    m.execute(DB, &format!("SELECT rserv_add_table('{table}')"));
    m.execute(DB, rows);
    assert_ok(&between(m, s, &["--create-tables", DB, DB]), "first copy");
    m.execute(DB, "CHECKPOINT"); // (synchronous_commit is off)
    m.stop_immediate();
    assert_ok(&failover(s), "failover");
    m.start_again();
}

// ---------------------------------------------------------------------------------------------
// e1 (security, HIGH): a table owner's cast runs as the operator during rejoin
// ---------------------------------------------------------------------------------------------

/// e1. Mallory owns an enum type, a table keyed by it, and a cast from it to text whose
/// function makes her superuser when a superuser runs it. Rejoin reads the old master's
/// changed rows by key: it must not run her cast (it ran it as `postgres`).
#[test]
fn rejoin_never_runs_a_table_owners_cast_as_the_operator() {
    let cs = start_clusters(&["adv5-cast-m", "adv5-cast-s"]);
    let (m, s) = (&cs[0], &cs[1]);
    for c in [m, s] {
        c.execute("postgres", "CREATE ROLE mallory LOGIN");
        c.execute(DB, "GRANT CREATE ON SCHEMA public TO mallory");
        exec_as(
            c,
            "mallory",
            "CREATE TYPE mood AS ENUM ('calm', 'glad', 'sad'); \
             CREATE TABLE feeling (k mood PRIMARY KEY, v text NOT NULL)",
        );
    }
    exec_as(
        m,
        "mallory",
        "INSERT INTO feeling VALUES ('calm', 'a'), ('glad', 'b')",
    );
    m.execute(DB, "SELECT rserv_add_table('feeling')");
    s.execute(DB, "SELECT rserv_slave_add_table('feeling')");
    assert_ok(&between(m, s, &[DB, DB]), "first copy");
    m.execute(DB, "CHECKPOINT"); // (synchronous_commit is off)
    m.stop_immediate();
    assert_ok(&failover(s), "failover");
    m.start_again();
    // on the old master, after the takeover point: a row the new master never received, and
    // the cast (created late: ordinary replication is not what this test is about). Rejoin
    // reads in transactions it rolls back: the proof is a shell command run by the server
    // (COPY TO PROGRAM, a superuser's), which no rollback undoes.
    let pwned = std::env::temp_dir().join(format!("rserv-adv5-pwned-{}", std::process::id()));
    let _ = std::fs::remove_file(&pwned);
    exec_as(
        m,
        "mallory",
        &format!(
            "UPDATE feeling SET v = 'old master only' WHERE k = 'glad'; \
         CREATE FUNCTION mood_text(mood) RETURNS text LANGUAGE plpgsql AS $$ \
         BEGIN \
           IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN \
             EXECUTE 'ALTER ROLE mallory SUPERUSER'; \
             EXECUTE pg_catalog.format('COPY (SELECT 1) TO PROGRAM %L', 'touch ' || '{pwned}'); \
           END IF; \
           RETURN pg_catalog.format('%s', $1); \
         END $$; \
         CREATE CAST (mood AS text) WITH FUNCTION mood_text(mood)",
            pwned = pwned.display()
        ),
    );
    assert!(!is_superuser(m, "mallory"));
    let file = scratch("cast");
    let out = rejoin(s, m, &file, false);
    let _ = std::fs::remove_file(&file);
    let ran = pwned.exists();
    let _ = std::fs::remove_file(&pwned);
    assert!(
        !ran,
        "rejoin ran mallory's cast as superuser (a shell command): {}",
        output_text(&out)
    );
    assert!(
        !is_superuser(m, "mallory"),
        "rejoin ran mallory's cast as superuser: {}",
        output_text(&out)
    );
    // refused (the row differs), naming it
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("old master only"),
        "{}",
        output_text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// e2 (correctness, HIGH): a boolean key's change is discarded without the flag and the file
// ---------------------------------------------------------------------------------------------

/// e2. The old master changed a row of a table keyed by a boolean after the takeover point;
/// the new master holds another version. Rejoin without `--discard-divergent` must refuse,
/// saving the old master's row; it went ahead and overwrote it.
#[test]
fn rejoin_with_a_boolean_key_keeps_the_old_masters_rows() {
    let cs = start_clusters(&["adv5-bool-m", "adv5-bool-s"]);
    let (m, s) = (&cs[0], &cs[1]);
    failed_over(
        m,
        s,
        "CREATE TABLE flag (k bool PRIMARY KEY, v text NOT NULL)",
        "flag",
        "INSERT INTO flag VALUES (false, 'a'), (true, 'b')",
    );
    m.execute(DB, "UPDATE flag SET v = 'old master only' WHERE k");
    let file = scratch("bool");
    let _ = std::fs::remove_file(&file);
    let out = rejoin(s, m, &file, false);
    let saved = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        value(m, "SELECT v FROM flag WHERE k"),
        "old master only",
        "rejoin discarded the old master's row: {}",
        output_text(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(saved.contains("old master only"), "file:\n{saved}");
}

// ---------------------------------------------------------------------------------------------
// e3 (correctness, HIGH): rserv.allow_slave_writes passes the fence
// ---------------------------------------------------------------------------------------------

/// The write a session that sets `rserv.allow_slave_writes` tries on `c`.
fn write_anyway(c: &Cluster, id: i32) -> Result<(), String> {
    let mut client = c.connect(DB);
    client
        .batch_execute(&format!(
            "SET rserv.allow_slave_writes = on; INSERT INTO account VALUES ({id}, 7)"
        ))
        .map_err(|e| rserv_tests::describe_pg_error(&e))
}

/// `a` (the master) switches over to `b`, held at `step`, where `probe` runs on `a`; returns
/// what it returned. The old master `a` then follows `b`, replicated once.
fn during_switchover<T>(
    a: &Cluster,
    b: &Cluster,
    step: &str,
    probe: impl FnOnce(&Cluster) -> T,
) -> T {
    let mut args = conn_args(a, b);
    args.extend(["switchover", DB, DB].map(String::from));
    let mut run = Stepped::start(&args, &[step]);
    run.wait_for(step);
    let seen = probe(a);
    run.resume();
    let (code, out, err) = run.finish();
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_ok(&between(b, a, &[DB, DB]), "new master -> old master");
    seen
}

/// The master `b` dies, its slave `a` takes over by failover, `b` comes back and rejoins
/// (discarding), held after the re-send, where `probe` runs on `b`; returns what it returned.
/// `b` then follows `a`, replicated once.
fn during_rejoin<T>(a: &Cluster, b: &Cluster, probe: impl FnOnce(&Cluster) -> T) -> T {
    b.execute(DB, "CHECKPOINT"); // (synchronous_commit is off: keep the takeover)
    b.stop_immediate();
    assert_ok(&failover(a), "failover");
    b.start_again();
    let file = scratch(&format!("held-{}", b.port()));
    let mut args = conn_args(a, b);
    args.extend(["rejoin", "--discard-divergent", "--divergent-file"].map(String::from));
    args.extend([file.display().to_string(), DB.into(), DB.into()]);
    let mut run = Stepped::start(&args, &["rejoin:touched"]);
    run.wait_for("rejoin:touched");
    let seen = probe(b);
    run.resume();
    let (code, out, err) = run.finish();
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_ok(&between(a, b, &[DB, DB]), "new master -> old master");
    seen
}

fn accounts(c: &Cluster) -> String {
    value(c, "SELECT count(*) || ' ' || sum(balance) FROM account")
}

/// e3. A switchover held after the promotion (the old master fenced, the new one writable),
/// and a rejoin held after its re-send (the old master deposed): a session with
/// `rserv.allow_slave_writes = on` writes on the fenced master. Must be refused; it committed,
/// and the row never reached the new master.
#[test]
fn the_fence_holds_against_allow_slave_writes() {
    let cs = start_clusters(&["adv5-guc-a", "adv5-guc-b"]);
    let (a, b) = (&cs[0], &cs[1]);
    bank::master(a);
    assert_ok(&between(a, b, &["--create-tables", DB, DB]), "first copy");
    let written = during_switchover(a, b, "switchover:promoted", |c| write_anyway(c, 100_001));
    assert!(
        written.is_err(),
        "the fenced old master took a write while the new master was writable"
    );
    assert_eq!(accounts(a), accounts(b));
    let written = during_rejoin(a, b, |c| write_anyway(c, 100_002));
    assert!(
        written.is_err(),
        "the deposed old master took a write during rejoin (lost, and not in the file)"
    );
    assert_eq!(accounts(a), accounts(b));
}

// ---------------------------------------------------------------------------------------------
// e4 (correctness, HIGH): a schema change on a fenced master is lost
// ---------------------------------------------------------------------------------------------

/// e4. A switchover held after its last change set (the master fenced), and a rejoin held
/// after its re-send (the old master deposed): a rewrite that changes every row
/// (`ALTER ... TYPE bigint USING balance + 1`) must be refused; it committed on the old master
/// only, which then followed the new one with every balance off by one.
#[test]
fn ddl_on_a_fenced_master_is_refused() {
    let cs = start_clusters(&["adv5-ddl-a", "adv5-ddl-b"]);
    let (a, b) = (&cs[0], &cs[1]);
    bank::master(a);
    assert_ok(&between(a, b, &["--create-tables", DB, DB]), "first copy");
    let rewrite = |c: &Cluster| {
        c.connect(DB)
            .batch_execute("ALTER TABLE account ALTER COLUMN balance TYPE bigint USING balance + 1")
            .map_err(|e| rserv_tests::describe_pg_error(&e))
    };
    let changed = during_switchover(a, b, "switchover:synced", rewrite);
    assert!(
        changed.as_ref().is_err_and(|e| e.contains("fenced")),
        "a schema change on the fenced master: {changed:?}"
    );
    assert_eq!(
        total(a),
        total(b),
        "the old master differs from the new one"
    );
    let changed = during_rejoin(a, b, rewrite);
    assert!(
        changed.as_ref().is_err_and(|e| e.contains("fenced")),
        "a schema change on the deposed master: {changed:?}"
    );
    assert_eq!(
        total(a),
        total(b),
        "the old master differs from the new one"
    );
    assert!(try_write(a).is_ok() && try_write(b).is_err());
}

// ---------------------------------------------------------------------------------------------
// e5 (security, MEDIUM): the divergent-rows file runs a table owner's SQL in psql
// ---------------------------------------------------------------------------------------------

/// e5. A key holding line breaks and SQL, changed on the old master after the takeover; the
/// file is planted as a symlink to a file of the operator's. Loading the saved file with psql
/// (as a superuser, into a database without the table) must run nothing of the key's; the
/// symlink's target must stay as it was.
#[test]
fn divergent_rows_file_is_safe_to_load_with_psql() {
    let cs = start_clusters(&["adv5-file-m", "adv5-file-s"]);
    let (m, s) = (&cs[0], &cs[1]);
    failed_over(
        m,
        s,
        "CREATE TABLE note (k text PRIMARY KEY, v text NOT NULL)",
        "note",
        "INSERT INTO note VALUES ('a', 'x')",
    );
    m.execute(
        DB,
        "INSERT INTO note VALUES (E'k\\nCREATE ROLE pwned SUPERUSER;\\n--', 'y'), \
                                 ('CREATE ROLE pwned2 SUPERUSER;', 'z')",
    );
    let file = scratch("psql");
    let victim = scratch("victim");
    std::fs::write(&victim, "precious\n").expect("victim file");
    let _ = std::fs::remove_file(&file);
    std::os::unix::fs::symlink(&victim, &file).expect("symlink");
    let out = rejoin(s, m, &file, false);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    let kept = std::fs::read_to_string(&victim).unwrap_or_default();
    let saved = std::fs::read_to_string(&file).unwrap_or_default();
    let _ = std::fs::remove_file(&victim);
    // loaded as the README says, as a superuser, where the table is missing
    let psql = std::process::Command::new(pg_bindir().join("psql"))
        .args([
            "-X",
            "-h",
            &s.socket_dir().display().to_string(),
            "-p",
            &s.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-f",
            &file.display().to_string(),
        ])
        .output()
        .expect("psql");
    let _ = std::fs::remove_file(&file);
    assert_eq!(kept, "precious\n", "rejoin wrote through a symlink");
    assert!(saved.contains("COPY"), "file:\n{saved}");
    assert!(
        !role_exists(s, "pwned") && !role_exists(s, "pwned2"),
        "psql ran the key's SQL from the divergent-rows file:\n{saved}\n{}",
        output_text(&psql)
    );
}

// ---------------------------------------------------------------------------------------------
// e3, residual: a snapshot older than the fence passes it with rserv.allow_slave_writes
// ---------------------------------------------------------------------------------------------

/// e3, residual. A REPEATABLE READ transaction took its snapshot before a switchover fenced
/// its master, and writes (with `rserv.allow_slave_writes`) once the new master is writable:
/// its snapshot does not show `_rserv_fence_`'s row. Must be refused; it committed on the old
/// master only. The setting still lets a slave's session write to a table it receives, also
/// one it passes on to a slave of its own (a cascade: the table carries a capture trigger too).
#[test]
fn the_fence_holds_against_a_snapshot_older_than_it() {
    let cs = start_clusters(&["adv5-rr-a", "adv5-rr-b"]);
    let (a, b) = (&cs[0], &cs[1]);
    bank::master(a);
    assert_ok(&between(a, b, &["--create-tables", DB, DB]), "first copy");
    let mut early = a.connect(DB);
    early
        .batch_execute(
            "SET rserv.allow_slave_writes = on; BEGIN ISOLATION LEVEL REPEATABLE READ; \
             SELECT count(*) FROM pg_catalog.pg_class",
        )
        .expect("a transaction with its snapshot");
    let written = during_switchover(a, b, "switchover:promoted", |_| {
        let r = early
            .batch_execute("INSERT INTO account VALUES (100003, 7)")
            .map_err(|e| rserv_tests::describe_pg_error(&e));
        let _ = early.batch_execute("COMMIT");
        r
    });
    assert!(
        written.as_ref().is_err_and(|e| e.contains("refused")),
        "a snapshot older than the fence wrote on the fenced old master: {written:?}"
    );
    assert_eq!(accounts(a), accounts(b));
    // `a` is a slave of `b` now, and passes the tables on (a cascade): the setting still works
    a.execute(DB, "SELECT rserv_add_table('account')");
    assert!(
        write_anyway(a, 100_004).is_ok(),
        "rserv.allow_slave_writes no longer lets a slave's session write"
    );
    assert!(
        write_anyway(b, 100_005).is_ok(),
        "the new master takes writes"
    );
}

// ---------------------------------------------------------------------------------------------
// e6 (correctness, MEDIUM): a failover stopped before a slave's repair leaves it inconsistent
// ---------------------------------------------------------------------------------------------

/// `replicate failover` of `slaves`, with `env`.
fn failover_env(slaves: &[&Cluster], env: &[(&str, &str)]) -> Output {
    let mut args = vec!["--user=postgres".to_string(), "failover".to_string()];
    args.extend(slaves.iter().map(|c| database_arg(c)));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    rserv_tests::run_replicate_env(&refs, env)
}

fn balances(c: &Cluster) -> String {
    value(
        c,
        "SELECT string_agg(id || ':' || balance, ' ' ORDER BY id) FROM account",
    )
}

fn in_progress(c: &Cluster) -> String {
    value(
        c,
        "SELECT in_progress FROM rserv_status WHERE server IS NULL",
    )
}

/// e6. Slave 2 is behind slave 1 when the master dies; `replicate failover` stops (a kill)
/// after re-pointing slave 2 to slave 1 and before comparing them. A plain `replicate` from
/// the new master must not apply to slave 2 (it would follow it for good, silently lacking the
/// old master's last transactions): refused, naming the fix, and `rserv_status` says so.
/// `replicate failover` run again repairs it; it replicates again.
#[test]
fn failover_stopped_before_a_repair_leaves_the_slave_refusing_to_apply() {
    let cs = start_clusters(&["adv5-chk-m", "adv5-chk-s1", "adv5-chk-s2"]);
    let (m, s1, s2) = (&cs[0], &cs[1], &cs[2]);
    bank::master(m);
    for s in [s1, s2] {
        assert_ok(&between(m, s, &["--create-tables", DB, DB]), "first copy");
    }
    m.execute(
        DB,
        "UPDATE account SET balance = balance - 5 WHERE id = 1; \
         UPDATE account SET balance = balance + 5 WHERE id = 2",
    );
    assert_ok(&between(m, s1, &[DB, DB]), "master -> slave 1");
    m.execute(DB, "CHECKPOINT"); // (synchronous_commit is off)
    m.stop_immediate();
    let out = failover_env(&[s1, s2], &[("RSERV_TEST_STEP", "stop:failover:repointed")]);
    assert_eq!(out.status.code(), Some(86), "{}", output_text(&out));
    s1.execute(DB, "UPDATE account SET balance = balance + 1 WHERE id = 3");
    let out = between(s1, s2, &[DB, DB]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a slave re-pointed while behind took change sets before its comparison: {}",
        output_text(&out)
    );
    assert!(
        output_text(&out).contains("replicate failover"),
        "{}",
        output_text(&out)
    );
    assert_eq!(in_progress(s2), "check");
    let out = failover_env(&[s1, s2], &[]);
    assert_ok(&out, "failover again");
    assert_eq!(balances(s2), balances(s1));
    assert_eq!(in_progress(s2), "");
    s1.execute(DB, "UPDATE account SET balance = balance + 1 WHERE id = 4");
    assert_ok(&between(s1, s2, &[DB, DB]), "new master -> slave 2");
    assert_eq!(balances(s2), balances(s1));
}

// ---------------------------------------------------------------------------------------------
// e7 (correctness, MEDIUM): a switchover erases the record of an unfinished failover
// ---------------------------------------------------------------------------------------------

/// `replicate switchover` from master `m` to its slave `s`.
fn switchover(m: &Cluster, s: &Cluster) -> Output {
    between(m, s, &["switchover", DB, DB])
}

/// e7. A dies, B takes over by failover (C follows it); before A rejoins, B is to switch over
/// to C. That erased B's record of the failover (the demote deletes `_rserv_takeover_`): A,
/// back, was writable next to C, no guard recognised it, and rejoin could not run. Must be
/// refused before anything changes, naming A, also once A's registration on B is dropped (as
/// the demote's "other slaves" hint says), and by `rserv_demote` itself; giving A up
/// (`rserv_takeover_done`) lets the switchover go ahead.
#[test]
fn a_switchover_never_erases_an_unfinished_failover() {
    let cs = start_clusters(&["adv5-swf-a", "adv5-swf-b", "adv5-swf-c"]);
    let (a, b, c) = (&cs[0], &cs[1], &cs[2]);
    bank::master(a);
    // (c first: b's change set is the later one, b is promoted)
    for s in [c, b] {
        assert_ok(&between(a, s, &["--create-tables", DB, DB]), "first copy");
    }
    let a_node = value(a, "SELECT rserv_node_id()::text");
    let c_node = value(c, "SELECT rserv_node_id()::text");
    a.execute(DB, "CHECKPOINT"); // (synchronous_commit is off)
    a.stop_immediate();
    assert_ok(&failover_env(&[b, c], &[]), "failover");
    assert!(try_write(b).is_ok() && try_write(c).is_err(), "b took over");
    let refused = |what: &str| {
        let out = switchover(b, c);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", output_text(&out));
        assert!(
            output_text(&out).contains(&a_node),
            "{what}: {}",
            output_text(&out)
        );
        assert!(
            try_write(b).is_ok() && try_write(c).is_err(),
            "{what}: the switchover changed roles"
        );
        assert_eq!(
            value(
                b,
                "SELECT kind || ' ' || (completed IS NULL) FROM rserv_takeover()"
            ),
            "failover true",
            "{what}"
        );
    };
    refused("A registered on B");
    b.execute(DB, "SELECT rserv_drop_server(server) FROM rserv_takeover()");
    refused("A's registration dropped");
    // the extension refuses too (a driver that does not ask first)
    let mut client = b.connect(DB);
    let demoted = client
        .batch_execute(&format!(
            "BEGIN; SELECT rserv_fence('{c_node}'); SELECT rserv_demote('{c_node}', 1, 1); COMMIT"
        ))
        .map_err(|e| rserv_tests::describe_pg_error(&e));
    let _ = client.batch_execute("ROLLBACK");
    assert!(
        demoted.as_ref().is_err_and(|e| e.contains(&a_node)),
        "rserv_demote erased an unfinished failover: {demoted:?}"
    );
    drop(client);
    // given up explicitly
    b.execute(DB, &format!("SELECT rserv_takeover_done('{a_node}')"));
    assert_ok(&switchover(b, c), "switchover once A is given up");
    assert!(try_write(c).is_ok() && try_write(b).is_err());
}
