//! Rolls that keep every partition available. The nodes' StatefulSet uses
//! `updateStrategy: OnDelete`, so a new template (image, resources,
//! settings, a `sluice.dev/restart` annotation) reaches a node only when
//! the operator deletes its pod, and it does so one node at a time:
//! highest ordinal first, only while every pod is Ready and every
//! partition's ISR holds all its replicas. The deleted node hands its
//! leaderships over before it stops (its controlled shutdown on SIGTERM),
//! and the next node waits until the new pod is Ready and back in every
//! ISR.
//!
//! [`next`] decides from what was read; the operator's loop carries it out.

use sluice_api::election::PartitionRecord;

/// A node pod as the roll sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub ordinal: i32,
    pub name: String,
    /// `controller-revision-hash`: the template revision it runs.
    pub revision: Option<String>,
    pub ready: bool,
    pub terminating: bool,
    /// Its container keeps exiting (`CrashLoopBackOff`).
    pub crash_looping: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every node runs the current template.
    Done,
    /// Nodes are to be rolled but not now; why.
    Wait(String),
    /// Delete this pod: its node restarts on the current template.
    Restart(String),
}

/// The roll's next step. `records` are every partition's record, by topic
/// and partition.
pub fn next<'a>(
    pods: &[Pod],
    replicas: i32,
    update_revision: &str,
    records: impl IntoIterator<Item = (&'a str, i32, &'a PartitionRecord)>,
) -> Step {
    let mut stale: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.ordinal < replicas && p.revision.as_deref() != Some(update_revision))
        .collect();
    if stale.is_empty() {
        return Step::Done;
    }
    stale.sort_by_key(|p| std::cmp::Reverse(p.ordinal));
    let mut unready = None;
    for i in 0..replicas {
        match pods.iter().find(|p| p.ordinal == i) {
            None => return Step::Wait(format!("node {i} has no pod yet")),
            Some(p) if p.terminating => return Step::Wait(format!("{} is stopping", p.name)),
            Some(p) if !p.ready => match unready {
                None => unready = Some(p),
                Some(_) => return Step::Wait(format!("{} is not Ready", p.name)),
            },
            Some(_) => {}
        }
    }
    let short: Vec<(&str, i32, &PartitionRecord)> = records
        .into_iter()
        .filter(|(_, _, r)| r.replicas.iter().any(|x| !r.isr.contains(x)) || r.leader.is_none())
        .collect();
    if let Some(p) = unready {
        // One node down. If it keeps crashing on an old template (a broken
        // one, say) and it is all the partitions lack, restarting it onto
        // the current template is the way out; a node merely out (slow,
        // partitioned, stopped) is waited for.
        let only_it = short.iter().all(|(_, _, r)| {
            r.leader.is_some()
                && r.replicas
                    .iter()
                    .all(|x| r.isr.contains(x) || *x == p.ordinal)
        });
        if p.crash_looping && p.revision.as_deref() != Some(update_revision) && only_it {
            return Step::Restart(p.name.clone());
        }
        return Step::Wait(format!("{} is not Ready", p.name));
    }
    let mut short: Vec<String> = short
        .iter()
        .map(|(t, p, r)| format!("{t}-{p} (ISR {:?} of {:?})", r.isr, r.replicas))
        .collect();
    if !short.is_empty() {
        let n = short.len();
        short.truncate(3);
        return Step::Wait(format!(
            "{n} partitions are not fully in sync, e.g. {}; a node restarts only when every partition is",
            short.join(", ")
        ));
    }
    Step::Restart(stale[0].name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::record as rec;

    fn pod(ordinal: i32, revision: &str) -> Pod {
        Pod {
            ordinal,
            name: format!("sluice-node-{ordinal}"),
            revision: Some(revision.into()),
            ready: true,
            terminating: false,
            crash_looping: false,
        }
    }

    #[test]
    fn the_highest_stale_ordinal_goes_first_and_only_when_all_is_in_sync() {
        let full = rec(&[0, 1, 2], &[0, 1, 2]);
        let pods = [pod(0, "old"), pod(1, "old"), pod(2, "new")];
        let records = [("orders", 0, &full)];
        assert_eq!(
            next(&pods, 3, "new", records),
            Step::Restart("sluice-node-1".into())
        );
        assert_eq!(
            next(&[pod(0, "new"), pod(1, "new")], 2, "new", records),
            Step::Done
        );
        // A partition short of a replica holds the roll, and says which.
        let short = rec(&[0, 1, 2], &[0, 2]);
        match next(
            &pods,
            3,
            "new",
            [("orders", 0, &full), ("orders", 4, &short)],
        ) {
            Step::Wait(why) => assert!(why.contains("orders-4"), "{why}"),
            other => panic!("{other:?}"),
        }
        // So does a pod that is not Ready, stopping, or missing.
        let mut unready = pods.clone();
        unready[2].ready = false;
        assert!(
            matches!(next(&unready, 3, "new", records), Step::Wait(w) if w.contains("not Ready"))
        );
        // Unless the pod that is down keeps crashing on an old template and
        // is all the partitions lack: it restarts onto the new one.
        let mut broken = pods.clone();
        broken[1].ready = false;
        let without_1 = rec(&[0, 1, 2], &[0, 2]);
        assert!(matches!(
            next(&broken, 3, "new", [("orders", 0, &without_1)]),
            Step::Wait(_)
        ));
        broken[1].crash_looping = true;
        assert_eq!(
            next(&broken, 3, "new", [("orders", 0, &without_1)]),
            Step::Restart("sluice-node-1".into())
        );
        let without_2 = rec(&[0, 1, 2], &[0, 1]);
        assert!(matches!(
            next(&broken, 3, "new", [("orders", 0, &without_2)]),
            Step::Wait(_)
        ));
        let mut stopping = pods.clone();
        stopping[0].terminating = true;
        assert!(matches!(next(&stopping, 3, "new", records), Step::Wait(_)));
        assert!(
            matches!(next(&pods[..2], 3, "new", records), Step::Wait(w) if w.contains("no pod"))
        );
    }
}
