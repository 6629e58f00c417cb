//! Post-data on the slave: what a table built from a master's definition gets once its
//! initial copy is in (`rserv_slave_finish_tables`), and what a DDL section adds or changes
//! (`ddl/apply.rs`): indexes (probed first, see `probe.rs`), foreign keys, constraints,
//! triggers (only on functions of a superuser or of the acting role), policies and row
//! security. Built like the pre-data in `build.rs`: names quoted here, clause texts checked
//! by `verify.rs`.

use super::build::{existing_parent, relation, run};
use super::model::*;
use super::verify::{bad_definition, check_statement, expression};
use crate::sql::{first, ident_list, qualified, quote_ident};
use pgrx::pg_sys;
use pgrx::pg_sys::AlterTableType as At;
use pgrx::pg_sys::NodeTag as Tag;
use pgrx::prelude::*;

/// What this slave has for a trigger's function `schema.name()`.
enum TriggerFunction {
    Missing,
    /// another user's: attached, it would run as the table's owner whenever the trigger fires
    Untrusted(String),
    Usable,
}

fn trigger_function(f: &Named) -> TriggerFunction {
    // '' when usable, else the owner's name; no row when there is no such function
    let owner = first::<String>(
        "SELECT CASE WHEN a.rolsuper OR a.oid = $3 THEN '' ELSE a.rolname::text END \
           FROM pg_catalog.pg_proc p \
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
           JOIN pg_catalog.pg_roles a ON a.oid = p.proowner \
          WHERE n.nspname = $1 AND p.proname = $2 AND p.pronargs = 0 \
            AND p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype",
        &[
            f.schema.clone().into(),
            f.name.clone().into(),
            crate::security::acting_role().into(),
        ],
        "looking up a trigger function",
    );
    match owner {
        None => TriggerFunction::Missing,
        Some(o) if o.is_empty() => TriggerFunction::Usable,
        Some(o) => TriggerFunction::Untrusted(o),
    }
}

fn roles_exist(roles: &[String]) -> Option<String> {
    roles
        .iter()
        .find(|r| {
            !first::<bool>(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1)",
                &[(*r).clone().into()],
                "looking up a role",
            )
            .unwrap_or(false)
        })
        .cloned()
}

/// Post-data, after the table's initial copy: indexes, foreign keys (to tables this slave
/// receives), triggers (whose functions this slave has), policies (whose roles exist here) and
/// row-level security. What cannot be made is skipped with a WARNING that says why.
pub fn finish_table(def: &TableDef, reloid: pg_sys::Oid, receives: &dyn Fn(&Rel) -> bool) {
    for i in &def.indexes {
        make_index(def, reloid, i);
    }
    let partition = existing_parent(def).is_some();
    for o in def
        .constraints
        .iter()
        .filter(|o| o.kind == "f" && !(partition && o.inherited))
    {
        make_foreign_key(def, reloid, o, receives);
    }
    for t in &def.triggers {
        make_trigger(def, t);
    }
    for p in &def.policies {
        make_policy(def, p);
    }
    set_row_security(def);
    super::settings::indexes(None, def);
}

/// Index `i` of table `def` (unless it exists); a partition's copy of its parent's index is
/// made here and attached to the parent's (which a partitioned parent made ON ONLY itself), as
/// pg_dump does.
pub fn make_index(def: &TableDef, reloid: pg_sys::Oid, i: &IndexDef) {
    let table = qualified(&def.schema, &def.table);
    let partition = existing_parent(def).is_some();
    if relation(&def.schema, &i.name).is_some() {
        return;
    }
    let attach_to = i
        .parent
        .as_ref()
        .filter(|p| partition && relation(&p.schema, &p.table).is_some());
    if partition && i.inherited && attach_to.is_none() {
        return;
    }
    check_statement(&table, &i.definition, Tag::T_IndexStmt, None);
    super::probe::probe_index(
        &table,
        reloid,
        crate::catalog::table_info(reloid).owner,
        &i.definition,
    );
    run(&table, &i.definition, Tag::T_IndexStmt, None);
    let on_table = first::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index WHERE indrelid = $1 \
           AND indexrelid = pg_catalog.to_regclass($2)::oid)",
        &[reloid.into(), qualified(&def.schema, &i.name).into()],
        "checking an index",
    )
    .unwrap_or(false);
    if !on_table {
        bad_definition(
            &table,
            format!("index {} is not on the table", quote_ident(&i.name)),
        );
    }
    if let Some(p) = attach_to {
        run(
            &table,
            &format!(
                "ALTER INDEX {} ATTACH PARTITION {}",
                qualified(&p.schema, &p.table),
                qualified(&def.schema, &i.name)
            ),
            Tag::T_AlterTableStmt,
            Some(At::AT_AttachPartition),
        );
    }
}

/// Foreign key `o` of table `def`, when this slave receives the table it references.
pub fn make_foreign_key(
    def: &TableDef,
    reloid: pg_sys::Oid,
    o: &ConstraintDef,
    receives: &dyn Fn(&Rel) -> bool,
) {
    let table = qualified(&def.schema, &def.table);
    let Some(target) = o.references.as_ref().filter(|r| receives(r)) else {
        warning!(
            "rserv: foreign key {} of table {} is not made on this slave: the table it references is not received here",
            quote_ident(&o.name),
            table
        );
        return;
    };
    add_constraint(def, o);
    let references = first::<bool>(
        "SELECT confrelid = pg_catalog.to_regclass($3)::oid FROM pg_catalog.pg_constraint \
         WHERE conrelid = $1 AND conname = $2",
        &[
            reloid.into(),
            o.name.clone().into(),
            qualified(&target.schema, &target.table).into(),
        ],
        "checking a foreign key",
    )
    .unwrap_or(false);
    if !references {
        bad_definition(
            &table,
            format!(
                "foreign key {} references another table",
                quote_ident(&o.name)
            ),
        );
    }
}

/// `ALTER TABLE ... ADD CONSTRAINT` of constraint `o` as the master defines it.
pub fn add_constraint(def: &TableDef, o: &ConstraintDef) {
    let table = qualified(&def.schema, &def.table);
    run(
        &table,
        &format!(
            "ALTER TABLE {table} ADD CONSTRAINT {} {}",
            quote_ident(&o.name),
            o.definition
        ),
        Tag::T_AlterTableStmt,
        Some(At::AT_AddConstraint),
    );
}

/// Trigger `t` of table `def`, when this slave has its function, enabled as on the master.
pub fn make_trigger(def: &TableDef, t: &TriggerDef) {
    let table = qualified(&def.schema, &def.table);
    let function = qualified(&t.function.schema, &t.function.name);
    match trigger_function(&t.function) {
        TriggerFunction::Missing => {
            warning!(
                "rserv: trigger {} of table {} is not made on this slave: its function {}() does not exist here (create it, then add the trigger yourself)",
                quote_ident(&t.name),
                table,
                function
            );
            return;
        }
        TriggerFunction::Untrusted(owner) => {
            warning!(
                "rserv: trigger {} of table {} is not made on this slave: its function {}() here belongs to {}, neither a superuser nor the table's owner, and would run as the table's owner (check the function, then add the trigger yourself)",
                quote_ident(&t.name),
                table,
                function,
                quote_ident(&owner)
            );
            return;
        }
        TriggerFunction::Usable => {}
    }
    run(&table, &t.definition, Tag::T_CreateTrigStmt, None);
    let state = match t.enabled.as_str() {
        "D" => Some(("DISABLE TRIGGER", At::AT_DisableTrig)),
        "R" => Some(("ENABLE REPLICA TRIGGER", At::AT_EnableReplicaTrig)),
        "A" => Some(("ENABLE ALWAYS TRIGGER", At::AT_EnableAlwaysTrig)),
        _ => None,
    };
    if let Some((state, subtype)) = state {
        run(
            &table,
            &format!("ALTER TABLE {table} {state} {}", quote_ident(&t.name)),
            Tag::T_AlterTableStmt,
            Some(subtype),
        );
    }
}

/// Policy `p` of table `def`, when its roles exist here.
pub fn make_policy(def: &TableDef, p: &PolicyDef) {
    let table = qualified(&def.schema, &def.table);
    if let Some(missing) = roles_exist(&p.roles) {
        warning!(
            "rserv: policy {} of table {} is not made on this slave: role {} does not exist here",
            quote_ident(&p.name),
            table,
            quote_ident(&missing)
        );
        return;
    }
    let command = match p.command.as_str() {
        "r" => "SELECT",
        "a" => "INSERT",
        "w" => "UPDATE",
        "d" => "DELETE",
        _ => "ALL",
    };
    let roles = if p.roles.is_empty() {
        "PUBLIC".to_string()
    } else {
        ident_list(&p.roles)
    };
    let mut sql = format!(
        "CREATE POLICY {} ON {table} AS {} FOR {command} TO {roles}",
        quote_ident(&p.name),
        if p.permissive {
            "PERMISSIVE"
        } else {
            "RESTRICTIVE"
        }
    );
    if let Some(u) = &p.using {
        sql.push_str(&format!(
            " USING {}",
            expression(&table, "a policy's USING", u)
        ));
    }
    if let Some(c) = &p.check {
        sql.push_str(&format!(
            " WITH CHECK {}",
            expression(&table, "a policy's WITH CHECK", c)
        ));
    }
    run(&table, &sql, Tag::T_CreatePolicyStmt, None);
}

/// Row-level security as on the master (never FORCE here: the owner applies every row).
pub fn set_row_security(def: &TableDef) {
    let table = qualified(&def.schema, &def.table);
    let (sql, subtype) = if def.row_security {
        ("ENABLE", At::AT_EnableRowSecurity)
    } else {
        ("DISABLE", At::AT_DisableRowSecurity)
    };
    // (no statement when it is so already: each one costs the DDL guards' checks)
    let already = first::<bool>(
        "SELECT relrowsecurity = $2 FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)::oid",
        &[table.clone().into(), def.row_security.into()],
        "reading the table's row security",
    )
    .unwrap_or(false);
    if !already {
        run(
            &table,
            &format!("ALTER TABLE {table} {sql} ROW LEVEL SECURITY"),
            Tag::T_AlterTableStmt,
            Some(subtype),
        );
    }
    if def.force_row_security {
        warning!(
            "rserv: table {} has FORCE ROW LEVEL SECURITY on the master; not on this slave, where its owner must apply every row",
            table
        );
    }
}
