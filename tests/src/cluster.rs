//! [`Cluster`]: a throwaway PostgreSQL server (initdb + pg_ctl) in its own directory under
//! `/tmp`, on its own port, torn down on drop; and what running the server binaries needs
//! (their directory, the `postgres` OS user when the tests run as root, settings files). By
//! default the server is `RSERV_PG_BINDIR`'s (15); tests across majors start another major's
//! ([`Cluster::start_with_bindir`], [`pg_bindir_for`]).
//!
//! PostgreSQL refuses to run as root, so when the tests run as root every server binary
//! (initdb, pg_ctl, postgres) is started as the OS user `postgres` through `runuser`.

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use postgres::{Client, Config, NoTls, SimpleQueryMessage};

use crate::{describe_pg_error, is_pg_env};

/// How many times [`Cluster::start_with`] picks a new port when the chosen one turns out taken.
const START_ATTEMPTS: u32 = 10;
/// Seconds pg_ctl waits for start/stop.
const PG_CTL_TIMEOUT: &str = "60";
/// Lines of server log shown in panic messages.
const LOG_TAIL_LINES: usize = 40;

/// A throwaway PostgreSQL cluster. Stopped (immediate mode) and deleted when dropped.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    /// `/tmp/rserv-test-<name>-<pid>-<n>`: holds `data/`, `server.log` and the unix socket.
    dir: PathBuf,
    data_dir: PathBuf,
    log_file: PathBuf,
    /// the PostgreSQL bin directory the server runs from
    bindir: PathBuf,
    port: u16,
    /// Print the log tail when dropped during a panic (off when the panic message has it).
    log_on_panic: bool,
}

impl Cluster {
    /// Creates and starts a cluster with the default test settings.
    pub fn start(name: &str) -> Cluster {
        Cluster::start_with(name, &[])
    }

    /// Creates and starts a cluster; `extra` settings are appended after the defaults (so they
    /// override them). Values are written single-quoted (`key = 'value'`, which PostgreSQL
    /// accepts for every type) unless already quoted.
    ///
    /// Default settings: `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`,
    /// `max_connections=50`, `shared_buffers=32MB`, `log_min_messages=warning`, listening on
    /// 127.0.0.1 and on a unix socket in the cluster directory.
    ///
    /// Note: with `synchronous_commit=off`, [`Cluster::stop_immediate`] can lose the last
    /// ~second of commits (WAL not yet written). Crash tests that need committed data to
    /// survive should pass `("synchronous_commit", "on")` or `SET synchronous_commit = on`.
    ///
    /// Panics, showing the initdb/pg_ctl output and the server log tail, if anything fails;
    /// the half-made cluster is cleaned up.
    pub fn start_with(name: &str, extra: &[(&str, &str)]) -> Cluster {
        Cluster::start_with_bindir(name, pg_bindir(), extra)
    }

    /// [`Cluster::start_with`], with the server programs of `bindir` (another PostgreSQL
    /// installation, e.g. [`pg_bindir_for`]`(17)`).
    pub fn start_with_bindir(name: &str, bindir: &Path, extra: &[(&str, &str)]) -> Cluster {
        for (key, _) in extra {
            assert!(
                !key.is_empty()
                    && key
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
                "Cluster::start_with({name:?}): invalid setting name {key:?}"
            );
        }
        let dir = make_cluster_dir(name);
        // From here on a panic drops `cluster`, which stops the server and removes `dir`.
        let mut cluster = Cluster {
            name: name.to_owned(),
            data_dir: dir.join("data"),
            log_file: dir.join("server.log"),
            dir,
            bindir: bindir.to_path_buf(),
            port: 0,
            log_on_panic: true,
        };
        cluster.initdb();
        let conf = cluster.data_dir.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf)
            .unwrap_or_else(|e| panic!("cluster {name}: cannot read {}: {e}", conf.display()));
        text.push_str("\n# rserv test harness\ninclude 'rserv_test.conf'\n");
        write_pg_file(&conf, &text);

        for attempt in 1..=START_ATTEMPTS {
            cluster.port = free_port();
            cluster.write_settings(extra);
            let log_before = fs::metadata(&cluster.log_file).map_or(0, |m| m.len());
            let out = cluster.pg_ctl_start();
            if out.status.success() {
                return cluster;
            }
            let new_log = read_from(&cluster.log_file, log_before);
            let port_taken = new_log.contains("Address already in use")
                || new_log.contains("could not create any TCP/IP sockets")
                || new_log.contains("could not bind IPv4");
            if port_taken && attempt < START_ATTEMPTS {
                eprintln!(
                    "rserv-tests: cluster {name}: port {} was taken, retrying on another port",
                    cluster.port
                );
                continue;
            }
            cluster.log_on_panic = false;
            panic!(
                "cluster {name}: pg_ctl start failed (port {}, attempt {attempt}): {}\n{}",
                cluster.port,
                describe_output(&out),
                cluster.log_section()
            );
        }
        unreachable!()
    }

    /// The TCP port (on 127.0.0.1) and unix socket port number.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster's data directory (PGDATA).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// The name given to [`Cluster::start`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PostgreSQL bin directory the server runs from.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// The server's major version (`server_version_num / 10000`).
    pub fn major(&self) -> u32 {
        let v = self.query_strings("postgres", "SHOW server_version_num");
        v.first()
            .and_then(|r| r[0].as_deref())
            .and_then(|s| s.parse::<u32>().ok())
            .map(|n| n / 10000)
            .unwrap_or_else(|| {
                panic!(
                    "cluster {}: server_version_num unreadable: {v:?}",
                    self.name
                )
            })
    }

    /// libpq/rust-postgres connection string over the unix socket:
    /// `host=<socket dir> port=<port> user=postgres dbname=<db>`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname={}",
            conninfo_value(&self.dir.to_string_lossy()),
            self.port,
            conninfo_value(db)
        )
    }

    /// Connection string over TCP: `host=127.0.0.1 port=<port> user=postgres dbname=<db>`.
    pub fn conninfo_tcp(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={}",
            self.port,
            conninfo_value(db)
        )
    }

    /// Connects to `db`; panics with the error and the server log tail on failure.
    pub fn connect(&self, db: &str) -> Client {
        let conninfo = self.conninfo(db);
        let mut config = Config::from_str(&conninfo)
            .unwrap_or_else(|e| panic!("cluster {}: bad conninfo {conninfo:?}: {e}", self.name));
        config.connect_timeout(Duration::from_secs(30));
        config.application_name("rserv-tests");
        config.connect(NoTls).unwrap_or_else(|e| {
            panic!(
                "cluster {}: cannot connect with {conninfo:?}: {}\n{}",
                self.name,
                describe_pg_error(&e),
                self.log_section()
            )
        })
    }

    /// `CREATE DATABASE "<db>"` (connected to `postgres`).
    pub fn create_db(&self, db: &str) {
        self.execute(
            "postgres",
            &format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\"")),
        );
    }

    /// Runs `sql` (may hold several statements) with `batch_execute` on a fresh connection;
    /// panics with the SQL and the full error on failure.
    pub fn execute(&self, db: &str, sql: &str) {
        let mut client = self.connect(db);
        if let Err(e) = client.batch_execute(sql) {
            panic!(
                "cluster {} db {db}: SQL failed: {}\n--- SQL ---\n{sql}\n--- end SQL ---\n{}",
                self.name,
                describe_pg_error(&e),
                self.log_section()
            );
        }
    }

    /// Runs `sql` with the simple query protocol on a fresh connection and returns every row of
    /// every statement, each value in PostgreSQL's text form (`None` for NULL).
    pub fn query_strings(&self, db: &str, sql: &str) -> Vec<Vec<Option<String>>> {
        let mut client = self.connect(db);
        let messages = client.simple_query(sql).unwrap_or_else(|e| {
            panic!(
                "cluster {} db {db}: query failed: {}\n--- SQL ---\n{sql}\n--- end SQL ---\n{}",
                self.name,
                describe_pg_error(&e),
                self.log_section()
            )
        });
        messages
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                ),
                _ => None,
            })
            .collect()
    }

    /// `pg_ctl stop -m fast`; panics on failure.
    pub fn stop(&self) {
        self.pg_ctl_stop("fast");
    }

    /// `pg_ctl stop -m immediate` (a crash, recovery on next start); panics on failure.
    /// See [`Cluster::start_with`] about `synchronous_commit=off`.
    pub fn stop_immediate(&self) {
        self.pg_ctl_stop("immediate");
    }

    /// Stops the server, runs `f` on its data directory, starts it again.
    pub fn while_stopped(&self, f: impl FnOnce(&Path)) {
        self.stop();
        f(self.data_dir());
        self.start_again();
    }

    /// Starts a stopped cluster again on the same port; panics on failure.
    pub fn start_again(&self) {
        let out = self.pg_ctl_start();
        if !out.status.success() {
            panic!(
                "cluster {}: pg_ctl start (again, port {}) failed: {}\n{}",
                self.name,
                self.port,
                describe_output(&out),
                self.log_section()
            );
        }
    }

    /// Stops the server (fast: sessions are ended) and starts it again, on the same data
    /// directory and port, with the server programs of `bindir`: another installation of the
    /// same major, e.g. one holding another rserv release (an upgrade of the extension's files).
    pub fn restart_with_bindir(&mut self, bindir: &Path) {
        self.stop();
        self.bindir = bindir.to_path_buf();
        self.start_again();
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = match fs::read(&self.log_file) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => return format!("(cannot read {}: {e})", self.log_file.display()),
        };
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn log_section(&self) -> String {
        format!(
            "--- server log tail ({}) ---\n{}\n--- end of server log ---",
            self.log_file.display(),
            self.log_tail(LOG_TAIL_LINES)
        )
    }

    fn initdb(&self) {
        let out = run_output(
            pg_command(&self.bindir, "initdb", &self.dir)
                .arg("-D")
                .arg(&self.data_dir)
                .args([
                    "-E",
                    "UTF8",
                    "--no-locale",
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ]),
            "initdb",
        );
        if !out.status.success() {
            panic!(
                "cluster {}: initdb failed: {}",
                self.name,
                describe_output(&out)
            );
        }
    }

    fn write_settings(&self, extra: &[(&str, &str)]) {
        let mut s = String::new();
        let _ = writeln!(s, "listen_addresses = '127.0.0.1'");
        let _ = writeln!(s, "port = {}", self.port);
        let _ = writeln!(
            s,
            "unix_socket_directories = {}",
            conf_quote(&self.dir.to_string_lossy())
        );
        for line in [
            "fsync = off",
            "synchronous_commit = off",
            "full_page_writes = off",
            "max_connections = 50",
            "shared_buffers = 32MB",
            "log_min_messages = warning",
            "logging_collector = off",
            "log_destination = 'stderr'",
            "log_line_prefix = '%m [%p] %q%u@%d '",
            "lc_messages = 'C'",
        ] {
            s.push_str(line);
            s.push('\n');
        }
        for (key, value) in extra {
            let value = if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
                (*value).to_owned()
            } else {
                conf_quote(value)
            };
            let _ = writeln!(s, "{key} = {value}");
        }
        write_pg_file(&self.data_dir.join("rserv_test.conf"), &s);
    }

    fn pg_ctl_start(&self) -> Output {
        run_output(
            pg_command(&self.bindir, "pg_ctl", &self.dir)
                .arg("-D")
                .arg(&self.data_dir)
                .arg("-l")
                .arg(&self.log_file)
                .args(["-w", "-t", PG_CTL_TIMEOUT, "start"]),
            "pg_ctl start",
        )
    }

    fn pg_ctl_stop_output(&self, mode: &str) -> Output {
        run_output(
            pg_command(&self.bindir, "pg_ctl", &self.dir)
                .arg("-D")
                .arg(&self.data_dir)
                .args(["-m", mode, "-w", "-t", PG_CTL_TIMEOUT, "stop"]),
            "pg_ctl stop",
        )
    }

    fn pg_ctl_stop(&self, mode: &str) {
        let out = self.pg_ctl_stop_output(mode);
        if !out.status.success() {
            panic!(
                "cluster {}: pg_ctl stop -m {mode} failed: {}\n{}",
                self.name,
                describe_output(&out),
                self.log_section()
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.log_on_panic && std::thread::panicking() && self.log_file.exists() {
            eprintln!(
                "rserv-tests: cluster {} dropped during a panic; {}",
                self.name,
                self.log_section()
            );
        }
        if self.data_dir.join("postmaster.pid").exists() {
            let out = self.pg_ctl_stop_output("immediate");
            if !out.status.success() && self.data_dir.join("postmaster.pid").exists() {
                eprintln!(
                    "rserv-tests: cluster {}: pg_ctl stop -m immediate failed: {}",
                    self.name,
                    describe_output(&out)
                );
            }
        }
        if std::env::var_os("RSERV_KEEP_CLUSTERS").is_some() {
            eprintln!(
                "rserv-tests: RSERV_KEEP_CLUSTERS set: keeping cluster {} in {} (port {})",
                self.name,
                self.dir.display(),
                self.port
            );
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            eprintln!(
                "rserv-tests: cluster {}: cannot remove {}: {e}",
                self.name,
                self.dir.display()
            );
        }
    }
}

/// Directory with the PostgreSQL server binaries.
pub fn pg_bindir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(d) = std::env::var_os("RSERV_PG_BINDIR") {
            return PathBuf::from(d);
        }
        let default = Path::new("/usr/lib/postgresql/15/bin");
        if default.join("pg_ctl").is_file() {
            return default.to_path_buf();
        }
        match Command::new("pg_config").arg("--bindir").output() {
            Ok(out) if out.status.success() => {
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
            _ => panic!(
                "PostgreSQL binaries not found in {} and pg_config failed; set RSERV_PG_BINDIR",
                default.display()
            ),
        }
    })
}

/// Bin directory of PostgreSQL `major` for tests across majors: `$RSERV_PG<major>_BINDIR`, else
/// `$RSERV_PG_ROOT/<major>/bin` (default root `/opt/rserv-pg`, where `scripts/setup.sh --pg
/// <major>` installs it). Panics, saying how to set it up, when it is missing or is another
/// major's.
pub fn pg_bindir_for(major: u32) -> PathBuf {
    let var = format!("RSERV_PG{major}_BINDIR");
    let dir = match std::env::var_os(&var) {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(
            std::env::var_os("RSERV_PG_ROOT").unwrap_or_else(|| "/opt/rserv-pg".into()),
        )
        .join(major.to_string())
        .join("bin"),
    };
    let out = Command::new(dir.join("pg_config"))
        .arg("--version")
        .output();
    let version = match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        _ => panic!(
            "PostgreSQL {major} is not installed in {} (no working pg_config): run \
             scripts/setup.sh --pg {major}, or set {var} to its bin directory",
            dir.display()
        ),
    };
    assert!(
        version.starts_with(&format!("PostgreSQL {major}.")),
        "{} holds {version}, not PostgreSQL {major}: fix {var}",
        dir.display()
    );
    dir
}

/// Whether this process runs with effective uid 0.
fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// (uid, gid) of the `postgres` OS user; only needed when running as root.
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let user = nix::unistd::User::from_name("postgres")
            .unwrap_or_else(|e| panic!("cannot look up the `postgres` OS user: {e}"))
            .expect("running as root but there is no `postgres` OS user to run the server as");
        (user.uid.as_raw(), user.gid.as_raw())
    })
}

/// Gives `path` to the postgres user when running as root.
fn give_to_postgres(path: &Path) {
    if running_as_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("cannot chown {} to postgres: {e}", path.display()));
    }
}

fn write_pg_file(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    give_to_postgres(path);
}

/// A command running the PostgreSQL program `prog` (as `postgres` when we are root), in `cwd`,
/// with no PG* variables and the C locale.
fn pg_command(bindir: &Path, prog: &str, cwd: &Path) -> Command {
    let bin = bindir.join(prog);
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    for (key, _) in std::env::vars_os() {
        if is_pg_env(&key) || key.to_string_lossy().starts_with("LC_") {
            cmd.env_remove(key);
        }
    }
    // The extension is Rust: a backtrace setting would add Rust backtraces to every ERROR.
    cmd.env("LC_ALL", "C")
        .env("LANG", "C")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE");
    cmd.current_dir(cwd).stdin(Stdio::null());
    cmd
}

fn run_output(cmd: &mut Command, what: &str) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {what} ({:?}): {e}", cmd.get_program()))
}

fn describe_output(out: &Output) -> String {
    format!(
        "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

fn read_from(path: &Path, offset: u64) -> String {
    let bytes = fs::read(path).unwrap_or_default();
    let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Quotes a value for a libpq connection string when needed.
fn conninfo_value(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Quotes a value for postgresql.conf.
fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// Picks a TCP port that is currently free on 127.0.0.1. A process-wide counter keeps threads of
/// one test binary apart; the pid-based start keeps concurrently running binaries apart; the bind
/// check skips ports in use by anything else.
fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicU32::new((std::process::id() % 2000) * 10));
    for _ in 0..2000 {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(20000 + n % 40000).expect("port range");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free TCP port found on 127.0.0.1 in the range 20000-59999");
}

/// Creates `/tmp/rserv-test-<name>-<pid>-<n>` (owned by postgres when running as root).
fn make_cluster_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    // Unix socket paths are limited to ~107 bytes: keep the directory name short.
    let mut short: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(24)
        .collect();
    if short.is_empty() {
        short.push('x');
    }
    let pid = std::process::id();
    loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!("/tmp/rserv-test-{short}-{pid}-{n}"));
        match fs::create_dir(&dir) {
            Ok(()) => {
                give_to_postgres(&dir);
                return dir;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create cluster directory {}: {e}", dir.display()),
        }
    }
}
