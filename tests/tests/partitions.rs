//! Partitioned tables replicate as one table: rows in every partition, rows that move between
//! partitions, TRUNCATE of one partition or of the whole tree, partitions created, attached and
//! detached on the master while replicating (the slave's tree follows). Dropping a partition that still holds replicated rows is refused.

use rserv_tests::pair::{assert_ok, number, Pair, DB};
use rserv_tests::roles::try_sql;

const TREE: &str = "measure";

fn step(p: &Pair, what: &str, master_sql: &str) {
    p.master.execute(DB, master_sql);
    p.sync();
    let m = Pair::rows(&p.master, TREE);
    let s = Pair::rows(&p.slave, TREE);
    assert_eq!(
        m, s,
        "after {what}: {TREE} differs between master and slave"
    );
}

#[test]
fn a_partitioned_table_replicates_through_every_partition_change() {
    let p = Pair::start("part");
    p.both(
        "CREATE TABLE measure (region text NOT NULL, id int NOT NULL, v text,
             PRIMARY KEY (region, id)) PARTITION BY LIST (region);
         CREATE TABLE measure_a PARTITION OF measure FOR VALUES IN ('a');
         CREATE TABLE measure_b PARTITION OF measure FOR VALUES IN ('b')
             PARTITION BY RANGE (id);
         CREATE TABLE measure_b_low PARTITION OF measure_b FOR VALUES FROM (MINVALUE) TO (1000);
         CREATE TABLE measure_b_high PARTITION OF measure_b FOR VALUES FROM (1000) TO (MAXVALUE);
         CREATE TABLE measure_other PARTITION OF measure DEFAULT;",
    );
    p.master
        .execute(DB, "INSERT INTO measure SELECT r, i, 'before' FROM unnest(ARRAY['a','b','x']) r, generate_series(1, 1500, 7) i");
    p.master.execute(DB, "SELECT rserv_add_table('measure')");
    p.slave
        .execute(DB, "SELECT rserv_slave_add_table('measure')");
    step(&p, "the initial copy", "SELECT 1");
    assert!(number(&p.slave, "SELECT count(*) FROM measure_b_high") > 0);

    step(
        &p,
        "inserts, updates and deletes in every partition",
        "INSERT INTO measure SELECT r, i, 'new' FROM unnest(ARRAY['a','b','y']) r, generate_series(2, 1500, 11) i
             ON CONFLICT DO NOTHING;
         UPDATE measure SET v = 'upd' WHERE id % 3 = 0;
         DELETE FROM measure WHERE id % 5 = 0;",
    );
    step(
        &p,
        "rows moving between partitions (key change and sub-partition change)",
        "UPDATE measure SET region = 'm' WHERE region = 'x' AND id < 300;
         UPDATE measure SET id = id + 2000 WHERE region = 'b' AND id < 200;
         UPDATE measure SET region = 'z' WHERE region = 'a' AND id > 1400;",
    );
    step(
        &p,
        "TRUNCATE of one leaf partition",
        "TRUNCATE measure_b_low",
    );
    step(
        &p,
        "TRUNCATE of a partitioned partition",
        "INSERT INTO measure SELECT 'b', i, 'refill' FROM generate_series(1, 999, 17) i; TRUNCATE measure_b",
    );
    step(
        &p,
        "TRUNCATE of one leaf, then new rows in it in the same transaction",
        "BEGIN; TRUNCATE measure_a; INSERT INTO measure VALUES ('a', 1, 'after truncate'); COMMIT;",
    );

    // a new partition on the master: the slave follows with no manual step
    p.master.execute(
        DB,
        "CREATE TABLE measure_c PARTITION OF measure FOR VALUES IN ('c')",
    );
    step(
        &p,
        "rows in a new partition",
        "INSERT INTO measure SELECT 'c', i, 'c' FROM generate_series(2000, 2049) i",
    );
    assert_eq!(number(&p.slave, "SELECT count(*) FROM measure_c"), 50);

    // a table full of rows attached on the master: its rows join the replicated table
    p.master.execute(
        DB,
        "CREATE TABLE measure_d (LIKE measure);
         INSERT INTO measure_d SELECT 'd', i, 'attached' FROM generate_series(1, 40) i;",
    );
    step(
        &p,
        "ATTACH PARTITION of a table with rows",
        "ALTER TABLE measure ATTACH PARTITION measure_d FOR VALUES IN ('d')",
    );
    assert_eq!(number(&p.slave, "SELECT count(*) FROM measure_d"), 40);

    // detached on the master: its rows leave the replicated table, and the slave detaches it too
    step(
        &p,
        "DETACH PARTITION",
        "ALTER TABLE measure DETACH PARTITION measure_c",
    );
    // both keep the detached table as it was, outside the tree
    assert_eq!(number(&p.master, "SELECT count(*) FROM measure_c"), 50);
    assert_eq!(number(&p.slave, "SELECT count(*) FROM measure_c"), 50);
    assert_eq!(
        number(
            &p.slave,
            "SELECT count(*) FROM pg_inherits WHERE inhrelid = 'measure_c'::regclass"
        ),
        0,
        "the slave's measure_c is still a partition"
    );
    step(
        &p,
        "writes to the detached table",
        "INSERT INTO measure_c VALUES ('c', 999, 'not replicated'); UPDATE measure SET v = 'still' WHERE region = 'd'",
    );

    // dropping a partition that holds replicated rows would lose their deletion
    let mut m = p.master.connect(DB);
    let err =
        try_sql(&mut m, "DROP TABLE measure_d").expect_err("dropping a partition must be refused");
    assert!(
        err.contains("DETACH PARTITION"),
        "the error names the fix: {err}"
    );
    // the slave refuses local writes on its partitions
    let mut s = p.slave.connect(DB);
    let err = try_sql(&mut s, "INSERT INTO measure_d VALUES ('d', 5000, 'local')")
        .expect_err("a slave partition must refuse local writes");
    assert!(err.contains("rserv"), "{err}");
    let err = try_sql(&mut s, "DELETE FROM measure_a")
        .expect_err("a slave partition must refuse local deletes");
    assert!(err.contains("rserv"), "{err}");

    step(&p, "TRUNCATE of the whole tree", "TRUNCATE measure");
    step(
        &p,
        "rows after the tree was truncated",
        "INSERT INTO measure SELECT r, i, 'again' FROM unnest(ARRAY['a','b','d','q']) r, generate_series(1, 1200, 13) i",
    );
    step(
        &p,
        "detach, then drop",
        "ALTER TABLE measure DETACH PARTITION measure_d; DROP TABLE measure_d",
    );
    assert_eq!(
        number(
            &p.master,
            "SELECT count(*) FROM _rserv_partitions_ WHERE part = 'measure_a'::regclass"
        ),
        1
    );
}

/// Every partition of `root` with its level, bound and indexes, as text.
fn tree(c: &rserv_tests::Cluster, root: &str) -> Vec<String> {
    c.query_strings(
        DB,
        &format!(
            "SELECT t.level || ' ' || t.relid::text || ' ' || coalesce(pg_get_expr(c.relpartbound, c.oid), '-')
                    || ' ' || coalesce(pg_get_partkeydef(c.oid), '-')
                    || ' [' || coalesce((SELECT string_agg(pg_get_indexdef(i.indexrelid) || CASE WHEN i.indisvalid THEN '' ELSE ' INVALID' END, '; ' ORDER BY pg_get_indexdef(i.indexrelid))
                                          FROM pg_index i WHERE i.indrelid = c.oid), '') || ']'
               FROM pg_partition_tree('{root}') t JOIN pg_class c ON c.oid = t.relid ORDER BY 1"
        ),
    )
    .into_iter()
    .map(|r| r[0].clone().unwrap_or_default())
    .collect()
}

#[test]
fn create_tables_builds_the_whole_partition_tree() {
    let p = Pair::start("partdef");
    p.master.execute(
        DB,
        "CREATE SCHEMA sales;
         CREATE TABLE sales.orders (id bigint GENERATED ALWAYS AS IDENTITY, placed date NOT NULL,
             customer int NOT NULL, amount numeric(12,2) CHECK (amount >= 0),
             PRIMARY KEY (id, placed)) PARTITION BY RANGE (placed);
         CREATE TABLE sales.orders_2025 PARTITION OF sales.orders
             FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY HASH (id);
         CREATE TABLE sales.orders_2025_h0 PARTITION OF sales.orders_2025 FOR VALUES WITH (MODULUS 2, REMAINDER 0);
         CREATE TABLE sales.orders_2025_h1 PARTITION OF sales.orders_2025 FOR VALUES WITH (MODULUS 2, REMAINDER 1);
         CREATE TABLE sales.orders_2026 PARTITION OF sales.orders
             FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
         CREATE TABLE sales.orders_old PARTITION OF sales.orders DEFAULT;
         CREATE INDEX ON sales.orders (customer);
         CREATE INDEX orders_2026_amount ON sales.orders_2026 (amount);
         INSERT INTO sales.orders (placed, customer, amount)
             SELECT DATE '2024-06-01' + (i % 900), i % 37, i * 1.25 FROM generate_series(1, 3000) i;
         SELECT rserv_add_table('sales.orders');",
    );
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "create tables");
    assert_eq!(
        tree(&p.master, "sales.orders"),
        tree(&p.slave, "sales.orders")
    );
    for t in ["sales.orders", "sales.orders_2025_h1", "sales.orders_old"] {
        assert_eq!(
            Pair::rows(&p.master, t),
            Pair::rows(&p.slave, t),
            "{t} differs"
        );
    }
    p.master.execute(
        DB,
        "UPDATE sales.orders SET placed = placed + 200 WHERE customer = 3;
         DELETE FROM sales.orders WHERE customer = 4;
         TRUNCATE sales.orders_2025_h0;",
    );
    p.sync();
    assert_eq!(
        Pair::rows(&p.master, "sales.orders"),
        Pair::rows(&p.slave, "sales.orders")
    );
    let mut s = p.slave.connect(DB);
    let err = try_sql(&mut s, "DELETE FROM sales.orders_2026")
        .expect_err("a created partition must refuse local writes");
    assert!(err.contains("rserv"), "{err}");
}
