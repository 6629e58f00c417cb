//! libpq-compatible connection resolution for `replicate`.
//!
//! The `postgres` crate does not read `PG*` environment variables or the password file, so
//! this module resolves one endpoint (master or slave) the way libpq 15 would:
//!
//! * precedence, highest first: side-specific flags > generic flags > connection string
//!   (the side-specific one, else the generic one) > `PG*` environment variables > defaults;
//! * password: explicit flag > connection string > `PGPASSWORD` > password file
//!   (`password_file` argument > `passfile=` in the connection string > `PGPASSFILE` >
//!   `$HOME/.pgpass`).
//!
//! Passwords are kept in a redacting wrapper and never appear in `Debug`, `Display`,
//! `describe()` or any error message; connection strings shown in errors are redacted.

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};

/// libpq's compiled-in unix-socket directory on Debian/Ubuntu (`DEFAULT_PGSOCKET_DIR`).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// libpq's default port.
pub const DEFAULT_PORT: u16 = 5432;
/// `application_name` used when neither the connection string nor `PGAPPNAME` sets one.
pub const DEFAULT_APPLICATION_NAME: &str = "replicate";

/// Connection-string keywords we honour. Anything else is rejected rather than silently
/// dropped, because we rebuild the `postgres::Config` from resolved fields only.
const SUPPORTED_KEYWORDS: &str = "host, port, user, password, dbname, sslmode, connect_timeout, \
     application_name, fallback_application_name, options, passfile, gssencmode";

/// What the user gave for one side (all optional). Used twice: once for the side-specific
/// flags (--masterhost/--masterport/--masteruser/--master CONNINFO ...) and once for the
/// generic defaults (--host/--port/--user).
#[derive(Debug, Clone, Default)]
pub struct ConnArgs {
    /// libpq `key=value` string or `postgresql://` URL.
    pub conninfo: Option<String>,
    /// Hostname, IP, or unix-socket directory (starts with '/').
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// From a --*password flag: visible to ps; the caller warns.
    pub password: Option<String>,
    /// Positional MASTERDB / SLAVEDB. Like libpq's `expand_dbname`, a value that looks like
    /// a connection string (contains `=` or starts with `postgres[ql]://`) is used as this
    /// side's `conninfo` instead.
    pub dbname: Option<String>,
}

/// libpq `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`verify-ca`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the mode refuses an unencrypted connection.
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }

    fn parse(s: &str) -> Option<SslMode> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the resolved password came from (never the password itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    /// A `password` field of [`ConnArgs`] (a command-line flag).
    Argument,
    /// `password=` or URL userinfo in the connection string.
    Conninfo,
    /// The `PGPASSWORD` environment variable.
    Environment,
    /// A line of this password file.
    File(PathBuf),
}

impl fmt::Display for PasswordSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PasswordSource::Argument => f.write_str("the command-line password option"),
            PasswordSource::Conninfo => f.write_str("the connection string"),
            PasswordSource::Environment => f.write_str("PGPASSWORD"),
            PasswordSource::File(p) => write!(f, "password file \"{}\"", p.display()),
        }
    }
}

/// A password that refuses to print itself.
#[derive(Clone, PartialEq, Eq)]
struct Password(Vec<u8>);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One fully resolved connection target. Construct it with [`Endpoint::resolve`].
#[derive(Debug, Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    user: String,
    dbname: String,
    password: Option<Password>,
    password_source: Option<PasswordSource>,
    sslmode: SslMode,
    connect_timeout: Option<Duration>,
    application_name: String,
    options: Option<String>,
}

/// Errors from resolving or connecting. No message contains a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error(
        "invalid connection string {conninfo}: {reason}; expected key=value pairs \
         (e.g. \"host=db1 port=5432 dbname=app user=rserv\") or a URL \
         (e.g. postgresql://rserv@db1:5432/app)"
    )]
    InvalidConninfo {
        /// The connection string with passwords replaced by `****`.
        conninfo: String,
        reason: String,
    },

    #[error(
        "connection option \"{option}\" in {conninfo} is not supported by replicate; \
         remove it (supported: {SUPPORTED_KEYWORDS})"
    )]
    UnsupportedOption {
        option: String,
        /// Redacted connection string.
        conninfo: String,
    },

    #[error("invalid {setting} {value} from {origin}: {reason}")]
    InvalidSetting {
        setting: &'static str,
        /// The offending value (never a password; redacted if it is a connection string).
        value: String,
        origin: String,
        reason: String,
    },

    #[error(
        "{origin} names several hosts or ports ({value}); replicate connects to exactly \
         one master and one slave, so give a single host and port"
    )]
    MultipleHosts { origin: String, value: String },

    #[error(
        "sslmode={sslmode} was requested for {endpoint}, but this build of replicate has no \
         TLS support yet; use sslmode=disable, allow or prefer (the connection will not be \
         encrypted) or tunnel it (e.g. ssh -L)"
    )]
    TlsNotSupported { endpoint: String, sslmode: SslMode },

    #[error(
        "cannot determine the operating-system user name (the default user and database \
         name); give a user explicitly (user flag, user= in the connection string, or PGUSER)"
    )]
    NoUserName,

    #[error("could not connect to {endpoint}: {detail}{hint}")]
    Connect {
        /// [`Endpoint::describe`] of the target.
        endpoint: String,
        /// Full text of `error` including its causes (postgres::Error's own Display
        /// omits them).
        detail: String,
        /// Empty, or "\nhint: ..." with the likely fix.
        hint: String,
        /// The underlying error, for inspecting e.g. `error.code()`.
        error: postgres::Error,
    },
}

impl Endpoint {
    /// Resolves one endpoint from the process environment.
    ///
    /// Precedence, highest first: `specific` fields > `defaults` fields > conninfo
    /// (`specific.conninfo`, else `defaults.conninfo`) > PG* env vars > libpq defaults.
    /// `password_file` (e.g. from a `--passfile` flag) overrides `PGPASSFILE` and
    /// `~/.pgpass`. May print libpq's password-file permission warning on stderr.
    pub fn resolve(
        specific: &ConnArgs,
        defaults: &ConnArgs,
        password_file: Option<&Path>,
    ) -> Result<Endpoint, ConnError> {
        Self::resolve_with(specific, defaults, password_file, &|k| {
            std::env::var(k).ok()
        })
    }

    /// [`Endpoint::resolve`] with an injectable environment lookup (used by tests; `env`
    /// is asked for the `PG*` variables, `HOME` and `USER`). Empty values count as unset.
    pub fn resolve_with(
        specific: &ConnArgs,
        defaults: &ConnArgs,
        password_file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Endpoint, ConnError> {
        let env = |key: &str| env(key).filter(|v| !v.is_empty());
        let specific = expand_dbname(specific)?;
        let defaults = expand_dbname(defaults)?;
        let ci = match specific
            .conninfo
            .as_deref()
            .or(defaults.conninfo.as_deref())
        {
            Some(s) => parse_conninfo(s)?,
            None => Conninfo::default(),
        };

        let host = match first(&[&specific.host, &defaults.host, &ci.host]) {
            Some(h) => h,
            None => match env("PGHOST") {
                Some(h) if h.contains(',') => {
                    return Err(ConnError::MultipleHosts {
                        origin: "PGHOST".into(),
                        value: h,
                    })
                }
                Some(h) => h,
                None => default_host(),
            },
        };

        let port = match specific.port.or(defaults.port).or(ci.port) {
            Some(p) => check_port(p, "the port option")?,
            None => match env("PGPORT") {
                Some(p) => parse_port(&p, "PGPORT")?,
                None => DEFAULT_PORT,
            },
        };

        let user = match first(&[&specific.user, &defaults.user, &ci.user]) {
            Some(u) => u,
            None => match env("PGUSER") {
                Some(u) => u,
                None => os_user_name(&env).ok_or(ConnError::NoUserName)?,
            },
        };

        let dbname = first(&[&specific.dbname, &defaults.dbname, &ci.dbname])
            .or_else(|| env("PGDATABASE"))
            // libpq: the database defaults to the (resolved) user name.
            .unwrap_or_else(|| user.clone());

        let sslmode = match ci.sslmode {
            Some(m) => m,
            None => match env("PGSSLMODE") {
                Some(v) => SslMode::parse(&v).ok_or_else(|| invalid_sslmode(&v, "PGSSLMODE"))?,
                None => SslMode::Prefer,
            },
        };

        let connect_timeout = match ci.connect_timeout {
            Some(t) => t,
            None => match env("PGCONNECT_TIMEOUT") {
                Some(v) => {
                    parse_connect_timeout(&v).map_err(|reason| ConnError::InvalidSetting {
                        setting: "connect_timeout",
                        value: format!("{v:?}"),
                        origin: "PGCONNECT_TIMEOUT".into(),
                        reason,
                    })?
                }
                None => None,
            },
        };

        let application_name = ci
            .application_name
            .clone()
            .or_else(|| env("PGAPPNAME"))
            .or_else(|| ci.fallback_application_name.clone())
            .unwrap_or_else(|| DEFAULT_APPLICATION_NAME.to_string());

        let options = ci.options.clone().or_else(|| env("PGOPTIONS"));

        let mut endpoint = Endpoint {
            host,
            port,
            user,
            dbname,
            password: None,
            password_source: None,
            sslmode,
            connect_timeout,
            application_name,
            options,
        };

        // TLS: this is the single place that refuses TLS-only modes. When TLS support
        // lands, drop this check and pick a connector from `sslmode` in `connect()`.
        if sslmode.requires_tls() {
            return Err(ConnError::TlsNotSupported {
                endpoint: endpoint.describe(),
                sslmode,
            });
        }

        let explicit = [
            (specific.password.as_deref(), PasswordSource::Argument),
            (defaults.password.as_deref(), PasswordSource::Argument),
        ];
        let explicit = explicit.into_iter().find_map(|(p, src)| {
            p.filter(|p| !p.is_empty())
                .map(|p| (p.as_bytes().to_vec(), src))
        });
        let resolved = if let Some(found) = explicit {
            Some(found)
        } else if let Some(p) = ci.password.clone() {
            Some((p, PasswordSource::Conninfo))
        } else if let Some(p) = env("PGPASSWORD") {
            Some((p.into_bytes(), PasswordSource::Environment))
        } else {
            let file = password_file
                .map(Path::to_path_buf)
                .or_else(|| ci.passfile.clone())
                .or_else(|| env("PGPASSFILE").map(PathBuf::from))
                .or_else(|| home_dir(&env).map(|h| h.join(".pgpass")));
            match file {
                Some(file) => {
                    match pgpass_lookup(
                        &file,
                        &endpoint.host,
                        port,
                        &endpoint.dbname,
                        &endpoint.user,
                    ) {
                        PgpassOutcome::Found(p) => Some((p, PasswordSource::File(file))),
                        PgpassOutcome::Ignored(warning) => {
                            // libpq prints this and carries on without the file.
                            eprintln!("{warning}");
                            None
                        }
                        PgpassOutcome::NoMatch => None,
                    }
                }
                None => None,
            }
        };
        // libpq treats an empty password as no password at all.
        if let Some((p, src)) = resolved.filter(|(p, _)| !p.is_empty()) {
            endpoint.password = Some(Password(p));
            endpoint.password_source = Some(src);
        }
        Ok(endpoint)
    }

    /// A `postgres::Config` ready for `.connect(NoTls)`.
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        // Config::host treats a leading '/' as a unix-socket directory, like libpq.
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            // TLS: disable/allow/prefer all end up unencrypted while we only have NoTls.
            // When TLS lands, map prefer/require/verify-* here.
            .ssl_mode(postgres::config::SslMode::Disable)
            // Server NOTICEs (e.g. "already registered; nothing changed") are meant for the
            // user: show them, as psql does.
            .notice_callback(|notice| {
                eprintln!("{}: {}", notice.severity(), notice.message());
                if let Some(hint) = notice.hint() {
                    eprintln!("HINT: {hint}");
                }
            });
        if let Some(Password(p)) = &self.password {
            config.password(p.as_slice());
        }
        if let Some(timeout) = self.connect_timeout {
            config.connect_timeout(timeout);
        }
        if let Some(options) = &self.options {
            config.options(options);
        }
        config
    }

    /// Connects without TLS. The error names host/port/db/user and a likely fix.
    pub fn connect(&self) -> Result<Client, ConnError> {
        self.config()
            .connect(NoTls)
            .map_err(|error| ConnError::Connect {
                endpoint: self.describe(),
                detail: error_text(&error),
                hint: self.connect_hint(&error),
                error,
            })
    }

    /// `host=/tmp/x port=5433 dbname=b user=u` (values quoted libpq-style when needed).
    /// Never contains the password.
    pub fn describe(&self) -> String {
        format!(
            "host={} port={} dbname={} user={}",
            quote_value(&self.host),
            self.port,
            quote_value(&self.dbname),
            quote_value(&self.user)
        )
    }

    /// Hostname/IP, or the unix-socket directory when [`Endpoint::is_unix_socket`].
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether `host` is a unix-socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// Whether a (non-empty) password was found.
    pub fn has_password(&self) -> bool {
        self.password.is_some()
    }

    /// Where the password came from, if there is one.
    pub fn password_source(&self) -> Option<&PasswordSource> {
        self.password_source.as_ref()
    }

    /// Always disable/allow/prefer: TLS-only modes are rejected by `resolve`.
    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// `None` means wait indefinitely (libpq: unset, 0 or negative).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// Server `options` (from `options=` or `PGOPTIONS`), e.g. `-c search_path=x`.
    pub fn options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    fn connect_hint(&self, error: &postgres::Error) -> String {
        let hint = if let Some(code) = error.code() {
            if *code == SqlState::INVALID_PASSWORD {
                match &self.password_source {
                    Some(src) => format!("the password was taken from {src}; correct it there"),
                    None => no_password_hint(),
                }
            } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
                "the server refused this user/database/client combination: check the user \
                 name and pg_hba.conf on the server"
                    .to_string()
            } else if *code == SqlState::INVALID_CATALOG_NAME {
                "the database does not exist: check the database name".to_string()
            } else if *code == SqlState::CANNOT_CONNECT_NOW {
                "the server is starting up or shutting down: retry later".to_string()
            } else if *code == SqlState::TOO_MANY_CONNECTIONS {
                "the server has no free connection slots: retry later or raise \
                 max_connections"
                    .to_string()
            } else {
                String::new()
            }
        } else if self.password.is_none() && error_text(error).contains("password missing") {
            no_password_hint()
        } else {
            match io_error_kind(error) {
                Some(std::io::ErrorKind::NotFound) if self.is_unix_socket() => format!(
                    "no socket {}/.s.PGSQL.{}: is the server running locally, and is \"{}\" \
                     in its unix_socket_directories (check host and port)?",
                    self.host.trim_end_matches('/'),
                    self.port,
                    self.host
                ),
                Some(std::io::ErrorKind::ConnectionRefused) => format!(
                    "is the server running on host \"{}\" and accepting connections on port {}?",
                    self.host, self.port
                ),
                Some(std::io::ErrorKind::PermissionDenied) if self.is_unix_socket() => format!(
                    "permission denied on the socket in \"{}\": check the directory and \
                     socket permissions",
                    self.host
                ),
                _ => String::new(),
            }
        };
        if hint.is_empty() {
            hint
        } else {
            format!("\nhint: {hint}")
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

fn no_password_hint() -> String {
    "the server wants a password but none was given: set PGPASSWORD, add a line \
     host:port:dbname:user:password to ~/.pgpass (chmod 0600), or use password= in the \
     connection string"
        .to_string()
}

/// The error plus all its causes; `postgres::Error`'s Display alone says e.g. just "db error".
fn error_text(error: &postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return db.to_string();
    }
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Why rust-postgres rejected a connection string: its causes only, since its top-level
/// text is just "invalid connection string" again.
fn parse_error_text(error: &postgres::Error) -> String {
    let mut parts = Vec::new();
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        parts.push(c.to_string());
        cause = c.source();
    }
    if parts.is_empty() {
        error.to_string()
    } else {
        parts.join(": ")
    }
}

fn io_error_kind(error: &postgres::Error) -> Option<std::io::ErrorKind> {
    let mut cause = std::error::Error::source(error);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cause = c.source();
    }
    None
}

/// First non-empty value.
fn first(candidates: &[&Option<String>]) -> Option<String> {
    candidates
        .iter()
        .find_map(|c| c.as_deref().filter(|s| !s.is_empty()))
        .map(str::to_owned)
}

fn default_host() -> String {
    if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
        DEFAULT_SOCKET_DIR.to_string()
    } else {
        "localhost".to_string()
    }
}

fn check_port(port: u16, origin: &str) -> Result<u16, ConnError> {
    if port == 0 {
        return Err(ConnError::InvalidSetting {
            setting: "port",
            value: "0".into(),
            origin: origin.into(),
            reason: "expected a port number from 1 to 65535".into(),
        });
    }
    Ok(port)
}

fn parse_port(value: &str, origin: &str) -> Result<u16, ConnError> {
    let invalid = || {
        let reason = if value.contains(',') {
            "replicate connects to a single host, give a single port"
        } else {
            "expected a port number from 1 to 65535"
        };
        ConnError::InvalidSetting {
            setting: "port",
            value: format!("{value:?}"),
            origin: origin.into(),
            reason: reason.into(),
        }
    };
    match value.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(invalid()),
    }
}

/// libpq semantics: <= 0 waits forever, and anything below 2 s is raised to 2 s.
fn parse_connect_timeout(value: &str) -> Result<Option<Duration>, String> {
    let secs: i64 = value
        .trim()
        .parse()
        .map_err(|_| "expected a whole number of seconds".to_string())?;
    Ok(match secs {
        s if s <= 0 => None,
        s => Some(Duration::from_secs(s.max(2).unsigned_abs())),
    })
}

fn invalid_sslmode(value: &str, origin: &str) -> ConnError {
    ConnError::InvalidSetting {
        setting: "sslmode",
        value: format!("{value:?}"),
        origin: origin.into(),
        reason: "expected disable, allow, prefer, require, verify-ca or verify-full".into(),
    }
}

/// Quote a conninfo value when it would not survive as a bare word.
fn quote_value(v: &str) -> Cow<'_, str> {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return Cow::Borrowed(v);
    }
    Cow::Owned(quote_value_always(v))
}

/// `'v'` with `'` and `\` backslash-escaped (libpq conninfo quoting).
fn quote_value_always(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

// ---------------------------------------------------------------------------------------
// OS user / home directory
// ---------------------------------------------------------------------------------------

struct PasswdEntry {
    name: String,
    home: String,
}

/// The /etc/passwd entry of the effective uid (libpq uses getpwuid(geteuid())).
fn passwd_entry_for_euid() -> Option<PasswdEntry> {
    // /proc/<pid> is owned by the process's effective uid; avoids needing libc.
    let uid = fs::metadata("/proc/self").ok()?.uid();
    let text = fs::read_to_string("/etc/passwd").ok()?;
    parse_passwd(&text, uid)
}

fn parse_passwd(text: &str, uid: u32) -> Option<PasswdEntry> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid) && !f[0].is_empty() {
                Some(PasswdEntry {
                    name: f[0].to_string(),
                    home: f[5].to_string(),
                })
            } else {
                None
            }
        })
}

/// /etc/passwd by euid, then `id -un` (covers NSS/LDAP users), then `$USER`.
fn os_user_name(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(entry) = passwd_entry_for_euid() {
        return Some(entry.name);
    }
    let from_id = std::process::Command::new("id")
        .arg("-un")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    from_id.or_else(|| env("USER"))
}

fn home_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HOME")
        .or_else(|| passwd_entry_for_euid().map(|e| e.home))
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

// ---------------------------------------------------------------------------------------
// dbname expansion and connection strings
// ---------------------------------------------------------------------------------------

fn url_prefix_len(s: &str) -> Option<usize> {
    ["postgresql://", "postgres://"]
        .iter()
        .find(|p| s.starts_with(*p))
        .map(|p| p.len())
}

/// libpq's `recognized_connection_string`.
fn looks_like_conninfo(s: &str) -> bool {
    url_prefix_len(s).is_some() || s.contains('=')
}

/// A dbname that is really a connection string becomes that side's conninfo (libpq's
/// expand_dbname, as psql/pg_dump do).
fn expand_dbname(args: &ConnArgs) -> Result<Cow<'_, ConnArgs>, ConnError> {
    match &args.dbname {
        Some(db) if looks_like_conninfo(db) => {
            if args.conninfo.is_some() {
                return Err(ConnError::InvalidSetting {
                    setting: "database name",
                    value: redact_conninfo(db),
                    origin: "the database argument".into(),
                    reason: "it looks like a connection string, but a connection string \
                             option was given as well; put everything into one of them"
                        .into(),
                });
            }
            let mut expanded = args.clone();
            expanded.conninfo = expanded.dbname.take();
            Ok(Cow::Owned(expanded))
        }
        _ => Ok(Cow::Borrowed(args)),
    }
}

/// Fields read back from a connection string. Empty values count as unset.
#[derive(Debug, Default)]
struct Conninfo {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<Vec<u8>>,
    dbname: Option<String>,
    sslmode: Option<SslMode>,
    /// `Some(None)`: explicitly "wait forever", which must override PGCONNECT_TIMEOUT.
    connect_timeout: Option<Option<Duration>>,
    application_name: Option<String>,
    fallback_application_name: Option<String>,
    options: Option<String>,
    passfile: Option<PathBuf>,
}

/// One `key=value` pair; `span` is the value's byte range in the input (for redaction).
struct Pair {
    key: String,
    value: String,
    span: (usize, usize),
}

/// Tokenises libpq `key = value` syntax (bare values with `\` escapes, or single-quoted
/// values with `\'` and `\\`). Errors never quote the input, which may hold a password.
fn tokenize_kv(s: &str) -> Result<Vec<Pair>, String> {
    let mut it = s.char_indices().peekable();
    let mut pairs = Vec::new();
    loop {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(key_start, _)) = it.peek() else {
            return Ok(pairs);
        };
        let mut key = String::new();
        while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if it.next_if(|(_, c)| *c == '=').is_none() {
            return Err(format!(
                "expected \"=\" after the keyword starting at byte {key_start}"
            ));
        }
        if key.is_empty() {
            return Err(format!("missing keyword before \"=\" at byte {key_start}"));
        }
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let value_start = it.peek().map_or(s.len(), |&(i, _)| i);
        let mut value = String::new();
        if it.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match it.next() {
                    None => {
                        return Err(format!(
                            "unterminated quoted value for \"{key}\" starting at byte {value_start}"
                        ))
                    }
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => {
                        if let Some((_, c)) = it.next() {
                            value.push(c);
                        }
                    }
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            let mut any = false;
            while let Some((_, c)) = it.next_if(|(_, c)| !c.is_whitespace()) {
                any = true;
                if c == '\\' {
                    if let Some((_, escaped)) = it.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
            if !any {
                return Err(format!("missing value for \"{key}\""));
            }
        }
        let value_end = it.peek().map_or(s.len(), |&(i, _)| i);
        pairs.push(Pair {
            key,
            value,
            span: (value_start, value_end),
        });
    }
}

/// Lenient %XX decoding (invalid sequences stay literal, as in rust-postgres).
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "percent-encoded value is not valid UTF-8".to_string())
}

/// A URL cut into the part rust-postgres parses (`base`) and its `?query`.
struct UrlParts<'a> {
    base: &'a str,
    /// Byte offset of the `user[:password]` userinfo within the input, and its end.
    userinfo: Option<(usize, usize)>,
    /// `host[:port][,...]` as written.
    hostpart: &'a str,
    query: Option<&'a str>,
}

fn split_url(s: &str, prefix_len: usize) -> UrlParts<'_> {
    let rest = &s[prefix_len..];
    // libpq: userinfo ends at the first '@' that comes before any '/'.
    let userinfo_end = rest
        .find(['@', '/'])
        .filter(|&i| rest.as_bytes()[i] == b'@');
    let after_userinfo = userinfo_end.map_or(prefix_len, |i| prefix_len + i + 1);
    let (base_end, query) = match s[after_userinfo..].find('?') {
        Some(q) => (after_userinfo + q, Some(&s[after_userinfo + q + 1..])),
        None => (s.len(), None),
    };
    let main = &s[after_userinfo..base_end];
    UrlParts {
        base: &s[..base_end],
        userinfo: userinfo_end.map(|i| (prefix_len, prefix_len + i)),
        hostpart: main.split('/').next().unwrap_or(""),
        query,
    }
}

/// rust-postgres adds port 5432 for every URL host without one; libpq leaves the port
/// unset so PGPORT can still apply. Detect whether a port was really written.
fn url_has_explicit_port(hostpart: &str) -> bool {
    hostpart.split(',').any(|chunk| {
        if let Some(inner) = chunk.strip_prefix('[') {
            inner
                .find(']')
                .is_some_and(|i| inner[i + 1..].starts_with(':'))
        } else {
            chunk.contains(':')
        }
    })
}

/// The connection string with passwords replaced by `****`, for messages.
fn redact_conninfo(s: &str) -> String {
    const HIDDEN: &str = "(connection string not shown: it contains a password)";
    if let Some(prefix_len) = url_prefix_len(s) {
        let parts = split_url(s, prefix_len);
        let mut out = String::new();
        let mut base_from = prefix_len;
        out.push_str(&s[..prefix_len]);
        if let Some((start, end)) = parts.userinfo {
            let userinfo = &s[start..end];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":****");
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            base_from = end + 1;
        }
        out.push_str(&parts.base[base_from..]);
        if let Some(query) = parts.query {
            out.push('?');
            let params: Vec<String> = query
                .split('&')
                .map(|param| match param.split_once('=') {
                    Some((k, _)) if percent_decode(k).ok().as_deref() == Some("password") => {
                        format!("{k}=****")
                    }
                    _ => param.to_string(),
                })
                .collect();
            out.push_str(&params.join("&"));
        }
        return out;
    }
    match tokenize_kv(s) {
        Ok(pairs) => {
            let mut out = s.to_string();
            // Replace from the end so earlier spans stay valid.
            for pair in pairs.iter().rev().filter(|p| p.key == "password") {
                out.replace_range(pair.span.0..pair.span.1, "****");
            }
            out
        }
        // Unparsable: we cannot tell which bytes are the password.
        Err(_) if s.to_ascii_lowercase().contains("password") => HIDDEN.to_string(),
        Err(_) => s.to_string(),
    }
}

/// Parses a libpq connection string (key=value or URL) via `postgres::Config::from_str`,
/// handling the keywords rust-postgres does not know (or knows differently) ourselves.
fn parse_conninfo(s: &str) -> Result<Conninfo, ConnError> {
    let mut out = Conninfo::default();
    if s.trim().is_empty() {
        return Ok(out);
    }
    let shown = redact_conninfo(s);
    let invalid = |reason: String| ConnError::InvalidConninfo {
        conninfo: shown.clone(),
        reason,
    };

    let mut pairs = Vec::new();
    if let Some(prefix_len) = url_prefix_len(s) {
        let parts = split_url(s, prefix_len);
        let base = Config::from_str(parts.base).map_err(|e| invalid(parse_error_text(&e)))?;
        absorb(
            &mut out,
            &base,
            url_has_explicit_port(parts.hostpart),
            &shown,
        )?;
        for (n, param) in parts.query.unwrap_or("").split('&').enumerate() {
            if param.is_empty() {
                continue;
            }
            let (k, v) = param
                .split_once('=')
                .ok_or_else(|| invalid(format!("URL parameter {} has no \"=\"", n + 1)))?;
            pairs.push(Pair {
                key: percent_decode(k).map_err(&invalid)?,
                value: percent_decode(v).map_err(&invalid)?,
                span: (0, 0),
            });
        }
    } else {
        pairs = tokenize_kv(s).map_err(&invalid)?;
    }

    // Keywords rust-postgres handles are re-serialised (last occurrence wins, as in libpq;
    // rust-postgres would instead collect repeated hosts into a host list).
    let mut passthrough: Vec<(String, String)> = Vec::new();
    for Pair { key, value, .. } in pairs {
        let nonempty = |v: String| Some(v).filter(|v| !v.is_empty());
        match key.as_str() {
            // rust-postgres only knows disable/prefer/require.
            "sslmode" => {
                out.sslmode = Some(SslMode::parse(&value).ok_or_else(|| {
                    invalid_sslmode(&value, &format!("connection string {shown}"))
                })?)
            }
            // rust-postgres drops connect_timeout=0, which must override PGCONNECT_TIMEOUT.
            "connect_timeout" => {
                out.connect_timeout = Some(parse_connect_timeout(&value).map_err(|reason| {
                    ConnError::InvalidSetting {
                        setting: "connect_timeout",
                        value: format!("{value:?}"),
                        origin: format!("connection string {shown}"),
                        reason,
                    }
                })?)
            }
            "passfile" => out.passfile = nonempty(value).map(PathBuf::from),
            "fallback_application_name" => out.fallback_application_name = nonempty(value),
            // We never attempt GSSAPI encryption, which satisfies disable and prefer.
            "gssencmode" if value == "disable" || value == "prefer" => {}
            "gssencmode" => {
                return Err(ConnError::UnsupportedOption {
                    option: format!("gssencmode={value}"),
                    conninfo: shown,
                })
            }
            "host" | "port" | "user" | "password" | "dbname" | "application_name" | "options" => {
                passthrough.retain(|(k, _)| *k != key);
                passthrough.push((key, value));
            }
            _ => {
                return Err(ConnError::UnsupportedOption {
                    option: key,
                    conninfo: shown,
                })
            }
        }
    }
    if !passthrough.is_empty() {
        let rebuilt: Vec<String> = passthrough
            .iter()
            .map(|(k, v)| format!("{k}={}", quote_value_always(v)))
            .collect();
        let config =
            Config::from_str(&rebuilt.join(" ")).map_err(|e| invalid(parse_error_text(&e)))?;
        let has_port = passthrough.iter().any(|(k, _)| k == "port");
        absorb(&mut out, &config, has_port, &shown)?;
    }
    Ok(out)
}

/// Copies the fields set in `config` into `out` (later calls override earlier ones).
fn absorb(
    out: &mut Conninfo,
    config: &Config,
    take_ports: bool,
    shown: &str,
) -> Result<(), ConnError> {
    let several = |what: String| ConnError::MultipleHosts {
        origin: format!("connection string {shown}"),
        value: what,
    };
    match config.get_hosts() {
        [] => {}
        [host] => {
            let host = match host {
                Host::Tcp(h) => h.clone(),
                Host::Unix(p) => p
                    .to_str()
                    .ok_or_else(|| ConnError::InvalidConninfo {
                        conninfo: shown.to_string(),
                        reason: "the unix-socket directory is not valid UTF-8".into(),
                    })?
                    .to_string(),
            };
            if !host.is_empty() {
                out.host = Some(host);
            }
        }
        hosts => {
            let names: Vec<String> = hosts
                .iter()
                .map(|h| match h {
                    Host::Tcp(h) => h.clone(),
                    Host::Unix(p) => p.display().to_string(),
                })
                .collect();
            return Err(several(names.join(",")));
        }
    }
    if take_ports {
        match config.get_ports() {
            [] => {}
            [port] => out.port = Some(check_port(*port, &format!("connection string {shown}"))?),
            ports => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                return Err(several(ports.join(",")));
            }
        }
    }
    let set = |field: &mut Option<String>, value: Option<&str>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            *field = Some(v.to_string());
        }
    };
    set(&mut out.user, config.get_user());
    set(&mut out.dbname, config.get_dbname());
    set(&mut out.application_name, config.get_application_name());
    set(&mut out.options, config.get_options());
    if let Some(p) = config.get_password().filter(|p| !p.is_empty()) {
        out.password = Some(p.to_vec());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Password file
// ---------------------------------------------------------------------------------------

#[derive(Debug, PartialEq, Eq)]
enum PgpassOutcome {
    Found(Vec<u8>),
    /// Missing, unreadable, or no matching line (libpq is silent about all of these).
    NoMatch,
    /// Not used; the text is libpq's warning for stderr.
    Ignored(String),
}

/// libpq's passwordFromFile. A unix-socket host is first matched exactly as libpq 15 does
/// (the default socket dir as `localhost`, any other dir as its path); if nothing matches,
/// the other alias is tried (`localhost` for any socket dir, or the default dir's path).
fn pgpass_lookup(path: &Path, host: &str, port: u16, dbname: &str, user: &str) -> PgpassOutcome {
    let Ok(meta) = fs::metadata(path) else {
        return PgpassOutcome::NoMatch;
    };
    if !meta.is_file() {
        return PgpassOutcome::Ignored(format!(
            "WARNING: password file \"{}\" is not a plain file",
            path.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return PgpassOutcome::Ignored(format!(
            "WARNING: password file \"{}\" has group or world access; permissions should be \
             u=rw (0600) or less",
            path.display()
        ));
    }
    let Ok(data) = fs::read(path) else {
        return PgpassOutcome::NoMatch;
    };
    let port = port.to_string();
    let (primary, fallback) = if host.starts_with('/') {
        if host == DEFAULT_SOCKET_DIR {
            ("localhost", Some(host))
        } else {
            (host, Some("localhost"))
        }
    } else {
        (host, None)
    };
    for hostname in std::iter::once(primary).chain(fallback) {
        if let Some(pw) = pgpass_scan(&data, hostname, &port, dbname, user) {
            return PgpassOutcome::Found(pw);
        }
    }
    PgpassOutcome::NoMatch
}

fn pgpass_scan(data: &[u8], host: &str, port: &str, dbname: &str, user: &str) -> Option<Vec<u8>> {
    for line in data.split(|&b| b == b'\n') {
        if line.first() == Some(&b'#') {
            continue;
        }
        let mut end = line.len();
        while end > 0 && matches!(line[end - 1], b'\r' | b'\n') {
            end -= 1;
        }
        let line = &line[..end];
        if line.is_empty() {
            continue;
        }
        let rest = [host, port, dbname, user]
            .iter()
            .try_fold(line, |rest, token| {
                pgpass_field_matches(rest, token.as_bytes())
            });
        if let Some(rest) = rest {
            return Some(pgpass_password(rest));
        }
    }
    None
}

/// libpq's pwdfMatchesString: if the field at the start of `buf` is `*` or equals `token`
/// (after `\` unescaping), returns what follows its ':' separator.
fn pgpass_field_matches<'a>(buf: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if buf.starts_with(b"*:") {
        return Some(&buf[2..]);
    }
    let (mut i, mut t) = (0, 0);
    while i < buf.len() {
        let mut escaped = false;
        if buf[i] == b'\\' {
            i += 1;
            escaped = true;
            if i == buf.len() {
                return None;
            }
        }
        if buf[i] == b':' && t == token.len() && !escaped {
            return Some(&buf[i + 1..]);
        }
        if t == token.len() || buf[i] != token[t] {
            return None;
        }
        i += 1;
        t += 1;
    }
    None
}

/// The password field: up to the first unescaped ':', with `\x` -> `x`.
fn pgpass_password(buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < buf.len() && buf[i] != b':' {
        if buf[i] == b'\\' && i + 1 < buf.len() {
            i += 1;
        }
        out.push(buf[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    /// An environment with only `vars`, plus a HOME without a .pgpass so the real
    /// ~/.pgpass is never read.
    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let mut map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        map.entry("HOME".into())
            .or_insert_with(|| "/nonexistent/rserv-conn-test-home".into());
        move |k| map.get(k).cloned()
    }

    fn resolve(specific: &ConnArgs, defaults: &ConnArgs, vars: &[(&str, &str)]) -> Endpoint {
        match Endpoint::resolve_with(specific, defaults, None, &env_of(vars)) {
            Ok(e) => e,
            Err(e) => panic!("resolve failed: {e}"),
        }
    }

    fn resolve_err(specific: &ConnArgs, vars: &[(&str, &str)]) -> ConnError {
        match Endpoint::resolve_with(specific, &ConnArgs::default(), None, &env_of(vars)) {
            Ok(e) => panic!("expected an error, got {e:?}"),
            Err(e) => e,
        }
    }

    fn conninfo(s: &str) -> ConnArgs {
        ConnArgs {
            conninfo: Some(s.into()),
            ..Default::default()
        }
    }

    fn password_of(e: &Endpoint) -> Option<String> {
        e.password
            .as_ref()
            .map(|p| String::from_utf8_lossy(&p.0).into_owned())
    }

    /// A file under temp_dir with the given mode, removed on drop.
    struct TempFile(PathBuf);
    impl TempFile {
        fn new(name: &str, contents: &str, mode: u32) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("rserv-conn-test-{}-{name}", std::process::id()));
            let _ = fs::remove_file(&path);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .unwrap();
            f.write_all(contents.as_bytes()).unwrap();
            // The umask may have masked the requested mode.
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            TempFile(path)
        }
    }
    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = fs::remove_file(&self.0);
        }
    }

    #[test]
    fn precedence_specific_defaults_conninfo_env() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "7000"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
        ];
        let ci = "host=cihost port=6000 user=ciuser dbname=cidb";
        let specific = ConnArgs {
            conninfo: Some(ci.into()),
            host: Some("sphost".into()),
            ..Default::default()
        };
        let defaults = ConnArgs {
            host: Some("dfhost".into()),
            port: Some(5000),
            ..Default::default()
        };
        let e = resolve(&specific, &defaults, &env);
        assert_eq!(e.host(), "sphost");
        assert_eq!(e.port(), 5000);
        assert_eq!(e.user(), "ciuser");
        assert_eq!(e.dbname(), "cidb");

        // Without conninfo, env vars apply.
        let e = resolve(&ConnArgs::default(), &ConnArgs::default(), &env);
        assert_eq!(
            (e.host(), e.port(), e.user(), e.dbname()),
            ("envhost", 7000, "envuser", "envdb")
        );

        // specific.conninfo beats defaults.conninfo entirely (no merging).
        let e = resolve(&conninfo("dbname=a"), &conninfo("dbname=b user=x"), &env);
        assert_eq!((e.dbname(), e.user()), ("a", "envuser"));
        let e = resolve(&ConnArgs::default(), &conninfo("dbname=b"), &env);
        assert_eq!(e.dbname(), "b");

        // Positional dbname beats the conninfo's dbname; empty fields count as unset.
        let specific = ConnArgs {
            conninfo: Some("dbname=fromci".into()),
            dbname: Some("positional".into()),
            user: Some(String::new()),
            ..Default::default()
        };
        let e = resolve(&specific, &ConnArgs::default(), &env);
        assert_eq!((e.dbname(), e.user()), ("positional", "envuser"));
    }

    #[test]
    fn libpq_defaults() {
        let e = resolve(&ConnArgs::default(), &ConnArgs::default(), &[]);
        let expected_host = if Path::new(DEFAULT_SOCKET_DIR).is_dir() {
            DEFAULT_SOCKET_DIR
        } else {
            "localhost"
        };
        assert_eq!(e.host(), expected_host);
        assert_eq!(e.port(), 5432);
        let os_user = os_user_name(&env_of(&[])).unwrap();
        assert_eq!(e.user(), os_user);
        assert_eq!(e.dbname(), os_user, "dbname defaults to the user");
        assert_eq!(e.application_name(), "replicate");
        assert_eq!(e.sslmode(), SslMode::Prefer);
        assert_eq!(e.connect_timeout(), None);
        assert!(!e.has_password());

        // dbname defaults to the resolved user, not the OS user.
        let e = resolve(
            &ConnArgs::default(),
            &ConnArgs::default(),
            &[("PGUSER", "bob")],
        );
        assert_eq!(e.dbname(), "bob");
    }

    #[test]
    fn keyword_value_conninfo() {
        let e = resolve(
            &conninfo(
                "host = /tmp/sock port=5433 dbname='my db' user=u\\ x \
                 application_name=app sslmode=disable connect_timeout=10 \
                 options='-c search_path=s'",
            ),
            &ConnArgs::default(),
            &[("PGAPPNAME", "envapp"), ("PGCONNECT_TIMEOUT", "30")],
        );
        assert_eq!(e.host(), "/tmp/sock");
        assert!(e.is_unix_socket());
        assert_eq!(e.port(), 5433);
        assert_eq!(e.dbname(), "my db");
        assert_eq!(e.user(), "u x");
        assert_eq!(e.application_name(), "app");
        assert_eq!(e.sslmode(), SslMode::Disable);
        assert_eq!(e.connect_timeout(), Some(Duration::from_secs(10)));
        assert_eq!(e.options(), Some("-c search_path=s"));
        assert_eq!(
            e.describe(),
            "host=/tmp/sock port=5433 dbname='my db' user='u x'"
        );

        // Last occurrence wins, like libpq.
        let e = resolve(&conninfo("host=a host=b"), &ConnArgs::default(), &[]);
        assert_eq!(e.host(), "b");
    }

    #[test]
    fn url_conninfo() {
        let e = resolve(
            &conninfo(
                "postgresql://alice:s%40cret@db.example:6543/prod?application_name=x&sslmode=allow",
            ),
            &ConnArgs::default(),
            &[("PGPORT", "7000")],
        );
        assert_eq!(
            (e.host(), e.port(), e.user(), e.dbname()),
            ("db.example", 6543, "alice", "prod")
        );
        assert_eq!(password_of(&e).as_deref(), Some("s@cret"));
        assert_eq!(e.password_source(), Some(&PasswordSource::Conninfo));
        assert_eq!(e.application_name(), "x");
        assert_eq!(e.sslmode(), SslMode::Allow);

        // A URL host without a port leaves the port to PGPORT (libpq; rust-postgres
        // alone would force 5432).
        let e = resolve(
            &conninfo("postgres://db.example/prod"),
            &ConnArgs::default(),
            &[("PGPORT", "7000")],
        );
        assert_eq!(e.port(), 7000);

        // Unix socket via percent-encoded host and via ?host=.
        let e = resolve(
            &conninfo("postgresql://%2Ftmp%2Fpg:5499/db"),
            &ConnArgs::default(),
            &[],
        );
        assert_eq!((e.host(), e.port()), ("/tmp/pg", 5499));
        let e = resolve(
            &conninfo("postgresql:///db?host=%2Fvar%2Flib%2Fpg&port=5400"),
            &ConnArgs::default(),
            &[],
        );
        assert_eq!(
            (e.host(), e.port(), e.dbname()),
            ("/var/lib/pg", 5400, "db")
        );

        // IPv6 literal.
        let e = resolve(
            &conninfo("postgresql://[::1]:5433/db"),
            &ConnArgs::default(),
            &[],
        );
        assert_eq!((e.host(), e.port()), ("::1", 5433));
    }

    #[test]
    fn dbname_that_is_a_conninfo_is_expanded() {
        let specific = ConnArgs {
            dbname: Some("postgresql://h:5444/real".into()),
            ..Default::default()
        };
        let e = resolve(&specific, &ConnArgs::default(), &[]);
        assert_eq!((e.host(), e.port(), e.dbname()), ("h", 5444, "real"));

        let both = ConnArgs {
            dbname: Some("host=h password=hunter2".into()),
            conninfo: Some("host=x".into()),
            ..Default::default()
        };
        let msg = resolve_err(&both, &[]).to_string();
        assert!(msg.contains("connection string"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn env_settings() {
        let e = resolve(
            &ConnArgs::default(),
            &ConnArgs::default(),
            &[
                ("PGSSLMODE", "allow"),
                ("PGCONNECT_TIMEOUT", "1"),
                ("PGAPPNAME", "envapp"),
                ("PGOPTIONS", "-c x=y"),
                ("PGHOST", ""), // empty counts as unset
            ],
        );
        assert_eq!(e.sslmode(), SslMode::Allow);
        // libpq raises timeouts below 2 s to 2 s.
        assert_eq!(e.connect_timeout(), Some(Duration::from_secs(2)));
        assert_eq!(e.application_name(), "envapp");
        assert_eq!(e.options(), Some("-c x=y"));
        assert!(!e.host().is_empty());

        // connect_timeout=0 in the conninfo means "forever" and beats the env var.
        let e = resolve(
            &conninfo("connect_timeout=0"),
            &ConnArgs::default(),
            &[("PGCONNECT_TIMEOUT", "5")],
        );
        assert_eq!(e.connect_timeout(), None);

        // fallback_application_name only beats our default.
        let e = resolve(
            &conninfo("fallback_application_name=fb"),
            &ConnArgs::default(),
            &[],
        );
        assert_eq!(e.application_name(), "fb");
        let e = resolve(
            &conninfo("fallback_application_name=fb"),
            &ConnArgs::default(),
            &[("PGAPPNAME", "envapp")],
        );
        assert_eq!(e.application_name(), "envapp");

        for (var, value) in [
            ("PGPORT", "abc"),
            ("PGPORT", "0"),
            ("PGSSLMODE", "bogus"),
            ("PGCONNECT_TIMEOUT", "soon"),
        ] {
            let msg = resolve_err(&ConnArgs::default(), &[(var, value)]).to_string();
            assert!(msg.contains(var) && msg.contains(value), "{msg}");
        }
        let err = resolve_err(&ConnArgs::default(), &[("PGHOST", "a,b")]);
        assert!(matches!(err, ConnError::MultipleHosts { .. }), "{err}");
    }

    #[test]
    fn tls_modes_are_refused() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let err = resolve_err(
                &conninfo(&format!("host=h sslmode={mode} password=pw1")),
                &[],
            );
            assert!(matches!(err, ConnError::TlsNotSupported { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("TLS") && msg.contains(mode), "{msg}");
            assert!(msg.contains("host=h port=5432"), "{msg}");
            assert!(!msg.contains("pw1"), "{msg}");
            let err = resolve_err(&ConnArgs::default(), &[("PGSSLMODE", mode)]);
            assert!(matches!(err, ConnError::TlsNotSupported { .. }), "{err}");
        }
    }

    #[test]
    fn password_precedence() {
        let pgpass = TempFile::new("prec", "*:*:*:*:frompgpass\n", 0o600);
        let pgpass_path = pgpass.0.to_str().unwrap();
        let ci = conninfo("password=fromci");
        let flag = ConnArgs {
            password: Some("fromflag".into()),
            ..ci.clone()
        };
        let all = [("PGPASSWORD", "fromenv"), ("PGPASSFILE", pgpass_path)];
        let e = resolve(&flag, &ConnArgs::default(), &all);
        assert_eq!(password_of(&e).as_deref(), Some("fromflag"));
        assert_eq!(e.password_source(), Some(&PasswordSource::Argument));
        let e = resolve(&ci, &ConnArgs::default(), &all);
        assert_eq!(password_of(&e).as_deref(), Some("fromci"));
        let e = resolve(&ConnArgs::default(), &ConnArgs::default(), &all);
        assert_eq!(password_of(&e).as_deref(), Some("fromenv"));
        assert_eq!(e.password_source(), Some(&PasswordSource::Environment));
        let e = resolve(&ConnArgs::default(), &ConnArgs::default(), &all[1..]);
        assert_eq!(password_of(&e).as_deref(), Some("frompgpass"));
        assert_eq!(
            e.password_source(),
            Some(&PasswordSource::File(pgpass.0.clone()))
        );

        // The password_file argument beats PGPASSFILE; $HOME/.pgpass is the last resort.
        let other = TempFile::new("prec-arg", "*:*:*:*:fromarg\n", 0o600);
        let e = Endpoint::resolve_with(
            &ConnArgs::default(),
            &ConnArgs::default(),
            Some(&other.0),
            &env_of(&all[1..]),
        )
        .unwrap();
        assert_eq!(password_of(&e).as_deref(), Some("fromarg"));

        let home =
            std::env::temp_dir().join(format!("rserv-conn-test-{}-home", std::process::id()));
        fs::create_dir_all(&home).unwrap();
        let dotpgpass = home.join(".pgpass");
        fs::write(&dotpgpass, "*:*:*:*:fromhome\n").unwrap();
        fs::set_permissions(&dotpgpass, fs::Permissions::from_mode(0o600)).unwrap();
        let e = resolve(
            &ConnArgs::default(),
            &ConnArgs::default(),
            &[("HOME", home.to_str().unwrap())],
        );
        assert_eq!(password_of(&e).as_deref(), Some("fromhome"));
        fs::remove_dir_all(&home).unwrap();

        // An empty explicit password counts as none.
        let empty = ConnArgs {
            password: Some(String::new()),
            ..Default::default()
        };
        let e = resolve(&empty, &ConnArgs::default(), &all);
        assert_eq!(password_of(&e).as_deref(), Some("fromenv"));
    }

    #[test]
    fn pgpass_matching() {
        let text = "\
# comment:*:*:*:nope
db1:5432:app:alice:first
db1:5432:app:alice:second
*:5433:*:*:wild\\:card\\\\pw:ignored-extra-field
host\\:colon:5432:*:*:escaped-host
/tmp/sock:5432:*:bob:socketpath
localhost:5432:*:carol:viaLocalhost
/tmp/sock:5432:*:carol:exactSocket
localhost:5432:*:dave:localonly
/var/run/postgresql:5432:*:erin:defaultdirpath
localhost:*:*:frank:\r
";
        let file = TempFile::new("match", text, 0o600);
        let look = |host: &str, port: u16, db: &str, user: &str| match pgpass_lookup(
            &file.0, host, port, db, user,
        ) {
            PgpassOutcome::Found(p) => Some(String::from_utf8(p).unwrap()),
            other => {
                assert_eq!(other, PgpassOutcome::NoMatch);
                None
            }
        };
        // First match wins; the comment line is skipped.
        assert_eq!(look("db1", 5432, "app", "alice").as_deref(), Some("first"));
        assert_eq!(look("db1", 5432, "other", "alice"), None);
        // Wildcards, escapes, and the password ends at the first unescaped ':'.
        assert_eq!(
            look("any", 5433, "x", "y").as_deref(),
            Some("wild:card\\pw")
        );
        assert_eq!(
            look("host:colon", 5432, "d", "u").as_deref(),
            Some("escaped-host")
        );
        // A '*' is only a wildcard as a whole field.
        assert_eq!(look("db1", 5432, "app", "zed"), None);
        // Unix sockets: the path itself matches ...
        assert_eq!(
            look("/tmp/sock", 5432, "d", "bob").as_deref(),
            Some("socketpath")
        );
        // ... and for a non-default dir an exact path entry beats an earlier localhost
        // entry (that is what libpq picks) ...
        assert_eq!(
            look("/tmp/sock", 5432, "d", "carol").as_deref(),
            Some("exactSocket")
        );
        // ... but localhost still matches when no path entry does.
        assert_eq!(
            look("/tmp/sock", 5432, "d", "dave").as_deref(),
            Some("localonly")
        );
        // The default socket dir is 'localhost' to libpq, and its path matches too.
        assert_eq!(
            look(DEFAULT_SOCKET_DIR, 5432, "d", "dave").as_deref(),
            Some("localonly")
        );
        assert_eq!(
            look(DEFAULT_SOCKET_DIR, 5432, "d", "erin").as_deref(),
            Some("defaultdirpath")
        );
        // A TCP host named otherwise does not match localhost; empty password found.
        assert_eq!(look("10.0.0.1", 5432, "d", "dave"), None);
        assert_eq!(look("localhost", 6000, "d", "frank").as_deref(), Some(""));
        // Default port is matched as the string "5432".
        let e = Endpoint::resolve_with(
            &ConnArgs {
                host: Some("db1".into()),
                dbname: Some("app".into()),
                user: Some("alice".into()),
                ..Default::default()
            },
            &ConnArgs::default(),
            Some(&file.0),
            &env_of(&[]),
        )
        .unwrap();
        assert_eq!(password_of(&e).as_deref(), Some("first"));
        // A matching line with an empty password means no password.
        let e = Endpoint::resolve_with(
            &ConnArgs {
                host: Some("localhost".into()),
                port: Some(6000),
                ..Default::default()
            },
            &ConnArgs::default(),
            Some(&file.0),
            &env_of(&[]),
        )
        .unwrap();
        assert!(!e.has_password());
    }

    #[test]
    fn pgpass_field_edge_cases() {
        assert_eq!(pgpass_field_matches(b"*:rest", b"x"), Some(&b"rest"[..]));
        assert_eq!(pgpass_field_matches(b"\\*:rest", b"x"), None);
        assert_eq!(pgpass_field_matches(b"\\*:rest", b"*"), Some(&b"rest"[..]));
        assert_eq!(pgpass_field_matches(b"ab:rest", b"a"), None);
        assert_eq!(pgpass_field_matches(b"a:rest", b"ab"), None);
        assert_eq!(pgpass_field_matches(b"a\\", b"a"), None);
        assert_eq!(pgpass_field_matches(b"abc", b"abc"), None);
        assert_eq!(pgpass_password(b"pw\\"), b"pw\\".to_vec());
        assert_eq!(pgpass_password(b"a\\:b:c"), b"a:b".to_vec());
    }

    #[test]
    fn pgpass_permission_check() {
        let loose = TempFile::new("loose", "*:*:*:*:secret\n", 0o640);
        match pgpass_lookup(&loose.0, "h", 5432, "d", "u") {
            PgpassOutcome::Ignored(w) => {
                assert!(w.contains("group or world access"), "{w}");
                assert!(w.contains(loose.0.to_str().unwrap()), "{w}");
            }
            other => panic!("expected Ignored, got {other:?}"),
        }
        let e = Endpoint::resolve_with(
            &ConnArgs::default(),
            &ConnArgs::default(),
            Some(&loose.0),
            &env_of(&[]),
        )
        .unwrap();
        assert!(!e.has_password());

        let strict = TempFile::new("strict", "*:*:*:*:secret\n", 0o400);
        assert_eq!(
            pgpass_lookup(&strict.0, "h", 5432, "d", "u"),
            PgpassOutcome::Found(b"secret".to_vec())
        );
        // Missing file: silently nothing. A directory: warning.
        assert_eq!(
            pgpass_lookup(Path::new("/nonexistent/pgpass"), "h", 5432, "d", "u"),
            PgpassOutcome::NoMatch
        );
        assert!(matches!(
            pgpass_lookup(&std::env::temp_dir(), "h", 5432, "d", "u"),
            PgpassOutcome::Ignored(_)
        ));
    }

    #[test]
    fn redaction() {
        let secret = "hunter2";
        let e = resolve(
            &ConnArgs {
                host: Some("/tmp/x".into()),
                port: Some(5433),
                user: Some("u".into()),
                dbname: Some("b".into()),
                password: Some(secret.into()),
                ..Default::default()
            },
            &ConnArgs::default(),
            &[],
        );
        assert_eq!(e.describe(), "host=/tmp/x port=5433 dbname=b user=u");
        assert_eq!(e.to_string(), e.describe());
        let dbg = format!("{e:?} {:#?}", e.config());
        assert!(!dbg.contains(secret), "{dbg}");
        assert!(dbg.contains("<redacted>"), "{dbg}");
        // The Config really carries it.
        assert_eq!(e.config().get_password(), Some(secret.as_bytes()));

        assert_eq!(
            redact_conninfo("host=h password='a b' user=u"),
            "host=h password=**** user=u"
        );
        assert_eq!(
            redact_conninfo("postgresql://u:hunter2@h/db?password=hunter2&x=1"),
            "postgresql://u:****@h/db?password=****&x=1"
        );
        assert_eq!(
            redact_conninfo("postgresql://u@h/db"),
            "postgresql://u@h/db"
        );

        // Errors from bad conninfos never echo the password.
        for bad in [
            "host=h password=hunter2 keepalives=1",
            "host=h password=hunter2 sslmode=bogus",
            "host=h password='hunter2",
            "host=h password=hunter2 trailing",
            "host=h password=hunter2 port=notanumber",
            "host=h password=hunter2 port=1,2",
            "postgresql://u:hunter2@h:notaport/db",
            "postgresql://u:hunter2@h/db?bogus=1",
            "postgresql://u:hunter2@h/db?sslmode=verify-full",
            "postgresql://u:hunter2@h1,h2/db",
        ] {
            let err = resolve_err(&conninfo(bad), &[]);
            let text = format!("{err} {err:?}");
            assert!(!text.contains(secret), "{bad}: {text}");
        }
        let msg = resolve_err(&conninfo("host=h password=x keepalives=1"), &[]).to_string();
        assert!(
            msg.contains("keepalives") && msg.contains("host=h password=****"),
            "{msg}"
        );
        let msg = resolve_err(&conninfo("host=h port=notanumber"), &[]).to_string();
        assert!(
            msg.contains("port") && msg.contains("host=h port=notanumber"),
            "{msg}"
        );
        let err = resolve_err(&conninfo("host=a,b"), &[]);
        assert!(matches!(err, ConnError::MultipleHosts { .. }), "{err}");
    }

    #[test]
    fn connect_error_names_endpoint_not_password() {
        let dir =
            std::env::temp_dir().join(format!("rserv-conn-test-{}-nosock", std::process::id()));
        let e = resolve(
            &ConnArgs {
                host: Some(dir.to_str().unwrap().into()),
                user: Some("u".into()),
                dbname: Some("d".into()),
                password: Some("hunter2".into()),
                ..Default::default()
            },
            &ConnArgs::default(),
            &[],
        );
        let err = match e.connect() {
            Ok(_) => panic!("connected to a nonexistent socket"),
            Err(err) => err,
        };
        let text = format!("{err} {err:?}");
        assert!(text.contains(&e.describe()), "{text}");
        assert!(text.contains("hint: no socket"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}
