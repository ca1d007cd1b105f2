//! Scaling the node cluster without losing a replica.
//!
//! The target size follows `minNodes` and what the Topics need (see
//! [`crate::config::Settings::node_count`]). Growing is immediate: the
//! StatefulSet gets the new pods, and once they are up the controller moves
//! a fair share of replicas onto them. Shrinking is not: the controller
//! first drains the nodes above the target (leadership, then replicas, by
//! reassignment, highest ordinal first), and the StatefulSet shrinks only
//! when no partition has a replica there any more and every partition is
//! led and fully in sync on the nodes that stay. Until then the size holds
//! and [`decide`] says why.

use sluice_api::election::PartitionRecord;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Size {
    /// The StatefulSet may have this many pods now.
    Apply(i32),
    /// It keeps `current` pods while the nodes above the target drain
    /// (`draining`) or the partitions catch up on the nodes that stay.
    Hold {
        current: i32,
        draining: bool,
        why: String,
    },
}

/// The StatefulSet's size now, going from `current` pods (`None`: no
/// StatefulSet yet) towards `target`. `records` are every partition's
/// record, by topic and partition.
pub fn decide<'a>(
    current: Option<i32>,
    target: i32,
    records: impl IntoIterator<Item = (&'a str, i32, &'a PartitionRecord)>,
) -> Size {
    let current = match current {
        Some(c) if c > target => c,
        _ => return Size::Apply(target),
    };
    let mut on_leaving = vec![];
    let mut short = vec![];
    for (t, p, r) in records {
        let all = r.replicas.iter().chain(&r.adding).chain(&r.removing);
        if all.clone().any(|n| *n >= target) {
            on_leaving.push(format!("{t}-{p} {:?}", r.replicas));
        } else if r.leader.is_none() || r.replicas.iter().any(|n| !r.isr.contains(n)) {
            short.push(format!("{t}-{p} (ISR {:?} of {:?})", r.isr, r.replicas));
        }
    }
    let example = |v: &mut Vec<String>| {
        let n = v.len();
        v.truncate(3);
        (n, v.join(", "))
    };
    if !on_leaving.is_empty() {
        let (n, e) = example(&mut on_leaving);
        return Size::Hold {
            current,
            draining: true,
            why: format!(
                "draining nodes {target}..{}: {n} partitions still have replicas there, e.g. {e}",
                current - 1
            ),
        };
    }
    if !short.is_empty() {
        let (n, e) = example(&mut short);
        return Size::Hold {
            current,
            draining: false,
            why: format!(
                "nodes {target}..{} hold no replicas, but {n} partitions are not fully in sync on the nodes that stay, e.g. {e}",
                current - 1
            ),
        };
    }
    Size::Apply(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::record as rec;

    #[test]
    fn growing_and_first_sizes_apply_at_once() {
        assert_eq!(decide(None, 3, []), Size::Apply(3));
        let r = rec(&[0, 1, 2], &[0]);
        assert_eq!(decide(Some(3), 5, [("t", 0, &r)]), Size::Apply(5));
        assert_eq!(decide(Some(3), 3, [("t", 0, &r)]), Size::Apply(3));
    }

    #[test]
    fn shrinking_waits_for_the_drain_and_a_full_isr() {
        let on_4 = rec(&[0, 4, 1], &[0, 4, 1]);
        let Size::Hold {
            current,
            draining,
            why,
        } = decide(Some(5), 3, [("t", 0, &on_4)])
        else {
            panic!()
        };
        assert_eq!((current, draining), (5, true));
        assert!(
            why.contains("draining nodes 3..4") && why.contains("t-0"),
            "{why}"
        );
        // Moving away (4 removing, 2 adding) still holds.
        let mut moving = rec(&[0, 2, 1, 4], &[0, 1, 4]);
        moving.adding = vec![2];
        moving.removing = vec![4];
        assert!(matches!(
            decide(Some(5), 3, [("t", 0, &moving)]),
            Size::Hold { .. }
        ));
        // Off the leaving nodes but not yet in sync: holds.
        let behind = rec(&[0, 2, 1], &[0, 1]);
        let Size::Hold { why, .. } = decide(Some(5), 3, [("t", 0, &behind)]) else {
            panic!()
        };
        assert!(why.contains("not fully in sync"), "{why}");
        let done = rec(&[0, 2, 1], &[0, 2, 1]);
        assert_eq!(decide(Some(5), 3, [("t", 0, &done)]), Size::Apply(3));
    }
}
