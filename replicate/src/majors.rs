//! Values one PostgreSQL major has and an older one cannot store.
//!
//! Rows travel in COPY text, which every major from 14 to 18 writes and reads alike for every
//! built-in type, with one exception so far: infinite intervals (`infinity`, `-infinity`),
//! new in 17. A change set from a newer master to an older slave is screened for such values
//! before each row is loaded: the first one stops the apply with an error naming the table,
//! the column, the row and the fix, and nothing of the change set is applied. A value hidden
//! inside a domain, a composite or a range is not screened; the slave's own input function
//! then refuses it, and [`hint`] says why.

use crate::error::Error;
use crate::snapshot::SectionMeta;

/// A kind of value that PostgreSQL majors before `since` cannot store.
struct Limit {
    since: i32,
    /// the base type (as the master's `format_type()` names it, without modifiers or `[]`)
    base_type: &'static str,
    /// what the values are, for messages
    what: &'static str,
    /// whether a column's COPY text holds such a value (in an array too)
    holds: fn(&str) -> bool,
}

const LIMITS: &[Limit] = &[Limit {
    since: 17,
    base_type: "interval",
    what: "infinite intervals",
    // no finite interval's text contains the word
    holds: |text| text.contains("infinity"),
}];

/// `interval(3)[]` -> `interval`; `interval day to second` -> `interval`.
fn base_type(type_name: &str) -> &str {
    let t = type_name.trim_end_matches("[]");
    let end = t.find(['(', ' ']).unwrap_or(t.len());
    &t[..end]
}

/// The major of a `server_version_num`.
pub fn major(server_version_num: i32) -> i32 {
    server_version_num / 10000
}

/// The rows of one section, checked for values the slave's major cannot store.
pub struct Screen {
    table: String,
    columns: Vec<String>,
    /// (column index, limit) for every column that may hold such values
    checks: Vec<(usize, &'static Limit)>,
    /// indexes of the key columns, to name the row
    key: Vec<usize>,
    master: i32,
    slave: i32,
}

impl Screen {
    /// A screen for `meta`'s rows from a master on `master` (server_version_num, None if the
    /// change set does not say) to a slave on `slave`; None when nothing needs checking.
    pub fn new(meta: &SectionMeta, master: Option<i32>, slave: i32) -> Option<Screen> {
        let (master, slave) = (major(master?), major(slave));
        let checks: Vec<(usize, &'static Limit)> = meta
            .types
            .iter()
            .enumerate()
            .flat_map(|(i, t)| {
                LIMITS
                    .iter()
                    .filter(move |l| slave < l.since && master >= l.since)
                    .filter(move |l| base_type(t) == l.base_type)
                    .map(move |l| (i, l))
            })
            .collect();
        if checks.is_empty() {
            return None;
        }
        Some(Screen {
            table: format!("{}.{}", meta.schema, meta.table),
            key: meta
                .key
                .iter()
                .filter_map(|k| meta.columns.iter().position(|c| c == k))
                .collect(),
            columns: meta.columns.clone(),
            checks,
            master,
            slave,
        })
    }

    /// Checks one COPY text line (with its newline): Err names the value the slave cannot store.
    pub fn check(&self, line: &[u8]) -> Result<(), Error> {
        let text = String::from_utf8_lossy(line);
        let fields: Vec<&str> = text.trim_end_matches('\n').split('\t').collect();
        for (i, limit) in &self.checks {
            let Some(value) = fields.get(*i).filter(|v| **v != "\\N") else {
                continue;
            };
            if !(limit.holds)(value) {
                continue;
            }
            let row = self
                .key
                .iter()
                .filter_map(|k| Some(format!("{} = {}", self.columns.get(*k)?, fields.get(*k)?)))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(Error::Failed(format!(
                "slave: column \"{}\" of table {} holds {value:?} in the row with {row}, which PostgreSQL {} cannot store: \
                 {} exist from PostgreSQL {} on (the master runs PostgreSQL {}); nothing of this change set was applied. \
                 Change the value on the master (e.g. to a finite one), or move this slave to PostgreSQL {} or later",
                self.columns.get(*i).map_or("?", String::as_str),
                self.table,
                self.slave,
                limit.what,
                limit.since,
                self.master,
                limit.since
            )));
        }
        Ok(())
    }
}

/// For an error loading rows from a newer master into an older slave: a note saying so.
pub fn hint(master: Option<i32>, slave: i32) -> String {
    match master.map(major) {
        Some(m) if m > major(slave) => format!(
            " (the master runs PostgreSQL {m} and this slave PostgreSQL {}: a value only PostgreSQL {m} has cannot be stored here)",
            major(slave)
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(types: &[&str]) -> SectionMeta {
        SectionMeta {
            schema: "public".into(),
            table: "t".into(),
            columns: (0..types.len()).map(|i| format!("c{i}")).collect(),
            key: vec!["c0".into()],
            types: types.iter().map(|t| t.to_string()).collect(),
            estimated_rows: None,
        }
    }

    #[test]
    fn infinite_intervals_only_from_17_to_older() {
        let m = meta(&[
            "integer",
            "interval",
            "interval(3)[]",
            "interval day to second",
        ]);
        assert!(Screen::new(&m, Some(160004), 150020).is_none());
        assert!(Screen::new(&m, Some(170011), 170002).is_none());
        assert!(Screen::new(&m, Some(150020), 180006).is_none());
        assert!(Screen::new(&m, None, 150020).is_none());
        let s = Screen::new(&m, Some(180006), 160015).expect("18 -> 16 is screened");
        assert!(s.check(b"1\t1 day\t{\"2 days\"}\t\\N\n").is_ok());
        for bad in [
            &b"7\tinfinity\t{}\t\\N\n"[..],
            b"7\t\\N\t{\"1 day\",-infinity}\t\\N\n",
            b"7\t\\N\t\\N\t-infinity\n",
        ] {
            let e = s.check(bad).expect_err("refused").to_string();
            assert!(
                e.contains("table public.t") && e.contains("c0 = 7") && e.contains("PostgreSQL 16"),
                "{e}"
            );
        }
        assert!(Screen::new(&meta(&["integer", "text"]), Some(180006), 140023).is_none());
    }

    #[test]
    fn hints_only_for_downgrades() {
        assert!(hint(Some(180006), 150020).contains("PostgreSQL 18"));
        assert_eq!(hint(Some(150020), 180006), "");
        assert_eq!(hint(None, 150020), "");
    }
}
