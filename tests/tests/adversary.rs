//! Adversary review of 6c90c5f (issues 11 and 12 repaired): each test is one finding, a minimal
//! reproduction that FAILED on that commit and passes since the finding was fixed (the attack
//! is now refused, and the test checks both the refusal and that nothing was gained). Each test's doc
//! comment says what breaks, why, and the recommended fix. By severity:
//!
//! - CRITICAL a1b: replication role -> superuser through its own pg_temp, when a slave table
//!   owned by a superuser has an ALWAYS trigger (or CHECK/DEFAULT function) with
//!   `SET search_path = public` naming a table unqualified.
//! - HIGH a1: replication role -> any slave table owner, the same way.
//! - HIGH a11: slave table owner -> the replication role's rserv rights (rserv checks
//!   GetOuterUserId): alice's trigger empties bob's slave table through rserv_apply_stage.
//! - HIGH a2: one slave database under two server ids goes back in time, permanently.
//! - HIGH a9: a slave restored from a backup (or failed over) silently skips change sets.
//! - MEDIUM a3: a plain master user fills (after emptying) another owner's slave table by name.
//! - MEDIUM a10: the seed's pipeline binds no slave: two slave databases on server 0 lose
//!   changes (the original rserv's bug), a slave table registered anew gets no copy.
//! - MEDIUM a4: a table renamed (swapped) during the prepare: another table's rows are sent.
//! - MEDIUM a5: a narrower type modifier on the slave rounds values silently.
//! - MEDIUM-LOW a6: --create-tables trusts a slave user's same-named domain: its CHECK runs as
//!   the replication role.
//! - LOW a8 (documented, not a test): the owner's ALWAYS triggers run in replica mode, so what
//!   they write to other tables skips those tables' non-ALWAYS triggers and foreign keys, as in
//!   PostgreSQL's own logical replication (README, Privileges).
//! - LOW a7: array_nulls is not pinned: NULL array elements arrive as the string 'NULL'.
//!
//! Run against the PostgreSQL under test with
//! `RSERV_PG_BINDIR=…/bin cargo test -p rserv-tests --test adversary -- --nocapture`.

use postgres::Client;
use replicate::cycle::Outcome;
use replicate::error::Error;
use rserv_tests::oracle::{self, options};
use rserv_tests::pair::{wait_for_lock_waiter, Pair, DB};
use rserv_tests::roles::{
    self, connect_as, create_roles, exec_as, output_text, replicate_as, try_value, value, OWNER,
    REPL,
};
use rserv_tests::Cluster;
use std::io::Write;

/// Rows of `sql` (first column, as text) on `app`, as superuser.
fn column(c: &Cluster, sql: &str) -> Vec<String> {
    c.query_strings(DB, sql)
        .into_iter()
        .map(|r| r.into_iter().next().flatten().unwrap_or_default())
        .collect()
}

/// Every row of `table` (`t::text`), sorted, as superuser.
fn rows(c: &Cluster, table: &str) -> Vec<String> {
    column(c, &format!("SELECT t::text FROM {table} t ORDER BY 1"))
}

/// Apply change set `syncid` holding one INSERT section for `public.<table>` (`columns` as an
/// array literal, key `{id}`) with COPY `data`, through rserv's apply functions, as the
/// replication role would: on `client`, whose session state the caller prepared.
fn apply_insert(client: &mut Client, syncid: i64, table: &str, columns: &str, data: &[u8]) {
    try_apply_insert(client, syncid, table, columns, data)
        .unwrap_or_else(|e| panic!("applying to {table}: {e}"));
}

/// [`apply_insert`], returning the first error (the transaction is then rolled back).
fn try_apply_insert(
    client: &mut Client,
    syncid: i64,
    table: &str,
    columns: &str,
    data: &[u8],
) -> Result<(), String> {
    client
        .batch_execute("SET search_path = pg_catalog, pg_temp")
        .expect("search_path");
    let version: String = client
        .query_one("SELECT public.rserv_version()", &[])
        .expect("version")
        .get(0);
    let mut tx = client.transaction().expect("begin");
    let began: bool = tx
        .query_one(
            "SELECT public.rserv_apply_begin($1, '00000000-0000-4000-8000-00000000adad', $2)",
            &[&syncid, &version],
        )
        .expect("rserv_apply_begin")
        .get(0);
    assert!(began, "change set {syncid} not begun");
    // a table registered anew waits for its initial copy: TRUNCATE, then the rows
    tx.query_one(
        "SELECT public.rserv_apply_stage('TRUNCATE', 'public', $1, '{}', '{id}')",
        &[&table],
    )
    .map_err(|e| rserv_tests::describe_pg_error(&e))?;
    let args: [&(dyn postgres::types::ToSql + Sync); 2] = [&table, &columns];
    let copy: String = tx
        .query_one(
            "SELECT public.rserv_apply_stage('INSERT', 'public', $1, $2::text::text[], '{id}')",
            &args,
        )
        .map_err(|e| rserv_tests::describe_pg_error(&e))?
        .get(0);
    let mut w = tx
        .copy_in(&copy)
        .map_err(|e| rserv_tests::describe_pg_error(&e))?;
    w.write_all(data).expect("copy data");
    w.finish().map_err(|e| rserv_tests::describe_pg_error(&e))?;
    tx.query_one(
        "SELECT public.rserv_apply_merge('INSERT', 'public', $1, $2::text::text[], '{id}')",
        &args,
    )
    .map_err(|e| rserv_tests::describe_pg_error(&e))?;
    tx.commit().map_err(|e| rserv_tests::describe_pg_error(&e))
}

// ---------------------------------------------------------------------------------------------
// A1, A1b (security, HIGH / CRITICAL): the replication role runs code as any slave table owner
// (a superuser included) through its own pg_temp
// ---------------------------------------------------------------------------------------------

/// A1. `run_as_owner` runs the owner's triggers, CHECKs, defaults… as the owner, but inside the
/// replication role's session, so relations of the *replication role's* `pg_temp` are visible
/// to that code: the pinned `search_path = pg_catalog, pg_temp` finds them for unqualified
/// names, and a function with the common `SET search_path = public` (pg_temp not last) even
/// searches pg_temp FIRST. The replication role plants `pg_temp.audit` with an ENABLE ALWAYS
/// trigger (a temp function of its own, so it needs no privilege at all beyond TEMP); alice's
/// audit trigger on her slave table inserts into `audit`, and the planted trigger then runs as
/// alice (security-restricted operations still allow GRANT): rserv_repl grants itself SELECT on
/// alice's `secret`, which it could not read. Same with a CHECK or a slave-only column DEFAULT
/// calling a function that reads an unqualified table, or a temp VIEW calling a function.
///
/// The README says the owner's code "runs as the owner, who could run it anyway": not in an
/// environment another role prepared. (PostgreSQL's logical replication runs owner code in the
/// apply worker, whose temp schema nobody else controls.)
///
/// Fix: before every `run_as_owner` (and in the COPY hook), refuse when the session's temp
/// schema holds any relation or type that is not one of rserv's verified staging tables
/// (`pg_class`/`pg_type` in `pg_my_temp_schema()`, not owned by rserv's role or not remembered
/// by OID); SECURITY_RESTRICTED_OPERATION already stops new ones being made meanwhile.
#[test]
fn a1_replication_role_runs_owner_code_as_the_owner_through_its_pg_temp() {
    let c = roles::start(&["adv-a1"]).pop().expect("cluster");
    create_roles(&c, &["alice"]);
    exec_as(
        &c,
        "alice",
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);
         CREATE TABLE public.audit (id int, at timestamptz DEFAULT now());
         CREATE TABLE public.secret (s text);
         INSERT INTO public.secret VALUES ('alice''s secret');
         -- an ordinary audit trigger that must also fire for replicated rows
         CREATE FUNCTION public.audit_tg() RETURNS trigger LANGUAGE plpgsql
           SET search_path = public AS $$ BEGIN INSERT INTO audit (id) VALUES (NEW.id); RETURN NULL; END $$;
         CREATE TRIGGER audit AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.audit_tg();
         ALTER TABLE public.t ENABLE ALWAYS TRIGGER audit;",
    );
    // alice consents to receiving t; registered by the slave's superuser (rserv_repl is not a
    // member of alice)
    c.execute(DB, "SELECT rserv_slave_add_table('public.t')");
    let mut repl = connect_as(&c, REPL);
    assert!(
        try_value(&mut repl, "SELECT s FROM public.secret").is_err(),
        "fixture: rserv_repl cannot read alice's secret"
    );

    // The attack, in the replication role's own session, with TEMP privilege only.
    repl.batch_execute(
        "CREATE FUNCTION pg_temp.steal() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN EXECUTE 'GRANT SELECT ON public.secret TO rserv_repl'; RETURN NULL; END $$;
         CREATE TEMP TABLE audit (id int, at timestamptz);
         CREATE TRIGGER steal AFTER INSERT ON pg_temp.audit
           FOR EACH ROW EXECUTE FUNCTION pg_temp.steal();
         ALTER TABLE pg_temp.audit ENABLE ALWAYS TRIGGER steal;
         GRANT INSERT ON pg_temp.audit TO PUBLIC;",
    )
    .expect("planting pg_temp.audit");
    let applied = try_apply_insert(
        &mut repl,
        1,
        "t",
        "{id,v}",
        b"1\tfrom the replication role\n",
    );
    let err = applied.expect_err("A1: the apply ran alice's code next to rserv_repl's pg_temp");
    assert!(err.contains("temporary objects (pg_temp.audit"), "{err}");

    let granted = value(
        &c,
        "SELECT has_table_privilege('rserv_repl', 'public.secret', 'SELECT')",
    );
    let read = try_value(&mut repl, "SELECT s FROM public.secret");
    assert_eq!(
        granted.as_deref(),
        Some("f"),
        "A1: the replication role's pg_temp.audit trigger ran as alice during the apply and \
         granted rserv_repl SELECT on alice's table (rserv_repl now reads: {read:?})"
    );
}

/// A1b. The same with a slave table created (and so owned) by the slave's superuser, as an
/// administrator typically does: the planted trigger runs as the superuser, and
/// `ALTER ROLE rserv_repl SUPERUSER` succeeds (security-restricted operations do not stop it).
/// The replication role becomes a superuser.
#[test]
fn a1b_replication_role_becomes_superuser_through_a_superuser_owned_slave_table() {
    let c = roles::start(&["adv-a1b"]).pop().expect("cluster");
    c.execute(
        DB,
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);
         CREATE TABLE public.audit (id int, at timestamptz DEFAULT now());
         CREATE FUNCTION public.audit_tg() RETURNS trigger LANGUAGE plpgsql
           SET search_path = public AS $$ BEGIN INSERT INTO audit (id) VALUES (NEW.id); RETURN NULL; END $$;
         CREATE TRIGGER audit AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.audit_tg();
         ALTER TABLE public.t ENABLE ALWAYS TRIGGER audit;
         SELECT rserv_slave_add_table('public.t');",
    );
    let mut repl = connect_as(&c, REPL);
    repl.batch_execute(
        "CREATE FUNCTION pg_temp.esc() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN EXECUTE 'ALTER ROLE rserv_repl SUPERUSER'; RETURN NULL; END $$;
         CREATE TEMP TABLE audit (id int, at timestamptz);
         CREATE TRIGGER esc AFTER INSERT ON pg_temp.audit
           FOR EACH ROW EXECUTE FUNCTION pg_temp.esc();
         ALTER TABLE pg_temp.audit ENABLE ALWAYS TRIGGER esc;
         GRANT INSERT ON pg_temp.audit TO PUBLIC;",
    )
    .expect("planting pg_temp.audit");
    let applied = try_apply_insert(&mut repl, 1, "t", "{id,v}", b"1\tx\n");
    roles::assert_not_superuser(&c, &[REPL], "A1b: the apply of one row");
    let err =
        applied.expect_err("A1b: the apply ran the superuser's code next to rserv_repl's pg_temp");
    assert!(err.contains("temporary objects (pg_temp.audit"), "{err}");
    // without temporary objects of its own, the same session applies (and alice's trigger runs)
    repl.batch_execute("DISCARD TEMP").expect("discard temp");
    apply_insert(&mut repl, 1, "t", "{id,v}", b"1\tx\n");
    assert_eq!(
        column(&c, "SELECT id::text FROM public.audit"),
        vec!["1".to_string()]
    );
}

// ---------------------------------------------------------------------------------------------
// A2 (correctness, HIGH): one slave database under two server ids moves back in time
// ---------------------------------------------------------------------------------------------

/// A2. A server id is bound to one slave database, but one slave database may use several
/// server ids: nothing refuses it (`rserv_register_slave` only checks the id's own binding,
/// the slave only checks the master's node and that sync ids grow). Sync ids come from one
/// sequence, drawn in `rserv_prepare` after its snapshot: two prepares for different ids do not
/// serialize, so a later sync id can carry an OLDER snapshot. The slave applies it on top of a
/// newer state: the rows it carries go back in time while the others stay (a state the master
/// never had), and the other id's later windows never resend them. Permanent silent divergence.
///
/// The misconfiguration is an easy one: the daemon serves the slave as `--server 1` and an
/// operator runs `replicate booktown booktown` by hand once (server 0). Here the prepare for
/// server 0 is held between its snapshot and its sync id by a row lock on its
/// `_rserv_servers_` row (what a slow `collect_pending` does under load).
///
/// Fix: bind a slave database to one server id: record the id with the master's node in
/// `_rserv_slave_sync_` (the change set header already carries `server`) and make
/// `rserv_apply_begin` refuse a change set for another id; and/or a UNIQUE `node` in
/// `_rserv_servers_` so the master refuses a second id for a node.
#[test]
fn a2_one_slave_database_under_two_server_ids_goes_back_in_time() {
    let p = Pair::start("adv-a2");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.master
        .execute(DB, "INSERT INTO t VALUES (1, 'a0'), (2, 'b0')");
    let mut manual = p.session(); // server 0: an operator's one-off run
    let mut daemon = p.session(); // server 1: the daemon
    oracle::assert_cycle(&mut manual, &options(0), "server 0: initial copy");
    // the master refuses a second id for the same slave database ...
    let err = oracle::cycle(&mut daemon, &options(1))
        .expect_err("A2: one slave database replicated under server ids 0 and 1");
    assert!(
        err.to_string().contains("is slave 0 of this master"),
        "{err}"
    );
    // ... and so does the slave, for a change set prepared without naming it (the seed's
    // pipeline: replicate prepare | replicate apply)
    p.master.execute(
        DB,
        "SELECT rserv_register_slave(1, NULL); UPDATE t SET v = 'a1' WHERE id = 1",
    );
    let mut file = Vec::new();
    replicate::master::prepare(
        &mut daemon.master,
        &daemon.master_rs,
        &replicate::master::Target::server(1),
        &mut file,
        None,
    )
    .expect("a change set for server 1, prepared without the slave");
    let err = replicate::slave::apply(&mut daemon.slave, &daemon.slave_rs, file.as_slice())
        .expect_err("A2: the slave applied a change set for server 1 after server 0's");
    assert!(
        err.to_string().contains("is slave 0 of its master"),
        "{err}"
    );
    oracle::assert_cycle(&mut manual, &options(0), "server 0 goes on");
    assert_eq!(rows(&p.slave, "t"), rows(&p.master, "t"));
}

// ---------------------------------------------------------------------------------------------
// A3 (security, MEDIUM): any master table owner can fill (and first empty) another owner's
// slave table
// ---------------------------------------------------------------------------------------------

/// A3. The only link between a slave table and a master table is its name at prepare time,
/// and any master table owner may register a table (`rserv_add_table` needs no replication
/// right). A slave table the master does not (or no longer: renamed, re-created, moved to
/// another schema) hold is "skipped with a WARNING" as the README says; mallory, a plain master
/// user with CREATE on the schema, creates and registers a table of that name and grants the
/// replication role SELECT: the next cycle empties bob's slave table and fills it with her rows.
/// The README's slave-side rule ("a table owner alone cannot have a master's rows copied into
/// a table of theirs") has no master-side counterpart: here a master table owner has her rows
/// copied into a table of someone else's.
///
/// Fix: make master registration a replication decision too (`rserv_add_table` requires a
/// replicator acting as the owner, mirroring `rserv_slave_add_table`), and/or bind each slave
/// registration to the master table it first received (master node + reloid in the change
/// set, recorded in `_rserv_slave_tables_`, a different one refused until re-registered).
#[test]
fn a3_master_table_owner_fills_another_owners_slave_table_by_name() {
    let p = roles::start_pair("adv-a3");
    create_roles(&p.master, &["mallory"]);
    create_roles(&p.slave, &["bob"]);
    exec_as(
        &p.slave,
        "bob",
        "CREATE TABLE public.accounts (id int PRIMARY KEY, holder text);
         INSERT INTO public.accounts VALUES (1, 'bob'), (2, 'bob''s customer');",
    );
    // registered by the slave's superuser, ahead of the master (the master lacks it for now)
    p.slave
        .execute(DB, "SELECT rserv_slave_add_table('public.accounts')");
    let before = rows(&p.slave, "public.accounts");
    // a table that does replicate, so the cycle has work
    exec_as(
        &p.master,
        OWNER,
        &format!(
            "CREATE TABLE public.other (id int PRIMARY KEY);
             SELECT rserv_add_table('public.other'); GRANT SELECT ON public.other TO {REPL};"
        ),
    );
    exec_as(
        &p.slave,
        OWNER,
        "CREATE TABLE public.other (id int PRIMARY KEY)",
    );
    p.slave
        .execute(DB, "SELECT rserv_slave_add_table('public.other')");
    let out = replicate_as(&p, REPL, &[DB, DB]);
    eprintln!("cycle before mallory: {}", output_text(&out));
    assert_eq!(rows(&p.slave, "public.accounts"), before, "fixture");

    // mallory: a plain role on the master, nothing on the slave
    exec_as(
        &p.master,
        "mallory",
        &format!(
            "CREATE TABLE public.accounts (id int PRIMARY KEY, holder text);
             INSERT INTO public.accounts VALUES (666, 'mallory');
             GRANT SELECT ON public.accounts TO {REPL};"
        ),
    );
    let mut mallory = connect_as(&p.master, "mallory");
    let err = roles::try_sql(&mut mallory, "SELECT rserv_add_table('public.accounts')")
        .expect_err("A3: a role that may not replicate registered a master table");
    assert!(err.contains("may not replicate"), "{err}");
    let out = replicate_as(&p, REPL, &[DB, DB]);
    eprintln!("cycle after mallory: {}", output_text(&out));
    assert_eq!(
        rows(&p.slave, "public.accounts"),
        before,
        "A3: mallory, a plain master user, replaced the rows of bob's slave table"
    );
}

// ---------------------------------------------------------------------------------------------
// A4 (correctness, MEDIUM): a table renamed during the prepare is read under its old name
// ---------------------------------------------------------------------------------------------

/// A4. `rserv_prepare` reads a changed table's name at its snapshot S (`table_info`), locks the
/// table, checks only that its storage was not replaced, and returns `SELECT … FROM ONLY
/// schema.name` built from that old name. A rename committed after S but before the lock (the
/// usual swap: `ALTER TABLE t RENAME TO t_old; ALTER TABLE t_new RENAME TO t`) makes the
/// caller's COPY parse the old name as the OTHER table and read its rows at S: the slave's
/// changed rows are deleted and replaced by another table's (or just deleted). The oracle's
/// own dump is fooled the same way, so this compares with the registered table (now t_old).
///
/// Fix: in `guard_table`, after the lock, compare the table's schema and name (and its columns'
/// names and types) at S with the current catalog (syscache, `get_rel_name`,
/// `get_namespace_name`, attributes) and raise a serialization failure when they differ, as for
/// a rewrite; or build the queries from the post-lock catalog and re-check the columns.
/// (Fixed so, and since renames follow the stream the slave renames its table with the master.)
#[test]
fn a4_table_renamed_during_the_prepare_sends_another_tables_rows() {
    let p = Pair::start("adv-a4");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.master.execute(
        DB,
        "INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three');
         CREATE TABLE t_new (id int PRIMARY KEY, v text);
         INSERT INTO t_new VALUES (1, 'NEW one'), (2, 'NEW two');",
    );
    let mut s = p.session();
    oracle::assert_cycle(&mut s, &options(0), "initial copy");
    p.master
        .execute(DB, "UPDATE t SET v = 'two, changed' WHERE id = 2");

    // the swap, committed while the prepare waits for its lock: the prepare starts again at a
    // snapshot that sees the renames, the slave renames its table with the master's, and the
    // table that took the name is not replicated
    let mut x = p.master.connect(DB);
    x.batch_execute("BEGIN; ALTER TABLE t RENAME TO t_old; ALTER TABLE t_new RENAME TO t")
        .expect("swap");
    let outcome: Result<Outcome, Error> = std::thread::scope(|sc| {
        let h = sc.spawn(|| s.cycle());
        wait_for_lock_waiter(&p.master, "public.t");
        x.batch_execute("COMMIT").expect("swap commits");
        h.join().expect("cycle thread")
    });
    eprintln!("cycle during the swap: {outcome:?}");
    outcome.expect("the cycle during the swap");
    s.cycle().expect("a cycle after the swap");
    assert_eq!(
        rows(&p.slave, "t_old"),
        rows(&p.master, "t_old"),
        "A4: the slave's copy of the registered table (now t_old) is not the master's"
    );
    assert_eq!(
        value(&p.slave, "SELECT to_regclass('public.t')::text"),
        None,
        "A4: another table's rows reached the slave under the registered table's old name"
    );
}

// ---------------------------------------------------------------------------------------------
// A5 (correctness, MEDIUM): a narrower type modifier on the slave rounds values silently
// ---------------------------------------------------------------------------------------------

/// A5. README (Limits): the apply refuses a column the slave "cannot load without loss …
/// a narrower modifier … would round or cut values". `check_type` accepts any pair of types
/// with an implicit cast in `pg_cast`, and every length-coercion cast of a type to itself
/// (numeric→numeric, timestamp→timestamp, varchar→varchar, bit, interval, time…) is implicit:
/// numeric(10,3) into numeric(10,2) and timestamp(6) into timestamp(0) pass the check and COPY
/// rounds every value. (Cutting varchar/char/bit errors out at least.)
///
/// Fix: in `check_type`, when the base types are equal, accept only the same typmod or an
/// unconstrained (-1) slave column (or compare the modifiers per type); consult `pg_cast` only
/// for different types (`castsource <> casttarget`).
#[test]
fn a5_narrower_type_modifier_on_the_slave_rounds_silently() {
    let p = Pair::start("adv-a5");
    p.master.execute(
        DB,
        "CREATE TABLE n (id int PRIMARY KEY, x numeric(10,3), ts timestamp(6));
         INSERT INTO n VALUES (1, 1.234, '2024-01-01 10:00:00.654321');
         SELECT rserv_add_table('n');",
    );
    p.slave.execute(
        DB,
        "CREATE TABLE n (id int PRIMARY KEY, x numeric(10,2), ts timestamp(0));
         SELECT rserv_slave_add_table('n');",
    );
    let out = p.replicate(&[DB, DB]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        assert_eq!(
            rows(&p.slave, "n"),
            rows(&p.master, "n"),
            "A5: the apply accepted numeric(10,3) -> numeric(10,2) and timestamp(6) -> \
             timestamp(0) and rounded the values\n{stderr}"
        );
    } else {
        assert!(
            stderr.contains("\"x\"") || stderr.contains("\"ts\""),
            "refused, but without naming the column: {stderr}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A6 (security, MEDIUM-LOW): --create-tables trusts whoever owns a slave type of that name
// ---------------------------------------------------------------------------------------------

/// A6. `--create-tables` looks the master's column types up by name among the slave's, and
/// the new table belongs to the replication role: every domain CHECK of those types then runs
/// as the replication role, on every row of every apply. The definition check only looks at
/// functions the table's own expressions call (and only at their volatility label, which the
/// function's owner chooses), never at a domain's constraints. Mallory, a plain slave user who
/// may create in `public`, makes `public.email` (the master's type) before the operator runs
/// `--create-tables`: her VOLATILE function runs as rserv_repl, i.e. with the right to write
/// every registered slave table. The same with an IMMUTABLE-labelled function of hers named in
/// a master CHECK or DEFAULT, or with a hostile master naming any such slave object.
///
/// Fix: accept only types, collations, functions and operators owned by the bootstrap
/// superuser (or by the replication role itself), check domains' constraint expressions like
/// the table's own, and otherwise tell the operator to create the table by hand.
#[test]
fn a6_create_tables_runs_a_slave_users_domain_check_as_the_replication_role() {
    let p = roles::start_pair("adv-a6");
    exec_as(
        &p.master,
        OWNER,
        &format!(
            "CREATE DOMAIN public.email AS text;
             CREATE TABLE public.contacts (id int PRIMARY KEY, e public.email);
             INSERT INTO public.contacts VALUES (1, 'a@example.org');
             SELECT rserv_add_table('public.contacts');
             GRANT SELECT ON public.contacts TO {REPL};"
        ),
    );
    create_roles(&p.slave, &["mallory"]);
    exec_as(
        &p.slave,
        "mallory",
        "CREATE TABLE public.mlog (who text);
         GRANT INSERT ON public.mlog TO PUBLIC;
         CREATE FUNCTION public.mal(text) RETURNS boolean VOLATILE LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.mlog VALUES (current_user); RETURN true; END $$;
         CREATE DOMAIN public.email AS text CHECK (public.mal(VALUE));",
    );
    exec_as(
        &p.slave,
        OWNER,
        &format!("GRANT CREATE ON SCHEMA public TO {REPL}"),
    );
    let out = replicate_as(&p, REPL, &["--create-tables", DB, DB]);
    eprintln!("{}", output_text(&out));
    let ran_as = column(&p.slave, "SELECT DISTINCT who FROM public.mlog");
    assert!(
        !ran_as.iter().any(|w| w == REPL),
        "A6: mallory's domain CHECK ran as {ran_as:?} during --create-tables' initial copy"
    );
}

// ---------------------------------------------------------------------------------------------
// A7 (correctness, LOW): array_nulls is not pinned
// ---------------------------------------------------------------------------------------------

/// A7. Rows travel as COPY text read back under the slave's settings. `CANONICAL_SETTINGS`
/// pins DateStyle, IntervalStyle, TimeZone, extra_float_digits, bytea_output and lc_monetary,
/// but not `array_nulls`: with `array_nulls = off` on the slave (a database or role setting,
/// e.g. for a legacy application) a NULL array element arrives as the string 'NULL'. On the
/// master the same setting makes a logged text[] key with a NULL element match nothing: the
/// DELETE section removes the row and the INSERT section never brings it back.
///
/// Fix: add `("array_nulls", "on")` to `CANONICAL_SETTINGS` (and consider `xmloption`).
#[test]
fn a7_array_nulls_off_on_the_slave_turns_null_elements_into_strings() {
    let p = Pair::start("adv-a7");
    p.table(
        "CREATE TABLE arr (id int PRIMARY KEY, a text[])",
        "arr",
        None,
    );
    p.slave
        .execute("postgres", "ALTER DATABASE app SET array_nulls = off");
    p.master
        .execute(DB, "INSERT INTO arr VALUES (1, ARRAY['x', NULL])");
    p.sync();
    let nulls = |c: &Cluster| column(c, "SELECT a[2] IS NULL FROM arr WHERE id = 1");
    assert_eq!(
        nulls(&p.slave),
        nulls(&p.master),
        "A7: a NULL array element arrived as the string 'NULL' (slave: {:?}, master: {:?})",
        rows(&p.slave, "arr"),
        rows(&p.master, "arr")
    );
}

// ---------------------------------------------------------------------------------------------
// A8 (security, LOW): owner code gets replica mode, which its owner could never set
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// A9 (correctness, HIGH): a slave that goes back in time (restore, failover) is never caught up
// ---------------------------------------------------------------------------------------------

/// A9. The master starts every window at the snapshot it last confirmed for the server,
/// whatever the slave says it has: `sync_back` asks the slave for its sync id and only ever
/// confirms forward (`rserv_confirm` of an older id returns false), and `rserv_apply_begin`
/// accepts any newer id. A slave that loses applied change sets (restored from a backup,
/// failed over to a lagging standby, a crash with an unsafe fsync) silently skips them for good:
/// the next change set starts after them. The daemon's promise "resumes exactly from the
/// slave's confirmed sync id" is not what happens.
///
/// Here the slave is restored from a file-level copy taken between change sets 1 and 2.
///
/// Fix: make the slave's sync id part of the protocol: `rserv_prepare` takes the slave's sync
/// id and refuses (or sends whole copies) when it is older than the master's last confirmed
/// change set for that server; or `rserv_apply_begin` takes the previous sync id the change
/// set was built on and refuses a gap.
#[test]
fn a9_slave_restored_from_backup_silently_misses_change_sets() {
    let p = Pair::start("adv-a9");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.master.execute(
        DB,
        "INSERT INTO t VALUES (1, 'one'), (2, 'two'), (3, 'three')",
    );
    p.sync();
    let data = p.slave.data_dir().to_path_buf();
    let backup = data.with_file_name("data.backup");
    p.slave.while_stopped(|d| {
        rserv_tests::run_ok(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(d)
                .arg(&backup),
        )
    });
    p.master.execute(
        DB,
        "UPDATE t SET v = 'two, changed' WHERE id = 2; INSERT INTO t VALUES (4, 'four')",
    );
    p.sync();
    p.assert_equal("t");
    // the slave is restored from the backup (taken before change set 2)
    p.slave.while_stopped(|d| {
        rserv_tests::run_ok(std::process::Command::new("rm").arg("-rf").arg(d));
        rserv_tests::run_ok(std::process::Command::new("mv").arg(&backup).arg(d));
    });
    p.master.execute(DB, "INSERT INTO t VALUES (5, 'five')");
    let out = p.replicate(&[DB, DB]);
    eprintln!("{}", output_text(&out));
    if out.status.success() {
        assert_eq!(
            rows(&p.slave, "t"),
            rows(&p.master, "t"),
            "A9: the restored slave applied change set 3 on top of change set 1: change set \
             2 (row 2's update, row 4) is lost for good"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A10 (correctness, MEDIUM): the seed's pipeline binds nothing: two slaves on one server id
// ---------------------------------------------------------------------------------------------

/// One round of the seed's pipeline for slave database `slave_db`: `replicate prepare MASTER -o
/// FILE`, `replicate apply SLAVE -i FILE`, `replicate master-sync MASTER $(replicate sync-id
/// SLAVE)`. Returns whether the apply succeeded.
fn pipeline(p: &Pair, slave_db: &str, file: &std::path::Path) -> bool {
    let f = file.to_string_lossy().into_owned();
    let out = p.replicate(&["prepare", DB, "-o", &f]);
    assert!(out.status.success(), "prepare: {}", output_text(&out));
    let out = p.replicate(&["apply", slave_db, "-i", &f]);
    eprintln!("apply {slave_db}: {}", output_text(&out));
    if !out.status.success() {
        return false;
    }
    let out = p.replicate(&["sync-id", slave_db]);
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let out = p.replicate(&["master-sync", DB, &id]);
    eprintln!("master-sync {id}: {}", output_text(&out));
    true
}

/// A10. README: "An id is bound to one slave database on first use; a second database using it
/// is refused (the original's two slaves on server 0 silently lost changes)", and "The seed's
/// pipeline still works: `replicate prepare master | replicate apply slave && replicate
/// master-sync master $(replicate sync-id slave)`". The pipeline registers the server without
/// a node (`Target::server`), so nothing is ever bound; two slave databases fed by it on server
/// 0 lose exactly what the original lost: the second slave's first change set is an
/// incremental one (no initial copy: the master does not know it is new, and the slave applies
/// DELETE/INSERT sections into a table it flags `needs_copy`), and each slave misses the
/// window the other confirmed. The same hole makes "a slave table registered anew receives a
/// fresh copy with the next change set" false in pipeline mode.
///
/// Fix: bind on the slave side, where the change set arrives: record the (master, server) a
/// slave follows in `_rserv_slave_sync_` and refuse another; refuse in `rserv_apply_stage` a
/// DELETE/INSERT section for a table whose `needs_copy` is set (it needs its copy first); and
/// let `master-sync`/`prepare` pass the slave's node (`rserv_confirm` checks the binding).
#[test]
fn a10_seed_pipeline_lets_two_slave_databases_share_server_0() {
    let p = Pair::start("adv-a10");
    p.table("CREATE TABLE t (id int PRIMARY KEY, v text)", "t", None);
    p.slave.create_db("app2");
    p.slave.execute(
        "app2",
        "CREATE EXTENSION rserv; CREATE TABLE t (id int PRIMARY KEY, v text);
         SELECT rserv_slave_add_table('t');",
    );
    p.master
        .execute(DB, "INSERT INTO t VALUES (1, 'a'), (2, 'b')");
    let file = std::env::temp_dir().join(format!("adv-a10-{}.snapshot", std::process::id()));
    assert!(pipeline(&p, DB, &file), "first slave, first change set");
    p.master.execute(DB, "UPDATE t SET v = 'a!' WHERE id = 1");
    let second = pipeline(&p, "app2", &file);
    p.master.execute(DB, "UPDATE t SET v = 'b!' WHERE id = 2");
    assert!(pipeline(&p, DB, &file), "first slave again");
    let _ = std::fs::remove_file(&file);
    if second {
        let master = rows(&p.master, "t");
        let first_slave = rows(&p.slave, "t");
        let second_slave = column_of(&p.slave, "app2", "SELECT t::text FROM t ORDER BY 1");
        assert!(
            first_slave == master && second_slave == master,
            "A10: server 0 fed two slave databases through the pipeline and both lost \
             changes\nmaster: {master:?}\nslave app: {first_slave:?}\nslave app2: {second_slave:?}"
        );
    }
}

fn column_of(c: &Cluster, db: &str, sql: &str) -> Vec<String> {
    c.query_strings(db, sql)
        .into_iter()
        .map(|r| r.into_iter().next().flatten().unwrap_or_default())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A11 (security, HIGH): owner code run by the apply acts with the replication role's rserv rights
// ---------------------------------------------------------------------------------------------

/// A11. rserv decides who may call it from `GetOuterUserId()` (`outer_user()`), the session's
/// role, not from the role actually calling. Inside the apply, the owner's code runs as the
/// owner but in the replication role's session, inside its apply transaction: every rserv
/// entry point sees rserv_repl and lets the owner's code replicate. Alice's trigger on her slave
/// table calls `rserv_apply_stage('TRUNCATE', …)` on bob's slave table: as bob, in replica
/// mode, bob's table is emptied (and marked as holding a fresh copy). The same code could
/// register tables the replication role may act as the owner of, or remove them. A SECURITY
/// DEFINER function of an ordinary role called by a replicator gets the same confused-deputy
/// rights.
///
/// Fix: refuse every rserv entry point while `InSecurityRestrictedOperation()` (the owner's
/// code always runs under it, and SECURITY DEFINER keeps the flag), or count `run_as_owner`
/// depth in a thread-local and refuse inside it; and decide privileges from the role that
/// called rserv (the user id before the definer switch), not from the session's outer role.
#[test]
fn a11_owner_code_in_the_apply_uses_the_replication_roles_rights() {
    let c = roles::start(&["adv-a11"]).pop().expect("cluster");
    create_roles(&c, &["alice", "bob"]);
    exec_as(
        &c,
        "bob",
        "CREATE TABLE public.ledger (id int PRIMARY KEY, v text);
         SET rserv.allow_slave_writes = on;
         INSERT INTO public.ledger VALUES (1, 'bob''s'), (2, 'rows');",
    );
    exec_as(
        &c,
        "alice",
        "CREATE TABLE public.t (id int PRIMARY KEY, v text);
         CREATE FUNCTION public.t_tg() RETURNS trigger LANGUAGE plpgsql
           SET search_path = pg_catalog AS $$
           BEGIN
             PERFORM public.rserv_apply_stage('TRUNCATE', 'public', 'ledger', '{}', '{id}');
             RETURN NULL;
           END $$;
         CREATE TRIGGER side AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.t_tg();
         ALTER TABLE public.t ENABLE ALWAYS TRIGGER side;",
    );
    c.execute(
        DB,
        "SELECT rserv_slave_add_table('public.ledger'); SELECT rserv_slave_add_table('public.t');",
    );
    let mut alice = connect_as(&c, "alice");
    assert!(
        roles::try_sql(
            &mut alice,
            "SELECT public.rserv_apply_stage('TRUNCATE', 'public', 'ledger', '{}', '{id}')"
        )
        .is_err(),
        "fixture: alice may not call the apply herself"
    );
    let before = rows(&c, "public.ledger");
    let mut repl = connect_as(&c, REPL);
    let applied = try_apply_insert(&mut repl, 1, "t", "{id,v}", b"1\tfor alice\n");
    let err = applied.expect_err("A11: alice's trigger called rserv inside the apply");
    assert!(
        err.contains("cannot be called from a table owner's code"),
        "{err}"
    );
    assert_eq!(
        rows(&c, "public.ledger"),
        before,
        "A11: alice's trigger, run by the apply, emptied bob's slave table through \
         rserv_apply_stage with the replication role's rights"
    );
}
