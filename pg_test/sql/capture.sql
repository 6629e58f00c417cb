--
-- Capture: what the _rserv_log_ trigger writes to _rserv_log_ (reloid, logid, deleted, key).
-- logid (the writer's transaction id) varies from run to run and is not shown.
--
CREATE EXTENSION rserv;
CREATE TEMP VIEW log AS
    SELECT reloid::regclass AS tbl, deleted, key FROM _rserv_log_
    ORDER BY reloid::regclass::text, key, deleted;
CREATE TABLE customer (id int PRIMARY KEY, firstname text, lastname text, email text);
SELECT rserv_add_table('customer', 'lastname');
-- INSERT: one row per inserted row, deleted = false
INSERT INTO customer VALUES (1, 'Ada', 'Lovelace', 'ada@example.org'), (2, 'Alan', 'Turing', NULL);
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- UPDATE of a watched column
UPDATE customer SET lastname = 'King' WHERE id = 1;
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- UPDATE of columns that are not watched: nothing logged
UPDATE customer SET firstname = 'Augusta', email = 'ada@example.com' WHERE id = 1;
SELECT * FROM log;
-- UPDATE setting a watched column to the value it has: nothing logged
UPDATE customer SET lastname = lastname;
SELECT * FROM log;
-- a watched column set to or from NULL is a change
UPDATE customer SET lastname = NULL WHERE id = 2;
UPDATE customer SET lastname = 'Turing' WHERE id = 2;
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- UPDATE changing the key: the old identity is deleted, the new one logged
UPDATE customer SET id = 10 WHERE id = 1;
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- ... also when no watched column changes
UPDATE customer SET id = 20, firstname = 'A.' WHERE id = 2;
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- INSERT ... ON CONFLICT DO UPDATE: logged like the UPDATE it turned into
INSERT INTO customer VALUES (10, 'Ada', 'Byron', NULL)
    ON CONFLICT (id) DO UPDATE SET lastname = excluded.lastname;
INSERT INTO customer VALUES (30, 'Grace', 'Hopper', NULL)
    ON CONFLICT (id) DO UPDATE SET lastname = excluded.lastname;
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- DELETE
DELETE FROM customer WHERE id = 10;
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- TRUNCATE: one row for the whole table, key NULL
TRUNCATE customer;
SELECT *, key IS NULL AS key_is_null FROM log;
TRUNCATE _rserv_log_;
--
-- Every column watched: any real change is logged, a no-op UPDATE is not.
--
CREATE TABLE item (id bigint PRIMARY KEY, name text, price numeric, gen numeric GENERATED ALWAYS AS (price * 2) STORED);
SELECT rserv_add_table('item');
INSERT INTO item VALUES (1, 'pen', 1.50), (2, 'ink', 3);
UPDATE item SET name = 'quill' WHERE id = 1;
UPDATE item SET price = price, name = name;
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- equal but differently stored values count as a change (one row too many, never one too few)
UPDATE item SET price = 3.0 WHERE id = 2;
SELECT * FROM log;
TRUNCATE _rserv_log_;
--
-- Composite key (a unique NOT NULL key of two columns, given in another order).
--
CREATE TABLE pair (a int NOT NULL, b text NOT NULL, c text, UNIQUE (a, b));
SELECT rserv_add_table('pair', 'b,a');
INSERT INTO pair VALUES (1, 'x', 'c1'), (1, 'y', 'c2');
UPDATE pair SET c = 'c3' WHERE b = 'y';
UPDATE pair SET b = 'z' WHERE b = 'x';
DELETE FROM pair WHERE b = 'y';
SELECT * FROM log;
TRUNCATE _rserv_log_;
--
-- Transactions: the log rows share the transaction's fate.
--
BEGIN;
INSERT INTO customer VALUES (1, 'Ada', 'Lovelace', NULL);
ROLLBACK;
SELECT * FROM log;
BEGIN;
INSERT INTO customer VALUES (1, 'Ada', 'Lovelace', NULL);
SAVEPOINT s1;
INSERT INTO customer VALUES (2, 'Alan', 'Turing', NULL);
UPDATE customer SET lastname = 'King' WHERE id = 1;
SELECT * FROM log;
ROLLBACK TO SAVEPOINT s1;
-- the rows written in the rolled back subtransaction are gone
SELECT * FROM log;
SAVEPOINT s2;
DELETE FROM customer WHERE id = 1;
RELEASE SAVEPOINT s2;
-- rows of a released subtransaction stay, under the top-level transaction id
SELECT * FROM log;
SELECT count(*) AS rows, bool_and(logid = pg_current_xact_id()::text::int8) AS top_level_xid
FROM _rserv_log_;
COMMIT;
SELECT * FROM log;
SELECT * FROM customer;
TRUNCATE _rserv_log_;
-- changes made as a replica (as on a cascading slave) are captured too
SET session_replication_role = replica;
INSERT INTO customer VALUES (5, 'Barbara', 'Liskov', NULL);
RESET session_replication_role;
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- writers need no privileges on rserv's catalog
CREATE ROLE regress_rserv_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON customer TO regress_rserv_writer;
SET ROLE regress_rserv_writer;
INSERT INTO customer VALUES (6, 'Donald', 'Knuth', NULL);
UPDATE customer SET lastname = 'Knuth!' WHERE id = 6;
SELECT * FROM _rserv_log_;
RESET ROLE;
SELECT * FROM log;
TRUNCATE _rserv_log_;
REVOKE ALL ON customer FROM regress_rserv_writer;
DROP ROLE regress_rserv_writer;
--
-- Keys as canonical text, whatever the writer's session settings.
--
CREATE TABLE k_timestamp (k timestamp PRIMARY KEY);
CREATE TABLE k_date (k date PRIMARY KEY);
CREATE TABLE k_float8 (k float8 PRIMARY KEY);
CREATE TABLE k_float4 (k float4 PRIMARY KEY);
CREATE TABLE k_numeric (k numeric PRIMARY KEY);
CREATE TABLE k_interval (k interval PRIMARY KEY);
CREATE TABLE k_text (k text PRIMARY KEY);
SELECT rserv_add_table(t) FROM unnest('{k_timestamp,k_date,k_float8,k_float4,k_numeric,k_interval,k_text}'::regclass[]) AS t;
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'Pacific/Chatham';
SET extra_float_digits = -3;
SET IntervalStyle = 'sql_standard';
-- input in the session's style: 29/02/2024 is 29 February
INSERT INTO k_timestamp VALUES ('29/02/2024 23:59:59.123456'), ('01/02/2024'), ('infinity');
INSERT INTO k_date VALUES ('29/02/2024'), ('01/02/0044 BC'), ('-infinity');
INSERT INTO k_float8 VALUES (1/3::float8), (0.1::float8 + 0.2), (1e300), ('-1.5e-300'), ('NaN'), ('Infinity');
INSERT INTO k_float4 VALUES (1/3::float4), ('16777217'), ('-Infinity');
INSERT INTO k_numeric VALUES (1.50), (-0.000000000000000000001), (123456789012345678901234567890.123), ('NaN');
INSERT INTO k_interval VALUES ('1 day 02:03:04.5'), ('-1 year -2 months'), ('P1Y2M3DT4H5M6S');
INSERT INTO k_text VALUES (e'it''s "quoted"'), (e'tab\there'), (e'new\nline'), (e'back\\slash'),
    ('ünïcødé 😀 日本'), (''), ('NULL'), ('{a,b}'), (' spaced ');
-- what the user sees in this session ...
SELECT * FROM k_timestamp ORDER BY k;
SELECT * FROM k_date ORDER BY k;
SELECT * FROM k_float8 ORDER BY k;
SELECT * FROM k_float4 ORDER BY k;
SELECT * FROM k_interval ORDER BY k;
-- ... is not what is logged: ISO dates, shortest exact floats, postgres-style intervals
SELECT tbl, deleted, key FROM log WHERE tbl::text <> 'k_text';
-- text keys, shown as JSON to make the control characters visible
SELECT to_jsonb(key) AS key FROM _rserv_log_ WHERE reloid = 'k_text'::regclass ORDER BY key;
SELECT count(*) AS null_elements FROM _rserv_log_ WHERE reloid = 'k_text'::regclass AND key[1] IS NULL;
-- the session's settings are untouched by the trigger
SHOW DateStyle;
SHOW TimeZone;
SHOW extra_float_digits;
SHOW IntervalStyle;
SELECT 1/3::float8 AS third, '2024-02-29'::date AS leap_day;
-- every logged key, cast back to its column's type, finds its row
SELECT l.reloid::regclass, count(*) AS logged,
       count(*) FILTER (WHERE CASE l.reloid
           WHEN 'k_timestamp'::regclass THEN EXISTS (SELECT 1 FROM k_timestamp t WHERE t.k = l.key[1]::timestamp)
           WHEN 'k_date'::regclass THEN EXISTS (SELECT 1 FROM k_date t WHERE t.k = l.key[1]::date)
           WHEN 'k_float8'::regclass THEN EXISTS (SELECT 1 FROM k_float8 t WHERE t.k = l.key[1]::float8)
           WHEN 'k_float4'::regclass THEN EXISTS (SELECT 1 FROM k_float4 t WHERE t.k = l.key[1]::float4)
           WHEN 'k_numeric'::regclass THEN EXISTS (SELECT 1 FROM k_numeric t WHERE t.k = l.key[1]::numeric)
           WHEN 'k_interval'::regclass THEN EXISTS (SELECT 1 FROM k_interval t WHERE t.k = l.key[1]::interval)
           WHEN 'k_text'::regclass THEN EXISTS (SELECT 1 FROM k_text t WHERE t.k = l.key[1])
       END) AS found
FROM _rserv_log_ l GROUP BY 1 ORDER BY l.reloid::regclass::text;
RESET DateStyle;
RESET TimeZone;
RESET extra_float_digits;
RESET IntervalStyle;
TRUNCATE _rserv_log_;
--
-- _rserv_debug_(level) returns the previous level. At 1 the trigger reports every log row
-- it writes (a NOTICE that contains the transaction id, which varies: only its SQLSTATE is
-- shown here); at 2 also the UPDATEs it skips.
--
SELECT _rserv_debug_(1);
\set VERBOSITY sqlstate
INSERT INTO customer VALUES (7, 'Niklaus', 'Wirth', NULL), (8, 'Tony', 'Hoare', NULL);
TRUNCATE customer;
\set VERBOSITY default
UPDATE item SET name = name;
SELECT _rserv_debug_(2);
UPDATE item SET name = name;
UPDATE customer SET firstname = 'x';
SELECT _rserv_debug_(0);
UPDATE item SET name = name;
INSERT INTO customer VALUES (9, 'Frances', 'Allen', NULL);
SELECT * FROM log;
TRUNCATE _rserv_log_;
--
-- Renaming a key column of a replicated table is followed: the registration's key is renamed
-- with it (and the slaves rename theirs when the change reaches them); dropping one is refused.
-- Dropping the last watched column makes every column watched (with a WARNING): never a
-- silent narrowing of what is replicated.
--
ALTER TABLE pair RENAME COLUMN a TO aa;
SELECT key FROM _rserv_tables_ WHERE reloid = 'pair'::regclass;
SELECT reloid::regclass, recopy, old->'columns'->0->>'name' AS was, new->'columns'->0->>'name' AS now
  FROM _rserv_ddl_;
ALTER TABLE pair DROP COLUMN aa;
DELETE FROM pair WHERE aa = 2;
INSERT INTO pair VALUES (2, 'x', 'c');
ALTER TABLE customer DROP COLUMN lastname;
UPDATE customer SET firstname = 'Fran' WHERE id = 9;
DELETE FROM customer WHERE id = 9;
SELECT rserv_remove_table('customer');
SELECT rserv_add_table('customer');
DELETE FROM customer WHERE id = 9;
SELECT * FROM log;
TRUNCATE _rserv_log_;
--
-- Watched columns follow renames; columns of unique indexes count as watched (a stale value
-- there could collide on the slave).
--
CREATE TABLE w (id int PRIMARY KEY, note text, code text, other text, CONSTRAINT w_code UNIQUE (code));
INSERT INTO w VALUES (1, 'n', 'c1', 'o');
SELECT rserv_add_table('w', 'note');
ALTER TABLE w RENAME COLUMN note TO remark;
SELECT watched, watched_attnums FROM _rserv_tables_ WHERE reloid = 'w'::regclass;
UPDATE w SET remark = 'renamed, still watched';
UPDATE w SET code = 'c2';
UPDATE w SET other = 'not watched';
SELECT * FROM log;
TRUNCATE _rserv_log_;
-- a unique index created later counts too
CREATE UNIQUE INDEX w_other ON w (lower(other));
UPDATE w SET other = 'watched now';
SELECT * FROM log;
TRUNCATE _rserv_log_;
--
-- Two-phase commit: PREPARE TRANSACTION works on replicated tables (the wake-up NOTIFY is
-- never sent from a prepared transaction), and the change is logged under its transaction.
--
BEGIN;
INSERT INTO w VALUES (2, 'two', 'c3', 'x');
PREPARE TRANSACTION 'rserv_regress_2pc';
COMMIT PREPARED 'rserv_regress_2pc';
SELECT * FROM log;
TRUNCATE _rserv_log_;
--
-- Unlogged tables are refused (crash recovery would empty them behind rserv's back), and a
-- replicated table cannot be made unlogged.
--
CREATE UNLOGGED TABLE ul (id int PRIMARY KEY);
SELECT rserv_add_table('ul');
ALTER TABLE w SET UNLOGGED;
-- Clean up.
DROP VIEW log;
DROP EXTENSION rserv;
DROP TABLE customer, item, pair, w, ul, k_timestamp, k_date, k_float8, k_float4, k_numeric, k_interval, k_text;
