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
//!
//! TLS follows libpq 15 (OpenSSL, through `postgres-openssl`):
//!
//! * `sslmode` (connection string, else `PGSSLMODE`, else `prefer`): `disable` never uses
//!   SSL; `allow` connects without SSL and retries with SSL if the server rejects that;
//!   `prefer` uses SSL when the server offers it and retries without SSL if the SSL attempt
//!   fails (handshake or server rejection); `require` insists on SSL; `verify-ca` also checks
//!   that the server certificate chains to `sslrootcert`; `verify-full` also checks that the
//!   certificate names the host (subjectAltName DNS or IP entries, else the CN).
//! * `sslrootcert` (connection string, `PGSSLROOTCERT`, default `~/.postgresql/root.crt`):
//!   the only trusted CAs (the system store is not used, as in libpq 15). It must exist for
//!   verify-ca/verify-full. When it exists, allow/prefer/require verify the chain too (libpq:
//!   "require with a root certificate file behaves like verify-ca").
//! * `sslcert`/`sslkey` (`PGSSLCERT`/`PGSSLKEY`, default `~/.postgresql/postgresql.crt` and
//!   `.key`): a client certificate, sent when the certificate file exists; the key must not be
//!   group/world accessible (0600, or 0640 if owned by root) and not encrypted.
//! * `sslsni` (`PGSSLSNI`, default 1): send the host name (not an IP) in the TLS handshake.
//! * Like libpq, SSL is never used over unix-domain sockets: sslmode is ignored there.
//! * At least TLS 1.2 (libpq 15's default `ssl_min_protocol_version`).
//!
//! Connections that stall (see [`watch`]): `connect_timeout` bounds the whole connection start
//! (rust-postgres bounds only the TCP connect), TCP keepalives and `tcp_user_timeout`
//! ([`keepalive`], libpq's keywords) have defaults that notice a dead peer in about 25 s, and a
//! read timeout has a silent connection checked over a new one and closed when its server is
//! unreachable or its session gone. Replicate's defaults where libpq has none: `connect_timeout`
//! [`DEFAULT_CONNECT_TIMEOUT`], read timeout [`DEFAULT_READ_TIMEOUT`].
//!
//! One file per concern: [`conninfo`] parses connection strings (key=value and URLs) once into
//! their settings; [`resolve`] applies the flags, the `PG*` environment and libpq's defaults;
//! [`pgpass`] reads the password file; [`tls`] plans the connection attempts and builds the
//! OpenSSL client; [`diagnose`] turns failures into messages that say what to fix;
//! [`keepalive`] the TCP settings; [`socket`] and [`watch`] the stalled connections. This file
//! holds the resolved [`Endpoint`], its `postgres::Config` and [`Endpoint::connect`].

mod conninfo;
mod diagnose;
mod keepalive;
mod pgpass;
mod resolve;
mod socket;
mod tls;
mod watch;

#[cfg(test)]
mod test_support;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::{Client, Config};

use conninfo::quote_value;
pub use conninfo::{conninfo_dbname, looks_like_conninfo};
pub use keepalive::Keepalive;
use tls::TlsSettings;
pub use watch::PROBE_APPLICATION_NAME;

/// libpq's compiled-in unix-socket directory on Debian/Ubuntu (`DEFAULT_PGSOCKET_DIR`).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// libpq's default port.
pub const DEFAULT_PORT: u16 = 5432;
/// `application_name` used when neither the connection string nor `PGAPPNAME` sets one.
pub const DEFAULT_APPLICATION_NAME: &str = "replicate";
/// `connect_timeout` when neither the connection string nor `PGCONNECT_TIMEOUT` sets one
/// (libpq waits forever); `connect_timeout=0` waits forever.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence after which a connection is checked (see [`watch`]).
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The slave's `lock_timeout` (its apply) when none is given (see `crate::locks`).
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection-string keywords we honour. Anything else is rejected rather than silently
/// dropped.
const SUPPORTED_KEYWORDS: &str = "host, port, user, password, dbname, sslmode, sslrootcert, \
     sslcert, sslkey, sslsni, connect_timeout, application_name, fallback_application_name, \
     options, passfile, gssencmode, keepalives, keepalives_idle, keepalives_interval, \
     keepalives_count, tcp_user_timeout";

/// A timeout given in seconds on the command line or in the configuration file: 0 means none
/// (wait forever); negative, not a number or beyond a day is refused (the message names
/// `name`).
pub fn timeout_seconds(name: &str, secs: f64) -> Result<Option<Duration>, String> {
    if !(0.0..=86_400.0).contains(&secs) {
        return Err(format!(
            "{name} {secs} is out of range: give seconds from 0 (no limit) to 86400"
        ));
    }
    Ok((secs > 0.0).then(|| Duration::from_secs_f64(secs.max(0.001))))
}

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
    tls: TlsSettings,
    keepalive: Keepalive,
    /// See [`watch`]; None: never checked.
    read_timeout: Option<Duration>,
    /// `lock_timeout` of its sessions (None: the server's setting, or 0 given: wait forever).
    lock_timeout: Option<Duration>,
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

    #[error("cannot set up SSL for {endpoint} (sslmode={sslmode}): {reason}")]
    Tls {
        endpoint: String,
        sslmode: SslMode,
        /// What is wrong and how to fix it (file names, never key material).
        reason: String,
    },

    #[error(
        "cannot determine the operating-system user name (the default user and database \
         name); give a user explicitly (user flag, user= in the connection string, or PGUSER)"
    )]
    NoUserName,

    #[error(
        "could not connect to {endpoint}: timeout expired after {} s (connect_timeout) before \
         the server answered\nhint: check that the server is up and the network path to it \
         works; connect_timeout=N in the connection string sets the limit (0: no limit)",
        after.as_secs()
    )]
    Timeout { endpoint: String, after: Duration },

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
    /// The `postgres::Config` of this endpoint, filled through its setters from the resolved
    /// settings. Its `ssl_mode` is the nearest rust-postgres mode (disable/allow and unix
    /// sockets: disable; prefer: prefer; require and verify-*: require), so `.connect(NoTls)`
    /// works whenever SSL is not mandatory (prefer then connects without SSL).
    /// [`Endpoint::connect`] is the full libpq behaviour: certificate checks, and the
    /// allow/prefer retries.
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        if self.is_unix_socket() {
            config.host_path(&self.host);
        } else {
            config.host(&self.host);
        }
        config
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .ssl_mode(self.nearest_ssl_mode())
            // Server NOTICEs (e.g. "already registered; nothing changed") are meant for the
            // user: show them, as psql does.
            .notice_callback(|notice| {
                let hint = notice
                    .hint()
                    .map(|h| format!("\nHINT: {h}"))
                    .unwrap_or_default();
                let text = format!("{}: {}{hint}", notice.severity(), notice.message());
                if notice.severity() == "WARNING" {
                    tracing::warn!(target: crate::log::NOTICE, "{text}");
                } else {
                    tracing::info!(target: crate::log::NOTICE, "{text}");
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
        self.keepalive.apply(&mut config);
        config
    }

    /// Connects as libpq would with this `sslmode` (see the module documentation), then pins
    /// `search_path` to `pg_catalog, pg_temp` before any query: the database's and the role's
    /// default search_path belong to their owners, and an operator or function planted there
    /// would otherwise run as whoever runs replicate; sets `lock_timeout` when one is given.
    /// All of it within the connect timeout; then the connection is watched for stalls (over
    /// TCP, with a read timeout). The error names host/port/db/user, the SSL attempts made,
    /// and a likely fix.
    pub fn connect(&self) -> Result<Client, ConnError> {
        let ((client, pid), socket) = watch::bounded(self, self.connect_timeout, || {
            let mut client = self.connect_unpinned()?;
            let pid = self.start_session(&mut client)?;
            Ok((client, pid))
        })?;
        if let (Some(socket), Some(after)) = (socket, self.read_timeout) {
            watch::watch(self.clone(), socket, pid, after);
        }
        Ok(client)
    }

    /// Pin search_path, set lock_timeout; returns the session's process id.
    fn start_session(&self, client: &mut Client) -> Result<i32, ConnError> {
        self.pin_search_path(client)?;
        let row = match self.lock_timeout {
            Some(t) => client.query_one(
                "SELECT pg_catalog.pg_backend_pid(), pg_catalog.set_config('lock_timeout', $1, false)",
                &[&format!("{}ms", t.as_millis())],
            ),
            None => client.query_one("SELECT pg_catalog.pg_backend_pid()", &[]),
        }
        .map_err(|e| self.session_error(e))?;
        Ok(row.get(0))
    }

    /// `search_path = pg_catalog, pg_temp` on a new session (see [`Endpoint::connect`]).
    fn pin_search_path(&self, client: &mut Client) -> Result<(), ConnError> {
        client
            .batch_execute("SET search_path = pg_catalog, pg_temp")
            .map_err(|e| self.session_error(e))
    }

    /// A failure of a new session's first statements, as a connection error.
    fn session_error(&self, error: postgres::Error) -> ConnError {
        ConnError::Connect {
            endpoint: self.describe(),
            detail: crate::error::describe_pg(&error),
            hint: String::new(),
            error,
        }
    }

    /// The same endpoint with the read timeout (see [`watch`]) given in seconds on the command
    /// line or in the configuration file: None the default ([`DEFAULT_READ_TIMEOUT`]), 0 never.
    pub fn with_read_timeout(mut self, secs: Option<f64>) -> Result<Endpoint, String> {
        self.read_timeout = match secs {
            Some(secs) => timeout_seconds("read timeout (--read-timeout, read_timeout)", secs)?,
            None => Some(DEFAULT_READ_TIMEOUT),
        };
        Ok(self)
    }

    /// The same endpoint with a `lock_timeout` for its sessions (the slave's: its apply), in
    /// seconds: None the default ([`DEFAULT_LOCK_TIMEOUT`]), 0 wait forever.
    pub fn with_lock_timeout(mut self, secs: Option<f64>) -> Result<Endpoint, String> {
        self.lock_timeout = match secs {
            Some(secs) => timeout_seconds("lock timeout (--lock-timeout, lock_timeout)", secs)?,
            None => Some(DEFAULT_LOCK_TIMEOUT),
        };
        Ok(self)
    }

    /// Cancel the statement a connection of this endpoint is running (`token` from its
    /// client), as libpq's PQcancel does: a new connection carrying the cancel key, TLS when
    /// this endpoint requires it. The error is a message for the log.
    pub fn cancel(&self, token: &postgres::CancelToken) -> Result<(), String> {
        let sent = if self.nearest_ssl_mode() == postgres::config::SslMode::Require {
            let connector = self
                .tls_connector(self.verify_level(), &std::sync::Arc::default())
                .map_err(|e| e.to_string())?;
            token.cancel_query(connector)
        } else {
            token.cancel_query(postgres::NoTls)
        };
        sent.map_err(|e| crate::error::describe_pg(&e))
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

    /// The resolved `sslmode` (ignored over unix-domain sockets, as by libpq).
    pub fn sslmode(&self) -> SslMode {
        self.sslmode
    }

    /// The root certificate file checked by verify-ca/verify-full (and by the other modes
    /// when it exists), if a home directory or setting gives one.
    pub fn sslrootcert(&self) -> Option<&Path> {
        self.tls.rootcert.as_deref()
    }

    /// `None` means wait indefinitely (`connect_timeout` 0 or negative).
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// TCP keepalive settings (see [`keepalive`]).
    pub fn keepalive(&self) -> &Keepalive {
        &self.keepalive
    }

    /// Silence after which a connection is checked (see [`watch`]).
    pub fn read_timeout(&self) -> Option<Duration> {
        self.read_timeout
    }

    /// The `lock_timeout` its sessions get, if any.
    pub fn lock_timeout(&self) -> Option<Duration> {
        self.lock_timeout
    }

    pub fn application_name(&self) -> &str {
        &self.application_name
    }

    /// Server `options` (from `options=` or `PGOPTIONS`), e.g. `-c search_path=x`.
    pub fn options(&self) -> Option<&str> {
        self.options.as_deref()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

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
    }

    #[test]
    fn timeouts_in_seconds() {
        assert_eq!(timeout_seconds("t", 0.0), Ok(None));
        assert_eq!(
            timeout_seconds("t", 2.5),
            Ok(Some(Duration::from_millis(2500)))
        );
        for bad in [-1.0, f64::NAN, 1e9] {
            assert!(timeout_seconds("t", bad).is_err(), "{bad}");
        }
        let e = resolve(&conninfo("host=h"), &ConnArgs::default(), &[]);
        assert_eq!(e.read_timeout(), Some(DEFAULT_READ_TIMEOUT));
        assert_eq!(e.lock_timeout(), None, "only the slave's sessions get one");
        let e = e.with_read_timeout(Some(0.0)).unwrap();
        assert_eq!(e.read_timeout(), None);
        let e = e.with_lock_timeout(None).unwrap();
        assert_eq!(e.lock_timeout(), Some(DEFAULT_LOCK_TIMEOUT));
        let err = e.with_lock_timeout(Some(-3.0)).unwrap_err();
        assert!(err.contains("--lock-timeout"), "{err}");
    }

    #[test]
    fn config_is_filled_from_the_resolved_settings() {
        let e = resolve(
            &conninfo(
                "host=/tmp/sock port=5433 dbname=db user=u application_name=app \
                 connect_timeout=10 options='-c x=y' password=pw",
            ),
            &ConnArgs::default(),
            &[],
        );
        let c = e.config();
        assert_eq!(
            c.get_hosts(),
            &[postgres::config::Host::Unix(PathBuf::from("/tmp/sock"))]
        );
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_dbname(), Some("db"));
        assert_eq!(c.get_user(), Some("u"));
        assert_eq!(c.get_application_name(), Some("app"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert_eq!(c.get_options(), Some("-c x=y"));
        assert_eq!(c.get_password(), Some(&b"pw"[..]));
        let e = resolve(&conninfo("host=db.example"), &ConnArgs::default(), &[]);
        assert_eq!(
            e.config().get_hosts(),
            &[postgres::config::Host::Tcp("db.example".into())]
        );
        // libpq's keepalive keywords, in key=value strings and URLs alike
        for ci in [
            "host=h keepalives_idle=7 keepalives_interval=2 keepalives_count=4 tcp_user_timeout=9000",
            "postgresql://h/?keepalives_idle=7&keepalives_interval=2&keepalives_count=4&tcp_user_timeout=9000",
        ] {
            let c = resolve(&conninfo(ci), &ConnArgs::default(), &[]).config();
            assert!(c.get_keepalives(), "{ci}");
            assert_eq!(c.get_keepalives_idle(), Duration::from_secs(7), "{ci}");
            assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(2)));
            assert_eq!(c.get_keepalives_retries(), Some(4));
            assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(9)));
        }
        let c = resolve(&conninfo("host=h keepalives=0"), &ConnArgs::default(), &[]).config();
        assert!(!c.get_keepalives());
    }
}
