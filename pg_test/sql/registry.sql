--
-- Table registry on the master: rserv_add_table() / rserv_remove_table().
--
CREATE EXTENSION rserv;
-- What rserv knows about each table, and the triggers it put on user tables.
CREATE TEMP VIEW reg AS
    SELECT reloid::regclass AS tbl, tname, cname, key, watched
    FROM _rserv_tables_ ORDER BY tname;
CREATE TEMP VIEW trig AS
    SELECT tgrelid::regclass AS tbl, tgname, tgenabled, pg_get_triggerdef(oid) AS def
    FROM pg_trigger WHERE tgname LIKE '\_rserv%' ORDER BY tgrelid::regclass::text, tgname;
--
-- A table with a primary key and one watched column (the seed: MasterAddTable db customer lastname).
--
CREATE TABLE customer (id int PRIMARY KEY, firstname text, lastname text, email text);
SELECT rserv_add_table('customer', 'lastname');
SELECT * FROM reg;
SELECT * FROM trig;
-- the triggers depend on the extension (automatically), so DROP EXTENSION removes them
SELECT t.tgname, d.deptype FROM pg_depend d JOIN pg_trigger t ON t.oid = d.objid
WHERE d.classid = 'pg_trigger'::regclass AND d.refclassid = 'pg_extension'::regclass
ORDER BY 1;
SELECT string_agg(oid::text, ',' ORDER BY oid) AS trig_oids FROM pg_trigger
WHERE tgrelid = 'customer'::regclass \gset
-- Same call again: a NOTICE, and nothing changes (same registry row, same triggers).
SELECT rserv_add_table('customer', 'lastname');
SELECT * FROM reg;
SELECT string_agg(oid::text, ',' ORDER BY oid) = :'trig_oids' AS same_triggers FROM pg_trigger
WHERE tgrelid = 'customer'::regclass;
-- A second watched column is added to the first.
SELECT rserv_add_table('customer', 'email');
SELECT * FROM reg;
SELECT * FROM trig;
-- Naming an already watched column again changes nothing.
SELECT rserv_add_table('customer', 'lastname');
-- Without a column every column is watched ...
SELECT rserv_add_table('customer');
SELECT * FROM reg;
SELECT * FROM trig;
-- ... and "all columns" absorbs any column named later.
SELECT rserv_add_table('customer', 'firstname');
SELECT * FROM reg;
-- A missing trigger is put back by registering again.
-- rserv's capture triggers cannot be dropped or disabled while the table is replicated ...
DROP TRIGGER _rserv_truncate_t_ ON customer;
ALTER TABLE customer DISABLE TRIGGER _rserv_trigger_t_;
ALTER TABLE customer DISABLE TRIGGER ALL;
ALTER TABLE customer ENABLE REPLICA TRIGGER _rserv_trigger_t_;
-- ... not in replica mode either (the guards fire there too) ...
SET session_replication_role = replica;
DROP TRIGGER _rserv_truncate_t_ ON customer;
RESET session_replication_role;
-- ... but a superuser can disable event triggers: registering again repairs it
ALTER EVENT TRIGGER _rserv_drop_guard_ DISABLE;
ALTER EVENT TRIGGER _rserv_alter_guard_ DISABLE;
DROP TRIGGER _rserv_truncate_t_ ON customer;
ALTER EVENT TRIGGER _rserv_drop_guard_ ENABLE ALWAYS;
ALTER EVENT TRIGGER _rserv_alter_guard_ ENABLE ALWAYS;
SELECT rserv_add_table('customer');
SELECT * FROM trig;
--
-- No column: every column is watched from the start.
--
CREATE TABLE item (id bigint PRIMARY KEY, name text, price numeric);
SELECT rserv_add_table('item');
SELECT * FROM reg;
--
-- No primary key: a unique NOT NULL column is the identity (the seed: MasterAddTable db test k).
--
CREATE TABLE test (k int NOT NULL UNIQUE, v text);
SELECT rserv_add_table('test', 'k');
SELECT * FROM reg WHERE tbl = 'test'::regclass;
SELECT * FROM trig WHERE tbl = 'test'::regclass;
SELECT rserv_add_table('test', 'k');
-- Without the key column, or with a non-key column, there is no identity to use.
SELECT rserv_add_table('test');
SELECT rserv_add_table('test', 'v');
--
-- A composite unique NOT NULL key, named comma-separated in any order, spaces allowed.
--
CREATE TABLE pair (a int NOT NULL, b text NOT NULL, c text, UNIQUE (a, b));
SELECT rserv_add_table('pair', 'b, a');
SELECT * FROM reg WHERE tbl = 'pair'::regclass;
SELECT * FROM trig WHERE tbl = 'pair'::regclass;
SELECT rserv_add_table('pair', 'a,b');
-- only part of the key is not a key
SELECT rserv_add_table('pair', 'a');
-- a composite primary key is the identity when no column is named
CREATE TABLE pair_pk (a int, b date, c text, PRIMARY KEY (b, a));
SELECT rserv_add_table('pair_pk', 'c');
SELECT * FROM reg WHERE tbl = 'pair_pk'::regclass;
--
-- Errors.
--
-- no such table: PostgreSQL's own regclass error
SELECT rserv_add_table('no_such_table');
SELECT rserv_add_table('no_such_schema.customer');
-- no such column: the hint lists the table's columns
SELECT rserv_add_table('customer', 'no_such_column');
SELECT rserv_add_table('customer', 'id, no_such_column');
SELECT rserv_add_table('customer', '');
-- no primary key and no unique NOT NULL key
CREATE TABLE nokey (v text);
SELECT rserv_add_table('nokey');
SELECT rserv_add_table('nokey', 'v');
-- a unique key with a nullable column is not an identity
CREATE TABLE nullkey (k int UNIQUE, v text);
SELECT rserv_add_table('nullkey', 'k');
-- neither is a partial or an expression unique index
CREATE TABLE partialkey (k int NOT NULL, v text);
CREATE UNIQUE INDEX ON partialkey (k) WHERE k > 0;
CREATE UNIQUE INDEX ON partialkey ((k + 1));
SELECT rserv_add_table('partialkey', 'k');
-- not ordinary tables
CREATE VIEW customer_view AS SELECT * FROM customer;
SELECT rserv_add_table('customer_view');
CREATE MATERIALIZED VIEW customer_mv AS SELECT * FROM customer;
SELECT rserv_add_table('customer_mv');
CREATE SEQUENCE some_seq;
SELECT rserv_add_table('some_seq');
CREATE TABLE part (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE part_1 PARTITION OF part FOR VALUES FROM (0) TO (100);
-- a partition can be registered on its own ...
SELECT rserv_add_table('part_1');
SELECT * FROM reg WHERE tbl = 'part_1'::regclass;
-- ... but then not its partitioned table (the partition's rows would be logged twice)
SELECT rserv_add_table('part');
SELECT rserv_remove_table('part_1');
-- a partitioned table replicates with all its partitions
SELECT rserv_add_table('part');
SELECT * FROM reg WHERE tbl = 'part'::regclass;
SELECT rserv_add_table('part_1');
-- a table registered on its own cannot become one of its partitions
CREATE TABLE part_2 (id int PRIMARY KEY, v text);
SELECT rserv_add_table('part_2');
ALTER TABLE part ATTACH PARTITION part_2 FOR VALUES FROM (100) TO (200);
SELECT rserv_remove_table('part_2');
ALTER TABLE part ATTACH PARTITION part_2 FOR VALUES FROM (100) TO (200);
SELECT tgrelid::regclass, tgname, tgenabled FROM pg_trigger
 WHERE tgrelid IN ('part_1'::regclass, 'part_2'::regclass) ORDER BY 1, 2;
SELECT rserv_remove_table('part');
SELECT tgrelid::regclass, tgname FROM pg_trigger
 WHERE tgrelid IN ('part'::regclass, 'part_1'::regclass, 'part_2'::regclass) ORDER BY 1, 2;
-- a temporary table (its schema name, pg_temp_N, varies: shown as pg_temp_N)
CREATE TEMP TABLE tmp (id int PRIMARY KEY);
DO $$
DECLARE m text; h text; s text;
BEGIN
    PERFORM rserv_add_table('tmp');
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT, s = RETURNED_SQLSTATE;
    RAISE NOTICE 'ERROR % % (hint: %)', s, regexp_replace(m, 'pg_temp_\d+', 'pg_temp_N'), h;
END $$;
-- rserv's own catalog
SELECT rserv_add_table('_rserv_log_');
SELECT rserv_add_table('_rserv_tables_');
-- key columns whose text form depends on session settings
CREATE TABLE money_key (id money PRIMARY KEY, v text);
SELECT rserv_add_table('money_key');
CREATE TABLE regclass_key (id regclass PRIMARY KEY, v text);
SELECT rserv_add_table('regclass_key');
CREATE TABLE regclass_key2 (id int PRIMARY KEY, r regclass NOT NULL UNIQUE);
SELECT rserv_add_table('regclass_key2', 'r');
-- ... a watched (non-key) money column is fine
CREATE TABLE money_val (id int PRIMARY KEY, amount money);
SELECT rserv_add_table('money_val', 'amount');
SELECT * FROM reg WHERE tbl = 'money_val'::regclass;
-- None of the failed calls registered anything.
SELECT * FROM reg;
--
-- Identity conflict: a registered table keeps its identity.
--
CREATE TABLE dual_key (id int PRIMARY KEY, code text NOT NULL UNIQUE, v text);
SELECT rserv_add_table('dual_key');
-- "code" is a unique NOT NULL key, so naming it asks for another identity
SELECT rserv_add_table('dual_key', 'code');
SELECT * FROM reg WHERE tbl = 'dual_key'::regclass;
-- on a fresh registration it would be the identity
SELECT rserv_remove_table('dual_key');
SELECT rserv_add_table('dual_key', 'code');
SELECT * FROM reg WHERE tbl = 'dual_key'::regclass;
SELECT rserv_add_table('dual_key', 'id');
--
-- rserv_remove_table(): triggers, registry row and pending log rows go; table and data stay.
--
INSERT INTO customer VALUES (1, 'Ada', 'Lovelace', 'ada@example.org'), (2, 'Alan', 'Turing', NULL);
INSERT INTO item VALUES (1, 'pen', 1.50);
SELECT reloid::regclass, count(*) FROM _rserv_log_ GROUP BY 1 ORDER BY reloid::regclass::text;
SELECT rserv_remove_table('customer');
SELECT * FROM reg WHERE tbl = 'customer'::regclass;
SELECT * FROM trig WHERE tbl = 'customer'::regclass;
SELECT reloid::regclass, count(*) FROM _rserv_log_ GROUP BY 1 ORDER BY reloid::regclass::text;
SELECT * FROM customer ORDER BY id;
-- the table is no longer captured
INSERT INTO customer VALUES (3, 'Grace', 'Hopper', NULL);
SELECT count(*) FROM _rserv_log_ WHERE reloid = 'customer'::regclass;
-- removing it again, or a table never registered: NOTICE
SELECT rserv_remove_table('customer');
SELECT rserv_remove_table('nokey');
SELECT rserv_remove_table('no_such_table');
-- and it can be registered again
SELECT rserv_add_table('customer', 'lastname');
SELECT * FROM reg WHERE tbl = 'customer'::regclass;
--
-- Schema-qualified, mixed-case and quoted names.
--
CREATE SCHEMA "Weird Schema";
CREATE TABLE "Weird Schema"."Mixed Case" ("Id" int PRIMARY KEY, "Some Col" text, "a,b" text, "x""y" text);
-- column names are taken exactly as written (no identifier quoting), one name or a comma list
SELECT rserv_add_table('"Weird Schema"."Mixed Case"', 'Some Col');
SELECT rserv_add_table('"Weird Schema"."Mixed Case"', 'a,b');
SELECT rserv_add_table('"Weird Schema"."Mixed Case"', 'x"y');
SELECT rserv_add_table('"Weird Schema"."Mixed Case"', '"Some Col"');
SELECT rserv_add_table('"Weird Schema"."Mixed Case"', 'some col');
SELECT * FROM reg WHERE tbl = '"Weird Schema"."Mixed Case"'::regclass;
SELECT * FROM trig WHERE tbl = '"Weird Schema"."Mixed Case"'::regclass;
-- the unquoted name does not resolve
SELECT rserv_add_table('Weird Schema.Mixed Case');
-- an identity given as a mixed-case column with spaces
CREATE TABLE "Weird Schema"."Other" ("Key Part" text NOT NULL, "K2" int NOT NULL, v int,
    UNIQUE ("Key Part", "K2"));
SELECT rserv_add_table('"Weird Schema"."Other"', 'K2, Key Part');
SELECT * FROM reg WHERE tbl = '"Weird Schema"."Other"'::regclass;
INSERT INTO "Weird Schema"."Mixed Case" VALUES (7, 'seven', 'ab', 'xy');
INSERT INTO "Weird Schema"."Other" VALUES ('k"1', 1, 1);
SELECT reloid::regclass, deleted, key FROM _rserv_log_
WHERE reloid IN ('"Weird Schema"."Mixed Case"'::regclass, '"Weird Schema"."Other"'::regclass)
ORDER BY reloid::regclass::text;
-- a search_path does not change the recorded (qualified) name
SET search_path = "Weird Schema", public;
SELECT rserv_add_table('"Mixed Case"', 'Some Col');
RESET search_path;
SELECT rserv_remove_table('"Weird Schema"."Other"');
--
-- DROP EXTENSION removes every rserv trigger; the user tables and their data survive.
--
DROP VIEW reg;
SELECT count(*) FROM trig;
DROP EXTENSION rserv;
SELECT count(*) FROM trig;
SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relname IN ('customer', 'item', 'test', 'pair', 'pair_pk', 'part_1', 'money_val', 'dual_key',
                    'Mixed Case', 'Other');
SELECT * FROM customer ORDER BY id;
INSERT INTO customer VALUES (4, 'Edsger', 'Dijkstra', NULL);
SELECT * FROM "Weird Schema"."Mixed Case";
-- Clean up.
DROP VIEW trig;
DROP MATERIALIZED VIEW customer_mv;
DROP VIEW customer_view;
DROP TABLE customer, item, test, pair, pair_pk, nokey, nullkey, partialkey, part, money_key,
    regclass_key, regclass_key2, money_val, dual_key, tmp;
DROP SEQUENCE some_seq;
DROP TABLE "Weird Schema"."Mixed Case", "Weird Schema"."Other";
DROP SCHEMA "Weird Schema";
