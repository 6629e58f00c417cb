//! What a master knows of its slaves: their registration (one server id per slave database),
//! their confirmed progress (MasterSync), and how to forget one.

use crate::catalog::ext_schema;
use crate::error::{fail, SpiOrFail};
use crate::security::{definer, require_replicator};
use crate::sql::{count_rows, first};
use pgrx::prelude::*;

/// Register slave `server`, the database whose rserv_node_id() is `slave_node`. Must commit
/// before that slave's first change set is prepared: log clean-up then keeps every row the
/// slave may still need (it keeps the whole log while a registered slave has confirmed
/// nothing). Returns false if it was registered already; an id bound to another slave database
/// is refused.
#[pg_extern(volatile, security_definer)]
fn rserv_register_slave(server: i32, slave_node: Option<String>) -> bool {
    let _definer = definer();
    require_replicator("rserv_register_slave");
    let s = ext_schema();
    if let Some(node) = &slave_node {
        // two registrations at once must not both pass (a lock that conflicts with itself, not
        // with the row updates of prepares, which may stream an initial copy for minutes)
        Spi::run(&format!(
            "LOCK TABLE {s}._rserv_servers_ IN SHARE UPDATE EXCLUSIVE MODE"
        ))
        .or_fail("locking _rserv_servers_");
        require_one_id(&s, server, node);
    }
    let inserted = count_rows(
        &format!(
            "INSERT INTO {s}._rserv_servers_ (server, last_prepare, node) VALUES ($1, 0, $2::uuid) \
             ON CONFLICT (server) DO NOTHING"
        ),
        &[server.into(), slave_node.clone().into()],
        "registering the slave",
    ) > 0;
    if inserted {
        return true;
    }
    let bound = first::<String>(
        &format!("SELECT node::text FROM {s}._rserv_servers_ WHERE server = $1"),
        &[server.into()],
        "reading the slave's registration",
    );
    match (bound, &slave_node) {
        (Some(bound), Some(node)) => require_same_node(server, &bound, node),
        (None, Some(_)) => {
            Spi::run_with_args(
                &format!("UPDATE {s}._rserv_servers_ SET node = $2::uuid WHERE server = $1 AND node IS NULL"),
                &[server.into(), slave_node.into()],
            )
            .or_fail("binding the slave's node");
        }
        _ => {}
    }
    false
}

/// The server id of the slave database whose rserv_node_id() is `slave_node`: the one it is
/// bound to, or (registering it, in this transaction) the lowest unused id from 1 up. Lets
/// `replicate` identify a slave by its node id when no `--server` is given.
#[pg_extern(volatile, security_definer)]
fn rserv_server_for_node(slave_node: &str) -> i32 {
    let _definer = definer();
    require_replicator("rserv_server_for_node");
    let s = ext_schema();
    // two slaves asking at once must not both take the same free id (see rserv_register_slave)
    Spi::run(&format!(
        "LOCK TABLE {s}._rserv_servers_ IN SHARE UPDATE EXCLUSIVE MODE"
    ))
    .or_fail("locking _rserv_servers_");
    if let Some(server) = first::<i32>(
        &format!(
            "SELECT server FROM {s}._rserv_servers_ WHERE node = $1::uuid ORDER BY server LIMIT 1"
        ),
        &[slave_node.into()],
        "looking up the slave's id",
    ) {
        return server;
    }
    first::<i32>(
        &format!(
            "INSERT INTO {s}._rserv_servers_ (server, last_prepare, node) \
             SELECT min(g), 0, $1::uuid FROM generate_series(1, (SELECT coalesce(max(server), 0) + 1 \
                                                                FROM {s}._rserv_servers_)) AS g \
              WHERE g NOT IN (SELECT server FROM {s}._rserv_servers_) \
             RETURNING server"
        ),
        &[slave_node.into()],
        "registering the slave",
    )
    .unwrap_or(0)
}

/// A slave database has one server id: under two, its change sets would come from two
/// independent sequences of snapshots, and one could take it back in time.
pub fn require_one_id(s: &str, server: i32, node: &str) {
    let other = crate::sql::kept_first::<i32>(
        &format!(
            "SELECT server FROM {s}._rserv_servers_ WHERE node = $1::uuid AND server <> $2 \
             ORDER BY server LIMIT 1"
        ),
        &[node.into(), server.into()],
        "looking up the slave's id",
    );
    if let Some(other) = other {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: this slave database (node {node}) is slave {other} of this master, not {server}"),
            format!(
                "replicate it as --server {other} (or without --server); to give it another id, first drop the old one on the master: SELECT rserv_drop_server({other})"
            ),
        );
    }
}

/// A server id belongs to one slave database: a second one using it would make both miss
/// changes (the original rserv's bug), so it is refused.
pub fn require_same_node(server: i32, bound: &str, node: &str) {
    let same = crate::sql::kept_first::<bool>(
        "SELECT $1::uuid = $2::uuid",
        &[bound.into(), node.into()],
        "comparing nodes",
    )
    .unwrap_or(false);
    if !same {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("rserv: server id {server} belongs to another slave database (node {bound})"),
            "give each slave its own id (replicate --server N); sharing one makes both miss changes",
        );
    }
}

/// Confirm that slave `server` applied change set `syncid` (the seed's MasterSync). The next
/// prepare for that server starts from this snapshot. Returns false if there is no such
/// prepared change set (already confirmed, superseded, or never prepared).
#[pg_extern(volatile, security_definer)]
fn rserv_confirm(server: i32, syncid: i64) -> bool {
    let _definer = definer();
    require_replicator("rserv_confirm");
    // SAFETY: reading backend transaction state
    if !unsafe { pg_sys::IsTransactionBlock() } {
        // A confirm in a transaction of its own commits without waiting for the disk (one
        // flush less per cycle): one lost in a crash leaves the master where it was before it,
        // a state replicate resolves from the slave's own durable record before a session's
        // first prepare (cycle.rs `sync_back`); anything durable committed after it (a
        // clean-up of the log) flushes it too, the WAL being written in order.
        crate::sql::set_local("synchronous_commit", "off");
    }
    let s = ext_schema();
    let status = crate::sql::kept_first::<i32>(
        &format!(
            "SELECT status FROM {s}._rserv_sync_ WHERE server = $1 AND syncid = $2 FOR UPDATE"
        ),
        &[server.into(), syncid.into()],
        "reading _rserv_sync_",
    );
    match status {
        None => {
            require_known_history(&s, server, syncid);
            // Nothing to do: never prepared for this server, already confirmed, or superseded.
            false
        }
        Some(st) if st > 0 => false,
        Some(_) => {
            crate::sql::run(
                &format!(
                    "UPDATE {s}._rserv_sync_ SET status = 1, confirmed = now() WHERE server = $1 AND syncid = $2"
                ),
                &[server.into(), syncid.into()],
                "confirming the sync",
            );
            crate::sql::run(
                &format!("DELETE FROM {s}._rserv_sync_ WHERE server = $1 AND syncid < $2"),
                &[server.into(), syncid.into()],
                "removing superseded syncs",
            );
            // Initial copies carried by this change set (or an earlier one) are done.
            crate::sql::run(
                &format!(
                    "UPDATE {s}._rserv_server_tables_ SET state = 'ready' \
                     WHERE server = $1 AND state = 'copying' AND syncid <= $2"
                ),
                &[server.into(), syncid.into()],
                "marking initial copies done",
            );
            true
        }
    }
}

/// A slave reports change set `syncid` applied, which this master has no record of. Below
/// the server's last confirmed change set that is normal (superseded); above it, or beyond
/// every sync id this master ever issued, the master has lost change sets it prepared (it was
/// restored from a backup, or failed over to a standby that missed transactions): its next
/// sync ids would repeat ids the slave has, and the slave would hold changes the master no
/// longer has. Refused, until the slave is copied afresh.
fn require_known_history(s: &str, server: i32, syncid: i64) {
    let lost = first::<bool>(
        &format!(
            "SELECT $2 > coalesce((SELECT max(syncid) FROM {s}._rserv_sync_ WHERE server = $1 AND status > 0), $2) \
                 OR $2 > (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {s}._rserv_sync_seq_)"
        ),
        &[server.into(), syncid.into()],
        "checking the slave's change set",
    )
    .unwrap_or(false);
    if lost {
        fail(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "rserv: slave {server} has applied change set {syncid}, which this master has no record of: this master lost change sets it had prepared (was it restored from a backup, or failed over to a standby that missed transactions?), and the slave may hold changes the master no longer has"
            ),
            "copy the slave afresh from this master: SELECT rserv_slave_resync(); on the slave, then replicate again",
        );
    }
}

/// Forget slave `server`: its registration and its change sets. Log clean-up stops waiting for
/// it. Returns false if it was not registered.
#[pg_extern(volatile, security_definer)]
fn rserv_drop_server(server: i32) -> bool {
    let _definer = definer();
    require_replicator("rserv_drop_server");
    let s = ext_schema();
    Spi::run_with_args(
        &format!("DELETE FROM {s}._rserv_sync_ WHERE server = $1"),
        &[server.into()],
    )
    .or_fail("deleting the server's syncs");
    count_rows(
        &format!("DELETE FROM {s}._rserv_servers_ WHERE server = $1"),
        &[server.into()],
        "deleting the server",
    ) > 0
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn confirm_of_an_unknown_change_set_is_false() {
        // a sync id this master issued (to another slave, say) but never prepared for server 0
        Spi::run("SELECT nextval('_rserv_sync_seq_') FROM generate_series(1, 50)").unwrap();
        assert_eq!(
            Spi::get_one::<bool>("SELECT rserv_confirm(0, 42)").unwrap(),
            Some(false)
        );
    }

    #[pg_test(
        error = "rserv: slave 0 has applied change set 99, which this master has no record of: this master lost change sets it had prepared (was it restored from a backup, or failed over to a standby that missed transactions?), and the slave may hold changes the master no longer has"
    )]
    fn confirm_beyond_every_issued_sync_id_is_refused() {
        Spi::run("SELECT rserv_confirm(0, 99)").unwrap();
    }

    #[pg_test]
    fn registering_twice_is_false_and_another_node_is_refused() {
        let node = "11111111-2222-3333-4444-555555555555";
        assert_eq!(
            Spi::get_one::<bool>(&format!("SELECT rserv_register_slave(1, '{node}')")).unwrap(),
            Some(true)
        );
        assert_eq!(
            Spi::get_one::<bool>(&format!("SELECT rserv_register_slave(1, '{node}')")).unwrap(),
            Some(false)
        );
    }

    #[pg_test]
    fn a_node_gets_the_lowest_free_id_once() {
        Spi::run("SELECT rserv_register_slave(1, '11111111-2222-3333-4444-555555555555')").unwrap();
        let id = |n: &str| {
            Spi::get_one::<i32>(&format!("SELECT rserv_server_for_node('{n}')"))
                .unwrap()
                .unwrap()
        };
        assert_eq!(id("11111111-2222-3333-4444-555555555555"), 1);
        assert_eq!(id("22222222-2222-3333-4444-555555555555"), 2);
        assert_eq!(id("33333333-2222-3333-4444-555555555555"), 3);
        assert_eq!(id("22222222-2222-3333-4444-555555555555"), 2);
    }

    #[pg_test(
        error = "rserv: server id 1 belongs to another slave database (node 11111111-2222-3333-4444-555555555555)"
    )]
    fn another_node_is_refused() {
        Spi::run(
            "SELECT rserv_register_slave(1, '11111111-2222-3333-4444-555555555555');
             SELECT rserv_register_slave(1, '99999999-2222-3333-4444-555555555555');",
        )
        .unwrap();
    }
}
