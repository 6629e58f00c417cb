//! Adversary review 18, of branch `perf` at 69e73c7 (issue 18: the log tells inserts from
//! updates, the slave loads an identity logged only as inserted with no DELETE first, updates
//! rows only updated in place, and keeps its staging tables for the session). Each test is one
//! finding, reproduced on real clusters; it failed on 69e73c7 and passes once it is fixed.
//!
//! - MEDIUM (availability) f1 `check_repairs_a_slave_row_the_master_then_inserts`: an identity
//!   logged only as inserted is COPYed into the slave table with no DELETE first. That is
//!   exact only while the slave is a faithful copy of the window's start. A slave that holds a
//!   row its master lacks (a local write under `rserv.allow_slave_writes`, what `check
//!   --repair` exists for) used to be overwritten when the master inserted that identity; now
//!   the apply fails on the slave's unique key, and `replicate check --repair` cannot repair
//!   it: its comparison starts with a cycle that applies the same window and fails the same
//!   way. Replication stays stopped until someone finds the row by hand.
//! - MEDIUM (availability) f2 `rejoin_finishes_when_both_masters_inserted_the_same_row`: after a
//!   failover, the old master and the new one both inserted the same row (a client's retry).
//!   Rejoin finds no difference for that key, touches nothing, demotes the old master and
//!   replicates: the new master's insert arrives as INSERT only, the old master holds the row,
//!   the apply fails. Running rejoin again fails the same way, as does `check --repair`.
//! - MEDIUM (availability) f3 `failover_repairs_a_behind_slave_after_the_new_master_reinserts`:
//!   a slave that was behind the promoted one (it lacks the old master's last delete) is
//!   re-pointed; the new master inserts that identity again before the comparison; the
//!   comparison's cycle sends it as INSERT only and fails on the row the slave still holds,
//!   and `failover` run again fails the same way.
//!
//!   FIXED (f1-f3): the cycles that bring a slave not known to be a faithful copy to its
//!   master's state (`check`'s, `rejoin`'s, and so `failover`'s comparison) ask for change sets
//!   without UPSERT sections (`CycleOptions::replace_rows`): every changed identity is deleted
//!   first, as rserv 1.0 did, which never meets a row the slave holds. An ordinary cycle into
//!   such a slave still stops on the duplicate key (it no longer overwrites the slave's own row
//!   silently); `check --repair` now gets it going again.
//! - LOW (availability) f4 `an_update_rule_on_the_slave_table_does_not_stop_the_apply`: a slave
//!   table with an ON UPDATE rule that fires in replica mode (ENABLE ALWAYS/REPLICA RULE, an
//!   audit rule) could take every change set while updates arrived as DELETE and INSERT; the
//!   in-place UPDATE runs inside `WITH d AS (UPDATE ... RETURNING 1)`, where PostgreSQL refuses
//!   DO ALSO and DO INSTEAD rules: every change set updating the table failed. FIXED: such a
//!   table is applied by replacing rows, as before (src/apply_rows.rs `query_in_place`).
//! - LOW (confidentiality) f5 `an_owners_trigger_never_reads_another_tables_deleted_keys`: the
//!   stages are readable by the code of every table owner rserv runs statements as, and the
//!   DELETE section's stage is shared by tables with as many key columns. rserv 1.0 refilled it
//!   with a table's own keys before that table's rows arrived; now a table whose window only
//!   inserted has no DELETE section, and the stage, no longer emptied at commit, keeps the
//!   previous table's deleted keys for the rest of the session: another owner's ENABLE ALWAYS
//!   trigger read them. FIXED: the stage is emptied right after its DELETE (src/apply.rs).

use rserv_tests::pair::{assert_ok, between, between_env, failover, start_clusters, Pair, DB};
use rserv_tests::roles::output_text;
use rserv_tests::Cluster;

fn rows(c: &Cluster, table: &str) -> Vec<String> {
    Pair::rows(c, table)
}

const TABLE: &str = "CREATE TABLE t (id int PRIMARY KEY, v text);
     INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;";

/// f1: a slave row its master lacks, then the master inserts that identity.
#[test]
fn check_repairs_a_slave_row_the_master_then_inserts() {
    let p = Pair::start("a18-drift");
    p.master.execute(DB, TABLE);
    p.master.execute(DB, "SELECT rserv_add_table('t')");
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "initial copy");
    // the slave drifts: a row only it holds
    p.slave.execute(
        DB,
        "SET rserv.allow_slave_writes = on; INSERT INTO t VALUES (50, 'slave only')",
    );
    // the master inserts that identity (and changes others, so the window has every kind)
    p.master.execute(
        DB,
        "INSERT INTO t VALUES (50, 'master'); UPDATE t SET v = 'upd' WHERE id = 3; \
         DELETE FROM t WHERE id = 4;",
    );
    // an ordinary cycle may refuse (the slave differs), but must not leave it silently different
    let out = p.replicate(&[DB, DB]);
    if out.status.success() {
        p.assert_equal("t");
    }
    // the tool for a slave that differs repairs it
    let out = p.replicate(&["check", "--repair", DB, DB]);
    assert_ok(&out, "check --repair");
    p.assert_equal("t");
    // and replication goes on
    p.master.execute(DB, "INSERT INTO t VALUES (51, 'later')");
    p.sync();
    p.assert_equal("t");
}

/// f2: both the deposed master and the new one inserted the same row.
#[test]
fn rejoin_finishes_when_both_masters_inserted_the_same_row() {
    let cs = start_clusters(&["a18rj-m", "a18rj-s"]);
    let (m, s) = (&cs[0], &cs[1]);
    m.execute(DB, TABLE);
    m.execute(DB, "SELECT rserv_add_table('t')");
    assert_ok(&between(m, s, &["--create-tables", DB, DB]), "first copy");
    m.stop_immediate();
    assert_ok(&failover(&[s], &[]), "failover");
    // a client's retry: the same row committed on both
    s.execute(
        DB,
        "INSERT INTO t VALUES (100, 'same'); UPDATE t SET v = 'new' WHERE id = 1",
    );
    m.start_again();
    m.execute(DB, "INSERT INTO t VALUES (100, 'same')");
    let file = std::env::temp_dir().join(format!("rserv-a18-rejoin-{}.sql", std::process::id()));
    let f = file.display().to_string();
    let args = [
        "rejoin",
        "--discard-divergent",
        "--divergent-file",
        &f,
        DB,
        DB,
    ];
    let out = between_env(s, m, &args, &[]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "rejoin: {}", output_text(&out));
    assert_eq!(rows(m, "t"), rows(s, "t"));
}

/// f3: a slave behind the promoted one, and the new master re-inserts what that slave missed
/// the deletion of, before the comparison.
#[test]
fn failover_repairs_a_behind_slave_after_the_new_master_reinserts() {
    let cs = start_clusters(&["a18fo-m", "a18fo-s1", "a18fo-s2"]);
    let (m, s1, s2) = (&cs[0], &cs[1], &cs[2]);
    m.execute(DB, TABLE);
    m.execute(DB, "SELECT rserv_add_table('t')");
    for s in [s1, s2] {
        assert_ok(&between(m, s, &["--create-tables", DB, DB]), "first copy");
    }
    // the old master's last change set reaches slave 1 only
    m.execute(DB, "DELETE FROM t WHERE id = 7");
    assert_ok(&between(m, s1, &[DB, DB]), "master -> slave 1");
    m.stop_immediate();
    let out = failover(&[s1, s2], &[("RSERV_TEST_STEP", "stop:failover:repointed")]);
    assert_eq!(out.status.code(), Some(86), "{}", output_text(&out));
    // the new master takes writes meanwhile
    s1.execute(DB, "INSERT INTO t VALUES (7, 'again')");
    let out = failover(&[s1, s2], &[]);
    assert!(
        out.status.success(),
        "failover again: {}",
        output_text(&out)
    );
    assert_eq!(rows(s2, "t"), rows(s1, "t"));
}

/// f4: a slave table with a rule of its owner's on UPDATE that fires in replica mode (an audit
/// rule, `ENABLE ALWAYS`). Rows were replaced (DELETE, INSERT) and never met it; updated in
/// place they do, inside `WITH d AS (UPDATE ... RETURNING 1)`, where PostgreSQL refuses DO ALSO
/// and DO INSTEAD rules: every change set with an update of that table fails.
#[test]
fn an_update_rule_on_the_slave_table_does_not_stop_the_apply() {
    let p = Pair::start("a18-rule");
    p.master.execute(DB, TABLE);
    p.master.execute(DB, "SELECT rserv_add_table('t')");
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "initial copy");
    p.slave.execute(
        DB,
        "CREATE TABLE t_audit (id int, at timestamptz DEFAULT now());
         CREATE RULE audit AS ON UPDATE TO t DO ALSO INSERT INTO t_audit (id) VALUES (old.id);
         ALTER TABLE t ENABLE ALWAYS RULE audit;",
    );
    p.master
        .execute(DB, "UPDATE t SET v = 'changed' WHERE id IN (2, 5)");
    let out = p.replicate(&[DB, DB]);
    assert_ok(&out, "a change set updating the table");
    p.assert_equal("t");
}

/// f5: the code of one slave table's owner reads the keys another owner's table had deleted.
/// The stages are readable by every role of the session (statements run as a table's owner
/// read them), and a stage of keys is shared by the tables with as many key columns. rserv 1.0
/// refilled it with a table's own keys before that table's INSERT; with inserted rows sent
/// without a DELETE, the previous table's deleted keys stay in it (for the rest of the session,
/// the stages no longer being emptied at commit) while the next table's owner's triggers run.
#[test]
fn an_owners_trigger_never_reads_another_tables_deleted_keys() {
    let p = Pair::start("a18-leak");
    p.table("CREATE TABLE a (k text PRIMARY KEY, v text)", "a", None);
    p.table("CREATE TABLE b (id int PRIMARY KEY)", "b", None);
    p.master.execute(
        DB,
        "INSERT INTO a VALUES ('alice-secret', 'x'), ('other', 'y')",
    );
    p.sync();
    p.slave.execute(
        DB,
        "CREATE ROLE alice; CREATE ROLE bob;
         ALTER TABLE a OWNER TO alice; ALTER TABLE b OWNER TO bob;
         CREATE TABLE public.seen (x text); ALTER TABLE public.seen OWNER TO bob;
         CREATE FUNCTION public.peek() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE r record; x text;
         BEGIN
           FOR r IN SELECT c.oid::regclass AS rel FROM pg_catalog.pg_class c
                     WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relkind = 'r' LOOP
             BEGIN
               FOR x IN EXECUTE pg_catalog.format('SELECT s::text FROM %s s', r.rel) LOOP
                 INSERT INTO public.seen VALUES (x);
               END LOOP;
             EXCEPTION WHEN insufficient_privilege THEN NULL;
             END;
           END LOOP;
           RETURN NULL;
         END $$;
         ALTER FUNCTION public.peek() OWNER TO bob;
         CREATE TRIGGER peek AFTER INSERT ON b FOR EACH ROW EXECUTE FUNCTION public.peek();
         ALTER TABLE b ENABLE ALWAYS TRIGGER peek;",
    );
    p.master.execute(
        DB,
        "DELETE FROM a WHERE k = 'alice-secret'; INSERT INTO b VALUES (1);",
    );
    p.sync();
    p.assert_equal("a");
    p.assert_equal("b");
    let seen = Pair::rows(&p.slave, "public.seen");
    assert!(
        seen.iter().all(|s| !s.contains("alice-secret")),
        "bob's trigger read alice's deleted key: {seen:?}"
    );
}
