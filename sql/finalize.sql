-- DDL guards. A replicated table that is dropped, or altered so that its row identity is
-- gone, would make every later change set fail (or every write on the master). PostgreSQL
-- refuses such DDL with a clear error instead; remove the table from replication first.
-- SECURITY DEFINER with a pinned search_path: any user may run DDL on their own tables
-- without rights on rserv's catalog, and nothing in their schemas is ever called here.

CREATE FUNCTION _rserv_guard_drop_() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    names text;
BEGIN
    IF tg_tag = 'DROP EXTENSION' THEN
        RETURN;  -- DROP EXTENSION rserv removes the catalog itself
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
END
$$;

CREATE FUNCTION _rserv_guard_alter_() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r record;
BEGIN
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
END
$$;

CREATE EVENT TRIGGER _rserv_drop_guard_ ON sql_drop EXECUTE FUNCTION _rserv_guard_drop_();
CREATE EVENT TRIGGER _rserv_alter_guard_ ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
    EXECUTE FUNCTION _rserv_guard_alter_();
