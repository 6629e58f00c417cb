//! Table registry on the master: `rserv_add_table` / `rserv_remove_table`, the capture
//! triggers they install, and the identity (key) and watched columns of each table. The
//! identity rules are shared with the slave's registry (`slave_registry.rs`).
//!
//! Registration is idempotent and self-repairing: calling it again with the same arguments is a
//! NOTICE, a missing trigger is put back, and every trigger rserv creates depends on the
//! extension so `DROP EXTENSION rserv` removes them all.

use crate::catalog::{
    ext_schema, table_columns, table_info, Column, RegClass, TableInfo, CAPTURE_TRIGGER,
    PART_TRUNCATE_TRIGGER, TRUNCATE_TRIGGER,
};
use crate::error::{fail, SpiOrFail};
use crate::security::{
    definer, internal_ddl, internal_definer, require_replicator, require_table_owner,
};
use crate::sql::{call_hint, first, quote_ident, quote_literal};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Types whose text form depends on session settings or catalog state, so two sessions could
/// disagree on a row's identity (also as a domain's base type or an array's element type).
const UNSTABLE_KEY_TYPES: &[pg_sys::Oid] = &[
    pg_sys::MONEYOID,
    pg_sys::REGCLASSOID,
    pg_sys::REGPROCOID,
    pg_sys::REGPROCEDUREOID,
    pg_sys::REGOPEROID,
    pg_sys::REGOPERATOROID,
    pg_sys::REGTYPEOID,
    pg_sys::REGCONFIGOID,
    pg_sys::REGDICTIONARYOID,
    pg_sys::REGNAMESPACEOID,
    pg_sys::REGROLEOID,
    pg_sys::REGCOLLATIONOID,
];

fn unstable_key_type(typoid: pg_sys::Oid) -> bool {
    // SAFETY: syscache look-ups of an existing type
    unsafe {
        let base = pg_sys::getBaseType(typoid);
        let elem = pg_sys::get_element_type(base);
        let t = if elem == pg_sys::InvalidOid {
            base
        } else {
            pg_sys::getBaseType(elem)
        };
        UNSTABLE_KEY_TYPES.contains(&t)
    }
}

/// The table argument of a registration function; NULL is an error that names the function.
pub fn required(tbl: Option<RegClass>, func: &str) -> pg_sys::Oid {
    match tbl {
        Some(t) => t.0,
        None => fail(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("rserv: {func}(): the table must not be NULL"),
            format!("name the table, e.g. SELECT {func}('public.customer')"),
        ),
    }
}

/// Unique indexes usable as row identity: valid, not partial, no expressions, every column NOT
/// NULL. The primary key, if any, comes first.
fn identity_candidates(reloid: pg_sys::Oid) -> Vec<(bool, Vec<String>)> {
    Spi::connect(|client| {
        let tab = client.select(
            "SELECT i.indisprimary, \
                    array_agg(a.attname::text ORDER BY k.ord), bool_and(a.attnotnull) \
             FROM pg_catalog.pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = $1 AND i.indisunique AND i.indisvalid \
               AND i.indpred IS NULL AND i.indexprs IS NULL \
               AND k.ord <= i.indnkeyatts \
             GROUP BY i.indexrelid, i.indisprimary \
             ORDER BY i.indisprimary DESC, i.indexrelid",
            None,
            &[reloid.into()],
        )?;
        let mut out = Vec::new();
        for r in tab {
            let primary = r.get::<bool>(1)?.unwrap_or(false);
            let cols = r.get::<Vec<String>>(2)?.unwrap_or_default();
            if r.get::<bool>(3)?.unwrap_or(false) {
                out.push((primary, cols));
            }
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading the table's unique indexes")
}

/// Only permanent ordinary and partitioned tables can be replicated: a temporary table has no
/// master state to follow, and an unlogged one is emptied by crash recovery without any trigger
/// firing, which would leave a slave silently different. A partitioned table is replicated with
/// every partition it has and will have.
pub fn check_table_kind(info: &TableInfo) {
    let table = info.qualified();
    match info.relkind.as_str() {
        "r" | "p" => {}
        _ => fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} is not a table"),
            "only ordinary tables can be replicated",
        ),
    }
    match info.persistence.as_str() {
        "t" => fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} is a temporary table"),
            "temporary tables cannot be replicated",
        ),
        "u" => fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} is an unlogged table"),
            format!(
                "crash recovery empties unlogged tables without telling rserv; make it logged first: ALTER TABLE {table} SET LOGGED"
            ),
        ),
        _ => {}
    }
    let member = first::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_depend WHERE classid = 'pg_catalog.pg_class'::regclass \
         AND objid = $1 AND deptype = 'e')",
        &[info.reloid.into()],
        "checking extension membership",
    )
    .unwrap_or(false);
    if member {
        fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} belongs to an extension"),
            "tables of extensions (such as rserv's own catalog) are not replicated",
        );
    }
}

/// Columns named by the user: one column name exactly as written, or a comma-separated list.
fn named_columns(info: &TableInfo, cols: &[Column], column_name: &str) -> Vec<String> {
    let exists = |n: &str| cols.iter().any(|c| c.name == n);
    let names: Vec<String> = if exists(column_name) {
        vec![column_name.to_string()]
    } else {
        column_name
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    for n in &names {
        if !exists(n) {
            let list: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
            fail(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "rserv: column \"{n}\" does not exist in table {}",
                    info.qualified()
                ),
                format!("columns of {} are: {}", info.qualified(), list.join(", ")),
            );
        }
    }
    names
}

/// Row identity and watched columns for a registration. `watched` None = every column.
pub struct Identity {
    pub key: Vec<String>,
    pub watched: Option<Vec<String>>,
}

/// `registered`: the identity of an existing registration, which stays the identity when
/// `column_name` names watched columns (or nothing).
pub fn resolve_identity(
    info: &TableInfo,
    column_name: Option<&str>,
    registered: Option<&Vec<String>>,
) -> Identity {
    let table = info.qualified();
    let cols = table_columns(info.reloid);
    let candidates = identity_candidates(info.reloid);
    let named = column_name.map(|c| named_columns(info, &cols, c));

    // A column list that is exactly a unique NOT NULL key is the identity (`MasterAddTable db
    // test k`); anything else names watched columns and the primary key is the identity.
    let as_key = named.as_ref().and_then(|n| {
        let mut want = n.clone();
        want.sort();
        candidates.iter().find(|(_, c)| {
            let mut have = c.clone();
            have.sort();
            have == want
        })
    });
    let identity = match (as_key, &named) {
        (Some((_, key)), _) => Identity {
            key: key.clone(),
            watched: None,
        },
        (None, named) => match registered.or_else(|| {
            candidates
                .iter()
                .find(|(primary, _)| *primary)
                .map(|(_, c)| c)
        }) {
            Some(pk) => Identity {
                key: pk.clone(),
                watched: named.clone(),
            },
            None => {
                let uniques: Vec<String> = candidates
                    .iter()
                    .map(|(_, c)| format!("'{}'", c.join(",")))
                    .collect();
                let hint = if uniques.is_empty() {
                    format!("add a primary key: ALTER TABLE {table} ADD PRIMARY KEY (...)")
                } else {
                    format!(
                        "add a primary key, or pass a unique NOT NULL key as column_name: {}",
                        uniques.join(" or ")
                    )
                };
                let what = match named {
                    Some(n) => format!(
                        "rserv: table {table} has no primary key and \"{}\" is not a unique NOT NULL key",
                        n.join(",")
                    ),
                    None => format!("rserv: table {table} has no primary key"),
                };
                fail(PgSqlErrorCode::ERRCODE_INVALID_TABLE_DEFINITION, what, hint)
            }
        },
    };
    for k in &identity.key {
        if let Some(c) = cols.iter().find(|c| &c.name == k) {
            if unstable_key_type(c.type_oid) {
                fail(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!(
                        "rserv: key column \"{k}\" of table {table} has type {}, whose text form depends on session settings",
                        c.type_name
                    ),
                    "use a primary key of another type",
                );
            }
        }
    }
    identity
}

fn describe(identity: &Identity) -> String {
    let watched = match &identity.watched {
        None => "all columns".to_string(),
        Some(w) => w.join(", "),
    };
    format!(
        "identity ({}), watched: {}",
        identity.key.join(", "),
        watched
    )
}

pub fn trigger_oid(reloid: pg_sys::Oid, name: &str) -> Option<pg_sys::Oid> {
    first::<pg_sys::Oid>(
        "SELECT oid FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2",
        &[reloid.into(), name.into()],
        "looking up a trigger",
    )
}

/// Make the trigger go away with the extension: an AUTO dependency, like an index on its table.
pub fn depend_on_extension(reloid: pg_sys::Oid, trigger: &str) {
    let ext = first::<pg_sys::Oid>(
        "SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'rserv'",
        &[],
        "looking up the extension",
    );
    if let (Some(ext), Some(tg)) = (ext, trigger_oid(reloid, trigger)) {
        let depender = pg_sys::ObjectAddress {
            classId: pg_sys::TriggerRelationId,
            objectId: tg,
            objectSubId: 0,
        };
        let referenced = pg_sys::ObjectAddress {
            classId: pg_sys::ExtensionRelationId,
            objectId: ext,
            objectSubId: 0,
        };
        // SAFETY: both addresses name existing catalog rows
        unsafe {
            pg_sys::recordDependencyOn(
                &depender,
                &referenced,
                pg_sys::DependencyType::DEPENDENCY_AUTO,
            );
        }
    }
}

pub fn drop_trigger(reloid: pg_sys::Oid, table: &str, name: &str) {
    if trigger_oid(reloid, name).is_some() {
        let _internal = internal_ddl();
        Spi::run(&format!("DROP TRIGGER {} ON {table}", quote_ident(name)))
            .or_fail("dropping a trigger");
    }
}

fn attnums(cols: &[Column], names: &[String]) -> Vec<i16> {
    names
        .iter()
        .filter_map(|n| cols.iter().find(|c| &c.name == n).map(|c| c.attnum))
        .collect()
}

/// (Re)create the capture triggers of a registered table. Their arguments hold attribute
/// numbers, which follow column renames. On a partitioned table the row trigger is cloned by
/// PostgreSQL onto every partition, present and future; its TRUNCATE trigger runs before the
/// partitions are emptied, and each partition gets a trigger of its own for a TRUNCATE of just
/// that partition (`reconcile_partitions`).
fn install_capture_triggers(
    reloid: pg_sys::Oid,
    table: &str,
    key: &[i16],
    watched: Option<&[i16]>,
) {
    let schema = ext_schema();
    let _internal = internal_ddl();
    drop_trigger(reloid, table, CAPTURE_TRIGGER);
    drop_trigger(reloid, table, TRUNCATE_TRIGGER);
    let mut args = vec![quote_literal(&format!("@{}", key.len()))];
    args.extend(key.iter().map(|k| quote_literal(&k.to_string())));
    if let Some(w) = watched {
        args.extend(w.iter().map(|c| quote_literal(&c.to_string())));
    }
    let partitioned = table_info(reloid).relkind == "p";
    Spi::run(&format!(
        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {table} \
         FOR EACH ROW EXECUTE FUNCTION {schema}._rserv_log_({})",
        quote_ident(CAPTURE_TRIGGER),
        args.join(", ")
    ))
    .or_fail("creating the capture trigger");
    let (when, truncate_args) = if partitioned {
        ("BEFORE", "'@root'")
    } else {
        ("AFTER", "")
    };
    Spi::run(&format!(
        "CREATE TRIGGER {} {when} TRUNCATE ON {table} \
         FOR EACH STATEMENT EXECUTE FUNCTION {schema}._rserv_log_({truncate_args})",
        quote_ident(TRUNCATE_TRIGGER)
    ))
    .or_fail("creating the truncate trigger");
    // ALWAYS: changes a slave applies (as replica) are captured too, so it can feed a cascade.
    for t in [CAPTURE_TRIGGER, TRUNCATE_TRIGGER] {
        enable_always(reloid, table, t);
    }
    if partitioned {
        reconcile_partitions(&schema, reloid, key, false);
    }
}

fn enable_always(reloid: pg_sys::Oid, table: &str, trigger: &str) {
    Spi::run(&format!(
        "ALTER TABLE {table} ENABLE ALWAYS TRIGGER {}",
        quote_ident(trigger)
    ))
    .or_fail("enabling the capture trigger");
    depend_on_extension(reloid, trigger);
}

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
fn reconcile_partitions(s: &str, root: pg_sys::Oid, key: &[i16], log_rows: bool) {
    let _internal = internal_ddl();
    let schema = s;
    let leaves = leaf_partitions(root);
    let known = crate::sql::column::<pg_sys::Oid>(
        &format!("SELECT part FROM {s}._rserv_partitions_ WHERE root = $1"),
        &[root.into()],
        "reading known partitions",
    );
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
        if trigger_oid(*part, PART_TRUNCATE_TRIGGER).is_none() {
            Spi::run(&format!(
                "CREATE TRIGGER {} BEFORE TRUNCATE ON {name} \
                 FOR EACH STATEMENT EXECUTE FUNCTION {schema}._rserv_log_({})",
                quote_ident(PART_TRUNCATE_TRIGGER),
                args.join(", ")
            ))
            .or_fail("creating a partition's truncate trigger");
            enable_always(*part, name, PART_TRUNCATE_TRIGGER);
        }
        Spi::run_with_args(
            &format!("INSERT INTO {s}._rserv_partitions_ (part, root) VALUES ($1, $2) ON CONFLICT DO NOTHING"),
            &[(*part).into(), root.into()],
        )
        .or_fail("recording a partition");
        if log_rows {
            // SAFETY: appends to rserv's own log
            unsafe { crate::capture::log_rows_of(log_oid, root, *part, &root_keys, false) };
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
                unsafe { crate::capture::log_rows_of(log_oid, root, *part, &root_keys, true) };
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
/// brought up to date (see `reconcile_partitions`); on a slave, every partition of a received
/// partitioned table refuses local writes, and one that left such a table does not any more.
#[pg_extern(volatile, security_definer)]
fn _rserv_reconcile_partitions_() {
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
    let roots = keyed_tables(
        &s,
        "_rserv_tables_ t JOIN pg_catalog.pg_class c ON c.oid = t.reloid WHERE c.relkind = 'p'",
    );
    for (root, key) in roots {
        let cols = table_columns(root);
        reconcile_partitions(&s, root, &attnums(&cols, &key), true);
    }
    crate::slave_registry::reconcile_protection(&s);
}

/// A table's registration on this master: key column names, watched column names and their
/// attribute numbers (None: every column is watched).
struct Registration {
    key: Vec<String>,
    watched: Option<Vec<String>>,
    watched_attnums: Option<Vec<i16>>,
}

fn registration(s: &str, reloid: pg_sys::Oid) -> Option<Registration> {
    Spi::connect(|client| {
        let tab = client.select(
            &format!(
                "SELECT key::text[], watched::text[], watched_attnums FROM {s}._rserv_tables_ \
                 WHERE reloid = $1"
            ),
            None,
            &[reloid.into()],
        )?;
        let mut out = None;
        for r in tab {
            out = Some(Registration {
                key: r.get::<Vec<String>>(1)?.unwrap_or_default(),
                watched: r.get::<Vec<String>>(2)?,
                watched_attnums: r.get::<Vec<i16>>(3)?,
            });
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading _rserv_tables_")
}

fn to_opt_vec(v: Option<Vec<String>>) -> Option<Vec<Option<String>>> {
    v.map(|v| v.into_iter().map(Some).collect())
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

/// Register a table on the master. `column_name` is either the table's identity (a column,
/// or comma-separated columns, with a unique index and NOT NULL) or a column to watch: then
/// only UPDATEs that change a watched column are replicated (INSERT and DELETE always are),
/// and calling again with another column adds it. Without it, every column is watched.
#[pg_extern(volatile, security_definer)]
fn rserv_add_table(tbl: Option<RegClass>, column_name: default!(Option<String>, "NULL")) {
    let _definer = definer();
    let reloid = required(tbl, "rserv_add_table");
    let info = table_info(reloid);
    check_table_kind(&info);
    check_partition_overlap(&info, "_rserv_tables_", "rserv_remove_table");
    let table = info.qualified();
    // What the slaves receive is a replication decision: a table owner who may not replicate
    // could otherwise have their rows sent into a slave table of the same name, someone
    // else's. And the capture trigger then runs as the owner on every change.
    require_replicator("rserv_add_table");
    require_table_owner(info.owner, &table, "rserv_add_table");
    let s = ext_schema();

    let existing = registration(&s, reloid).map(|r| (r.key, r.watched));
    let mut identity = resolve_identity(
        &info,
        column_name.as_deref(),
        existing.as_ref().map(|(key, _)| key),
    );
    let cols = table_columns(reloid);

    if let Some((old_key, old_watched)) = existing {
        if old_key != identity.key {
            fail(
                PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
                format!(
                    "rserv: table {table} is already registered with identity ({}), not ({})",
                    old_key.join(", "),
                    identity.key.join(", ")
                ),
                format!(
                    "to change its identity: {}, then register it again",
                    call_hint("rserv_remove_table", &table, "")
                ),
            );
        }
        // Watched columns accumulate; "all columns" absorbs everything.
        identity.watched = match (old_watched, identity.watched.take()) {
            (None, _) | (_, None) => None,
            (Some(mut old), Some(new)) => {
                for c in new {
                    if !old.contains(&c) {
                        old.push(c);
                    }
                }
                Some(old)
            }
        };
        let unchanged = first::<bool>(
            &format!(
                "SELECT watched::text[] IS NOT DISTINCT FROM $2 \
                        AND watched_attnums IS NOT DISTINCT FROM $3::int2[] \
                 FROM {s}._rserv_tables_ WHERE reloid = $1"
            ),
            &[
                reloid.into(),
                to_opt_vec(identity.watched.clone()).into(),
                identity.watched.as_ref().map(|w| attnums(&cols, w)).into(),
            ],
            "comparing registrations",
        )
        .unwrap_or(false);
        let triggers_present = trigger_oid(reloid, CAPTURE_TRIGGER).is_some()
            && trigger_oid(reloid, TRUNCATE_TRIGGER).is_some();
        crate::sequences::register_table_sequences(&s, reloid);
        if unchanged && triggers_present {
            notice!(
                "rserv: table {} is already registered for replication ({}); nothing changed",
                table,
                describe(&identity)
            );
            return;
        }
        Spi::run_with_args(
            &format!(
                "UPDATE {s}._rserv_tables_ SET watched = $2::name[], watched_attnums = $5::int2[], \
                        cname = coalesce($3, cname), tname = $4 \
                 WHERE reloid = $1"
            ),
            &[
                reloid.into(),
                to_opt_vec(identity.watched.clone()).into(),
                column_name.clone().into(),
                table.clone().into(),
                identity.watched.as_ref().map(|w| attnums(&cols, w)).into(),
            ],
        )
        .or_fail("updating _rserv_tables_");
    } else {
        Spi::run_with_args(
            &format!(
                "INSERT INTO {s}._rserv_tables_ (reloid, tname, cname, key, watched, watched_attnums) \
                 VALUES ($1, $2, $3, $4::name[], $5::name[], $6::int2[])"
            ),
            &[
                reloid.into(),
                table.clone().into(),
                column_name.clone().into(),
                identity.key.clone().into(),
                to_opt_vec(identity.watched.clone()).into(),
                identity.watched.as_ref().map(|w| attnums(&cols, w)).into(),
            ],
        )
        .or_fail("inserting into _rserv_tables_");
    }
    crate::sequences::register_table_sequences(&s, reloid);
    let watched = identity.watched.as_ref().map(|w| attnums(&cols, w));
    install_capture_triggers(
        reloid,
        &table,
        &attnums(&cols, &identity.key),
        watched.as_deref(),
    );
    crate::ddl::remember_definition(&s, reloid);
}

/// (reloid, identity) of the registered tables in `from` (`_rserv_tables_ t ...` or
/// `_rserv_slave_tables_ t ...`, in the extension's schema), by oid.
pub fn keyed_tables(s: &str, from: &str) -> Vec<(pg_sys::Oid, Vec<String>)> {
    Spi::connect(|client| {
        client
            .select(
                &format!("SELECT t.reloid, t.key::text[] FROM {s}.{from} ORDER BY t.reloid"),
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                    r.get::<Vec<String>>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("listing the registered tables")
}

/// Register table `reloid` on this master with identity `key` and every column watched, unless
/// it is registered already: a slave promoted to master keeps the identities it received its
/// tables with (the caller checked it may act on the table).
pub fn register_promoted(s: &str, reloid: pg_sys::Oid, key: &[String]) {
    if registration(s, reloid).is_some() {
        return; // a cascading slave replicated it already
    }
    let info = table_info(reloid);
    check_table_kind(&info);
    let table = info.qualified();
    let cols = table_columns(reloid);
    Spi::run_with_args(
        &format!("INSERT INTO {s}._rserv_tables_ (reloid, tname, key) VALUES ($1, $2, $3::name[])"),
        &[reloid.into(), table.clone().into(), key.to_vec().into()],
    )
    .or_fail("inserting into _rserv_tables_");
    crate::sequences::register_table_sequences(s, reloid);
    install_capture_triggers(reloid, &table, &attnums(&cols, key), None);
    crate::ddl::remember_definition(s, reloid);
}

/// Stop capturing table `reloid` on this master (see rserv_remove_table); returns its identity.
pub fn unregister(s: &str, reloid: pg_sys::Oid) -> Option<Vec<String>> {
    let key = registration(s, reloid).map(|r| r.key);
    let table = table_info(reloid).qualified();
    Spi::run_with_args(
        &format!("DELETE FROM {s}._rserv_tables_ WHERE reloid = $1"),
        &[reloid.into()],
    )
    .or_fail("deleting from _rserv_tables_");
    drop_trigger(reloid, &table, CAPTURE_TRIGGER);
    drop_trigger(reloid, &table, TRUNCATE_TRIGGER);
    for part in crate::sql::column::<pg_sys::Oid>(
        &format!("SELECT part FROM {s}._rserv_partitions_ WHERE root = $1"),
        &[reloid.into()],
        "reading the partitions",
    ) {
        let name = table_info(part).qualified();
        drop_trigger(part, &name, PART_TRUNCATE_TRIGGER);
    }
    Spi::run_with_args(
        &format!("DELETE FROM {s}._rserv_partitions_ WHERE root = $1"),
        &[reloid.into()],
    )
    .or_fail("forgetting the partitions");
    crate::sequences::forget_table_sequences(s, reloid);
    for log in ["_rserv_log_", "_rserv_ddl_"] {
        Spi::run_with_args(
            &format!("DELETE FROM {s}.{log} WHERE reloid = $1"),
            &[reloid.into()],
        )
        .or_fail("deleting log rows");
    }
    key
}

/// Stop replicating a table from this master: drops its triggers, its registration and its
/// pending log rows. The table and its data stay.
#[pg_extern(volatile, security_definer)]
fn rserv_remove_table(tbl: Option<RegClass>) {
    let _definer = definer();
    let reloid = required(tbl, "rserv_remove_table");
    let info = table_info(reloid);
    let table = info.qualified();
    require_table_owner(info.owner, &table, "rserv_remove_table");
    let s = ext_schema();
    if unregister(&s, reloid).is_none() {
        notice!(
            "rserv: table {} is not registered on this master; nothing to remove",
            table
        );
    }
}

/// Install the capture triggers of registered table `reloid` again from its registration, and
/// register the sequences it uses (the upgrade from 1.0, whose triggers named columns instead of
/// numbering them and which replicated no sequences, uses this).
#[pg_extern(volatile, security_definer)]
fn _rserv_reinstall_capture_(reloid: pg_sys::Oid) {
    let _definer = internal_definer();
    let s = ext_schema();
    let registered = registration(&s, reloid).map(|r| (r.key, r.watched_attnums));
    let Some((key, watched)) = registered else {
        return;
    };
    let table = table_info(reloid).qualified();
    let cols = table_columns(reloid);
    crate::sequences::register_table_sequences(&s, reloid);
    install_capture_triggers(reloid, &table, &attnums(&cols, &key), watched.as_deref());
    crate::ddl::remember_definition(&s, reloid);
}

/// After an ALTER TABLE of a registered master table (called by the DDL guard): watched columns
/// follow renames (their names in `_rserv_tables_` are refreshed), and a dropped watched column
/// leaves the registration with a WARNING; when none is left, every column is watched. Never a
/// silent narrowing of what is replicated.
#[pg_extern(volatile, security_definer)]
fn _rserv_refresh_watched_(reloid: pg_sys::Oid) {
    let _definer = internal_definer();
    let s = ext_schema();
    let registered = registration(&s, reloid).and_then(|r| r.watched_attnums.zip(r.watched));
    let Some((attnums_now, names_before)) = registered else {
        return; // every column is watched, or not registered
    };
    let info = table_info(reloid);
    let table = info.qualified();
    let cols = table_columns(reloid);
    let live: Vec<&Column> = attnums_now
        .iter()
        .filter_map(|a| cols.iter().find(|c| c.attnum == *a))
        .collect();
    let gone: Vec<String> = attnums_now
        .iter()
        .zip(&names_before)
        .filter(|(a, _)| !cols.iter().any(|c| c.attnum == **a))
        .map(|(_, n)| quote_ident(n))
        .collect();
    let (names, kept): (Option<Vec<String>>, Option<Vec<i16>>) = if live.is_empty() {
        warning!(
            "rserv: watched column {} of replicated table {} was dropped; it was the last one, so every column of the table is watched from now on, and the table goes whole to every slave with the next change set",
            gone.join(", "),
            table
        );
        // changes of its other columns were not sent while they were unwatched: from now on
        // every column must be equal on the slaves
        Spi::run_with_args(
            &format!("DELETE FROM {s}._rserv_server_tables_ WHERE reloid = $1"),
            &[reloid.into()],
        )
        .or_fail("scheduling fresh copies");
        (None, None)
    } else {
        if !gone.is_empty() {
            warning!(
                "rserv: watched column {} of replicated table {} was dropped and is no longer watched; watched now: {}",
                gone.join(", "),
                table,
                live.iter().map(|c| quote_ident(&c.name)).collect::<Vec<_>>().join(", ")
            );
        }
        (
            Some(live.iter().map(|c| c.name.clone()).collect()),
            Some(live.iter().map(|c| c.attnum).collect()),
        )
    };
    Spi::run_with_args(
        &format!(
            "UPDATE {s}._rserv_tables_ SET watched = $2::name[], watched_attnums = $3::int2[] \
             WHERE reloid = $1"
        ),
        &[reloid.into(), to_opt_vec(names).into(), kept.clone().into()],
    )
    .or_fail("updating _rserv_tables_");
    if kept.as_ref().map(Vec::len) != Some(attnums_now.len()) {
        let key = first::<Vec<String>>(
            &format!("SELECT key::text[] FROM {s}._rserv_tables_ WHERE reloid = $1"),
            &[reloid.into()],
            "reading the registration",
        )
        .unwrap_or_default();
        install_capture_triggers(reloid, &table, &attnums(&cols, &key), kept.as_deref());
    }
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn count(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).unwrap().unwrap_or(-1)
    }

    #[pg_test]
    fn registering_twice_changes_nothing() {
        Spi::run(
            "CREATE TABLE customer (cust_id int PRIMARY KEY, lastname text);
             SELECT rserv_add_table('customer', 'lastname');
             SELECT rserv_add_table('customer', 'lastname');",
        )
        .unwrap();
        assert_eq!(count("SELECT count(*) FROM _rserv_tables_"), 1);
        assert_eq!(
            count("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'customer'::regclass"),
            2
        );
    }

    #[pg_test]
    fn unique_not_null_column_is_the_identity() {
        Spi::run(
            "CREATE TABLE test (i text, k int NOT NULL UNIQUE, l int);
             SELECT rserv_add_table('test', 'k');",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT key::text FROM _rserv_tables_").unwrap(),
            Some("{k}".to_string())
        );
    }

    #[pg_test(error = "rserv: table public.nokey has no primary key")]
    fn no_identity_is_refused() {
        Spi::run("CREATE TABLE nokey (a int); SELECT rserv_add_table('nokey');").unwrap();
    }

    #[pg_test(error = "rserv: public.ul is an unlogged table")]
    fn unlogged_tables_are_refused() {
        Spi::run("CREATE UNLOGGED TABLE ul (a int PRIMARY KEY); SELECT rserv_add_table('ul');")
            .unwrap();
    }

    #[pg_test(error = "rserv: column \"nosuch\" does not exist in table public.c")]
    fn unknown_column_is_refused() {
        Spi::run("CREATE TABLE c (id int PRIMARY KEY); SELECT rserv_add_table('c', 'nosuch');")
            .unwrap();
    }

    #[pg_test]
    fn remove_table_drops_triggers_and_log() {
        Spi::run(
            "CREATE TABLE t (id int PRIMARY KEY); SELECT rserv_add_table('t');
             INSERT INTO t VALUES (1); SELECT rserv_remove_table('t');",
        )
        .unwrap();
        assert_eq!(
            count("SELECT count(*) FROM pg_trigger WHERE tgrelid = 't'::regclass"),
            0
        );
        assert_eq!(count("SELECT count(*) FROM _rserv_log_"), 0);
        assert_eq!(count("SELECT count(*) FROM _rserv_tables_"), 0);
    }

    #[pg_test(error = "rserv: cannot drop public.t: it is replicated")]
    fn dropping_a_replicated_table_is_refused() {
        Spi::run("CREATE TABLE t (id int PRIMARY KEY); SELECT rserv_add_table('t'); DROP TABLE t;")
            .unwrap();
    }

    #[pg_test(
        error = "rserv: this ALTER TABLE removes or renames key column \"id\" of replicated table public.t"
    )]
    fn renaming_a_key_column_is_refused() {
        Spi::run(
            "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT rserv_slave_add_table('t');
             ALTER TABLE t RENAME COLUMN id TO ident;",
        )
        .unwrap();
    }

    #[pg_test]
    fn watched_columns_follow_renames_and_drops() {
        Spi::run(
            "CREATE TABLE t (id int PRIMARY KEY, w text, x text, y text);
             SELECT rserv_add_table('t', 'w');
             SELECT rserv_add_table('t', 'x');
             ALTER TABLE t RENAME COLUMN w TO w2;",
        )
        .unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT watched::text FROM _rserv_tables_").unwrap(),
            Some("{w2,x}".to_string())
        );
        Spi::run("ALTER TABLE t DROP COLUMN x").unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT watched::text FROM _rserv_tables_").unwrap(),
            Some("{w2}".to_string())
        );
        Spi::run("ALTER TABLE t DROP COLUMN w2").unwrap();
        assert_eq!(
            Spi::get_one::<bool>("SELECT watched IS NULL FROM _rserv_tables_").unwrap(),
            Some(true)
        );
    }

    #[pg_test]
    fn other_ddl_on_replicated_tables_is_fine() {
        Spi::run(
            "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT rserv_add_table('t');
             ALTER TABLE t ADD COLUMN w int; ALTER TABLE t RENAME COLUMN v TO vv;
             CREATE TABLE other (a int); DROP TABLE other;
             SELECT rserv_remove_table('t'); DROP TABLE t;",
        )
        .unwrap();
    }

    #[pg_test(error = "rserv: the capture triggers of replicated table public.t must stay enabled")]
    fn disabling_the_capture_trigger_is_refused() {
        Spi::run(
            "CREATE TABLE t (id int PRIMARY KEY); SELECT rserv_add_table('t');
             ALTER TABLE t DISABLE TRIGGER ALL;",
        )
        .unwrap();
    }
}
