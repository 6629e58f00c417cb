//! What an old master committed after the point a new master took over from it: the rows behind
//! exactly the keys its transactions changed since (`rserv_changed_since`), side by side with
//! the new master's version, and the old master's version saved in COPY format so that nothing
//! is discarded without a trace. Read by `replicate rejoin` while the old master is fenced.

use crate::check::{self, Table, CANONICAL};
use crate::error::{DbContext, Error, IoContext};
use crate::node::Takeover;
use crate::rserv::Rserv;
use crate::table;
use postgres::Client;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::Path;

/// One key the old master's transactions changed.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: Vec<String>,
    /// the old master's transactions that changed it (none: found by a TRUNCATE's comparison)
    pub xids: Vec<i64>,
    /// the row each side holds (record text), None: no such row
    pub old: Option<String>,
    pub new: Option<String>,
}

impl Entry {
    pub fn differs(&self) -> bool {
        self.old != self.new
    }
}

/// One table's changed keys.
pub struct TableDivergence {
    pub table: Table,
    /// transactions that truncated it (every row of both sides was compared)
    pub truncated: Vec<i64>,
    pub entries: Vec<Entry>,
}

#[derive(Default)]
pub struct Divergence {
    pub tables: Vec<TableDivergence>,
    /// schema changes the old master made since: (table, transactions)
    pub ddl: Vec<(String, Vec<i64>)>,
}

impl Divergence {
    /// Keys whose rows differ: what rejoining discards on the old master.
    pub fn differing(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.entries.iter().filter(|e| e.differs()).count())
            .sum()
    }

    /// Every transaction of the old master after the takeover point.
    pub fn transactions(&self) -> BTreeSet<i64> {
        self.tables
            .iter()
            .flat_map(|t| {
                t.truncated
                    .iter()
                    .chain(t.entries.iter().flat_map(|e| &e.xids))
            })
            .chain(self.ddl.iter().flat_map(|(_, x)| x))
            .copied()
            .collect()
    }
}

type Changed = BTreeMap<(String, String), (Vec<Vec<String>>, Vec<i64>)>;

/// What the old master (`old`, still a fenced master) committed after the takeover `t` that
/// made `new` its successor, with both sides' rows.
pub fn find(
    old: &mut Client,
    old_rs: &Rserv,
    new: &mut Client,
    new_rs: &Rserv,
    t: &Takeover,
) -> Result<Divergence, Error> {
    let (Some(server), Some(syncid)) = (t.old_server, t.old_syncid) else {
        return Err(Error::Failed(
            "the new master did not record which change set of the old master it took over at: \
             rebuild the old master as a new slave (see the README)"
                .into(),
        ));
    };
    let rows = old
        .query(
            &format!(
                "SELECT kind, schema_name, table_name, key, xids FROM {}($1, $2, $3)",
                old_rs.func("rserv_changed_since")
            ),
            &[&server, &syncid, &t.old_fingerprint],
        )
        .ctx("old master: reading what it committed after the takeover point")?;
    let mut out = Divergence::default();
    // (schema, table) -> (keys with their transactions, TRUNCATE transactions)
    let mut changed: Changed = BTreeMap::new();
    let mut key_xids: HashMap<(String, String, Vec<String>), Vec<i64>> = HashMap::new();
    for r in &rows {
        let (kind, schema, name): (String, String, String) = (r.get(0), r.get(1), r.get(2));
        let key: Option<Vec<String>> = r.get(3);
        let xids: Vec<i64> = r.get(4);
        if kind == "ddl" {
            out.ddl.push((format!("{schema}.{name}"), xids));
            continue;
        }
        let slot = changed.entry((schema.clone(), name.clone())).or_default();
        match key {
            Some(k) => {
                slot.0.push(k.clone());
                key_xids.insert((schema, name, k), xids);
            }
            None => slot.1.extend(xids),
        }
    }
    if changed.is_empty() {
        return Ok(out);
    }
    let old_tables = table::list(old, old_rs)?;
    let new_tables = table::list(new, new_rs)?;
    for ((schema, name), (keys, truncated)) in changed {
        let label = format!("{schema}.{name}");
        let find = |list: &[table::ReplicatedTable]| {
            list.iter()
                .position(|x| x.schema == schema && x.table == name)
        };
        let (Some(o), Some(n)) = (find(&old_tables), find(&new_tables)) else {
            return Err(Error::Failed(format!(
                "table {label} changed on the old master after the takeover point, but the new master \
                 does not replicate it: register it there (or remove it from replication on the old \
                 master), then run rejoin again"
            )));
        };
        if old_tables[o].key != new_tables[n].key {
            return Err(Error::Failed(format!(
                "table {label} has key ({}) on the old master but ({}) on the new one",
                old_tables[o].key.join(", "),
                new_tables[n].key.join(", ")
            )));
        }
        // both sides are read by the old master's column names, in its order
        let Some(ot) = check::describe(old, &old_tables[o], "old master")? else {
            return Err(Error::Failed(format!(
                "table {label} is missing on the old master"
            )));
        };
        let mut wanted: BTreeSet<Vec<String>> = keys.into_iter().collect();
        if !truncated.is_empty() {
            // a TRUNCATE changed every row: compare them all
            wanted.extend(all_keys(old, &ot, "old master")?);
            wanted.extend(all_keys(new, &ot, "new master")?);
        }
        let wanted: Vec<Vec<String>> = wanted.into_iter().collect();
        let old_rows = rows_by_key(old, &ot, &wanted, "old master")?;
        let new_rows = rows_by_key(new, &ot, &wanted, "new master")?;
        let entries = wanted
            .into_iter()
            .map(|k| Entry {
                xids: key_xids
                    .remove(&(schema.clone(), name.clone(), k.clone()))
                    .unwrap_or_default(),
                old: old_rows.get(&k).cloned(),
                new: new_rows.get(&k).cloned(),
                key: k,
            })
            .filter(|e| truncated.is_empty() || e.differs() || !e.xids.is_empty())
            .collect();
        out.tables.push(TableDivergence {
            table: ot,
            truncated,
            entries,
        });
    }
    Ok(out)
}

fn all_keys(c: &mut Client, t: &Table, side: &str) -> Result<Vec<Vec<String>>, Error> {
    let mut tx = c.transaction().ctx(format!("{side}: reading keys"))?;
    tx.batch_execute(CANONICAL)
        .ctx(format!("{side}: settings"))?;
    let rows = tx
        .query(&format!("SELECT {} FROM {}", t.key_array(), t.from()), &[])
        .ctx(format!("{side}: reading the keys of {}", t.name))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The rows of `t` with these keys, as record text, by key.
fn rows_by_key(
    c: &mut Client,
    t: &Table,
    keys: &[Vec<String>],
    side: &str,
) -> Result<HashMap<Vec<String>, String>, Error> {
    let mut tx = c.transaction().ctx(format!("{side}: reading rows"))?;
    tx.batch_execute(CANONICAL)
        .ctx(format!("{side}: settings"))?;
    let wanted = serde_json::to_value(keys).unwrap_or_default();
    let rows = tx
        .query(
            &format!(
                "SELECT {k}, ROW({c})::text FROM {f} \
                 WHERE pg_catalog.to_jsonb({k}) IN (SELECT pg_catalog.jsonb_array_elements($1::jsonb))",
                k = t.key_array(),
                c = t.col_exprs.join(", "),
                f = t.from()
            ),
            &[&wanted],
        )
        .ctx(format!("{side}: reading the changed rows of {}", t.name))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The report for people: every changed key, what each side holds.
pub fn render(d: &Divergence) -> String {
    let mut out = String::new();
    for (table, xids) in &d.ddl {
        out.push_str(&format!(
            "{table}: its definition changed on the old master (transactions {})\n",
            list(xids)
        ));
    }
    for t in &d.tables {
        if !t.truncated.is_empty() {
            out.push_str(&format!(
                "{}: truncated on the old master (transactions {}): every row compared\n",
                t.table.name,
                list(&t.truncated)
            ));
        }
        for e in &t.entries {
            // (one line per key, whatever the key and rows hold)
            let show = |v: &Option<String>| comment(v.as_deref().unwrap_or("(no row)"));
            out.push_str(&format!(
                "{} key ({}){}: old master {} | new master {}{}\n",
                comment(&t.table.name),
                comment(&e.key.join(", ")),
                if e.xids.is_empty() {
                    String::new()
                } else {
                    format!(" [transactions {}]", list(&e.xids))
                },
                show(&e.old),
                show(&e.new),
                if e.differs() { "" } else { "  (same)" }
            ));
        }
    }
    out
}

fn list(xids: &[i64]) -> String {
    xids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Text for a `--` comment line of the file: control characters (line breaks above all)
/// escaped, so that nothing of a key or a row, which the tables' owners chose, starts a line of
/// its own, which psql would run as the operator loading the file.
fn comment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Save the old master's version of every differing row to `path`: per table a comment naming
/// each key and what the new master holds, then `COPY table (columns) FROM stdin;` with the rows
/// in COPY text format (psql can load it into a copy of the table). A row the old master
/// deleted has nothing to save: its comment says so. Returns the rows saved.
///
/// The file starts with `\set ON_ERROR_STOP on`: a COPY that fails (no such table where it is
/// loaded) would otherwise have psql run its data lines as SQL. It is written to a new file
/// renamed into place, never through a link planted at `path`.
pub fn save(old: &mut Client, d: &Divergence, path: &Path, header: &str) -> Result<usize, Error> {
    let shown = path.display().to_string();
    let mut saved = 0;
    let mut text = format!("\\set ON_ERROR_STOP on\n-- {}\n", comment(header));
    for t in &d.tables {
        let differing: Vec<&Entry> = t.entries.iter().filter(|e| e.differs()).collect();
        if differing.is_empty() {
            continue;
        }
        text.push_str(&format!("\n-- table {}\n", comment(&t.table.name)));
        for e in &differing {
            text.push_str(&format!(
                "-- key ({}): the old master {}; the new master holds {}\n",
                comment(&e.key.join(", ")),
                if e.old.is_some() {
                    "held the row below"
                } else {
                    "had deleted it"
                },
                comment(e.new.as_deref().unwrap_or("no row"))
            ));
        }
        let keys: Vec<&Vec<String>> = differing
            .iter()
            .filter(|e| e.old.is_some())
            .map(|e| &e.key)
            .collect();
        if keys.is_empty() {
            continue;
        }
        let columns: Vec<&str> = t
            .table
            .col_exprs
            .iter()
            .map(|c| c.trim_start_matches("t."))
            .collect();
        text.push_str(&format!(
            "COPY {} ({}) FROM stdin;\n",
            t.table.quoted,
            columns.join(", ")
        ));
        let mut tx = old.transaction().ctx("old master: saving its rows")?;
        tx.batch_execute(&format!(
            "{CANONICAL}; CREATE TEMP TABLE rserv_rejoin_keys (k jsonb) ON COMMIT DROP"
        ))
        .ctx("old master: saving its rows")?;
        tx.execute(
            "INSERT INTO pg_temp.rserv_rejoin_keys SELECT pg_catalog.jsonb_array_elements($1::jsonb)",
            &[&serde_json::to_value(&keys).unwrap_or_default()],
        )
        .ctx("old master: saving its rows")?;
        let mut reader = tx
            .copy_out(&format!(
                "COPY (SELECT {c} FROM {f} WHERE pg_catalog.to_jsonb({k}) IN \
                       (SELECT k FROM pg_temp.rserv_rejoin_keys)) TO STDOUT",
                c = t.table.col_exprs.join(", "),
                f = t.table.from(),
                k = t.table.key_array()
            ))
            .ctx(format!("old master: reading the rows of {}", t.table.name))?;
        let mut rows = String::new();
        reader
            .read_to_string(&mut rows)
            .io_ctx(format!("old master: reading the rows of {}", t.table.name))?;
        drop(reader);
        tx.rollback().ctx("old master: saving its rows")?;
        saved += rows.lines().count();
        text.push_str(&rows);
        text.push_str("\\.\n");
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.new", std::process::id()));
    let fresh = std::path::PathBuf::from(name);
    let _ = std::fs::remove_file(&fresh); // (a leftover of this process id: ours or nobody's)
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&fresh)
        .io_ctx(format!("creating {}", fresh.display()))?;
    f.write_all(text.as_bytes())
        .io_ctx(format!("writing {}", fresh.display()))?;
    f.sync_all()
        .io_ctx(format!("syncing {}", fresh.display()))?;
    std::fs::rename(&fresh, path).io_ctx(format!("renaming {} to {shown}", fresh.display()))?;
    Ok(saved)
}
