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
//! One file per concern: [`conninfo`] parses connection strings (key=value and URLs) once into
//! their settings; [`resolve`] applies the flags, the `PG*` environment and libpq's defaults;
//! [`pgpass`] reads the password file; [`tls`] plans the connection attempts and builds the
//! OpenSSL client; [`diagnose`] turns failures into messages that say what to fix. This file
//! holds the resolved [`Endpoint`], its `postgres::Config` and [`Endpoint::connect`].

mod conninfo;
mod diagnose;
mod pgpass;
mod resolve;
mod tls;

#[cfg(test)]
mod test_support;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use postgres::{Client, Config};

use conninfo::quote_value;
pub use conninfo::{conninfo_dbname, looks_like_conninfo};
use tls::TlsSettings;

/// libpq's compiled-in unix-socket directory on Debian/Ubuntu (`DEFAULT_PGSOCKET_DIR`).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// libpq's default port.
pub const DEFAULT_PORT: u16 = 5432;
/// `application_name` used when neither the connection string nor `PGAPPNAME` sets one.
pub const DEFAULT_APPLICATION_NAME: &str = "replicate";

/// Connection-string keywords we honour. Anything else is rejected rather than silently
/// dropped.
const SUPPORTED_KEYWORDS: &str = "host, port, user, password, dbname, sslmode, sslrootcert, \
     sslcert, sslkey, sslsni, connect_timeout, application_name, fallback_application_name, \
     options, passfile, gssencmode";

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
        config
    }

    /// Connects as libpq would with this `sslmode` (see the module documentation), then pins
    /// `search_path` to `pg_catalog, pg_temp` before any query: the database's and the role's
    /// default search_path belong to their owners, and an operator or function planted there
    /// would otherwise run as whoever runs replicate. The error names host/port/db/user, the
    /// SSL attempts made, and a likely fix.
    pub fn connect(&self) -> Result<Client, ConnError> {
        let mut client = self.connect_unpinned()?;
        if let Err(error) = client.batch_execute("SET search_path = pg_catalog, pg_temp") {
            return Err(ConnError::Connect {
                endpoint: self.describe(),
                detail: crate::error::describe_pg(&error),
                hint: String::new(),
                error,
            });
        }
        Ok(client)
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
    }
}
