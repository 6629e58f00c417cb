-- The master's description of table $1 for a slave that creates it (rserv_table_list's
-- definition, format 1). Names are data; expressions and clause texts come from the server's own
-- deparsers (pg_get_expr, pg_get_*def), which the slave re-parses and checks before using them.
-- Runs with search_path = pg_catalog, pg_temp, so every name outside pg_catalog is qualified.
SELECT pg_catalog.jsonb_build_object(
  'format', 1,
  'schema', n.nspname,
  'table', c.relname,
  'partition_key', CASE WHEN c.relkind = 'p' THEN pg_catalog.pg_get_partkeydef(c.oid) END,
  'partition_of', (SELECT pg_catalog.jsonb_build_object('schema', pn.nspname, 'table', pc.relname)
                     FROM pg_catalog.pg_inherits i
                     JOIN pg_catalog.pg_class pc ON pc.oid = i.inhparent
                     JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
                    WHERE i.inhrelid = c.oid AND c.relispartition),
  'partition_bound', CASE WHEN c.relispartition THEN pg_catalog.pg_get_expr(c.relpartbound, c.oid) END,
  'row_security', c.relrowsecurity,
  'force_row_security', c.relforcerowsecurity,
  'comment', pg_catalog.obj_description(c.oid, 'pg_class'),
  'options', coalesce(c.reloptions, '{}')
             || coalesce((SELECT pg_catalog.array_agg('toast.' || o) FROM pg_catalog.pg_class tc,
                                 pg_catalog.unnest(tc.reloptions) AS o
                           WHERE tc.oid = c.reltoastrelid), '{}'),
  'replica_identity', CASE c.relreplident WHEN 'f' THEN 'full' WHEN 'n' THEN 'nothing'
                                          WHEN 'i' THEN 'index' END,
  'replica_index', (SELECT ic.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                     WHERE i.indrelid = c.oid AND i.indisreplident AND c.relreplident = 'i'),
  'cluster_on', (SELECT ic.relname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
                  WHERE i.indrelid = c.oid AND i.indisclustered),
  'columns', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
       'name', a.attname,
       'attnum', a.attnum,
       'type', pg_catalog.jsonb_build_object('schema', tn.nspname, 'name', t.typname),
       'typmod', a.atttypmod,
       'not_null', a.attnotnull,
       'default', CASE WHEN a.attgenerated = '' AND a.attidentity = '' AND d.adbin IS NOT NULL
                       THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END,
       'identity', NULLIF(a.attidentity::text, ''),
       'generated', CASE WHEN a.attgenerated = 's' THEN pg_catalog.pg_get_expr(d.adbin, d.adrelid) END,
       'collation', CASE WHEN a.attcollation <> t.typcollation THEN
                      (SELECT pg_catalog.jsonb_build_object('schema', cn.nspname, 'name', co.collname)
                         FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
                        WHERE co.oid = a.attcollation) END,
       'comment', pg_catalog.col_description(c.oid, a.attnum),
       'statistics', CASE WHEN a.attstattarget >= 0 THEN a.attstattarget END,
       'storage', CASE WHEN a.attstorage <> t.typstorage THEN
                    CASE a.attstorage WHEN 'p' THEN 'plain' WHEN 'e' THEN 'external'
                                      WHEN 'x' THEN 'extended' WHEN 'm' THEN 'main' END END,
       'compression', CASE a.attcompression WHEN 'p' THEN 'pglz' WHEN 'l' THEN 'lz4' END,
       -- PostgreSQL's attribute options (n_distinct, n_distinct_inherited), not a server's own
       'options', coalesce((SELECT pg_catalog.array_agg(o ORDER BY o) FROM pg_catalog.unnest(a.attoptions) AS o
                             WHERE o LIKE 'n\_distinct=%' OR o LIKE 'n\_distinct\_inherited=%'), '{}')
     ) ORDER BY a.attnum)
     FROM pg_catalog.pg_attribute a
     JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
     JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
     LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
     WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
  -- constraints; `inherited` ones come with a parent the slave also has (else they are made here)
  'constraints', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
       'name', o.conname, 'kind', o.contype,
       'definition', pg_catalog.pg_get_constraintdef(o.oid),
       'valid', o.convalidated,
       'inherited', o.conparentid <> 0 OR o.coninhcount > 0,
       'references', CASE WHEN o.contype = 'f' THEN
                       (SELECT pg_catalog.jsonb_build_object('schema', fn.nspname, 'table', fc.relname)
                          FROM pg_catalog.pg_class fc JOIN pg_catalog.pg_namespace fn ON fn.oid = fc.relnamespace
                         WHERE fc.oid = o.confrelid) END)
     ORDER BY o.contype <> 'p', o.contype <> 'u', o.conname)
     FROM pg_catalog.pg_constraint o
     WHERE o.conrelid = c.oid AND o.contype IN ('p', 'u', 'c', 'x', 'f')), '[]'),
  -- indexes that do not back a constraint; `inherited`: a partition's copy of its parent's
  'indexes', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
       'name', ic.relname,
       'definition', pg_catalog.pg_get_indexdef(i.indexrelid),
       'inherited', EXISTS (SELECT 1 FROM pg_catalog.pg_inherits h WHERE h.inhrelid = i.indexrelid),
       'parent', (SELECT pg_catalog.jsonb_build_object('schema', pn.nspname, 'table', pc.relname)
                    FROM pg_catalog.pg_inherits h JOIN pg_catalog.pg_class pc ON pc.oid = h.inhparent
                    JOIN pg_catalog.pg_namespace pn ON pn.oid = pc.relnamespace
                   WHERE h.inhrelid = i.indexrelid))
     ORDER BY ic.relname)
     FROM pg_catalog.pg_index i JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
     WHERE i.indrelid = c.oid
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint o WHERE o.conindid = i.indexrelid AND o.conrelid = c.oid)), '[]'),
  -- triggers, except rserv's own and internal ones (and a partition's clones of its parent's)
  'triggers', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
       'name', g.tgname,
       'definition', pg_catalog.pg_get_triggerdef(g.oid),
       'enabled', g.tgenabled,
       'function', (SELECT pg_catalog.jsonb_build_object('schema', fn.nspname, 'name', f.proname)
                      FROM pg_catalog.pg_proc f JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace
                     WHERE f.oid = g.tgfoid)) ORDER BY g.tgname)
     FROM pg_catalog.pg_trigger g
     WHERE g.tgrelid = c.oid AND NOT g.tgisinternal AND g.tgparentid = 0
       AND g.tgname NOT IN ('_rserv_trigger_t_', '_rserv_truncate_t_', '_rserv_truncate_p_', '_rserv_protect_t_')), '[]'),
  'policies', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
       'name', p.polname,
       'permissive', p.polpermissive,
       'command', p.polcmd,
       'roles', (SELECT coalesce(pg_catalog.jsonb_agg(r.rolname ORDER BY r.rolname), '[]')
                   FROM pg_catalog.pg_roles r WHERE r.oid = ANY (p.polroles)),
       'using', pg_catalog.pg_get_expr(p.polqual, p.polrelid),
       'check', pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid)) ORDER BY p.polname)
     FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid), '[]'),
  -- sequences the table's columns use (owned ones, identity ones and those in defaults)
  'sequences', coalesce((SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
       'schema', sn.nspname, 'name', sc.relname,
       'type', pg_catalog.format_type(s.seqtypid, NULL),
       'start', s.seqstart, 'increment', s.seqincrement, 'min', s.seqmin, 'max', s.seqmax,
       'cache', s.seqcache, 'cycle', s.seqcycle,
       'owned_by', (SELECT a.attname FROM pg_catalog.pg_depend od
                      JOIN pg_catalog.pg_attribute a ON a.attrelid = od.refobjid AND a.attnum = od.refobjsubid
                     WHERE od.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND od.objid = sc.oid
                       AND od.refobjid = c.oid AND od.deptype IN ('a', 'i')),
       'identity', EXISTS (SELECT 1 FROM pg_catalog.pg_depend od
                            WHERE od.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND od.objid = sc.oid
                              AND od.refobjid = c.oid AND od.deptype = 'i')) ORDER BY sn.nspname, sc.relname)
     FROM pg_catalog.pg_class sc
     JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace
     JOIN pg_catalog.pg_sequence s ON s.seqrelid = sc.oid
     WHERE sc.oid IN (SELECT od.objid FROM pg_catalog.pg_depend od
                       WHERE od.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                         AND od.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                         AND od.refobjid = c.oid AND od.deptype IN ('a', 'i')
                      UNION
                      SELECT x.refobjid FROM pg_catalog.pg_attrdef ad
                        JOIN pg_catalog.pg_depend x ON x.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                                                   AND x.objid = ad.oid
                                                   AND x.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
                       WHERE ad.adrelid = c.oid)
       AND sc.relkind = 'S'), '[]'),
  -- user-defined types the columns use, dependencies first
  'types', coalesce((
     WITH RECURSIVE used(oid, depth) AS (
         SELECT a.atttypid, 0 FROM pg_catalog.pg_attribute a
          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
         UNION
         SELECT nxt.oid, u.depth + 1
           FROM used u JOIN pg_catalog.pg_type ut ON ut.oid = u.oid
           CROSS JOIN LATERAL (
               SELECT ut.typelem AS oid WHERE ut.typelem <> 0 AND ut.typcategory = 'A'
               UNION ALL SELECT ut.typbasetype WHERE ut.typtype = 'd'
               UNION ALL SELECT ca.atttypid FROM pg_catalog.pg_attribute ca
                          WHERE ut.typtype = 'c' AND ca.attrelid = ut.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped
               UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE ut.typtype = 'r' AND r.rngtypid = ut.oid
           ) AS nxt
          WHERE u.depth < 16)
     SELECT pg_catalog.jsonb_agg(x.def ORDER BY x.depth DESC, x.name)
       FROM (SELECT t.typname AS name, max(u.depth) AS depth,
                    pg_catalog.jsonb_build_object(
                      'schema', tn.nspname, 'name', t.typname, 'kind', t.typtype,
                      'labels', CASE WHEN t.typtype = 'e' THEN
                                  (SELECT pg_catalog.jsonb_agg(e.enumlabel ORDER BY e.enumsortorder)
                                     FROM pg_catalog.pg_enum e WHERE e.enumtypid = t.oid) END,
                      'base', CASE WHEN t.typtype = 'd' THEN
                                (SELECT pg_catalog.jsonb_build_object('schema', bn.nspname, 'name', bt.typname)
                                   FROM pg_catalog.pg_type bt JOIN pg_catalog.pg_namespace bn ON bn.oid = bt.typnamespace
                                  WHERE bt.oid = t.typbasetype) END,
                      'typmod', t.typtypmod,
                      'not_null', t.typnotnull,
                      'default', CASE WHEN t.typtype = 'd' THEN pg_catalog.pg_get_expr(t.typdefaultbin, 0) END,
                      'collation', CASE WHEN t.typtype = 'd' AND t.typcollation <> 0 AND t.typcollation <>
                                          (SELECT bt.typcollation FROM pg_catalog.pg_type bt WHERE bt.oid = t.typbasetype) THEN
                                     (SELECT pg_catalog.jsonb_build_object('schema', cn.nspname, 'name', co.collname)
                                        FROM pg_catalog.pg_collation co JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
                                       WHERE co.oid = t.typcollation) END,
                      'constraints', CASE WHEN t.typtype = 'd' THEN
                                      (SELECT coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                                 'name', o.conname, 'definition', pg_catalog.pg_get_constraintdef(o.oid))
                                               ORDER BY o.conname), '[]')
                                         FROM pg_catalog.pg_constraint o WHERE o.contypid = t.oid) END,
                      'attributes', CASE WHEN t.typtype = 'c' THEN
                                      (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
                                                 'name', ca.attname,
                                                 'type', pg_catalog.jsonb_build_object('schema', cn.nspname, 'name', ct.typname),
                                                 'typmod', ca.atttypmod) ORDER BY ca.attnum)
                                         FROM pg_catalog.pg_attribute ca
                                         JOIN pg_catalog.pg_type ct ON ct.oid = ca.atttypid
                                         JOIN pg_catalog.pg_namespace cn ON cn.oid = ct.typnamespace
                                        WHERE ca.attrelid = t.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped) END,
                      'subtype', CASE WHEN t.typtype = 'r' THEN
                                   (SELECT pg_catalog.jsonb_build_object('schema', sn.nspname, 'name', st.typname)
                                      FROM pg_catalog.pg_range r JOIN pg_catalog.pg_type st ON st.oid = r.rngsubtype
                                      JOIN pg_catalog.pg_namespace sn ON sn.oid = st.typnamespace
                                     WHERE r.rngtypid = t.oid) END,
                      'comment', pg_catalog.obj_description(t.oid, 'pg_type'),
                      'owner', (SELECT o.rolname FROM pg_catalog.pg_roles o WHERE o.oid = t.typowner),
                      'owner_super', (SELECT o.rolsuper FROM pg_catalog.pg_roles o WHERE o.oid = t.typowner)) AS def
               FROM used u
               JOIN pg_catalog.pg_type t ON t.oid = u.oid
               JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
              WHERE tn.nspname <> 'pg_catalog' AND tn.nspname <> 'information_schema'
                AND t.typtype IN ('e', 'd', 'c', 'r')
                AND NOT (t.typtype = 'c' AND EXISTS (SELECT 1 FROM pg_catalog.pg_class tc
                                                      WHERE tc.oid = t.typrelid AND tc.relkind <> 'c'))
                AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend ed
                                 WHERE ed.classid = 'pg_catalog.pg_type'::pg_catalog.regclass AND ed.objid = t.oid
                                   AND ed.deptype = 'e')
              GROUP BY t.oid, t.typname, tn.nspname) AS x), '[]')
)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = $1
