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
-- - the DDL guards also refuse renaming a replicated table, SET UNLOGGED, disabling or dropping
--   capture triggers and dropping a partition of a replicated table;
-- - rserv's trigger and internal functions are not executable by PUBLIC;
-- - a slave applies change sets of any rserv release whose change-set format it reads
--   (rserv_apply_begin takes the format; 1.0.0 required the same rserv version).

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

CREATE  FUNCTION "_rserv_internal_ddl_"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rserv_internal_ddl__wrapper';

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

CREATE  FUNCTION "rserv_register_slave"(
	"server" INT, /* i32 */
	"slave_node" TEXT /* Option < String > */
) RETURNS bool /* bool */
VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_register_slave_wrapper';

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
	"slave_node" TEXT  /* Option < String > */
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
	"format" INT DEFAULT NULL /* Option < i32 > */
) RETURNS bool /* bool */
VOLATILE SECURITY DEFINER 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_apply_begin_v11_wrapper';

CREATE OR REPLACE FUNCTION _rserv_guard_drop_() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names text;
BEGIN
    IF tg_tag = 'DROP EXTENSION' OR @extschema@._rserv_internal_ddl_() THEN
        RETURN;  -- DROP EXTENSION rserv removes the catalog itself; rserv's own DDL passes
    END IF;
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
END
$$;

CREATE OR REPLACE FUNCTION _rserv_guard_alter_() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF @extschema@._rserv_internal_ddl_() THEN
        RETURN;
    END IF;
    -- slaves find their tables by name: a rename would silently leave the slave's copy behind
    -- (and the usual swap, renaming another table into its place, would send that one's rows)
    FOR r IN
        SELECT c.oid::regclass AS tbl, t.tname
          FROM (SELECT reloid, tname FROM @extschema@._rserv_tables_
                UNION ALL SELECT reloid, tname FROM @extschema@._rserv_slave_tables_) AS t
          JOIN pg_class c ON c.oid = t.reloid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE t.tname <> quote_ident(n.nspname) || '.' || quote_ident(c.relname)
         LIMIT 1
    LOOP
        RAISE EXCEPTION 'rserv: replicated table % cannot be renamed or moved (to %)', r.tname, r.tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'master and slaves find the table by its name; remove it from replication first (rserv_remove_table on the master, rserv_slave_remove_table on slaves), rename it on every side, then register it again';
    END LOOP;
    -- partitions that arrived or left replicated partitioned tables
    PERFORM @extschema@._rserv_reconcile_partitions_();
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
         LIMIT 1
    LOOP
        RAISE EXCEPTION 'rserv: this ALTER TABLE removes or renames key column "%" of replicated table %', r.col, r.tbl
            USING ERRCODE = 'dependent_objects_still_exist',
                  HINT = format('remove the table from replication first: SELECT rserv_remove_table(%L) on the master (rserv_slave_remove_table on a slave), then register it again with its new key', r.tbl::text);
    END LOOP;
    FOR r IN
        SELECT c.oid::regclass AS tbl FROM pg_class c
         WHERE c.relpersistence <> 'p'
           AND (c.oid IN (SELECT reloid FROM @extschema@._rserv_tables_)
                OR c.oid IN (SELECT reloid FROM @extschema@._rserv_slave_tables_))
         LIMIT 1
    LOOP
        RAISE EXCEPTION 'rserv: replicated table % cannot be made unlogged', r.tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'crash recovery empties unlogged tables without telling rserv; remove the table from replication first';
    END LOOP;
    FOR r IN
        SELECT t.reloid::regclass AS tbl FROM @extschema@._rserv_tables_ t
         WHERE (SELECT count(*) FROM pg_trigger g
                 WHERE g.tgrelid = t.reloid AND g.tgname IN ('_rserv_trigger_t_', '_rserv_truncate_t_')
                   AND g.tgenabled = 'A') <> 2
            OR EXISTS (SELECT 1 FROM pg_partition_tree(t.reloid) p
                        WHERE p.isleaf AND p.relid <> t.reloid
                          AND (SELECT count(*) FROM pg_trigger g
                                WHERE g.tgrelid = p.relid AND g.tgname IN ('_rserv_trigger_t_', '_rserv_truncate_p_')
                                  AND g.tgenabled = 'A') <> 2)
         LIMIT 1
    LOOP
        RAISE EXCEPTION 'rserv: the capture triggers of replicated table % must stay enabled', r.tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('without them changes are silently not replicated; to stop replicating the table: SELECT rserv_remove_table(%L)', r.tbl::text);
    END LOOP;
    PERFORM @extschema@._rserv_refresh_watched_(t.reloid)
       FROM @extschema@._rserv_tables_ t
      WHERE t.watched_attnums IS NOT NULL
        AND t.reloid IN (SELECT c.objid FROM pg_event_trigger_ddl_commands() AS c
                          WHERE c.classid = 'pg_catalog.pg_class'::regclass);
END
$$;

DROP EVENT TRIGGER _rserv_alter_guard_;
CREATE EVENT TRIGGER _rserv_alter_guard_ ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'ALTER INDEX', 'DROP TRIGGER', 'CREATE TABLE')
    EXECUTE FUNCTION _rserv_guard_alter_();

REVOKE EXECUTE ON FUNCTION _rserv_log_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_protect_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_internal_ddl_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_refresh_watched_(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_reinstall_capture_(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_reconcile_partitions_() FROM PUBLIC;

-- every capture trigger again, numbering its columns; the tables' sequences registered
SELECT _rserv_reinstall_capture_(reloid) FROM _rserv_tables_;
