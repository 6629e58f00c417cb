//! Partitioned tables on the master: a registered partitioned table replicates with every
//! partition it has and will have. Partitions that arrive (CREATE … PARTITION OF, ATTACH) get
//! the TRUNCATE trigger of their own and, with rows, have them logged; partitions that leave
//! (DETACH) have their rows logged as deleted. A table and one of its partitions are never both
//! registered.

use crate::catalog::{ext_schema, table_columns, table_info, TableInfo, PART_TRUNCATE_TRIGGER};
use crate::error::{fail, SpiOrFail};
use crate::registry::{attnums, drop_trigger, enable_always, registration};
use crate::security::{internal_ddl, internal_definer};
use crate::sql::{first, quote_ident, quote_literal};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// The leaf partitions of partitioned table `root` (every level), with their names.
fn leaf_partitions(root: pg_sys::Oid) -> Vec<(pg_sys::Oid, String)> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT t.relid, pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname) \
                 FROM pg_catalog.pg_partition_tree($1) t JOIN pg_catalog.pg_class c ON c.oid = t.relid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE t.isleaf AND t.relid <> $1",
                None,
                &[root.into()],
            )?
            .map(|r| {
                Ok((
                    r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                    r.get::<String>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("listing partitions")
}

/// Bring the partitions rserv knows of a registered partitioned table up to date with its tree:
/// a new partition gets its TRUNCATE trigger, and if it came with rows (ATTACH) each of them is
/// logged as changed; a partition that left the tree (DETACH) has each of its rows logged as
/// deleted, and loses rserv's trigger. `log_rows`: false while the table is being registered
/// (its initial copy carries everything).
pub(crate) fn reconcile_partitions(s: &str, root: pg_sys::Oid, key: &[i16], log_rows: bool) {
    let _internal = internal_ddl();
    let schema = s;
    let leaves = leaf_partitions(root);
    let known = crate::sql::column::<pg_sys::Oid>(
        &format!("SELECT part FROM {s}._rserv_partitions_ WHERE root = $1"),
        &[root.into()],
        "reading known partitions",
    );
    let arrived = leaves.iter().any(|(p, _)| !known.contains(p));
    let left = known.iter().any(|k| !leaves.iter().any(|(p, _)| p == k));
    if log_rows && (arrived || left) {
        // rows arriving or leaving with a partition: a change no slave would receive
        crate::fence::refuse_ddl_while_fenced(&table_info(root).qualified());
    }
    let log_oid = crate::sql::first::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[format!("{s}._rserv_log_").into()],
        "finding the log",
    )
    .unwrap_or(pg_sys::InvalidOid);
    let root_keys: Vec<String> = key.iter().map(|k| k.to_string()).collect();
    let mut args = vec![
        quote_literal("@part"),
        quote_literal(&root.to_u32().to_string()),
    ];
    args.extend(root_keys.iter().map(|k| quote_literal(k)));
    for (part, name) in leaves.iter().filter(|(p, _)| !known.contains(p)) {
        if registration(s, *part).is_some() {
            fail(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!(
                    "rserv: {name} is replicated on its own and cannot become a partition of replicated table {}",
                    table_info(root).qualified()
                ),
                format!("stop replicating it on its own first: SELECT rserv_remove_table('{}')", name.replace('\'', "''")),
            );
        }
        // A new partition's trigger of that name is replaced: its owner may have made it
        // (rserv's capture function is executable by everyone, see capture_check.rs).
        drop_trigger(*part, name, PART_TRUNCATE_TRIGGER);
        Spi::run(&format!(
            "CREATE TRIGGER {} BEFORE TRUNCATE ON {name} \
             FOR EACH STATEMENT EXECUTE FUNCTION {schema}._rserv_log_({})",
            quote_ident(PART_TRUNCATE_TRIGGER),
            args.join(", ")
        ))
        .or_fail("creating a partition's truncate trigger");
        enable_always(*part, name, PART_TRUNCATE_TRIGGER);
        Spi::run_with_args(
            &format!("INSERT INTO {s}._rserv_partitions_ (part, root) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            &[(*part).into(), root.into()],
        )
        .or_fail("recording a partition");
        if log_rows {
            // SAFETY: appends to rserv's own log
            unsafe {
                crate::capture::log_rows_of(
                    log_oid,
                    root,
                    *part,
                    &root_keys,
                    crate::capture::Logged::Updated,
                )
            };
        }
    }
    for part in known
        .iter()
        .filter(|k| !leaves.iter().any(|(p, _)| p == *k))
    {
        let exists = crate::sql::first::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class WHERE oid = $1)",
            &[(*part).into()],
            "looking up a partition",
        )
        .unwrap_or(false);
        if exists {
            if log_rows {
                // SAFETY: appends to rserv's own log
                unsafe {
                    crate::capture::log_rows_of(
                        log_oid,
                        root,
                        *part,
                        &root_keys,
                        crate::capture::Logged::Gone,
                    )
                };
            }
            let name = table_info(*part).qualified();
            drop_trigger(*part, &name, PART_TRUNCATE_TRIGGER);
        }
        Spi::run_with_args(
            &format!("DELETE FROM {s}._rserv_partitions_ WHERE part = $1"),
            &[(*part).into()],
        )
        .or_fail("forgetting a partition");
    }
}

thread_local! {
    static RECONCILING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// After DDL (called by the DDL guard): every registered partitioned table's partitions are
/// brought up to date (see [`reconcile_all`]). rserv's own DDL is left out: the code that runs
/// it reconciles what it changes itself (registrations, a partition a slave follows its master
/// in making or detaching), and most of it (triggers, indexes, constraints of its own) changes
/// no partition tree; reconciling every tree after each of those statements made the initial
/// copy's post-data slow.
#[pg_extern(volatile, security_definer)]
fn _rserv_reconcile_partitions_() {
    if crate::security::in_internal_ddl() {
        return;
    }
    reconcile_all();
}

/// Every registered partitioned table's partitions brought up to date (see
/// `reconcile_partitions`); on a slave, every partition of a received partitioned table refuses
/// local writes, and one that left such a table does not any more.
pub fn reconcile_all() {
    // its own trigger DDL fires the DDL guard, which calls it again
    if RECONCILING.with(|r| r.replace(true)) {
        return;
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            RECONCILING.with(|r| r.set(false));
        }
    }
    let _done = Done;
    let _definer = internal_definer();
    let s = ext_schema();
    let roots = crate::registry::keyed_tables(
        &s,
        "_rserv_tables_ t JOIN pg_catalog.pg_class c ON c.oid = t.reloid WHERE c.relkind = 'p'",
    );
    for (root, key) in roots {
        let cols = table_columns(root);
        reconcile_partitions(&s, root, &attnums(&cols, &key), true);
    }
    crate::slave_registry::reconcile_protection(&s);
}

/// A partitioned table replicates with all its partitions: neither may be registered (in
/// `catalog`, this side's registry) while the other is.
pub fn check_partition_overlap(info: &TableInfo, catalog: &str, remove: &str) {
    let s = ext_schema();
    let table = info.qualified();
    let ancestor = first::<String>(
        &format!(
            "SELECT a.relid::pg_catalog.regclass::text FROM pg_catalog.pg_partition_ancestors($1) AS a(relid) \
             JOIN {s}.{catalog} t ON t.reloid = a.relid WHERE a.relid <> $1 LIMIT 1"
        ),
        &[info.reloid.into()],
        "checking the table's partition ancestors",
    );
    if let Some(root) = ancestor {
        fail(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("rserv: {table} is a partition of replicated table {root}"),
            format!("its rows replicate with {root} already"),
        );
    }
    let partition = first::<String>(
        &format!(
            "SELECT p.relid::pg_catalog.regclass::text FROM pg_catalog.pg_partition_tree($1) p \
             JOIN {s}.{catalog} t ON t.reloid = p.relid WHERE p.relid <> $1 ORDER BY p.level LIMIT 1"
        ),
        &[info.reloid.into()],
        "checking the table's partitions",
    );
    if let Some(part) = partition {
        fail(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("rserv: partition {part} of {table} is replicated on its own"),
            format!(
                "stop replicating it on its own first: SELECT {remove}('{}')",
                part.replace('\'', "''")
            ),
        );
    }
}
