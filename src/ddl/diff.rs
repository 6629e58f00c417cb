//! What changed between two definitions of one master table (before and after a DDL
//! transaction), as the steps a slave takes to follow. Pure: the master uses it to refuse what
//! cannot follow in the stream, the slave to follow.
//!
//! Columns are matched by the master's attribute number, which survives renames; everything
//! else by name. These steps reshape the table (renames, columns, defaults, dropped objects);
//! what checks rows (NOT NULL, constraints, indexes) is made to match the final definition
//! once the rows are those of the master at the change set's snapshot (see `apply.rs`): at the
//! previous one, the slave's rows may not satisfy a constraint the master's rows satisfied
//! when it was added.

use super::types::{diff_types, TypeStep};
use crate::schema::model::{ColumnDef, Rel, TableDef, TypeDef};

#[derive(Debug, Clone)]
pub enum Step {
    /// the table moves to another schema or gets another name
    RenameTable {
        to: Rel,
    },
    DropColumn(String),
    RenameColumn {
        from: String,
        to: String,
    },
    /// the column's type, modifier or collation changes
    AlterType(ColumnDef),
    SetDefault(ColumnDef),
    DropNotNull(String),
    /// added without NOT NULL (set after the rows)
    AddColumn(ColumnDef),
    CommentTable(Option<String>),
    CommentColumn(ColumnDef),
    /// an object (index, constraint, trigger, policy) of table `on` the new definition lacks
    DropObject {
        on: Rel,
        kind: &'static str,
        name: String,
    },
    /// a partition created (or attached) on the master
    AddPartition(TableDef),
    /// a partition detached on the master
    DetachPartition(Rel),
    /// a type the table uses changed (see `types.rs`); these come first
    Type(TypeStep),
}

#[derive(Debug, Default)]
pub struct Diff {
    pub before: Vec<Step>,
    /// domains whose NOT NULL or constraints are made once the rows are the master's
    pub domains_after: Vec<TypeDef>,
    /// what cannot follow in the stream (the master refuses the DDL)
    pub unsupported: Vec<String>,
}

fn by_attnum(def: &TableDef, attnum: i16) -> Option<&ColumnDef> {
    def.columns.iter().find(|c| c.attnum == attnum)
}

fn same_type(a: &ColumnDef, b: &ColumnDef) -> bool {
    a.typ == b.typ && a.typmod == b.typmod && a.collation == b.collation
}

fn names<T>(items: &[T], name: impl Fn(&T) -> &str) -> Vec<String> {
    items.iter().map(|i| name(i).to_string()).collect()
}

fn rel(d: &TableDef) -> Rel {
    Rel {
        schema: d.schema.clone(),
        table: d.table.clone(),
    }
}

/// Objects (indexes, constraints, triggers, policies) of `old` that `new` no longer has.
fn dropped_objects(old: &TableDef, new: &TableDef, out: &mut Vec<Step>) {
    let on = rel(new);
    let gone =
        |kind: &'static str, before: Vec<String>, after: Vec<String>, out: &mut Vec<Step>| {
            for name in before.into_iter().filter(|n| !after.contains(n)) {
                out.push(Step::DropObject {
                    on: on.clone(),
                    kind,
                    name,
                });
            }
        };
    // foreign keys first: they may depend on a unique constraint or index dropped next
    let fks = |d: &TableDef| {
        d.constraints
            .iter()
            .filter(|o| o.kind == "f" && !o.inherited)
            .map(|o| o.name.clone())
            .collect::<Vec<_>>()
    };
    gone("constraint", fks(old), fks(new), out);
    let others = |d: &TableDef| {
        d.constraints
            .iter()
            .filter(|o| o.kind != "f" && !o.inherited)
            .map(|o| o.name.clone())
            .collect::<Vec<_>>()
    };
    gone("constraint", others(old), others(new), out);
    gone(
        "index",
        names(&old.indexes, |i| &i.name),
        names(&new.indexes, |i| &i.name),
        out,
    );
    gone(
        "trigger",
        names(&old.triggers, |t| &t.name),
        names(&new.triggers, |t| &t.name),
        out,
    );
    gone(
        "policy",
        names(&old.policies, |p| &p.name),
        names(&new.policies, |p| &p.name),
        out,
    );
}

/// The steps from `old` to `new` (both the master's definitions of one table).
pub fn diff(old: &TableDef, new: &TableDef) -> Diff {
    let mut d = Diff::default();
    if old == new {
        return d;
    }
    let types = diff_types(&old.types, &new.types);
    d.before.extend(types.steps.into_iter().map(Step::Type));
    d.domains_after = types.domains_after;
    d.unsupported.extend(types.unsupported);
    if old.partition_key != new.partition_key {
        d.unsupported.push("its partition key changed".to_string());
    }
    if rel(old) != rel(new) {
        d.before.push(Step::RenameTable { to: rel(new) });
    }
    dropped_objects(old, new, &mut d.before);
    for c in &old.columns {
        if by_attnum(new, c.attnum).is_none() {
            d.before.push(Step::DropColumn(c.name.clone()));
        }
    }
    let renames = new
        .columns
        .iter()
        .any(|n| by_attnum(old, n.attnum).is_some_and(|o| o.name != n.name));
    for n in &new.columns {
        let Some(o) = by_attnum(old, n.attnum) else {
            if n.identity.is_some() {
                d.unsupported
                    .push(format!("identity column \"{}\" was added", n.name));
            }
            d.before.push(Step::AddColumn(n.clone()));
            if n.comment.is_some() {
                d.before.push(Step::CommentColumn(n.clone()));
            }
            continue;
        };
        if o.name != n.name {
            d.before.push(Step::RenameColumn {
                from: o.name.clone(),
                to: n.name.clone(),
            });
        }
        if o.identity != n.identity {
            d.unsupported
                .push(format!("the identity of column \"{}\" changed", n.name));
        }
        // a rename of a column it uses changes the expression's text alone (and the slave's
        // rename changes its own the same way)
        if o.generated != n.generated && !renames {
            d.unsupported.push(format!(
                "the generation expression of column \"{}\" changed",
                n.name
            ));
        }
        if !same_type(o, n) {
            d.before.push(Step::AlterType(n.clone()));
        }
        if o.default != n.default && n.identity.is_none() && n.generated.is_none() {
            d.before.push(Step::SetDefault(n.clone()));
        }
        if o.not_null && !n.not_null {
            d.before.push(Step::DropNotNull(n.name.clone()));
        }
        if o.comment != n.comment {
            d.before.push(Step::CommentColumn(n.clone()));
        }
    }
    if old.comment != new.comment {
        d.before.push(Step::CommentTable(new.comment.clone()));
    }
    for p in &old.partitions {
        if !new.partitions.iter().any(|q| rel(q) == rel(p)) {
            d.before.push(Step::DetachPartition(rel(p)));
        }
    }
    for p in &new.partitions {
        match old.partitions.iter().find(|q| rel(q) == rel(p)) {
            None => d.before.push(Step::AddPartition(p.clone())),
            Some(q) => dropped_objects(q, p, &mut d.before),
        }
    }
    d
}

/// Does adding column `c` give existing rows a value the slave cannot compute the same way (a
/// default that is not a constant, evaluated once on the master)?
pub fn added_with_computed_default(old: &TableDef, new: &TableDef) -> Vec<String> {
    new.columns
        .iter()
        .filter(|n| by_attnum(old, n.attnum).is_none())
        .filter(|n| {
            n.default
                .as_deref()
                .is_some_and(|e| !crate::schema::is_constant(e))
        })
        .map(|n| n.name.clone())
        .collect()
}
