-- rserv 1.0.0 -> 1.1.0 (ALTER EXTENSION rserv UPDATE). Keeps every registration, the log and
-- the sync state. What changes:
-- - the capture triggers number their columns (watched columns follow renames): the catalog
--   records watched columns' attribute numbers, and every capture trigger is made again;
-- - a slave table registered anew asks for a fresh copy (_rserv_slave_tables_.needs_copy);
-- - slaves are registered before their first prepare (rserv_register_slave); prepare takes the
--   slave's fresh-copy requests; the table list describes tables as data for the slave to build;
-- - the DDL guards also refuse SET UNLOGGED and disabling or dropping capture triggers;
-- - rserv's trigger and internal functions are not executable by PUBLIC.

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

CREATE  FUNCTION "rserv_register_slave"(
	"server" INT, /* i32 */
	"slave_node" TEXT /* Option < String > */
) RETURNS bool /* bool */
VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_register_slave_wrapper';

CREATE  FUNCTION "rserv_slave_create_table"(
	"definition" jsonb /* pgrx :: JsonB */
) RETURNS TEXT /* String */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_create_table_wrapper';

CREATE  FUNCTION "rserv_server_for_node"(
	"slave_node" TEXT /* & str */
) RETURNS INT /* i32 */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_server_for_node_wrapper';

CREATE  FUNCTION "rserv_slave_finish_tables"() RETURNS SETOF TEXT /* String */
STRICT VOLATILE SECURITY DEFINER
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rserv_slave_finish_tables_wrapper';

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
	"estimated_rows" bigint  /* Option < i64 > */
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

CREATE OR REPLACE FUNCTION _rserv_guard_alter_() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
    IF @extschema@._rserv_internal_ddl_() THEN
        RETURN;
    END IF;
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
CREATE EVENT TRIGGER _rserv_alter_guard_ ON ddl_command_end WHEN TAG IN ('ALTER TABLE', 'DROP TRIGGER')
    EXECUTE FUNCTION _rserv_guard_alter_();

REVOKE EXECUTE ON FUNCTION _rserv_log_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_protect_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_internal_ddl_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_refresh_watched_(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_reinstall_capture_(oid) FROM PUBLIC;

-- every capture trigger again, numbering its columns
SELECT _rserv_reinstall_capture_(reloid) FROM _rserv_tables_;
