//! Generative differential test (see `rserv_tests::gen`): random schemas and random
//! interleavings of writers and replication operations, with the slave checked against the
//! master as of every change set's snapshot.
//!
//! - `generated_schedules`: a fixed, bounded range of seeds (CI). `RSERV_GEN_SEEDS=N` changes
//!   how many, `RSERV_GEN_FIRST_SEED=S` where they start. A failing seed prints its schedule
//!   and the command that shrinks it: `scripts/soak.sh --seed S --count 1`.
//! - one test per failing seed ever found, replaying its minimal (shrunk) schedule, stored as
//!   JSON below: they fail on v1.0.0 (each says why) and pass once the bug is fixed. The
//!   schedules are stored rather than regenerated from their seeds, so changes to the
//!   generator do not change them.
//!
//! Longer runs: `scripts/soak.sh --seconds N`.

use rserv_tests::gen::{self, Env, GenConfig};
use std::sync::{Arc, Mutex};

/// Seeds of the CI run (`RSERV_GEN_SEEDS` / `RSERV_GEN_FIRST_SEED` change them). One test runs
/// them on its own clusters while the regressions replay side by side on shared ones.
const CI_SEEDS: u64 = 20;
const CI_FIRST_SEED: u64 = 1000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn generated_schedules() {
    let first = env_u64("RSERV_GEN_FIRST_SEED", CI_FIRST_SEED);
    let seeds = first..first + env_u64("RSERV_GEN_SEEDS", CI_SEEDS);
    let env = Env::start("gen-ci");
    let cfg = GenConfig::from_env();
    let mut failed = Vec::new();
    for seed in seeds.clone() {
        match gen::run_seed(&env, seed, &cfg) {
            Ok(stats) => eprintln!("seed {seed}: ok ({stats:?})"),
            Err(e) => {
                eprintln!("{}", gen::report(&e.schedule, &e.failure, "failing seed"));
                failed.push(format!("seed {seed}: {}", e.failure.signature()));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of the seeds {seeds:?} failed (schedules above; shrink one with \
         scripts/soak.sh --seed S --count 1):\n{}",
        failed.len(),
        failed.join("\n")
    );
}

/// Clusters shared by the regression tests: started by the first that needs them, stopped
/// by the last one running. Replays take turns (a schedule changes cluster-wide settings such
/// as the replication role's BYPASSRLS, and may restart a cluster).
struct Shared {
    users: usize,
    env: Option<Arc<Env>>,
}

static SHARED: Mutex<Shared> = Mutex::new(Shared {
    users: 0,
    env: None,
});
static TURN: Mutex<()> = Mutex::new(());

struct SharedEnv(Arc<Env>);

impl SharedEnv {
    fn get() -> SharedEnv {
        let mut s = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        s.users += 1;
        let env = s
            .env
            .get_or_insert_with(|| Arc::new(Env::start("gen-regress")))
            .clone();
        SharedEnv(env)
    }
}

impl Drop for SharedEnv {
    fn drop(&mut self) {
        let mut s = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        s.users -= 1;
        if s.users == 0 {
            // the clusters stop when the last Arc (this guard's) goes
            s.env = None;
        }
    }
}

/// Replay a stored minimal schedule; `bug` says what it found on v1.0.0.
fn replay(name: &str, bug: &str, json: &str) {
    let env = SharedEnv::get();
    let result = {
        let _turn = TURN.lock().unwrap_or_else(|e| e.into_inner());
        gen::replay(&env.0, json)
    };
    if let Err(e) = result {
        panic!(
            "regression {name} ({bug}) fails:\n{}",
            gen::report(&e.schedule, &e.failure, name)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions: the minimal schedule of every failing seed found so far (scripts/soak.sh prints
// it as "replay JSON"). Each comment says how it was found and what it showed on v1.0.0.
// ---------------------------------------------------------------------------------------------

/// found by seed 10. v1.0.0: an INSERT with a char(4) key never reaches the slave (the key is cast to char(1))
#[test]
fn seed_10_char_key_insert() {
    replay(
        "seed_10_char_key_insert",
        "an INSERT with a char(4) key never reaches the slave (the key is cast to char(1))",
        SEED_10_CHAR_KEY_INSERT,
    );
}

const SEED_10_CHAR_KEY_INSERT: &str = r#"{"seed":10,"superuser":true,"bypass_rls":true,"writers":[0,0,0,0],"types":{},
"tables": [
{"schema":"public","name":"t0","cols":[{"id":0,"name":"c0","ty":{"base":{"Char":4}},"kind":"Plain"}],"key":[0],"slave":{}}
],
"steps": [
{"op":"cycle","s":0},
{"op":"insert","c":3,"t":0,"k":27,"vals":[]}
]}"#;

/// found by seed 26. v1.0.0: a key change of a char(2) key leaves the old row on the slave
#[test]
fn seed_26_char_key_change() {
    replay(
        "seed_26_char_key_change",
        "a key change of a char(2) key leaves the old row on the slave",
        SEED_26_CHAR_KEY_CHANGE,
    );
}

const SEED_26_CHAR_KEY_CHANGE: &str = r#"{"seed":26,"superuser":true,"bypass_rls":true,"writers":[0,0,0],"types":{},
"tables": [
{"schema":"public","name":"t3","cols":[{"id":0,"name":"c0","ty":{"base":{"Char":2}},"kind":"Plain"}],"key":[0],"slave":{},"initial":[[19,[]],[16,[]],[5,[]],[22,[]],[24,[]]]}
],
"steps": [
{"op":"cycle","s":0,"clean":true},
{"op":"change_key","c":1,"t":0,"k":22,"to":4}
]}"#;

/// found by seed 5. v1.0.0: an UPDATE of a row with a bit(8) key fails on the slave (bit string length 1 does not match type bit(8))
#[test]
fn seed_5_bit_key_update() {
    replay("seed_5_bit_key_update", "an UPDATE of a row with a bit(8) key fails on the slave (bit string length 1 does not match type bit(8))", SEED_5_BIT_KEY_UPDATE);
}

const SEED_5_BIT_KEY_UPDATE: &str = r#"{"seed":5,"superuser":true,"bypass_rls":true,"writers":[0,0],"types":{},
"tables": [
{"schema":"public","name":"t3","cols":[{"id":0,"name":"c0","ty":{"base":"NumericAny"},"kind":"Plain"},{"id":1,"name":"c1","ty":{"base":{"Bit":8}},"kind":"Plain"},{"id":2,"name":"c2","ty":{"base":{"Char":5}},"kind":"Plain"},{"id":4,"name":"c4","ty":{"base":"Text"},"kind":"Plain"}],"key":[0,1,2],"slave":{},"initial":[[15,[]],[1,[[4,",\\🦀\t{Q"]]],[7,[]],[8,[[4,null]]],[3,[[4,"\\'Q🦀'"]]],[18,[[4,"\n,🦀\\é"]]],[9,[]],[6,[[4,"\t{é{"]]],[2,[]],[11,[]]]}
],
"steps": [
{"op":"cycle","s":0,"clean":true},
{"op":"update","c":0,"t":0,"k":18,"vals":[[4,"aQé,\t "]]}
]}"#;

/// found by seed 1. v1.0.0: a writer open while slave 2 takes its first change set is lost when slave 1 cycles and cleans the log meanwhile
#[test]
fn seed_1_new_slave_race() {
    replay("seed_1_new_slave_race", "a writer open while slave 2 takes its first change set is lost when slave 1 cycles and cleans the log meanwhile", SEED_1_NEW_SLAVE_RACE);
}

const SEED_1_NEW_SLAVE_RACE: &str = r#"{"seed":1,"superuser":true,"bypass_rls":true,"writers":[0,0,0],"types":{},
"tables": [
{"schema":"public","name":"t0","cols":[{"id":0,"name":"c0","ty":{"base":"Uuid"},"kind":"Plain"}],"key":[0],"slave":{}}
],
"steps": [
{"op":"begin","c":0},
{"op":"insert","c":0,"t":0,"k":0,"vals":[]},
{"op":"join","tables":[0]},
{"op":"cycle","s":1,"clean":true,"hook":[{"op":"commit","c":0},{"op":"cycle","s":0,"clean":true}]}
]}"#;

/// found by seed 16. v1.0.0: the same race when slave 2 joins with --create-tables
#[test]
fn seed_16_new_slave_race_create_tables() {
    replay(
        "seed_16_new_slave_race_create_tables",
        "the same race when slave 2 joins with --create-tables",
        SEED_16_NEW_SLAVE_RACE_CREATE_TABLES,
    );
}

const SEED_16_NEW_SLAVE_RACE_CREATE_TABLES: &str = r#"{"seed":16,"superuser":true,"bypass_rls":true,"writers":[0,0],"types":{},
"tables": [
{"schema":"public","name":"t0","cols":[{"id":0,"name":"c0","ty":{"base":{"Timestamptz":2}},"kind":"Plain"}],"key":[0],"slave":{}}
],
"steps": [
{"op":"begin","c":1},
{"op":"insert","c":1,"t":0,"k":1,"vals":[]},
{"op":"join","tables":[],"create_tables":true},
{"op":"cycle","s":1,"clean":true,"hook":[{"op":"commit","c":1},{"op":"cycle","s":0,"clean":true}]}
]}"#;

/// found by seed 50. v1.0.0: row-level security silently filters the initial copy read by a non-superuser without BYPASSRLS
#[test]
fn seed_50_rls_hides_rows() {
    replay("seed_50_rls_hides_rows", "row-level security silently filters the initial copy read by a non-superuser without BYPASSRLS", SEED_50_RLS_HIDES_ROWS);
}

const SEED_50_RLS_HIDES_ROWS: &str = r#"{"seed":50,"superuser":false,"bypass_rls":false,"writers":[0,0,0,0],"types":{},
"tables": [
{"schema":"public","name":"t0","cols":[{"id":0,"name":"c0","ty":{"base":{"Bit":8}},"kind":"Plain","not_null":true},{"id":1,"name":"c1","ty":{"base":"Int4"},"kind":"Plain","not_null":true},{"id":6,"name":"c6","ty":{"base":"Bool"},"kind":"Plain"}],"key":[0,1],"rls":{"vis":6},"slave":{},"initial":[[7,[]],[5,[[6,"t"]]],[30,[]],[36,[[6,"f"]]]]}
],
"steps": [
{"op":"cycle","s":0,"clean":true}
]}"#;

/// found by seed 75. v1.0.0: a TRUNCATE committing while a cycle waits for its lock leaves the slave in a state the master never had
#[test]
fn seed_75_truncate_race() {
    replay("seed_75_truncate_race", "a TRUNCATE committing while a cycle waits for its lock leaves the slave in a state the master never had", SEED_75_TRUNCATE_RACE);
}

const SEED_75_TRUNCATE_RACE: &str = r#"{"seed":75,"superuser":true,"bypass_rls":true,"writers":[0,0],"types":{},
"tables": [
{"schema":"public","name":"t0","cols":[{"id":0,"name":"c0","ty":{"base":"Bool"},"kind":"Plain","not_null":true},{"id":1,"name":"c1","ty":{"base":"Bytea"},"kind":"Plain","not_null":true},{"id":5,"name":"c5","ty":{"base":{"Interval":["HourToSecond",null]}},"kind":"Plain"}],"key":[0,1],"slave":{},"initial":[[13,[[5,"18902:07:08.684938"]]],[6,[[5,"94958:07:08.972402"]]]]}
],
"steps": [
{"op":"cycle","s":0},
{"op":"update","c":0,"t":0,"k":6,"vals":[[5,"88429:07:08.269251"]]},
{"op":"truncate_race","s":0,"c":0,"t":0,"rows":[]}
]}"#;

/// found by seed 42. v1.0.0: the same race empties the table during its initial copy
#[test]
fn seed_42_truncate_race_initial_copy() {
    replay(
        "seed_42_truncate_race_initial_copy",
        "the same race empties the table during its initial copy",
        SEED_42_TRUNCATE_RACE_INITIAL_COPY,
    );
}

const SEED_42_TRUNCATE_RACE_INITIAL_COPY: &str = r#"{"seed":42,"superuser":true,"bypass_rls":true,"writers":[0,0,0],"types":{},
"tables": [
{"schema":"public","name":"t1","cols":[{"id":0,"name":"c0","ty":{"base":{"Char":6}},"kind":"Plain","not_null":true}],"key":[0],"slave":{},"initial":[[3,[]]]}
],
"steps": [
{"op":"truncate_race","s":0,"c":0,"t":0,"rows":[[15,[]]]}
]}"#;

/// found by seed 6. v1.0.0: PREPARE TRANSACTION after a write to a replicated table fails (the capture trigger sent NOTIFY)
#[test]
fn seed_6_prepare_transaction() {
    replay("seed_6_prepare_transaction", "PREPARE TRANSACTION after a write to a replicated table fails (the capture trigger sent NOTIFY)", SEED_6_PREPARE_TRANSACTION);
}

const SEED_6_PREPARE_TRANSACTION: &str = r#"{"seed":6,"superuser":true,"bypass_rls":true,"writers":[0,0],"types":{},
"tables": [
{"schema":"public","name":"t0","cols":[{"id":0,"name":"c0","ty":{"base":{"Varbit":7}},"kind":"Plain"},{"id":2,"name":"c2","ty":{"base":{"Time":null}},"kind":"Plain"}],"key":[0],"slave":{},"initial":[[0,[]],[16,[[2,"16:12:57.578483"]]],[4,[[2,null]]],[14,[[2,null]]]]}
],
"steps": [
{"op":"begin","c":0},
{"op":"update","c":0,"t":0,"k":4,"vals":[[2,"04:09:05.940155"]]},
{"op":"prepare","c":0,"gid":0}
]}"#;

/// found by seed 4. v1.0.0: rserv_slave_remove_table, a local write, rserv_slave_add_table: the local write stays on the slave forever
#[test]
fn seed_4_slave_remove_readd() {
    replay("seed_4_slave_remove_readd", "rserv_slave_remove_table, a local write, rserv_slave_add_table: the local write stays on the slave forever", SEED_4_SLAVE_REMOVE_READD);
}

const SEED_4_SLAVE_REMOVE_READD: &str = r#"{"seed":4,"superuser":true,"bypass_rls":true,"writers":[0,0,0],"types":{},
"tables": [
{"schema":"public","name":"t0","cols":[{"id":0,"name":"c0","ty":{"base":{"Time":null}},"kind":"Plain"}],"key":[0],"slave":{}}
],
"steps": [
{"op":"cycle","s":0},
{"op":"slave_remove","s":0,"t":0,"p":0},
{"op":"slave_write","s":0,"t":0,"p":0,"k":6,"vals":[]},
{"op":"slave_add","s":0,"t":0,"p":0}
]}"#;

/// found by seed 71. v1.0.0: a key column of a domain over an enum: every change set fails (operator does not exist: dom = dom)
#[test]
fn seed_71_domain_over_enum_key() {
    replay("seed_71_domain_over_enum_key", "a key column of a domain over an enum: every change set fails (operator does not exist: dom = dom)", SEED_71_DOMAIN_OVER_ENUM_KEY);
}

const SEED_71_DOMAIN_OVER_ENUM_KEY: &str = r#"{"seed":71,"superuser":true,"bypass_rls":true,"writers":[0,0],"types":{"enums":[{"name":"日本éenum0","labels":["It's","ü","comma,","NULL","z"]}],"domains":[{"name":"dom2","base":{"Enum":0}}]},
"tables": [
{"schema":"public","name":"t2","cols":[{"id":0,"name":"c0","ty":{"base":{"Bit":4}},"kind":"Plain"},{"id":1,"name":"c1","ty":{"base":{"Varchar":4}},"kind":"Plain"},{"id":2,"name":"c2","ty":{"base":{"Enum":0},"domain":0},"kind":"Plain"}],"key":[0,1,2],"slave":{}}
],
"steps": [
{"op":"begin","c":0},
{"op":"insert","c":0,"t":0,"k":4,"vals":[]},
{"op":"cycle","s":0,"clean":true}
]}"#;

/// found by seed 17 with RSERV_GEN_AVOID=slave_readd,race_hook,2pc,truncate_race,rls,master_readd,enum_domain,charkey,unique. v1.0.0: after the only watched column is dropped no UPDATE replicates any more
#[test]
fn seed_17_watched_column_dropped() {
    replay(
        "seed_17_watched_column_dropped",
        "after the only watched column is dropped no UPDATE replicates any more",
        SEED_17_WATCHED_COLUMN_DROPPED,
    );
}

const SEED_17_WATCHED_COLUMN_DROPPED: &str = r#"{"seed":17,"superuser":true,"bypass_rls":true,"writers":[0,0,0,0],"types":{},
"tables": [
{"schema":"public","name":"t1","cols":[{"id":0,"name":"c0","ty":{"base":"Float8"},"kind":"Plain"},{"id":1,"name":"c1","ty":{"base":{"Interval":["HourToSecond",null]}},"kind":"Plain"},{"id":2,"name":"c2","ty":{"base":"Text"},"kind":"Plain"}],"key":[0],"watched":[2],"slave":{},"initial":[[5,[[1,null],[2,null]]],[9,[[2,"{\"\n,🦀é,-\",\"'\n🦀é,\"}"]]],[17,[[1,"47836:07:08.813284"],[2,"{\"{🦀a,a \",\"é'a,a \",\"\n'a,a \"}"]]],[38,[[1,"76253:07:08.847507"],[2,"{\"\\\"\t é  \",\"\tQ é  \",\"{Q é  \"}"]]],[27,[[2,"{\"{é\n\\\\\\\"\"}"]]],[30,[[1,"63698:07:08.424462"],[2,"{\"a{a\\\"a \",\"\\\"{a\\\"a \",\"\t,a\\\"a \"}"]]]]}
],
"steps": [
{"op":"drop_col","t":0,"col":2},
{"op":"cycle","s":0,"clean":true},
{"op":"update","c":2,"t":0,"k":38,"vals":[[1,"86322:07:08.583918"]]}
]}"#;

/// found by seed 7 with RSERV_GEN_AVOID=slave_readd,race_hook,2pc,truncate_race,rls,master_readd,enum_domain,charkey,ddl. v1.0.0: an UPDATE of a UNIQUE column that is not watched does not replicate
#[test]
fn seed_7_unique_unwatched_column() {
    replay(
        "seed_7_unique_unwatched_column",
        "an UPDATE of a UNIQUE column that is not watched does not replicate",
        SEED_7_UNIQUE_UNWATCHED_COLUMN,
    );
}

const SEED_7_UNIQUE_UNWATCHED_COLUMN: &str = r#"{"seed":7,"superuser":true,"bypass_rls":true,"writers":[0,0,0,0],"types":{},
"tables": [
{"schema":"public","name":"t0","cols":[{"id":0,"name":"c0","ty":{"base":{"Numeric":[4,1]}},"kind":"Plain"},{"id":1,"name":"c1","ty":{"base":{"Interval":["Month",null]}},"kind":"Plain"},{"id":2,"name":"c2","ty":{"base":{"Interval":["HourToSecond",0]}},"kind":"Plain"},{"id":3,"name":"c3","ty":{"base":"Bytea"},"kind":"Plain","unique":true}],"key":[0,1],"watched":[2],"slave":{},"initial":[[11,[[2,"11991:07:08.956729"],[3,"\\x00000003"]]]]}
],
"steps": [
{"op":"cycle","s":0,"clean":true},
{"op":"update","c":3,"t":0,"k":11,"vals":[[3,"\\x0000000b0aff0aff"]]}
]}"#;

/// found by seed 113 with RSERV_GEN_AVOID=slave_readd,race_hook,2pc,truncate_race,rls,enum_domain,charkey,master_readd,unique. v1.0.0: replicate check run by a non-superuser role reports a table with watched columns as DIFFERENT without its note (it cannot read the registration)
#[test]
fn seed_113_check_watched_note() {
    replay("seed_113_check_watched_note", "replicate check run by a non-superuser role reports a table with watched columns as DIFFERENT without its note (it cannot read the registration)", SEED_113_CHECK_WATCHED_NOTE);
}

const SEED_113_CHECK_WATCHED_NOTE: &str = r#"{"seed":113,"superuser":false,"bypass_rls":false,"writers":[0,0,0],"types":{},
"tables": [
{"schema":"public","name":"t4","cols":[{"id":0,"name":"c0","ty":{"base":"NumericAny"},"kind":"Plain"},{"id":3,"name":"c3","ty":{"base":{"Char":5}},"kind":"Plain"},{"id":4,"name":"c4","ty":{"base":"Date"},"kind":"Plain"}],"key":[0],"watched":[3],"slave":{},"initial":[[1,[[3,"77a\\'"],[4,"4708-10-31"]]],[16,[[3,"a{aa\\"],[4,"2440-02-28"]]]]}
],
"steps": [
{"op":"cycle","s":0,"clean":true},
{"op":"update","c":1,"t":0,"k":16,"vals":[[4,"2028-11-14"]]}
]}"#;
/// found by seed 317 with RSERV_GEN_AVOID=slave_readd,race_hook,2pc,truncate_race,rls,enum_domain,charkey,master_readd,unique,nonsuper. v1.0.0: after the watched column is renamed its UPDATEs no longer replicate
#[test]
fn seed_317_watched_column_renamed() {
    replay(
        "seed_317_watched_column_renamed",
        "after the watched column is renamed its UPDATEs no longer replicate",
        SEED_317_WATCHED_COLUMN_RENAMED,
    );
}

const SEED_317_WATCHED_COLUMN_RENAMED: &str = r#"{"seed":317,"superuser":true,"bypass_rls":true,"writers":[0,0],"types":{"enums":[{"name":"enum0","labels":["z","back\\slash","It's","tab\t","x\"y","ü"]}]},
"tables": [
{"schema":"public","name":"t2","cols":[{"id":0,"name":"c0","ty":{"base":"Int4"},"kind":"Plain"},{"id":1,"name":"c1","ty":{"base":{"Enum":0}},"kind":"Plain"},{"id":2,"name":"c2","ty":{"base":{"Timestamp":1}},"kind":"Plain"}],"key":[0,1],"watched":[2],"slave":{},"initial":[[5,[[2,"1973-01-17 11:48:53.090909"]]]]}
],
"steps": [
{"op":"join","tables":[0]},
{"op":"cycle","s":1},
{"op":"rename","t":0,"col":2,"to":"Ä)r6"},
{"op":"update","c":1,"t":0,"k":5,"vals":[[2,null]]}
]}"#;
