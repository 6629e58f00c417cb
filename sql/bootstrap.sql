-- rserv catalog. Runs first in CREATE EXTENSION, with search_path set to the extension's
-- schema, so every name below lands there. The seed's names are kept; types are modern.

-- This node's identity: a slave remembers which master it follows and refuses another.
CREATE TABLE _rserv_node_ (
    node_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    created  timestamptz NOT NULL DEFAULT now(),
    singleton bool       NOT NULL DEFAULT true PRIMARY KEY CHECK (singleton)
);
INSERT INTO _rserv_node_ DEFAULT VALUES;

-- Roles allowed to run replication (besides superusers and the extension's owner); see
-- rserv_grant_replication().
CREATE TABLE _rserv_replicators_ (
    role     oid         PRIMARY KEY,
    granted  timestamptz NOT NULL DEFAULT now()
);

-- Slaves known to this master, each with its own confirmed progress in _rserv_sync_.
CREATE TABLE _rserv_servers_ (
    server   int4        PRIMARY KEY,
    host     text,
    port     int4,
    dbase    text,
    created  timestamptz NOT NULL DEFAULT now(),
    -- bumped by every prepare: two prepares for one slave whose snapshots would be out of
    -- order collide here and one fails with a serialization error instead
    last_prepare int8,
    -- rserv_node_id() of the slave database using this server id: a second slave that
    -- claimed the same id would silently miss changes (the original's bug), so it is refused
    node     uuid
);

-- Master: replicated tables. key = row identity columns; watched = columns whose change makes
-- an UPDATE worth logging (NULL: all columns).
CREATE TABLE _rserv_tables_ (
    reloid   oid         PRIMARY KEY,
    tname    text        NOT NULL,
    cname    text,
    key      name[]      NOT NULL,
    watched  name[],
    added    timestamptz NOT NULL DEFAULT now(),
    -- attribute numbers of the watched columns (what the capture trigger uses): they follow
    -- renames; `watched` holds their current names
    watched_attnums int2[],
    -- the table's definition as slaves last learnt it (rserv_table_list's format): DDL that
    -- changes it is recorded in _rserv_ddl_
    definition jsonb
);

-- Master: schema changes of replicated tables, for the slaves to follow at this point of their
-- change-set streams (logid: the DDL transaction, as in _rserv_log_). recopy: the change gave
-- existing rows values a slave cannot compute the same way: the table goes whole with it.
CREATE TABLE _rserv_ddl_ (
    ddlid    bigserial   PRIMARY KEY,
    logid    int8        NOT NULL,
    reloid   oid         NOT NULL,
    old      jsonb       NOT NULL,
    new      jsonb       NOT NULL,
    recopy   bool        NOT NULL
);

-- Master: replicated sequences; `source`: the table that brought it (its own sequences come
-- and go with it), NULL for one added by itself (rserv_add_sequence).
CREATE TABLE _rserv_sequences_ (
    seqoid   oid         PRIMARY KEY,
    source   oid,
    added    timestamptz NOT NULL DEFAULT now()
);

-- Master: the leaf partitions of replicated partitioned tables, as rserv last saw them (a
-- partition that arrives or leaves is noticed by the DDL guard).
CREATE TABLE _rserv_partitions_ (
    part     oid         PRIMARY KEY,
    root     oid         NOT NULL
);

-- Master: per slave, the tables it receives and whether their initial copy is done.
-- 'copying': the full table went out in change set syncid; 'ready' once that is confirmed.
-- No row: the next change set for that slave carries the whole table.
CREATE TABLE _rserv_server_tables_ (
    server   int4        NOT NULL REFERENCES _rserv_servers_ ON DELETE CASCADE,
    reloid   oid         NOT NULL REFERENCES _rserv_tables_ ON DELETE CASCADE,
    state    text        NOT NULL CHECK (state IN ('copying', 'ready')),
    syncid   int8        NOT NULL,
    PRIMARY KEY (server, reloid)
);

-- Master: the change log, one row per changed row identity. No index on purpose: the capture
-- trigger appends with heap_insert (no index maintenance), prepare reads it in one scan.
-- logid = the writer's top-level 64-bit transaction id (xid8 as int8, never wraps).
-- key = identity values as canonical text, one element per key column; NULL = TRUNCATE.
-- deleted = true: the identity may be gone (deleted, old key of a key change, TRUNCATE, a
-- partition emptied or detached, rserv_touch); false: updated in place (rserv 1.0: also
-- inserted); NULL: inserted, it did not exist before (capture::Logged).
CREATE TABLE _rserv_log_ (
    reloid   oid         NOT NULL,
    logid    int8        NOT NULL,
    deleted  bool,
    key      text[]
);

CREATE SEQUENCE _rserv_sync_seq_;

-- Master: one row per prepared change set. status 0 = prepared, 1 = applied on the slave
-- (confirmed). minid/maxid/active = xmin/xmax/in-progress xids of the snapshot it was read at;
-- synctime = when that snapshot was taken (the slave's data is as of then once it applies it).
CREATE TABLE _rserv_sync_ (
    server   int4        NOT NULL,
    syncid   int8        NOT NULL,
    synctime timestamptz NOT NULL DEFAULT now(),
    confirmed timestamptz,
    status   int4        NOT NULL DEFAULT 0,
    minid    int8        NOT NULL,
    maxid    int8        NOT NULL,
    active   int8[]      NOT NULL,
    -- tells this change set from another with the same id (a master restored from a backup
    -- issues its ids again): the slave records it with the sync id it applied
    fingerprint uuid     NOT NULL DEFAULT gen_random_uuid(),
    PRIMARY KEY (server, syncid)
);

-- Master: fenced (src/fence.rs). While this row exists, every replicated table refuses local
-- writes as a slave's does; `successor`: the node taking over; `kind`: 'switchover' (replicate
-- switchover in progress) or 'deposed' (another node took over by failover: replicate rejoin).
CREATE TABLE _rserv_fence_ (
    singleton bool        NOT NULL DEFAULT true PRIMARY KEY CHECK (singleton),
    since     timestamptz NOT NULL DEFAULT now(),
    successor uuid,
    kind      text        NOT NULL DEFAULT 'switchover' CHECK (kind IN ('switchover', 'deposed'))
);
-- the protection trigger, run by any writer, reads it to say why it refuses
GRANT SELECT ON _rserv_fence_ TO PUBLIC;

-- Slave: tables this database receives, with the identity the master must send.
-- needs_copy: registered anew, the next change set must carry all its rows (the master's
-- record of earlier copies does not know what happened to the table here meanwhile).
CREATE TABLE _rserv_slave_tables_ (
    reloid   oid         PRIMARY KEY,
    tname    text        NOT NULL,
    cname    text,
    key      name[]      NOT NULL,
    added    timestamptz NOT NULL DEFAULT now(),
    needs_copy bool      NOT NULL DEFAULT true
);
-- the protection trigger, run by any writer, lets rserv.allow_slave_writes through only on a
-- table this database receives (not on a fenced master's, whatever its snapshot shows)
GRANT SELECT (reloid) ON _rserv_slave_tables_ TO PUBLIC;

-- Slave: sequences received besides those the received tables use (rserv_slave_add_sequence).
CREATE TABLE _rserv_slave_sequences_ (
    seqoid   oid         PRIMARY KEY,
    added    timestamptz NOT NULL DEFAULT now()
);

-- Slave: what rserv_slave_create_table still has to make of a table it created (indexes, foreign
-- keys, triggers, policies: the master's definition), once the table's initial copy is in.
CREATE TABLE _rserv_slave_pending_ (
    reloid     oid         PRIMARY KEY,
    definition jsonb       NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);

-- Slave: the last change set applied (one row), and from which master.
CREATE TABLE _rserv_slave_sync_ (
    syncid   int8        NOT NULL,
    synctime timestamptz NOT NULL DEFAULT now(),
    master   uuid        NOT NULL,
    singleton bool       NOT NULL DEFAULT true PRIMARY KEY CHECK (singleton),
    -- the server id this database is known by on its master (change sets for another id are
    -- refused); NULL after rserv_slave_resync()
    server   int4,
    -- the applied change set's fingerprint (`_rserv_sync_.fingerprint` on the master)
    fingerprint uuid,
    -- the master's snapshot of that change set (pg_snapshot's text form): a failover compares
    -- slaves by it (which one holds more of the old master's transactions)
    snapshot text,
    -- the master this slave followed before a failover re-pointed it to `master`
    previous_master uuid,
    -- a failover re-pointed this slave while it lacked some of the old master's last
    -- transactions: change sets are refused until a comparison with `master` finds both equal
    -- (src/failover.rs; replicate failover, or replicate check --repair)
    needs_check bool     NOT NULL DEFAULT false
);

-- A node that took over as master (replicate switchover or failover; src/takeover.rs): the
-- latest takeover. old_*: the old master, this node's server id there, the last change set of
-- it applied here (with its fingerprint and the old master's snapshot of it: where the old
-- master's later transactions start, for replicate rejoin); server, syncid: the old master's
-- id here and the sync point it (and every slave re-pointed here) starts from; completed: the
-- old master follows this node (demoted or rejoined).
CREATE TABLE _rserv_takeover_ (
    singleton bool        NOT NULL DEFAULT true PRIMARY KEY CHECK (singleton),
    kind      text        NOT NULL CHECK (kind IN ('switchover', 'failover')),
    old_master uuid       NOT NULL,
    old_server int4,
    old_syncid int8,
    old_fingerprint uuid,
    old_snapshot text,
    server    int4        NOT NULL,
    syncid    int8        NOT NULL,
    at        timestamptz NOT NULL DEFAULT now(),
    completed timestamptz
);
