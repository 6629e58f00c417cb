//! Which change sets this slave reads: master and slave may run different rserv releases (a
//! rolling upgrade), so the apply accepts a change set by its format and the features it uses,
//! not by the master's rserv version (docs/snapshot-format.md, Versions). What this slave
//! cannot apply is refused in `rserv_apply_begin`, before anything is applied; the master keeps
//! the changes until the slave confirms them.

use crate::catalog::ext_version;
use crate::error::fail;
use crate::sql::first;
use pgrx::prelude::*;

/// The change-set format this slave reads.
pub const FORMAT: i32 = 1;

/// The features of format 1 added after rserv 1.0.0 that this slave applies: DDL sections
/// (schema changes), the SEQUENCE section and UPSERT sections (rows updated in place).
pub const FEATURES: [&str; 3] = ["ddl", "sequence", "upsert"];

/// Refuse change set `syncid` of a master running rserv `version` unless this slave reads its
/// `format` and every one of its `features`. A caller older than rserv 1.1 names neither
/// (NULL): it sends format 1 with none of the later features, which every slave reads.
pub fn require_readable(
    syncid: i64,
    version: &str,
    format: Option<i32>,
    features: Option<&[String]>,
) {
    let format = format.unwrap_or(FORMAT);
    let unknown: Vec<String> = features
        .unwrap_or_default()
        .iter()
        .filter(|f| !FEATURES.contains(&f.as_str()))
        .map(|f| format!("\"{f}\""))
        .collect();
    let what = if format != FORMAT {
        format!("change-set format {format} (this slave reads format {FORMAT})")
    } else if !unknown.is_empty() {
        let noun = if unknown.len() == 1 {
            "feature"
        } else {
            "features"
        };
        format!("{noun} {}", unknown.join(", "))
    } else {
        return;
    };
    let db = first::<String>(
        "SELECT pg_catalog.current_database()::text",
        &[],
        "naming the database",
    )
    .unwrap_or_default();
    let own = ext_version();
    fail(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!(
            "rserv: slave database \"{db}\" runs rserv {own}, which cannot apply change set {syncid} of a master running rserv {version}: it uses {what}"
        ),
        format!(
            "update rserv on this slave first: install rserv {version} (or later) on its server, then run ALTER EXTENSION rserv UPDATE in \"{db}\"; nothing was applied, and the master keeps the changes until this slave confirms them"
        ),
    )
}
