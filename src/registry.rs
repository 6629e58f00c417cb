//! Table registry on the master: `rserv_add_table` / `rserv_remove_table`, the capture
//! triggers they install, and the identity (key) and watched columns of each table (the rules,
//! shared with the slave's registry, are in `identity.rs`; partitions in `partitions.rs`).
//!
//! Registration is idempotent and self-repairing: calling it again with the same arguments is a
//! NOTICE, a missing trigger is put back, and every trigger rserv creates depends on the
//! extension so `DROP EXTENSION rserv` removes them all.

use crate::catalog::{
    ext_schema, table_columns, table_info, Column, RegClass, CAPTURE_TRIGGER,
    PART_TRUNCATE_TRIGGER, TRUNCATE_TRIGGER,
};
use crate::error::{fail, SpiOrFail};
use crate::identity::{check_table_kind, describe, resolve_identity};
use crate::partitions::{check_partition_overlap, reconcile_partitions};
use crate::security::{
    definer, internal_ddl, internal_definer, require_replicator, require_table_owner,
};
use crate::sql::{call_hint, first, quote_ident, quote_literal};
use pgrx::pg_sys;
use pgrx::prelude::*;

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

pub(crate) fn attnums(cols: &[Column], names: &[String]) -> Vec<i16> {
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

pub(crate) fn enable_always(reloid: pg_sys::Oid, table: &str, trigger: &str) {
    Spi::run(&format!(
        "ALTER TABLE {table} ENABLE ALWAYS TRIGGER {}",
        quote_ident(trigger)
    ))
    .or_fail("enabling the capture trigger");
    depend_on_extension(reloid, trigger);
}

/// A table's registration on this master: key column names, watched column names and their
/// attribute numbers (None: every column is watched).
pub(crate) struct Registration {
    pub key: Vec<String>,
    pub watched: Option<Vec<String>>,
    pub watched_attnums: Option<Vec<i16>>,
}

pub(crate) fn registration(s: &str, reloid: pg_sys::Oid) -> Option<Registration> {
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
    // (its recorded DDL stays until clean-up: slaves that still receive the table when it is
    // registered again must reshape it before its fresh copy arrives)
    Spi::run_with_args(
        &format!("DELETE FROM {s}._rserv_log_ WHERE reloid = $1"),
        &[reloid.into()],
    )
    .or_fail("deleting log rows");
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

    // (a master's key column rename is followed: see the DDL tests; a slave's own is refused)
    #[pg_test(
        error = "rserv: this ALTER TABLE removes key column \"id\" of replicated table public.t"
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
