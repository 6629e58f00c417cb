//! Table definitions for `replicate --create-tables`: the master describes each replicated
//! table as data (`rserv_table_list().definition`, see `model.rs`), and the slave builds the
//! table and what it needs from that description (`build.rs`): pre-data when the table is
//! created (`rserv_slave_create_table`), post-data once its initial copy is in
//! (`rserv_slave_finish_tables`). The slave never executes SQL text from the master (see
//! `verify.rs` for how the few clause texts are checked).

pub(crate) mod build;
pub(crate) mod model;
pub(crate) mod post_data;
pub(crate) mod probe;
pub(crate) mod settings;
pub(crate) mod verify;

pub use verify::is_constant;

use crate::catalog::ext_schema;
use crate::error::SpiOrFail;
use crate::security::{definer, outer_user, require_replicator, run_as_owner};
use crate::sql::{first, qualified};
use model::{Rel, TableDef, FORMAT};
use pgrx::pg_sys;
use pgrx::prelude::*;
use verify::bad_definition;

/// The master's description of a table (format 1).
const DESCRIBE: &str = include_str!("../../sql/describe_table.sql");

/// Tables this master replicates, with their identity, watched columns (NULL: all) and
/// definition (used by `replicate --create-tables` and `replicate check`).
// The SQL name is unchanged; the symbol carries the signature's version (see rserv_prepare).
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
    // computed here, while search_path is pinned, never lazily after the function returned
    let out: Vec<_> = rows
        .into_iter()
        .map(|(schema, table, key, pk, watched, reloid)| {
            (
                schema,
                table,
                key,
                pk,
                watched,
                pgrx::JsonB(describe(reloid)),
            )
        })
        .collect();
    TableIterator::new(out)
}

/// The definition of table `reloid`, with those of its partitions (parents first).
pub fn describe(reloid: pg_sys::Oid) -> serde_json::Value {
    let one = |oid: pg_sys::Oid| {
        first::<pgrx::JsonB>(DESCRIBE, &[oid.into()], "describing a table")
            .map(|j| j.0)
            .unwrap_or(serde_json::Value::Null)
    };
    let mut def = one(reloid);
    let partitions = crate::sql::column::<pg_sys::Oid>(
        "SELECT relid FROM pg_catalog.pg_partition_tree($1) WHERE level > 0 ORDER BY level, relid",
        &[reloid.into()],
        "listing partitions",
    );
    if let (Some(obj), false) = (def.as_object_mut(), partitions.is_empty()) {
        let defs = partitions.into_iter().map(one).collect();
        obj.insert("partitions".into(), serde_json::Value::Array(defs));
    }
    def
}

pub fn parse_definition(definition: serde_json::Value) -> TableDef {
    let def: TableDef = match serde_json::from_value(definition) {
        Ok(d) => d,
        Err(e) => bad_definition("(unknown)", format!("malformed definition: {e}")),
    };
    if def.format != FORMAT {
        bad_definition(
            &qualified(&def.schema, &def.table),
            format!(
                "definition format {} (this slave reads {FORMAT})",
                def.format
            ),
        );
    }
    def
}

/// Create a table on this slave from the master's `definition` (see `rserv_table_list`), with
/// the schemas, types and sequences it needs, as the calling role (which needs CREATE on the
/// schema, and becomes the table's owner). Its indexes, foreign keys, triggers and policies come
/// after its initial copy (`rserv_slave_finish_tables`). Returns the table's qualified name.
/// Registering it is a separate step (`rserv_slave_add_table`).
#[pg_extern(volatile, security_definer)]
fn rserv_slave_create_table(definition: pgrx::JsonB) -> String {
    let _definer = definer();
    require_replicator("rserv_slave_create_table");
    let def = parse_definition(definition.0.clone());
    let table = qualified(&def.schema, &def.table);
    // rserv's own DDL (built from the definition): the DDL guards' refusals are for users' DDL,
    // and the partitions made here are reconciled when the table is registered
    let _internal = crate::security::internal_ddl();
    let (reloid, types) = run_as_owner(outer_user(), &[], || build::create_table(&def));
    build::check_calls(&table, reloid, &types);
    for part in &def.partitions {
        let name = qualified(&part.schema, &part.table);
        let (oid, types) = run_as_owner(outer_user(), &[], || build::create_table(part));
        build::check_calls(&name, oid, &types);
    }
    let s = ext_schema();
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_slave_pending_ (reloid, definition) VALUES ($1, $2) \
             ON CONFLICT (reloid) DO UPDATE SET definition = excluded.definition"
        ),
        &[reloid.into(), definition.into()],
    )
    .or_fail("recording the table's post-data");
    table
}

/// Does this slave receive table `r` (registered here)?
pub fn receives(s: &str, r: &Rel) -> bool {
    first::<bool>(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {s}._rserv_slave_tables_ t \
             WHERE t.reloid = pg_catalog.to_regclass($1)::oid)"
        ),
        &[qualified(&r.schema, &r.table).into()],
        "looking up a slave table",
    )
    .unwrap_or(false)
}

/// Is the initial copy of registered table `r` in (or is it not received here at all)?
fn copied_or_foreign(s: &str, r: &Rel) -> bool {
    first::<bool>(
        &format!(
            "SELECT NOT coalesce((SELECT t.needs_copy FROM {s}._rserv_slave_tables_ t \
             WHERE t.reloid = pg_catalog.to_regclass($1)::oid), false)"
        ),
        &[qualified(&r.schema, &r.table).into()],
        "looking up a slave table",
    )
    .unwrap_or(true)
}

/// Give the tables `rserv_slave_create_table` made their post-data (indexes, foreign keys,
/// triggers, policies) once their initial copy, and that of every table their foreign keys
/// reference, is in. Runs as each table's owner. Returns the tables finished; replicate calls it
/// after applying a change set.
#[pg_extern(volatile, security_definer)]
fn rserv_slave_finish_tables() -> SetOfIterator<'static, String> {
    let _definer = definer();
    require_replicator("rserv_slave_finish_tables");
    let s = ext_schema();
    let pending = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT p.reloid, p.definition, c.relowner, coalesce(t.needs_copy, true), c.oid IS NOT NULL \
                     FROM {s}._rserv_slave_pending_ p \
                     LEFT JOIN pg_catalog.pg_class c ON c.oid = p.reloid \
                     LEFT JOIN {s}._rserv_slave_tables_ t ON t.reloid = p.reloid ORDER BY p.created, p.reloid"
                ),
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                    r.get::<pgrx::JsonB>(2)?,
                    r.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
                    r.get::<bool>(4)?.unwrap_or(true),
                    r.get::<bool>(5)?.unwrap_or(false),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("reading pending post-data");
    let mut finished = Vec::new();
    for (reloid, definition, owner, needs_copy, exists) in pending {
        let forget = || {
            Spi::run_with_args(
                &format!("DELETE FROM {s}._rserv_slave_pending_ WHERE reloid = $1"),
                &[reloid.into()],
            )
            .or_fail("forgetting post-data")
        };
        let Some(definition) = definition.filter(|_| exists) else {
            forget(); // the table is gone
            continue;
        };
        if needs_copy {
            continue; // not copied yet
        }
        let def = parse_definition(definition.0);
        let waits = def
            .constraints
            .iter()
            .filter_map(|o| o.references.as_ref())
            .any(|r| !copied_or_foreign(&s, r));
        if waits {
            continue;
        }
        let table = qualified(&def.schema, &def.table);
        // which referenced tables this slave receives, read now: the statements below run as
        // the table's owner, who may not read rserv's catalog
        let received: Vec<Rel> = std::iter::once(&def)
            .chain(&def.partitions)
            .flat_map(|d| &d.constraints)
            .filter_map(|o| o.references.clone())
            .filter(|r| receives(&s, r))
            .collect();
        let receives_here = move |r: &Rel| received.contains(r);
        // rserv's own DDL: the DDL guards' refusals and partition reconciliation are not for it
        let _internal = crate::security::internal_ddl();
        run_as_owner(owner, &[], || {
            post_data::finish_table(&def, reloid, &receives_here)
        });
        build::check_calls(&table, reloid, &[]);
        for part in &def.partitions {
            let name = qualified(&part.schema, &part.table);
            let Some(oid) = first::<pg_sys::Oid>(
                "SELECT pg_catalog.to_regclass($1)::oid",
                &[name.clone().into()],
                "finding a partition",
            ) else {
                continue; // dropped since
            };
            run_as_owner(owner, &[], || {
                post_data::finish_table(part, oid, &receives_here)
            });
            build::check_calls(&name, oid, &[]);
        }
        forget();
        finished.push(table);
    }
    SetOfIterator::new(finished)
}
