//! A small seeded PRNG (xorshift64*) for the tests' random workloads and generators: the seed
//! is printed, so a failure can be replayed from it.

use std::time::Duration;

pub struct Rng(u64);

impl Rng {
    /// From `seed` (0 counts as 1: xorshift has no zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// Seeded from `var` if set, else from `default`; prints the seed.
    pub fn from_env(var: &str, default: u64, what: &str) -> Rng {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(default);
        eprintln!("{what}: seed {seed} (set {var} to replay)");
        Rng::new(seed)
    }

    /// Seeded from `var` if set, else from `default`, mixed with the test's `name` (FNV-1a):
    /// each test draws its own numbers, the same on every run. Prints the seed.
    pub fn for_test(var: &str, default: u64, name: &str) -> Rng {
        let base = std::env::var(var)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(default);
        let mut h = base ^ 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        eprintln!("{name}: seed {base} (set {var} to vary)");
        Rng::new(h | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in 0..n (0 for n = 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// [`Rng::below`] for u64.
    pub fn below_u64(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [lo, hi].
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as i64
    }

    /// `n` random decimal digits.
    pub fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    /// Uniform in [lo, hi] milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below_u64(hi.saturating_sub(lo) + 1))
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}
