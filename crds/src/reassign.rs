//! Partition reassignment (Kafka's KIP-455): moving a partition's replicas to
//! a target set without losing sync.
//!
//! Starting a reassignment adds the new replicas to the record at once (they
//! start fetching) and marks them `adding`; replicas leaving are marked
//! `removing` but stay until every added replica is in the ISR. Then the
//! record is completed: the replicas become the target, the ISR keeps its
//! members in the target, and if the leader is leaving, the first in-sync
//! target replica leads at the next epoch. Cancelling returns to the
//! replica set from before (in the record's order: the target's first).

use crate::election::PartitionRecord;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReassignError {
    #[error("the target replica set is empty")]
    Empty,
    #[error("replica {0} appears more than once in the target")]
    Duplicate(i32),
    #[error("no reassignment is in progress")]
    NoneInProgress,
}

/// The replicas the partition had before its current reassignment.
pub fn original(current: &PartitionRecord) -> Vec<i32> {
    current
        .replicas
        .iter()
        .copied()
        .filter(|r| !current.adding.contains(r))
        .collect()
}

/// The replicas the partition will have when its reassignment completes
/// (its replicas when none is in progress).
pub fn target(current: &PartitionRecord) -> Vec<i32> {
    current
        .replicas
        .iter()
        .copied()
        .filter(|r| !current.removing.contains(r))
        .collect()
}

/// The record that starts moving `current` to `target` (replacing a
/// reassignment in progress); `None` when there is nothing to do.
pub fn start(
    current: &PartitionRecord,
    target: &[i32],
) -> Result<Option<PartitionRecord>, ReassignError> {
    if target.is_empty() {
        return Err(ReassignError::Empty);
    }
    for (i, r) in target.iter().enumerate() {
        if target[..i].contains(r) {
            return Err(ReassignError::Duplicate(*r));
        }
    }
    let before = original(current);
    if before == target && current.adding.is_empty() && current.removing.is_empty() {
        return Ok(None);
    }
    let adding: Vec<i32> = target
        .iter()
        .copied()
        .filter(|r| !before.contains(r))
        .collect();
    let removing: Vec<i32> = before
        .iter()
        .copied()
        .filter(|r| !target.contains(r))
        .collect();
    let mut replicas = target.to_vec();
    replicas.extend(&removing);
    let mut next = PartitionRecord {
        replicas,
        isr: current
            .isr
            .iter()
            .copied()
            .filter(|r| target.contains(r) || removing.contains(r))
            .collect(),
        adding,
        removing,
        ..current.clone()
    };
    // A replica that was being added may lead (elected meanwhile); if the
    // new target drops it, it must not stay leader of a partition it no
    // longer holds: the first in-sync replica leads at the next epoch.
    if next.leader.is_some_and(|l| !next.replicas.contains(&l)) {
        next.leader = next.replicas.iter().copied().find(|r| next.isr.contains(r));
        next.leader_epoch += 1;
    }
    Ok(Some(complete(&next).unwrap_or(next)))
}

/// Leadership after the replica set becomes `replicas`: the current leader
/// if it stays, else the first in-sync replica of the set.
fn settle(current: &PartitionRecord, replicas: Vec<i32>) -> PartitionRecord {
    let isr: Vec<i32> = current
        .isr
        .iter()
        .copied()
        .filter(|r| replicas.contains(r))
        .collect();
    let leader = match current.leader {
        Some(l) if replicas.contains(&l) => Some(l),
        _ => replicas.iter().copied().find(|r| isr.contains(r)),
    };
    PartitionRecord {
        leader_epoch: current.leader_epoch + i32::from(leader != current.leader),
        isr,
        leader,
        replicas,
        adding: vec![],
        removing: vec![],
    }
}

/// Completes a reassignment once every added replica is in sync (and one
/// target replica could lead); `None` while it must wait or when none runs.
pub fn complete(current: &PartitionRecord) -> Option<PartitionRecord> {
    if current.adding.is_empty() && current.removing.is_empty() {
        return None;
    }
    if !current.adding.iter().all(|r| current.isr.contains(r)) {
        return None;
    }
    let target: Vec<i32> = current
        .replicas
        .iter()
        .copied()
        .filter(|r| !current.removing.contains(r))
        .collect();
    if !target.iter().any(|r| current.isr.contains(r)) {
        return None;
    }
    Some(settle(current, target))
}

/// Cancels a reassignment in progress: back to the replicas from before.
pub fn cancel(current: &PartitionRecord) -> Result<PartitionRecord, ReassignError> {
    if current.adding.is_empty() && current.removing.is_empty() {
        return Err(ReassignError::NoneInProgress);
    }
    Ok(settle(current, original(current)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_move_adds_first_and_removes_once_in_sync() {
        let p = PartitionRecord::new(vec![1, 2]);
        let moving = start(&p, &[2, 3]).unwrap().unwrap();
        assert_eq!(moving.replicas, vec![2, 3, 1]);
        assert_eq!(
            (moving.adding.clone(), moving.removing.clone()),
            (vec![3], vec![1])
        );
        assert_eq!(moving.leader, Some(1), "the leader stays until the end");
        assert_eq!(complete(&moving), None, "3 is not in sync yet");
        let synced = PartitionRecord {
            isr: vec![1, 2, 3],
            ..moving.clone()
        };
        let done = complete(&synced).unwrap();
        assert_eq!(done.replicas, vec![2, 3]);
        assert_eq!(done.isr, vec![2, 3]);
        assert_eq!((done.leader, done.leader_epoch), (Some(2), 1));
        assert!(done.adding.is_empty() && done.removing.is_empty());
        assert_eq!(start(&done, &[2, 3]).unwrap(), None, "nothing to do");
        // Cancelling restores the replica set (in the record's order).
        let back = cancel(&moving).unwrap();
        assert_eq!((back.replicas, back.leader), (vec![2, 1], Some(1)));
        assert_eq!(cancel(&done), Err(ReassignError::NoneInProgress));
        assert_eq!(start(&p, &[3, 3]), Err(ReassignError::Duplicate(3)));
        assert_eq!(start(&p, &[]), Err(ReassignError::Empty));
    }

    #[test]
    fn a_leader_dropped_by_a_new_target_hands_over() {
        // 1,2 -> 1,3: replica 3 catches up and is elected leader; then the
        // move is replaced by one back to 1,2, which drops 3.
        let p = PartitionRecord::new(vec![1, 2]);
        let moving = start(&p, &[1, 3]).unwrap().unwrap();
        let led_by_3 = PartitionRecord {
            isr: vec![1, 2, 3],
            leader: Some(3),
            leader_epoch: 1,
            ..moving
        };
        let back = start(&led_by_3, &[1, 2]).unwrap().unwrap();
        assert_eq!(back.replicas, vec![1, 2]);
        assert_eq!((back.leader, back.leader_epoch), (Some(1), 2));
        assert!(back.isr.iter().all(|r| back.replicas.contains(r)));
    }

    #[test]
    fn shrinking_completes_at_once() {
        let p = PartitionRecord::new(vec![1, 2, 3]);
        let done = start(&p, &[3, 2]).unwrap().unwrap();
        assert_eq!(done.replicas, vec![3, 2]);
        // The leader left: the target's first in-sync replica leads.
        assert_eq!((done.leader, done.leader_epoch), (Some(3), 1));
    }

    proptest! {
        #[test]
        fn completed_reassignments_reach_their_target(
            before in proptest::sample::subsequence(vec![0, 1, 2, 3, 4], 1..4),
            target in proptest::sample::subsequence(vec![0, 1, 2, 3, 4], 1..4),
        ) {
            let p = PartitionRecord::new(before.clone());
            if let Some(moving) = start(&p, &target).unwrap() {
                prop_assert!(target.iter().all(|r| moving.replicas.contains(r)));
                // Everyone catches up.
                let synced = PartitionRecord { isr: moving.replicas.clone(), ..moving.clone() };
                let done = complete(&synced).unwrap_or(synced);
                prop_assert_eq!(&done.replicas, &target);
                prop_assert!(done.adding.is_empty() && done.removing.is_empty());
                let l = done.leader.unwrap();
                prop_assert!(target.contains(&l) && done.isr.contains(&l));
                prop_assert!(done.leader_epoch >= p.leader_epoch);
            }
        }

        #[test]
        fn the_leader_is_always_a_replica(
            before in proptest::sample::subsequence(vec![0, 1, 2, 3, 4], 1..4),
            first in proptest::sample::subsequence(vec![0, 1, 2, 3, 4], 1..4),
            second in proptest::sample::subsequence(vec![0, 1, 2, 3, 4], 1..4),
            lead in 0usize..5,
        ) {
            // A move, any replica of it elected, then another move.
            let p = PartitionRecord::new(before);
            let moving = start(&p, &first).unwrap().unwrap_or(p);
            let leader = moving.replicas[lead % moving.replicas.len()];
            let elected = PartitionRecord {
                isr: moving.replicas.clone(),
                leader: Some(leader),
                leader_epoch: moving.leader_epoch + 1,
                ..moving
            };
            let next = start(&elected, &second).unwrap().unwrap_or(elected);
            if let Some(l) = next.leader {
                prop_assert!(next.replicas.contains(&l) && next.isr.contains(&l));
            }
        }
    }
}
