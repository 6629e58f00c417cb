//! rserv's configuration parameters.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `rserv.allow_slave_writes`: let this session write to slave tables.
pub static ALLOW_SLAVE_WRITES: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"rserv.allow_slave_writes",
        c"Allow local writes to tables this database receives from an rserv master.",
        c"Off by default: local writes make a slave differ from its master.",
        &ALLOW_SLAVE_WRITES,
        GucContext::Userset,
        GucFlags::default(),
    );
}
