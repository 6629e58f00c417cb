//! Slave: a DDL section of a change set (a master table's definition before and after) is
//! followed step by step (see `diff.rs`), as the table's owner, with statements the slave
//! builds itself from the definitions' data (names quoted here, clause texts checked as in
//! `--create-tables`). The steps that reshape the table run at the section, before the table's
//! rows; those that check rows (NOT NULL, constraints, indexes) run in `rserv_apply_end()`, once
//! the rows are the master's as of the change set. A change set that ends without them does
//! not commit.

use super::diff::{diff, Step};
use super::types::TypeStep;
use crate::catalog::{ext_schema, table_info};
use crate::error::{fail, SpiOrFail};
use crate::schema::build::{
    self, column_sql, ensure_schema, ensure_types, relation, run, type_sql,
};
use crate::schema::model::{Named, Rel, TableDef, TypeDef};
use crate::schema::parse_definition;
use crate::schema::post_data::{
    add_constraint, make_foreign_key, make_index, make_policy, make_trigger, set_row_security,
};
use crate::schema::settings;
use crate::security::{internal_ddl, run_as_owner};
use crate::sql::{first, qualified, quote_ident, quote_literal};
use pgrx::pg_sys;
use pgrx::pg_sys::AlterTableType as At;
use pgrx::pg_sys::NodeTag as Tag;
use pgrx::prelude::*;
use std::cell::RefCell;

/// A table whose DDL left work for the end of the apply: its owner and its latest definition.
struct Deferred {
    owner: pg_sys::Oid,
    reloid: pg_sys::Oid,
    def: TableDef,
    /// the master turned row-level security on or off (otherwise the slave's own setting stays)
    row_security_changed: bool,
    /// domains the master gave NOT NULL or constraints
    domains: Vec<TypeDef>,
    /// the master's definition before the first DDL of this change set (what REPLICA
    /// IDENTITY and CLUSTER ON changed from)
    from: TableDef,
    /// a table `--create-tables` made whose post-data (indexes, foreign keys, triggers,
    /// policies) `rserv_slave_finish_tables` makes later: only its NOT NULLs and its other
    /// constraints are made now
    post_data_pending: bool,
}

thread_local! {
    static DEFERRED: RefCell<Vec<Deferred>> = const { RefCell::new(Vec::new()) };
    /// Tables of this change set brought to their definition at its snapshot from the one they
    /// were built from: their recorded history in it is passed over.
    static TARGETED: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
}

/// The DDL section's payload, as the master's prepare wrote it.
#[derive(serde::Deserialize)]
struct Payload {
    old: serde_json::Value,
    new: serde_json::Value,
    recopy: bool,
    /// the table's definition at the change set's snapshot, sent with its copy (`old` = `new`)
    #[serde(default)]
    target: bool,
}

fn bad_section(what: impl std::fmt::Display) -> ! {
    fail(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("rserv: a DDL section of this change set is not usable: {what}"),
        "",
    )
}

/// The slave table registered under `name` (schema-qualified, quoted), if any.
fn registered(name: &str) -> Option<pg_sys::Oid> {
    let s = ext_schema();
    first::<pg_sys::Oid>(
        &format!(
            "SELECT t.reloid FROM {s}._rserv_slave_tables_ t \
             WHERE t.reloid = pg_catalog.to_regclass($1)::oid"
        ),
        &[name.into()],
        "looking up a slave table",
    )
}

/// The master's definition a table of this slave was built from (`--create-tables`) and has
/// followed since, while its post-data is still to come.
fn built_from(reloid: pg_sys::Oid) -> Option<serde_json::Value> {
    let s = ext_schema();
    first::<pgrx::JsonB>(
        &format!("SELECT definition FROM {s}._rserv_slave_pending_ WHERE reloid = $1"),
        &[reloid.into()],
        "reading the table's definition",
    )
    .map(|j| j.0)
}

/// A DDL section as this slave follows it: the slave table, its current name, the master's
/// definitions it goes from and to, whether the table comes whole.
struct Section {
    reloid: pg_sys::Oid,
    name: String,
    old: TableDef,
    new: TableDef,
    recopy: bool,
}

/// The section for table `schema`.`table` (the name the master addressed it by) with
/// `payload`; None when this slave does not receive the table, or brought it to its
/// definition at this change set's snapshot already (`note_target`: remember that it does now).
fn resolve_section(payload: &str, schema: &str, table: &str, note_target: bool) -> Option<Section> {
    let p: Payload = serde_json::from_str(payload).unwrap_or_else(|e| bad_section(e));
    let (mut old, new) = (parse_definition(p.old), parse_definition(p.new));
    let mut recopy = p.recopy;
    let found = if p.target {
        // a table copied whole: one built here from an earlier definition of the master's
        // follows from that one (matched by the master's attribute numbers), whatever history
        // the change set carries for it; any other has the shape of this slave's last change
        // set, and follows that history
        let name = qualified(schema, table);
        let reloid = registered(&name)?;
        old = parse_definition(built_from(reloid)?);
        recopy = true;
        if note_target {
            TARGETED.with(|t| t.borrow_mut().push(reloid));
        }
        Some((reloid, name))
    } else {
        let old_name = qualified(&old.schema, &old.table);
        // a table created here after the change (from the master's definition then) has the
        // new name already; every step below also leaves what is already done alone
        registered(&old_name)
            .map(|r| (r, old_name.clone()))
            .or_else(|| {
                let new_name = qualified(&new.schema, &new.table);
                registered(&new_name).map(|r| (r, new_name))
            })
    };
    let (reloid, name) = found?;
    if !p.target && TARGETED.with(|t| t.borrow().contains(&reloid)) {
        return None;
    }
    Some(Section {
        reloid,
        name,
        old,
        new,
        recopy,
    })
}

/// Follow one DDL section (`payload`: JSON with the definitions before and after) of the
/// section for table `schema`.`table` (the name the master addressed it by).
pub fn apply_section(payload: &str, schema: &str, table: &str) {
    let Some(Section {
        reloid,
        name: old_name,
        old,
        new,
        recopy,
    }) = resolve_section(payload, schema, table, true)
    else {
        return; // not received here, or brought to its latest definition already
    };
    let owner = table_info(reloid).owner;
    let steps = diff(&old, &new);
    if !steps.unsupported.is_empty() {
        bad_section(steps.unsupported.join("; "));
    }
    let s = ext_schema();
    if recopy {
        // the change set carries the table whole: its old rows need not (and may not) be
        // converted by the steps below. Before the mark: the owner's triggers it may fire must
        // not run at the depth of rserv's own DDL (internal_ddl.rs)
        run_as_owner(owner, &crate::apply::apply_settings(), || {
            Spi::run(&format!("DELETE FROM {old_name}")).or_fail("emptying the table")
        });
    }
    let _internal = internal_ddl();
    let fresh = recopy || crate::slave_registry::needs_copy(reloid);
    // the types first (each as its owner): the table's steps may use them renamed
    let scope = super::types::Scope {
        table: &old_name,
        reloid,
        owner,
        master: &new.types,
    };
    for step in &steps.before {
        if let Step::Type(t) = step {
            super::types::apply_type_step(&scope, t);
        }
    }
    let types = run_as_owner(owner, &[], || {
        ensure_schema(&old_name, &new.schema);
        let types = ensure_types(&old_name, &new.types);
        // sequences a column added now uses (serial, identity) exist before the column
        crate::schema::build::ensure_sequences(&old_name, &new.sequences);
        let mut current = old_name.clone();
        for step in &steps.before {
            current = before_step(&current, &new, step, recopy, fresh);
        }
        // storage parameters and column settings the master changed (they check no row)
        settings::relation(Some(&old), &new);
        for p in &new.partitions {
            if let Some(o) = same_partition(&old, p) {
                settings::relation(Some(o), p);
            }
        }
        types
    });
    // rserv's own DDL is not reconciled by the DDL guard: partitions made or detached here are
    // protected (and, on a cascading slave, captured) or released now
    if steps
        .before
        .iter()
        .any(|s| matches!(s, Step::AddPartition(_) | Step::DetachPartition(_)))
    {
        crate::partitions::reconcile_all();
    }
    let table = qualified(&new.schema, &new.table);
    build::check_calls(&table, reloid, &types);
    // the registration follows: name, key columns renamed (matched by attribute number)
    let key = first::<Vec<String>>(
        &format!("SELECT key::text[] FROM {s}._rserv_slave_tables_ WHERE reloid = $1"),
        &[reloid.into()],
        "reading the table's key",
    )
    .unwrap_or_default()
    .into_iter()
    .map(|k| {
        old.columns
            .iter()
            .find(|c| c.name == k)
            .and_then(|c| new.columns.iter().find(|n| n.attnum == c.attnum))
            .map(|n| n.name.clone())
            .unwrap_or(k)
    })
    .collect::<Vec<_>>();
    Spi::run_with_args(
        &format!(
            "UPDATE {s}._rserv_slave_tables_ SET tname = $2, key = $3, \
                    needs_copy = needs_copy OR $4 WHERE reloid = $1"
        ),
        &[
            reloid.into(),
            table.clone().into(),
            key.into(),
            recopy.into(),
        ],
    )
    .or_fail("updating the slave table's registration");
    // a table --create-tables made and whose post-data is still to come gets the new shape's
    Spi::run_with_args(
        &format!("UPDATE {s}._rserv_slave_pending_ SET definition = $2 WHERE reloid = $1"),
        &[
            reloid.into(),
            pgrx::JsonB(serde_json::to_value(&new).unwrap_or_default()).into(),
        ],
    )
    .or_fail("updating the table's pending post-data");
    crate::apply::forget_resolved();
    let post_data_pending = first::<bool>(
        &format!("SELECT EXISTS (SELECT 1 FROM {s}._rserv_slave_pending_ WHERE reloid = $1)"),
        &[reloid.into()],
        "looking for pending post-data",
    )
    .unwrap_or(false);
    // what checks rows is made to match the table's last definition in this change set
    let mut row_security_changed = old.row_security != new.row_security;
    let mut domains = steps.domains_after;
    let mut from = old;
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        d.retain(|x| {
            if x.reloid == reloid {
                row_security_changed |= x.row_security_changed;
                domains.extend(x.domains.iter().cloned());
                from = x.from.clone();
            }
            x.reloid != reloid
        });
        d.push(Deferred {
            owner,
            reloid,
            def: new,
            row_security_changed,
            domains,
            from,
            post_data_pending,
        })
    });
}

/// Run one reshaping step on table `table` (its current name); returns its name afterwards.
fn before_step(table: &str, new: &TableDef, step: &Step, recopy: bool, fresh: bool) -> String {
    let alter = |sql: String, subtype: At::Type| {
        run(table, &sql, Tag::T_AlterTableStmt, Some(subtype));
    };
    let column_type = |c: &str| {
        first::<String>(
            "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) || coalesce(' ' || co.collname, '') \
             FROM pg_catalog.pg_attribute a \
             LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation \
                  AND a.attcollation <> (SELECT t.typcollation FROM pg_catalog.pg_type t WHERE t.oid = a.atttypid) \
             WHERE a.attrelid = pg_catalog.to_regclass($1)::oid AND a.attname = $2 AND NOT a.attisdropped",
            &[table.into(), c.into()],
            "reading a column",
        )
    };
    // a partition's columns are its partitioned table's: their changes are made there (as on
    // the master), once, for every partition (the other partitions' steps then find them done)
    if matches!(
        step,
        Step::AddColumn(_)
            | Step::DropColumn(_)
            | Step::RenameColumn { .. }
            | Step::AlterType(_)
            | Step::DropNotNull(_)
    ) {
        let root = first::<String>(
            "SELECT pg_catalog.pg_partition_root(c.oid)::pg_catalog.regclass::pg_catalog.text              FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)::oid AND c.relispartition",
            &[table.into()],
            "finding the partition's root",
        );
        if let Some(root) = root {
            // (a column the root has already was added by a sibling partition's step)
            before_step(&root, new, step, recopy, true);
            return table.to_string();
        }
    }
    // a step on a column this table lacks was done already (the table was created here from a
    // later definition) or is for a column dropped since: nothing to do
    let column = match step {
        Step::DropColumn(c) | Step::DropNotNull(c) => Some(c.as_str()),
        Step::RenameColumn { from, .. } => Some(from.as_str()),
        Step::AlterType(c) | Step::SetDefault(c) | Step::CommentColumn(c) => Some(c.name.as_str()),
        _ => None,
    };
    if column.is_some_and(|c| column_type(c).is_none()) {
        return table.to_string();
    }
    match step {
        Step::RenameTable { to } => {
            let here = first::<Vec<String>>(
                "SELECT ARRAY[n.nspname::text, c.relname::text] FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = pg_catalog.to_regclass($1)::oid",
                &[table.into()],
                "reading the table's name",
            );
            let Some([schema, name]) = here.as_deref() else {
                return table.to_string();
            };
            let mut current = table.to_string();
            if *schema != to.schema {
                run(
                    table,
                    &format!("ALTER TABLE {table} SET SCHEMA {}", quote_ident(&to.schema)),
                    Tag::T_AlterObjectSchemaStmt,
                    None,
                );
                current = qualified(&to.schema, name);
            }
            let target = qualified(&to.schema, &to.table);
            if current != target {
                run(
                    &current,
                    &format!("ALTER TABLE {current} RENAME TO {}", quote_ident(&to.table)),
                    Tag::T_RenameStmt,
                    None,
                );
            }
            return target;
        }
        Step::DropColumn(c) => alter(
            format!(
                "ALTER TABLE {table} DROP COLUMN IF EXISTS {}",
                quote_ident(c)
            ),
            At::AT_DropColumn,
        ),
        Step::RenameColumn { from, to } => run(
            table,
            &format!(
                "ALTER TABLE {table} RENAME COLUMN {} TO {}",
                quote_ident(from),
                quote_ident(to)
            ),
            Tag::T_RenameStmt,
            None,
        ),
        Step::AlterType(c) => {
            let ty = type_sql(table, &c.typ, c.typmod);
            let wanted = match &c.collation {
                Some(n) => format!("{ty} {}", n.name),
                None => ty.clone(),
            };
            if column_type(&c.name).as_deref() == Some(wanted.as_str()) {
                return table.to_string(); // of that type already
            }
            let collate = c
                .collation
                .as_ref()
                .map(|n| format!(" COLLATE {}", qualified(&n.schema, &n.name)))
                .unwrap_or_default();
            // an emptied table (its rows come whole) converts nothing: any type will do
            let using = if recopy {
                format!(" USING NULL::{ty}")
            } else {
                String::new()
            };
            alter(
                format!(
                    "ALTER TABLE {table} ALTER COLUMN {} TYPE {ty}{collate}{using}",
                    quote_ident(&c.name)
                ),
                At::AT_AlterColumnType,
            )
        }
        Step::SetDefault(c) => {
            let sql = match &c.default {
                Some(d) => format!(
                    "ALTER TABLE {table} ALTER COLUMN {} SET DEFAULT {}",
                    quote_ident(&c.name),
                    crate::schema::verify::expression(
                        table,
                        &format!("the default of column {}", quote_ident(&c.name)),
                        d
                    )
                ),
                None => format!(
                    "ALTER TABLE {table} ALTER COLUMN {} DROP DEFAULT",
                    quote_ident(&c.name)
                ),
            };
            alter(sql, At::AT_ColumnDefault)
        }
        Step::DropNotNull(c) => alter(
            format!(
                "ALTER TABLE {table} ALTER COLUMN {} DROP NOT NULL",
                quote_ident(c)
            ),
            At::AT_DropNotNull,
        ),
        Step::AddColumn(c) => {
            if column_type(&c.name).is_some() {
                if fresh {
                    // made here from a later definition, and copied whole with this change set
                    return table.to_string();
                }
                fail(
                    PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
                    format!(
                        "rserv: the master added column {} to table {table}, which this slave has already (a column of its own)",
                        quote_ident(&c.name)
                    ),
                    "rename or drop this slave's column, then replicate again (nothing of this change set was applied)",
                );
            }
            let mut c = c.clone();
            c.not_null = false; // set after the rows
            alter(
                format!(
                    "ALTER TABLE {table} ADD COLUMN {}",
                    column_sql(table, new, &c)
                ),
                At::AT_AddColumn,
            )
        }
        Step::CommentTable(text) => run(
            table,
            &format!("COMMENT ON TABLE {table} IS {}", comment(text)),
            Tag::T_CommentStmt,
            None,
        ),
        Step::CommentColumn(c) => run(
            table,
            &format!(
                "COMMENT ON COLUMN {table}.{} IS {}",
                quote_ident(&c.name),
                comment(&c.comment)
            ),
            Tag::T_CommentStmt,
            None,
        ),
        Step::DropObject { on, kind, name } => {
            let on_table = qualified(&on.schema, &on.table);
            let (sql, tag, sub) = match *kind {
                "index" => (
                    format!("DROP INDEX IF EXISTS {}", qualified(&on.schema, name)),
                    Tag::T_DropStmt,
                    None,
                ),
                "constraint" => (
                    format!(
                        "ALTER TABLE {on_table} DROP CONSTRAINT IF EXISTS {}",
                        quote_ident(name)
                    ),
                    Tag::T_AlterTableStmt,
                    Some(At::AT_DropConstraint),
                ),
                "trigger" => (
                    format!("DROP TRIGGER IF EXISTS {} ON {on_table}", quote_ident(name)),
                    Tag::T_DropStmt,
                    None,
                ),
                _ => (
                    format!("DROP POLICY IF EXISTS {} ON {on_table}", quote_ident(name)),
                    Tag::T_DropStmt,
                    None,
                ),
            };
            run(table, &sql, tag, sub)
        }
        Step::AddPartition(part) => add_partition(part),
        Step::DetachPartition(rel) => detach_partition(table, rel),
        Step::Type(_) => {} // made before the table's steps (see apply_section)
    }
    table.to_string()
}

fn comment(text: &Option<String>) -> String {
    text.as_deref()
        .map(quote_literal)
        .unwrap_or_else(|| "NULL".to_string())
}

/// A partition the master created or attached: made here as a partition of the same parent,
/// unless this slave has it attached already.
fn add_partition(part: &TableDef) {
    let name = qualified(&part.schema, &part.table);
    if let Some(oid) = relation(&part.schema, &part.table) {
        let attached = first::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits WHERE inhrelid = $1)",
            &[oid.into()],
            "looking up a partition",
        )
        .unwrap_or(false);
        if attached {
            return;
        }
        fail(
            PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
            format!("rserv: the master added partition {name}, but this slave has a table of that name"),
            format!("drop or rename this slave's {name}, then replicate again (nothing of this change set was applied)"),
        );
    }
    let (oid, types) = build::create_table(part);
    build::check_calls(&name, oid, &types);
}

/// A partition the master detached: detached here too (its rows have left the master's table,
/// and the change set's rows follow).
fn detach_partition(table: &str, rel: &Rel) {
    let name = qualified(&rel.schema, &rel.table);
    let parent = first::<String>(
        "SELECT i.inhparent::pg_catalog.regclass::text FROM pg_catalog.pg_inherits i \
         WHERE i.inhrelid = pg_catalog.to_regclass($1)::oid",
        &[name.clone().into()],
        "looking up a partition's parent",
    );
    if let Some(parent) = parent {
        run(
            table,
            &format!("ALTER TABLE {parent} DETACH PARTITION {name}"),
            Tag::T_AlterTableStmt,
            Some(At::AT_DetachPartition),
        );
    }
}

/// Make the indexes, constraints, triggers and policies of `def` (a table or one of its
/// partitions) those of the master's definition: kept when identical, made again when
/// different, made when missing.
fn objects(def: &TableDef, row_security_changed: bool) {
    let name = qualified(&def.schema, &def.table);
    let Some(reloid) = relation(&def.schema, &def.table) else {
        return;
    };
    for i in &def.indexes {
        let here = first::<String>(
            "SELECT pg_catalog.pg_get_indexdef(i.indexrelid) FROM pg_catalog.pg_index i \
             WHERE i.indrelid = $1 AND i.indexrelid = pg_catalog.to_regclass($2)::oid",
            &[reloid.into(), qualified(&def.schema, &i.name).into()],
            "reading an index",
        );
        match here {
            Some(d) if d == i.definition => continue,
            Some(_) => run(
                &name,
                &format!("DROP INDEX {}", qualified(&def.schema, &i.name)),
                Tag::T_DropStmt,
                None,
            ),
            None if relation(&def.schema, &i.name).is_some() => fail(
                PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
                format!(
                    "rserv: the master added index {} to table {name}, but this slave has another relation of that name",
                    qualified(&def.schema, &i.name)
                ),
                "rename or drop this slave's relation, then replicate again (nothing of this change set was applied)",
            ),
            None => {}
        }
        make_index(def, reloid, i);
    }
    constraints(def, reloid, true);
    for t in &def.triggers {
        let here = first::<String>(
            "SELECT pg_catalog.pg_get_triggerdef(oid) || ' ' || tgenabled::pg_catalog.text FROM pg_catalog.pg_trigger \
             WHERE tgrelid = $1 AND tgname = $2",
            &[reloid.into(), t.name.clone().into()],
            "reading a trigger",
        );
        match here {
            Some(d) if d == format!("{} {}", t.definition, t.enabled) => continue,
            Some(_) => run(
                &name,
                &format!("DROP TRIGGER {} ON {name}", quote_ident(&t.name)),
                Tag::T_DropStmt,
                None,
            ),
            None => {}
        }
        make_trigger(def, t);
    }
    for p in &def.policies {
        let exists = first::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_policy WHERE polrelid = $1 AND polname = $2)",
            &[reloid.into(), p.name.clone().into()],
            "reading a policy",
        )
        .unwrap_or(false);
        if exists {
            run(
                &name,
                &format!("DROP POLICY {} ON {name}", quote_ident(&p.name)),
                Tag::T_DropStmt,
                None,
            );
        }
        make_policy(def, p);
    }
    if row_security_changed {
        set_row_security(def);
    }
    build::check_calls(&name, reloid, &[]);
}

/// The constraints of `def` (of table `reloid`) made to match the definition: one that differs
/// is made again; foreign keys only when `foreign` (they are post-data).
fn constraints(def: &TableDef, reloid: pg_sys::Oid, foreign: bool) {
    let name = qualified(&def.schema, &def.table);
    let partition = def.partition_of.is_some();
    let s = ext_schema();
    let receives = |r: &Rel| crate::schema::receives(&s, r);
    for o in def
        .constraints
        .iter()
        .filter(|o| !(partition && o.inherited) && (foreign || o.kind != "f"))
    {
        let here = first::<String>(
            "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint \
             WHERE conrelid = $1 AND conname = $2",
            &[reloid.into(), o.name.clone().into()],
            "reading a constraint",
        );
        match here {
            Some(d) if d == o.definition => continue,
            Some(_) => run(
                &name,
                &format!(
                    "ALTER TABLE {name} DROP CONSTRAINT {}",
                    quote_ident(&o.name)
                ),
                Tag::T_AlterTableStmt,
                Some(At::AT_DropConstraint),
            ),
            None => {}
        }
        if o.kind == "f" {
            make_foreign_key(def, reloid, o, &receives);
        } else {
            add_constraint(def, o);
        }
    }
}

/// The partition of `def` named like `p` (a partition made since has its settings already).
fn same_partition<'a>(def: &'a TableDef, p: &TableDef) -> Option<&'a TableDef> {
    def.partitions
        .iter()
        .find(|q| q.schema == p.schema && q.table == p.table)
}

/// NOT NULL where the definition has it and the table does not yet.
fn set_not_null(def: &TableDef) {
    let table = qualified(&def.schema, &def.table);
    for c in def.columns.iter().filter(|c| c.not_null) {
        let nullable = first::<bool>(
            "SELECT NOT attnotnull FROM pg_catalog.pg_attribute \
             WHERE attrelid = pg_catalog.to_regclass($1)::oid AND attname = $2 AND NOT attisdropped",
            &[table.clone().into(), c.name.clone().into()],
            "reading a column",
        )
        .unwrap_or(false);
        if nullable {
            run(
                &table,
                &format!(
                    "ALTER TABLE {table} ALTER COLUMN {} SET NOT NULL",
                    quote_ident(&c.name)
                ),
                Tag::T_AlterTableStmt,
                Some(At::AT_SetNotNull),
            );
        }
    }
}

/// Finish the DDL of this change set: what checks rows (NOT NULL, constraints, indexes,
/// triggers, policies) is made to match each changed table's last definition, now that the
/// rows are the master's. `rserv_apply_end()` calls it last, before COMMIT; returns how many
/// tables it finished.
pub fn finish_deferred() -> i64 {
    let deferred = DEFERRED.with(|d| std::mem::take(&mut *d.borrow_mut()));
    if deferred.is_empty() {
        return 0; // (internal_ddl() would end the apply's replica window for nothing)
    }
    let n = deferred.len() as i64;
    let _internal = internal_ddl();
    for d in deferred {
        // domains as they are on the master now (the latest definition has them)
        let table = qualified(&d.def.schema, &d.def.table);
        let scope = super::types::Scope {
            table: &table,
            reloid: d.reloid,
            owner: d.owner,
            master: &d.def.types,
        };
        for t in d.def.types.iter().filter(|t| {
            d.domains
                .iter()
                .any(|x| x.schema == t.schema && x.name == t.name)
        }) {
            super::types::finish_domain(&scope, t);
        }
        run_as_owner(d.owner, &[], || {
            set_not_null(&d.def);
            if d.post_data_pending {
                // rserv_slave_finish_tables makes the rest, from the definition just recorded
                for def in std::iter::once(&d.def).chain(&d.def.partitions) {
                    if let Some(reloid) = relation(&def.schema, &def.table) {
                        constraints(def, reloid, false);
                    }
                }
                return;
            }
            objects(&d.def, d.row_security_changed);
            settings::indexes(Some(&d.from), &d.def);
            for p in &d.def.partitions {
                objects(p, d.row_security_changed);
                settings::indexes(same_partition(&d.from, p), p);
            }
        });
    }
    n
}

/// Are steps of this transaction's DDL sections still waiting for `rserv_apply_end()`?
pub fn pending() -> bool {
    DEFERRED.with(|d| !d.borrow().is_empty())
}

/// The transaction ended: whatever was deferred is gone with it.
pub fn forget() {
    DEFERRED.with(|d| d.borrow_mut().clear());
    TARGETED.with(|t| t.borrow_mut().clear());
}

/// Before a change set's transaction (replicate calls it with the change set's header and its
/// DDL sections, which come first): the enum labels they add, added and committed now, each as
/// the type's owner. A label added in the transaction that uses it cannot be used there
/// ("unsafe use of new value"); added earlier it is harmless, since the master has committed
/// it. Only for a change set this slave is going to apply: its header (the arguments after the
/// sections, as `rserv_apply_begin` takes them) passes `rserv_apply_begin`'s checks here,
/// recording nothing; NULL when this slave has the change set already. Only labels of enums
/// the section's table uses here; returns how many were added.
#[pg_extern(volatile, security_definer)]
#[allow(clippy::too_many_arguments)] // the SQL signature: the sections, then the header's facts
fn rserv_apply_types(
    schemas: Vec<String>,
    tables: Vec<String>,
    payloads: Vec<String>,
    syncid: i64,
    master: String,
    version: String,
    server: default!(Option<i32>, "NULL"),
    base: default!(Option<i64>, "NULL"),
    slave_node: default!(Option<String>, "NULL"),
    fingerprint: default!(Option<String>, "NULL"),
    format: default!(Option<i32>, "NULL"),
    features: default!(Option<Vec<String>>, "NULL"),
) -> Option<i64> {
    let _definer = crate::security::definer();
    crate::security::require_replicator("rserv_apply_types");
    if schemas.len() != tables.len() || tables.len() != payloads.len() {
        bad_section("schemas, tables and payloads differ in length");
    }
    let applies = crate::apply::check_change_set(&crate::apply::ChangeSet {
        syncid,
        master,
        version,
        server,
        base,
        slave_node,
        fingerprint,
        format,
        features,
    });
    if !applies {
        return None;
    }
    let _internal = internal_ddl();
    let mut added = 0;
    // the renames of earlier sections, which the slave has not made yet: a table's name on the
    // master since then (and its slave table), a type's (and its name here)
    let mut tables_renamed: Vec<(String, pg_sys::Oid)> = Vec::new();
    let mut types_renamed: Vec<(Named, Named)> = Vec::new();
    for ((schema, table), payload) in schemas.iter().zip(&tables).zip(&payloads) {
        let Some(section) = resolve_section(payload, schema, table, false)
            .or_else(|| renamed_section(payload, &tables_renamed))
        else {
            continue;
        };
        let new_name = qualified(&section.new.schema, &section.new.table);
        if new_name != qualified(&section.old.schema, &section.old.table) {
            tables_renamed.push((new_name, section.reloid));
        }
        let scope = super::types::Scope {
            table: &section.name,
            reloid: section.reloid,
            owner: table_info(section.reloid).owner,
            master: &section.new.types,
        };
        for step in super::types::diff_types(&section.old.types, &section.new.types).steps {
            match &step {
                TypeStep::Rename { from, to, .. } => {
                    let from = type_here(&types_renamed, from);
                    types_renamed.push((to.clone(), from));
                }
                TypeStep::EnumAdd { typ, .. } => {
                    let here = type_here(&types_renamed, typ);
                    // (a payload names its types: only those its table uses here are touched)
                    if scope.uses(&here) && super::types::add_label(&scope, &here, &step) {
                        added += 1;
                    }
                }
                _ => {}
            }
        }
    }
    Some(added)
}

/// This slave's name of the master's type `n`, which an earlier section may have renamed
/// (`renamed`: the master's name since, and the name here).
fn type_here(renamed: &[(Named, Named)], n: &Named) -> Named {
    renamed
        .iter()
        .rev()
        .find(|(master, _)| master == n)
        .map_or_else(|| n.clone(), |(_, here)| here.clone())
}

/// The section of `payload` for a table an earlier section of the change set renamed
/// (`renamed`: the master's name since, and the slave table), which the slave still has under
/// its name before the change set.
fn renamed_section(payload: &str, renamed: &[(String, pg_sys::Oid)]) -> Option<Section> {
    let p: Payload = serde_json::from_str(payload).unwrap_or_else(|e| bad_section(e));
    if p.target {
        return None;
    }
    let (old, new) = (parse_definition(p.old), parse_definition(p.new));
    let name = qualified(&old.schema, &old.table);
    let reloid = renamed.iter().rev().find(|(n, _)| *n == name)?.1;
    Some(Section {
        reloid,
        name,
        old,
        new,
        recopy: p.recopy,
    })
}
