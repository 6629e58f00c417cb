//! Who may do what, and as whom rserv's statements run.
//!
//! rserv's functions are SECURITY DEFINER and owned by the bootstrap superuser (rserv is a
//! trusted extension). Three rules keep them from lending that power to anyone:
//! - [`definer()`] pins `search_path` to `pg_catalog, pg_temp` for the function's own
//!   statements, which name every user object schema-qualified;
//! - a statement that touches a user's table and may run that user's code (triggers, defaults,
//!   rules, CHECK and index expressions, domain checks) runs through [`run_as_owner`]: as the
//!   table's owner, under SECURITY_RESTRICTED_OPERATION, with its own settings that vanish
//!   afterwards, as PostgreSQL's own maintenance commands and logical replication do;
//! - relations of the caller's `pg_temp` are only used when rserv created them (see
//!   `staging.rs`).

use crate::catalog::ext_schema;
use crate::error::fail;
use crate::sql::{first, quote_ident, quote_literal};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::CStr;

/// Marks the body of a SECURITY DEFINER rserv function. While alive, search_path is
/// `pg_catalog, pg_temp`, so nothing a user put in public or in their own schemas (functions,
/// operators, casts overloading the built-in ones) can run with rserv's privileges. The previous
/// search_path comes back when the function returns (on error the transaction is aborted anyway).
pub struct Definer {
    previous: String,
}

pub fn definer() -> Definer {
    refuse_owner_code();
    // rserv's other work runs in the session's own mode
    crate::replica_window::close();
    internal_definer()
}

/// [`definer()`] for the apply's own functions, which keep the apply's replica window open
/// (`replica_window.rs`).
pub fn apply_definer() -> Definer {
    refuse_owner_code();
    internal_definer()
}

/// [`definer()`] for rserv's internal functions, which only its own event triggers may call
/// (EXECUTE is revoked from PUBLIC), also while a table owner's code runs DDL.
pub fn internal_definer() -> Definer {
    let previous = crate::sql::current_setting("search_path");
    crate::sql::set_local("search_path", "pg_catalog, pg_temp");
    Definer { previous }
}

impl Drop for Definer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        crate::sql::set_local("search_path", &self.previous);
    }
}

/// The role that called rserv (not the definer a SECURITY DEFINER function runs as).
pub fn outer_user() -> pg_sys::Oid {
    // SAFETY: plain read of the backend's user state
    unsafe { pg_sys::GetOuterUserId() }
}

/// The role statements run as now: inside [`run_as_owner`], the table's owner.
pub fn acting_role() -> pg_sys::Oid {
    // SAFETY: plain read of the backend's user state
    unsafe { pg_sys::GetUserId() }
}

/// The role rserv's SECURITY DEFINER functions run as (their owner).
pub fn definer_role() -> pg_sys::Oid {
    // SAFETY: plain read of the backend's user state
    unsafe { pg_sys::GetUserId() }
}

pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId returns a palloc'd C string (noerr: NULL for a dropped role)
    let p = unsafe { pg_sys::GetUserNameFromId(role, true) };
    if p.is_null() {
        return format!("role {}", role.to_u32());
    }
    // SAFETY: non-NULL, NUL-terminated
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

thread_local! {
    /// How deep inside [`run_as_owner`] this backend is: a table owner's code is running.
    static OWNER_CODE: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// rserv decides by the calling role (`GetOuterUserId`), which the code of a table owner that
/// rserv runs (a trigger, a default) would inherit from the replication session: rserv's
/// functions refuse to be called from there.
fn refuse_owner_code() {
    if OWNER_CODE.with(|d| d.get() > 0) {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "rserv: its functions cannot be called from a table owner's code that rserv runs (a trigger, a default, a check)",
            "rserv's functions act with the rights of the role that called rserv, which that code does not have",
        );
    }
}

fn outer_has_privs_of(role: pg_sys::Oid) -> bool {
    // SAFETY: catalog look-ups of existing roles
    unsafe { pg_sys::superuser_arg(outer_user()) || pg_sys::has_privs_of_role(outer_user(), role) }
}

/// Registering a table puts triggers on it: only its owner (or a superuser) may.
pub fn require_table_owner(owner: pg_sys::Oid, table: &str, func: &str) {
    if !outer_has_privs_of(owner) {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "rserv: {func}(): role {} is not the owner of table {table}",
                role_name(outer_user())
            ),
            "run it as the table's owner",
        );
    }
}

fn extension_owner() -> Option<pg_sys::Oid> {
    crate::sql::kept_first::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'rserv'",
        &[],
        "reading the extension's owner",
    )
}

/// Is the calling role allowed to replicate: a superuser, the extension's owner, or a role
/// granted with rserv_grant_replication()?
pub fn is_replicator() -> bool {
    if extension_owner().is_some_and(outer_has_privs_of) {
        return true;
    }
    let s = ext_schema();
    crate::sql::kept_first::<bool>(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {s}._rserv_replicators_ r \
             WHERE pg_catalog.pg_has_role($1, r.role, 'USAGE'))"
        ),
        &[outer_user().into()],
        "reading _rserv_replicators_",
    )
    .unwrap_or(false)
}

pub fn require_replicator(func: &str) {
    if !is_replicator() {
        let me = role_name(outer_user());
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("rserv: {func}(): role {me} may not replicate this database"),
            format!(
                "a superuser or the owner of extension rserv can allow it: SELECT rserv_grant_replication({})",
                quote_literal(&me)
            ),
        );
    }
}

/// Let the calling role use a temp table a definer function created for it.
pub fn grant_to_caller(privilege: &str, table: &str) {
    grant(privilege, table, &quote_ident(&role_name(outer_user())));
}

/// `GRANT privilege ON table TO grantee` (grantee already quoted, or PUBLIC).
pub fn grant(privilege: &str, table: &str, grantee: &str) {
    Spi::run(&format!("GRANT {privilege} ON {table} TO {grantee}"))
        .unwrap_or_else(|e| crate::error::spi_fail("granting a staging table", e));
}

/// Settings every statement rserv runs on a user's table is made under.
pub const SAFE_SETTINGS: &[(&str, &str)] = &[
    ("search_path", "pg_catalog, pg_temp"),
    // a policy must never filter what rserv reads or writes: with this, PostgreSQL raises an
    // error instead of applying one (a table owner is exempt unless FORCE ROW LEVEL SECURITY)
    ("row_security", "off"),
];

/// Undoes [`run_as_owner`]'s user switch even when the statement fails (the transaction's
/// abort resets the settings' nest level).
struct UserContext {
    _switched: SwitchBack,
}

impl Drop for UserContext {
    fn drop(&mut self) {
        OWNER_CODE.with(|d| d.set(d.get().saturating_sub(1)));
        CALLERS.with(|c| c.borrow_mut().pop());
        // (then `_switched` restores the user)
    }
}

/// Switches back to a saved user and security context when dropped (also on error).
struct SwitchBack {
    user: pg_sys::Oid,
    sec: i32,
}

impl Drop for SwitchBack {
    fn drop(&mut self) {
        // SAFETY: restores the backend's user state saved when switching
        unsafe { pg_sys::SetUserIdAndSecContext(self.user, self.sec) };
    }
}

/// Become `role` under SECURITY_RESTRICTED_OPERATION until the guard is dropped.
fn restricted_as(role: pg_sys::Oid) -> SwitchBack {
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0i32);
    // SAFETY: reads the backend's user state
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut sec) };
    let restricted = sec
        | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32
        | pg_sys::SECURITY_RESTRICTED_OPERATION as i32;
    // SAFETY: switches the current user; the guard switches back (an error's abort does too)
    unsafe { pg_sys::SetUserIdAndSecContext(role, restricted) };
    SwitchBack { user, sec }
}

/// A table owner's code must not find what another role of this session put in its temporary
/// schema: `pg_temp` is on every search_path (first, unless named), so a temp table, view or
/// type of the replication role would stand in for the owner's own under an unqualified name,
/// and its triggers or functions would then run as the owner (a superuser, perhaps). While the
/// owner's code runs, no temp object can be made (SECURITY_RESTRICTED_OPERATION); before it,
/// the temp schema must hold nothing but rserv's own staging tables.
fn require_clean_temp_schema(owner: pg_sys::Oid) {
    if owner == outer_user() {
        return; // the session's own role: it sees what it could see anyway
    }
    let foreign = first::<String>(
        "WITH staging AS (SELECT unnest($1::oid[]) AS oid) \
         SELECT pg_catalog.string_agg(x, ', ') FROM ( \
           SELECT 'pg_temp.' || pg_catalog.quote_ident(c.relname) AS x FROM pg_catalog.pg_class c \
            WHERE c.relnamespace = pg_catalog.pg_my_temp_schema() \
              AND c.oid NOT IN (SELECT oid FROM staging) \
              AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                               WHERE i.indexrelid = c.oid AND i.indrelid IN (SELECT oid FROM staging)) \
           UNION ALL \
           SELECT 'type pg_temp.' || pg_catalog.quote_ident(t.typname) FROM pg_catalog.pg_type t \
            WHERE t.typnamespace = pg_catalog.pg_my_temp_schema() \
              AND t.typrelid NOT IN (SELECT oid FROM pg_catalog.pg_class \
                                      WHERE relnamespace = pg_catalog.pg_my_temp_schema()) \
              AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_type e \
                               WHERE e.oid = t.typelem AND e.typrelid <> 0 \
                                 AND e.typnamespace = pg_catalog.pg_my_temp_schema()) \
           ORDER BY 1 LIMIT 5) AS f",
        &[crate::staging::oids().into()],
        "checking the session's temporary objects",
    );
    if let Some(objects) = foreign {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "rserv: this session has temporary objects ({objects}) that code of role {} would see",
                role_name(owner)
            ),
            "rserv runs statements on a table as its owner; run replication in a session without temporary tables, views or types of its own (DISCARD TEMP)",
        );
    }
}

/// Set a configuration parameter for the current GUC nest level only.
pub(crate) fn set_option(name: &str, value: &str) {
    set_with_authority(name, value, pg_sys::GucAction::GUC_ACTION_SAVE);
}

/// Set a configuration parameter with the server's own authority (as a superuser may), for the
/// session (`GUC_ACTION_SET`, undone by a rollback), the transaction (`GUC_ACTION_LOCAL`) or the
/// current GUC nest level (`GUC_ACTION_SAVE`). The caller decides who may have it set.
pub(crate) fn set_with_authority(name: &str, value: &str, action: pg_sys::GucAction::Type) {
    crate::sql::set_config_option(name, value, pg_sys::GucContext::PGC_SUSET, action);
}

/// Run `f` (statements on a user's table) as `owner`, under SECURITY_RESTRICTED_OPERATION,
/// with `settings` (plus [`SAFE_SETTINGS`]) in force only while `f` runs. Whatever the table's
/// triggers, defaults, rules, CHECK and index expressions do, they do as the table's owner, who
/// can do it anyway; they cannot create temp objects, change role or leave settings behind.
pub fn run_as_owner<R>(owner: pg_sys::Oid, settings: &[(&str, &str)], f: impl FnOnce() -> R) -> R {
    require_clean_temp_schema(owner);
    // SAFETY: opens a GUC nest level closed below (or by the transaction's abort)
    let nest = unsafe { pg_sys::NewGUCNestLevel() };
    for (name, value) in SAFE_SETTINGS.iter().chain(settings) {
        set_option(name, value);
    }
    OWNER_CODE.with(|d| d.set(d.get() + 1));
    CALLERS.with(|c| c.borrow_mut().push(acting_role()));
    let restore = UserContext {
        _switched: restricted_as(owner),
    };
    let out = f();
    // SAFETY: closes the nest level opened above, discarding every setting made inside it
    unsafe { pg_sys::AtEOXact_GUC(false, nest) };
    drop(restore);
    out
}

thread_local! {
    /// The role each open [`run_as_owner`] switched away from (rserv's definer), innermost last.
    static CALLERS: std::cell::RefCell<Vec<pg_sys::Oid>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Inside [`run_as_owner`], run `f` as the role it switched away from (rserv's definer), still
/// under SECURITY_RESTRICTED_OPERATION and the owner's settings: for rserv's own scratch objects,
/// never for a statement that touches a user's table.
pub fn as_definer<R>(f: impl FnOnce() -> R) -> R {
    let Some(definer) = CALLERS.with(|c| c.borrow().last().copied()) else {
        return f();
    };
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0i32);
    // SAFETY: reads the backend's user state
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut sec) };
    let restore = SwitchBack { user, sec };
    // SAFETY: switches the current user; `restore` switches back
    unsafe { pg_sys::SetUserIdAndSecContext(definer, sec) };
    let out = f();
    drop(restore);
    out
}

/// Run `f` as `role` (the owner of rserv's catalog) under SECURITY_RESTRICTED_OPERATION: for
/// the fixed, schema-qualified catalog reads of code any writer runs (the capture trigger's
/// check, `capture_check.rs`), which must work whatever the writer's rights on the extension's
/// schema. Nothing of a user's may run inside.
pub fn as_catalog_owner<R>(role: pg_sys::Oid, f: impl FnOnce() -> R) -> R {
    let restore = restricted_as(role);
    let out = f();
    drop(restore);
    out
}

pub use crate::internal_ddl::{in_internal_ddl, internal_ddl, staging_ddl, InternalDdl};

thread_local! {
    static OWN_TRIGGERS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// While alive, rserv's DDL only adds or drops rserv's own triggers (capture, protection) and
/// the caller keeps rserv's books itself (definitions, partitions, protection): the DDL guards
/// let it through without their per-statement work, which such DDL would leave unchanged (a
/// table's definition leaves rserv's triggers out). A takeover changes the triggers of every
/// replicated table while writes are refused: this keeps that window short.
pub struct OwnTriggers(#[allow(dead_code)] InternalDdl);

pub fn own_triggers() -> OwnTriggers {
    OWN_TRIGGERS.with(|d| d.set(d.get() + 1));
    OwnTriggers(internal_ddl())
}

impl Drop for OwnTriggers {
    fn drop(&mut self) {
        OWN_TRIGGERS.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// For the DDL guards (event triggers): is this DDL only rserv's own triggers?
#[pg_extern(volatile, parallel_unsafe)]
fn _rserv_own_triggers_ddl_() -> bool {
    OWN_TRIGGERS.with(|d| d.get() > 0) && in_internal_ddl()
}

/// Allow `role` to run replication (replicate's prepare/apply/confirm/status) in this database
/// without being a superuser. Only a superuser or the extension's owner may grant it.
#[pg_extern(volatile, security_definer)]
fn rserv_grant_replication(role: &str) {
    let _definer = definer();
    grant_or_revoke(role, true);
}

/// Take back rserv_grant_replication().
#[pg_extern(volatile, security_definer)]
fn rserv_revoke_replication(role: &str) {
    let _definer = definer();
    grant_or_revoke(role, false);
}

fn grant_or_revoke(role: &str, grant: bool) {
    let s = ext_schema();
    let me = outer_user();
    // SAFETY: catalog look-ups of existing roles
    let allowed = unsafe {
        pg_sys::superuser_arg(me)
            || extension_owner().is_some_and(|o| pg_sys::has_privs_of_role(me, o))
    };
    if !allowed {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            "rserv: only a superuser or the owner of extension rserv may grant or revoke replication",
            "",
        );
    }
    let Some(oid) = first::<pg_sys::Oid>(
        "SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1",
        &[role.into()],
        "looking up the role",
    ) else {
        fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("rserv: role \"{role}\" does not exist"),
            "create it first: CREATE ROLE ... LOGIN",
        );
    };
    let (verb, prep) = if grant {
        ("GRANT", "TO")
    } else {
        ("REVOKE", "FROM")
    };
    if grant {
        Spi::run_with_args(
            &format!(
                "INSERT INTO {s}._rserv_replicators_ (role) VALUES ($1) ON CONFLICT DO NOTHING"
            ),
            &[oid.into()],
        )
    } else {
        Spi::run_with_args(
            &format!("DELETE FROM {s}._rserv_replicators_ WHERE role = $1"),
            &[oid.into()],
        )
    }
    .unwrap_or_else(|e| crate::error::spi_fail("updating _rserv_replicators_", e));
    Spi::run(&format!(
        "{verb} SELECT ON {s}.rserv_status {prep} {}",
        quote_ident(role)
    ))
    .unwrap_or_else(|e| crate::error::spi_fail("granting rserv_status", e));
}
