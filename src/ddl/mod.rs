//! DDL in the stream: a schema change to a replicated table on the master reaches every slave
//! at the exact point of its change-set stream where it happened. The master records each
//! change as the table's definition before and after (`record.rs`); a change set carries those
//! as DDL sections ahead of the table's rows; the slave follows the difference (`diff.rs`) with
//! statements it builds itself (`apply.rs`). What cannot follow is refused on the master.

mod apply;
mod diff;
mod execute;
mod record;
mod types;

pub use apply::{apply_section, finish_deferred, pending};
use pgrx::pg_sys;
use pgrx::prelude::*;
pub use record::remember_definition;

/// Transaction callback: a change set whose DDL left steps for `rserv_apply_end()` must not
/// commit without them (the slave would lack a constraint or an index the master has).
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT | pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE
            if apply::pending() =>
        {
            apply::forget();
            crate::error::fail(
                PgSqlErrorCode::ERRCODE_INVALID_TRANSACTION_STATE,
                "rserv: this change set's DDL is not finished: call rserv_apply_end() before COMMIT",
                "replicate does this; a client applying change sets itself must too",
            );
        }
        pg_sys::XactEvent::XACT_EVENT_COMMIT | pg_sys::XactEvent::XACT_EVENT_ABORT => {
            apply::forget()
        }
        _ => {}
    }
}

pub fn register_callbacks() {
    // SAFETY: registers a static callback once per backend (from _PG_init)
    unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_event), std::ptr::null_mut()) };
}
