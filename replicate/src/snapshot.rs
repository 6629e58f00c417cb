//! The snapshot format: rserv's line-oriented change set file (reference §4.3), versioned.
//!
//! ```text
//! -- RSERV SNAPSHOT 1
//! -- SYNCID 7 {"master":"<node uuid>","server":0,"rserv":"1.0.0"}
//! -- TRUNCATE {"schema":"public","table":"t","columns":[],"key":["id"]}
//! -- DELETE {"schema":"public","table":"customer","columns":["cust_id"],"key":["cust_id"]}
//! 42
//! 10
//! \.
//! -- CHECK {"sections":2,"rows":2,"crc32":"5e1b04c2"}
//! -- INSERT {"schema":"public","table":"customer","columns":["cust_id","firstname","lastname"],"key":["cust_id"]}
//! 10<TAB>John<TAB>Nathaniel   (fields are tab-separated)
//! \.
//! -- CHECK {"sections":3,"rows":3,"crc32":"0b2f9e11"}
//! -- OK {"sections":3,"rows":3,"crc32":"1c291ca3"}
//! ```
//!
//! Differences from rserv 0.1: a version line; JSON metadata (schema-qualified names, columns
//! by name, the key); rows in PostgreSQL's COPY text format under fixed DateStyle, TimeZone
//! and float settings; a TRUNCATE section; after each section's rows a CHECK line, and at the
//! end an OK line, with the section and row counts so far and a CRC-32 of everything before
//! it, so a truncated, reordered or corrupted file is refused (a damaged section before it is
//! merged into its table).
//! A writer that fails part-way ends the file with `-- ERROR {"message":...}`.
//!
//! Versions (docs/snapshot-format.md): the first line names the format ([`FORMAT`]); the
//! header lists the features the change set uses beyond 1.0.0's sections (`"features":
//! ["ddl","sequence"]`). A reader refuses a format or a feature it does not know before
//! anything is applied, and a section whose feature the header did not declare.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read, Write};

/// The change-set format this replicate writes and reads.
pub const FORMAT: i32 = 1;
/// First line of every change set: this prefix, then the format.
pub const MAGIC_PREFIX: &str = "-- RSERV SNAPSHOT ";

/// Features of format 1 added after rserv 1.0.0, as the header names them: each is a kind of
/// section a reader must know to apply the change set.
pub const FEATURE_DDL: &str = "ddl";
pub const FEATURE_SEQUENCE: &str = "sequence";
pub const FEATURE_UPSERT: &str = "upsert";
/// Every feature this replicate reads and writes.
pub const FEATURES: [&str; 3] = [FEATURE_DDL, FEATURE_SEQUENCE, FEATURE_UPSERT];

/// Facts about the change set as a whole.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Header {
    /// `rserv_node_id()` of the master that prepared it
    pub master: String,
    /// the slave (server id) it was prepared for
    pub server: i32,
    /// rserv version on the master
    pub rserv: String,
    /// the change set this one follows: the last one the master knows the slave applied
    /// (absent for a slave's first, and in files written before 1.1.0)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<i64>,
    /// `rserv_node_id()` of the slave database the server id is bound to, when the master knows it
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slave: Option<String>,
    /// tells this change set from another with the same sync id (a master restored from a
    /// backup issues its ids again); absent in files written before 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// the master's `server_version_num` (absent in files written before 1.1.0): the slave
    /// refuses values its PostgreSQL major cannot store before loading them
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<i32>,
    /// the features the change set uses ([`FEATURES`]); empty: only what rserv 1.0.0 reads
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    /// the master's snapshot the change set was read at (`pg_snapshot` text form): a slave
    /// records it, for a failover to tell which slave holds more; absent before 1.1.0
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

impl Header {
    /// Declare the features `kinds` need, in the order of [`FEATURES`].
    pub fn declare(&mut self, kinds: impl IntoIterator<Item = SectionKind>) {
        let used: Vec<&str> = kinds.into_iter().filter_map(SectionKind::feature).collect();
        self.features = FEATURES
            .iter()
            .filter(|f| used.contains(f))
            .map(|f| f.to_string())
            .collect();
    }

    pub fn uses(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SectionKind {
    Truncate,
    Delete,
    Insert,
    Update,
    /// the current rows of identities only updated in the window: updated in place
    Upsert,
    /// the state of the master's replicated sequences
    Sequence,
    /// a schema change of the table: its definition before and after (one JSON row)
    Ddl,
}

impl SectionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SectionKind::Truncate => "TRUNCATE",
            SectionKind::Delete => "DELETE",
            SectionKind::Insert => "INSERT",
            SectionKind::Update => "UPDATE",
            SectionKind::Upsert => "UPSERT",
            SectionKind::Sequence => "SEQUENCE",
            SectionKind::Ddl => "DDL",
        }
    }

    pub fn parse(s: &str) -> Option<SectionKind> {
        match s {
            "TRUNCATE" => Some(SectionKind::Truncate),
            "DELETE" => Some(SectionKind::Delete),
            "INSERT" => Some(SectionKind::Insert),
            "UPDATE" => Some(SectionKind::Update),
            "UPSERT" => Some(SectionKind::Upsert),
            "SEQUENCE" => Some(SectionKind::Sequence),
            "DDL" => Some(SectionKind::Ddl),
            _ => None,
        }
    }

    /// The feature a change set holding this section declares (None: a section of 1.0.0's).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            SectionKind::Ddl => Some(FEATURE_DDL),
            SectionKind::Sequence => Some(FEATURE_SEQUENCE),
            SectionKind::Upsert => Some(FEATURE_UPSERT),
            _ => None,
        }
    }

    /// TRUNCATE carries no rows.
    pub fn has_data(self) -> bool {
        self != SectionKind::Truncate
    }
}

/// Which table a section is for, and the columns of its rows, by name.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SectionMeta {
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
    pub key: Vec<String>,
    /// The master's type of each column; the slave refuses a column it cannot load.
    #[serde(default)]
    pub types: Vec<String>,
    /// For an initial copy: the table's estimated size in rows (progress reports only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimated_rows: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct Trailer {
    sections: u64,
    rows: u64,
    crc32: String,
}

#[derive(Serialize, Deserialize)]
struct Failure {
    message: String,
}

/// Totals of a written or read snapshot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub sections: u64,
    pub rows: u64,
    pub bytes: u64,
}

/// "1 row", "2 rows": for messages.
pub fn rows(n: impl Into<u64>) -> String {
    let n = n.into();
    if n == 1 {
        "1 row".to_string()
    } else {
        format!("{n} rows")
    }
}

fn json<T: Serialize>(v: &T) -> String {
    // Serializing plain structs of strings and numbers cannot fail.
    serde_json::to_string(v).unwrap_or_default()
}

pub struct SnapshotWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    stats: Stats,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn start(out: W, syncid: i64, header: &Header) -> std::io::Result<Self> {
        let mut w = SnapshotWriter {
            out,
            crc: crc32fast::Hasher::new(),
            stats: Stats::default(),
        };
        w.put(
            format!(
                "{MAGIC_PREFIX}{FORMAT}\n-- SYNCID {syncid} {}\n",
                json(header)
            )
            .as_bytes(),
        )?;
        // the reader may begin its transaction while the sections are read from the master
        w.out.flush()?;
        Ok(w)
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.stats.bytes += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    pub fn section(&mut self, kind: SectionKind, meta: &SectionMeta) -> std::io::Result<()> {
        self.stats.sections += 1;
        self.put(format!("-- {} {}\n", kind.as_str(), json(meta)).as_bytes())
    }

    /// Copy one section's COPY-text rows and close it with `\.`.
    pub fn data(&mut self, rows: impl Read) -> std::io::Result<u64> {
        self.data_with_progress(rows, &mut |_, _| {})
    }

    /// As [`Self::data`], calling `progress(rows, bytes)` for every chunk copied.
    pub fn data_with_progress(
        &mut self,
        mut rows: impl Read,
        progress: &mut dyn FnMut(u64, u64),
    ) -> std::io::Result<u64> {
        let mut buf = vec![0u8; 64 * 1024];
        let mut n_rows = 0u64;
        let mut last = b'\n';
        // A COPY source returns one row per read: progress is told once per REPORT bytes.
        const REPORT: u64 = 1024 * 1024;
        let (mut unreported_rows, mut unreported_bytes) = (0u64, 0u64);
        loop {
            let n = rows.read(&mut buf)?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            let in_chunk = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
            n_rows += in_chunk;
            last = chunk[n - 1];
            self.put(chunk)?;
            unreported_rows += in_chunk;
            unreported_bytes += n as u64;
            if unreported_bytes >= REPORT {
                progress(unreported_rows, unreported_bytes);
                (unreported_rows, unreported_bytes) = (0, 0);
            }
        }
        if unreported_bytes > 0 {
            progress(unreported_rows, unreported_bytes);
        }
        if last != b'\n' {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "COPY output did not end with a newline",
            ));
        }
        self.stats.rows += n_rows;
        self.put(b"\\.\n")?;
        // A check line after every section lets the reader refuse a damaged section before
        // it is merged into the slave table.
        let check = format!("-- CHECK {}\n", json(&self.totals()));
        self.put(check.as_bytes())?;
        // the reader may merge this section while the next one is read from the master
        self.out.flush()?;
        Ok(n_rows)
    }

    fn totals(&self) -> Trailer {
        Trailer {
            sections: self.stats.sections,
            rows: self.stats.rows,
            crc32: format!("{:08x}", self.crc.clone().finalize()),
        }
    }

    /// Write the end line. Only call this once the master transaction has committed.
    pub fn finish(mut self) -> std::io::Result<(W, Stats)> {
        let line = format!("-- OK {}\n", json(&self.totals()));
        self.out.write_all(line.as_bytes())?;
        self.stats.bytes += line.len() as u64;
        self.out.flush()?;
        Ok((self.out, self.stats))
    }

    /// Mark the file as failed, so nobody applies what was written so far.
    pub fn fail(mut self, message: &str) -> std::io::Result<()> {
        let line = format!(
            "-- ERROR {}\n",
            json(&Failure {
                message: message.to_string()
            })
        );
        self.out.write_all(line.as_bytes())?;
        self.out.flush()
    }
}

pub struct SnapshotReader<R: BufRead> {
    input: R,
    crc: crc32fast::Hasher,
    line: Vec<u8>,
    line_no: u64,
    pub syncid: i64,
    pub header: Header,
    stats: Stats,
}

fn bad(msg: impl Into<String>) -> Error {
    Error::Snapshot(msg.into())
}

/// `feature "ddl"`, `features "ddl", "sequence"`: for messages.
pub fn feature_list(features: &[&str]) -> String {
    let quoted: Vec<String> = features.iter().map(|f| format!("\"{f}\"")).collect();
    let noun = if features.len() == 1 {
        "feature"
    } else {
        "features"
    };
    format!("{noun} {}", quoted.join(", "))
}

impl<R: BufRead> SnapshotReader<R> {
    /// Read and check the first two lines.
    pub fn open(input: R) -> Result<Self, Error> {
        let mut r = SnapshotReader {
            input,
            crc: crc32fast::Hasher::new(),
            line: Vec::new(),
            line_no: 0,
            syncid: 0,
            header: Header::default(),
            stats: Stats::default(),
        };
        if !r.read_line()? {
            return Err(bad("the input is empty (expected an rserv snapshot)"));
        }
        let first = r.line_text().unwrap_or_default().to_string();
        let Some(format) = first.strip_prefix(MAGIC_PREFIX) else {
            return Err(bad(format!(
                "line 1 is not \"{MAGIC_PREFIX}{FORMAT}\": not an rserv snapshot"
            )));
        };
        if format != FORMAT.to_string() {
            return Err(Error::Failed(format!(
                "the change set is in format {format}, and this replicate (rserv {}) reads \
                 format {FORMAT} only: apply it with the replicate of the rserv release that wrote it",
                crate::rserv::OWN_VERSION
            )));
        }
        r.hash_line();
        if !r.read_line()? {
            return Err(bad("truncated after line 1"));
        }
        let text = r.line_text()?.to_string();
        let rest = text
            .strip_prefix("-- SYNCID ")
            .ok_or_else(|| bad("line 2 must be \"-- SYNCID <n> {...}\""))?;
        let (id, meta) = rest.split_once(' ').unwrap_or((rest, ""));
        r.syncid = id
            .parse()
            .map_err(|_| bad(format!("line 2: sync id \"{id}\" is not a number")))?;
        r.header =
            serde_json::from_str(meta).map_err(|e| bad(format!("line 2: invalid header: {e}")))?;
        let unknown: Vec<&str> = r
            .header
            .features
            .iter()
            .map(String::as_str)
            .filter(|f| !FEATURES.contains(f))
            .collect();
        if !unknown.is_empty() {
            return Err(Error::Failed(format!(
                "change set {} (from a master running rserv {}) uses {}, which this replicate \
                 (rserv {}) does not know: apply it with the replicate of rserv {} or later",
                r.syncid,
                r.header.rserv,
                feature_list(&unknown),
                crate::rserv::OWN_VERSION,
                r.header.rserv
            )));
        }
        r.hash_line();
        Ok(r)
    }

    /// Reads one line into self.line; false at end of input.
    fn read_line(&mut self) -> Result<bool, Error> {
        self.line.clear();
        let n = self
            .input
            .read_until(b'\n', &mut self.line)
            .map_err(|e| bad(format!("reading line {}: {e}", self.line_no + 1)))?;
        if n == 0 {
            return Ok(false);
        }
        self.line_no += 1;
        if self.line.last() != Some(&b'\n') {
            return Err(bad(format!(
                "truncated: line {} is incomplete",
                self.line_no
            )));
        }
        Ok(true)
    }

    fn hash_line(&mut self) {
        self.crc.update(&self.line);
        self.stats.bytes += self.line.len() as u64;
    }

    fn line_text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.line[..self.line.len() - 1])
            .map_err(|_| bad(format!("line {} is not UTF-8", self.line_no)))
    }

    /// The next section, or None after a valid end line (counts and CRC checked).
    pub fn next_section(&mut self) -> Result<Option<(SectionKind, SectionMeta)>, Error> {
        if !self.read_line()? {
            return Err(bad(format!(
                "truncated after line {}: the end line \"-- OK\" is missing",
                self.line_no
            )));
        }
        let text = self.line_text()?.to_string();
        let no = self.line_no;
        let rest = text
            .strip_prefix("-- ")
            .ok_or_else(|| bad(format!("line {no}: expected a section line \"-- ...\"")))?;
        let (word, meta) = rest.split_once(' ').unwrap_or((rest, ""));
        match word {
            "OK" => {
                self.verify(meta, no)?;
                let mut extra = [0u8; 1];
                if self
                    .input
                    .read(&mut extra)
                    .map_err(|e| bad(e.to_string()))?
                    != 0
                {
                    return Err(bad(format!(
                        "unexpected data after the end line (line {no})"
                    )));
                }
                Ok(None)
            }
            "ERROR" => {
                let msg = serde_json::from_str::<Failure>(meta)
                    .map(|f| f.message)
                    .unwrap_or_else(|_| meta.to_string());
                Err(bad(format!("the master failed while writing it: {msg}")))
            }
            _ => {
                let kind = SectionKind::parse(word)
                    .ok_or_else(|| bad(format!("line {no}: unknown section \"{word}\"")))?;
                if let Some(f) = kind.feature().filter(|f| !self.header.uses(f)) {
                    return Err(bad(format!(
                        "line {no}: a {word} section, but the header does not declare feature \"{f}\""
                    )));
                }
                let meta: SectionMeta = serde_json::from_str(meta)
                    .map_err(|e| bad(format!("line {no}: invalid section header: {e}")))?;
                self.hash_line();
                self.stats.sections += 1;
                Ok(Some((kind, meta)))
            }
        }
    }

    /// Compare a CHECK or OK line's totals with what was read before it.
    fn verify(&self, meta: &str, no: u64) -> Result<(), Error> {
        let t: Trailer = serde_json::from_str(meta)
            .map_err(|e| bad(format!("line {no}: invalid check line: {e}")))?;
        let crc = format!("{:08x}", self.crc.clone().finalize());
        if t.crc32 != crc || t.sections != self.stats.sections || t.rows != self.stats.rows {
            return Err(bad(format!(
                "checksum mismatch at line {no}: it says {} sections, {} rows, crc32 {}, \
                 but the file holds {} sections, {} rows, crc32 {crc}: it was altered or damaged",
                t.sections, t.rows, t.crc32, self.stats.sections, self.stats.rows
            )));
        }
        Ok(())
    }

    /// Copy the current section's rows (COPY text lines) to `out`, up to its `\.` line.
    pub fn data(&mut self, out: &mut impl Write) -> Result<u64, Error> {
        self.data_checked(out, &mut |_| Ok(()))
    }

    /// [`Self::data`], passing each row (a COPY text line) to `check` before it goes to `out`;
    /// the first error stops the copy.
    pub fn data_checked(
        &mut self,
        out: &mut impl Write,
        check: &mut dyn FnMut(&[u8]) -> Result<(), Error>,
    ) -> Result<u64, Error> {
        let mut rows = 0u64;
        loop {
            if !self.read_line()? {
                return Err(bad(format!(
                    "truncated inside a section after line {}",
                    self.line_no
                )));
            }
            self.hash_line();
            if self.line == b"\\.\n" {
                break;
            }
            rows += 1;
            check(&self.line)?;
            // A failed write is the slave's problem (e.g. its connection died), not the file's.
            out.write_all(&self.line).map_err(|source| Error::Io {
                context: format!("slave: loading line {} of the snapshot", self.line_no),
                source,
            })?;
        }
        self.stats.rows += rows;
        if !self.read_line()? {
            return Err(bad(format!("truncated after line {}", self.line_no)));
        }
        let text = self.line_text()?.to_string();
        let meta = text.strip_prefix("-- CHECK ").ok_or_else(|| {
            bad(format!(
                "line {}: expected the section's check line",
                self.line_no
            ))
        })?;
        self.verify(meta, self.line_no)?;
        self.hash_line();
        Ok(rows)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let header = Header {
            master: "m".into(),
            server: 0,
            rserv: "1.0.0".into(),
            ..Header::default()
        };
        let meta = SectionMeta {
            schema: "public".into(),
            table: "t".into(),
            columns: vec!["a".into(), "b".into()],
            key: vec!["a".into()],
            types: vec!["integer".into(), "text".into()],
            estimated_rows: None,
        };
        let mut w = SnapshotWriter::start(Vec::new(), 7, &header).unwrap();
        w.section(SectionKind::Delete, &meta).unwrap();
        w.data(&b"1\n"[..]).unwrap();
        w.section(SectionKind::Update, &meta).unwrap();
        w.data(&b"2\tx\\ty\n3\t\\N\n"[..]).unwrap();
        w.finish().unwrap().0
    }

    type Sections = Vec<(SectionKind, Vec<u8>)>;

    fn read_all(bytes: &[u8]) -> Result<(i64, Sections), Error> {
        let mut r = SnapshotReader::open(bytes)?;
        let mut out = Vec::new();
        while let Some((kind, _)) = r.next_section()? {
            let mut data = Vec::new();
            if kind.has_data() {
                r.data(&mut data)?;
            }
            out.push((kind, data));
        }
        Ok((r.syncid, out))
    }

    #[test]
    fn round_trip() {
        let (id, sections) = read_all(&sample()).unwrap();
        assert_eq!(id, 7);
        assert_eq!(sections.len(), 2);
        assert_eq!(sections[1].1, b"2\tx\\ty\n3\t\\N\n");
    }

    #[test]
    fn truncated_is_refused() {
        let s = sample();
        for cut in [0, 10, s.len() / 2, s.len() - 3] {
            assert!(
                matches!(read_all(&s[..cut]), Err(Error::Snapshot(_))),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn corrupted_and_reordered_are_refused() {
        let s = String::from_utf8(sample()).unwrap();
        let corrupted = s.replace("2\tx", "9\tx");
        assert!(
            matches!(read_all(corrupted.as_bytes()), Err(Error::Snapshot(m)) if m.contains("checksum"))
        );
        let mut lines: Vec<&str> = s.lines().collect();
        lines.swap(6, 7);
        let reordered = lines.join("\n") + "\n";
        assert!(read_all(reordered.as_bytes()).is_err());
    }

    #[test]
    fn writer_failure_is_refused() {
        let header = Header {
            master: "m".into(),
            server: 0,
            rserv: "1".into(),
            ..Header::default()
        };
        let mut buf = Vec::new();
        let w = SnapshotWriter::start(&mut buf, 1, &header).unwrap();
        w.fail("boom").unwrap();
        assert!(matches!(read_all(&buf), Err(Error::Snapshot(m)) if m.contains("boom")));
    }

    /// A change set with one section of `kind`, declaring `features`.
    fn with_section(kind: SectionKind, features: &[&str]) -> Vec<u8> {
        let header = Header {
            master: "m".into(),
            rserv: "1.1.0".into(),
            features: features.iter().map(|f| f.to_string()).collect(),
            ..Header::default()
        };
        let meta = SectionMeta {
            schema: "public".into(),
            table: "t".into(),
            columns: vec!["definition".into()],
            key: vec![],
            types: vec![],
            estimated_rows: None,
        };
        let mut w = SnapshotWriter::start(Vec::new(), 3, &header).unwrap();
        w.section(kind, &meta).unwrap();
        w.data(&b"{}\n"[..]).unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn features_are_declared_in_a_fixed_order() {
        let mut h = Header::default();
        h.declare([
            SectionKind::Sequence,
            SectionKind::Insert,
            SectionKind::Ddl,
            SectionKind::Ddl,
        ]);
        assert_eq!(h.features, ["ddl", "sequence"]);
        h.declare([SectionKind::Delete, SectionKind::Truncate]);
        assert!(h.features.is_empty());
        // no features: the header is 1.0.0's, every reader reads it
        let line = json(&Header {
            master: "m".into(),
            rserv: "1.1.0".into(),
            ..Header::default()
        });
        assert!(!line.contains("features"), "{line}");
    }

    #[test]
    fn declared_features_are_read() {
        let bytes = with_section(SectionKind::Ddl, &["ddl"]);
        let (_, sections) = read_all(&bytes).unwrap();
        assert_eq!(sections[0].0, SectionKind::Ddl);
        let r = SnapshotReader::open(&bytes[..]).unwrap();
        assert!(r.header.uses("ddl") && !r.header.uses("sequence"));
    }

    #[test]
    fn a_section_of_an_undeclared_feature_is_refused() {
        for (kind, features) in [
            (SectionKind::Ddl, &[][..]),
            (SectionKind::Ddl, &["sequence"][..]),
            (SectionKind::Sequence, &["ddl"][..]),
        ] {
            match read_all(&with_section(kind, features)) {
                Err(Error::Snapshot(m)) => assert!(m.contains("does not declare"), "{m}"),
                other => panic!("{kind:?} with {features:?}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn unknown_formats_and_features_are_refused_before_any_section() {
        let s = String::from_utf8(with_section(SectionKind::Ddl, &["ddl"])).unwrap();
        let format2 = s.replacen("-- RSERV SNAPSHOT 1\n", "-- RSERV SNAPSHOT 2\n", 1);
        match SnapshotReader::open(format2.as_bytes()) {
            Err(Error::Failed(m)) => assert!(m.contains("format 2"), "{m}"),
            other => panic!("format 2: {:?}", other.map(|_| ())),
        }
        let unknown = s.replacen(
            "\"features\":[\"ddl\"]",
            "\"features\":[\"ddl\",\"hologram\"]",
            1,
        );
        assert_ne!(unknown, s);
        match SnapshotReader::open(unknown.as_bytes()) {
            Err(Error::Failed(m)) => {
                assert!(
                    m.contains("feature \"hologram\"") && m.contains("1.1.0"),
                    "{m}"
                )
            }
            other => panic!("unknown feature: {:?}", other.map(|_| ())),
        }
        let garbage = s.replacen("-- RSERV SNAPSHOT 1\n", "-- RSERV SNAPSHOTS\n", 1);
        assert!(matches!(
            SnapshotReader::open(garbage.as_bytes()),
            Err(Error::Snapshot(m)) if m.contains("not an rserv snapshot")
        ));
    }

    #[test]
    fn a_change_set_of_rserv_1_0_0_is_read() {
        // as 1.0.0's replicate wrote it: no key after "rserv", no features
        let head = "-- RSERV SNAPSHOT 1\n-- SYNCID 3 {\"master\":\"m\",\"server\":0,\"rserv\":\"1.0.0\"}\n";
        let mut bytes = head.as_bytes().to_vec();
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(
            format!("-- OK {{\"sections\":0,\"rows\":0,\"crc32\":\"{crc:08x}\"}}\n").as_bytes(),
        );
        let mut r = SnapshotReader::open(&bytes[..]).unwrap();
        assert_eq!(
            (r.syncid, r.header.base, r.header.features.len()),
            (3, None, 0)
        );
        assert!(r.next_section().unwrap().is_none());
    }

    #[test]
    fn trailing_garbage_is_refused() {
        let mut s = sample();
        s.extend_from_slice(b"-- UPDATE {}\n");
        assert!(read_all(&s).is_err());
    }
}
