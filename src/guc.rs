//! rserv's configuration parameters.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `rserv.allow_slave_writes`: let this session write to slave tables.
pub static ALLOW_SLAVE_WRITES: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `rserv.slave_reads_upsert`: the slave this session prepares change sets for applies UPSERT
/// sections (rows updated in place); `replicate` sets it for a slave whose rserv does.
pub static SLAVE_READS_UPSERT: GucSetting<bool> = GucSetting::<bool>::new(false);

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
}
