//! Least-privilege fixtures for security tests: the contract's roles on each cluster,
//! connecting as one of them, and probes of what an attack left behind (superusers, objects).
//!
//! Roles (see the Security section of the contract): `app_owner` owns database `app` and
//! creates the extension there (not a superuser); `rserv_repl` is the replication role,
//! allowed with `rserv_grant_replication`; table owners and attackers are plain LOGIN roles
//! made with [`create_roles`].

use crate::pair::{Pair, DB};
use crate::{describe_pg_error, run_replicate, Cluster};
use postgres::{Client, Config, NoTls};
use std::collections::BTreeSet;
use std::process::Output;
use std::time::Duration;

/// The database owner who creates the extension.
pub const OWNER: &str = "app_owner";
/// The replication role.
pub const REPL: &str = "rserv_repl";

/// Starts one cluster per name, in parallel, each with the standard roles ([`setup`]).
pub fn start(names: &[&str]) -> Vec<Cluster> {
    let clusters = std::thread::scope(|sc| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| sc.spawn(move || Cluster::start(n)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("cluster start"))
            .collect::<Vec<_>>()
    });
    for c in &clusters {
        setup(c);
    }
    clusters
}

/// A master and a slave (started in parallel), each set up with [`setup`].
pub fn start_pair(name: &str) -> Pair {
    let mut cs = start(&[&format!("{name}-m"), &format!("{name}-s")]);
    let slave = cs.pop().expect("slave");
    let master = cs.pop().expect("master");
    Pair { master, slave }
}

/// The standard roles on one cluster: `app_owner` owns database `app` and creates the
/// extension there (trusted: no superuser), then allows `rserv_repl` to replicate.
pub fn setup(c: &Cluster) {
    c.execute(
        "postgres",
        &format!("CREATE ROLE {OWNER} LOGIN; CREATE ROLE {REPL} LOGIN"),
    );
    c.execute("postgres", &format!("CREATE DATABASE {DB} OWNER {OWNER}"));
    exec_as(
        c,
        OWNER,
        &format!("CREATE EXTENSION rserv; SELECT rserv_grant_replication('{REPL}')"),
    );
}

/// A cluster whose database `app` has rserv in a schema of its own, `rs` (created by the
/// superuser), and roles `alice` (may create tables in public) and `clerk`, neither with USAGE
/// on `rs`.
pub fn start_with_rserv_in_its_own_schema(name: &str) -> Cluster {
    let c = Cluster::start(name);
    c.execute("postgres", &format!("CREATE DATABASE {DB}"));
    c.execute(
        DB,
        "CREATE ROLE alice LOGIN; CREATE ROLE clerk LOGIN;
         CREATE SCHEMA rs; CREATE EXTENSION rserv SCHEMA rs;
         GRANT CREATE ON SCHEMA public TO alice;",
    );
    c
}

/// Plain LOGIN roles (table owners, attackers); each may create objects in schema public
/// of `app` (granted by the database owner).
pub fn create_roles(c: &Cluster, names: &[&str]) {
    for n in names {
        c.execute("postgres", &format!("CREATE ROLE {n} LOGIN"));
        exec_as(c, OWNER, &format!("GRANT CREATE ON SCHEMA public TO {n}"));
    }
}

/// Connects to `app` as `user` over the cluster's unix socket.
pub fn connect_as(c: &Cluster, user: &str) -> Client {
    let mut config = Config::new();
    config
        .host_path(c.socket_dir())
        .port(c.port())
        .user(user)
        .dbname(DB)
        .application_name("rserv-security-tests")
        .connect_timeout(Duration::from_secs(30));
    config.connect(NoTls).unwrap_or_else(|e| {
        panic!(
            "cluster {}: cannot connect as {user}: {}",
            c.name(),
            describe_pg_error(&e)
        )
    })
}

/// Runs `sql` as `user` on `app`; panics with the error if it fails.
pub fn exec_as(c: &Cluster, user: &str, sql: &str) {
    if let Err(e) = connect_as(c, user).batch_execute(sql) {
        panic!(
            "cluster {} as {user}: SQL failed: {}\n--- SQL ---\n{sql}\n--- end SQL ---",
            c.name(),
            describe_pg_error(&e)
        );
    }
}

/// Runs `sql` on `client`, returning the full error text on failure.
pub fn try_sql(client: &mut Client, sql: &str) -> Result<(), String> {
    client.batch_execute(sql).map_err(|e| describe_pg_error(&e))
}

/// The first column of the first row of `sql` as text (None: no row or NULL), or the error.
pub fn try_value(client: &mut Client, sql: &str) -> Result<Option<String>, String> {
    let msgs = client
        .simple_query(sql)
        .map_err(|e| describe_pg_error(&e))?;
    for m in msgs {
        if let postgres::SimpleQueryMessage::Row(r) = m {
            return Ok(r.get(0).map(str::to_owned));
        }
    }
    Ok(None)
}

/// The first column of the first row of `sql`, run as superuser on `app`.
pub fn value(c: &Cluster, sql: &str) -> Option<String> {
    c.query_strings(DB, sql)
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
}

/// Whether `role` exists and is a superuser (read as the bootstrap superuser).
pub fn is_superuser(c: &Cluster, role: &str) -> bool {
    let rows = c.query_strings(
        "postgres",
        &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{role}'"),
    );
    rows.first()
        .and_then(|r| r[0].as_deref())
        .is_some_and(|v| v == "t")
}

/// Whether a role of that name exists.
pub fn role_exists(c: &Cluster, role: &str) -> bool {
    !c.query_strings(
        "postgres",
        &format!(
            "SELECT 1 FROM pg_roles WHERE rolname = {}",
            sql_literal(role)
        ),
    )
    .is_empty()
}

/// Panics unless none of `roles` is a superuser on `c`.
pub fn assert_not_superuser(c: &Cluster, roles: &[&str], what: &str) {
    let escalated: Vec<&str> = roles
        .iter()
        .copied()
        .filter(|r| is_superuser(c, r))
        .collect();
    assert!(
        escalated.is_empty(),
        "{what}: {} became superuser on cluster {}",
        escalated.join(", "),
        c.name()
    );
}

/// `'…'` with quotes doubled (standard_conforming_strings is on in every test cluster).
pub fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"…"` with quotes doubled.
pub fn sql_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Command-line connection flags for `replicate` to this pair as `master_user`/`slave_user`.
pub fn conn_args_as(p: &Pair, master_user: &str, slave_user: &str) -> Vec<String> {
    vec![
        format!("--masterhost={}", p.master.socket_dir().display()),
        format!("--masterport={}", p.master.port()),
        format!("--masteruser={master_user}"),
        format!("--slavehost={}", p.slave.socket_dir().display()),
        format!("--slaveport={}", p.slave.port()),
        format!("--slaveuser={slave_user}"),
    ]
}

/// Runs `replicate` as `user` on both sides with `args` after the connection flags.
pub fn replicate_as(p: &Pair, user: &str, args: &[&str]) -> Output {
    let mut all = conn_args_as(p, user, user);
    all.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    run_replicate(&refs)
}

/// stdout and stderr of a finished `replicate`, for messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every object of database `app` (and every role) that an injected statement could have
/// made, one line each (`kind:identity`): roles and memberships, schemas, relations outside
/// the system schemas (indexes, sequences and TOAST tables named after their table), functions,
/// triggers, event triggers, rules, policies, casts, operators, types that are not row types,
/// large objects, extensions, per-role settings, databases, publications. Temporary objects
/// are left out (they die with their session).
pub fn census(c: &Cluster) -> BTreeSet<String> {
    const SQL: &str = "
      WITH ns AS (SELECT oid, nspname FROM pg_namespace
                   WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                     AND nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast_temp%')
      SELECT 'role:' || rolname || ':' || rolsuper FROM pg_roles
      UNION ALL SELECT 'member:' || roleid::regrole || ':' || member::regrole FROM pg_auth_members
      UNION ALL SELECT 'schema:' || nspname FROM pg_namespace
                 WHERE nspname NOT LIKE 'pg_temp%' AND nspname NOT LIKE 'pg_toast_temp%'
      UNION ALL SELECT 'rel:' || coalesce((SELECT i.indrelid::regclass::text || '/'
                                             FROM pg_index i WHERE i.indexrelid = c.oid), '')
                       || n.nspname || '.' || c.relname || ':' || c.relkind::text
                  FROM pg_class c JOIN ns n ON n.oid = c.relnamespace
      UNION ALL SELECT 'func:' || p.oid::regprocedure FROM pg_proc p JOIN ns n ON n.oid = p.pronamespace
      UNION ALL SELECT 'trigger:' || t.tgrelid::regclass || ':' || t.tgname
                  FROM pg_trigger t WHERE NOT t.tgisinternal
      UNION ALL SELECT 'evtrigger:' || evtname FROM pg_event_trigger
      UNION ALL SELECT 'rule:' || r.ev_class::regclass || ':' || r.rulename FROM pg_rewrite r
                  JOIN pg_class c ON c.oid = r.ev_class JOIN ns n ON n.oid = c.relnamespace
      UNION ALL SELECT 'policy:' || polrelid::regclass || ':' || polname FROM pg_policy
      UNION ALL SELECT 'cast:' || castsource::regtype || '->' || casttarget::regtype FROM pg_cast
                 WHERE oid >= 16384
      UNION ALL SELECT 'operator:' || o.oid::regoperator FROM pg_operator o
                  JOIN ns n ON n.oid = o.oprnamespace
      UNION ALL SELECT 'type:' || t.oid::regtype FROM pg_type t JOIN ns n ON n.oid = t.typnamespace
                 WHERE t.typrelid = 0
                   AND NOT EXISTS (SELECT 1 FROM pg_type e WHERE e.oid = t.typelem AND e.typrelid <> 0)
      UNION ALL SELECT 'largeobject:' || oid FROM pg_largeobject_metadata
      UNION ALL SELECT 'extension:' || extname FROM pg_extension
      UNION ALL SELECT 'setting:' || setdatabase || ':' || setrole || ':' || array_to_string(setconfig, ',')
                  FROM pg_db_role_setting
      UNION ALL SELECT 'database:' || datname FROM pg_database
      UNION ALL SELECT 'publication:' || pubname FROM pg_publication";
    c.query_strings(DB, SQL)
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .collect()
}

/// Objects in `after` that are not in `before`.
pub fn new_objects(before: &BTreeSet<String>, after: &BTreeSet<String>) -> Vec<String> {
    after.difference(before).cloned().collect()
}

/// Relations in the session's own temporary schema: (name, kind).
pub fn temp_relations(client: &mut Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT c.relname::text, c.relkind::text FROM pg_catalog.pg_class c \
             WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() AND c.relkind IN ('r', 'v', 'p') \
             ORDER BY 1",
            &[],
        )
        .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        .unwrap_or_default()
}
