//! The schema side of a schedule: the type catalogue (every key-capable built-in type with its
//! type modifiers, arrays and domains of them, enums), value generation, table specifications,
//! and the SQL that creates, changes and writes the tables.
//!
//! Values are generated as text (the type's input form) from an ordinal: distinct ordinals
//! give distinct stored values even after the type modifier rounded or truncated them, which is
//! what lets the workload partition keys between connections and still exercise char(n)
//! padding, numeric rounding, timestamp(p) precision and interval field truncation.

use serde::{Deserialize, Serialize};

/// Interval field restrictions (`interval day to second(2)`, ...).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fields {
    All,
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    YearToMonth,
    DayToHour,
    DayToMinute,
    DayToSecond,
    HourToMinute,
    HourToSecond,
    MinuteToSecond,
}

impl Fields {
    pub const ALL: [Fields; 14] = [
        Fields::All,
        Fields::Year,
        Fields::Month,
        Fields::Day,
        Fields::Hour,
        Fields::Minute,
        Fields::Second,
        Fields::YearToMonth,
        Fields::DayToHour,
        Fields::DayToMinute,
        Fields::DayToSecond,
        Fields::HourToMinute,
        Fields::HourToSecond,
        Fields::MinuteToSecond,
    ];

    fn sql(self) -> &'static str {
        match self {
            Fields::All => "",
            Fields::Year => " year",
            Fields::Month => " month",
            Fields::Day => " day",
            Fields::Hour => " hour",
            Fields::Minute => " minute",
            Fields::Second => " second",
            Fields::YearToMonth => " year to month",
            Fields::DayToHour => " day to hour",
            Fields::DayToMinute => " day to minute",
            Fields::DayToSecond => " day to second",
            Fields::HourToMinute => " hour to minute",
            Fields::HourToSecond => " hour to second",
            Fields::MinuteToSecond => " minute to second",
        }
    }

    /// A precision is allowed only when the range ends with seconds (or has no fields).
    pub fn takes_precision(self) -> bool {
        matches!(
            self,
            Fields::All
                | Fields::Second
                | Fields::DayToSecond
                | Fields::HourToSecond
                | Fields::MinuteToSecond
        )
    }
}

/// A scalar type of the catalogue.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum Base {
    Char(u8),
    Varchar(u8),
    Bit(u8),
    Varbit(u8),
    Numeric(u8, u8),
    NumericAny,
    Timestamp(Option<u8>),
    Timestamptz(Option<u8>),
    Time(Option<u8>),
    Interval(Fields, Option<u8>),
    Text,
    Int4,
    Int8,
    Uuid,
    Bytea,
    Date,
    Bool,
    Inet,
    Float8,
    /// index into [`Catalogue::enums`]
    Enum(usize),
    /// not a key type
    Jsonb,
}

fn prec(p: Option<u8>) -> String {
    p.map(|p| format!("({p})")).unwrap_or_default()
}

impl Base {
    fn sql(&self, cat: &Catalogue, q: &mut dyn FnMut(&str) -> String) -> String {
        match self {
            Base::Char(n) => format!("character({n})"),
            Base::Varchar(n) => format!("character varying({n})"),
            Base::Bit(n) => format!("bit({n})"),
            Base::Varbit(n) => format!("bit varying({n})"),
            Base::Numeric(p, s) => format!("numeric({p},{s})"),
            Base::NumericAny => "numeric".into(),
            Base::Timestamp(p) => format!("timestamp{} without time zone", prec(*p)),
            Base::Timestamptz(p) => format!("timestamp{} with time zone", prec(*p)),
            Base::Time(p) => format!("time{} without time zone", prec(*p)),
            Base::Interval(f, p) => format!("interval{}{}", f.sql(), prec(*p)),
            Base::Text => "text".into(),
            Base::Int4 => "integer".into(),
            Base::Int8 => "bigint".into(),
            Base::Uuid => "uuid".into(),
            Base::Bytea => "bytea".into(),
            Base::Date => "date".into(),
            Base::Bool => "boolean".into(),
            Base::Inet => "inet".into(),
            Base::Float8 => "double precision".into(),
            Base::Enum(i) => format!("public.{}", q(&cat.enums[*i].name)),
            Base::Jsonb => "jsonb".into(),
        }
    }

    /// How many distinct values [`Base::text`] produces.
    pub fn card(&self, cat: &Catalogue) -> u64 {
        const CAP: u64 = 1_000_000;
        match self {
            Base::Char(n) | Base::Varchar(n) => 12u64.saturating_pow(u32::from(*n)).min(CAP),
            Base::Bit(n) => (1u64 << n).min(CAP),
            Base::Varbit(n) => ((1u64 << (n + 1)) - 2).min(CAP),
            Base::Numeric(p, _) => (2 * 10u64.saturating_pow(u32::from(*p)) - 1).min(CAP),
            Base::NumericAny => CAP,
            Base::Timestamp(_) | Base::Timestamptz(_) => 802,
            Base::Time(_) => 1400,
            Base::Interval(..) => 100_000,
            Base::Text => CAP,
            Base::Int4 | Base::Int8 | Base::Uuid | Base::Bytea | Base::Inet | Base::Float8 => CAP,
            Base::Date => 40_000,
            Base::Bool => 2,
            Base::Enum(i) => cat.enums[*i].labels.len() as u64,
            Base::Jsonb => CAP,
        }
    }

    /// The input text of value number `n` (< card).
    pub fn text(&self, n: u64, cat: &Catalogue) -> String {
        match self {
            Base::Char(len) => string_of(n, *len as usize, CHAR_ALPHABET),
            Base::Varchar(len) => string_of(n, *len as usize, VARCHAR_ALPHABET),
            Base::Text => {
                if n == 0 {
                    String::new()
                } else {
                    string_of(n - 1, 2 + (n % 5) as usize, TEXT_ALPHABET)
                }
            }
            Base::Bit(len) => format!("{:0width$b}", n, width = *len as usize),
            Base::Varbit(len) => {
                let mut m = n;
                for l in 1..=*len as u32 {
                    if m < (1u64 << l) {
                        return format!("{:0width$b}", m, width = l as usize);
                    }
                    m -= 1u64 << l;
                }
                "1".into()
            }
            Base::Numeric(p, s) => {
                let (p, s) = (*p as usize, *s as usize);
                let neg = n % 2 == 1;
                let mag = (n / 2 + n % 2) % 10u64.pow(p as u32);
                let digits = format!("{:0width$}", mag, width = s + 1);
                let (int, frac) = digits.split_at(digits.len() - s);
                let mut out = String::new();
                if neg && mag != 0 {
                    out.push('-');
                }
                out.push_str(int);
                if s > 0 {
                    out.push('.');
                    out.push_str(frac);
                }
                // one more digit that the type modifier rounds away (downwards)
                if n.is_multiple_of(3) {
                    if s == 0 {
                        out.push('.');
                    }
                    out.push('4');
                }
                out
            }
            Base::NumericAny => {
                if n == 0 {
                    return "NaN".into();
                }
                let m = n - 1;
                let sign = if m % 7 == 3 { "-" } else { "" };
                let frac = ["0", "5", "25", "75"][(m % 4) as usize];
                let zeros = "0".repeat((m % 3) as usize);
                format!("{sign}{}.{frac}{zeros}", m / 4)
            }
            Base::Timestamp(_) | Base::Timestamptz(_) => {
                if n == 0 {
                    return "infinity".into();
                }
                if n == 1 {
                    return "-infinity".into();
                }
                let secs = (n - 2) * 3607 + 86_400 * 365 * 3;
                let micros = (n * 104_729) % 1_000_000;
                let mut s = format!("{}.{micros:06}", datetime(secs));
                if let Base::Timestamptz(_) = self {
                    s.push_str(["+00", "+05:45", "-03:30", "+14", "-12"][(n % 5) as usize]);
                }
                s
            }
            Base::Time(_) => {
                let secs = (n * 61) % 86_400;
                let micros = (n * 7919) % 1_000_000;
                format!(
                    "{:02}:{:02}:{:02}.{micros:06}",
                    secs / 3600,
                    secs / 60 % 60,
                    secs % 60
                )
            }
            Base::Interval(f, _) => {
                let frac = format!("{:06}", (n * 7919) % 1_000_000);
                match f {
                    Fields::Year => format!("{n} years 3 mons"),
                    Fields::Month | Fields::YearToMonth => format!("{n} mons 4 days"),
                    Fields::Day
                    | Fields::DayToHour
                    | Fields::DayToMinute
                    | Fields::DayToSecond
                    | Fields::All => format!("{n} days 05:06:07.{frac}"),
                    Fields::Hour | Fields::HourToMinute | Fields::HourToSecond => {
                        format!("{n}:07:08.{frac}")
                    }
                    Fields::Minute | Fields::MinuteToSecond => {
                        format!("{n} minutes 8.{frac} seconds")
                    }
                    Fields::Second => format!("{n}.{frac} seconds"),
                }
            }
            Base::Int4 => format!("{}", (n as i64) * 1999 - 1_000_000_000),
            Base::Int8 => format!("{}", (n as i64) * 1_000_000_007 - 5_000_000_000_000),
            Base::Uuid => {
                let h = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    h >> 32,
                    (h >> 16) & 0xffff,
                    h & 0xfff,
                    (h >> 12) & 0xfff,
                    n
                )
            }
            Base::Bytea => {
                if n == 0 {
                    "\\x".into()
                } else {
                    format!("\\x{n:08x}{}", "0aff".repeat((n % 3) as usize))
                }
            }
            Base::Date => match n {
                0 => "infinity".into(),
                1 => "-infinity".into(),
                2 => "0044-03-15 BC".into(),
                _ => date_of(10_957 + (n - 3) as i64 * 37),
            },
            Base::Bool => if n.is_multiple_of(2) { "f" } else { "t" }.into(),
            Base::Inet => {
                let a = n / 2;
                if n.is_multiple_of(2) {
                    format!(
                        "10.{}.{}.{}/{}",
                        (a >> 16) & 255,
                        (a >> 8) & 255,
                        a & 255,
                        [32, 24, 16, 31][(a % 4) as usize]
                    )
                } else {
                    format!(
                        "2001:db8::{:x}:{:x}/{}",
                        a >> 16,
                        a & 0xffff,
                        [128, 64][(a % 2) as usize]
                    )
                }
            }
            Base::Float8 => match n {
                0 => "NaN".into(),
                1 => "Infinity".into(),
                2 => "-Infinity".into(),
                3 => "-0".into(),
                _ => {
                    let m = n - 3;
                    let v = m as f64 * 0.1 + m as f64 * 1e-9;
                    format!("{:?}", if m % 2 == 1 { -v } else { v })
                }
            },
            Base::Enum(i) => {
                let labels = &cat.enums[*i].labels;
                labels[(n % labels.len() as u64) as usize].clone()
            }
            Base::Jsonb => format!(r#"{{"k": {n}, "s": "x\"y\\z", "a": [1, null, "é"]}}"#),
        }
    }

    /// Types PostgreSQL can hash-partition on with the same result in every database (the
    /// generator partitions on the first key column; an enum hashes its OID, which differs
    /// between master and slave).
    pub fn hash_partitionable(&self) -> bool {
        matches!(
            self,
            Base::Char(_)
                | Base::Varchar(_)
                | Base::Text
                | Base::Int4
                | Base::Int8
                | Base::Uuid
                | Base::Date
                | Base::Numeric(..)
                | Base::NumericAny
                | Base::Timestamp(_)
                | Base::Timestamptz(_)
                | Base::Bool
                | Base::Bytea
        )
    }
}

const CHAR_ALPHABET: &[&str] = &[
    "a", "b", "x", "Z", "é", "日", "'", "\"", "\\", "{", ",", "7",
];
const VARCHAR_ALPHABET: &[&str] = &[
    "a", " ", "x", "Z", "é", "日", "'", "\"", "\\", "}", ",", "7",
];
const TEXT_ALPHABET: &[&str] = &[
    "a", " ", "\t", "Q", "é", "🦀", "'", "\"", "\\", "{", ",", "\n",
];

/// Value `n` as a string of at most `len` symbols: the digits of `n` in the alphabet's base,
/// padded with '-' (not in any alphabet) to a length that varies with `n`. Stripping the '-'
/// gives the digits back, so distinct `n` give distinct strings; none ends with a space.
fn string_of(n: u64, len: usize, alphabet: &[&str]) -> String {
    let base = alphabet.len() as u64;
    let mut digits = Vec::new();
    let mut m = n;
    loop {
        digits.push(alphabet[(m % base) as usize]);
        m /= base;
        if m == 0 {
            break;
        }
    }
    let mut s: String = digits.concat();
    let want = 1 + (n.wrapping_mul(7) % len.max(1) as u64) as usize;
    for _ in digits.len()..want.min(len) {
        s.push('-');
    }
    s
}

/// Proleptic Gregorian calendar date of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn date_of(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

fn datetime(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let s = secs % 86_400;
    format!(
        "{} {:02}:{:02}:{:02}",
        date_of(days),
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EnumSpec {
    pub name: String,
    pub labels: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DomainSpec {
    pub name: String,
    pub base: Base,
}

/// User-defined types of a schedule; they live in schema public of every database.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Catalogue {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub enums: Vec<EnumSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<DomainSpec>,
}

/// A column type: a base type, optionally through a domain, optionally an array of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ColType {
    pub base: Base,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<usize>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub array: bool,
}

pub fn is_false(b: &bool) -> bool {
    !*b
}

impl ColType {
    pub fn plain(base: Base) -> ColType {
        ColType {
            base,
            domain: None,
            array: false,
        }
    }

    pub fn sql(&self, cat: &Catalogue, q: &mut dyn FnMut(&str) -> String) -> String {
        let scalar = match self.domain {
            Some(d) => format!("public.{}", q(&cat.domains[d].name)),
            None => self.base.sql(cat, q),
        };
        if self.array {
            format!("{scalar}[]")
        } else {
            scalar
        }
    }

    /// The type to compare values in, when the column's own type has no `=`: a domain over
    /// an enum (PostgreSQL finds no operator for it; rserv's own queries hit the same).
    pub fn cmp_sql(&self, cat: &Catalogue, q: &mut dyn FnMut(&str) -> String) -> Option<String> {
        let d = self.domain?;
        if !matches!(cat.domains[d].base, Base::Enum(_)) {
            return None;
        }
        let base = self.base.sql(cat, q);
        Some(if self.array {
            format!("{base}[]")
        } else {
            base
        })
    }

    pub fn card(&self, cat: &Catalogue) -> u64 {
        let c = self.base.card(cat);
        if self.array {
            3 * c.min(300_000)
        } else {
            c
        }
    }

    /// Input text of value number `n`; arrays hold 1 to 3 elements.
    pub fn text(&self, n: u64, cat: &Catalogue) -> String {
        if !self.array {
            return self.base.text(n, cat);
        }
        let cb = self.base.card(cat).min(300_000);
        let len = 1 + n % 3;
        let first = (n / 3) % cb;
        let elems: Vec<String> = (0..len)
            .map(|i| {
                let e = if i == 0 { first } else { (first + i * 7) % cb };
                array_element(&self.base.text(e, cat))
            })
            .collect();
        format!("{{{}}}", elems.join(","))
    }
}

fn array_element(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `'text'::type`, a typed SQL literal (NULL typed too, so it works in SELECT lists).
pub fn literal(text: Option<&str>, ty: &str) -> String {
    match text {
        None => format!("NULL::{ty}"),
        Some(t) => format!("'{}'::{ty}", t.replace('\'', "''")),
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ColKind {
    Plain,
    /// `GENERATED ALWAYS AS (from::int8 * 2 + 1) STORED`, `from` an integer column
    Generated {
        from: usize,
    },
    Identity {
        always: bool,
    },
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ColSpec {
    pub id: usize,
    pub name: String,
    pub ty: ColType,
    pub kind: ColKind,
    #[serde(default, skip_serializing_if = "is_false")]
    pub not_null: bool,
    /// a UNIQUE constraint of its own (not the identity)
    #[serde(default, skip_serializing_if = "is_false")]
    pub unique: bool,
    /// DEFAULT value (input text)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    /// created, then dropped before the table is registered (master only)
    #[serde(default, skip_serializing_if = "is_false")]
    pub dropped: bool,
    /// removed by the shrinker: not created at all
    #[serde(default, skip_serializing_if = "is_false")]
    pub omit: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Rls {
    /// the boolean column the policy looks at
    pub vis: usize,
    /// USING (false) instead of USING (vis IS NOT FALSE)
    #[serde(default, skip_serializing_if = "is_false")]
    pub hide_all: bool,
}

/// How the slave's copy of a table differs from the master's.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct SlaveVariant {
    /// columns in another order (a shuffle seed)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle: Option<u64>,
    /// a column created and dropped before registration
    #[serde(default, skip_serializing_if = "is_false")]
    pub dropped: bool,
    /// an extra nullable column only the slave has
    #[serde(default, skip_serializing_if = "is_false")]
    pub extra: bool,
    /// rows the slave holds before its first change set (replaced by the initial copy)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub junk: Vec<u64>,
    /// partitions are plain tables on the slave
    #[serde(default, skip_serializing_if = "is_false")]
    pub plain_partitions: bool,
}

pub type Vals = Vec<(usize, Option<String>)>;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TableSpec {
    pub schema: String,
    pub name: String,
    pub cols: Vec<ColSpec>,
    /// identity columns (ids)
    pub key: Vec<usize>,
    /// identity is a UNIQUE NOT NULL key registered by name (`rserv_add_table(t, 'a,b')`)
    #[serde(default, skip_serializing_if = "is_false")]
    pub alt_key: bool,
    /// an identity column that is the primary key of an alt-key table
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pk_identity: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watched: Option<Vec<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rls: Option<Rls>,
    /// hash partitions (on the first key column), registered one by one; empty: plain table
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<String>,
    #[serde(default)]
    pub slave: SlaveVariant,
    /// rows inserted before registration: key ordinal and values
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initial: Vec<(u64, Vals)>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub omit: bool,
}

impl TableSpec {
    /// Physical tables: the partitions, or the table itself.
    pub fn physical(&self) -> Vec<String> {
        if self.partitions.is_empty() {
            vec![self.name.clone()]
        } else {
            self.partitions.clone()
        }
    }
}

/// A table as it is now on the master (after renames, dropped and added columns).
#[derive(Clone, Debug)]
pub struct LiveTable {
    pub schema: String,
    pub name: String,
    pub partitions: Vec<String>,
    pub cols: Vec<ColSpec>,
    pub key: Vec<usize>,
    pub alt_key: bool,
    pub pk_identity: Option<usize>,
    pub watched: Option<Vec<usize>>,
    pub rls: Option<Rls>,
    pub omit: bool,
}

impl LiveTable {
    pub fn from_spec(t: &TableSpec) -> LiveTable {
        LiveTable {
            schema: t.schema.clone(),
            name: t.name.clone(),
            partitions: t.partitions.clone(),
            cols: t.cols.iter().filter(|c| !c.omit).cloned().collect(),
            key: t.key.clone(),
            alt_key: t.alt_key,
            pk_identity: t.pk_identity,
            // an identity registered by name watches every column: rserv_add_table(t, 'w')
            // afterwards keeps "all columns"
            watched: if t.alt_key { None } else { t.watched.clone() },
            rls: t.rls.clone(),
            omit: t.omit,
        }
    }

    pub fn col(&self, id: usize) -> Option<&ColSpec> {
        self.cols.iter().find(|c| c.id == id && !c.dropped)
    }

    /// Live columns in table order.
    pub fn live(&self) -> impl Iterator<Item = &ColSpec> {
        self.cols.iter().filter(|c| !c.dropped)
    }

    pub fn physical(&self) -> Vec<String> {
        if self.partitions.is_empty() {
            vec![self.name.clone()]
        } else {
            self.partitions.clone()
        }
    }

    pub fn key_cols(&self) -> Vec<&ColSpec> {
        self.key.iter().filter_map(|k| self.col(*k)).collect()
    }

    /// How many distinct keys [`LiveTable::key_texts`] can produce.
    pub fn key_space(&self, cat: &Catalogue) -> u64 {
        self.key_cols()
            .iter()
            .map(|c| c.ty.card(cat).clamp(1, 5_000))
            .fold(1u64, |a, b| a.saturating_mul(b))
    }

    /// The texts of key number `k` (< key_space), one per key column.
    pub fn key_texts(&self, k: u64, cat: &Catalogue) -> Vec<String> {
        let mut rest = k;
        self.key_cols()
            .iter()
            .map(|c| {
                let card = c.ty.card(cat).clamp(1, 5_000);
                let n = rest % card;
                rest /= card;
                c.ty.text(n, cat)
            })
            .collect()
    }

    /// Watched columns as the 1.1 contract defines them: the registered ones that still
    /// exist (following renames); none left of a non-empty list = every column.
    pub fn watched_now(&self) -> Option<Vec<usize>> {
        let w = self.watched.as_ref()?;
        let live: Vec<usize> = w
            .iter()
            .copied()
            .filter(|id| self.col(*id).is_some())
            .collect();
        if live.is_empty() {
            None
        } else {
            Some(live)
        }
    }

    /// Columns whose values must be equal on master and slave: all of them, or for a table
    /// with watched columns its key, watched columns and the columns of unique constraints
    /// (contract (a): those count as watched).
    pub fn compared(&self) -> Vec<usize> {
        match self.watched_now() {
            None => self.live().map(|c| c.id).collect(),
            Some(w) => self
                .live()
                .filter(|c| self.key.contains(&c.id) || w.contains(&c.id) || c.unique)
                .map(|c| c.id)
                .collect(),
        }
    }

    /// Columns a workload may write.
    pub fn writable(&self) -> Vec<&ColSpec> {
        self.live()
            .filter(|c| !self.key.contains(&c.id) && matches!(c.kind, ColKind::Plain))
            .collect()
    }
}

/// Quoting functions the SQL builders use: identifiers through the server (or, for display,
/// an approximation).
pub type Quote<'a> = &'a mut dyn FnMut(&str) -> String;

/// Identifier quoting for display only (the executor asks the server).
pub fn display_quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

pub fn qualified(schema: &str, name: &str, q: Quote) -> String {
    format!("{}.{}", q(schema), q(name))
}

fn col_def(c: &ColSpec, lt_cols: &[ColSpec], cat: &Catalogue, q: Quote) -> String {
    let ty = c.ty.sql(cat, q);
    let mut s = format!("{} {ty}", q(&c.name));
    match &c.kind {
        ColKind::Plain => {}
        ColKind::Generated { from } => {
            let base = lt_cols
                .iter()
                .find(|x| x.id == *from)
                .map(|x| q(&x.name))
                .unwrap_or_else(|| "0".into());
            s = format!(
                "{} bigint GENERATED ALWAYS AS ({base}::int8 * 2 + 1) STORED",
                q(&c.name)
            );
        }
        ColKind::Identity { always } => {
            s = format!(
                "{} bigint GENERATED {} AS IDENTITY",
                q(&c.name),
                if *always { "ALWAYS" } else { "BY DEFAULT" }
            );
        }
    }
    if c.not_null {
        s.push_str(" NOT NULL");
    }
    if let Some(d) = &c.default {
        s.push_str(&format!(" DEFAULT {}", literal(Some(d), &ty)));
    }
    s
}

fn name_list(ids: &[usize], cols: &[ColSpec], q: Quote) -> String {
    ids.iter()
        .filter_map(|id| cols.iter().find(|c| c.id == *id))
        .map(|c| q(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Constraint clauses: identity, pk identity, unique columns.
fn constraints(t: &LiveTable, cols: &[ColSpec], q: Quote) -> Vec<String> {
    let mut out = Vec::new();
    let key = name_list(&t.key, cols, q);
    if t.alt_key {
        out.push(format!("UNIQUE ({key})"));
        if let Some(pk) = t.pk_identity {
            if cols.iter().any(|c| c.id == pk) {
                out.push(format!("PRIMARY KEY ({})", name_list(&[pk], cols, q)));
            }
        }
    } else {
        out.push(format!("PRIMARY KEY ({key})"));
    }
    for c in cols.iter().filter(|c| c.unique) {
        out.push(format!("UNIQUE ({})", q(&c.name)));
    }
    out
}

fn partition_sql(parent: &str, schema: &str, parts: &[String], q: Quote) -> Vec<String> {
    parts
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "CREATE TABLE {} PARTITION OF {parent} FOR VALUES WITH (MODULUS {}, REMAINDER {i})",
                qualified(schema, p, q),
                parts.len()
            )
        })
        .collect()
}

fn rls_sql(table: &str, t: &LiveTable, q: Quote) -> Vec<String> {
    let Some(r) = &t.rls else { return Vec::new() };
    let using = match (r.hide_all, t.cols.iter().find(|c| c.id == r.vis)) {
        (false, Some(c)) => format!("{} IS NOT FALSE", q(&c.name)),
        _ => "false".into(),
    };
    vec![
        format!("ALTER TABLE {table} ENABLE ROW LEVEL SECURITY"),
        format!("CREATE POLICY hide ON {table} FOR SELECT USING ({using})"),
    ]
}

/// The master's DDL: CREATE TABLE with every column of the spec (also those dropped before
/// registration, which are dropped right after), partitions, RLS.
pub fn master_ddl(spec: &TableSpec, cat: &Catalogue, q: Quote) -> Vec<String> {
    let t = LiveTable::from_spec(spec);
    let cols: Vec<ColSpec> = spec.cols.iter().filter(|c| !c.omit).cloned().collect();
    let table = qualified(&t.schema, &t.name, q);
    let mut defs: Vec<String> = cols.iter().map(|c| col_def(c, &cols, cat, q)).collect();
    let live: Vec<ColSpec> = cols.iter().filter(|c| !c.dropped).cloned().collect();
    defs.extend(constraints(&t, &live, q));
    let mut out = vec![format!(
        "CREATE TABLE {table} ({}){}",
        defs.join(", "),
        if t.partitions.is_empty() {
            String::new()
        } else {
            format!(" PARTITION BY HASH ({})", name_list(&t.key[..1], &cols, q))
        }
    )];
    out.extend(partition_sql(&table, &t.schema, &t.partitions, q));
    for c in cols.iter().filter(|c| c.dropped) {
        out.push(format!("ALTER TABLE {table} DROP COLUMN {}", q(&c.name)));
    }
    out.extend(rls_sql(&table, &t, q));
    out
}

/// The slave's DDL, from the table as it is now on the master, with the slave's variations.
pub fn slave_ddl(t: &LiveTable, v: &SlaveVariant, cat: &Catalogue, q: Quote) -> Vec<String> {
    let mut cols: Vec<ColSpec> = t.live().cloned().collect();
    if let Some(seed) = v.shuffle {
        crate::gen::rng::Rng::new(seed).shuffle(&mut cols);
    }
    let mut defs: Vec<String> = cols.iter().map(|c| col_def(c, &cols, cat, q)).collect();
    if v.dropped {
        defs.insert(0, format!("{} text", q("slave dropped")));
    }
    if v.extra {
        defs.push(format!("{} text DEFAULT 'slave only'", q("slave extra")));
    }
    defs.extend(constraints(t, &cols, q));
    let mut out = Vec::new();
    let partitioned = !t.partitions.is_empty() && !v.plain_partitions;
    let tables: Vec<String> = if t.partitions.is_empty() || partitioned {
        vec![t.name.clone()]
    } else {
        t.partitions.clone()
    };
    for name in &tables {
        let table = qualified(&t.schema, name, q);
        out.push(format!(
            "CREATE TABLE {table} ({}){}",
            defs.join(", "),
            if partitioned {
                format!(" PARTITION BY HASH ({})", name_list(&t.key[..1], &cols, q))
            } else {
                String::new()
            }
        ));
        if partitioned {
            out.extend(partition_sql(&table, &t.schema, &t.partitions, q));
        }
        if v.dropped {
            out.push(format!(
                "ALTER TABLE {table} DROP COLUMN {}",
                q("slave dropped")
            ));
        }
        out.extend(rls_sql(&table, t, q));
    }
    out
}

/// `k1 = lit AND k2 = lit` for key number `k` (columns prefixed with `alias.` if given).
pub fn key_pred(t: &LiveTable, k: u64, alias: &str, cat: &Catalogue, q: Quote) -> String {
    let texts = t.key_texts(k, cat);
    t.key_cols()
        .iter()
        .zip(&texts)
        .map(|(c, v)| eq(c, &format!("{alias}{}", q(&c.name)), Some(v), cat, q))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `column = literal`, through the base type where the column's type has no `=`.
fn eq(c: &ColSpec, column: &str, v: Option<&str>, cat: &Catalogue, q: Quote) -> String {
    let ty = c.ty.sql(cat, q);
    let lit = literal(v, &ty);
    match c.ty.cmp_sql(cat, q) {
        Some(base) => format!("{column}::{base} = {lit}::{base}"),
        None => format!("{column} = {lit}"),
    }
}

/// The relation DML goes to: the partitioned parent or the table.
pub fn dml_target(t: &LiveTable, q: Quote) -> String {
    qualified(&t.schema, &t.name, q)
}

/// Values a statement may write: live, plain, non-key columns only.
fn usable<'a>(t: &'a LiveTable, vals: &'a Vals) -> Vec<(&'a ColSpec, Option<&'a str>)> {
    vals.iter()
        .filter_map(|(id, v)| {
            let c = t.col(*id)?;
            (!t.key.contains(id) && matches!(c.kind, ColKind::Plain)).then_some((c, v.as_deref()))
        })
        .collect()
}

/// Guards that keep other unique columns unique: `NOT EXISTS (row with that value)`.
fn unique_guards(
    target: &str,
    cols: &[(&ColSpec, Option<&str>)],
    cat: &Catalogue,
    q: Quote,
) -> String {
    cols.iter()
        .filter(|(c, v)| c.unique && v.is_some())
        .map(|(c, v)| {
            let col = format!("o.{}", q(&c.name));
            format!(
                " AND NOT EXISTS (SELECT 1 FROM {target} AS o WHERE {})",
                eq(c, &col, *v, cat, q)
            )
        })
        .collect()
}

/// INSERT of key `k` unless it (or a unique value) is taken.
pub fn insert_sql(
    target: &str,
    t: &LiveTable,
    k: u64,
    vals: &Vals,
    cat: &Catalogue,
    q: Quote,
) -> String {
    let texts = t.key_texts(k, cat);
    let mut names = Vec::new();
    let mut lits = Vec::new();
    for (c, v) in t.key_cols().iter().zip(&texts) {
        names.push(q(&c.name));
        let ty = c.ty.sql(cat, q);
        lits.push(literal(Some(v), &ty));
    }
    let cols = usable(t, vals);
    for (c, v) in &cols {
        names.push(q(&c.name));
        let ty = c.ty.sql(cat, q);
        lits.push(literal(*v, &ty));
    }
    format!(
        "INSERT INTO {target} ({}) SELECT {} WHERE NOT EXISTS (SELECT 1 FROM {target} AS o WHERE {}){}",
        names.join(", "),
        lits.join(", "),
        key_pred(t, k, "o.", cat, q),
        unique_guards(target, &cols, cat, q)
    )
}

/// UPDATE of key `k`'s row (None when no value is left to write).
pub fn update_sql(
    target: &str,
    t: &LiveTable,
    k: Option<u64>,
    vals: &Vals,
    cat: &Catalogue,
    q: Quote,
) -> Option<String> {
    let cols = usable(t, vals);
    if cols.is_empty() {
        return None;
    }
    let sets: Vec<String> = cols
        .iter()
        .map(|(c, v)| {
            let ty = c.ty.sql(cat, q);
            format!("{} = {}", q(&c.name), literal(*v, &ty))
        })
        .collect();
    let pred = match k {
        Some(k) => key_pred(t, k, "", cat, q),
        None => "true".into(),
    };
    Some(format!(
        "UPDATE {target} SET {} WHERE {pred}{}",
        sets.join(", "),
        unique_guards(target, &cols, cat, q)
    ))
}

pub fn delete_sql(
    target: &str,
    t: &LiveTable,
    k: Option<u64>,
    cat: &Catalogue,
    q: Quote,
) -> String {
    match k {
        Some(k) => format!("DELETE FROM {target} WHERE {}", key_pred(t, k, "", cat, q)),
        None => format!("DELETE FROM {target}"),
    }
}

/// Move the row of key `from` to key `to`, unless `to` is taken.
pub fn change_key_sql(
    target: &str,
    t: &LiveTable,
    from: u64,
    to: u64,
    cat: &Catalogue,
    q: Quote,
) -> String {
    let texts = t.key_texts(to, cat);
    let sets: Vec<String> = t
        .key_cols()
        .iter()
        .zip(&texts)
        .map(|(c, v)| {
            let ty = c.ty.sql(cat, q);
            format!("{} = {}", q(&c.name), literal(Some(v), &ty))
        })
        .collect();
    format!(
        "UPDATE {target} SET {} WHERE {} AND NOT EXISTS (SELECT 1 FROM {target} AS o WHERE {})",
        sets.join(", "),
        key_pred(t, from, "", cat, q),
        key_pred(t, to, "o.", cat, q)
    )
}
