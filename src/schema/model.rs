//! A table as the master describes it to a slave (`rserv_table_list().definition`, format 1;
//! produced by `sql/describe_table.sql`). Everything is data: names, type names, numbers; the
//! few texts that are SQL (expressions, constraint, index, trigger and partition clauses) come
//! from the master server's own deparsers and are re-parsed and checked by the slave before use.

use serde::{Deserialize, Serialize};

/// Version of the definition format; a slave refuses one it does not know.
pub const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Named {
    pub schema: String,
    pub name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rel {
    pub schema: String,
    pub table: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ColumnDef {
    pub name: String,
    /// the master's attribute number: a column keeps it across renames (DDL in the stream
    /// matches columns by it)
    #[serde(default)]
    pub attnum: i16,
    #[serde(rename = "type")]
    pub typ: Named,
    pub typmod: i32,
    pub not_null: bool,
    pub default: Option<String>,
    /// "a" (GENERATED ALWAYS AS IDENTITY) or "d" (BY DEFAULT)
    pub identity: Option<String>,
    /// expression of a stored generated column
    pub generated: Option<String>,
    pub collation: Option<Named>,
    #[serde(default)]
    pub comment: Option<String>,
    /// `SET STATISTICS` (absent: the default)
    #[serde(default)]
    pub statistics: Option<i32>,
    /// `SET STORAGE`: plain, external, extended or main (absent: the type's)
    #[serde(default)]
    pub storage: Option<String>,
    /// `SET COMPRESSION`: pglz or lz4 (absent: the default)
    #[serde(default)]
    pub compression: Option<String>,
    /// attribute options (`name=value`, e.g. `n_distinct=100`)
    #[serde(default)]
    pub options: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConstraintDef {
    pub name: String,
    /// "p" primary key, "u" unique, "c" check, "x" exclusion, "f" foreign key
    pub kind: String,
    /// `pg_get_constraintdef()` on the master, e.g. `CHECK ((id > 0)) NOT VALID`
    pub definition: String,
    pub valid: bool,
    /// comes with the parent of a partition (made here only when the slave lacks the parent)
    #[serde(default)]
    pub inherited: bool,
    /// the referenced table of a foreign key
    #[serde(default)]
    pub references: Option<Rel>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IndexDef {
    pub name: String,
    /// `pg_get_indexdef()` on the master
    pub definition: String,
    /// a partition's copy of an index of its parent
    #[serde(default)]
    pub inherited: bool,
    /// the parent's index this one is attached to (`table` holds the index's name)
    #[serde(default)]
    pub parent: Option<Rel>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TriggerDef {
    pub name: String,
    /// `pg_get_triggerdef()` on the master
    pub definition: String,
    /// pg_trigger.tgenabled: O (origin), D (disabled), R (replica), A (always)
    pub enabled: String,
    pub function: Named,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PolicyDef {
    pub name: String,
    pub permissive: bool,
    /// pg_policy.polcmd: r, a, w, d or *
    pub command: String,
    /// role names; empty: PUBLIC
    pub roles: Vec<String>,
    pub using: Option<String>,
    pub check: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SequenceDef {
    pub schema: String,
    pub name: String,
    /// smallint, integer or bigint
    #[serde(rename = "type")]
    pub typ: String,
    pub start: i64,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub cache: i64,
    pub cycle: bool,
    /// the column of this table that owns it
    pub owned_by: Option<String>,
    /// the sequence of an identity column (created with it)
    pub identity: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DomainConstraint {
    pub name: String,
    /// `pg_get_constraintdef()`, e.g. `CHECK (VALUE >= 1901)`
    pub definition: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Attribute {
    pub name: String,
    #[serde(rename = "type")]
    pub typ: Named,
    pub typmod: i32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TypeDef {
    pub schema: String,
    pub name: String,
    /// pg_type.typtype: e (enum), d (domain), c (composite), r (range)
    pub kind: String,
    pub labels: Option<Vec<String>>,
    pub base: Option<Named>,
    pub typmod: i32,
    pub not_null: bool,
    pub default: Option<String>,
    pub collation: Option<Named>,
    pub constraints: Option<Vec<DomainConstraint>>,
    pub attributes: Option<Vec<Attribute>>,
    pub subtype: Option<Named>,
    pub comment: Option<String>,
    /// the type's owner on the master, and whether a superuser: a slave alters a type of its
    /// own that a role other than the table's owner owns only for a superuser's (or the same
    /// role's) change (absent from definitions recorded by earlier builds: no superuser's)
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub owner_super: Option<bool>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TableDef {
    pub format: u32,
    pub schema: String,
    pub table: String,
    /// `pg_get_partkeydef()` of a partitioned table, e.g. `RANGE (payment_date)`
    #[serde(default)]
    pub partition_key: Option<String>,
    #[serde(default)]
    pub partition_of: Option<Rel>,
    /// `pg_get_expr(relpartbound)` of a partition, e.g. `FOR VALUES FROM (...) TO (...)`
    #[serde(default)]
    pub partition_bound: Option<String>,
    #[serde(default)]
    pub row_security: bool,
    #[serde(default)]
    pub force_row_security: bool,
    #[serde(default)]
    pub comment: Option<String>,
    /// storage parameters (`name=value`; the TOAST table's as `toast.name=value`)
    #[serde(default)]
    pub options: Vec<String>,
    /// REPLICA IDENTITY: full, nothing or index (absent: default)
    #[serde(default)]
    pub replica_identity: Option<String>,
    /// the index of REPLICA IDENTITY USING INDEX
    #[serde(default)]
    pub replica_index: Option<String>,
    /// the index of CLUSTER ON
    #[serde(default)]
    pub cluster_on: Option<String>,
    pub columns: Vec<ColumnDef>,
    pub constraints: Vec<ConstraintDef>,
    pub indexes: Vec<IndexDef>,
    #[serde(default)]
    pub triggers: Vec<TriggerDef>,
    #[serde(default)]
    pub policies: Vec<PolicyDef>,
    #[serde(default)]
    pub sequences: Vec<SequenceDef>,
    #[serde(default)]
    pub types: Vec<TypeDef>,
    /// a partitioned table's partitions at every level, each after its parent
    #[serde(default)]
    pub partitions: Vec<TableDef>,
}
