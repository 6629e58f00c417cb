//! Switchover: master and slave swap roles at one sync point, with no recopy.
//!
//! `replicate switchover` drives it, each step idempotent so that running the command again
//! finishes (or, with `rserv_unfence`, undoes) one that was interrupted:
//! 1. [`rserv_fence`] on the master: its replicated tables refuse local writes from the commit
//!    on (the slave's protection trigger, with a switchover message); taking the trigger's lock
//!    waits for the writers in flight.
//! 2. A last change set brings the slave every change committed before the fence.
//! 3. [`rserv_promote`] on the slave: its received tables become replicated master tables, and
//!    the old master is registered as its slave, confirmed at a snapshot taken there and then:
//!    the two hold the same rows, and every later write on the new master is after it.
//! 4. [`rserv_demote`] on the old master: its tables become received slave tables (still
//!    protected), following the new master from that sync point; the fence goes.
//!
//! Between 3 and 4 only the new master accepts writes; at no point do both.

use crate::catalog::{ext_schema, table_info};
use crate::error::{fail, SpiOrFail};
use crate::security::{definer, require_replicator, require_table_owner};
use crate::slave_registry::reconcile_protection;
use crate::sql::first;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Is this master fenced by a switchover? (Read by the protection trigger, as any writer.)
pub fn fenced() -> bool {
    let s = ext_schema();
    first::<bool>(
        &format!("SELECT EXISTS (SELECT 1 FROM {s}._rserv_fence_)"),
        &[],
        "reading the switchover fence",
    )
    .unwrap_or(false)
}

/// The tables in `catalog` (`_rserv_tables_` or `_rserv_slave_tables_`) with their identity;
/// the caller must be able to act as each one's owner.
fn tables(s: &str, catalog: &str, func: &str) -> Vec<(pg_sys::Oid, Vec<String>)> {
    let rows = crate::registry::keyed_tables(s, &format!("{catalog} t"));
    for (reloid, _) in &rows {
        let info = table_info(*reloid);
        require_table_owner(info.owner, &info.qualified(), func);
    }
    rows
}

/// Switchover, step 1, on the master: every replicated table refuses local writes from this
/// transaction's commit on ("switchover in progress"), until [`rserv_demote`] makes them slave
/// tables or [`rserv_unfence`] lifts it. `successor`: the node id of the slave taking over.
/// Waits for the writers in flight (run it with a `lock_timeout`). Returns the tables fenced.
#[pg_extern(volatile, security_definer)]
fn rserv_fence(successor: Option<String>) -> i64 {
    let _definer = definer();
    require_replicator("rserv_fence");
    let s = ext_schema();
    let tables = tables(&s, "_rserv_tables_", "rserv_fence");
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_fence_ (successor) VALUES ($1::uuid) \
             ON CONFLICT (singleton) DO UPDATE SET successor = coalesce(excluded.successor, {s}._rserv_fence_.successor)"
        ),
        &[successor.into()],
    )
    .or_fail("fencing");
    reconcile_protection(&s);
    tables.len() as i64
}

/// Lift a switchover's fence (an aborted switchover): the replicated tables accept writes again.
/// Refused once the successor has been promoted (two masters would then accept writes).
#[pg_extern(volatile, security_definer)]
fn rserv_unfence() -> bool {
    let _definer = definer();
    require_replicator("rserv_unfence");
    let s = ext_schema();
    tables(&s, "_rserv_tables_", "rserv_unfence");
    let lifted = crate::sql::count_rows(
        &format!("DELETE FROM {s}._rserv_fence_"),
        &[],
        "lifting the fence",
    ) > 0;
    reconcile_protection(&s);
    lifted
}

/// Switchover, step 3, on the slave: become the master of the tables it receives, and take its
/// old master (`old_master`, its node id) as slave, at a sync point confirmed here and now.
/// The caller has made sure this slave holds every change its master committed (the master is
/// fenced and its last change set is applied here). Returns the old master's server id here
/// and the sync id it is at (`server`: the id to give it, when free).
#[pg_extern(volatile, security_definer)]
fn rserv_promote(
    old_master: String,
    server: default!(Option<i32>, "NULL"),
) -> TableIterator<'static, (name!(server, i32), name!(syncid, i64))> {
    let _definer = definer();
    require_replicator("rserv_promote");
    let s = ext_schema();
    let follows = first::<bool>(
        &format!("SELECT master = $1::uuid FROM {s}._rserv_slave_sync_"),
        &[old_master.clone().into()],
        "reading _rserv_slave_sync_",
    );
    if follows != Some(true) {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: this database is not a slave of master {old_master}"),
            "promote a slave of that master (see rserv_slave_master_id())",
        );
    }
    let unfinished = first::<String>(
        &format!(
            "SELECT string_agg(x.t, ', ') FROM ( \
               SELECT reloid::pg_catalog.regclass::text AS t FROM {s}._rserv_slave_tables_ WHERE needs_copy \
               UNION SELECT reloid::pg_catalog.regclass::text FROM {s}._rserv_slave_pending_) x"
        ),
        &[],
        "checking the received tables",
    );
    if let Some(t) = unfinished {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: tables {t} are not fully copied to this slave yet"),
            "replicate until their initial copies (and indexes) are in, then switch over",
        );
    }
    let received = tables(&s, "_rserv_slave_tables_", "rserv_promote");
    Spi::run(&format!("DELETE FROM {s}._rserv_slave_tables_")).or_fail("unregistering");
    reconcile_protection(&s);
    for (reloid, key) in &received {
        crate::registry::register_promoted(&s, *reloid, key);
    }
    // sequences received on their own are replicated on their own
    Spi::run(&format!(
        "INSERT INTO {s}._rserv_sequences_ (seqoid) SELECT seqoid FROM {s}._rserv_slave_sequences_ \
         ON CONFLICT (seqoid) DO NOTHING; DELETE FROM {s}._rserv_slave_sequences_"
    ))
    .or_fail("moving the sequences");
    Spi::run(&format!("DELETE FROM {s}._rserv_slave_sync_")).or_fail("forgetting the master");
    // the old master, as slave: its server id here, confirmed at this transaction's snapshot
    // (every write on this node after the commit is after it) with every table copied
    // (`server` when given and free: the id the slave had, so the same replicate command line,
    // with the two sides swapped, replicates the other way)
    let server = first::<i32>(
        &format!(
            "SELECT coalesce((SELECT server FROM {s}._rserv_servers_ WHERE node = $1::uuid), \
                    (SELECT $2 WHERE $2 IS NOT NULL AND $2 NOT IN (SELECT server FROM {s}._rserv_servers_)), \
                    (SELECT min(g) FROM pg_catalog.generate_series(1, 1000000) g \
                      WHERE g NOT IN (SELECT server FROM {s}._rserv_servers_)))"
        ),
        &[old_master.clone().into(), server.into()],
        "choosing a server id",
    )
    .unwrap_or(1);
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_servers_ (server, last_prepare, node) VALUES ($1, 0, $2::uuid) \
             ON CONFLICT (server) DO NOTHING"
        ),
        &[server.into(), old_master.into()],
    )
    .or_fail("registering the old master as slave");
    let syncid = first::<i64>(
        &format!(
            "WITH snap AS (SELECT pg_catalog.txid_current_snapshot() AS x), \
                  id AS (SELECT pg_catalog.nextval('{s}._rserv_sync_seq_') AS v) \
             INSERT INTO {s}._rserv_sync_ (server, syncid, synctime, confirmed, status, minid, maxid, active) \
             SELECT $1, id.v, now(), now(), 1, pg_catalog.txid_snapshot_xmin(snap.x), \
                    pg_catalog.txid_snapshot_xmax(snap.x), \
                    coalesce(ARRAY(SELECT pg_catalog.txid_snapshot_xip(snap.x)), '{{}}') \
               FROM snap, id RETURNING syncid"
        ),
        &[server.into()],
        "recording the sync point",
    )
    .unwrap_or(0);
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_server_tables_ (server, reloid, state, syncid) \
             SELECT $1, reloid, 'ready', $2 FROM {s}._rserv_tables_ ON CONFLICT DO NOTHING"
        ),
        &[server.into(), syncid.into()],
    )
    .or_fail("recording the old master's copies");
    TableIterator::once((server, syncid))
}

/// Switchover, step 4, on the old master: its replicated tables become tables received from
/// `new_master` (its node id), where this database is slave `server`, at change set `syncid`
/// (what [`rserv_promote`] returned): nothing is copied again. The fence goes; the tables stay
/// protected as a slave's. Returns the tables demoted.
#[pg_extern(volatile, security_definer)]
fn rserv_demote(new_master: String, server: i32, syncid: i64) -> i64 {
    let _definer = definer();
    require_replicator("rserv_demote");
    let s = ext_schema();
    if !fenced() {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "rserv: this master is not fenced: writes committed since its last change set would be lost",
            "switch over with replicate switchover, which fences the master first",
        );
    }
    let others = first::<String>(
        &format!(
            "SELECT string_agg(server::text, ', ' ORDER BY server) FROM {s}._rserv_servers_ \
             WHERE node IS DISTINCT FROM $1::uuid"
        ),
        &[new_master.clone().into()],
        "listing the slaves",
    );
    if let Some(ids) = others {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: this master has other slaves ({ids}), which would be left without a master"),
            "drop them first (replicate --server N drop-slave MASTERDB), and add them to the new master after the switchover",
        );
    }
    let replicated = tables(&s, "_rserv_tables_", "rserv_demote");
    for (reloid, key) in &replicated {
        // received first: the DDL guard run by each DROP TRIGGER below keeps its protection
        Spi::run_with_args(
            &format!(
                "INSERT INTO {s}._rserv_slave_tables_ (reloid, tname, key, needs_copy) \
                 VALUES ($1, $2, $3::name[], false) ON CONFLICT (reloid) DO UPDATE SET needs_copy = false"
            ),
            &[
                (*reloid).into(),
                table_info(*reloid).qualified().into(),
                key.clone().into(),
            ],
        )
        .or_fail("registering the slave table");
        crate::registry::unregister(&s, *reloid);
        let table = table_info(*reloid).qualified();
        crate::slave_registry::protect(&s, *reloid, &table);
    }
    Spi::run(&format!(
        "INSERT INTO {s}._rserv_slave_sequences_ (seqoid) SELECT seqoid FROM {s}._rserv_sequences_ \
         ON CONFLICT (seqoid) DO NOTHING; DELETE FROM {s}._rserv_sequences_; \
         DELETE FROM {s}._rserv_sync_; DELETE FROM {s}._rserv_servers_; DELETE FROM {s}._rserv_fence_"
    ))
    .or_fail("handing over");
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_slave_sync_ (syncid, synctime, master, server) \
             VALUES ($1, now(), $2::uuid, $3) \
             ON CONFLICT (singleton) DO UPDATE SET syncid = excluded.syncid, synctime = excluded.synctime, \
                 master = excluded.master, server = excluded.server, fingerprint = NULL"
        ),
        &[syncid.into(), new_master.into(), server.into()],
    )
    .or_fail("following the new master");
    reconcile_protection(&s);
    replicated.len() as i64
}
