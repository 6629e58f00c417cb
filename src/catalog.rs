//! Catalog look-ups shared by the protocol's steps: the extension's own schema and version,
//! facts about user tables and their columns, and how a key column is compared with the
//! canonical text the capture trigger logged.

use crate::error::fail;
use crate::sql::{qualified, quote_ident};
use pgrx::pg_sys;
use pgrx::prelude::*;

/// A `regclass` argument. pgrx has no mapping for it, and taking `regclass` (not `oid`) is
/// what lets users write `rserv_add_table('customer')` and get PostgreSQL's own name lookup.
#[derive(Clone, Copy, Debug)]
pub struct RegClass(pub pg_sys::Oid);

impl FromDatum for RegClass {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            None
        } else {
            // regclass is an oid passed by value
            Some(RegClass(pg_sys::Oid::from(datum.value() as u32)))
        }
    }
}

impl IntoDatum for RegClass {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(pg_sys::Datum::from(self.0.to_u32()))
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::REGCLASSOID
    }
}

// SAFETY: regclass is passed by value like oid, which FromDatum above decodes.
unsafe impl<'fcx> pgrx::callconv::ArgAbi<'fcx> for RegClass {
    unsafe fn unbox_arg_unchecked(arg: pgrx::callconv::Arg<'_, 'fcx>) -> Self {
        let index = arg.index();
        unsafe { arg.unbox_arg_using_from_datum() }
            .unwrap_or_else(|| panic!("argument {index} must not be null"))
    }
}

pgrx::impl_sql_translatable!(RegClass, "regclass");

/// Name of the trigger rserv puts on each replicated master table (the seed's name).
pub const CAPTURE_TRIGGER: &str = "_rserv_trigger_t_";
/// Statement-level TRUNCATE capture on master tables.
pub const TRUNCATE_TRIGGER: &str = "_rserv_truncate_t_";
/// Logs a TRUNCATE of one partition of a replicated partitioned table.
pub const PART_TRUNCATE_TRIGGER: &str = "_rserv_truncate_p_";
/// Refuses local writes on slave tables.
pub const PROTECT_TRIGGER: &str = "_rserv_protect_t_";

/// The extension's schema, quoted, for building statements on its catalog tables.
pub fn ext_schema() -> String {
    let nsp = crate::sql::kept_first::<String>(
        "SELECT n.nspname::text FROM pg_catalog.pg_extension e \
         JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'rserv'",
        &[],
        "looking up the extension schema",
    );
    match nsp {
        Some(n) => quote_ident(&n),
        None => fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "rserv: extension rserv is not installed in this database",
            "run CREATE EXTENSION rserv",
        ),
    }
}

/// Version of the installed extension (pg_extension.extversion).
pub fn ext_version() -> String {
    crate::sql::kept_first::<String>(
        "SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'rserv'",
        &[],
        "reading the extension version",
    )
    .unwrap_or_default()
}

/// Facts about a user table, read from the catalogs.
#[derive(Clone, Debug)]
pub struct TableInfo {
    pub reloid: pg_sys::Oid,
    pub schema: String,
    pub name: String,
    pub relkind: String,
    pub persistence: String,
    pub owner: pg_sys::Oid,
    pub row_security: bool,
    pub force_row_security: bool,
}

impl TableInfo {
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

pub fn table_info(reloid: pg_sys::Oid) -> TableInfo {
    let row = crate::sql::rows(
        "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text, \
                c.relowner, c.relrowsecurity, c.relforcerowsecurity \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.oid = $1",
        &[reloid.into()],
        "reading pg_class",
        |r| {
            Ok(TableInfo {
                reloid,
                schema: r.get::<String>(1)?.unwrap_or_default(),
                name: r.get::<String>(2)?.unwrap_or_default(),
                relkind: r.get::<String>(3)?.unwrap_or_default(),
                persistence: r.get::<String>(4)?.unwrap_or_default(),
                owner: r.get::<pg_sys::Oid>(5)?.unwrap_or(pg_sys::InvalidOid),
                row_security: r.get::<bool>(6)?.unwrap_or(false),
                force_row_security: r.get::<bool>(7)?.unwrap_or(false),
            })
        },
    )
    .pop();
    match row {
        Some(info) => info,
        None => fail(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!(
                "rserv: relation with OID {} does not exist",
                reloid.to_u32()
            ),
            "",
        ),
    }
}

/// A live (not dropped) column of a table.
#[derive(Clone, Debug)]
pub struct Column {
    pub name: String,
    pub attnum: i16,
    /// `format_type(atttypid, atttypmod)`: the type with its modifiers (`character(3)`,
    /// `numeric(10,2)`), valid in a cast and in a column definition
    pub type_name: String,
    pub type_oid: pg_sys::Oid,
    pub typmod: i32,
    pub generated: bool,
}

pub fn table_columns(reloid: pg_sys::Oid) -> Vec<Column> {
    crate::sql::rows(
        "SELECT a.attname::text, a.attnum, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                a.atttypid, a.atttypmod, a.attgenerated <> '' \
         FROM pg_catalog.pg_attribute a \
         WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        &[reloid.into()],
        "reading pg_attribute",
        |r| {
            Ok(Column {
                name: r.get::<String>(1)?.unwrap_or_default(),
                attnum: r.get::<i16>(2)?.unwrap_or_default(),
                type_name: r.get::<String>(3)?.unwrap_or_default(),
                type_oid: r.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
                typmod: r.get::<i32>(5)?.unwrap_or(-1),
                generated: r.get::<bool>(6)?.unwrap_or_default(),
            })
        },
    )
}

/// `format_type(oid, typmod)` as the server prints it.
pub fn format_type(typ: pg_sys::Oid, typmod: i32) -> String {
    crate::sql::kept_first::<String>(
        "SELECT pg_catalog.format_type($1, $2)",
        &[typ.into(), typmod.into()],
        "naming a type",
    )
    .unwrap_or_default()
}

/// How a key column is found from the canonical text the capture trigger logged for it.
#[derive(Clone, Debug)]
pub enum KeyMatch {
    /// `column OPERATOR(eq) text::cast`: the text is read with the input function of the
    /// column's base type (never a domain's: its CHECK is the domain owner's code), compared
    /// with the type's default equality operator, schema-qualified, so the table's own index
    /// serves the look-up.
    Typed {
        cast: String,
        eq: String,
        /// the column is of a domain: relabelled to its base type too (a polymorphic equality
        /// operator, such as enums', takes two values of one type)
        domain: bool,
    },
    /// The base type contains a domain (an array, composite or range of one): reading the text
    /// back would run that domain's CHECK, so the column's text form is compared instead.
    Text,
}

impl KeyMatch {
    /// SQL comparing the column expression `col` with the text expression `text`.
    pub fn condition(&self, col: &str, text: &str) -> String {
        match self {
            KeyMatch::Typed {
                cast,
                eq,
                domain: false,
            } => format!("{col} {eq} ({text})::{cast}"),
            KeyMatch::Typed { cast, eq, .. } => format!("({col})::{cast} {eq} ({text})::{cast}"),
            KeyMatch::Text => format!("({col})::pg_catalog.text OPERATOR(pg_catalog.=) {text}"),
        }
    }
}

/// Does this (non-domain) type hold a domain inside: as array element, composite attribute,
/// range subtype or multirange range?
fn holds_domain(typ: pg_sys::Oid, depth: u32) -> bool {
    if depth > 16 {
        return true;
    }
    let is_domain_or_holds = |t: pg_sys::Oid| {
        // SAFETY: syscache look-ups of existing types
        let domain = unsafe { pg_sys::get_typtype(t) as u8 == b'd' };
        domain || holds_domain(t, depth + 1)
    };
    // SAFETY: syscache look-ups of an existing type
    unsafe {
        let elem = pg_sys::get_element_type(typ);
        if elem != pg_sys::InvalidOid {
            return is_domain_or_holds(elem);
        }
        match pg_sys::get_typtype(typ) as u8 {
            b'c' => {
                let rel = pg_sys::get_typ_typrelid(typ);
                let types: Vec<pg_sys::Oid> = crate::sql::column(
                    "SELECT atttypid FROM pg_catalog.pg_attribute \
                     WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped",
                    &[rel.into()],
                    "reading a composite type",
                );
                types.into_iter().any(is_domain_or_holds)
            }
            b'r' => is_domain_or_holds(pg_sys::get_range_subtype(typ)),
            b'm' => is_domain_or_holds(pg_sys::get_multirange_range(typ)),
            _ => false,
        }
    }
}

/// `format_type()` of column `col`'s type, or of its base type and modifier for a domain.
pub fn base_type_name(col: &Column) -> String {
    let mut typmod = col.typmod;
    // SAFETY: syscache look-up of an existing type
    let base = unsafe { pg_sys::getBaseTypeAndTypmod(col.type_oid, &mut typmod) };
    if base == col.type_oid {
        return col.type_name.clone();
    }
    format_type(base, typmod)
}

/// How to compare key column `col` with its logged text.
pub fn key_match(col: &Column) -> KeyMatch {
    // SAFETY: syscache look-up of an existing type
    let base = unsafe { pg_sys::getBaseType(col.type_oid) };
    if holds_domain(base, 0) {
        return KeyMatch::Text;
    }
    // SAFETY: type cache look-up of an existing type
    let eq_opr =
        unsafe { (*pg_sys::lookup_type_cache(base, pg_sys::TYPECACHE_EQ_OPR as i32)).eq_opr };
    let eq = if eq_opr == pg_sys::InvalidOid {
        None
    } else {
        crate::sql::kept_first::<String>(
            "SELECT 'OPERATOR(' || pg_catalog.quote_ident(n.nspname) || '.' || o.oprname || ')' \
             FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace \
             WHERE o.oid = $1",
            &[eq_opr.into()],
            "finding the key's equality operator",
        )
    };
    match eq {
        // Without the column's type modifier: the text is the stored value's own output, so it
        // reads back exactly, and no length coercion (char(1) for "character") can alter it.
        Some(eq) => KeyMatch::Typed {
            cast: format_type(base, -1),
            eq,
            domain: base != col.type_oid,
        },
        None => KeyMatch::Text,
    }
}
