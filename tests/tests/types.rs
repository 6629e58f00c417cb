//! Every built-in type and every kind of name round-trips exactly, while the writer's and the
//! applier's DateStyle, TimeZone and float settings differ.

use rserv_tests::pair::{Pair, DB};
use rserv_tests::Cluster;

/// Master and slave with deliberately different session defaults.
fn odd_pair(name: &str) -> Pair {
    let (m, s) = std::thread::scope(|sc| {
        let m = sc.spawn(|| {
            Cluster::start_with(
                &format!("{name}-m"),
                &[
                    ("timezone", "Asia/Kathmandu"),
                    ("datestyle", "SQL, DMY"),
                    ("extra_float_digits", "-3"),
                    ("intervalstyle", "sql_standard"),
                    ("bytea_output", "escape"),
                ],
            )
        });
        let s = sc.spawn(|| {
            Cluster::start_with(
                &format!("{name}-s"),
                &[
                    ("timezone", "America/St_Johns"),
                    ("datestyle", "German"),
                    ("intervalstyle", "iso_8601"),
                ],
            )
        });
        (m.join().unwrap(), s.join().unwrap())
    });
    for c in [&m, &s] {
        c.create_db(DB);
        c.execute(DB, "CREATE EXTENSION rserv");
    }
    Pair {
        master: m,
        slave: s,
    }
}

/// Rows of `table` as text under one fixed set of settings, so both sides compare equal
/// exactly when their values are equal.
fn canonical_rows(c: &Cluster, table: &str) -> Vec<String> {
    c.query_strings(
        DB,
        &format!(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 3;
             SET IntervalStyle = 'postgres'; SET bytea_output = 'hex'; SET lc_monetary = 'C';
             SELECT t::text FROM {table} t ORDER BY 1"
        ),
    )
    .into_iter()
    .map(|r| r[0].clone().unwrap_or_default())
    .collect()
}

fn assert_same(p: &Pair, table: &str) {
    let m = canonical_rows(&p.master, table);
    let s = canonical_rows(&p.slave, table);
    assert_eq!(m.len(), s.len(), "{table}: row counts differ");
    for (a, b) in m.iter().zip(&s) {
        assert_eq!(a, b, "{table}: rows differ");
    }
}

const TYPES_DDL: &str = "
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE alltypes (
    id bigint PRIMARY KEY,
    i2 smallint, i4 int, i8 bigint,
    num numeric, num_small numeric(40, 30),
    f4 real, f8 double precision,
    t text, vc varchar(50), ch char(5),
    by bytea, b bool,
    d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
    u uuid, js json, jb jsonb, x xml,
    ip inet, cid cidr, mac macaddr,
    bt bit(8), vb varbit,
    m money,
    arr int[], arr2 text[], arr_null int[],
    rng int4range, trng tstzrange, nrng numrange,
    e mood, dom posint, comp pair,
    big text,
    gen bigint GENERATED ALWAYS AS (i4::bigint * 2) STORED,
    idc int GENERATED ALWAYS AS IDENTITY
);";

/// One row with the awkward values of every type, by id.
fn special_rows() -> &'static str {
    "INSERT INTO alltypes (id, i2, i4, i8, num, num_small, f4, f8, t, vc, ch, by, b, d, tm, ttz, ts,
        tstz, iv, u, js, jb, x, ip, cid, mac, bt, vb, m, arr, arr2, arr_null, rng, trng, nrng, e, dom,
        comp, big) VALUES
     (1, -32768, 2147483647, -9223372036854775808,
      123456789012345678901234567890.123456789012345678901234567890, 0.000000000000000000000000000001,
      'NaN', 'Infinity', E'tab\\there\\nnewline\\rcr back\\\\slash ''quote'' \"dq\" ünïcødé 日本 🦀',
      'varchar', 'ab', '\\x00ff10'::bytea, true,
      '2024-02-29', '23:59:59.999999', '12:00:00+05:45', '1999-12-31 23:59:59.123456',
      '2000-01-01 00:00:00+00', '1 year 2 months 3 days 04:05:06.789',
      'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"a\": [1, 2.50, null], \"b\": \"x\\u0000y\"}',
      '{\"z\": 1, \"a\": {\"n\": null}}', '<r a=\"1\">text &amp; more</r>',
      '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', B'10101010', B'1', 1234.56,
      '{1,NULL,3}', '{{\"a\",\"b\"},{NULL,\"d,e\"}}', NULL,
      '[1,10)', '[2024-01-01 00:00+00,2024-02-01 00:00+00)', 'empty',
      'happy', 7, ROW(1, 'x,y'), repeat('toast me ', 1500000)),
     (2, 0, 0, 0, 'NaN', -0.5, '-Infinity', '-0', '', '', '', '\\x'::bytea, false,
      'infinity', '00:00', '00:00+00', '-infinity', 'infinity', '-1 day', 
      '00000000-0000-0000-0000-000000000000', 'null', '[]', '<e/>', '::1', '::/0',
      'ff:ff:ff:ff:ff:ff', B'00000000', B'', -0.01, '{}', '{}', '{NULL}',
      'empty', '(,)', '(-1.5,2.5]', 'sad', 1, ROW(NULL, NULL), ''),
     (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
      NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
      NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
     (4, 1, 1, 1, 1e-20, 1, 3.4028235e38, 4.9e-324, 'x', 'y', 'z', '\\x5c'::bytea, NULL,
      '4713-01-01 BC', '12:34', '12:34-03:30', '0001-01-01 00:00:00', '1970-01-01 00:00:00.000001+00',
      '-178000000 years', gen_random_uuid(), '{\"big\": 1e400}', '{\"n\": 1.0000000000000000001}',
      '<?xml version=\"1.0\"?><d/>', '2001:db8::ff00:42:8329', '2001:db8::/32', '00:00:00:00:00:00',
      B'11111111', B'0101', '-92233720368547758.08', '{-2147483648}', '{\"\\\\\",\"\\\"\"}', '{1}',
      '(0,)', '[-infinity,infinity]', '[0,0]', 'ok', 2147483647, ROW(-1, ''), 'x')"
}

#[test]
fn every_type_round_trips_exactly() {
    let p = odd_pair("types");
    p.both(TYPES_DDL);
    p.master.execute(DB, "SELECT rserv_add_table('alltypes')");
    p.slave
        .execute(DB, "SELECT rserv_slave_add_table('alltypes')");
    p.master.execute(DB, special_rows());
    // bulk random rows, then a randomized mix of changes
    p.master.execute(
        DB,
        "SELECT setseed(0.42);
         INSERT INTO alltypes (id, i2, i4, i8, num, f4, f8, t, by, b, d, ts, tstz, iv, u, jb, arr, e, dom, comp)
         SELECT g, (random() * 1000)::int2, (random() * 1e6)::int, (random() * 1e15)::int8,
                (random() * 1e10)::numeric / 7, random()::real, random() * 1e300,
                md5(g::text) || chr(9) || chr(10), decode(md5(g::text), 'hex'), random() > 0.5,
                '2000-01-01'::date + g, '2000-01-01'::timestamp + g * interval '1.000001 s',
                now() - g * interval '1 minute', g * interval '1 h 1 s', gen_random_uuid(),
                jsonb_build_object('g', g, 'r', random()), ARRAY[g, -g, NULL],
                (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood, 1 + g % 100, format('(%s,%s)', g, g)::pair
         FROM generate_series(10, 2000) g;",
    );
    p.sync();
    assert_same(&p, "alltypes");
    for round in 0..4 {
        p.master.execute(
            DB,
            &format!(
                "SELECT setseed(0.{round}1);
                 UPDATE alltypes SET f8 = f8 * -1, t = t || 'é', tstz = tstz + interval '1 us',
                        num = num * 3, jb = jb || '{{\"u\": 1}}' WHERE random() < 0.2;
                 DELETE FROM alltypes WHERE id >= 10 AND random() < 0.05;
                 UPDATE alltypes SET id = id + 100000 WHERE id >= 10 AND id < 100000 AND random() < 0.05;
                 INSERT INTO alltypes (id, t, f8) SELECT 200000 + {round} * 1000 + g, 'new', g / 3.0
                   FROM generate_series(1, 50) g;
                 UPDATE alltypes SET big = repeat('ß', 3000000) WHERE id = 2;"
            ),
        );
        p.sync();
        assert_same(&p, "alltypes");
    }
    // generated columns were computed by the slave, identity columns carried their values
    let gen = p.slave.query_strings(
        DB,
        "SELECT count(*) FROM alltypes WHERE gen IS DISTINCT FROM i4::bigint * 2",
    );
    assert_eq!(gen[0][0].as_deref(), Some("0"));
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
