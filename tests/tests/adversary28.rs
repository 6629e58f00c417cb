//! Adversary review 28, of commit 777c81c (`_rserv_log_()` executable by PUBLIC again; the
//! function checks that it fires as one of rserv's own triggers, src/capture_check.rs).
//! A finding's test fails on 777c81c (it shows the bug); a guard_ test passes (the attack is
//! withstood). All four findings are fixed in the commit that adds this file: `truncated()`
//! compares ROOT_TRUNCATED before anything else runs, the check's reads are read-only at the
//! latest snapshot (`sql::column_latest`, no command id advanced), and the search_path is
//! pinned for the whole of `read_config` and `truncated()`.
//!
//! Findings:
//! - LOW f1 (regression, bloat and an O(rows) TRUNCATE): a TRUNCATE of a registered partitioned
//!   table logs every row of every leaf partition, one log row each, besides the one NULL-key row
//!   of the root. The root's `_rserv_truncate_t_` ('@root') trigger records (xid, command id,
//!   root) in ROOT_TRUNCATED and appends its log row (heap insert: the command id is now
//!   "used"); each leaf's `_rserv_truncate_p_` trigger then runs `ensure_rserv_trigger`
//!   *before* it compares (xid, command id) — and that check's SPI queries go through
//!   `sql::first` = `client.update` (read_only = false), so SPI calls CommandCounterIncrement
//!   and the command id moves on. The comparison fails and `log_every_identity` scans the
//!   partition and logs each of its identities as deleted. Nothing diverges (the slave refetches
//!   gone identities), but the owner's TRUNCATE of a big tree becomes a full scan plus one log
//!   row per row (the log, the slave's prepare and apply grow with it), which is exactly what
//!   ROOT_TRUNCATED was made to avoid.
//!   Steps: register a partitioned table with rows in two partitions; TRUNCATE it; count the new
//!   log rows (1 expected, 1 + rows found).
//!   Fix: in `truncated()`, take `command()` (and do the ROOT_TRUNCATED comparison for '@part')
//!   before `ensure_rserv_trigger`, or run the check's catalog reads read-only (a `first_ro`
//!   using `client.select`, no CommandCounterIncrement); better both. Test
//!   f1_truncate_of_a_replicated_partitioned_table_logs_one_row.
//!   Its loud face (LOW, a legitimate write refused, new with 777c81c): each partition's rows are
//!   now read as its owner (`run_as_owner`), which refuses a writer with temporary objects, so a
//!   role with TRUNCATE on the tree and a temp table in his session can no longer TRUNCATE the
//!   tree ("this session has temporary objects ... that code of role alice would see"); before,
//!   ROOT_TRUNCATED skipped that read. Same fix. Test
//!   f1b_truncate_of_a_replicated_tree_by_a_writer_with_temp_tables.
//!
//! - MEDIUM f2 (older than 777c81c, on the same path; HIGH wherever a privileged role writes
//!   with such a search_path): mallory, who owns nothing replicated, runs her code as another
//!   writer through rserv's capture trigger. She creates `public.=(oid, oid)` (CREATE on public
//!   is what create_roles grants every plain role). A writer (clerk) whose search_path puts
//!   public ahead of pg_catalog (`SET search_path = public, pg_catalog`) makes the first write
//!   of his backend to a replicated table with watched columns: `read_config` calls
//!   `unique_index_columns`, whose `d.objid IN (SELECT i.indexrelid ...)` (and `c.oid IN`)
//!   resolve `=` on the writer's search_path, so mallory's function runs as clerk inside the
//!   trigger. 777c81c pins the search_path (`internal_definer()`) for ensure_rserv_trigger's own
//!   queries only — the guard `_path` is dropped when the check returns, before read_config goes
//!   on — which shows the threat was meant to be closed on this path. clerk's own statements use
//!   no `=` on oid: only rserv's code does.
//!   Steps: alice registers `w` with a watched column and grants clerk INSERT/UPDATE; mallory
//!   plants the operator (it records current_user in a table of hers and answers like the real
//!   one); clerk sets the search_path and inserts: the record says "clerk".
//!   Fix: hold the pinned search_path for the whole trigger body (take `internal_definer()` in
//!   `_rserv_log_` / `config()` around read_config, and in `truncated()`), and qualify every
//!   operator in the queries the trigger runs (OPERATOR(pg_catalog.=), `= ANY` written out).
//!   Test f2_a_planted_operator_does_not_run_when_a_table_with_watched_columns_is_first_written.
//! - MEDIUM f3 (older than 777c81c, same class as f2): the TRUNCATE of one partition by a writer
//!   who is not its owner (TRUNCATE privilege) with public ahead of pg_catalog runs mallory's
//!   `public.=(oid, oid)` as that writer: `truncated()` -> `log_every_identity` -> `log_rows_of`
//!   calls `catalog::table_info` (`n.oid = c.relnamespace`, `c.oid = $1`) and, through
//!   `run_as_owner`, `security::require_clean_temp_schema` (`c.relnamespace = ...`, `IN`)
//!   before switching to the owner, all unqualified and after ensure_rserv_trigger's pinned path
//!   was given back. (Row events of a partition's clone do not reach these: guard g2.)
//!   Steps: alice's registered tree; mallory's operator raising 'hijacked as <current_user>';
//!   clerk (TRUNCATE granted) sets the search_path and truncates m_2027: "hijacked as clerk".
//!   Fix: as f2 (one pinned search_path for the whole trigger; qualified operators in
//!   table_info and require_clean_temp_schema, which other rserv code also runs).
//!   Test f3_a_planted_operator_does_not_run_when_a_writer_truncates_a_partition.
//!
//! Guards (attacks withstood, tests pass):
//! - guard_mallory_cannot_use_the_capture_function_otherwise: direct call; INSTEAD OF trigger on
//!   her view under rserv's name; BEFORE ROW and deferred constraint triggers under rserv's
//!   name on her table; a `_rserv_truncate_p_` on her own partitioned tree naming alice's root:
//!   nothing reaches the log, every attempt is refused or fails.
//! - guard_search_path_operators_do_not_run_in_the_row_check: mallory's `public.=` operators
//!   (oid, oid) and (regclass, oid) and a `public.pg_partition_ancestors(oid)`, a writer whose
//!   search_path puts public ahead of pg_catalog: INSERT, UPDATE and DELETE through a
//!   partition's cloned capture trigger (ensure_rserv_trigger with registered_root, the catalog
//!   owner's registry read, root_attnums_here) never run them, and the writer's search_path is
//!   as it was afterwards.
//! - guard_legitimate_writes_in_awkward_contexts: registration and writes in one transaction,
//!   remove and re-add in the same transaction, EXCEPTION blocks, savepoints, a SECURITY
//!   DEFINER function with `SET search_path = ''` called by another role whose own search_path
//!   is empty (kept as it was after the check's pinned one).
//! - guard_truncate_by_a_writer_without_usage_on_rservs_schema: rserv in schema rs, a writer
//!   with no USAGE on it truncates a partition (each identity logged) and the whole tree.
//! - guard_rserv_triggers_cannot_be_replaced_by_look_alikes: with `_rserv_log_()` executable by
//!   everyone, a role with only TRIGGER on alice's tree (and alice) tries CREATE OR REPLACE
//!   TRIGGER on rserv's own triggers (WHEN (false), fewer events, other key arguments, another
//!   root): the DDL guard refuses each (a replaced trigger loses ENABLE ALWAYS), PostgreSQL
//!   refuses replacing a clone; rserv's triggers are unchanged.
//! - guard_an_error_caught_inside_the_catalog_owners_read_leaves_no_switched_user: a lock
//!   timeout mallory chose fires inside `as_catalog_owner`'s registry read (another session
//!   holds `_rserv_tables_`); her EXCEPTION block catches it: she is still herself (no
//!   superuser), with her own search_path, and nothing was logged.
//!
//! Also looked at, no finding: the catalog owner's read (SECURITY_RESTRICTED_OPERATION, schema
//! from the log's namespace, qualified operator); pg_partition_ancestors including the relation
//! itself (`root != reloid` is checked); clone name collisions on ATTACH / rserv_add_table (PG
//! refuses loudly); 1.0.0 triggers after ALTER EXTENSION UPDATE (same names: Claim::Row and
//! Claim::Truncate accept them); sub-partition DETACH (reconcile_all after every DDL drops the
//! leaf's TRUNCATE trigger); rserv_remove_table drops the partitions' TRUNCATE triggers.

use rserv_tests::pair::{number, DB};
use rserv_tests::roles::{self, connect_as, create_roles, exec_as, try_sql, try_value, OWNER};
use rserv_tests::Cluster;

fn log_rows(c: &Cluster) -> i64 {
    number(c, "SELECT count(*) FROM _rserv_log_")
}

const TREE: &str = "CREATE TABLE m (id int, at date, v text, PRIMARY KEY (id, at))
                        PARTITION BY RANGE (at);
                    CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
                    CREATE TABLE m_2027 PARTITION OF m FOR VALUES FROM ('2027-01-01') TO ('2028-01-01');";

fn alice_tree(name: &str) -> Cluster {
    let mut cs = roles::start(&[name]);
    let c = cs.pop().expect("cluster");
    create_roles(&c, &["alice", "mallory", "clerk"]);
    exec_as(&c, OWNER, "SELECT rserv_grant_replication('alice')");
    exec_as(&c, "alice", TREE);
    exec_as(
        &c,
        "alice",
        "INSERT INTO m SELECT g, date '2026-03-01' + g, 'a' || g FROM generate_series(1, 20) g;
         INSERT INTO m SELECT g, date '2027-03-01' + g, 'b' || g FROM generate_series(1, 20) g;
         SELECT rserv_add_table('m');",
    );
    c
}

#[test]
fn f1_truncate_of_a_replicated_partitioned_table_logs_one_row() {
    let c = alice_tree("adv28-f1");
    let before = log_rows(&c);
    exec_as(&c, "alice", "TRUNCATE m");
    let added = log_rows(&c) - before;
    let rows = c.query_strings(
        DB,
        "SELECT coalesce(key::text, 'NULL') || ' ' || deleted::text FROM _rserv_log_ ORDER BY 1 LIMIT 5",
    );
    assert_eq!(
        added, 1,
        "TRUNCATE of the registered tree logged {added} rows (one NULL-key row expected; the \
         partitions' triggers logged each of their 40 identities again): {rows:?}"
    );
}

#[test]
fn guard_mallory_cannot_use_the_capture_function_otherwise() {
    let c = alice_tree("adv28-g1");
    let root = c.query_strings(DB, "SELECT 'm'::regclass::oid::text")[0][0]
        .clone()
        .expect("m's oid");
    let before = log_rows(&c);
    let mut mal = connect_as(&c, "mallory");
    // a direct call
    assert!(
        try_sql(&mut mal, "SELECT _rserv_log_()").is_err(),
        "a direct call of the trigger function"
    );
    // INSTEAD OF trigger on a view of hers, under rserv's name
    try_sql(
        &mut mal,
        "CREATE TABLE mv_base (id int PRIMARY KEY); CREATE VIEW mv AS SELECT * FROM mv_base;",
    )
    .expect("mallory's view");
    if try_sql(
        &mut mal,
        "CREATE TRIGGER _rserv_trigger_t_ INSTEAD OF INSERT ON mv FOR EACH ROW
             EXECUTE FUNCTION _rserv_log_('@1', '1')",
    )
    .is_ok()
    {
        assert!(
            try_sql(&mut mal, "INSERT INTO mv VALUES (1)").is_err(),
            "INSTEAD OF"
        );
    }
    // BEFORE ROW, and a deferred constraint trigger, under rserv's name
    let attempts = [
        "CREATE TRIGGER _rserv_trigger_t_ BEFORE INSERT ON {t} FOR EACH ROW
             EXECUTE FUNCTION _rserv_log_('@1', '1')",
        "CREATE CONSTRAINT TRIGGER _rserv_trigger_t_ AFTER INSERT ON {t}
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION _rserv_log_('@1', '1')",
    ];
    for (i, a) in attempts.iter().enumerate() {
        let t = format!("mb{i}");
        try_sql(&mut mal, &format!("CREATE TABLE {t} (id int PRIMARY KEY)")).expect("table");
        if try_sql(&mut mal, &a.replace("{t}", &t)).is_ok() {
            let r = try_sql(
                &mut mal,
                &format!("BEGIN; INSERT INTO {t} VALUES (1); COMMIT;"),
            );
            let _ = try_sql(&mut mal, "ROLLBACK");
            assert!(r.is_err(), "{a}: the write went through");
        }
        assert_eq!(log_rows(&c), before, "{a} wrote into the log");
    }
    // her own partitioned tree: a sub-partition's TRUNCATE trigger naming alice's root
    try_sql(
        &mut mal,
        "CREATE TABLE mp (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE mp_1 PARTITION OF mp FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         INSERT INTO mp VALUES (1, '2026-05-01', 'x');",
    )
    .expect("mallory's tree");
    if try_sql(
        &mut mal,
        &format!(
            "CREATE TRIGGER _rserv_truncate_p_ BEFORE TRUNCATE ON mp_1 FOR EACH STATEMENT
                 EXECUTE FUNCTION _rserv_log_('@part', '{root}', '1', '2')"
        ),
    )
    .is_ok()
    {
        assert!(try_sql(&mut mal, "TRUNCATE mp").is_err(), "TRUNCATE mp");
    }
    assert_eq!(log_rows(&c), before, "mallory wrote into the log");
}

/// alice's tree, with mallory's `=` operators and a look-alike catalog function in public, and
/// clerk (who may write to alice's tree) connected with public ahead of pg_catalog.
fn planted(name: &str) -> (Cluster, postgres::Client) {
    let c = alice_tree(name);
    exec_as(
        &c,
        "mallory",
        "CREATE FUNCTION public.bad_eq(oid, oid) RETURNS bool LANGUAGE plpgsql AS
           $$BEGIN RAISE EXCEPTION 'hijacked as %', current_user; END$$;
         CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.bad_eq);
         CREATE FUNCTION public.bad_eq2(regclass, oid) RETURNS bool LANGUAGE plpgsql AS
           $$BEGIN RAISE EXCEPTION 'hijacked as %', current_user; END$$;
         CREATE OPERATOR public.= (LEFTARG = regclass, RIGHTARG = oid, FUNCTION = public.bad_eq2);
         CREATE FUNCTION public.pg_partition_ancestors(oid) RETURNS SETOF oid LANGUAGE plpgsql AS
           $$BEGIN RAISE EXCEPTION 'hijacked as %', current_user; END$$;
         GRANT EXECUTE ON FUNCTION public.bad_eq(oid, oid), public.bad_eq2(regclass, oid),
           public.pg_partition_ancestors(oid) TO PUBLIC;",
    );
    exec_as(
        &c,
        "alice",
        "GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON m, m_2026, m_2027 TO clerk",
    );
    let mut clerk = connect_as(&c, "clerk");
    try_sql(&mut clerk, "SET search_path = public, pg_catalog, pg_temp").expect("SET");
    (c, clerk)
}

#[test]
fn guard_search_path_operators_do_not_run_in_the_row_check() {
    let (c, mut clerk) = planted("adv28-g2");
    let before = log_rows(&c);
    let failed: Vec<(&str, String)> = [
        "INSERT INTO m VALUES (100, '2026-06-01', 'c')",
        "UPDATE m SET v = 'd' WHERE id = 100",
        "DELETE FROM m WHERE id = 1",
    ]
    .into_iter()
    .filter_map(|w| try_sql(&mut clerk, w).err().map(|e| (w, e)))
    .collect();
    assert!(
        failed.is_empty(),
        "clerk's writes ran mallory's objects: {failed:?}"
    );
    assert!(log_rows(&c) >= before + 3, "clerk's writes are logged");
    assert_eq!(
        try_value(&mut clerk, "SHOW search_path").expect("search_path"),
        Some("public, pg_catalog, pg_temp".to_string()),
        "the writer's search_path is left as it was"
    );
}

#[test]
fn f3_a_planted_operator_does_not_run_when_a_writer_truncates_a_partition() {
    let (_c, mut clerk) = planted("adv28-f3");
    let r = try_sql(&mut clerk, "TRUNCATE m_2027");
    assert!(
        r.is_ok(),
        "clerk's TRUNCATE of a partition ran mallory's operator inside rserv's TRUNCATE trigger \
         (capture.rs log_every_identity -> log_rows_of: catalog::table_info and \
         security::require_clean_temp_schema use unqualified `=` under the writer's \
         search_path): {r:?}"
    );
}

#[test]
fn guard_legitimate_writes_in_awkward_contexts() {
    let mut cs = roles::start(&["adv28-g3"]);
    let c = cs.pop().expect("cluster");
    create_roles(&c, &["alice", "clerk"]);
    exec_as(&c, OWNER, "SELECT rserv_grant_replication('alice')");
    let mut alice = connect_as(&c, "alice");
    try_sql(
        &mut alice,
        "BEGIN;
         CREATE TABLE t (id int PRIMARY KEY, v text);
         SELECT rserv_add_table('t');
         INSERT INTO t VALUES (1, 'a');
         SELECT rserv_remove_table('t');
         SELECT rserv_add_table('t');
         INSERT INTO t VALUES (2, 'b');
         COMMIT;",
    )
    .expect("registration, remove and re-add with writes in one transaction");
    try_sql(
        &mut alice,
        "CREATE FUNCTION put(i int) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
           SET search_path = '' AS $$BEGIN INSERT INTO public.t VALUES (i, 'f'); END$$;
         GRANT EXECUTE ON FUNCTION put(int) TO clerk;",
    )
    .expect("alice's function");
    let before = log_rows(&c);
    let mut clerk = connect_as(&c, "clerk");
    try_sql(
        &mut clerk,
        "SET search_path = '';
         SELECT public.put(3);
         BEGIN;
         SAVEPOINT s; SELECT public.put(4); ROLLBACK TO s;
         SELECT public.put(5);
         DO $$BEGIN PERFORM public.put(6); RAISE EXCEPTION 'undo'; EXCEPTION WHEN others THEN NULL; END$$;
         DO $$BEGIN PERFORM public.put(7); END$$;
         COMMIT;",
    )
    .expect("clerk's writes through alice's function");
    assert_eq!(
        try_value(&mut clerk, "SHOW search_path").expect("search_path"),
        Some("\"\"".to_string()),
        "clerk's empty search_path kept"
    );
    let ids = c.query_strings(
        DB,
        "SELECT string_agg(key[1], ',' ORDER BY key[1]) FROM _rserv_log_
          WHERE reloid = 't'::regclass",
    );
    assert_eq!(log_rows(&c) - before, 3, "puts 3, 5 and 7 logged: {ids:?}");
}

#[test]
fn f2_a_planted_operator_does_not_run_when_a_table_with_watched_columns_is_first_written() {
    let mut cs = roles::start(&["adv28-f2"]);
    let c = cs.pop().expect("cluster");
    create_roles(&c, &["alice", "mallory", "clerk"]);
    exec_as(&c, OWNER, "SELECT rserv_grant_replication('alice')");
    exec_as(
        &c,
        "alice",
        "CREATE TABLE w (id int PRIMARY KEY, a text, b text);
         SELECT rserv_add_table('w', 'a');
         GRANT SELECT, INSERT, UPDATE ON w TO clerk;",
    );
    // mallory (owns nothing replicated) plants an oid = oid operator in public: it records who
    // ran it and answers like the real one
    exec_as(
        &c,
        "mallory",
        "CREATE TABLE public.stolen (who text, at timestamptz DEFAULT now());
         GRANT INSERT ON public.stolen TO PUBLIC;
         CREATE FUNCTION public.spy_eq(oid, oid) RETURNS bool LANGUAGE plpgsql AS
           $$BEGIN INSERT INTO public.stolen (who) VALUES (current_user);
                   RETURN $1 OPERATOR(pg_catalog.=) $2; END$$;
         CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.spy_eq);",
    );
    let mut clerk = connect_as(&c, "clerk");
    try_sql(
        &mut clerk,
        "SET search_path = public, pg_catalog;
         INSERT INTO w VALUES (1, 'x', 'y');
         UPDATE w SET a = 'z' WHERE id = 1;",
    )
    .expect("clerk's writes");
    let stolen = c.query_strings(DB, "SELECT DISTINCT who FROM public.stolen");
    assert!(
        stolen.is_empty(),
        "mallory's operator ran inside rserv's capture trigger as {stolen:?} \
         (capture.rs unique_index_columns: `d.objid IN (SELECT ...)` resolves `=` on the \
         writer's search_path; ensure_rserv_trigger's pinned path is dropped before read_config \
         runs it)"
    );
}

/// A writer with no USAGE on rserv's schema (installed in a schema of its own) truncates a
/// partition and the whole tree of a replicated table: the check, the partition's identities
/// read as its owner, the log rows: all without the writer's rights on rserv's catalog.
#[test]
fn guard_truncate_by_a_writer_without_usage_on_rservs_schema() {
    let c = roles::start_with_rserv_in_its_own_schema("adv28-g4");
    exec_as(
        &c,
        "alice",
        &format!(
            "{TREE}
             INSERT INTO m SELECT g, date '2026-03-01' + g, 'a' || g FROM generate_series(1, 10) g;
             INSERT INTO m SELECT g, date '2027-03-01' + g, 'b' || g FROM generate_series(1, 10) g;
             GRANT SELECT, INSERT, TRUNCATE ON m, m_2026, m_2027 TO clerk;"
        ),
    );
    c.execute(DB, "SELECT rs.rserv_add_table('m')");
    let count = |c: &Cluster| -> i64 {
        c.query_strings(DB, "SELECT count(*) FROM rs._rserv_log_")[0][0]
            .as_deref()
            .unwrap_or("0")
            .parse()
            .expect("a count")
    };
    let before = count(&c);
    let mut clerk = connect_as(&c, "clerk");
    try_sql(&mut clerk, "TRUNCATE m_2026").expect("clerk truncates a partition");
    assert_eq!(count(&c) - before, 10, "each of m_2026's identities logged");
    try_sql(
        &mut clerk,
        "INSERT INTO m VALUES (1, '2026-05-01', 'x'); TRUNCATE m;",
    )
    .expect("clerk truncates the tree");
    assert!(count(&c) > before + 10, "the tree's TRUNCATE logged");
}

/// Now that `_rserv_log_()` is executable by everyone, a role with only TRIGGER on alice's
/// replicated tree (or alice herself) could CREATE OR REPLACE rserv's own triggers with the
/// same function and name but a WHEN (false) clause, fewer events or other arguments: the DDL
/// guard refuses every one (a replaced trigger is no longer ENABLE ALWAYS).
#[test]
fn guard_rserv_triggers_cannot_be_replaced_by_look_alikes() {
    let c = alice_tree("adv28-g5");
    exec_as(&c, "alice", "GRANT TRIGGER ON m, m_2026, m_2027 TO mallory");
    let root = c.query_strings(DB, "SELECT 'm'::regclass::oid::text")[0][0]
        .clone()
        .expect("m's oid");
    let triggers = |c: &Cluster| {
        c.query_strings(
            DB,
            "SELECT tgrelid::regclass::text || ' ' || tgname || ' ' || tgenabled::text || ' ' || tgtype::text \
                    || ' ' || encode(tgargs, 'escape') || ' ' || coalesce(tgqual::text, '-') \
               FROM pg_trigger WHERE tgname LIKE '\\_rserv%' ORDER BY 1",
        )
    };
    let before = triggers(&c);
    let attempts = [
        "CREATE OR REPLACE TRIGGER _rserv_trigger_t_ AFTER INSERT OR UPDATE OR DELETE ON m
             FOR EACH ROW WHEN (false) EXECUTE FUNCTION _rserv_log_('@2', '1', '2')"
            .to_string(),
        "CREATE OR REPLACE TRIGGER _rserv_trigger_t_ AFTER INSERT ON m
             FOR EACH ROW EXECUTE FUNCTION _rserv_log_('@2', '1', '2')"
            .to_string(),
        "CREATE OR REPLACE TRIGGER _rserv_truncate_t_ BEFORE TRUNCATE ON m
             FOR EACH STATEMENT EXECUTE FUNCTION _rserv_log_('@part', '0', '1')"
            .to_string(),
        format!(
            "CREATE OR REPLACE TRIGGER _rserv_truncate_p_ BEFORE TRUNCATE ON m_2026
             FOR EACH STATEMENT EXECUTE FUNCTION _rserv_log_('@part', '{root}', '3')"
        ),
        "CREATE OR REPLACE TRIGGER _rserv_trigger_t_ AFTER INSERT ON m_2026
             FOR EACH ROW WHEN (false) EXECUTE FUNCTION _rserv_log_('@2', '1', '2')"
            .to_string(),
    ];
    for who in ["mallory", "alice"] {
        let mut cl = connect_as(&c, who);
        for a in &attempts {
            let r = try_sql(&mut cl, a);
            assert!(r.is_err(), "{who}: {a} went through");
        }
    }
    assert_eq!(triggers(&c), before, "rserv's triggers changed");
}

/// f1's other face: the partitions' TRUNCATE triggers now read each partition as its owner
/// (`run_as_owner`), which refuses a writer who has temporary objects of his own: a writer with
/// TRUNCATE on the tree and a temp table in his session can no longer empty the whole tree.
#[test]
fn f1b_truncate_of_a_replicated_tree_by_a_writer_with_temp_tables() {
    let c = alice_tree("adv28-f1b");
    exec_as(&c, "alice", "GRANT TRUNCATE ON m, m_2026, m_2027 TO clerk");
    let mut clerk = connect_as(&c, "clerk");
    let r = try_sql(&mut clerk, "CREATE TEMP TABLE scratch (x int); TRUNCATE m;");
    assert!(r.is_ok(), "clerk's TRUNCATE of the whole tree: {r:?}");
}

/// The check's registry read runs as the catalog's owner: an error raised inside it (here a
/// lock timeout mallory chose, while another session holds `_rserv_tables_`) and caught by her
/// EXCEPTION block leaves her as herself, with her search_path, not as the catalog's owner.
#[test]
fn guard_an_error_caught_inside_the_catalog_owners_read_leaves_no_switched_user() {
    let c = alice_tree("adv28-g6");
    let before = log_rows(&c);
    let mut mal = connect_as(&c, "mallory");
    try_sql(
        &mut mal,
        "CREATE TABLE mt (id int PRIMARY KEY);
         CREATE TRIGGER _rserv_trigger_t_ AFTER INSERT ON mt FOR EACH ROW
             EXECUTE FUNCTION _rserv_log_('@1', '1');
         CREATE TABLE seen (who text, sup bool, path text, err text);",
    )
    .expect("mallory's table");
    // (taken after mallory's DDL: rserv's DDL guard reads the registry too)
    let mut holder = c.connect(DB);
    holder
        .batch_execute("BEGIN; LOCK TABLE _rserv_tables_ IN ACCESS EXCLUSIVE MODE;")
        .expect("lock");
    try_sql(
        &mut mal,
        "SET lock_timeout = '200ms';
         DO $$BEGIN
             BEGIN
                 INSERT INTO mt VALUES (1);
             EXCEPTION WHEN others THEN
                 INSERT INTO seen VALUES (current_user,
                     (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                     current_setting('search_path'), SQLERRM);
             END;
             INSERT INTO seen VALUES (current_user,
                 (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
                 current_setting('search_path'), 'after');
         END$$;",
    )
    .expect("mallory's block");
    holder.batch_execute("ROLLBACK").expect("unlock");
    let seen = c.query_strings(DB, "SELECT who, sup::text, path, err FROM seen");
    assert_eq!(seen.len(), 2, "{seen:?}");
    for row in &seen {
        assert_eq!(row[0].as_deref(), Some("mallory"), "{seen:?}");
        assert_eq!(row[1].as_deref(), Some("false"), "{seen:?}");
        assert_eq!(row[2].as_deref(), Some("\"$user\", public"), "{seen:?}");
    }
    assert!(
        seen[0][3]
            .as_deref()
            .is_some_and(|e| e.contains("lock timeout")),
        "the error was raised inside the check's registry read: {seen:?}"
    );
    assert_eq!(log_rows(&c), before, "nothing logged");
}
