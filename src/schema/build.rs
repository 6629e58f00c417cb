//! The slave builds a table, and what it needs, from a master's definition: schemas, types and
//! sequences first, then the table (pre-data, before its initial copy); indexes, foreign keys,
//! triggers, policies and comments after the copy (post-data, in `post_data.rs`). Every
//! statement is built by the slave: names quoted by this server, types looked up among this
//! slave's own and printed by its `format_type()`; the master's clause texts (expressions,
//! constraint, index, trigger and partition clauses) are embedded only into statements that
//! `verify` then proves to be exactly one statement of the intended kind, and each new object is
//! checked afterwards.

use super::model::*;
use super::post_data::add_constraint;
use super::verify::{
    bad_definition, check_statement, expression, partition_bound, risky_calls, trusted_type,
};
use crate::catalog::format_type;
use crate::error::fail;
use crate::sql::{first, qualified, quote_ident, quote_literal};
use pgrx::pg_sys;
use pgrx::pg_sys::AlterTableType as At;
use pgrx::pg_sys::NodeTag as Tag;
use pgrx::prelude::*;

/// Run one statement built for `table` after checking it is exactly one statement of kind
/// `tag` (and for ALTER TABLE, exactly one subcommand `alter`).
pub fn run(table: &str, sql: &str, tag: pg_sys::NodeTag, alter: Option<At::Type>) {
    check_statement(table, sql, tag, alter);
    if let Err(e) = Spi::run(sql) {
        crate::error::spi_fail(&format!("building table {table}"), e);
    }
}

pub fn relation(schema: &str, name: &str) -> Option<pg_sys::Oid> {
    first::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[qualified(schema, name).into()],
        "looking up a relation",
    )
}

pub fn type_oid(n: &Named) -> Option<pg_sys::Oid> {
    first::<pg_sys::Oid>(
        "SELECT t.oid FROM pg_catalog.pg_type t JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace \
         WHERE n.nspname = $1 AND t.typname = $2",
        &[n.schema.clone().into(), n.name.clone().into()],
        "looking up a type",
    )
}

/// A type of this slave that a definition names must be a superuser's or the role the table
/// belongs to (who runs these statements): another user's domain would run its CHECK as the
/// table's owner on every row applied.
fn require_trusted_type(table: &str, oid: pg_sys::Oid) {
    if !trusted_type(oid, crate::security::acting_role()) {
        bad_definition(
            table,
            format!(
                "it uses type {} of this slave, which belongs to another user",
                format_type(oid, -1)
            ),
        );
    }
}

/// The type `n` (with `typmod`) as this slave's server prints it; it must exist here.
pub fn type_sql(table: &str, n: &Named, typmod: i32) -> String {
    match type_oid(n) {
        Some(oid) => {
            require_trusted_type(table, oid);
            format_type(oid, typmod)
        }
        None => fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "rserv: type {} of table {table} does not exist on this slave",
                qualified(&n.schema, &n.name)
            ),
            "create it on the slave first (as on the master), then run again",
        ),
    }
}

pub fn collation_sql(table: &str, c: &Named) -> String {
    let exists = first::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_collation o JOIN pg_catalog.pg_namespace n ON n.oid = o.collnamespace \
         WHERE n.nspname = $1 AND o.collname = $2)",
        &[c.schema.clone().into(), c.name.clone().into()],
        "looking up a collation",
    )
    .unwrap_or(false);
    if !exists {
        fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "rserv: collation {} of table {table} does not exist on this slave",
                qualified(&c.schema, &c.name)
            ),
            "create it on the slave first (as on the master), then run again",
        );
    }
    format!(" COLLATE {}", qualified(&c.schema, &c.name))
}

pub fn ensure_schema(table: &str, schema: &str) {
    let exists = first::<bool>(
        "SELECT pg_catalog.to_regnamespace($1) IS NOT NULL",
        &[quote_ident(schema).into()],
        "looking up a schema",
    )
    .unwrap_or(false);
    if !exists {
        run(
            table,
            &format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema)),
            Tag::T_CreateSchemaStmt,
            None,
        );
    }
}

/// Create the user-defined types the table needs that this slave lacks (an existing type of the
/// same name is taken as it is). Returns the types made.
pub fn ensure_types(table: &str, types: &[TypeDef]) -> Vec<pg_sys::Oid> {
    let mut made = Vec::new();
    for t in types {
        let named = Named {
            schema: t.schema.clone(),
            name: t.name.clone(),
        };
        if let Some(oid) = type_oid(&named) {
            require_trusted_type(table, oid);
            continue;
        }
        ensure_schema(table, &t.schema);
        let name = qualified(&t.schema, &t.name);
        let (sql, tag) = match t.kind.as_str() {
            "e" => {
                let labels = t.labels.clone().unwrap_or_default();
                let labels: Vec<String> = labels.iter().map(|l| quote_literal(l)).collect();
                (
                    format!("CREATE TYPE {name} AS ENUM ({})", labels.join(", ")),
                    Tag::T_CreateEnumStmt,
                )
            }
            "d" => {
                let Some(base) = &t.base else {
                    bad_definition(table, format!("domain {name} has no base type"));
                };
                let mut sql = format!(
                    "CREATE DOMAIN {name} AS {}",
                    type_sql(table, base, t.typmod)
                );
                if let Some(c) = &t.collation {
                    sql.push_str(&collation_sql(table, c));
                }
                if let Some(d) = &t.default {
                    let what = format!("the default of domain {name}");
                    sql.push_str(&format!(" DEFAULT {}", expression(table, &what, d)));
                }
                if t.not_null {
                    sql.push_str(" NOT NULL");
                }
                for c in t.constraints.iter().flatten() {
                    sql.push_str(&format!(
                        " CONSTRAINT {} {}",
                        quote_ident(&c.name),
                        c.definition
                    ));
                }
                (sql, Tag::T_CreateDomainStmt)
            }
            "c" => {
                let attrs: Vec<String> = t
                    .attributes
                    .iter()
                    .flatten()
                    .map(|a| {
                        format!(
                            "{} {}",
                            quote_ident(&a.name),
                            type_sql(table, &a.typ, a.typmod)
                        )
                    })
                    .collect();
                (
                    format!("CREATE TYPE {name} AS ({})", attrs.join(", ")),
                    Tag::T_CompositeTypeStmt,
                )
            }
            "r" => {
                let Some(sub) = &t.subtype else {
                    bad_definition(table, format!("range type {name} has no subtype"));
                };
                (
                    format!(
                        "CREATE TYPE {name} AS RANGE (SUBTYPE = {})",
                        type_sql(table, sub, -1)
                    ),
                    Tag::T_CreateRangeStmt,
                )
            }
            other => bad_definition(
                table,
                format!("type {name} is of an unknown kind {other:?}"),
            ),
        };
        run(table, &sql, tag, None);
        if let Some(c) = &t.comment {
            run(
                table,
                &format!("COMMENT ON TYPE {name} IS {}", quote_literal(c)),
                Tag::T_CommentStmt,
                None,
            );
        }
        if let Some(oid) = type_oid(&named) {
            made.push(oid);
        }
    }
    made
}

fn sequence_options(s: &SequenceDef) -> String {
    format!(
        "INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}CYCLE",
        s.increment,
        s.min,
        s.max,
        s.start,
        s.cache.max(1),
        if s.cycle { "" } else { "NO " }
    )
}

fn sequence_type(table: &str, s: &SequenceDef) -> &'static str {
    match s.typ.as_str() {
        "smallint" => "smallint",
        "integer" => "integer",
        "bigint" => "bigint",
        other => bad_definition(table, format!("sequence {} has type {other:?}", s.name)),
    }
}

/// Sequences the table's defaults use that this slave lacks (identity sequences come with
/// their columns).
pub fn ensure_sequences(table: &str, sequences: &[SequenceDef]) {
    for s in sequences.iter().filter(|s| !s.identity) {
        if relation(&s.schema, &s.name).is_some() {
            continue;
        }
        ensure_schema(table, &s.schema);
        run(
            table,
            &format!(
                "CREATE SEQUENCE {} AS {} {}",
                qualified(&s.schema, &s.name),
                sequence_type(table, s),
                sequence_options(s)
            ),
            Tag::T_CreateSeqStmt,
            None,
        );
    }
}

pub fn column_sql(table: &str, def: &TableDef, c: &ColumnDef) -> String {
    let mut sql = format!(
        "{} {}",
        quote_ident(&c.name),
        type_sql(table, &c.typ, c.typmod)
    );
    if let Some(coll) = &c.collation {
        sql.push_str(&collation_sql(table, coll));
    }
    match c.identity.as_deref() {
        None => {}
        Some(kind @ ("a" | "d")) => {
            let how = if kind == "a" { "ALWAYS" } else { "BY DEFAULT" };
            sql.push_str(&format!(" GENERATED {how} AS IDENTITY"));
            let seq = def
                .sequences
                .iter()
                .find(|s| s.identity && s.owned_by.as_deref() == Some(c.name.as_str()));
            if let Some(s) = seq {
                sql.push_str(&format!(
                    " (SEQUENCE NAME {} {})",
                    qualified(&s.schema, &s.name),
                    sequence_options(s)
                ));
            }
        }
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

/// The partitioned parent this table is created a partition of, when the slave has it.
pub fn existing_parent(def: &TableDef) -> Option<(Rel, String)> {
    let parent = def.partition_of.clone()?;
    let bound = def.partition_bound.clone()?;
    relation(&parent.schema, &parent.table).map(|_| (parent, bound))
}

/// The parents of `reloid` (inheritance or partitioning) are exactly `expected`.
fn check_parents(table: &str, reloid: pg_sys::Oid, expected: Option<&Rel>) {
    let parents = crate::sql::column::<String>(
        "SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) \
         FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class c ON c.oid = i.inhparent \
         JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE i.inhrelid = $1",
        &[reloid.into()],
        "reading the table's parents",
    );
    let want: Vec<String> = expected
        .map(|p| vec![qualified(&p.schema, &p.table)])
        .unwrap_or_default();
    if parents != want {
        bad_definition(table, "it would make the table a child of another table");
    }
}

/// Pre-data: schemas, types and sequences the table needs, then the table with its columns and
/// its primary key, unique, check and exclusion constraints (its identity must exist before
/// it is registered). Returns the table and the types made.
pub fn create_table(def: &TableDef) -> (pg_sys::Oid, Vec<pg_sys::Oid>) {
    let table = qualified(&def.schema, &def.table);
    if relation(&def.schema, &def.table).is_some() {
        bad_definition(&table, "a relation of that name exists already");
    }
    ensure_schema(&table, &def.schema);
    let types = ensure_types(&table, &def.types);
    ensure_sequences(&table, &def.sequences);
    let parent = existing_parent(def);
    let wanted =
        |o: &&ConstraintDef| o.valid && o.kind != "f" && (parent.is_none() || !o.inherited);
    let constraints: Vec<String> = def
        .constraints
        .iter()
        .filter(wanted)
        .map(|o| format!("CONSTRAINT {} {}", quote_ident(&o.name), o.definition))
        .collect();
    let key = match &def.partition_key {
        Some(k) => format!(" PARTITION BY {k}"),
        None => String::new(),
    };
    let sql = match &parent {
        Some((p, bound)) => {
            let local = if constraints.is_empty() {
                String::new()
            } else {
                format!(" ({})", constraints.join(", "))
            };
            format!(
                "CREATE TABLE {table} PARTITION OF {}{local} {}{key}",
                qualified(&p.schema, &p.table),
                partition_bound(&table, bound)
            )
        }
        None => {
            let mut parts: Vec<String> = def
                .columns
                .iter()
                .map(|c| column_sql(&table, def, c))
                .collect();
            parts.extend(constraints);
            format!("CREATE TABLE {table} ({}){key}", parts.join(", "))
        }
    };
    run(&table, &sql, Tag::T_CreateStmt, None);
    let Some(reloid) = relation(&def.schema, &def.table) else {
        bad_definition(&table, "it was not created");
    };
    check_parents(&table, reloid, parent.as_ref().map(|(p, _)| p));
    // NOT VALID constraints cannot be part of CREATE TABLE (which would validate them)
    for o in def
        .constraints
        .iter()
        .filter(|o| !o.valid && o.kind == "c" && (parent.is_none() || !o.inherited))
    {
        add_constraint(def, o);
    }
    for s in def.sequences.iter().filter(|s| !s.identity) {
        if let Some(col) = &s.owned_by {
            run(
                &table,
                &format!(
                    "ALTER SEQUENCE {} OWNED BY {table}.{}",
                    qualified(&s.schema, &s.name),
                    quote_ident(col)
                ),
                Tag::T_AlterSeqStmt,
                None,
            );
        }
    }
    if let Some(c) = &def.comment {
        run(
            &table,
            &format!("COMMENT ON TABLE {table} IS {}", quote_literal(c)),
            Tag::T_CommentStmt,
            None,
        );
    }
    // storage parameters and column settings (pre-data, as pg_dump makes them)
    super::settings::relation(None, def);
    for c in def.columns.iter().filter(|c| c.comment.is_some()) {
        run(
            &table,
            &format!(
                "COMMENT ON COLUMN {table}.{} IS {}",
                quote_ident(&c.name),
                quote_literal(c.comment.as_deref().unwrap_or_default())
            ),
            Tag::T_CommentStmt,
            None,
        );
    }
    (reloid, types)
}

/// After building: nothing the new objects' expressions call may have side effects or run SQL.
pub fn check_calls(table: &str, reloid: pg_sys::Oid, types: &[pg_sys::Oid]) {
    // the domains of its columns too, made here or not: their checks run on every row applied
    let mut types = types.to_vec();
    types.extend(crate::sql::column::<pg_sys::Oid>(
        "SELECT DISTINCT a.atttypid FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND t.typtype = 'd'",
        &[reloid.into()],
        "listing the table's domains",
    ));
    let risky = risky_calls(reloid, &types, crate::catalog::table_info(reloid).owner);
    if !risky.is_empty() {
        bad_definition(
            table,
            format!(
                "its expressions call functions with side effects: {}",
                risky.join(", ")
            ),
        );
    }
}
