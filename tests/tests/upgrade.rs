//! `ALTER EXTENSION rserv UPDATE` from every earlier release (install scripts frozen in
//! `sql/archive/`): the updated catalog is exactly a fresh install's, registrations and pending
//! changes survive, and the updated master replicates to a fresh slave.

use rserv_tests::pair::assert_ok;
use rserv_tests::{run_replicate, Cluster};

/// Everything rserv's extension owns, described so that two databases can be compared: each
/// member object, functions with their full definitions, settings and privileges, tables with
/// columns, constraints, indexes and privileges, views, event triggers, and the triggers rserv
/// put on user tables.
const DESCRIBE: &str = "
WITH members AS (
    SELECT d.classid, d.objid, d.objsubid FROM pg_depend d
     WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
       AND d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'rserv'))
SELECT 'member ' || pg_describe_object(classid, objid, objsubid) FROM members
UNION ALL
SELECT 'function ' || p.oid::regprocedure::text || ' ' || pg_get_functiondef(p.oid)
       || ' acl=' || coalesce(p.proacl::text, '-')
  FROM pg_proc p WHERE p.oid IN (SELECT objid FROM members WHERE classid = 'pg_proc'::regclass)
   AND p.prokind <> 'a'
UNION ALL
SELECT 'column ' || c.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(ad.adbin, ad.adrelid), '')
  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
  LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
 WHERE c.oid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
   AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'relation ' || c.relname || ' ' || c.relkind::text || ' acl=' || coalesce(c.relacl::text, '-')
       || coalesce(' view ' || pg_get_viewdef(c.oid), '')
  FROM pg_class c WHERE c.oid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'constraint ' || c.relname || ' ' || pg_get_constraintdef(o.oid)
  FROM pg_constraint o JOIN pg_class c ON c.oid = o.conrelid
 WHERE c.oid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i WHERE i.indrelid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
UNION ALL
SELECT 'event trigger ' || e.evtname || ' ' || e.evtevent || ' ' || coalesce(e.evttags::text, '-')
       || ' ' || e.evtfoid::regproc::text || ' ' || e.evtenabled::text
  FROM pg_event_trigger e
UNION ALL
SELECT 'user trigger ' || g.tgrelid::regclass::text || ' ' || pg_get_triggerdef(g.oid) || ' ' || g.tgenabled::text
  FROM pg_trigger g WHERE g.tgname LIKE '\\_rserv%'
ORDER BY 1";

fn describe(c: &Cluster, db: &str) -> Vec<String> {
    c.query_strings(db, DESCRIBE)
        .into_iter()
        .map(|r| r[0].clone().unwrap_or_default())
        .collect()
}

/// The lines only in `a` and only in `b`.
fn difference(a: &[String], b: &[String]) -> String {
    let only = |x: &[String], y: &[String]| -> Vec<String> {
        x.iter().filter(|l| !y.contains(l)).cloned().collect()
    };
    format!(
        "only after the update:\n  {}\nonly in a fresh install:\n  {}",
        only(a, b).join("\n  "),
        only(b, a).join("\n  ")
    )
}

/// User objects on a fresh install: a registered table with pending changes, one with a
/// watched column, a slave table.
const USER_OBJECTS: &str = "
CREATE TABLE customer (id int PRIMARY KEY, name text, city text);
INSERT INTO customer SELECT i, 'c' || i, 'x' FROM generate_series(1, 50) i;
SELECT rserv_add_table('customer');
CREATE TABLE watched (id int PRIMARY KEY, a text, b text);
SELECT rserv_add_table('watched', 'a');
CREATE TABLE received (id int PRIMARY KEY, v text);
SELECT rserv_slave_add_table('received');";

/// The same objects as 1.0.0's registration functions made them (their catalog rows and
/// triggers, which name columns instead of numbering them). This library's functions work on
/// the current catalog only, so an earlier version's state is written as that version wrote it.
const USER_OBJECTS_1_0_0: &str = "
CREATE TABLE customer (id int PRIMARY KEY, name text, city text);
INSERT INTO customer SELECT i, 'c' || i, 'x' FROM generate_series(1, 50) i;
CREATE TABLE watched (id int PRIMARY KEY, a text, b text);
CREATE TABLE received (id int PRIMARY KEY, v text);
INSERT INTO _rserv_tables_ (reloid, tname, cname, key, watched) VALUES
    ('customer'::regclass, 'public.customer', NULL, '{id}', NULL),
    ('watched'::regclass, 'public.watched', 'a', '{id}', '{a}');
CREATE TRIGGER _rserv_trigger_t_ AFTER INSERT OR UPDATE OR DELETE ON customer
    FOR EACH ROW EXECUTE FUNCTION _rserv_log_('1', 'id');
CREATE TRIGGER _rserv_truncate_t_ AFTER TRUNCATE ON customer
    FOR EACH STATEMENT EXECUTE FUNCTION _rserv_log_();
CREATE TRIGGER _rserv_trigger_t_ AFTER INSERT OR UPDATE OR DELETE ON watched
    FOR EACH ROW EXECUTE FUNCTION _rserv_log_('1', 'id', 'a');
CREATE TRIGGER _rserv_truncate_t_ AFTER TRUNCATE ON watched
    FOR EACH STATEMENT EXECUTE FUNCTION _rserv_log_();
ALTER TABLE customer ENABLE ALWAYS TRIGGER _rserv_trigger_t_;
ALTER TABLE customer ENABLE ALWAYS TRIGGER _rserv_truncate_t_;
ALTER TABLE watched ENABLE ALWAYS TRIGGER _rserv_trigger_t_;
ALTER TABLE watched ENABLE ALWAYS TRIGGER _rserv_truncate_t_;
INSERT INTO _rserv_slave_tables_ (reloid, tname, cname, key) VALUES
    ('received'::regclass, 'public.received', NULL, '{id}');
CREATE TRIGGER _rserv_protect_t_ BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON received
    FOR EACH STATEMENT EXECUTE FUNCTION _rserv_protect_();";

fn archived_versions() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/archive");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_prefix("rserv--")?
                .strip_suffix(".sql")
                .filter(|v| !v.contains("--"))
                .map(str::to_owned)
        })
        .collect();
    versions.sort();
    versions
}

#[test]
fn every_earlier_release_updates_to_exactly_a_fresh_install() {
    let versions = archived_versions();
    assert!(
        !versions.is_empty(),
        "no archived install scripts in sql/archive"
    );
    let c = Cluster::start("upgrade");
    c.create_db("fresh");
    c.execute("fresh", "CREATE EXTENSION rserv");
    c.execute("fresh", USER_OBJECTS);
    let fresh = describe(&c, "fresh");
    for what in ["function ", "column ", "event trigger ", "user trigger "] {
        assert!(
            fresh.iter().any(|l| l.starts_with(what)),
            "the description of a fresh install has no {what}lines: {fresh:?}"
        );
    }
    for v in &versions {
        let db = format!("from_{}", v.replace('.', "_"));
        c.create_db(&db);
        c.execute(&db, &format!("CREATE EXTENSION rserv VERSION '{v}'"));
        let objects = match v.as_str() {
            "1.0.0" => USER_OBJECTS_1_0_0,
            other => panic!("no user objects written as rserv {other} wrote them"),
        };
        c.execute(&db, objects);
        // changes captured by the earlier version's triggers (with the new library loaded)
        c.execute(&db, "UPDATE customer SET city = 'changed' WHERE id <= 10");
        c.execute(&db, "ALTER EXTENSION rserv UPDATE");
        let version = c.query_strings(
            &db,
            "SELECT rserv_version(), extversion FROM pg_extension WHERE extname = 'rserv'",
        );
        assert_eq!(
            version[0][0], version[0][1],
            "{db}: the library and the catalog disagree"
        );
        // The log keeps 1.0's `deleted NOT NULL` until clean-up finds it idle (the update
        // script cannot take it from writers in flight without deadlocking with them): until
        // then an insert is logged as an update.
        c.execute(
            &db,
            "INSERT INTO customer VALUES (1000, 'before clean-up', 'x')",
        );
        let logged = c.query_strings(
            &db,
            "SELECT coalesce(deleted::text, 'NULL') FROM _rserv_log_ WHERE key = '{1000}'",
        );
        assert_eq!(
            logged,
            vec![vec![Some("false".to_string())]],
            "{db}: an insert before the first clean-up"
        );
        c.execute(&db, "SELECT rserv_clean_log()");
        c.execute(
            &db,
            "INSERT INTO customer VALUES (1001, 'after clean-up', 'x')",
        );
        let logged = c.query_strings(
            &db,
            "SELECT coalesce(deleted::text, 'NULL') FROM _rserv_log_ WHERE key = '{1001}'",
        );
        assert_eq!(
            logged,
            vec![vec![Some("NULL".to_string())]],
            "{db}: an insert after the first clean-up"
        );
        let updated = describe(&c, &db);
        assert!(
            updated == fresh,
            "updating from {v} (and a clean-up) does not give a fresh install's catalog\n{}",
            difference(&updated, &fresh)
        );
        // the changes logged under the old version reach a fresh slave
        let slave = format!("{db}_slave");
        c.create_db(&slave);
        c.execute(
            &slave,
            "CREATE EXTENSION rserv;
             CREATE TABLE customer (id int PRIMARY KEY, name text, city text);
             CREATE TABLE watched (id int PRIMARY KEY, a text, b text);
             SELECT rserv_slave_add_table('customer'); SELECT rserv_slave_add_table('watched');",
        );
        let host = c.socket_dir().display().to_string();
        let port = c.port().to_string();
        let args = [
            "--host",
            host.as_str(),
            "--port",
            port.as_str(),
            "--user=postgres",
            db.as_str(),
            slave.as_str(),
        ];
        assert_ok(&run_replicate(&args), "replicate from the updated master");
        c.execute(
            &db,
            "UPDATE customer SET name = 'after' WHERE id > 40; DELETE FROM customer WHERE id = 1",
        );
        assert_ok(&run_replicate(&args), "replicate again");
        let rows = |d: &str| c.query_strings(d, "SELECT c::text FROM customer c ORDER BY id");
        assert_eq!(
            rows(&db),
            rows(&slave),
            "{db}: customer differs on the slave"
        );
    }
}
