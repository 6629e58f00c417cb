//! The capture trigger function checks that it fires as one of rserv's own triggers.
//!
//! `_rserv_log_()` is executable by every role: a table owner who creates or attaches a
//! partition of a replicated partitioned table clones its capture trigger, and PostgreSQL
//! clones a trigger only for a role with EXECUTE on its function. A trigger a table owner
//! attaches by hand must not write into the log (bloat, or a partition's TRUNCATE logged for
//! another owner's table), so the function refuses to run unless its trigger has rserv's name
//! and belongs to a table registered here (or to a partition of one: a clone of the registered
//! table's trigger, or the partition's TRUNCATE trigger rserv made). Log rows only ever make a
//! slave fetch an identity's current state from the master, and the one role that could still
//! add a look-alike (a registered table's owner, on her own table) can write to it anyway.

use crate::catalog::{CAPTURE_TRIGGER, PART_TRUNCATE_TRIGGER, TRUNCATE_TRIGGER};
use crate::error::fail;
use crate::security::as_catalog_owner;
use crate::sql::{first_latest, quote_ident};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Which of rserv's triggers the firing one claims to be.
pub(crate) enum Claim {
    /// the row trigger of a registered table, or its clone on a partition
    Row,
    /// the TRUNCATE trigger of a registered table
    Truncate,
    /// the TRUNCATE trigger of a partition of registered table `root`
    PartTruncate { root: pg_sys::Oid },
}

/// Refuse (an error, nothing logged) unless `trigger` on `reloid` is one rserv made. The caller
/// has pinned the search_path (`internal_definer`): a planted `=` must not run as the writer, or
/// as rserv's catalog owner in `registered`.
pub(crate) fn ensure_rserv_trigger(
    trigger: &PgTrigger,
    reloid: pg_sys::Oid,
    table: &str,
    claim: Claim,
) {
    let name = trigger.name().unwrap_or_default();
    // SAFETY: looks up the log of the trigger function's extension
    let log = unsafe { crate::capture::log_relation(trigger.trigger().tgfoid) };
    let registered = |reloid| registered(log, reloid);
    let ours = match claim {
        Claim::Row => {
            let t = trigger.trigger();
            let base = if t.tgisclone {
                crate::capture::registered_root(t.tgoid)
            } else {
                reloid
            };
            name == CAPTURE_TRIGGER && registered(base)
        }
        Claim::Truncate => name == TRUNCATE_TRIGGER && registered(reloid),
        Claim::PartTruncate { root } => {
            name == PART_TRUNCATE_TRIGGER
                && root != reloid
                && registered(root)
                && partition_of(reloid, root)
        }
    };
    if !ours {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "_rserv_log_: trigger {} on table {table} was not made by rserv: rserv's capture \
                 function logs only the tables rserv replicates",
                quote_ident(name)
            ),
            format!(
                "drop that trigger (DROP TRIGGER {} ON {table}); to replicate the table, register \
                 it with rserv_add_table",
                quote_ident(name)
            ),
        );
    }
}

/// `reloid` is in `_rserv_tables_`, read as the owner of rserv's log (the writer running the
/// trigger may have no USAGE on the extension's schema).
fn registered(log: pg_sys::Oid, reloid: pg_sys::Oid) -> bool {
    let Some(owner) = first_latest::<pg_sys::Oid>(
        "SELECT c.relowner FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[log.into()],
        "finding the owner of rserv's log",
    ) else {
        return false;
    };
    // (the log's schema, from the syscache)
    // SAFETY: syscache look-ups of an existing relation and namespace
    let s = unsafe {
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(log));
        if nsp.is_null() {
            return false;
        }
        quote_ident(&std::ffi::CStr::from_ptr(nsp).to_string_lossy())
    };
    as_catalog_owner(owner, || {
        first_latest::<bool>(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM {s}._rserv_tables_ t \
                 WHERE t.reloid OPERATOR(pg_catalog.=) $1)"
            ),
            &[reloid.into()],
            "checking that the table is replicated",
        )
        .unwrap_or(false)
    })
}

fn partition_of(part: pg_sys::Oid, root: pg_sys::Oid) -> bool {
    first_latest::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_partition_ancestors($1) a \
         WHERE a.relid OPERATOR(pg_catalog.=) $2)",
        &[part.into(), root.into()],
        "checking that the table is a partition of a replicated table",
    )
    .unwrap_or(false)
}
