//! Sequences: a slave's copy of a sequence follows the master's, so that after a takeover
//! `nextval` on the slave never returns a value the master already used.
//!
//! On the master, the sequences a replicated table uses (owned by its columns, behind its
//! identity columns, or named in its defaults) are registered with the table when the table's
//! owner owns them (a default may name anyone's sequence); others can be added by their owner
//! (`rserv_add_sequence`). Every change set carries the state of every registered sequence
//! (a SEQUENCE section), read after the change set's snapshot was taken: never behind any value a
//! row in the change set holds. The slave sets each sequence it receives (those its received
//! tables use and their owner owns, and those registered with `rserv_slave_add_sequence`), as
//! the sequence's owner.

use crate::catalog::{ext_schema, table_info, RegClass};
use crate::error::{fail, SpiOrFail};
use crate::security::{definer, require_replicator, require_table_owner, run_as_owner};
use crate::sql::count_rows;
use crate::staging;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Sequences table `reloid` uses: owned by or behind one of its columns, or named in a default.
const TABLE_SEQUENCES: &str = "\
SELECT DISTINCT s.oid FROM pg_catalog.pg_class s
 WHERE s.relkind = 'S' AND s.oid IN (
   SELECT d.objid FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
      AND d.refobjid = $1 AND d.deptype IN ('a', 'i')
   UNION
   SELECT d.refobjid FROM pg_catalog.pg_attrdef ad
     JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                                AND d.objid = ad.oid
                                AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
    WHERE ad.adrelid = $1)";

/// Of those, the ones the table's owner does not own: a DEFAULT may name anyone's sequence,
/// with no privilege on it, so these come only with `rserv_add_sequence` (by their owner).
const FOREIGN_SEQUENCES: &str =
    "SELECT s.oid::pg_catalog.regclass::pg_catalog.text FROM pg_catalog.pg_class s
 WHERE s.oid IN (SELECT x.oid FROM (TABLE_SEQUENCES) AS x)
   AND s.relowner <> (SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1)
 ORDER BY 1";

/// Register the sequences table `reloid` uses, as brought by it.
pub fn register_table_sequences(s: &str, reloid: pg_sys::Oid) {
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_sequences_ (seqoid, source) SELECT x.oid, $1 FROM ({TABLE_SEQUENCES}) AS x \
               JOIN pg_catalog.pg_class q ON q.oid = x.oid \
              WHERE q.relowner = (SELECT relowner FROM pg_catalog.pg_class WHERE oid = $1) \
             ON CONFLICT (seqoid) DO NOTHING"
        ),
        &[reloid.into()],
    )
    .or_fail("registering the table's sequences");
    let foreign = crate::sql::column::<String>(
        &FOREIGN_SEQUENCES.replace("TABLE_SEQUENCES", TABLE_SEQUENCES),
        &[reloid.into()],
        "listing the table's sequences",
    );
    for seq in foreign {
        notice!(
            "rserv: sequence {seq}, which a default of table {} uses, belongs to another role and is not replicated with the table; its owner can register it: SELECT rserv_add_sequence('{seq}')",
            table_info(reloid).qualified()
        );
    }
}

/// Forget the sequences table `reloid` brought.
pub fn forget_table_sequences(s: &str, reloid: pg_sys::Oid) {
    Spi::run_with_args(
        &format!("DELETE FROM {s}._rserv_sequences_ WHERE source = $1"),
        &[reloid.into()],
    )
    .or_fail("forgetting the table's sequences");
}

fn require_sequence(seq: pg_sys::Oid, func: &str) -> String {
    let info = table_info(seq);
    let name = info.qualified();
    if info.relkind != "S" {
        fail(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("rserv: {func}(): {name} is not a sequence"),
            "",
        );
    }
    require_table_owner(info.owner, &name, func);
    name
}

/// Replicate sequence `seq` (one no replicated table uses, e.g. one an application calls
/// nextval on itself).
#[pg_extern(volatile, security_definer)]
fn rserv_add_sequence(seq: RegClass) {
    let _definer = definer();
    require_replicator("rserv_add_sequence");
    let name = require_sequence(seq.0, "rserv_add_sequence");
    let s = ext_schema();
    let added = count_rows(
        &format!(
            "INSERT INTO {s}._rserv_sequences_ (seqoid, source) VALUES ($1, NULL) ON CONFLICT (seqoid) DO NOTHING"
        ),
        &[seq.0.into()],
        "registering the sequence",
    );
    if added == 0 {
        notice!(
            "rserv: sequence {} is replicated already; nothing changed",
            name
        );
    }
}

/// Stop replicating sequence `seq`.
#[pg_extern(volatile, security_definer)]
fn rserv_remove_sequence(seq: RegClass) {
    let _definer = definer();
    let name = require_sequence(seq.0, "rserv_remove_sequence");
    let s = ext_schema();
    if count_rows(
        &format!("DELETE FROM {s}._rserv_sequences_ WHERE seqoid = $1"),
        &[seq.0.into()],
        "forgetting the sequence",
    ) == 0
    {
        notice!(
            "rserv: sequence {} is not replicated; nothing to remove",
            name
        );
    }
}

/// Receive sequence `seq` on this slave (sequences the received tables use are received
/// anyway).
#[pg_extern(volatile, security_definer)]
fn rserv_slave_add_sequence(seq: RegClass) {
    let _definer = definer();
    require_replicator("rserv_slave_add_sequence");
    require_sequence(seq.0, "rserv_slave_add_sequence");
    let s = ext_schema();
    Spi::run_with_args(
        &format!(
            "INSERT INTO {s}._rserv_slave_sequences_ (seqoid) VALUES ($1) ON CONFLICT (seqoid) DO NOTHING"
        ),
        &[seq.0.into()],
    )
    .or_fail("registering the sequence");
}

/// Stop receiving sequence `seq` on this slave.
#[pg_extern(volatile, security_definer)]
fn rserv_slave_remove_sequence(seq: RegClass) {
    let _definer = definer();
    require_sequence(seq.0, "rserv_slave_remove_sequence");
    let s = ext_schema();
    Spi::run_with_args(
        &format!("DELETE FROM {s}._rserv_slave_sequences_ WHERE seqoid = $1"),
        &[seq.0.into()],
    )
    .or_fail("forgetting the sequence");
}

/// Columns of a SEQUENCE section.
pub const COLUMNS: [&str; 4] = ["schema", "name", "last_value", "is_called"];

/// The master's part: the state of every registered sequence now, in a staging table the caller
/// reads; None when no sequence is registered.
pub fn section_query(s: &str) -> Option<String> {
    let any = crate::sql::kept_first::<bool>(
        &format!("SELECT EXISTS (SELECT 1 FROM {s}._rserv_sequences_)"),
        &[],
        "looking for sequences",
    )
    .unwrap_or(false);
    if !any {
        return None;
    }
    let stage = staging::table(
        "sequences",
        "schema pg_catalog.text, name pg_catalog.text, last_value pg_catalog.int8, is_called pg_catalog.bool",
        staging::Access {
            caller: "SELECT",
            public_select: false,
        },
    );
    staging::empty(&stage, false);
    // pg_sequence_last_value is NULL until the first nextval: then the start value, not called
    crate::sql::run(
        &format!(
            "INSERT INTO {stage} SELECT n.nspname, c.relname, \
                coalesce(pg_catalog.pg_sequence_last_value(c.oid), q.seqstart), \
                pg_catalog.pg_sequence_last_value(c.oid) IS NOT NULL \
           FROM {s}._rserv_sequences_ r \
           JOIN pg_catalog.pg_class c ON c.oid = r.seqoid \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
           JOIN pg_catalog.pg_sequence q ON q.seqrelid = c.oid"
        ),
        &[],
        "reading the sequences",
    );
    Some(format!(
        "SELECT schema, name, last_value, is_called FROM {stage} ORDER BY 1, 2"
    ))
}

/// The slave's part: set every staged sequence this slave receives, as its owner.
pub fn apply(stage: &str) -> i64 {
    let s = ext_schema();
    let rows = crate::sql::rows(
        &format!(
            "SELECT q.oid, q.relowner, v.c3::int8, v.c4::bool FROM {stage} AS v \
             JOIN pg_catalog.pg_namespace n ON n.nspname = v.c1 \
             JOIN pg_catalog.pg_class q ON q.relnamespace = n.oid AND q.relname = v.c2 AND q.relkind = 'S' \
             WHERE q.oid IN (SELECT seqoid FROM {s}._rserv_slave_sequences_) \
                OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                            WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.objid = q.oid \
                              AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.deptype IN ('a', 'i') \
                              AND d.refobjid IN (SELECT reloid FROM {s}._rserv_slave_tables_)) \
                OR EXISTS (SELECT 1 FROM pg_catalog.pg_depend d \
                            JOIN pg_catalog.pg_attrdef ad ON ad.oid = d.objid \
                            JOIN pg_catalog.pg_class tc ON tc.oid = ad.adrelid \
                           WHERE d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
                             AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjid = q.oid \
                             AND tc.relowner = q.relowner \
                             AND ad.adrelid IN (SELECT reloid FROM {s}._rserv_slave_tables_))"
        ),
        &[],
        "reading the staged sequences",
        |r| {
            Ok((
                r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid),
                r.get::<i64>(3)?.unwrap_or(1),
                r.get::<bool>(4)?.unwrap_or(false),
            ))
        },
    );
    for &(seq, owner, value, called) in &rows {
        run_as_owner(owner, &[], || {
            crate::sql::run(
                "SELECT pg_catalog.setval($1, $2, $3)",
                &[seq.into(), value.into(), called.into()],
                "setting a sequence",
            )
        });
    }
    rows.len() as i64
}
