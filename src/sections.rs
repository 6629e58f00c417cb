//! Change sets: what the prepare reads per changed table, at its snapshot. [`guard_table`]
//! makes sure the table can be read whole and consistently (still an ordinary logged table, no
//! row-level security in the way, locked against TRUNCATE, none committed after the snapshot);
//! [`table_sections`] gives the table's sections (TRUNCATE or DELETE, then UPSERT and INSERT) with the
//! queries the caller runs as `COPY (query) TO STDOUT`.

use crate::catalog::{key_match, table_columns, Column, TableInfo};
use crate::error::fail;
use crate::security::{outer_user, role_name};
use crate::sql::{call_hint, first, qualified, quote_ident};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// One section of a change set: what `rserv_prepare` returns for the caller to COPY.
pub(crate) struct Section {
    pub section: &'static str,
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    /// type of each of `columns` (with modifiers), for the slave's compatibility check
    pub types: Vec<String>,
    pub key: Vec<String>,
    pub query: Option<String>,
    /// for an initial copy: the table's estimated row count, for progress reports
    pub estimate: Option<i64>,
}

/// Before a table is read for this change set: it must still be an ordinary logged table; the
/// caller must be able to read every row of it (row-level security would filter the COPY);
/// and it is locked against TRUNCATE for the rest of the transaction. TRUNCATE is not
/// MVCC-safe: one that committed after this snapshot was taken would make the COPY read an
/// empty table, a state the master never had, so then the prepare fails with a serialization
/// error and the caller takes a new snapshot (pg_dump's lock-then-snapshot order, checked
/// after the fact).
pub(crate) fn guard_table(info: &TableInfo) {
    let table = info.qualified();
    if !matches!(info.relkind.as_str(), "r" | "p") || info.persistence != "p" {
        fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: replicated table {table} is no longer an ordinary logged table"),
            format!(
                "make it one again, or stop replicating it: {}",
                call_hint("rserv_remove_table", &table, "")
            ),
        );
    }
    if info.row_security {
        let me = outer_user();
        let bypass = crate::sql::kept_first::<bool>(
            "SELECT rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE oid = $1",
            &[me.into()],
            "reading the role",
        )
        .unwrap_or(false);
        // SAFETY: catalog look-up of existing roles
        let owner = unsafe { pg_sys::has_privs_of_role(me, info.owner) };
        if !bypass && (!owner || info.force_row_security) {
            let who = quote_ident(&role_name(me));
            fail(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!(
                    "rserv: table {table} has row-level security, which would hide rows of it from role {who}: the change set would be incomplete"
                ),
                format!(
                    "let the replication role read every row: ALTER ROLE {who} BYPASSRLS (as a superuser), or replicate as the table's owner{}",
                    if info.force_row_security { " without FORCE ROW LEVEL SECURITY" } else { "" }
                ),
            );
        }
    }
    // A partitioned table's rows live in its partitions: each is locked and checked.
    let parts = if info.relkind == "p" {
        crate::sql::column::<pg_sys::Oid>(
            "SELECT relid FROM pg_catalog.pg_partition_tree($1) WHERE isleaf AND relid <> $1",
            &[info.reloid.into()],
            "listing partitions",
        )
    } else {
        Vec::new()
    };
    for rel in std::iter::once(info.reloid).chain(parts.iter().copied()) {
        // SAFETY: a lock held until the end of the transaction, as any reader of the table takes
        unsafe { pg_sys::LockRelationOid(rel, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
    }
    // relfilenode as this transaction's snapshot sees it, and as it is now (the locks above made
    // the backend read every committed catalog change)
    // (one relation at a time: a kept plan for `oid = ANY ($1)` scans the whole pg_class)
    let same = std::iter::once(info.reloid).chain(parts).all(|rel| {
        crate::sql::kept_first::<bool>(
            "SELECT c.relkind <> 'r' OR c.relfilenode = pg_catalog.pg_relation_filenode(c.oid) \
             FROM pg_catalog.pg_class c WHERE c.oid = $1",
            &[rel.into()],
            "checking the table's storage",
        )
        .unwrap_or(true)
    });
    if !same {
        fail(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            format!(
                "rserv: table {table} was truncated or rewritten after this change set's snapshot was taken"
            ),
            "prepare the change set again (replicate retries by itself)",
        );
    }
    // The queries name the table and its columns; as of now, those names must still mean what
    // they meant at the snapshot (a rename or a swap committed since would read another table,
    // or other columns).
    // SAFETY: syscache look-ups, which see the catalog as it is now
    let (name_now, cols_now) = unsafe {
        let rel = pg_sys::get_rel_name(info.reloid);
        let nsp = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(info.reloid));
        let name = (!rel.is_null() && !nsp.is_null()).then(|| {
            (
                std::ffi::CStr::from_ptr(nsp).to_string_lossy().into_owned(),
                std::ffi::CStr::from_ptr(rel).to_string_lossy().into_owned(),
            )
        });
        let cols: Vec<Option<String>> = table_columns(info.reloid)
            .iter()
            .map(|c| {
                let n = pg_sys::get_attname(info.reloid, c.attnum, true);
                (!n.is_null()).then(|| std::ffi::CStr::from_ptr(n).to_string_lossy().into_owned())
            })
            .collect();
        (name, cols)
    };
    let cols_then: Vec<Option<String>> = table_columns(info.reloid)
        .into_iter()
        .map(|c| Some(c.name))
        .collect();
    if name_now != Some((info.schema.clone(), info.name.clone())) || cols_now != cols_then {
        fail(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            format!("rserv: table {table} was renamed, or its columns were, after this change set's snapshot was taken"),
            "prepare the change set again (replicate retries by itself)",
        );
    }
}

/// Marks, in a section's column types, a column the master generates (and does not send).
pub const GENERATED_MARK: &str = "generated:";

/// The sections of one changed table. Without `in_place` (a slave that does not read UPSERT
/// sections, or a change set written to a file): every changed identity is deleted, then those
/// that exist are inserted. With it, by what the window logged for each identity: those logged
/// as possibly gone are deleted (DELETE); the current rows of those and of the inserted ones are
/// loaded (INSERT: an inserted identity was absent at the window's start, see
/// `capture::Logged`); those only updated are updated in place (UPSERT), coming before the
/// INSERT section, whose rows they never share.
pub(crate) fn table_sections(
    info: &TableInfo,
    pending: &str,
    changed: &crate::changeset::Changed,
    in_place: bool,
) -> Vec<Section> {
    let (key, truncated, copy) = (changed.key.clone(), changed.truncated, changed.copy);
    let table = qualified(&info.schema, &info.name);
    // a partitioned table holds no rows itself: read it with its partitions
    let only = if info.relkind == "p" { "" } else { "ONLY " };
    let cols = table_columns(info.reloid);
    let mut key_cols: Vec<&Column> = Vec::new();
    for k in &key {
        let Some(col) = cols.iter().find(|c| &c.name == k) else {
            fail(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("rserv: key column \"{k}\" of replicated table {table} no longer exists"),
                format!(
                    "re-register the table with its key: {}; {}",
                    call_hint("rserv_remove_table", &table, ""),
                    call_hint("rserv_add_table", &table, "")
                ),
            );
        };
        key_cols.push(col);
    }
    let sent: Vec<&Column> = cols.iter().filter(|c| !c.generated).collect();
    let pending_rows = format!(
        "{pending} AS k WHERE k.reloid OPERATOR(pg_catalog.=) {}::pg_catalog.oid AND k.key IS NOT NULL",
        info.reloid.to_u32()
    );
    let mk = |section, columns: Vec<String>, types: Vec<String>, query: Option<String>| Section {
        section,
        schema: info.schema.clone(),
        table: info.name.clone(),
        columns,
        types,
        key: key.clone(),
        query,
        estimate: None,
    };
    let select_list = sent
        .iter()
        .map(|c| format!("t.{}", quote_ident(&c.name)))
        .collect::<Vec<_>>()
        .join(", ");
    let names = |cs: &[&Column]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    // a domain goes as its base type and modifier: the slave checks its column can hold every
    // value of that (a same-named domain of the slave's may be narrower)
    let types = |cs: &[&Column]| {
        cs.iter()
            .map(|c| crate::catalog::base_type_name(c))
            .collect::<Vec<_>>()
    };
    // after the types of the columns sent, the columns generated here (not sent): a slave
    // column of that name must be generated too, or it would silently stay empty
    let row_types = || {
        let mut t = types(&sent);
        t.extend(
            cols.iter()
                .filter(|c| c.generated)
                .map(|c| format!("{GENERATED_MARK}{}", c.name)),
        );
        t
    };
    let mut out = Vec::new();
    if copy {
        // The initial copy: the whole table as of this snapshot.
        out.push(mk("TRUNCATE", Vec::new(), Vec::new(), None));
        let mut all = mk(
            "INSERT",
            names(&sent),
            row_types(),
            Some(format!("SELECT {select_list} FROM {only}{table} AS t")),
        );
        all.estimate = first::<i64>(
            // pg_partition_tree() has no rows for a table that is not partitioned
            "SELECT sum(greatest(c.reltuples, 0))::int8 FROM pg_catalog.pg_class c \
             WHERE c.oid = $1 OR c.oid IN (SELECT relid FROM pg_catalog.pg_partition_tree($1))",
            &[info.reloid.into()],
            "estimating the table size",
        );
        out.push(all);
        return out;
    }
    let matches = key_cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            key_match(c).condition(
                &format!("t.{}", quote_ident(&c.name)),
                &format!("k.key[{}]", i + 1),
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ");
    let logged = key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("k.key[{}] AS {}", i + 1, quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ");
    // the current rows of the identities `which` picks among the logged ones
    let rows = |section, which: &str| {
        mk(
            section,
            names(&sent),
            row_types(),
            Some(format!(
                "SELECT {select_list} FROM {only}{table} AS t \
                 WHERE EXISTS (SELECT 1 FROM {pending_rows}{which} AND {matches})"
            )),
        )
    };
    let delete = |which: &str| {
        mk(
            "DELETE",
            key.clone(),
            types(&key_cols),
            Some(format!(
                "SELECT DISTINCT {logged} FROM {pending_rows}{which}"
            )),
        )
    };
    if truncated {
        out.push(mk("TRUNCATE", Vec::new(), Vec::new(), None));
        out.push(rows("INSERT", ""));
    } else if in_place {
        if changed.gone {
            out.push(delete(" AND k.deleted"));
        }
        // collect_pending marked an identity with both kinds of rows as gone: these two sets
        // of identities are disjoint
        if changed.updated {
            out.push(rows("UPSERT", " AND k.deleted IS FALSE"));
        }
        if changed.gone || changed.inserted {
            out.push(rows("INSERT", " AND k.deleted IS NOT FALSE"));
        }
    } else {
        // Every changed identity goes, as the canonical text it was logged as: the INSERT
        // section then brings back those that still exist, so the slave loads rows straight
        // into the table with no merge step.
        out.push(delete(""));
        out.push(rows("INSERT", ""));
    }
    out
}
