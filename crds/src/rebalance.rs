//! Rebalancing: which partitions of a topic move, and where, when the
//! cluster's member nodes change (scaling) or a replication factor does.
//!
//! The target of every partition comes from [`placement::assign`] over the
//! member nodes, starting from where the replicas are: replicas on members
//! stay, replicas on nodes leaving the cluster are replaced, and on new
//! nodes only the fair share lands (minimal movement). Each move is a
//! reassignment ([`reassign::start`]): new replicas catch up before old
//! ones go. Partitions already moving are counted where they are going and
//! not moved again until they settle, unless they are going to a node that
//! is no longer a member: those are planned again from where they started.
//!
//! Moves come out in the order they should start in: partitions leaving the
//! highest node ids first (a scale-down drains the last ordinals first),
//! then the rest; the controller starts as many as its concurrency limit
//! allows.

use std::collections::BTreeSet;

use crate::election::PartitionRecord;
use crate::placement::{self, Node};
use crate::reassign;

/// One partition to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub partition: usize,
    /// The record starting the reassignment.
    pub record: PartitionRecord,
    /// The highest id among the replicas it leaves on non-member nodes
    /// (`None` for a balancing or resizing move).
    pub drains: Option<i32>,
}

/// Which partitions are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only partitions with the wrong number of replicas (a changed
    /// replication factor); nothing is balanced.
    ReplicationFactor,
    /// Every partition whose replicas differ from the balanced target over
    /// the members: drains, scale-up shares and replication factor changes.
    Balance,
}

/// Whether a partition's reassignment is under way.
pub fn moving(r: &PartitionRecord) -> bool {
    !r.adding.is_empty() || !r.removing.is_empty()
}

/// The moves that bring one topic's partitions (`records`, by index; `None`
/// where a record is missing) to `rf` replicas over `members`, in the order
/// they should start in. Empty when placement is impossible (fewer members
/// than `rf`): nothing moves rather than something half.
pub fn topic_moves(
    members: &[Node],
    records: &[Option<&PartitionRecord>],
    rf: usize,
    scope: Scope,
) -> Vec<Move> {
    let member_ids: BTreeSet<i32> = members.iter().map(|n| n.id).collect();
    // A move under way towards a node that is no longer a member (the
    // cluster shrank while it ran) is planned again from where it started.
    let retarget = |r: &PartitionRecord| {
        scope == Scope::Balance
            && moving(r)
            && reassign::target(r).iter().any(|n| !member_ids.contains(n))
    };
    // Where each partition is, or is going.
    let existing: Vec<Vec<i32>> = records
        .iter()
        .map(|r| match r {
            Some(r) if retarget(r) => reassign::original(r),
            Some(r) if moving(r) => reassign::target(r),
            Some(r) => r.replicas.clone(),
            None => vec![],
        })
        .map(|l| l.into_iter().take(rf).collect())
        .collect();
    let Ok(target) = placement::assign(members, &existing, existing.len(), rf) else {
        return vec![];
    };
    let mut out: Vec<Move> = records
        .iter()
        .zip(target)
        .enumerate()
        .filter_map(|(i, (r, want))| {
            let r = (*r)?;
            if moving(r) && !retarget(r) {
                return None;
            }
            let have: BTreeSet<i32> = reassign::target(r).into_iter().collect();
            let wanted: BTreeSet<i32> = want.iter().copied().collect();
            let needed = match scope {
                Scope::ReplicationFactor => r.replicas.len() != rf,
                Scope::Balance => have != wanted,
            };
            if !needed {
                return None;
            }
            let record = reassign::start(r, &want).ok()??;
            let drains = reassign::original(r)
                .into_iter()
                .filter(|n| !member_ids.contains(n))
                .max();
            Some(Move {
                partition: i,
                record,
                drains,
            })
        })
        .collect();
    // Draining moves first, highest node first; then by partition.
    out.sort_by_key(|m| (std::cmp::Reverse(m.drains), m.partition));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(ids: std::ops::Range<i32>) -> Vec<Node> {
        ids.map(Node::new).collect()
    }

    fn records(a: &[Vec<i32>]) -> Vec<PartitionRecord> {
        a.iter().cloned().map(PartitionRecord::new).collect()
    }

    fn refs(rs: &[PartitionRecord]) -> Vec<Option<&PartitionRecord>> {
        rs.iter().map(Some).collect()
    }

    /// Applies moves as if every reassignment completed.
    fn completed(rs: &[PartitionRecord], moves: &[Move]) -> Vec<Vec<i32>> {
        let mut out: Vec<Vec<i32>> = rs.iter().map(|r| r.replicas.clone()).collect();
        for m in moves {
            out[m.partition] = reassign::target(&m.record);
        }
        out
    }

    #[test]
    fn a_balanced_topic_does_not_move() {
        let a = placement::assign(&nodes(0..3), &[], 12, 3).unwrap();
        let rs = records(&a);
        assert!(topic_moves(&nodes(0..3), &refs(&rs), 3, Scope::Balance).is_empty());
    }

    #[test]
    fn draining_moves_leave_the_highest_node_first_and_keep_leaders_until_done() {
        let a = placement::assign(&nodes(0..5), &[], 10, 3).unwrap();
        let rs = records(&a);
        let moves = topic_moves(&nodes(0..3), &refs(&rs), 3, Scope::Balance);
        // Every partition with a replica on 3 or 4 moves, those on 4 first.
        let touched = a.iter().filter(|r| r.iter().any(|n| *n >= 3)).count();
        assert!(moves.len() >= touched);
        assert_eq!(moves.iter().filter(|m| m.drains.is_some()).count(), touched);
        let firsts: Vec<Option<i32>> = moves.iter().map(|m| m.drains).collect();
        let mut sorted = firsts.clone();
        sorted.sort_by_key(|d| std::cmp::Reverse(*d));
        assert_eq!(firsts, sorted);
        assert_eq!(firsts[0], Some(4));
        for m in &moves {
            // The old replicas stay (removing) until the new ones are in sync.
            assert!(!m.record.removing.is_empty());
            assert_eq!(m.record.leader, rs[m.partition].leader);
        }
        for r in completed(&rs, &moves) {
            assert!(r.iter().all(|n| *n < 3), "{r:?}");
        }
    }

    #[test]
    fn replication_factor_scope_moves_only_resized_partitions() {
        let a = placement::assign(&nodes(0..3), &[], 4, 2).unwrap();
        let mut rs = records(&a);
        let stray = rs[1].replicas[0] + 10; // a third, stray replica
        rs[1].replicas.push(stray);
        let moves = topic_moves(&nodes(0..5), &refs(&rs), 2, Scope::ReplicationFactor);
        assert_eq!(moves.len(), 1);
        assert_eq!(moves[0].partition, 1);
    }

    #[test]
    fn partitions_already_moving_are_left_alone_and_counted_where_they_go() {
        let a = placement::assign(&nodes(0..3), &[], 6, 3).unwrap();
        let mut rs = records(&a);
        let first = topic_moves(&nodes(0..4), &refs(&rs), 3, Scope::Balance);
        assert!(!first.is_empty());
        rs[first[0].partition] = first[0].record.clone();
        let again = topic_moves(&nodes(0..4), &refs(&rs), 3, Scope::Balance);
        assert_eq!(again.len(), first.len() - 1);
        assert!(again.iter().all(|m| m.partition != first[0].partition));
    }

    #[test]
    fn a_move_towards_a_node_that_left_is_planned_again() {
        let a = placement::assign(&nodes(0..3), &[], 6, 3).unwrap();
        let mut rs = records(&a);
        let up = topic_moves(&nodes(0..4), &refs(&rs), 3, Scope::Balance);
        let p = up[0].partition;
        rs[p] = up[0].record.clone();
        assert!(rs[p].adding.contains(&3));
        // Node 3 is no longer a member: the move is re-planned away from it.
        let down = topic_moves(&nodes(0..3), &refs(&rs), 3, Scope::Balance);
        let again = down.iter().find(|m| m.partition == p).expect("re-planned");
        assert!(reassign::target(&again.record).iter().all(|n| *n < 3));
        assert!(!again.record.replicas.contains(&3));
    }

    proptest! {
        #[test]
        fn scaling_up_moves_the_fair_share_and_down_drains_everything(
            n in 1i32..5, add in 1i32..4, parts in 1usize..30, rf in 1usize..4,
        ) {
            prop_assume!(rf <= n as usize);
            let before = placement::assign(&nodes(0..n), &[], parts, rf).unwrap();
            let rs = records(&before);
            // Up: only the new nodes' share moves, and the result is balanced.
            let up = topic_moves(&nodes(0..n + add), &refs(&rs), rf, Scope::Balance);
            let grown = completed(&rs, &up);
            let mut load = std::collections::BTreeMap::new();
            for r in grown.iter().flatten() {
                *load.entry(*r).or_insert(0usize) += 1;
            }
            let max = load.values().max().copied().unwrap_or(0);
            let min = if load.len() < (n + add) as usize { 0 } else { load.values().min().copied().unwrap_or(0) };
            prop_assert!(max <= min + 1, "unbalanced {:?}", load);
            // Every move lands on a new node: nothing moves between old ones.
            let on_new: usize = grown.iter().flatten().filter(|r| **r >= n).count();
            prop_assert_eq!(placement::moves(&before, &grown), on_new);
            prop_assert!(up.iter().all(|m| m.drains.is_none()));
            // Down again: every replica on the added nodes leaves.
            let rs2 = records(&grown);
            let down = topic_moves(&nodes(0..n), &refs(&rs2), rf, Scope::Balance);
            let back = completed(&rs2, &down);
            prop_assert!(back.iter().flatten().all(|r| *r < n));
            prop_assert!(back.iter().all(|r| r.len() == rf));
            for (i, r) in grown.iter().enumerate() {
                let drains = r.iter().copied().filter(|x| *x >= n).max();
                if drains.is_some() {
                    prop_assert!(down.iter().any(|m| m.partition == i && m.drains == drains));
                }
            }
        }
    }
}
