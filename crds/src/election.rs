//! Leader election for one partition.
//!
//! The leader is the first replica, in assignment order, that is alive and in
//! the ISR; the first replica is the preferred leader and gets leadership back
//! once it is in sync again. Only if no in-sync replica is alive and the topic
//! allows unclean election does an out-of-sync replica lead, with the ISR
//! reset to itself. Every change of leader bumps the leader epoch.

/// What the cluster metadata says about a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionRecord {
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    /// `None` while the partition is offline.
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    /// During a reassignment (see [`crate::reassign`]): replicas being added
    /// (already in `replicas`, catching up) and being removed (still in
    /// `replicas` until the new ones are in sync).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding: Vec<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing: Vec<i32>,
}

impl PartitionRecord {
    /// A new partition: its first replica leads, all replicas in sync, epoch 0.
    pub fn new(replicas: Vec<i32>) -> PartitionRecord {
        PartitionRecord {
            leader: replicas.first().copied(),
            isr: replicas.clone(),
            replicas,
            leader_epoch: 0,
            adding: vec![],
            removing: vec![],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionOptions {
    /// Allow an out-of-sync replica to lead when no in-sync one is alive
    /// (`unclean.leader.election.enable`).
    pub unclean: bool,
    /// Move leadership back to the preferred replica when it is in sync.
    pub preferred: bool,
}

/// The record after an election, or `None` when nothing changes.
pub fn elect(
    current: &PartitionRecord,
    alive: impl Fn(i32) -> bool,
    opts: ElectionOptions,
) -> Option<PartitionRecord> {
    elect_among(current, &alive, &alive, opts)
}

/// An election where fewer replicas may lead than stay in the ISR: the
/// leader is the first in-sync replica `may_lead` and `alive` accept (a
/// current leader `may_lead` refuses is replaced), and the ISR keeps every
/// member `alive` accepts. A node being drained from the cluster is alive
/// and in sync, but leads nothing another replica can lead.
pub fn elect_among(
    current: &PartitionRecord,
    may_lead: &dyn Fn(i32) -> bool,
    alive: &dyn Fn(i32) -> bool,
    opts: ElectionOptions,
) -> Option<PartitionRecord> {
    let in_sync_alive = |r: &i32| current.isr.contains(r) && alive(*r);
    let can_lead = |r: &i32| in_sync_alive(r) && may_lead(*r);
    let leader_ok = current.leader.is_some_and(|l| can_lead(&l));
    let preferred = current.replicas.first().copied();
    let want_preferred =
        opts.preferred && preferred.is_some_and(|p| can_lead(&p)) && current.leader != preferred;
    if leader_ok && !want_preferred {
        return None;
    }
    let found = current.replicas.iter().copied().find(|r| can_lead(r));
    // A leader in sync and alive keeps leading when nobody may take over.
    if found.is_none() && current.leader.is_some_and(|l| in_sync_alive(&l)) {
        return None;
    }
    let live_isr: Vec<i32> = current.isr.iter().copied().filter(|r| alive(*r)).collect();
    let (leader, isr) = match found {
        Some(l) => (Some(l), live_isr),
        None if opts.unclean => match current
            .replicas
            .iter()
            .copied()
            .find(|r| alive(*r) && may_lead(*r))
        {
            Some(l) => (Some(l), vec![l]),
            None => (None, current.isr.clone()),
        },
        // Nobody may lead: the partition is offline and keeps its ISR so the
        // last in-sync replica can take over when it returns.
        None => (None, current.isr.clone()),
    };
    if leader == current.leader && isr == current.isr {
        return None;
    }
    Some(PartitionRecord {
        isr,
        leader,
        leader_epoch: current.leader_epoch + i32::from(leader != current.leader),
        ..current.clone()
    })
}

/// Removes followers on nodes that are gone from the ISR of a partition
/// whose leader is alive, as Kafka's controller does when a broker's session
/// ends, so `acks=all` writes need not wait `replica.lag.time.max.ms` for
/// them. The leader stays; a partition without a live leader is left to
/// [`elect`]. The leader epoch does not change.
pub fn without_dead_followers(
    current: &PartitionRecord,
    alive: impl Fn(i32) -> bool,
) -> Option<PartitionRecord> {
    let leader = current.leader.filter(|l| alive(*l))?;
    let isr: Vec<i32> = current
        .isr
        .iter()
        .copied()
        .filter(|r| *r == leader || alive(*r))
        .collect();
    (isr != current.isr).then(|| PartitionRecord {
        isr,
        ..current.clone()
    })
}

/// Leadership leaving `from`, a node whose process restarted (a new
/// incarnation in its lease: the old process, and whatever it did not
/// write, are gone): the first other live in-sync replica leads at the
/// next epoch, as Kafka's controller moves leadership off a broker that
/// registers again. `None` when `from` does not lead or no other in-sync
/// replica is alive (it keeps leading: its log holds everything acknowledged).
pub fn hand_over(
    current: &PartitionRecord,
    from: i32,
    alive: impl Fn(i32) -> bool,
) -> Option<PartitionRecord> {
    hand_over_among(current, from, &alive, &alive)
}

/// [`hand_over`] where fewer replicas may lead than stay in the ISR (see
/// [`elect_among`]); `from` leaves the ISR either way.
pub fn hand_over_among(
    current: &PartitionRecord,
    from: i32,
    may_lead: &dyn Fn(i32) -> bool,
    alive: &dyn Fn(i32) -> bool,
) -> Option<PartitionRecord> {
    if current.leader != Some(from) {
        return None;
    }
    let others_lead = |r: i32| r != from && may_lead(r) && alive(r);
    let others_alive = |r: i32| r != from && alive(r);
    if !current.isr.iter().any(|r| others_lead(*r)) {
        return None;
    }
    elect_among(
        current,
        &others_lead,
        &others_alive,
        ElectionOptions {
            unclean: false,
            preferred: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CLEAN: ElectionOptions = ElectionOptions {
        unclean: false,
        preferred: true,
    };

    #[test]
    fn a_draining_leader_hands_leadership_over_and_stays_in_sync() {
        let p = PartitionRecord::new(vec![4, 0, 3]);
        let member = |r: i32| r < 3;
        let next = elect_among(&p, &member, &|_| true, CLEAN).unwrap();
        assert_eq!((next.leader, next.leader_epoch), (Some(0), 1));
        assert_eq!(next.isr, vec![4, 0, 3], "draining replicas stay in sync");
        assert_eq!(elect_among(&next, &member, &|_| true, CLEAN), None);
        // Nothing else can lead: the draining leader keeps leading.
        let alone = PartitionRecord::new(vec![4, 3]);
        assert_eq!(elect_among(&alone, &member, &|_| true, CLEAN), None);
        // A restarted leader 0 hands over to member 1, keeping draining 4.
        let q = PartitionRecord::new(vec![0, 4, 1]);
        let next = hand_over_among(&q, 0, &member, &|_| true).unwrap();
        assert_eq!((next.leader, next.isr.clone()), (Some(1), vec![4, 1]));
    }

    #[test]
    fn a_restarted_leader_hands_over_to_another_in_sync_replica() {
        let p = PartitionRecord::new(vec![1, 2, 3]);
        let next = hand_over(&p, 1, |_| true).unwrap();
        assert_eq!((next.leader, next.leader_epoch), (Some(2), 1));
        assert_eq!(next.isr, vec![2, 3]);
        // Not the leader, or alone in sync: nothing moves.
        assert_eq!(hand_over(&p, 2, |_| true), None);
        let alone = PartitionRecord {
            isr: vec![1],
            ..PartitionRecord::new(vec![1, 2, 3])
        };
        assert_eq!(hand_over(&alone, 1, |_| true), None);
        assert_eq!(hand_over(&p, 1, |r| r == 1), None);
    }

    #[test]
    fn healthy_leader_stays() {
        let p = PartitionRecord::new(vec![1, 2, 3]);
        assert_eq!(elect(&p, |_| true, CLEAN), None);
    }

    #[test]
    fn lost_leader_is_replaced_by_next_in_sync_replica() {
        let p = PartitionRecord::new(vec![1, 2, 3]);
        let e = elect(&p, |r| r != 1, CLEAN).unwrap();
        assert_eq!(
            (e.leader, e.leader_epoch, e.isr.clone()),
            (Some(2), 1, vec![2, 3])
        );
        // Replica 1 comes back but is not in sync yet: 2 keeps leading.
        assert_eq!(elect(&e, |_| true, CLEAN), None);
        // Once 1 is back in the ISR it gets leadership back.
        let caught_up = PartitionRecord {
            isr: vec![2, 3, 1],
            ..e
        };
        let back = elect(&caught_up, |_| true, CLEAN).unwrap();
        assert_eq!((back.leader, back.leader_epoch), (Some(1), 2));
    }

    #[test]
    fn no_in_sync_replica_means_offline_unless_unclean() {
        let p = PartitionRecord {
            replicas: vec![1, 2],
            isr: vec![1],
            leader: Some(1),
            leader_epoch: 4,
            ..Default::default()
        };
        let off = elect(&p, |r| r == 2, CLEAN).unwrap();
        assert_eq!(
            (off.leader, off.leader_epoch, off.isr.clone()),
            (None, 5, vec![1])
        );
        let unclean = elect(
            &p,
            |r| r == 2,
            ElectionOptions {
                unclean: true,
                preferred: true,
            },
        )
        .unwrap();
        assert_eq!((unclean.leader, unclean.isr), (Some(2), vec![2]));
    }

    #[test]
    fn dead_followers_leave_the_isr_of_a_live_leader() {
        let p = PartitionRecord::new(vec![1, 2, 3]);
        let d = without_dead_followers(&p, |r| r != 3).unwrap();
        assert_eq!((d.isr, d.leader, d.leader_epoch), (vec![1, 2], Some(1), 0));
        assert_eq!(without_dead_followers(&p, |_| true), None);
        // A dead leader is for election to handle.
        assert_eq!(without_dead_followers(&p, |r| r != 1), None);
    }

    proptest! {
        #[test]
        fn elected_leaders_are_alive_replicas_and_epochs_rise(
            n in 1usize..5, isr_mask in 0u8..16, alive_mask in 0u8..16, leader in 0usize..5, unclean: bool
        ) {
            let replicas: Vec<i32> = (0..n as i32).collect();
            let isr: Vec<i32> = replicas.iter().copied().filter(|r| isr_mask & (1 << r) != 0).collect();
            let p = PartitionRecord { replicas: replicas.clone(), isr: isr.clone(), leader: replicas.get(leader).copied(), leader_epoch: 7, ..Default::default() };
            let alive = |r: i32| alive_mask & (1 << r) != 0;
            if let Some(e) = elect(&p, alive, ElectionOptions { unclean, preferred: true }) {
                prop_assert!(e.leader_epoch >= 7);
                if e.leader != p.leader { prop_assert_eq!(e.leader_epoch, 8); }
                if let Some(l) = e.leader {
                    prop_assert!(alive(l) && replicas.contains(&l));
                    prop_assert!(e.isr.contains(&l));
                    if !unclean { prop_assert!(isr.contains(&l)); }
                }
                prop_assert!(e.isr.iter().all(|r| replicas.contains(r)));
            }
        }
    }
}
