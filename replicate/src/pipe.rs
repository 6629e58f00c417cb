//! A bounded in-memory pipe between the thread that reads the change set from the master and
//! the one that writes it to the slave: both databases work at once, and memory stays at a
//! few chunks however large the change set is.

use std::io::{BufRead, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

const CHUNK: usize = 256 * 1024;

pub struct PipeWriter {
    buf: Vec<u8>,
    tx: SyncSender<Vec<u8>>,
}

pub struct PipeReader {
    rx: Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

/// A pipe holding at most `chunks` chunks of 256 KiB in flight.
pub fn pipe(chunks: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(chunks);
    (
        PipeWriter {
            buf: Vec::with_capacity(CHUNK),
            tx,
        },
        PipeReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        },
    )
}

fn closed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the slave side stopped reading",
    )
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
            self.tx.send(chunk).map_err(|_| closed())?;
        }
        Ok(())
    }
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for PipeReader {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos >= self.cur.len() {
            match self.rx.recv() {
                Ok(chunk) => {
                    self.cur = chunk;
                    self.pos = 0;
                }
                // Writer gone: end of input (a writer that failed simply never sent its end line).
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.cur[self.pos..])
    }

    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_bytes_in_order_and_ends() {
        let (mut w, mut r) = pipe(2);
        let t = std::thread::spawn(move || {
            for i in 0..100_000u32 {
                w.write_all(format!("{i}\n").as_bytes()).unwrap();
            }
            w.flush().unwrap();
        });
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        t.join().unwrap();
        assert_eq!(s.lines().count(), 100_000);
        assert_eq!(s.lines().last(), Some("99999"));
    }

    #[test]
    fn writer_sees_a_gone_reader() {
        let (mut w, r) = pipe(1);
        drop(r);
        let big = vec![b'x'; CHUNK * 3];
        assert!(w.write_all(&big).is_err());
    }
}
