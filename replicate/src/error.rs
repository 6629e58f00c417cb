//! Errors of `replicate`, each with the exit code the binary returns for it.

use crate::conn::ConnError;

/// Exit codes (documented in the README and `replicate --help`).
pub mod exit {
    /// Success: the change set was applied, or there was nothing to do.
    pub const OK: i32 = 0;
    /// A database refused an operation (the message says which and why).
    pub const FAILED: i32 = 1;
    /// Invalid command line.
    pub const USAGE: i32 = 2;
    /// Could not connect to the master or the slave.
    pub const CONNECT: i32 = 3;
    /// The snapshot input is truncated, corrupted or not a snapshot.
    pub const BAD_SNAPSHOT: i32 = 4;
    /// `replicate check`: master and slave differ.
    pub const DIFFERENT: i32 = 5;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{side}: {source}")]
    Connect {
        side: &'static str,
        #[source]
        source: ConnError,
    },
    #[error("{context}: {}", describe_pg(.source))]
    Db {
        context: String,
        #[source]
        source: postgres::Error,
    },
    #[error("invalid snapshot: {0}")]
    Snapshot(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
    /// A statement gave up waiting for a lock (`lock_timeout`); its transaction rolled back.
    #[error("{}", crate::locks::describe(.context, .table.as_deref(), .waited.as_deref(), .holders))]
    LockTimeout {
        side: &'static str,
        /// What was being done, `side: ...` as in every context.
        context: String,
        /// `schema.table`, when known.
        table: Option<String>,
        /// The `lock_timeout` setting (e.g. `10s`).
        waited: Option<String>,
        holders: Vec<crate::locks::LockHolder>,
    },
    /// The master and slave given are not (or no longer) master and slave of each other: the
    /// slave took over from the master (switchover or failover).
    #[error("{0}")]
    Direction(String),
    /// The extension was updated (`ALTER EXTENSION rserv UPDATE`) on `side` while this session
    /// was connected: its calls are the old version's, so the session must be opened again.
    #[error("{message}")]
    Reconnect { side: &'static str, message: String },
    /// The master and slave given have swapped roles: the slave took over and the master
    /// follows it now (a `replicate run` daemon follows the flip).
    #[error("{0}")]
    Flipped(String),
}

impl Error {
    pub fn exit_code(&self) -> i32 {
        match self {
            // a connection that was never attempted because its settings are wrong is bad input
            Error::Connect {
                source:
                    ConnError::InvalidConninfo { .. }
                    | ConnError::UnsupportedOption { .. }
                    | ConnError::InvalidSetting { .. }
                    | ConnError::MultipleHosts { .. }
                    | ConnError::NoUserName,
                ..
            } => exit::USAGE,
            Error::Connect { .. } => exit::CONNECT,
            Error::Snapshot(_) => exit::BAD_SNAPSHOT,
            Error::Usage(_) => exit::USAGE,
            Error::Db { .. }
            | Error::Io { .. }
            | Error::Failed(_)
            | Error::LockTimeout { .. }
            | Error::Reconnect { .. }
            | Error::Direction(_)
            | Error::Flipped(_) => exit::FAILED,
        }
    }

    /// The database error this is, or that an I/O error of a COPY stream carries.
    pub fn postgres(&self) -> Option<&postgres::Error> {
        match self {
            Error::Db { source, .. } => Some(source),
            Error::Io { source, .. } => source
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<postgres::Error>()),
            _ => None,
        }
    }

    /// Which side failed, `"master"` or `"slave"`, when the error says (every database
    /// error's context starts with its side); None when it does not.
    pub fn side(&self) -> Option<&'static str> {
        let text = match self {
            Error::Connect { side, .. }
            | Error::LockTimeout { side, .. }
            | Error::Reconnect { side, .. } => return Some(side),
            Error::Db { context, .. } | Error::Io { context, .. } => context,
            Error::Failed(message) => message,
            Error::Snapshot(_) | Error::Usage(_) | Error::Direction(_) | Error::Flipped(_) => {
                return None
            }
        };
        ["master", "slave"]
            .into_iter()
            .find(|side| text.starts_with(&format!("{side}:")))
    }

    /// SQLSTATE of a database error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Db { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// An I/O error of a COPY stream: the server's own error when that is what it carries (a COPY
/// the server aborted, a connection lost mid-stream), described like every other.
pub fn stream_error(context: String, e: std::io::Error) -> Error {
    if e.get_ref()
        .is_some_and(|inner| inner.downcast_ref::<postgres::Error>().is_some())
    {
        if let Some(inner) = e.into_inner() {
            if let Ok(source) = inner.downcast::<postgres::Error>() {
                return Error::Db {
                    context,
                    source: *source,
                };
            }
        }
        return Error::Failed(context);
    }
    Error::Io { context, source: e }
}

/// The server's message with its detail and hint; rust-postgres' own Display says only
/// "db error". Not a database's error: the error and its causes.
pub fn describe_pg(e: &postgres::Error) -> String {
    describe(e, false)
}

/// [`describe_pg`] with the SQLSTATE, the position and the context too (psql's `VERBOSITY
/// verbose`), for tests and debugging.
pub fn describe_pg_verbose(e: &postgres::Error) -> String {
    describe(e, true)
}

fn describe(e: &postgres::Error, verbose: bool) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = if verbose {
                format!("{} {}: {}", db.severity(), db.code().code(), db.message())
            } else {
                format!("{}: {}", db.severity(), db.message())
            };
            if let Some(d) = db.detail() {
                s.push_str(&format!("\nDETAIL: {d}"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("\nHINT: {h}"));
            }
            if verbose {
                if let Some(p) = db.position() {
                    s.push_str(&format!("\nPOSITION: {p:?}"));
                }
                if let Some(w) = db.where_() {
                    s.push_str(&format!("\nCONTEXT: {w}"));
                }
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

/// Attach what we were doing to a database error.
pub trait DbContext<T> {
    fn ctx(self, context: impl Into<String>) -> Result<T, Error>;
}

impl<T> DbContext<T> for Result<T, postgres::Error> {
    fn ctx(self, context: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Db {
            context: context.into(),
            source,
        })
    }
}

/// Attach what we were doing to an I/O error.
pub trait IoContext<T> {
    fn io_ctx(self, context: impl Into<String>) -> Result<T, Error>;
}

impl<T> IoContext<T> for Result<T, std::io::Error> {
    fn io_ctx(self, context: impl Into<String>) -> Result<T, Error> {
        self.map_err(|source| Error::Io {
            context: context.into(),
            source,
        })
    }
}
