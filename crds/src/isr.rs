//! In-sync replicas and the high watermark.
//!
//! A follower is in sync while it has caught up with the leader's log end
//! within the last `replica.lag.time.max.ms`; it rejoins the ISR once its log
//! end reaches the high watermark again. The high watermark, the offset below
//! which consumers may read and `acks=all` writes complete, is the smallest log
//! end offset in the ISR.

/// What a leader knows about one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Follower {
    pub id: i32,
    /// The follower's log end offset, as its last fetch showed.
    pub log_end: i64,
    /// When the follower last fetched up to the leader's log end (ms).
    pub last_caught_up_ms: i64,
}

/// The high watermark: the smallest log end over the ISR (the leader's own
/// included). It never moves backwards: `current` bounds it from below.
pub fn high_watermark(
    leader_id: i32,
    leader_log_end: i64,
    followers: &[Follower],
    isr: &[i32],
    current: i64,
) -> i64 {
    let min = isr
        .iter()
        .map(|id| {
            if *id == leader_id {
                leader_log_end
            } else {
                followers
                    .iter()
                    .find(|f| f.id == *id)
                    .map(|f| f.log_end)
                    .unwrap_or(current)
            }
        })
        .min()
        .unwrap_or(leader_log_end);
    min.max(current).min(leader_log_end)
}

/// The ISR the leader should publish, or `None` if it is unchanged: laggards
/// leave, followers caught up to the high watermark come back.
pub fn next_isr(
    leader_id: i32,
    isr: &[i32],
    followers: &[Follower],
    high_watermark: i64,
    now_ms: i64,
    lag_max_ms: i64,
) -> Option<Vec<i32>> {
    let mut next: Vec<i32> = isr
        .iter()
        .copied()
        .filter(|id| {
            *id == leader_id
                || followers
                    .iter()
                    .find(|f| f.id == *id)
                    .is_some_and(|f| now_ms - f.last_caught_up_ms <= lag_max_ms)
        })
        .collect();
    for f in followers {
        if !next.contains(&f.id)
            && f.log_end >= high_watermark
            && now_ms - f.last_caught_up_ms <= lag_max_ms
        {
            next.push(f.id);
        }
    }
    if !next.contains(&leader_id) {
        next.insert(0, leader_id);
    }
    (next != isr).then_some(next)
}

/// Whether an `acks=all` write may be accepted with this ISR.
pub fn enough_replicas(isr_len: usize, min_insync_replicas: i32) -> bool {
    isr_len as i64 >= i64::from(min_insync_replicas)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f(id: i32, log_end: i64, last: i64) -> Follower {
        Follower {
            id,
            log_end,
            last_caught_up_ms: last,
        }
    }

    #[test]
    fn high_watermark_is_the_slowest_in_sync_replica() {
        let fs = [f(2, 80, 0), f(3, 50, 0)];
        assert_eq!(high_watermark(1, 100, &fs, &[1, 2, 3], 0), 50);
        // A follower outside the ISR does not hold it back.
        assert_eq!(high_watermark(1, 100, &fs, &[1, 2], 0), 80);
        // It never goes backwards.
        assert_eq!(high_watermark(1, 100, &fs, &[1, 2, 3], 60), 60);
        assert_eq!(high_watermark(1, 100, &[], &[1], 0), 100);
    }

    #[test]
    fn laggards_leave_and_caught_up_followers_return() {
        let fs = [f(2, 100, 1_000), f(3, 40, 0)];
        assert_eq!(
            next_isr(1, &[1, 2, 3], &fs, 40, 20_000, 10_000),
            Some(vec![1])
        );
        let fs = [f(2, 100, 19_000), f(3, 100, 19_500)];
        assert_eq!(
            next_isr(1, &[1], &fs, 100, 20_000, 10_000),
            Some(vec![1, 2, 3])
        );
        assert_eq!(next_isr(1, &[1, 2, 3], &fs, 100, 20_000, 10_000), None);
        assert!(enough_replicas(2, 2) && !enough_replicas(1, 2));
    }

    proptest! {
        #[test]
        fn hw_bounded_by_log_ends(leo in 0i64..1000, ends in proptest::collection::vec(0i64..1000, 0..4), current in 0i64..1000) {
            let current = current.min(leo);
            let fs: Vec<Follower> = ends.iter().enumerate().map(|(i, e)| f(i as i32 + 2, (*e).min(leo), 0)).collect();
            let isr: Vec<i32> = std::iter::once(1).chain(fs.iter().map(|f| f.id)).collect();
            let hw = high_watermark(1, leo, &fs, &isr, current);
            prop_assert!(hw >= current && hw <= leo);
            prop_assert!(fs.iter().all(|f| hw <= f.log_end.max(current)));
        }
    }
}
