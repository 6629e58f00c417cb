//! Every built-in type and every kind of name round-trips exactly, while the writer's and the
//! applier's DateStyle, TimeZone and float settings differ.

use rserv_tests::matrix::{self, assert_same, MASTER_SETTINGS, SLAVE_SETTINGS};
use rserv_tests::pair::{Pair, DB};
use rserv_tests::Cluster;

/// Master and slave with deliberately different session defaults.
fn odd_pair(name: &str) -> Pair {
    let bindir = rserv_tests::pg_bindir();
    let (master, slave) = std::thread::scope(|sc| {
        let m = sc.spawn(|| matrix::start_cluster(&format!("{name}-m"), bindir, &MASTER_SETTINGS));
        let s = sc.spawn(|| matrix::start_cluster(&format!("{name}-s"), bindir, &SLAVE_SETTINGS));
        (m.join().unwrap(), s.join().unwrap())
    });
    Pair { master, slave }
}

#[test]
fn every_type_round_trips_exactly() {
    let p = odd_pair("types");
    // special values of every type, bulk random rows, then rounds of randomized changes
    matrix::load(&p);
    p.sync();
    matrix::assert_all_same(&p);
    for round in 0..4 {
        p.master.execute(DB, &matrix::change_round(round));
        p.sync();
        matrix::assert_all_same(&p);
    }
}

/// Composite identities of many types, changed in every way a key can change.
#[test]
fn keys_of_many_types() {
    let p = odd_pair("keys");
    p.both(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE k (kt text, ktz timestamptz, kn numeric, ku uuid, kd date, kf float8, kb bytea,
                         kbool bool, ke mood, ki interval, v int,
                         PRIMARY KEY (kt, ktz, kn, ku, kd, kf, kb, kbool, ke, ki));",
    );
    p.master.execute(DB, "SELECT rserv_add_table('k')");
    p.slave.execute(DB, "SELECT rserv_slave_add_table('k')");
    p.master.execute(
        DB,
        "INSERT INTO k SELECT E'key\\t' || g || ' ''q'' \\\\ ü', '2020-02-29 12:00+00'::timestamptz + g * interval '1 us',
                              g / 7.0, md5(g::text)::uuid, '2020-01-01'::date + g, g * 0.1, decode(lpad(to_hex(g), 4, '0'), 'hex'),
                              g % 2 = 0, (ARRAY['sad','ok','happy'])[1 + g % 3]::mood, g * interval '1.5 s', g
         FROM generate_series(1, 300) g",
    );
    p.sync();
    assert_same(&p, "k");
    p.master.execute(
        DB,
        "UPDATE k SET ktz = ktz + interval '1 hour' WHERE v % 5 = 0;
         UPDATE k SET kf = -kf, kn = kn * 2 WHERE v % 7 = 0;
         DELETE FROM k WHERE v % 11 = 0;
         INSERT INTO k SELECT kt, ktz, kn, ku, kd, kf, kb, kbool, ke, ki, -v FROM k WHERE v % 11 = 1 AND v > 0
             ON CONFLICT DO NOTHING;
         UPDATE k SET v = v + 1000 WHERE v % 3 = 0;",
    );
    // a key changed and changed back between two syncs
    p.master.execute(DB, "UPDATE k SET kt = 'tmp' WHERE v = 1; UPDATE k SET kt = E'key\\t1 ''q'' \\\\ ü' WHERE v = 1;");
    p.sync();
    assert_same(&p, "k");
}

/// Schema-qualified, mixed-case, quoted, spaced, reserved and non-ASCII names; the same table
/// name in two schemas; slave columns in another order, with dropped and extra columns.
#[test]
fn names_and_column_mapping() {
    let p = odd_pair("names");
    let ddl = r#"
        CREATE SCHEMA "Sch ema";
        CREATE SCHEMA other;
        CREATE TABLE "Sch ema"."Mixed ""Quoted"" Table" ("Key Col" int PRIMARY KEY, "select" text, "naïve" text, "a;b--c" text);
        CREATE TABLE other.dup (id int PRIMARY KEY, v text);
        CREATE TABLE public.dup (id int PRIMARY KEY, v text);
    "#;
    p.master.execute(DB, ddl);
    // the slave declares the columns in another order, has a dropped column and an extra one
    p.slave.execute(
        DB,
        r#"
        CREATE SCHEMA "Sch ema";
        CREATE SCHEMA other;
        CREATE TABLE "Sch ema"."Mixed ""Quoted"" Table" (gone int, "a;b--c" text, "naïve" text,
            "select" text, "Key Col" int PRIMARY KEY, extra text DEFAULT 'slave only');
        ALTER TABLE "Sch ema"."Mixed ""Quoted"" Table" DROP COLUMN gone;
        CREATE TABLE other.dup (v text, id int PRIMARY KEY);
        CREATE TABLE public.dup (id int PRIMARY KEY, v text);
    "#,
    );
    // and the master drops a column too
    p.master.execute(
        DB,
        r#"ALTER TABLE public.dup ADD COLUMN tmp int; ALTER TABLE public.dup DROP COLUMN tmp;"#,
    );
    for t in [
        r#"'"Sch ema"."Mixed ""Quoted"" Table"'"#,
        "'other.dup'",
        "'public.dup'",
    ] {
        p.master
            .execute(DB, &format!("SELECT rserv_add_table({t})"));
        p.slave
            .execute(DB, &format!("SELECT rserv_slave_add_table({t})"));
    }
    p.master.execute(
        DB,
        r#"INSERT INTO "Sch ema"."Mixed ""Quoted"" Table" SELECT g, 'sel' || g, 'ï' || g, ''';--' || g FROM generate_series(1, 20) g;
           INSERT INTO other.dup VALUES (1, 'other'); INSERT INTO public.dup VALUES (1, 'public');"#,
    );
    p.sync();
    p.master.execute(
        DB,
        r#"UPDATE "Sch ema"."Mixed ""Quoted"" Table" SET "select" = 'changed' WHERE "Key Col" % 2 = 0;
           DELETE FROM "Sch ema"."Mixed ""Quoted"" Table" WHERE "Key Col" = 3;
           UPDATE other.dup SET v = 'other 2';"#,
    );
    p.sync();
    let cols = r#""Key Col", "select", "naïve", "a;b--c""#;
    let q = |c: &Cluster, sql: &str| c.query_strings(DB, sql);
    let sel = format!(r#"SELECT {cols} FROM "Sch ema"."Mixed ""Quoted"" Table" ORDER BY 1"#);
    assert_eq!(q(&p.master, &sel), q(&p.slave, &sel));
    assert_eq!(
        q(&p.master, "SELECT id, v FROM other.dup"),
        q(&p.slave, "SELECT id, v FROM other.dup")
    );
    assert_eq!(
        q(&p.master, "SELECT id, v FROM public.dup"),
        q(&p.slave, "SELECT id, v FROM public.dup")
    );
    // the slave's own column keeps its default
    let extra = q(
        &p.slave,
        r#"SELECT DISTINCT extra FROM "Sch ema"."Mixed ""Quoted"" Table""#,
    );
    assert_eq!(extra, vec![vec![Some("slave only".to_string())]]);
}

/// TRUNCATE of several tables at once, and foreign keys on the slave in every order.
#[test]
fn truncate_and_foreign_keys() {
    let p = odd_pair("fk");
    p.both(
        "CREATE TABLE parent (id int PRIMARY KEY, name text);
         CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent, v text);
         CREATE TABLE solo (id int PRIMARY KEY);",
    );
    for t in ["parent", "child", "solo"] {
        p.master
            .execute(DB, &format!("SELECT rserv_add_table('{t}')"));
        p.slave
            .execute(DB, &format!("SELECT rserv_slave_add_table('{t}')"));
    }
    p.master.execute(
        DB,
        "INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 50) g;
         INSERT INTO child SELECT g, 1 + g % 50, 'c' FROM generate_series(1, 200) g;
         INSERT INTO solo SELECT generate_series(1, 10);",
    );
    p.sync();
    // parent and child changed in one transaction; parents deleted after their children moved
    p.master.execute(
        DB,
        "BEGIN;
         INSERT INTO parent VALUES (100, 'new parent');
         UPDATE child SET parent_id = 100 WHERE parent_id IN (1, 2);
         DELETE FROM parent WHERE id IN (1, 2);
         UPDATE child SET parent_id = 100 WHERE parent_id = 3;
         UPDATE parent SET id = 1000 WHERE id = 3;
         COMMIT;",
    );
    p.sync();
    for t in ["parent", "child"] {
        assert_same(&p, t);
    }
    p.master.execute(
        DB,
        "TRUNCATE child, parent, solo; INSERT INTO parent VALUES (1, 'again');",
    );
    p.sync();
    for t in ["parent", "child", "solo"] {
        assert_same(&p, t);
    }
}
