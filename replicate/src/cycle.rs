//! One replication cycle, the seed's `Replicate`: confirm what the slave already has, prepare
//! the next change set on the master, apply it on the slave, confirm it.

use crate::error::{Error, IoContext};
use crate::master;
use crate::pipe::pipe;
use crate::rserv::Rserv;
use crate::slave;
use crate::snapshot::rows;
use crate::table;
use postgres::Client;
use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::slave::Outcome;

#[derive(Debug, Clone, Default)]
pub struct CycleOptions {
    /// Which slave this is, on the master (`_rserv_servers_.server`). None: the id the master
    /// binds the slave database's node id to (`rserv_server_for_node`: the id it already has,
    /// else the lowest free one from 1 up).
    pub server: Option<i32>,
    /// Write the change set to this file first, then apply it (as the seed's `--snapshot`);
    /// without it the change set streams from master to slave in memory.
    pub snapshot: Option<PathBuf>,
    /// Keep the snapshot file after a successful apply (the seed's `--debug`).
    pub keep_snapshot: bool,
    /// Remove log rows no slave needs after confirming.
    pub clean_log: bool,
    /// Create the master's replicated tables the slave lacks, and register them there.
    pub create_tables: bool,
    /// Give the tables `create_tables` made their indexes, foreign keys, triggers and policies
    /// once their copy is in, also in a cycle that does not look for new tables (`replicate run
    /// --create-tables` looks for them twice a minute, and finishes them after every change set).
    pub finish_tables: bool,
    pub verbose: bool,
    /// Ask for change sets that delete every changed identity before loading it (rserv 1.0's
    /// sections), even from a slave that reads UPSERT sections: for a slave not known to hold
    /// exactly its master's rows at the window's start (`check`, `rejoin`, a failover's
    /// comparison), where an identity the master logged as inserted may be there already.
    pub replace_rows: bool,
}

pub struct Endpoints<'a> {
    pub master: &'a mut Client,
    pub master_rs: &'a Rserv,
    pub slave: &'a mut Client,
    pub slave_rs: &'a Rserv,
}

/// A `--verbose` line (the seed's words).
fn say(opts: &CycleOptions, msg: &str) {
    if opts.verbose {
        tracing::info!("{msg}");
    }
}

/// Confirm on the master the change set the slave reports having applied. After a crash
/// between apply and confirm this is what makes the master move on.
fn sync_back(ep: &mut Endpoints, opts: &CycleOptions, server: i32) -> Result<Option<i64>, Error> {
    say(opts, ">>>>>>>>>>>>> Sync SyncID");
    let (id, follows) = slave::sync_state(ep.slave, ep.slave_rs)?;
    match id {
        Some(id) => {
            say(opts, &format!("Last SyncID applied: {id}"));
            // a change set of another master means nothing to this one (the apply then
            // refuses, naming both)
            let here = master::node_id(ep.master, ep.master_rs)?;
            if follows.is_none_or(|m| m.eq_ignore_ascii_case(&here))
                && master::confirm(ep.master, ep.master_rs, server, id)?
            {
                say(opts, "Succeeded");
            }
        }
        None => say(opts, "No SyncID found on the slave"),
    }
    Ok(id)
}

/// What `replicate run` keeps between the cycles of one pair of connections, so that a small
/// cycle costs few round trips.
#[derive(Default)]
pub struct Session {
    /// The slave's node id and table list, and when they were read.
    target: Option<(master::Target, Instant)>,
    /// This session confirmed the slave's last change set itself: no need to ask the slave.
    in_step: bool,
    /// The slave's id on the master, once a cycle found it.
    server: Option<i32>,
    /// When the pair was last found the right way round (see [`crate::guard`]).
    checked: Option<Instant>,
}

impl Session {
    /// The slave's id on the master: the one [`CycleOptions::server`] gave, or the one the
    /// master bound the slave's node id to. None before the first cycle.
    pub fn server(&self) -> Option<i32> {
        self.server
    }
}

/// How long a session trusts the slave's table list: a table registered on the slave meanwhile
/// starts arriving at most this much later.
const TARGET_TTL: Duration = Duration::from_secs(2);

/// Whether the change set may update rows in place (UPSERT sections): the slave's rserv reads
/// them, and the slave is known to hold its master's rows (see `CycleOptions::replace_rows`).
fn in_place(ep: &Endpoints, opts: &CycleOptions) -> bool {
    ep.slave_rs.api >= crate::rserv::Api::V1_1 && !opts.replace_rows
}

/// Who the change set is for: this slave database and the tables it receives.
fn target(
    ep: &mut Endpoints,
    opts: &CycleOptions,
    session: &mut Session,
) -> Result<master::Target, Error> {
    if opts.create_tables {
        let wanted = table::list(ep.master, ep.master_rs)?;
        for name in slave::create_missing(ep.slave, ep.slave_rs, &wanted)? {
            tracing::info!("created and registered table {name} on the slave");
        }
    } else if let Some((t, at)) = &session.target {
        if at.elapsed() < TARGET_TTL
            && opts.server.is_none_or(|s| s == t.server)
            && t.in_place == in_place(ep, opts)
        {
            return Ok(t.clone());
        }
    }
    let node = slave::node_id(ep.slave, ep.slave_rs)?;
    let server = match (opts.server, session.server) {
        (Some(server), _) => server,
        // a database's node id does not change: once per session is enough
        (None, Some(server)) => server,
        (None, None) => {
            let server = server_by_node(ep, &node)?;
            say(
                opts,
                &format!("Slave {node} is server {server} on the master"),
            );
            server
        }
    };
    session.server = Some(server);
    let t = master::Target {
        server,
        slave_node: Some(node),
        tables: Some(slave::tables(ep.slave, ep.slave_rs)?),
        verbose: opts.verbose,
        in_place: in_place(ep, opts),
    };
    master::register(ep.master, ep.master_rs, &t)?;
    // A table the slave asks to receive whole stops asking once that copy is applied: keep
    // reading the list until then, or the copy would be sent again.
    let fresh = t.tables.iter().flatten().any(|(.., fresh)| *fresh);
    session.target = (!fresh).then(|| (t.clone(), Instant::now()));
    Ok(t)
}

/// The id of the slave database whose node id is `node`, when no `--server` names one: the id
/// it is bound to; else a registration of the seed's `prepare` (bound to no database) whose
/// last confirmed change set is the one this slave applied last from this master, which is then
/// bound to it; else a new id (`rserv_server_for_node`: the lowest free one from 1 up).
fn server_by_node(ep: &mut Endpoints, node: &str) -> Result<i32, Error> {
    if let Some(server) = master::bound_server(ep.master, ep.master_rs, node)? {
        return Ok(server);
    }
    if let (Some(applied), Some(follows)) = slave::sync_state(ep.slave, ep.slave_rs)? {
        if follows.eq_ignore_ascii_case(&master::node_id(ep.master, ep.master_rs)?) {
            if let Some(server) =
                master::unbound_server_confirmed_at(ep.master, ep.master_rs, applied)?
            {
                return Ok(server);
            }
        }
    }
    master::server_for_node(ep.master, ep.master_rs, node)
}

/// One cycle: (in a session's first, and every two seconds, the pair checked the right way
/// round: [`crate::guard`])
/// the slave's last change set confirmed on the master, the next one prepared
/// there and applied on the slave, confirmed, and (with [`CycleOptions::clean_log`]) the log
/// cleaned. `session` carries what a caller running many cycles over the same connections
/// keeps between them (a fresh `Session::default()` for a single cycle). `at_snapshot` runs on
/// the master inside the prepare transaction, at the change set's snapshot (see
/// [`master::prepare`]): once the cycle returns, the slave holds exactly that state.
pub fn run(
    ep: &mut Endpoints,
    opts: &CycleOptions,
    session: &mut Session,
    at_snapshot: Option<master::SnapshotHook<'_>>,
) -> Result<Outcome, Error> {
    // again every TARGET_TTL: a session that outlives a switchover notices the flip
    if session.checked.is_none_or(|at| at.elapsed() >= TARGET_TTL) {
        crate::guard::check(ep)?;
        session.checked = Some(Instant::now());
    }
    let target = target(ep, opts, session)?;
    if !session.in_step {
        sync_back(ep, opts, target.server)?;
    }
    // Until this cycle has confirmed its own change set, the next one asks the slave again.
    session.in_step = false;
    say(opts, ">>>>>>>>>>>>> Prepare Snapshot");
    let outcome = match &opts.snapshot {
        Some(path) => via_file(ep, opts, &target, path, at_snapshot)?,
        None => streamed(ep, &target, at_snapshot)?,
    };
    if let Outcome::Applied {
        syncid,
        stats,
        changed,
    } = outcome
    {
        say(
            opts,
            &format!(
                "Snapshot applied: change set {syncid}, {} sections, {} sent, {} written or removed",
                stats.sections,
                rows(stats.rows),
                rows(changed.max(0) as u64)
            ),
        );
        if master::confirm(ep.master, ep.master_rs, target.server, syncid)? {
            say(opts, "Succeeded");
            session.in_step = true;
        }
        if opts.create_tables || opts.finish_tables {
            for name in slave::finish_tables(ep.slave, ep.slave_rs)? {
                tracing::info!(
                    "created the indexes, foreign keys, triggers and policies of table {name} on the slave"
                );
            }
        }
        if opts.clean_log {
            let n = master::clean_log(ep.master, ep.master_rs)?;
            say(
                opts,
                &format!("Deleted {} from the log", rows(n.max(0) as u64)),
            );
        }
    } else if outcome == Outcome::InSync {
        say(opts, "DBases are sync-ed");
        session.in_step = true;
    }
    Ok(outcome)
}

fn via_file(
    ep: &mut Endpoints,
    opts: &CycleOptions,
    target: &master::Target,
    path: &PathBuf,
    at_snapshot: Option<master::SnapshotHook<'_>>,
) -> Result<Outcome, Error> {
    let shown = path.display().to_string();
    let file = File::create(path).io_ctx(format!("creating snapshot file {shown}"))?;
    let mut out = BufWriter::new(file);
    let prepared = master::prepare(ep.master, ep.master_rs, target, &mut out, at_snapshot)?;
    out.flush().io_ctx(format!("writing {shown}"))?;
    out.get_ref()
        .sync_all()
        .io_ctx(format!("syncing {shown}"))?;
    drop(out);
    if prepared.is_none() {
        let _ = std::fs::remove_file(path);
        return Ok(Outcome::InSync);
    }
    say(opts, ">>>>>>>>>>>>> Apply Snapshot");
    let input = BufReader::new(File::open(path).io_ctx(format!("opening {shown}"))?);
    let applied = slave::apply(ep.slave, ep.slave_rs, input)?;
    if matches!(applied, Outcome::Applied { .. }) && !opts.keep_snapshot {
        let _ = std::fs::remove_file(path);
    }
    Ok(applied)
}

fn streamed(
    ep: &mut Endpoints,
    target: &master::Target,
    at_snapshot: Option<master::SnapshotHook<'_>>,
) -> Result<Outcome, Error> {
    let (writer, reader) = pipe(8);
    let (master_client, master_rs) = (&mut *ep.master, ep.master_rs);
    let (prepared, applied) = std::thread::scope(|s| {
        let producer =
            s.spawn(move || master::prepare(master_client, master_rs, target, writer, at_snapshot));
        let applied = slave::apply(ep.slave, ep.slave_rs, reader);
        let prepared = producer
            .join()
            .unwrap_or_else(|_| Err(Error::Failed("the master reader thread panicked".into())));
        (prepared, applied)
    });
    match (prepared, applied) {
        (Ok(None), _) => Ok(Outcome::InSync),
        (Ok(Some(_)), Ok(a)) => Ok(a),
        // The slave stopped reading (e.g. a table missing there): its error is the cause.
        (Err(Error::Io { source, .. }), Err(e))
            if source.kind() == std::io::ErrorKind::BrokenPipe =>
        {
            Err(e)
        }
        (Err(_), Ok(a @ Outcome::Skipped { .. })) => Ok(a),
        (Err(e), _) => Err(e),
        (Ok(Some(_)), Err(e)) => Err(e),
    }
}
