//! The barrier: generations of exactly `parties` arrivals, and timeouts that break one.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use engram_proto::{BarrierCommand, DataCommand};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Arrivals at random times with random timeouts: every generation that completes
    /// releases exactly `parties` waiters with indexes 0..parties; a generation whose
    /// wait ran out answers its waiters Timeout or BarrierBroken, never a pass.
    #[test]
    fn barrier_releases_exactly_parties_per_generation(
        parties in 1u32..5,
        arrivals in prop::collection::vec((0u64..20, 1u64..60), 1..40),
    ) {
        let mut store = Store::new(u64::MAX / 2, 3);
        let mut now = 1_000u64;
        let mut passed: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
        let mut failed = 0usize;
        let mut answered = 0usize;
        let record = |response: Response, passed: &mut BTreeMap<u64, Vec<u32>>, failed: &mut usize| {
            match response {
                Response::BarrierPassed { generation, arrival_index } => passed.entry(generation).or_default().push(arrival_index),
                other => {
                    assert!(matches!(code(&other), Some(ErrorCode::Timeout | ErrorCode::BarrierBroken)), "{other:?}");
                    *failed += 1;
                }
            }
        };
        for (index, (gap_ms, timeout_ms)) in arrivals.iter().enumerate() {
            advance(&mut store, &mut now, *gap_ms, |_, _| {});
            for (_, response) in store.drain_completions() {
                record(response, &mut passed, &mut failed);
                answered += 1;
            }
            let command = Command::from(BarrierCommand::Wait { key: KEY.into(), parties, timeout_ms: *timeout_ms });
            if let Outcome::Ready(response) = store.apply(1, &request(index as u64 + 1, command), now) {
                record(response, &mut passed, &mut failed);
                answered += 1;
            }
            for (_, response) in store.drain_completions() {
                record(response, &mut passed, &mut failed);
                answered += 1;
            }
        }
        advance(&mut store, &mut now, 100, |_, _| {});
        for (_, response) in store.drain_completions() {
            record(response, &mut passed, &mut failed);
            answered += 1;
        }
        prop_assert_eq!(answered, arrivals.len(), "every arrival is answered exactly once");
        for (generation, mut indexes) in passed {
            indexes.sort_unstable();
            prop_assert_eq!(indexes, (0..parties).collect::<Vec<_>>(), "generation {}", generation);
        }
        prop_assert_eq!(store.stats().parked_requests, 0);
        let _ = failed;
    }
}

#[test]
fn barrier_timeout_breaks_the_generation_for_everyone() {
    let mut store = Store::new(u64::MAX / 2, 3);
    let wait = |timeout_ms| {
        Command::Data(DataCommand::Barrier(BarrierCommand::Wait {
            key: KEY.into(),
            parties: 3,
            timeout_ms,
        }))
    };
    let Outcome::Parked(first) = store.apply(1, &request(1, wait(10)), 0) else {
        panic!()
    };
    let Outcome::Parked(second) = store.apply(1, &request(2, wait(50)), 0) else {
        panic!()
    };
    store.expire_due(10, usize::MAX);
    let completions = store.drain_completions();
    assert_eq!(completions.len(), 2);
    assert_eq!(completions[0].0, first);
    assert_eq!(code(&completions[0].1), Some(ErrorCode::Timeout));
    assert_eq!(completions[1].0, second);
    assert_eq!(code(&completions[1].1), Some(ErrorCode::BarrierBroken));
    // The next three arrivals form generation 1 and pass.
    assert!(matches!(store.apply(1, &request(3, wait(50)), 11), Outcome::Parked(_)));
    assert!(matches!(store.apply(1, &request(4, wait(50)), 11), Outcome::Parked(_)));
    assert_eq!(
        store.apply(1, &request(5, wait(50)), 11),
        Outcome::Ready(Response::BarrierPassed {
            generation: 1,
            arrival_index: 2
        })
    );
    let passed: Vec<_> = store
        .drain_completions()
        .into_iter()
        .map(|(_, response)| response)
        .collect();
    assert_eq!(
        passed,
        vec![
            Response::BarrierPassed {
                generation: 1,
                arrival_index: 0
            },
            Response::BarrierPassed {
                generation: 1,
                arrival_index: 1
            },
        ]
    );
}
