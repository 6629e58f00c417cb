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

use std::borrow::Cow;
use std::fmt;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use openssl::x509::{X509Ref, X509StoreContextRef};
use postgres::config::Host;
use postgres::error::SqlState;
use postgres::{Client, Config, NoTls};
use postgres_openssl::MakeTlsConnector;

/// libpq's compiled-in unix-socket directory on Debian/Ubuntu (`DEFAULT_PGSOCKET_DIR`).
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";
/// libpq's default port.
pub const DEFAULT_PORT: u16 = 5432;
/// `application_name` used when neither the connection string nor `PGAPPNAME` sets one.
pub const DEFAULT_APPLICATION_NAME: &str = "replicate";

/// Connection-string keywords we honour. Anything else is rejected rather than silently
/// dropped, because we rebuild the `postgres::Config` from resolved fields only.
const SUPPORTED_KEYWORDS: &str = "host, port, user, password, dbname, sslmode, sslrootcert, \
     sslcert, sslkey, sslsni, connect_timeout, application_name, fallback_application_name, \
     options, passfile, gssencmode";

/// libpq's file names under `~/.postgresql/`.
const ROOT_CERT_FILE: &str = "root.crt";
const USER_CERT_FILE: &str = "postgresql.crt";
const USER_KEY_FILE: &str = "postgresql.key";

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

/// The TLS files and switches of one endpoint (paths resolved, files not read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
struct TlsSettings {
    /// `sslrootcert`, else `PGSSLROOTCERT`, else `~/.postgresql/root.crt` (None: no home).
    rootcert: Option<PathBuf>,
    /// `sslcert`, else `PGSSLCERT`, else `~/.postgresql/postgresql.crt`.
    cert: Option<PathBuf>,
    /// `sslkey`, else `PGSSLKEY`, else `~/.postgresql/postgresql.key`.
    key: Option<PathBuf>,
    /// `sslsni`, else `PGSSLSNI`, else true.
    sni: bool,
}

/// How much of the server certificate one TLS attempt checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verify {
    /// Encrypt only (any certificate is accepted).
    Nothing,
    /// The chain must lead to a CA of the root certificate file.
    Chain,
    /// The chain, and the certificate must name the host.
    Full,
}

/// One connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// No SSL.
    Plain,
    /// SSL if the server offers it (SSLRequest answered 'S'), else no SSL.
    TlsIfOffered(Verify),
    /// SSL or fail.
    Tls(Verify),
}

impl Attempt {
    fn uses_tls(self) -> bool {
        !matches!(self, Attempt::Plain)
    }
}

/// What the certificate verification callback saw during one attempt.
#[derive(Debug, Default, Clone)]
struct TlsProbe {
    /// The server sent a certificate: a TLS handshake took place.
    handshake: bool,
    /// The first certificate check that failed (only recorded when it is enforced).
    failure: Option<CertFailure>,
}

#[derive(Debug, Clone)]
struct CertFailure {
    /// OpenSSL's X509_V_ERR_* code.
    code: i32,
    /// OpenSSL's text for `code`, e.g. "unable to get local issuer certificate".
    reason: String,
    /// Position of the offending certificate in the chain (0: the server's own).
    depth: u32,
    /// Its subject, `CN=localhost, O=...`.
    subject: String,
    /// Its subjectAltName DNS and IP entries, else its CN (what a host name must match).
    names: Vec<String>,
}

// X509_V_ERR_* codes (openssl/x509_vfy.h) we explain.
const X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT: i32 = 2;
const X509_V_ERR_CERT_NOT_YET_VALID: i32 = 9;
const X509_V_ERR_CERT_HAS_EXPIRED: i32 = 10;
const X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT: i32 = 18;
const X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN: i32 = 19;
const X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY: i32 = 20;
const X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE: i32 = 21;
const X509_V_ERR_HOSTNAME_MISMATCH: i32 = 62;
const X509_V_ERR_IP_ADDRESS_MISMATCH: i32 = 64;

/// Why one attempt failed.
enum Failure {
    /// The TLS client could not be set up (files missing or unreadable); nothing was sent.
    Setup(ConnError),
    Connect {
        error: postgres::Error,
        probe: TlsProbe,
    },
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

        let home = home_dir(&env);
        let tls_file = |given: &Option<PathBuf>, var: &str, default: &str| {
            given
                .clone()
                .or_else(|| env(var).map(PathBuf::from))
                .or_else(|| home.as_ref().map(|h| h.join(".postgresql").join(default)))
        };
        let sni = match ci.sslsni {
            Some(b) => b,
            None => match env("PGSSLSNI") {
                Some(v) => parse_sslsni(&v, "PGSSLSNI")?,
                None => true,
            },
        };
        let tls = TlsSettings {
            rootcert: tls_file(&ci.sslrootcert, "PGSSLROOTCERT", ROOT_CERT_FILE),
            cert: tls_file(&ci.sslcert, "PGSSLCERT", USER_CERT_FILE),
            key: tls_file(&ci.sslkey, "PGSSLKEY", USER_KEY_FILE),
            sni,
        };

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
            tls,
        };

        // Where SSL is mandatory, a missing or unreadable certificate file is an error now
        // rather than at every (re)connection. (allow/prefer fall back to no SSL instead.)
        if sslmode.requires_tls() && !endpoint.is_unix_socket() {
            let verify = endpoint.verify_level();
            endpoint.tls_connector(verify, &Arc::default())?;
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

    /// The `postgres::Config` of this endpoint. Its `ssl_mode` is the nearest rust-postgres
    /// mode (disable/allow and unix sockets: disable; prefer: prefer; require and verify-*:
    /// require), so `.connect(NoTls)` works whenever SSL is not mandatory (prefer then
    /// connects without SSL). [`Endpoint::connect`] is the full libpq behaviour: certificate
    /// checks, and the allow/prefer retries.
    pub fn config(&self) -> Config {
        let mut config = Config::new();
        // Config::host treats a leading '/' as a unix-socket directory, like libpq.
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name(&self.application_name)
            .ssl_mode(self.nearest_ssl_mode())
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

    /// Connects as libpq would with this `sslmode` (see the module documentation). The error
    /// names host/port/db/user, the SSL attempts made, and a likely fix.
    /// Connect, then pin `search_path` to `pg_catalog, pg_temp` before any query: the
    /// database's and the role's default search_path belong to their owners, and an operator
    /// or function planted there would otherwise run as whoever runs replicate.
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

    fn connect_unpinned(&self) -> Result<Client, ConnError> {
        let (first, fallback) = self.plan();
        let failure = match self.attempt(first) {
            Ok(client) => return Ok(client),
            Err(failure) => failure,
        };
        let retry = match (first, fallback) {
            // prefer: an SSL attempt that failed (before or during the handshake, or was
            // rejected by the server after it) is retried without SSL.
            (Attempt::TlsIfOffered(_), Some(next)) => match &failure {
                Failure::Setup(_) => Some(next),
                Failure::Connect { error, probe } => (is_tls_error(error)
                    || (error.as_db_error().is_some() && probe.handshake))
                    .then_some(next),
            },
            // allow: a non-SSL attempt the server rejected is retried with SSL.
            (Attempt::Plain, Some(next)) => match &failure {
                Failure::Connect { error, .. } if error.as_db_error().is_some() => Some(next),
                _ => None,
            },
            _ => None,
        };
        let mut failures = vec![(first, failure)];
        if let Some(next) = retry {
            match self.attempt(next) {
                Ok(client) => return Ok(client),
                Err(failure) => failures.push((next, failure)),
            }
        }
        Err(self.connect_error(failures))
    }

    /// The rust-postgres `SslMode` closest to ours (see [`Endpoint::config`]).
    fn nearest_ssl_mode(&self) -> postgres::config::SslMode {
        use postgres::config::SslMode as Pg;
        if self.is_unix_socket() {
            return Pg::Disable;
        }
        match self.sslmode {
            SslMode::Disable | SslMode::Allow => Pg::Disable,
            SslMode::Prefer => Pg::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => Pg::Require,
        }
    }

    /// What an SSL attempt verifies: verify-ca/verify-full as named; the other modes check
    /// the chain when the root certificate file exists (libpq).
    fn verify_level(&self) -> Verify {
        match self.sslmode {
            SslMode::VerifyFull => Verify::Full,
            SslMode::VerifyCa => Verify::Chain,
            _ if self.tls.rootcert.as_deref().is_some_and(Path::exists) => Verify::Chain,
            _ => Verify::Nothing,
        }
    }

    /// The first attempt and the one that may follow it.
    fn plan(&self) -> (Attempt, Option<Attempt>) {
        if self.is_unix_socket() {
            // libpq never requests SSL over a unix-domain socket, whatever sslmode says.
            return (Attempt::Plain, None);
        }
        let verify = self.verify_level();
        match self.sslmode {
            SslMode::Disable => (Attempt::Plain, None),
            SslMode::Allow => (Attempt::Plain, Some(Attempt::Tls(verify))),
            SslMode::Prefer => (Attempt::TlsIfOffered(verify), Some(Attempt::Plain)),
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                (Attempt::Tls(verify), None)
            }
        }
    }

    fn attempt(&self, attempt: Attempt) -> Result<Client, Failure> {
        use postgres::config::SslMode as Pg;
        let mut config = self.config();
        let (verify, mode) = match attempt {
            Attempt::Plain => {
                config.ssl_mode(Pg::Disable);
                return config.connect(NoTls).map_err(|error| Failure::Connect {
                    error,
                    probe: TlsProbe::default(),
                });
            }
            Attempt::TlsIfOffered(v) => (v, Pg::Prefer),
            Attempt::Tls(v) => (v, Pg::Require),
        };
        let probe = Arc::new(Mutex::new(TlsProbe::default()));
        let tls = self.tls_connector(verify, &probe).map_err(Failure::Setup)?;
        config.ssl_mode(mode);
        config.connect(tls).map_err(|error| Failure::Connect {
            error,
            probe: probe.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        })
    }

    fn tls_error(&self, reason: String) -> ConnError {
        ConnError::Tls {
            endpoint: self.describe(),
            sslmode: self.sslmode,
            reason,
        }
    }

    /// An OpenSSL client for one attempt. Reads the root certificate and client
    /// certificate files now, so a fixed file is picked up by the next connection.
    fn tls_connector(
        &self,
        verify: Verify,
        probe: &Arc<Mutex<TlsProbe>>,
    ) -> Result<MakeTlsConnector, ConnError> {
        let openssl = |what: String| {
            move |e: openssl::error::ErrorStack| self.tls_error(format!("{what}: {e}"))
        };
        let mut builder = SslConnector::builder(SslMethod::tls_client())
            .map_err(openssl("cannot initialise OpenSSL".into()))?;
        builder
            .set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(openssl("cannot set the minimum TLS version".into()))?;
        // Trust only the root certificate file, never the system's CA store (libpq 15).
        let empty = X509StoreBuilder::new().map_err(openssl("cannot initialise OpenSSL".into()))?;
        builder.set_cert_store(empty.build());
        if verify != Verify::Nothing {
            let missing = |which: String| {
                self.tls_error(format!(
                    "{which}; sslmode={} checks the server certificate against it: give the CA \
                     certificate with sslrootcert=FILE (or PGSSLROOTCERT), or use \
                     sslmode=require to encrypt without checking the certificate",
                    self.sslmode
                ))
            };
            let root = self.tls.rootcert.as_deref().ok_or_else(|| {
                missing(
                    "no root certificate file (no home directory for ~/.postgresql/root.crt)"
                        .into(),
                )
            })?;
            match fs::metadata(root) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(missing(format!(
                        "root certificate file \"{}\" does not exist",
                        root.display()
                    )))
                }
                Err(e) => {
                    return Err(self.tls_error(format!(
                        "cannot read root certificate file \"{}\": {e}",
                        root.display()
                    )))
                }
            }
            builder.set_ca_file(root).map_err(openssl(format!(
                "cannot load root certificate file \"{}\" (expected PEM certificates)",
                root.display()
            )))?;
        }
        let enforce = verify != Verify::Nothing;
        let seen = Arc::clone(probe);
        builder.set_verify_callback(SslVerifyMode::PEER, move |ok, ctx| {
            let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            seen.handshake = true;
            if enforce && !ok && seen.failure.is_none() {
                seen.failure = Some(CertFailure::from_context(ctx));
            }
            ok || !enforce
        });
        self.load_client_certificate(&mut builder)?;
        let mut connector = MakeTlsConnector::new(builder.build());
        let (check_host, sni) = (verify == Verify::Full, self.tls.sni);
        connector.set_callback(move |config, _host| {
            config.set_verify_hostname(check_host);
            config.set_use_server_name_indication(sni);
            Ok(())
        });
        Ok(connector)
    }

    /// libpq: the client certificate is used when its file exists; then its key must exist,
    /// be private (0600, or 0640 when owned by root) and not be encrypted.
    fn load_client_certificate(
        &self,
        builder: &mut openssl::ssl::SslConnectorBuilder,
    ) -> Result<(), ConnError> {
        let Some(cert) = self.tls.cert.as_deref() else {
            return Ok(());
        };
        match fs::metadata(cert) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                return Ok(())
            }
            Err(e) => {
                return Err(self.tls_error(format!(
                    "cannot open certificate file \"{}\": {e}",
                    cert.display()
                )))
            }
        }
        builder.set_certificate_chain_file(cert).map_err(|e| {
            self.tls_error(format!(
                "cannot load certificate file \"{}\" (expected PEM): {e}",
                cert.display()
            ))
        })?;
        let Some(key) = self.tls.key.as_deref() else {
            return Err(self.tls_error(format!(
                "certificate \"{}\" present, but no private key file (sslkey)",
                cert.display()
            )));
        };
        let meta = fs::metadata(key).map_err(|e| {
            self.tls_error(format!(
                "certificate present, but not private key file \"{}\": {e}",
                key.display()
            ))
        })?;
        if !meta.is_file() {
            return Err(self.tls_error(format!(
                "private key file \"{}\" is not a regular file",
                key.display()
            )));
        }
        let euid = fs::metadata("/proc/self").map(|m| m.uid()).ok();
        let mode = meta.mode();
        if (Some(meta.uid()) == euid && mode & 0o077 != 0) || (meta.uid() == 0 && mode & 0o037 != 0)
        {
            return Err(self.tls_error(format!(
                "private key file \"{}\" has group or world access; file must have \
                 permissions u=rw (0600) or less if owned by the current user, or permissions \
                 u=rw,g=r (0640) or less if owned by root",
                key.display()
            )));
        }
        let pem = fs::read(key).map_err(|e| {
            self.tls_error(format!(
                "cannot read private key file \"{}\": {e}",
                key.display()
            ))
        })?;
        // An empty passphrase: an encrypted key fails here instead of OpenSSL prompting on
        // the terminal (sslpassword is not supported).
        let pkey = PKey::private_key_from_pem_callback(&pem, |_| Ok(0)).map_err(|e| {
            self.tls_error(format!(
                "cannot load private key file \"{}\" (expected an unencrypted PEM key; \
                 sslpassword is not supported): {e}",
                key.display()
            ))
        })?;
        builder
            .set_private_key(&pkey)
            .and_then(|()| builder.check_private_key())
            .map_err(|e| {
                self.tls_error(format!(
                    "private key file \"{}\" does not match certificate \"{}\": {e}",
                    key.display(),
                    cert.display()
                ))
            })
    }

    /// One `ConnError` for the failed attempts: every attempt's reason in order, the hint
    /// of the most telling one.
    fn connect_error(&self, failures: Vec<(Attempt, Failure)>) -> ConnError {
        let several = failures.len() > 1;
        let mut details: Vec<String> = Vec::new();
        let mut primary: Option<(Attempt, postgres::Error, TlsProbe)> = None;
        let mut setup: Option<ConnError> = None;
        for (attempt, failure) in failures {
            let (detail, connect) = match failure {
                Failure::Setup(e) => {
                    let text = e.to_string();
                    setup.get_or_insert(e);
                    (text, None)
                }
                Failure::Connect { error, probe } => (
                    self.attempt_detail(attempt, &error, &probe),
                    Some((error, probe)),
                ),
            };
            let detail = if several {
                let how = if attempt.uses_tls() {
                    "with SSL"
                } else {
                    "without SSL"
                };
                format!("{how}: {detail}")
            } else {
                detail
            };
            details.push(detail);
            if let Some((error, probe)) = connect {
                // The SSL attempt says most about what to fix, else the first one.
                let better = match &primary {
                    None => true,
                    Some((a, ..)) => !a.uses_tls() && attempt.uses_tls(),
                };
                if better {
                    primary = Some((attempt, error, probe));
                }
            }
        }
        let Some((attempt, error, probe)) = primary else {
            return setup.expect("a failed attempt");
        };
        // Both attempts failing for the same reason (e.g. a wrong password): say it once.
        let reason = |d: &String| d.split_once(": ").map(|(_, r)| r.to_owned());
        details.dedup_by(|later, earlier| reason(later) == reason(earlier));
        ConnError::Connect {
            endpoint: self.describe(),
            detail: details.join("; then "),
            hint: self.connect_hint(attempt, &error, &probe),
            error,
        }
    }

    /// The error text of one attempt; certificate failures are put in libpq's words.
    fn attempt_detail(
        &self,
        attempt: Attempt,
        error: &postgres::Error,
        probe: &TlsProbe,
    ) -> String {
        if let (Some(f), true) = (&probe.failure, is_tls_error(error)) {
            if f.is_name_mismatch() {
                let names: Vec<String> = f.names.iter().map(|n| format!("\"{n}\"")).collect();
                let names = if names.is_empty() {
                    "(no names)".to_string()
                } else {
                    names.join(", ")
                };
                return format!(
                    "SSL error: server certificate for {names} does not match host name \"{}\" \
                     (sslmode={})",
                    self.host, self.sslmode
                );
            }
            return format!(
                "SSL error: certificate verify failed: {} (certificate {}: {}; sslmode={})",
                f.reason,
                if f.depth == 0 {
                    "of the server".to_string()
                } else {
                    format!("at depth {} of the chain", f.depth)
                },
                f.subject,
                self.sslmode
            );
        }
        let text = error_text(error);
        if attempt.uses_tls() && is_tls_error(error) && text.contains("server does not support TLS")
        {
            return format!(
                "server does not support SSL, but SSL was required (sslmode={})",
                self.sslmode
            );
        }
        text
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

    fn connect_hint(&self, attempt: Attempt, error: &postgres::Error, probe: &TlsProbe) -> String {
        let message = error.as_db_error().map_or("", |db| db.message());
        let hint = if let Some(code) = error.code() {
            if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && message.contains("no pg_hba.conf entry")
                && message.ends_with("no encryption")
            {
                "the server accepts this client only over SSL (hostssl in pg_hba.conf): use \
                 sslmode=prefer (the default), require, verify-ca or verify-full"
                    .to_string()
            } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && message.contains("no pg_hba.conf entry")
                && message.ends_with("SSL encryption")
            {
                "the server accepts this client only without SSL (hostnossl in pg_hba.conf): \
                 change pg_hba.conf, or use sslmode=prefer or disable"
                    .to_string()
            } else if *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                && message.contains("certificate")
            {
                "the server wants a client certificate signed by a CA it trusts (ssl_ca_file) \
                 whose CN is the user name: give it with sslcert=FILE and sslkey=FILE (or \
                 PGSSLCERT and PGSSLKEY; default ~/.postgresql/postgresql.crt and .key)"
                    .to_string()
            } else if *code == SqlState::INVALID_PASSWORD {
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
        } else if attempt.uses_tls() && is_tls_error(error) {
            self.tls_hint(error, probe)
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

impl Endpoint {
    fn tls_hint(&self, error: &postgres::Error, probe: &TlsProbe) -> String {
        let root = match &self.tls.rootcert {
            Some(p) => format!("\"{}\"", p.display()),
            None => "(none)".to_string(),
        };
        match &probe.failure {
            Some(f) if f.is_name_mismatch() => format!(
                "sslmode=verify-full checks that the server certificate names the host: connect \
                 with a host name the certificate lists, or have the certificate reissued with \
                 \"{}\" in its subjectAltName (sslmode=verify-ca checks the CA but not the name)",
                self.host
            ),
            Some(f) if f.is_untrusted_chain() => format!(
                "the server certificate is not signed by a CA in the root certificate file \
                 {root}: set sslrootcert (or PGSSLROOTCERT) to the certificate of the CA that \
                 issued the server's certificate"
            ),
            Some(f) if f.is_out_of_date() => "check the validity dates of the server \
                 certificate (openssl x509 -noout -dates) and this machine's clock"
                .to_string(),
            Some(_) => format!(
                "the server certificate was checked against the root certificate file {root}"
            ),
            None if error_text(error).contains("server does not support TLS") => {
                "enable SSL on the server (ssl = on, with ssl_cert_file and ssl_key_file in \
                 postgresql.conf), or use sslmode=prefer or disable"
                    .to_string()
            }
            None => "the SSL handshake failed: check the server's SSL settings (ssl, \
                 ssl_min_protocol_version, its certificate) and the client certificate, if any"
                .to_string(),
        }
    }
}

impl CertFailure {
    fn from_context(ctx: &X509StoreContextRef) -> CertFailure {
        let cert = ctx.current_cert();
        CertFailure {
            code: ctx.error().as_raw(),
            reason: ctx.error().error_string().to_string(),
            depth: ctx.error_depth(),
            subject: cert.map_or_else(|| "(unknown)".to_string(), subject_text),
            names: cert.map(certificate_names).unwrap_or_default(),
        }
    }

    fn is_name_mismatch(&self) -> bool {
        matches!(
            self.code,
            X509_V_ERR_HOSTNAME_MISMATCH | X509_V_ERR_IP_ADDRESS_MISMATCH
        )
    }

    fn is_untrusted_chain(&self) -> bool {
        matches!(
            self.code,
            X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT
                | X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT
                | X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
                | X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY
                | X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE
        )
    }

    fn is_out_of_date(&self) -> bool {
        matches!(
            self.code,
            X509_V_ERR_CERT_NOT_YET_VALID | X509_V_ERR_CERT_HAS_EXPIRED
        )
    }
}

/// `CN=localhost, O=Example` (short names; values lossily as UTF-8).
fn subject_text(cert: &X509Ref) -> String {
    let parts: Vec<String> = cert
        .subject_name()
        .entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_else(|_| "?".to_string());
            format!("{key}={value}")
        })
        .collect();
    if parts.is_empty() {
        "(empty subject)".to_string()
    } else {
        parts.join(", ")
    }
}

/// The names a host is checked against: subjectAltName DNS and IP entries, else the CN.
fn certificate_names(cert: &X509Ref) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(sans) = cert.subject_alt_names() {
        for san in &sans {
            if let Some(dns) = san.dnsname() {
                names.push(dns.to_string());
            } else if let Some(ip) = san.ipaddress() {
                let ip = match ip.len() {
                    4 => <[u8; 4]>::try_from(ip)
                        .ok()
                        .map(|b| std::net::IpAddr::from(b).to_string()),
                    16 => <[u8; 16]>::try_from(ip)
                        .ok()
                        .map(|b| std::net::IpAddr::from(b).to_string()),
                    _ => None,
                };
                names.extend(ip);
            }
        }
    }
    if names.is_empty() {
        names.extend(
            cert.subject_name()
                .entries_by_nid(openssl::nid::Nid::COMMONNAME)
                .filter_map(|e| e.data().to_string().ok()),
        );
    }
    names
}

/// rust-postgres' "error performing TLS handshake" (its error kinds are private).
fn is_tls_error(error: &postgres::Error) -> bool {
    error.as_db_error().is_none()
        && error
            .to_string()
            .starts_with("error performing TLS handshake")
}

/// libpq's sslsni: 0 or 1.
fn parse_sslsni(value: &str, origin: &str) -> Result<bool, ConnError> {
    match value.trim() {
        "1" => Ok(true),
        "0" => Ok(false),
        _ => Err(ConnError::InvalidSetting {
            setting: "sslsni",
            value: format!("{value:?}"),
            origin: origin.into(),
            reason: "expected 0 or 1".into(),
        }),
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
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
    sslsni: Option<bool>,
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
            "sslrootcert" => out.sslrootcert = nonempty(value).map(PathBuf::from),
            "sslcert" => out.sslcert = nonempty(value).map(PathBuf::from),
            "sslkey" => out.sslkey = nonempty(value).map(PathBuf::from),
            "sslsni" => {
                out.sslsni = Some(parse_sslsni(&value, &format!("connection string {shown}"))?)
            }
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

    /// A self-signed PEM certificate and its unencrypted PKCS#8 key.
    fn self_signed(cn: &str) -> (Vec<u8>, Vec<u8>) {
        use openssl::asn1::Asn1Time;
        use openssl::ec::{EcGroup, EcKey};
        use openssl::hash::MessageDigest;
        use openssl::nid::Nid;
        use openssl::x509::{X509Builder, X509NameBuilder};
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
        let name = name.build();
        let mut b = X509Builder::new().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        (
            b.build().to_pem().unwrap(),
            key.private_key_to_pem_pkcs8().unwrap(),
        )
    }

    /// A directory under temp_dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path =
                std::env::temp_dir().join(format!("rserv-conn-test-{}-{name}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
        fn file(&self, name: &str, contents: &[u8], mode: u32) -> PathBuf {
            let path = self.0.join(name);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).unwrap();
            }
            fs::write(&path, contents).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            path
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn tls_err(specific: &ConnArgs, vars: &[(&str, &str)]) -> String {
        match resolve_err(specific, vars) {
            e @ ConnError::Tls { .. } => e.to_string(),
            other => panic!("expected a TLS setup error, got {other}"),
        }
    }

    #[test]
    fn ssl_file_settings() {
        let home = TempDir::new("sslhome");
        let h = home.0.to_str().unwrap();
        // Defaults: ~/.postgresql/..., SNI on.
        let e = resolve(&conninfo("host=db"), &ConnArgs::default(), &[("HOME", h)]);
        let dot = home.0.join(".postgresql");
        assert_eq!(e.sslrootcert(), Some(dot.join("root.crt").as_path()));
        assert_eq!(e.tls.cert, Some(dot.join("postgresql.crt")));
        assert_eq!(e.tls.key, Some(dot.join("postgresql.key")));
        assert!(e.tls.sni);
        // Environment beats the defaults, the connection string beats the environment.
        let env = [
            ("HOME", h),
            ("PGSSLROOTCERT", "/env/root.crt"),
            ("PGSSLCERT", "/env/c.crt"),
            ("PGSSLKEY", "/env/c.key"),
            ("PGSSLSNI", "0"),
        ];
        let e = resolve(&conninfo("host=db"), &ConnArgs::default(), &env);
        assert_eq!(e.sslrootcert(), Some(Path::new("/env/root.crt")));
        assert_eq!(e.tls.cert.as_deref(), Some(Path::new("/env/c.crt")));
        assert_eq!(e.tls.key.as_deref(), Some(Path::new("/env/c.key")));
        assert!(!e.tls.sni);
        let e = resolve(
            &conninfo(
                "host=db sslrootcert=/ci/root.crt sslcert=/ci/c.crt sslkey=/ci/c.key sslsni=1",
            ),
            &ConnArgs::default(),
            &env,
        );
        assert_eq!(e.sslrootcert(), Some(Path::new("/ci/root.crt")));
        assert_eq!(e.tls.cert.as_deref(), Some(Path::new("/ci/c.crt")));
        assert_eq!(e.tls.key.as_deref(), Some(Path::new("/ci/c.key")));
        assert!(e.tls.sni);
        let e = resolve(
            &conninfo("postgresql://db/app?sslrootcert=%2Fu%2Froot.crt&sslmode=prefer"),
            &ConnArgs::default(),
            &[],
        );
        assert_eq!(e.sslrootcert(), Some(Path::new("/u/root.crt")));
        for bad in ["host=db sslsni=yes", "host=db sslsni=2"] {
            let msg = resolve_err(&conninfo(bad), &[]).to_string();
            assert!(msg.contains("sslsni"), "{msg}");
        }
        let msg = resolve_err(&ConnArgs::default(), &[("PGSSLSNI", "on")]).to_string();
        assert!(msg.contains("PGSSLSNI"), "{msg}");
        // Keywords we do not implement are refused, not ignored.
        for unsupported in [
            "sslcrl=/x",
            "sslpassword=x",
            "ssl_min_protocol_version=TLSv1.3",
        ] {
            let err = resolve_err(&conninfo(&format!("host=db {unsupported}")), &[]);
            assert!(matches!(err, ConnError::UnsupportedOption { .. }), "{err}");
        }
    }

    #[test]
    fn attempts_follow_libpq() {
        let dir = TempDir::new("plan");
        let (ca, _) = self_signed("plan CA");
        let root = dir.file("root.crt", &ca, 0o644);
        let root = root.to_str().unwrap();
        let plan = |ci: &str, vars: &[(&str, &str)]| {
            resolve(&conninfo(ci), &ConnArgs::default(), vars).plan()
        };
        use Attempt::*;
        use Verify::*;
        assert_eq!(plan("host=db sslmode=disable", &[]), (Plain, None));
        assert_eq!(
            plan("host=db sslmode=allow", &[]),
            (Plain, Some(Tls(Nothing)))
        );
        assert_eq!(plan("host=db", &[]), (TlsIfOffered(Nothing), Some(Plain)));
        assert_eq!(plan("host=db sslmode=require", &[]), (Tls(Nothing), None));
        // A root certificate file that exists makes every mode check the chain...
        let with_root = format!("host=db sslrootcert={root}");
        assert_eq!(
            plan(&format!("{with_root} sslmode=require"), &[]),
            (Tls(Chain), None)
        );
        assert_eq!(
            plan(&format!("{with_root} sslmode=prefer"), &[]),
            (TlsIfOffered(Chain), Some(Plain))
        );
        assert_eq!(
            plan("host=db sslmode=require", &[("PGSSLROOTCERT", root)]),
            (Tls(Chain), None)
        );
        // ... found in ~/.postgresql/root.crt too ...
        let home = TempDir::new("planhome");
        home.file(".postgresql/root.crt", &ca, 0o644);
        assert_eq!(
            plan(
                "host=db sslmode=require",
                &[("HOME", home.0.to_str().unwrap())]
            ),
            (Tls(Chain), None)
        );
        // ... and a named file that does not exist is no root certificate for require.
        assert_eq!(
            plan(
                "host=db sslmode=require sslrootcert=/nonexistent/r.crt",
                &[]
            ),
            (Tls(Nothing), None)
        );
        assert_eq!(
            plan(&format!("{with_root} sslmode=verify-ca"), &[]),
            (Tls(Chain), None)
        );
        assert_eq!(
            plan(&format!("{with_root} sslmode=verify-full"), &[]),
            (Tls(Full), None)
        );
        // Unix-domain sockets never use SSL, whatever sslmode says (libpq).
        for mode in ["require", "verify-ca", "verify-full", "prefer", "allow"] {
            let e = resolve(
                &conninfo(&format!("host=/tmp sslmode={mode}")),
                &ConnArgs::default(),
                &[],
            );
            assert_eq!(e.plan(), (Plain, None), "{mode}");
            assert_eq!(
                e.config().get_ssl_mode(),
                postgres::config::SslMode::Disable
            );
        }
        use postgres::config::SslMode as Pg;
        for (mode, nearest) in [
            ("disable", Pg::Disable),
            ("allow", Pg::Disable),
            ("prefer", Pg::Prefer),
            ("require", Pg::Require),
            ("verify-full", Pg::Require),
        ] {
            let e = resolve(
                &conninfo(&format!("host=db sslmode={mode} sslrootcert={root}")),
                &ConnArgs::default(),
                &[],
            );
            assert_eq!(e.sslmode().as_str(), mode);
            assert_eq!(e.config().get_ssl_mode(), nearest, "{mode}");
        }
    }

    #[test]
    fn verify_modes_need_a_root_certificate() {
        for mode in ["verify-ca", "verify-full"] {
            let msg = tls_err(
                &conninfo(&format!("host=h sslmode={mode} password=pw1")),
                &[],
            );
            assert!(
                msg.contains(&format!("sslmode={mode}"))
                    && msg.contains("/nonexistent/rserv-conn-test-home/.postgresql/root.crt")
                    && msg.contains("does not exist")
                    && msg.contains("sslrootcert=FILE"),
                "{msg}"
            );
            assert!(msg.contains("host=h port=5432"), "{msg}");
            assert!(!msg.contains("pw1"), "{msg}");
            let msg = tls_err(
                &ConnArgs::default(),
                &[
                    ("PGHOST", "h"),
                    ("PGSSLMODE", mode),
                    ("PGSSLROOTCERT", "/nonexistent/ca.pem"),
                ],
            );
            assert!(
                msg.contains("\"/nonexistent/ca.pem\" does not exist"),
                "{msg}"
            );
            // Over a unix socket sslmode is ignored, so nothing is required.
            resolve(
                &conninfo(&format!("host=/tmp sslmode={mode}")),
                &ConnArgs::default(),
                &[],
            );
        }
        // require and prefer need no root certificate.
        resolve(
            &conninfo("host=h sslmode=require"),
            &ConnArgs::default(),
            &[],
        );
        resolve(
            &conninfo("host=h sslmode=prefer"),
            &ConnArgs::default(),
            &[],
        );

        // A root certificate file that is not PEM: an error for the modes that need SSL.
        let dir = TempDir::new("badroot");
        let junk = dir.file("junk.crt", b"not a certificate\n", 0o644);
        let msg = tls_err(
            &conninfo(&format!(
                "host=h sslmode=verify-full sslrootcert={}",
                junk.display()
            )),
            &[],
        );
        assert!(msg.contains("cannot load root certificate file"), "{msg}");
        let (ca, _) = self_signed("good CA");
        let good = dir.file("good.crt", &ca, 0o644);
        let e = resolve(
            &conninfo(&format!(
                "host=h sslmode=verify-full sslrootcert={}",
                good.display()
            )),
            &ConnArgs::default(),
            &[],
        );
        assert_eq!(e.sslrootcert(), Some(good.as_path()));
    }

    #[test]
    fn client_certificate_files() {
        let dir = TempDir::new("client");
        let (cert, key) = self_signed("rserv");
        let crt = dir.file("c.crt", &cert, 0o644);
        let good_key = dir.file("c.key", &key, 0o600);
        let with = |key: &Path| {
            conninfo(&format!(
                "host=h sslmode=require sslcert={} sslkey={}",
                crt.display(),
                key.display()
            ))
        };
        resolve(&with(&good_key), &ConnArgs::default(), &[]);
        // No certificate file: no client certificate, the key is not looked at.
        resolve(
            &conninfo("host=h sslmode=require sslcert=/nonexistent/c.crt sslkey=/nonexistent/k"),
            &ConnArgs::default(),
            &[],
        );
        let msg = tls_err(&with(Path::new("/nonexistent/c.key")), &[]);
        assert!(msg.contains("not private key file"), "{msg}");
        let loose = dir.file("loose.key", &key, 0o644);
        let msg = tls_err(&with(&loose), &[]);
        assert!(msg.contains("group or world access"), "{msg}");
        let msg = tls_err(&with(&dir.0), &[]);
        assert!(msg.contains("not a regular file"), "{msg}");
        let (_, other) = self_signed("other");
        let mismatched = dir.file("other.key", &other, 0o600);
        let msg = tls_err(&with(&mismatched), &[]);
        assert!(msg.contains("does not match certificate"), "{msg}");
        // An encrypted key is refused (no terminal prompt).
        let pkey = PKey::private_key_from_pem(&key).unwrap();
        let encrypted = pkey
            .private_key_to_pem_pkcs8_passphrase(openssl::symm::Cipher::aes_128_cbc(), b"pass")
            .unwrap();
        let enc = dir.file("enc.key", &encrypted, 0o600);
        let msg = tls_err(&with(&enc), &[]);
        assert!(msg.contains("sslpassword is not supported"), "{msg}");
        assert!(!msg.contains("BEGIN"), "no key material in messages: {msg}");
    }

    #[test]
    fn tls_connect_errors_name_the_endpoint() {
        // Nothing listens on port 1: an I/O error, not an SSL one, whatever the mode.
        for mode in ["require", "prefer", "allow"] {
            let e = resolve(
                &conninfo(&format!(
                    "host=127.0.0.1 port=1 user=u dbname=d password=hunter2 sslmode={mode}"
                )),
                &ConnArgs::default(),
                &[],
            );
            let err = match e.connect() {
                Ok(_) => panic!("connected to port 1"),
                Err(err) => err,
            };
            let text = format!("{err} {err:?}");
            assert!(text.contains("host=127.0.0.1 port=1"), "{text}");
            assert!(text.contains("hint: is the server running"), "{text}");
            assert!(!text.contains("hunter2"), "{text}");
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
