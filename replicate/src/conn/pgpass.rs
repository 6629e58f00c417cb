//! The password file (`~/.pgpass`, `PGPASSFILE`, `passfile=`, `--password-file`), read as
//! libpq 15's passwordFromFile reads it: permissions checked, first matching line wins,
//! `*` wildcards, `\` escapes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::DEFAULT_SOCKET_DIR;

#[derive(Debug, PartialEq, Eq)]
pub(super) enum PgpassOutcome {
    Found(Vec<u8>),
    /// Missing, unreadable, or no matching line (libpq is silent about all of these).
    NoMatch,
    /// Not used; the text is libpq's warning (logged as a warning).
    Ignored(String),
}

/// libpq's passwordFromFile. A unix-socket host is first matched exactly as libpq 15 does
/// (the default socket dir as `localhost`, any other dir as its path); if nothing matches,
/// the other alias is tried (`localhost` for any socket dir, or the default dir's path).
pub(super) fn lookup(
    path: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> PgpassOutcome {
    let Ok(meta) = fs::metadata(path) else {
        return PgpassOutcome::NoMatch;
    };
    if !meta.is_file() {
        return PgpassOutcome::Ignored(format!(
            "password file \"{}\" is not a plain file",
            path.display()
        ));
    }
    if meta.mode() & 0o077 != 0 {
        return PgpassOutcome::Ignored(format!(
            "password file \"{}\" has group or world access; permissions should be \
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
        if let Some(pw) = scan(&data, hostname, &port, dbname, user) {
            return PgpassOutcome::Found(pw);
        }
    }
    PgpassOutcome::NoMatch
}

fn scan(data: &[u8], host: &str, port: &str, dbname: &str, user: &str) -> Option<Vec<u8>> {
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
            .try_fold(line, |rest, token| field_matches(rest, token.as_bytes()));
        if let Some(rest) = rest {
            return Some(password(rest));
        }
    }
    None
}

/// libpq's pwdfMatchesString: if the field at the start of `buf` is `*` or equals `token`
/// (after `\` unescaping), returns what follows its ':' separator.
fn field_matches<'a>(buf: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
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
fn password(buf: &[u8]) -> Vec<u8> {
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
    use super::super::test_support::*;
    use super::*;
    use crate::conn::{ConnArgs, Endpoint};

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
        let look = |host: &str, port: u16, db: &str, user: &str| match lookup(
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
        assert_eq!(field_matches(b"*:rest", b"x"), Some(&b"rest"[..]));
        assert_eq!(field_matches(b"\\*:rest", b"x"), None);
        assert_eq!(field_matches(b"\\*:rest", b"*"), Some(&b"rest"[..]));
        assert_eq!(field_matches(b"ab:rest", b"a"), None);
        assert_eq!(field_matches(b"a:rest", b"ab"), None);
        assert_eq!(field_matches(b"a\\", b"a"), None);
        assert_eq!(field_matches(b"abc", b"abc"), None);
        assert_eq!(password(b"pw\\"), b"pw\\".to_vec());
        assert_eq!(password(b"a\\:b:c"), b"a:b".to_vec());
    }

    #[test]
    fn pgpass_permission_check() {
        let loose = TempFile::new("loose", "*:*:*:*:secret\n", 0o640);
        match lookup(&loose.0, "h", 5432, "d", "u") {
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
            lookup(&strict.0, "h", 5432, "d", "u"),
            PgpassOutcome::Found(b"secret".to_vec())
        );
        // Missing file: silently nothing. A directory: warning.
        assert_eq!(
            lookup(Path::new("/nonexistent/pgpass"), "h", 5432, "d", "u"),
            PgpassOutcome::NoMatch
        );
        assert!(matches!(
            lookup(&std::env::temp_dir(), "h", 5432, "d", "u"),
            PgpassOutcome::Ignored(_)
        ));
    }
}
