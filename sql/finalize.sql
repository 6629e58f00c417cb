-- DDL guards and DDL capture. A schema change to a replicated master table is recorded for the
-- slaves to follow (_rserv_record_ddl_, see src/ddl/); what cannot follow is refused there.
-- Refused here, with a clear error: dropping a replicated table or one of its partitions,
-- dropping a key column, making it unlogged, stripping it of its capture triggers, and on a
-- slave renaming a received table (which would lose its master's changes). Watched columns
-- follow renames, and a dropped watched column leaves the registration with a WARNING
-- (_rserv_refresh_watched_). SECURITY DEFINER with a pinned search_path: any user may run DDL
-- on their own tables without rights on rserv's catalog, and nothing in their schemas is ever
-- called here. rserv's own DDL (its triggers; a slave following its master) passes the
-- refusals: _rserv_internal_ddl_().

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

-- rserv's trigger functions are attached by rserv's registration functions only: a table owner
-- attaching them by hand would write to (and bloat) the log without registering anything.
-- _rserv_log_() stays executable by PUBLIC: PostgreSQL clones a partitioned table's row
-- triggers onto a new or attached partition only for a role that may execute their function,
-- so the table's owner needs it; the function itself refuses any trigger rserv did not make
-- (capture_check.rs).
REVOKE EXECUTE ON FUNCTION _rserv_protect_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_internal_ddl_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_own_triggers_ddl_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_refresh_watched_(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_reinstall_capture_(oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_reconcile_partitions_() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_record_ddl_(text[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION _rserv_note_rewrite_(oid) FROM PUBLIC;

-- This node and its slaves: one row per slave (server, slave_node: how far behind it is;
-- lag_seconds: age of the slave's data, the time of the snapshot it last applied, while
-- changes are waiting for it, 0 when it has everything), and one row for this node itself
-- (server NULL). node, role ('master', 'slave', 'fenced': a master refusing writes, 'none'),
-- master_node (whom it follows), syncid (a slave's last change set applied, a master's last
-- sync id issued; for a slave row, its confirmed one), in_progress ('switchover': this master
-- is fenced for one, or this node took over and its old master does not follow it yet;
-- 'failover': this node took over by failover and its old master has not rejoined; 'rejoin':
-- this master was deposed by a failover and awaits replicate rejoin; 'check': a failover
-- re-pointed this slave while it was behind and has not compared it with its new master yet,
-- change sets are refused until it does), takeover_*: the
-- takeover that made this node a master (kind, old master, the sync point the old master and
-- re-pointed slaves start from, when), previous_master: the master a failover re-pointed this
-- slave from.
CREATE VIEW rserv_status AS
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
