//! A schedule: the schema, the replication role, and the steps one driver thread runs in order
//! (writers' statements on several master connections, interleaved statement by statement,
//! and replication operations). It prints as SQL-like lines for people and as JSON that
//! [`Schedule::from_json`] reads back, so a regression test replays it exactly.

use super::schema::{
    change_key_sql, delete_sql, display_quote, dml_target, insert_sql, qualified, update_sql,
    Catalogue, ColSpec, LiveTable, TableSpec, Vals,
};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Step {
    Begin {
        c: usize,
    },
    Commit {
        c: usize,
    },
    Rollback {
        c: usize,
    },
    Savepoint {
        c: usize,
        sp: usize,
    },
    RollbackTo {
        c: usize,
        sp: usize,
    },
    /// PREPARE TRANSACTION of connection c's transaction as `gid`
    Prepare {
        c: usize,
        gid: usize,
    },
    CommitPrepared {
        gid: usize,
    },
    RollbackPrepared {
        gid: usize,
    },
    Insert {
        c: usize,
        t: usize,
        k: u64,
        vals: Vals,
    },
    Update {
        c: usize,
        t: usize,
        k: u64,
        vals: Vals,
    },
    Delete {
        c: usize,
        t: usize,
        k: u64,
    },
    ChangeKey {
        c: usize,
        t: usize,
        k: u64,
        to: u64,
    },
    /// a and b exchange rows, through the free key tmp
    SwapKeys {
        c: usize,
        t: usize,
        a: u64,
        b: u64,
        tmp: u64,
    },
    UpdateAll {
        c: usize,
        t: usize,
        vals: Vals,
    },
    DeleteAll {
        c: usize,
        t: usize,
    },
    Truncate {
        c: usize,
        t: usize,
    },
    /// One replication cycle to slave s (0 or 1) in process; `hook` runs inside the master's
    /// prepare transaction at its snapshot, after the oracle captured the master there.
    Cycle {
        s: usize,
        #[serde(default, skip_serializing_if = "super::schema::is_false")]
        clean: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        hook: Vec<Step>,
    },
    CleanLog,
    /// `replicate check` (library) for slave s
    Check {
        s: usize,
    },
    /// The second slave joins: creates and registers `tables` (or, with create_tables, lets
    /// its cycles create every table the master replicates).
    Join {
        tables: Vec<usize>,
        #[serde(default, skip_serializing_if = "super::schema::is_false")]
        create_tables: bool,
    },
    SlaveRemove {
        s: usize,
        t: usize,
        p: usize,
    },
    /// A local write on a slave table that is not registered there (vals None: delete).
    SlaveWrite {
        s: usize,
        t: usize,
        p: usize,
        k: u64,
        vals: Option<Vals>,
    },
    SlaveAdd {
        s: usize,
        t: usize,
        p: usize,
    },
    /// rserv_remove_table of every physical table of t on the master, `writes` (autocommit),
    /// then rserv_add_table again with the same identity and watched columns.
    MasterReadd {
        t: usize,
        writes: Vec<Step>,
    },
    Rename {
        t: usize,
        col: usize,
        to: String,
    },
    DropCol {
        t: usize,
        col: usize,
    },
    AddCol {
        t: usize,
        col: ColSpec,
    },
    Restart {
        master: bool,
    },
    /// ALTER ROLE <replication role> BYPASSRLS
    GrantBypass,
    /// Connection c runs `BEGIN; TRUNCATE t; INSERT rows` and keeps it open; a cycle to
    /// slave s starts; once the cycle waits for t's lock, c commits. The slave must then hold
    /// the master's state from before or from after that commit (contract 4).
    TruncateRace {
        s: usize,
        c: usize,
        t: usize,
        rows: Vec<(u64, Vals)>,
    },
}

impl Step {
    /// The logical table a step works on, if any.
    pub fn table(&self) -> Option<usize> {
        match self {
            Step::Insert { t, .. }
            | Step::Update { t, .. }
            | Step::Delete { t, .. }
            | Step::ChangeKey { t, .. }
            | Step::SwapKeys { t, .. }
            | Step::UpdateAll { t, .. }
            | Step::DeleteAll { t, .. }
            | Step::Truncate { t, .. }
            | Step::SlaveRemove { t, .. }
            | Step::SlaveWrite { t, .. }
            | Step::SlaveAdd { t, .. }
            | Step::MasterReadd { t, .. }
            | Step::Rename { t, .. }
            | Step::DropCol { t, .. }
            | Step::AddCol { t, .. }
            | Step::TruncateRace { t, .. } => Some(*t),
            _ => None,
        }
    }

    /// Renumber tables (`map[old]` = new index, None = the table is gone: the step goes too).
    pub fn remap_tables(&self, map: &[Option<usize>]) -> Option<Step> {
        let mut s = self.clone();
        match &mut s {
            Step::Cycle { hook, .. } => {
                *hook = hook.iter().filter_map(|h| h.remap_tables(map)).collect();
                return Some(s);
            }
            Step::Join { tables, .. } => {
                *tables = tables.iter().filter_map(|t| map[*t]).collect();
                return Some(s);
            }
            Step::MasterReadd { writes, .. } => {
                *writes = writes.iter().filter_map(|h| h.remap_tables(map)).collect();
            }
            _ => {}
        }
        match &mut s {
            Step::Insert { t, .. }
            | Step::Update { t, .. }
            | Step::Delete { t, .. }
            | Step::ChangeKey { t, .. }
            | Step::SwapKeys { t, .. }
            | Step::UpdateAll { t, .. }
            | Step::DeleteAll { t, .. }
            | Step::Truncate { t, .. }
            | Step::SlaveRemove { t, .. }
            | Step::SlaveWrite { t, .. }
            | Step::SlaveAdd { t, .. }
            | Step::MasterReadd { t, .. }
            | Step::Rename { t, .. }
            | Step::DropCol { t, .. }
            | Step::AddCol { t, .. }
            | Step::TruncateRace { t, .. } => {
                *t = map.get(*t).copied().flatten()?;
            }
            _ => {}
        }
        Some(s)
    }
}

impl Step {
    /// Every list of column values in the step (and in its nested steps), with its table.
    pub fn vals_mut(&mut self, f: &mut dyn FnMut(usize, &mut Vals)) {
        match self {
            Step::Insert { t, vals, .. }
            | Step::Update { t, vals, .. }
            | Step::UpdateAll { t, vals, .. } => f(*t, vals),
            Step::SlaveWrite {
                t, vals: Some(v), ..
            } => f(*t, v),
            Step::TruncateRace { t, rows, .. } => {
                for (_, v) in rows.iter_mut() {
                    f(*t, v);
                }
            }
            Step::Cycle { hook, .. } => {
                for h in hook.iter_mut() {
                    h.vals_mut(f);
                }
            }
            Step::MasterReadd { writes, .. } => {
                for w in writes.iter_mut() {
                    w.vals_mut(f);
                }
            }
            _ => {}
        }
    }
}

/// Session settings of a writer connection (the capture must not depend on them).
pub const WRITER_SETTINGS: &[&str] = &[
    "",
    "SET DateStyle = 'SQL, DMY'; SET TimeZone = 'Asia/Kathmandu'; SET extra_float_digits = -3; SET IntervalStyle = 'sql_standard'",
    "SET DateStyle = 'German'; SET TimeZone = 'America/St_Johns'; SET IntervalStyle = 'iso_8601'; SET bytea_output = 'escape'",
];

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Schedule {
    pub seed: u64,
    /// replicate as a superuser (else as a role granted with rserv_grant_replication)
    pub superuser: bool,
    /// the non-superuser replication role starts with BYPASSRLS
    #[serde(default)]
    pub bypass_rls: bool,
    /// schema of the extension (None: public)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext_schema: Option<String>,
    /// schemas to create (besides public)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schemas: Vec<String>,
    /// per writer connection: index into WRITER_SETTINGS
    pub writers: Vec<usize>,
    #[serde(default)]
    pub types: Catalogue,
    pub tables: Vec<TableSpec>,
    pub steps: Vec<Step>,
}

impl Schedule {
    /// JSON with one table and one step per line.
    pub fn to_json(&self) -> String {
        let mut head = self.clone();
        head.tables = Vec::new();
        head.steps = Vec::new();
        let head = serde_json::to_string(&head).unwrap_or_default();
        // {"seed":..,..,"tables":[],"steps":[]}
        let head = head
            .trim_end_matches('}')
            .trim_end_matches(",\"steps\":[]")
            .trim_end_matches(",\"tables\":[]")
            .to_string();
        let mut out = head;
        out.push_str(",\n\"tables\": [\n");
        let lines: Vec<String> = self
            .tables
            .iter()
            .map(|t| serde_json::to_string(t).unwrap_or_default())
            .collect();
        out.push_str(&lines.join(",\n"));
        out.push_str("\n],\n\"steps\": [\n");
        let lines: Vec<String> = self
            .steps
            .iter()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .collect();
        out.push_str(&lines.join(",\n"));
        out.push_str("\n]}\n");
        out
    }

    pub fn from_json(s: &str) -> Result<Schedule, String> {
        serde_json::from_str(s).map_err(|e| format!("not a schedule: {e}"))
    }

    /// The schedule as a person reads it: the schema, then one line per step with the SQL the
    /// executor sends (names quoted for display).
    pub fn render(&self) -> String {
        let q = &mut |s: &str| display_quote(s);
        let mut out = String::new();
        let role = if self.superuser {
            "a superuser".to_string()
        } else if self.bypass_rls {
            "a non-superuser role with BYPASSRLS".to_string()
        } else {
            "a non-superuser role without BYPASSRLS".to_string()
        };
        let _ =
            writeln!(
            out,
            "-- seed {:#x}: replication as {role}; extension in schema {}; {} writer connections",
            self.seed,
            self.ext_schema.as_deref().map(display_quote).unwrap_or("public".into()),
            self.writers.len()
        );
        for e in &self.types.enums {
            let _ = writeln!(
                out,
                "-- CREATE TYPE public.{} AS ENUM ({:?})",
                q(&e.name),
                e.labels
            );
        }
        for (i, d) in self.types.domains.iter().enumerate() {
            let ty = super::schema::ColType::plain(d.base.clone()).sql(&self.types, q);
            let _ = writeln!(out, "-- domain #{i}: public.{} AS {ty}", q(&d.name));
        }
        let mut live: Vec<LiveTable> = self.tables.iter().map(LiveTable::from_spec).collect();
        for (i, t) in self.tables.iter().enumerate() {
            if t.omit {
                continue;
            }
            let _ = writeln!(out, "-- t{i}:");
            for sql in super::schema::master_ddl(t, &self.types, q) {
                let _ = writeln!(out, "--    {sql};");
            }
            let lt = &live[i];
            let key: Vec<String> = lt.key_cols().iter().map(|c| q(&c.name)).collect();
            let mut reg = format!(
                "--    registered with identity ({}){}",
                key.join(", "),
                if lt.alt_key { " by name" } else { "" }
            );
            if let Some(w) = &lt.watched {
                let names: Vec<String> = w
                    .iter()
                    .filter_map(|id| lt.cols.iter().find(|c| c.id == *id))
                    .map(|c| q(&c.name))
                    .collect();
                reg.push_str(&format!(", watched ({})", names.join(", ")));
            }
            let _ = writeln!(out, "{reg}");
            if !t.initial.is_empty() {
                let _ = writeln!(out, "--    {} rows before registration", t.initial.len());
            }
            if t.slave != Default::default() {
                let _ = writeln!(out, "--    slave variant: {:?}", t.slave);
            }
        }
        for (i, s) in self.steps.iter().enumerate() {
            render_step(&mut out, &format!("#{i:<4}"), s, &mut live, &self.types);
        }
        out.push_str(
            "-- final phase: open transactions commit, prepared ones are committed, BYPASSRLS is \
             granted if RLS tables need it, each slave runs two cycles, then replicate check (slave 1)\n",
        );
        out
    }
}

fn dml_line(s: &Step, live: &[LiveTable], cat: &Catalogue) -> Option<String> {
    let q = &mut |s: &str| display_quote(s);
    let t = s.table().and_then(|t| live.get(t))?;
    let target = dml_target(t, q);
    Some(match s {
        Step::Insert { k, vals, .. } => insert_sql(&target, t, *k, vals, cat, q),
        Step::Update { k, vals, .. } => update_sql(&target, t, Some(*k), vals, cat, q)
            .unwrap_or_else(|| "(update of dropped columns only: nothing)".into()),
        Step::Delete { k, .. } => delete_sql(&target, t, Some(*k), cat, q),
        Step::ChangeKey { k, to, .. } => change_key_sql(&target, t, *k, *to, cat, q),
        Step::SwapKeys { a, b, tmp, .. } => format!(
            "{}; {}; {}",
            change_key_sql(&target, t, *a, *tmp, cat, q),
            change_key_sql(&target, t, *b, *a, cat, q),
            change_key_sql(&target, t, *tmp, *b, cat, q)
        ),
        Step::UpdateAll { vals, .. } => update_sql(&target, t, None, vals, cat, q)
            .unwrap_or_else(|| "(update of dropped columns only: nothing)".into()),
        Step::DeleteAll { .. } => delete_sql(&target, t, None, cat, q),
        Step::Truncate { .. } => format!("TRUNCATE {target}"),
        _ => return None,
    })
}

fn render_step(out: &mut String, prefix: &str, s: &Step, live: &mut [LiveTable], cat: &Catalogue) {
    let q = &mut |s: &str| display_quote(s);
    let line = match s {
        Step::Begin { c } => format!("c{c}> BEGIN"),
        Step::Commit { c } => format!("c{c}> COMMIT"),
        Step::Rollback { c } => format!("c{c}> ROLLBACK"),
        Step::Savepoint { c, sp } => format!("c{c}> SAVEPOINT s{sp}"),
        Step::RollbackTo { c, sp } => format!("c{c}> ROLLBACK TO SAVEPOINT s{sp}"),
        Step::Prepare { c, gid } => format!("c{c}> PREPARE TRANSACTION 'g{gid}'"),
        Step::CommitPrepared { gid } => format!("COMMIT PREPARED 'g{gid}'"),
        Step::RollbackPrepared { gid } => format!("ROLLBACK PREPARED 'g{gid}'"),
        Step::Insert { c, .. }
        | Step::Update { c, .. }
        | Step::Delete { c, .. }
        | Step::ChangeKey { c, .. }
        | Step::SwapKeys { c, .. }
        | Step::UpdateAll { c, .. }
        | Step::DeleteAll { c, .. }
        | Step::Truncate { c, .. } => {
            format!("c{c}> {}", dml_line(s, live, cat).unwrap_or_default())
        }
        Step::Cycle { s, clean, hook } => {
            let _ = writeln!(
                out,
                "{prefix} cycle to slave {}{}{}",
                s + 1,
                if *clean {
                    ", then rserv_clean_log()"
                } else {
                    ""
                },
                if hook.is_empty() {
                    ""
                } else {
                    "; inside its prepare transaction, at its snapshot:"
                }
            );
            for h in hook {
                render_step(out, &format!("{prefix}    |"), h, live, cat);
            }
            return;
        }
        Step::CleanLog => "SELECT rserv_clean_log()".into(),
        Step::Check { s } => format!("replicate check (slave {})", s + 1),
        Step::Join {
            tables,
            create_tables,
        } => {
            if *create_tables {
                "slave 2 joins; its cycles run with --create-tables".into()
            } else {
                let names: Vec<String> = tables.iter().map(|t| format!("t{t}")).collect();
                format!("slave 2 joins: creates and registers {}", names.join(", "))
            }
        }
        Step::SlaveRemove { s, t, p } => format!(
            "slave {}: SELECT rserv_slave_remove_table('{}')",
            s + 1,
            phys(live, *t, *p, q)
        ),
        Step::SlaveAdd { s, t, p } => format!(
            "slave {}: SELECT rserv_slave_add_table('{}')",
            s + 1,
            phys(live, *t, *p, q)
        ),
        Step::SlaveWrite { s, t, p, k, vals } => {
            let target = phys(live, *t, *p, q);
            let sql = match (live.get(*t), vals) {
                (Some(lt), None) => delete_sql(&target, lt, Some(*k), cat, q),
                (Some(lt), Some(v)) => {
                    let mut parts: Vec<String> = update_sql(&target, lt, Some(*k), v, cat, q)
                        .into_iter()
                        .collect();
                    parts.push(insert_sql(&target, lt, *k, v, cat, q));
                    parts.join("; ")
                }
                _ => String::new(),
            };
            format!("slave {} (local write): {sql}", s + 1)
        }
        Step::MasterReadd { t, writes } => {
            let _ = writeln!(
                out,
                "{prefix} master: rserv_remove_table(t{t}); autocommit writes:"
            );
            for w in writes {
                render_step(out, &format!("{prefix}    |"), w, live, cat);
            }
            format!("master: rserv_add_table(t{t}) again (same identity and watched columns)")
        }
        Step::Rename { t, col, to } => {
            let line = live
                .get(*t)
                .and_then(|lt| lt.col(*col))
                .map(|c| {
                    format!(
                        "ALTER TABLE {} RENAME COLUMN {} TO {} (on the master; the slaves follow)",
                        dml_target(&live[*t], q),
                        q(&c.name),
                        q(to)
                    )
                })
                .unwrap_or_else(|| format!("rename of a column t{t}.#{col} that is gone"));
            if let Some(c) = live
                .get_mut(*t)
                .and_then(|lt| lt.cols.iter_mut().find(|c| c.id == *col))
            {
                c.name = to.clone();
            }
            line
        }
        Step::DropCol { t, col } => {
            let line = live
                .get(*t)
                .and_then(|lt| lt.col(*col))
                .map(|c| {
                    format!(
                        "ALTER TABLE {} DROP COLUMN {} (on the master; the slaves follow)",
                        dml_target(&live[*t], q),
                        q(&c.name)
                    )
                })
                .unwrap_or_default();
            if let Some(c) = live
                .get_mut(*t)
                .and_then(|lt| lt.cols.iter_mut().find(|c| c.id == *col))
            {
                c.dropped = true;
            }
            line
        }
        Step::AddCol { t, col } => {
            let line = live
                .get(*t)
                .map(|lt| {
                    format!(
                        "ALTER TABLE {} ADD COLUMN {} {}{} (on the master; the slaves follow)",
                        dml_target(lt, q),
                        q(&col.name),
                        col.ty.sql(cat, q),
                        col.default
                            .as_ref()
                            .map(|d| format!(" DEFAULT '{d}'"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_default();
            if let Some(lt) = live.get_mut(*t) {
                lt.cols.push(col.clone());
            }
            line
        }
        Step::Restart { master } => format!(
            "restart the {} cluster (pg_ctl stop -m fast; start)",
            if *master { "master" } else { "slave" }
        ),
        Step::GrantBypass => "ALTER ROLE <replication role> BYPASSRLS".into(),
        Step::TruncateRace { s, c, t, rows } => {
            let tq = live.get(*t).map(|lt| dml_target(lt, q)).unwrap_or_default();
            format!(
                "c{c}> BEGIN; TRUNCATE {tq}; {} rows inserted; cycle to slave {} starts and waits for the lock; c{c}> COMMIT",
                rows.len(),
                s + 1
            )
        }
    };
    let _ = writeln!(out, "{prefix} {line}");
}

fn phys(live: &[LiveTable], t: usize, p: usize, q: &mut dyn FnMut(&str) -> String) -> String {
    live.get(t)
        .and_then(|lt| {
            lt.physical()
                .get(p)
                .map(|name| qualified(&lt.schema, name, q))
        })
        .unwrap_or_else(|| format!("t{t}/{p}"))
}
