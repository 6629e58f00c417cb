//! A real sample database, as a new user would replicate it: pagila (tests/data/pagila, a
//! DVD-rental schema the project did not write: an enum, a domain with a CHECK, `text[]`,
//! tsvector with a trigger, foreign keys with ON UPDATE CASCADE, `payment` partitioned by month,
//! BEFORE UPDATE triggers, views and functions).
//!
//! The master gets the schema and data files as they are; every ordinary table and the
//! partitioned root `payment` are registered. The slave is an empty database with rserv and
//! the one function pagila's triggers need (functions and views are the user's, rserv copies
//! tables). One `replicate --create-tables` must then give the slave every table with the
//! master's rows, sequences at or beyond the master's, and the master's schema for those tables
//! (`pg_dump --schema-only` of both, statement by statement, rserv's own triggers aside; the
//! types the tables use, compared in the catalog). A workload (rentals and payments in several
//! monthly partitions, a payment moving to another month, cascading key updates, deletes) and
//! schema changes (a column, a new monthly partition with its foreign key and index, an index,
//! a comment) must follow with plain `replicate` runs; finally the slave, written to as a
//! promoted slave would be, hands out keys beyond every key of the master.

use rserv_tests::pair::{assert_ok, number, Pair, DB};
use rserv_tests::{pg_bindir, Cluster};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The 15 tables of pagila (`payment` is the partitioned root of `payment_p2022_01` … `_07`).
const TABLES: [&str; 15] = [
    "actor",
    "address",
    "category",
    "city",
    "country",
    "customer",
    "film",
    "film_actor",
    "film_category",
    "inventory",
    "language",
    "payment",
    "rental",
    "staff",
    "store",
];

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/pagila")
}

/// Runs a command of the PostgreSQL client tools against `db` of `c` as `postgres`; returns
/// its stdout, panics with its output unless it succeeds.
fn client_tool(c: &Cluster, prog: &str, db: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(pg_bindir().join(prog));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGTZ", "UTC")
        .arg("-h")
        .arg(c.socket_dir())
        .arg("-p")
        .arg(c.port().to_string())
        .args(["-U", "postgres", "-d", db])
        .args(args);
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?} on {} failed: {}\n--- stderr ---\n{}",
        c.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn psql_file(c: &Cluster, file: &Path) {
    client_tool(
        c,
        "psql",
        DB,
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            &file.to_string_lossy(),
        ],
    );
}

/// The statement of the schema file that starts with `head` (up to its closing `$$;`).
fn schema_statement(schema: &str, head: &str) -> String {
    let start = schema
        .find(head)
        .unwrap_or_else(|| panic!("{head} is not in pagila-schema.sql"));
    let end = schema[start..].find("$$;").expect("the function's end") + start + 3;
    schema[start..end].to_owned()
}

/// Tables, partitions and sequences of `public` that are not rserv's, by kind.
fn relations(c: &Cluster, kinds: &str) -> Vec<String> {
    c.query_strings(
        DB,
        &format!(
            "SELECT c.relname FROM pg_class c
              WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = ANY ('{{{kinds}}}')
                AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                   AND d.objid = c.oid AND d.deptype = 'e')
              ORDER BY 1"
        ),
    )
    .into_iter()
    .map(|r| r[0].clone().expect("name"))
    .collect()
}

/// Row count and digest of one table (`ONLY`: a partitioned root holds no rows of its own).
fn digest(c: &Cluster, table: &str) -> String {
    c.query_strings(
        DB,
        &format!(
            "SET TimeZone = 'UTC'; SELECT count(*) || ' rows, md5 ' || md5(coalesce(string_agg(x, E'\\n' ORDER BY x), ''))
               FROM (SELECT t::text AS x FROM ONLY public.{table} t) s"
        ),
    )[0][0]
        .clone()
        .expect("digest")
}

/// Every table and partition holds the same rows on both sides; the differing rows otherwise.
fn assert_rows_equal(p: &Pair, when: &str) {
    let tables = relations(&p.master, "r");
    assert_eq!(
        tables,
        relations(&p.slave, "r"),
        "{when}: the slave's tables and partitions are not the master's"
    );
    let mut differ = Vec::new();
    for t in &tables {
        let (m, s) = (digest(&p.master, t), digest(&p.slave, t));
        if m != s {
            let rows = |c: &Cluster| -> Vec<String> {
                c.query_strings(
                    DB,
                    &format!("SET TimeZone = 'UTC'; SELECT t::text FROM ONLY public.{t} t"),
                )
                .into_iter()
                .map(|r| r[0].clone().unwrap_or_default())
                .collect()
            };
            let (mr, sr) = (rows(&p.master), rows(&p.slave));
            let only_m: Vec<&String> = mr.iter().filter(|r| !sr.contains(r)).take(5).collect();
            let only_s: Vec<&String> = sr.iter().filter(|r| !mr.contains(r)).take(5).collect();
            differ.push(format!(
                "{t}: master {m}, slave {s}; only on the master: {only_m:?}; only on the slave: {only_s:?}"
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "{when}: rows differ:\n{}",
        differ.join("\n")
    );
}

/// Every sequence of the master exists on the slave, at or beyond the master's value.
fn assert_sequences(p: &Pair, when: &str) {
    let read = |c: &Cluster| -> BTreeMap<String, i64> {
        c.query_strings(
            DB,
            "SELECT s.sequencename, coalesce(s.last_value, s.start_value - s.increment_by)
               FROM pg_sequences s JOIN pg_class c ON c.relname = s.sequencename
                AND c.relnamespace = 'public'::regnamespace
              WHERE s.schemaname = 'public'
                AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                                   AND d.objid = c.oid AND d.deptype = 'e')",
        )
        .into_iter()
        .map(|r| {
            (
                r[0].clone().expect("name"),
                r[1].as_deref().expect("value").parse().expect("number"),
            )
        })
        .collect()
    };
    let (m, s) = (read(&p.master), read(&p.slave));
    assert_eq!(
        m.keys().collect::<Vec<_>>(),
        s.keys().collect::<Vec<_>>(),
        "{when}: the slave's sequences are not the master's"
    );
    assert_eq!(m.len(), 13, "{when}: pagila has 13 sequences");
    let behind: Vec<String> = m
        .iter()
        .filter(|(name, v)| s[*name] < **v)
        .map(|(name, v)| format!("{name}: master {v}, slave {}", s[name]))
        .collect();
    assert!(
        behind.is_empty(),
        "{when}: sequences behind the master on the slave: {behind:?}"
    );
}

/// `pg_dump --schema-only` of the replicated tables, their partitions and sequences, as a sorted
/// list of statements (dump order among objects of one kind follows their OIDs, which differ);
/// comments, blank lines, the random `\restrict` keys and rserv's own triggers (capture on the
/// master, protection on the slave: different by design) left out.
fn schema_dump(c: &Cluster, relations: &[String]) -> Vec<String> {
    let mut args = vec!["--schema-only".to_owned(), "--no-tablespaces".to_owned()];
    for r in relations {
        args.push(format!("--table=public.{r}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let text = client_tool(c, "pg_dump", DB, &args);
    let mut statements = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if line.is_empty()
            || line.starts_with("--")
            || line.starts_with("\\restrict")
            || line.starts_with("\\unrestrict")
        {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if line.ends_with(';') {
            let s = std::mem::take(&mut current);
            if !s.contains("_rserv_") {
                statements.push(s);
            }
        }
    }
    statements.sort();
    statements
}

/// The types the replicated tables use, as the catalog has them: kind, base type, enum labels,
/// domain constraints.
fn types(c: &Cluster) -> Vec<String> {
    c.query_strings(
        DB,
        "SELECT DISTINCT t.typname || ' ' || t.typtype::text
                || coalesce(' base ' || format_type(t.typbasetype, t.typtypmod), '')
                || CASE WHEN t.typnotnull THEN ' not null' ELSE '' END
                || coalesce(' labels ' || (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder)
                                             FROM pg_enum e WHERE e.enumtypid = t.oid), '')
                || coalesce(' ' || (SELECT string_agg(k.conname || ' ' || pg_get_constraintdef(k.oid), ', ' ORDER BY k.conname)
                                      FROM pg_constraint k WHERE k.contypid = t.oid), '')
           FROM pg_attribute a JOIN pg_class r ON r.oid = a.attrelid
           JOIN pg_type t ON t.oid = a.atttypid
          WHERE r.relnamespace = 'public'::regnamespace AND r.relkind IN ('r', 'p')
            AND r.relname NOT LIKE '\\_rserv%' AND a.attnum > 0 AND NOT a.attisdropped
            AND t.typnamespace = 'public'::regnamespace
          ORDER BY 1",
    )
    .into_iter()
    .map(|r| r[0].clone().expect("type"))
    .collect()
}

fn assert_schema_equal(p: &Pair, when: &str) {
    let mut rels = relations(&p.master, "r,p,S");
    rels.sort();
    let (m, s) = (schema_dump(&p.master, &rels), schema_dump(&p.slave, &rels));
    let only_m: Vec<&String> = m.iter().filter(|x| !s.contains(x)).collect();
    let only_s: Vec<&String> = s.iter().filter(|x| !m.contains(x)).collect();
    assert!(
        only_m.is_empty() && only_s.is_empty() && m.len() == s.len(),
        "{when}: pg_dump --schema-only of the replicated tables differs\n--- only on the master ---\n{}\n--- only on the slave ---\n{}",
        only_m.iter().map(|x| x.as_str()).collect::<String>(),
        only_s.iter().map(|x| x.as_str()).collect::<String>()
    );
    // not vacuous: the dump has the tables, their foreign keys, indexes, triggers and partitions
    for needle in [
        "CREATE TABLE public.payment_p2022_07 (",
        "FOREIGN KEY (customer_id) REFERENCES public.customer(customer_id) ON UPDATE CASCADE",
        "CREATE INDEX film_fulltext_idx ON public.film USING gist (fulltext);",
        "CREATE TRIGGER last_updated BEFORE UPDATE ON public.rental",
        "ATTACH PARTITION public.payment_p2022_01",
        "CREATE SEQUENCE public.payment_payment_id_seq",
    ] {
        assert!(
            m.iter().any(|x| x.contains(needle)),
            "{when}: the master's dump lacks {needle:?}"
        );
    }
    let (mt, st) = (types(&p.master), types(&p.slave));
    assert_eq!(mt, st, "{when}: the types the tables use differ");
    assert_eq!(mt.len(), 2, "{when}: year and mpaa_rating: {mt:?}");
}

/// One `replicate` cycle (with `args` before the databases); panics unless it succeeds and
/// prints no WARNING (something of the schema it could not make).
fn replicate(p: &Pair, args: &[&str], what: &str) {
    let mut all = args.to_vec();
    all.extend([DB, DB]);
    let out = p.replicate(&all);
    assert_ok(&out, what);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("WARNING"),
        "{what}: replicate warned:\n{stderr}"
    );
}

fn assert_all_equal(p: &Pair, when: &str) {
    assert_rows_equal(p, when);
    assert_sequences(p, when);
    assert_schema_equal(p, when);
}

/// Two clusters; the master with pagila loaded and its 15 tables registered, the slave with
/// rserv and pagila's `last_updated()`; one `replicate --create-tables`.
fn pagila_pair(name: &str) -> Pair {
    let p = Pair::start(name);
    let dir = data_dir();
    psql_file(&p.master, &dir.join("pagila-schema.sql"));
    psql_file(&p.master, &dir.join("pagila-data.sql"));
    let registered = relations(&p.master, "r,p")
        .into_iter()
        .filter(|t| {
            number(
                &p.master,
                &format!("SELECT count(*) FROM pg_class WHERE oid = 'public.{t}'::regclass AND NOT relispartition"),
            ) == 1
        })
        .collect::<Vec<_>>();
    assert_eq!(registered, TABLES, "pagila's tables");
    for t in &registered {
        p.master
            .execute(DB, &format!("SELECT rserv_add_table('public.{t}')"));
    }

    // the slave: rserv, and what rserv does not copy that the tables need: the function of
    // the last_updated triggers, taken from the schema file (film's trigger function and every
    // default are built in; the views and the other functions are not needed by the tables)
    let schema = std::fs::read_to_string(dir.join("pagila-schema.sql")).expect("schema file");
    p.slave.execute(
        DB,
        &schema_statement(&schema, "CREATE FUNCTION public.last_updated()"),
    );
    assert!(relations(&p.slave, "r,p,S").is_empty());

    replicate(&p, &["--create-tables"], "replicate --create-tables");
    assert_eq!(
        number(&p.slave, "SELECT count(*) FROM rental"),
        11996,
        "the initial copy of rental"
    );
    p
}

#[test]
fn pagila_replicates_whole_with_one_command() {
    let p = pagila_pair("pagila");
    assert_all_equal(&p, "after the initial copy");

    // a workload: rentals and their payments in every monthly partition, a payment moving
    // to another month, keys changed with ON UPDATE CASCADE (film -> inventory, film_actor,
    // film_category; country -> city; inventory -> rental), plain updates, deletes
    p.master.execute(
        DB,
        "INSERT INTO rental (rental_date, inventory_id, customer_id, staff_id)
           SELECT timestamptz '2022-01-10 10:00+00' + i * interval '3 days 1 hour',
                  1 + i * 37 % 4500, 1 + i * 13 % 599, 1 + i % 2
             FROM generate_series(1, 60) i;
         INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date)
           SELECT customer_id, staff_id, rental_id, 0.99 + rental_id % 7, rental_date + interval '2 hours'
             FROM rental WHERE rental_id > 16049;
         UPDATE film SET film_id = film_id + 5000 WHERE film_id IN (1, 2, 3);
         UPDATE country SET country_id = country_id + 1000 WHERE country_id <= 5;
         UPDATE inventory SET inventory_id = inventory_id + 100000 WHERE inventory_id % 97 = 0;
         UPDATE customer SET email = lower(email), active = 0 WHERE customer_id % 10 = 0;
         UPDATE payment SET amount = amount + 1 WHERE payment_id % 11 = 0;
         UPDATE payment SET payment_date = payment_date + interval '1 month'
          WHERE payment_id % 101 = 0 AND payment_date < '2022-06-01';
         DELETE FROM payment WHERE payment_id % 13 = 0;
         DELETE FROM rental r WHERE rental_id % 53 = 0
            AND NOT EXISTS (SELECT 1 FROM payment p WHERE p.rental_id = r.rental_id);
         DELETE FROM film_actor WHERE actor_id = 7;",
    );
    assert_eq!(
        number(
            &p.master,
            "SELECT count(DISTINCT tableoid) FROM payment WHERE payment_id > 32098"
        ),
        7,
        "the new payments fall in every monthly partition"
    );
    assert!(
        number(
            &p.master,
            "SELECT count(*) FROM rental WHERE inventory_id > 100000"
        ) > 0
    );
    replicate(&p, &[], "replicate after the workload");
    assert_all_equal(&p, "after the workload");

    // schema changes, with rows: a column with a default, a new month's partition with a
    // foreign key and an index like its siblings, rows in it and rows moved into it, an index,
    // a comment
    p.master.execute(
        DB,
        "ALTER TABLE customer ADD COLUMN loyalty int DEFAULT 0;
         UPDATE customer SET loyalty = customer_id % 5 WHERE customer_id % 3 = 0;
         CREATE TABLE payment_p2022_08 PARTITION OF payment
           FOR VALUES FROM ('2022-08-01 01:00:00+01') TO ('2022-09-01 01:00:00+01');
         ALTER TABLE payment_p2022_08 ADD CONSTRAINT payment_p2022_08_customer_id_fkey
           FOREIGN KEY (customer_id) REFERENCES customer(customer_id);
         CREATE INDEX idx_fk_payment_p2022_08_customer_id ON payment_p2022_08 (customer_id);
         INSERT INTO rental (rental_date, inventory_id, customer_id, staff_id)
           SELECT timestamptz '2022-08-02 10:00+00' + i * interval '7 hours',
                  (SELECT inventory_id FROM inventory ORDER BY inventory_id OFFSET i * 41 % 4000 LIMIT 1),
                  1 + i * 17 % 599, 1
             FROM generate_series(1, 40) i;
         INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date)
           SELECT customer_id, staff_id, rental_id, 2.99, rental_date + interval '1 hour'
             FROM rental WHERE rental_date >= '2022-08-02 10:00+00' AND rental_id > 16049;
         UPDATE payment SET payment_date = payment_date + interval '1 month'
          WHERE payment_date >= '2022-07-25' AND payment_date < '2022-08-01';
         CREATE INDEX idx_rental_return_date ON rental (return_date);
         COMMENT ON COLUMN customer.loyalty IS 'loyalty points';",
    );
    replicate(&p, &[], "replicate after the schema changes");
    assert!(number(&p.slave, "SELECT count(*) FROM payment_p2022_08") > 40);
    assert_all_equal(&p, "after the schema changes");

    // `replicate check` agrees, and the new partition is protected like the others
    let out = p.replicate(&["check", DB, DB]);
    assert_ok(&out, "replicate check");
    let mut slave = p.slave.connect(DB);
    let err = slave
        .batch_execute("DELETE FROM payment_p2022_08")
        .expect_err("a slave partition made by a schema change must refuse local writes");
    let err = rserv_tests::describe_pg_error(&err);
    assert!(err.contains("rserv"), "{err}");

    // promote-like: the slave written to as a promoted slave would be; keys from the
    // sequences must lie beyond every key the master handed out
    let max = |c: &Cluster, sql: &str| number(c, sql);
    let master_rental = max(&p.master, "SELECT last_value FROM rental_rental_id_seq");
    let master_payment = max(&p.master, "SELECT last_value FROM payment_payment_id_seq");
    let master_customer = max(&p.master, "SELECT last_value FROM customer_customer_id_seq");
    let got = p.slave.query_strings(
        DB,
        "SET rserv.allow_slave_writes = on;
         INSERT INTO customer (store_id, first_name, last_name, address_id)
           VALUES (1, 'PROMOTED', 'SLAVE', 1);
         INSERT INTO rental (rental_date, inventory_id, customer_id, staff_id)
           SELECT timestamptz '2022-08-20 12:00+00', min(inventory_id), currval('customer_customer_id_seq'), 1
             FROM inventory;
         INSERT INTO payment (customer_id, staff_id, rental_id, amount, payment_date)
           VALUES (currval('customer_customer_id_seq'), 1, currval('rental_rental_id_seq'), 1.99,
                   '2022-08-20 13:00+00');
         SELECT currval('customer_customer_id_seq'), currval('rental_rental_id_seq'),
                currval('payment_payment_id_seq'),
                (SELECT loyalty FROM customer WHERE customer_id = currval('customer_customer_id_seq'));",
    );
    let got: Vec<i64> = got[0]
        .iter()
        .map(|v| v.as_deref().expect("value").parse().expect("number"))
        .collect();
    assert!(
        got[0] > master_customer && got[1] > master_rental && got[2] > master_payment,
        "the promoted slave handed out customer {}, rental {}, payment {}: not beyond the master's {master_customer}, {master_rental}, {master_payment}",
        got[0],
        got[1],
        got[2]
    );
    assert_eq!(got[3], 0, "the new column's default on the slave");
}

/// Changes to the types a replicated table uses follow the stream: a value added to pagila's
/// enum and a domain CHECK widened, with rows using them in the same change set (the slave
/// commits the enum's new label before the change set, which could not use it otherwise).
#[test]
fn type_changes_follow_the_stream() {
    let p = pagila_pair("pagila-types");
    p.master.execute(
        DB,
        "ALTER TYPE mpaa_rating ADD VALUE 'NR';
         ALTER DOMAIN year DROP CONSTRAINT year_check;
         ALTER DOMAIN year ADD CONSTRAINT year_check CHECK (VALUE >= 1800 AND VALUE <= 2155);",
    );
    p.master.execute(
        DB,
        "UPDATE film SET rating = 'NR' WHERE film_id = 10;
         UPDATE film SET release_year = 1850 WHERE film_id = 11;",
    );
    replicate(&p, &[], "replicate after ALTER TYPE and ALTER DOMAIN");
    assert_all_equal(&p, "after ALTER TYPE and ALTER DOMAIN");
}

/// Storage and planner settings of a table are created by `--create-tables` and follow when
/// changed (`pg_dump --schema-only` of both sides agrees): storage parameters (`WITH
/// (fillfactor ...)`), column statistics targets, storage modes and attribute options,
/// REPLICA IDENTITY, CLUSTER ON.
#[test]
fn storage_settings_are_copied_and_follow() {
    let p = Pair::start("pagila-storage");
    let dir = data_dir();
    psql_file(&p.master, &dir.join("pagila-schema.sql"));
    psql_file(&p.master, &dir.join("pagila-data.sql"));
    let settings =
        "ALTER TABLE rental SET (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.05);
         ALTER TABLE address ALTER COLUMN phone SET STATISTICS 500;
         ALTER TABLE staff ALTER COLUMN picture SET STORAGE EXTERNAL;
         ALTER TABLE film_actor ALTER COLUMN last_update SET (n_distinct = 100);
         ALTER TABLE city REPLICA IDENTITY FULL;
         ALTER TABLE customer CLUSTER ON idx_last_name;";
    // made before the slave exists: --create-tables must copy them
    p.master.execute(DB, settings);
    for t in TABLES {
        p.master
            .execute(DB, &format!("SELECT rserv_add_table('public.{t}')"));
    }
    let schema = std::fs::read_to_string(dir.join("pagila-schema.sql")).expect("schema file");
    p.slave.execute(
        DB,
        &schema_statement(&schema, "CREATE FUNCTION public.last_updated()"),
    );
    replicate(&p, &["--create-tables"], "replicate --create-tables");
    assert_schema_equal(&p, "after the initial copy");
    // changed afterwards: they must follow
    p.master.execute(
        DB,
        "ALTER TABLE inventory SET (fillfactor = 70);
         ALTER TABLE actor ALTER COLUMN last_name SET STATISTICS 1000;
         ALTER TABLE store REPLICA IDENTITY USING INDEX idx_unq_manager_staff_id;
         UPDATE actor SET last_name = upper(last_name) WHERE actor_id < 10;",
    );
    replicate(&p, &[], "replicate after the settings changed");
    assert_schema_equal(&p, "after the settings changed");
}
