//! Lock waits on the slave. The apply runs under a `lock_timeout` (default
//! [`crate::conn::DEFAULT_LOCK_TIMEOUT`], `--lock-timeout`): a local session that holds a lock on a received
//! table (`LOCK TABLE … IN ACCESS EXCLUSIVE MODE` left open, a long `ALTER TABLE`, rows locked
//! `FOR UPDATE`) makes the change set roll back after that long instead of stalling it
//! forever. The error names the table and who holds it ([`LockHolder`], from `pg_locks` and
//! `pg_stat_activity`), so the one-shot command can say what to do, and the daemon logs it and
//! retries with backoff.

use crate::error::Error;
use postgres::Client;
use serde::Serialize;
use std::fmt;

/// A session holding a lock the apply waited for.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LockHolder {
    pub pid: i32,
    pub mode: String,
    /// None where `pg_stat_activity` does not show it to replicate's role.
    pub user: Option<String>,
    pub application_name: Option<String>,
    pub state: Option<String>,
    pub query: Option<String>,
    /// Seconds since its transaction started.
    pub transaction_seconds: Option<f64>,
}

impl LockHolder {
    /// Its last query on one line (at most 200 characters; empty when not visible).
    pub fn query_line(&self) -> String {
        self.query
            .as_deref()
            .map_or_else(String::new, |q| one_line(q, 200))
    }
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
        write!(
            f,
            "pid {} ({} held by user {}, application {:?}, {}",
            self.pid,
            self.mode,
            or(&self.user),
            self.application_name.as_deref().unwrap_or(""),
            or(&self.state)
        )?;
        if let Some(age) = self.transaction_seconds {
            write!(f, ", transaction open for {} s", age as u64)?;
        }
        match self.query_line() {
            q if q.is_empty() => write!(f, ")"),
            q => write!(f, ", last query: {q})"),
        }
    }
}

fn one_line(s: &str, max: usize) -> String {
    let s: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max).collect::<String>())
    } else {
        s
    }
}

/// Whether `e` (or the database error it carries) is a lock wait that gave up (SQLSTATE
/// 55P03, `lock_timeout`).
pub fn is_lock_timeout(e: &Error) -> bool {
    e.postgres().is_some_and(is_lock_wait)
}

/// Whether a database error is a lock wait that gave up.
pub fn is_lock_wait(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::LOCK_NOT_AVAILABLE)
}

/// The slave's relation locks held by other sessions that an apply to `table` (schema, name)
/// could have waited for: those in a mode that conflicts with writing rows (ROW EXCLUSIVE)
/// first; if none does, every lock on it (the apply needed more, e.g. for a schema change).
/// Without a table, the strong locks on any relation of the database. At most five.
pub fn holders(client: &mut Client, table: Option<(&str, &str)>) -> Vec<LockHolder> {
    const QUERY: &str = "\
        SELECT l.pid, l.mode, a.usename::text, a.application_name, a.state, a.query, \
               extract(epoch FROM now() - a.xact_start)::float8, \
               l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
        FROM pg_catalog.pg_locks l LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid \
        WHERE l.granted AND l.pid <> pg_catalog.pg_backend_pid() AND l.locktype = 'relation' \
          AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()) \
          AND CASE WHEN $1::text IS NULL \
                   THEN l.mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock') \
                   ELSE l.relation = pg_catalog.to_regclass(pg_catalog.format('%I.%I', $1::text, $2::text)) END \
        ORDER BY 8 DESC, a.xact_start";
    let (schema, name) = table.map_or((None, None), |(s, t)| (Some(s), Some(t)));
    let Ok(rows) = client.query(QUERY, &[&schema, &name]) else {
        return Vec::new();
    };
    let all: Vec<(LockHolder, bool)> = rows
        .iter()
        .map(|r| {
            (
                LockHolder {
                    pid: r.get(0),
                    mode: r.get(1),
                    user: r.get(2),
                    application_name: r.get(3),
                    state: r.get(4),
                    query: r.get(5),
                    transaction_seconds: r.get(6),
                },
                r.get(7),
            )
        })
        .collect();
    let conflicting = all.iter().any(|(_, strong)| *strong);
    let mut out: Vec<LockHolder> = all
        .into_iter()
        .filter(|(_, strong)| *strong || !conflicting)
        .map(|(h, _)| h)
        .collect();
    out.dedup_by_key(|h| h.pid);
    out.truncate(5);
    out
}

/// The error for a lock wait that gave up on `side` while doing `context` (on `table`, when
/// known), once its transaction has rolled back: who holds the lock is read on the same
/// connection.
pub fn timed_out(
    client: &mut Client,
    side: &'static str,
    context: String,
    table: Option<(&str, &str)>,
) -> Error {
    let waited = client
        .query_one("SELECT pg_catalog.current_setting('lock_timeout')", &[])
        .ok()
        .map(|r| r.get::<_, String>(0));
    Error::LockTimeout {
        side,
        context,
        table: table.map(|(s, t)| format!("{s}.{t}")),
        waited,
        holders: holders(client, table),
    }
}

/// The text of [`Error::LockTimeout`].
pub fn describe(
    context: &str,
    table: Option<&str>,
    waited: Option<&str>,
    holders: &[LockHolder],
) -> String {
    let on = table.map_or_else(|| "a lock".to_string(), |t| format!("a lock on {t}"));
    let after = waited.map_or_else(String::new, |w| format!(" {w} (lock_timeout)"));
    let mut s = format!("{context}: gave up waiting{after} for {on}");
    match holders {
        [] => s.push_str(" (its holder has let go of it since, or is not visible)"),
        [one] => s.push_str(&format!(", held by {one}")),
        many => {
            s.push_str(", held by:");
            for h in many {
                s.push_str(&format!("\n  {h}"));
            }
        }
    }
    s.push_str("; the change set was rolled back, nothing of it was applied");
    let hint = match holders.first() {
        Some(h) => format!(
            "\nhint: end that transaction (or the session: SELECT pg_terminate_backend({})), or \
             run again with a longer --lock-timeout",
            h.pid
        ),
        None => "\nhint: run again; a longer --lock-timeout waits longer".to_string(),
    };
    s.push_str(&hint);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_table_the_holder_and_what_to_do() {
        let h = LockHolder {
            pid: 4242,
            mode: "AccessExclusiveLock".into(),
            user: Some("alice".into()),
            application_name: Some("psql".into()),
            state: Some("idle in transaction".into()),
            query: Some("LOCK TABLE t\n   IN ACCESS EXCLUSIVE MODE".into()),
            transaction_seconds: Some(31.5),
        };
        let text = describe(
            "slave: applying changes to public.t",
            Some("public.t"),
            Some("10s"),
            &[h],
        );
        assert!(text.starts_with("slave: applying changes to public.t: gave up waiting 10s (lock_timeout) for a lock on public.t, held by pid 4242 (AccessExclusiveLock held by user alice, application \"psql\", idle in transaction, transaction open for 31 s, last query: LOCK TABLE t IN ACCESS EXCLUSIVE MODE)"), "{text}");
        assert!(text.contains("pg_terminate_backend(4242)"), "{text}");
        let none = describe("slave: x", None, None, &[]);
        assert!(
            none.contains("gave up waiting for a lock (its holder"),
            "{none}"
        );
    }
}
