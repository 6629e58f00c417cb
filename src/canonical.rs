//! Canonical text: values are written and read as text the same way on master and slave,
//! whatever the users' own DateStyle, TimeZone, float or bytea settings.

use crate::sql::set_local;
use pgrx::pg_sys;

/// Session settings of every statement that writes or reads change-set text.
pub const CANONICAL_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("TimeZone", "UTC"),
    ("bytea_output", "hex"),
    ("lc_monetary", "C"),
    // with array_nulls off, a NULL array element would be read back as the string 'NULL'
    ("array_nulls", "on"),
    // every XML document is also valid content; the reverse is not
    ("xmloption", "content"),
];

/// Apply [`CANONICAL_SETTINGS`] until the end of the current transaction.
pub fn set_canonical_settings_local() {
    for (name, value) in CANONICAL_SETTINGS {
        set_local(name, value);
    }
}

extern "C" {
    /// utils/bytea.h: BYTEA_OUTPUT_ESCAPE = 0, BYTEA_OUTPUT_HEX = 1
    static mut bytea_output: std::ffi::c_int;
}
const BYTEA_OUTPUT_HEX: std::ffi::c_int = 1;

/// While alive, the backend's output functions format dates, time zones, intervals, floats and
/// bytea in one fixed way. The capture trigger uses this to encode row identities independently
/// of the writer's session settings; it only swaps integers, so it is cheap enough for every row.
pub struct CanonicalOutput {
    date_style: i32,
    date_order: i32,
    interval_style: i32,
    float_digits: i32,
    bytea: i32,
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
                bytea: bytea_output,
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
            bytea_output = BYTEA_OUTPUT_HEX;
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
            bytea_output = self.bytea;
            pg_sys::session_timezone = self.timezone;
        }
    }
}
