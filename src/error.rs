//! Errors: every failure is an ERROR with a SQLSTATE, a message that names the object, and a
//! hint that says how to fix it.

use pgrx::prelude::*;

/// Raise an ERROR with a SQLSTATE, a message and a hint.
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
