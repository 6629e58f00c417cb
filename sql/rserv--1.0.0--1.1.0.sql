-- rserv 1.0.0 -> 1.1.0 (ALTER EXTENSION rserv UPDATE). Keeps every registration, the log and
-- the sync state. tests/tests/upgrade.rs checks that the result is exactly a fresh install's
-- catalog. What changes:
-- - the capture triggers number their columns (watched columns follow renames): the catalog
--   records watched columns' attribute numbers, and every capture trigger is made again;
-- - a slave table registered anew asks for a fresh copy (_rserv_slave_tables_.needs_copy);
-- - slaves are registered before their first prepare (rserv_register_slave), one server id per
--   slave database; a change set names the change set it follows and the slave database it is
--   for, and the slave records its server id (_rserv_slave_sync_.server);
-- - prepare takes the slave's fresh-copy requests; the table list describes tables as data for
--   the slave to build (rserv_slave_create_table, rserv_slave_finish_tables);
-- - sequences are replicated (_rserv_sequences_, _rserv_slave_sequences_): those of registered
--   tables are registered now;
-- - partitioned tables can be registered (_rserv_partitions_);
-- - schema changes of replicated tables follow the stream (_rserv_tables_.definition,
--   _rserv_ddl_, the table_rewrite guard, rserv_apply_end, rserv_apply_types; the guards
--   follow ALTER TYPE and ALTER DOMAIN too; rserv_execute_ddl); registered tables'
--   definitions are recorded now;
-- - the DDL guards also refuse SET UNLOGGED, disabling or dropping capture triggers, dropping a
--   partition of a replicated table and renaming a slave table;
-- - rserv's trigger and internal functions are not executable by PUBLIC;
-- - a slave applies change sets of any rserv release by their format and features
--   (rserv_apply_begin takes them; 1.0.0 required the master's rserv version to be its own);
-- - writers wake an idle daemon only (rserv_wake_on_commit).

-- _rserv_log_.deleted keeps its NOT NULL here: dropping it needs the log to ourselves, and
-- writers in flight hold it while they lock tables this script locks too (a deadlock).
-- rserv_clean_log drops it once it finds the log idle; until then inserts are logged as
-- updates (capture::Logged).

ALTER TABLE _rserv_tables_ ADD COLUMN watched_attnums int2[];
UPDATE _rserv_tables_ t
   SET watched_attnums = (SELECT array_agg(a.attnum ORDER BY w.ord)
                            FROM unnest(t.watched) WITH ORDINALITY AS w(name, ord)
                            JOIN pg_catalog.pg_attribute a
                              ON a.attrelid = t.reloid AND a.attname = w.name AND NOT a.attisdropped)
 WHERE t.watched IS NOT NULL;
-- a registration whose watched columns are all gone watches every column
UPDATE _rserv_tables_ SET watched = NULL WHERE watched IS NOT NULL AND watched_attnums IS NULL;

-- what rserv_slave_create_table still has to make once a table's initial copy is in
CREATE TABLE _rserv_slave_pending_ (
    reloid     oid         PRIMARY KEY,
    definition jsonb       NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);

-- tables a 1.0 slave received were copied then
ALTER TABLE _rserv_slave_tables_ ADD COLUMN needs_copy bool NOT NULL DEFAULT false;
ALTER TABLE _rserv_slave_tables_ ALTER COLUMN needs_copy SET DEFAULT true;

-- the definition slaves last learnt (recorded for every registered table at the end)
ALTER TABLE _rserv_tables_ ADD COLUMN definition jsonb;

CREATE TABLE _rserv_ddl_ (
    ddlid    bigserial   PRIMARY KEY,
    logid    int8        NOT NULL,
    reloid   oid         NOT NULL,
    old      jsonb       NOT NULL,
    new      jsonb       NOT NULL,
    recopy   bool        NOT NULL
);

CREATE TABLE _rserv_sequences_ (
    seqoid   oid         PRIMARY KEY,
    source   oid,
    added    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE _rserv_partitions_ (
    part     oid         PRIMARY KEY,
    root     oid         NOT NULL
);

CREATE TABLE _rserv_slave_sequences_ (
    seqoid   oid         PRIMARY KEY,
    added    timestamptz NOT NULL DEFAULT now()
);

-- the server id a slave database is known by on its master: learnt from the next change set
ALTER TABLE _rserv_slave_sync_ ADD COLUMN server int4;
ALTER TABLE _rserv_slave_sync_ ADD COLUMN fingerprint uuid;
-- the master's snapshot of the change set applied, and the master a failover re-pointed from
ALTER TABLE _rserv_slave_sync_ ADD COLUMN snapshot text;
ALTER TABLE _rserv_slave_sync_ ADD COLUMN previous_master uuid;
-- re-pointed by a failover while behind: no change set applies until a comparison
ALTER TABLE _rserv_slave_sync_ ADD COLUMN needs_check bool NOT NULL DEFAULT false;
-- the protection trigger reads which tables are received (rserv.allow_slave_writes)
GRANT SELECT (reloid) ON _rserv_slave_tables_ TO PUBLIC;
ALTER TABLE _rserv_sync_ ADD COLUMN fingerprint uuid NOT NULL DEFAULT gen_random_uuid();

CREATE  FUNCTION "_rserv_internal_ddl_"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rserv_internal_ddl__wrapper';

CREATE  FUNCTION "_rserv_own_triggers_ddl_"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rserv_own_triggers_ddl__wrapper';

CREATE  FUNCTION "_rserv_refresh_watched_"(
	"reloid" oid /* pg_sys :: Oid */
) RETURNS void
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rserv_refresh_watched__wrapper';

CREATE  FUNCTION "_rserv_reinstall_capture_"(
	"reloid" oid /* pg_sys :: Oid */
) RETURNS void
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rserv_reinstall_capture__wrapper';

CREATE  FUNCTION "_rserv_reconcile_partitions_"() RETURNS void
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rserv_reconcile_partitions__wrapper';

CREATE  FUNCTION "_rserv_record_ddl_"(
	"dropped_in" TEXT[] DEFAULT NULL /* :: std :: option :: Option < Vec < String > > */
) RETURNS void
VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rserv_record_ddl__wrapper';

CREATE  FUNCTION "_rserv_note_rewrite_"(
	"rel" oid /* pg_sys :: Oid */
) RETURNS void
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rserv_note_rewrite__wrapper';

CREATE  FUNCTION "rserv_register_slave"(
	"server" INT, /* i32 */
	"slave_node" TEXT /* Option < String > */
) RETURNS bool /* bool */
VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_register_slave_wrapper';

CREATE  FUNCTION "rserv_wake_on_commit"(
	"waiting" bool /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_wake_on_commit_wrapper';

CREATE  FUNCTION "rserv_server_for_node"(
	"slave_node" TEXT /* & str */
) RETURNS INT /* i32 */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_server_for_node_wrapper';

CREATE  FUNCTION "rserv_slave_create_table"(
	"definition" jsonb /* pgrx :: JsonB */
) RETURNS TEXT /* String */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_create_table_wrapper';

CREATE  FUNCTION "rserv_slave_finish_tables"() RETURNS SETOF TEXT /* String */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_finish_tables_wrapper';

CREATE  FUNCTION "rserv_add_sequence"(
	"seq" regclass /* RegClass */
) RETURNS void
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_add_sequence_wrapper';

CREATE  FUNCTION "rserv_remove_sequence"(
	"seq" regclass /* RegClass */
) RETURNS void
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_remove_sequence_wrapper';

CREATE  FUNCTION "rserv_slave_add_sequence"(
	"seq" regclass /* RegClass */
) RETURNS void
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_add_sequence_wrapper';

CREATE  FUNCTION "rserv_slave_remove_sequence"(
	"seq" regclass /* RegClass */
) RETURNS void
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_remove_sequence_wrapper';

CREATE  FUNCTION "rserv_slave_resync"() RETURNS bigint /* i64 */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_resync_wrapper';

CREATE  FUNCTION "rserv_apply_end"() RETURNS bigint /* i64 */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_apply_end_wrapper';

CREATE  FUNCTION "rserv_apply_types"(
	"schemas" TEXT[], /* Vec < String > */
	"tables" TEXT[], /* Vec < String > */
	"payloads" TEXT[], /* Vec < String > */
	"syncid" bigint, /* i64 */
	"master" TEXT, /* String */
	"version" TEXT, /* String */
	"server" INT DEFAULT NULL, /* Option < i32 > */
	"base" bigint DEFAULT NULL, /* Option < i64 > */
	"slave_node" TEXT DEFAULT NULL, /* Option < String > */
	"fingerprint" TEXT DEFAULT NULL, /* Option < String > */
	"format" INT DEFAULT NULL, /* Option < i32 > */
	"features" TEXT[] DEFAULT NULL /* :: std :: option :: Option < Vec < String > > */
) RETURNS bigint /* Option < i64 > */
VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_apply_types_wrapper';

CREATE  FUNCTION "rserv_execute_ddl"(
	"sql" TEXT /* &str */
) RETURNS bigint /* i64 */
STRICT VOLATILE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_execute_ddl_wrapper';

CREATE  FUNCTION "_rserv_ddl_recorded_"() RETURNS bigint /* i64 */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rserv_ddl_recorded__wrapper';

DROP FUNCTION rserv_prepare(int, text, text[], text[]);
CREATE  FUNCTION "rserv_prepare"(
	"server" INT, /* i32 */
	"slave_node" TEXT DEFAULT NULL, /* Option < String > */
	"schemas" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < String > > */
	"tables" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < String > > */
	"fresh" bool[] DEFAULT NULL /* :: std :: option :: Option < Vec < bool > > */
) RETURNS TABLE (
	"syncid" bigint,  /* i64 */
	"section" TEXT,  /* String */
	"schema_name" TEXT,  /* String */
	"table_name" TEXT,  /* String */
	"columns" TEXT[],  /* Vec < String > */
	"key_columns" TEXT[],  /* Vec < String > */
	"query" TEXT,  /* Option < String > */
	"column_types" TEXT[],  /* Vec < String > */
	"estimated_rows" bigint,  /* Option < i64 > */
	"base_syncid" bigint,  /* Option < i64 > */
	"slave_node" TEXT,  /* Option < String > */
	"fingerprint" TEXT  /* Option < String > */
)
VOLATILE SECURITY DEFINER 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_prepare_v11_wrapper';

DROP FUNCTION rserv_table_list();
CREATE  FUNCTION "rserv_table_list"() RETURNS TABLE (
	"schema_name" TEXT,  /* String */
	"table_name" TEXT,  /* String */
	"key_columns" TEXT[],  /* Vec < String > */
	"is_primary_key" bool,  /* bool */
	"watched_columns" TEXT[],  /* :: std :: option :: Option < Vec < String > > */
	"definition" jsonb  /* pgrx :: JsonB */
)
STRICT STABLE SECURITY DEFINER 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_table_list_v11_wrapper';

DROP FUNCTION rserv_slave_table_list();
CREATE  FUNCTION "rserv_slave_table_list"() RETURNS TABLE (
	"schema_name" TEXT,  /* String */
	"table_name" TEXT,  /* String */
	"needs_copy" bool  /* bool */
)
STRICT STABLE SECURITY DEFINER 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_table_list_v11_wrapper';

DROP FUNCTION rserv_apply_begin(int8, text, text);
CREATE  FUNCTION "rserv_apply_begin"(
	"syncid" bigint, /* i64 */
	"master" TEXT, /* String */
	"version" TEXT, /* String */
	"server" INT DEFAULT NULL, /* Option < i32 > */
	"base" bigint DEFAULT NULL, /* Option < i64 > */
	"slave_node" TEXT DEFAULT NULL, /* Option < String > */
	"fingerprint" TEXT DEFAULT NULL, /* Option < String > */
	"format" INT DEFAULT NULL, /* Option < i32 > */
	"features" TEXT[] DEFAULT NULL, /* :: std :: option :: Option < Vec < String > > */
	"snapshot" TEXT DEFAULT NULL /* Option < String > */
) RETURNS bool /* bool */
VOLATILE SECURITY DEFINER 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_apply_begin_v11_wrapper';

DROP EVENT TRIGGER _rserv_drop_guard_;
DROP EVENT TRIGGER _rserv_alter_guard_;
DROP FUNCTION _rserv_guard_drop_();
DROP FUNCTION _rserv_guard_alter_();

CREATE FUNCTION _rserv_guard_drop_() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names text;
    schemas text[];
BEGIN
    IF tg_tag = 'DROP EXTENSION' AND EXISTS (
        SELECT 1 FROM pg_event_trigger_dropped_objects() AS d
         WHERE d.object_type = 'extension' AND d.object_identity = 'rserv') THEN
        RETURN;  -- DROP EXTENSION rserv removes the catalog itself (another extension's drop
                 -- may take a replicated table with it: checked below)
    END IF;
    IF @extschema@._rserv_own_triggers_ddl_() THEN
        RETURN;  -- rserv changing only its own triggers, keeping its books itself (a takeover)
    END IF;
    IF NOT @extschema@._rserv_internal_ddl_() THEN
        SELECT string_agg(d.object_identity, ', ' ORDER BY d.object_identity) INTO names
          FROM pg_event_trigger_dropped_objects() AS d
         WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objsubid = 0
           AND (d.objid IN (SELECT reloid FROM @extschema@._rserv_tables_)
                OR d.objid IN (SELECT reloid FROM @extschema@._rserv_slave_tables_));
        IF names IS NOT NULL THEN
            RAISE EXCEPTION 'rserv: cannot drop %: it is replicated', names
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = 'remove it from replication first: SELECT rserv_remove_table(...) on the master, rserv_slave_remove_table(...) on a slave';
        END IF;
        -- a partition of a replicated partitioned table: its rows would vanish without a trace
        SELECT string_agg(DISTINCT regexp_replace(d.object_identity, '^_rserv_[a-z_]+_ on ', ''), ', ') INTO names
          FROM pg_event_trigger_dropped_objects() AS d
         WHERE d.object_type = 'trigger'
           AND (d.object_identity LIKE '\_rserv\_trigger\_t\_ on %'
                OR d.object_identity LIKE '\_rserv\_truncate\_p\_ on %'
                OR d.object_identity LIKE '\_rserv\_protect\_t\_ on %');
        IF names IS NOT NULL THEN
            RAISE EXCEPTION 'rserv: cannot drop %: partition of a replicated table', names
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = 'detach it first (ALTER TABLE ... DETACH PARTITION ...: its rows then leave the slaves too), then drop it';
        END IF;
        -- a key column dropped by another command than ALTER TABLE (whose drops the ALTER guard
        -- checks): DROP DOMAIN or DROP TYPE ... CASCADE, ALTER TYPE ... DROP ATTRIBUTE CASCADE
        IF tg_tag <> 'ALTER TABLE' THEN
            SELECT string_agg(format('column %I of table %I.%I', d.address_names[3],
                                     d.address_names[1], d.address_names[2]), ', ') INTO names
              FROM pg_event_trigger_dropped_objects() AS d
              JOIN (SELECT reloid, key FROM @extschema@._rserv_tables_
                    UNION ALL SELECT reloid, key FROM @extschema@._rserv_slave_tables_) AS t
                ON t.reloid = d.objid
             WHERE d.object_type = 'table column' AND d.address_names[3]::name = ANY (t.key);
            IF names IS NOT NULL THEN
                RAISE EXCEPTION 'rserv: this % drops key %, of a replicated table', tg_tag, names
                    USING ERRCODE = 'dependent_objects_still_exist',
                          HINT = 'keep what the key column needs, or remove the table from replication first: SELECT rserv_remove_table(...) on the master, rserv_slave_remove_table(...) on a slave';
            END IF;
        END IF;
    END IF;
    -- an index, constraint, trigger or policy of a replicated table: the slaves follow
    SELECT array_agg(DISTINCT d.schema_name) INTO schemas
      FROM pg_event_trigger_dropped_objects() AS d
     WHERE d.object_type IN ('index', 'table constraint', 'trigger', 'policy')
       AND d.schema_name IS NOT NULL;
    IF schemas IS NOT NULL THEN
        PERFORM @extschema@._rserv_record_ddl_(schemas);
    END IF;
END
$$;

CREATE FUNCTION _rserv_guard_alter_() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
    internal bool := @extschema@._rserv_internal_ddl_();
BEGIN
    IF @extschema@._rserv_own_triggers_ddl_() THEN
        RETURN;  -- rserv changing only its own triggers, keeping its books itself (a takeover)
    END IF;
    IF NOT internal THEN
        -- a slave finds its tables by the names its master sends (the master's own renames
        -- follow through the stream, and the slave renames its table with them)
        FOR r IN
            SELECT c.oid::regclass AS tbl, t.tname
              FROM @extschema@._rserv_slave_tables_ AS t
              JOIN pg_class c ON c.oid = t.reloid
              JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE t.tname <> quote_ident(n.nspname) || '.' || quote_ident(c.relname)
             LIMIT 1
        LOOP
            RAISE EXCEPTION 'rserv: slave table % cannot be renamed or moved (to %)', r.tname, r.tbl
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'rename it on the master: the slaves follow; or stop receiving it here first (rserv_slave_remove_table)';
        END LOOP;
        FOR r IN
            SELECT c.objid::regclass AS tbl, k.col
              FROM pg_event_trigger_ddl_commands() AS c
              JOIN (SELECT reloid, key FROM @extschema@._rserv_tables_
                    UNION ALL SELECT reloid, key FROM @extschema@._rserv_slave_tables_) AS t
                ON t.reloid = c.objid
              CROSS JOIN LATERAL unnest(t.key) AS k(col)
             WHERE c.classid = 'pg_catalog.pg_class'::regclass
               AND NOT EXISTS (SELECT 1 FROM pg_attribute a
                                WHERE a.attrelid = c.objid AND a.attname = k.col
                                  AND a.attnum > 0 AND NOT a.attisdropped)
               -- a key column renamed on a master follows (the registration is updated)
               AND NOT (t.reloid IN (SELECT reloid FROM @extschema@._rserv_tables_)
                        AND EXISTS (SELECT 1 FROM @extschema@._rserv_tables_ m
                                     CROSS JOIN LATERAL jsonb_array_elements(m.definition->'columns') AS col(v)
                                     JOIN pg_attribute a ON a.attrelid = m.reloid
                                                        AND a.attnum = (col.v->>'attnum')::int2
                                                        AND NOT a.attisdropped
                                    WHERE m.reloid = t.reloid AND col.v->>'name' = k.col::text))
             LIMIT 1
        LOOP
            RAISE EXCEPTION 'rserv: this ALTER TABLE removes key column "%" of replicated table %', r.col, r.tbl
                USING ERRCODE = 'dependent_objects_still_exist',
                      HINT = format('remove the table from replication first: SELECT rserv_remove_table(%L) on the master (rserv_slave_remove_table on a slave), then register it again with its new key', r.tbl::text);
        END LOOP;
    END IF;
    -- (also for rserv's own DDL: a slave following its master must not take an unlogged
    -- partition either) every partition of a replicated table is a logged, local table: of the
    -- relations this command touched and their partitions, those in a replicated tree
    FOR r IN
        WITH cmd AS (SELECT DISTINCT d.objid AS rel FROM pg_event_trigger_ddl_commands() AS d
                      WHERE d.classid = 'pg_catalog.pg_class'::regclass),
             cand AS (SELECT cmd.rel FROM cmd
                      UNION SELECT p.relid FROM cmd, pg_partition_tree(cmd.rel) p)
        SELECT c.oid::regclass AS tbl, c.relkind FROM pg_class c JOIN cand ON cand.rel = c.oid
         WHERE (c.relpersistence <> 'p' OR c.relkind = 'f') AND c.relkind IN ('r', 'p', 'f')
           AND (SELECT coalesce(pg_partition_root(c.oid), c.oid)) IN
               (SELECT t.reloid FROM @extschema@._rserv_tables_ t
                UNION SELECT t.reloid FROM @extschema@._rserv_slave_tables_ t)
         LIMIT 1
    LOOP
        IF r.relkind = 'f' THEN
            RAISE EXCEPTION 'rserv: % cannot be a partition of a replicated table: it is a foreign table', r.tbl
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'rserv sees no change made to a foreign table; keep it out of the replicated tree';
        END IF;
        RAISE EXCEPTION 'rserv: replicated table % cannot be unlogged', r.tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'crash recovery empties unlogged tables without telling rserv; make it LOGGED, or remove the table from replication first';
    END LOOP;
    -- partitions that arrived or left replicated partitioned tables
    PERFORM @extschema@._rserv_reconcile_partitions_();
    -- what changed in the definitions of replicated tables: recorded for the slaves
    PERFORM @extschema@._rserv_record_ddl_();
    IF NOT internal THEN
        FOR r IN
            SELECT t.reloid::regclass AS tbl FROM @extschema@._rserv_tables_ t
             WHERE (SELECT count(*) FROM pg_trigger g
                     WHERE g.tgrelid = t.reloid AND g.tgname IN ('_rserv_trigger_t_', '_rserv_truncate_t_')
                       AND g.tgenabled = 'A' AND g.tgfoid = '@extschema@._rserv_log_()'::regprocedure) <> 2
                OR EXISTS (SELECT 1 FROM pg_partition_tree(t.reloid) p
                            WHERE p.isleaf AND p.relid <> t.reloid
                              AND (SELECT count(*) FROM pg_trigger g
                                    WHERE g.tgrelid = p.relid AND g.tgname IN ('_rserv_trigger_t_', '_rserv_truncate_p_')
                                      AND g.tgenabled = 'A' AND g.tgfoid = '@extschema@._rserv_log_()'::regprocedure) <> 2)
             LIMIT 1
        LOOP
            RAISE EXCEPTION 'rserv: the capture triggers of replicated table % must stay enabled', r.tbl
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('without them changes are silently not replicated; to stop replicating the table: SELECT rserv_remove_table(%L)', r.tbl::text);
        END LOOP;
    END IF;
    PERFORM @extschema@._rserv_refresh_watched_(t.reloid)
       FROM @extschema@._rserv_tables_ t
      WHERE t.watched_attnums IS NOT NULL
        AND t.reloid IN (SELECT c.objid FROM pg_event_trigger_ddl_commands() AS c
                          WHERE c.classid = 'pg_catalog.pg_class'::regclass);
END
$$;

-- A table PostgreSQL rewrites gets new row values the slaves could compute differently (a
-- volatile default, a type change's conversion): the slaves then receive it whole.
CREATE FUNCTION _rserv_guard_rewrite_() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM @extschema@._rserv_note_rewrite_(pg_event_trigger_table_rewrite_oid());
END
$$;

CREATE EVENT TRIGGER _rserv_drop_guard_ ON sql_drop EXECUTE FUNCTION _rserv_guard_drop_();
CREATE EVENT TRIGGER _rserv_alter_guard_ ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER INDEX', 'DROP TRIGGER', 'CREATE TABLE', 'CREATE INDEX',
                 'CREATE TRIGGER', 'ALTER TRIGGER', 'CREATE POLICY', 'ALTER POLICY', 'COMMENT',
                 'ALTER TYPE', 'ALTER DOMAIN', 'CREATE FOREIGN TABLE')
    EXECUTE FUNCTION _rserv_guard_alter_();
CREATE EVENT TRIGGER _rserv_rewrite_guard_ ON table_rewrite EXECUTE FUNCTION _rserv_guard_rewrite_();
-- Also in replica mode: the apply runs a table owner's statements in it, and an owner's trigger
-- that fires there (ENABLE ALWAYS) may run DDL that must meet the guards like any other.
ALTER EVENT TRIGGER _rserv_drop_guard_ ENABLE ALWAYS;
ALTER EVENT TRIGGER _rserv_alter_guard_ ENABLE ALWAYS;
ALTER EVENT TRIGGER _rserv_rewrite_guard_ ENABLE ALWAYS;

-- The guards above, SECURITY DEFINER, call rserv's functions by the name its schema had at CREATE
-- EXTENSION (@extschema@): renamed, its owner could create another schema of that name whose
-- functions they would run as their owner. The schema keeps its name.
CREATE FUNCTION _rserv_guard_schema_() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.to_regnamespace('@extschema@') IS DISTINCT FROM
       (SELECT e.extnamespace FROM pg_catalog.pg_extension e WHERE e.extname = 'rserv') THEN
        RAISE EXCEPTION 'rserv: the schema of extension rserv cannot be renamed'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'rserv calls its own functions by their schema''s name';
    END IF;
END
$$;
CREATE EVENT TRIGGER _rserv_schema_guard_ ON ddl_command_end
    WHEN TAG IN ('ALTER SCHEMA') EXECUTE FUNCTION _rserv_guard_schema_();
-- (also in replica mode, which a role granted SET on session_replication_role may choose)
ALTER EVENT TRIGGER _rserv_schema_guard_ ENABLE ALWAYS;

-- switchover, failover, rejoin (src/fence.rs, takeover.rs, failover.rs, rejoin.rs)
CREATE TABLE _rserv_fence_ (
    singleton bool        NOT NULL DEFAULT true PRIMARY KEY CHECK (singleton),
    since     timestamptz NOT NULL DEFAULT now(),
    successor uuid,
    kind      text        NOT NULL DEFAULT 'switchover' CHECK (kind IN ('switchover', 'deposed'))
);
GRANT SELECT ON _rserv_fence_ TO PUBLIC;

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

CREATE  FUNCTION "rserv_fence"(
	"successor" TEXT, /* Option < String > */
	"kind" TEXT DEFAULT 'switchover' /* Option < String > */
) RETURNS bigint /* i64 */
VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_fence_wrapper';

CREATE  FUNCTION "rserv_unfence"() RETURNS bool /* bool */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_unfence_wrapper';

CREATE  FUNCTION "rserv_promote"(
	"old_master" TEXT, /* String */
	"server" INT DEFAULT NULL, /* Option < i32 > */
	"kind" TEXT DEFAULT 'switchover' /* Option < String > */
) RETURNS TABLE (
	"server" INT,  /* i32 */
	"syncid" bigint  /* i64 */
)
VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_promote_wrapper';

CREATE  FUNCTION "rserv_demote"(
	"new_master" TEXT, /* String */
	"server" INT, /* i32 */
	"syncid" bigint, /* i64 */
	"moved" TEXT[] DEFAULT NULL /* :: std :: option :: Option < Vec < String > > */
) RETURNS bigint /* i64 */
VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_demote_wrapper';

CREATE  FUNCTION "rserv_takeover"() RETURNS TABLE (
	"kind" TEXT,  /* String */
	"old_master" TEXT,  /* String */
	"old_server" INT,  /* Option < i32 > */
	"old_syncid" bigint,  /* Option < i64 > */
	"old_fingerprint" TEXT,  /* Option < String > */
	"old_snapshot" TEXT,  /* Option < String > */
	"server" INT,  /* i32 */
	"syncid" bigint,  /* i64 */
	"at" TEXT,  /* String */
	"completed" TEXT  /* Option < String > */
)
STRICT STABLE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_takeover_wrapper';

CREATE  FUNCTION "rserv_takeover_done"(
	"old_master" TEXT /* String */
) RETURNS bool /* bool */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_takeover_done_wrapper';

CREATE  FUNCTION "rserv_slave_position"() RETURNS TABLE (
	"master" TEXT,  /* String */
	"syncid" bigint,  /* i64 */
	"server" INT,  /* Option < i32 > */
	"fingerprint" TEXT,  /* Option < String > */
	"snapshot" TEXT,  /* Option < String > */
	"previous_master" TEXT  /* Option < String > */
)
STRICT STABLE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_position_wrapper';

CREATE  FUNCTION "rserv_adopt_slave"(
	"node" TEXT, /* String */
	"server" INT DEFAULT NULL /* Option < i32 > */
) RETURNS TABLE (
	"server" INT,  /* i32 */
	"syncid" bigint  /* i64 */
)
VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_adopt_slave_wrapper';

CREATE  FUNCTION "rserv_repoint"(
	"new_master" TEXT, /* String */
	"server" INT, /* i32 */
	"syncid" bigint, /* i64 */
	"old_master" TEXT, /* String */
	"behind" bool DEFAULT true /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_repoint_wrapper';

CREATE  FUNCTION "rserv_slave_check_begin"() RETURNS bool /* bool */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_check_begin_wrapper';

CREATE  FUNCTION "rserv_slave_check_end"(
	"equal" bool /* bool */
) RETURNS bool /* bool */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_check_end_wrapper';

CREATE  FUNCTION "rserv_changed_since"(
	"server" INT, /* i32 */
	"syncid" bigint, /* i64 */
	"fingerprint" TEXT DEFAULT NULL /* Option < String > */
) RETURNS TABLE (
	"kind" TEXT,  /* String */
	"schema_name" TEXT,  /* String */
	"table_name" TEXT,  /* String */
	"key" TEXT[],  /* :: std :: option :: Option < Vec < String > > */
	"xids" bigint[]  /* Vec < i64 > */
)
STABLE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_changed_since_wrapper';

-- rserv_status: a row for this node itself (its role), after the slaves' rows
CREATE OR REPLACE VIEW rserv_status AS
SELECT v.server,
       v.node AS slave_node,
       c.syncid AS confirmed_syncid,
       c.synctime AS data_as_of,
       c.confirmed AS confirmed_at,
       coalesce(p.pending, 0) AS pending_changes,
       CASE WHEN coalesce(p.pending, 0) = 0 THEN 0::float8
            ELSE extract(epoch FROM now() - coalesce(c.synctime, v.created))::float8 END AS lag_seconds,
       (SELECT count(*) FROM @extschema@._rserv_server_tables_ x
         WHERE x.server = v.server AND x.state = 'copying') AS copies_in_progress,
       v.node AS node,
       'slave'::text AS role,
       (SELECT n.node_id FROM @extschema@._rserv_node_ n LIMIT 1) AS master_node,
       c.syncid AS syncid,
       NULL::text AS in_progress,
       NULL::text AS takeover_kind,
       NULL::uuid AS takeover_from,
       NULL::int8 AS takeover_syncid,
       NULL::timestamptz AS takeover_at,
       NULL::uuid AS previous_master
  FROM @extschema@._rserv_servers_ v
  LEFT JOIN LATERAL (SELECT y.syncid, y.synctime, y.confirmed, y.maxid, y.active
                       FROM @extschema@._rserv_sync_ y
                      WHERE y.server = v.server AND y.status > 0
                      ORDER BY y.syncid DESC LIMIT 1) c ON true
  LEFT JOIN LATERAL (SELECT count(*) AS pending FROM @extschema@._rserv_log_ l
                      WHERE l.reloid IN (SELECT x.reloid FROM @extschema@._rserv_server_tables_ x
                                          WHERE x.server = v.server)
                        AND (c.maxid IS NULL OR l.logid >= c.maxid OR l.logid = ANY (c.active))) p ON true
UNION ALL
SELECT NULL, NULL, NULL, s.synctime, NULL, 0, 0::float8,
       (SELECT count(*) FROM @extschema@._rserv_slave_tables_ x WHERE x.needs_copy),
       n.node_id,
       CASE WHEN f.kind IS NOT NULL THEN 'fenced'
            WHEN s.master IS NOT NULL THEN 'slave'
            WHEN EXISTS (SELECT 1 FROM @extschema@._rserv_tables_)
              OR EXISTS (SELECT 1 FROM @extschema@._rserv_servers_) THEN 'master'
            ELSE 'none' END,
       s.master,
       coalesce(s.syncid, (SELECT q.last_value FROM @extschema@._rserv_sync_seq_ q WHERE q.is_called)),
       CASE WHEN f.kind = 'switchover' THEN 'switchover'
            WHEN f.kind = 'deposed' THEN 'rejoin'
            WHEN s.needs_check THEN 'check'
            WHEN t.completed IS NULL THEN t.kind END,
       t.kind, t.old_master, t.syncid, t.at, s.previous_master
  -- (one-row tables: LIMIT 1 keeps the planner's estimate, and the query, small)
  FROM (SELECT x.node_id FROM @extschema@._rserv_node_ x LIMIT 1) n
  LEFT JOIN LATERAL (SELECT * FROM @extschema@._rserv_slave_sync_ LIMIT 1) s ON true
  LEFT JOIN LATERAL (SELECT * FROM @extschema@._rserv_fence_ LIMIT 1) f ON true
  LEFT JOIN LATERAL (SELECT * FROM @extschema@._rserv_takeover_ LIMIT 1) t ON true;

-- (_rserv_log_() stays executable by PUBLIC: see finalize.sql)
REVOKE EXECUTE ON FUNCTION _rserv_protect_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_internal_ddl_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_own_triggers_ddl_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_refresh_watched_(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_reinstall_capture_(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_reconcile_partitions_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_record_ddl_(text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_note_rewrite_(oid) FROM PUBLIC;

-- every capture trigger again, numbering its columns; the tables' sequences registered and
-- their definitions recorded
SELECT _rserv_reinstall_capture_(reloid) FROM _rserv_tables_;
