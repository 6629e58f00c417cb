//! The apply's replica window: one switch to replica mode per change set (or per session)
//! instead of one per statement.
//!
//! Every statement on a slave table runs in replica mode ([`crate::apply::apply_settings`]).
//! PostgreSQL resets the session's whole plan cache each time `session_replication_role`
//! changes (its rules depend on it), so switching it on and off around each statement made
//! every kept plan of the apply (`sql.rs`) be analysed again after every section; on a small
//! cycle that was a third of the slave's time.
//!
//! So while a change set is applied, replica mode stays on (`run_as_owner`'s own switch to it
//! then changes nothing): for the transaction, or, when the session asks for it with
//! `rserv.replica_session = on` (as `replicate` does on its slave connection), for the session,
//! so that the next change set finds its plans still valid. The caller could then run
//! statements of its own in replica mode, without foreign-key checks or the triggers of other
//! users: that is a power rserv must not lend, so the window opens only for a caller that may
//! set `session_replication_role` itself (a superuser, or on PostgreSQL 15 and later a role
//! granted `SET` on it). Any other replicator gets the per-statement switch, as before.
//!
//! rserv's schema work needs the session's own mode (its DDL guards are event triggers, which
//! replica mode silences): a DDL section, the end of an apply with schema steps left, rserv's
//! internal DDL, `rserv_execute_ddl` and every rserv SECURITY DEFINER function but the apply's
//! own close the window first. Closing needs no privilege: it only ever leaves replica mode.
//!
//! The window's record (the mode to go back to, and whether the window is the session's or the
//! transaction's) is itself a setting, `rserv.replica_window`, set in the same scope and at the
//! same moment as the mode: a rollback that brings replica mode back brings the record back
//! with it, so rserv never loses track of a window (a record kept in the backend's memory did,
//! and left the session in replica mode for good). The record is superuser-only, and a close
//! only ever leaves replica mode, for `origin` or `local`: whatever the record says, it cannot
//! put anyone into replica mode. Correctness never depends on the window: `run_as_owner` still
//! sets replica mode for each statement on a slave table; the window only makes that a no-op.

use crate::security::outer_user;
use crate::sql::kept_first;
use pgrx::pg_sys;
use std::cell::Cell;

const MODE: &str = "session_replication_role";
const RECORD: &str = "rserv.replica_window";

thread_local! {
    /// (top-level transaction, may the caller set replica mode itself?): asked once per
    /// transaction
    static ALLOWED: Cell<(u64, bool)> = const { Cell::new((0, false)) };
}

/// The session's mode now, as `session_replication_role` spells it.
fn mode() -> &'static str {
    // SAFETY: plain read of a backend global
    match unsafe { pg_sys::SessionReplicationRole } as u32 {
        pg_sys::SESSION_REPLICATION_ROLE_REPLICA => "replica",
        pg_sys::SESSION_REPLICATION_ROLE_LOCAL => "local",
        _ => "origin",
    }
}

/// The open window, if any: (opened for the session, the mode to go back to). Only `origin`
/// and `local` are modes to go back to; anything else is no window.
fn record() -> Option<(bool, &'static str)> {
    let raw = crate::guc::REPLICA_WINDOW.get()?;
    let (scope, before) = raw.to_str().ok()?.split_once(':')?;
    let before = match before {
        "origin" => "origin",
        "local" => "local",
        _ => return None,
    };
    Some((scope == "session", before))
}

/// May the calling role set `session_replication_role` itself?
fn caller_may_set_it() -> bool {
    // SAFETY: plain read of the backend's transaction state
    let xact = unsafe { pg_sys::GetTopFullTransactionIdIfAny().value };
    let (known, allowed) = ALLOWED.with(|a| a.get());
    if xact != 0 && known == xact {
        return allowed;
    }
    // SAFETY: catalog look-up of an existing role
    let allowed = unsafe { pg_sys::superuser_arg(outer_user()) } || may_set_by_grant();
    ALLOWED.with(|a| a.set((xact, allowed)));
    allowed
}

#[cfg(feature = "pg14")]
fn may_set_by_grant() -> bool {
    false // no GRANT SET ON PARAMETER before PostgreSQL 15
}

#[cfg(not(feature = "pg14"))]
fn may_set_by_grant() -> bool {
    kept_first::<bool>(
        "SELECT pg_catalog.has_parameter_privilege($1, 'session_replication_role', 'SET')",
        &[outer_user().into()],
        "checking who may set session_replication_role",
    )
    .unwrap_or(false)
}

/// Keep replica mode on for the rest of this apply transaction (and with
/// `rserv.replica_session`, for the session), when the caller may set it itself.
pub fn open() {
    if !caller_may_set_it() {
        close(); // a session window opened for a role this session no longer acts as
        return;
    }
    let now = mode();
    if now == "replica" {
        // a window still in force, or the caller's own replica mode: nothing to do
        return;
    }
    let session = crate::guc::REPLICA_SESSION.get();
    let scope = if session { "session" } else { "transaction" };
    set(session, RECORD, &format!("{scope}:{now}"));
    set(session, MODE, "replica");
}

/// Back to the mode the session had before the window (a no-op when no window is open). A
/// caller that rolls back to a savepoint taken inside the window gets the window back with it,
/// record and all, as with any setting it could have made itself.
pub fn close() {
    let Some(raw) = crate::guc::REPLICA_WINDOW.get() else {
        return;
    };
    if raw.as_bytes().is_empty() {
        return;
    }
    let Some((session, before)) = record() else {
        set(true, RECORD, ""); // not a record rserv wrote: forget it, change no mode
        return;
    };
    if mode() == "replica" {
        set(session, MODE, before);
    }
    set(session, RECORD, "");
}

/// Set `name` for the session (as SET does: undone if the transaction rolls back) or for the
/// transaction (SET LOCAL), with the server's authority: the record is superuser-only, and
/// replica mode is set only for a caller that may set it itself, or left.
fn set(session: bool, name: &str, value: &str) {
    let action = if session {
        pg_sys::GucAction::GUC_ACTION_SET
    } else {
        pg_sys::GucAction::GUC_ACTION_LOCAL
    };
    crate::security::set_with_authority(name, value, action);
}
