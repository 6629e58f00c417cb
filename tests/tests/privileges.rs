//! Least privilege: a database owner installs rserv without superuser, replicate runs as a
//! dedicated non-superuser role, ordinary users can neither read nor tamper with rserv's
//! catalog (and the capture trigger still works for them), and hostile objects planted in
//! public are never executed.

use rserv_tests::pair::assert_ok;
use rserv_tests::{describe_pg_error, run_replicate, Cluster};

const DB: &str = "app";

fn connect_as(c: &Cluster, user: &str) -> postgres::Client {
    postgres::Config::new()
        .host_path(c.socket_dir())
        .port(c.port())
        .user(user)
        .dbname(DB)
        .connect(postgres::NoTls)
        .unwrap_or_else(|e| panic!("connect as {user}: {e}"))
}

fn err(client: &mut postgres::Client, sql: &str) -> String {
    describe_pg_error(&client.batch_execute(sql).expect_err(sql))
}

/// Roles: app_owner owns the database (not a superuser), rserv_repl replicates, clerk works
/// with the data. Set up the same way on both clusters.
fn setup(c: &Cluster) {
    c.execute(
        "postgres",
        "CREATE ROLE app_owner LOGIN; CREATE ROLE rserv_repl LOGIN; CREATE ROLE clerk LOGIN;",
    );
    c.execute("postgres", "CREATE DATABASE app OWNER app_owner");
    let mut owner = connect_as(c, "app_owner");
    owner
        .batch_execute(
            "CREATE EXTENSION rserv;  -- trusted: no superuser needed
             SELECT rserv_grant_replication('rserv_repl');
             CREATE TABLE account (id int PRIMARY KEY, balance bigint NOT NULL);
             GRANT SELECT, INSERT, UPDATE, DELETE ON account TO clerk;
             GRANT SELECT ON account TO rserv_repl;
             -- clerk may create objects in public: the hostile objects below are its
             GRANT CREATE ON SCHEMA public TO clerk;",
        )
        .expect("owner setup");
}

#[test]
fn least_privilege_end_to_end() {
    let (m, s) = std::thread::scope(|sc| {
        let m = sc.spawn(|| Cluster::start("priv-m"));
        let s = sc.spawn(|| Cluster::start("priv-s"));
        (m.join().unwrap(), s.join().unwrap())
    });
    setup(&m);
    setup(&s);
    connect_as(&m, "app_owner")
        .batch_execute("SELECT rserv_add_table('account')")
        .expect("the owner registers its table");
    connect_as(&s, "app_owner")
        .batch_execute("SELECT rserv_slave_add_table('account')")
        .expect("the owner registers its slave table");

    // Hostile objects in public, each of which would fail loudly if rserv ever ran it.
    for c in [&m, &s] {
        connect_as(c, "clerk")
            .batch_execute(
                "CREATE FUNCTION public.format_type(oid, integer) RETURNS text LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'pwned: format_type'; END $$;
                 CREATE FUNCTION public.quote_ident(text) RETURNS text LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'pwned: quote_ident'; END $$;
                 CREATE FUNCTION public.unnest(anyarray, anyarray) RETURNS SETOF record LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'pwned: unnest'; END $$;
                 CREATE FUNCTION public.count(oid) RETURNS bigint LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'pwned: count'; END $$;
                 CREATE FUNCTION public.evil_eq(integer, bigint) RETURNS boolean LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'pwned: ='; END $$;
                 CREATE OPERATOR public.= (LEFTARG = integer, RIGHTARG = bigint, FUNCTION = public.evil_eq);
                 CREATE FUNCTION public.set_config(text, text, boolean) RETURNS text LANGUAGE plpgsql AS
                   $$ BEGIN RAISE EXCEPTION 'pwned: set_config'; END $$;",
            )
            .expect("clerk plants its objects");
    }

    // The clerk's writes are captured although it has no right on the log...
    let mut clerk = connect_as(&m, "clerk");
    clerk
        .batch_execute("INSERT INTO account SELECT g, 100 FROM generate_series(1, 50) g")
        .expect("the clerk writes");
    // ...which it can neither read nor change, nor replicate, nor register others' tables.
    assert!(err(&mut clerk, "SELECT * FROM _rserv_log_").contains("permission denied"));
    assert!(err(&mut clerk, "DELETE FROM _rserv_log_").contains("permission denied"));
    assert!(err(&mut clerk, "UPDATE _rserv_sync_ SET status = 1").contains("permission denied"));
    assert!(err(
        &mut clerk,
        "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT * FROM rserv_prepare(0)"
    )
    .contains("role clerk may not replicate this database"));
    let _ = clerk.batch_execute("ROLLBACK");
    assert!(err(&mut clerk, "SELECT rserv_remove_table('account')")
        .contains("is not the owner of table public.account"));
    assert!(err(&mut clerk, "SELECT rserv_grant_replication('clerk')")
        .contains("only a superuser or the owner"));
    // on the slave, the clerk cannot write the replicated table
    let mut slave_clerk = connect_as(&s, "clerk");
    assert!(err(&mut slave_clerk, "INSERT INTO account VALUES (999, 1)")
        .contains("replication slave table"));

    // replicate as the dedicated role: no superuser anywhere
    let args = |extra: &[&str]| {
        let mut v = vec![
            format!("--masterhost={}", m.socket_dir().display()),
            format!("--masterport={}", m.port()),
            format!("--slavehost={}", s.socket_dir().display()),
            format!("--slaveport={}", s.port()),
            "--user=rserv_repl".to_string(),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        run_replicate(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_ok(&run(&[DB, DB]), "replicate as rserv_repl");
    clerk
        .batch_execute("UPDATE account SET balance = balance + 1 WHERE id <= 10; DELETE FROM account WHERE id > 40")
        .unwrap();
    assert_ok(&run(&[DB, DB]), "second cycle as rserv_repl");
    let rows = |c: &Cluster| c.query_strings(DB, "SELECT t::text FROM account t ORDER BY id");
    assert_eq!(rows(&m), rows(&s));
    let status = run(&["status", DB]);
    assert_ok(&status, "status as rserv_repl");

    // a role without the grant is refused with the fix in the hint
    let out = run_replicate(&[
        &format!("--masterhost={}", m.socket_dir().display()),
        &format!("--masterport={}", m.port()),
        &format!("--slavehost={}", s.socket_dir().display()),
        &format!("--slaveport={}", s.port()),
        "--user=clerk",
        DB,
        DB,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("may not replicate") && stderr.contains("rserv_grant_replication('clerk')"),
        "{stderr}"
    );

    // nothing the clerk planted ever ran (each would have raised 'pwned')
    for c in [&m, &s] {
        let log = std::fs::read_to_string(c.log_file()).unwrap_or_default();
        assert!(!log.contains("pwned"), "a hostile object ran:\n{log}");
    }
}

/// `--create-tables` run by a database owner that is no superuser (as in the README's major
/// upgrade): the tables are its own, and their foreign keys are made once the copies are in
/// (the post-data statements run as the table's owner, who cannot read rserv's catalog: what
/// they need of it is read before).
#[test]
fn create_tables_as_a_database_owner_builds_foreign_keys() {
    let (m, s) = std::thread::scope(|sc| {
        let m = sc.spawn(|| Cluster::start("privfk-m"));
        let s = sc.spawn(|| Cluster::start("privfk-s"));
        (m.join().unwrap(), s.join().unwrap())
    });
    for c in [&m, &s] {
        c.execute("postgres", "CREATE ROLE app_owner LOGIN");
        c.execute("postgres", "CREATE DATABASE app OWNER app_owner");
        // (the owner may replicate; granting it reads rserv_status, as replicate needs)
        connect_as(c, "app_owner")
            .batch_execute("CREATE EXTENSION rserv; SELECT rserv_grant_replication('app_owner')")
            .expect("the owner installs rserv");
    }
    connect_as(&m, "app_owner")
        .batch_execute(
            "CREATE TABLE customer (id int PRIMARY KEY, name text);
             CREATE TABLE orders (id int PRIMARY KEY, customer_id int NOT NULL REFERENCES customer);
             INSERT INTO customer SELECT g, 'c' || g FROM generate_series(1, 10) g;
             INSERT INTO orders SELECT g, 1 + g % 10 FROM generate_series(1, 30) g;
             SELECT rserv_add_table('customer'); SELECT rserv_add_table('orders');",
        )
        .expect("the owner registers its tables");
    let out = run_replicate(&[
        &format!("--masterhost={}", m.socket_dir().display()),
        &format!("--masterport={}", m.port()),
        &format!("--slavehost={}", s.socket_dir().display()),
        &format!("--slaveport={}", s.port()),
        "--user=app_owner",
        "--create-tables",
        DB,
        DB,
    ]);
    assert_ok(&out, "replicate --create-tables as the database owner");
    let on_slave = |sql: &str| s.query_strings(DB, sql)[0][0].clone().unwrap_or_default();
    assert_eq!(
        on_slave("SELECT string_agg(c.relname || ':' || pg_get_userbyid(c.relowner), ',' ORDER BY 1) FROM pg_class c WHERE c.relname IN ('customer', 'orders')"),
        "customer:app_owner,orders:app_owner"
    );
    assert_eq!(
        on_slave("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 'orders'::regclass AND contype = 'f'"),
        "FOREIGN KEY (customer_id) REFERENCES customer(id)",
        "the foreign key was made on the slave"
    );
    assert_eq!(on_slave("SELECT count(*) FROM orders"), "30");
}
