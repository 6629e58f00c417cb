//! Which DDL is rserv's own. rserv's DDL guards (event triggers, `sql/finalize.sql`) refuse
//! some DDL on replicated tables (renaming a received table, dropping a key column, ...) but
//! let rserv's own statements through: `internal_ddl()` marks them.
//!
//! The mark is for rserv's statements only, not for what runs inside them: building an index
//! or a constraint runs the table owner's functions (an index expression), and DDL those run
//! must meet the guards like any DDL of the owner's. So the mark records the utility nesting
//! depth rserv's statements run at (one below the caller's), counted by rserv's
//! ProcessUtility hook (`apply_copy.rs`); a statement nested deeper is not rserv's. Errors
//! leave the count through the (sub)transaction's abort, where it is restored.
//!
//! The hook counts utility statements only: while it holds a mark, rserv runs nothing else on
//! a user's table (a DELETE there would fire the owner's statement triggers one level below
//! the mark, and their DDL would land exactly on it: adversary27b f1). Reads of the catalog
//! and of rserv's own tables are fine.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};

thread_local! {
    /// utility statements being executed, one inside the other (as rserv's hook saw them)
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// the depth of each open mark: rserv's own statements run there
    static MARKS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    /// DEPTH when each open subtransaction began
    static SUBXACTS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// Run one utility statement (the hook's whole call to the server).
pub fn utility<R>(f: impl FnOnce() -> R) -> R {
    DEPTH.with(|d| d.set(d.get() + 1));
    let out = f();
    DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    out
}

/// While alive, the statements rserv runs itself (at the next depth) are its own DDL: the
/// DDL guards do not refuse them.
pub struct InternalDdl;

fn mark() -> InternalDdl {
    let at = DEPTH.with(|d| d.get()) + 1;
    MARKS.with(|m| m.borrow_mut().push(at));
    InternalDdl
}

pub fn internal_ddl() -> InternalDdl {
    // rserv's DDL guards are event triggers, which replica mode silences
    crate::replica_window::close();
    mark()
}

/// rserv's session-private staging tables (`staging.rs`): nothing for the DDL guards to
/// check or the partition reconciler to do (which otherwise reads the catalog at each
/// CREATE TEMP TABLE: ~60 ms on a session's first). The replica window, if open, stays.
pub fn staging_ddl() -> InternalDdl {
    mark()
}

impl Drop for InternalDdl {
    fn drop(&mut self) {
        MARKS.with(|m| m.borrow_mut().pop());
    }
}

/// Is the statement being executed rserv's own DDL (see [`internal_ddl`])?
pub fn in_internal_ddl() -> bool {
    let depth = DEPTH.with(|d| d.get());
    MARKS.with(|m| m.borrow().last() == Some(&depth))
}

/// For the DDL guards (event triggers): is this DDL rserv's own?
#[pg_extern(volatile, parallel_unsafe)]
fn _rserv_internal_ddl_() -> bool {
    in_internal_ddl()
}

#[pg_guard]
unsafe extern "C-unwind" fn at_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    _my: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    match event {
        pg_sys::SubXactEvent::SUBXACT_EVENT_START_SUB => {
            let depth = DEPTH.with(|d| d.get());
            SUBXACTS.with(|s| s.borrow_mut().push(depth));
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
            SUBXACTS.with(|s| s.borrow_mut().pop());
        }
        pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => {
            // an error left the statements it interrupted without counting them out
            if let Some(depth) = SUBXACTS.with(|s| s.borrow_mut().pop()) {
                DEPTH.with(|d| d.set(depth));
            }
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_event(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if matches!(
        event,
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT
    ) {
        DEPTH.with(|d| d.set(0));
        SUBXACTS.with(|s| s.borrow_mut().clear());
    }
}

pub fn register_callbacks() {
    // SAFETY: registers static callbacks once per backend (from _PG_init)
    unsafe {
        pg_sys::RegisterSubXactCallback(Some(at_subtransaction_event), std::ptr::null_mut());
        pg_sys::RegisterXactCallback(Some(at_transaction_event), std::ptr::null_mut());
    }
}
