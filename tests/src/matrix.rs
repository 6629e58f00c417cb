//! The type matrix: tables holding every built-in type with its awkward values, the changes the
//! tests make to them, and the comparison of master and slave under fixed output settings.
//! `tests/types.rs` runs it on one major with odd session settings; `tests/versions.rs` runs it
//! from a master on one PostgreSQL major to a slave on another.

use crate::pair::{Pair, DB};
use crate::Cluster;

/// The matrix' tables.
pub const TABLES: [&str; 2] = ["alltypes", "moretypes"];

/// Session defaults of the master that differ from the slave's and from the canonical ones.
pub const MASTER_SETTINGS: [(&str, &str); 5] = [
    ("timezone", "Asia/Kathmandu"),
    ("datestyle", "SQL, DMY"),
    ("extra_float_digits", "-3"),
    ("intervalstyle", "sql_standard"),
    ("bytea_output", "escape"),
];

/// The slave's odd session defaults.
pub const SLAVE_SETTINGS: [(&str, &str); 3] = [
    ("timezone", "America/St_Johns"),
    ("datestyle", "German"),
    ("intervalstyle", "iso_8601"),
];

/// Rows of `table` as text under one fixed set of settings, so both sides compare equal
/// exactly when their values are equal.
pub fn canonical_rows(c: &Cluster, table: &str) -> Vec<String> {
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

/// Master and slave hold the same values in `table` (compared as [`canonical_rows`]).
pub fn assert_same(p: &Pair, table: &str) {
    let m = canonical_rows(&p.master, table);
    let s = canonical_rows(&p.slave, table);
    assert_eq!(
        m.len(),
        s.len(),
        "{table}: {} rows on the master (PostgreSQL {}), {} on the slave (PostgreSQL {})",
        m.len(),
        p.master.major(),
        s.len(),
        p.slave.major()
    );
    for (a, b) in m.iter().zip(&s) {
        assert_eq!(
            a,
            b,
            "{table}: rows differ (left: master on PostgreSQL {}, right: slave on PostgreSQL {})",
            p.master.major(),
            p.slave.major()
        );
    }
}

pub const TYPES_DDL: &str = "
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
pub fn special_rows() -> &'static str {
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

/// Types besides those of `alltypes`: geometry, multiranges, text search, LSNs, snapshots,
/// jsonpath, name and "char", arrays of composites and of timestamps, a domain over an array.
pub const MORE_TYPES_DDL: &str = "
CREATE DOMAIN smallints AS int2[] CHECK (cardinality(VALUE) < 100);
CREATE TABLE moretypes (
    id int PRIMARY KEY,
    mr int4multirange, dr daterange, tr tsrange, nmr nummultirange,
    m8 macaddr8, tsv tsvector, tsq tsquery, lsn pg_lsn, snap pg_snapshot, jp jsonpath,
    pt point, ln line, ls lseg, bx box, pth path, pg polygon, ci circle,
    nm name, qc \"char\", bpc bpchar, o oid, x8 xid8,
    ninf numeric, f4s real, tsa timestamptz[], comps pair[], sms smallints,
    iva interval[]
);";

/// One row per awkward case of `moretypes`.
pub fn more_rows() -> &'static str {
    "INSERT INTO moretypes VALUES
     (1, '{[1,3),[5,7)}', '[2024-01-01,2024-12-31)', '[2000-01-01 00:00,infinity)', '{[1.5,2.5],(3,4)}',
      '08:00:2b:01:02:03:04:05', 'a fat cat:1A sat:2B,4C', 'fat & ( rat | !cat ) <-> mat',
      '16/B374D848', '10:20:10,14,15', '$.a[*] ? (@ > 1 && @ like_regex \"^x\" flag \"i\")',
      '(1.5,-2.25)', '{1,-1,0}', '[(0,0),(1,1)]', '(1,1),(0,0)', '[(0,0),(1,1),(2,0)]',
      '((0,0),(1,1),(1,0))', '<(0,0),2.5>', 'a name', 'q', 'bp  ', 4294967295, '18446744073709551615',
      'Infinity', 1.4e-45, '{\"2000-01-01 00:00:00+00\",infinity,NULL}',
      ARRAY[ROW(1, 'a'), ROW(NULL, E'b\\\\c\"d')]::pair[], '{1,2,NULL}', '{\"1 day\",\"-00:00:01.5\"}'),
     (2, '{}', 'empty', '(,)', '{}', '00:00:00:00:00:00:00:00', '', '!a', '0/0', '1:1:',
      '$', '(0,0)', '{0,1,0}', '[(1e300,-1e-300),(0,0)]', '(0,0),(0,0)', '((0,0))', '((1,2))',
      '<(-1e-300,1e300),0>', '', ' ', '', 0, '0', '-Infinity', -0, '{}', '{}', '{}', '{}'),
     (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
      NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
     (4, '{[-2147483648,2147483647)}', '[-infinity,infinity]', '[\"1999-12-31 23:59:59.999999\",)',
      '{(-1e-20,1e20)}', 'ff:ff:ff:ff:ff:ff:ff:ff', repeat('w ', 200)::tsvector, 'x:* & y:AB',
      'FFFFFFFF/FFFFFFFF', '123456789:123456799:123456790', 'strict $.\"ü k\".size()',
      '(NaN,Infinity)', '{0.5,NaN,-1}', '[(1,2),(3,4)]', '(Infinity,0),(-Infinity,0)',
      '((1,1),(2,2),(3,1))', '((0,0),(0,1),(1,1),(1,0))', '<(1,1),0.1>', 'ünïcødé', E'\\\\',
      'pad', 1, '1', 'NaN', 'NaN', '{\"4713-01-01 00:00:00+00 BC\"}', '{}', '{-32768,32767}',
      '{\"-178000000 years\",\"1 mon -1 day 00:00:00.000001\"}')"
}

/// Many rows of random values (seeded), in the columns that take them.
pub const BULK_ROWS: &str = "SELECT setseed(0.42);
INSERT INTO alltypes (id, i2, i4, i8, num, f4, f8, t, by, b, d, ts, tstz, iv, u, jb, arr, e, dom, comp)
SELECT g, (random() * 1000)::int2, (random() * 1e6)::int, (random() * 1e15)::int8,
       (random() * 1e10)::numeric / 7, random()::real, random() * 1e300,
       md5(g::text) || chr(9) || chr(10), decode(md5(g::text), 'hex'), random() > 0.5,
       '2000-01-01'::date + g, '2000-01-01'::timestamp + g * interval '1.000001 s',
       now() - g * interval '1 minute', g * interval '1 h 1 s', gen_random_uuid(),
       jsonb_build_object('g', g, 'r', random()), ARRAY[g, -g, NULL],
       (ARRAY['sad', 'ok', 'happy'])[1 + g % 3]::mood, 1 + g % 100, format('(%s,%s)', g, g)::pair
FROM generate_series(10, 2000) g;
INSERT INTO moretypes (id, mr, pt, bx, tsv, lsn, ninf, f4s, tsa)
SELECT g, int4multirange(int4range(g, g + 10), int4range(g + 20, NULL)), point(random(), -random()),
       box(point(g, g), point(random(), random())), to_tsvector('simple', md5(g::text) || ' x y'),
       pg_lsn(g::text || '/' || upper(to_hex(g * 7919))), (random() * 1e30)::numeric, random()::real,
       ARRAY[now() - g * interval '1 s']
FROM generate_series(10, 500) g;";

/// The changes of round `round`: updates of many types (also of TOASTed values), deletes, key
/// changes and inserts, seeded.
pub fn change_round(round: u32) -> String {
    format!(
        "SELECT setseed(0.{round}1);
         UPDATE alltypes SET f8 = f8 * -1, t = t || 'é', tstz = tstz + interval '1 us',
                num = num * 3, jb = jb || '{{\"u\": 1}}' WHERE random() < 0.2;
         DELETE FROM alltypes WHERE id >= 10 AND random() < 0.05;
         UPDATE alltypes SET id = id + 100000 WHERE id >= 10 AND id < 100000 AND random() < 0.05;
         INSERT INTO alltypes (id, t, f8) SELECT 200000 + {round} * 1000 + g, 'new', g / 3.0
           FROM generate_series(1, 50) g;
         UPDATE alltypes SET big = repeat('ß', 3000000) WHERE id = 2;
         UPDATE moretypes SET pt = point(pt[0] * 3, pt[1] - 1), mr = mr + int4multirange(int4range(-5, -1)),
                tsa = tsa || now() WHERE random() < 0.3;
         DELETE FROM moretypes WHERE id >= 10 AND random() < 0.05;
         UPDATE moretypes SET id = -id WHERE id >= 10 AND random() < 0.05;"
    )
}

/// Create the matrix' tables on both sides, register them, load the special and bulk rows.
pub fn load(p: &Pair) {
    p.both(TYPES_DDL);
    p.both(MORE_TYPES_DDL);
    for t in TABLES {
        p.master
            .execute(DB, &format!("SELECT rserv_add_table('{t}')"));
        p.slave
            .execute(DB, &format!("SELECT rserv_slave_add_table('{t}')"));
    }
    p.master.execute(DB, special_rows());
    p.master.execute(DB, more_rows());
    p.master.execute(DB, BULK_ROWS);
}

/// Every table of the matrix is the same on both sides, and the slave computed its generated
/// columns.
pub fn assert_all_same(p: &Pair) {
    for t in TABLES {
        assert_same(p, t);
    }
    let gen = p.slave.query_strings(
        DB,
        "SELECT count(*) FROM alltypes WHERE gen IS DISTINCT FROM i4::bigint * 2",
    );
    assert_eq!(
        gen[0][0].as_deref(),
        Some("0"),
        "the slave's generated column gen differs from i4 * 2"
    );
}

/// Start a cluster with database `app` and rserv, from `bindir`, with `settings`.
pub fn start_cluster(name: &str, bindir: &std::path::Path, settings: &[(&str, &str)]) -> Cluster {
    let c = Cluster::start_with_bindir(name, bindir, settings);
    c.create_db(DB);
    c.execute(DB, "CREATE EXTENSION rserv");
    c
}
