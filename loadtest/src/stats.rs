//! Latency histograms (HDR, microseconds) and status tallies.
//!
//! Percentiles come from `hdrhistogram`: 3 significant digits from 1 µs to 10 minutes, so a
//! p99 is exact to 0.1 % whatever the spread, and histograms of many tasks merge losslessly.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest latency recorded (larger values are clamped to it): 10 minutes in µs.
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram in microseconds.
#[derive(Clone, Debug)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        // The bounds are constants known to be valid (1 ≤ low, high ≥ 2 × low, sigfig ≤ 5).
        match Histogram::new_with_bounds(1, MAX_MICROS, 3) {
            Ok(h) => Self(h),
            Err(_) => unreachable!("constant histogram bounds are valid"),
        }
    }

    /// Records one duration (clamped to 1 µs … 10 min).
    pub fn record(&mut self, d: Duration) {
        self.record_micros(d.as_micros().min(u128::from(MAX_MICROS)) as u64);
    }

    /// Records one value in microseconds (clamped).
    pub fn record_micros(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// Count, mean and percentiles in milliseconds.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.0;
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// What a latency histogram says, in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest value.
    pub max_ms: f64,
}

/// Responses by HTTP status (`"202"`, `"409"`, …), transport failures as `"io"`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Statuses(pub BTreeMap<String, u64>);

impl Statuses {
    /// Counts one HTTP status.
    pub fn add(&mut self, status: u16) {
        *self.0.entry(status.to_string()).or_default() += 1;
    }

    /// Counts one failure that produced no HTTP status.
    pub fn add_io(&mut self) {
        *self.0.entry("io".into()).or_default() += 1;
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Statuses) {
        for (k, v) in &other.0 {
            *self.0.entry(k.clone()).or_default() += v;
        }
    }

    /// Responses with this status.
    pub fn get(&self, status: u16) -> u64 {
        self.0.get(&status.to_string()).copied().unwrap_or(0)
    }

    /// Responses with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.0
            .iter()
            .filter(|(k, _)| k.starts_with('5'))
            .map(|(_, v)| v)
            .sum()
    }

    /// Every response and failure.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// `202:1234 409:5` for tables.
    pub fn compact(&self) -> String {
        if self.0.is_empty() {
            return "-".into();
        }
        self.0
            .iter()
            .map(|(k, v)| format!("{k}:{v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Events per second over `elapsed` (0 when nothing elapsed).
pub fn per_sec(n: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { n as f64 / s } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram_and_merge() {
        let mut a = Latency::new();
        for ms in 1..=99 {
            a.record(Duration::from_millis(ms));
        }
        let mut b = Latency::new();
        b.record(Duration::from_millis(1000));
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeroes_and_huge_values_clamp() {
        assert_eq!(Latency::new().summary(), LatencySummary::default());
        let mut h = Latency::new();
        h.record(Duration::from_secs(3600));
        assert!(h.summary().max_ms <= 601_000.0, "{:?}", h.summary());
    }

    #[test]
    fn statuses_count_server_errors_and_transport_failures() {
        let mut s = Statuses::default();
        s.add(202);
        s.add(202);
        s.add(503);
        s.add(500);
        s.add_io();
        assert_eq!(s.get(202), 2);
        assert_eq!(s.server_errors(), 2);
        assert_eq!(s.total(), 5);
        assert_eq!(s.compact(), "202:2 500:1 503:1 io:1");
    }
}
