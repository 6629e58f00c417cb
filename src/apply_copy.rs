//! The INSERT sections' fast path: the caller's `COPY schema.table (...) FROM STDIN` goes
//! straight into the slave table, run as the table's owner in replica mode.
//!
//! The replication role needs no privilege on slave tables, and must not run the table's
//! triggers as itself or in replica mode of its own: so a ProcessUtility hook recognises the
//! one COPY command `rserv_apply_stage()` just allowed in this apply transaction (byte for
//! byte, into the same relation, from STDIN) and runs it through `run_as_owner`. Any other
//! statement is left alone.

use crate::apply::{allowed_copy, apply_settings, copy_done};
use crate::security::run_as_owner;
use pgrx::pg_sys;
use std::ffi::CStr;

static mut PREVIOUS: pg_sys::ProcessUtility_hook_type = None;

extern "C-unwind" {
    /// The server's own ProcessUtility, called directly (not through pgrx's error guard, which
    /// would turn every error of every utility statement into a Rust panic and back, losing
    /// its CONTEXT and position).
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// Install the hook (from `_PG_init`).
pub fn install() {
    // SAFETY: hooks are installed once per backend, at library load, before any statement runs
    unsafe {
        PREVIOUS = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(rserv_process_utility);
    }
}

/// The text of this statement within the query string.
unsafe fn statement_text(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
) -> Option<String> {
    if query.is_null() {
        return None;
    }
    let all = CStr::from_ptr(query).to_bytes();
    let start = usize::try_from((*pstmt).stmt_location)
        .unwrap_or(0)
        .min(all.len());
    let len = match (*pstmt).stmt_len {
        0 => all.len() - start,
        n => usize::try_from(n).unwrap_or(0).min(all.len() - start),
    };
    std::str::from_utf8(&all[start..start + len])
        .ok()
        .map(|s| s.trim().trim_end_matches(';').trim().to_string())
}

/// The owner of the table when this statement is the COPY the apply allowed, else InvalidOid.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn allowed_owner(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
) -> pg_sys::Oid {
    let stmt = (*pstmt).utilityStmt;
    if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_CopyStmt {
        return pg_sys::InvalidOid;
    }
    let copy = stmt as *mut pg_sys::CopyStmt;
    if !(*copy).is_from
        || (*copy).is_program
        || !(*copy).filename.is_null()
        || (*copy).relation.is_null()
        || !(*copy).whereClause.is_null()
    {
        return pg_sys::InvalidOid;
    }
    let Some((reloid, owner)) = statement_text(pstmt, query).and_then(|t| allowed_copy(&t)) else {
        return pg_sys::InvalidOid;
    };
    let target = pg_sys::RangeVarGetRelidExtended(
        (*copy).relation,
        pg_sys::NoLock as i32,
        0,
        None,
        std::ptr::null_mut(),
    );
    if target == reloid {
        owner
    } else {
        pg_sys::InvalidOid
    }
}

/// The arguments of one ProcessUtility call, passed on unchanged.
#[derive(Clone, Copy)]
struct UtilityCall {
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
}

type ProcessUtility = unsafe extern "C-unwind" fn(
    *mut pg_sys::PlannedStmt,
    *const std::ffi::c_char,
    bool,
    pg_sys::ProcessUtilityContext::Type,
    pg_sys::ParamListInfo,
    *mut pg_sys::QueryEnvironment,
    *mut pg_sys::DestReceiver,
    *mut pg_sys::QueryCompletion,
);

impl UtilityCall {
    /// Hand the call on to `f`: the previous hook, or the server's own ProcessUtility.
    unsafe fn pass_to(self, f: ProcessUtility) {
        f(
            self.pstmt,
            self.query,
            self.read_only_tree,
            self.context,
            self.params,
            self.query_env,
            self.dest,
            self.qc,
        )
    }
}

/// Run the allowed COPY as the table's owner.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn run_allowed_copy(owner: pg_sys::Oid, call: &UtilityCall) {
    let c = *call;
    run_as_owner(owner, &apply_settings(), || {
        pg_sys::standard_ProcessUtility(
            c.pstmt,
            c.query,
            c.read_only_tree,
            c.context,
            c.params,
            c.query_env,
            c.dest,
            c.qc,
        )
    });
    copy_done();
}

/// The hook. Not guarded by pgrx on purpose: every other statement passes straight through to
/// the previous hook or the server, and their errors propagate as the server raised them (this
/// frame holds nothing that needs dropping).
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn rserv_process_utility(
    pstmt: *mut pg_sys::PlannedStmt,
    query: *const std::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let call = UtilityCall {
        pstmt,
        query,
        read_only_tree,
        context,
        params,
        query_env,
        dest,
        qc,
    };
    // counted for internal_ddl.rs: DDL nested in rserv's own is not rserv's
    crate::internal_ddl::utility(|| {
        let owner = allowed_owner(pstmt, query);
        if owner != pg_sys::InvalidOid {
            run_allowed_copy(owner, &call);
        } else {
            call.pass_to(PREVIOUS.unwrap_or(standard_process_utility));
        }
    })
}
