//! `replicate`: the companion binary of the rserv extension, as a library.
//!
//! From the top (ARCHITECTURE.md has the picture):
//! - [`cli`]: the command line, one function per command
//! - [`daemon`] (`replicate run`) and [`check`] run cycles; [`status`] reads the lag and the
//!   roles ([`node`])
//! - [`switchover`], [`failover`], [`rejoin`] (with [`divergence`]): roles change, with
//!   [`position`] (how slaves compare), [`guard`] (a pair the wrong way round; a deposed master
//!   fenced) and [`steps`] (test-only pause points)
//! - [`cycle`]: one replication cycle (the seed's `Replicate`)
//! - [`master`] / [`slave`]: the two ends of a change set, independent of each other
//! - [`majors`]: values one PostgreSQL major has and an older one cannot store
//! - [`table`]: a replicated table as the master describes it; [`snapshot`]: the versioned
//!   change-set format
//! - [`conn`]: libpq-compatible connections (conninfo, PG* variables, ~/.pgpass, TLS)
//! - [`locks`]: lock waits on the slave (lock_timeout, who holds the lock)
//! - [`log`]: the one logging path; [`error`]: errors and exit codes

pub mod argv;
pub mod check;
pub mod cli;
pub mod conn;
pub mod cycle;
pub mod daemon;
pub mod divergence;
pub mod error;
pub mod failover;
pub mod guard;
pub mod locks;
pub mod log;
pub mod majors;
pub mod master;
pub mod metrics;
pub mod node;
pub mod pipe;
pub mod position;
pub mod progress;
pub mod rejoin;
pub mod rserv;
pub mod slave;
pub mod snapshot;
pub mod status;
pub mod steps;
pub mod switchover;
pub mod table;
