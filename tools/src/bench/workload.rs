//! Workloads and the request sequence of one load task: which operation, on which key;
//! and what the lock and barrier workloads share between their tasks.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;

use crate::bench::keys::{write_key, KeyChooser, KeyPattern, BARRIER_KEY_PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    Get,
    Set,
    Incr,
    /// SETs and GETs in the `--ratio` proportion.
    Mixed,
    /// Engram only: each task, as its own owner, loops acquire (lease 10 s, wait up to
    /// 5 s) then release on one of `--keys` locks `lock:I` picked by `--key-pattern`
    /// (`--keys 1`: every task contends for one lock). A closed loop unless `--rate`.
    Lock,
    /// Engram only: every task waits, again and again, on one barrier of connections x
    /// pipeline parties (a new one each run). A wait's latency includes waiting for the
    /// slowest party to arrive.
    Barrier,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Get => "get",
            Workload::Set => "set",
            Workload::Incr => "incr",
            Workload::Mixed => "mixed",
            Workload::Lock => "lock",
            Workload::Barrier => "barrier",
        }
    }

    /// Whether `--prefill` has anything to do: counters start at zero by definition, and
    /// locks and barriers hold no values.
    pub fn reads_values(self) -> bool {
        matches!(self, Workload::Get | Workload::Mixed)
    }

    /// Whether only Engram has what this workload uses (Redis and echo do not).
    pub fn is_engram_only(self) -> bool {
        matches!(self, Workload::Lock | Workload::Barrier)
    }

    /// The operations reported one by one (each with its own histogram) besides the
    /// overall figures.
    pub fn reported_operations(self) -> &'static [Operation] {
        match self {
            Workload::Lock => &[Operation::LockAcquire, Operation::LockRelease],
            Workload::Barrier => &[Operation::BarrierWait],
            Workload::Get | Workload::Set | Workload::Incr | Workload::Mixed => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Get,
    Set,
    Incr,
    LockAcquire,
    LockRelease,
    BarrierWait,
}

impl Operation {
    /// The name in the `operations` object of the JSON and in the human output.
    pub fn name(self) -> &'static str {
        match self {
            Operation::Get => "get",
            Operation::Set => "set",
            Operation::Incr => "incr",
            Operation::LockAcquire => "lock_acquire",
            Operation::LockRelease => "lock_release",
            Operation::BarrierWait => "barrier_wait",
        }
    }
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
    /// A lock task always starts with an acquire.
    pub fn new(workload: Workload, ratio: Ratio, lane: u64) -> OperationMix {
        let period = ratio.sets + ratio.gets;
        OperationMix {
            workload,
            ratio,
            position: match workload {
                Workload::Mixed => (lane % u64::from(period)) as u32,
                _ => 0,
            },
        }
    }

    pub fn next_operation(&mut self) -> Operation {
        match self.workload {
            Workload::Get => Operation::Get,
            Workload::Set => Operation::Set,
            Workload::Incr => Operation::Incr,
            Workload::Barrier => Operation::BarrierWait,
            // Position 0: the next lock operation is an acquire; 1: a release.
            Workload::Lock => {
                self.position ^= 1;
                if self.position == 1 {
                    Operation::LockAcquire
                } else {
                    Operation::LockRelease
                }
            }
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

/// Lease of every grant of the lock workload: long enough that a stalled task keeps its
/// lock until it releases it, short enough that the locks of a killed run free soon.
pub const LOCK_LEASE: Duration = Duration::from_secs(10);
/// Longest an acquire of the lock workload queues behind other holders; one that runs
/// out is counted as an error.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Longest a wait of the barrier workload lasts; one that runs out breaks the generation
/// and ends the run.
pub const BARRIER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a lock or barrier task needs besides its request sequence.
#[derive(Debug, Clone)]
pub enum Coordination {
    /// Get, set, incr and mixed.
    None,
    /// The owner id of this task's grants, unique per task (`bench-{pid}-{lane}`).
    Lock { owner: Vec<u8> },
    /// The run's one barrier (`barrier:{run id}`, so runs never share a generation).
    Barrier {
        key: Vec<u8>,
        parties: u32,
        stop: Arc<BarrierStop>,
    },
}

impl Coordination {
    /// What lane `lane` of `lanes` needs for `workload`; `stop` is shared by every lane.
    pub fn for_lane(
        workload: Workload,
        lane: usize,
        lanes: usize,
        run_id: u64,
        stop: &Arc<BarrierStop>,
    ) -> Coordination {
        match workload {
            Workload::Lock => Coordination::Lock {
                owner: format!("bench-{}-{lane}", std::process::id()).into_bytes(),
            },
            Workload::Barrier => {
                let mut key = Vec::with_capacity(32);
                write_key(&mut key, BARRIER_KEY_PREFIX, run_id);
                Coordination::Barrier {
                    key,
                    parties: u32::try_from(lanes).expect("lanes are bounded by lanes_max"),
                    stop: stop.clone(),
                }
            }
            Workload::Get | Workload::Set | Workload::Incr | Workload::Mixed => Coordination::None,
        }
    }
}

/// Generation of a barrier's first release (each run's barrier key is fresh).
const BARRIER_FIRST_GENERATION: u64 = 0;

/// How the tasks of a barrier run stop together. A task that stopped while the others
/// were on their way to the next generation would leave them parked until their timeout
/// broke it. So a task that is done after passing generation `g` asks every task to stop
/// after `g + 1` and takes part in `g + 1` itself (unmeasured). It asks before arriving
/// at `g + 1`, which cannot pass without it, so every task sees the request by the time
/// it passes `g + 1`.
#[derive(Debug)]
pub struct BarrierStop {
    /// The generation after which every task stops; `u64::MAX` until a task is done.
    last_generation: AtomicU64,
    /// A wait failed (a generation broke): every task stops at once.
    abandoned: AtomicBool,
}

impl BarrierStop {
    pub fn new() -> Arc<BarrierStop> {
        Arc::new(BarrierStop {
            last_generation: AtomicU64::new(u64::MAX),
            abandoned: AtomicBool::new(false),
        })
    }

    /// Whether a task that last passed generation `passed` (`None`: none yet) stops
    /// instead of arriving again.
    pub fn should_stop(&self, passed: Option<u64>) -> bool {
        self.abandoned.load(Ordering::SeqCst)
            || passed.is_some_and(|generation| generation >= self.last_generation.load(Ordering::SeqCst))
    }

    /// The task that last passed `passed` is done: every task stops after the next one.
    pub fn stop_after_next(&self, passed: Option<u64>) {
        let next = passed.map_or(BARRIER_FIRST_GENERATION, |generation| generation + 1);
        self.last_generation.fetch_min(next, Ordering::SeqCst);
    }

    /// A wait failed: the generations are out of step, so every task stops now (one
    /// still parked gets its own error when the generation breaks).
    pub fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }
}

/// What one load task sends.
#[derive(Debug)]
pub enum RequestSource {
    /// SET every key of `next..end` once, in order.
    Prefill { next: u64, end: u64 },
    /// The workload, for as long as the run lasts. A lock release goes to the key of
    /// the acquire before it (`last_key`).
    Load {
        mix: OperationMix,
        keys: KeyChooser,
        last_key: u64,
    },
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
            last_key: 0,
        }
    }

    /// Up to `size` next requests: fewer only when a prefill range runs out.
    pub fn batch(&mut self, size: usize) -> impl Iterator<Item = (Operation, u64)> + '_ {
        std::iter::from_fn(move || self.next_request()).take(size)
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
            RequestSource::Load { mix, keys, last_key } => {
                let operation = mix.next_operation();
                let key = match operation {
                    Operation::LockRelease => *last_key,
                    // One barrier per run: its key is not chosen.
                    Operation::BarrierWait => 0,
                    _ => keys.next_key(),
                };
                *last_key = key;
                Some((operation, key))
            }
        }
    }

    /// A lock acquire failed, so nothing is held: the next request is an acquire again
    /// (of a freshly chosen lock) rather than a release.
    pub fn acquire_failed(&mut self) {
        if let RequestSource::Load { mix, .. } = self {
            if mix.workload == Workload::Lock {
                mix.position = 0;
            }
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

    fn lock_source(lane: u64, keys: u64) -> RequestSource {
        let ratio = Ratio { sets: 1, gets: 10 };
        RequestSource::load(Workload::Lock, ratio, KeyPattern::Uniform, keys, lane, 4, 3)
    }

    #[test]
    fn lock_alternates_acquire_and_release_of_the_same_lock_per_lane() {
        for lane in 0..4 {
            let mut source = lock_source(lane, 1_000);
            let sent: Vec<_> = (0..200).map(|_| source.next_request().unwrap()).collect();
            for pair in sent.chunks(2) {
                let [(first, acquired), (second, released)] = pair else {
                    unreachable!("an even count")
                };
                assert_eq!((*first, *second), (Operation::LockAcquire, Operation::LockRelease));
                assert_eq!(acquired, released, "lane {lane} releases the lock it acquired");
                assert!(*acquired < 1_000);
            }
            let distinct: std::collections::BTreeSet<u64> = sent.iter().map(|(_, key)| *key).collect();
            assert!(distinct.len() > 10, "the key pattern picks the locks");
        }
        let mut one_lock = lock_source(2, 1);
        assert!((0..10).all(|_| one_lock.next_request().unwrap().1 == 0));
        assert_eq!(one_lock.remaining(), None);
    }

    #[test]
    fn a_failed_acquire_is_followed_by_an_acquire() {
        let mut source = lock_source(1, 1_000);
        assert_eq!(source.next_request().unwrap().0, Operation::LockAcquire);
        source.acquire_failed();
        assert_eq!(source.next_request().unwrap().0, Operation::LockAcquire);
        assert_eq!(source.next_request().unwrap().0, Operation::LockRelease);
        assert_eq!(source.next_request().unwrap().0, Operation::LockAcquire);
        // Only the lock workload is reset: a mixed source keeps its sequence.
        let mut mixed = RequestSource::load(
            Workload::Mixed,
            Ratio { sets: 1, gets: 1 },
            KeyPattern::Uniform,
            10,
            0,
            1,
            0,
        );
        assert_eq!(mixed.next_request().unwrap().0, Operation::Set);
        mixed.acquire_failed();
        assert_eq!(mixed.next_request().unwrap().0, Operation::Get);
    }

    #[test]
    fn barrier_waits_on_one_key() {
        let ratio = Ratio { sets: 1, gets: 10 };
        let mut source = RequestSource::load(Workload::Barrier, ratio, KeyPattern::Uniform, 100, 1, 2, 5);
        assert!((0..10).all(|_| source.next_request() == Some((Operation::BarrierWait, 0))));
    }

    #[test]
    fn workloads_name_their_operations() {
        assert_eq!(
            Workload::Lock.reported_operations(),
            [Operation::LockAcquire, Operation::LockRelease]
        );
        assert_eq!(Workload::Barrier.reported_operations(), [Operation::BarrierWait]);
        assert!(Workload::Mixed.reported_operations().is_empty());
        let names: Vec<&str> = [Operation::LockAcquire, Operation::LockRelease, Operation::BarrierWait]
            .iter()
            .map(|operation| operation.name())
            .collect();
        assert_eq!(names, ["lock_acquire", "lock_release", "barrier_wait"]);
        assert!(Workload::Lock.is_engram_only() && Workload::Barrier.is_engram_only());
        assert!(!Workload::Get.is_engram_only() && !Workload::Lock.reads_values() && !Workload::Barrier.reads_values());
    }

    #[test]
    fn coordination_gives_each_lane_its_owner_and_all_one_barrier() {
        let stop = BarrierStop::new();
        let owners: std::collections::BTreeSet<Vec<u8>> = (0..8)
            .map(
                |lane| match Coordination::for_lane(Workload::Lock, lane, 8, 77, &stop) {
                    Coordination::Lock { owner } => owner,
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        assert_eq!(owners.len(), 8, "owners are unique per lane");
        let pid = std::process::id();
        assert!(owners.contains(format!("bench-{pid}-7").as_bytes()));
        for lane in [0, 7] {
            match Coordination::for_lane(Workload::Barrier, lane, 8, 77, &stop) {
                Coordination::Barrier {
                    key,
                    parties,
                    stop: shared,
                } => {
                    assert_eq!((key.as_slice(), parties), (&b"barrier:77"[..], 8));
                    assert!(Arc::ptr_eq(&shared, &stop));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            Coordination::for_lane(Workload::Get, 0, 8, 77, &stop),
            Coordination::None
        ));
    }

    #[test]
    fn barrier_tasks_stop_after_the_same_generation() {
        let stop = BarrierStop::new();
        assert!(!stop.should_stop(None) && !stop.should_stop(Some(5)));
        // Task A is done after generation 5; task B had already passed 5 and saw nothing.
        stop.stop_after_next(Some(5));
        assert!(!stop.should_stop(Some(5)), "A still passes 6 with the others");
        // A later ask cannot move the stop past the first one.
        stop.stop_after_next(Some(6));
        assert!(stop.should_stop(Some(6)) && stop.should_stop(Some(7)));
        // Done before any generation: the first one (0) is the last.
        let early = BarrierStop::new();
        early.stop_after_next(None);
        assert!(!early.should_stop(None) && early.should_stop(Some(0)));
        let broken = BarrierStop::new();
        broken.abandon();
        assert!(broken.should_stop(None) && broken.should_stop(Some(0)));
    }

    #[test]
    fn prefill_sets_each_key_of_its_range_once() {
        let mut source = RequestSource::prefill(3, 6);
        assert_eq!(source.remaining(), Some(3));
        let sent: Vec<_> = std::iter::from_fn(|| source.next_request()).collect();
        assert_eq!(sent, [(Operation::Set, 3), (Operation::Set, 4), (Operation::Set, 5)]);
        assert_eq!(source.remaining(), Some(0));
    }

    #[test]
    fn batches_take_up_to_their_size_and_stop_where_a_prefill_ends() {
        let mut source = RequestSource::prefill(0, 5);
        let sizes: Vec<usize> = (0..3).map(|_| source.batch(3).count()).collect();
        assert_eq!(sizes, [3, 2, 0]);
    }
}
