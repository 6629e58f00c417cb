//! Table registry: `rserv_add_table` / `rserv_remove_table` on the master and
//! `rserv_slave_add_table` / `rserv_slave_remove_table` on the slave.
//!
//! Registration is idempotent and self-repairing: calling it again with the same arguments is a
//! NOTICE, a missing trigger is put back, and every trigger rserv creates depends on the
//! extension so `DROP EXTENSION rserv` removes them all.

use crate::common::{
    call_hint, definer, ext_schema, fail, first, quote_ident, quote_literal, require_replicator,
    require_table_owner, table_columns, table_info, Column, RegClass, SpiOrFail, TableInfo,
    CAPTURE_TRIGGER, PROTECT_TRIGGER, TRUNCATE_TRIGGER,
};
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
fn required(tbl: Option<RegClass>, func: &str) -> pg_sys::Oid {
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

fn check_table_kind(info: &TableInfo) {
    let table = info.qualified();
    match info.relkind.as_str() {
        "r" => {}
        "p" => fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} is a partitioned table"),
            "register each of its partitions instead",
        ),
        _ => fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} is not a table"),
            "only ordinary tables can be replicated",
        ),
    }
    if info.persistence == "t" {
        fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {table} is a temporary table"),
            "temporary tables cannot be replicated",
        );
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
struct Identity {
    key: Vec<String>,
    watched: Option<Vec<String>>,
}

/// `registered`: the identity of an existing registration, which stays the identity when
/// `column_name` names watched columns (or nothing).
fn resolve_identity(
    reloid: pg_sys::Oid,
    info: &TableInfo,
    column_name: Option<&str>,
    registered: Option<&Vec<String>>,
) -> Identity {
    let table = info.qualified();
    let cols = table_columns(reloid);
    let candidates = identity_candidates(reloid);
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

fn trigger_oid(reloid: pg_sys::Oid, name: &str) -> Option<pg_sys::Oid> {
    first::<pg_sys::Oid>(
        "SELECT oid FROM pg_catalog.pg_trigger WHERE tgrelid = $1 AND tgname = $2",
        &[reloid.into(), name.into()],
        "looking up a trigger",
    )
}

/// Make the trigger go away with the extension: an AUTO dependency, like an index on its table.
fn depend_on_extension(reloid: pg_sys::Oid, trigger: &str) {
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

fn drop_trigger(reloid: pg_sys::Oid, table: &str, name: &str) {
    if trigger_oid(reloid, name).is_some() {
        Spi::run(&format!("DROP TRIGGER {} ON {table}", quote_ident(name)))
            .or_fail("dropping a trigger");
    }
}

fn install_capture_triggers(reloid: pg_sys::Oid, table: &str, identity: &Identity) {
    let schema = ext_schema();
    drop_trigger(reloid, table, CAPTURE_TRIGGER);
    drop_trigger(reloid, table, TRUNCATE_TRIGGER);
    let mut args = vec![quote_literal(&identity.key.len().to_string())];
    args.extend(identity.key.iter().map(|k| quote_literal(k)));
    if let Some(w) = &identity.watched {
        args.extend(w.iter().map(|c| quote_literal(c)));
    }
    Spi::run(&format!(
        "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {table} \
         FOR EACH ROW EXECUTE FUNCTION {schema}._rserv_log_({})",
        quote_ident(CAPTURE_TRIGGER),
        args.join(", ")
    ))
    .or_fail("creating the capture trigger");
    Spi::run(&format!(
        "CREATE TRIGGER {} AFTER TRUNCATE ON {table} \
         FOR EACH STATEMENT EXECUTE FUNCTION {schema}._rserv_log_()",
        quote_ident(TRUNCATE_TRIGGER)
    ))
    .or_fail("creating the truncate trigger");
    // ALWAYS: changes a slave applies (as replica) are captured too, so it can feed a cascade.
    for t in [CAPTURE_TRIGGER, TRUNCATE_TRIGGER] {
        Spi::run(&format!(
            "ALTER TABLE {table} ENABLE ALWAYS TRIGGER {}",
            quote_ident(t)
        ))
        .or_fail("enabling the capture trigger");
        depend_on_extension(reloid, t);
    }
}

fn to_opt_vec(v: Option<Vec<String>>) -> Option<Vec<Option<String>>> {
    v.map(|v| v.into_iter().map(Some).collect())
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
    let table = info.qualified();
    require_table_owner(reloid, &table, "rserv_add_table");
    let s = ext_schema();

    let existing = Spi::connect(|client| {
        let tab = client.select(
            &format!(
                "SELECT key::text[], watched::text[] FROM {s}._rserv_tables_ WHERE reloid = $1"
            ),
            None,
            &[reloid.into()],
        )?;
        let mut out = None;
        for r in tab {
            out = Some((
                r.get::<Vec<String>>(1)?.unwrap_or_default(),
                r.get::<Vec<String>>(2)?,
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading _rserv_tables_");
    let mut identity = resolve_identity(
        reloid,
        &info,
        column_name.as_deref(),
        existing.as_ref().map(|(key, _)| key),
    );

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
                "SELECT watched::text[] IS NOT DISTINCT FROM $2 FROM {s}._rserv_tables_ WHERE reloid = $1"
            ),
            &[reloid.into(), to_opt_vec(identity.watched.clone()).into()],
            "comparing registrations",
        )
        .unwrap_or(false);
        let triggers_present = trigger_oid(reloid, CAPTURE_TRIGGER).is_some()
            && trigger_oid(reloid, TRUNCATE_TRIGGER).is_some();
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
                "UPDATE {s}._rserv_tables_ SET watched = $2::name[], cname = coalesce($3, cname), tname = $4 \
                 WHERE reloid = $1"
            ),
            &[
                reloid.into(),
                to_opt_vec(identity.watched.clone()).into(),
                column_name.clone().into(),
                table.clone().into(),
            ],
        )
        .or_fail("updating _rserv_tables_");
    } else {
        Spi::run_with_args(
            &format!(
                "INSERT INTO {s}._rserv_tables_ (reloid, tname, cname, key, watched) \
                 VALUES ($1, $2, $3, $4::name[], $5::name[])"
            ),
            &[
                reloid.into(),
                table.clone().into(),
                column_name.clone().into(),
                identity.key.clone().into(),
                to_opt_vec(identity.watched.clone()).into(),
            ],
        )
        .or_fail("inserting into _rserv_tables_");
    }
    install_capture_triggers(reloid, &table, &identity);
}

/// Stop replicating a table from this master: drops its triggers, its registration and its
/// pending log rows. The table and its data stay.
#[pg_extern(volatile, security_definer)]
fn rserv_remove_table(tbl: Option<RegClass>) {
    let _definer = definer();
    let reloid = required(tbl, "rserv_remove_table");
    let info = table_info(reloid);
    let table = info.qualified();
    require_table_owner(reloid, &table, "rserv_remove_table");
    let s = ext_schema();
    let removed = Spi::get_one_with_args::<i64>(
        &format!(
            "WITH d AS (DELETE FROM {s}._rserv_tables_ WHERE reloid = $1 RETURNING 1) \
             SELECT count(*) FROM d"
        ),
        &[reloid.into()],
    )
    .or_fail("deleting from _rserv_tables_")
    .unwrap_or(0);
    drop_trigger(reloid, &table, CAPTURE_TRIGGER);
    drop_trigger(reloid, &table, TRUNCATE_TRIGGER);
    Spi::run_with_args(
        &format!("DELETE FROM {s}._rserv_log_ WHERE reloid = $1"),
        &[reloid.into()],
    )
    .or_fail("deleting log rows");
    if removed == 0 {
        notice!(
            "rserv: table {} is not registered on this master; nothing to remove",
            table
        );
    }
}

/// Register a table on the slave. The identity must match the master's registration;
/// `column_name` is accepted as on the master (a key, or a watched column, which only the
/// master uses). Local writes to the table are refused from now on.
#[pg_extern(volatile, security_definer)]
fn rserv_slave_add_table(tbl: Option<RegClass>, column_name: default!(Option<String>, "NULL")) {
    let _definer = definer();
    let reloid = required(tbl, "rserv_slave_add_table");
    let info = table_info(reloid);
    check_table_kind(&info);
    let table = info.qualified();
    require_table_owner(reloid, &table, "rserv_slave_add_table");
    let s = ext_schema();
    let old_key = first::<Vec<String>>(
        &format!("SELECT key::text[] FROM {s}._rserv_slave_tables_ WHERE reloid = $1"),
        &[reloid.into()],
        "reading _rserv_slave_tables_",
    );
    let identity = resolve_identity(reloid, &info, column_name.as_deref(), old_key.as_ref());
    match old_key {
        Some(k) if k != identity.key => fail(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!(
                "rserv: table {table} is already registered as a slave table with identity ({}), not ({})",
                k.join(", "),
                identity.key.join(", ")
            ),
            format!(
                "to change it: {}, then register it again",
                call_hint("rserv_slave_remove_table", &table, "")
            ),
        ),
        Some(_) if trigger_oid(reloid, PROTECT_TRIGGER).is_some() => {
            notice!(
                "rserv: table {} is already registered as a slave table (identity ({})); nothing changed",
                table,
                identity.key.join(", ")
            );
            return;
        }
        Some(_) => {}
        None => {
            Spi::run_with_args(
                &format!(
                    "INSERT INTO {s}._rserv_slave_tables_ (reloid, tname, cname, key) \
                     VALUES ($1, $2, $3, $4::name[])"
                ),
                &[
                    reloid.into(),
                    table.clone().into(),
                    column_name.into(),
                    identity.key.clone().into(),
                ],
            )
            .or_fail("inserting into _rserv_slave_tables_");
        }
    }
    drop_trigger(reloid, &table, PROTECT_TRIGGER);
    Spi::run(&format!(
        "CREATE TRIGGER {} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON {table} \
         FOR EACH STATEMENT EXECUTE FUNCTION {s}._rserv_protect_()",
        quote_ident(PROTECT_TRIGGER)
    ))
    .or_fail("creating the protection trigger");
    depend_on_extension(reloid, PROTECT_TRIGGER);
}

/// Stop receiving a table on this slave; it becomes an ordinary writable table again.
#[pg_extern(volatile, security_definer)]
fn rserv_slave_remove_table(tbl: Option<RegClass>) {
    let _definer = definer();
    let reloid = required(tbl, "rserv_slave_remove_table");
    let table = table_info(reloid).qualified();
    require_table_owner(reloid, &table, "rserv_slave_remove_table");
    let s = ext_schema();
    let removed = Spi::get_one_with_args::<i64>(
        &format!(
            "WITH d AS (DELETE FROM {s}._rserv_slave_tables_ WHERE reloid = $1 RETURNING 1) \
             SELECT count(*) FROM d"
        ),
        &[reloid.into()],
    )
    .or_fail("deleting from _rserv_slave_tables_")
    .unwrap_or(0);
    drop_trigger(reloid, &table, PROTECT_TRIGGER);
    if removed == 0 {
        notice!(
            "rserv: table {} is not registered on this slave; nothing to remove",
            table
        );
    }
}

/// Tables this master replicates, with their identity and the DDL that recreates them on a
/// slave (`replicate --create-tables`).
#[pg_extern(stable, security_definer)]
#[allow(clippy::type_complexity)]
fn rserv_table_list() -> TableIterator<
    'static,
    (
        name!(schema_name, String),
        name!(table_name, String),
        name!(key_columns, Vec<String>),
        name!(is_primary_key, bool),
        name!(ddl, String),
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
                            t.reloid \
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
                    r.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("listing replicated tables");
    TableIterator::new(
        rows.into_iter()
            .map(|(schema, table, key, pk, reloid)| (schema, table, key, pk, table_ddl(reloid))),
    )
}

/// CREATE TABLE for a slave: columns with their types, NOT NULL, defaults that need no other
/// object (no sequences), identity and generated columns, primary key, unique and check
/// constraints, and unique indexes (a row identity may rest on one). Foreign keys are left out:
/// the apply does not check them, and their targets may not exist yet.
fn table_ddl(reloid: pg_sys::Oid) -> String {
    first::<String>(
        "SELECT format('CREATE TABLE %I.%I (%s)', n.nspname, c.relname, \
                  concat_ws(', ', \
                    (SELECT string_agg(format('%I %s%s%s%s', a.attname, \
                              pg_catalog.format_type(a.atttypid, a.atttypmod), \
                              CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY' \
                                                 WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END, \
                              CASE WHEN a.attgenerated = 's' \
                                   THEN format(' GENERATED ALWAYS AS (%s) STORED', pg_catalog.pg_get_expr(d.adbin, d.adrelid)) \
                                   WHEN d.adbin IS NOT NULL AND pg_catalog.pg_get_expr(d.adbin, d.adrelid) NOT LIKE '%nextval(%' \
                                   THEN ' DEFAULT ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid) ELSE '' END, \
                              CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END), ', ' ORDER BY a.attnum) \
                       FROM pg_catalog.pg_attribute a \
                       LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
                       WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), \
                    (SELECT string_agg(format('CONSTRAINT %I %s', o.conname, pg_catalog.pg_get_constraintdef(o.oid)), ', ' \
                            ORDER BY o.contype, o.conname) \
                       FROM pg_catalog.pg_constraint o WHERE o.conrelid = c.oid AND o.contype IN ('p', 'u', 'c')))) \
              || coalesce((SELECT string_agg(';' || chr(10) || pg_catalog.pg_get_indexdef(i.indexrelid), '' ORDER BY i.indexrelid) \
                   FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid AND i.indisunique \
                    AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint o WHERE o.conindid = i.indexrelid)), '') \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = $1",
        &[reloid.into()],
        "building the table's DDL",
    )
    .unwrap_or_default()
}

/// Tables this slave receives (the master sends only these).
#[pg_extern(stable, security_definer)]
fn rserv_slave_table_list(
) -> TableIterator<'static, (name!(schema_name, String), name!(table_name, String))> {
    let _definer = definer();
    require_replicator("rserv_slave_table_list");
    let s = ext_schema();
    let rows = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT n.nspname::text, c.relname::text FROM {s}._rserv_slave_tables_ t \
                     JOIN pg_catalog.pg_class c ON c.oid = t.reloid \
                     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace ORDER BY 1, 2"
                ),
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("listing the slave's tables");
    TableIterator::new(rows)
}

/// The slave's registration of `schema.name`: (reloid, key columns).
pub fn slave_table(schema: &str, name: &str) -> Option<(pg_sys::Oid, Vec<String>)> {
    let s = ext_schema();
    Spi::connect(|client| {
        let tab = client.select(
            &format!(
                "SELECT t.reloid, t.key::text[] FROM {s}._rserv_slave_tables_ t \
                 JOIN pg_catalog.pg_class c ON c.oid = t.reloid \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2"
            ),
            None,
            &[schema.into(), name.into()],
        )?;
        let mut out = None;
        for r in tab {
            out = Some((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<Vec<String>>(2)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading _rserv_slave_tables_")
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
    fn other_ddl_on_replicated_tables_is_fine() {
        Spi::run(
            "CREATE TABLE t (id int PRIMARY KEY, v text); SELECT rserv_add_table('t');
             ALTER TABLE t ADD COLUMN w int; ALTER TABLE t RENAME COLUMN v TO vv;
             CREATE TABLE other (a int); DROP TABLE other;
             SELECT rserv_remove_table('t'); DROP TABLE t;",
        )
        .unwrap();
    }
}
