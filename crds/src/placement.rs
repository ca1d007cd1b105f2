//! Replica placement: which nodes hold each partition's replicas.
//!
//! Rules, in order of priority:
//! 1. every partition has exactly `replication_factor` replicas on distinct nodes;
//! 2. replicas already on live nodes stay where they are (minimal movement);
//! 3. a partition's replicas spread over as many racks as there are;
//! 4. replica counts per node differ by at most one, reached by moving as few
//!    replicas as possible;
//! 5. among equally loaded nodes, a new partition's first replica (its
//!    preferred leader) goes to the node leading the fewest partitions.

use std::collections::{BTreeMap, BTreeSet};

/// A node replicas may be placed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: i32,
    pub rack: Option<String>,
}

impl Node {
    pub fn new(id: i32) -> Node {
        Node { id, rack: None }
    }
    pub fn in_rack(id: i32, rack: &str) -> Node {
        Node {
            id,
            rack: Some(rack.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("replication factor {rf} needs at least {rf} nodes, {nodes} available")]
    NotEnoughNodes { rf: usize, nodes: usize },
    #[error("replication factor must be at least 1")]
    ZeroReplicationFactor,
    #[error("a partition count may not shrink (from {from} to {to})")]
    FewerPartitions { from: usize, to: usize },
}

/// An assignment: for each partition, its replicas, preferred leader first.
pub type Assignment = Vec<Vec<i32>>;

fn rack_of(nodes: &[Node], id: i32) -> Option<&str> {
    nodes
        .iter()
        .find(|n| n.id == id)
        .and_then(|n| n.rack.as_deref())
}

fn racks_used(nodes: &[Node], replicas: &[i32]) -> BTreeSet<Option<String>> {
    replicas
        .iter()
        .map(|r| rack_of(nodes, *r).map(str::to_string))
        .collect()
}

/// Computes an assignment of `partitions` partitions with `rf` replicas over
/// `nodes`, starting from `existing` (one entry per already existing
/// partition; may name nodes that are gone).
pub fn assign(
    nodes: &[Node],
    existing: &[Vec<i32>],
    partitions: usize,
    rf: usize,
) -> Result<Assignment, PlacementError> {
    if rf == 0 {
        return Err(PlacementError::ZeroReplicationFactor);
    }
    if rf > nodes.len() {
        return Err(PlacementError::NotEnoughNodes {
            rf,
            nodes: nodes.len(),
        });
    }
    if partitions < existing.len() {
        return Err(PlacementError::FewerPartitions {
            from: existing.len(),
            to: partitions,
        });
    }
    let live: BTreeSet<i32> = nodes.iter().map(|n| n.id).collect();
    let mut load: BTreeMap<i32, usize> = live.iter().map(|id| (*id, 0)).collect();
    let mut leaders: BTreeMap<i32, usize> = load.clone();

    // Keep what is still valid: live nodes, no duplicates, at most rf.
    let mut out: Assignment = Vec::with_capacity(partitions);
    for replicas in existing {
        let mut kept: Vec<i32> = Vec::with_capacity(rf);
        for r in replicas {
            if live.contains(r) && !kept.contains(r) && kept.len() < rf {
                kept.push(*r);
            }
        }
        for r in &kept {
            *load.get_mut(r).expect("live") += 1;
        }
        if let Some(l) = kept.first() {
            *leaders.get_mut(l).expect("live") += 1;
        }
        out.push(kept);
    }
    let new_from = out.len();
    out.resize(partitions, Vec::new());

    // Fill: each missing replica goes to the least loaded eligible node,
    // preferring racks the partition does not use yet. New partitions pick
    // their first replica among the nodes leading the fewest partitions.
    for (p, replicas) in out.iter_mut().enumerate() {
        while replicas.len() < rf {
            let used = racks_used(nodes, replicas);
            let choose_leader = p >= new_from && replicas.is_empty();
            let best = nodes
                .iter()
                .filter(|n| !replicas.contains(&n.id))
                .min_by_key(|n| {
                    let new_rack = !used.contains(&n.rack.clone());
                    let lead = if choose_leader { leaders[&n.id] } else { 0 };
                    (!new_rack, load[&n.id], lead, n.id)
                })
                .expect("rf <= nodes");
            *load.get_mut(&best.id).expect("live") += 1;
            if replicas.is_empty() {
                *leaders.get_mut(&best.id).expect("live") += 1;
            }
            replicas.push(best.id);
        }
    }

    // Balance: move one replica at a time from a more to a less loaded node
    // (the most loaded first, onto the least loaded first) while their
    // loads differ by more than one, never putting two replicas of a
    // partition on one node nor reducing a partition's rack spread. A pair
    // the racks rule out (the only node of a rack) is passed over for the
    // next one, so nodes sharing a rack still even out among themselves.
    loop {
        let mut by_load: Vec<(usize, i32)> = load.iter().map(|(id, l)| (*l, *id)).collect();
        by_load.sort_by_key(|(l, id)| (*l, *id));
        let mut step = None;
        'pairs: for &(max, max_id) in by_load.iter().rev() {
            for &(min, min_id) in &by_load {
                if max <= min + 1 {
                    break;
                }
                let candidate = out.iter().enumerate().find_map(|(p, replicas)| {
                    let pos = replicas.iter().position(|r| *r == max_id)?;
                    if replicas.contains(&min_id) {
                        return None;
                    }
                    let before = racks_used(nodes, replicas).len();
                    let mut after_set = replicas.clone();
                    after_set[pos] = min_id;
                    let after = racks_used(nodes, &after_set).len();
                    (after >= before).then_some((p, pos))
                });
                if let Some((p, pos)) = candidate {
                    step = Some((p, pos, max_id, min_id));
                    break 'pairs;
                }
            }
        }
        let Some((p, pos, max_id, min_id)) = step else {
            break;
        };
        out[p][pos] = min_id;
        *load.get_mut(&max_id).expect("live") -= 1;
        *load.get_mut(&min_id).expect("live") += 1;
    }
    Ok(out)
}

/// How many replicas differ between two assignments (placed on a node where
/// they were not before).
pub fn moves(before: &[Vec<i32>], after: &[Vec<i32>]) -> usize {
    after
        .iter()
        .enumerate()
        .map(|(p, a)| {
            let b = before.get(p).cloned().unwrap_or_default();
            a.iter().filter(|r| !b.contains(r)).count()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nodes(n: i32) -> Vec<Node> {
        (0..n).map(Node::new).collect()
    }

    fn loads(a: &Assignment) -> BTreeMap<i32, usize> {
        let mut m = BTreeMap::new();
        for r in a.iter().flatten() {
            *m.entry(*r).or_default() += 1;
        }
        m
    }

    fn check_valid(a: &Assignment, ns: &[Node], rf: usize) {
        for replicas in a {
            assert_eq!(replicas.len(), rf);
            let set: BTreeSet<_> = replicas.iter().collect();
            assert_eq!(set.len(), rf, "duplicate replica in {replicas:?}");
            assert!(replicas.iter().all(|r| ns.iter().any(|n| n.id == *r)));
        }
    }

    #[test]
    fn simple_spread_and_leaders() {
        let ns = nodes(3);
        let a = assign(&ns, &[], 6, 3).unwrap();
        check_valid(&a, &ns, 3);
        let mut leaders = BTreeMap::new();
        for r in &a {
            *leaders.entry(r[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn errors() {
        assert_eq!(
            assign(&nodes(2), &[], 1, 3),
            Err(PlacementError::NotEnoughNodes { rf: 3, nodes: 2 })
        );
        assert_eq!(
            assign(&nodes(2), &[], 1, 0),
            Err(PlacementError::ZeroReplicationFactor)
        );
        assert_eq!(
            assign(&nodes(2), &[vec![0], vec![1]], 1, 1),
            Err(PlacementError::FewerPartitions { from: 2, to: 1 })
        );
    }

    #[test]
    fn racks_are_spread() {
        let ns = vec![
            Node::in_rack(0, "a"),
            Node::in_rack(1, "a"),
            Node::in_rack(2, "b"),
            Node::in_rack(3, "b"),
            Node::in_rack(4, "c"),
            Node::in_rack(5, "c"),
        ];
        let a = assign(&ns, &[], 12, 3).unwrap();
        for r in &a {
            assert_eq!(racks_used(&ns, r).len(), 3, "{r:?}");
        }
    }

    #[test]
    fn nodes_sharing_a_rack_even_out_when_a_rack_has_one_node() {
        // Three racks, then two nodes join racks a and b: rack c's only
        // node keeps a replica of every partition, and the others share
        // their rack's replicas evenly.
        let three = vec![
            Node::in_rack(0, "a"),
            Node::in_rack(1, "b"),
            Node::in_rack(2, "c"),
        ];
        let a = assign(&three, &[], 6, 3).unwrap();
        let mut five = three.clone();
        five.push(Node::in_rack(3, "a"));
        five.push(Node::in_rack(4, "b"));
        let b = assign(&five, &a, 6, 3).unwrap();
        let l = loads(&b);
        assert_eq!(
            (l[&0], l[&3], l[&1], l[&4], l[&2]),
            (3, 3, 3, 3, 6),
            "{b:?}"
        );
        for r in &b {
            assert_eq!(racks_used(&five, r).len(), 3, "{r:?}");
        }
        assert_eq!(moves(&a, &b), 6);
    }

    #[test]
    fn a_lost_node_is_replaced_and_nothing_else_moves() {
        let ns = nodes(4);
        let a = assign(&ns, &[], 8, 3).unwrap();
        let survivors: Vec<Node> = ns.iter().filter(|n| n.id != 3).cloned().collect();
        let b = assign(&survivors, &a, 8, 3).unwrap();
        check_valid(&b, &survivors, 3);
        let lost = a.iter().flatten().filter(|r| **r == 3).count();
        assert_eq!(moves(&a, &b), lost);
    }

    proptest! {
        #[test]
        fn valid_balanced_and_stable(n in 1i32..8, parts in 1usize..40, rf in 1usize..4) {
            let ns = nodes(n);
            match assign(&ns, &[], parts, rf) {
                Err(PlacementError::NotEnoughNodes { .. }) => prop_assert!(rf > n as usize),
                Err(e) => prop_assert!(false, "{e}"),
                Ok(a) => {
                    check_valid(&a, &ns, rf);
                    let l = loads(&a);
                    let max = l.values().max().copied().unwrap_or(0);
                    let min = if l.len() < n as usize { 0 } else { l.values().min().copied().unwrap_or(0) };
                    prop_assert!(max <= min + 1, "unbalanced {l:?}");
                    // Running again changes nothing.
                    prop_assert_eq!(assign(&ns, &a, parts, rf).unwrap(), a);
                }
            }
        }

        #[test]
        fn scaling_up_moves_only_what_balance_needs(n in 1i32..6, add in 1i32..4, parts in 1usize..30, rf in 1usize..3) {
            prop_assume!(rf <= n as usize);
            let before = assign(&nodes(n), &[], parts, rf).unwrap();
            let grown = nodes(n + add);
            let after = assign(&grown, &before, parts, rf).unwrap();
            check_valid(&after, &grown, rf);
            let l = loads(&after);
            let max = l.values().max().copied().unwrap_or(0);
            let min = if l.len() < (n + add) as usize { 0 } else { l.values().min().copied().unwrap_or(0) };
            prop_assert!(max <= min + 1, "unbalanced {l:?}");
            // Every move lands on a new node, and each new node gets only its share.
            let on_new: usize = after.iter().flatten().filter(|r| **r >= n).count();
            prop_assert_eq!(moves(&before, &after), on_new);
            // Growing the partition count keeps the old partitions in place.
            let more = assign(&grown, &after, parts + 5, rf).unwrap();
            prop_assert_eq!(&more[..parts], &after[..]);
        }
    }
}
