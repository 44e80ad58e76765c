//! Key names and key choice: uniform, sequential or gaussian over `0..keys`, formatted
//! into a reused buffer so choosing a key never allocates.

use clap::ValueEnum;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Prefix of the keys of get/set/mixed workloads (`key:{index}`).
pub const KEY_PREFIX: &[u8] = b"key:";
/// Prefix of incr keys (`counter:{index}`): kept apart from the bytes keys so an incr
/// run after a set run does not hit values of the wrong type.
pub const COUNTER_KEY_PREFIX: &[u8] = b"counter:";
/// Prefix of the locks of the lock workload (`lock:{index}`).
pub const LOCK_KEY_PREFIX: &[u8] = b"lock:";
/// Prefix of the barrier of the barrier workload (`barrier:{run id}`).
pub const BARRIER_KEY_PREFIX: &[u8] = b"barrier:";
/// Standard deviations that fit in the key space on each side of its middle, as
/// memtier's default `--key-stddev` (range / 6).
const GAUSSIAN_DEVIATIONS_PER_HALF_RANGE: f64 = 3.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyPattern {
    Uniform,
    /// Each connection walks the key space in order from its own starting point.
    Sequential,
    /// Normal around the middle of the key space (hot keys), clamped to the range.
    Gaussian,
}

/// Chooses key indexes in `0..keys`; one per load task, so it needs no synchronization.
#[derive(Debug)]
pub struct KeyChooser {
    pattern: KeyPattern,
    keys: u64,
    next_sequential: u64,
    random: SmallRng,
}

impl KeyChooser {
    /// `lane` of `lanes` spreads sequential walkers over the key space; `seed` makes the
    /// random choices replayable.
    pub fn new(pattern: KeyPattern, keys: u64, lane: u64, lanes: u64, seed: u64) -> KeyChooser {
        assert!(keys > 0 && lanes > 0 && lane < lanes);
        let start = u64::try_from(u128::from(keys) * u128::from(lane) / u128::from(lanes)).expect("below keys");
        KeyChooser {
            pattern,
            keys,
            next_sequential: start,
            random: SmallRng::seed_from_u64(seed ^ lane.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        }
    }

    pub fn next_key(&mut self) -> u64 {
        let index = match self.pattern {
            KeyPattern::Uniform => self.random.random_range(0..self.keys),
            KeyPattern::Sequential => {
                let index = self.next_sequential;
                self.next_sequential = if index + 1 == self.keys { 0 } else { index + 1 };
                index
            }
            KeyPattern::Gaussian => self.gaussian(),
        };
        debug_assert!(index < self.keys);
        index
    }

    fn gaussian(&mut self) -> u64 {
        let last = (self.keys - 1) as f64;
        let middle = last / 2.0;
        let deviation = (self.keys as f64 / 2.0) / GAUSSIAN_DEVIATIONS_PER_HALF_RANGE;
        // Box-Muller; the first uniform is kept off zero so its logarithm is finite.
        let first: f64 = 1.0 - self.random.random::<f64>();
        let second: f64 = self.random.random();
        let normal = (-2.0 * first.ln()).sqrt() * (std::f64::consts::TAU * second).cos();
        // The float range can round past the last index for huge key spaces, hence `min`.
        ((middle + normal * deviation).round().clamp(0.0, last) as u64).min(self.keys - 1)
    }
}

/// Writes `{prefix}{index}` into `buffer`, replacing what it held.
pub fn write_key(buffer: &mut Vec<u8>, prefix: &[u8], index: u64) {
    buffer.clear();
    buffer.extend_from_slice(prefix);
    write_decimal(buffer, index);
}

/// Appends `value` in decimal without going through `fmt` (the load loop calls this for
/// every request).
pub fn write_decimal(buffer: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    buffer.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_stays_in_range() {
        for pattern in [KeyPattern::Uniform, KeyPattern::Sequential, KeyPattern::Gaussian] {
            for keys in [1, 2, 3, 10, 1_000, u64::MAX] {
                for lane in 0..3 {
                    let mut chooser = KeyChooser::new(pattern, keys, lane, 3, 42);
                    for _ in 0..2_000 {
                        assert!(chooser.next_key() < keys, "{pattern:?} keys={keys}");
                    }
                }
            }
        }
    }

    #[test]
    fn sequential_walks_in_order_from_its_lane_offset_and_wraps() {
        let mut chooser = KeyChooser::new(KeyPattern::Sequential, 10, 1, 2, 0);
        let walked: Vec<u64> = (0..12).map(|_| chooser.next_key()).collect();
        assert_eq!(walked, [5, 6, 7, 8, 9, 0, 1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn gaussian_concentrates_on_the_middle() {
        let mut chooser = KeyChooser::new(KeyPattern::Gaussian, 600, 0, 1, 1);
        let samples = 60_000;
        let middle_third = (0..samples)
            .map(|_| chooser.next_key())
            .filter(|key| (200..400).contains(key))
            .count();
        // One standard deviation each side holds about 68%; uniform would give 33%.
        assert!(middle_third > samples / 2, "{middle_third}");
    }

    #[test]
    fn same_seed_same_keys() {
        let mut first = KeyChooser::new(KeyPattern::Uniform, 1_000, 2, 4, 9);
        let mut second = KeyChooser::new(KeyPattern::Uniform, 1_000, 2, 4, 9);
        assert!((0..100).all(|_| first.next_key() == second.next_key()));
    }

    #[test]
    fn keys_are_formatted_in_decimal() {
        let mut buffer = b"stale".to_vec();
        write_key(&mut buffer, KEY_PREFIX, 0);
        assert_eq!(buffer, b"key:0");
        write_key(&mut buffer, COUNTER_KEY_PREFIX, 1_234_567);
        assert_eq!(buffer, b"counter:1234567");
        write_key(&mut buffer, KEY_PREFIX, u64::MAX);
        assert_eq!(buffer, format!("key:{}", u64::MAX).as_bytes());
    }
}
