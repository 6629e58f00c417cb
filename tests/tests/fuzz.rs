//! Property test: random hostile names (quotes, semicolons, comments, backslashes, spaces,
//! non-ASCII) for schemas, tables and columns, and random values of several types, go through
//! registration, capture, prepare and apply; the slave must end equal to the master and no
//! name may ever be executed as SQL.

use rserv_tests::pair::{assert_ok, Pair, DB};
use rserv_tests::rng::Rng;

const PIECES: &[&str] = &[
    "a",
    "B",
    "x y",
    "\"",
    "'",
    ";",
    "--",
    "/*",
    "*/",
    "\\",
    "drop table t",
    "$$",
    "é",
    "日本",
    "🦀",
    ")",
    "(",
    ",",
    ".",
    "%I",
    "%L",
    "select",
    "from",
    "`",
    "\t",
    "%s",
];

fn name(rng: &mut Rng, taken: &mut Vec<String>) -> String {
    loop {
        let mut n = String::new();
        for _ in 0..1 + rng.below(4) {
            n.push_str(rng.pick::<&str>(PIECES));
        }
        // identifiers are at most 63 bytes and must be unique within their scope
        while n.len() > 60 {
            n.pop();
        }
        if !n.is_empty() && !taken.contains(&n) {
            taken.push(n.clone());
            return n;
        }
    }
}

/// The server's own identifier quoting, as the test's SQL must not build it by hand either.
fn quoted(p: &Pair, ident: &str) -> String {
    let mut c = p.master.connect(DB);
    c.query_one("SELECT quote_ident($1)", &[&ident])
        .unwrap()
        .get(0)
}

fn literal(p: &Pair, value: &str) -> String {
    let mut c = p.master.connect(DB);
    c.query_one("SELECT quote_literal($1)", &[&value])
        .unwrap()
        .get(0)
}

#[test]
fn hostile_names_and_values_round_trip() {
    let p = Pair::start("fuzz");
    let seed = std::env::var("RSERV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_u64);
    eprintln!("fuzz seed {seed} (set RSERV_FUZZ_SEED to replay)");
    let mut rng = Rng::new(seed);
    let mut schemas = Vec::new();
    let mut tables = Vec::new();
    for _ in 0..2 {
        let sch = name(&mut rng, &mut schemas);
        let qs = quoted(&p, &sch);
        p.master.execute(DB, &format!("CREATE SCHEMA {qs}"));
        p.slave.execute(DB, &format!("CREATE SCHEMA {qs}"));
        for _ in 0..4 {
            let mut taken = Vec::new();
            let tbl = name(&mut rng, &mut Vec::new());
            let key = name(&mut rng, &mut taken);
            let cols: Vec<String> = (0..3).map(|_| name(&mut rng, &mut taken)).collect();
            let qt = format!("{qs}.{}", quoted(&p, &tbl));
            let qk = quoted(&p, &key);
            let qc: Vec<String> = cols.iter().map(|c| quoted(&p, c)).collect();
            let key_type = *rng.pick(&["int", "text", "numeric", "timestamptz"]);
            p.master.execute(
                DB,
                &format!(
                    "CREATE TABLE {qt} ({qk} {key_type} PRIMARY KEY, {} text, {} float8, {} jsonb)",
                    qc[0], qc[1], qc[2]
                ),
            );
            // register through the CLI with the name as a user would type it
            assert_ok(
                &p.replicate(&["master-add-table", DB, &qt]),
                &format!("master-add-table {qt}"),
            );
            tables.push((qt, qk, key_type, qc));
        }
    }
    assert_ok(
        &p.replicate(&["--create-tables", DB, DB]),
        "create tables and copy",
    );
    for round in 0..4 {
        for (qt, qk, key_type, qc) in &tables {
            let mut stmts = Vec::new();
            for i in 0..20 {
                let k = match *key_type {
                    "int" => format!("{}", rng.below(50)),
                    "numeric" => format!("{}.{}", rng.below(50), rng.below(3)),
                    "timestamptz" => format!(
                        "'2024-01-01 00:00:00+00'::timestamptz + interval '{} s'",
                        rng.below(50)
                    ),
                    _ => literal(&p, &format!("{}{}", rng.pick(PIECES), rng.below(50))),
                };
                let text = literal(
                    &p,
                    &format!("{}{}{}", rng.pick(PIECES), rng.pick(PIECES), i),
                );
                let f = *rng.pick(&["'NaN'", "'-0'", "1e308", "-1.5", "NULL", "'Infinity'"]);
                let js = literal(
                    &p,
                    &format!(
                        "{{\"k\": {}, \"s\": {:?}}}",
                        rng.below(100),
                        rng.pick(PIECES)
                    ),
                );
                stmts.push(match rng.below(4) {
                    0 => format!("DELETE FROM {qt} WHERE {qk} = {k}"),
                    1 => format!("UPDATE {qt} SET {} = {text} WHERE {qk} = {k}", qc[0]),
                    _ => format!(
                        "INSERT INTO {qt} VALUES ({k}, {text}, {f}, {js}) ON CONFLICT ({qk}) DO UPDATE SET {} = excluded.{}, {} = excluded.{}",
                        qc[1], qc[1], qc[2], qc[2]
                    ),
                });
            }
            p.master.execute(DB, &stmts.join(";\n"));
        }
        assert_ok(&p.replicate(&[DB, DB]), &format!("round {round}"));
        for (qt, ..) in &tables {
            let sql = format!("SET extra_float_digits = 3; SELECT t::text FROM {qt} t ORDER BY 1");
            assert_eq!(
                p.master.query_strings(DB, &sql),
                p.slave.query_strings(DB, &sql),
                "table {qt} differs after round {round} (seed {seed})"
            );
        }
    }
    // replicate check agrees
    assert_ok(&p.replicate(&["check", DB, DB]), "check");
}
