//! Failover: the master is unreachable; `replicate failover` promotes one of its slaves
//! (`rserv_promote` with kind 'failover', `takeover.rs`) and re-points the others to it.
//!
//! A slave re-pointed to the new master starts, like the old master itself, from the sync
//! point the takeover recorded (`_rserv_takeover_.syncid`): registered there confirmed at
//! that snapshot, with every table copied ([`rserv_adopt_slave`]), and following the new
//! master from that change set ([`rserv_repoint`]). Everything the new master changed since
//! then reaches it with its next change set. A slave that was behind the new master (it
//! lacks some of the old master's last transactions) is then compared and repaired by
//! `replicate check --repair`; one that is ahead (it holds transactions the new master never
//! received) is refused by `replicate`, which compares the slaves' positions
//! ([`rserv_slave_position`]) before anything changes.
//!
//! Until that comparison finds both equal, the slave must not simply follow its new master:
//! it would for good lack what it missed, and nothing would say so. `rserv_repoint` records
//! that it awaits the comparison (`_rserv_slave_sync_.needs_check`), and `rserv_apply_begin`
//! refuses change sets meanwhile ([`refuse_while_unchecked`]), except in the session that
//! compares (`replicate check`, which `replicate failover` runs): it says so
//! ([`rserv_slave_check_begin`]), and clears the mark once both sides are equal
//! ([`rserv_slave_check_end`]).

use crate::catalog::ext_schema;
use crate::error::{fail, SpiOrFail};
use crate::security::{definer, require_replicator};
use crate::sql::first;
use crate::takeover::{choose_server, register_at};
use pgrx::prelude::*;

/// Where this slave stands: the master it follows, the last change set it applied from it
/// (sync id, fingerprint, the master's snapshot of it), its server id there, and the master it
/// followed before a failover re-pointed it. No row before its first change set.
#[pg_extern(stable, security_definer)]
#[allow(clippy::type_complexity)]
fn rserv_slave_position() -> TableIterator<
    'static,
    (
        name!(master, String),
        name!(syncid, i64),
        name!(server, Option<i32>),
        name!(fingerprint, Option<String>),
        name!(snapshot, Option<String>),
        name!(previous_master, Option<String>),
    ),
> {
    let _definer = definer();
    require_replicator("rserv_slave_position");
    let s = ext_schema();
    let rows = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT master::text, syncid, server, fingerprint::text, snapshot, previous_master::text \
                     FROM {s}._rserv_slave_sync_"
                ),
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<i64>(2)?.unwrap_or(0),
                    r.get::<i32>(3)?,
                    r.get::<String>(4)?,
                    r.get::<String>(5)?,
                    r.get::<String>(6)?,
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("reading _rserv_slave_sync_");
    TableIterator::new(rows)
}

/// On the new master after a failover: take slave `node` (another slave of the old master,
/// which the caller found at or behind this node's takeover point) as slave `server` (when
/// free; else the lowest free id), confirmed at the takeover's sync point with every table
/// copied. Refused once the changes since that point are no longer all kept here (every slave
/// registered at it has moved on and the log was cleaned). Returns the server id and the sync
/// id the slave starts from (the one it has, when it is registered already).
#[pg_extern(volatile, security_definer)]
fn rserv_adopt_slave(
    node: String,
    server: default!(Option<i32>, "NULL"),
) -> TableIterator<'static, (name!(server, i32), name!(syncid, i64))> {
    let _definer = definer();
    require_replicator("rserv_adopt_slave");
    crate::takeover::durable();
    let s = ext_schema();
    // one adoption at a time (see rserv_register_slave)
    Spi::run(&format!(
        "LOCK TABLE {s}._rserv_servers_ IN SHARE UPDATE EXCLUSIVE MODE"
    ))
    .or_fail("locking _rserv_servers_");
    let Some(point) = first::<i64>(
        &format!("SELECT syncid FROM {s}._rserv_takeover_"),
        &[],
        "reading _rserv_takeover_",
    ) else {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "rserv: this node has not taken over from a master: there is no sync point to re-point a slave to",
            "promote a slave first: replicate failover SLAVEDB...",
        )
    };
    let registered = Spi::connect(|client| {
        let mut out = None;
        for r in client.select(
            &format!(
                "SELECT v.server, (SELECT max(y.syncid) FROM {s}._rserv_sync_ y \
                                    WHERE y.server = v.server AND y.status > 0) \
                 FROM {s}._rserv_servers_ v WHERE v.node = $1::uuid"
            ),
            None,
            &[node.clone().into()],
        )? {
            out = Some((r.get::<i32>(1)?.unwrap_or(0), r.get::<i64>(2)?));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading _rserv_servers_");
    if let Some((server, confirmed)) = registered {
        return TableIterator::once((server, confirmed.unwrap_or(point)));
    }
    let kept = first::<bool>(
        &format!("SELECT EXISTS (SELECT 1 FROM {s}._rserv_sync_ WHERE syncid = $1 AND status = 1)"),
        &[point.into()],
        "checking the log since the takeover",
    )
    .unwrap_or(false);
    if !kept {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: the changes since the takeover (change set {point}) are no longer all kept here: every slave registered there has moved on"),
            "have the slave copied afresh: SELECT rserv_slave_resync(); on it, DELETE FROM _rserv_slave_sync_ there, then replicate from this master",
        );
    }
    let server = choose_server(&s, &node, server);
    register_at(&s, server, &node, point);
    TableIterator::once((server, point))
}

/// On another slave of a failed master: follow `new_master` (its node id), where this
/// database is slave `server`, from change set `syncid` (what [`rserv_adopt_slave`] returned
/// there). It must follow `old_master` now; following the new master already (a re-run) is a
/// no-op. Nothing is copied: the new master's next change set brings what it changed since.
/// `behind`: it lacks some of the old master's transactions that the new master holds (or the
/// caller cannot tell): no change set applies until a comparison with the new master finds
/// both equal (see the module's comment). Returns false when it followed the new master
/// already.
#[pg_extern(volatile, security_definer)]
fn rserv_repoint(
    new_master: String,
    server: i32,
    syncid: i64,
    old_master: String,
    behind: default!(bool, "true"),
) -> bool {
    let _definer = definer();
    require_replicator("rserv_repoint");
    crate::takeover::durable();
    let s = ext_schema();
    Spi::run(&format!(
        "LOCK TABLE {s}._rserv_slave_sync_ IN EXCLUSIVE MODE"
    ))
    .or_fail("locking _rserv_slave_sync_");
    let follows = first::<String>(
        &format!(
            "SELECT CASE WHEN master = $1::uuid THEN 'new' WHEN master = $2::uuid THEN 'old' ELSE master::text END \
             FROM {s}._rserv_slave_sync_"
        ),
        &[new_master.clone().into(), old_master.clone().into()],
        "reading _rserv_slave_sync_",
    );
    match follows.as_deref() {
        Some("new") => return false,
        Some("old") => {}
        Some(other) => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: this slave follows master {other}, not the failed master {old_master}"),
            "re-point only slaves of the master that failed",
        ),
        None => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "rserv: this database has applied no change set: it follows no master",
            "replicate it from the new master like any new slave",
        ),
    }
    Spi::run_with_args(
        &format!(
            "UPDATE {s}._rserv_slave_sync_ SET syncid = $1, synctime = now(), master = $2::uuid, \
                    server = $3, fingerprint = NULL, snapshot = NULL, previous_master = $4::uuid, \
                    needs_check = $5"
        ),
        &[
            syncid.into(),
            new_master.into(),
            server.into(),
            old_master.into(),
            behind.into(),
        ],
    )
    .or_fail("following the new master");
    true
}

thread_local! {
    /// This session compares the slave with its master (`replicate check`): it may apply
    /// change sets while the slave awaits that comparison.
    static CHECKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Does this slave await a comparison with its master (a failover re-pointed it while it was
/// behind)?
fn needs_check(s: &str) -> bool {
    first::<bool>(
        &format!("SELECT needs_check FROM {s}._rserv_slave_sync_"),
        &[],
        "reading _rserv_slave_sync_",
    )
    .unwrap_or(false)
}

/// From `rserv_apply_begin`: no change set applies to a slave that awaits its comparison,
/// except in the session that compares.
pub fn refuse_while_unchecked(s: &str) {
    if CHECKING.with(|c| c.get()) || !needs_check(s) {
        return;
    }
    fail(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "rserv: a failover re-pointed this slave to its new master while it lacked some of the old master's last transactions, and it has not been compared with the new master since: applying change sets is refused until it is (it would follow the new master for good without them)",
        "run replicate failover again (with the new master and this slave), or replicate check --repair from the new master to this slave",
    );
}

/// This session is about to compare this slave with its master (`replicate check`): it may
/// apply change sets (the comparison's cycles) while the slave awaits the comparison, until
/// [`rserv_slave_check_end`]. Returns whether the slave awaits one.
#[pg_extern(volatile, security_definer)]
fn rserv_slave_check_begin() -> bool {
    let _definer = definer();
    require_replicator("rserv_slave_check_begin");
    CHECKING.with(|c| c.set(true));
    needs_check(&ext_schema())
}

/// The comparison this session began ([`rserv_slave_check_begin`]) is over; `equal`: it found
/// the slave equal to its master (at the change set it applied last, this session having been
/// the only one allowed to apply), which ends the slave's wait for it. Returns whether the slave
/// still awaits a comparison.
#[pg_extern(volatile, security_definer)]
fn rserv_slave_check_end(equal: bool) -> bool {
    let _definer = definer();
    require_replicator("rserv_slave_check_end");
    let s = ext_schema();
    let began = CHECKING.with(|c| c.replace(false));
    if equal && began {
        Spi::run(&format!(
            "UPDATE {s}._rserv_slave_sync_ SET needs_check = false WHERE needs_check"
        ))
        .or_fail("recording the comparison");
    }
    needs_check(&s)
}
