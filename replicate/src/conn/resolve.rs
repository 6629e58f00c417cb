//! Resolution of one endpoint as libpq 15 does it: flags, then the connection string, then the
//! `PG*` environment, then libpq's defaults (the OS user, `~/.postgresql/`, `~/.pgpass`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::conninfo::{
    self, check_port, expand_dbname, invalid_sslmode, parse_connect_timeout, parse_port,
    parse_sslsni, Conninfo,
};
use super::pgpass::{self, PgpassOutcome};
use super::tls::{TlsSettings, ROOT_CERT_FILE, USER_CERT_FILE, USER_KEY_FILE};
use super::{
    ConnArgs, ConnError, Endpoint, Password, PasswordSource, SslMode, DEFAULT_APPLICATION_NAME,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_PORT, DEFAULT_READ_TIMEOUT, DEFAULT_SOCKET_DIR,
};

impl Endpoint {
    /// Resolves one endpoint from the process environment.
    ///
    /// Precedence, highest first: `specific` fields > `defaults` fields > conninfo
    /// (`specific.conninfo`, else `defaults.conninfo`) > PG* env vars > libpq defaults.
    /// `password_file` (e.g. from a `--passfile` flag) overrides `PGPASSFILE` and
    /// `~/.pgpass`. May log libpq's password-file permission warning.
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
            Some(s) => conninfo::parse(s)?,
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

        let port = match specific.port.or(defaults.port) {
            Some(p) => check_port(p, "the port option")?,
            None => match ci.port {
                Some(p) => p,
                None => match env("PGPORT") {
                    Some(p) => parse_port(&p, "PGPORT")?,
                    None => DEFAULT_PORT,
                },
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
                // libpq waits forever; replicate does not (see DEFAULT_CONNECT_TIMEOUT)
                None => Some(DEFAULT_CONNECT_TIMEOUT),
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
            keepalive: ci.keepalive.resolve(),
            read_timeout: Some(DEFAULT_READ_TIMEOUT),
            lock_timeout: None,
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
                .or_else(|| home.as_ref().map(|h| h.join(".pgpass")));
            match file {
                Some(file) => match pgpass::lookup(
                    &file,
                    &endpoint.host,
                    port,
                    &endpoint.dbname,
                    &endpoint.user,
                ) {
                    PgpassOutcome::Found(p) => Some((p, PasswordSource::File(file))),
                    PgpassOutcome::Ignored(warning) => {
                        // libpq prints this and carries on without the file.
                        tracing::warn!("{warning}");
                        None
                    }
                    PgpassOutcome::NoMatch => None,
                },
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

/// The account of the effective uid, as libpq finds it (getpwuid(geteuid()), through NSS, so
/// LDAP and other directory users count too).
fn os_account() -> Option<nix::unistd::User> {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
}

/// The OS user name (libpq's default user), else `$USER`.
pub(super) fn os_user_name(env: &dyn Fn(&str) -> Option<String>) -> Option<String> {
    os_account()
        .map(|u| u.name)
        .filter(|n| !n.is_empty())
        .or_else(|| env("USER"))
}

/// `$HOME`, else the account's home directory (where libpq looks for .pgpass and
/// .postgresql/).
fn home_dir(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    env("HOME")
        .map(PathBuf::from)
        .or_else(|| os_account().map(|u| u.dir))
        .filter(|h| !h.as_os_str().is_empty())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::time::Duration;

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
        // replicate's own defaults where libpq waits forever or leaves it to the system
        assert_eq!(e.connect_timeout(), Some(DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(e.read_timeout(), Some(DEFAULT_READ_TIMEOUT));
        assert_eq!(e.lock_timeout(), None);
        assert!(e.keepalive().enabled && e.keepalive().idle.is_some());
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
    fn the_os_user_is_the_effective_uid_account() {
        let uid = nix::unistd::geteuid();
        let account = nix::unistd::User::from_uid(uid).unwrap().unwrap();
        assert_eq!(
            os_user_name(&env_of(&[("USER", "someone-else")])).as_deref(),
            Some(account.name.as_str())
        );
        // $HOME wins over the account's home directory, as in libpq.
        assert_eq!(
            home_dir(&env_of(&[("HOME", "/h")])),
            Some(PathBuf::from("/h"))
        );
        assert_eq!(home_dir(&|_| None), Some(account.dir));
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
        let msg = resolve_err(&ConnArgs::default(), &[("PGSSLSNI", "on")]).to_string();
        assert!(msg.contains("PGSSLSNI"), "{msg}");
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
}
