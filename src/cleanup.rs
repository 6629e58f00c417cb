//! Log clean-up (the seed's CleanLog): remove log rows no slave needs any more.
//!
//! The horizon is the oldest xmin of the snapshots registered slaves confirmed: a row logged by
//! a transaction older than that is visible to every slave's next window start. A slave that
//! has confirmed nothing yet holds the whole log. Slaves are registered in a transaction of
//! their own before their first prepare (`rserv_register_slave`), so a slave whose first change
//! set is still being prepared is already counted here.

use crate::catalog::ext_schema;
use crate::error::SpiOrFail;
use crate::security::{definer, require_replicator};
use crate::sql::first;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Remove log rows no slave needs any more (the seed's CleanLog): those written by
/// transactions every registered slave's confirmed snapshot already sees. While any registered
/// slave has never confirmed a sync, nothing is removed. Returns the number of rows removed.
#[pg_extern(volatile, security_definer)]
fn rserv_clean_log() -> i64 {
    let _definer = definer();
    require_replicator("rserv_clean_log");
    let s = ext_schema();
    relax_log(&s);
    let horizon = Spi::connect(|client| {
        let tab = client.select(
            &format!(
                "SELECT count(*) FILTER (WHERE c.minid IS NULL), min(c.minid) \
                 FROM {s}._rserv_servers_ v LEFT JOIN LATERAL \
                   (SELECT minid FROM {s}._rserv_sync_ y WHERE y.server = v.server AND y.status > 0 \
                    ORDER BY syncid DESC LIMIT 1) c ON true"
            ),
            None,
            &[],
        )?;
        let mut out = (0i64, None);
        for r in tab {
            out = (r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?);
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("computing the clean-up horizon");
    if let (0, Some(h)) = horizon {
        // recorded DDL goes with the log rows of its transaction (few rows: no TRUNCATE)
        Spi::run_with_args(
            &format!("DELETE FROM {s}._rserv_ddl_ WHERE logid < $1"),
            &[h.into()],
        )
        .or_fail("deleting recorded DDL");
    }
    match horizon {
        (0, Some(h)) => match truncate_log(&s, h) {
            Some(n) => n,
            None => Spi::get_one_with_args::<i64>(
                &format!(
                    "WITH d AS (DELETE FROM {s}._rserv_log_ WHERE logid < $1 RETURNING 1) SELECT count(*) FROM d"
                ),
                &[h.into()],
            )
            .or_fail("deleting log rows")
            .unwrap_or(0),
        },
        (0, None) => {
            notice!("rserv: no slave is registered; the log is kept");
            0
        }
        (n, _) => {
            notice!("rserv: {} registered slave(s) never confirmed a sync; the log is kept", n);
            0
        }
    }
}

/// Clean-up of a log that holds nothing any slave needs (every row below `horizon`): TRUNCATE
/// it instead of deleting row by row, which leaves nothing for VACUUM. Returns None (the caller
/// deletes instead) unless the log can be had to ourselves at once: a writer still inserting
/// or a prepare reading it holds a lock, and clean-up never waits for one.
fn truncate_log(s: &str, horizon: i64) -> Option<i64> {
    // SAFETY: reading backend transaction state
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        return None; // the check below needs a snapshot taken after the lock
    }
    let log = first::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[format!("{s}._rserv_log_").into()],
        "finding the log",
    )?;
    // SAFETY: a conditional lock request on an existing relation; held until transaction end
    let locked = unsafe {
        pg_sys::ConditionalLockRelationOid(log, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE)
    };
    if !locked {
        return None;
    }
    // With the lock no transaction that wrote to the log is still running, so a snapshot
    // taken now sees every row there is; a read-write SPI query takes a fresh one.
    // SAFETY: assigns this transaction an xid (TRUNCATE would anyway)
    unsafe { pg_sys::GetCurrentTransactionId() };
    let counts = Spi::connect_mut(|client| {
        let tab = client.update(
            &format!(
                "SELECT count(*) FILTER (WHERE logid < $1), count(*) FILTER (WHERE logid >= $1) \
                 FROM {s}._rserv_log_"
            ),
            None,
            &[horizon.into()],
        )?;
        let mut out = (0i64, 1i64);
        for r in tab {
            out = (r.get::<i64>(1)?.unwrap_or(0), r.get::<i64>(2)?.unwrap_or(1));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("counting log rows");
    if counts.1 != 0 {
        return None; // some rows are still needed: delete the others one by one
    }
    Spi::run(&format!("TRUNCATE {s}._rserv_log_")).or_fail("truncating the log");
    Some(counts.0)
}

/// A log made by rserv 1.0 has `deleted NOT NULL`, so inserts cannot be logged as such (NULL):
/// the capture logs them as updates until the constraint is gone (`capture::Logged`). It goes
/// here, the first time clean-up finds the log idle (it never waits for it). `ALTER EXTENSION
/// UPDATE` cannot drop it: writers in flight hold the log and lock their tables, which the
/// update script then also locks, and the two deadlock.
fn relax_log(s: &str) {
    let Some((log, strict)) = Spi::connect(|client| {
        let tab = client.select(
            "SELECT a.attrelid, a.attnotnull FROM pg_catalog.pg_attribute a \
             WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attname = 'deleted'",
            None,
            &[format!("{s}._rserv_log_").into()],
        )?;
        let mut out = None;
        for r in tab {
            out = Some((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<bool>(2)?.unwrap_or(false),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading the log's definition") else {
        return;
    };
    // SAFETY: a conditional lock request on an existing relation; held until transaction end
    if strict
        && unsafe {
            pg_sys::ConditionalLockRelationOid(log, pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE)
        }
    {
        Spi::run(&format!(
            "ALTER TABLE {s}._rserv_log_ ALTER COLUMN deleted DROP NOT NULL"
        ))
        .or_fail("letting the log record inserts");
    }
}
