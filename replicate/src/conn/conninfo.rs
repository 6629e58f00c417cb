//! Connection strings, as libpq reads them: `key=value` pairs (bare values with `\` escapes,
//! or single-quoted values with `\'` and `\\`) and `postgresql://` URLs (userinfo, one host,
//! port, database, `?key=value` parameters, all percent-decoded). Each string is parsed once,
//! straight into [`Conninfo`]; [`super::Endpoint::config`] fills `postgres::Config` from the
//! resolved settings through its setters. Errors never quote a password.

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::Duration;

use super::keepalive::{self, KeepaliveSettings};
use super::{ConnArgs, ConnError, SslMode};

/// The settings a connection string gives. Empty values count as unset.
#[derive(Debug, Default)]
pub(super) struct Conninfo {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub password: Option<Vec<u8>>,
    pub dbname: Option<String>,
    pub sslmode: Option<SslMode>,
    /// `Some(None)`: explicitly "wait forever", which must override PGCONNECT_TIMEOUT.
    pub connect_timeout: Option<Option<Duration>>,
    pub application_name: Option<String>,
    pub fallback_application_name: Option<String>,
    pub options: Option<String>,
    pub passfile: Option<PathBuf>,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub sslsni: Option<bool>,
    /// `keepalives*` and `tcp_user_timeout`.
    pub keepalive: KeepaliveSettings,
}

/// The database a connection string (key=value or URL) names, if any. `replicate` uses it to
/// let a database argument be left out when the connection string already names one.
pub fn conninfo_dbname(s: &str) -> Result<Option<String>, ConnError> {
    Ok(parse(s)?.dbname)
}

fn url_prefix_len(s: &str) -> Option<usize> {
    ["postgresql://", "postgres://"]
        .iter()
        .find(|p| s.starts_with(*p))
        .map(|p| p.len())
}

/// Whether a database argument is really a connection string (libpq's
/// `recognized_connection_string`: a URL, or anything with `=`).
pub fn looks_like_conninfo(s: &str) -> bool {
    url_prefix_len(s).is_some() || s.contains('=')
}

/// A dbname that is really a connection string becomes that side's conninfo (libpq's
/// expand_dbname, as psql/pg_dump do).
pub(super) fn expand_dbname(args: &ConnArgs) -> Result<Cow<'_, ConnArgs>, ConnError> {
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

/// Parses a libpq connection string (key=value or URL).
pub(super) fn parse(s: &str) -> Result<Conninfo, ConnError> {
    let mut out = Conninfo::default();
    if s.trim().is_empty() {
        return Ok(out);
    }
    let shown = redact_conninfo(s);
    let invalid = |reason: String| ConnError::InvalidConninfo {
        conninfo: shown.clone(),
        reason,
    };
    let pairs = match url_prefix_len(s) {
        Some(prefix_len) => parse_url(s, prefix_len, &shown, &mut out)?,
        None => tokenize_kv(s).map_err(&invalid)?,
    };
    // Last occurrence wins, as in libpq (URL parameters after the URL's own parts); an empty
    // value unsets.
    for Pair { key, value, .. } in pairs {
        let origin = || format!("connection string {shown}");
        let nonempty = |v: String| Some(v).filter(|v| !v.is_empty());
        match key.as_str() {
            "host" if value.contains(',') => {
                return Err(ConnError::MultipleHosts {
                    origin: origin(),
                    value,
                })
            }
            "host" => out.host = nonempty(value),
            "port" if value.contains(',') => {
                return Err(ConnError::MultipleHosts {
                    origin: origin(),
                    value,
                })
            }
            "port" if value.is_empty() => out.port = None,
            "port" => out.port = Some(parse_port(&value, &origin())?),
            "user" => out.user = nonempty(value),
            "password" => out.password = nonempty(value).map(String::into_bytes),
            "dbname" => out.dbname = nonempty(value),
            "application_name" => out.application_name = nonempty(value),
            "options" => out.options = nonempty(value),
            "sslmode" => {
                out.sslmode =
                    Some(SslMode::parse(&value).ok_or_else(|| invalid_sslmode(&value, &origin()))?)
            }
            "connect_timeout" => {
                out.connect_timeout = Some(parse_connect_timeout(&value).map_err(|reason| {
                    ConnError::InvalidSetting {
                        setting: "connect_timeout",
                        value: format!("{value:?}"),
                        origin: origin(),
                        reason,
                    }
                })?)
            }
            "passfile" => out.passfile = nonempty(value).map(PathBuf::from),
            "sslrootcert" => out.sslrootcert = nonempty(value).map(PathBuf::from),
            "sslcert" => out.sslcert = nonempty(value).map(PathBuf::from),
            "sslkey" => out.sslkey = nonempty(value).map(PathBuf::from),
            "sslsni" => out.sslsni = Some(parse_sslsni(&value, &origin())?),
            "fallback_application_name" => out.fallback_application_name = nonempty(value),
            k if keepalive::KEYWORDS.contains(&k) => out.keepalive.set(k, &value, &origin())?,
            // We never attempt GSSAPI encryption, which satisfies disable and prefer.
            "gssencmode" if value == "disable" || value == "prefer" => {}
            "gssencmode" => {
                return Err(ConnError::UnsupportedOption {
                    option: format!("gssencmode={value}"),
                    conninfo: shown,
                })
            }
            _ => {
                return Err(ConnError::UnsupportedOption {
                    option: key,
                    conninfo: shown,
                })
            }
        }
    }
    Ok(out)
}

/// The parts of a URL before its `?`: user, password, host, port and database go into `out`;
/// returns the `?key=value` parameters for the keyword loop.
fn parse_url(
    s: &str,
    prefix_len: usize,
    shown: &str,
    out: &mut Conninfo,
) -> Result<Vec<Pair>, ConnError> {
    let invalid = |reason: String| ConnError::InvalidConninfo {
        conninfo: shown.to_string(),
        reason,
    };
    let decode = |v: &str| percent_decode(v).map_err(&invalid);
    let nonempty = |v: String| Some(v).filter(|v| !v.is_empty());
    let parts = split_url(s, prefix_len);
    if let Some((start, end)) = parts.userinfo {
        let (user, password) = match s[start..end].split_once(':') {
            Some((user, password)) => (user, Some(password)),
            None => (&s[start..end], None),
        };
        out.user = nonempty(decode(user)?);
        if let Some(p) = password {
            out.password = nonempty(decode(p)?).map(String::into_bytes);
        }
    }
    if parts.hostpart.contains(',') {
        return Err(ConnError::MultipleHosts {
            origin: format!("connection string {shown}"),
            value: parts.hostpart.to_string(),
        });
    }
    // [v6 address]:port, host:port (a unix-socket directory percent-encoded), or host.
    let (host, port) = match parts.hostpart.strip_prefix('[') {
        Some(inner) => {
            let (host, rest) = inner
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 address in the URL lacks its \"]\"".into()))?;
            match rest {
                "" => (host, None),
                _ => match rest.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => return Err(invalid("unexpected text after \"]\" in the URL".into())),
                },
            }
        }
        None => match parts.hostpart.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (parts.hostpart, None),
        },
    };
    out.host = nonempty(decode(host)?);
    if let Some(port) = port.filter(|p| !p.is_empty()) {
        out.port = Some(parse_port(port, &format!("connection string {shown}"))?);
    }
    if let Some(db) = parts.path {
        out.dbname = nonempty(decode(db)?);
    }
    let mut pairs = Vec::new();
    for (n, param) in parts.query.unwrap_or("").split('&').enumerate() {
        if param.is_empty() {
            continue;
        }
        let (k, v) = param
            .split_once('=')
            .ok_or_else(|| invalid(format!("URL parameter {} has no \"=\"", n + 1)))?;
        pairs.push(Pair {
            key: decode(k)?,
            value: decode(v)?,
            span: (0, 0),
        });
    }
    Ok(pairs)
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

/// Lenient %XX decoding (invalid sequences stay literal, as in libpq's URI parser's callers
/// expect from rust-postgres).
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

/// A URL cut into its parts, as written (not decoded).
struct UrlParts<'a> {
    /// Everything before the `?`.
    base: &'a str,
    /// Byte offset of the `user[:password]` userinfo within the input, and its end.
    userinfo: Option<(usize, usize)>,
    /// `host[:port][,...]` as written.
    hostpart: &'a str,
    /// The database: what follows the `/` after the host part.
    path: Option<&'a str>,
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
    let (hostpart, path) = match main.split_once('/') {
        Some((host, path)) => (host, Some(path)),
        None => (main, None),
    };
    UrlParts {
        base: &s[..base_end],
        userinfo: userinfo_end.map(|i| (prefix_len, prefix_len + i)),
        hostpart,
        path,
        query,
    }
}

/// The connection string with passwords replaced by `****`, for messages.
pub(super) fn redact_conninfo(s: &str) -> String {
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

/// Quote a conninfo value when it would not survive as a bare word: `'v'` with `'` and `\`
/// backslash-escaped (libpq conninfo quoting).
pub(super) fn quote_value(v: &str) -> Cow<'_, str> {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\')
    {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    Cow::Owned(out)
}

// ---------------------------------------------------------------------------------------
// Values, from a connection string or an environment variable (`origin` says which)
// ---------------------------------------------------------------------------------------

pub(super) fn check_port(port: u16, origin: &str) -> Result<u16, ConnError> {
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

pub(super) fn parse_port(value: &str, origin: &str) -> Result<u16, ConnError> {
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
pub(super) fn parse_connect_timeout(value: &str) -> Result<Option<Duration>, String> {
    let secs: i64 = value
        .trim()
        .parse()
        .map_err(|_| "expected a whole number of seconds".to_string())?;
    Ok(match secs {
        s if s <= 0 => None,
        s => Some(Duration::from_secs(s.max(2).unsigned_abs())),
    })
}

pub(super) fn invalid_sslmode(value: &str, origin: &str) -> ConnError {
    ConnError::InvalidSetting {
        setting: "sslmode",
        value: format!("{value:?}"),
        origin: origin.into(),
        reason: "expected disable, allow, prefer, require, verify-ca or verify-full".into(),
    }
}

/// libpq's sslsni: 0 or 1.
pub(super) fn parse_sslsni(value: &str, origin: &str) -> Result<bool, ConnError> {
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

#[cfg(test)]
mod tests {
    use super::super::test_support::*;
    use super::*;
    use crate::conn::PasswordSource;

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

        // A URL host without a port leaves the port to PGPORT (libpq).
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
    fn parsed_once_into_settings() {
        let ci = parse("postgresql://u%20x@[::1]/d%2Fb?options=-c%20a%3Db&user=v").unwrap();
        assert_eq!(ci.host.as_deref(), Some("::1"));
        assert_eq!(ci.port, None);
        assert_eq!(ci.dbname.as_deref(), Some("d/b"));
        // a parameter comes after the URL's own parts: it wins
        assert_eq!(ci.user.as_deref(), Some("v"));
        assert_eq!(ci.options.as_deref(), Some("-c a=b"));
        let ci = parse("postgresql://h:/").unwrap();
        assert_eq!(
            (ci.host.as_deref(), ci.port, ci.dbname),
            (Some("h"), None, None)
        );
        let ci = parse("dbname='' user=u password=''").unwrap();
        assert_eq!((ci.dbname, ci.password), (None, None));
        assert_eq!(
            conninfo_dbname("host=h dbname=app").unwrap().as_deref(),
            Some("app")
        );
        assert_eq!(conninfo_dbname("postgresql://h/").unwrap(), None);
        assert!(conninfo_dbname("host=h bogus=1").is_err());
        for bad in ["postgresql://[::1/db", "postgresql://[::1]x/db", "host"] {
            assert!(
                matches!(parse(bad), Err(ConnError::InvalidConninfo { .. })),
                "{bad}"
            );
        }
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
    fn unsupported_keywords_are_refused() {
        for bad in ["host=db sslsni=yes", "host=db sslsni=2"] {
            let msg = resolve_err(&conninfo(bad), &[]).to_string();
            assert!(msg.contains("sslsni"), "{msg}");
        }
        // Keywords we do not implement are refused, not ignored.
        for unsupported in [
            "sslcrl=/x",
            "sslpassword=x",
            "ssl_min_protocol_version=TLSv1.3",
            "hostaddr=127.0.0.1",
            "gssencmode=require",
        ] {
            let err = resolve_err(&conninfo(&format!("host=db {unsupported}")), &[]);
            assert!(matches!(err, ConnError::UnsupportedOption { .. }), "{err}");
        }
    }

    #[test]
    fn redaction() {
        let secret = "hunter2";
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
            "host=h password=hunter2 hostaddr=1.2.3.4",
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
        let msg = resolve_err(&conninfo("host=h password=x hostaddr=1.2.3.4"), &[]).to_string();
        assert!(
            msg.contains("hostaddr") && msg.contains("host=h password=****"),
            "{msg}"
        );
        let msg = resolve_err(&conninfo("host=h port=notanumber"), &[]).to_string();
        assert!(
            msg.contains("port") && msg.contains("host=h port=notanumber"),
            "{msg}"
        );
        for several in ["host=a,b", "port=1,2", "postgresql://h1:1,h2:2/db"] {
            let err = resolve_err(&conninfo(several), &[]);
            assert!(matches!(err, ConnError::MultipleHosts { .. }), "{err}");
        }
    }
}
