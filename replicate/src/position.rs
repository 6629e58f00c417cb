//! Where a slave stands in its master's history: the master's MVCC snapshot of the last change
//! set it applied (`pg_snapshot` text, `xmin:xmax:xip,...`), as the change-set header carries
//! it. Snapshots of one server taken at different moments are nested: the later one sees every
//! transaction the earlier one sees. A failover compares slaves by them: which one holds more
//! of the old master's transactions, and whether one holds a transaction another lacks.

use std::cmp::Ordering;
use std::collections::BTreeSet;

/// A master's snapshot: transactions below `xmin` are visible, those from `xmax` on are not,
/// and those in between are visible unless listed in `xip` (in progress).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: BTreeSet<u64>,
}

impl Snapshot {
    /// `xmin:xmax:xip1,xip2,...` (pg_snapshot's output); None if it is not one.
    pub fn parse(text: &str) -> Option<Snapshot> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => BTreeSet::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<BTreeSet<u64>>>()?,
        };
        (xmin <= xmax && xip.iter().all(|x| *x >= xmin && *x < xmax)).then_some(Snapshot {
            xmin,
            xmax,
            xip,
        })
    }

    /// Does this snapshot see transaction `xid` (as committed)?
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.xip.contains(&xid))
    }

    /// Does `other` see every transaction this one sees?
    pub fn within(&self, other: &Snapshot) -> bool {
        // what `other` does not see: its in-progress list, and everything from its xmax on
        if other.xip.iter().any(|x| self.sees(*x)) {
            return false;
        }
        if self.xmax <= other.xmax {
            return true;
        }
        // [other.xmax, self.xmax) must all be invisible here: in progress, and above xmin
        other.xmax >= self.xmin
            && self.xip.range(other.xmax..self.xmax).count() as u64 == self.xmax - other.xmax
    }

    /// How this snapshot stands to `other`: Less (other sees more), Equal (they see the same
    /// transactions), Greater (this one sees more); None when each sees a transaction the other
    /// does not (not two snapshots of one server's history).
    pub fn compare(&self, other: &Snapshot) -> Option<Ordering> {
        match (self.within(other), other.within(self)) {
            (true, true) => Some(Ordering::Equal),
            (true, false) => Some(Ordering::Less),
            (false, true) => Some(Ordering::Greater),
            (false, false) => None,
        }
    }
}

/// How slave position `a` (sync id, snapshot text) stands to `b`: by snapshots when both have
/// one (exact), else by sync id (one master issues them in order, but for two slaves prepared
/// at the same time the later id may carry the earlier snapshot). `exact` says which.
pub fn compare(a: (i64, Option<&str>), b: (i64, Option<&str>)) -> (Option<Ordering>, bool) {
    match (a.1.and_then(Snapshot::parse), b.1.and_then(Snapshot::parse)) {
        (Some(x), Some(y)) => (x.compare(&y), true),
        _ => (Some(a.0.cmp(&b.0)), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_snapshot_text() {
        let s = Snapshot::parse("10:20:12,15").unwrap();
        assert_eq!((s.xmin, s.xmax), (10, 20));
        assert!(s.sees(9) && s.sees(11) && !s.sees(12) && !s.sees(20));
        assert_eq!(Snapshot::parse("5:5:").unwrap().xip.len(), 0);
        for bad in ["", "1", "1:2", "3:2:", "1:5:7", "a:b:", "1:5:2,x"] {
            assert!(Snapshot::parse(bad).is_none(), "{bad}");
        }
    }

    /// Every pair of small snapshots: `within` agrees with asking every transaction id.
    #[test]
    fn within_agrees_with_visibility_of_every_transaction() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut random = || {
            let xmin = next(12);
            let xmax = xmin + next(8);
            let xip = (xmin..xmax).filter(|_| next(3) == 0).collect();
            Snapshot { xmin, xmax, xip }
        };
        for _ in 0..20_000 {
            let (a, b) = (random(), random());
            let brute = (0..32).all(|x| !a.sees(x) || b.sees(x));
            assert_eq!(a.within(&b), brute, "{a:?} within {b:?}");
        }
    }

    #[test]
    fn a_later_snapshot_of_one_server_sees_more() {
        // 12 committed between the two; 15 still running in both; 21 started after the first
        let early = Snapshot::parse("12:20:12,15").unwrap();
        let late = Snapshot::parse("15:25:15,21").unwrap();
        assert_eq!(early.compare(&late), Some(Ordering::Less));
        assert_eq!(late.compare(&early), Some(Ordering::Greater));
        assert_eq!(late.compare(&late.clone()), Some(Ordering::Equal));
        // sync ids out of snapshot order (two prepares at once): the snapshots decide
        assert_eq!(
            compare((7, Some("15:25:15,21")), (8, Some("12:20:12,15"))),
            (Some(Ordering::Greater), true)
        );
        assert_eq!(
            compare((7, None), (8, Some("1:2:"))),
            (Some(Ordering::Less), false)
        );
    }
}
