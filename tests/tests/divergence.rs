//! Regression tests for the ways a slave could silently diverge from its master (issue 11,
//! "Correctness" in the 1.1 contract): items 1-7 and the suspicions (a) and (b).
//!
//! The oracle everywhere (tests/src/oracle.rs): after a cycle, the slave holds exactly the
//! master's state as of that cycle's snapshot, dumped inside the prepare transaction by the
//! at_snapshot hook of `replicate::cycle::run`. Races are made deterministic with that
//! hook and with locks held by open transactions, never with sleeps.
//!
//! The key-type generator of item 1 is seeded: the seed is printed, and
//! `RSERV_DIVERGENCE_SEED=<n>` replays a run.

use postgres::error::SqlState;
use postgres::{Client, NoTls};
use replicate::cycle::{CycleOptions, Outcome};
use replicate::error::{DbContext, Error};
use rserv_tests::oracle::{self, options, public, Checked};
use rserv_tests::pair::{assert_ok, start_clusters, wait_for_lock_waiter, Pair, DB};
use rserv_tests::rng::Rng;
use rserv_tests::{describe_pg_error, Cluster};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

/// A pair whose clusters get extra settings (started in parallel).
fn pair_with(name: &str, settings: &[(&str, &str)]) -> Pair {
    Pair::start_with(name, settings)
}

/// A connection to `db` of `c` as `user` whose server notices (with severity) are collected.
fn connect_noticed(c: &Cluster, user: &str) -> (Client, Arc<Mutex<Vec<String>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    let mut cfg = postgres::Config::from_str(&c.conninfo(DB)).expect("conninfo");
    cfg.user(user);
    cfg.notice_callback(move |n| {
        if let Ok(mut v) = sink.lock() {
            v.push(format!("{}: {}", n.severity(), n.message()));
        }
    });
    let client = cfg
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect to {} as {user}: {e}", c.name()));
    (client, notices)
}

fn one(c: &Cluster, sql: &str) -> Option<String> {
    c.query_strings(DB, sql)
        .first()
        .and_then(|r| r.first().cloned().flatten())
}

/// The error of `sql` (which must fail) as text, or None if it succeeded.
fn error_of(client: &mut Client, sql: &str) -> Option<String> {
    match client.batch_execute(sql) {
        Ok(()) => None,
        Err(e) => {
            let _ = client.batch_execute("ROLLBACK");
            Some(describe_pg_error(&e))
        }
    }
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Failed(format!("{what}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Item 1: keys of length-typed types
// ---------------------------------------------------------------------------------------------

fn seed() -> u64 {
    let seed = std::env::var("RSERV_DIVERGENCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        .max(1);
    eprintln!("divergence: seed {seed} (replay with RSERV_DIVERGENCE_SEED={seed})");
    seed
}

/// How to make values (as text, before the cast to the column's type) of one key column.
#[derive(Clone, Copy, Debug)]
enum Gen {
    /// char(n) (`var` false) or varchar(n) (`var` true)
    Chars {
        n: usize,
        var: bool,
    },
    /// bit(n) (`var` false) or varbit(n) (`var` true)
    Bits {
        n: usize,
        var: bool,
    },
    Numeric {
        p: usize,
        s: usize,
    },
    Timestamp {
        tz: bool,
    },
    Time {
        tz: bool,
    },
    /// day-to-second intervals (also fed to narrower field sets, which truncate them)
    IntervalDs,
    IntervalYm,
    Array(&'static Gen),
}

const OFFSETS: &[&str] = &["+00", "+05:45", "-03:30", "+14", "-12", "+01"];
const TIME_OFFSETS: &[&str] = &["+00", "+05:45", "-03:30", "+15:59", "-15:59"];

impl Gen {
    /// Values at the type's limits: full length, trailing and leading spaces, leading zeros,
    /// maximal precision (that rounds up at lower precisions), the extremes of the range.
    fn edges(self) -> Vec<String> {
        match self {
            Gen::Chars { n, var } => {
                let full: String = "xyzwvu".chars().cycle().take(n).collect();
                let abc: String = "abcdef".chars().cycle().take(n).collect();
                let mut v = vec![full, abc, format!("a{}", " ".repeat(n - 1))];
                if var {
                    // for varchar, trailing spaces make another key
                    v.push("a".into());
                }
                if n > 1 {
                    v.push(format!(" {}", "b".repeat(n - 1)));
                }
                v.push(String::new());
                v
            }
            Gen::Bits { n, var } => {
                let mut v = vec![
                    "0".repeat(n),
                    format!("{}1", "0".repeat(n - 1)),
                    format!("1{}", "0".repeat(n - 1)),
                    "1".repeat(n),
                ];
                if var {
                    v.extend(["".to_string(), "0".to_string(), "001".to_string()]);
                }
                v
            }
            Gen::Numeric { p, s } => {
                let int = if p > s { "9".repeat(p - s) } else { "0".into() };
                let max = if s > 0 {
                    format!("{int}.{}", "9".repeat(s))
                } else {
                    int
                };
                let mut v = vec![max.clone(), format!("-{max}"), "0".into()];
                if s > 0 {
                    v.push(format!("0.{}1", "0".repeat(s - 1)));
                    v.push(format!("-0.{}1", "0".repeat(s - 1)));
                }
                if p > s {
                    v.push("1.5".into());
                }
                v
            }
            Gen::Timestamp { tz } => {
                let base = [
                    "2024-02-29 23:59:59.999999",
                    "1999-12-31 23:59:59.5",
                    "2000-01-01 00:00:00",
                    "9999-12-31 23:59:59.999999",
                    "1970-01-01 00:00:00.000001",
                    "0001-01-01 00:00:00",
                ];
                base.iter()
                    .enumerate()
                    .map(|(i, b)| {
                        if tz {
                            format!("{b}{}", OFFSETS[i % OFFSETS.len()])
                        } else {
                            b.to_string()
                        }
                    })
                    .collect()
            }
            Gen::Time { tz } => {
                let base = [
                    "23:59:59.999999",
                    "00:00:00",
                    "24:00:00",
                    "12:00:00.5",
                    "00:00:00.000001",
                ];
                base.iter()
                    .enumerate()
                    .map(|(i, b)| {
                        if tz {
                            format!("{b}{}", TIME_OFFSETS[i % TIME_OFFSETS.len()])
                        } else {
                            b.to_string()
                        }
                    })
                    .collect()
            }
            Gen::IntervalDs => vec![
                "1 day 02:03:04.567891".into(),
                "-1 days +23:59:59.999999".into(),
                "00:00:00".into(),
                "99 days 00:00:00.005".into(),
                "-00:00:00.000001".into(),
            ],
            Gen::IntervalYm => vec![
                "1 year 2 months".into(),
                "-1 years".into(),
                "0".into(),
                "177999999 years 11 months".into(),
            ],
            Gen::Array(e) => {
                let edges = e.edges();
                vec![
                    "{}".into(),
                    array(&edges[..2.min(edges.len())]),
                    array(&[edges[0].clone(), edges[0].clone()]),
                    array(&edges),
                ]
            }
        }
    }

    fn random(self, rng: &mut Rng) -> String {
        match self {
            Gen::Chars { n, .. } => {
                let len = rng.below(n + 1);
                (0..len)
                    .map(|_| ['a', 'b', 'x', 'y', 'z', ' '][rng.below(6)])
                    .collect()
            }
            Gen::Bits { n, var } => {
                let len = if var { rng.below(n + 1) } else { n };
                (0..len).map(|_| ['0', '1'][rng.below(2)]).collect()
            }
            Gen::Numeric { p, s } => {
                let int = if p > s {
                    let len = 1 + rng.below(p - s);
                    let d = rng.digits(len);
                    d.trim_start_matches('0').to_string()
                } else {
                    String::new()
                };
                let len = rng.below(s + 1);
                let frac = rng.digits(len);
                let sign = if rng.below(3) == 0 { "-" } else { "" };
                let int = if int.is_empty() { "0".into() } else { int };
                if frac.is_empty() {
                    format!("{sign}{int}")
                } else {
                    format!("{sign}{int}.{frac}")
                }
            }
            Gen::Timestamp { tz } => {
                let t = format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{}",
                    rng.range(1970, 2037),
                    rng.range(1, 12),
                    rng.range(1, 28),
                    rng.range(0, 23),
                    rng.range(0, 59),
                    rng.range(0, 59),
                    rng.digits(6)
                );
                if tz {
                    format!("{t}{}", OFFSETS[rng.below(OFFSETS.len())])
                } else {
                    t
                }
            }
            Gen::Time { tz } => {
                let t = format!(
                    "{:02}:{:02}:{:02}.{}",
                    rng.range(0, 23),
                    rng.range(0, 59),
                    rng.range(0, 59),
                    rng.digits(6)
                );
                if tz {
                    format!("{t}{}", TIME_OFFSETS[rng.below(TIME_OFFSETS.len())])
                } else {
                    t
                }
            }
            Gen::IntervalDs => format!(
                "{} days {}{:02}:{:02}:{:02}.{}",
                rng.range(-40, 40),
                if rng.below(2) == 0 { "-" } else { "" },
                rng.range(0, 30),
                rng.range(0, 59),
                rng.range(0, 59),
                rng.digits(6)
            ),
            Gen::IntervalYm => {
                format!("{} years {} months", rng.range(-20, 20), rng.range(-11, 11))
            }
            Gen::Array(e) => {
                let items: Vec<String> = (0..rng.below(4)).map(|_| e.random(rng)).collect();
                array(&items)
            }
        }
    }

    /// An edge value half of the time, else a random one.
    fn value(self, rng: &mut Rng) -> String {
        if rng.below(2) == 0 {
            let e = self.edges();
            e[rng.below(e.len())].clone()
        } else {
            self.random(rng)
        }
    }
}

/// An array literal whose elements are all quoted.
fn array(items: &[String]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|i| format!("\"{}\"", i.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("{{{}}}", quoted.join(","))
}

fn literal(value: &str, sql_type: &str) -> String {
    format!("'{}'::{sql_type}", value.replace('\'', "''"))
}

struct KeyType {
    /// table `k_<name>`
    name: &'static str,
    /// key columns k1..kn: (type as written in SQL, value generator)
    cols: &'static [(&'static str, Gen)],
}

const DOMAINS: &str = "
    CREATE DOMAIN d_char4 AS char(4);
    CREATE DOMAIN d_bit4 AS bit(4);
    CREATE DOMAIN d_num AS numeric(6,3) CHECK (VALUE > -1000);
    CREATE DOMAIN d_ts1 AS timestamp(1);
    CREATE DOMAIN d_char2_arr AS char(2)[];";

const C3: Gen = Gen::Chars { n: 3, var: false };
const C2: Gen = Gen::Chars { n: 2, var: false };
const B3: Gen = Gen::Bits { n: 3, var: false };
const N31: Gen = Gen::Numeric { p: 3, s: 1 };

const CATALOGUE: &[KeyType] = &[
    KeyType {
        name: "char3",
        cols: &[("char(3)", C3)],
    },
    KeyType {
        name: "char1",
        cols: &[("char(1)", Gen::Chars { n: 1, var: false })],
    },
    KeyType {
        name: "varchar4",
        cols: &[("varchar(4)", Gen::Chars { n: 4, var: true })],
    },
    KeyType {
        name: "bit5",
        cols: &[("bit(5)", Gen::Bits { n: 5, var: false })],
    },
    KeyType {
        name: "varbit6",
        cols: &[("varbit(6)", Gen::Bits { n: 6, var: true })],
    },
    KeyType {
        name: "numeric7_2",
        cols: &[("numeric(7,2)", Gen::Numeric { p: 7, s: 2 })],
    },
    KeyType {
        name: "numeric4_4",
        cols: &[("numeric(4,4)", Gen::Numeric { p: 4, s: 4 })],
    },
    KeyType {
        name: "ts0",
        cols: &[("timestamp(0)", Gen::Timestamp { tz: false })],
    },
    KeyType {
        name: "ts3",
        cols: &[("timestamp(3)", Gen::Timestamp { tz: false })],
    },
    KeyType {
        name: "ts6",
        cols: &[("timestamp(6)", Gen::Timestamp { tz: false })],
    },
    KeyType {
        name: "tstz2",
        cols: &[("timestamptz(2)", Gen::Timestamp { tz: true })],
    },
    KeyType {
        name: "time2",
        cols: &[("time(2)", Gen::Time { tz: false })],
    },
    KeyType {
        name: "timetz1",
        cols: &[("timetz(1)", Gen::Time { tz: true })],
    },
    KeyType {
        name: "iv_ds2",
        cols: &[("interval day to second(2)", Gen::IntervalDs)],
    },
    KeyType {
        name: "iv_hm",
        cols: &[("interval hour to minute", Gen::IntervalDs)],
    },
    KeyType {
        name: "iv_ym",
        cols: &[("interval year to month", Gen::IntervalYm)],
    },
    KeyType {
        name: "char2_arr",
        cols: &[("char(2)[]", Gen::Array(&C2))],
    },
    KeyType {
        name: "bit3_arr",
        cols: &[("bit(3)[]", Gen::Array(&B3))],
    },
    KeyType {
        name: "numeric3_1_arr",
        cols: &[("numeric(3,1)[]", Gen::Array(&N31))],
    },
    KeyType {
        name: "dom_char4",
        cols: &[("d_char4", Gen::Chars { n: 4, var: false })],
    },
    KeyType {
        name: "dom_bit4",
        cols: &[("d_bit4", Gen::Bits { n: 4, var: false })],
    },
    KeyType {
        name: "dom_num",
        cols: &[("d_num", Gen::Numeric { p: 6, s: 3 })],
    },
    KeyType {
        name: "dom_ts1",
        cols: &[("d_ts1", Gen::Timestamp { tz: false })],
    },
    KeyType {
        name: "dom_char2_arr",
        cols: &[("d_char2_arr", Gen::Array(&C2))],
    },
    KeyType {
        name: "multi1",
        cols: &[
            ("char(3)", C3),
            ("bit(4)", Gen::Bits { n: 4, var: false }),
            ("timestamptz(2)", Gen::Timestamp { tz: true }),
        ],
    },
    KeyType {
        name: "multi2",
        cols: &[
            ("varchar(2)", Gen::Chars { n: 2, var: true }),
            ("numeric(5,1)", Gen::Numeric { p: 5, s: 1 }),
            ("interval day to second(0)", Gen::IntervalDs),
            ("d_char4", Gen::Chars { n: 4, var: false }),
        ],
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Insert,
    UpdateValue,
    UpdateKey,
    Delete,
}

const OPS: [Op; 4] = [Op::Insert, Op::UpdateValue, Op::UpdateKey, Op::Delete];

/// Rows changed by each kind of operation, over a whole run of one key type.
#[derive(Default, Debug)]
struct Effects([u64; 4]);

struct KeyTable<'a> {
    kt: &'a KeyType,
    table: String,
    keys: String,
}

impl KeyTable<'_> {
    fn row_literals(&self, rng: &mut Rng) -> Vec<String> {
        self.kt
            .cols
            .iter()
            .map(|(t, g)| literal(&g.value(rng), t))
            .collect()
    }

    fn pick_row(&self, w: &mut Client, rng: &mut Rng) -> Option<String> {
        let n: i64 = w
            .query_one(&format!("SELECT count(*) FROM {}", self.table), &[])
            .expect("count")
            .get(0);
        (n > 0).then(|| {
            format!(
                "ctid = (SELECT ctid FROM {} ORDER BY {} OFFSET {} LIMIT 1)",
                self.table,
                self.keys,
                rng.below(n as usize)
            )
        })
    }

    /// One operation on the master; returns the statements run and the rows changed (0 when
    /// every generated value was refused, e.g. a duplicate key or a value out of range).
    fn apply(&self, w: &mut Client, rng: &mut Rng, op: Op) -> (String, u64) {
        // a generated key may exist already: try a few values before giving up
        let mut tried = Vec::new();
        for _ in 0..5 {
            let (sql, n) = self.apply_once(w, rng, op);
            if n > 0 {
                tried.push(sql);
                return (tried.join("\n    "), n);
            }
            tried.push(sql);
        }
        (tried.join("\n    "), 0)
    }

    fn apply_once(&self, w: &mut Client, rng: &mut Rng, op: Op) -> (String, u64) {
        let row = match op {
            Op::Insert => None,
            _ => self.pick_row(w, rng),
        };
        let sql = match (op, row) {
            (Op::Insert, _) | (_, None) => format!(
                "INSERT INTO {} VALUES ({}, {})",
                self.table,
                self.row_literals(rng).join(", "),
                rng.below(1000)
            ),
            (Op::UpdateValue, Some(r)) => {
                format!("UPDATE {} SET v = v + 1 WHERE {r}", self.table)
            }
            (Op::UpdateKey, Some(r)) => {
                let j = rng.below(self.kt.cols.len());
                let (t, g) = self.kt.cols[j];
                format!(
                    "UPDATE {} SET k{} = {} WHERE {r}",
                    self.table,
                    j + 1,
                    literal(&g.value(rng), t)
                )
            }
            (Op::Delete, Some(r)) => format!("DELETE FROM {} WHERE {r}", self.table),
        };
        match w.execute(&sql, &[]) {
            Ok(n) => (sql, n),
            Err(e)
                if e.code().is_some_and(|c| {
                    c == &SqlState::UNIQUE_VIOLATION
                        || c.code().starts_with("22")
                        || c == &SqlState::CHECK_VIOLATION
                }) =>
            {
                (format!("{sql} -- refused: {}", describe_pg_error(&e)), 0)
            }
            Err(e) => panic!("{sql}: {}", describe_pg_error(&e)),
        }
    }
}

/// Replicate one key type: create and register its table, then rounds of generated changes,
/// each followed by a cycle checked against the master at its snapshot. Err: how the slave
/// diverged (or how the cycle failed), with the statements of that round.
fn run_key_type(
    p: &Pair,
    s: &mut rserv_tests::pair::Session,
    w: &mut Client,
    kt: &KeyType,
    rng: &mut Rng,
    effects: &mut Effects,
) -> Result<(), String> {
    let kc: Vec<String> = (1..=kt.cols.len()).map(|i| format!("k{i}")).collect();
    let t = KeyTable {
        kt,
        table: format!("public.k_{}", kt.name),
        keys: kc.join(", "),
    };
    let cols: Vec<String> = kt
        .cols
        .iter()
        .zip(&kc)
        .map(|((ty, _), k)| format!("{k} {ty}"))
        .collect();
    p.table(
        &format!(
            "CREATE TABLE {} ({}, v int NOT NULL DEFAULT 0, PRIMARY KEY ({}))",
            t.table,
            cols.join(", "),
            t.keys
        ),
        &t.table,
        None,
    );
    let check = |s: &mut rserv_tests::pair::Session, round: &str, stmts: &[String]| {
        let c = oracle::cycle(s, &options(0)).map_err(|e| {
            format!(
                "{round}: the cycle failed: {e}\n  statements:\n    {}",
                stmts.join("\n    ")
            )
        })?;
        match c.divergence() {
            None => Ok(()),
            Some(d) => Err(format!(
                "{round}: {d}  statements:\n    {}",
                stmts.join("\n    ")
            )),
        }
    };
    // the initial copy (of an empty table): later changes travel as DELETE/INSERT sections
    check(s, "initial copy", &[])?;
    // round 0: every value at the type's limits (column by column for multi-column keys)
    let edges: Vec<Vec<String>> = kt.cols.iter().map(|(_, g)| g.edges()).collect();
    let longest = edges.iter().map(Vec::len).max().unwrap_or(0);
    let mut stmts = Vec::new();
    for i in 0..longest {
        let vals: Vec<String> = kt
            .cols
            .iter()
            .zip(&edges)
            .map(|((ty, _), e)| literal(&e[i % e.len()], ty))
            .collect();
        let sql = format!("INSERT INTO {} VALUES ({}, {i})", t.table, vals.join(", "));
        match w.execute(&sql, &[]) {
            Ok(n) => {
                effects.0[0] += n;
                stmts.push(sql);
            }
            Err(e) => stmts.push(format!("{sql} -- refused: {}", describe_pg_error(&e))),
        }
    }
    check(s, "round 0 (INSERT of edge values)", &stmts)?;
    for round in 1..=3 {
        let mut stmts = Vec::new();
        // every kind of change in every round, then random ones
        let mut ops = OPS.to_vec();
        ops.extend((0..8).map(|_| OPS[rng.below(OPS.len())]));
        for op in ops {
            let (sql, n) = t.apply(w, rng, op);
            effects.0[OPS.iter().position(|o| *o == op).unwrap_or(0)] += n;
            stmts.push(sql);
        }
        check(s, &format!("round {round}"), &stmts)?;
    }
    Ok(())
}

/// Item 1: keys of length-typed types (char(n), varchar(n), bit(n), varbit(n), numeric(p,s),
/// timestamp(p), timestamptz(p), time(p), timetz(p), intervals with fields, arrays and domains
/// of them, multi-column keys mixing them) replicate exactly: INSERT, UPDATE of a non-key
/// column, UPDATE of the key and DELETE all arrive, for values at the types' limits too.
///
/// v1.0.0: the prepare casts logged keys to the type without its modifier (`::character`,
/// `::bit`), which is char(1)/bit(1): char(3) 'xyz' becomes 'x' and never matches, so the row
/// is missing on the slave; bit(5) '00001' becomes '0' and the slave refuses it ("bit string
/// length 1 does not match type bit(5)"). Same for char(2)[], bit(3)[] and multi-column keys
/// holding them; domains keep their modifier and pass.
#[test]
fn length_typed_keys_replicate_exactly() {
    let seed = seed();
    let p = Pair::start("div-keys");
    p.both(DOMAINS);
    let mut s = p.session();
    let mut w = p.master.connect(DB);
    let mut failures = Vec::new();
    let mut idle = Vec::new();
    for (i, kt) in CATALOGUE.iter().enumerate() {
        // one stream per key type: a replay does not depend on how earlier types fared
        let mut rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut effects = Effects::default();
        if let Err(e) = run_key_type(&p, &mut s, &mut w, kt, &mut rng, &mut effects) {
            failures.push(format!("key type {}: {e}", kt.name));
        } else if let Some(i) = effects.0.iter().position(|n| *n == 0) {
            // not a replication failure: the generator made no change of that kind
            idle.push(format!("{} ({:?})", kt.name, OPS[i]));
        }
        // take the table out of replication: a failing type must not block the next ones
        let table = format!("public.k_{}", kt.name);
        p.slave
            .execute(DB, &format!("SELECT rserv_slave_remove_table('{table}')"));
        p.master
            .execute(DB, &format!("SELECT rserv_remove_table('{table}')"));
    }
    assert!(
        failures.is_empty(),
        "{} of {} key types diverged (seed {}):\n{}",
        failures.len(),
        CATALOGUE.len(),
        seed,
        failures.join("\n")
    );
    assert!(
        idle.is_empty(),
        "the generator never changed a row with: {}",
        idle.join(", ")
    );
}

// ---------------------------------------------------------------------------------------------
// Item 2: a new slave's first change set and log clean-up
// ---------------------------------------------------------------------------------------------

/// Item 2: slave 2 prepares its first change set (the initial copy) while writer W is open;
/// inside that prepare transaction W commits, slave 1 runs a cycle and the log is cleaned.
/// Slave 2's next change set must still carry W.
///
/// v1.0.0: slave 2's registration on the master is not yet committed, so clean-up only waits
/// for slave 1 and deletes W's log row; slave 2's next cycle is InSync and row 100 is missing.
#[test]
fn first_change_set_of_a_new_slave_survives_log_clean_up() {
    let c = start_clusters(&["div-first-m", "div-first-s1", "div-first-s2"]);
    let (m, s1, s2) = (&c[0], &c[1], &c[2]);
    m.execute(
        DB,
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL);
         INSERT INTO t SELECT g, 'initial' FROM generate_series(1, 5) g;
         SELECT rserv_add_table('t');",
    );
    for s in [s1, s2] {
        s.execute(
            DB,
            "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL); SELECT rserv_slave_add_table('t');",
        );
    }
    let mut sess1 = oracle::session(m, s1, DB);
    // nothing inside the hook may wait for slave 2's open prepare: fail instead of hanging
    sess1
        .master
        .batch_execute("SET statement_timeout = '60s'")
        .expect("timeout");
    oracle::assert_cycle(&mut sess1, &options(1), "slave 1: initial copy");
    m.execute(DB, "UPDATE t SET v = 'slave 1 has it' WHERE id = 1");
    oracle::assert_cycle(&mut sess1, &options(1), "slave 1: second cycle");

    let mut w = m.connect(DB);
    w.batch_execute("BEGIN; INSERT INTO t VALUES (100, 'W')")
        .expect("W writes");
    let mut cleaner = m.connect(DB);
    cleaner
        .batch_execute("SET statement_timeout = '60s'")
        .expect("timeout");
    let mut sess2 = oracle::session(m, s2, DB);
    let mut in_hook = Vec::new();
    let first = oracle::cycle_then(&mut sess2, &options(2), &mut |_tx| {
        w.batch_execute("COMMIT").ctx("W commits")?;
        // slave 1 without its own clean-up: the explicit rserv_clean_log() below does it
        let no_clean = CycleOptions {
            clean_log: false,
            ..options(1)
        };
        let c1 = oracle::cycle(&mut sess1, &no_clean)?;
        in_hook.push(format!("slave 1 cycle: {:?}", c1.outcome));
        if let Some(d) = c1.divergence() {
            return Err(failed("slave 1 diverged", d));
        }
        let n: i64 = cleaner
            .query_one("SELECT rserv_clean_log()", &[])
            .ctx("rserv_clean_log()")?
            .get(0);
        in_hook.push(format!("rserv_clean_log() removed {n} rows"));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("slave 2's first cycle failed: {e}"));
    assert!(
        matches!(first.outcome, Outcome::Applied { .. }),
        "slave 2's first cycle should apply its initial copy: {:?}",
        first.outcome
    );
    if let Some(d) = first.divergence() {
        panic!("slave 2 after its first change set differs from the master at its snapshot:\n{d}");
    }
    assert_eq!(
        one(s1, "SELECT v FROM t WHERE id = 100").as_deref(),
        Some("W"),
        "slave 1 should have received W inside the hook ({in_hook:?})"
    );
    let second = oracle::cycle(&mut sess2, &options(2))
        .unwrap_or_else(|e| panic!("slave 2's second cycle failed: {e}"));
    assert_eq!(
        one(s2, "SELECT v FROM t WHERE id = 100").as_deref(),
        Some("W"),
        "slave 2's second change set ({:?}) did not carry W's row 100, which committed after \
         its first snapshot; in slave 2's first prepare: {in_hook:?}\n{}",
        second.outcome,
        second.divergence().unwrap_or_default()
    );
    if let Some(d) = second.divergence() {
        panic!("slave 2 after its second change set:\n{d}");
    }
}

// ---------------------------------------------------------------------------------------------
// Item 3: row-level security
// ---------------------------------------------------------------------------------------------

/// Item 3: a change set is never filtered by row-level security. With RLS enabled on a
/// master table and a policy that hides rows from the replication role (a non-superuser, not
/// the owner, without BYPASSRLS), `replicate` fails naming the table and BYPASSRLS and leaves
/// the slave unchanged; with BYPASSRLS it replicates every row.
///
/// The refusal is new in 1.1. v1.0.0 exits 0 having applied a change set filtered by the
/// policy: the changed rows the role cannot see are deleted on the slave.
#[test]
fn row_level_security_never_filters_a_change_set() {
    let p = Pair::start("div-rls");
    for c in [&p.master, &p.slave] {
        c.execute("postgres", "CREATE ROLE rserv_repl LOGIN");
        c.execute(DB, "SELECT rserv_grant_replication('rserv_repl')");
    }
    p.table(
        "CREATE TABLE guarded (id int PRIMARY KEY, v text NOT NULL)",
        "guarded",
        None,
    );
    p.master.execute(
        DB,
        "GRANT SELECT ON guarded TO rserv_repl;
         INSERT INTO guarded SELECT g, CASE WHEN g % 2 = 0 THEN 'secret' ELSE 'public' END
           FROM generate_series(1, 6) g;",
    );
    let mut args: Vec<String> = p
        .conn_args()
        .into_iter()
        .filter(|a| !a.starts_with("--user="))
        .collect();
    args.extend(["--user=rserv_repl".to_string(), DB.into(), DB.into()]);
    let run = || rserv_tests::run_replicate(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let tables = public(&["guarded"]);
    assert_ok(&run(), "replicate as rserv_repl before RLS");
    oracle::assert_same(
        &oracle::dump_cluster(&p.master, DB, &tables),
        &oracle::dump_cluster(&p.slave, DB, &tables),
        "initial copy",
    );

    p.master.execute(
        DB,
        "ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
         CREATE POLICY no_secrets ON guarded FOR SELECT USING (v <> 'secret');
         UPDATE guarded SET v = 'secret' WHERE id = 1;      -- a visible row becomes hidden
         UPDATE guarded SET id = 20 WHERE id = 2;           -- a hidden row changes its key
         UPDATE guarded SET v = 'public too' WHERE id = 3;  -- a visible row changes
         INSERT INTO guarded VALUES (7, 'secret'), (9, 'public');",
    );
    let hidden = one(
        &p.master,
        "SET ROLE rserv_repl; SELECT (SELECT count(*) FROM guarded)::text",
    );
    assert_eq!(
        hidden.as_deref(),
        Some("3"),
        "the policy should show rserv_repl only 3 of the 8 rows"
    );
    let before = oracle::dump_cluster(&p.slave, DB, &tables);
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let after = oracle::dump_cluster(&p.slave, DB, &tables);
    let master = oracle::dump_cluster(&p.master, DB, &tables);
    assert!(
        out.status.code() == Some(1)
            && stderr.contains("guarded")
            && stderr.to_lowercase().contains("bypassrls"),
        "replicate as rserv_repl under RLS: expected exit 1 with an error naming table guarded \
         and BYPASSRLS, got exit {:?}\nstderr:\n{stderr}\nslave vs master now:\n{}",
        out.status.code(),
        oracle::diff(&master, &after).unwrap_or_else(|| "equal".into())
    );
    if let Some(d) = oracle::diff(&before, &after) {
        panic!("the refused run changed the slave (before -> after):\n{d}");
    }

    p.master
        .execute("postgres", "ALTER ROLE rserv_repl BYPASSRLS");
    assert_ok(&run(), "replicate as rserv_repl with BYPASSRLS");
    oracle::assert_same(
        &oracle::dump_cluster(&p.master, DB, &tables),
        &oracle::dump_cluster(&p.slave, DB, &tables),
        "after BYPASSRLS",
    );
}

// ---------------------------------------------------------------------------------------------
// Item 4: TRUNCATE between the snapshot and the reads
// ---------------------------------------------------------------------------------------------

/// Item 4: transaction X truncates t and inserts, holding its ACCESS EXCLUSIVE lock, while a
/// committed change to t is pending; a cycle starts and its prepare blocks on t; X commits.
/// The slave must end equal to the master as of the snapshot the cycle applied: one of the
/// two states the master had (before X, after X), never a mix.
///
/// v1.0.0: the prepare's read of t waits for X, then reads the truncated table with its old
/// snapshot and finds it empty: the changed row is deleted on the slave and nothing comes back
/// (the slave holds the old rows without row 3). Even the at_snapshot hook sees an empty t.
#[test]
fn truncate_committing_during_the_prepare_never_reaches_the_slave_half_applied() {
    let p = Pair::start("div-trunc");
    p.table(
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)",
        "t",
        None,
    );
    p.master.execute(
        DB,
        "INSERT INTO t SELECT g, 'initial' FROM generate_series(1, 10) g",
    );
    let mut s = p.session();
    oracle::assert_cycle(&mut s, &options(0), "initial copy");
    let tables = public(&["t"]);

    p.master
        .execute(DB, "UPDATE t SET v = 'committed change' WHERE id = 3");
    let before_x = oracle::dump_cluster(&p.master, DB, &tables);
    let mut x = p.master.connect(DB);
    x.batch_execute("BEGIN; TRUNCATE t; INSERT INTO t VALUES (100, 'X'), (101, 'X')")
        .expect("X");
    let checked: Result<Checked, Error> = std::thread::scope(|sc| {
        let cycle = sc.spawn(|| oracle::cycle(&mut s, &options(0)));
        wait_for_lock_waiter(&p.master, "public.t");
        x.batch_execute("COMMIT").expect("X commits");
        cycle.join().expect("cycle thread")
    });
    let after_x = oracle::dump_cluster(&p.master, DB, &tables);
    let checked = checked.unwrap_or_else(|e| panic!("the cycle failed: {e}"));
    let slave = &checked.slave;
    assert!(
        slave == &before_x || slave == &after_x,
        "the slave ({:?}) holds a state the master never had\nvs the master before X:\n{}vs the \
         master after X:\n{}as of the cycle's snapshot (at_snapshot hook):\n{}",
        checked.outcome,
        oracle::diff(&before_x, slave).unwrap_or_default(),
        oracle::diff(&after_x, slave).unwrap_or_default(),
        checked.divergence().unwrap_or_else(|| "equal".to_string())
    );
    if let Some(d) = checked.divergence() {
        panic!("the slave differs from the master as of the applied snapshot:\n{d}");
    }
    oracle::assert_cycle(&mut s, &options(0), "the cycle after X");
}

// ---------------------------------------------------------------------------------------------
// Item 5: watched columns follow renames and drops
// ---------------------------------------------------------------------------------------------

/// Item 5: watched columns follow renames; dropping a watched column updates the registration
/// with a WARNING; dropping the last one makes every column watched. Never a silent narrowing.
///
/// The WARNING is new in 1.1. v1.0.0: the capture trigger keeps the old column names, so a
/// renamed watched column no longer counts (its UPDATE is not replicated), and with the last
/// watched column dropped only key changes count.
#[test]
fn watched_columns_follow_renames_and_drops() {
    let p = Pair::start("div-watch");
    p.table(
        "CREATE TABLE w_rename (id int PRIMARY KEY, watch_me text, other text);
         INSERT INTO w_rename SELECT g, 'w', 'o' FROM generate_series(1, 3) g",
        "w_rename",
        Some("watch_me"),
    );
    p.table(
        "CREATE TABLE w_drop (id int PRIMARY KEY, keep_watch text, drop_watch text, other text);
         INSERT INTO w_drop SELECT g, 'k', 'd', 'o' FROM generate_series(1, 3) g",
        "w_drop",
        Some("keep_watch"),
    );
    p.master
        .execute(DB, "SELECT rserv_add_table('w_drop', 'drop_watch')");
    p.table(
        "CREATE TABLE w_last (id int PRIMARY KEY, last_watch text, other text);
         INSERT INTO w_last SELECT g, 'l', 'o' FROM generate_series(1, 3) g",
        "w_last",
        Some("last_watch"),
    );
    let mut s = p.session();
    oracle::assert_cycle(&mut s, &options(0), "initial copies");
    let (mut owner, notices) = connect_noticed(&p.master, "postgres");
    let mut failures = Vec::new();
    let phase = |s: &mut rserv_tests::pair::Session,
                 failures: &mut Vec<String>,
                 table: &str,
                 what: &str| {
        match oracle::cycle(s, &options(0)) {
            Err(e) => failures.push(format!("{what}: the cycle failed: {e}")),
            Ok(c) => {
                if let Some(d) = c.divergence_in(Some(&format!("public.{table}"))) {
                    failures.push(format!("{what}: after the cycle ({:?}):\n{d}", c.outcome));
                }
            }
        }
    };

    // rename a watched column, then change it
    p.both("ALTER TABLE w_rename RENAME COLUMN watch_me TO watched_renamed");
    p.master.execute(
        DB,
        "UPDATE w_rename SET watched_renamed = 'changed' WHERE id = 1",
    );
    phase(
        &mut s,
        &mut failures,
        "w_rename",
        "UPDATE of renamed watched column watch_me -> watched_renamed",
    );

    // drop one of two watched columns: a WARNING, the other one still counts
    let warned = |owner: &mut Client, sql: &str, column: &str, failures: &mut Vec<String>| {
        notices.lock().expect("notices").clear();
        owner
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", describe_pg_error(&e)));
        let got = notices.lock().expect("notices").clone();
        if !got
            .iter()
            .any(|n| n.starts_with("WARNING") && n.contains(column))
        {
            failures.push(format!(
                "{sql}: no WARNING naming the dropped watched column {column}; notices: {got:?}"
            ));
        }
    };
    warned(
        &mut owner,
        "ALTER TABLE w_drop DROP COLUMN drop_watch",
        "drop_watch",
        &mut failures,
    );
    p.slave
        .execute(DB, "ALTER TABLE w_drop DROP COLUMN drop_watch");
    p.master
        .execute(DB, "UPDATE w_drop SET keep_watch = 'changed' WHERE id = 2");
    phase(
        &mut s,
        &mut failures,
        "w_drop",
        "UPDATE of the remaining watched column after dropping the other",
    );

    // drop the last watched column: every column is watched from then on
    warned(
        &mut owner,
        "ALTER TABLE w_last DROP COLUMN last_watch",
        "last_watch",
        &mut failures,
    );
    p.slave
        .execute(DB, "ALTER TABLE w_last DROP COLUMN last_watch");
    p.master
        .execute(DB, "UPDATE w_last SET other = 'changed' WHERE id = 3");
    phase(
        &mut s,
        &mut failures,
        "w_last",
        "UPDATE of an ordinary column after dropping the last watched column",
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Item 6: two-phase commit
// ---------------------------------------------------------------------------------------------

/// Item 6: PREPARE TRANSACTION works every time on a replicated table; COMMIT PREPARED rows
/// arrive, ROLLBACK PREPARED rows never do, and a transaction left prepared across several
/// cycles arrives with the cycle after its COMMIT PREPARED.
///
/// v1.0.0: the capture trigger sends NOTIFY (at most every 100 ms per session), and PostgreSQL
/// refuses to PREPARE a transaction that executed NOTIFY: the first PREPARE of a session fails.
#[test]
fn two_phase_commit_on_replicated_tables() {
    const N: i32 = 50;
    const KEPT: i32 = N - 1;
    let p = pair_with("div-2pc", &[("max_prepared_transactions", "64")]);
    p.table(
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)",
        "t",
        None,
    );
    let mut s = p.session();
    oracle::assert_cycle(&mut s, &options(0), "initial copy");

    let mut w = p.master.connect(DB);
    let mut refused = Vec::new();
    for n in 0..N {
        let sql =
            format!("BEGIN; INSERT INTO t VALUES ({n}, 'prepared'); PREPARE TRANSACTION 'x{n}'");
        if let Some(e) = error_of(&mut w, &sql) {
            refused.push(format!("x{n}: {e}"));
        }
    }
    let prepared: Vec<i32> = p
        .master
        .query_strings(DB, "SELECT substr(gid, 2) FROM pg_prepared_xacts")
        .iter()
        .filter_map(|r| r[0].as_deref().and_then(|g| g.parse().ok()))
        .collect();
    let mut other = p.master.connect(DB);
    for n in prepared.iter().filter(|n| **n != KEPT) {
        let verb = if n % 3 == 0 { "ROLLBACK" } else { "COMMIT" };
        other
            .batch_execute(&format!("{verb} PREPARED 'x{n}'"))
            .unwrap_or_else(|e| panic!("{verb} PREPARED 'x{n}': {e}"));
    }
    oracle::assert_cycle(&mut s, &options(0), "after COMMIT/ROLLBACK PREPARED");
    let kept = prepared.contains(&KEPT);
    for i in 0..3 {
        p.master
            .execute(DB, &format!("INSERT INTO t VALUES ({}, 'plain')", 1000 + i));
        oracle::assert_cycle(
            &mut s,
            &options(0),
            &format!("cycle {i} with x{KEPT} prepared"),
        );
        assert_eq!(
            one(
                &p.slave,
                &format!("SELECT count(*)::text FROM t WHERE id = {KEPT}")
            )
            .as_deref(),
            Some("0"),
            "the still prepared x{KEPT} reached the slave"
        );
    }
    if kept {
        other
            .batch_execute(&format!("COMMIT PREPARED 'x{KEPT}'"))
            .expect("COMMIT PREPARED");
        let c = oracle::assert_cycle(
            &mut s,
            &options(0),
            &format!("after COMMIT PREPARED 'x{KEPT}'"),
        );
        assert_eq!(
            one(&p.slave, &format!("SELECT v FROM t WHERE id = {KEPT}")).as_deref(),
            Some("prepared"),
            "x{KEPT} did not arrive with the cycle after its COMMIT PREPARED ({:?})",
            c.outcome
        );
    }
    assert!(
        refused.is_empty(),
        "{} of {N} PREPARE TRANSACTION on a replicated table failed:\n{}",
        refused.len(),
        refused.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Item 7: unlogged tables
// ---------------------------------------------------------------------------------------------

/// Item 7: unlogged tables are refused on both sides: registering one, and turning a
/// registered table unlogged.
///
/// New in 1.1: v1.0.0 accepts all four (an unlogged master table is emptied by a crash
/// without anything being logged, and the slave keeps the rows).
#[test]
fn unlogged_tables_are_refused() {
    let p = Pair::start("div-unlogged");
    p.both(
        "CREATE UNLOGGED TABLE u (id int PRIMARY KEY, v text);
         CREATE TABLE l (id int PRIMARY KEY, v text);",
    );
    p.master.execute(DB, "SELECT rserv_add_table('l')");
    p.slave.execute(DB, "SELECT rserv_slave_add_table('l')");
    let mut failures = Vec::new();
    for (c, side, sql) in [
        (&p.master, "master", "SELECT rserv_add_table('u')"),
        (&p.slave, "slave", "SELECT rserv_slave_add_table('u')"),
        (&p.master, "master", "ALTER TABLE l SET UNLOGGED"),
        (&p.slave, "slave", "ALTER TABLE l SET UNLOGGED"),
    ] {
        let mut client = c.connect(DB);
        match error_of(&mut client, sql) {
            Some(e) if e.to_lowercase().contains("unlogged") => {}
            Some(e) => failures.push(format!(
                "{side}: {sql}: refused without saying unlogged: {e}"
            )),
            None => failures.push(format!("{side}: {sql}: succeeded")),
        }
    }
    for (c, side) in [(&p.master, "master"), (&p.slave, "slave")] {
        let persistence = one(
            c,
            "SELECT string_agg(relname || '=' || relpersistence::text, ',' ORDER BY relname) \
             FROM pg_class WHERE relname IN ('l', 'u')",
        );
        if persistence.as_deref() != Some("l=p,u=u") {
            failures.push(format!(
                "{side}: table persistence afterwards: {persistence:?}"
            ));
        }
        let triggers = one(
            c,
            "SELECT count(*)::text FROM pg_trigger WHERE tgrelid = 'u'::regclass",
        );
        if triggers.as_deref() != Some("0") {
            failures.push(format!(
                "{side}: the unlogged table u carries {triggers:?} rserv triggers"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// (a): unique columns count as watched
// ---------------------------------------------------------------------------------------------

/// (a): a table registered with watched columns whose unwatched columns are UNIQUE (a
/// constraint, a unique index, an exclusion constraint): those columns count as watched, so
/// their UPDATEs replicate and a later change never hits a unique violation on the slave.
///
/// v1.0.0: the UPDATEs are not logged (the cycle is InSync, the slave keeps the old values),
/// and the next INSERT reusing a freed value fails on the slave with a unique violation.
#[test]
fn unique_unwatched_columns_count_as_watched() {
    let p = Pair::start("div-unique");
    p.both(
        "CREATE TABLE uq_con (id int PRIMARY KEY, w text, u int UNIQUE);
            CREATE TABLE uq_idx (id int PRIMARY KEY, w text, u int);
            CREATE UNIQUE INDEX uq_idx_u ON uq_idx (u);
            CREATE TABLE uq_excl (id int PRIMARY KEY, w text, r int4range,
                                  EXCLUDE USING gist (r WITH &&));",
    );
    let tables = ["uq_con", "uq_idx", "uq_excl"];
    for t in tables {
        p.master
            .execute(DB, &format!("SELECT rserv_add_table('{t}', 'w')"));
        p.slave
            .execute(DB, &format!("SELECT rserv_slave_add_table('{t}', 'w')"));
    }
    p.master.execute(
        DB,
        "INSERT INTO uq_con VALUES (1, 'a', 10), (2, 'b', 20);
         INSERT INTO uq_idx VALUES (1, 'a', 10), (2, 'b', 20);
         INSERT INTO uq_excl VALUES (1, 'a', '[0,10)'), (2, 'b', '[10,20)');",
    );
    let mut s = p.session();
    oracle::assert_cycle(&mut s, &options(0), "initial copies");
    // change only the unique (unwatched) columns
    p.master.execute(
        DB,
        "UPDATE uq_con SET u = 11 WHERE id = 1;
         UPDATE uq_idx SET u = 11 WHERE id = 1;
         UPDATE uq_excl SET r = '[100,110)' WHERE id = 1;",
    );
    let mut failures = Vec::new();
    match oracle::cycle(&mut s, &options(0)) {
        Err(e) => failures.push(format!(
            "UPDATE of the unique columns: the cycle failed: {e}"
        )),
        Ok(c) => {
            if let Some(d) = c.divergence() {
                failures.push(format!(
                    "UPDATE of the unique columns did not replicate ({:?}):\n{d}",
                    c.outcome
                ));
            }
        }
    }
    // new rows take the freed values
    p.master.execute(
        DB,
        "INSERT INTO uq_con VALUES (3, 'c', 10);
         INSERT INTO uq_idx VALUES (3, 'c', 10);
         INSERT INTO uq_excl VALUES (3, 'c', '[0,10)');",
    );
    match oracle::cycle(&mut s, &options(0)) {
        Err(e) => failures.push(format!(
            "INSERT of rows reusing the freed unique values: the cycle failed: {e}"
        )),
        Ok(c) => {
            if let Some(d) = c.divergence() {
                failures.push(format!("after the INSERTs ({:?}):\n{d}", c.outcome));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// (b): re-registering a slave table before the next cycle
// ---------------------------------------------------------------------------------------------

/// (b): `rserv_slave_remove_table`, local writes on the slave, `rserv_slave_add_table` again,
/// all before the next cycle: that cycle gives the table a fresh copy.
///
/// v1.0.0: the master never learns that the table left the slave (it only notices at a
/// prepare), so it stays "ready": the next cycle sends only the master's own change and the
/// local writes remain.
#[test]
fn slave_table_re_registered_between_cycles_gets_a_fresh_copy() {
    let p = Pair::start("div-rereg");
    p.table(
        "CREATE TABLE t (id int PRIMARY KEY, v text NOT NULL)",
        "t",
        None,
    );
    p.master.execute(
        DB,
        "INSERT INTO t SELECT g, 'master' FROM generate_series(1, 10) g",
    );
    let mut s = p.session();
    oracle::assert_cycle(&mut s, &options(0), "initial copy");
    p.slave.execute(
        DB,
        "SELECT rserv_slave_remove_table('t');
         INSERT INTO t VALUES (500, 'local');
         UPDATE t SET v = 'local' WHERE id = 2;
         DELETE FROM t WHERE id = 3;
         SELECT rserv_slave_add_table('t');",
    );
    p.master
        .execute(DB, "UPDATE t SET v = 'master changed' WHERE id = 5");
    let c = oracle::cycle(&mut s, &options(0))
        .unwrap_or_else(|e| panic!("the cycle after re-registering failed: {e}"));
    if let Some(d) = c.divergence() {
        panic!(
            "the cycle after rserv_slave_remove_table, local writes and rserv_slave_add_table \
             ({:?}) left the local writes on the slave:\n{d}",
            c.outcome
        );
    }
}
