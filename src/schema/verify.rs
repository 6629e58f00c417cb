//! What the slave checks before and after running a statement it built from a master's
//! definition: an embedded expression is exactly one scalar expression; a built statement is
//! exactly one statement of the kind intended (a clause text that smuggled in a second statement,
//! or turned it into another kind, is refused before anything runs); and afterwards, the objects
//! it made call no function with side effects and no function that runs SQL text.

use crate::error::fail;
use crate::sql::{c_string, column};
use pgrx::pg_sys;
use pgrx::prelude::*;

pub fn bad_definition(table: &str, what: impl std::fmt::Display) -> ! {
    fail(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("rserv: the master's definition of table {table} is not usable here: {what}"),
        format!("create table {table} on the slave yourself (replicate then leaves it as it is), and register it with rserv_slave_add_table"),
    )
}

/// The statements `sql` parses into (raising the parser's syntax error).
pub(crate) unsafe fn parse(sql: &str, mode: pg_sys::RawParseMode::Type) -> Vec<*mut pg_sys::Node> {
    let c = c_string(sql);
    let list = pg_sys::raw_parser(c.as_ptr(), mode);
    if list.is_null() {
        return Vec::new();
    }
    (0..(*list).length as usize)
        .map(|i| {
            let raw = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::RawStmt;
            (*raw).stmt
        })
        .collect()
}

/// Is `expr` exactly one scalar expression? Parsed by the server's own parser (the grammar of
/// a PL/pgSQL expression, i.e. a SELECT target list), then every clause but a single unnamed
/// target must be absent: no statement, FROM, WHERE, set operation or second expression.
pub fn single_expression(expr: &str) -> bool {
    // SAFETY: raw_parser returns a List of RawStmt (or raises a syntax ERROR)
    unsafe {
        let stmts = parse(expr, pg_sys::RawParseMode::RAW_PARSE_PLPGSQL_EXPR);
        let [stmt] = stmts.as_slice() else {
            return false;
        };
        if stmt.is_null() || (**stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            return false;
        }
        let s = &*(*stmt as *mut pg_sys::SelectStmt);
        if s.targetList.is_null()
            || (*s.targetList).length != 1
            || !s.distinctClause.is_null()
            || !s.intoClause.is_null()
            || !s.fromClause.is_null()
            || !s.whereClause.is_null()
            || !s.groupClause.is_null()
            || !s.havingClause.is_null()
            || !s.windowClause.is_null()
            || !s.valuesLists.is_null()
            || !s.sortClause.is_null()
            || !s.limitOffset.is_null()
            || !s.limitCount.is_null()
            || !s.lockingClause.is_null()
            || !s.withClause.is_null()
            || s.op != pg_sys::SetOperation::SETOP_NONE
        {
            return false;
        }
        let target = (*(*s.targetList).elements).ptr_value as *mut pg_sys::ResTarget;
        (*target).type_ == pg_sys::NodeTag::T_ResTarget
            && (*target).name.is_null()
            && (*target).indirection.is_null()
    }
}

/// Is `expr` a constant (a literal, maybe cast): the same value wherever and whenever it is
/// evaluated?
pub fn is_constant(expr: &str) -> bool {
    if !single_expression(expr) {
        return false;
    }
    // SAFETY: parse tree of the expression just checked
    unsafe {
        let stmts = parse(expr, pg_sys::RawParseMode::RAW_PARSE_PLPGSQL_EXPR);
        let s = &*(stmts[0] as *mut pg_sys::SelectStmt);
        let target = (*(*s.targetList).elements).ptr_value as *mut pg_sys::ResTarget;
        let v = (*target).val;
        !v.is_null()
            && match (*v).type_ {
                pg_sys::NodeTag::T_A_Const => true,
                pg_sys::NodeTag::T_TypeCast => {
                    let arg = (*(v as *mut pg_sys::TypeCast)).arg;
                    !arg.is_null() && (*arg).type_ == pg_sys::NodeTag::T_A_Const
                }
                _ => false,
            }
    }
}

/// `expr` made safe to embed in a statement, or an error naming where it came from.
pub fn expression(table: &str, what: &str, expr: &str) -> String {
    if !single_expression(expr) {
        bad_definition(table, format!("{what} is not a single expression"));
    }
    // a newline ends any trailing -- comment; the parentheses keep it one operand
    format!("({expr}\n)")
}

/// The nodes of a parse-tree List (none for NIL).
unsafe fn nodes(list: *mut pg_sys::List) -> Vec<*mut pg_sys::Node> {
    if list.is_null() {
        return Vec::new();
    }
    (0..(*list).length as usize)
        .map(|i| (*(*list).elements.add(i)).ptr_value as *mut pg_sys::Node)
        .collect()
}

/// One bound value of a partition: a literal, a cast literal, or MINVALUE / MAXVALUE (which the
/// grammar reads as a column reference). Anything else could call a function while the
/// partition is created.
unsafe fn constant_datum(n: *mut pg_sys::Node) -> bool {
    if n.is_null() {
        return false;
    }
    match (*n).type_ {
        pg_sys::NodeTag::T_A_Const => true,
        pg_sys::NodeTag::T_TypeCast => {
            let arg = (*(n as *mut pg_sys::TypeCast)).arg;
            !arg.is_null() && (*arg).type_ == pg_sys::NodeTag::T_A_Const
        }
        pg_sys::NodeTag::T_ColumnRef => (*(*(n as *mut pg_sys::ColumnRef)).fields).length == 1,
        _ => false,
    }
}

/// A partition bound from a master's definition (`FOR VALUES ...` or `DEFAULT`) made of
/// constants only, or an error naming the table.
pub fn partition_bound(table: &str, bound: &str) -> String {
    let sql = format!("CREATE TABLE t PARTITION OF p {bound}\n");
    // SAFETY: parse trees of the statement just parsed
    let ok = unsafe {
        let stmts = parse(&sql, pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        match stmts.as_slice() {
            [stmt] if !stmt.is_null() && (**stmt).type_ == pg_sys::NodeTag::T_CreateStmt => {
                let spec = (*(*stmt as *mut pg_sys::CreateStmt)).partbound;
                !spec.is_null()
                    && [(*spec).listdatums, (*spec).lowerdatums, (*spec).upperdatums]
                        .into_iter()
                        .flat_map(|l| nodes(l))
                        .all(|n| constant_datum(n))
            }
            _ => false,
        }
    };
    if !ok {
        bad_definition(table, "its partition bound is not made of constants");
    }
    format!("{bound}\n")
}

/// A statement rserv built around texts from a master's definition must be exactly one
/// statement of the intended kind (and, for ALTER TABLE, exactly one subcommand of the intended
/// kind); otherwise nothing runs.
pub fn check_statement(
    table: &str,
    sql: &str,
    tag: pg_sys::NodeTag,
    alter: Option<pg_sys::AlterTableType::Type>,
) {
    // SAFETY: parse trees of the statement just parsed
    let ok = unsafe {
        let stmts = parse(sql, pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        match stmts.as_slice() {
            [stmt] if !stmt.is_null() && (**stmt).type_ == tag => match alter {
                None => true,
                Some(subtype) => {
                    let a = &*(*stmt as *mut pg_sys::AlterTableStmt);
                    !a.cmds.is_null() && (*a.cmds).length == 1 && {
                        let cmd = (*(*a.cmds).elements).ptr_value as *mut pg_sys::AlterTableCmd;
                        (*cmd).type_ == pg_sys::NodeTag::T_AlterTableCmd
                            && (*cmd).subtype == subtype
                    }
                }
            },
            _ => false,
        }
    };
    if !ok {
        bad_definition(
            table,
            "a clause of it does not make the statement it should",
        );
    }
}

/// Volatile functions a slave accepts in a definition (by their identity).
const VOLATILE_ALLOWED: &str = "ARRAY['pg_catalog.nextval(pg_catalog.regclass)'::pg_catalog.regprocedure, \
    'pg_catalog.gen_random_uuid()'::pg_catalog.regprocedure, 'pg_catalog.random()'::pg_catalog.regprocedure, \
    'pg_catalog.clock_timestamp()'::pg_catalog.regprocedure, 'pg_catalog.timeofday()'::pg_catalog.regprocedure]";

/// Built-in functions that run SQL given as text (or read whole tables or files): harmless-looking
/// (stable) to the planner, but a way to run any query through a CHECK or DEFAULT.
const RUNS_SQL: &str = "ARRAY['query_to_xml', 'query_to_xmlschema', 'query_to_xml_and_xmlschema', \
    'cursor_to_xml', 'cursor_to_xmlschema', 'table_to_xml', 'table_to_xmlschema', \
    'table_to_xml_and_xmlschema', 'schema_to_xml', 'schema_to_xmlschema', \
    'schema_to_xml_and_xmlschema', 'database_to_xml', 'database_to_xmlschema', \
    'database_to_xml_and_xmlschema', 'ts_stat', 'pg_read_file', 'pg_read_binary_file', \
    'pg_ls_dir', 'pg_stat_file', 'lo_import', 'lo_export', 'dblink', 'dblink_exec']::name[]";

/// A slave object a definition may use (a type) or call (a function) must be a superuser's or
/// the table owner's own (`$3`: the apply runs the table's expressions as its owner), never
/// another user's: their code would then run as the table's owner (and a function's volatility
/// is its owner's word).
const TRUSTED: &str = "coalesce((SELECT a.rolsuper OR a.oid = $3 FROM pg_catalog.pg_roles a \
                       WHERE a.oid = f.proowner), false)";

/// Of functions `functions` and the functions of operators `operators`, those an expression of
/// a table owned by `owner` may not call (the rules of [`risky_calls`]).
pub fn risky_functions(
    functions: Vec<pg_sys::Oid>,
    operators: Vec<pg_sys::Oid>,
    owner: pg_sys::Oid,
) -> Vec<String> {
    column::<String>(
        &format!(
            "SELECT DISTINCT f.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc f \
              WHERE (f.oid = ANY ($1::oid[]) \
                     OR f.oid IN (SELECT o.oprcode FROM pg_catalog.pg_operator o WHERE o.oid = ANY ($2::oid[]))) \
                AND ((f.provolatile = 'v' AND f.oid <> ALL ({VOLATILE_ALLOWED}::oid[])) \
                     OR f.proname = ANY ({RUNS_SQL}) \
                     OR NOT {TRUSTED}) \
              ORDER BY 1"
        ),
        &[functions.into(), operators.into(), owner.into()],
        "checking the functions an expression calls",
    )
}

/// Is type `oid` a superuser's or `role`'s (see `TRUSTED`)?
pub fn trusted_type(oid: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    crate::sql::first::<bool>(
        "SELECT coalesce((SELECT a.rolsuper OR a.oid = $2 FROM pg_catalog.pg_roles a \
                          WHERE a.oid = t.typowner), false) FROM pg_catalog.pg_type t WHERE t.oid = $1",
        &[oid.into(), role.into()],
        "checking a type's owner",
    )
    .unwrap_or(false)
}

/// Functions with side effects, or that run SQL text, which the expressions of table `reloid`
/// (defaults, constraints, generated columns, indexes, policies, trigger conditions) or of the
/// types `types` (domain defaults and constraints) would call. PostgreSQL records every
/// function and operator an expression uses as a dependency of the object that holds it; a
/// trigger's own function is the slave's, attached as the master's definition says.
pub fn risky_calls(reloid: pg_sys::Oid, types: &[pg_sys::Oid], owner: pg_sys::Oid) -> Vec<String> {
    column::<String>(
        &format!(
            "WITH parts AS ( \
               SELECT d.classid, d.objid FROM pg_catalog.pg_depend d \
                WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = $1 \
                  AND d.classid IN ('pg_catalog.pg_attrdef'::pg_catalog.regclass, 'pg_catalog.pg_constraint'::pg_catalog.regclass, \
                                    'pg_catalog.pg_class'::pg_catalog.regclass, 'pg_catalog.pg_trigger'::pg_catalog.regclass, \
                                    'pg_catalog.pg_policy'::pg_catalog.regclass) \
               UNION SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, o.oid FROM pg_catalog.pg_constraint o \
                WHERE o.contypid = ANY ($2::oid[]) \
               UNION SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t FROM unnest($2::oid[]) AS t), \
             called AS ( \
               SELECT d.refobjid AS fn, p.classid, p.objid FROM pg_catalog.pg_depend d \
                 JOIN parts p ON p.classid = d.classid AND p.objid = d.objid \
                WHERE d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
               UNION SELECT o.oprcode, p.classid, p.objid FROM pg_catalog.pg_depend d \
                 JOIN parts p ON p.classid = d.classid AND p.objid = d.objid \
                 JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid \
                WHERE d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass) \
             SELECT DISTINCT f.oid::pg_catalog.regprocedure::text FROM called c \
               JOIN pg_catalog.pg_proc f ON f.oid = c.fn \
              WHERE NOT (c.classid = 'pg_catalog.pg_trigger'::pg_catalog.regclass \
                         AND f.oid = (SELECT g.tgfoid FROM pg_catalog.pg_trigger g WHERE g.oid = c.objid)) \
                AND ((f.provolatile = 'v' AND f.oid <> ALL ({VOLATILE_ALLOWED}::oid[])) \
                     OR f.proname = ANY ({RUNS_SQL}) \
                     OR NOT {TRUSTED}) \
              ORDER BY 1"
        ),
        &[
            reloid.into(),
            types.to_vec().into(),
            owner.into(),
        ],
        "checking the table's expressions",
    )
}
