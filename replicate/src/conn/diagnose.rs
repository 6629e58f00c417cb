//! Why a connection failed, in words that say what to fix: every attempt's reason (certificate
//! failures as libpq words them), then one hint for the most telling failure (pg_hba.conf,
//! password, CA, host name, server not running, ...). Never a password.

use openssl::x509::{X509Ref, X509StoreContextRef};
use postgres::error::SqlState;

use super::tls::{Attempt, Failure};
use super::{ConnError, Endpoint};

/// What the certificate verification callback saw during one attempt.
#[derive(Debug, Default, Clone)]
pub(super) struct TlsProbe {
    /// The server sent a certificate: a TLS handshake took place.
    pub handshake: bool,
    /// The first certificate check that failed (only recorded when it is enforced).
    pub failure: Option<CertFailure>,
}

#[derive(Debug, Clone)]
pub(super) struct CertFailure {
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

impl Endpoint {
    /// One `ConnError` for the failed attempts: every attempt's reason in order, the hint
    /// of the most telling one.
    pub(super) fn connect_error(&self, failures: Vec<(Attempt, Failure)>) -> ConnError {
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

    /// "\nhint: ..." with the likely fix for this failure, or nothing.
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
    pub(super) fn from_context(ctx: &X509StoreContextRef) -> CertFailure {
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
pub(super) fn is_tls_error(error: &postgres::Error) -> bool {
    error.as_db_error().is_none()
        && error
            .to_string()
            .starts_with("error performing TLS handshake")
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;

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
