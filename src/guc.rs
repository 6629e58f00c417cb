//! rserv's configuration parameters.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// `rserv.allow_slave_writes`: let this session write to slave tables.
pub static ALLOW_SLAVE_WRITES: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `rserv.slave_reads_upsert`: the slave this session prepares change sets for applies UPSERT
/// sections (rows updated in place); `replicate` sets it for a slave whose rserv does.
pub static SLAVE_READS_UPSERT: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `rserv.replica_session`: a change set's apply leaves this session in replica mode for the
/// next one (see `replica_window.rs`); `replicate` sets it on its slave connection.
pub static REPLICA_SESSION: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `rserv.replica_window`: the record of an open replica window (see `replica_window.rs`),
/// "session:<mode>" or "transaction:<mode>". Superuser-only and hidden: only rserv sets it.
pub static REPLICA_WINDOW: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"rserv.allow_slave_writes",
        c"Allow local writes to tables this database receives from an rserv master.",
        c"Off by default: local writes make a slave differ from its master.",
        &ALLOW_SLAVE_WRITES,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"rserv.slave_reads_upsert",
        c"The slave change sets are prepared for applies UPSERT sections.",
        c"Set by replicate for a slave whose rserv applies rows updated in place; off: change sets every rserv release reads.",
        &SLAVE_READS_UPSERT,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"rserv.replica_session",
        c"Keep this session in replica mode between the change sets it applies.",
        c"Only for a role that may set session_replication_role itself; rserv leaves replica mode before any other of its functions.",
        &REPLICA_SESSION,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"rserv.replica_window",
        c"rserv's record of an open replica window (set by rserv only).",
        c"The session_replication_role to go back to when the apply's replica window closes.",
        &REPLICA_WINDOW,
        GucContext::Suset,
        GucFlags::NO_SHOW_ALL | GucFlags::SUPERUSER_ONLY,
    );
}
