//! The generator: a seed gives a schema and a schedule.
//!
//! The single driver thread must never wait for itself, so the generator keeps a model of
//! what every connection holds: keys are partitioned between writer connections (connection c
//! owns key ordinals o with o % n == c, and the same for values of unique columns), statements
//! that touch a whole table (bulk UPDATE/DELETE, TRUNCATE) first take the table for their
//! transaction, a transaction that did a TRUNCATE ends before anything else reads the table,
//! DDL waits until no open or prepared transaction touched the table, and a connection does
//! not touch a table again while a transaction it prepared on that table is unresolved. The
//! executor sets a lock_timeout as a safety net; hitting it is reported as a generator bug.

use super::rng::Rng;
use super::schedule::{Schedule, Step, WRITER_SETTINGS};
use super::schema::{
    Base, Catalogue, ColKind, ColSpec, ColType, DomainSpec, EnumSpec, Fields, LiveTable, Rls,
    SlaveVariant, TableSpec, Vals,
};
use std::collections::BTreeSet;

/// What to generate. `avoid` switches features off (to hunt a second bug while a first one
/// is known): charkey, typmodkey, rls, truncate_race, 2pc, watched, unique, slave_readd,
/// master_readd, join, race_hook, restart, ddl, partition, truncate, superuser, nonsuper,
/// enum_domain.
#[derive(Clone, Debug, Default)]
pub struct GenConfig {
    /// target number of steps (default: 60 to 160, from the seed)
    pub steps: Option<usize>,
    pub avoid: Vec<String>,
}

impl GenConfig {
    pub fn on(&self, feature: &str) -> bool {
        !self.avoid.iter().any(|a| a == feature)
    }

    /// From `RSERV_GEN_AVOID` (comma-separated) and `RSERV_GEN_STEPS`.
    pub fn from_env() -> GenConfig {
        GenConfig {
            steps: std::env::var("RSERV_GEN_STEPS")
                .ok()
                .and_then(|s| s.parse().ok()),
            avoid: std::env::var("RSERV_GEN_AVOID")
                .unwrap_or_default()
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        }
    }
}

const PIECES: &[&str] = &[
    "a", "B", "x y", "\"", "'", ";", "--", "é", "日本", "🦀", ")", "(", ".", "%I", "select", "\\",
    "$$", "Ω", "Ä",
];

const LABELS: &[&str] = &[
    "a b",
    "It's",
    "ü",
    "x\"y",
    "back\\slash",
    "{br}",
    "comma,",
    "  lead",
    "tab\t",
    "NULL",
    "z",
];

fn truncate_bytes(mut s: String, max: usize) -> String {
    while s.len() > max {
        s.pop();
    }
    s
}

/// A name: plain (`t3`) or odd (quotes, spaces, unicode) with probability `odd_pct`; the
/// suffix keeps names unique.
fn name(rng: &mut Rng, prefix: &str, i: usize, odd_pct: u64) -> String {
    if !rng.pct(odd_pct) {
        return format!("{prefix}{i}");
    }
    let mut n = String::new();
    for _ in 0..rng.range(1, 3) {
        let piece: &&str = rng.pick(PIECES);
        n.push_str(piece);
    }
    let suffix = format!("{prefix}{i}");
    let n = truncate_bytes(n, 60 - suffix.len());
    format!("{n}{suffix}")
}

fn key_base(rng: &mut Rng, cat: &Catalogue, cfg: &GenConfig) -> Base {
    let typmod = cfg.on("typmodkey");
    let charkey = cfg.on("charkey") && typmod;
    let w = [
        if charkey { 10 } else { 0 }, // char(n)
        if typmod { 5 } else { 0 },   // varchar(n)
        if charkey { 5 } else { 0 },  // bit(n)
        if typmod { 4 } else { 0 },   // varbit(n)
        if typmod { 6 } else { 0 },   // numeric(p,s)
        3,                            // numeric
        if typmod { 5 } else { 2 },   // timestamp(p)
        if typmod { 5 } else { 2 },   // timestamptz(p)
        if typmod { 4 } else { 1 },   // time(p)
        if typmod { 5 } else { 1 },   // interval fields
        6,                            // text
        6,                            // int
        4,                            // bigint
        3,                            // uuid
        3,                            // bytea
        4,                            // date
        1,                            // bool
        3,                            // inet
        3,                            // float8
        if cat.enums.is_empty() { 0 } else { 3 },
    ];
    let p = |rng: &mut Rng| {
        if typmod && rng.pct(75) {
            Some(rng.below(7) as u8)
        } else {
            None
        }
    };
    match rng.weighted(&w) {
        0 => Base::Char(rng.range(2, 6) as u8),
        1 => Base::Varchar(rng.range(1, 8) as u8),
        2 => Base::Bit(rng.range(2, 10) as u8),
        3 => Base::Varbit(rng.range(2, 8) as u8),
        4 => {
            let prec = rng.range(3, 12) as u8;
            Base::Numeric(prec, rng.below(u64::from(prec.min(5)) + 1) as u8)
        }
        5 => Base::NumericAny,
        6 => Base::Timestamp(p(rng)),
        7 => Base::Timestamptz(p(rng)),
        8 => Base::Time(p(rng)),
        9 => {
            let f = if typmod {
                *rng.pick(&Fields::ALL)
            } else {
                Fields::All
            };
            Base::Interval(f, if f.takes_precision() { p(rng) } else { None })
        }
        10 => Base::Text,
        11 => Base::Int4,
        12 => Base::Int8,
        13 => Base::Uuid,
        14 => Base::Bytea,
        15 => Base::Date,
        16 => Base::Bool,
        17 => Base::Inet,
        18 => Base::Float8,
        _ => Base::Enum(rng.below(cat.enums.len() as u64) as usize),
    }
}

/// A key-capable column type: a base type, sometimes through a domain, sometimes an array.
fn key_type(rng: &mut Rng, cat: &mut Catalogue, cfg: &GenConfig) -> ColType {
    let base = key_base(rng, cat, cfg);
    // (a domain over an enum has no = operator: rserv's queries fail on it)
    let domain = if rng.pct(12) && (cfg.on("enum_domain") || !matches!(base, Base::Enum(_))) {
        let i = cat.domains.len();
        cat.domains.push(DomainSpec {
            name: name(rng, "dom", i, 40),
            base: base.clone(),
        });
        Some(i)
    } else {
        None
    };
    ColType {
        base,
        domain,
        array: rng.pct(12),
    }
}

fn value_type(rng: &mut Rng, cat: &mut Catalogue, cfg: &GenConfig) -> ColType {
    if rng.pct(8) {
        return ColType::plain(Base::Jsonb);
    }
    let mut all = cfg.clone();
    all.avoid.clear();
    key_type(rng, cat, &all)
}

#[derive(Clone, Default, Debug)]
struct ConnModel {
    in_txn: bool,
    touched: BTreeSet<usize>,
    owned: BTreeSet<usize>,
    /// this transaction did a TRUNCATE: it must end before anything else reads a table
    strong: bool,
    savepoints: usize,
}

#[derive(Clone, Debug)]
struct Prepared {
    gid: usize,
    c: usize,
    touched: BTreeSet<usize>,
    owned: BTreeSet<usize>,
}

struct Gen {
    rng: Rng,
    cfg: GenConfig,
    cat: Catalogue,
    live: Vec<LiveTable>,
    pool: Vec<u64>,
    exists: Vec<BTreeSet<u64>>,
    conns: Vec<ConnModel>,
    prepared: Vec<Prepared>,
    next_gid: usize,
    next_col: Vec<usize>,
    joined: bool,
    /// physical tables registered on each slave
    slave_reg: [BTreeSet<(usize, usize)>; 2],
    /// physical tables a slave removed and will register again later
    slave_removed: [BTreeSet<(usize, usize)>; 2],
    superuser: bool,
    bypass: bool,
    cycles: [usize; 2],
    steps: Vec<Step>,
}

pub fn generate(seed: u64, cfg: &GenConfig) -> Schedule {
    let mut rng = Rng::new(seed);
    let mut srng = rng.fork();
    let mut wrng = rng.fork();
    let superuser = if !cfg.on("superuser") {
        false
    } else if !cfg.on("nonsuper") {
        true
    } else {
        rng.pct(50)
    };
    let bypass_rls = superuser || rng.pct(55);
    // PostgreSQL refuses quotes, $, \, newlines and comment markers in the schema of an
    // extension that uses @extschema@
    let ext_schema = rng.pct(15).then(|| {
        let safe = ["x y", "é", "日本", "Ω", "Ä", "select", "B"];
        format!("{}{}ext0", rng.pick(&safe), rng.pick(&safe))
    });
    let nschemas = rng.below(3) as usize;
    let schemas: Vec<String> = (0..nschemas)
        .map(|i| name(&mut rng, "sch", i, 70))
        .collect();
    let nconn = rng.range(2, 4) as usize;
    let writers: Vec<usize> = (0..nconn)
        .map(|_| rng.below(WRITER_SETTINGS.len() as u64) as usize)
        .collect();

    // schema
    let mut cat = Catalogue::default();
    for i in 0..rng.below(3) as usize {
        let mut labels: Vec<String> = LABELS.iter().map(|s| s.to_string()).collect();
        srng.shuffle(&mut labels);
        labels.truncate(srng.range(3, 6) as usize);
        cat.enums.push(EnumSpec {
            name: name(&mut srng, "enum", i, 40),
            labels,
        });
    }
    let ntables = srng.range(2, 5) as usize;
    let mut tables = Vec::new();
    for i in 0..ntables {
        tables.push(gen_table(&mut srng, i, &mut cat, &schemas, nconn, cfg));
    }

    let live: Vec<LiveTable> = tables.iter().map(LiveTable::from_spec).collect();
    let pool: Vec<u64> = live
        .iter()
        .map(|t| t.key_space(&cat).min(10 * nconn as u64).max(1))
        .collect();
    let exists = tables
        .iter()
        .map(|t| t.initial.iter().map(|(k, _)| *k).collect())
        .collect();
    let next_col = tables
        .iter()
        .map(|t| t.cols.iter().map(|c| c.id).max().unwrap_or(0) + 1)
        .collect();
    let slave1: BTreeSet<(usize, usize)> = tables
        .iter()
        .enumerate()
        .flat_map(|(i, t)| (0..t.physical().len()).map(move |p| (i, p)))
        .collect();
    let mut g = Gen {
        rng: wrng.fork(),
        cfg: cfg.clone(),
        cat,
        live,
        pool,
        exists,
        conns: vec![ConnModel::default(); nconn],
        prepared: Vec::new(),
        next_gid: 0,
        next_col,
        joined: false,
        slave_reg: [slave1, BTreeSet::new()],
        slave_removed: [BTreeSet::new(), BTreeSet::new()],
        superuser,
        bypass: bypass_rls,
        cycles: [0, 0],
        steps: Vec::new(),
    };
    let target = cfg.steps.unwrap_or_else(|| wrng.range(60, 160) as usize);
    let join_at = if cfg.on("join") && wrng.pct(70) {
        Some(wrng.range(target as u64 / 5, target as u64 * 3 / 5) as usize)
    } else {
        None
    };
    while g.steps.len() < target {
        if join_at.is_some_and(|j| g.steps.len() >= j) && !g.joined {
            g.join();
            continue;
        }
        g.one();
    }
    Schedule {
        seed,
        superuser,
        bypass_rls,
        ext_schema,
        schemas,
        writers,
        types: g.cat,
        tables,
        steps: g.steps,
    }
}

fn gen_table(
    rng: &mut Rng,
    i: usize,
    cat: &mut Catalogue,
    schemas: &[String],
    nconn: usize,
    cfg: &GenConfig,
) -> TableSpec {
    let schema = if schemas.is_empty() || rng.pct(50) {
        "public".to_string()
    } else {
        rng.pick(schemas).clone()
    };
    let tname = name(rng, "t", i, 35);
    let mut cols: Vec<ColSpec> = Vec::new();
    let mut next = 0usize;
    let mut col = |rng: &mut Rng, ty: ColType, kind: ColKind, cols: &mut Vec<ColSpec>| {
        let id = next;
        next += 1;
        cols.push(ColSpec {
            id,
            name: name(rng, "c", id, 30),
            ty,
            kind,
            not_null: false,
            unique: false,
            default: None,
            dropped: false,
            omit: false,
        });
        id
    };
    let nkey = 1 + rng.weighted(&[60, 30, 10]);
    let mut key = Vec::new();
    for _ in 0..nkey {
        let ty = key_type(rng, cat, cfg);
        key.push(col(rng, ty, ColKind::Plain, &mut cols));
    }
    let first = &cols[0].ty;
    let partitioned = cfg.on("partition")
        && rng.pct(15)
        && first.domain.is_none()
        && !first.array
        && first.base.hash_partitionable();
    let partitions: Vec<String> = if partitioned {
        (0..rng.range(2, 3))
            .map(|p| truncate_bytes(format!("{tname}_p{p}"), 63))
            .collect()
    } else {
        Vec::new()
    };
    let alt_key = !partitioned && rng.pct(25);
    let mut pk_identity = None;
    if alt_key {
        for c in cols.iter_mut() {
            c.not_null = true;
        }
        if rng.pct(50) {
            let always = rng.pct(50);
            pk_identity = Some(col(
                rng,
                ColType::plain(Base::Int8),
                ColKind::Identity { always },
                &mut cols,
            ));
        }
    }
    for _ in 0..rng.range(1, 5) {
        let ty = value_type(rng, cat, cfg);
        let id = col(rng, ty, ColKind::Plain, &mut cols);
        if rng.pct(15) {
            let c = &mut cols[id];
            let n = rng.below(c.ty.card(cat));
            c.default = Some(c.ty.text(n, cat));
        }
    }
    if rng.pct(20) {
        let from = col(rng, ColType::plain(Base::Int4), ColKind::Plain, &mut cols);
        col(
            rng,
            ColType::plain(Base::Int8),
            ColKind::Generated { from },
            &mut cols,
        );
    }
    if !partitioned && pk_identity.is_none() && rng.pct(10) {
        let always = rng.pct(50);
        col(
            rng,
            ColType::plain(Base::Int8),
            ColKind::Identity { always },
            &mut cols,
        );
    }
    if cfg.on("unique") && !partitioned && rng.pct(25) {
        let ty = key_type(rng, cat, cfg);
        let id = col(rng, ty, ColKind::Plain, &mut cols);
        cols[id].unique = true;
    }
    let rls = if cfg.on("rls") && !partitioned && rng.pct(15) {
        let vis = col(rng, ColType::plain(Base::Bool), ColKind::Plain, &mut cols);
        Some(Rls {
            vis,
            hide_all: rng.pct(20),
        })
    } else {
        None
    };
    let watchable: Vec<usize> = cols
        .iter()
        .filter(|c| {
            !key.contains(&c.id)
                && matches!(c.kind, ColKind::Plain)
                && !c.unique
                && Some(c.id) != rls.as_ref().map(|r| r.vis)
        })
        .map(|c| c.id)
        .collect();
    let watched = if cfg.on("watched") && !watchable.is_empty() && rng.pct(30) && !alt_key {
        let mut w = watchable.clone();
        rng.shuffle(&mut w);
        w.truncate(rng.range(1, 2) as usize);
        Some(w)
    } else {
        None
    };
    if rng.pct(25) {
        for _ in 0..rng.range(1, 2) {
            let ty = value_type(rng, cat, cfg);
            let id = col(rng, ty, ColKind::Plain, &mut cols);
            cols[id].dropped = true;
            // somewhere among the other columns, not first
            let at = 1 + rng.below(cols.len() as u64 - 1) as usize;
            let c = cols.pop().expect("just pushed");
            cols.insert(at, c);
        }
    }
    let slave = SlaveVariant {
        shuffle: rng.pct(40).then(|| rng.next_u64()),
        dropped: rng.pct(20),
        extra: rng.pct(20),
        junk: if partitioned || !rng.pct(25) {
            Vec::new()
        } else {
            (0..rng.range(1, 3))
                .map(|_| rng.below(10 * nconn as u64))
                .collect()
        },
        plain_partitions: partitioned && rng.pct(40),
    };
    let mut spec = TableSpec {
        schema,
        name: tname,
        cols,
        key,
        alt_key,
        pk_identity,
        watched,
        rls,
        partitions,
        slave,
        initial: Vec::new(),
        omit: false,
    };
    let lt = LiveTable::from_spec(&spec);
    let pool = lt.key_space(cat).min(10 * nconn as u64).max(1);
    let mut keys: Vec<u64> = (0..pool).collect();
    rng.shuffle(&mut keys);
    keys.truncate(rng.below(11) as usize);
    for k in keys {
        let c = (k % nconn as u64) as usize;
        let vals = initial_vals(rng, &lt, cat, c, nconn);
        spec.initial.push((k, vals));
    }
    spec.slave.junk.retain(|k| *k < pool);
    spec
}

fn initial_vals(rng: &mut Rng, t: &LiveTable, cat: &Catalogue, c: usize, nconn: usize) -> Vals {
    let mut out = Vec::new();
    for col in t.writable() {
        if rng.pct(80) {
            out.push((col.id, value(rng, t, col, cat, c, nconn)));
        }
    }
    out
}

/// A value for column `col` written by connection `c`: unique columns take values from the
/// connection's own share, the RLS column hides rows now and then.
fn value(
    rng: &mut Rng,
    t: &LiveTable,
    col: &ColSpec,
    cat: &Catalogue,
    c: usize,
    nconn: usize,
) -> Option<String> {
    if t.rls.as_ref().is_some_and(|r| r.vis == col.id) {
        return match rng.below(10) {
            0..=3 => Some("f".into()),
            4 => None,
            _ => Some("t".into()),
        };
    }
    if col.unique {
        if rng.pct(10) {
            return None;
        }
        let card = col.ty.card(cat);
        let n = (c as u64 + nconn as u64 * rng.below(4)) % card.max(1);
        if (n % nconn as u64) as usize != c {
            return None;
        }
        return Some(col.ty.text(n, cat));
    }
    if !col.not_null && rng.pct(12) {
        return None;
    }
    Some(col.ty.text(rng.below(col.ty.card(cat)), cat))
}

impl Gen {
    fn nconn(&self) -> usize {
        self.conns.len()
    }

    fn ntables(&self) -> usize {
        self.live.len()
    }

    fn can_touch(&self, c: usize, t: usize) -> bool {
        self.conns
            .iter()
            .enumerate()
            .all(|(d, m)| d == c || !m.owned.contains(&t))
            && self
                .prepared
                .iter()
                .all(|p| !(p.owned.contains(&t) || (p.c == c && p.touched.contains(&t))))
    }

    fn can_own(&self, c: usize, t: usize) -> bool {
        self.can_touch(c, t)
            && self
                .conns
                .iter()
                .enumerate()
                .all(|(d, m)| d == c || !m.touched.contains(&t))
            && self.prepared.iter().all(|p| !p.touched.contains(&t))
    }

    /// No open or prepared transaction touched t: DDL and registration may lock it.
    fn quiet(&self, t: usize) -> bool {
        self.conns.iter().all(|m| !m.touched.contains(&t))
            && self.prepared.iter().all(|p| !p.touched.contains(&t))
    }

    fn own_keys(&self, c: usize, t: usize) -> Vec<u64> {
        let n = self.nconn() as u64;
        (0..self.pool[t]).filter(|o| o % n == c as u64).collect()
    }

    fn existing_key(&mut self, c: usize, t: usize) -> Option<u64> {
        let own = self.own_keys(c, t);
        let ex: Vec<u64> = own
            .iter()
            .copied()
            .filter(|k| self.exists[t].contains(k))
            .collect();
        if !ex.is_empty() && self.rng.pct(85) {
            return Some(*self.rng.pick(&ex));
        }
        (!own.is_empty()).then(|| *self.rng.pick(&own))
    }

    fn free_key(&mut self, c: usize, t: usize) -> Option<u64> {
        let own = self.own_keys(c, t);
        let free: Vec<u64> = own
            .iter()
            .copied()
            .filter(|k| !self.exists[t].contains(k))
            .collect();
        if !free.is_empty() && self.rng.pct(80) {
            return Some(*self.rng.pick(&free));
        }
        (!own.is_empty()).then(|| *self.rng.pick(&own))
    }

    fn vals(&mut self, c: usize, t: usize, update: bool) -> Vals {
        let lt = self.live[t].clone();
        let cols: Vec<ColSpec> = lt.writable().into_iter().cloned().collect();
        if cols.is_empty() {
            return Vec::new();
        }
        let chosen: Vec<ColSpec> = if update {
            let watched = lt.watched_now().unwrap_or_default();
            let (w, u): (Vec<ColSpec>, Vec<ColSpec>) =
                cols.iter().cloned().partition(|c| watched.contains(&c.id));
            let from = if !w.is_empty() && (u.is_empty() || self.rng.pct(50)) {
                w
            } else if !u.is_empty() {
                u
            } else {
                cols.clone()
            };
            let mut from = from;
            self.rng.shuffle(&mut from);
            from.truncate(self.rng.range(1, 2) as usize);
            from
        } else {
            cols.into_iter().filter(|_| self.rng.pct(70)).collect()
        };
        let n = self.nconn();
        chosen
            .iter()
            .map(|col| (col.id, value(&mut self.rng, &lt, col, &self.cat, c, n)))
            .collect()
    }

    fn touch(&mut self, c: usize, t: usize) {
        if self.conns[c].in_txn {
            self.conns[c].touched.insert(t);
        }
    }

    fn push(&mut self, s: Step) {
        self.steps.push(s);
    }

    /// Writer statements of connection c on table t (one step, or a few for the composite
    /// ones). Returns false when nothing fits.
    fn dml(&mut self, c: usize, t: usize) -> bool {
        if !self.can_touch(c, t) || self.own_keys(c, t).is_empty() {
            return false;
        }
        let may_own = self.can_own(c, t);
        let in_txn = self.conns[c].in_txn;
        let trunc = may_own && self.cfg.on("truncate");
        let w = [
            35,
            28,
            10,
            7,
            4,
            5,
            if may_own { 2 } else { 0 },
            if may_own { 1 } else { 0 },
            if trunc { 3 } else { 0 },
        ];
        self.touch(c, t);
        match self.rng.weighted(&w) {
            0 => {
                let Some(k) = self.free_key(c, t) else {
                    return false;
                };
                let vals = self.vals(c, t, false);
                self.exists[t].insert(k);
                self.push(Step::Insert { c, t, k, vals });
            }
            1 => {
                let Some(k) = self.existing_key(c, t) else {
                    return false;
                };
                let vals = self.vals(c, t, true);
                self.push(Step::Update { c, t, k, vals });
            }
            2 => {
                let Some(k) = self.existing_key(c, t) else {
                    return false;
                };
                self.exists[t].remove(&k);
                self.push(Step::Delete { c, t, k });
            }
            3 => {
                let (Some(k), Some(to)) = (self.existing_key(c, t), self.free_key(c, t)) else {
                    return false;
                };
                if self.exists[t].remove(&k) {
                    self.exists[t].insert(to);
                }
                self.push(Step::ChangeKey { c, t, k, to });
            }
            4 => {
                let own = self.own_keys(c, t);
                if own.len() < 3 {
                    return false;
                }
                let (Some(a), Some(b), Some(tmp)) = (
                    self.existing_key(c, t),
                    self.existing_key(c, t),
                    self.free_key(c, t),
                ) else {
                    return false;
                };
                if a == b || a == tmp || b == tmp {
                    return false;
                }
                self.push(Step::SwapKeys { c, t, a, b, tmp });
            }
            5 => {
                let Some(k) = self.existing_key(c, t) else {
                    return false;
                };
                let vals = self.vals(c, t, false);
                self.push(Step::Delete { c, t, k });
                self.push(Step::Insert { c, t, k, vals });
                self.exists[t].insert(k);
            }
            6 => {
                let lt = &self.live[t];
                let cols: Vec<usize> = lt
                    .writable()
                    .iter()
                    .filter(|c| !c.unique)
                    .map(|c| c.id)
                    .collect();
                if cols.is_empty() {
                    return false;
                }
                let id = *self.rng.pick(&cols);
                let col = lt.col(id).cloned().expect("live column");
                let lt = lt.clone();
                let n = self.nconn();
                let v = value(&mut self.rng, &lt, &col, &self.cat, c, n);
                if in_txn {
                    self.conns[c].owned.insert(t);
                }
                self.push(Step::UpdateAll {
                    c,
                    t,
                    vals: vec![(id, v)],
                });
            }
            7 => {
                if in_txn {
                    self.conns[c].owned.insert(t);
                }
                self.exists[t].clear();
                self.push(Step::DeleteAll { c, t });
            }
            _ => {
                if in_txn {
                    self.conns[c].owned.insert(t);
                    self.conns[c].strong = true;
                }
                self.exists[t].clear();
                self.push(Step::Truncate { c, t });
                // TRUNCATE followed by inserts (in its transaction, or autocommit)
                if self.rng.pct(50) {
                    for _ in 0..self.rng.range(1, 3) {
                        if let Some(k) = self.free_key(c, t) {
                            let vals = self.vals(c, t, false);
                            self.exists[t].insert(k);
                            self.push(Step::Insert { c, t, k, vals });
                        }
                    }
                }
            }
        }
        true
    }

    fn end_txn(&mut self, c: usize, how: usize) {
        let m = std::mem::take(&mut self.conns[c]);
        match how {
            0 => self.push(Step::Commit { c }),
            1 => self.push(Step::Rollback { c }),
            _ => {
                let gid = self.next_gid;
                self.next_gid += 1;
                self.prepared.push(Prepared {
                    gid,
                    c,
                    touched: m.touched,
                    owned: m.owned,
                });
                self.push(Step::Prepare { c, gid });
            }
        }
    }

    fn writer(&mut self) {
        let c = self.rng.below(self.nconn() as u64) as usize;
        let m = self.conns[c].clone();
        if !m.in_txn {
            if self.rng.pct(45) {
                self.conns[c].in_txn = true;
                self.push(Step::Begin { c });
                return;
            }
        } else {
            let r = self.rng.below(100);
            if r < 16 {
                let two_pc = self.cfg.on("2pc") && !m.strong && self.prepared.len() < 4;
                let how = self.rng.weighted(&[60, 15, if two_pc { 25 } else { 0 }]);
                self.end_txn(c, how);
                return;
            }
            if r < 22 {
                if m.savepoints > 0 && self.rng.pct(50) {
                    let sp = self.rng.below(m.savepoints as u64) as usize;
                    self.conns[c].savepoints = sp + 1;
                    self.push(Step::RollbackTo { c, sp });
                } else {
                    self.conns[c].savepoints += 1;
                    self.push(Step::Savepoint {
                        c,
                        sp: m.savepoints,
                    });
                }
                return;
            }
        }
        for _ in 0..4 {
            let t = self.rng.below(self.ntables() as u64) as usize;
            if self.live[t].omit {
                continue;
            }
            if self.dml(c, t) {
                return;
            }
        }
    }

    /// Transactions that did a TRUNCATE end before anything else reads their tables.
    fn end_strong(&mut self) {
        for c in 0..self.nconn() {
            if self.conns[c].strong {
                let how = if self.rng.pct(80) { 0 } else { 1 };
                self.end_txn(c, how);
            }
        }
    }

    fn joined(&self, s: usize) -> bool {
        s == 0 || self.joined
    }

    /// Steps for the inside of a prepare transaction (no DDL, nothing that waits for locks).
    fn hook(&mut self, s: usize, race: bool) -> Vec<Step> {
        let other = 1 - s;
        let mut hook = Vec::new();
        if race {
            let mut open: Vec<usize> = (0..self.nconn())
                .filter(|c| self.conns[*c].in_txn)
                .collect();
            self.rng.shuffle(&mut open);
            for c in open {
                self.conns[c] = ConnModel::default();
                hook.push(Step::Commit { c });
            }
            for p in std::mem::take(&mut self.prepared) {
                hook.push(Step::CommitPrepared { gid: p.gid });
            }
            if self.joined(other) {
                self.cycles[other] += 1;
                hook.push(Step::Cycle {
                    s: other,
                    clean: true,
                    hook: Vec::new(),
                });
            }
            hook.push(Step::CleanLog);
            return hook;
        }
        for _ in 0..self.rng.range(1, 3) {
            match self.rng.below(5) {
                0 => {
                    let open: Vec<usize> = (0..self.nconn())
                        .filter(|c| self.conns[*c].in_txn)
                        .collect();
                    if let Some(&c) = open.get(self.rng.below(open.len().max(1) as u64) as usize) {
                        let commit = self.rng.pct(80);
                        self.conns[c] = ConnModel::default();
                        hook.push(if commit {
                            Step::Commit { c }
                        } else {
                            Step::Rollback { c }
                        });
                    }
                }
                1 => {
                    if !self.prepared.is_empty() {
                        let i = self.rng.below(self.prepared.len() as u64) as usize;
                        let p = self.prepared.remove(i);
                        hook.push(Step::CommitPrepared { gid: p.gid });
                    }
                }
                2 => {
                    let idle: Vec<usize> = (0..self.nconn())
                        .filter(|c| !self.conns[*c].in_txn)
                        .collect();
                    if idle.is_empty() {
                        continue;
                    }
                    let c = *self.rng.pick(&idle);
                    let t = self.rng.below(self.ntables() as u64) as usize;
                    if self.live[t].omit || !self.can_touch(c, t) {
                        continue;
                    }
                    if let Some(k) = self.existing_key(c, t) {
                        let vals = self.vals(c, t, true);
                        hook.push(Step::Update { c, t, k, vals });
                    }
                }
                3 => {
                    if self.joined(other) {
                        self.cycles[other] += 1;
                        hook.push(Step::Cycle {
                            s: other,
                            clean: self.rng.pct(50),
                            hook: Vec::new(),
                        });
                    }
                }
                _ => hook.push(Step::CleanLog),
            }
        }
        hook
    }

    fn cycle(&mut self, s: usize, race: bool) {
        self.end_strong();
        let hook = if race || (self.cfg.on("race_hook") && self.rng.pct(20)) {
            self.hook(s, race)
        } else {
            Vec::new()
        };
        self.cycles[s] += 1;
        let clean = self.rng.pct(60);
        self.push(Step::Cycle { s, clean, hook });
    }

    fn join(&mut self) {
        self.joined = true;
        // a writer left open with changes, so that the first change set of the new slave
        // has a transaction in progress at its snapshot
        if self.rng.pct(70) && !self.conns.iter().any(|m| m.in_txn && !m.touched.is_empty()) {
            let idle: Vec<usize> = (0..self.nconn())
                .filter(|c| !self.conns[*c].in_txn)
                .collect();
            if !idle.is_empty() {
                let c = *self.rng.pick(&idle);
                self.conns[c].in_txn = true;
                self.push(Step::Begin { c });
                for _ in 0..4 {
                    let t = self.rng.below(self.ntables() as u64) as usize;
                    if !self.live[t].omit && self.dml(c, t) {
                        break;
                    }
                }
            }
        }
        self.end_strong();
        let create_tables = self.rng.pct(30);
        let mut tables: Vec<usize> = (0..self.ntables())
            .filter(|t| !self.live[*t].omit && (create_tables || self.rng.pct(75)))
            .collect();
        if tables.is_empty() {
            tables.push(0);
        }
        for &t in &tables {
            for p in 0..self.live[t].physical().len() {
                self.slave_reg[1].insert((t, p));
            }
        }
        self.push(Step::Join {
            tables: if create_tables { Vec::new() } else { tables },
            create_tables,
        });
        let race = self.cfg.on("race_hook") && self.rng.pct(65);
        self.cycle(1, race);
    }

    fn slave_readd(&mut self) {
        let s = if self.joined && self.rng.pct(40) {
            1
        } else {
            0
        };
        let regs: Vec<(usize, usize)> = self.slave_reg[s].iter().copied().collect();
        if regs.is_empty() {
            return;
        }
        let (t, p) = *self.rng.pick(&regs);
        self.push(Step::SlaveRemove { s, t, p });
        for _ in 0..self.rng.range(1, 3) {
            let k = self.rng.below(self.pool[t]);
            let vals = if self.rng.pct(70) {
                let c = (k % self.nconn() as u64) as usize;
                Some(self.vals(c, t, false))
            } else {
                None
            };
            self.push(Step::SlaveWrite { s, t, p, k, vals });
        }
        if self.rng.pct(60) {
            self.push(Step::SlaveAdd { s, t, p });
        } else {
            self.slave_reg[s].remove(&(t, p));
            self.slave_removed[s].insert((t, p));
        }
    }

    fn slave_add_back(&mut self) {
        for s in 0..2 {
            if let Some(&(t, p)) = self.slave_removed[s].iter().next() {
                self.slave_removed[s].remove(&(t, p));
                self.slave_reg[s].insert((t, p));
                self.push(Step::SlaveAdd { s, t, p });
                return;
            }
        }
    }

    fn master_readd(&mut self) {
        let t = self.rng.below(self.ntables() as u64) as usize;
        if self.live[t].omit || !self.quiet(t) {
            return;
        }
        let mut writes = Vec::new();
        for _ in 0..self.rng.range(1, 3) {
            let c = self.rng.below(self.nconn() as u64) as usize;
            match self.rng.below(3) {
                0 => {
                    if let Some(k) = self.free_key(c, t) {
                        let vals = self.vals(c, t, false);
                        self.exists[t].insert(k);
                        writes.push(Step::Insert { c, t, k, vals });
                    }
                }
                1 => {
                    if let Some(k) = self.existing_key(c, t) {
                        let vals = self.vals(c, t, true);
                        writes.push(Step::Update { c, t, k, vals });
                    }
                }
                _ => {
                    if let Some(k) = self.existing_key(c, t) {
                        self.exists[t].remove(&k);
                        writes.push(Step::Delete { c, t, k });
                    }
                }
            }
        }
        self.push(Step::MasterReadd { t, writes });
    }

    fn ddl(&mut self) {
        // tables with watched columns first: renaming and dropping those is what matters
        let watched: Vec<usize> = (0..self.ntables())
            .filter(|t| self.live[*t].watched_now().is_some())
            .collect();
        let t = if !watched.is_empty() && self.rng.pct(50) {
            *self.rng.pick(&watched)
        } else {
            self.rng.below(self.ntables() as u64) as usize
        };
        if self.live[t].omit || !self.quiet(t) {
            return;
        }
        let lt = self.live[t].clone();
        let gen_bases: Vec<usize> = lt
            .live()
            .filter_map(|c| match c.kind {
                ColKind::Generated { from } => Some(from),
                _ => None,
            })
            .collect();
        let candidates: Vec<&ColSpec> = lt
            .live()
            .filter(|c| {
                !lt.key.contains(&c.id)
                    && Some(c.id) != lt.pk_identity
                    && Some(c.id) != lt.rls.as_ref().map(|r| r.vis)
            })
            .collect();
        match self.rng.below(3) {
            0 => {
                if candidates.is_empty() {
                    return;
                }
                let watched = lt.watched_now().unwrap_or_default();
                let w: Vec<&&ColSpec> = candidates
                    .iter()
                    .filter(|c| watched.contains(&c.id))
                    .collect();
                let col = if !w.is_empty() && self.rng.pct(60) {
                    self.rng.pick(&w).id
                } else {
                    self.rng.pick(&candidates).id
                };
                let id = self.next_col[t];
                self.next_col[t] += 1;
                let to = name(&mut self.rng, "r", id, 40);
                if let Some(c) = self.live[t].cols.iter_mut().find(|c| c.id == col) {
                    c.name = to.clone();
                }
                self.push(Step::Rename { t, col, to });
            }
            1 => {
                let droppable: Vec<usize> = candidates
                    .iter()
                    .filter(|c| !gen_bases.contains(&c.id))
                    .map(|c| c.id)
                    .collect();
                if droppable.is_empty() {
                    return;
                }
                let watched = lt.watched_now().unwrap_or_default();
                let w: Vec<usize> = droppable
                    .iter()
                    .copied()
                    .filter(|c| watched.contains(c))
                    .collect();
                let col = if !w.is_empty() && self.rng.pct(60) {
                    *self.rng.pick(&w)
                } else {
                    *self.rng.pick(&droppable)
                };
                if let Some(c) = self.live[t].cols.iter_mut().find(|c| c.id == col) {
                    c.dropped = true;
                }
                self.push(Step::DropCol { t, col });
            }
            _ => {
                let id = self.next_col[t];
                self.next_col[t] += 1;
                let mut all = self.cfg.clone();
                all.avoid.clear();
                let ty = value_type(&mut self.rng, &mut self.cat, &all);
                let default = self.rng.pct(40).then(|| {
                    let n = self.rng.below(ty.card(&self.cat));
                    ty.text(n, &self.cat)
                });
                let col = ColSpec {
                    id,
                    name: name(&mut self.rng, "a", id, 40),
                    ty,
                    kind: ColKind::Plain,
                    not_null: false,
                    unique: false,
                    default,
                    dropped: false,
                    omit: false,
                };
                self.live[t].cols.push(col.clone());
                self.push(Step::AddCol { t, col });
            }
        }
    }

    fn truncate_race(&mut self) {
        let s = if self.joined && self.rng.pct(40) {
            1
        } else {
            0
        };
        let idle: Vec<usize> = (0..self.nconn())
            .filter(|c| !self.conns[*c].in_txn)
            .collect();
        if idle.is_empty() {
            return;
        }
        let c = *self.rng.pick(&idle);
        let regs: Vec<usize> = self.slave_reg[s].iter().map(|(t, _)| *t).collect();
        if regs.is_empty() {
            return;
        }
        let t = *self.rng.pick(&regs);
        if !self.can_own(c, t) || !self.quiet(t) || self.own_keys(c, t).is_empty() {
            return;
        }
        self.end_strong();
        // a committed change to t that the cycle's change set carries
        if let Some(k) = self.existing_key(c, t) {
            let vals = self.vals(c, t, true);
            if vals.is_empty() || !self.exists[t].contains(&k) {
                let vals = self.vals(c, t, false);
                self.exists[t].insert(k);
                self.push(Step::Delete { c, t, k });
                self.push(Step::Insert { c, t, k, vals });
            } else {
                self.push(Step::Update { c, t, k, vals });
            }
        }
        self.exists[t].clear();
        let mut rows = Vec::new();
        for _ in 0..self.rng.range(0, 3) {
            if let Some(k) = self.free_key(c, t) {
                let vals = self.vals(c, t, false);
                self.exists[t].insert(k);
                rows.push((k, vals));
            }
        }
        self.cycles[s] += 1;
        self.push(Step::TruncateRace { s, c, t, rows });
    }

    /// One action, chosen by weight among those possible now.
    fn one(&mut self) {
        let rls = self.live.iter().any(|t| t.rls.is_some());
        let on = |f: &str, w: u64| if self.cfg.on(f) { w } else { 0 };
        let cycled = self.cycles[0] > 0;
        let removed = self.slave_removed.iter().any(|r| !r.is_empty());
        let may_bypass = !self.superuser && !self.bypass && rls && self.cycles[0] > 1;
        let w = [
            700,                                              // a writer's statement
            120,                                              // cycle
            25,                                               // clean log
            if cycled { 12 } else { 0 },                      // check
            if self.prepared.is_empty() { 0 } else { 50 },    // resolve a 2PC transaction
            on("slave_readd", 15),                            // slave remove (and re-add)
            if removed { 25 } else { 0 },                     // slave re-adds later
            on("master_readd", 10),                           // master remove and re-add
            on("ddl", 35),                                    // rename, drop, add a column
            on("restart", 5),                                 // restart a cluster
            if cycled { on("truncate_race", 15) } else { 0 }, // a cycle racing a TRUNCATE
            if may_bypass { 20 } else { 0 },                  // BYPASSRLS granted
        ];
        match self.rng.weighted(&w) {
            0 => self.writer(),
            1 => {
                let s = if self.joined && self.rng.pct(45) {
                    1
                } else {
                    0
                };
                self.cycle(s, false);
            }
            2 => self.push(Step::CleanLog),
            3 => {
                self.end_strong();
                let s = if self.joined && self.rng.pct(40) {
                    1
                } else {
                    0
                };
                self.push(Step::Check { s });
            }
            4 => {
                let i = self.rng.below(self.prepared.len() as u64) as usize;
                let p = self.prepared.remove(i);
                if self.rng.pct(75) {
                    self.push(Step::CommitPrepared { gid: p.gid });
                } else {
                    self.push(Step::RollbackPrepared { gid: p.gid });
                }
            }
            5 => self.slave_readd(),
            6 => self.slave_add_back(),
            7 => self.master_readd(),
            8 => self.ddl(),
            9 => {
                let master = self.rng.pct(60);
                if master {
                    // the master's open transactions are lost; prepared ones survive
                    for m in self.conns.iter_mut() {
                        *m = ConnModel::default();
                    }
                }
                self.push(Step::Restart { master });
            }
            10 => self.truncate_race(),
            _ => {
                self.bypass = true;
                self.push(Step::GrantBypass);
            }
        }
    }
}
