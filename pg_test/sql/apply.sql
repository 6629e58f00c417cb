--
-- Slave side: rserv_slave_add_table() / rserv_slave_remove_table(), the protection of slave
-- tables against local writes, and the apply of a change set (rserv_apply_begin, _stage,
-- _merge). The data that replicate sends with COPY ... FROM STDIN is inserted into the
-- staging table with INSERT here.
--
CREATE EXTENSION rserv;
CREATE TEMP VIEW trig AS
    SELECT tgrelid::regclass AS tbl, tgname, tgenabled, pg_get_triggerdef(oid) AS def
    FROM pg_trigger WHERE tgname LIKE '\_rserv%' ORDER BY tgrelid::regclass::text, tgname;
-- the slave's copy of a master table, with its initial contents
CREATE TABLE t (id int PRIMARY KEY, v text, n numeric);
INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2), (3, 'three', 3);
--
-- Registration.
--
SELECT rserv_slave_add_table('t');
SELECT reloid::regclass, tname, cname, key FROM _rserv_slave_tables_;
SELECT * FROM trig;
-- again: NOTICE, nothing changes
SELECT rserv_slave_add_table('t');
-- a watched column (only the master uses it) is accepted; the identity is the same
SELECT rserv_slave_add_table('t', 'v');
SELECT reloid::regclass, tname, cname, key FROM _rserv_slave_tables_;
-- a missing protection trigger is put back
DROP TRIGGER _rserv_protect_t_ ON t;
SELECT rserv_slave_add_table('t');
SELECT * FROM trig;
-- the same checks as on the master
CREATE TABLE nokey (v text);
SELECT rserv_slave_add_table('nokey');
SELECT rserv_slave_add_table('no_such_table');
SELECT rserv_slave_add_table('t', 'no_such_column');
CREATE VIEW t_view AS SELECT * FROM t;
SELECT rserv_slave_add_table('t_view');
-- another identity for a registered table
CREATE TABLE dual_key (id int PRIMARY KEY, code text NOT NULL UNIQUE, v text);
SELECT rserv_slave_add_table('dual_key');
SELECT rserv_slave_add_table('dual_key', 'code');
--
-- Local writes to a slave table are refused ...
--
INSERT INTO t VALUES (4, 'four', 4);
UPDATE t SET v = 'uno' WHERE id = 1;
DELETE FROM t WHERE id = 1;
TRUNCATE t;
-- ... even when they would touch no row
UPDATE t SET v = v WHERE false;
SELECT * FROM t ORDER BY id;
-- ... unless the session asks for them
SHOW rserv.allow_slave_writes;
SET rserv.allow_slave_writes = on;
INSERT INTO t VALUES (4, 'four', 4);
UPDATE t SET v = 'FOUR' WHERE id = 4;
DELETE FROM t WHERE id = 4;
SELECT * FROM t ORDER BY id;
RESET rserv.allow_slave_writes;
SET rserv.allow_slave_writes = 'not a boolean';
-- reading is fine
SELECT count(*) FROM t;
--
-- Applying a change set.
--
-- stage and merge need rserv_apply_begin() in the same transaction
SELECT rserv_apply_stage('UPDATE', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id']);
SELECT rserv_apply_merge('UPDATE', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id']);
BEGIN;
SELECT rserv_apply_stage('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']);
ROLLBACK;
-- nothing applied yet
SELECT rserv_slave_sync_id(), rserv_slave_master_id();
-- a table registered anew waits for its initial copy (a TRUNCATE section, then its rows):
-- a change set that only carries changes to it is refused
BEGIN;
SELECT rserv_apply_begin(1, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']);
ROLLBACK;
SELECT needs_copy FROM _rserv_slave_tables_ WHERE reloid = 't'::regclass;
UPDATE _rserv_slave_tables_ SET needs_copy = false;  -- as if their initial copies were in
BEGIN;
SELECT rserv_apply_begin(1, '11111111-2222-3333-4444-555555555555', rserv_version());
-- replica mode for the rest of this transaction: the caller is a superuser, who may set it
-- itself (the apply's replica window); a replicator that may not never sees it outside rserv's
-- own statements (tests/tests/replica_window.rs)
SHOW session_replication_role;
SHOW DateStyle;
-- DELETE section: the key columns of every changed identity, as text, into a staging table
-- rserv made under an unpredictable name (it lives as long as the session)
SELECT rserv_apply_stage('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']) AS copy_keys \gset
SELECT :'copy_keys' ~ '^COPY pg_temp\._rserv_keys1_[0-9a-f]{32} \(c1\) FROM STDIN$' AS keys_staged;
SELECT substring(:'copy_keys' from '^COPY (\S+) ') AS keys \gset
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
WHERE attrelid = :'keys'::regclass AND attnum > 0 ORDER BY attnum;
:copy_keys;
1
2
42
\.
SELECT rserv_apply_merge('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']);
-- INSERT section: the caller's COPY, exactly as stage returned it, goes straight into the
-- table (run as the table's owner, in replica mode); merge has nothing left to do (-1)
SELECT rserv_apply_stage('INSERT', 'public', 't', ARRAY['n', 'id', 'v'], ARRAY['id']) AS copy_rows \gset
SELECT :'copy_rows';
:copy_rows;
2.5	2	TWO
10	10	ten
\.
SELECT rserv_apply_merge('INSERT', 'public', 't', ARRAY['n', 'id', 'v'], ARRAY['id']);
-- that COPY is allowed once; any other write to the table is an ordinary local write, which
-- rserv's protection refuses (outside replica mode: this superuser leaves it by hand)
SET LOCAL session_replication_role = origin;
COPY public.t (n, id, v) FROM STDIN;
12	12	twelve
\.
ROLLBACK;
BEGIN;
SELECT rserv_apply_begin(1, '11111111-2222-3333-4444-555555555555', rserv_version());
-- (the rolled-back transaction took its staging table with it: this is a new one)
SELECT rserv_apply_stage('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']) AS copy_keys \gset
SELECT substring(:'copy_keys' from '^COPY (\S+) ') <> :'keys' AS new_table;
SELECT substring(:'copy_keys' from '^COPY (\S+) ') AS keys \gset
:copy_keys;
1
2
42
\.
SELECT rserv_apply_merge('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']);
SELECT rserv_apply_stage('INSERT', 'public', 't', ARRAY['n', 'id', 'v'], ARRAY['id']) AS copy_rows \gset
:copy_rows;
2.5	2	TWO
10	10	ten
\.
SELECT rserv_apply_merge('INSERT', 'public', 't', ARRAY['n', 'id', 'v'], ARRAY['id']);
-- UPDATE section (written by 1.0 development builds): staged rows replace those with their
-- identity, new ones are inserted
SELECT rserv_apply_stage('UPDATE', 'public', 't', ARRAY['n', 'id', 'v'], ARRAY['id']) AS copy_upd \gset
SELECT :'copy_upd' ~ '^COPY pg_temp\._rserv_rows3_[0-9a-f]{32} \(c1, c2, c3\) FROM STDIN$' AS rows_staged;
:copy_upd;
3.5	3	THREE
11	11	eleven
\.
SELECT rserv_apply_merge('UPDATE', 'public', 't', ARRAY['n', 'id', 'v'], ARRAY['id']);
SELECT * FROM t ORDER BY id;
SELECT rserv_slave_sync_id(), rserv_slave_master_id();
COMMIT;
SHOW session_replication_role;
SELECT * FROM t ORDER BY id;
-- the key staging table stays, emptied after its merge
SELECT count(*) FROM :keys;
SELECT rserv_slave_sync_id(), rserv_slave_master_id();
SELECT syncid, master FROM _rserv_slave_sync_;
-- the apply transaction is over: stage needs a new rserv_apply_begin()
BEGIN;
SELECT rserv_apply_stage('UPDATE', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id']);
ROLLBACK;
-- The same change set again, or an older one: false with a NOTICE; the caller rolls back.
BEGIN;
SELECT rserv_apply_begin(1, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('UPDATE', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id']);
ROLLBACK;
BEGIN;
SELECT rserv_apply_begin(0, '11111111-2222-3333-4444-555555555555', rserv_version());
ROLLBACK;
-- Another master: refused.
BEGIN;
SELECT rserv_apply_begin(2, '99999999-8888-7777-6666-555555555555', rserv_version());
ROLLBACK;
-- Another rserv version is no reason to refuse: a change set is read by its format and the
-- features it uses. One in a format or with a feature this slave does not read is refused.
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', '9.0.0', format => 2);
ROLLBACK;
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', '1.2.0', format => 1,
                         features => ARRAY['ddl', 'sequence', 'hologram']);
ROLLBACK;
SELECT rserv_slave_sync_id();
--
-- Sections the slave cannot apply. Each error rolls the whole change set back.
--
CREATE TABLE unregistered (id int PRIMARY KEY, v text);
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('UPDATE', 'public', 'unregistered', ARRAY['id', 'v'], ARRAY['id']);
ROLLBACK;
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('UPDATE', 'public', 'no_such_table', ARRAY['id'], ARRAY['id']);
ROLLBACK;
-- a column the slave lacks
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('UPDATE', 'public', 't', ARRAY['id', 'v', 'n', 'extra col'], ARRAY['id']);
ROLLBACK;
-- another key
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('UPDATE', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id', 'v']);
ROLLBACK;
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('DELETE', 'public', 't', ARRAY['v'], ARRAY['v']);
ROLLBACK;
-- an unknown section
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('MERGE', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id']);
ROLLBACK;
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('update', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id']);
ROLLBACK;
-- a column generated on the slave
CREATE TABLE gen (id int PRIMARY KEY, price numeric, doubled numeric GENERATED ALWAYS AS (price * 2) STORED);
SELECT rserv_slave_add_table('gen');
UPDATE _rserv_slave_tables_ SET needs_copy = false;  -- as if their initial copies were in
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('UPDATE', 'public', 'gen', ARRAY['id', 'price', 'doubled'], ARRAY['id']);
ROLLBACK;
-- an error after some sections were merged undoes them, and the sync id stays
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']) = :'copy_keys' AS same_key_table;
:copy_keys;
2
\.
SELECT rserv_apply_merge('DELETE', 'public', 't', ARRAY['id'], ARRAY['id']);
SELECT rserv_apply_stage('UPDATE', 'public', 'unregistered', ARRAY['id', 'v'], ARRAY['id']);
ROLLBACK;
SELECT * FROM t ORDER BY id;
SELECT rserv_slave_sync_id();
--
-- TRUNCATE section: carried out by stage (no staging table), merge does nothing.
--
BEGIN;
SELECT rserv_apply_begin(2, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('TRUNCATE', 'public', 't', '{}', ARRAY['id']) IS NULL AS no_copy;
SELECT rserv_apply_merge('TRUNCATE', 'public', 't', '{}', ARRAY['id']);
SELECT count(*) FROM t;
SELECT rserv_apply_stage('INSERT', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id']) AS copy_rows \gset
:copy_rows;
5	five	5
\.
SELECT rserv_apply_merge('INSERT', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id']);
COMMIT;
SELECT * FROM t ORDER BY id;
SELECT rserv_slave_sync_id();
--
-- Slave triggers and foreign keys do not fire for replicated rows (replica mode); a
-- replicated key swap within one section never meets a transient duplicate.
--
CREATE TABLE parent (id int PRIMARY KEY, code text NOT NULL UNIQUE);
CREATE TABLE child (id int PRIMARY KEY, parent_id int REFERENCES parent);
INSERT INTO parent VALUES (1, 'a'), (2, 'b');
SELECT rserv_slave_add_table('parent');
SELECT rserv_slave_add_table('child');
UPDATE _rserv_slave_tables_ SET needs_copy = false;  -- as if their initial copies were in
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'user trigger fired on %', TG_TABLE_NAME; END $$;
CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON parent FOR EACH ROW EXECUTE FUNCTION refuse();
BEGIN;
SELECT rserv_apply_begin(3, '11111111-2222-3333-4444-555555555555', rserv_version());
-- a child whose parent arrives later in the change set (or not at all)
SELECT rserv_apply_stage('INSERT', 'public', 'child', ARRAY['id', 'parent_id'], ARRAY['id']) AS copy_rows \gset
:copy_rows;
1	3
\.
SELECT rserv_apply_merge('INSERT', 'public', 'child', ARRAY['id', 'parent_id'], ARRAY['id']);
-- codes swapped between two parents
SELECT rserv_apply_stage('UPDATE', 'public', 'parent', ARRAY['id', 'code'], ARRAY['id']) AS copy_upd \gset
:copy_upd;
1	b
2	a
3	c
\.
SELECT rserv_apply_merge('UPDATE', 'public', 'parent', ARRAY['id', 'code'], ARRAY['id']);
COMMIT;
SELECT * FROM parent ORDER BY id;
SELECT * FROM child ORDER BY id;
--
-- Composite keys, identity columns, quoted names; slave-only columns get their default.
--
CREATE SCHEMA "Weird Schema";
CREATE TABLE "Weird Schema"."Mixed Case" (
    "Id" int GENERATED ALWAYS AS IDENTITY, "Day" date NOT NULL, "Some Col" text,
    local_note text DEFAULT 'slave only', PRIMARY KEY ("Id", "Day"));
INSERT INTO "Weird Schema"."Mixed Case" ("Day", "Some Col", local_note) VALUES ('2024-01-01', 'old', 'mine');
SELECT rserv_slave_add_table('"Weird Schema"."Mixed Case"');
UPDATE _rserv_slave_tables_ SET needs_copy = false;  -- as if their initial copies were in
SELECT reloid::regclass, tname, key FROM _rserv_slave_tables_ WHERE reloid = '"Weird Schema"."Mixed Case"'::regclass;
BEGIN;
SELECT rserv_apply_begin(4, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('UPDATE', 'Weird Schema', 'Mixed Case', ARRAY['Id', 'Day', 'Some Col'], ARRAY['Day', 'Id']) AS copy_upd \gset
:copy_upd;
1	2024-01-01	new
100	2024-12-31	hundred
\.
SELECT rserv_apply_merge('UPDATE', 'Weird Schema', 'Mixed Case', ARRAY['Id', 'Day', 'Some Col'], ARRAY['Day', 'Id']);
COMMIT;
SELECT * FROM "Weird Schema"."Mixed Case" ORDER BY 1;
-- names are matched exactly: no case folding
BEGIN;
SELECT rserv_apply_begin(5, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('UPDATE', 'weird schema', 'mixed case', ARRAY['Id', 'Day', 'Some Col'], ARRAY['Day', 'Id']);
ROLLBACK;
--
-- rserv_slave_remove_table(): the table is writable again.
--
SELECT rserv_slave_remove_table('t');
SELECT * FROM trig WHERE tbl = 't'::regclass;
SELECT count(*) FROM _rserv_slave_tables_ WHERE reloid = 't'::regclass;
INSERT INTO t VALUES (6, 'six', 6);
SELECT * FROM t ORDER BY id;
SELECT rserv_slave_remove_table('t');
-- and it is no longer a target of change sets
BEGIN;
SELECT rserv_apply_begin(5, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('UPDATE', 'public', 't', ARRAY['id', 'v', 'n'], ARRAY['id']);
ROLLBACK;
-- Keys are compared with the key columns' own types and collations.
CREATE TABLE k (id bigint, name text COLLATE "C", PRIMARY KEY (name, id));
INSERT INTO k VALUES (5000000000, 'B'), (5000000000, 'b'), (1, 'B');
SELECT rserv_slave_add_table('k');
UPDATE _rserv_slave_tables_ SET needs_copy = false;  -- as if their initial copies were in
BEGIN;
SELECT rserv_apply_begin(5, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('DELETE', 'public', 'k', ARRAY['name', 'id'], ARRAY['name', 'id']) AS copy_k \gset
SELECT :'copy_k' ~ '_rserv_keys2_[0-9a-f]{32} \(c1, c2\) FROM STDIN$' AS two_columns;
:copy_k;
b	5000000000
\.
SELECT rserv_apply_merge('DELETE', 'public', 'k', ARRAY['name', 'id'], ARRAY['name', 'id']);
COMMIT;
SELECT * FROM k ORDER BY name, id;
SELECT rserv_slave_remove_table('k');
DROP TABLE k;
--
-- Every statement on a slave table runs as the table's owner: the owner's triggers (here an
-- ENABLE ALWAYS one, which fires in replica mode) see the owner as current_user, whoever
-- replicates, under a security-restricted operation.
--
CREATE ROLE rserv_regress_owner;
CREATE TABLE owned (id int PRIMARY KEY, v text);
CREATE TABLE seen (who text);
ALTER TABLE owned OWNER TO rserv_regress_owner;
ALTER TABLE seen OWNER TO rserv_regress_owner;
CREATE FUNCTION record_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.seen VALUES (current_user);
    RETURN NULL;
END $$;
CREATE TRIGGER record_user AFTER INSERT OR DELETE ON owned FOR EACH STATEMENT EXECUTE FUNCTION record_user();
ALTER TABLE owned ENABLE ALWAYS TRIGGER record_user;
-- registering a slave table is a replication decision: its owner alone may not
SET ROLE rserv_regress_owner;
SELECT rserv_slave_add_table('owned');
RESET ROLE;
SELECT rserv_slave_add_table('owned');
UPDATE _rserv_slave_tables_ SET needs_copy = false;  -- as if their initial copies were in
-- the owner's code must not find the replicating session's temporary objects (here: trig)
BEGIN;
SELECT rserv_apply_begin(6, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('TRUNCATE', 'public', 'owned', '{}', ARRAY['id']);
ROLLBACK;
DROP VIEW trig;
BEGIN;
SELECT rserv_apply_begin(6, '11111111-2222-3333-4444-555555555555', rserv_version());
SELECT rserv_apply_stage('TRUNCATE', 'public', 'owned', '{}', ARRAY['id']) IS NULL AS no_copy;
SELECT rserv_apply_stage('INSERT', 'public', 'owned', ARRAY['id', 'v'], ARRAY['id']) AS copy_rows \gset
:copy_rows;
1	one
\.
SELECT rserv_apply_merge('INSERT', 'public', 'owned', ARRAY['id', 'v'], ARRAY['id']);
COMMIT;
SELECT DISTINCT who FROM seen;
SELECT * FROM owned;
CREATE TEMP VIEW trig AS
    SELECT tgrelid::regclass AS tbl, tgname, tgenabled, pg_get_triggerdef(oid) AS def
    FROM pg_trigger WHERE tgname LIKE '\_rserv%' ORDER BY tgrelid::regclass::text, tgname;
--
-- DROP EXTENSION removes the protection triggers.
--
SELECT count(*) FROM trig;
DROP EXTENSION rserv;
SELECT count(*) FROM trig;
INSERT INTO parent VALUES (9, 'z');
-- Clean up.
DROP VIEW trig;
DROP VIEW t_view;
DROP TABLE t, nokey, dual_key, unregistered, gen, child, parent, "Weird Schema"."Mixed Case", owned, seen;
DROP FUNCTION refuse();
DROP FUNCTION record_user();
DROP ROLE rserv_regress_owner;
DROP SCHEMA "Weird Schema";
