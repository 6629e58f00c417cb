//! Table definitions for `replicate --create-tables`: the master describes each replicated
//! table as data (`rserv_table_list().definition`), and the slave builds its own DDL from that
//! description (`rserv_slave_create_table`). The slave never executes SQL text from the master:
//! names are quoted by the slave's server, types and collations are looked up by name among the
//! slave's own and printed by its `format_type()`, and an expression (DEFAULT, CHECK, GENERATED)
//! is accepted only once the slave's parser has proved it a single scalar expression; the
//! functions it calls must then be free of side effects (non-volatile), apart from a few
//! volatile built-ins that defaults use (random values, the clock, sequences).

use crate::catalog::ext_schema;
use crate::error::{fail, SpiOrFail};
use crate::security::{definer, require_replicator};
use crate::sql::{c_string, column, first, ident_list, qualified, quote_ident};
use pgrx::pg_sys;
use pgrx::prelude::*;
use serde::{Deserialize, Serialize};

/// Version of the definition format; a slave refuses one it does not know.
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Named {
    schema: String,
    name: String,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ColumnDef {
    name: String,
    #[serde(rename = "type")]
    typ: Named,
    typmod: i32,
    not_null: bool,
    default: Option<String>,
    /// "a" (GENERATED ALWAYS AS IDENTITY) or "d" (BY DEFAULT)
    identity: Option<String>,
    /// expression of a stored generated column
    generated: Option<String>,
    collation: Option<Named>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct ConstraintDef {
    name: String,
    /// "p" primary key, "u" unique, "c" check
    kind: String,
    columns: Option<Vec<String>>,
    expression: Option<String>,
    valid: bool,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct IndexDef {
    name: String,
    unique: bool,
    columns: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TableDef {
    format: u32,
    schema: String,
    table: String,
    columns: Vec<ColumnDef>,
    constraints: Vec<ConstraintDef>,
    indexes: Vec<IndexDef>,
}

/// The master's description of table `reloid` (see [`TableDef`]). Defaults that depend on a
/// sequence are left out: sequences are not replicated yet.
const DESCRIBE: &str = "\
SELECT pg_catalog.jsonb_build_object(
  'format', 1, 'schema', n.nspname, 'table', c.relname,
  'columns', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
       'name', a.attname,
       'type', pg_catalog.jsonb_build_object('schema', tn.nspname, 'name', t.typname),
       'typmod', a.atttypmod,
       'not_null', a.attnotnull,
       'default', CASE WHEN a.attgenerated = '' AND d.adbin IS NOT NULL AND NOT EXISTS (
                         SELECT 1 FROM pg_catalog.pg_depend x JOIN pg_catalog.pg_class q ON q.oid = x.refobjid
                          WHERE x.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND x.objid = d.oid
                            AND x.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND q.relkind = 'S')
                       THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END,
       'identity', NULLIF(a.attidentity::text, ''),
       'generated', CASE WHEN a.attgenerated = 's' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END,
       'collation', CASE WHEN a.attcollation <> t.typcollation THEN
                      (SELECT pg_catalog.jsonb_build_object('schema', cn.nspname, 'name', co.collname)
                         FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
                        WHERE co.oid = a.attcollation) END
     ) ORDER BY a.attnum)
     FROM pg_catalog.pg_attribute a
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
     JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
     LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
  'constraints', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
       'name', o.conname, 'kind', o.contype,
       'columns', CASE WHEN o.contype IN ('p', 'u') THEN
                    (SELECT pg_catalog.jsonb_agg(a.attname ORDER BY k.ord)
                       FROM unnest(o.conkey) WITH ORDINALITY AS k(attnum, ord)
                       JOIN pg_catalog.pg_attribute a ON a.attrelid = o.conrelid AND a.attnum = k.attnum) END,
       'expression', CASE WHEN o.contype = 'c' THEN pg_catalog.pg_get_expr(o.conbin, o.conrelid) END,
       'valid', o.convalidated) ORDER BY o.contype <> 'p', o.contype <> 'u', o.conname)
     FROM pg_catalog.pg_constraint o WHERE o.conrelid = c.oid AND o.contype IN ('p', 'u', 'c')), '[]'),
  'indexes', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
       'name', ic.relname, 'unique', true,
       'columns', (SELECT pg_catalog.jsonb_agg(a.attname ORDER BY k.ord)
                     FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                     JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                    WHERE k.ord <= i.indnkeyatts)) ORDER BY ic.relname)
     FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
     WHERE i.indrelid = c.oid AND i.indisunique AND i.indexprs IS NULL AND i.indpred IS NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint o WHERE o.conindid = i.indexrelid)), '[]'))
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $1";

/// Tables this master replicates, with their identity, watched columns (NULL: all) and
/// definition (used by `replicate --create-tables` and `replicate check`).
#[pg_extern(stable, security_definer, name = "rserv_table_list")]
#[allow(clippy::type_complexity)]
fn rserv_table_list_v11() -> TableIterator<
    'static,
    (
        name!(schema_name, String),
        name!(table_name, String),
        name!(key_columns, Vec<String>),
        name!(is_primary_key, bool),
        name!(watched_columns, Option<Vec<String>>),
        name!(definition, pgrx::JsonB),
    ),
> {
    let _definer = definer();
    require_replicator("rserv_table_list");
    let s = ext_schema();
    let rows = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT n.nspname::text, c.relname::text, t.key::text[], \
                            coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord) \
                               FROM pg_catalog.pg_index i \
                               CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
                               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                               WHERE i.indrelid = t.reloid AND i.indisprimary) = t.key::text[], false), \
                            t.watched::text[], t.reloid \
                     FROM {s}._rserv_tables_ t JOIN pg_catalog.pg_class c ON c.oid = t.reloid \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2"
                ),
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<Vec<String>>(3)?.unwrap_or_default(),
                    r.get::<bool>(4)?.unwrap_or(false),
                    r.get::<Vec<String>>(5)?,
                    r.get::<pg_sys::Oid>(6)?.unwrap_or(pg_sys::InvalidOid),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("listing replicated tables");
    let out: Vec<_> = rows
        .into_iter()
        .map(|(schema, table, key, pk, watched, reloid)| {
            let def = first::<pgrx::JsonB>(DESCRIBE, &[reloid.into()], "describing a table")
                .unwrap_or(pgrx::JsonB(serde_json::Value::Null));
            (schema, table, key, pk, watched, def)
        })
        .collect();
    TableIterator::new(out)
}

fn bad_definition(table: &str, what: impl std::fmt::Display) -> ! {
    fail(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("rserv: the master's definition of table {table} is not usable here: {what}"),
        format!("create table {table} on the slave yourself (replicate then leaves it as it is), and register it with rserv_slave_add_table"),
    )
}

/// Is `expr` exactly one scalar expression? Parsed by the server's own parser (the grammar of
/// a PL/pgSQL expression, i.e. a SELECT target list), then every clause but a single unnamed
/// target must be absent: no statement, FROM, WHERE, set operation or second expression.
fn single_expression(expr: &str) -> bool {
    let c = c_string(expr);
    // SAFETY: raw_parser returns a List of RawStmt (or raises a syntax ERROR)
    unsafe {
        let list = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_PLPGSQL_EXPR);
        if list.is_null() || (*list).length != 1 {
            return false;
        }
        let raw = (*(*list).elements).ptr_value as *mut pg_sys::RawStmt;
        let stmt = (*raw).stmt;
        if stmt.is_null() || (*stmt).type_ != pg_sys::NodeTag::T_SelectStmt {
            return false;
        }
        let sel = stmt as *mut pg_sys::SelectStmt;
        let s = &*sel;
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

/// `expr` made safe to embed in a statement, or an error naming where it came from.
fn expression(table: &str, what: &str, expr: &str) -> String {
    if !single_expression(expr) {
        bad_definition(table, format!("{what} is not a single expression"));
    }
    // a newline ends any trailing -- comment; the parentheses keep it one operand
    format!("({expr}\n)")
}

/// `schema.name` of an existing type, collation or other object: looked up on this slave and
/// quoted by its server.
fn lookup(table: &str, what: &str, sql: &str, n: &Named) -> pg_sys::Oid {
    match first::<pg_sys::Oid>(
        sql,
        &[n.schema.clone().into(), n.name.clone().into()],
        "looking up a name",
    ) {
        Some(oid) => oid,
        None => fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "rserv: {what} {} of table {table} does not exist on this slave",
                qualified(&n.schema, &n.name)
            ),
            "create it on the slave first (as on the master), then run again",
        ),
    }
}

fn column_sql(table: &str, c: &ColumnDef) -> String {
    let typ = lookup(
        table,
        "type",
        "SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
         WHERE n.nspname = $1 AND t.typname = $2",
        &c.typ,
    );
    let mut sql = format!(
        "{} {}",
        quote_ident(&c.name),
        crate::catalog::format_type(typ, c.typmod)
    );
    if let Some(coll) = &c.collation {
        lookup(
            table,
            "collation",
            "SELECT o.oid FROM pg_catalog.pg_collation o JOIN pg_catalog.pg_namespace n ON n.oid = o.collnamespace \
             WHERE n.nspname = $1 AND o.collname = $2",
            coll,
        );
        sql.push_str(&format!(" COLLATE {}", qualified(&coll.schema, &coll.name)));
    }
    match c.identity.as_deref() {
        None => {}
        Some("a") => sql.push_str(" GENERATED ALWAYS AS IDENTITY"),
        Some("d") => sql.push_str(" GENERATED BY DEFAULT AS IDENTITY"),
        Some(other) => bad_definition(table, format!("unknown identity kind {other:?}")),
    }
    if let Some(g) = &c.generated {
        let what = format!(
            "the generated expression of column {}",
            quote_ident(&c.name)
        );
        sql.push_str(&format!(
            " GENERATED ALWAYS AS {} STORED",
            expression(table, &what, g)
        ));
    } else if let Some(d) = &c.default {
        let what = format!("the default of column {}", quote_ident(&c.name));
        sql.push_str(&format!(" DEFAULT {}", expression(table, &what, d)));
    }
    if c.not_null {
        sql.push_str(" NOT NULL");
    }
    sql
}

fn constraint_sql(table: &str, o: &ConstraintDef) -> String {
    let body = match (o.kind.as_str(), &o.columns, &o.expression) {
        ("p", Some(cols), _) => format!("PRIMARY KEY ({})", ident_list(cols)),
        ("u", Some(cols), _) => format!("UNIQUE ({})", ident_list(cols)),
        ("c", _, Some(e)) => {
            let what = format!("check constraint {}", quote_ident(&o.name));
            format!("CHECK {}", expression(table, &what, e))
        }
        _ => bad_definition(
            table,
            format!("constraint {} is malformed", quote_ident(&o.name)),
        ),
    };
    format!("CONSTRAINT {} {body}", quote_ident(&o.name))
}

/// Volatile functions a slave accepts in a definition (by their identity).
const VOLATILE_ALLOWED: &str = "ARRAY['pg_catalog.nextval(pg_catalog.regclass)'::pg_catalog.regprocedure, \
    'pg_catalog.gen_random_uuid()'::pg_catalog.regprocedure, 'pg_catalog.random()'::pg_catalog.regprocedure, \
    'pg_catalog.clock_timestamp()'::pg_catalog.regprocedure, 'pg_catalog.timeofday()'::pg_catalog.regprocedure]";

/// Built-in functions that run SQL given as text (or read whole tables): harmless-looking
/// (stable) to the planner, but a way to run any query through a CHECK or DEFAULT.
const RUNS_SQL: &str = "ARRAY['query_to_xml', 'query_to_xmlschema', 'query_to_xml_and_xmlschema', \
    'cursor_to_xml', 'cursor_to_xmlschema', 'table_to_xml', 'table_to_xmlschema', \
    'table_to_xml_and_xmlschema', 'schema_to_xml', 'schema_to_xmlschema', \
    'schema_to_xml_and_xmlschema', 'database_to_xml', 'database_to_xmlschema', \
    'database_to_xml_and_xmlschema', 'ts_stat', 'pg_read_file', 'pg_read_binary_file', \
    'pg_ls_dir', 'pg_stat_file', 'lo_import', 'lo_export', 'dblink', 'dblink_exec']::name[]";

/// Functions with side effects the new table's expressions would call (PostgreSQL recorded
/// each function and operator they use as a dependency).
fn volatile_calls(reloid: pg_sys::Oid) -> Vec<String> {
    column::<String>(
        &format!(
            "WITH parts AS ( \
               SELECT 'pg_catalog.pg_attrdef'::pg_catalog.regclass AS classid, oid FROM pg_catalog.pg_attrdef WHERE adrelid = $1 \
               UNION ALL SELECT 'pg_catalog.pg_constraint'::pg_catalog.regclass, oid FROM pg_catalog.pg_constraint WHERE conrelid = $1 \
               UNION ALL SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, indexrelid FROM pg_catalog.pg_index WHERE indrelid = $1), \
             called AS ( \
               SELECT d.refobjid AS fn FROM pg_catalog.pg_depend d JOIN parts p ON p.classid = d.classid AND p.oid = d.objid \
                WHERE d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass \
               UNION SELECT o.oprcode FROM pg_catalog.pg_depend d JOIN parts p ON p.classid = d.classid AND p.oid = d.objid \
                 JOIN pg_catalog.pg_operator o ON o.oid = d.refobjid \
                WHERE d.refclassid = 'pg_catalog.pg_operator'::pg_catalog.regclass) \
             SELECT f.oid::pg_catalog.regprocedure::text FROM called c JOIN pg_catalog.pg_proc f ON f.oid = c.fn \
              WHERE (f.provolatile = 'v' AND f.oid <> ALL ({VOLATILE_ALLOWED}::oid[])) \
                 OR f.proname = ANY ({RUNS_SQL}) ORDER BY 1"
        ),
        &[reloid.into()],
        "checking the table's expressions",
    )
}

/// Create a table on this slave from the master's `definition` (see `rserv_table_list`), as
/// the calling role (which needs CREATE on the schema, and becomes the table's owner). Returns
/// the table's qualified name. Registering it is a separate step (`rserv_slave_add_table`).
#[pg_extern(volatile)]
fn rserv_slave_create_table(definition: pgrx::JsonB) -> String {
    let def: TableDef = match serde_json::from_value(definition.0) {
        Ok(d) => d,
        Err(e) => bad_definition("(unknown)", format!("malformed definition: {e}")),
    };
    let table = qualified(&def.schema, &def.table);
    if def.format != FORMAT {
        bad_definition(
            &table,
            format!(
                "definition format {} (this slave reads {FORMAT})",
                def.format
            ),
        );
    }
    let mut parts: Vec<String> = def.columns.iter().map(|c| column_sql(&table, c)).collect();
    parts.extend(
        def.constraints
            .iter()
            .filter(|o| o.valid)
            .map(|o| constraint_sql(&table, o)),
    );
    Spi::run(&format!("CREATE TABLE {table} ({})", parts.join(", ")))
        .unwrap_or_else(|e| crate::error::spi_fail(&format!("creating table {table}"), e));
    // NOT VALID constraints cannot be part of CREATE TABLE (which would validate them)
    for o in def.constraints.iter().filter(|o| !o.valid) {
        Spi::run(&format!(
            "ALTER TABLE {table} ADD {} NOT VALID",
            constraint_sql(&table, o)
        ))
        .unwrap_or_else(|e| crate::error::spi_fail(&format!("adding a constraint to {table}"), e));
    }
    for i in &def.indexes {
        Spi::run(&format!(
            "CREATE {}INDEX {} ON {table} ({})",
            if i.unique { "UNIQUE " } else { "" },
            quote_ident(&i.name),
            ident_list(&i.columns)
        ))
        .unwrap_or_else(|e| crate::error::spi_fail(&format!("indexing {table}"), e));
    }
    let reloid = first::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[table.clone().into()],
        "finding the new table",
    )
    .unwrap_or(pg_sys::InvalidOid);
    let volatile = volatile_calls(reloid);
    if !volatile.is_empty() {
        bad_definition(
            &table,
            format!(
                "its expressions call functions with side effects: {}",
                volatile.join(", ")
            ),
        );
    }
    table
}
