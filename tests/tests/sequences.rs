//! Sequences travel with the change sets: after a burst of inserts and a promotion of the slave
//! (its tables made writable), inserts on the slave never collide with rows from the master.

use rserv_tests::pair::{assert_ok, number, Pair, DB};

#[test]
fn sequences_follow_and_a_promoted_slave_never_collides() {
    let p = Pair::start("seq");
    p.master.execute(
        DB,
        "CREATE TABLE serial_t (id serial PRIMARY KEY, v text);
         CREATE TABLE ident_t (id bigint GENERATED ALWAYS AS IDENTITY (START WITH 100 INCREMENT BY 5) PRIMARY KEY, v text);
         CREATE SEQUENCE shared_seq START 1000;
         CREATE TABLE shared_t (id int PRIMARY KEY DEFAULT nextval('shared_seq'), v text);
         CREATE SEQUENCE app_counter;
         SELECT rserv_add_table('serial_t'); SELECT rserv_add_table('ident_t');
         SELECT rserv_add_table('shared_t'); SELECT rserv_add_sequence('app_counter');",
    );
    // the slave gets the tables and their sequences from the master's definitions
    assert_ok(&p.replicate(&["--create-tables", DB, DB]), "create tables");
    p.slave.execute(
        DB,
        "CREATE SEQUENCE app_counter; SELECT rserv_slave_add_sequence('app_counter')",
    );
    for round in 0..3 {
        p.master.execute(
            DB,
            &format!(
                "INSERT INTO serial_t (v) SELECT 'r{round}' FROM generate_series(1, 50);
                 INSERT INTO ident_t (v) SELECT 'r{round}' FROM generate_series(1, 30);
                 INSERT INTO shared_t (v) SELECT 'r{round}' FROM generate_series(1, 20);
                 SELECT nextval('app_counter') FROM generate_series(1, 7);"
            ),
        );
        // a rolled-back insert still uses a value: the slave must not hand it out later either
        p.master.execute(
            DB,
            "BEGIN; INSERT INTO serial_t (v) VALUES ('rolled back'); ROLLBACK;",
        );
        assert_ok(&p.replicate(&[DB, DB]), "cycle");
        for (seq, table) in [
            ("serial_t_id_seq", "serial_t"),
            ("ident_t_id_seq", "ident_t"),
            ("shared_seq", "shared_t"),
        ] {
            let slave_seq = number(&p.slave, &format!("SELECT last_value FROM {seq}"));
            let master_max = number(&p.master, &format!("SELECT max(id) FROM {table}"));
            let master_seq = number(&p.master, &format!("SELECT last_value FROM {seq}"));
            assert!(
                slave_seq >= master_max,
                "round {round}: slave's {seq} is at {slave_seq}, behind the master's rows (max id {master_max})"
            );
            assert_eq!(slave_seq, master_seq, "round {round}: {seq} differs");
        }
        assert_eq!(
            number(&p.slave, "SELECT last_value FROM app_counter"),
            number(&p.master, "SELECT last_value FROM app_counter"),
            "round {round}: app_counter differs"
        );
    }
    for t in ["serial_t", "ident_t", "shared_t"] {
        p.assert_equal(t);
    }
    // promotion: the slave's tables become writable; new rows never reuse a master's id
    p.slave.execute(
        DB,
        "SELECT rserv_slave_remove_table('serial_t'); SELECT rserv_slave_remove_table('ident_t');
         SELECT rserv_slave_remove_table('shared_t');
         INSERT INTO serial_t (v) SELECT 'on the slave' FROM generate_series(1, 10);
         INSERT INTO ident_t (v) SELECT 'on the slave' FROM generate_series(1, 10);
         INSERT INTO shared_t (v) SELECT 'on the slave' FROM generate_series(1, 10);",
    );
    for t in ["serial_t", "ident_t", "shared_t"] {
        let min_new = number(
            &p.slave,
            &format!("SELECT min(id) FROM {t} WHERE v = 'on the slave'"),
        );
        let master_max = number(&p.master, &format!("SELECT max(id) FROM {t}"));
        assert!(
            min_new > master_max,
            "{t}: the promoted slave handed out {min_new}, not beyond the master's {master_max}"
        );
    }
}
