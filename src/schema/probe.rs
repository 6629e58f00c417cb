//! Building an index evaluates its expressions and predicate on every row of the table, as the
//! table's owner, before anything could check what they call. So an index from a master's
//! definition is first built on an empty scratch table with the same columns, which evaluates
//! nothing: what that index calls is checked like every other expression of the table (only a
//! superuser's or the owner's functions, nothing with side effects), and only then is the real
//! index built.

use super::verify::{bad_definition, parse, risky_calls};
use crate::catalog::ext_schema;
use crate::error::SpiOrFail;
use crate::security::{as_definer, internal_ddl};
use crate::sql::{c_string, first};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Check index statement `definition` for table `reloid` (owned by `owner`) before it is built.
pub fn probe_index(table: &str, reloid: pg_sys::Oid, owner: pg_sys::Oid, definition: &str) {
    let s = ext_schema();
    let risky = as_definer(|| {
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
        let schema = first::<String>(
            "SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1",
            &[probe.into()],
            "finding the index probe",
        )
        .unwrap_or_default();
        // SAFETY: a statement check_statement proved to be one CREATE INDEX, retargeted
        if !unsafe { build_on(definition, &schema, "_rserv_index_probe_") } {
            bad_definition(
                table,
                "an index definition is not one CREATE INDEX statement",
            );
        }
        let risky = risky_calls(probe, &[], owner);
        Spi::run(&format!("DROP TABLE {s}._rserv_index_probe_"))
            .or_fail("dropping the index probe");
        risky
    });
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

/// Run CREATE INDEX statement `sql` on relation `schema.name` instead of its own table (its
/// name left to the server). False when `sql` is not exactly one CREATE INDEX.
unsafe fn build_on(sql: &str, schema: &str, name: &str) -> bool {
    let stmts = parse(sql, pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
    let [stmt] = stmts.as_slice() else {
        return false;
    };
    if stmt.is_null() || (**stmt).type_ != pg_sys::NodeTag::T_IndexStmt {
        return false;
    }
    let index = *stmt as *mut pg_sys::IndexStmt;
    let (schema, name) = (c_string(schema), c_string(name));
    (*index).relation = pg_sys::makeRangeVar(
        pg_sys::pstrdup(schema.as_ptr()),
        pg_sys::pstrdup(name.as_ptr()),
        -1,
    );
    (*index).idxname = std::ptr::null_mut();
    let planned = pgrx::PgBox::<pg_sys::PlannedStmt>::alloc_node(pg_sys::NodeTag::T_PlannedStmt);
    let planned = planned.into_pg();
    (*planned).commandType = pg_sys::CmdType::CMD_UTILITY;
    (*planned).utilityStmt = *stmt;
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
    true
}
