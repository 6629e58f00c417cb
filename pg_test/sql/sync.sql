--
-- Sync bookkeeping on the master: rserv_prepare(), rserv_confirm(), rserv_clean_log(),
-- _rserv_sync_(), rserv_node_id(), rserv_version().
--
CREATE EXTENSION rserv;
-- The version is the installed extension's; the node id is this database's uuid.
SELECT rserv_version() = extversion AS version_ok FROM pg_extension WHERE extname = 'rserv';
SELECT rserv_node_id()::uuid = node_id AS node_id_ok, rserv_node_id() = rserv_node_id() AS stable
FROM _rserv_node_;
SELECT count(*) FROM _rserv_node_;
-- _rserv_sync_() needs a sync id from nextval() first
SELECT _rserv_sync_(0);
-- Clean-up with no slave known: nothing is removed.
SELECT rserv_clean_log();
--
-- rserv_prepare() outside REPEATABLE READ
--
SELECT * FROM rserv_prepare(0);
BEGIN;
SELECT * FROM rserv_prepare(0);
ROLLBACK;
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT * FROM rserv_prepare(0);
ROLLBACK;
-- A slave must be registered, in a transaction of its own, before it is prepared for: log
-- clean-up only counts committed registrations.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM rserv_prepare(0);
ROLLBACK;
SELECT rserv_register_slave(0, NULL);
-- again: false, nothing changes
SELECT rserv_register_slave(0, NULL);
-- Nothing changed: no rows (and no sync id used).
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM rserv_prepare(0);
COMMIT;
SELECT server, last_prepare FROM _rserv_servers_;
SELECT count(*) FROM _rserv_sync_;
-- SERIALIZABLE is fine too
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT * FROM rserv_prepare(0);
ROLLBACK;
-- Runs the query of a section (in the prepare's transaction), its rows as JSON.
CREATE FUNCTION pg_temp.rows_of(q text) RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    IF q IS NULL THEN RETURN; END IF;
    RETURN QUERY EXECUTE 'SELECT row_to_json(x)::text FROM (' || q || ') x ORDER BY 1';
END $$;
--
-- Changes on registered tables.
--
CREATE TABLE customer (id int PRIMARY KEY, name text, note text);
SELECT rserv_add_table('customer', 'name');
CREATE TABLE item (id bigint PRIMARY KEY, name text, price numeric,
    doubled numeric GENERATED ALWAYS AS (price * 2) STORED);
SELECT rserv_add_table('item');
CREATE TABLE pair (a int NOT NULL, b date NOT NULL, c text, UNIQUE (a, b));
SELECT rserv_add_table('pair', 'a,b');
CREATE TABLE unregistered (id int PRIMARY KEY);
INSERT INTO customer VALUES (1, 'Ada', 'n1'), (2, 'Alan', 'n2'), (3, 'Grace', 'n3');
INSERT INTO item VALUES (1, 'pen', 1.50), (2, 'ink', 3);
INSERT INTO pair VALUES (1, '2024-02-29', 'x'), (2, '2024-03-01', 'y');
INSERT INTO unregistered VALUES (1);
BEGIN ISOLATION LEVEL REPEATABLE READ;
CREATE TEMP TABLE s ON COMMIT DROP AS SELECT * FROM rserv_prepare(0);
-- Per table (ordered by schema and name): DELETE (identities whose row is gone: key columns
-- only), then UPDATE (current rows, every column but generated ones).
SELECT syncid, section, schema_name, table_name, columns, key_columns, query IS NOT NULL AS has_query
FROM s;
-- the queries (the number is the table's OID); a table copied whole comes with its definition
-- first (DDL: what a slave that built it from an earlier one follows, see tests/ddl.rs)
SELECT table_name, section,
       regexp_replace(regexp_replace(query, '\d+::pg_catalog.oid', '<oid>', 'g'), '_rserv_pending_\w+', '_rserv_pending_<random>', 'g') AS query
FROM s WHERE section <> 'DDL';
SELECT table_name, section, pg_temp.rows_of(query) FROM s WHERE section <> 'DDL';
-- the change set's snapshot is recorded, status 0 (prepared)
SELECT server, syncid, status, minid <= maxid AS bounds_ok FROM _rserv_sync_;
COMMIT;
-- Prepared but not confirmed: the next prepare sends the same changes again, under a new id.
BEGIN ISOLATION LEVEL REPEATABLE READ;
CREATE TEMP TABLE s ON COMMIT DROP AS SELECT * FROM rserv_prepare(0);
SELECT syncid, section, table_name, columns, key_columns FROM s;
SELECT table_name, section, pg_temp.rows_of(query) FROM s WHERE section <> 'DDL';
COMMIT;
SELECT server, syncid, status FROM _rserv_sync_ ORDER BY syncid;
-- the log is kept while server 0 has confirmed nothing
SELECT rserv_clean_log();
--
-- rserv_confirm(server, syncid)
--
SELECT rserv_confirm(0, 2);
SELECT server, syncid, status FROM _rserv_sync_ ORDER BY syncid;
-- again: false; the superseded change set 1, another server: false
SELECT rserv_confirm(0, 2);
SELECT rserv_confirm(0, 1);
SELECT rserv_confirm(7, 2);
-- a change set beyond any this master issued: it lost history the slave has (restored from a
-- backup): refused
SELECT rserv_confirm(0, 999);
SELECT server, syncid, status FROM _rserv_sync_ ORDER BY syncid;
-- Nothing changed since the confirmed snapshot: no rows, no sync id used.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM rserv_prepare(0);
COMMIT;
-- a change to a column that is not watched is not a change either
UPDATE customer SET note = 'changed' WHERE id = 1;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM rserv_prepare(0);
COMMIT;
-- Every slave has confirmed: the log rows it has seen are removed.
SELECT count(*) > 0 AS log_has_rows FROM _rserv_log_;
SELECT rserv_clean_log() > 0 AS removed_some;
SELECT count(*) FROM _rserv_log_;
SELECT rserv_clean_log();
--
-- The next change set: only what changed since the confirmed snapshot.
--
UPDATE customer SET name = 'Ada L.' WHERE id = 1;  -- watched column
UPDATE customer SET id = 30 WHERE id = 3;           -- key change: 3 deleted, 30 updated
DELETE FROM customer WHERE id = 2;
INSERT INTO customer VALUES (2, 'Alan T.', 'back');  -- deleted and inserted again: an UPDATE
UPDATE item SET price = 2 WHERE id = 1;
DELETE FROM pair WHERE a = 2;
INSERT INTO unregistered VALUES (2);
BEGIN ISOLATION LEVEL REPEATABLE READ;
CREATE TEMP TABLE s ON COMMIT DROP AS SELECT * FROM rserv_prepare(0);
SELECT syncid, section, table_name, columns, key_columns FROM s;
SELECT table_name, section, pg_temp.rows_of(query) FROM s WHERE section <> 'DDL';
COMMIT;
SELECT rserv_confirm(0, 3);
--
-- TRUNCATE: the table's TRUNCATE section replaces its DELETE section; rows inserted after
-- the TRUNCATE are in its UPDATE section.
--
TRUNCATE item;
INSERT INTO item VALUES (5, 'nib', 0.25);
BEGIN ISOLATION LEVEL REPEATABLE READ;
CREATE TEMP TABLE s ON COMMIT DROP AS SELECT * FROM rserv_prepare(0);
SELECT syncid, section, table_name, columns, key_columns, query IS NULL AS no_query FROM s;
SELECT table_name, section, pg_temp.rows_of(query) FROM s WHERE section <> 'DDL';
COMMIT;
SELECT rserv_confirm(0, 4);
--
-- Changes rolled back are never sent.
--
BEGIN;
INSERT INTO customer VALUES (99, 'ghost', NULL);
ROLLBACK;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM rserv_prepare(0);
COMMIT;
--
-- Keys logged under unusual session settings are read back by the prepare's own settings.
--
SET DateStyle = 'SQL, DMY';
SET extra_float_digits = -3;
INSERT INTO pair VALUES (3, '01/02/2024', 'dmy');
BEGIN ISOLATION LEVEL REPEATABLE READ;
CREATE TEMP TABLE s ON COMMIT DROP AS SELECT * FROM rserv_prepare(0);
SELECT syncid, section, table_name, columns, key_columns FROM s;
SELECT table_name, section, pg_temp.rows_of(query) FROM s WHERE section <> 'DDL';
COMMIT;
RESET DateStyle;
RESET extra_float_digits;
SELECT rserv_confirm(0, 5);
--
-- A second slave: each server has its own progress; the log is kept until both confirmed.
--
UPDATE customer SET name = 'Ada' WHERE id = 1;
SELECT rserv_register_slave(1, NULL);
BEGIN ISOLATION LEVEL REPEATABLE READ;
-- server 1 never confirmed anything: it gets every row logged so far
SELECT syncid, section, table_name FROM rserv_prepare(1);
COMMIT;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT syncid, section, table_name FROM rserv_prepare(0);
COMMIT;
SELECT server, syncid, status FROM _rserv_sync_ ORDER BY server, syncid;
SELECT rserv_clean_log();
SELECT rserv_confirm(1, 6);
SELECT rserv_confirm(0, 7);
SELECT rserv_clean_log() > 0 AS removed_some;
SELECT count(*) FROM _rserv_log_;
--
-- _rserv_sync_(server): the seed's way to record a snapshot under currval('_rserv_sync_seq_').
--
SELECT nextval('_rserv_sync_seq_');
SELECT _rserv_sync_(0);
SELECT server, syncid, status, minid <= maxid AS bounds_ok FROM _rserv_sync_ WHERE server = 0 ORDER BY syncid;
SELECT rserv_confirm(0, 8);
-- ... once per sync id
SELECT _rserv_sync_(0);
--
-- Dropping a key column of a replicated table is refused, with how to do it instead; dropping
-- the table too.
--
INSERT INTO pair VALUES (4, '2024-01-01', 'z');
ALTER TABLE pair DROP COLUMN b;
DROP TABLE pair;
SELECT rserv_remove_table('pair');
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT * FROM rserv_prepare(0);
ROLLBACK;
-- Clean up.
DROP EXTENSION rserv;
DROP TABLE customer, item, pair, unregistered;
