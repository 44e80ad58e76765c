//! Workloads and the request sequence of one load task: which operation, on which key.

use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;

use crate::bench::keys::{KeyChooser, KeyPattern};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    Get,
    Set,
    Incr,
    /// SETs and GETs in the `--ratio` proportion.
    Mixed,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Set => "set",
            Workload::Incr => "incr",
            Workload::Mixed => "mixed",
        }
    }

    /// Whether `--prefill` has anything to do: counters start at zero by definition.
    pub fn reads_values(self) -> bool {
        matches!(self, Workload::Get | Workload::Mixed)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Get,
    Set,
    Incr,
}

/// `--ratio SET:GET` of the mixed workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    pub sets: u32,
    pub gets: u32,
}

impl FromStr for Ratio {
    type Err = String;

    fn from_str(text: &str) -> Result<Ratio, String> {
        let invalid = || format!("{text:?} is not SET:GET (e.g. 1:10)");
        let (sets, gets) = text.split_once(':').ok_or_else(invalid)?;
        let sets: u32 = sets.trim().parse().map_err(|_| invalid())?;
        let gets: u32 = gets.trim().parse().map_err(|_| invalid())?;
        if sets.checked_add(gets).is_none_or(|period| period == 0) {
            return Err(format!("{text:?}: SET + GET must be between 1 and {}", u32::MAX));
        }
        Ok(Ratio { sets, gets })
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}:{}", self.sets, self.gets)
    }
}

/// Deterministic operation sequence: in every `sets + gets` requests exactly `sets` are
/// SETs (as memtier), so short runs still have the asked-for mix.
#[derive(Debug)]
pub struct OperationMix {
    workload: Workload,
    ratio: Ratio,
    position: u32,
}

impl OperationMix {
    /// `lane` shifts where the period starts so the tasks together spread their SETs.
    pub fn new(workload: Workload, ratio: Ratio, lane: u64) -> OperationMix {
        let period = ratio.sets + ratio.gets;
        OperationMix {
            workload,
            ratio,
            position: (lane % u64::from(period)) as u32,
        }
    }

    pub fn next_operation(&mut self) -> Operation {
        match self.workload {
            Workload::Get => Operation::Get,
            Workload::Set => Operation::Set,
            Workload::Incr => Operation::Incr,
            Workload::Mixed => {
                let position = self.position;
                self.position = if position + 1 == self.ratio.sets + self.ratio.gets {
                    0
                } else {
                    position + 1
                };
                if position < self.ratio.sets {
                    Operation::Set
                } else {
                    Operation::Get
                }
            }
        }
    }
}

/// What one load task sends.
#[derive(Debug)]
pub enum RequestSource {
    /// SET every key of `next..end` once, in order.
    Prefill { next: u64, end: u64 },
    /// The workload, for as long as the run lasts.
    Load { mix: OperationMix, keys: KeyChooser },
}

impl RequestSource {
    pub fn prefill(first: u64, end: u64) -> RequestSource {
        RequestSource::Prefill { next: first, end }
    }

    pub fn load(
        workload: Workload,
        ratio: Ratio,
        pattern: KeyPattern,
        keys: u64,
        lane: u64,
        lanes: u64,
        seed: u64,
    ) -> RequestSource {
        RequestSource::Load {
            mix: OperationMix::new(workload, ratio, lane),
            keys: KeyChooser::new(pattern, keys, lane, lanes, seed),
        }
    }

    /// The next request, or `None` when a prefill range is done (a load never ends by
    /// itself: the run's deadline or request budget stops it).
    pub fn next_request(&mut self) -> Option<(Operation, u64)> {
        match self {
            RequestSource::Prefill { next, end } => {
                if next == end {
                    return None;
                }
                let key = *next;
                *next += 1;
                Some((Operation::Set, key))
            }
            RequestSource::Load { mix, keys } => Some((mix.next_operation(), keys.next_key())),
        }
    }

    /// Requests left, when the source itself is finite.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            RequestSource::Prefill { next, end } => Some(end - next),
            RequestSource::Load { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_parses_and_rejects() {
        assert_eq!("1:10".parse::<Ratio>().unwrap(), Ratio { sets: 1, gets: 10 });
        assert_eq!("0:1".parse::<Ratio>().unwrap(), Ratio { sets: 0, gets: 1 });
        assert_eq!(Ratio { sets: 3, gets: 4 }.to_string(), "3:4");
        for bad in ["", "1", "1:", ":1", "a:b", "0:0", "-1:2", "4294967295:1"] {
            assert!(bad.parse::<Ratio>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mixed_keeps_the_exact_ratio_per_period() {
        let mut mix = OperationMix::new(Workload::Mixed, Ratio { sets: 1, gets: 10 }, 5);
        let sets = (0..110).filter(|_| mix.next_operation() == Operation::Set).count();
        assert_eq!(sets, 10);
        let mut only_gets = OperationMix::new(Workload::Mixed, Ratio { sets: 0, gets: 1 }, 0);
        assert!((0..10).all(|_| only_gets.next_operation() == Operation::Get));
        let mut incr = OperationMix::new(Workload::Incr, Ratio { sets: 1, gets: 1 }, 0);
        assert_eq!(incr.next_operation(), Operation::Incr);
    }

    #[test]
    fn prefill_sets_each_key_of_its_range_once() {
        let mut source = RequestSource::prefill(3, 6);
        assert_eq!(source.remaining(), Some(3));
        let sent: Vec<_> = std::iter::from_fn(|| source.next_request()).collect();
        assert_eq!(sent, [(Operation::Set, 3), (Operation::Set, 4), (Operation::Set, 5)]);
        assert_eq!(source.remaining(), Some(0));
    }
}
