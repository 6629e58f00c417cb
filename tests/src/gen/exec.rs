//! The executor: runs a schedule on fresh databases of two shared clusters (the master's, and
//! the slaves' with one database per slave), with one driver thread, and checks the oracle.
//!
//! Oracle: before every cycle the master is read (superuser, fixed text settings); inside the
//! cycle's prepare transaction, at its snapshot, the snapshot is exported and the master is
//! read again through it (so row-level security cannot hide rows from the oracle); right after
//! the cycle the slave must equal that state (for tables with watched columns: key, watched
//! and unique columns). The read before the cycle must equal the one at the snapshot (the
//! driver committed nothing in between). Every third cycle goes through a snapshot file, the
//! others stream. At the end every transaction is committed, each slave runs two more cycles
//! and `replicate check`.

use super::schedule::{Schedule, Step, WRITER_SETTINGS};
use super::schema::{
    self, change_key_sql, delete_sql, dml_target, insert_sql, literal, master_ddl, qualified,
    slave_ddl, update_sql, Catalogue, LiveTable,
};
use crate::Cluster;
use postgres::{Client, Config, IsolationLevel, NoTls};
use replicate::cycle::{self, CycleOptions, Endpoints, Outcome, Session};
use replicate::rserv::Rserv;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

pub const OWNER: &str = "gen_owner";
pub const REPL: &str = "gen_repl";
const CANONICAL: &str = "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; \
     SET extra_float_digits = 3; SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'";
const TIMEOUTS: &str = "SET lock_timeout = '3s'; SET statement_timeout = '120s'";

/// Two clusters shared by every schedule a test runs: the master's, and the slaves' (one
/// database per slave). Each schedule gets fresh databases.
pub struct Env {
    pub master: Cluster,
    pub slave: Cluster,
    counter: AtomicU32,
}

impl Env {
    pub fn start(name: &str) -> Env {
        let settings: &[(&str, &str)] = &[
            ("max_prepared_transactions", "10"),
            ("max_connections", "60"),
        ];
        let (m, s) = std::thread::scope(|sc| {
            let m = sc.spawn(|| Cluster::start_with(&format!("{name}-m"), settings));
            let s = sc.spawn(|| Cluster::start_with(&format!("{name}-s"), settings));
            (
                m.join().expect("master cluster"),
                s.join().expect("slave cluster"),
            )
        });
        for c in [&m, &s] {
            c.execute(
                "postgres",
                &format!("CREATE ROLE {OWNER} LOGIN; CREATE ROLE {REPL} LOGIN"),
            );
        }
        Env {
            master: m,
            slave: s,
            counter: AtomicU32::new(0),
        }
    }

    fn ensure_running(&self) {
        for c in [&self.master, &self.slave] {
            if try_connect(c, "postgres", "postgres").is_err() {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.start_again()));
            }
        }
    }

    /// Drop a schedule's database (rolling back its prepared transactions first).
    fn drop_db(&self, c: &Cluster, db: &str) {
        if let Ok(mut cl) = try_connect(c, db, "postgres") {
            if let Ok(rows) = cl.query(
                "SELECT gid FROM pg_catalog.pg_prepared_xacts WHERE database = current_database()",
                &[],
            ) {
                for r in rows {
                    let gid: String = r.get(0);
                    let _ = cl.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"));
                }
            }
        }
        if let Ok(mut cl) = try_connect(c, "postgres", "postgres") {
            let _ = cl.batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                db.replace('"', "\"\"")
            ));
        }
    }
}

fn try_connect(c: &Cluster, db: &str, user: &str) -> Result<Client, postgres::Error> {
    let mut cfg = Config::new();
    cfg.host_path(c.socket_dir())
        .port(c.port())
        .user(user)
        .dbname(db)
        .application_name("rserv-gen")
        .connect_timeout(Duration::from_secs(30));
    cfg.connect(NoTls)
}

/// What went wrong, where. `signature` is what the shrinker keeps constant.
#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: Kind,
    /// index of the schedule step (None: setup or the final phase)
    pub step: Option<usize>,
    pub detail: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// the slave differs from the master as of the change set's snapshot
    Diverged { slave: usize, table: usize },
    /// after a cycle racing a TRUNCATE, the slave equals neither master state
    TruncateRace { slave: usize, table: usize },
    /// the prepare's snapshot is not the state the driver saw just before the cycle
    SnapshotMismatch { table: usize },
    /// a cycle failed (message: SQLSTATE and first words)
    CycleError { slave: usize, message: String },
    /// `replicate check` found a difference
    CheckDiffers { slave: usize, table: usize },
    /// `replicate check` calls a table with watched columns different without saying why
    CheckReport { slave: usize, table: usize },
    /// a statement of the workload failed on the master
    MasterError { message: String },
    /// setting up the databases failed (e.g. a registration was refused)
    Setup { message: String },
    /// a statement hit the lock_timeout: the generator let the driver wait for itself
    Stuck,
    /// anything else (a panic in the harness, a lost connection)
    Harness { message: String },
}

impl Failure {
    pub fn signature(&self) -> String {
        match &self.kind {
            Kind::Diverged { slave, table } => format!("diverged: slave {} t{table}", slave + 1),
            Kind::TruncateRace { slave, table } => {
                format!("truncate race: slave {} t{table}", slave + 1)
            }
            Kind::SnapshotMismatch { table } => format!("snapshot mismatch t{table}"),
            Kind::CycleError { slave, message } => {
                format!("cycle error: slave {}: {message}", slave + 1)
            }
            Kind::CheckDiffers { slave, table } => {
                format!("check differs: slave {} t{table}", slave + 1)
            }
            Kind::CheckReport { slave, table } => {
                format!(
                    "check report misses the watched-columns note: slave {} t{table}",
                    slave + 1
                )
            }
            Kind::MasterError { message } => format!("master statement failed: {message}"),
            Kind::Setup { message } => format!("setup failed: {message}"),
            Kind::Stuck => "driver waited for itself (lock_timeout)".into(),
            Kind::Harness { message } => format!("harness: {message}"),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.step {
            Some(i) => write!(f, "step #{i}: {}\n{}", self.signature(), self.detail),
            None => write!(
                f,
                "final phase (or setup): {}\n{}",
                self.signature(),
                self.detail
            ),
        }
    }
}

/// SQLSTATE and the first words of an error: stable across shrinking (names and numbers in
/// the rest of the message change).
fn short(sqlstate: Option<&str>, message: &str) -> String {
    let words: Vec<&str> = message
        .split_whitespace()
        .filter(|w| !w.contains('"') && !w.contains('\''))
        .take(4)
        .collect();
    let words: String = words
        .join(" ")
        .chars()
        .map(|c| if c.is_ascii_digit() { 'N' } else { c })
        .collect();
    match sqlstate {
        Some(s) => format!("{s} {words}"),
        None => words,
    }
}

fn pg_short(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => short(Some(db.code().code()), db.message()),
        None => short(None, &e.to_string()),
    }
}

fn repl_short(e: &replicate::error::Error) -> String {
    match e {
        replicate::error::Error::Db { source, .. } => pg_short(source),
        other => short(None, &other.to_string()),
    }
}

fn is_lock_timeout(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

/// Quotes identifiers with the server's quote_ident(), caching the answers.
struct Quoter {
    client: Option<Client>,
    cache: HashMap<String, String>,
}

impl Quoter {
    fn q(&mut self, env: &Env, s: &str) -> String {
        if let Some(v) = self.cache.get(s) {
            return v.clone();
        }
        for _ in 0..3 {
            if self.client.is_none() {
                self.client = try_connect(&env.slave, "postgres", "postgres")
                    .or_else(|_| try_connect(&env.master, "postgres", "postgres"))
                    .ok();
            }
            let Some(c) = self.client.as_mut() else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            match c.query_one("SELECT pg_catalog.quote_ident($1)", &[&s]) {
                Ok(r) => {
                    let v: String = r.get(0);
                    self.cache.insert(s.to_string(), v.clone());
                    return v;
                }
                Err(_) => self.client = None,
            }
        }
        panic!("cannot reach a server to quote {s:?}");
    }
}

/// Rows of one table as text, sorted; columns as in `Probe::cols`.
type Rows = Vec<Vec<Option<String>>>;
type State = BTreeMap<(usize, usize), Rows>;

/// How to read one physical table: its SELECT and the column ids it returns.
#[derive(Clone)]
struct Probe {
    t: usize,
    p: usize,
    /// quoted qualified name
    name: String,
    cols: Vec<usize>,
    sql: String,
}

fn read_state(
    c: &mut impl postgres::GenericClient,
    probes: &[Probe],
) -> Result<State, postgres::Error> {
    let mut out = State::new();
    for pr in probes {
        let exists: bool = c
            .query_one("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[&pr.name])?
            .get(0);
        if !exists {
            continue;
        }
        let mut rows: Rows = c
            .query(pr.sql.as_str(), &[])?
            .iter()
            .map(|r| {
                (0..pr.cols.len())
                    .map(|i| r.get::<_, Option<String>>(i))
                    .collect()
            })
            .collect();
        rows.sort();
        out.insert((pr.t, pr.p), rows);
    }
    Ok(out)
}

struct Writer {
    client: Option<Client>,
    in_txn: bool,
    savepoints: BTreeSet<usize>,
}

struct Repl {
    master: Client,
    slave: Client,
    mrs: Rserv,
    srs: Rserv,
}

#[derive(Default)]
struct SlaveState {
    joined: bool,
    create_tables: bool,
    /// logical tables that exist on this slave
    created: BTreeSet<usize>,
    /// physical tables registered on this slave
    registered: BTreeSet<(usize, usize)>,
    /// ALTER TABLE actions (table, physical table, action) committed on the master since this
    /// slave's last cycle: they reach it through the stream, unless it stops receiving that
    /// physical table first (then it is given them by hand, as its user would)
    unapplied_ddl: Vec<(usize, usize, String)>,
}

/// Counts for the report.
#[derive(Default, Debug, Clone, Copy)]
pub struct Stats {
    pub steps: usize,
    pub cycles: usize,
    pub applied: usize,
    pub compared_rows: usize,
}

pub struct Run<'a> {
    env: &'a Env,
    sch: &'a Schedule,
    cat: Catalogue,
    dbs: [String; 3],
    ext: String,
    role: String,
    quoter: Quoter,
    live: Vec<LiveTable>,
    writers: Vec<Writer>,
    mutil: Option<Client>,
    moracle: Option<Client>,
    mclean: Option<Client>,
    sutil: [Option<Client>; 2],
    soracle: [Option<Client>; 2],
    repl: [Option<Repl>; 2],
    prepared: BTreeSet<usize>,
    slaves: [SlaveState; 2],
    bypass: bool,
    step: Option<usize>,
    stats: Stats,
}

fn fail(kind: Kind, step: Option<usize>, detail: impl Into<String>) -> Failure {
    Failure {
        kind,
        step,
        detail: detail.into(),
    }
}

/// Run a schedule on fresh databases; Ok(stats) when every check held.
pub fn execute(env: &Env, sch: &Schedule) -> Result<Stats, Failure> {
    env.ensure_running();
    let n = env.counter.fetch_add(1, Ordering::Relaxed);
    let base = format!("g{}_{:x}", n, sch.seed & 0xffff_ffff);
    let dbs = [
        format!("{base}_m"),
        format!("{base}_s1"),
        format!("{base}_s2"),
    ];
    let ext_schema = sch.ext_schema.clone().unwrap_or_else(|| "public".into());
    let mut run = Run {
        env,
        sch,
        cat: sch.types.clone(),
        dbs: dbs.clone(),
        ext: String::new(),
        role: if sch.superuser {
            "postgres".into()
        } else {
            REPL.into()
        },
        quoter: Quoter {
            client: None,
            cache: HashMap::new(),
        },
        live: sch.tables.iter().map(LiveTable::from_spec).collect(),
        writers: sch
            .writers
            .iter()
            .map(|_| Writer {
                client: None,
                in_txn: false,
                savepoints: BTreeSet::new(),
            })
            .collect(),
        mutil: None,
        moracle: None,
        mclean: None,
        sutil: [None, None],
        soracle: [None, None],
        repl: [None, None],
        prepared: BTreeSet::new(),
        slaves: [SlaveState::default(), SlaveState::default()],
        bypass: sch.superuser || sch.bypass_rls,
        step: None,
        stats: Stats::default(),
    };
    run.ext = run.q(&ext_schema);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.run_all()))
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(fail(
                Kind::Harness {
                    message: "panic".into(),
                },
                None,
                msg,
            ))
        });
    let stats = run.stats;
    drop(run);
    let t0 = std::time::Instant::now();
    if std::env::var_os("RSERV_GEN_KEEP_DBS").is_none() {
        env.ensure_running();
        std::thread::scope(|sc| {
            sc.spawn(|| env.drop_db(&env.master, &dbs[0]));
            env.drop_db(&env.slave, &dbs[1]);
            env.drop_db(&env.slave, &dbs[2]);
        });
    }
    if trace() {
        eprintln!("rserv-gen: dropping the databases took {:?}", t0.elapsed());
    }
    result.map(|()| stats)
}

impl<'a> Run<'a> {
    fn q(&mut self, s: &str) -> String {
        self.quoter.q(self.env, s)
    }

    fn harness(&self, what: &str, e: impl std::fmt::Display) -> Failure {
        fail(
            Kind::Harness {
                message: what.to_string(),
            },
            self.step,
            format!("{what}: {e}"),
        )
    }

    fn connect(&self, master: bool, db: &str, user: &str, setup: &str) -> Result<Client, Failure> {
        let c = if master {
            &self.env.master
        } else {
            &self.env.slave
        };
        let mut cl = try_connect(c, db, user)
            .map_err(|e| self.harness(&format!("connect to {db} as {user}"), e))?;
        cl.batch_execute(setup)
            .map_err(|e| self.harness("session settings", e))?;
        Ok(cl)
    }

    fn mutil(&mut self) -> Result<&mut Client, Failure> {
        if self.mutil.is_none() {
            self.mutil = Some(self.connect(true, &self.dbs[0].clone(), OWNER, TIMEOUTS)?);
        }
        Ok(self.mutil.as_mut().expect("connected"))
    }

    fn moracle(&mut self) -> Result<&mut Client, Failure> {
        if self.moracle.is_none() {
            let setup = format!("{CANONICAL}; {TIMEOUTS}");
            self.moracle = Some(self.connect(true, &self.dbs[0].clone(), "postgres", &setup)?);
        }
        Ok(self.moracle.as_mut().expect("connected"))
    }

    fn mclean(&mut self) -> Result<&mut Client, Failure> {
        if self.mclean.is_none() {
            let role = self.role.clone();
            self.mclean = Some(self.connect(true, &self.dbs[0].clone(), &role, TIMEOUTS)?);
        }
        Ok(self.mclean.as_mut().expect("connected"))
    }

    /// The slave's table owner: gen_owner, or under --create-tables the replication role
    /// (which creates the tables there).
    fn sutil(&mut self, s: usize) -> Result<&mut Client, Failure> {
        if self.sutil[s].is_none() {
            let owner = if self.slaves[s].create_tables {
                self.role.clone()
            } else {
                OWNER.to_string()
            };
            self.sutil[s] =
                Some(self.connect(false, &self.dbs[1 + s].clone(), &owner, TIMEOUTS)?);
        }
        Ok(self.sutil[s].as_mut().expect("connected"))
    }

    fn soracle(&mut self, s: usize) -> Result<&mut Client, Failure> {
        if self.soracle[s].is_none() {
            let setup = format!("{CANONICAL}; {TIMEOUTS}");
            self.soracle[s] =
                Some(self.connect(false, &self.dbs[1 + s].clone(), "postgres", &setup)?);
        }
        Ok(self.soracle[s].as_mut().expect("connected"))
    }

    fn writer(&mut self, c: usize) -> Result<&mut Client, Failure> {
        if self.writers[c].client.is_none() {
            let settings = WRITER_SETTINGS[self.sch.writers[c] % WRITER_SETTINGS.len()];
            let setup = format!("{TIMEOUTS}; {settings}");
            let cl = self.connect(true, &self.dbs[0].clone(), OWNER, &setup)?;
            self.writers[c].client = Some(cl);
        }
        Ok(self.writers[c].client.as_mut().expect("connected"))
    }

    fn ensure_repl(&mut self, s: usize) -> Result<(), Failure> {
        if self.repl[s].is_some() {
            return Ok(());
        }
        let role = self.role.clone();
        let mut master = self.connect(true, &self.dbs[0].clone(), &role, TIMEOUTS)?;
        let mut slave = self.connect(false, &self.dbs[1 + s].clone(), &role, TIMEOUTS)?;
        let mrs =
            Rserv::locate(&mut master, "master", "m").map_err(|e| self.harness("rserv", e))?;
        let srs = Rserv::locate(&mut slave, "slave", "s").map_err(|e| self.harness("rserv", e))?;
        self.repl[s] = Some(Repl {
            master,
            slave,
            mrs,
            srs,
        });
        Ok(())
    }

    /// Run `sql` on a client; errors become MasterError (or Stuck on a lock timeout).
    fn sql_on(&self, c: &mut Client, sql: &str, slave: bool) -> Result<(), Failure> {
        c.batch_execute(sql).map_err(|e| {
            let kind = if is_lock_timeout(&e) {
                Kind::Stuck
            } else if slave {
                Kind::Harness {
                    message: format!("slave statement: {}", pg_short(&e)),
                }
            } else {
                Kind::MasterError {
                    message: pg_short(&e),
                }
            };
            fail(
                kind,
                self.step,
                format!("{}\n--- SQL ---\n{sql}", crate::describe_pg_error(&e)),
            )
        })
    }

    fn master_sql(&mut self, sql: &str) -> Result<(), Failure> {
        let mut c = self.mutil.take();
        if c.is_none() {
            self.mutil()?;
            c = self.mutil.take();
        }
        let mut cl = c.expect("connected");
        let r = self.sql_on(&mut cl, sql, false);
        self.mutil = Some(cl);
        r
    }

    fn writer_sql(&mut self, w: usize, sql: &str) -> Result<(), Failure> {
        self.writer(w)?;
        let mut cl = self.writers[w].client.take().expect("connected");
        let r = self.sql_on(&mut cl, sql, false);
        self.writers[w].client = Some(cl);
        if r.is_err() {
            // the transaction (if any) is gone
            self.writers[w].in_txn = false;
            self.writers[w].savepoints.clear();
        }
        r
    }

    fn slave_sql(&mut self, s: usize, sql: &str) -> Result<(), Failure> {
        self.sutil(s)?;
        let mut cl = self.sutil[s].take().expect("connected");
        let r = self.sql_on(&mut cl, sql, true);
        self.sutil[s] = Some(cl);
        r
    }

    fn gid(&self, gid: usize) -> String {
        format!("{}_g{gid}", self.dbs[0])
    }

    // -----------------------------------------------------------------------------------------
    // setup
    // -----------------------------------------------------------------------------------------

    /// The statements that prepare a new database: schemas, the extension, the replication
    /// grant, the types.
    fn db_setup_sql(&mut self) -> String {
        let mut sql = Vec::new();
        for s in self.sch.schemas.clone() {
            sql.push(format!("CREATE SCHEMA {}", self.q(&s)));
        }
        let ext = match self.sch.ext_schema.clone() {
            Some(e) => {
                let qe = self.q(&e);
                sql.push(format!("CREATE SCHEMA {qe}"));
                format!(" SCHEMA {qe}")
            }
            None => String::new(),
        };
        sql.push(format!("CREATE EXTENSION rserv{ext}"));
        sql.push(format!(
            "SELECT {}.rserv_grant_replication('{REPL}')",
            self.ext
        ));
        let mut schemas = self.sch.schemas.clone();
        schemas.push("public".into());
        if let Some(e) = &self.sch.ext_schema {
            schemas.push(e.clone());
        }
        for s in schemas {
            sql.push(format!("GRANT USAGE ON SCHEMA {} TO {REPL}", self.q(&s)));
        }
        for e in self.cat.enums.clone() {
            let labels: Vec<String> = e
                .labels
                .iter()
                .map(|l| format!("'{}'", l.replace('\'', "''")))
                .collect();
            sql.push(format!(
                "CREATE TYPE public.{} AS ENUM ({})",
                self.q(&e.name),
                labels.join(", ")
            ));
        }
        for d in self.cat.domains.clone() {
            let cat = self.cat.clone();
            let base = schema::ColType::plain(d.base.clone()).sql(&cat, &mut |s| self.q(s));
            sql.push(format!(
                "CREATE DOMAIN public.{} AS {base} CHECK (pg_catalog.octet_length(VALUE::text) < 1000)",
                self.q(&d.name)
            ));
        }
        sql.join(";\n")
    }

    /// Create databases `which` (0: the master's, 1 and 2: the slaves') side by side.
    fn create_dbs(&mut self, which: &[usize]) -> Result<(), Failure> {
        let sql = self.db_setup_sql();
        let env = self.env;
        let dbs = &self.dbs;
        let results: Vec<Result<(), Failure>> = std::thread::scope(|sc| {
            let handles: Vec<_> = which
                .iter()
                .map(|&w| {
                    let sql = &sql;
                    sc.spawn(move || create_db(env, w == 0, &dbs[w], sql))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(fail(
                            Kind::Harness {
                                message: "creating a database panicked".into(),
                            },
                            None,
                            "",
                        ))
                    })
                })
                .collect()
        });
        results.into_iter().collect()
    }

    fn register_master(&mut self, t: usize) -> Result<(), Failure> {
        let lt = self.live[t].clone();
        for name in lt.physical() {
            let table = qualified(&lt.schema, &name, &mut |s| self.quoter.q(self.env, s));
            let key = lt.alt_key.then(|| {
                lt.key_cols()
                    .iter()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            // rserv_add_table(t) watches every column, rserv_add_table(t, 'k1,k2') names the
            // identity, rserv_add_table(t, 'w') (once per column) the watched columns
            let mut calls: Vec<Option<String>> = Vec::new();
            match (key, lt.watched_now()) {
                (Some(k), _) => calls.push(Some(k)),
                (None, Some(w)) => {
                    for id in w {
                        if let Some(c) = lt.col(id) {
                            calls.push(Some(c.name.clone()));
                        }
                    }
                }
                (None, None) => calls.push(None),
            }
            let ext = self.ext.clone();
            let cl = self.mutil()?;
            for arg in calls {
                cl.execute(
                    &format!("SELECT {ext}.rserv_add_table($1::text::regclass, $2)"),
                    &[&table, &arg],
                )
                .map_err(|e| {
                    fail(
                        Kind::Setup {
                            message: format!("rserv_add_table: {}", pg_short(&e)),
                        },
                        None,
                        format!("{table} {arg:?}: {}", crate::describe_pg_error(&e)),
                    )
                })?;
            }
        }
        Ok(())
    }

    fn remove_master(&mut self, t: usize) -> Result<(), Failure> {
        let lt = self.live[t].clone();
        let ext = self.ext.clone();
        for name in lt.physical() {
            let table = qualified(&lt.schema, &name, &mut |s| self.quoter.q(self.env, s));
            let cl = self.mutil()?;
            cl.execute(
                &format!("SELECT {ext}.rserv_remove_table($1::text::regclass)"),
                &[&table],
            )
            .map_err(|e| {
                fail(
                    Kind::MasterError {
                        message: format!("rserv_remove_table: {}", pg_short(&e)),
                    },
                    self.step,
                    crate::describe_pg_error(&e),
                )
            })?;
        }
        Ok(())
    }

    fn slave_register(&mut self, s: usize, t: usize, p: usize, add: bool) -> Result<(), Failure> {
        let lt = self.live[t].clone();
        let Some(name) = lt.physical().get(p).cloned() else {
            return Ok(());
        };
        let table = qualified(&lt.schema, &name, &mut |x| self.quoter.q(self.env, x));
        let key = lt.alt_key.then(|| {
            lt.key_cols()
                .iter()
                .map(|c| c.name.clone())
                .collect::<Vec<_>>()
                .join(",")
        });
        let ext = self.ext.clone();
        let step = self.step;
        let cl = self.sutil(s)?;
        let r = if add {
            cl.execute(
                &format!("SELECT {ext}.rserv_slave_add_table($1::text::regclass, $2)"),
                &[&table, &key],
            )
        } else {
            cl.execute(
                &format!("SELECT {ext}.rserv_slave_remove_table($1::text::regclass)"),
                &[&table],
            )
        };
        r.map_err(|e| {
            fail(
                Kind::Harness {
                    message: format!("slave registration: {}", pg_short(&e)),
                },
                step,
                format!("{table}: {}", crate::describe_pg_error(&e)),
            )
        })?;
        if add {
            self.slaves[s].registered.insert((t, p));
        } else {
            self.slaves[s].registered.remove(&(t, p));
            // the stream no longer brings this physical table's DDL to this slave (a partition
            // of a partitioned tree follows its registered siblings' DDL, or none is left)
            let tree = self.slave_tree(s, t);
            let others = self.slaves[s].registered.iter().any(|(x, _)| *x == t);
            if !tree || !others {
                let (missed, rest): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut self.slaves[s].unapplied_ddl)
                        .into_iter()
                        .partition(|(x, y, _)| *x == t && (*y == p || tree));
                self.slaves[s].unapplied_ddl = rest;
                let mut done: Vec<String> = Vec::new();
                for (_, _, action) in missed {
                    if tree && done.contains(&action) {
                        continue;
                    }
                    self.alter_slave(s, t, Some(p), &action)?;
                    done.push(action);
                }
            }
        }
        Ok(())
    }

    /// Create the slave's copy of table t (its variant) and register it.
    fn create_slave_table(&mut self, s: usize, t: usize, junk: bool) -> Result<(), Failure> {
        let lt = self.live[t].clone();
        let variant = self.sch.tables[t].slave.clone();
        let cat = self.cat.clone();
        let mut sql = slave_ddl(&lt, &variant, &cat, &mut |x| self.quoter.q(self.env, x));
        if junk && lt.partitions.is_empty() {
            let target = dml_target(&lt, &mut |x| self.quoter.q(self.env, x));
            for k in &variant.junk {
                sql.push(insert_sql(&target, &lt, *k, &Vec::new(), &cat, &mut |x| {
                    self.quoter.q(self.env, x)
                }));
            }
        }
        if !self.sch.superuser {
            for name in lt.physical() {
                let table = qualified(&lt.schema, &name, &mut |x| self.quoter.q(self.env, x));
                sql.push(format!("GRANT SELECT ON {table} TO {REPL}"));
            }
        }
        let joined = sql.join(";\n");
        self.slave_sql(s, &joined).map_err(|f| {
            fail(
                Kind::Setup {
                    message: f.signature(),
                },
                None,
                f.detail,
            )
        })?;
        self.slaves[s].created.insert(t);
        for p in 0..lt.physical().len() {
            self.slave_register(s, t, p, true)?;
        }
        Ok(())
    }

    fn setup(&mut self) -> Result<(), Failure> {
        let t0 = std::time::Instant::now();
        self.create_dbs(&[0, 1])?;
        if trace() {
            eprintln!("rserv-gen: databases created in {:?}", t0.elapsed());
        }
        {
            let role = if self.sch.superuser || self.sch.bypass_rls {
                "BYPASSRLS"
            } else {
                "NOBYPASSRLS"
            };
            self.alter_role(role)?;
        }
        let cat = self.cat.clone();
        for t in 0..self.live.len() {
            if self.live[t].omit {
                continue;
            }
            let spec = self.sch.tables[t].clone();
            let lt = self.live[t].clone();
            let mut sql = master_ddl(&spec, &cat, &mut |x| self.quoter.q(self.env, x));
            let target = dml_target(&lt, &mut |x| self.quoter.q(self.env, x));
            for (k, vals) in &spec.initial {
                sql.push(insert_sql(&target, &lt, *k, vals, &cat, &mut |x| {
                    self.quoter.q(self.env, x)
                }));
            }
            if !self.sch.superuser {
                for name in lt.physical().into_iter().chain([lt.name.clone()]) {
                    let table = qualified(&lt.schema, &name, &mut |x| self.quoter.q(self.env, x));
                    sql.push(format!("GRANT SELECT ON {table} TO {REPL}"));
                }
            }
            let joined = sql.join(";\n");
            self.master_sql(&joined).map_err(|f| {
                fail(
                    Kind::Setup {
                        message: f.signature(),
                    },
                    None,
                    f.detail,
                )
            })?;
            self.register_master(t)?;
            self.create_slave_table(0, t, true)?;
        }
        self.slaves[0].joined = true;
        Ok(())
    }

    fn run_all(&mut self) -> Result<(), Failure> {
        let t0 = std::time::Instant::now();
        self.setup()?;
        if trace() {
            eprintln!("rserv-gen: setup took {:?}", t0.elapsed());
        }
        for (i, step) in self.sch.steps.iter().enumerate() {
            self.step = Some(i);
            if trace() {
                eprintln!("rserv-gen: #{i} {step:?}");
            }
            self.exec(step)?;
            self.stats.steps += 1;
        }
        self.step = None;
        let t0 = std::time::Instant::now();
        let r = self.finale();
        if trace() {
            eprintln!("rserv-gen: final phase took {:?}", t0.elapsed());
        }
        r
    }

    fn finale(&mut self) -> Result<(), Failure> {
        for c in 0..self.writers.len() {
            if self.writers[c].in_txn {
                self.writers[c].in_txn = false;
                self.writer_sql(c, "COMMIT")?;
            }
        }
        for gid in self.prepared.clone() {
            self.exec(&Step::CommitPrepared { gid })?;
        }
        if !self.bypass && self.live.iter().any(|t| !t.omit && t.rls.is_some()) {
            self.exec(&Step::GrantBypass)?;
        }
        for s in 0..2 {
            if self.slaves[s].joined {
                self.cycle(s, true, &[])?;
                self.cycle(s, true, &[])?;
            }
        }
        self.check(0)
    }

    // -----------------------------------------------------------------------------------------
    // steps
    // -----------------------------------------------------------------------------------------

    fn dml_sql(&mut self, step: &Step) -> Option<String> {
        let t = step.table()?;
        if self.live.get(t).is_none_or(|lt| lt.omit) {
            return None;
        }
        let lt = self.live[t].clone();
        let cat = self.cat.clone();
        let q = &mut |x: &str| self.quoter.q(self.env, x);
        let target = dml_target(&lt, q);
        Some(match step {
            Step::Insert { k, vals, .. } => insert_sql(&target, &lt, *k, vals, &cat, q),
            Step::Update { k, vals, .. } => update_sql(&target, &lt, Some(*k), vals, &cat, q)?,
            Step::Delete { k, .. } => delete_sql(&target, &lt, Some(*k), &cat, q),
            Step::ChangeKey { k, to, .. } => change_key_sql(&target, &lt, *k, *to, &cat, q),
            Step::SwapKeys { a, b, tmp, .. } => [
                change_key_sql(&target, &lt, *a, *tmp, &cat, q),
                change_key_sql(&target, &lt, *b, *a, &cat, q),
                change_key_sql(&target, &lt, *tmp, *b, &cat, q),
            ]
            .join(";\n"),
            Step::UpdateAll { vals, .. } => update_sql(&target, &lt, None, vals, &cat, q)?,
            Step::DeleteAll { .. } => delete_sql(&target, &lt, None, &cat, q),
            Step::Truncate { .. } => format!("TRUNCATE {target}"),
            _ => return None,
        })
    }

    fn exec(&mut self, step: &Step) -> Result<(), Failure> {
        match step {
            Step::Begin { c } => {
                if !self.writers[*c].in_txn {
                    self.writer_sql(*c, "BEGIN")?;
                    self.writers[*c].in_txn = true;
                }
            }
            Step::Commit { c } | Step::Rollback { c } => {
                if self.writers[*c].in_txn {
                    let verb = if matches!(step, Step::Commit { .. }) {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    };
                    self.writer_sql(*c, verb)?;
                    self.writers[*c].in_txn = false;
                    self.writers[*c].savepoints.clear();
                }
            }
            Step::Savepoint { c, sp } => {
                if self.writers[*c].in_txn {
                    self.writer_sql(*c, &format!("SAVEPOINT s{sp}"))?;
                    self.writers[*c].savepoints.insert(*sp);
                }
            }
            Step::RollbackTo { c, sp } => {
                if self.writers[*c].in_txn && self.writers[*c].savepoints.contains(sp) {
                    self.writer_sql(*c, &format!("ROLLBACK TO SAVEPOINT s{sp}"))?;
                    self.writers[*c].savepoints.retain(|x| x <= sp);
                }
            }
            Step::Prepare { c, gid } => {
                if self.writers[*c].in_txn {
                    let g = self.gid(*gid);
                    self.writers[*c].in_txn = false;
                    self.writers[*c].savepoints.clear();
                    self.writer_sql(*c, &format!("PREPARE TRANSACTION '{g}'"))?;
                    self.prepared.insert(*gid);
                }
            }
            Step::CommitPrepared { gid } | Step::RollbackPrepared { gid } => {
                if self.prepared.remove(gid) {
                    let verb = if matches!(step, Step::CommitPrepared { .. }) {
                        "COMMIT"
                    } else {
                        "ROLLBACK"
                    };
                    let g = self.gid(*gid);
                    self.master_sql(&format!("{verb} PREPARED '{g}'"))?;
                }
            }
            Step::Insert { c, .. }
            | Step::Update { c, .. }
            | Step::Delete { c, .. }
            | Step::ChangeKey { c, .. }
            | Step::SwapKeys { c, .. }
            | Step::UpdateAll { c, .. }
            | Step::DeleteAll { c, .. }
            | Step::Truncate { c, .. } => {
                if let Some(sql) = self.dml_sql(step) {
                    self.writer_sql(*c, &sql)?;
                }
            }
            Step::Cycle { s, clean, hook } => {
                if self.slaves[*s].joined {
                    self.cycle(*s, *clean, hook)?;
                }
            }
            Step::CleanLog => {
                let ext = self.ext.clone();
                let step = self.step;
                let cl = self.mclean()?;
                cl.query_one(&format!("SELECT {ext}.rserv_clean_log()"), &[])
                    .map_err(|e| {
                        fail(
                            Kind::CycleError {
                                slave: 0,
                                message: format!("clean_log: {}", pg_short(&e)),
                            },
                            step,
                            crate::describe_pg_error(&e),
                        )
                    })?;
            }
            Step::Check { s } => {
                if self.slaves[*s].joined {
                    self.check(*s)?;
                }
            }
            Step::Join {
                tables,
                create_tables,
            } => self.join(tables, *create_tables)?,
            Step::SlaveRemove { s, t, p } | Step::SlaveAdd { s, t, p } => {
                let add = matches!(step, Step::SlaveAdd { .. });
                let ok = self.slaves[*s].joined
                    && self.slaves[*s].created.contains(t)
                    && !self.live[*t].omit
                    && self.slaves[*s].registered.contains(&(*t, *p)) != add;
                if ok {
                    self.slave_register(*s, *t, *p, add)?;
                }
            }
            Step::SlaveWrite { s, t, p, k, vals } => self.slave_write(*s, *t, *p, *k, vals)?,
            Step::MasterReadd { t, writes } => {
                if !self.live[*t].omit {
                    self.remove_master(*t)?;
                    for w in writes {
                        if let Some(sql) = self.dml_sql(w) {
                            self.master_sql(&sql)?;
                        }
                    }
                    self.register_master(*t)?;
                }
            }
            Step::Rename { t, col, to } => {
                let Some(c) = self.live[*t].col(*col).cloned() else {
                    return Ok(());
                };
                if self.live[*t].omit {
                    return Ok(());
                }
                let action = format!("RENAME COLUMN {} TO {}", self.q(&c.name), self.q(to));
                self.alter(*t, &action)?;
                if let Some(c) = self.live[*t].cols.iter_mut().find(|c| c.id == *col) {
                    c.name = to.clone();
                }
            }
            Step::DropCol { t, col } => {
                let Some(c) = self.live[*t].col(*col).cloned() else {
                    return Ok(());
                };
                if self.live[*t].omit || self.live[*t].key.contains(col) {
                    return Ok(());
                }
                let action = format!("DROP COLUMN {}", self.q(&c.name));
                self.alter(*t, &action)?;
                if let Some(c) = self.live[*t].cols.iter_mut().find(|c| c.id == *col) {
                    c.dropped = true;
                }
            }
            Step::AddCol { t, col } => {
                if self.live[*t].omit || self.live[*t].cols.iter().any(|c| c.id == col.id) {
                    return Ok(());
                }
                let cat = self.cat.clone();
                let ty = col.ty.sql(&cat, &mut |x| self.quoter.q(self.env, x));
                let action = format!(
                    "ADD COLUMN {} {ty}{}",
                    self.q(&col.name),
                    col.default
                        .as_ref()
                        .map(|d| format!(" DEFAULT {}", literal(Some(d), &ty)))
                        .unwrap_or_default()
                );
                self.alter(*t, &action)?;
                self.live[*t].cols.push(col.clone());
            }
            Step::Restart { master } => self.restart(*master),
            Step::GrantBypass => {
                if !self.bypass {
                    self.alter_role("BYPASSRLS")?;
                    self.bypass = true;
                }
            }
            Step::TruncateRace { s, c, t, rows } => self.truncate_race(*s, *c, *t, rows)?,
        }
        Ok(())
    }

    /// ALTER ROLE of the replication role, on both clusters (roles are cluster-wide).
    fn alter_role(&self, what: &str) -> Result<(), Failure> {
        for c in [&self.env.master, &self.env.slave] {
            let mut su =
                try_connect(c, "postgres", "postgres").map_err(|e| self.harness("connect", e))?;
            su.batch_execute(&format!("ALTER ROLE {REPL} {what}"))
                .map_err(|e| self.harness("ALTER ROLE", e))?;
        }
        Ok(())
    }

    /// ALTER TABLE on the master: the slaves that receive the table follow through the
    /// change-set stream; a physical table a slave has but does not receive now gets it by hand.
    fn alter(&mut self, t: usize, action: &str) -> Result<(), Failure> {
        let lt = self.live[t].clone();
        let target = dml_target(&lt, &mut |x| self.quoter.q(self.env, x));
        self.master_sql(&format!("ALTER TABLE {target} {action}"))?;
        for s in 0..2 {
            if !self.slaves[s].joined || !self.slaves[s].created.contains(&t) {
                continue;
            }
            let tree = self.slave_tree(s, t);
            let received: Vec<usize> = (0..lt.physical().len())
                .filter(|p| self.slaves[s].registered.contains(&(t, *p)))
                .collect();
            if received.is_empty() {
                self.alter_slave(s, t, None, action)?;
                continue;
            }
            for p in 0..lt.physical().len() {
                if received.contains(&p) {
                    self.slaves[s]
                        .unapplied_ddl
                        .push((t, p, action.to_string()));
                } else if !tree {
                    self.alter_slave(s, t, Some(p), action)?;
                }
            }
        }
        Ok(())
    }

    /// Does slave s hold table t as one partitioned table (rather than plain tables)?
    fn slave_tree(&self, s: usize, t: usize) -> bool {
        !self.live[t].partitions.is_empty()
            && (self.slaves[s].create_tables || !self.sch.tables[t].slave.plain_partitions)
    }

    /// ALTER TABLE on slave s's copy of table t by hand: physical table p, or all of it.
    fn alter_slave(
        &mut self,
        s: usize,
        t: usize,
        p: Option<usize>,
        action: &str,
    ) -> Result<(), Failure> {
        let lt = self.live[t].clone();
        let names = match p {
            _ if lt.partitions.is_empty() || self.slave_tree(s, t) => vec![lt.name.clone()],
            Some(p) => lt.physical().get(p).cloned().into_iter().collect(),
            None => lt.partitions.clone(),
        };
        for n in names {
            let table = qualified(&lt.schema, &n, &mut |x| self.quoter.q(self.env, x));
            self.slave_sql(s, &format!("ALTER TABLE IF EXISTS {table} {action}"))?;
        }
        Ok(())
    }

    fn slave_write(
        &mut self,
        s: usize,
        t: usize,
        p: usize,
        k: u64,
        vals: &Option<schema::Vals>,
    ) -> Result<(), Failure> {
        if !self.slaves[s].joined
            || !self.slaves[s].created.contains(&t)
            || self.slaves[s].registered.contains(&(t, p))
            || self.live[t].omit
        {
            return Ok(());
        }
        let lt = self.live[t].clone();
        let Some(name) = lt.physical().get(p).cloned() else {
            return Ok(());
        };
        let cat = self.cat.clone();
        let q = &mut |x: &str| self.quoter.q(self.env, x);
        let target = qualified(&lt.schema, &name, q);
        // (rows in a partition must belong there; an identity primary key would take the
        // slave's own sequence, which never saw the master's values)
        let may_insert = (lt.partitions.is_empty()
            || self.slaves[s].create_tables
            || self.sch.tables[t].slave.plain_partitions)
            && lt.pk_identity.is_none();
        let sql = match vals {
            None => delete_sql(&target, &lt, Some(k), &cat, q),
            Some(v) => {
                let mut parts: Vec<String> = update_sql(&target, &lt, Some(k), v, &cat, q)
                    .into_iter()
                    .collect();
                if may_insert {
                    parts.push(insert_sql(&target, &lt, k, v, &cat, q));
                }
                parts.join(";\n")
            }
        };
        if sql.is_empty() {
            return Ok(());
        }
        self.slave_sql(s, &sql)
    }

    fn join(&mut self, tables: &[usize], create_tables: bool) -> Result<(), Failure> {
        if self.slaves[1].joined {
            return Ok(());
        }
        self.create_dbs(&[2])?;
        self.slaves[1].joined = true;
        self.slaves[1].create_tables = create_tables;
        if create_tables {
            if !self.sch.superuser {
                let mut su = try_connect(&self.env.slave, &self.dbs[2], "postgres")
                    .map_err(|e| self.harness("connect", e))?;
                let mut schemas = self.sch.schemas.clone();
                schemas.push("public".into());
                for s in schemas {
                    let qs = self.q(&s);
                    su.batch_execute(&format!("GRANT CREATE ON SCHEMA {qs} TO {REPL}"))
                        .map_err(|e| self.harness("GRANT", e))?;
                }
            }
            for t in 0..self.live.len() {
                if self.live[t].omit {
                    continue;
                }
                self.slaves[1].created.insert(t);
                for p in 0..self.live[t].physical().len() {
                    self.slaves[1].registered.insert((t, p));
                }
            }
            return Ok(());
        }
        for &t in tables {
            if t < self.live.len() && !self.live[t].omit {
                self.create_slave_table(1, t, false)?;
            }
        }
        Ok(())
    }

    fn restart(&mut self, master: bool) {
        // every connection to that cluster goes; open transactions there are lost
        self.repl = [None, None];
        self.quoter.client = None;
        if master {
            self.mutil = None;
            self.moracle = None;
            self.mclean = None;
            for w in self.writers.iter_mut() {
                w.client = None;
                w.in_txn = false;
                w.savepoints.clear();
            }
            self.env.master.stop();
            self.env.master.start_again();
        } else {
            self.sutil = [None, None];
            self.soracle = [None, None];
            self.env.slave.stop();
            self.env.slave.start_again();
        }
    }

    // -----------------------------------------------------------------------------------------
    // the oracle
    // -----------------------------------------------------------------------------------------

    /// Tables slave s receives (registered there and replicated by the master).
    fn probes(&mut self, s: usize) -> Vec<Probe> {
        let regs: Vec<(usize, usize)> = self.slaves[s].registered.iter().copied().collect();
        let mut out = Vec::new();
        for (t, p) in regs {
            let lt = self.live[t].clone();
            if lt.omit {
                continue;
            }
            let Some(pname) = lt.physical().get(p).cloned() else {
                continue;
            };
            let name = qualified(&lt.schema, &pname, &mut |x| self.quoter.q(self.env, x));
            let cols: Vec<usize> = lt.live().map(|c| c.id).collect();
            let list: Vec<String> = lt
                .live()
                .map(|c| format!("{}::text", self.quoter.q(self.env, &c.name)))
                .collect();
            let sql = format!("SELECT {} FROM ONLY {name}", list.join(", "));
            out.push(Probe {
                t,
                p,
                name,
                cols,
                sql,
            });
        }
        out
    }

    fn read_master(&mut self, probes: &[Probe]) -> Result<State, Failure> {
        let step = self.step;
        let c = self.moracle()?;
        let mut tx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .map_err(|e| harness_err(step, "oracle", e))?;
        let st =
            read_state(&mut tx, probes).map_err(|e| oracle_err(step, "reading the master", e))?;
        tx.commit().map_err(|e| harness_err(step, "oracle", e))?;
        Ok(st)
    }

    /// Slave s's rows of the probed tables as whole-row text: what a refused change set must
    /// leave unchanged (read by position, since the slave's column names may lag the master's
    /// until a change set brings their DDL).
    fn read_slave_rows(&mut self, s: usize, probes: &[Probe]) -> Result<State, Failure> {
        let step = self.step;
        let c = self.soracle(s)?;
        let mut out = State::new();
        for pr in probes {
            // (a table --create-tables has yet to make is not there)
            let exists: bool = c
                .query_one("SELECT to_regclass($1) IS NOT NULL", &[&pr.name])
                .map_err(|e| oracle_err(step, "reading the slave", e))?
                .get(0);
            if !exists {
                continue;
            }
            let rows = c
                .query(
                    &format!("SELECT t::text FROM {} t ORDER BY 1", pr.name),
                    &[],
                )
                .map_err(|e| oracle_err(step, "reading the slave", e))?;
            out.insert(
                (pr.t, pr.p),
                rows.iter()
                    .map(|r| vec![r.get::<_, Option<String>>(0)])
                    .collect(),
            );
        }
        Ok(out)
    }

    fn read_slave(&mut self, s: usize, probes: &[Probe]) -> Result<State, Failure> {
        let step = self.step;
        let c = self.soracle(s)?;
        read_state(c, probes).map_err(|e| oracle_err(step, "reading the slave", e))
    }

    /// Compare what slave s holds with the expected master state; Err names the first
    /// table that differs and how.
    fn compare(
        &self,
        probes: &[Probe],
        expected: &State,
        actual: &State,
    ) -> Result<usize, (usize, String)> {
        let mut rows = 0;
        for pr in probes {
            let lt = &self.live[pr.t];
            let compared = lt.compared();
            let idx: Vec<usize> = compared
                .iter()
                .filter_map(|id| pr.cols.iter().position(|c| c == id))
                .collect();
            let kidx: Vec<usize> = lt
                .key
                .iter()
                .filter_map(|id| pr.cols.iter().position(|c| c == id))
                .collect();
            let names: Vec<String> = idx
                .iter()
                .map(|i| {
                    lt.col(pr.cols[*i])
                        .map(|c| c.name.clone())
                        .unwrap_or_default()
                })
                .collect();
            let project = |st: &State| -> BTreeMap<Vec<Option<String>>, Vec<Option<String>>> {
                st.get(&(pr.t, pr.p))
                    .map(|rows| {
                        rows.iter()
                            .map(|r| {
                                (
                                    kidx.iter().map(|i| r[*i].clone()).collect(),
                                    idx.iter().map(|i| r[*i].clone()).collect(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            };
            let (m, s) = (project(expected), project(actual));
            rows += m.len();
            if !actual.contains_key(&(pr.t, pr.p)) && expected.contains_key(&(pr.t, pr.p)) {
                return Err((
                    pr.t,
                    format!("table {} does not exist on the slave", pr.name),
                ));
            }
            if m == s {
                continue;
            }
            let mut out = format!(
                "table t{} ({}){}: master {} rows, slave {} rows\n",
                pr.t,
                pr.name,
                if lt.watched_now().is_some() {
                    " [watched columns: comparing key, watched and unique columns]"
                } else {
                    ""
                },
                m.len(),
                s.len()
            );
            let show = |v: &[Option<String>]| {
                v.iter()
                    .map(|x| {
                        x.as_deref()
                            .map(|s| format!("{s:?}"))
                            .unwrap_or("NULL".into())
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut n = 0;
            for (k, v) in &m {
                match s.get(k) {
                    None => out.push_str(&format!("  missing on the slave: key ({})\n", show(k))),
                    Some(sv) if sv != v => {
                        let diffs: Vec<String> = v
                            .iter()
                            .zip(sv)
                            .zip(&names)
                            .filter(|((a, b), _)| a != b)
                            .map(|((a, b), name)| {
                                format!(
                                    "{name}: master {} slave {}",
                                    show(std::slice::from_ref(a)),
                                    show(std::slice::from_ref(b))
                                )
                            })
                            .collect();
                        out.push_str(&format!(
                            "  different: key ({}): {}\n",
                            show(k),
                            diffs.join("; ")
                        ));
                    }
                    Some(_) => continue,
                }
                n += 1;
                if n > 8 {
                    break;
                }
            }
            for k in s.keys().filter(|k| !m.contains_key(*k)).take(8) {
                out.push_str(&format!("  only on the slave: key ({})\n", show(k)));
            }
            return Err((pr.t, out));
        }
        Ok(rows)
    }

    /// RLS refusal, the 1.1 contract's answer to a replication role that row-level security
    /// would filter: the cycle fails naming BYPASSRLS, and the slave is unchanged.
    fn rls_refusal_possible(&self, probes: &[Probe]) -> bool {
        !self.sch.superuser && !self.bypass && probes.iter().any(|p| self.live[p.t].rls.is_some())
    }

    fn cycle(&mut self, s: usize, clean: bool, hook: &[Step]) -> Result<(), Failure> {
        self.ensure_repl(s)?;
        let step = self.step;
        // with --create-tables, tables the cycle has yet to create are read once they exist
        let probes = self.probes(s);
        let before = self.read_master(&probes)?;
        let rls = self.rls_refusal_possible(&probes);
        let slave_before = if rls {
            Some(self.read_slave_rows(s, &probes)?)
        } else {
            None
        };
        let ddl_before = self.slaves[s].unapplied_ddl.len();
        let mut repl = self.repl[s].take().expect("connected");
        // every third cycle goes through a snapshot file (replicate --snapshot), the others
        // stream the change set
        let file = (self.stats.cycles % 3 == 1).then(|| {
            static FILES: AtomicU32 = AtomicU32::new(0);
            std::env::temp_dir().join(format!(
                "rserv-gen-{}-{}.snapshot",
                std::process::id(),
                FILES.fetch_add(1, Ordering::Relaxed)
            ))
        });
        let opts = CycleOptions {
            server: Some(s as i32 + 1),
            clean_log: clean,
            create_tables: self.slaves[s].create_tables,
            snapshot: file.clone(),
            ..CycleOptions::default()
        };
        let mut captured: Option<State> = None;
        let mut hook_fail: Option<Failure> = None;
        let result = {
            let mut ep = Endpoints {
                master: &mut repl.master,
                master_rs: &repl.mrs,
                slave: &mut repl.slave,
                slave_rs: &repl.srs,
            };
            let run = &mut *self;
            let probes = &probes;
            let captured = &mut captured;
            let hook_fail = &mut hook_fail;
            let mut f =
                move |tx: &mut postgres::Transaction<'_>| -> Result<(), replicate::error::Error> {
                    match run.capture_at(tx, probes) {
                        Ok(st) => *captured = Some(st),
                        Err(f) => {
                            *hook_fail = Some(f);
                            return Err(replicate::error::Error::Failed(
                                "oracle capture failed".into(),
                            ));
                        }
                    }
                    for h in hook {
                        if let Err(f) = run.exec(h) {
                            *hook_fail = Some(f);
                            return Err(replicate::error::Error::Failed(
                                "a hook step failed".into(),
                            ));
                        }
                    }
                    Ok(())
                };
            cycle::run(&mut ep, &opts, &mut Session::default(), Some(&mut f))
        };
        self.repl[s] = Some(repl);
        if let Some(f) = file {
            let _ = std::fs::remove_file(f);
        }
        self.step = step;
        self.stats.cycles += 1;
        if trace() {
            eprintln!("rserv-gen: cycle to slave {}: {result:?}", s + 1);
        }
        if let Some(f) = hook_fail {
            return Err(f);
        }
        match result {
            Ok(outcome) => {
                if let Outcome::Skipped { syncid } = outcome {
                    return Err(fail(
                        Kind::CycleError {
                            slave: s,
                            message: "skipped".into(),
                        },
                        step,
                        format!("change set {syncid} skipped: nobody else applies to this slave"),
                    ));
                }
                if let Outcome::Applied { .. } = outcome {
                    self.stats.applied += 1;
                }
                // DDL committed before this cycle is on the slave now (or in its change set)
                self.slaves[s].unapplied_ddl.drain(..ddl_before);
                let Some(at) = captured else {
                    return Err(self.harness("the at_snapshot hook did not run", ""));
                };
                if let Err((t, d)) = self.compare(&probes, &before, &at) {
                    return Err(fail(
                        Kind::SnapshotMismatch { table: t },
                        step,
                        format!(
                            "the prepare's snapshot (expected) is not the state the driver read just before the cycle (actual):\n{d}"
                        ),
                    ));
                }
                let after = self.read_slave(s, &probes)?;
                match self.compare(&probes, &at, &after) {
                    Ok(n) => {
                        self.stats.compared_rows += n;
                        Ok(())
                    }
                    Err((t, d)) => Err(fail(
                        Kind::Diverged { slave: s, table: t },
                        step,
                        format!(
                            "after a cycle to slave {} ({outcome:?}), the slave differs from the master as of the change set's snapshot:\n{d}",
                            s + 1
                        ),
                    )),
                }
            }
            Err(e) => {
                self.cycle_error(s, &probes, e, slave_before, rls)?;
                // A refused cycle may fail before its snapshot: the model expects the hook's
                // steps (a commit, say) to have run, so run them now.
                if captured.is_none() {
                    for h in hook {
                        self.exec(h)?;
                    }
                }
                Ok(())
            }
        }
    }

    fn cycle_error(
        &mut self,
        s: usize,
        probes: &[Probe],
        e: replicate::error::Error,
        slave_before: Option<State>,
        rls: bool,
    ) -> Result<(), Failure> {
        let step = self.step;
        let text = e.to_string();
        if rls && text.contains("BYPASSRLS") {
            let after = self.read_slave_rows(s, probes)?;
            if let Some(before) = slave_before {
                // (tables made by the refused cycle's --create-tables are new and empty)
                if before.iter().any(|(k, rows)| after.get(k) != Some(rows)) {
                    return Err(fail(
                        Kind::CycleError {
                            slave: s,
                            message: "refused change set changed the slave".into(),
                        },
                        step,
                        format!("the cycle was refused ({text}) but the slave changed"),
                    ));
                }
            }
            return Ok(());
        }
        Err(fail(
            Kind::CycleError {
                slave: s,
                message: repl_short(&e),
            },
            step,
            format!("cycle to slave {} failed: {text}", s + 1),
        ))
    }

    /// Inside the prepare transaction: export its snapshot and read the master through it as
    /// a superuser.
    fn capture_at(
        &mut self,
        tx: &mut postgres::Transaction<'_>,
        probes: &[Probe],
    ) -> Result<State, Failure> {
        let step = self.step;
        let snap: String = tx
            .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
            .map_err(|e| harness_err(step, "pg_export_snapshot", e))?
            .get(0);
        let c = self.moracle()?;
        let mut otx = c
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .start()
            .map_err(|e| harness_err(step, "oracle", e))?;
        otx.batch_execute(&format!("SET TRANSACTION SNAPSHOT '{snap}'"))
            .map_err(|e| harness_err(step, "SET TRANSACTION SNAPSHOT", e))?;
        let st = read_state(&mut otx, probes)
            .map_err(|e| oracle_err(step, "reading the master at the snapshot", e))?;
        otx.commit().map_err(|e| harness_err(step, "oracle", e))?;
        Ok(st)
    }

    fn check(&mut self, s: usize) -> Result<(), Failure> {
        self.ensure_repl(s)?;
        let step = self.step;
        let probes = self.probes(s);
        let rls = self.rls_refusal_possible(&probes);
        let slave_before = if rls {
            Some(self.read_slave_rows(s, &probes)?)
        } else {
            None
        };
        let ddl_before = self.slaves[s].unapplied_ddl.len();
        let mut repl = self.repl[s].take().expect("connected");
        let opts = CycleOptions {
            server: Some(s as i32 + 1),
            clean_log: true,
            create_tables: self.slaves[s].create_tables,
            ..CycleOptions::default()
        };
        let report = {
            let mut ep = Endpoints {
                master: &mut repl.master,
                master_rs: &repl.mrs,
                slave: &mut repl.slave,
                slave_rs: &repl.srs,
            };
            replicate::check::check(&mut ep, &opts, false)
        };
        self.repl[s] = Some(repl);
        let report = match report {
            Ok(r) => r,
            Err(e) => return self.cycle_error(s, &probes, e, slave_before, rls),
        };
        // the check's cycles applied the DDL committed before it
        self.slaves[s].unapplied_ddl.drain(..ddl_before);
        for tr in &report.tables {
            if tr.equal() {
                continue;
            }
            let t = self
                .live
                .iter()
                .position(|lt| {
                    lt.physical()
                        .iter()
                        .any(|p| format!("{}.{}", lt.schema, p) == tr.table)
                })
                .unwrap_or(usize::MAX);
            let watched = self
                .live
                .get(t)
                .is_some_and(|lt| lt.watched_now().is_some());
            // with watched columns, other columns may differ (and the report must say so);
            // missing or extra rows may not
            let keys_differ = !tr.missing_on_slave.is_empty() || !tr.extra_on_slave.is_empty();
            let (kind, why) = if keys_differ || !watched {
                (
                    Kind::CheckDiffers { slave: s, table: t },
                    "reports a difference",
                )
            } else if !tr.watched_columns_only {
                (
                    Kind::CheckReport { slave: s, table: t },
                    "reports a table with watched columns as DIFFERENT without saying that its \
                     other columns may differ",
                )
            } else {
                continue;
            };
            return Err(fail(
                kind,
                step,
                format!(
                    "replicate check (slave {}, as {}) {why}:\n{}",
                    s + 1,
                    self.role,
                    replicate::check::render(&report)
                ),
            ));
        }
        Ok(())
    }

    fn truncate_race(
        &mut self,
        s: usize,
        c: usize,
        t: usize,
        rows: &[(u64, schema::Vals)],
    ) -> Result<(), Failure> {
        if !self.slaves[s].joined || self.live[t].omit || self.writers[c].in_txn {
            return Ok(());
        }
        self.ensure_repl(s)?;
        let step = self.step;
        let probes = self.probes(s);
        let a = self.read_master(&probes)?;
        let mut slave_before = if self.rls_refusal_possible(&probes) {
            Some(self.read_slave_rows(s, &probes)?)
        } else {
            None
        };
        let mut x = vec!["BEGIN".to_string()];
        x.extend(self.dml_sql(&Step::Truncate { c, t }));
        for (k, vals) in rows {
            x.extend(self.dml_sql(&Step::Insert {
                c,
                t,
                k: *k,
                vals: vals.clone(),
            }));
        }
        self.writer_sql(c, &x.join(";\n"))?;
        self.writers[c].in_txn = true;
        let ddl_before = self.slaves[s].unapplied_ddl.len();
        let mut repl = self.repl[s].take().expect("connected");
        let opts = CycleOptions {
            server: Some(s as i32 + 1),
            clean_log: true,
            create_tables: self.slaves[s].create_tables,
            ..CycleOptions::default()
        };
        let done = AtomicBool::new(false);
        let (result, committed) = std::thread::scope(|sc| {
            let done = &done;
            let repl = &mut repl;
            let h = sc.spawn(move || {
                let mut ep = Endpoints {
                    master: &mut repl.master,
                    master_rs: &repl.mrs,
                    slave: &mut repl.slave,
                    slave_rs: &repl.srs,
                };
                let r = cycle::run(&mut ep, &opts, &mut Session::default(), None);
                done.store(true, Ordering::SeqCst);
                r
            });
            // wait until the cycle waits for a lock (or finished without needing one)
            let mut waited = false;
            while !done.load(Ordering::SeqCst) {
                let waiting = self.moracle().and_then(|o| {
                    o.query_one(
                        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE NOT granted \
                         AND locktype = 'relation')",
                        &[],
                    )
                    .map(|r| r.get::<_, bool>(0))
                    .map_err(|e| harness_err(step, "pg_locks", e))
                });
                if matches!(waiting, Ok(true)) {
                    waited = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let committed = self.writer_sql(c, "COMMIT");
            let r = h.join().unwrap_or_else(|_| {
                Err(replicate::error::Error::Failed(
                    "cycle thread panicked".into(),
                ))
            });
            (r.map(|o| (o, waited)), committed)
        });
        self.repl[s] = Some(repl);
        self.writers[c].in_txn = false;
        self.stats.cycles += 1;
        committed?;
        let (outcome, waited) = match result {
            Ok(o) => o,
            Err(e) => {
                // a table with row-level security the role cannot bypass: the prepare refuses
                // (before it reads anything), and the slave must be left as it was
                let rls = self.rls_refusal_possible(&probes);
                let before = if rls {
                    Some(slave_before.take().unwrap_or_default())
                } else {
                    None
                };
                return self.cycle_error(s, &probes, e, before, rls);
            }
        };
        // DDL committed before this cycle is on the slave now
        self.slaves[s].unapplied_ddl.drain(..ddl_before);
        let b = self.read_master(&probes)?;
        let after = self.read_slave(s, &probes)?;
        let vs_a = self.compare(&probes, &a, &after);
        let vs_b = self.compare(&probes, &b, &after);
        match (vs_a, vs_b) {
            (Ok(n), _) | (_, Ok(n)) => {
                self.stats.compared_rows += n;
                Ok(())
            }
            (Err((ta, da)), Err((_, db))) => Err(fail(
                Kind::TruncateRace { slave: s, table: ta },
                step,
                format!(
                    "a cycle to slave {} ({outcome:?}) {} while a TRUNCATE of t{t} committed: the slave equals neither the master before that commit nor after it\nvs before:\n{da}vs after:\n{db}",
                    s + 1,
                    if waited { "waited for a lock" } else { "did not wait" }
                ),
            )),
        }
    }
}

/// CREATE DATABASE `db` owned by gen_owner, then run `sql` in it as gen_owner.
fn create_db(env: &Env, master: bool, db: &str, sql: &str) -> Result<(), Failure> {
    let cluster = if master { &env.master } else { &env.slave };
    let setup = |what: &str, e: postgres::Error| {
        fail(
            Kind::Setup {
                message: format!("{what}: {}", pg_short(&e)),
            },
            None,
            format!(
                "{what}: {}\n--- SQL ---\n{sql}",
                crate::describe_pg_error(&e)
            ),
        )
    };
    let mut su = try_connect(cluster, "postgres", "postgres").map_err(|e| setup("connect", e))?;
    su.batch_execute(&format!(
        "CREATE DATABASE \"{}\" OWNER {OWNER}",
        db.replace('"', "\"\"")
    ))
    .map_err(|e| setup("CREATE DATABASE", e))?;
    let mut owner = try_connect(cluster, db, OWNER).map_err(|e| setup("connect", e))?;
    owner
        .batch_execute(&format!("{TIMEOUTS}; {sql}"))
        .map_err(|e| setup("setting up the database", e))?;
    if !master {
        // A slave's types that --create-tables uses must be a superuser's (or the replication
        // role's): another user's domain CHECK would run as the new tables' owner.
        let mut su = try_connect(cluster, db, "postgres").map_err(|e| setup("connect", e))?;
        su.batch_execute(&format!(
            "DO $$DECLARE t regtype; BEGIN
               FOR t IN SELECT oid::regtype FROM pg_type
                         WHERE typnamespace = 'public'::regnamespace AND typtype IN ('e', 'd')
                           AND typowner = '{OWNER}'::regrole
               LOOP EXECUTE format('ALTER TYPE %s OWNER TO postgres', t); END LOOP;
             END$$"
        ))
        .map_err(|e| setup("handing the slave's types to the superuser", e))?;
    }
    Ok(())
}

/// `RSERV_GEN_TRACE=1`: print every step and cycle outcome on stderr.
fn trace() -> bool {
    std::env::var_os("RSERV_GEN_TRACE").is_some()
}

fn harness_err(step: Option<usize>, what: &str, e: postgres::Error) -> Failure {
    fail(
        Kind::Harness {
            message: format!("{what}: {}", pg_short(&e)),
        },
        step,
        crate::describe_pg_error(&e),
    )
}

fn oracle_err(step: Option<usize>, what: &str, e: postgres::Error) -> Failure {
    if is_lock_timeout(&e) {
        return fail(
            Kind::Stuck,
            step,
            format!("{what}: {}", crate::describe_pg_error(&e)),
        );
    }
    harness_err(step, what, e)
}
