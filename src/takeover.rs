//! Takeover: a slave becomes the master at one sync point, with no recopy; the old master
//! becomes its slave.
//!
//! `replicate switchover` drives the planned case, each step idempotent so that running the
//! command again finishes (or, with `rserv_unfence`, undoes) one that was interrupted:
//! 1. `rserv_fence` on the master (`fence.rs`): its replicated tables refuse local writes from
//!    the commit on (the slave's protection trigger, with a switchover message); taking the
//!    trigger's lock waits for the writers in flight.
//! 2. A last change set brings the slave every change committed before the fence.
//! 3. [`rserv_promote`] on the slave: its received tables become replicated master tables, and
//!    the old master is registered as its slave, confirmed at a snapshot taken there and then:
//!    the two hold the same rows, and every later write on the new master is after it. The
//!    takeover is recorded (`_rserv_takeover_`): from which master, at which change set of its
//!    numbering, at which sync point of this node's.
//! 4. [`rserv_demote`] on the old master: its tables become received slave tables (still
//!    protected), following the new master from that sync point; the fence goes.
//!
//! Between 3 and 4 only the new master accepts writes; at no point do both. `replicate
//! failover` promotes without steps 1 and 2 (the master is unreachable), and `replicate
//! rejoin` does step 4 later, after sending back what the old master committed meanwhile
//! (`failover.rs`, `rejoin.rs`).

use crate::catalog::{ext_schema, table_info};
use crate::error::{fail, SpiOrFail};
use crate::fence::{fenced, owned_tables as tables};
use crate::security::{definer, own_triggers, require_replicator};
use crate::slave_registry::reconcile_protection;
use crate::sql::first;
use pgrx::prelude::*;

/// A change of roles commits durably whatever `synchronous_commit` says: a node that crashed
/// right after its promotion (or the old master's demotion, a fence, a re-pointing) must not
/// come back in its earlier role while the other nodes moved on (two masters, or none).
pub fn durable() {
    crate::sql::set_local("synchronous_commit", "on");
}

/// What this slave knew of its master when it took over: (server id there, last change set
/// applied, its fingerprint, the master's snapshot of it).
type Position = (Option<i32>, Option<i64>, Option<String>, Option<String>);

fn position(s: &str, old_master: &str) -> Position {
    let row = Spi::connect(|client| {
        let mut out = None;
        for r in client.select(
            &format!(
                "SELECT master = $1::uuid, server, syncid, fingerprint::text, snapshot \
                 FROM {s}._rserv_slave_sync_"
            ),
            None,
            &[old_master.into()],
        )? {
            out = Some((
                r.get::<bool>(1)?.unwrap_or(false),
                (
                    r.get::<i32>(2)?,
                    r.get::<i64>(3)?,
                    r.get::<String>(4)?,
                    r.get::<String>(5)?,
                ),
            ));
        }
        Ok::<_, pgrx::spi::Error>(out)
    })
    .or_fail("reading _rserv_slave_sync_");
    match row {
        Some((true, position)) => position,
        _ => fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: this database is not a slave of master {old_master}"),
            "promote a slave of that master (see rserv_slave_master_id())",
        ),
    }
}

/// The server id to give slave `node` on this master: the one it has, else `wanted` when free,
/// else the lowest free one from 1 up.
pub fn choose_server(s: &str, node: &str, wanted: Option<i32>) -> i32 {
    first::<i32>(
        &format!(
            "SELECT coalesce((SELECT server FROM {s}._rserv_servers_ WHERE node = $1::uuid), \
                    (SELECT $2 WHERE $2 IS NOT NULL AND $2 NOT IN (SELECT server FROM {s}._rserv_servers_)), \
                    (SELECT min(g) FROM pg_catalog.generate_series(1, 1000000) g \
                      WHERE g NOT IN (SELECT server FROM {s}._rserv_servers_)))"
        ),
        &[node.into(), wanted.into()],
        "choosing a server id",
    )
    .unwrap_or(1)
}

/// Register slave `node` as `server`, confirmed at change set `syncid` (confirmed already for
/// another slave in `_rserv_sync_`, whose snapshot it shares) with every table copied: it
/// holds this master's rows as of that snapshot.
pub fn register_at(s: &str, server: i32, node: &str, syncid: i64) {
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_servers_ (server, last_prepare, node) VALUES ($1, 0, $2::uuid) \
             ON CONFLICT (server) DO NOTHING; \
             INSERT INTO {s}._rserv_sync_ (server, syncid, synctime, confirmed, status, minid, maxid, active) \
             SELECT $1, syncid, synctime, now(), 1, minid, maxid, active FROM {s}._rserv_sync_ \
              WHERE syncid = $3 AND status = 1 ORDER BY server LIMIT 1 \
             ON CONFLICT (server, syncid) DO NOTHING; \
             INSERT INTO {s}._rserv_server_tables_ (server, reloid, state, syncid) \
             SELECT $1, reloid, 'ready', $3 FROM {s}._rserv_tables_ ON CONFLICT DO NOTHING"
        ),
        &[server.into(), node.into(), syncid.into()],
    )
    .or_fail("registering the slave at the takeover's sync point");
}

/// Switchover, step 3, on the slave (and `replicate failover`'s promotion): become the master
/// of the tables it receives, and take its old master (`old_master`, its node id) as slave, at
/// a sync point confirmed here and now. For a switchover the caller has made sure this slave
/// holds every change its master committed (the master is fenced and its last change set is
/// applied here); for a failover (`kind` 'failover') the old master is unreachable, and may
/// hold more, which `replicate rejoin` sends back. Records the takeover (`_rserv_takeover_`).
/// Returns the old master's server id here and the sync id it is at (`server`: the id to give
/// it, when free).
#[pg_extern(volatile, security_definer)]
fn rserv_promote(
    old_master: String,
    server: default!(Option<i32>, "NULL"),
    kind: default!(Option<String>, "'switchover'"),
) -> TableIterator<'static, (name!(server, i32), name!(syncid, i64))> {
    let _definer = definer();
    require_replicator("rserv_promote");
    durable();
    let kind = kind.unwrap_or_else(|| "switchover".into());
    if kind != "switchover" && kind != "failover" {
        fail(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("rserv: unknown takeover kind {kind:?}"),
            "'switchover' or 'failover'",
        );
    }
    let s = ext_schema();
    let (old_server, old_syncid, old_fingerprint, old_snapshot) = position(&s, &old_master);
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
            format!(
                "replicate until their initial copies (and indexes) are in, then {}",
                if kind == "failover" {
                    "fail over to another slave, or to this one once the master is back"
                } else {
                    "switch over"
                }
            ),
        );
    }
    let received = tables(&s, "_rserv_slave_tables_", "rserv_promote");
    // (rserv's own triggers only: capture on, protection off; definitions recorded below)
    let own = own_triggers();
    Spi::run(&format!("DELETE FROM {s}._rserv_slave_tables_")).or_fail("unregistering");
    reconcile_protection(&s);
    for (reloid, key) in &received {
        crate::registry::register_promoted(&s, *reloid, key);
    }
    drop(own);
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
    let server = choose_server(&s, &old_master, server);
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_servers_ (server, last_prepare, node) VALUES ($1, 0, $2::uuid) \
             ON CONFLICT (server) DO NOTHING"
        ),
        &[server.into(), old_master.clone().into()],
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
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_takeover_ AS x (kind, old_master, old_server, old_syncid, \
                    old_fingerprint, old_snapshot, server, syncid, at, completed) \
             VALUES ($1, $2::uuid, $3, $4, $5::uuid, $6, $7, $8, now(), NULL) \
             ON CONFLICT (singleton) DO UPDATE SET kind = excluded.kind, old_master = excluded.old_master, \
                 old_server = excluded.old_server, old_syncid = excluded.old_syncid, \
                 old_fingerprint = excluded.old_fingerprint, old_snapshot = excluded.old_snapshot, \
                 server = excluded.server, syncid = excluded.syncid, at = excluded.at, completed = NULL"
        ),
        &[
            kind.into(),
            old_master.into(),
            old_server.into(),
            old_syncid.into(),
            old_fingerprint.into(),
            old_snapshot.into(),
            server.into(),
            syncid.into(),
        ],
    )
    .or_fail("recording the takeover");
    TableIterator::once((server, syncid))
}

/// Switchover, step 4, on the old master (and `replicate rejoin`'s last step): its replicated
/// tables become tables received from `new_master` (its node id), where this database is
/// slave `server`, at change set `syncid` (what [`rserv_promote`] returned): nothing is copied
/// again. The fence goes; the tables stay protected as a slave's. Its own slaves must follow
/// the new master already: `moved` lists their node ids (a failover, or `replicate switchover
/// --other`, re-pointed them); any other is refused. A takeover this node made earlier is
/// forgotten (it is a master no more), so one by failover whose old master has not rejoined
/// refuses the demote ([`refuse_unfinished_failover`]). Returns the tables demoted.
#[pg_extern(volatile, security_definer)]
fn rserv_demote(
    new_master: String,
    server: i32,
    syncid: i64,
    moved: default!(Option<Vec<String>>, "NULL"),
) -> i64 {
    let _definer = definer();
    require_replicator("rserv_demote");
    durable();
    let s = ext_schema();
    if !fenced() {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "rserv: this master is not fenced: writes committed since its last change set would be lost",
            "switch over with replicate switchover (or rejoin with replicate rejoin), which fences the master first",
        );
    }
    refuse_unfinished_failover(&s);
    let others = first::<String>(
        &format!(
            "SELECT string_agg(server::text, ', ' ORDER BY server) FROM {s}._rserv_servers_ \
             WHERE node IS DISTINCT FROM $1::uuid \
               AND (node IS NULL OR node::text <> ALL (coalesce($2::text[], '{{}}')))"
        ),
        &[new_master.clone().into(), moved.into()],
        "listing the slaves",
    );
    if let Some(ids) = others {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: this master has other slaves ({ids}), which would be left without a master"),
            "give each to replicate switchover with --other SLAVEDB (re-pointed to the new master, no copy); after a failover, re-point them with replicate failover NEWMASTER SLAVE; or drop them (replicate --server N drop-slave MASTERDB) and add them to the new master afterwards",
        );
    }
    let replicated = tables(&s, "_rserv_tables_", "rserv_demote");
    // (rserv's own triggers only: capture off, protection on)
    let _own = own_triggers();
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
         DELETE FROM {s}._rserv_sync_; DELETE FROM {s}._rserv_servers_; DELETE FROM {s}._rserv_fence_; \
         DELETE FROM {s}._rserv_takeover_"
    ))
    .or_fail("handing over");
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_slave_sync_ (syncid, synctime, master, server) \
             VALUES ($1, now(), $2::uuid, $3) \
             ON CONFLICT (singleton) DO UPDATE SET syncid = excluded.syncid, synctime = excluded.synctime, \
                 master = excluded.master, server = excluded.server, fingerprint = NULL, \
                 snapshot = NULL, previous_master = NULL, needs_check = false"
        ),
        &[syncid.into(), new_master.into(), server.into()],
    )
    .or_fail("following the new master");
    reconcile_protection(&s);
    replicated.len() as i64
}

/// This node took over by failover and its old master has not rejoined: `_rserv_takeover_` is
/// all that records it (where the old master's later transactions start, that its comeback
/// must be fenced, how it rejoins). Demoting this node would delete it, and the old master
/// would come back writable next to the next master, recognised by nobody. Refused, naming
/// it, until it rejoins or the operator gives it up (`rserv_takeover_done`).
fn refuse_unfinished_failover(s: &str) {
    let old = first::<String>(
        &format!(
            "SELECT old_master::text FROM {s}._rserv_takeover_ WHERE kind = 'failover' AND completed IS NULL"
        ),
        &[],
        "reading _rserv_takeover_",
    );
    if let Some(old) = old {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: this node took over from {old} by failover, and {old} has not rejoined: demoting this node would forget it (where its later transactions start, that it must be fenced when it comes back), and it would come back writable next to the next master"),
            format!("rejoin it first (replicate rejoin THISDB OLDMASTERDB, this node as the master); or, if it is gone for good, give it up on this node: SELECT rserv_takeover_done('{old}'); (what it committed after the takeover is then never looked for)"),
        );
    }
}

/// The takeover that made this node a master, if any (the latest): `kind` 'switchover' or
/// 'failover'; the old master's node id, this node's server id there, the last change set of
/// the old master it applied, with its fingerprint and the old master's snapshot of it; the old
/// master's server id here and the sync point it starts from; `completed` once the old master
/// follows this node (demoted, or rejoined).
#[pg_extern(stable, security_definer)]
#[allow(clippy::type_complexity)]
fn rserv_takeover() -> TableIterator<
    'static,
    (
        name!(kind, String),
        name!(old_master, String),
        name!(old_server, Option<i32>),
        name!(old_syncid, Option<i64>),
        name!(old_fingerprint, Option<String>),
        name!(old_snapshot, Option<String>),
        name!(server, i32),
        name!(syncid, i64),
        name!(at, String),
        name!(completed, Option<String>),
    ),
> {
    let _definer = definer();
    require_replicator("rserv_takeover");
    let s = ext_schema();
    let rows = Spi::connect(|client| {
        client
            .select(
                &format!(
                    "SELECT kind, old_master::text, old_server, old_syncid, old_fingerprint::text, \
                            old_snapshot, server, syncid, at::text, completed::text \
                     FROM {s}._rserv_takeover_"
                ),
                None,
                &[],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                    r.get::<i32>(3)?,
                    r.get::<i64>(4)?,
                    r.get::<String>(5)?,
                    r.get::<String>(6)?,
                    r.get::<i32>(7)?.unwrap_or(0),
                    r.get::<i64>(8)?.unwrap_or(0),
                    r.get::<String>(9)?.unwrap_or_default(),
                    r.get::<String>(10)?,
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .or_fail("reading _rserv_takeover_");
    TableIterator::new(rows)
}

/// The old master `old_master` follows this node now (a switchover's demote, or a rejoin):
/// the takeover is complete. Called by hand, it gives up an old master that is gone for good
/// after a failover: this node may then be demoted (a switchover), and nothing will fence
/// that old master, nor look for what it committed after the takeover, should it come back.
/// Returns false when there was nothing to complete.
#[pg_extern(volatile, security_definer)]
fn rserv_takeover_done(old_master: String) -> bool {
    let _definer = definer();
    require_replicator("rserv_takeover_done");
    durable();
    let s = ext_schema();
    crate::sql::count_rows(
        &format!(
            "UPDATE {s}._rserv_takeover_ SET completed = now() \
             WHERE old_master = $1::uuid AND completed IS NULL"
        ),
        &[old_master.into()],
        "completing the takeover",
    ) > 0
}
