//! Adversary review 4, of the ddl2 branch at e98ec62 (types in the stream: `rserv_apply_types`,
//! `ddl/types.rs`; `rserv_execute_ddl`; storage settings; post-data; the index probe's
//! plain-column shortcut). Each test is one finding: a minimal reproduction on real clusters
//! that FAILED on e98ec62 (d5: on b65b755) and asserts what a fixed rserv must do. Ranked by
//! severity:
//!
//! - HIGH (security) d1: a domain of the slave that a superuser owns is altered as that
//!   superuser on the strength of a table owner's DDL on the master, and the functions its new
//!   CHECK calls are vetted as if the *table owner* evaluated them: `finish_domain` ran
//!   `VALIDATE CONSTRAINT` as the superuser over a CHECK calling the table owner's
//!   "IMMUTABLE" function, which made her a superuser. FIXED: an expression rserv puts on a
//!   type (a domain's CHECK or DEFAULT) may call only functions its *type's owner* trusts (a
//!   superuser's, or the type owner's own), checked before anything of it runs.
//! - HIGH (security) d2: the same road through `ALTER DOMAIN … SET DEFAULT`: the slave's
//!   superuser domain got a default calling the table owner's STABLE function (which calls a
//!   volatile one), vetted only against the table owner (`check_calls`); every later INSERT of anyone (here a
//!   superuser) that relies on the default runs her code as themselves. FIXED with d1.
//! - MEDIUM (correctness) d3: `rserv_apply_types` commits the enum labels of a change set
//!   before `rserv_apply_begin` has said whether this slave may apply it at all: a change set
//!   of another master (or prepared for another slave database) is refused, but its labels
//!   stay in the slave's enum for good, in the other master's order; a later label the real
//!   master adds at that place then lands elsewhere (enum sort order differs silently).
//!   FIXED in replicate: the change set's header is checked by `rserv_apply_begin` in a
//!   transaction rolled back before the labels are added (a skipped change set adds none).
//! - MEDIUM (liveness) d4: a label added in the change set that also renamed the table (or
//!   the enum) that uses it is not found by `rserv_apply_types` (it resolves the section's
//!   names as the slave has them before the change set); the label is then added inside the
//!   apply transaction, and the row that uses it fails with "unsafe use of new value" in
//!   every cycle: the slave is stuck until someone adds the label by hand. FIXED: renames of
//!   tables and types earlier in the change set are followed when the labels are resolved.
//! - LOW (correctness) d5: a type moved to a new schema: the schema was created as rserv's
//!   definer (the bootstrap superuser), so the type's owner could not move the type into it
//!   and the slave stopped. FIXED: the schema is created as the type's owner.
//!
//! Checked and held up (by reading): `rserv_execute_ddl` is not SECURITY DEFINER (the script
//! runs as its caller, as typed by hand); `_rserv_ddl_recorded_` counts only the caller's own
//! transaction; `rserv_apply_types` requires a replicator and runs each ALTER TYPE as the type's
//! owner, only for types a received table uses, schema-qualified (no search_path lookup);
//! the probe's plain-column shortcut: an index on plain columns with default operator classes
//! calls only default operator-class support, which only a superuser can create (enum, record,
//! range and domain types bring builtin ones); storage settings (`settings.rs`) run as the
//! table's owner and set no expression.
//!
//! Noted, not fixed (proposed fixes):
//! - A forged change set (whoever can write one, i.e. a replicator) can name in its DDL payload
//!   any type of the slave owned by a superuser or by the table's owner, used by the table or
//!   not (only `rserv_apply_types` checks `received_tables_use`): renames, `DROP CONSTRAINT`,
//!   `DROP NOT NULL` of such a domain then run as its owner. Fix: in `apply_type_step` and
//!   `finish_domain`, act only on types the section's slave table uses (the same
//!   `received_tables_use` query restricted to `reloid`).
//! - Beyond d1/d2 (which stop code from running), the model question stays: a table owner's
//!   DDL on *her* domain on the master alters the slave's same-named domain of a *superuser*
//!   (`trusted_type` accepts both), e.g. `DROP CONSTRAINT` / `DROP NOT NULL`, which then no
//!   longer hold for other users' tables of that domain on the slave. Fix: carry in `TypeDef`
//!   whether the master's type owner is a superuser, and alter a slave type owned by a
//!   superuser only when the master's is too (else refuse, naming the type and its owners).
//! - d3 is fixed in replicate only: `rserv_apply_types` itself still trusts its caller (a
//!   replicator) to have checked the change set. Fix: give it the header (sync id, master,
//!   server, base, slave node, fingerprint) and run `rserv_apply_begin`'s checks in it without
//!   recording (a new signature: upgrade script and C symbol).
//! - Two concurrent `CREATE INDEX` (not reproduced here) on one table (ShareLock does not conflict with itself) each
//!   record the definition read before the other committed, so `_rserv_tables_.definition`
//!   loses one index; a slave built from it later (`--create-tables`) lacks that index, and a
//!   `DROP INDEX` of it never reaches the existing slaves. Fix: in `_rserv_record_ddl_`, take
//!   `SELECT … FOR UPDATE` of the table's `_rserv_tables_` row (or a transaction advisory lock
//!   on its oid) *before* describing the table, and describe it with a fresh catalog snapshot
//!   after the lock is granted; at REPEATABLE READ refuse when the row changed since.
//!
//! Run against the PostgreSQL under test with
//! `RSERV_PG_BINDIR=…/bin cargo test -p rserv-tests --test adversary4 -- --nocapture`.

use rserv_tests::pair::{between, start_clusters, Pair, DB};
use rserv_tests::roles::{exec_as, output_text, value};
use rserv_tests::Cluster;

/// A plain role `mallory` with schema `m` on both sides; on the slave, a domain `m.d` the
/// superuser made (a DBA's type, as a restore by a superuser leaves it) and mallory's table
/// using it; on the master, everything is mallory's. On the slave, mallory's functions `m.f`
/// (IMMUTABLE, for a CHECK) and `m.g` (STABLE, for a DEFAULT) call her `m.evil`, which makes her a
/// superuser when it runs as one, and logs who ran it.
fn superuser_domain_pair(name: &str) -> Pair {
    let p = Pair::start(name);
    for c in [&p.master, &p.slave] {
        c.execute(
            DB,
            "CREATE ROLE mallory LOGIN; CREATE SCHEMA m AUTHORIZATION mallory",
        );
    }
    exec_as(
        &p.master,
        "mallory",
        "CREATE DOMAIN m.d AS int;
         CREATE FUNCTION m.f(int) RETURNS bool LANGUAGE sql IMMUTABLE AS 'SELECT true';
         CREATE FUNCTION m.g() RETURNS int LANGUAGE sql STABLE AS 'SELECT 1';
         CREATE TABLE m.t (id int PRIMARY KEY, v m.d);
         INSERT INTO m.t SELECT i, i FROM generate_series(1, 5) i;",
    );
    p.slave.execute(
        DB,
        "CREATE DOMAIN m.d AS int; CREATE TABLE public.seen (who text, super bool);
         GRANT INSERT ON public.seen TO PUBLIC",
    );
    let escalate = "INSERT INTO public.seen
                        SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user;
                    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
                        EXECUTE 'ALTER ROLE mallory SUPERUSER';
                    END IF;";
    exec_as(
        &p.slave,
        "mallory",
        &format!(
            "CREATE TABLE m.t (id int PRIMARY KEY, v m.d);
             CREATE FUNCTION m.evil() RETURNS int LANGUAGE plpgsql VOLATILE AS $$
             BEGIN {escalate} RETURN 1; END $$;
             CREATE FUNCTION m.f(int) RETURNS bool LANGUAGE plpgsql IMMUTABLE AS $$
             BEGIN RETURN m.evil() = 1; END $$;
             CREATE FUNCTION m.g() RETURNS int LANGUAGE plpgsql STABLE AS $$
             BEGIN RETURN m.evil(); END $$;"
        ),
    );
    p.master.execute(DB, "SELECT rserv_add_table('m.t')");
    p.slave.execute(DB, "SELECT rserv_slave_add_table('m.t')");
    p.sync();
    assert_eq!(Pair::rows(&p.slave, "m.t"), Pair::rows(&p.master, "m.t"));
    p
}

/// Who ran mallory's function on the slave, and whether she is a superuser now.
fn escalated(p: &Pair) -> (Vec<String>, bool) {
    let ran = p
        .slave
        .query_strings(DB, "SELECT who || ' ' || super FROM public.seen ORDER BY 1")
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect();
    let sup = value(
        &p.slave,
        "SELECT rolsuper::text FROM pg_roles WHERE rolname = 'mallory'",
    );
    (ran, sup.as_deref() == Some("true"))
}

// ---------------------------------------------------------------------------------------------
// D1 (security, HIGH): a superuser's domain validates a CHECK calling the table owner's function
// ---------------------------------------------------------------------------------------------

/// D1. mallory owns a replicated table on both sides; the domain it uses is hers on the
/// master and a superuser's on the slave (`trusted_type` accepts both). She adds
/// `CHECK (m.f(VALUE))` to her domain on the master. `finish_domain` adds it to the slave's
/// domain as *its* owner, the superuser, checks the functions with `risky_calls(…,
/// table_owner)` — which trusts the table owner's own functions, and `m.f` says IMMUTABLE —
/// and then runs `VALIDATE CONSTRAINT` as the superuser: her `m.f` runs as the superuser on
/// every row of the table and makes her one.
///
/// Severity: HIGH (a table owner becomes superuser on the slave).
///
/// Fix (done): the functions an expression rserv puts on a type calls are checked against
/// the *type's* owner (a superuser's or the type owner's own), before the constraint is
/// validated: `risky_calls(InvalidOid, &[type], type_owner)`.
#[test]
fn d1_domain_check_validated_as_its_superuser_owner_runs_table_owners_function() {
    let p = superuser_domain_pair("adv4-d1");
    exec_as(
        &p.master,
        "mallory",
        "ALTER DOMAIN m.d ADD CONSTRAINT ok CHECK (m.f(VALUE))",
    );
    let out = p.replicate(&[DB, DB]);
    let text = output_text(&out);
    let (ran, sup) = escalated(&p);
    assert!(
        !sup,
        "D1: mallory became a superuser on the slave (her function ran as {ran:?})\n{text}"
    );
    assert!(
        !ran.iter().any(|r| !r.starts_with("mallory ")),
        "D1: mallory's function ran as another role on the slave: {ran:?}\n{text}"
    );
    if out.status.success() {
        // followed: then only as something mallory could do herself
        assert_eq!(Pair::rows(&p.slave, "m.t"), Pair::rows(&p.master, "m.t"));
    } else {
        assert!(
            text.contains("m.f"),
            "D1: the refusal names the function: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// D2 (security, HIGH): a superuser's domain gets a DEFAULT calling the table owner's function
// ---------------------------------------------------------------------------------------------

/// D2. As D1, through `ALTER DOMAIN m.d SET DEFAULT m.g()`: `apply_type_step` sets the default
/// on the slave's superuser-owned domain as the superuser, and nothing checks what it calls
/// (`expression` only checks that it is one expression). From then on, every INSERT on the
/// slave that leaves a column of that domain to its default — in any table of any user, here
/// a table of the superuser's — runs mallory's function as the inserting role.
///
/// (A VOLATILE default is refused by `check_calls`, which checks the table's expressions
/// against the table owner; a STABLE one of hers passes.)
///
/// Severity: HIGH (a table owner plants code in a superuser's type on the slave; it runs as
/// whoever inserts).
///
/// Fix (done): as D1; the default's calls are checked against the type's owner after
/// `SET DEFAULT` (in the apply transaction, so a refusal leaves nothing).
#[test]
fn d2_domain_default_set_on_a_superusers_domain_calls_table_owners_function() {
    let p = superuser_domain_pair("adv4-d2");
    exec_as(&p.master, "mallory", "ALTER DOMAIN m.d SET DEFAULT m.g()");
    let out = p.replicate(&[DB, DB]);
    let text = output_text(&out);
    // the slave's DBA uses the domain in a table of their own
    p.slave.execute(
        DB,
        "CREATE TABLE public.dba (id int, v m.d); INSERT INTO public.dba (id) VALUES (1)",
    );
    let (ran, sup) = escalated(&p);
    assert!(
        !sup,
        "D2: mallory became a superuser on the slave (her default ran as {ran:?})\n{text}"
    );
    assert!(
        ran.is_empty(),
        "D2: mallory's function ran on the slave, as {ran:?}\n{text}"
    );
    if !out.status.success() {
        assert!(
            text.contains("m.g"),
            "D2: the refusal names the function: {text}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// D3 (correctness, MEDIUM): labels of a change set the slave refuses stay committed
// ---------------------------------------------------------------------------------------------

/// Each enum's labels in sort order, on one side.
fn labels(c: &Cluster) -> Vec<String> {
    c.query_strings(
        DB,
        "SELECT t.typname || ' ' || string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
           FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY t.typname ORDER BY 1",
    )
    .into_iter()
    .map(|r| r[0].clone().unwrap_or_default())
    .collect()
}

/// D3. `replicate` calls `rserv_apply_types` (committed) before the apply transaction's
/// `rserv_apply_begin` checks the change set: from this slave's master? for this slave
/// database? already applied? A change set of another master (an operator's slip: a wrong
/// host in a connection string) is refused by `rserv_apply_begin` — the cycle fails, as it
/// should — but the labels its DDL added are in the slave's enum for good. The slave's enum
/// now differs from its master's (extra labels, and the master's next label added at that
/// place sorts differently on the slave), and nothing reports it.
///
/// Severity: MEDIUM (a refused change set changes the slave; silent divergence of an enum's
/// sort order).
///
/// Fix (done, in replicate): check the header with `rserv_apply_begin` in a transaction that
/// is rolled back, and add the labels only when it would apply the change set.
#[test]
fn d3_labels_of_a_refused_change_set_stay_on_the_slave() {
    let cs = start_clusters(&["adv4-d3-m1", "adv4-d3-m2", "adv4-d3-s"]);
    let (m1, m2, s) = (&cs[0], &cs[1], &cs[2]);
    for c in [m1, m2, s] {
        c.execute(
            DB,
            "CREATE TYPE mood AS ENUM ('a', 'b'); CREATE TABLE t (id int PRIMARY KEY, m mood)",
        );
    }
    for c in [m1, m2] {
        c.execute(
            DB,
            "INSERT INTO t VALUES (1, 'a'); SELECT rserv_add_table('t')",
        );
    }
    s.execute(DB, "SELECT rserv_slave_add_table('t')");
    let out = between(m1, s, &[DB, DB]);
    assert!(out.status.success(), "{}", output_text(&out));
    // another master's change set reaches the slave by mistake
    m2.execute(DB, "ALTER TYPE mood ADD VALUE 'zz' BEFORE 'a'");
    m2.execute(DB, "INSERT INTO t VALUES (2, 'zz')");
    let wrong = between(m2, s, &[DB, DB]);
    let text = output_text(&wrong);
    assert!(
        !wrong.status.success(),
        "D3: a change set of another master is refused\n{text}"
    );
    assert_eq!(
        labels(s),
        labels(m1),
        "D3: the refused change set's labels stayed in the slave's enum\n{text}"
    );
    // the real master goes on
    m1.execute(DB, "ALTER TYPE mood ADD VALUE 'c' AFTER 'b'");
    m1.execute(DB, "INSERT INTO t VALUES (3, 'c')");
    let out = between(m1, s, &[DB, DB]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(labels(s), labels(m1));
    assert_eq!(Pair::rows(s, "t"), Pair::rows(m1, "t"));
}

// ---------------------------------------------------------------------------------------------
// D4 (liveness, MEDIUM): a label added after a rename in the same change set
// ---------------------------------------------------------------------------------------------

/// D4. `rserv_apply_types` resolves each DDL section's table by the slave's names before the
/// change set (a section after `RENAME t TO t2` names `t2`, which the slave does not have yet)
/// and each type by its name in the section (after `ALTER TYPE color RENAME TO colour`,
/// `colour`, ditto). The label is skipped there, then added inside the apply transaction by
/// `apply_type_step`, and the first row that uses it fails: "unsafe use of new value". The
/// next cycle prepares the same window again: the slave is stuck until someone adds the
/// label on the slave by hand.
///
/// Severity: MEDIUM (replication stops on two documented schema changes in one change set).
///
/// Fix (done): `rserv_apply_types` follows the renames of tables and types made by the
/// earlier sections of the change set when it resolves a section's table and a label's type.
#[test]
fn d4_label_added_after_a_rename_in_the_same_change_set_stops_the_slave() {
    let p = Pair::start("adv4-d4");
    p.both("CREATE TYPE mood AS ENUM ('a', 'b'); CREATE TYPE color AS ENUM ('a', 'b')");
    p.table("CREATE TABLE t (id int PRIMARY KEY, m mood)", "t", None);
    p.table("CREATE TABLE u (id int PRIMARY KEY, c color)", "u", None);
    p.master.execute(
        DB,
        "INSERT INTO t VALUES (1, 'a'); INSERT INTO u VALUES (1, 'b')",
    );
    p.sync();
    for step in [
        // a table renamed, then a label of the type only it uses
        "ALTER TABLE t RENAME TO t2",
        "ALTER TYPE mood ADD VALUE 'c'",
        "INSERT INTO t2 VALUES (2, 'c')",
        // a type renamed, then a label
        "ALTER TYPE color RENAME TO colour",
        "ALTER TYPE colour ADD VALUE 'd' BEFORE 'a'",
        "INSERT INTO u VALUES (2, 'd')",
    ] {
        p.master.execute(DB, step);
    }
    let out = p.replicate(&[DB, DB]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "D4: the slave cannot follow a label added after a rename\n{text}"
    );
    assert_eq!(Pair::rows(&p.slave, "t2"), Pair::rows(&p.master, "t2"));
    assert_eq!(Pair::rows(&p.slave, "u"), Pair::rows(&p.master, "u"));
    assert_eq!(labels(&p.slave), labels(&p.master), "{text}");
}

// ---------------------------------------------------------------------------------------------
// D5 (correctness, LOW): a type moved to a new schema: the schema is made as the superuser
// ---------------------------------------------------------------------------------------------

/// D5. `apply_type_step`'s `Rename` made the schema a type moves to with `ensure_schema`
/// outside `run_as_owner`, i.e. as rserv's definer, the bootstrap superuser. The type's owner
/// (the table owner, who may create schemas on both sides) then had no CREATE in it, so `ALTER
/// TYPE … SET SCHEMA` failed in every cycle; and rserv had made a superuser's schema on the
/// strength of a change set.
///
/// Severity: LOW (replication stops on a documented schema change; no privilege gained).
///
/// Fix (done): the schema is made inside `as_type_owner`, as the type's owner.
#[test]
fn d5_type_moved_to_a_new_schema_gets_a_schema_of_the_superuser() {
    let p = Pair::start("adv4-d5");
    for c in [&p.master, &p.slave] {
        c.execute(
            DB,
            "CREATE ROLE mallory LOGIN; GRANT CREATE ON DATABASE app TO mallory",
        );
        exec_as(
            c,
            "mallory",
            "CREATE SCHEMA m; CREATE TYPE m.mood AS ENUM ('a', 'b');
             CREATE TABLE m.t (id int PRIMARY KEY, v m.mood)",
        );
    }
    p.master.execute(
        DB,
        "INSERT INTO m.t VALUES (1, 'a'); SELECT rserv_add_table('m.t')",
    );
    p.slave.execute(DB, "SELECT rserv_slave_add_table('m.t')");
    p.sync();
    exec_as(
        &p.master,
        "mallory",
        "CREATE SCHEMA m2; ALTER TYPE m.mood SET SCHEMA m2",
    );
    p.master.execute(DB, "INSERT INTO m.t VALUES (2, 'b')");
    let out = p.replicate(&[DB, DB]);
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "D5: the slave cannot follow a type moved to a new schema\n{text}"
    );
    assert_eq!(Pair::rows(&p.slave, "m.t"), Pair::rows(&p.master, "m.t"));
    assert_eq!(
        value(
            &p.slave,
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'm2'"
        )
        .as_deref(),
        Some("mallory"),
        "D5: the schema the type moved to is the type owner's"
    );
}
