//! Adversary review 3, of 6f9b780 (DDL in the stream, index probe, trigger-function trust,
//! sequences, restored-master refusal). Each test is one finding: a minimal reproduction on
//! real clusters that FAILS on 6f9b780 and asserts what a fixed rserv must do (refuse with a
//! clear error, or keep the slave equal to its master / keep the attacker powerless). Each
//! test's doc comment says what breaks, why, how bad it is, and the recommended fix.
//! All eight are fixed; each test stays as a regression test.
//!
//! - HIGH (security) c1: the index probe runs the master's CREATE INDEX as the bootstrap
//!   superuser; `CheckMutability` constant-folds IMMUTABLE functions, so a table owner's
//!   function runs as superuser on the slave (here: she makes herself superuser).
//! - HIGH (correctness) c6: b6 (restored master) is still open through the seed's
//!   `prepare | apply && master-sync` pipeline: skip + confirm of a reissued sync id.
//! - MEDIUM (correctness) c2: `ALTER TYPE … RENAME VALUE` changes replicated rows silently.
//! - MEDIUM (correctness) c3: sequences a DDL brings (`ADD COLUMN serial`) are never
//!   registered on the master nor created on an existing slave.
//! - MEDIUM (correctness) c4: a table swap by renames stops the slave for good (names resolved
//!   by their current meaning on the master).
//! - MEDIUM (correctness) c5: a new slave replays retained DDL history by column name onto a
//!   table built from the current definition (stuck; or silently swapped defaults).
//! - MEDIUM (security) c7: every master DDL switches off a slave-local ROW LEVEL SECURITY.
//! - MEDIUM (correctness) c8: a master's ADD COLUMN adopts a slave-only column of the same
//!   name with its slave-local values.
//!
//! Checked and held up (by reading, some with scratch runs): DDL recording under concurrent
//! DDL at READ COMMITTED/REPEATABLE READ (the `_rserv_tables_` update serialises or fails),
//! DDL rows in rolled-back savepoints, recopy scheduling vs. concurrent prepares and confirms,
//! DDL section ordering vs. the row window, renames/rewrites after the prepare's snapshot
//! (`guard_table`), rewrite-free key type changes (int→oid, varchar widening), trigger
//! functions (superuser's or owner's only), the GENERATED_MARK check, `require_known_history`
//! in replicate's own cycle. Noted, not tested: two concurrent `CREATE INDEX` on one table
//! (ShareLock does not self-conflict) overwrite each other's recorded definition, so a later
//! DROP INDEX of the lost one never reaches the slaves; `add_partition` accepts a slave
//! relation attached to *another* parent as "attached already"; a failed statement between the
//! `table_rewrite` event and `ddl_command_end` leaves its OID in `REWRITTEN` (a spurious recopy
//! later); `_rserv_index_probe_` in the extension's schema can be pre-created by anyone with
//! CREATE there (every index then fails to replicate).
//!
//! Run against the PostgreSQL under test with
//! `RSERV_PG_BINDIR=…/bin cargo test -p rserv-tests --test adversary3 -- --nocapture`.

use rserv_tests::pair::{refused_or_equal, Pair, DB};
use rserv_tests::roles::{exec_as, output_text, try_sql, value};
use rserv_tests::Cluster;

/// The state of sequence `seq` (`last_value`, `is_called`) on one side.
fn sequence_state(c: &Cluster, seq: &str) -> Option<String> {
    value(
        c,
        &format!("SELECT last_value || ' ' || is_called FROM {seq}"),
    )
}

// ---------------------------------------------------------------------------------------------
// C1 (security, HIGH): the index probe runs the master's index statement as the superuser
// ---------------------------------------------------------------------------------------------

/// C1. Before building an index a DDL section (or `--create-tables`' post-data) brings, the
/// slave "probes" it (`schema/probe.rs`): it runs the master's CREATE INDEX, retargeted to an
/// empty scratch table, **as rserv's definer, the bootstrap superuser** (`as_definer`), on the
/// theory that an index build on an empty table evaluates nothing. It does: `DefineIndex` runs
/// every index expression and the predicate through `CheckMutability` → `expression_planner`
/// → `eval_const_expressions`, which *executes* every IMMUTABLE function whose arguments are
/// constants (here `v > alice.f()`). IMMUTABLE is the function owner's word, and nothing stops
/// an "immutable" function from calling a volatile one. So alice, a plain user who owns a
/// replicated table on both sides, adds `CREATE INDEX … WHERE v > alice.f()` on the master;
/// on the slave her `alice.f()` runs as the superuser during `rserv_apply_end()` and makes her
/// a superuser. `risky_calls` only looks at the probe afterwards (and trusts the table owner's
/// own functions anyway); when the slave table belongs to the replication role the check does
/// refuse and the transaction rolls back, but what the function did outside the transaction
/// (`COPY … TO PROGRAM`, files, `dblink`) as the superuser stays done.
///
/// Severity: HIGH (privilege escalation to superuser on every slave, by any owner of a
/// replicated master table who can create a function on the slave; also through
/// `--create-tables`' post-data).
///
/// Fix: never run a master's statement as the definer. Find what an index calls without
/// executing DefineIndex: parse-analyse the statement against the real table
/// (`transformIndexStmt`), collect the functions and operators of its expressions and
/// predicate (`check_functions_in_node`/`pull_*`), apply the `risky_calls` rules to those
/// OIDs (trusted owner, not volatile, not SQL-running), and only then run CREATE INDEX as the
/// table's owner. If a scratch build is kept, run it as the table's owner, not the definer.
#[test]
fn c1_index_probe_runs_the_owners_immutable_function_as_superuser() {
    let p = Pair::start("adv3-c1");
    for c in [&p.master, &p.slave] {
        c.execute(
            DB,
            "CREATE ROLE alice LOGIN; CREATE SCHEMA alice AUTHORIZATION alice",
        );
    }
    exec_as(
        &p.master,
        "alice",
        "CREATE FUNCTION alice.f() RETURNS int LANGUAGE sql IMMUTABLE AS 'SELECT 0';
         CREATE TABLE alice.t (id int PRIMARY KEY, v int);
         INSERT INTO alice.t SELECT i, i FROM generate_series(1, 10) i;",
    );
    // on the slave, alice's f() of the same name calls a volatile function of hers
    exec_as(
        &p.slave,
        "alice",
        "CREATE TABLE alice.t (id int PRIMARY KEY, v int);
         CREATE TABLE alice.seen (who text, super bool);
         CREATE FUNCTION alice.evil() RETURNS int LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO alice.seen
                  SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
             IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                 EXECUTE 'ALTER ROLE alice SUPERUSER';
             END IF;
             RETURN 0;
         END $$;
         CREATE FUNCTION alice.f() RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
         BEGIN RETURN alice.evil(); END $$;",
    );
    p.master.execute(DB, "SELECT rserv_add_table('alice.t')");
    p.slave
        .execute(DB, "SELECT rserv_slave_add_table('alice.t')");
    p.sync();
    // alice adds an index to her own master table
    exec_as(
        &p.master,
        "alice",
        "CREATE INDEX t_pred ON alice.t (v) WHERE v > alice.f()",
    );
    let out = p.replicate(&[DB, DB]);
    let text = output_text(&out);
    eprintln!("{text}");
    let ran_as = p
        .slave
        .query_strings(DB, "SELECT who || ' ' || super FROM alice.seen ORDER BY 1")
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect::<Vec<_>>();
    let alice_super = value(
        &p.slave,
        "SELECT rolsuper::text FROM pg_roles WHERE rolname = 'alice'",
    );
    assert_eq!(
        alice_super.as_deref(),
        Some("false"),
        "C1: alice became a superuser on the slave (her function ran as {ran_as:?})\n{text}"
    );
    assert!(
        !ran_as.iter().any(|r| !r.starts_with("alice")),
        "C1: alice's function ran as another role on the slave: {ran_as:?}\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// C2 (correctness, MEDIUM): ALTER TYPE … RENAME VALUE changes replicated rows silently
// ---------------------------------------------------------------------------------------------

/// C2. `ALTER TYPE mood RENAME VALUE 'sad' TO 'unhappy'` changes the value of every row of a
/// replicated table that holds `'sad'`, without writing a row: no capture trigger fires, and
/// the DDL guards listen to no `ALTER TYPE` (`_rserv_alter_guard_`'s tags), so nothing is
/// recorded either (the table's recorded definition, which lists the enum's labels, is only
/// compared at its next ALTER TABLE). Every later cycle exits 0 while the slave keeps
/// `'sad'` in the rows the master now shows as `'unhappy'` (`replicate check` would say they
/// differ). The first row that changes to the renamed label then stops the apply (the slave's
/// enum lacks it). `ALTER TYPE … ADD VALUE` likewise stops the apply at the first row that
/// uses the new label, although an added label is a schema change the slave could follow.
///
/// Severity: MEDIUM (silent divergence after a documented kind of schema change).
///
/// Fix: add `ALTER TYPE` (and `ALTER DOMAIN`) to the DDL guard's tags; for a type used by a
/// replicated table (directly, as an array element, a domain base, a composite attribute or a
/// range subtype), record a DDL section for each such table — the slave renames/adds the label
/// (its own enum, as its owner) — or at least send those tables whole (`recopy`); or refuse
/// the change on the master with the manual way.
#[test]
fn c2_enum_rename_value_changes_rows_without_replicating_them() {
    let p = Pair::start("adv3-c2");
    p.both("CREATE TYPE mood AS ENUM ('sad', 'ok')");
    p.table("CREATE TABLE t (id int PRIMARY KEY, m mood)", "t", None);
    p.master.execute(
        DB,
        "INSERT INTO t SELECT i, CASE WHEN i % 2 = 0 THEN 'sad' ELSE 'ok' END::mood FROM generate_series(1, 6) i",
    );
    p.sync();
    assert_eq!(Pair::rows(&p.slave, "t"), Pair::rows(&p.master, "t"));
    let mut m = p.master.connect(DB);
    if try_sql(&mut m, "ALTER TYPE mood RENAME VALUE 'sad' TO 'unhappy'").is_err() {
        return; // refused on the master: acceptable
    }
    p.master.execute(DB, "INSERT INTO t VALUES (100, 'ok')");
    let out = p.replicate(&[DB, DB]);
    refused_or_equal(
        &p,
        &out,
        "t",
        "mood",
        "C2: after ALTER TYPE mood RENAME VALUE",
    );
}

/// The types of both sides as the master's definition names them: each enum's labels in sort
/// order, each domain's default, NOT NULL and constraints.
fn types_of(c: &Cluster) -> Vec<String> {
    c.query_strings(
        DB,
        "SELECT t.typname || ' ' || coalesce((SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                  FROM pg_enum e WHERE e.enumtypid = t.oid), '')
                || ' ' || coalesce(pg_get_expr(t.typdefaultbin, 0), '-') || ' ' || t.typnotnull::text
                || ' ' || coalesce((SELECT string_agg(o.conname || ':' || pg_get_constraintdef(o.oid), ';' ORDER BY o.conname)
                  FROM pg_constraint o WHERE o.contypid = t.oid), '')
           FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
          WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd') ORDER BY 1",
    )
    .into_iter()
    .map(|r| r[0].clone().unwrap_or_default())
    .collect()
}

/// C2, followed: enum labels added (used by rows of the same change set, placed as on the
/// master) and renamed, a type renamed, domains' defaults, NOT NULL and constraints changed,
/// all under writes; the slave ends with the master's rows and types. What cannot follow (a
/// composite type's attributes) is refused on the master, naming the type.
#[test]
fn c2_enum_and_domain_changes_follow_the_stream() {
    let p = Pair::start("adv3-c2b");
    p.both(
        "CREATE TYPE mood AS ENUM ('sad', 'ok');
         CREATE DOMAIN score AS int CHECK (VALUE >= 0);
         CREATE TYPE pair AS (a int, b int)",
    );
    p.table(
        "CREATE TABLE t (id int PRIMARY KEY, m mood, ms mood[], s score, pr pair)",
        "t",
        None,
    );
    p.master.execute(
        DB,
        "INSERT INTO t SELECT i, 'ok', ARRAY['sad']::mood[], i, ROW(i, i)::pair FROM generate_series(1, 6) i",
    );
    p.sync();
    let steps = [
        "ALTER TYPE mood ADD VALUE 'happy' AFTER 'ok'; INSERT INTO t VALUES (10, 'happy', ARRAY['happy', 'sad']::mood[], 10)",
        "ALTER TYPE mood ADD VALUE 'grim' BEFORE 'sad'; UPDATE t SET m = 'grim' WHERE id = 1",
        "ALTER TYPE mood RENAME VALUE 'sad' TO 'unhappy'; INSERT INTO t VALUES (11, 'unhappy', NULL, 11)",
        "ALTER DOMAIN score SET DEFAULT 5; INSERT INTO t (id, m) VALUES (12, 'ok')",
        "ALTER DOMAIN score ADD CONSTRAINT small CHECK (VALUE < 1000); UPDATE t SET s = 999 WHERE id = 2",
        "UPDATE t SET s = 0 WHERE s IS NULL; ALTER DOMAIN score SET NOT NULL",
        "ALTER DOMAIN score DROP CONSTRAINT score_check; UPDATE t SET s = -1 WHERE id = 3",
        "ALTER DOMAIN score DROP NOT NULL; ALTER DOMAIN score DROP DEFAULT; INSERT INTO t (id) VALUES (13)",
        "ALTER TYPE mood RENAME TO feeling; INSERT INTO t VALUES (14, 'grim')",
    ];
    for (i, step) in steps.iter().enumerate() {
        for sql in step.split("; ") {
            p.master.execute(DB, sql); // (a label added is usable once committed)
        }
        // every other step: two changes in one change set
        if i % 2 == 1 || i == steps.len() - 1 {
            let out = p.replicate(&[DB, DB]);
            let text = output_text(&out);
            assert!(out.status.success(), "C2: after {step}\n{text}");
            assert_eq!(
                Pair::rows(&p.slave, "t"),
                Pair::rows(&p.master, "t"),
                "after {step}\n{text}"
            );
            assert_eq!(
                types_of(&p.slave),
                types_of(&p.master),
                "after {step}\n{text}"
            );
        }
    }
    let mut m = p.master.connect(DB);
    let refused = try_sql(&mut m, "ALTER TYPE pair ADD ATTRIBUTE c int")
        .expect_err("C2: a composite type's new attribute cannot follow");
    assert!(
        refused.contains("pair"),
        "C2: the refusal names the type: {refused}"
    );
}

// ---------------------------------------------------------------------------------------------
// C3 (correctness, MEDIUM): a sequence a DDL brings (ADD COLUMN serial) is never replicated
// ---------------------------------------------------------------------------------------------

/// C3. Sequences are registered with their table only by `rserv_add_table` (and the upgrade
/// and promotion paths): `register_table_sequences` is never called when DDL gives a
/// replicated table a new sequence (`ADD COLUMN n serial`, `SET DEFAULT nextval(…)` of a new
/// sequence of the owner's). On the slave, `apply_section` never calls `ensure_sequences`.
/// Two consequences:
/// - a slave that joins afterwards (`--create-tables` creates `t_n_seq` from the definition)
///   never receives the sequence's state: its `t_n_seq` stays at its start while the copied
///   rows hold `n` up to the master's value; after a takeover `nextval` returns values the
///   master already used (silently; "a slave's sequence is never behind a value any of its
///   rows holds");
/// - an existing slave cannot follow `ADD COLUMN n serial` at all: its ADD COLUMN names a
///   sequence it lacks ("relation … does not exist"), every cycle, until someone creates the
///   sequence by hand — which then is never set either.
///
/// Severity: MEDIUM (silent loss of the sequence guarantee; replication stops on a documented
/// schema change).
///
/// Fix: in `record_table` (master) register the table's sequences again (as
/// `register_table_sequences` does, owner rule included) whenever its definition changes; in
/// `apply_section` (slave) run `ensure_sequences(new.sequences)` before the steps (and OWNED BY
/// after the column exists), as `create_table` does.
#[test]
fn c3_sequence_of_a_column_added_by_ddl_is_never_replicated() {
    let p = Pair::start("adv3-c3");
    p.master.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 3) i;
         SELECT rserv_add_table('t');
         ALTER TABLE t ADD COLUMN n serial;
         INSERT INTO t (id, v) VALUES (10, 'ten');",
    );
    // a slave that joins after the DDL
    let out = p.replicate(&["--create-tables", DB, DB]);
    let text = output_text(&out);
    assert!(out.status.success(), "first run failed\n{text}");
    assert_eq!(Pair::rows(&p.slave, "t"), Pair::rows(&p.master, "t"));
    assert_eq!(
        sequence_state(&p.slave, "t_n_seq"),
        sequence_state(&p.master, "t_n_seq"),
        "C3: the slave's t_n_seq is behind the values its rows hold (rows: {:?})\n{text}",
        Pair::rows(&p.slave, "t")
    );
    // an existing slave follows a second serial column
    p.master.execute(
        DB,
        "ALTER TABLE t ADD COLUMN m bigserial; INSERT INTO t (id, v) VALUES (11, 'eleven');",
    );
    let out = p.replicate(&[DB, DB]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "C3: the slave cannot follow ADD COLUMN … bigserial\n{text}"
    );
    assert_eq!(Pair::rows(&p.slave, "t"), Pair::rows(&p.master, "t"));
    assert_eq!(
        sequence_state(&p.slave, "t_m_seq"),
        sequence_state(&p.master, "t_m_seq"),
        "C3: t_m_seq\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// C4 (correctness, MEDIUM): a table swap by renames never reaches the slave
// ---------------------------------------------------------------------------------------------

/// C4. The slave tells the master which tables it receives by the names it knows; the master
/// (`subscribed_tables`) resolves each name to a table by its *current* name first and only
/// then through `_rserv_ddl_`'s old names. After the classic swap
/// `ALTER TABLE t RENAME TO t_old; ALTER TABLE t_new RENAME TO t` both of the slave's names
/// resolve to the master's new `t` (the old `t_new`): the master's `t_old` (the slave's `t`)
/// drops out of what the slave receives (its `_rserv_server_tables_` row is deleted as if the
/// slave had stopped receiving it), its rename is never sent, and the slave is asked to
/// rename its `t_new` to `t`, which its own (never renamed) `t` occupies: every cycle fails
/// with "relation "t" already exists". Nothing on the slave can fix it (renaming a received
/// table there is refused). With only the first rename and a new table registered under the
/// old name, the slave's `t` silently starts mirroring the new table instead, and `t_old`
/// never arrives (without `--create-tables`).
///
/// Severity: MEDIUM (a documented schema change — RENAME TABLE — stops a slave for good; the
/// variant loses a table silently).
///
/// Fix: resolve a slave's names as of the slave's last confirmed change set: prefer a table
/// whose DDL in the slave's window has that old name over a table that has the name now (or
/// have the slave send the master's reloid it last received, kept in `_rserv_slave_tables_`).
#[test]
fn c4_table_swap_by_renames_stops_the_slave() {
    let p = Pair::start("adv3-c4");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.table(
        "CREATE TABLE t_new (id int PRIMARY KEY, v text)",
        "t_new",
        None,
    );
    p.master.execute(
        DB,
        "INSERT INTO t SELECT i, 'old ' || i FROM generate_series(1, 5) i;
         INSERT INTO t_new SELECT i, 'new ' || i FROM generate_series(1, 8) i;",
    );
    p.sync();
    p.master.execute(
        DB,
        "BEGIN; ALTER TABLE t RENAME TO t_old; ALTER TABLE t_new RENAME TO t; COMMIT;
         UPDATE t SET v = 'new, changed' WHERE id = 1;
         UPDATE t_old SET v = 'old, changed' WHERE id = 2;",
    );
    let out = p.replicate(&[DB, DB]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "C4: the slave cannot follow a table swap\n{text}"
    );
    assert_eq!(
        Pair::rows(&p.slave, "t"),
        Pair::rows(&p.master, "t"),
        "t\n{text}"
    );
    assert_eq!(
        Pair::rows(&p.slave, "t_old"),
        Pair::rows(&p.master, "t_old"),
        "t_old\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// C5 (correctness, MEDIUM): a new slave replays DDL history onto a table made from today's
// definition
// ---------------------------------------------------------------------------------------------

/// C5. A table's first change set for a slave (no confirmed snapshot: the window is
/// unbounded) carries every DDL section `_rserv_ddl_` still holds for it — all of them when
/// no slave was ever registered, since the log is only cleaned relative to registered
/// slaves — while `--create-tables` made the slave's table from the master's *current*
/// definition. `apply_section` then replays the old steps on the new shape, by column *name*:
/// after `RENAME COLUMN a TO c; RENAME COLUMN b TO a`, the replayed first rename finds the
/// slave's `a` (the master's old `b`) and fails with "column "c" … already exists", in every
/// cycle, so this slave can never join while that DDL is kept. With equal types the replay of
/// a name swap succeeds instead and silently swaps the two columns' defaults, comments and
/// typmods on the slave.
///
/// Severity: MEDIUM (a new slave cannot be set up after ordinary column renames; silent
/// shape divergence in the swap variant).
///
/// Fix: a DDL section is for a slave whose table has the section's *old* shape: skip DDL
/// sections older than the definition a slave table was created from (record the master's
/// ddlid/xid the definition was read at in `rserv_table_list` and `_rserv_slave_pending_`, or
/// leave out of a change set the DDL of tables it copies whole and ship only the latest
/// definition's post-data), and match columns by the master's attnum, not by name.
#[test]
fn c5_new_slave_replays_ddl_history_on_a_table_made_from_the_current_definition() {
    let p = Pair::start("adv3-c5");
    p.master.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, a int DEFAULT 1, b int DEFAULT 2);
         INSERT INTO t SELECT i, i, -i FROM generate_series(1, 5) i;
         SELECT rserv_add_table('t');
         ALTER TABLE t RENAME COLUMN a TO c;
         ALTER TABLE t RENAME COLUMN b TO a;",
    );
    // the same swap on a second table, with columns of one type: replayed by name it would
    // succeed and swap the columns' defaults silently
    p.master.execute(
        DB,
        "CREATE TABLE u (id int PRIMARY KEY, a int DEFAULT 1, b int DEFAULT 2);
         INSERT INTO u SELECT i, i, -i FROM generate_series(1, 5) i;
         SELECT rserv_add_table('u');
         ALTER TABLE u RENAME COLUMN a TO tmp;
         ALTER TABLE u RENAME COLUMN b TO a;
         ALTER TABLE u RENAME COLUMN tmp TO b;",
    );
    let out = p.replicate(&["--create-tables", DB, DB]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "C5: a new slave cannot join after two column renames\n{text}"
    );
    assert_eq!(
        Pair::rows(&p.slave, "t"),
        Pair::rows(&p.master, "t"),
        "{text}"
    );
    assert_eq!(
        Pair::rows(&p.slave, "u"),
        Pair::rows(&p.master, "u"),
        "{text}"
    );
    let defaults = "SELECT string_agg(a.attname || '=' || coalesce(pg_get_expr(d.adbin, d.adrelid), ''), ', ' ORDER BY a.attnum) \
         FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE a.attrelid = 'u'::regclass AND a.attnum > 0 AND NOT a.attisdropped";
    assert_eq!(
        value(&p.slave, defaults),
        value(&p.master, defaults),
        "C5: the slave's columns of u have other defaults than the master's\n{text}"
    );
}

// ---------------------------------------------------------------------------------------------
// C6 (correctness, HIGH): a restored master, replicated with the seed's pipeline
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// C7 (security, MEDIUM): any master DDL switches off the slave's row-level security
// ---------------------------------------------------------------------------------------------

/// C7. After a DDL section, `rserv_apply_end()` makes the table's objects match the master's
/// definition (`finish_deferred` → `objects`), which ends with `set_row_security(def)`: `ALTER
/// TABLE … DISABLE ROW LEVEL SECURITY` whenever the master's table has none. A slave whose
/// administrator protects a received table with row-level security of its own (slave-local
/// readers see only their rows; the apply itself runs as the owner, exempt) loses it at the
/// master's next harmless schema change — here `COMMENT ON TABLE` — silently: every reader on
/// the slave then sees every row. rserv otherwise leaves slave-local objects alone (indexes,
/// triggers and policies the master lacks are kept); this one setting is imposed.
///
/// Severity: MEDIUM (slave users gain read access to rows a slave-local policy hid from
/// them, by an unrelated DDL of the master's).
///
/// Fix: follow the master's row-level security only when it changes in the section (old vs
/// new `row_security`), as every other step does, never reset it to the master's state at
/// each DDL; at most WARN when they differ.
#[test]
fn c7_master_ddl_disables_the_slaves_own_row_level_security() {
    let p = Pair::start("adv3-c7");
    p.table("CREATE TABLE t (id int PRIMARY KEY, who text)", "t", None);
    p.master
        .execute(DB, "INSERT INTO t VALUES (1, 'bob'), (2, 'carol')");
    p.sync();
    p.slave.execute(
        DB,
        "CREATE ROLE bob LOGIN; GRANT SELECT ON t TO bob;
         CREATE POLICY own_rows ON t FOR SELECT USING (who = current_user);
         ALTER TABLE t ENABLE ROW LEVEL SECURITY;",
    );
    let seen_by_bob = |p: &Pair| {
        let mut c = rserv_tests::roles::connect_as(&p.slave, "bob");
        rserv_tests::roles::try_value(&mut c, "SELECT count(*)::text FROM t").expect("bob reads t")
    };
    assert_eq!(seen_by_bob(&p).as_deref(), Some("1"));
    p.master
        .execute(DB, "COMMENT ON TABLE t IS 'people'; UPDATE t SET who = who");
    let out = p.replicate(&[DB, DB]);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        value(
            &p.slave,
            "SELECT relrowsecurity::text FROM pg_class WHERE oid = 't'::regclass"
        )
        .as_deref(),
        Some("true"),
        "C7: the master's COMMENT ON TABLE switched off the slave's row-level security; bob \
         now sees {:?} rows\n{text}",
        seen_by_bob(&p)
    );
}

// ---------------------------------------------------------------------------------------------
// C8 (correctness, MEDIUM): a master's new column takes over a slave-only column of its name
// ---------------------------------------------------------------------------------------------

/// C8. Slave-only columns are allowed (README: extra nullable or defaulted columns). When the
/// master then adds a column of the same name, `before_step` (`Step::AddColumn`) finds a
/// column of that name on the slave and takes it for "added already": the slave keeps its
/// own values in every row the change set does not carry, while the master's rows hold the
/// new column's default. Every cycle exits 0; the column is replicated from now on, and the
/// slave differs in it for good (`replicate check` reports the rows). The same name match
/// lets `RenameColumn`, `AlterType`, `SetDefault` and `DropColumn` act on a slave-only column
/// (a master's `DROP COLUMN` of a column it added and dropped again drops the slave's data).
///
/// Severity: MEDIUM (silent divergence in a replicated column).
///
/// Fix: an ADD COLUMN step that finds a column of that name must make sure it is the
/// master's (the slave table was made from a later definition: the column is in the latest
/// definition with this attnum, and the table is being copied whole in this change set);
/// otherwise stop with an error naming the column (or send the table whole, `recopy`).
#[test]
fn c8_master_add_column_takes_over_a_slave_only_column() {
    let p = Pair::start("adv3-c8");
    p.master
        .execute(DB, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    p.slave.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text, note int DEFAULT 7)",
    );
    p.master.execute(DB, "SELECT rserv_add_table('t')");
    p.slave.execute(DB, "SELECT rserv_slave_add_table('t')");
    p.master.execute(
        DB,
        "INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 5) i",
    );
    p.sync();
    // the slave's own column, with values of its own (the slave's default)
    p.master.execute(
        DB,
        "ALTER TABLE t ADD COLUMN note int DEFAULT 0; INSERT INTO t VALUES (6, 'v6', 1)",
    );
    let out = p.replicate(&[DB, DB]);
    refused_or_equal(
        &p,
        &out,
        "t",
        "note",
        "C8: after the master added column note",
    );
}

/// C6. The b6 fix (`require_known_history`) runs only when a slave reports a sync id the
/// master has *no row* for, i.e. in `replicate`'s cycle, whose `sync_back` confirms before it
/// prepares. The seed's pipeline, which the README says still works,
/// `replicate prepare M | replicate apply S && replicate master-sync M $(replicate sync-id S)`,
/// prepares first: the master restored from a backup taken after change set 1 hands out sync
/// id 2 again; `rserv_apply_begin` skips it ("slave is already at change set 2", exit 0); and
/// `master-sync 2` then finds the restored master's own, unconfirmed change set 2 and confirms
/// it. The restored master's new row is lost for good, the lost master's rows stay on the
/// slave, and every later pipeline run exits 0 on top of that.
///
/// Severity: HIGH (silent loss of committed rows; the scenario of b6, through the other
/// documented way to replicate).
///
/// Fix: make change sets identifiable beyond their number, as b6 recommended: a random
/// fingerprint per prepare, kept in `_rserv_sync_`, written in the header and recorded by the
/// slave; `rserv_apply_begin` refuses (instead of skipping) a change set whose id the slave
/// has with another fingerprint, and `rserv_confirm` takes the fingerprint and refuses one
/// that is not this master's. At least, `rserv_apply_begin` must refuse an id at or below its
/// own whose `base` is below the slave's sync id (the master never learnt of the slave's).
#[test]
fn c6_restored_master_through_the_prepare_apply_pipeline() {
    let p = Pair::start("adv3-c6");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.master
        .execute(DB, "INSERT INTO t VALUES (1, 'one'), (2, 'two')");
    p.sync(); // change set 1
    let server = value(&p.master, "SELECT min(server)::text FROM _rserv_servers_")
        .expect("the slave's server id");
    let backup = p.master.data_dir().with_file_name("data.backup");
    p.master.while_stopped(|d| {
        rserv_tests::run_ok(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(d)
                .arg(&backup),
        )
    });
    p.master.execute(
        DB,
        "INSERT INTO t VALUES (3, 'lost with the master'); UPDATE t SET v = 'two, lost' WHERE id = 2",
    );
    p.sync(); // change set 2
    p.master.while_stopped(|d| {
        rserv_tests::run_ok(std::process::Command::new("rm").arg("-rf").arg(d));
        rserv_tests::run_ok(std::process::Command::new("mv").arg(&backup).arg(d));
    });
    p.master
        .execute(DB, "INSERT INTO t VALUES (4, 'after the restore')");
    let file = p.master.data_dir().with_file_name("changeset.rserv");
    let file = file.display().to_string();
    for i in 1..=2 {
        let prep = p.replicate(&["--server", &server, "prepare", DB, "-o", &file]);
        eprintln!("prepare {i}: {}", output_text(&prep));
        if !prep.status.success() {
            return; // refused
        }
        if String::from_utf8_lossy(&prep.stderr).contains("nothing to replicate") {
            break;
        }
        let apply = p.replicate(&["apply", DB, "-i", &file]);
        eprintln!("apply {i}: {}", output_text(&apply));
        if !apply.status.success() {
            return; // refused
        }
        let id = p.replicate(&["sync-id", DB]);
        let id = String::from_utf8_lossy(&id.stdout).trim().to_string();
        let sync = p.replicate(&["--server", &server, "master-sync", DB, &id]);
        eprintln!("master-sync {id}: {}", output_text(&sync));
        if !sync.status.success() {
            return; // refused
        }
    }
    assert_eq!(
        Pair::rows(&p.slave, "t"),
        Pair::rows(&p.master, "t"),
        "C6: the pipeline exited 0 after the master's restore, but the slave holds the lost \
         master's rows and misses the restored master's"
    );
}
