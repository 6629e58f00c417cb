//! `rserv_execute_ddl(sql)`: the explicit way (pglogical's `replicate_ddl_command`, Slony's
//! EXECUTE SCRIPT) under rserv's rule that a slave never runs SQL text from its master. The
//! script runs here, on the master, as the caller; its effect on replicated tables is recorded
//! by the DDL guards like any schema change (`record.rs`), under this transaction's id, so every
//! slave follows at exactly this point of its stream, rebuilding the change from catalog facts.
//! What this function adds to running the statements by hand is the guarantee: every statement
//! must be of a kind rserv follows (checked on the parse tree before anything runs), the guards
//! must be active, and the script must have changed at least one replicated table; otherwise
//! nothing of it stays.

use crate::error::fail;
use pgrx::pg_sys;
use pgrx::pg_sys::AlterTableType as At;
use pgrx::pg_sys::NodeTag as Tag;
use pgrx::pg_sys::ObjectType as Ob;
use pgrx::prelude::*;

/// ALTER TABLE subcommands whose effect the recorded definitions carry.
const FOLLOWED_ALTERS: &[At::Type] = &[
    At::AT_AddColumn,
    At::AT_ColumnDefault,
    At::AT_DropNotNull,
    At::AT_SetNotNull,
    At::AT_DropColumn,
    At::AT_AddConstraint,
    At::AT_AlterConstraint,
    At::AT_ValidateConstraint,
    At::AT_DropConstraint,
    At::AT_AlterColumnType,
    At::AT_EnableTrig,
    At::AT_EnableAlwaysTrig,
    At::AT_EnableReplicaTrig,
    At::AT_DisableTrig,
    At::AT_EnableRowSecurity,
    At::AT_DisableRowSecurity,
    At::AT_ForceRowSecurity,
    At::AT_NoForceRowSecurity,
    At::AT_AttachPartition,
    At::AT_DetachPartition,
    At::AT_SetRelOptions,
    At::AT_ResetRelOptions,
    At::AT_SetStatistics,
    At::AT_SetStorage,
    At::AT_SetCompression,
    At::AT_SetOptions,
    At::AT_ResetOptions,
    At::AT_ReplicaIdentity,
    At::AT_ClusterOn,
    At::AT_DropCluster,
];

/// The `...Recurse` subcommands PostgreSQL 14 and 15 parse some of those into (16 folded them
/// into the plain ones).
#[cfg(any(feature = "pg14", feature = "pg15"))]
const RECURSE_ALTERS: &[At::Type] = &[
    At::AT_AddColumnRecurse,
    At::AT_DropColumnRecurse,
    At::AT_AddConstraintRecurse,
    At::AT_ValidateConstraintRecurse,
    At::AT_DropConstraintRecurse,
];
#[cfg(not(any(feature = "pg14", feature = "pg15")))]
const RECURSE_ALTERS: &[At::Type] = &[];

/// Why statement `stmt` cannot follow to the slaves; None when rserv follows its kind.
///
/// # Safety
/// `stmt` is a node of a raw parse tree.
unsafe fn not_followed(stmt: *mut pg_sys::Node) -> Option<&'static str> {
    let ok = match (*stmt).type_ {
        Tag::T_AlterTableStmt => {
            let a = &*(stmt as *mut pg_sys::AlterTableStmt);
            if !matches!(a.objtype, Ob::OBJECT_TABLE | Ob::OBJECT_INDEX | Ob::OBJECT_TYPE) {
                return Some("rserv follows tables, their indexes and the types they use");
            }
            let cmds = if a.cmds.is_null() {
                0
            } else {
                (*a.cmds).length as usize
            };
            for i in 0..cmds {
                let cmd = (*(*a.cmds).elements.add(i)).ptr_value as *mut pg_sys::AlterTableCmd;
                let subtype = (*cmd).subtype;
                if !FOLLOWED_ALTERS.contains(&subtype) && !RECURSE_ALTERS.contains(&subtype) {
                    return Some(
                        "this ALTER TABLE action (owner, tablespace, access method, inheritance, rules, identity) is not part of what rserv replicates",
                    );
                }
            }
            true
        }
        Tag::T_RenameStmt => matches!(
            (*(stmt as *mut pg_sys::RenameStmt)).renameType,
            Ob::OBJECT_TABLE
                | Ob::OBJECT_COLUMN
                | Ob::OBJECT_TABCONSTRAINT
                | Ob::OBJECT_INDEX
                | Ob::OBJECT_TRIGGER
                | Ob::OBJECT_POLICY
                | Ob::OBJECT_TYPE
                | Ob::OBJECT_DOMAIN
                | Ob::OBJECT_DOMCONSTRAINT
        ),
        Tag::T_AlterObjectSchemaStmt => matches!(
            (*(stmt as *mut pg_sys::AlterObjectSchemaStmt)).objectType,
            Ob::OBJECT_TABLE | Ob::OBJECT_TYPE | Ob::OBJECT_DOMAIN
        ),
        Tag::T_DropStmt => matches!(
            (*(stmt as *mut pg_sys::DropStmt)).removeType,
            Ob::OBJECT_INDEX | Ob::OBJECT_TRIGGER | Ob::OBJECT_POLICY
        ),
        Tag::T_CommentStmt => matches!(
            (*(stmt as *mut pg_sys::CommentStmt)).objtype,
            Ob::OBJECT_TABLE | Ob::OBJECT_COLUMN
        ),
        // a partition of a replicated table; a table of its own is registered, not executed
        Tag::T_CreateStmt => !(*(stmt as *mut pg_sys::CreateStmt)).partbound.is_null(),
        Tag::T_IndexStmt
        | Tag::T_CreateTrigStmt
        | Tag::T_CreatePolicyStmt
        | Tag::T_AlterPolicyStmt
        | Tag::T_AlterEnumStmt
        | Tag::T_AlterDomainStmt
        // types and sequences reach the slaves with the replicated tables that use them
        | Tag::T_CreateEnumStmt
        | Tag::T_CreateDomainStmt
        | Tag::T_CompositeTypeStmt
        | Tag::T_CreateRangeStmt
        | Tag::T_CreateSeqStmt => true,
        _ => false,
    };
    (!ok).then_some(
        "rserv replicates tables' definitions (columns, constraints, indexes, triggers, policies, comments, partitions, storage settings) and the types they use, nothing else",
    )
}

/// The statement `sql` holds from `location` for `len` bytes (0: to the end).
fn statement_text(sql: &str, location: i32, len: i32) -> String {
    let start = location.max(0) as usize;
    let end = if len > 0 {
        start + len as usize
    } else {
        sql.len()
    };
    sql.get(start..end.min(sql.len()))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Are rserv's DDL guards going to see DDL run in this session?
fn guards_active() -> bool {
    crate::sql::first::<bool>(
        "SELECT count(*) = 2 FROM pg_catalog.pg_event_trigger e \
         WHERE e.evtname IN ('_rserv_alter_guard_', '_rserv_drop_guard_') \
           AND (e.evtenabled = 'A' OR (e.evtenabled = 'O' AND \
                pg_catalog.current_setting('session_replication_role') <> 'replica') \
                OR (e.evtenabled = 'R' AND \
                pg_catalog.current_setting('session_replication_role') = 'replica'))",
        &[],
        "checking rserv's DDL guards",
    )
    .unwrap_or(false)
}

/// Run the DDL script `sql` on this master, as the calling role (each statement with the
/// caller's privileges), and make every slave apply the same change at this point of its
/// change-set stream. Refused as a whole, before anything runs, when a statement is of a kind
/// rserv does not follow; refused after running (so rolled back) when the script changed no
/// replicated table. Returns the number of replicated-table definitions it changed.
#[pg_extern(volatile)]
fn rserv_execute_ddl(sql: &str) -> i64 {
    // SAFETY: reads the raw parse trees of `sql` (the parser raises syntax errors itself)
    let statements = unsafe {
        let c = crate::sql::c_string(sql);
        let list = pg_sys::raw_parser(c.as_ptr(), pg_sys::RawParseMode::RAW_PARSE_DEFAULT);
        let mut out = Vec::new();
        if !list.is_null() {
            for i in 0..(*list).length as usize {
                let raw = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::RawStmt;
                let text = statement_text(sql, (*raw).stmt_location, (*raw).stmt_len);
                if let Some(why) = not_followed((*raw).stmt) {
                    fail(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        format!(
                            "rserv_execute_ddl: statement {} cannot follow to the slaves: {text}",
                            i + 1
                        ),
                        format!("{why}; run it on the master and on every slave yourself (nothing of this script was run)"),
                    );
                }
                out.push(text);
            }
        }
        out
    };
    if statements.is_empty() {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "rserv_execute_ddl: the script holds no statement",
            "",
        );
    }
    // the apply's replica window (replica_window.rs) would hide the script from the guards
    crate::replica_window::close();
    if !guards_active() {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "rserv_execute_ddl: rserv's DDL guards would not see this script (disabled, or session_replication_role = replica)",
            "enable the event triggers _rserv_alter_guard_ and _rserv_drop_guard_, or run it with session_replication_role = origin",
        );
    }
    let before = recorded();
    for s in &statements {
        if let Err(e) = Spi::run(s) {
            crate::error::spi_fail(&format!("rserv_execute_ddl: {s}"), e);
        }
    }
    let changed = recorded() - before;
    if changed == 0 {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "rserv_execute_ddl: the script changed no replicated table, so nothing of it would reach the slaves (it was rolled back)",
            "name a table registered with rserv_add_table; DDL of other objects is run on every side by hand",
        );
    }
    changed
}

/// How many definition changes this transaction has recorded for the slaves so far.
fn recorded() -> i64 {
    crate::sql::first::<i64>(
        &format!(
            "SELECT {}._rserv_ddl_recorded_()",
            crate::catalog::ext_schema()
        ),
        &[],
        "counting recorded DDL",
    )
    .unwrap_or(0)
}

/// For `rserv_execute_ddl` (which runs as its caller): the schema changes recorded so far in
/// the calling transaction.
#[pg_extern(volatile, security_definer)]
fn _rserv_ddl_recorded_() -> i64 {
    let _definer = crate::security::internal_definer();
    let s = crate::catalog::ext_schema();
    crate::sql::first::<i64>(
        &format!(
            "SELECT count(*) FROM {s}._rserv_ddl_ \
             WHERE logid = pg_catalog.pg_current_xact_id_if_assigned()::text::int8"
        ),
        &[],
        "counting recorded DDL",
    )
    .unwrap_or(0)
}
