//! Small pieces every module needs: the server's own identifier quoting, error reporting
//! with SQLSTATEs and hints, the extension's schema, and canonical text settings.

use pgrx::pg_sys;
use pgrx::prelude::*;
use std::ffi::{CStr, CString};

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

/// Raise an ERROR with a SQLSTATE, a message and a hint that says how to fix it.
pub fn fail(code: PgSqlErrorCode, message: impl Into<String>, hint: impl Into<String>) -> ! {
    let hint = hint.into();
    let report = pgrx::pg_sys::panic::ErrorReport::new(code, message.into(), "rserv");
    let report = if hint.is_empty() {
        report
    } else {
        report.set_hint(hint)
    };
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Turn an SPI error into an ERROR that says what rserv was doing.
pub fn spi_fail(context: &str, err: pgrx::spi::Error) -> ! {
    fail(
        PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        format!("rserv: {context}: {err}"),
        "",
    )
}

/// Short-hand for `Result<T, spi::Error>` results inside rserv functions.
pub trait SpiOrFail<T> {
    fn or_fail(self, context: &str) -> T;
}

impl<T> SpiOrFail<T> for Result<T, pgrx::spi::Error> {
    fn or_fail(self, context: &str) -> T {
        match self {
            Ok(v) => v,
            Err(e) => spi_fail(context, e),
        }
    }
}

/// First column of the first row, or None when the query returns no row (or NULL).
/// `Spi::get_one` treats "no row" as an error; catalog look-ups need the difference.
pub fn first<T: FromDatum + IntoDatum>(
    sql: &str,
    args: &[pgrx::datum::DatumWithOid],
    context: &str,
) -> Option<T> {
    Spi::connect_mut(|client| {
        let tab = client.update(sql, Some(1), args)?;
        match tab.into_iter().next() {
            Some(row) => row.get::<T>(1),
            None => Ok(None),
        }
    })
    .or_fail(context)
}

fn c_string(s: &str) -> CString {
    match CString::new(s) {
        Ok(c) => c,
        Err(_) => fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "rserv: names and values may not contain NUL bytes",
            "",
        ),
    }
}

/// `quote_ident()`: the server's own identifier quoting.
pub fn quote_ident(s: &str) -> String {
    let c = c_string(s);
    // SAFETY: quote_identifier returns its argument or a palloc'd copy, both valid C strings
    unsafe { CStr::from_ptr(pg_sys::quote_identifier(c.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// `quote_literal()`: the server's own literal quoting.
pub fn quote_literal(s: &str) -> String {
    let c = c_string(s);
    // SAFETY: quote_literal_cstr returns a palloc'd, NUL-terminated string
    unsafe { CStr::from_ptr(pg_sys::quote_literal_cstr(c.as_ptr())) }
        .to_string_lossy()
        .into_owned()
}

/// `SELECT func('table')` with the table name quoted as a literal, for hints users can paste.
pub fn call_hint(func: &str, table: &str, extra: &str) -> String {
    format!("SELECT {func}({}{extra})", quote_literal(table))
}

/// Schema-qualified, quoted name of a relation, e.g. `public."Order Lines"`.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// The extension's schema, quoted, for building statements on its catalog tables.
pub fn ext_schema() -> String {
    let nsp = first::<String>(
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

/// Drop a temp table of this session if it exists (without DROP IF EXISTS's NOTICE when the
/// session has no temp schema yet).
pub fn drop_temp_table(name: &str) {
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.to_regclass('pg_temp.' || pg_catalog.quote_ident($1)) IS NOT NULL",
        &[name.into()],
    )
    .or_fail("looking up a temp table")
    .unwrap_or(false);
    if exists {
        Spi::run(&format!("DROP TABLE pg_temp.{}", quote_ident(name)))
            .or_fail("dropping a temp table");
    }
}

/// Version of the installed extension (pg_extension.extversion).
pub fn ext_version() -> String {
    first::<String>(
        "SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'rserv'",
        &[],
        "reading the extension version",
    )
    .unwrap_or_default()
}

/// Marks the body of a SECURITY DEFINER rserv function. While alive, search_path is
/// `pg_catalog, pg_temp`, so nothing a user put in public or in their own schemas (functions,
/// operators, casts overloading the built-in ones) can run with rserv's privileges; every
/// statement rserv builds names user objects schema-qualified. The previous search_path comes
/// back when the function returns (on error the transaction is aborted anyway).
pub struct Definer {
    previous: Option<String>,
}

pub fn definer() -> Definer {
    let previous = first::<String>(
        "SELECT pg_catalog.current_setting('search_path')",
        &[],
        "reading search_path",
    );
    set_local("search_path", "pg_catalog, pg_temp");
    Definer { previous }
}

impl Drop for Definer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let Some(p) = self.previous.take() {
            set_local("search_path", &p);
        }
    }
}

/// The role that called rserv (not the definer a SECURITY DEFINER function runs as).
pub fn outer_user() -> pg_sys::Oid {
    // SAFETY: plain read of the backend's user state
    unsafe { pg_sys::GetOuterUserId() }
}

pub fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: GetUserNameFromId returns a palloc'd C string (noerr: NULL for a dropped role)
    let p = unsafe { pg_sys::GetUserNameFromId(role, true) };
    if p.is_null() {
        return format!("role {}", role.to_u32());
    }
    // SAFETY: non-NULL, NUL-terminated
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn outer_has_privs_of(role: pg_sys::Oid) -> bool {
    // SAFETY: catalog look-ups of existing roles
    unsafe { pg_sys::superuser_arg(outer_user()) || pg_sys::has_privs_of_role(outer_user(), role) }
}

/// Registering a table puts triggers on it: only its owner (or a superuser) may.
pub fn require_table_owner(reloid: pg_sys::Oid, table: &str, func: &str) {
    let owner = first::<pg_sys::Oid>(
        "SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1",
        &[reloid.into()],
        "reading the table's owner",
    );
    if !owner.is_some_and(outer_has_privs_of) {
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "rserv: {func}(): role {} is not the owner of table {table}",
                role_name(outer_user())
            ),
            "run it as the table's owner",
        );
    }
}

/// Is the calling role allowed to replicate: a superuser, the extension's owner, or a role
/// granted with rserv_grant_replication()?
pub fn is_replicator() -> bool {
    let s = ext_schema();
    let ext_owner = first::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'rserv'",
        &[],
        "reading the extension's owner",
    );
    if ext_owner.is_some_and(outer_has_privs_of) {
        return true;
    }
    first::<bool>(
        &format!(
            "SELECT EXISTS (SELECT 1 FROM {s}._rserv_replicators_ r \
             WHERE pg_catalog.pg_has_role($1, r.role, 'USAGE'))"
        ),
        &[outer_user().into()],
        "reading _rserv_replicators_",
    )
    .unwrap_or(false)
}

pub fn require_replicator(func: &str) {
    if !is_replicator() {
        let me = role_name(outer_user());
        fail(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("rserv: {func}(): role {me} may not replicate this database"),
            format!(
                "a superuser or the owner of extension rserv can allow it: SELECT rserv_grant_replication({})",
                quote_literal(&me)
            ),
        );
    }
}

/// Let the calling role use a temp table a definer function created for it (the client reads
/// or fills it with COPY).
pub fn grant_to_caller(privilege: &str, table: &str) {
    Spi::run(&format!(
        "GRANT {privilege} ON {table} TO {}",
        quote_ident(&role_name(outer_user()))
    ))
    .or_fail("granting the staging table to the caller");
}

/// Session settings under which every value is written and read as text the same way on
/// master and slave, whatever the users' own DateStyle, TimeZone or float settings.
pub const CANONICAL_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
];

/// Apply [`CANONICAL_SETTINGS`] until the end of the current transaction.
pub fn set_canonical_settings_local() {
    for (name, value) in CANONICAL_SETTINGS {
        set_local(name, value);
    }
}

/// `SET LOCAL name = value` through set_config(), so nothing is pasted into SQL.
pub fn set_local(name: &str, value: &str) {
    Spi::run_with_args(
        "SELECT pg_catalog.set_config($1, $2, true)",
        &[name.into(), value.into()],
    )
    .or_fail("changing a setting");
}

/// While alive, the backend's output functions format dates, time zones, intervals and floats
/// in one fixed way. The capture trigger uses this to encode row identities independently of the
/// writer's session settings; it only swaps integers, so it is cheap enough for every row.
pub struct CanonicalOutput {
    date_style: i32,
    date_order: i32,
    interval_style: i32,
    float_digits: i32,
    timezone: *mut pg_sys::pg_tz,
}

thread_local! {
    static UTC: std::cell::Cell<*mut pg_sys::pg_tz> = const { std::cell::Cell::new(std::ptr::null_mut()) };
}

/// PostgreSQL's UTC zone, looked up once per backend.
fn utc() -> *mut pg_sys::pg_tz {
    UTC.with(|cell| {
        if cell.get().is_null() {
            // SAFETY: pg_tzset returns a pointer into PostgreSQL's own zone cache
            cell.set(unsafe { pg_sys::pg_tzset(c"UTC".as_ptr()) });
        }
        cell.get()
    })
}

impl CanonicalOutput {
    pub fn enter() -> Self {
        // SAFETY: plain integer globals of the backend; we run in the backend's only thread
        unsafe {
            let saved = CanonicalOutput {
                date_style: pg_sys::DateStyle,
                date_order: pg_sys::DateOrder,
                interval_style: pg_sys::IntervalStyle,
                float_digits: pg_sys::extra_float_digits,
                timezone: pg_sys::session_timezone,
            };
            let utc = utc();
            if !utc.is_null() {
                pg_sys::session_timezone = utc;
            }
            pg_sys::DateStyle = pg_sys::USE_ISO_DATES as i32;
            pg_sys::DateOrder = pg_sys::DATEORDER_YMD as i32;
            pg_sys::IntervalStyle = pg_sys::INTSTYLE_POSTGRES as i32;
            pg_sys::extra_float_digits = 3;
            saved
        }
    }
}

impl Drop for CanonicalOutput {
    fn drop(&mut self) {
        // SAFETY: see enter(); restoring the values saved there
        unsafe {
            pg_sys::DateStyle = self.date_style;
            pg_sys::DateOrder = self.date_order;
            pg_sys::IntervalStyle = self.interval_style;
            pg_sys::extra_float_digits = self.float_digits;
            pg_sys::session_timezone = self.timezone;
        }
    }
}

/// Facts about a user table, read from the catalogs.
pub struct TableInfo {
    pub reloid: pg_sys::Oid,
    pub schema: String,
    pub name: String,
    pub relkind: String,
    pub persistence: String,
}

impl TableInfo {
    pub fn qualified(&self) -> String {
        qualified(&self.schema, &self.name)
    }
}

pub fn table_info(reloid: pg_sys::Oid) -> TableInfo {
    let row = Spi::connect(|client| {
        let tab = client.select(
            "SELECT n.nspname::text, c.relname::text, c.relkind::text, c.relpersistence::text \
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = $1",
            None,
            &[reloid.into()],
        )?;
        let mut out = None;
        for r in tab {
            out = Some((
                r.get::<String>(1)?.unwrap_or_default(),
                r.get::<String>(2)?.unwrap_or_default(),
                r.get::<String>(3)?.unwrap_or_default(),
                r.get::<String>(4)?.unwrap_or_default(),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading pg_class");
    match row {
        Some((schema, name, relkind, persistence)) => TableInfo {
            reloid,
            schema,
            name,
            relkind,
            persistence,
        },
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
    /// `format_type(atttypid, NULL)`: the type without modifiers, valid in a cast
    pub type_name: String,
    pub type_oid: pg_sys::Oid,
    pub generated: bool,
}

pub fn table_columns(reloid: pg_sys::Oid) -> Vec<Column> {
    Spi::connect(|client| {
        let tab = client.select(
            "SELECT a.attname::text, pg_catalog.format_type(a.atttypid, NULL), \
                    a.attgenerated <> '', a.atttypid \
             FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            None,
            &[reloid.into()],
        )?;
        let mut cols = Vec::new();
        for r in tab {
            cols.push(Column {
                name: r.get::<String>(1)?.unwrap_or_default(),
                type_name: r.get::<String>(2)?.unwrap_or_default(),
                generated: r.get::<bool>(3)?.unwrap_or_default(),
                type_oid: r.get::<pg_sys::Oid>(4)?.unwrap_or(pg_sys::InvalidOid),
            });
        }
        Ok::<_, pgrx::spi::Error>(cols)
    })
    .or_fail("reading pg_attribute")
}

/// Name of the trigger rserv puts on each replicated master table (the seed's name).
pub const CAPTURE_TRIGGER: &str = "_rserv_trigger_t_";
/// Statement-level TRUNCATE capture on master tables.
pub const TRUNCATE_TRIGGER: &str = "_rserv_truncate_t_";
/// Refuses local writes on slave tables.
pub const PROTECT_TRIGGER: &str = "_rserv_protect_t_";
