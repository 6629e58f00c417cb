//! TLS as libpq 15 does it: which attempts a `sslmode` makes (with or without SSL, and the
//! allow/prefer retry), what each verifies, and the OpenSSL client for an SSL attempt (root
//! certificate file only, client certificate and key checks, SNI). Why an attempt failed is
//! put into words by [`super::diagnose`].

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use openssl::pkey::PKey;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::store::X509StoreBuilder;
use postgres::{Client, NoTls};
use postgres_openssl::MakeTlsConnector;

use super::diagnose::{is_tls_error, CertFailure, TlsProbe};
use super::{ConnError, Endpoint, SslMode};

/// libpq's file names under `~/.postgresql/`.
pub(super) const ROOT_CERT_FILE: &str = "root.crt";
pub(super) const USER_CERT_FILE: &str = "postgresql.crt";
pub(super) const USER_KEY_FILE: &str = "postgresql.key";

/// The TLS files and switches of one endpoint (paths resolved, files not read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TlsSettings {
    /// `sslrootcert`, else `PGSSLROOTCERT`, else `~/.postgresql/root.crt` (None: no home).
    pub rootcert: Option<PathBuf>,
    /// `sslcert`, else `PGSSLCERT`, else `~/.postgresql/postgresql.crt`.
    pub cert: Option<PathBuf>,
    /// `sslkey`, else `PGSSLKEY`, else `~/.postgresql/postgresql.key`.
    pub key: Option<PathBuf>,
    /// `sslsni`, else `PGSSLSNI`, else true.
    pub sni: bool,
}

/// How much of the server certificate one TLS attempt checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verify {
    /// Encrypt only (any certificate is accepted).
    Nothing,
    /// The chain must lead to a CA of the root certificate file.
    Chain,
    /// The chain, and the certificate must name the host.
    Full,
}

/// One connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Attempt {
    /// No SSL.
    Plain,
    /// SSL if the server offers it (SSLRequest answered 'S'), else no SSL.
    TlsIfOffered(Verify),
    /// SSL or fail.
    Tls(Verify),
}

impl Attempt {
    pub(super) fn uses_tls(self) -> bool {
        !matches!(self, Attempt::Plain)
    }
}

/// Why one attempt failed.
pub(super) enum Failure {
    /// The TLS client could not be set up (files missing or unreadable); nothing was sent.
    Setup(ConnError),
    Connect {
        error: postgres::Error,
        probe: TlsProbe,
    },
}

impl Endpoint {
    /// The attempts of [`Endpoint::plan`], the fallback only where libpq would retry.
    pub(super) fn connect_unpinned(&self) -> Result<Client, ConnError> {
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
    pub(super) fn nearest_ssl_mode(&self) -> postgres::config::SslMode {
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
    pub(super) fn verify_level(&self) -> Verify {
        match self.sslmode {
            SslMode::VerifyFull => Verify::Full,
            SslMode::VerifyCa => Verify::Chain,
            _ if self.tls.rootcert.as_deref().is_some_and(Path::exists) => Verify::Chain,
            _ => Verify::Nothing,
        }
    }

    /// The first attempt and the one that may follow it.
    pub(super) fn plan(&self) -> (Attempt, Option<Attempt>) {
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

    pub(super) fn tls_error(&self, reason: String) -> ConnError {
        ConnError::Tls {
            endpoint: self.describe(),
            sslmode: self.sslmode,
            reason,
        }
    }

    /// An OpenSSL client for one attempt. Reads the root certificate and client
    /// certificate files now, so a fixed file is picked up by the next connection.
    pub(super) fn tls_connector(
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
        let euid = Some(nix::unistd::geteuid().as_raw());
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
}

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;

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
}
