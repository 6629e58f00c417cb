//! Shrinking: remove what a failure does not need, replaying on fresh databases, as long as
//! the failure (its signature) persists: tables, chunks of steps (delta debugging), hook
//! steps, then simplifications of the schema (columns, names, RLS, partitions, watched
//! columns, slave variants, initial rows) and of the setup.

use super::exec::{execute, Env, Failure};
use super::schedule::{Schedule, Step};
use super::schema::{Base, ColKind, ColType, SlaveVariant};
use std::time::{Duration, Instant};

pub struct Shrunk {
    pub schedule: Schedule,
    pub failure: Failure,
    /// replays tried
    pub attempts: usize,
    /// the budget ran out before no simplification helped any more
    pub out_of_time: bool,
}

struct Shrinker<'a> {
    env: &'a Env,
    signature: String,
    best: Schedule,
    failure: Failure,
    attempts: usize,
    deadline: Instant,
    verbose: bool,
}

impl Shrinker<'_> {
    fn out_of_time(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// Replay `cand`; keep it if it fails the same way.
    fn try_candidate(&mut self, mut cand: Schedule) -> bool {
        if self.out_of_time() || cand == self.best {
            return false;
        }
        self.attempts += 1;
        match execute(self.env, &cand) {
            Err(f) if f.signature() == self.signature => {
                if let Some(i) = f.step {
                    cand.steps.truncate(i + 1);
                }
                if self.verbose {
                    eprintln!(
                        "shrink: {} steps, {} tables (attempt {})",
                        cand.steps.len(),
                        cand.tables.iter().filter(|t| !t.omit).count(),
                        self.attempts
                    );
                }
                self.best = cand;
                self.failure = f;
                true
            }
            _ => false,
        }
    }

    fn failing_table(&self) -> Option<usize> {
        use super::exec::Kind;
        match self.failure.kind {
            Kind::Diverged { table, .. }
            | Kind::TruncateRace { table, .. }
            | Kind::SnapshotMismatch { table }
            | Kind::CheckDiffers { table, .. }
            | Kind::CheckReport { table, .. } => Some(table),
            _ => None,
        }
    }

    fn tables(&mut self) -> bool {
        let mut progress = false;
        for t in 0..self.best.tables.len() {
            if self.best.tables[t].omit || Some(t) == self.failing_table() {
                continue;
            }
            let mut cand = self.best.clone();
            cand.tables[t].omit = true;
            let mut map: Vec<Option<usize>> = (0..cand.tables.len()).map(Some).collect();
            map[t] = None;
            cand.steps = cand
                .steps
                .iter()
                .filter_map(|s| s.remap_tables(&map))
                .collect();
            progress |= self.try_candidate(cand);
        }
        progress
    }

    fn steps(&mut self) -> bool {
        let mut progress = false;
        let mut chunk = self.best.steps.len().div_ceil(2).max(1);
        loop {
            let mut i = 0;
            while i < self.best.steps.len() && !self.out_of_time() {
                let mut cand = self.best.clone();
                let end = (i + chunk).min(cand.steps.len());
                cand.steps.drain(i..end);
                if self.try_candidate(cand) {
                    progress = true;
                } else {
                    i += chunk;
                }
            }
            if chunk == 1 || self.out_of_time() {
                break;
            }
            chunk = chunk.div_ceil(2);
        }
        progress
    }

    /// Hook steps of cycles and writes of master remove/re-add, one at a time.
    fn nested(&mut self) -> bool {
        let mut progress = false;
        let mut i = 0;
        while i < self.best.steps.len() && !self.out_of_time() {
            let len = match &self.best.steps[i] {
                Step::Cycle { hook, .. } => hook.len(),
                Step::MasterReadd { writes, .. } => writes.len(),
                _ => 0,
            };
            let mut j = 0;
            while j < len.min(self.nested_len(i)) {
                let mut cand = self.best.clone();
                match &mut cand.steps[i] {
                    Step::Cycle { hook, .. } => {
                        hook.remove(j);
                    }
                    Step::MasterReadd { writes, .. } => {
                        writes.remove(j);
                    }
                    _ => {}
                }
                if self.try_candidate(cand) {
                    progress = true;
                } else {
                    j += 1;
                }
                if i >= self.best.steps.len() {
                    break;
                }
            }
            i += 1;
        }
        progress
    }

    fn nested_len(&self, i: usize) -> usize {
        match self.best.steps.get(i) {
            Some(Step::Cycle { hook, .. }) => hook.len(),
            Some(Step::MasterReadd { writes, .. }) => writes.len(),
            _ => 0,
        }
    }

    /// Schema and setup simplifications, each tried on its own.
    fn simplify(&mut self) -> bool {
        let mut progress = false;
        let mut edits: Vec<Edit> = Vec::new();
        edits.push(Box::new(|s| {
            let changed = s.ext_schema.is_some();
            s.ext_schema = None;
            changed
        }));
        edits.push(Box::new(|s| {
            let changed = s.writers.iter().any(|w| *w != 0);
            s.writers.iter_mut().for_each(|w| *w = 0);
            changed
        }));
        edits.push(Box::new(|s| {
            let changed = !s.superuser;
            s.superuser = true;
            s.bypass_rls = true;
            changed
        }));
        for t in 0..self.best.tables.len() {
            if self.best.tables[t].omit {
                continue;
            }
            edits.push(Box::new(move |s| {
                let tt = &mut s.tables[t];
                let changed = tt.rls.is_some();
                tt.rls = None;
                changed
            }));
            edits.push(Box::new(move |s| {
                let tt = &mut s.tables[t];
                let changed = tt.watched.is_some();
                tt.watched = None;
                changed
            }));
            edits.push(Box::new(move |s| {
                let tt = &mut s.tables[t];
                let changed = !tt.partitions.is_empty();
                tt.partitions.clear();
                tt.slave.plain_partitions = false;
                changed
            }));
            edits.push(Box::new(move |s| {
                let tt = &mut s.tables[t];
                let changed = tt.slave != SlaveVariant::default();
                tt.slave = SlaveVariant::default();
                changed
            }));
            edits.push(Box::new(move |s| {
                let tt = &mut s.tables[t];
                let changed = !tt.initial.is_empty();
                tt.initial.clear();
                changed
            }));
            edits.push(Box::new(move |s| {
                let tt = &mut s.tables[t];
                let n = tt.initial.len();
                tt.initial.truncate(n / 2);
                n > 1
            }));
            edits.push(Box::new(move |s| {
                let changed = s.tables[t].schema != "public";
                s.tables[t].schema = "public".into();
                changed
            }));
            edits.push(Box::new(move |s| {
                let plain = format!("t{t}");
                let tt = &mut s.tables[t];
                let changed = tt.name != plain;
                tt.name = plain.clone();
                for (i, p) in tt.partitions.iter_mut().enumerate() {
                    *p = format!("{plain}_p{i}");
                }
                changed
            }));
            edits.push(Box::new(move |s| {
                let tt = &mut s.tables[t];
                let changed = tt.alt_key || tt.pk_identity.is_some();
                tt.alt_key = false;
                tt.pk_identity = None;
                changed
            }));
            let cols: Vec<(usize, bool)> = self.best.tables[t]
                .cols
                .iter()
                .filter(|c| !c.omit)
                .map(|c| (c.id, self.best.tables[t].key.contains(&c.id)))
                .collect();
            for (id, is_key) in cols {
                if !is_key {
                    edits.push(Box::new(move |s| omit_column(s, t, id)));
                }
                edits.push(Box::new(move |s| {
                    let plain = format!("c{id}");
                    let Some(c) = s.tables[t].cols.iter_mut().find(|c| c.id == id) else {
                        return false;
                    };
                    let changed = c.name != plain;
                    c.name = plain;
                    changed
                }));
                edits.push(Box::new(move |s| {
                    let Some(c) = s.tables[t].cols.iter_mut().find(|c| c.id == id) else {
                        return false;
                    };
                    let changed = c.ty.domain.is_some() || c.ty.array || c.default.is_some();
                    c.ty.domain = None;
                    c.ty.array = false;
                    c.default = None;
                    changed
                }));
            }
        }
        for edit in edits {
            if self.out_of_time() {
                break;
            }
            let mut cand = self.best.clone();
            if edit(&mut cand) {
                progress |= self.try_candidate(cand);
            }
        }
        progress
    }
}

/// A simplification: changes the schedule, says whether it changed anything.
type Edit = Box<dyn Fn(&mut Schedule) -> bool>;

/// Leave column `id` of table `t` out (and what depends on it).
fn omit_column(s: &mut Schedule, t: usize, id: usize) -> bool {
    let tt = &mut s.tables[t];
    if tt.pk_identity == Some(id) || tt.rls.as_ref().is_some_and(|r| r.vis == id) {
        return false;
    }
    let Some(c) = tt.cols.iter_mut().find(|c| c.id == id) else {
        return false;
    };
    if c.omit {
        return false;
    }
    c.omit = true;
    for g in tt.cols.iter_mut() {
        if g.kind == (ColKind::Generated { from: id }) {
            g.omit = true;
        }
    }
    if let Some(w) = &mut tt.watched {
        w.retain(|x| *x != id);
        if w.is_empty() {
            tt.watched = None;
        }
    }
    true
}

/// Drop omitted tables for good and renumber the rest.
pub fn compact(s: &Schedule) -> Schedule {
    let mut out = s.clone();
    let mut map = Vec::new();
    let mut next = 0;
    for t in &s.tables {
        if t.omit {
            map.push(None);
        } else {
            map.push(Some(next));
            next += 1;
        }
    }
    out.tables = s.tables.iter().filter(|t| !t.omit).cloned().collect();
    for t in out.tables.iter_mut() {
        t.cols.retain(|c| !c.omit);
    }
    out.steps = s
        .steps
        .iter()
        .filter_map(|st| st.remap_tables(&map))
        .collect();
    // values of columns that are not there
    let mut known: Vec<Vec<usize>> = out
        .tables
        .iter()
        .map(|t| t.cols.iter().map(|c| c.id).collect())
        .collect();
    for st in &out.steps {
        if let Step::AddCol { t, col } = st {
            known[*t].push(col.id);
        }
    }
    for st in out.steps.iter_mut() {
        st.vals_mut(&mut |t, vals| vals.retain(|(id, _)| known[t].contains(id)));
    }
    for (t, tt) in out.tables.iter_mut().enumerate() {
        for (_, vals) in tt.initial.iter_mut() {
            vals.retain(|(id, _)| known[t].contains(id));
        }
    }
    drop_unused_types(&mut out);
    let used: Vec<String> = out.tables.iter().map(|t| t.schema.clone()).collect();
    out.schemas.retain(|s| used.contains(s));
    out
}

/// Remove enums and domains no column uses, renumbering the others.
fn drop_unused_types(s: &mut Schedule) {
    let mut types: Vec<ColType> = s
        .tables
        .iter()
        .flat_map(|t| t.cols.iter().map(|c| c.ty.clone()))
        .collect();
    for st in &s.steps {
        if let Step::AddCol { col, .. } = st {
            types.push(col.ty.clone());
        }
    }
    let used_domains: Vec<usize> = (0..s.types.domains.len())
        .filter(|d| types.iter().any(|t| t.domain == Some(*d)))
        .collect();
    let mut used_enums: Vec<usize> = Vec::new();
    let mut note = |b: &Base| {
        if let Base::Enum(e) = b {
            if !used_enums.contains(e) {
                used_enums.push(*e);
            }
        }
    };
    for t in &types {
        note(&t.base);
    }
    for d in &used_domains {
        note(&s.types.domains[*d].base);
    }
    used_enums.sort_unstable();
    let emap = |e: usize| used_enums.iter().position(|x| *x == e).unwrap_or(0);
    let dmap = |d: usize| used_domains.iter().position(|x| *x == d).unwrap_or(0);
    let fix = |ty: &mut ColType| {
        if let Base::Enum(e) = &mut ty.base {
            *e = emap(*e);
        }
        if let Some(d) = &mut ty.domain {
            *d = dmap(*d);
        }
    };
    for t in s.tables.iter_mut() {
        for c in t.cols.iter_mut() {
            fix(&mut c.ty);
        }
    }
    for st in s.steps.iter_mut() {
        if let Step::AddCol { col, .. } = st {
            fix(&mut col.ty);
        }
    }
    s.types.domains = used_domains
        .iter()
        .map(|d| {
            let mut dom = s.types.domains[*d].clone();
            if let Base::Enum(e) = &mut dom.base {
                *e = emap(*e);
            }
            dom
        })
        .collect();
    s.types.enums = used_enums
        .iter()
        .map(|e| s.types.enums[*e].clone())
        .collect();
}

/// Shrink `sch`, which fails with `failure`, within `budget`.
pub fn shrink(
    env: &Env,
    sch: &Schedule,
    failure: &Failure,
    budget: Duration,
    verbose: bool,
) -> Shrunk {
    let mut best = sch.clone();
    if let Some(i) = failure.step {
        best.steps.truncate(i + 1);
    }
    let mut s = Shrinker {
        env,
        signature: failure.signature(),
        best,
        failure: failure.clone(),
        attempts: 0,
        deadline: Instant::now() + budget,
        verbose,
    };
    loop {
        let mut progress = s.tables();
        progress |= s.steps();
        progress |= s.nested();
        progress |= s.simplify();
        if !progress || s.out_of_time() {
            break;
        }
    }
    let out_of_time = s.out_of_time();
    // renumber without the omitted tables, and confirm the result still fails
    let compacted = compact(&s.best);
    let (schedule, failure) = match execute(env, &compacted) {
        Err(f) => (compacted, f),
        Ok(_) => (s.best.clone(), s.failure.clone()),
    };
    Shrunk {
        schedule,
        failure,
        attempts: s.attempts,
        out_of_time,
    }
}
