//! `replicate`: the companion binary of the rserv extension, as a library.
//!
//! - [`conn`]: libpq-compatible connection settings (PG* variables, ~/.pgpass, conninfo)
//! - [`snapshot`]: the versioned change set format
//! - [`majors`]: values one PostgreSQL major has and an older one cannot store
//! - [`master`] / [`slave`]: the two ends of a change set
//! - [`cycle`]: one replication cycle (the seed's `Replicate`)
//! - [`cli`]: the command line

pub mod argv;
pub mod check;
pub mod cli;
pub mod conn;
pub mod cycle;
pub mod daemon;
pub mod error;
pub mod majors;
pub mod master;
pub mod metrics;
pub mod pipe;
pub mod progress;
pub mod rserv;
pub mod slave;
pub mod snapshot;
pub mod status;
pub mod switchover;
