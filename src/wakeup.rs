//! Waking the daemon: a transaction that logged changes sends `NOTIFY rserv` at commit, so a
//! running `replicate run` starts its next cycle at once instead of at its next poll.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// Channel on which a running `replicate run` waits for committed changes.
const NOTIFY_CHANNEL: &str = "rserv";

/// A backend notifies at most this often: every notifying commit takes PostgreSQL's global
/// notify-queue lock until it is durable, which would serialize busy writers' commits. The
/// daemon keeps cycling while there is work, so a skipped wake-up costs no latency under load.
const NOTIFY_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

thread_local! {
    /// The current transaction appended to the log.
    static LOGGED: Cell<bool> = const { Cell::new(false) };
    static NOTIFIED_AT: Cell<Option<std::time::Instant>> = const { Cell::new(None) };
}

/// Transaction callback: a transaction that logged changes sends `NOTIFY rserv` just before it
/// commits (delivered at commit, so the daemon never wakes for a rolled-back one). Nothing is
/// sent from a transaction being prepared for two-phase commit: PostgreSQL refuses PREPARE
/// TRANSACTION after NOTIFY, and its changes wait for the daemon's next poll instead.
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT if LOGGED.with(|l| l.replace(false)) => {
            notify_throttled();
        }
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE
        | pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => LOGGED.with(|l| l.set(false)),
        _ => {}
    }
}

/// The current transaction has something for the slaves (the daemon is woken at its commit).
pub fn something_logged() {
    LOGGED.with(|l| l.set(true));
}

unsafe fn notify_throttled() {
    let now = std::time::Instant::now();
    if NOTIFIED_AT.with(|at| {
        at.get()
            .is_some_and(|t| now.duration_since(t) < NOTIFY_EVERY)
    }) {
        return;
    }
    NOTIFIED_AT.with(|at| at.set(Some(now)));
    let channel = pg_sys::cstring_to_text_with_len(
        NOTIFY_CHANNEL.as_ptr() as *const std::ffi::c_char,
        NOTIFY_CHANNEL.len() as i32,
    );
    let payload = pg_sys::cstring_to_text_with_len(c"".as_ptr(), 0);
    pgrx::direct_function_call_as_datum(
        pg_sys::pg_notify,
        &[
            Some(pg_sys::Datum::from(channel)),
            Some(pg_sys::Datum::from(payload)),
        ],
    );
}

/// Register the transaction callback that sends the wake-up (from `_PG_init`).
pub fn register_callbacks() {
    // SAFETY: registering a C callback with static lifetime, once per backend
    unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_event), std::ptr::null_mut()) };
}
