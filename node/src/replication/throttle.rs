//! The reassignment throttle (Kafka's `follower.replication.throttled.rate`):
//! one byte budget per node, refilled at a fixed rate, for what this node
//! fetches for replicas it is catching up as a reassignment's new home.
//! Replicas already in the ISR are never throttled: holding them back
//! would hold back acks=all producers.
//!
//! A token bucket holding at most one second of the rate. A fetch asks for
//! at most what is in it (shared among the throttled partitions); what
//! arrives is taken out, possibly below zero (the leader always sends one
//! whole batch), and the debt is paid before the next throttled fetch.
//! Fetch sessions (one per leader) share the bucket and may each spend
//! what they saw in it at once; the debt is paid all the same, so the rate
//! holds over any second or two, not within one fetch.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

pub struct Throttle {
    /// Bytes per second; 0: unthrottled.
    rate: u64,
    bucket: Mutex<Bucket>,
    /// Bytes fetched under the throttle (`/metrics`).
    pub fetched: Counter,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Throttle {
    pub fn new(bytes_per_second: u64, fetched: Counter) -> Throttle {
        Throttle {
            rate: bytes_per_second,
            bucket: Mutex::new(Bucket {
                tokens: bytes_per_second as f64,
                at: Instant::now(),
            }),
            fetched,
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate as f64).min(self.rate as f64);
        b.at = now;
    }

    /// Bytes throttled replicas may fetch now: `None` when unthrottled,
    /// `Some(0)` while the bucket is empty or in debt.
    pub fn allowance(&self, now: Instant) -> Option<usize> {
        if self.rate == 0 {
            return None;
        }
        let mut b = self.bucket.lock().expect("throttle lock");
        self.refill(&mut b, now);
        Some(b.tokens.max(0.0) as usize)
    }

    /// `n` bytes arrived for throttled replicas.
    pub fn spent(&self, n: usize, now: Instant) {
        self.fetched.inc_by(n as u64);
        if self.rate == 0 {
            return;
        }
        let mut b = self.bucket.lock().expect("throttle lock");
        self.refill(&mut b, now);
        b.tokens -= n as f64;
    }

    /// The least worth a fetch: a twentieth of a second's worth (a byte at
    /// least), so a throttled replica is not fetched in slivers.
    pub fn useful(&self) -> usize {
        (self.rate as usize / 20).max(1)
    }

    /// How long until the bucket holds [`Throttle::useful`] bytes again,
    /// from `now`.
    pub fn until_refilled(&self, now: Instant) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        let mut b = self.bucket.lock().expect("throttle lock");
        self.refill(&mut b, now);
        let want = self.useful() as f64 - b.tokens;
        Duration::from_secs_f64((want / self.rate as f64).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_holds_over_time_and_debt_is_paid_first() {
        let t0 = Instant::now();
        let t = Throttle::new(1000, Counter::default());
        assert_eq!(t.allowance(t0), Some(1000));
        // One whole batch larger than the bucket: a debt of 1500.
        t.spent(2500, t0);
        assert_eq!(t.allowance(t0), Some(0));
        // Paid off and a twentieth of a second's worth (50 bytes) again.
        let wait = t.until_refilled(t0);
        assert!(
            wait > Duration::from_millis(1540) && wait < Duration::from_millis(1560),
            "{wait:?}"
        );
        assert_eq!(t.allowance(t0 + Duration::from_secs(2)), Some(500));
        // Idle time refills at most one second's worth.
        assert_eq!(t.allowance(t0 + Duration::from_secs(60)), Some(1000));
        assert_eq!(t.fetched.get(), 2500);
    }

    #[test]
    fn zero_is_unthrottled() {
        let t = Throttle::new(0, Counter::default());
        let now = Instant::now();
        t.spent(1 << 30, now);
        assert_eq!(t.allowance(now), None);
        assert_eq!(t.until_refilled(now), Duration::ZERO);
        // Below 20 B/s a fetch still waits for a byte rather than spinning.
        let slow = Throttle::new(5, Counter::default());
        slow.spent(5, now);
        assert!(slow.until_refilled(now) > Duration::ZERO);
    }
}
