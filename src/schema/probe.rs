//! Building an index evaluates its expressions and predicate on every row of the table, as the
//! table's owner, and PostgreSQL already simplifies them while it checks the statement
//! (an IMMUTABLE function with constant arguments runs then). So an index from a master's
//! definition is checked before anything of it runs: the statement is parse-analysed against an
//! empty scratch copy of the table's columns (which resolves every function, operator and type
//! it names, and evaluates nothing), and every function it would call must be one the table's
//! expressions may call (a superuser's or the owner's, without side effects; see
//! `verify::risky_functions`), every domain it casts to a superuser's or the owner's. Only then
//! is it built, as the owner, on the scratch table first (what it depends on is checked again),
//! and then on the table itself.

use super::verify::{bad_definition, parse, risky_calls, risky_functions, trusted_type};
use crate::catalog::ext_schema;
use crate::error::SpiOrFail;
use crate::security::{as_definer, internal_ddl};
use crate::sql::{c_string, first};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{c_char, CStr};

extern "C-unwind" {
    // parser/parse_utilcmd.h (not among pgrx's bindings)
    fn transformIndexStmt(
        relid: pg_sys::Oid,
        stmt: *mut pg_sys::IndexStmt,
        query_string: *const c_char,
    ) -> *mut pg_sys::IndexStmt;
}

/// Is `definition` one CREATE INDEX on plain columns with their default operator classes, no
/// expression and no predicate? Such an index calls nothing but its columns' default operator
/// class support, which the slave's own types bring: there is nothing to probe.
fn plain_columns(definition: &str) -> bool {
    // SAFETY: parse trees of the statement just parsed
    unsafe {
        let stmts = parse(definition, pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        let [stmt] = stmts.as_slice() else {
            return false;
        };
        if stmt.is_null() || (**stmt).type_ != pg_sys::NodeTag::T_IndexStmt {
            return false;
        }
        let index = &*(*stmt as *mut pg_sys::IndexStmt);
        if !index.whereClause.is_null() || index.indexParams.is_null() {
            return false;
        }
        let elems = |list: *mut pg_sys::List| {
            (0..if list.is_null() {
                0
            } else {
                (*list).length as usize
            })
                .map(move |i| (*(*list).elements.add(i)).ptr_value as *mut pg_sys::IndexElem)
        };
        elems(index.indexParams)
            .chain(elems(index.indexIncludingParams))
            .all(|e| {
                !e.is_null()
                    && (*e).type_ == pg_sys::NodeTag::T_IndexElem
                    && !(*e).name.is_null()
                    && (*e).expr.is_null()
                    && (*e).opclass.is_null()
                    && (*e).opclassopts.is_null()
            })
    }
}

/// Check index statement `definition` for table `reloid` (owned by `owner`, as whom this runs)
/// before it is built.
pub fn probe_index(table: &str, reloid: pg_sys::Oid, owner: pg_sys::Oid, definition: &str) {
    if plain_columns(definition) {
        return;
    }
    let s = ext_schema();
    // rserv's own scratch table, owned by the table's owner (who builds the index on it)
    let probe = as_definer(|| {
        let _internal = internal_ddl();
        let source = first::<String>(
            "SELECT $1::pg_catalog.regclass::pg_catalog.text",
            &[reloid.into()],
            "naming the table",
        )
        .unwrap_or_default();
        Spi::run(&format!(
            "CREATE TABLE {s}._rserv_index_probe_ (LIKE {source})"
        ))
        .or_fail("creating the index probe");
        let probe = first::<pg_sys::Oid>(
            &format!("SELECT '{s}._rserv_index_probe_'::pg_catalog.regclass::pg_catalog.oid"),
            &[],
            "finding the index probe",
        )
        .unwrap_or(pg_sys::InvalidOid);
        let owner_name = first::<String>(
            "SELECT rolname::pg_catalog.text FROM pg_catalog.pg_roles WHERE oid = $1",
            &[owner.into()],
            "naming the owner",
        )
        .unwrap_or_default();
        Spi::run(&format!(
            "ALTER TABLE {s}._rserv_index_probe_ OWNER TO {}",
            crate::sql::quote_ident(&owner_name)
        ))
        .or_fail("handing the index probe to the table's owner");
        probe
    });
    let schema = first::<String>(
        "SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
        &[probe.into()],
        "finding the index probe",
    )
    .unwrap_or_default();
    // SAFETY: parse trees of a statement just parsed, retargeted at the probe (locked: created
    // in this transaction)
    let Some(stmt) = (unsafe { retargeted(definition, &schema, "_rserv_index_probe_") }) else {
        bad_definition(
            table,
            "an index definition is not one CREATE INDEX statement",
        );
    };
    // SAFETY: parse analysis of that statement; nothing of it is evaluated
    let (functions, operators, types) = unsafe { named_objects(probe, stmt, definition) };
    let risky = risky_functions(functions, operators, owner);
    refuse_risky(table, &risky);
    for t in types {
        if !trusted_type(t, owner) {
            bad_definition(
                table,
                format!(
                    "an index casts to type {} of this slave, which belongs to another user",
                    crate::catalog::format_type(t, -1)
                ),
            );
        }
    }
    // SAFETY: that statement, now built on the empty probe as the table's owner
    unsafe { build(stmt, definition) };
    let risky = risky_calls(probe, &[], owner);
    as_definer(|| {
        let _internal = internal_ddl();
        Spi::run(&format!("DROP TABLE {s}._rserv_index_probe_"))
            .or_fail("dropping the index probe");
    });
    refuse_risky(table, &risky);
}

fn refuse_risky(table: &str, risky: &[String]) {
    if !risky.is_empty() {
        bad_definition(
            table,
            format!(
                "an index would call functions with side effects, or another user's: {}",
                risky.join(", ")
            ),
        );
    }
}

/// CREATE INDEX statement `sql`, on relation `schema.name` instead of its own table (its name
/// left to the server); None when `sql` is not exactly one CREATE INDEX.
unsafe fn retargeted(sql: &str, schema: &str, name: &str) -> Option<*mut pg_sys::IndexStmt> {
    let stmts = parse(sql, pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
    let [stmt] = stmts.as_slice() else {
        return None;
    };
    if stmt.is_null() || (**stmt).type_ != pg_sys::NodeTag::T_IndexStmt {
        return None;
    }
    let index = *stmt as *mut pg_sys::IndexStmt;
    let (schema, name) = (c_string(schema), c_string(name));
    (*index).relation = pg_sys::makeRangeVar(
        pg_sys::pstrdup(schema.as_ptr()),
        pg_sys::pstrdup(name.as_ptr()),
        -1,
    );
    (*index).idxname = std::ptr::null_mut();
    Some(index)
}

/// The functions, operators and domains the parse-analysed statement names (read from the
/// analysed tree's text form, which spells every one of them by oid).
unsafe fn named_objects(
    relid: pg_sys::Oid,
    stmt: *mut pg_sys::IndexStmt,
    sql: &str,
) -> (Vec<pg_sys::Oid>, Vec<pg_sys::Oid>, Vec<pg_sys::Oid>) {
    let text = c_string(sql);
    let query = pg_sys::pstrdup(text.as_ptr());
    let analysed = pg_sys::ffi::pg_guard_ffi_boundary(|| transformIndexStmt(relid, stmt, query));
    let tree = pg_sys::nodeToString(analysed as *const std::ffi::c_void);
    let tree = CStr::from_ptr(tree).to_string_lossy().into_owned();
    let oids = |field: &str| -> Vec<pg_sys::Oid> {
        tree.match_indices(field)
            .filter_map(|(i, _)| {
                let rest = &tree[i + field.len()..];
                let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                digits.parse::<u32>().ok().map(pg_sys::Oid::from)
            })
            .filter(|o| *o != pg_sys::InvalidOid)
            .collect()
    };
    let functions = [oids(":funcid "), oids(":opfuncid ")].concat();
    let mut operators = oids(":opno ");
    // RowCompareExpr lists its operators: ":opnos (o 96 97)"
    for (i, _) in tree.match_indices(":opnos (o ") {
        let rest = &tree[i + ":opnos (o ".len()..];
        let list: String = rest.chars().take_while(|c| *c != ')').collect();
        operators.extend(
            list.split_whitespace()
                .filter_map(|d| d.parse::<u32>().ok().map(pg_sys::Oid::from)),
        );
    }
    // a cast to a domain runs the domain's checks
    let types: Vec<pg_sys::Oid> = [oids(":resulttype "), oids(":consttype ")]
        .concat()
        .into_iter()
        .filter(|t| {
            first::<bool>(
                "SELECT typtype = 'd' FROM pg_catalog.pg_type WHERE oid = $1",
                &[(*t).into()],
                "reading a type",
            )
            .unwrap_or(false)
        })
        .collect();
    (functions, operators, types)
}

/// Run the CREATE INDEX statement `stmt` (its text `sql`).
unsafe fn build(stmt: *mut pg_sys::IndexStmt, sql: &str) {
    let planned = pgrx::PgBox::<pg_sys::PlannedStmt>::alloc_node(pg_sys::NodeTag::T_PlannedStmt);
    let planned = planned.into_pg();
    (*planned).commandType = pg_sys::CmdType::CMD_UTILITY;
    (*planned).utilityStmt = stmt as *mut pg_sys::Node;
    (*planned).stmt_location = -1;
    let text = c_string(sql);
    pg_sys::ProcessUtility(
        planned,
        pg_sys::pstrdup(text.as_ptr()),
        false,
        pg_sys::ProcessUtilityContext::PROCESS_UTILITY_SUBCOMMAND,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        pg_sys::None_Receiver,
        std::ptr::null_mut(),
    );
    pg_sys::CommandCounterIncrement();
}
