//! Security (issue 12): every finding F1..F9 of the audit and its smaller items, attacked the
//! way an attacker would, on real clusters, with the contract's roles (`app_owner` owns the
//! database and the extension, `rserv_repl` replicates, table owners and attackers are plain
//! LOGIN roles). The invariant everywhere: no role that was not a superuser becomes one, no
//! code of a table owner runs as another role, no secret is copied, no injected object exists.
//!
//! The `keep_*` tests are attacks that already fail on v1.0.0 and must keep failing. The
//! `extra_*` tests are holes found while writing these (not in the audit's list), asserting the
//! same invariants. `v1_0_ddl_exploit` shows F6 on v1.0.0 and is to be deleted once 1.1 lands.
//!
//! Run against a given PostgreSQL with `RSERV_PG_BINDIR=…/bin cargo test -p rserv-tests
//! --test security`.

use rserv_tests::pair::{Pair, DB};
use rserv_tests::rng::Rng;
use rserv_tests::roles::{
    self, assert_not_superuser, census, connect_as, create_roles, exec_as, is_superuser,
    new_objects, output_text, replicate_as, role_exists, sql_ident, sql_literal, temp_relations,
    try_sql, try_value, value, OWNER, REPL,
};
use rserv_tests::{replicate_command, run_replicate, Cluster};
use std::collections::BTreeSet;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The master node id forged change sets claim to come from.
const FORGED_MASTER: &str = "00000000-0000-4000-8000-00000000f00d";

/// `ALTER ROLE … NOSUPERUSER`, to measure the next attack from a clean state.
fn demote(c: &Cluster, role: &str) {
    c.execute("postgres", &format!("ALTER ROLE {role} NOSUPERUSER"));
}

/// Rows of `sql` (first column, as text) on `app`, as superuser.
fn column(c: &Cluster, sql: &str) -> Vec<String> {
    c.query_strings(DB, sql)
        .into_iter()
        .map(|r| r.into_iter().next().flatten().unwrap_or_default())
        .collect()
}

fn count(c: &Cluster, sql: &str) -> i64 {
    value(c, sql)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cluster {}: {sql} did not return a count", c.name()))
}

/// `replicate` ended with exit 0 or 1 (a database refused something), never a crash, a
/// connection failure or a damaged-input code.
fn assert_clean_exit(out: &Output, what: &str) {
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{what}: replicate ended neither with success nor with a clean refusal\n{}",
        output_text(out)
    );
}

fn assert_success(out: &Output, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: replicate failed\n{}",
        output_text(out)
    );
}

/// The rows of `table` restricted to `cols`, on one side.
fn rows_of(c: &Cluster, table: &str, cols: &str) -> Vec<String> {
    column(
        c,
        &format!("SELECT ROW({cols})::text FROM {table} ORDER BY 1"),
    )
}

// ---------------------------------------------------------------------------------------------
// F1
// ---------------------------------------------------------------------------------------------

/// F1: the database owner (who owns the extension, so may call the apply functions) must not
/// become a superuser through a trigger of its own slave table fired by the apply.
#[test]
fn f1_database_owner_cannot_escalate_through_apply() {
    let cs = roles::start(&["sec-f1"]);
    let c = &cs[0];
    let mut owner = connect_as(c, OWNER);
    owner
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY);
             INSERT INTO t VALUES (1), (2);
             SELECT rserv_slave_add_table('t');
             CREATE FUNCTION escalate() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN EXECUTE 'ALTER ROLE app_owner SUPERUSER'; RETURN NULL; END $$;
             CREATE TRIGGER escalate AFTER DELETE ON t FOR EACH ROW EXECUTE FUNCTION escalate();
             ALTER TABLE t ENABLE ALWAYS TRIGGER escalate;",
        )
        .expect("app_owner prepares its table");
    assert!(
        !is_superuser(c, OWNER),
        "fixture: app_owner starts as a plain role"
    );

    let attack = try_sql(
        &mut owner,
        &format!(
            "BEGIN;
             SELECT rserv_apply_begin(1, '{FORGED_MASTER}', rserv_version());
             SELECT rserv_apply_stage('TRUNCATE', 'public', 't', '{{}}'::text[], ARRAY['id']);"
        ),
    );
    let commit = try_sql(&mut owner, "COMMIT");
    eprintln!("F1 attack: {attack:?}, commit: {commit:?}");
    assert_not_superuser(
        c,
        &[OWNER],
        "F1 (apply_stage TRUNCATE fired the owner's trigger)",
    );
    // The fix runs the DML as the table owner: the ALTER ROLE in the trigger is refused.
    match attack {
        Err(e) => assert!(
            e.contains("42501")
                && (e.contains("permission denied") || e.contains("must be superuser")),
            "F1: the apply failed, but not because the owner's ALTER ROLE was refused: {e}"
        ),
        Ok(()) => panic!(
            "F1: the TRUNCATE section ran without the owner's trigger being refused \
             (contract: the DML runs as the table owner, so ALTER ROLE fails with permission denied)"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// F2
// ---------------------------------------------------------------------------------------------

/// One way for the owner of a slave table to have its code run by the apply.
struct Vector {
    name: &'static str,
    /// extra column definitions of the slave table (after `id int PRIMARY KEY, v text`)
    columns: &'static str,
    /// statements after CREATE TABLE (the table is `f2_<name>`, the function `<owner>_esc()`)
    setup: &'static str,
}

const F2_VECTORS: &[Vector] = &[
    Vector {
        name: "default",
        columns: ", stamp boolean DEFAULT public.own_default_esc()",
        setup: "",
    },
    Vector {
        name: "trigger",
        columns: "",
        setup: "CREATE FUNCTION public.own_trigger_tg() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN PERFORM public.own_trigger_esc(); RETURN NULL; END $$;
                 CREATE TRIGGER audit AFTER INSERT OR DELETE ON f2_trigger
                   FOR EACH ROW EXECUTE FUNCTION public.own_trigger_tg();
                 ALTER TABLE f2_trigger ENABLE ALWAYS TRIGGER audit;",
    },
    Vector {
        // COPY ignores rules and rserv's staged INSERT/DELETE run inside WITH, where DO ALSO
        // rules are refused: a rule fires on the initial copy's DELETE of the old rows, and
        // the owner lets rserv_repl COPY rows straight in so the copy succeeds.
        name: "rule",
        columns: "",
        setup: "CREATE RULE audit AS ON DELETE TO f2_rule DO ALSO SELECT public.own_rule_esc();
                ALTER TABLE f2_rule ENABLE ALWAYS RULE audit;
                GRANT INSERT ON f2_rule TO rserv_repl;",
    },
    Vector {
        name: "check",
        columns: ", CHECK (public.own_check_esc())",
        setup: "",
    },
    Vector {
        name: "index",
        columns: "",
        setup: "CREATE FUNCTION public.own_index_key(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS
                  $$ BEGIN PERFORM public.own_index_esc(); RETURN $1; END $$;
                CREATE INDEX f2_index_expr ON f2_index ((public.own_index_key(id)));",
    },
    Vector {
        // The owner lets rserv_repl insert: rows are COPYed straight in, and the owner's
        // trigger runs as the replication role.
        name: "copy",
        columns: "",
        setup: "CREATE FUNCTION public.own_copy_tg() RETURNS trigger LANGUAGE plpgsql AS
                  $$ BEGIN PERFORM public.own_copy_esc(); RETURN NULL; END $$;
                CREATE TRIGGER audit AFTER INSERT ON f2_copy
                  FOR EACH ROW EXECUTE FUNCTION public.own_copy_tg();
                ALTER TABLE f2_copy ENABLE ALWAYS TRIGGER audit;
                GRANT INSERT ON f2_copy TO rserv_repl;",
    },
];

/// F2: owners of replicated slave tables plant code (column DEFAULT, ENABLE ALWAYS trigger,
/// rule, CHECK, index expression, trigger on a table the replication role may COPY into)
/// that tries `ALTER ROLE <owner> SUPERUSER` and records `current_user`, then wait for the
/// next `replicate` run as rserv_repl. No owner becomes superuser, and their code only ever
/// runs as themselves.
#[test]
fn f2_slave_table_owner_code_never_runs_as_another_role() {
    let p = roles::start_pair("sec-f2");
    let owners: Vec<String> = F2_VECTORS
        .iter()
        .map(|v| format!("own_{}", v.name))
        .collect();
    let owner_refs: Vec<&str> = owners.iter().map(String::as_str).collect();
    create_roles(&p.slave, &owner_refs);

    for v in F2_VECTORS {
        let t = format!("f2_{}", v.name);
        exec_as(
            &p.master,
            OWNER,
            &format!(
                "CREATE TABLE {t} (id int PRIMARY KEY, v text);
                 INSERT INTO {t} SELECT g, 'm' || g FROM generate_series(1, 5) g;
                 SELECT rserv_add_table('{t}');
                 GRANT SELECT ON {t} TO {REPL};"
            ),
        );
        let o = format!("own_{}", v.name);
        exec_as(
            &p.slave,
            &o,
            &format!(
                "CREATE TABLE public.{o}_audit (who text);
                 GRANT INSERT ON public.{o}_audit TO PUBLIC;
                 CREATE FUNCTION public.{o}_esc() RETURNS boolean LANGUAGE plpgsql AS $$
                 BEGIN
                   INSERT INTO public.{o}_audit VALUES (current_user);
                   BEGIN
                     EXECUTE 'ALTER ROLE {o} SUPERUSER';
                   EXCEPTION WHEN insufficient_privilege THEN NULL;
                   END;
                   RETURN true;
                 END $$;
                 CREATE TABLE {t} (id int PRIMARY KEY, v text{cols});
                 {setup}
                 INSERT INTO {t} (id, v) VALUES (100, 'slave-only'), (3, 'old');",
                cols = v.columns,
                setup = v.setup
            ),
        );
        // Which tables a slave receives is a replication decision: a role that may replicate
        // and act as the owner registers it (the slave's superuser here).
        p.slave.execute(
            DB,
            &format!("SELECT rserv_slave_add_table('{t}'); TRUNCATE public.{o}_audit;"),
        );
        assert!(!is_superuser(&p.slave, &o), "fixture: {o} is a plain role");
    }

    // Cycle 1: initial copies (the old rows are deleted, every master row inserted).
    let out = replicate_as(&p, REPL, &[DB, DB]);
    eprintln!("F2 cycle 1: {}", output_text(&out));
    let mut problems = Vec::new();
    // Per vector: how often its code ran during replication (any role).
    let mut ran: std::collections::BTreeMap<&str, i64> = Default::default();
    let mut check = |phase: &str, problems: &mut Vec<String>| {
        for v in F2_VECTORS {
            let o = format!("own_{}", v.name);
            if is_superuser(&p.slave, &o) {
                problems.push(format!("{phase}: {o} ({}) became superuser", v.name));
                demote(&p.slave, &o);
            }
            let who: Vec<String> = column(&p.slave, &format!("SELECT who FROM public.{o}_audit"));
            *ran.entry(v.name).or_default() += who.len() as i64;
            let others: BTreeSet<&String> = who.iter().filter(|w| **w != o).collect();
            if !others.is_empty() {
                problems.push(format!(
                    "{phase}: code of {o} ({}) ran as {others:?}",
                    v.name
                ));
            }
            p.slave.execute(DB, &format!("TRUNCATE public.{o}_audit"));
        }
    };
    check("cycle 1", &mut problems);
    assert_success(&out, "F2 cycle 1 (initial copies)");

    // The rule vector refuses later (WITH) DML by design; its owner stops receiving it.
    exec_as(
        &p.slave,
        "own_rule",
        "SELECT rserv_slave_remove_table('f2_rule')",
    );
    // Cycle 2: changed and deleted rows (the DELETE-by-key path and the staged INSERT).
    for v in F2_VECTORS.iter().filter(|v| v.name != "rule") {
        let t = format!("f2_{}", v.name);
        exec_as(
            &p.master,
            OWNER,
            &format!(
                "UPDATE {t} SET v = v || '!' WHERE id <= 2; DELETE FROM {t} WHERE id = 5;
                 INSERT INTO {t} VALUES (6, 'm6');"
            ),
        );
    }
    let out2 = replicate_as(&p, REPL, &[DB, DB]);
    eprintln!("F2 cycle 2: {}", output_text(&out2));
    check("cycle 2", &mut problems);
    assert!(
        problems.is_empty(),
        "F2: table owners' code ran as another role:\n  {}",
        problems.join("\n  ")
    );
    assert_success(&out2, "F2 cycle 2");
    for v in F2_VECTORS.iter().filter(|v| v.name != "rule") {
        let t = format!("f2_{}", v.name);
        assert_eq!(
            rows_of(&p.master, &t, "id, v"),
            rows_of(&p.slave, &t, "id, v"),
            "F2: {t} differs between master and slave"
        );
    }
    for v in F2_VECTORS {
        assert!(
            ran.get(v.name).copied().unwrap_or(0) > 0,
            "F2: the {} vector never ran during replication: the test did not exercise it",
            v.name
        );
    }
}

// ---------------------------------------------------------------------------------------------
// F3
// ---------------------------------------------------------------------------------------------

/// A relation of the session's temp schema that rserv made: its name and column definitions.
struct Staging {
    name: String,
    columns: Vec<(String, String)>,
}

/// `COPY pg_temp.x (...) FROM STDIN` → `x`; quoted names unquoted.
fn copy_target(copy: &str) -> Option<String> {
    let rest = copy.strip_prefix("COPY ")?;
    let target = rest.split(" (").next()?.trim();
    let name = target.strip_prefix("pg_temp.")?;
    Some(if let Some(q) = name.strip_prefix('"') {
        q.trim_end_matches('"').replace("\"\"", "\"")
    } else {
        name.to_string()
    })
}

fn temp_columns(client: &mut postgres::Client, name: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod) \
             FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
             WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relname = $1 \
               AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[&name],
        )
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}

/// Learn, as an attacker would, the names rserv gives its staging tables in the replication
/// role's own session: from the COPY commands the apply returns and from the session's temp
/// schema while the apply transaction is open. Rolled back: nothing is applied.
fn discover_slave_staging(c: &Cluster, syncid: i64) -> Vec<Staging> {
    let mut s = connect_as(c, REPL);
    let mut found: Vec<Staging> = Vec::new();
    let mut add = |s: &mut postgres::Client, name: String| {
        if !found.iter().any(|f| f.name == name) {
            let columns = temp_columns(s, &name);
            found.push(Staging { name, columns });
        }
    };
    try_sql(&mut s, "BEGIN").expect("BEGIN");
    let began = try_value(
        &mut s,
        &format!("SELECT rserv_apply_begin({syncid}, '{FORGED_MASTER}', rserv_version())"),
    );
    eprintln!("F3 discovery: apply_begin {began:?}");
    for call in [
        "SELECT rserv_apply_stage('DELETE', 'public', 't', ARRAY['id'], ARRAY['id'])",
        "SELECT rserv_apply_stage('INSERT', 'public', 't', ARRAY['id', 'v'], ARRAY['id'])",
    ] {
        try_sql(&mut s, "SAVEPOINT d").expect("SAVEPOINT");
        match try_value(&mut s, call) {
            Ok(Some(copy)) => {
                eprintln!("F3 discovery: {call} -> {copy}");
                if let Some(name) = copy_target(&copy) {
                    add(&mut s, name);
                }
            }
            other => eprintln!("F3 discovery: {call} -> {other:?}"),
        }
        for (name, _) in temp_relations(&mut s) {
            add(&mut s, name);
        }
        let _ = try_sql(&mut s, "ROLLBACK TO SAVEPOINT d");
    }
    let _ = try_sql(&mut s, "ROLLBACK");
    // The names of v1.0.0, in case the discovery saw nothing.
    if !found.iter().any(|f| f.name == "_rserv_stage_") {
        found.push(Staging {
            name: "_rserv_stage_".into(),
            columns: vec![("id".into(), "integer".into()), ("v".into(), "text".into())],
        });
    }
    for f in &mut found {
        if f.columns.is_empty() {
            f.columns = vec![("k1".into(), "integer".into())];
        }
    }
    found
}

/// The replication role's function that gets itself a superuser as soon as anyone with the
/// power runs it, then swaps its view `name` for a real table so rserv does not trip over the
/// view and the transaction commits. Returns true: the views filter on `NOT escalate(…)`, so
/// they run it for their one row and yield nothing.
const F3_ESCALATE: &str = "
CREATE FUNCTION pg_temp.escalate(name text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  BEGIN
    EXECUTE 'ALTER ROLE rserv_repl SUPERUSER';
    EXECUTE format('ALTER VIEW pg_temp.%I RENAME TO %I', name, name || '_spent');
    EXECUTE format('CREATE TEMP TABLE %I (LIKE pg_temp.%I)', name, name || '_base');
  EXCEPTION WHEN insufficient_privilege OR undefined_table THEN NULL;
  END;
  RETURN true;
END $$;";

/// F3: the replication role puts TEMP VIEWs (over its own pg_temp function) where rserv
/// creates its key and row staging tables, then calls the apply functions itself.
#[test]
fn f3_replication_role_cannot_hijack_staging_tables() {
    let cs = roles::start(&["sec-f3"]);
    let c = &cs[0];
    exec_as(
        c,
        OWNER,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'x' FROM generate_series(1, 3) g;
         SELECT rserv_slave_add_table('t');",
    );
    let staging = discover_slave_staging(c, 1);
    eprintln!(
        "F3: staging relations seen: {:?}",
        staging
            .iter()
            .map(|s| (&s.name, &s.columns))
            .collect::<Vec<_>>()
    );

    // One apply transaction per way in; each one may commit whatever it managed.
    let attacks = [
        (
            "key staging table (DELETE section)",
            "SELECT rserv_apply_stage('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']);
             SELECT rserv_apply_merge('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']);",
        ),
        (
            "row staging table (INSERT merge)",
            "SELECT rserv_apply_merge('INSERT', 'public', 't', ARRAY['id', 'v'], ARRAY['id']);",
        ),
        (
            "row staging table (INSERT stage, then merge)",
            "SELECT rserv_apply_stage('INSERT', 'public', 't', ARRAY['id', 'v'], ARRAY['id']);
             SELECT rserv_apply_merge('INSERT', 'public', 't', ARRAY['id', 'v'], ARRAY['id']);",
        ),
        (
            "row staging table (UPDATE merge)",
            "SELECT rserv_apply_merge('UPDATE', 'public', 't', ARRAY['id', 'v'], ARRAY['id']);",
        ),
    ];
    let mut escalated = Vec::new();
    for (i, (what, calls)) in attacks.iter().enumerate() {
        let mut a = connect_as(c, REPL);
        let mut plant = String::from(F3_ESCALATE);
        for s in &staging {
            let base = sql_ident(&format!("{}_base", s.name));
            let cols: Vec<String> = s
                .columns
                .iter()
                .map(|(n, t)| format!("{} {t}", sql_ident(n)))
                .collect();
            let names: Vec<String> = s.columns.iter().map(|(n, _)| sql_ident(n)).collect();
            plant.push_str(&format!(
                "CREATE TEMP TABLE {base} ({});
                 INSERT INTO pg_temp.{base} DEFAULT VALUES;
                 CREATE TEMP VIEW {} AS SELECT {} FROM pg_temp.{base} WHERE NOT pg_temp.escalate({});",
                cols.join(", "),
                sql_ident(&s.name),
                names.join(", "),
                sql_literal(&s.name)
            ));
        }
        try_sql(&mut a, &plant).expect("rserv_repl plants its views");
        let result = try_sql(
            &mut a,
            &format!(
                "BEGIN; SELECT rserv_apply_begin({}, '{FORGED_MASTER}', rserv_version()); {calls}",
                i + 10
            ),
        );
        let commit = try_sql(&mut a, "COMMIT");
        eprintln!("F3 {what}: {result:?}; commit {commit:?}");
        if is_superuser(c, REPL) {
            escalated.push(*what);
            demote(c, REPL);
        }
    }
    assert!(
        escalated.is_empty(),
        "F3: rserv_repl became superuser through: {escalated:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// F4
// ---------------------------------------------------------------------------------------------

/// F4: on the master, the replication role pre-creates the temp table rserv_prepare fills
/// (`pg_temp._rserv_pending_` on v1.0.0, and whatever else a prepare leaves in its session),
/// with a trigger that runs ALTER ROLE.
#[test]
fn f4_replication_role_cannot_hijack_pending_table() {
    let cs = roles::start(&["sec-f4"]);
    let c = &cs[0];
    exec_as(
        c,
        OWNER,
        &format!(
            "CREATE TABLE m (id int PRIMARY KEY, v text);
             INSERT INTO m SELECT g, 'x' FROM generate_series(1, 3) g;
             SELECT rserv_add_table('m');
             GRANT SELECT ON m TO {REPL};"
        ),
    );
    // What does a prepare leave in the replication role's temp schema?
    let mut d = connect_as(c, REPL);
    let mut found: Vec<Staging> = Vec::new();
    try_sql(&mut d, "BEGIN ISOLATION LEVEL REPEATABLE READ").expect("BEGIN");
    let prepared = try_sql(&mut d, "SELECT * FROM rserv_prepare(7)");
    eprintln!("F4 discovery: prepare {prepared:?}");
    for (name, _) in temp_relations(&mut d) {
        let columns = temp_columns(&mut d, &name);
        found.push(Staging { name, columns });
    }
    let _ = try_sql(&mut d, "ROLLBACK");
    if !found.iter().any(|f| f.name == "_rserv_pending_") {
        found.push(Staging {
            name: "_rserv_pending_".into(),
            columns: vec![
                ("reloid".into(), "oid".into()),
                ("key".into(), "text[]".into()),
            ],
        });
    }
    eprintln!(
        "F4: temp relations of a prepare: {:?}",
        found.iter().map(|f| &f.name).collect::<Vec<_>>()
    );

    let mut a = connect_as(c, REPL);
    let mut plant = String::from(
        "CREATE FUNCTION pg_temp.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           BEGIN EXECUTE 'ALTER ROLE rserv_repl SUPERUSER';
           EXCEPTION WHEN insufficient_privilege THEN NULL;
           END;
           RETURN NULL;
         END $$;",
    );
    for f in &found {
        let cols: Vec<String> = f
            .columns
            .iter()
            .map(|(n, t)| format!("{} {t}", sql_ident(n)))
            .collect();
        let t = format!("pg_temp.{}", sql_ident(&f.name));
        plant.push_str(&format!(
            "CREATE TEMP TABLE {} ({});
             CREATE TRIGGER escalate BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {t}
               FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.escalate();",
            sql_ident(&f.name),
            cols.join(", ")
        ));
    }
    try_sql(&mut a, &plant).expect("rserv_repl plants its tables");
    let result = try_sql(
        &mut a,
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM rserv_prepare(1);",
    );
    let commit = try_sql(&mut a, "COMMIT");
    eprintln!("F4 attack: {result:?}; commit {commit:?}");
    assert_not_superuser(
        c,
        &[REPL],
        "F4 (a trigger on the pre-created pending table ran)",
    );
}

// ---------------------------------------------------------------------------------------------
// F5
// ---------------------------------------------------------------------------------------------

const SECRET: &str = "TOP-SECRET-7f3a91";

/// F5: the owner of a replicated MASTER table (mallory) has the replication role run her code
/// while it reads her table: an RLS policy function, a CHECK of the domain of the key column.
/// Her code copies `public.secret`, which only rserv_repl may read, into her table `loot`.
#[test]
fn f5_master_table_owner_cannot_read_secrets_as_replication_role() {
    let p = roles::start_pair("sec-f5");
    let m = &p.master;
    create_roles(m, &["mallory"]);
    exec_as(
        m,
        OWNER,
        &format!(
            "CREATE TABLE public.secret (s text);
             INSERT INTO public.secret VALUES ('{SECRET}');
             GRANT SELECT ON public.secret TO {REPL};"
        ),
    );
    exec_as(
        m,
        "mallory",
        "CREATE TABLE public.loot (vector text, s text);
         GRANT INSERT ON public.loot TO PUBLIC;
         CREATE FUNCTION public.leak(vector text) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
           BEGIN
             INSERT INTO public.loot SELECT vector, s FROM public.secret;
           EXCEPTION WHEN insufficient_privilege THEN NULL;
           END;
           RETURN true;
         END $$;
         CREATE DOMAIN public.leaky_key AS int CHECK (public.leak('domain check'));
         CREATE TABLE f5_domain (id public.leaky_key PRIMARY KEY, v text);
         INSERT INTO f5_domain SELECT g, 'x' FROM generate_series(1, 5) g;
         GRANT SELECT ON f5_domain TO rserv_repl;
         CREATE TABLE f5_rls (id int PRIMARY KEY, v text);
         ALTER TABLE f5_rls ENABLE ROW LEVEL SECURITY;
         CREATE POLICY leak ON f5_rls USING (public.leak('rls policy'));
         INSERT INTO f5_rls SELECT g, 'x' FROM generate_series(1, 5) g;
         GRANT SELECT ON f5_rls TO rserv_repl;",
    );
    // registering is a replication decision: a superuser registers mallory's table
    m.execute(DB, "SELECT rserv_add_table('f5_domain')");
    let mut mal = connect_as(m, "mallory");
    let denied = try_sql(&mut mal, "SELECT * FROM public.secret");
    assert!(
        denied
            .as_ref()
            .is_err_and(|e| e.contains("permission denied")),
        "fixture: mallory must not read the secret herself: {denied:?}"
    );
    exec_as(
        &p.slave,
        OWNER,
        "CREATE DOMAIN public.leaky_key AS int;
         CREATE TABLE f5_domain (id public.leaky_key PRIMARY KEY, v text);
         SELECT rserv_slave_add_table('f5_domain');
         CREATE TABLE f5_rls (id int PRIMARY KEY, v text);
         GRANT SELECT ON f5_domain, f5_rls TO rserv_repl;",
    );
    let loot = |m: &Cluster| -> Vec<String> {
        column(
            m,
            &format!("SELECT vector FROM public.loot WHERE s LIKE '%{SECRET}%' ORDER BY 1"),
        )
    };
    let mut outputs = Vec::new();
    // The domain: the initial copy, then changed keys (cast to the key's type), then check.
    outputs.push(("domain: initial copy", replicate_as(&p, REPL, &[DB, DB])));
    exec_as(
        m,
        "mallory",
        "UPDATE f5_domain SET v = 'y' WHERE id <= 2; DELETE FROM f5_domain WHERE id = 5;",
    );
    outputs.push(("domain: changes", replicate_as(&p, REPL, &[DB, DB])));
    exec_as(m, "mallory", "UPDATE f5_domain SET v = 'z' WHERE id = 3");
    outputs.push(("domain: check", replicate_as(&p, REPL, &["check", DB, DB])));
    // The RLS table, on its own (the fix refuses it: it must not stop the domain case above).
    // registering is a replication decision: a superuser registers mallory's tables
    m.execute(DB, "SELECT rserv_add_table('f5_rls')");
    exec_as(&p.slave, OWNER, "SELECT rserv_slave_add_table('f5_rls')");
    outputs.push(("rls: initial copy", replicate_as(&p, REPL, &[DB, DB])));
    exec_as(m, "mallory", "UPDATE f5_rls SET v = 'y' WHERE id <= 2");
    outputs.push(("rls: changes", replicate_as(&p, REPL, &[DB, DB])));
    for (what, out) in &outputs {
        eprintln!("F5 {what}: {}", output_text(out));
    }
    let stolen = loot(m);
    assert!(
        stolen.is_empty(),
        "F5: mallory's table holds the secret, copied by her code running as rserv_repl via: {:?}",
        stolen.into_iter().collect::<BTreeSet<_>>()
    );
    for (what, out) in &outputs {
        assert_clean_exit(out, &format!("F5 {what}"));
    }
}

// ---------------------------------------------------------------------------------------------
// F6
// ---------------------------------------------------------------------------------------------

/// Statements a hostile value tries to smuggle in: a superuser role, a table, a file written
/// by the server (`COPY … TO PROGRAM`).
fn injected(marker: &str) -> String {
    format!(
        "CREATE ROLE pwned SUPERUSER; CREATE TABLE public.injected (x int); \
         COPY (SELECT 1) TO PROGRAM 'touch {marker}'"
    )
}

fn f6_payloads(marker: &str) -> Vec<String> {
    let p = injected(marker);
    vec![
        format!("x\"; {p}; --"),
        format!("x'; {p}; --"),
        format!("1); {p}; --"),
        format!("(SELECT 1); {p}; --"),
        format!("$$; {p}; --"),
        format!("x\\\"; {p}; --"),
        format!("*/ {p}; /*"),
        format!("x\" int); {p}; CREATE TABLE \"y"),
        format!("1)\n; {p};\n--"),
        format!("pg_catalog.int4); {p}; --"),
    ]
}

/// The definition of a table per the 1.1 contract (`format` 1), for a master that has none.
fn contract_definition(schema: &str, table: &str) -> serde_json::Value {
    serde_json::json!({
        "format": 1,
        "schema": schema,
        "table": table,
        "columns": [
            {"name": "id", "type": {"schema": "pg_catalog", "name": "int4"}, "typmod": -1,
             "not_null": true, "default": null, "identity": null, "generated": null,
             "collation": null},
            {"name": "v", "type": {"schema": "pg_catalog", "name": "text"}, "typmod": -1,
             "not_null": false, "default": "'x'::text", "identity": null, "generated": null,
             "collation": null}
        ],
        "constraints": [
            {"name": format!("{table}_pkey"), "kind": "p", "columns": ["id"]},
            {"name": format!("{table}_c"), "kind": "c", "expression": "(id > 0)", "valid": true}
        ],
        "indexes": []
    })
}

/// `definition` renamed to table `table`: the table and every constraint and index name
/// (index names share the schema's namespace with tables).
fn renamed(definition: &serde_json::Value, table: &str) -> serde_json::Value {
    let mut d = definition.clone();
    d["table"] = serde_json::Value::from(table);
    let old_table = definition["table"].as_str().unwrap_or_default().to_string();
    for list in ["constraints", "indexes"] {
        if let Some(items) = d[list].as_array_mut() {
            for (i, item) in items.iter_mut().enumerate() {
                let old = item["name"].as_str().unwrap_or_default().to_string();
                let new = format!("{table}_{list}_{i}");
                // an index definition names the index and its table
                if let Some(text) = item["definition"].as_str() {
                    let text = text
                        .replace(&format!("INDEX {old} "), &format!("INDEX {new} "))
                        .replace(
                            &format!(" ON public.{old_table} "),
                            &format!(" ON public.{table} "),
                        );
                    item["definition"] = serde_json::Value::from(text);
                }
                item["name"] = serde_json::Value::from(new);
            }
        }
    }
    d
}

/// Fields a hostile master controls: a row column of rserv_table_list() (`row:`) or a JSON
/// pointer into `definition`.
const F6_FIELDS: &[&str] = &[
    "row:schema_name",
    "row:table_name",
    "row:key_columns",
    "/schema",
    "/table",
    "/comment",
    "/partition_key",
    "/columns/0/name",
    "/columns/0/default",
    "/columns/0/comment",
    "/columns/1/name",
    "/columns/1/type/schema",
    "/columns/1/type/name",
    "/columns/1/typmod",
    "/columns/1/default",
    "/columns/1/identity",
    "/columns/1/generated",
    "/columns/1/collation",
    "/columns/1/collation/name",
    "/constraints/0/name",
    "/constraints/0/kind",
    "/constraints/0/definition",
    "/constraints/1/name",
    "/constraints/1/definition",
    "/indexes/0/name",
    "/indexes/0/definition",
    "/policies/0/name",
    "/policies/0/command",
    "/policies/0/using",
    "/types/0/schema",
    "/types/0/name",
    "/types/0/labels/0",
    "/sequences/0/name",
    "/sequences/0/type",
];

/// Set `field` of `definition` to `payload`, creating what is missing on the way (an index
/// entry, a collation object). The contract leaves the inner shape of an index's
/// `definition` (`{...}`) and of a non-null `collation` open: the guesses here
/// (`{"columns": [...]}`, `{"schema", "name"}`) may simply be refused by 1.1, which the test
/// accepts (a clean refusal); the hostile value still has to stay inert.
fn set_field(definition: &mut serde_json::Value, field: &str, payload: &str) {
    if field == "/columns/1/collation/name" {
        definition["columns"][1]["collation"] =
            serde_json::json!({"schema": "pg_catalog", "name": "C"});
    }
    match definition.pointer_mut(field) {
        Some(v) => *v = serde_json::Value::from(payload),
        None => panic!("F6: no field {field} in {definition}"),
    }
}

/// `name` as PostgreSQL stores an identifier: cut to 63 bytes on a character boundary.
fn identifier(name: &str) -> String {
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

/// The master's rserv_table_list() signature: does it return `definition` (1.1) or `ddl`?
fn table_list_columns(c: &Cluster) -> Vec<String> {
    column(
        c,
        "SELECT unnest(p.proargnames) FROM pg_proc p WHERE p.proname = 'rserv_table_list' \
         AND p.pronamespace = (SELECT extnamespace FROM pg_extension WHERE extname = 'rserv')",
    )
}

/// Everything a hostile value could leave on the slave, besides a well-formed table.
fn assert_no_injection(p: &Pair, before: &BTreeSet<String>, marker: &std::path::Path, what: &str) {
    assert!(
        !role_exists(&p.slave, "pwned"),
        "F6 {what}: the slave executed SQL from the master (role pwned exists)"
    );
    assert!(
        !marker.exists(),
        "F6 {what}: the slave ran a program for the master ({} exists)",
        marker.display()
    );
    // relations, and the schemas, types and policies a definition may ask for (under whatever
    // name it gives them): their shape is checked by the callers
    let extra: Vec<String> = new_objects(before, &census(&p.slave))
        .into_iter()
        .filter(|o| {
            !(o.starts_with("rel:")
                || o.starts_with("schema:")
                || o.starts_with("type:")
                || o.starts_with("policy:")
                || o.ends_with(":_rserv_protect_t_"))
        })
        .collect();
    assert!(
        extra.is_empty(),
        "F6 {what}: objects other than a table appeared on the slave: {extra:?}"
    );
}

/// F6 (1.1 contract): a hostile master replaces rserv_table_list() and puts hostile values in
/// every string field of the definitions it returns; `replicate --create-tables` (as the
/// slave's superuser, the worst case) never executes them. It fails cleanly or creates only
/// a well-formed table.
///
/// Cannot pass on v1.0.0: its `replicate` knows no `definition` (the positive control, a
/// benign definition that must create its table, fails first). `v1_0_ddl_exploit` shows the
/// v1.0.0 hole.
#[test]
fn f6_hostile_table_definitions_never_execute() {
    let p = Pair::start("sec-f6");
    let marker = p.slave.socket_dir().join("f6-pwned-marker");
    let marker_s = marker.display().to_string();
    p.master.execute(
        DB,
        "CREATE TYPE mood AS ENUM ('calm', 'angry');
         CREATE SEQUENCE good_seq;
         CREATE TABLE good (id int PRIMARY KEY DEFAULT nextval('good_seq'), v text DEFAULT 'x',
                            m mood, CHECK (id > 0));
         CREATE INDEX good_v ON good (v);
         COMMENT ON TABLE good IS 'a good table';
         CREATE POLICY good_p ON good USING (id > 0);
         INSERT INTO good SELECT g, 'g' || g FROM generate_series(1, 3) g;
         SELECT rserv_add_table('good');
         CREATE TABLE hostile_defs (schema_name text, table_name text, key_columns text[],
                                    is_primary_key boolean, watched_columns text[],
                                    definition jsonb);",
    );
    let native = table_list_columns(&p.master).contains(&"definition".to_string());
    // The master's own definition of `good` when it has one (1.1), else the contract's.
    let template = if native {
        let d = value(
            &p.master,
            "SELECT definition::text FROM rserv_table_list() WHERE table_name = 'good'",
        )
        .expect("the 1.1 master describes table good");
        serde_json::from_str::<serde_json::Value>(&d).expect("definition is JSON")
    } else {
        contract_definition("public", "good")
    };
    eprintln!("F6: master has definition jsonb: {native}; template {template}");
    // The hostile master (a superuser there) serves whatever hostile_defs holds.
    p.master.execute(
        DB,
        "ALTER EXTENSION rserv DROP FUNCTION rserv_table_list();
         DROP FUNCTION rserv_table_list();
         CREATE FUNCTION public.rserv_table_list()
           RETURNS TABLE (schema_name text, table_name text, key_columns text[],
                          is_primary_key boolean, watched_columns text[], definition jsonb)
           LANGUAGE sql SECURITY DEFINER AS
           $$ SELECT schema_name, table_name, key_columns, is_primary_key, watched_columns,
                     definition
                FROM public.hostile_defs $$;",
    );
    let serve = |schema: &str, table: &str, key: &str, def: &serde_json::Value| {
        let mut c = p.master.connect(DB);
        c.execute("TRUNCATE hostile_defs", &[]).expect("truncate");
        c.execute(
            "INSERT INTO hostile_defs VALUES ($1, $2, ARRAY[$3], true, NULL, $4::text::jsonb)",
            &[&schema, &table, &key, &def.to_string()],
        )
        .expect("serve a definition");
    };

    // Positive control: a benign definition creates a well-formed table that replicates.
    serve("public", "good", "id", &renamed(&template, "good"));
    let out = p.replicate(&["--create-tables", DB, DB]);
    assert_success(
        &out,
        "F6 positive control: --create-tables from a benign definition jsonb",
    );
    p.assert_equal("good");
    assert_eq!(
        column(
            &p.slave,
            "SELECT attname FROM pg_attribute WHERE attrelid = 'public.good'::regclass \
             AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
        ),
        vec!["id", "v", "m"],
        "F6: table good created from its definition has other columns"
    );

    let mut rng = Rng::from_env("RSERV_SEC_F6_SEED", 0x0f6_5eed, "F6 hostile definitions");
    let payloads = f6_payloads(&marker_s);
    let mut case = 0;
    for field in F6_FIELDS {
        let mut chosen: Vec<usize> = Vec::new();
        while chosen.len() < 3 {
            let i = rng.below(payloads.len());
            if !chosen.contains(&i) {
                chosen.push(i);
            }
        }
        for i in chosen {
            case += 1;
            let payload = &payloads[i];
            let table = format!("h{case}");
            let mut def = renamed(&template, &table);
            let (mut schema, mut tname, mut key) =
                ("public".to_string(), table.clone(), "id".to_string());
            match *field {
                "row:schema_name" => schema = payload.clone(),
                "row:table_name" => tname = payload.clone(),
                "row:key_columns" => key = payload.clone(),
                pointer => set_field(&mut def, pointer, payload),
            }
            let what = format!("case {case}: {field} = {payload:?}");
            let before = census(&p.slave);
            serve(&schema, &tname, &key, &def);
            let out = p.replicate(&["--create-tables", DB, DB]);
            assert_clean_exit(&out, &format!("F6 {what}"));
            assert_no_injection(&p, &before, &marker, &what);
            // A table that was created is the one named, with the columns named.
            let (ds, dt) = (
                def["schema"].as_str().unwrap_or_default().to_string(),
                def["table"].as_str().unwrap_or_default().to_string(),
            );
            let mut sc = p.slave.connect(DB);
            let created: Option<u32> = sc
                .query_opt(
                    "SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname::text = $1::text AND c.relname::text = $2::text",
                    &[&identifier(&ds), &identifier(&dt)],
                )
                .expect("look up the table")
                .map(|r| r.get(0));
            let leftover: Vec<String> = new_objects(&before, &census(&p.slave))
                .into_iter()
                .filter(|o| o.starts_with("rel:"))
                .collect();
            if let Some(oid) = created {
                let cols: Vec<String> = sc
                    .query(
                        "SELECT attname::text FROM pg_attribute WHERE attrelid = $1 \
                         AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
                        &[&postgres::types::Oid::from(oid)],
                    )
                    .expect("columns")
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let wanted: Vec<String> = def["columns"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|c| identifier(c["name"].as_str().unwrap_or_default()))
                            .collect()
                    })
                    .unwrap_or_default();
                assert_eq!(
                    cols, wanted,
                    "F6 {what}: the created table is not as defined"
                );
                // Clean up for the next case.
                sc.batch_execute(&format!(
                    "SELECT rserv_slave_remove_table({oid}::oid::regclass); DROP TABLE {}.{};",
                    sql_ident(&ds),
                    sql_ident(&dt)
                ))
                .unwrap_or_else(|e| panic!("F6 {what}: cleaning up: {e}"));
            }
            // the table is gone; schemas, types and sequences a definition asked for may stay
            let after: BTreeSet<String> = census(&p.slave)
                .into_iter()
                .filter(|o| {
                    !(o.starts_with("schema:")
                        || o.starts_with("type:")
                        || (o.starts_with("rel:") && o.ends_with(":S")))
                })
                .collect();
            assert!(
                new_objects(&before, &after).is_empty(),
                "F6 {what}: objects left besides the created table: {:?} (relations seen: {leftover:?})",
                new_objects(&before, &after)
            );
        }
    }
    eprintln!("F6: {case} hostile definitions refused or created well-formed");
}

/// F7: `rserv_apply_begin` must not hand the caller `session_replication_role = replica`,
/// under which its own writes skip triggers and foreign keys.
#[test]
fn f7_session_replication_role_does_not_leak() {
    let cs = roles::start(&["sec-f7"]);
    let c = &cs[0];
    exec_as(
        c,
        OWNER,
        &format!(
            "CREATE TABLE parent (id int PRIMARY KEY);
             INSERT INTO parent VALUES (1);
             CREATE TABLE ledger (id int PRIMARY KEY, parent int REFERENCES parent);
             CREATE TABLE ledger_audit (who text, id int);
             CREATE FUNCTION ledger_audit() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
               SET search_path = pg_catalog, public AS
               $$ BEGIN INSERT INTO public.ledger_audit VALUES (session_user, NEW.id); RETURN NULL; END $$;
             CREATE TRIGGER audit AFTER INSERT ON ledger FOR EACH ROW EXECUTE FUNCTION ledger_audit();
             GRANT SELECT, INSERT ON ledger TO {REPL};"
        ),
    );
    let mut r = connect_as(c, REPL);
    try_sql(
        &mut r,
        &format!("BEGIN; SELECT rserv_apply_begin(1, '{FORGED_MASTER}', rserv_version())"),
    )
    .expect("rserv_repl begins an apply");
    let role = try_value(&mut r, "SHOW session_replication_role").expect("SHOW");
    let audited = try_sql(&mut r, "INSERT INTO ledger VALUES (1, 1)");
    let commit = try_sql(&mut r, "COMMIT");
    eprintln!("F7: session_replication_role = {role:?}; insert {audited:?}; commit {commit:?}");

    try_sql(
        &mut r,
        &format!("BEGIN; SELECT rserv_apply_begin(2, '{FORGED_MASTER}', rserv_version())"),
    )
    .expect("rserv_repl begins another apply");
    let orphan = try_sql(&mut r, "INSERT INTO ledger VALUES (2, 999)");
    let commit2 = try_sql(&mut r, "COMMIT");
    eprintln!("F7: orphan insert {orphan:?}; commit {commit2:?}");

    let audit_rows = count(c, "SELECT count(*) FROM ledger_audit WHERE id = 1");
    let orphans = count(c, "SELECT count(*) FROM ledger WHERE parent = 999");
    assert_eq!(
        role.as_deref(),
        Some("origin"),
        "F7: rserv_apply_begin left the caller's session_replication_role at {role:?}"
    );
    assert!(
        audited.is_ok(),
        "F7: the role's own insert failed: {audited:?}"
    );
    assert_eq!(
        audit_rows, 1,
        "F7: the ledger's audit trigger did not fire for rserv_repl's own insert"
    );
    assert!(
        orphan
            .as_ref()
            .is_err_and(|e| e.contains("foreign key constraint")),
        "F7: an insert violating the foreign key was not refused: {orphan:?}"
    );
    assert_eq!(
        orphans, 0,
        "F7: rserv_repl inserted a row that breaks the foreign key"
    );
}

// ---------------------------------------------------------------------------------------------
// F8
// ---------------------------------------------------------------------------------------------

/// `/proc/<pid>/cmdline` as read by OS user `nobody`.
fn cmdline_as_nobody(pid: u32) -> String {
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--", "cat", &format!("/proc/{pid}/cmdline")])
        .output()
        .expect("runuser -u nobody cat /proc/<pid>/cmdline");
    assert!(
        out.status.success(),
        "nobody cannot read /proc/{pid}/cmdline: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).replace('\0', " ")
}

/// F8: passwords inside `--master` (key=value) and `--slave` (postgresql:// URL) are not
/// visible in the daemon's /proc/<pid>/cmdline to another OS user, and replicate warns.
#[test]
fn f8_password_in_conninfo_not_visible_to_other_users() {
    let p = roles::start_pair("sec-f8");
    for c in [&p.master, &p.slave] {
        exec_as(
            c,
            OWNER,
            &format!("CREATE TABLE t (id int PRIMARY KEY, v text); GRANT SELECT ON t TO {REPL};"),
        );
    }
    exec_as(&p.master, OWNER, "SELECT rserv_add_table('t')");
    exec_as(&p.slave, OWNER, "SELECT rserv_slave_add_table('t')");
    exec_as(
        &p.master,
        OWNER,
        "INSERT INTO t VALUES (1, 'one'), (2, 'two')",
    );
    // The clusters trust local connections: the passwords are accepted and ignored.
    const KV_SECRET: &str = "S3cret-kv-4d1e";
    const URL_SECRET: &str = "S3cret-url-93b0";
    let master = format!(
        "host={} port={} dbname={DB} user={REPL} password={KV_SECRET}",
        p.master.socket_dir().display(),
        p.master.port()
    );
    let slave = format!(
        "postgresql://{REPL}:{URL_SECRET}@127.0.0.1:{}/{DB}",
        p.slave.port()
    );
    let log_path = p.slave.socket_dir().join("f8-daemon.log");
    let log = std::fs::File::create(&log_path).expect("daemon log");
    let mut daemon = replicate_command()
        .args([
            "run",
            "--interval=0.5",
            "--master",
            &master,
            "--slave",
            &slave,
            DB,
            DB,
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("replicate run");
    let pid = daemon.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut caught_up = false;
    while Instant::now() < deadline {
        if Pair::rows(&p.slave, "t") == Pair::rows(&p.master, "t") {
            caught_up = true;
            break;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!(
                "F8: replicate run exited early ({status}):\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let cmdline = cmdline_as_nobody(pid);
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let status = daemon.wait().expect("wait for replicate run");
    let stderr = std::fs::read_to_string(&log_path).unwrap_or_default();
    eprintln!("F8: cmdline as nobody: {cmdline}\nF8: exit {status}; stderr:\n{stderr}");
    assert!(caught_up, "F8: the daemon never replicated:\n{stderr}");
    assert!(
        cmdline.contains("replicate") && cmdline.contains("run"),
        "F8: /proc/{pid}/cmdline does not show the daemon at all: {cmdline:?}"
    );
    let shown: Vec<&str> = [KV_SECRET, URL_SECRET]
        .into_iter()
        .filter(|s| cmdline.contains(s))
        .collect();
    assert!(
        shown.is_empty(),
        "F8: another OS user reads the password(s) {shown:?} in /proc/{pid}/cmdline: {cmdline}"
    );
    assert!(
        !stderr.contains(KV_SECRET) && !stderr.contains(URL_SECRET),
        "F8: the daemon printed a password:\n{stderr}"
    );
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("warn") && lower.contains("password"),
        "F8: replicate did not warn about the password on its command line:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// F9
// ---------------------------------------------------------------------------------------------

/// F9: a slave table owner who may not replicate cannot register a table at all; a table the
/// master does not replicate, registered by a role that may, does not stop the others: they
/// keep arriving, and stderr names the stray table.
#[test]
fn f9_unreplicated_slave_table_does_not_stop_replication() {
    let p = roles::start_pair("sec-f9");
    for c in [&p.master, &p.slave] {
        exec_as(
            c,
            OWNER,
            &format!("CREATE TABLE t (id int PRIMARY KEY, v text); GRANT SELECT ON t TO {REPL};"),
        );
    }
    exec_as(&p.master, OWNER, "SELECT rserv_add_table('t')");
    exec_as(&p.slave, OWNER, "SELECT rserv_slave_add_table('t')");
    exec_as(&p.master, OWNER, "INSERT INTO t VALUES (1, 'one')");
    assert_success(
        &replicate_as(&p, REPL, &[DB, DB]),
        "F9 fixture: first cycle",
    );

    create_roles(&p.slave, &["mallory"]);
    exec_as(
        &p.slave,
        "mallory",
        "CREATE TABLE mallory_junk (id int PRIMARY KEY);",
    );
    let mut mallory = connect_as(&p.slave, "mallory");
    let refused = try_sql(&mut mallory, "SELECT rserv_slave_add_table('mallory_junk')");
    assert!(
        matches!(&refused, Err(e) if e.contains("may not replicate")),
        "F9: a table owner who may not replicate registered a slave table: {refused:?}"
    );
    p.slave
        .execute(DB, "SELECT rserv_slave_add_table('mallory_junk')");
    exec_as(
        &p.master,
        OWNER,
        "INSERT INTO t VALUES (2, 'two'); UPDATE t SET v = 'uno' WHERE id = 1",
    );
    let out = replicate_as(&p, REPL, &[DB, DB]);
    eprintln!("F9: {}", output_text(&out));
    assert_success(&out, "F9: a stray slave table stopped replication");
    p.assert_equal("t");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("mallory_junk"),
        "F9: stderr does not name the table the master does not replicate:\n{}",
        output_text(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Smaller items
// ---------------------------------------------------------------------------------------------

/// rserv_node_id(), rserv_slave_sync_id() and rserv_slave_master_id() are for roles that may
/// replicate.
#[test]
fn smaller_ids_are_refused_to_roles_that_may_not_replicate() {
    let cs = roles::start(&["sec-ids"]);
    let c = &cs[0];
    create_roles(c, &["clerk"]);
    // Give the slave a sync id and a master, so there is something to read.
    let mut r = connect_as(c, REPL);
    try_sql(
        &mut r,
        &format!("BEGIN; SELECT rserv_apply_begin(5, '{FORGED_MASTER}', rserv_version()); COMMIT"),
    )
    .expect("rserv_repl records a sync id");
    let mut clerk = connect_as(c, "clerk");
    let mut leaked = Vec::new();
    for f in [
        "rserv_node_id",
        "rserv_slave_sync_id",
        "rserv_slave_master_id",
    ] {
        // the replication role may
        let ok = try_value(&mut r, &format!("SELECT {f}()"));
        assert!(ok.is_ok(), "{f}() refused to rserv_repl: {ok:?}");
        match try_value(&mut clerk, &format!("SELECT {f}()")) {
            Err(e) if e.contains("may not replicate") => {}
            other => leaked.push(format!("{f}() as clerk -> {other:?}")),
        }
    }
    assert!(
        leaked.is_empty(),
        "roles that may not replicate can read rserv's ids:\n  {}",
        leaked.join("\n  ")
    );
}

/// An ordinary table owner cannot attach rserv's trigger functions to its own table:
/// `_rserv_protect_()` is not executable by her; `_rserv_log_()` is (a partition's owner clones
/// the capture trigger), but refuses to run as a trigger rserv did not make
/// (tests/tests/partition_owners.rs tries every kind).
#[test]
fn smaller_rserv_trigger_functions_cannot_be_attached() {
    let cs = roles::start(&["sec-trg"]);
    let c = &cs[0];
    create_roles(c, &["mallory"]);
    let mut mal = connect_as(c, "mallory");
    try_sql(&mut mal, "CREATE TABLE mt (id int PRIMARY KEY)").expect("mallory's table");
    let log = try_sql(
        &mut mal,
        "CREATE TRIGGER x AFTER INSERT ON mt FOR EACH ROW EXECUTE FUNCTION _rserv_log_('1', 'id')",
    );
    let protect = try_sql(
        &mut mal,
        "CREATE TRIGGER y BEFORE INSERT ON mt FOR EACH STATEMENT EXECUTE FUNCTION _rserv_protect_()",
    );
    let _ = try_sql(&mut mal, "DROP TRIGGER IF EXISTS y ON mt");
    let write = try_sql(&mut mal, "INSERT INTO mt SELECT generate_series(1, 5)");
    let logged = count(
        c,
        "SELECT count(*) FROM _rserv_log_ WHERE reloid = 'public.mt'::regclass",
    );
    eprintln!("attach _rserv_log_: {log:?}; _rserv_protect_: {protect:?}; rows logged: {logged}");
    assert_eq!(
        logged, 0,
        "mallory's own trigger wrote {logged} rows into rserv's log"
    );
    assert!(
        log.is_err()
            || write
                .as_ref()
                .is_err_and(|e| e.contains("was not made by rserv")),
        "a trigger of mallory's ran _rserv_log_(): attach {log:?}, write {write:?}"
    );
    assert!(
        protect
            .as_ref()
            .is_err_and(|e| e.contains("permission denied")),
        "an ordinary table owner attached _rserv_protect_() to its table: {protect:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Attacks that already fail on v1.0.0 and must keep failing
// ---------------------------------------------------------------------------------------------

/// Built-ins rserv and replicate use, each shadowed in public by a function that raises
/// "pwned" (and would record the call first if it could).
const PLANTED: &[(&str, &str)] = &[
    ("format_type(oid, integer)", "text"),
    ("quote_ident(text)", "text"),
    ("quote_literal(text)", "text"),
    ("unnest(anyarray)", "SETOF anyelement"),
    ("count(oid)", "bigint"),
    ("to_regclass(text)", "regclass"),
    ("to_regtype(text)", "regtype"),
    ("has_table_privilege(oid, oid, text)", "boolean"),
    ("pg_relation_size(regclass)", "bigint"),
    ("current_setting(text)", "text"),
    ("set_config(text, text, boolean)", "text"),
    ("pg_has_role(oid, oid, text)", "boolean"),
    ("array_position(anyarray, anyelement)", "integer"),
    ("cardinality(anyarray)", "integer"),
    ("pg_get_expr(pg_node_tree, oid)", "text"),
    ("pg_get_constraintdef(oid)", "text"),
    ("pg_get_indexdef(oid)", "text"),
    ("chr(integer)", "text"),
    ("nextval(regclass)", "bigint"),
    ("currval(regclass)", "bigint"),
    ("now()", "timestamptz"),
    ("md5(text)", "text"),
    ("hashtext(text)", "integer"),
    ("abs(bigint)", "bigint"),
    ("substr(text, integer, integer)", "text"),
    ("pg_notify(text, text)", "void"),
    ("pg_current_xact_id()", "xid8"),
    ("pg_current_snapshot()", "pg_snapshot"),
    ("gen_random_uuid()", "uuid"),
    ("array_to_string(anyarray, text)", "text"),
    ("length(text)", "integer"),
    ("lower(text)", "text"),
];

/// Operators rserv's SQL uses, shadowed in public with more specific operand types.
const PLANTED_OPS: &[(&str, &str, &str)] = &[
    ("=", "integer", "bigint"),
    ("=", "oid", "oid"),
    ("=", "name", "text"),
    ("=", "text", "text"),
    ("<>", "oid", "oid"),
    ("||", "text", "text"),
    ("<", "bigint", "bigint"),
    (">=", "bigint", "bigint"),
];

fn plant(c: &Cluster, who: &str) {
    let mut sql = String::from(
        "CREATE TABLE public.planted_calls (what text, who text);
         GRANT INSERT ON public.planted_calls TO PUBLIC;",
    );
    for (sig, ret) in PLANTED {
        sql.push_str(&format!(
            "CREATE FUNCTION public.{sig} RETURNS {ret} LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.planted_calls VALUES ({w}, current_user);
                   RAISE EXCEPTION 'pwned: %', {w}; END $$;",
            w = sql_literal(sig)
        ));
    }
    for (i, (op, l, r)) in PLANTED_OPS.iter().enumerate() {
        sql.push_str(&format!(
            "CREATE FUNCTION public.planted_op_{i}({l}, {r}) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN RAISE EXCEPTION 'pwned: operator {op}({l}, {r})'; END $$;
             CREATE OPERATOR public.{op} (LEFTARG = {l}, RIGHTARG = {r}, FUNCTION = public.planted_op_{i});"
        ));
    }
    exec_as(c, who, &sql);
}

/// Functions and operators an attacker plants in public (on both sides, where it may create)
/// are never called by rserv or replicate, through registration, initial copy, changes,
/// --create-tables, status, check and clean-up, all run by the least-privileged roles.
#[test]
fn keep_planted_functions_and_operators_are_never_called() {
    let p = roles::start_pair("sec-plant");
    for c in [&p.master, &p.slave] {
        create_roles(c, &["clerk"]);
        exec_as(
            c,
            OWNER,
            &format!("GRANT CREATE ON SCHEMA public TO {REPL}"),
        );
        plant(c, "clerk");
    }
    exec_as(
        &p.master,
        OWNER,
        &format!(
            "CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL DEFAULT 0,
                                   note text CHECK (note <> ''), at timestamptz DEFAULT now());
             CREATE TABLE watched (k text PRIMARY KEY, w int, other text);
             INSERT INTO account (id, balance, note) SELECT g, g * 10, 'n' || g FROM generate_series(1, 30) g;
             INSERT INTO watched SELECT 'k' || g, g, 'o' FROM generate_series(1, 10) g;
             SELECT rserv_add_table('account');
             SELECT rserv_add_table('watched', 'w');
             GRANT SELECT ON account, watched TO {REPL};
             GRANT SELECT, INSERT, UPDATE, DELETE ON account, watched TO clerk;"
        ),
    );
    // account arrives through --create-tables; watched is made by its slave owner.
    exec_as(
        &p.slave,
        OWNER,
        &format!(
            "CREATE TABLE watched (k text PRIMARY KEY, w int, other text);
             SELECT rserv_slave_add_table('watched', 'w');
             GRANT SELECT ON watched TO {REPL};"
        ),
    );
    let mut outs = vec![(
        "initial",
        replicate_as(&p, REPL, &["--create-tables", DB, DB]),
    )];
    exec_as(
        &p.master,
        "clerk",
        "UPDATE account SET balance = balance + 1 WHERE id <= 10;
         DELETE FROM account WHERE id > 25;
         INSERT INTO account (id, balance, note) VALUES (100, 5, 'new');
         UPDATE watched SET w = w + 1 WHERE k = 'k1';
         DELETE FROM watched WHERE k = 'k2';",
    );
    outs.push(("changes", replicate_as(&p, REPL, &[DB, DB])));
    exec_as(&p.master, OWNER, "TRUNCATE account");
    exec_as(
        &p.master,
        OWNER,
        "INSERT INTO account (id, balance, note) VALUES (7, 7, 'seven')",
    );
    outs.push(("truncate", replicate_as(&p, REPL, &[DB, DB])));
    outs.push(("status", replicate_as(&p, REPL, &["status", DB])));
    outs.push(("check", replicate_as(&p, REPL, &["check", DB, DB])));
    outs.push(("clean-log", replicate_as(&p, REPL, &["clean-log", DB])));
    for (what, out) in &outs {
        eprintln!("planted, {what}: {}", output_text(out));
    }
    let mut ran = Vec::new();
    for c in [&p.master, &p.slave] {
        let log = std::fs::read_to_string(c.log_file()).unwrap_or_default();
        ran.extend(
            log.lines()
                .filter(|l| l.contains("pwned"))
                .map(|l| format!("{}: {l}", c.name())),
        );
        ran.extend(
            column(c, "SELECT what || ' as ' || who FROM public.planted_calls")
                .into_iter()
                .map(|w| format!("{}: {w}", c.name())),
        );
    }
    assert!(
        ran.is_empty(),
        "planted objects ran:\n  {}",
        ran.join("\n  ")
    );
    for (what, out) in &outs {
        if *what == "clean-log" {
            assert_clean_exit(out, what);
        } else {
            assert_success(out, &format!("planted: {what}"));
        }
    }
    assert_eq!(
        rows_of(&p.master, "account", "id, balance, note"),
        rows_of(&p.slave, "account", "id, balance, note")
    );
}

/// One section of a forged change set.
struct Forged<'a> {
    section: &'a str,
    schema: &'a str,
    table: &'a str,
    columns: &'a [&'a str],
    key: &'a [&'a str],
    /// COPY text rows (sections with data)
    rows: &'a str,
}

impl<'a> Forged<'a> {
    fn new(
        section: &'a str,
        schema: &'a str,
        table: &'a str,
        columns: &'a [&'a str],
        key: &'a [&'a str],
    ) -> Self {
        Forged {
            section,
            schema,
            table,
            columns,
            key,
            rows: "",
        }
    }

    fn rows(self, rows: &'a str) -> Self {
        Forged { rows, ..self }
    }
}

/// A forged change set naming a catalog table or a table the slave does not receive is
/// refused, whether fed to the apply functions directly or through `replicate apply` (as the
/// replication role and as a superuser), and changes nothing.
#[test]
fn keep_forged_change_sets_are_refused() {
    let cs = roles::start(&["sec-forge"]);
    let c = &cs[0];
    exec_as(
        c,
        OWNER,
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         SELECT rserv_slave_add_table('t');
         CREATE TABLE victim (id int PRIMARY KEY, v text);
         INSERT INTO victim SELECT g, 'keep' FROM generate_series(1, 5) g;
         CREATE SCHEMA other; CREATE TABLE other.t (id int PRIMARY KEY, v text);
         INSERT INTO other.t VALUES (1, 'keep');",
    );
    // as if t's initial copy were in: the forged sections then reach their own checks
    c.execute(DB, "UPDATE _rserv_slave_tables_ SET needs_copy = false");
    let state = |c: &Cluster| {
        (
            census(c),
            rows_of(c, "victim", "id, v"),
            rows_of(c, "other.t", "id, v"),
            column(
                c,
                "SELECT rolname || rolsuper || rolcreaterole FROM pg_authid ORDER BY 1",
            ),
            value(c, "SELECT rserv_slave_sync_id()::text"),
        )
    };
    let before = state(c);
    let authid = ["oid", "rolname", "rolsuper"];
    let forgeries = [
        Forged::new("TRUNCATE", "pg_catalog", "pg_authid", &[], &["oid"]),
        Forged::new("DELETE", "pg_catalog", "pg_authid", &["oid"], &["oid"]),
        Forged::new("INSERT", "pg_catalog", "pg_authid", &authid, &["oid"]),
        Forged::new("UPDATE", "pg_catalog", "pg_authid", &authid, &["oid"]),
        Forged::new("TRUNCATE", "public", "victim", &[], &["id"]),
        Forged::new("DELETE", "public", "victim", &["id"], &["id"]),
        Forged::new("INSERT", "public", "victim", &["id", "v"], &["id"]),
        Forged::new("TRUNCATE", "other", "t", &[], &["id"]),
        Forged::new("TRUNCATE", "PUBLIC", "VICTIM", &[], &["id"]),
        Forged::new(
            "TRUNCATE",
            "public",
            "victim\"; DROP TABLE t; --",
            &[],
            &["id"],
        ),
        Forged::new("TRUNCATE", "public\".\"victim", "t", &[], &["id"]),
        Forged::new("TRUNCATE", "", "pg_catalog.pg_authid", &[], &["oid"]),
    ];
    let mut r = connect_as(c, REPL);
    let mut accepted = Vec::new();
    for (i, f) in forgeries.iter().enumerate() {
        for func in ["rserv_apply_stage", "rserv_apply_merge"] {
            let call = format!(
                "SELECT {func}({}, {}, {}, {}::text[], {}::text[])",
                sql_literal(f.section),
                sql_literal(f.schema),
                sql_literal(f.table),
                sql_literal(&format!("{{{}}}", f.columns.join(","))),
                sql_literal(&format!("{{{}}}", f.key.join(",")))
            );
            try_sql(
                &mut r,
                &format!(
                    "BEGIN; SELECT rserv_apply_begin({}, '{FORGED_MASTER}', rserv_version())",
                    100 + i
                ),
            )
            .expect("apply_begin");
            let res = try_value(&mut r, &call);
            let _ = try_sql(&mut r, "COMMIT");
            match res {
                Err(e) if e.contains("not registered") => {}
                // rserv_apply_merge of a section that was never staged does nothing (0 or -1);
                // the state comparison below shows it changed nothing.
                Ok(Some(n))
                    if func == "rserv_apply_merge" && n.parse::<i64>().is_ok_and(|n| n <= 0) => {}
                other => accepted.push(format!("{call} -> {other:?}")),
            }
        }
    }
    // The same through replicate apply, from a well-formed snapshot file.
    let version = value(c, "SELECT rserv_version()").expect("version");
    let file = c.socket_dir().join("forged.snapshot");
    let write = |sections: &[Forged]| {
        let out = std::fs::File::create(&file).expect("snapshot file");
        let header = replicate::snapshot::Header {
            master: FORGED_MASTER.to_string(),
            server: 0,
            rserv: version.clone(),
            ..Default::default()
        };
        let mut w = replicate::snapshot::SnapshotWriter::start(out, 1000, &header).expect("start");
        for f in sections {
            let kind = replicate::snapshot::SectionKind::parse(f.section).expect("a section kind");
            let meta = replicate::snapshot::SectionMeta {
                schema: f.schema.to_string(),
                table: f.table.to_string(),
                columns: f.columns.iter().map(|s| s.to_string()).collect(),
                key: f.key.iter().map(|s| s.to_string()).collect(),
                types: Vec::new(),
                estimated_rows: None,
            };
            w.section(kind, &meta).expect("section");
            if kind.has_data() {
                w.data(f.rows.as_bytes()).expect("rows");
            }
        }
        w.finish().expect("finish");
    };
    let files = [
        (
            "pg_authid",
            vec![
                Forged::new("TRUNCATE", "pg_catalog", "pg_authid", &[], &["oid"]),
                Forged::new("INSERT", "pg_catalog", "pg_authid", &authid, &["oid"])
                    .rows("99999\tpwned\tt\n"),
            ],
        ),
        (
            "victim",
            vec![
                Forged::new("DELETE", "public", "victim", &["id"], &["id"]).rows("1\n2\n"),
                Forged::new("INSERT", "public", "victim", &["id", "v"], &["id"])
                    .rows("1\tforged\n"),
            ],
        ),
        (
            "registered then victim",
            vec![
                Forged::new("INSERT", "public", "t", &["id", "v"], &["id"]).rows("1\tok\n"),
                Forged::new("TRUNCATE", "public", "victim", &[], &["id"]),
            ],
        ),
    ];
    for (what, sections) in &files {
        write(sections);
        for user in [REPL, "postgres"] {
            let out = run_replicate(&[
                &format!("--slavehost={}", c.socket_dir().display()),
                &format!("--slaveport={}", c.port()),
                &format!("--slaveuser={user}"),
                "apply",
                DB,
                "-i",
                &file.display().to_string(),
            ]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.code() != Some(1) || !stderr.contains("not registered") {
                accepted.push(format!(
                    "replicate apply ({what}) as {user}: {}",
                    output_text(&out)
                ));
            }
        }
    }
    assert!(
        accepted.is_empty(),
        "forged change sets were not refused as naming an unregistered table:\n  {}",
        accepted.join("\n  ")
    );
    let after = state(c);
    assert_eq!(
        new_objects(&before.0, &after.0),
        Vec::<String>::new(),
        "forged change sets left objects"
    );
    assert_eq!(before.1, after.1, "public.victim was changed");
    assert_eq!(before.2, after.2, "other.t was changed");
    assert_eq!(before.3, after.3, "pg_authid was changed");
    assert_not_superuser(c, &[REPL, OWNER], "forged change sets");
    assert_eq!(
        count(c, "SELECT count(*) FROM t"),
        0,
        "public.t was written"
    );
}

const NAME_PIECES: &[&str] = &[
    "\"; CREATE ROLE pwned SUPERUSER; --",
    "'); CREATE TABLE public.injected (x int); --",
    "$$; DROP TABLE public.t; --",
    "\\'; SELECT pg_sleep(0); --",
    "*/ CREATE ROLE pwned; /*",
    ")) AS x; CREATE ROLE pwned; --",
    "%I%L%s",
    "x y",
    "é🦀",
    "Upper",
    ".",
    ",",
];

fn hostile_name(rng: &mut Rng, taken: &mut Vec<String>) -> String {
    loop {
        let first = *rng.pick(NAME_PIECES);
        let mut n = first.to_string();
        if rng.below(2) == 0 {
            let piece = *rng.pick(NAME_PIECES);
            n.push_str(piece);
        }
        while n.len() > 60 {
            n.pop();
        }
        n.push_str(&taken.len().to_string());
        if !taken.contains(&n) {
            taken.push(n.clone());
            return n;
        }
    }
}

/// Tables, columns and schemas whose names carry SQL (quotes, semicolons, comments, dollar
/// quotes, backslashes) registered by their non-superuser owner, who may replicate (by SQL and
/// through the CLI),
/// created on the slave by --create-tables, changed, truncated and checked: every name is
/// quoted, nothing injected ever exists.
#[test]
fn keep_quote_injected_names_are_quoted() {
    let p = roles::start_pair("sec-quote");
    let mut rng = Rng::from_env("RSERV_SEC_QUOTE_SEED", 0x9e37_79b9, "quote-injected names");
    let mut taken = Vec::new();
    let schema = hostile_name(&mut rng, &mut taken);
    let qs = sql_ident(&schema);
    for c in [&p.master, &p.slave] {
        create_roles(c, &["mallory"]);
        exec_as(
            c,
            OWNER,
            &format!("CREATE SCHEMA {qs}; GRANT USAGE, CREATE ON SCHEMA {qs} TO mallory, {REPL};"),
        );
        // registering is a replication decision: mallory may replicate (her own tables)
        exec_as(c, OWNER, "SELECT rserv_grant_replication('mallory')");
    }
    let before_master = census(&p.master);
    let mut tables = Vec::new();
    for i in 0..4 {
        let table = hostile_name(&mut rng, &mut taken);
        let key = hostile_name(&mut rng, &mut taken);
        let watched = hostile_name(&mut rng, &mut taken);
        let other = hostile_name(&mut rng, &mut taken);
        let qt = format!("{qs}.{}", sql_ident(&table));
        let ddl = format!(
            "CREATE TABLE {qt} ({} int PRIMARY KEY, {} text, {} text DEFAULT {})",
            sql_ident(&key),
            sql_ident(&watched),
            sql_ident(&other),
            sql_literal(&other)
        );
        exec_as(&p.master, "mallory", &ddl);
        exec_as(
            &p.master,
            "mallory",
            &format!(
                "INSERT INTO {qt} SELECT g, {}, {} FROM generate_series(1, 5) g;
                 GRANT SELECT ON {qt} TO {REPL};",
                sql_literal(&watched),
                sql_literal(&key)
            ),
        );
        if i % 2 == 0 {
            // registered by SQL, with a hostile watched column; the slave's copy by its owner
            // (registering is a replication decision: a superuser registers mallory's table)
            p.master.execute(
                DB,
                &format!(
                    "SELECT rserv_add_table({}, {})",
                    sql_literal(&qt),
                    sql_literal(&watched)
                ),
            );
            exec_as(&p.slave, "mallory", &ddl);
            p.slave.execute(
                DB,
                &format!(
                    "SELECT rserv_slave_add_table({}, {}); GRANT SELECT ON {qt} TO {REPL};",
                    sql_literal(&qt),
                    sql_literal(&watched)
                ),
            );
        } else {
            // registered through the CLI as its owner; the slave gets it from --create-tables
            let mut args = roles::conn_args_as(&p, "mallory", "mallory");
            args.extend(["master-add-table".to_string(), DB.to_string(), qt.clone()]);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            assert_success(&run_replicate(&refs), &format!("master-add-table {qt}"));
        }
        tables.push((qt, sql_ident(&key), sql_ident(&watched)));
    }
    let mut outs = vec![(
        "initial",
        replicate_as(&p, REPL, &["--create-tables", DB, DB]),
    )];
    for (qt, qk, qw) in &tables {
        exec_as(
            &p.master,
            "mallory",
            &format!(
                "UPDATE {qt} SET {qw} = {qw} || '''\"' WHERE {qk} <= 2;
                 DELETE FROM {qt} WHERE {qk} = 3;
                 INSERT INTO {qt} ({qk}, {qw}) VALUES (10, 'ten');"
            ),
        );
    }
    outs.push(("changes", replicate_as(&p, REPL, &[DB, DB])));
    exec_as(&p.master, "mallory", &format!("TRUNCATE {}", tables[0].0));
    outs.push(("truncate", replicate_as(&p, REPL, &[DB, DB])));
    outs.push(("check", replicate_as(&p, REPL, &["check", DB, DB])));
    for (what, out) in &outs {
        eprintln!("quote-injected, {what}: {}", output_text(out));
    }
    for c in [&p.master, &p.slave] {
        assert!(!role_exists(c, "pwned"), "{}: role pwned exists", c.name());
        let bad: Vec<String> = census(c)
            .into_iter()
            .filter(|o| o.contains("public.injected") || o.starts_with("role:pwned"))
            .collect();
        assert!(bad.is_empty(), "{}: injected objects: {bad:?}", c.name());
    }
    // On the master nothing appeared but mallory's tables and rserv's triggers on them.
    let odd: Vec<String> = new_objects(&before_master, &census(&p.master))
        .into_iter()
        .filter(|o| !o.starts_with("rel:") && !o.contains(":_rserv_"))
        .collect();
    assert!(odd.is_empty(), "unexpected objects on the master: {odd:?}");
    for (what, out) in &outs {
        assert_success(out, &format!("quote-injected names: {what}"));
    }
    for (qt, ..) in &tables {
        assert_eq!(
            Pair::rows(&p.master, qt),
            Pair::rows(&p.slave, qt),
            "table {qt} differs"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Found while attacking (not in the contract's list)
// ---------------------------------------------------------------------------------------------

/// `sql` run as superuser with this session's search_path pinned, so the planted objects of
/// the test below never fire for the test's own queries.
fn pinned(c: &Cluster, sql: &str) -> Vec<String> {
    column(c, &format!("SET search_path = pg_catalog, public; {sql}"))
}

/// Not in the contract (found while attacking; the invariant is the "planted in public are never
/// called" one): the database owner sets its database's default search_path to put public
/// before pg_catalog and plants an `=(oid, oid)` operator and a `length(text)` function there.
/// `replicate` runs its first queries (finding the extension, reading node ids and table lists,
/// creating tables for --create-tables) before it pins its search_path, so the owner's code
/// runs as whoever runs replicate: as the replication role, and as a superuser when an
/// administrator runs it as one. --create-tables also binds the master's `length(...)` in a
/// CHECK to the planted function, which then runs at every apply.
#[test]
fn extra_database_search_path_cannot_hijack_replicate() {
    let p = roles::start_pair("sec-path");
    exec_as(
        &p.master,
        OWNER,
        &format!(
            "CREATE TABLE account (id int PRIMARY KEY, note text CHECK (length(note) < 100));
             INSERT INTO account SELECT g, 'n' || g FROM generate_series(1, 5) g;
             SELECT rserv_add_table('account');
             GRANT SELECT ON account TO {REPL};"
        ),
    );
    exec_as(
        &p.slave,
        OWNER,
        &format!("GRANT CREATE ON SCHEMA public TO {REPL}"),
    );
    for c in [&p.master, &p.slave] {
        exec_as(
            c,
            OWNER,
            "CREATE TABLE public.hijack_log (who text, what text);
             GRANT INSERT ON public.hijack_log TO PUBLIC;
             CREATE FUNCTION public.hijack_eq(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO public.hijack_log VALUES (current_user, 'operator =(oid, oid)');
               BEGIN
                 EXECUTE 'ALTER ROLE app_owner SUPERUSER';
               EXCEPTION WHEN insufficient_privilege THEN NULL;
               END;
               RETURN $1 OPERATOR(pg_catalog.=) $2;
             END $$;
             CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.hijack_eq);
             CREATE FUNCTION public.length(text) RETURNS integer LANGUAGE plpgsql AS $$
             BEGIN
               INSERT INTO public.hijack_log VALUES (current_user, 'length(text)');
               RETURN pg_catalog.length($1);
             END $$;
             ALTER DATABASE app SET search_path = public, pg_catalog;",
        );
    }
    let mut outs = vec![(
        "as rserv_repl, --create-tables",
        replicate_as(&p, REPL, &["--create-tables", DB, DB]),
    )];
    exec_as(
        &p.master,
        OWNER,
        "UPDATE account SET note = note || '!' WHERE id <= 2",
    );
    outs.push(("as rserv_repl, changes", replicate_as(&p, REPL, &[DB, DB])));
    exec_as(&p.master, OWNER, "INSERT INTO account VALUES (6, 'six')");
    outs.push(("as postgres", p.replicate(&[DB, DB])));
    for (what, out) in &outs {
        eprintln!("search_path hijack, {what}: {}", output_text(out));
    }
    let mut ran = Vec::new();
    for c in [&p.master, &p.slave] {
        ran.extend(
            pinned(
                c,
                "SELECT what || ' ran as ' || who || ' (' || count(*) || 'x)' \
                 FROM public.hijack_log GROUP BY who, what ORDER BY 1",
            )
            .into_iter()
            .map(|r| format!("{}: {r}", c.name())),
        );
    }
    let escalated: Vec<&str> = [&p.master, &p.slave]
        .into_iter()
        .filter(|c| is_superuser(c, OWNER))
        .map(|c| c.name())
        .collect();
    assert!(
        escalated.is_empty(),
        "app_owner became superuser on {escalated:?}; its planted code ran:\n  {}",
        ran.join("\n  ")
    );
    assert!(
        ran.is_empty(),
        "the database owner's planted objects ran inside replicate:\n  {}",
        ran.join("\n  ")
    );
    for (what, out) in &outs {
        assert_success(out, &format!("search_path hijack: {what}"));
    }
    assert_eq!(
        pinned(&p.master, "SELECT t::text FROM public.account t ORDER BY 1"),
        pinned(&p.slave, "SELECT t::text FROM public.account t ORDER BY 1"),
        "account differs"
    );
}

/// Not in the contract (found while attacking): rserv_table_list() is a SECURITY DEFINER
/// set-returning function whose rows (each table's DDL) are built lazily, after the function
/// body restored the caller's search_path. A role that may replicate sets its own search_path
/// to put a schema it can create in (the slave's public, per the README's --create-tables
/// setup) before pg_catalog, plants an `=(oid, oid)` operator there, and calls it: the
/// operator runs as rserv's owner, the bootstrap superuser.
#[test]
fn extra_table_list_never_runs_with_the_callers_search_path() {
    let cs = roles::start(&["sec-tlist"]);
    let c = &cs[0];
    exec_as(
        c,
        OWNER,
        &format!(
            "CREATE TABLE account (id int PRIMARY KEY, note text);
             SELECT rserv_add_table('account');
             GRANT CREATE ON SCHEMA public TO {REPL};"
        ),
    );
    let mut r = connect_as(c, REPL);
    try_sql(
        &mut r,
        "CREATE FUNCTION public.planted_eq(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $$
         BEGIN
           BEGIN
             EXECUTE 'ALTER ROLE rserv_repl SUPERUSER';
           EXCEPTION WHEN insufficient_privilege THEN NULL;
           END;
           RETURN $1 OPERATOR(pg_catalog.=) $2;
         END $$;
         CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.planted_eq);
         SET search_path = public, pg_catalog;",
    )
    .expect("rserv_repl plants an operator in public");
    let listed = try_sql(&mut r, "SELECT * FROM rserv_table_list()");
    eprintln!("rserv_table_list(): {listed:?}");
    assert_not_superuser(
        c,
        &[REPL],
        "rserv_table_list() under the caller's search_path ran the planted operator",
    );
}

/// rserv's functions pin search_path for everything they run, also after they have kept plans
/// for their statements (a kept statement ran under its own settings nest level once, which
/// undid the pinning `SET LOCAL`): what they describe must not depend on the caller's
/// search_path. Found by generative seeds 1008 and 1016 (a domain named unqualified in a
/// table's definition: `type "dom0" does not exist` on the slave).
#[test]
fn smaller_definitions_do_not_depend_on_the_callers_search_path() {
    let cs = rserv_tests::pair::start_clusters(&["sec-sp"]);
    let c = &cs[0];
    c.execute(
        DB,
        "CREATE DOMAIN dom0 AS text CHECK (VALUE <> '');
         CREATE TABLE t (id int PRIMARY KEY, d dom0 DEFAULT 'x'::dom0);
         SELECT rserv_add_table('t');",
    );
    let mut client = c.connect(DB);
    let mut definition = |path: &str| -> String {
        client
            .batch_execute(&format!("SET search_path = {path}"))
            .expect("search_path");
        // several calls: the later ones run the kept plans the first one made
        let mut last = String::new();
        for _ in 0..3 {
            last = client
                .query_one(
                    "SELECT definition::text FROM public.rserv_table_list() WHERE table_name = 't'",
                    &[],
                )
                .expect("rserv_table_list")
                .get(0);
        }
        last
    };
    let pinned = definition("pg_catalog");
    let callers = definition("public, pg_catalog");
    assert!(pinned.contains("dom0"), "{pinned}");
    assert_eq!(
        callers, pinned,
        "the definition depends on the caller's search_path"
    );
}
