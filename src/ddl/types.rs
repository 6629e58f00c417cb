//! Types a replicated table uses change on the master without touching the table: `ALTER TYPE
//! … ADD VALUE / RENAME VALUE / RENAME TO / SET SCHEMA` of an enum, `ALTER DOMAIN` (default,
//! NOT NULL, constraints, renames). The DDL guards record every replicated table that uses the
//! type (directly, in an array, a domain, a composite or a range) like any other schema change,
//! so the type's definition before and after travels in the stream; here, the difference as
//! steps (pure), and the slave's statements for them.
//!
//! Enum labels are never removed or reordered by PostgreSQL, so a label keeps its place: one
//! list compared with the next is renames (same length) or additions (the old list a
//! subsequence of the new). A label added on the slave cannot be used by the transaction that
//! added it ("unsafe use of new value"), so the slave adds labels in a transaction of its own
//! before the change set (`rserv_apply_types`, which replicate calls), where they are harmless:
//! the master has committed them.

use crate::error::fail;
use crate::schema::build::run;
use crate::schema::model::{Named, TypeDef};
use crate::schema::verify::{bad_definition, expression, risky_calls, trusted_type};
use crate::security::run_as_owner;
use crate::sql::{first, qualified, quote_ident, quote_literal};
use pgrx::pg_sys;
use pgrx::pg_sys::NodeTag as Tag;
use pgrx::prelude::*;

#[derive(Debug, Clone)]
pub enum TypeStep {
    /// a type renamed or moved to another schema (its definition otherwise the same)
    Rename {
        kind: String,
        from: Named,
        to: Named,
    },
    EnumRename {
        typ: Named,
        from: String,
        to: String,
    },
    /// a label added after `after` (or, first in the list, before `before`)
    EnumAdd {
        typ: Named,
        label: String,
        after: Option<String>,
        before: Option<String>,
    },
    DomainDefault {
        typ: Named,
        default: Option<String>,
    },
    DomainDropNotNull(Named),
    DomainDropConstraint {
        typ: Named,
        name: String,
    },
}

/// What changed in the types of a table's definition.
#[derive(Debug, Default)]
pub struct TypeDiff {
    pub steps: Vec<TypeStep>,
    /// domains whose NOT NULL or constraints must be made once the rows are the master's
    pub domains_after: Vec<TypeDef>,
    pub unsupported: Vec<String>,
}

pub fn named(t: &TypeDef) -> Named {
    Named {
        schema: t.schema.clone(),
        name: t.name.clone(),
    }
}

fn shown(t: &TypeDef) -> String {
    crate::sql::qualified(&t.schema, &t.name)
}

/// The same type under another name: everything but the name (and comment) equal.
fn same_but_name(a: &TypeDef, b: &TypeDef) -> bool {
    let mut b = b.clone();
    b.schema = a.schema.clone();
    b.name = a.name.clone();
    b.comment = a.comment.clone();
    b.owner = a.owner.clone();
    b.owner_super = a.owner_super;
    *a == b
}

/// The steps from the labels `old` to `new` of enum `typ`.
fn enum_steps(t: &TypeDef, old: &[String], new: &[String], d: &mut TypeDiff) {
    let typ = named(t);
    if old.len() == new.len() {
        let renames: Vec<(&String, &String)> =
            old.iter().zip(new).filter(|(a, b)| a != b).collect();
        // renames one after another must not meet a label still to be renamed
        if renames.iter().any(|(_, to)| old.contains(to)) {
            d.unsupported.push(format!(
                "labels of enum {} were exchanged by renames",
                shown(t)
            ));
            return;
        }
        for (from, to) in renames {
            d.steps.push(TypeStep::EnumRename {
                typ: typ.clone(),
                from: from.clone(),
                to: to.clone(),
            });
        }
        return;
    }
    // additions: the old labels in order within the new ones
    let mut rest = old.iter().peekable();
    let mut added = Vec::new();
    for (i, label) in new.iter().enumerate() {
        if rest.peek() == Some(&label) {
            rest.next();
        } else {
            added.push(i);
        }
    }
    if rest.peek().is_some() || new.len() < old.len() {
        d.unsupported.push(format!(
            "labels of enum {} were renamed and added at once",
            shown(t)
        ));
        return;
    }
    for i in added {
        d.steps.push(TypeStep::EnumAdd {
            typ: typ.clone(),
            label: new[i].clone(),
            after: i.checked_sub(1).map(|p| new[p].clone()),
            before: new.get(i + 1).filter(|_| i == 0).cloned(),
        });
    }
}

fn domain_steps(o: &TypeDef, n: &TypeDef, d: &mut TypeDiff) {
    let typ = named(n);
    if o.base != n.base || o.typmod != n.typmod || o.collation != n.collation {
        d.unsupported
            .push(format!("the base type of domain {} changed", shown(n)));
        return;
    }
    if o.default != n.default {
        d.steps.push(TypeStep::DomainDefault {
            typ: typ.clone(),
            default: n.default.clone(),
        });
    }
    if o.not_null && !n.not_null {
        d.steps.push(TypeStep::DomainDropNotNull(typ.clone()));
    }
    let (oc, nc) = (
        o.constraints.clone().unwrap_or_default(),
        n.constraints.clone().unwrap_or_default(),
    );
    for c in oc.iter().filter(|c| !nc.contains(c)) {
        d.steps.push(TypeStep::DomainDropConstraint {
            typ: typ.clone(),
            name: c.name.clone(),
        });
    }
    if nc.iter().any(|c| !oc.contains(c)) || (n.not_null && !o.not_null) {
        d.domains_after.push(n.clone());
    }
}

/// The steps from the types `old` to `new` (both from the master's definitions of one table).
pub fn diff_types(old: &[TypeDef], new: &[TypeDef]) -> TypeDiff {
    let mut d = TypeDiff::default();
    let find = |list: &[TypeDef], t: &TypeDef| {
        list.iter()
            .find(|x| x.schema == t.schema && x.name == t.name)
            .cloned()
    };
    for o in old {
        let Some(n) = find(new, o) else {
            // gone from the table's types: renamed or moved, when a type of the same definition
            // came under another name; otherwise no longer used
            let came: Vec<&TypeDef> = new
                .iter()
                .filter(|n| find(old, n).is_none() && same_but_name(o, n))
                .collect();
            if let [n] = came.as_slice() {
                d.steps.push(TypeStep::Rename {
                    kind: o.kind.clone(),
                    from: named(o),
                    to: named(n),
                });
            }
            continue;
        };
        if o.kind != n.kind {
            d.unsupported
                .push(format!("type {} was made anew as another kind", shown(&n)));
            continue;
        }
        match o.kind.as_str() {
            "e" => enum_steps(
                &n,
                &o.labels.clone().unwrap_or_default(),
                &n.labels.clone().unwrap_or_default(),
                &mut d,
            ),
            "d" => domain_steps(o, &n, &mut d),
            "c" if o.attributes != n.attributes => d.unsupported.push(format!(
                "the attributes of composite type {} changed",
                shown(&n)
            )),
            "r" if o.subtype != n.subtype => d
                .unsupported
                .push(format!("the subtype of range type {} changed", shown(&n))),
            _ => {}
        }
    }
    d
}

// ---------------------------------------------------------------------------------------------
// On the slave
// ---------------------------------------------------------------------------------------------

/// This slave's type `n`: its oid and owner, when it has it.
fn slave_type(n: &Named) -> Option<(pg_sys::Oid, pg_sys::Oid)> {
    let oid = crate::schema::build::type_oid(n)?;
    Some((oid, type_owner(oid)?))
}

fn type_owner(oid: pg_sys::Oid) -> Option<pg_sys::Oid> {
    first::<pg_sys::Oid>(
        "SELECT typowner FROM pg_catalog.pg_type WHERE oid = $1",
        &[oid.into()],
        "reading a type's owner",
    )
}

/// An expression rserv has just put on this slave's type `oid` (a domain's DEFAULT or CHECK)
/// must call only functions its owner trusts (a superuser's or the type owner's own), not
/// volatile ones: the type's owner (a superuser, perhaps, when the table owner's DDL reached
/// a superuser's domain) validates it, and whoever inserts evaluates it. Checked before
/// anything of it runs; an error here rolls the change set back.
fn check_type_calls(table: &str, name: &str, oid: pg_sys::Oid) {
    let Some(owner) = type_owner(oid) else {
        return;
    };
    let risky = risky_calls(pg_sys::InvalidOid, &[oid], owner);
    if !risky.is_empty() {
        bad_definition(
            table,
            format!(
                "the default or constraints of domain {name} call functions with side effects, or functions its owner {} does not own: {}",
                crate::security::role_name(owner),
                risky.join(", ")
            ),
        );
    }
}

/// A DDL section's table on this slave, as its type steps see it: its name (for messages), oid
/// and owner, and the master's types after the section (with their owners there).
pub struct Scope<'a> {
    pub table: &'a str,
    pub reloid: pg_sys::Oid,
    pub owner: pg_sys::Oid,
    pub master: &'a [TypeDef],
}

impl Scope<'_> {
    /// Does the section's table use this slave's type `n` (in a column, or inside an array,
    /// domain, composite or range type of one)? Only those types are the section's to change:
    /// a payload names its types, and no other type of the slave follows it.
    pub fn uses(&self, n: &Named) -> bool {
        let Some((oid, _)) = slave_type(n) else {
            return false;
        };
        first::<bool>(
            "WITH RECURSIVE used(oid) AS ( \
               SELECT a.atttypid FROM pg_catalog.pg_attribute a \
                WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
               UNION SELECT x.nxt FROM used u JOIN pg_catalog.pg_type t ON t.oid = u.oid \
                CROSS JOIN LATERAL ( \
                   SELECT t.typelem WHERE t.typelem <> 0 AND t.typcategory = 'A' \
                   UNION ALL SELECT t.typbasetype WHERE t.typtype = 'd' \
                   UNION ALL SELECT ca.atttypid FROM pg_catalog.pg_attribute ca \
                    WHERE t.typtype = 'c' AND ca.attrelid = t.typrelid AND ca.attnum > 0 \
                      AND NOT ca.attisdropped \
                   UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r \
                    WHERE t.typtype = 'r' AND r.rngtypid = t.oid) AS x(nxt)) \
             SELECT EXISTS (SELECT 1 FROM used WHERE oid = $2)",
            &[self.reloid.into(), oid.into()],
            "looking for the types a table uses",
        )
        .unwrap_or(false)
    }

    /// Run `f` as the owner of this slave's type `here` (who alone may alter it; the master
    /// calls it `master`), which must be a superuser's or the table owner's, like every type a
    /// received table uses. A type of another role than the table's owner (a superuser's: a
    /// DBA's type, as a restore leaves it, shared with other users' tables) follows only a
    /// change its owner could have made: the master's owner of the type is a superuser, or the
    /// same role; a table owner's DDL on her own type on the master does not reach it.
    fn as_type_owner(&self, here: &Named, master: &Named, f: impl FnOnce(&str)) {
        let Some((oid, owner)) = slave_type(here) else {
            return;
        };
        let shown = crate::catalog::format_type(oid, -1);
        if !trusted_type(oid, self.owner) {
            bad_definition(
                self.table,
                format!("it uses type {shown} of this slave, which belongs to another user"),
            );
        }
        if owner != self.owner {
            self.require_owners_match(master, &shown, owner);
        }
        let name = qualified(&here.schema, &here.name);
        run_as_owner(owner, &[], || f(&name));
    }

    /// This slave's type `shown`, owned by `owner` (not the table's owner), follows the master's
    /// change of type `master` only when a superuser or the same role owns that on the master.
    fn require_owners_match(&self, master: &Named, shown: &str, owner: pg_sys::Oid) {
        let here = crate::security::role_name(owner);
        let def = self
            .master
            .iter()
            .find(|t| t.schema == master.schema && t.name == master.name);
        let by = def.and_then(|t| t.owner.clone());
        if def.is_some_and(|t| t.owner_super == Some(true) || by.as_deref() == Some(here.as_str()))
        {
            return;
        }
        let table_owner = crate::security::role_name(self.owner);
        let what = match def.map(|t| t.kind.as_str()) {
            Some("d") => "DOMAIN",
            _ => "TYPE",
        };
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "rserv: the master changed type {} of table {} (its owner there, {}, is not a superuser), but this slave's {shown} belongs to {here}: a table owner's change does not reach another role's type",
                qualified(&master.schema, &master.name),
                self.table,
                by.as_deref().unwrap_or("unknown"),
            ),
            format!(
                "to have this slave's {shown} follow the master's, give it to the table's owner: ALTER {what} {shown} OWNER TO {}; (or on the master, to a superuser); then replicate again (nothing of this change set was applied)",
                quote_ident(&table_owner)
            ),
        );
    }
}

fn has_label(typ: &str, label: &str) -> bool {
    first::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_enum \
         WHERE enumtypid = pg_catalog.to_regtype($1)::oid AND enumlabel = $2)",
        &[typ.into(), label.into()],
        "reading an enum's labels",
    )
    .unwrap_or(false)
}

/// `ALTER TYPE … ADD VALUE` of step `EnumAdd` to this slave's enum `here` (the step names the
/// master's); false when its neighbour is missing here.
pub fn add_label(sc: &Scope, here: &Named, step: &TypeStep) -> bool {
    let TypeStep::EnumAdd {
        typ,
        label,
        after,
        before,
    } = step
    else {
        return false;
    };
    let mut added = false;
    sc.as_type_owner(here, typ, |name| {
        if has_label(name, label) {
            return;
        }
        let place = match (after, before) {
            (Some(a), _) if has_label(name, a) => format!(" AFTER {}", quote_literal(a)),
            (None, Some(b)) if has_label(name, b) => format!(" BEFORE {}", quote_literal(b)),
            (None, None) => String::new(),
            _ => return,
        };
        run(
            sc.table,
            &format!(
                "ALTER TYPE {name} ADD VALUE IF NOT EXISTS {}{place}",
                quote_literal(label)
            ),
            Tag::T_AlterEnumStmt,
            None,
        );
        added = true;
    });
    added
}

/// Run one type step on this slave as the type's owner; what is done already is left alone
/// (a type shared by several tables comes with each of their sections), and so is a type the
/// section's table does not use here.
pub fn apply_type_step(sc: &Scope, step: &TypeStep) {
    let table = sc.table;
    let typ = match step {
        TypeStep::Rename { from, to, .. } => {
            if slave_type(to).is_some() {
                return; // renamed already (or made here under the new name)
            }
            from
        }
        TypeStep::EnumRename { typ, .. }
        | TypeStep::EnumAdd { typ, .. }
        | TypeStep::DomainDefault { typ, .. }
        | TypeStep::DomainDropNotNull(typ)
        | TypeStep::DomainDropConstraint { typ, .. } => typ,
    };
    if !sc.uses(typ) {
        return;
    }
    match step {
        TypeStep::Rename { kind, from, to } => {
            let what = if kind == "d" { "DOMAIN" } else { "TYPE" };
            sc.as_type_owner(from, to, |name| {
                let mut current = name.to_string();
                if from.schema != to.schema {
                    // (as the type's owner, who must be able to create in it)
                    crate::schema::build::ensure_schema(table, &to.schema);
                    run(
                        table,
                        &format!("ALTER {what} {name} SET SCHEMA {}", quote_ident(&to.schema)),
                        Tag::T_AlterObjectSchemaStmt,
                        None,
                    );
                    current = qualified(&to.schema, &from.name);
                }
                if from.name != to.name {
                    run(
                        table,
                        &format!("ALTER {what} {current} RENAME TO {}", quote_ident(&to.name)),
                        Tag::T_RenameStmt,
                        None,
                    );
                }
            });
        }
        TypeStep::EnumRename { typ, from, to } => sc.as_type_owner(typ, typ, |name| {
            if has_label(name, from) && !has_label(name, to) {
                run(
                    table,
                    &format!(
                        "ALTER TYPE {name} RENAME VALUE {} TO {}",
                        quote_literal(from),
                        quote_literal(to)
                    ),
                    Tag::T_AlterEnumStmt,
                    None,
                );
            }
        }),
        TypeStep::EnumAdd { typ, label, .. } => {
            if !add_label(sc, typ, step) {
                let name = qualified(&typ.schema, &typ.name);
                if slave_type(typ).is_some() && !has_label(&name, label) {
                    fail(
                        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!(
                            "rserv: the master added label {} to enum {name}, but this slave's {name} lacks the label next to it",
                            quote_literal(label)
                        ),
                        format!("make this slave's {name} have the master's labels, then replicate again (nothing of this change set was applied)"),
                    );
                }
            }
        }
        TypeStep::DomainDefault { typ, default } => sc.as_type_owner(typ, typ, |name| {
            let sql = match default {
                Some(d) => format!(
                    "ALTER DOMAIN {name} SET DEFAULT {}",
                    expression(table, &format!("the default of domain {name}"), d)
                ),
                None => format!("ALTER DOMAIN {name} DROP DEFAULT"),
            };
            run(table, &sql, Tag::T_AlterDomainStmt, None);
            if let Some((oid, _)) = default.as_ref().and(slave_type(typ)) {
                check_type_calls(table, name, oid);
            }
        }),
        TypeStep::DomainDropNotNull(typ) => sc.as_type_owner(typ, typ, |name| {
            run(
                table,
                &format!("ALTER DOMAIN {name} DROP NOT NULL"),
                Tag::T_AlterDomainStmt,
                None,
            )
        }),
        TypeStep::DomainDropConstraint { typ, name: c } => sc.as_type_owner(typ, typ, |name| {
            run(
                table,
                &format!(
                    "ALTER DOMAIN {name} DROP CONSTRAINT IF EXISTS {}",
                    quote_ident(c)
                ),
                Tag::T_AlterDomainStmt,
                None,
            )
        }),
    }
}

/// Once the rows are the master's: domain `def` gets the NOT NULL and constraints it has on the
/// master. A constraint is added NOT VALID first (nothing of it runs), the functions it calls
/// are checked, and only then is it validated on the rows. Only a domain the section's table
/// uses here.
pub fn finish_domain(sc: &Scope, def: &TypeDef) {
    let table = sc.table;
    let typ = named(def);
    let Some((oid, _)) = slave_type(&typ) else {
        return;
    };
    if !sc.uses(&typ) {
        return;
    }
    sc.as_type_owner(&typ, &typ, |name| {
        for c in def.constraints.iter().flatten() {
            let here = first::<String>(
                "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint \
                 WHERE contypid = $1 AND conname = $2",
                &[oid.into(), c.name.clone().into()],
                "reading a domain constraint",
            );
            match here {
                Some(d) if d == c.definition => continue,
                Some(_) => run(
                    table,
                    &format!(
                        "ALTER DOMAIN {name} DROP CONSTRAINT {}",
                        quote_ident(&c.name)
                    ),
                    Tag::T_AlterDomainStmt,
                    None,
                ),
                None => {}
            }
            let valid = !c.definition.ends_with(" NOT VALID");
            let clause = if valid {
                format!("{} NOT VALID", c.definition)
            } else {
                c.definition.clone()
            };
            run(
                table,
                &format!(
                    "ALTER DOMAIN {name} ADD CONSTRAINT {} {clause}",
                    quote_ident(&c.name)
                ),
                Tag::T_AlterDomainStmt,
                None,
            );
            // (as its owner validates it: the functions it calls must be the type owner's)
            check_type_calls(table, name, oid);
            if valid {
                run(
                    table,
                    &format!(
                        "ALTER DOMAIN {name} VALIDATE CONSTRAINT {}",
                        quote_ident(&c.name)
                    ),
                    Tag::T_AlterDomainStmt,
                    None,
                );
            }
        }
        let nullable = first::<bool>(
            "SELECT NOT typnotnull FROM pg_catalog.pg_type WHERE oid = $1",
            &[oid.into()],
            "reading a domain",
        )
        .unwrap_or(false);
        if def.not_null && nullable {
            run(
                table,
                &format!("ALTER DOMAIN {name} SET NOT NULL"),
                Tag::T_AlterDomainStmt,
                None,
            );
        }
    });
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::*;

    fn enum_def(labels: &[&str]) -> TypeDef {
        TypeDef {
            schema: "public".into(),
            name: "mood".into(),
            kind: "e".into(),
            labels: Some(labels.iter().map(|l| l.to_string()).collect()),
            base: None,
            typmod: -1,
            not_null: false,
            default: None,
            collation: None,
            constraints: None,
            attributes: None,
            subtype: None,
            comment: None,
            owner: None,
            owner_super: None,
        }
    }

    #[pg_test]
    fn enum_labels_added_keep_their_place() {
        let d = diff_types(
            &[enum_def(&["a", "b"])],
            &[enum_def(&["x", "a", "y", "b", "z"])],
        );
        let adds: Vec<String> = d
            .steps
            .iter()
            .map(|s| match s {
                TypeStep::EnumAdd {
                    label,
                    after,
                    before,
                    ..
                } => format!("{label} {after:?} {before:?}"),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            adds,
            [
                "x None Some(\"a\")",
                "y Some(\"a\") None",
                "z Some(\"b\") None"
            ]
        );
        assert!(d.unsupported.is_empty());
    }

    #[pg_test]
    fn enum_label_renamed_or_ambiguous() {
        let d = diff_types(&[enum_def(&["sad", "ok"])], &[enum_def(&["unhappy", "ok"])]);
        assert!(
            matches!(&d.steps[..], [TypeStep::EnumRename { from, to, .. }] if from == "sad" && to == "unhappy")
        );
        let d = diff_types(&[enum_def(&["a", "b"])], &[enum_def(&["b", "a"])]);
        assert_eq!(d.unsupported.len(), 1);
        let d = diff_types(&[enum_def(&["a", "b"])], &[enum_def(&["c", "b", "d"])]);
        assert_eq!(d.unsupported.len(), 1);
    }

    #[pg_test]
    fn a_type_renamed_is_found_by_its_definition() {
        let mut n = enum_def(&["a"]);
        n.name = "feeling".into();
        let d = diff_types(&[enum_def(&["a"])], &[n]);
        assert!(matches!(&d.steps[..], [TypeStep::Rename { to, .. }] if to.name == "feeling"));
    }
}
