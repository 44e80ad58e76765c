//! The arithmetic of the reports: medians over rounds, ratios paired within a round and
//! their spread, CPU per request and per wall second, resident bytes per key.
//!
//! A shared machine's speed drifts over minutes, so a comparison divides the two sides of
//! one round (measured seconds apart) and then takes the median of those ratios, never
//! the ratio of the two medians.

use serde::Serialize;

const MICROSECONDS_PER_SECOND: f64 = 1e6;
const BYTES_PER_KIB: f64 = 1024.0;

/// The median of `values` (the mean of the middle two for an even count); `None` for none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    match sorted.len() {
        0 => None,
        count if count % 2 == 1 => Some(sorted[middle]),
        _ => Some((sorted[middle - 1] + sorted[middle]) / 2.0),
    }
}

/// The median of the values there are.
pub fn median_present(values: impl IntoIterator<Item = Option<f64>>) -> Option<f64> {
    median(&values.into_iter().flatten().collect::<Vec<_>>())
}

/// `value` rounded to `decimals` places, halves away from zero.
pub fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// `numerator / denominator`, or `None` when either is missing or the denominator is zero.
pub fn ratio(numerator: Option<f64>, denominator: Option<f64>) -> Option<f64> {
    match (numerator, denominator) {
        (Some(numerator), Some(denominator)) if denominator != 0.0 => Some(numerator / denominator),
        _ => None,
    }
}

/// One ratio per round, each of the two figures of that round.
pub fn per_round_ratios(rounds: impl IntoIterator<Item = (Option<f64>, Option<f64>)>) -> Vec<Option<f64>> {
    rounds
        .into_iter()
        .map(|(numerator, denominator)| ratio(numerator, denominator))
        .collect()
}

/// Per-round figures (a ratio each) with their median and range over the rounds that
/// have one; `rounds` keeps every round, `None` where it has no figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spread {
    pub median: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub rounds: Vec<Option<f64>>,
}

impl Spread {
    pub fn of(rounds: Vec<Option<f64>>) -> Spread {
        let present = || rounds.iter().flatten().copied();
        Spread {
            median: median_present(rounds.iter().copied()),
            min: present().reduce(f64::min),
            max: present().reduce(f64::max),
            rounds,
        }
    }

    /// A figure measured once.
    pub fn single(value: f64) -> Spread {
        Spread::of(vec![Some(value)])
    }

    /// Every figure rounded to `decimals` places; the median is of the unrounded ones.
    pub fn rounded(&self, decimals: i32) -> Spread {
        let round = |value: Option<f64>| value.map(|value| round_to(value, decimals));
        Spread {
            median: round(self.median),
            min: round(self.min),
            max: round(self.max),
            rounds: self.rounds.iter().copied().map(round).collect(),
        }
    }
}

/// Cores kept busy: CPU clock ticks over wall seconds.
pub fn cores(ticks: u64, ticks_per_second: f64, wall_secs: f64) -> f64 {
    ticks as f64 / ticks_per_second / wall_secs
}

/// Microseconds of CPU per request: CPU clock ticks over requests served.
pub fn cpu_us_per_request(ticks: u64, ticks_per_second: f64, requests: f64) -> f64 {
    ticks as f64 / ticks_per_second * MICROSECONDS_PER_SECOND / requests
}

/// Resident bytes per key: the growth of the resident set (KiB) over the keys stored.
pub fn bytes_per_key(rss_before_kib: u64, rss_after_kib: u64, keys: u64) -> f64 {
    (rss_after_kib as f64 - rss_before_kib as f64) * BYTES_PER_KIB / keys as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5), "the mean of the middle two");
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
        assert_eq!(median_present([Some(5.0), None, Some(1.0), None]), Some(3.0));
    }

    #[test]
    fn ratios_pair_the_figures_of_one_round() {
        // Engram takes 1.1 times the floor in rounds 1 and 2, at two speeds of the machine;
        // in round 3 the floor ran while the machine was fast and Engram while it was
        // slow. Paired within rounds the median says 1.1; the ratio of the medians of each
        // side (22 over 10) would say 2.2.
        let engram = [Some(22.0), Some(11.0), Some(30.0)];
        let floor = [Some(20.0), Some(10.0), Some(10.0)];
        let spread = Spread::of(per_round_ratios(engram.into_iter().zip(floor))).rounded(2);
        assert_eq!(spread.rounds, [Some(1.1), Some(1.1), Some(3.0)]);
        assert_eq!(
            (spread.median, spread.min, spread.max),
            (Some(1.1), Some(1.1), Some(3.0))
        );
        let of_medians = median_present(engram).unwrap() / median_present(floor).unwrap();
        assert_eq!(of_medians, 2.2);
    }

    #[test]
    fn spread_takes_median_and_range_of_rounds_with_a_figure() {
        let spread = Spread::of(per_round_ratios([
            (Some(3.0), Some(2.0)),
            (None, Some(1.0)),
            (Some(1.0), Some(0.0)),
            (Some(0.9), Some(1.0)),
            (Some(1.234), Some(1.0)),
        ]));
        assert_eq!(spread.rounds, [Some(1.5), None, None, Some(0.9), Some(1.234)]);
        assert_eq!(
            (spread.min, spread.median, spread.max),
            (Some(0.9), Some(1.234), Some(1.5))
        );
        let rounded = spread.rounded(2);
        assert_eq!(rounded.rounds, [Some(1.5), None, None, Some(0.9), Some(1.23)]);
        assert_eq!(rounded.median, Some(1.23));
        let empty = Spread::of(vec![None, None]);
        assert_eq!((empty.median, empty.min, empty.max), (None, None, None));
        let once = Spread::single(0.91);
        assert_eq!(
            (once.median, once.min, once.max, once.rounds),
            (Some(0.91), Some(0.91), Some(0.91), vec![Some(0.91)])
        );
    }

    #[test]
    fn rounding_goes_half_away_from_zero() {
        assert_eq!(round_to(1.125, 2), 1.13);
        assert_eq!(round_to(-0.5, 0), -1.0);
        assert_eq!(round_to(132.64, 1), 132.6);
    }

    #[test]
    fn cpu_arithmetic() {
        // 250 ticks of 100 per second over 5 s of wall time: half a core.
        assert_eq!(cores(250, 100.0, 5.0), 0.5);
        // 2.5 s of CPU for 1,250,000 requests: 2 us each.
        assert_eq!(cpu_us_per_request(250, 100.0, 1_250_000.0), 2.0);
    }

    #[test]
    fn bytes_per_key_from_the_growth_in_kib() {
        assert_eq!(bytes_per_key(1_000, 2_000, 1_024), 1_000.0);
        assert_eq!(
            bytes_per_key(2_000, 1_000, 1_024),
            -1_000.0,
            "a shrinking set is reported as such"
        );
    }
}
