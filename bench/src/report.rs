//! What a run reports: throughput and latency percentiles, as one JSON line.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// The latency of one window of an end-to-end run: its end (seconds from
/// the start) and percentiles in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t: f64,
    pub count: u64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Point {
    pub fn of(t: f64, h: &Histogram<u64>) -> Point {
        let l = Latency::of(h);
        Point {
            t,
            count: l.count,
            p50: l.p50,
            p99: l.p99,
            max: l.max,
        }
    }
}

/// Microseconds from 1 us to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    pub mb_per_s: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_us: Option<Latency>,
    /// End-to-end runs: latency per window of receive time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<Point>>,
}

impl Report {
    pub fn new(mode: &str, records: u64, bytes: u64, seconds: f64) -> Report {
        let secs = seconds.max(1e-9);
        Report {
            mode: mode.to_string(),
            records,
            bytes,
            seconds,
            records_per_s: records as f64 / secs,
            mb_per_s: bytes as f64 / secs / 1e6,
            ..Default::default()
        }
    }

    pub fn human(&self) -> String {
        let mut s = format!(
            "{}: {} records, {} bytes in {:.2} s = {:.0} records/s, {:.1} MB/s",
            self.mode, self.records, self.bytes, self.seconds, self.records_per_s, self.mb_per_s
        );
        if self.errors > 0 {
            s.push_str(&format!(", {} errors", self.errors));
        }
        if let Some(l) = &self.latency_us {
            s.push_str(&format!(
                "; latency us p50 {} p99 {} p99.9 {} max {} ({} samples)",
                l.p50, l.p99, l.p999, l.max, l.count
            ));
        }
        s
    }
}

/// Bytes that do not compress (xorshift), so no codec or store flatters a
/// figure with repeated payloads.
pub fn incompressible(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 1000);
        assert!((495..=505).contains(&l.p50), "{l:?}");
        assert!((985..=995).contains(&l.p99), "{l:?}");
        assert_eq!(l.max, 1000);
        let r = Report::new("produce", 1000, 2_000_000, 2.0);
        assert_eq!((r.records_per_s, r.mb_per_s), (500.0, 1.0));
        assert!(r.human().contains("500 records/s"));
    }

    #[test]
    fn payloads_differ_and_keep_their_length() {
        let a = incompressible(1000, 1);
        assert_eq!(a.len(), 1000);
        assert_ne!(a, incompressible(1000, 2));
        let distinct: std::collections::HashSet<u8> = a.iter().copied().collect();
        assert!(distinct.len() > 200);
    }
}
