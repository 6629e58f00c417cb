//! Storage and planner settings of a table as the master has them: storage parameters
//! (`WITH (fillfactor …)`, the TOAST table's as `toast.…`), column statistics targets, storage
//! modes, compression and attribute options (pre-data, like pg_dump), REPLICA IDENTITY and
//! CLUSTER ON (post-data: they name an index). Made from the definition's data when a table is
//! built, and only what changed between two definitions when DDL follows the stream (a slave's
//! own tuning of what the master did not change stays).

use super::build::run;
use super::model::{ColumnDef, TableDef};
use crate::sql::{first, qualified, quote_ident, quote_literal};
use pgrx::pg_sys::AlterTableType as At;
use pgrx::pg_sys::NodeTag as Tag;

/// `name = 'value'` of an option `name=value` (a `toast.` prefix kept as a namespace).
fn option_sql(option: &str) -> String {
    let (name, value) = option.split_once('=').unwrap_or((option, ""));
    format!("{} = {}", option_name(name), quote_literal(value))
}

fn option_name(name: &str) -> String {
    match name.split_once('.') {
        Some((ns, n)) => format!("{}.{}", quote_ident(ns), quote_ident(n)),
        None => quote_ident(name),
    }
}

fn option_key(option: &str) -> &str {
    option.split_once('=').map(|(k, _)| k).unwrap_or(option)
}

/// The statement halves that move options `old` to `new`: what to SET, what to RESET.
fn option_changes(old: &[String], new: &[String]) -> (Vec<String>, Vec<String>) {
    let set = new
        .iter()
        .filter(|o| !old.contains(o))
        .map(|o| option_sql(o))
        .collect();
    let reset = old
        .iter()
        .map(|o| option_key(o))
        .filter(|k| !new.iter().any(|n| option_key(n) == *k))
        .map(option_name)
        .collect();
    (set, reset)
}

/// `ALTER TABLE table action`, checked to be exactly that one subcommand.
fn alter_table(table: &str, action: &str, subtype: At::Type) {
    run(
        table,
        &format!("ALTER TABLE {table} {action}"),
        Tag::T_AlterTableStmt,
        Some(subtype),
    )
}

/// Storage parameters and column settings of `new` (a table or partition of this slave, by
/// its name in `new`), those that differ from `old` (None: every one that is not a default).
pub fn relation(old: Option<&TableDef>, new: &TableDef) {
    let table = qualified(&new.schema, &new.table);
    let alter = |action: String, subtype| alter_table(&table, &action, subtype);
    let (set, reset) = option_changes(old.map(|o| &o.options[..]).unwrap_or(&[]), &new.options);
    if !reset.is_empty() {
        alter(
            format!("RESET ({})", reset.join(", ")),
            At::AT_ResetRelOptions,
        );
    }
    if !set.is_empty() {
        alter(format!("SET ({})", set.join(", ")), At::AT_SetRelOptions);
    }
    let none = unset_column();
    for c in &new.columns {
        let o = match old {
            Some(old) => match old.columns.iter().find(|o| o.attnum == c.attnum) {
                Some(o) => o,
                None => &none,
            },
            None => &none,
        };
        let col = format!("ALTER COLUMN {}", quote_ident(&c.name));
        if o.statistics != c.statistics {
            let n = c.statistics.unwrap_or(-1);
            alter(format!("{col} SET STATISTICS {n}"), At::AT_SetStatistics);
        }
        if o.storage != c.storage {
            let mode = c
                .storage
                .clone()
                .unwrap_or_else(|| type_storage(&table, &c.name));
            let mode = match mode.as_str() {
                "plain" => "PLAIN",
                "external" => "EXTERNAL",
                "main" => "MAIN",
                _ => "EXTENDED",
            };
            alter(format!("{col} SET STORAGE {mode}"), At::AT_SetStorage);
        }
        if o.compression != c.compression {
            let method = match c.compression.as_deref() {
                Some("pglz") => "pglz",
                Some("lz4") => "lz4",
                _ => "DEFAULT",
            };
            alter(
                format!("{col} SET COMPRESSION {method}"),
                At::AT_SetCompression,
            );
        }
        let (set, reset) = option_changes(&o.options, &c.options);
        if !reset.is_empty() {
            alter(
                format!("{col} RESET ({})", reset.join(", ")),
                At::AT_ResetOptions,
            );
        }
        if !set.is_empty() {
            alter(format!("{col} SET ({})", set.join(", ")), At::AT_SetOptions);
        }
    }
}

/// A column with every setting at its default.
fn unset_column() -> ColumnDef {
    ColumnDef {
        name: String::new(),
        attnum: 0,
        typ: super::model::Named {
            schema: String::new(),
            name: String::new(),
        },
        typmod: -1,
        not_null: false,
        default: None,
        identity: None,
        generated: None,
        collation: None,
        comment: None,
        statistics: None,
        storage: None,
        compression: None,
        options: Vec::new(),
    }
}

/// The storage mode of column `column`'s type on this slave (its default).
fn type_storage(table: &str, column: &str) -> String {
    first::<String>(
        "SELECT CASE t.typstorage WHEN 'p' THEN 'plain' WHEN 'e' THEN 'external' \
                WHEN 'm' THEN 'main' ELSE 'extended' END \
         FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
         WHERE a.attrelid = pg_catalog.to_regclass($1)::oid AND a.attname = $2",
        &[table.into(), column.into()],
        "reading a column's type",
    )
    .unwrap_or_else(|| "extended".to_string())
}

/// REPLICA IDENTITY and CLUSTER ON of `new`, when they differ from `old` (None: when they are
/// not the defaults); its indexes exist.
pub fn indexes(old: Option<&TableDef>, new: &TableDef) {
    let table = qualified(&new.schema, &new.table);
    let alter = |action: String, subtype| alter_table(&table, &action, subtype);
    let identity = |d: &TableDef| (d.replica_identity.clone(), d.replica_index.clone());
    if old.map(identity).unwrap_or_default() != identity(new) {
        let action = match (new.replica_identity.as_deref(), &new.replica_index) {
            (Some("full"), _) => "FULL".to_string(),
            (Some("nothing"), _) => "NOTHING".to_string(),
            (Some("index"), Some(i)) => format!("USING INDEX {}", quote_ident(i)),
            _ => "DEFAULT".to_string(),
        };
        alter(format!("REPLICA IDENTITY {action}"), At::AT_ReplicaIdentity);
    }
    if old.and_then(|o| o.cluster_on.clone()) != new.cluster_on {
        match &new.cluster_on {
            Some(i) => alter(format!("CLUSTER ON {}", quote_ident(i)), At::AT_ClusterOn),
            None => alter("SET WITHOUT CLUSTER".to_string(), At::AT_DropCluster),
        }
    }
}
