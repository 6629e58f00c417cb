//! Waking the daemon: a transaction that logged changes sends `NOTIFY rserv` at commit when a
//! `replicate run` is idle, so the daemon starts its next cycle at once instead of at its
//! next poll.
//!
//! Every notifying commit takes PostgreSQL's global notify lock until it is durable, which
//! serializes busy writers; so writers notify only while a daemon waits. An idle daemon holds
//! rserv's wake lock in SHARE mode ([`rserv_wake_on_commit`]); a committing writer asks for it
//! in ROW EXCLUSIVE mode without waiting, and holds what it got until its commit is visible.
//! Refused: a daemon is idle (or becoming idle), so the writer notifies. Granted: every daemon
//! is busy and will look again; one going idle waits for this writer's commit to be visible
//! before it takes the lock, and then runs one more cycle before it sleeps. No commit is
//! missed, and a busy master sends no notifications at all.

use crate::security::{definer, require_replicator};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::Cell;

/// Channel on which a running `replicate run` waits for committed changes.
const NOTIFY_CHANNEL: &str = "rserv";

/// The wake lock's key: an advisory lock of class [`WAKE_CLASS`], which no SQL advisory-lock
/// function can name (they use classes 1 and 2), so no user lock collides with it.
const WAKE_KEY: (u32, u32) = (0x7273_7276, 1);
const WAKE_CLASS: u16 = 0x7273;

thread_local! {
    /// The current transaction appended to the log.
    static LOGGED: Cell<bool> = const { Cell::new(false) };
    /// This session holds the wake lock (an idle daemon's session).
    static WAITING: Cell<bool> = const { Cell::new(false) };
}

/// Transaction callback: a transaction that logged changes wakes an idle daemon just before it
/// commits (the notification is delivered at commit, so a daemon never wakes for a rolled-back
/// one). Nothing is sent from a transaction being prepared for two-phase commit: PostgreSQL
/// refuses PREPARE TRANSACTION after NOTIFY, and its changes wait for the daemon's next poll.
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT
            if LOGGED.with(|l| l.replace(false)) && !every_daemon_busy() =>
        {
            notify();
        }
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE
        | pg_sys::XactEvent::XACT_EVENT_COMMIT
        | pg_sys::XactEvent::XACT_EVENT_ABORT
        | pg_sys::XactEvent::XACT_EVENT_PREPARE => LOGGED.with(|l| l.set(false)),
        _ => {}
    }
}

/// The current transaction has something for the slaves (an idle daemon is woken at commit).
pub fn something_logged() {
    LOGGED.with(|l| l.set(true));
}

fn wake_tag() -> pg_sys::LOCKTAG {
    // SET_LOCKTAG_ADVISORY, in this database
    pg_sys::LOCKTAG {
        // SAFETY: MyDatabaseId is set for the whole life of a backend connected to a database
        locktag_field1: unsafe { pg_sys::MyDatabaseId }.to_u32(),
        locktag_field2: WAKE_KEY.0,
        locktag_field3: WAKE_KEY.1,
        locktag_field4: WAKE_CLASS,
        locktag_type: pg_sys::LockTagType::LOCKTAG_ADVISORY as u8,
        locktag_lockmethodid: pg_sys::USER_LOCKMETHOD as u8,
    }
}

/// Is no daemon waiting? Takes the wake lock in ROW EXCLUSIVE mode without waiting, for the
/// rest of the transaction (released once its commit is visible). A full lock table counts as
/// "a daemon may be waiting": the writer notifies, it never fails its commit over this.
unsafe fn every_daemon_busy() -> bool {
    let tag = wake_tag();
    let mode = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
    #[cfg(not(feature = "pg18"))]
    let got = pg_sys::LockAcquireExtended(&tag, mode, false, true, false, std::ptr::null_mut());
    #[cfg(feature = "pg18")]
    let got =
        pg_sys::LockAcquireExtended(&tag, mode, false, true, false, std::ptr::null_mut(), false);
    got != pg_sys::LockAcquireResult::LOCKACQUIRE_NOT_AVAIL
}

unsafe fn notify() {
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

/// `replicate run` going idle (`waiting`) or busy again on a master whose `NOTIFY rserv` it
/// listens for. Going idle takes rserv's wake lock in SHARE mode for the session: it waits
/// (within the session's lock_timeout) until the commits of writers that found every daemon
/// busy are visible, so the cycle the daemon runs next sees them; from then on every writer's
/// commit notifies. Going busy releases it. Returns whether this session now waits.
#[pg_extern(volatile, security_definer)]
fn rserv_wake_on_commit(waiting: bool) -> bool {
    let _definer = definer();
    require_replicator("rserv_wake_on_commit");
    if WAITING.with(|w| w.get()) != waiting {
        let tag = wake_tag();
        let mode = pg_sys::ShareLock as pg_sys::LOCKMODE;
        // SAFETY: a session lock on rserv's own tag, taken or released once per state change
        unsafe {
            if waiting {
                pg_sys::LockAcquire(&tag, mode, true, false);
            } else {
                pg_sys::LockRelease(&tag, mode, true);
            }
        }
        WAITING.with(|w| w.set(waiting));
    }
    waiting
}

/// Register the transaction callback that sends the wake-up (from `_PG_init`).
pub fn register_callbacks() {
    // SAFETY: registering a C callback with static lifetime, once per backend
    unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_event), std::ptr::null_mut()) };
}
