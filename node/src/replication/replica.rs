//! One partition's replica on this node: its role, read from the
//! partition's record (leader at an epoch, follower of another node, or
//! neither), and, while it leads, what it knows of its followers. The rules
//! themselves (high watermark, ISR shrink and expand) are the pure functions
//! of `sluice_api::isr`; this type holds their inputs and applies their
//! answers to the log.

use std::sync::Mutex;

use sluice_api::election::PartitionRecord;
use sluice_api::isr::{self, Follower};

use crate::coord::Version;
use crate::log::{PartitionLog, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Role {
    /// Not a replica, or a replica without a leader (offline).
    #[default]
    None,
    Leader {
        epoch: i32,
        /// The ISR as stored in the partition record.
        isr: Vec<i32>,
        replicas: Vec<i32>,
        /// Version of the partition record, for compare-and-swap.
        version: Version,
    },
    Follower {
        leader: i32,
        epoch: i32,
    },
}

/// What changed when a record was applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    /// Now leading at this epoch (after not leading, or at a new epoch).
    BecameLeader(i32),
    /// Led before, does not lead now.
    StoppedLeading,
    /// Follows a (new) leader or epoch.
    Following,
}

/// The leader's view of one follower.
#[derive(Debug, Clone, Copy)]
struct Progress {
    f: Follower,
    /// Leader's log end and time at this follower's previous fetch: a
    /// follower that fetched up to the log end as it was then was caught up
    /// at that time (Kafka's `lastCaughtUpTimeMs` rule).
    prev_fetch_leo: i64,
    prev_fetch_ms: i64,
}

#[derive(Default)]
struct State {
    role: Role,
    followers: Vec<Progress>,
    /// An ISR change this leader asked to store, with the record version it
    /// was based on. Any newer record settles it: every writer builds on the
    /// record it read, so a newer one either contains this change or was
    /// written instead of it.
    pending: Option<IsrChange>,
    /// This leader's log end when it took its epoch. A follower joins the
    /// ISR only once it has reached it: a new leader's high watermark can be
    /// behind what its predecessor acknowledged (KAFKA-7128).
    epoch_start: i64,
}

impl State {
    /// The ISR the high watermark must respect: the stored one together
    /// with a pending one, so a follower being added counts before its
    /// addition is visible (KIP-497's "maximal ISR") and a follower being
    /// removed still counts until its removal is stored.
    fn maximal_isr(&self) -> Vec<i32> {
        let Role::Leader { isr, .. } = &self.role else {
            return vec![];
        };
        let mut all = isr.clone();
        for r in self.pending.iter().flat_map(|p| &p.isr) {
            if !all.contains(r) {
                all.push(*r);
            }
        }
        all
    }

    fn progress(&self) -> Vec<Follower> {
        self.followers.iter().map(|p| p.f).collect()
    }
}

/// A proposed ISR change: the record to store if the stored one is still at
/// `expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsrChange {
    pub isr: Vec<i32>,
    pub expected: Version,
}

/// What the leader may do for one append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    pub epoch: i32,
    /// Size of the stored ISR (what `min.insync.replicas` is checked against).
    pub isr_len: usize,
    /// This replica is the whole ISR, pending changes included: what it
    /// writes is committed at once.
    pub alone: bool,
}

#[derive(Default)]
pub struct Replica {
    state: Mutex<State>,
}

impl Replica {
    pub fn role(&self) -> Role {
        self.state.lock().expect("replica lock").role.clone()
    }

    /// The leader epoch if this replica leads.
    pub fn leader_epoch(&self) -> Option<i32> {
        match self.state.lock().expect("replica lock").role {
            Role::Leader { epoch, .. } => Some(epoch),
            _ => None,
        }
    }

    /// Applies the partition's record as stored at `version`; `log_end` is
    /// this replica's log end now.
    pub fn apply(
        &self,
        me: i32,
        record: Option<(&PartitionRecord, Version)>,
        now_ms: i64,
        log_end: i64,
    ) -> Transition {
        let mut st = self.state.lock().expect("replica lock");
        let was_leading = matches!(st.role, Role::Leader { .. });
        let next = match record {
            Some((r, version)) if r.leader == Some(me) => Role::Leader {
                epoch: r.leader_epoch,
                isr: r.isr.clone(),
                replicas: r.replicas.clone(),
                version,
            },
            Some((r, _)) if r.replicas.contains(&me) => match r.leader {
                Some(leader) => Role::Follower {
                    leader,
                    epoch: r.leader_epoch,
                },
                None => Role::None,
            },
            _ => Role::None,
        };
        if next == st.role {
            return Transition::Unchanged;
        }
        let prev = std::mem::replace(&mut st.role, next.clone());
        match (&prev, &next) {
            (
                Role::Leader {
                    epoch: old_epoch, ..
                },
                Role::Leader { epoch, version, .. },
            ) if old_epoch == epoch => {
                // Same leadership, a newer record (an ISR change stored, or
                // replicas added or removed by a reassignment): whatever was
                // pending is settled by it.
                if st.pending.as_ref().is_some_and(|p| *version > p.expected) {
                    st.pending = None;
                }
                if let Role::Leader { replicas, .. } = &next {
                    st.followers.retain(|p| replicas.contains(&p.f.id));
                    for r in replicas.iter().filter(|r| **r != me) {
                        if !st.followers.iter().any(|p| p.f.id == *r) {
                            st.followers.push(Progress {
                                f: Follower {
                                    id: *r,
                                    log_end: -1,
                                    last_caught_up_ms: now_ms,
                                },
                                prev_fetch_leo: i64::MAX,
                                prev_fetch_ms: now_ms,
                            });
                        }
                    }
                }
                Transition::Unchanged
            }
            (
                _,
                Role::Leader {
                    epoch, replicas, ..
                },
            ) => {
                // Followers get the grace Kafka gives them at election: they
                // count as caught up now, and must fetch to stay so.
                st.followers = replicas
                    .iter()
                    .filter(|r| **r != me)
                    .map(|id| Progress {
                        f: Follower {
                            id: *id,
                            log_end: -1,
                            last_caught_up_ms: now_ms,
                        },
                        prev_fetch_leo: i64::MAX,
                        prev_fetch_ms: now_ms,
                    })
                    .collect();
                st.pending = None;
                st.epoch_start = log_end;
                Transition::BecameLeader(*epoch)
            }
            _ => {
                st.followers.clear();
                st.pending = None;
                if was_leading {
                    Transition::StoppedLeading
                } else if matches!(next, Role::Follower { .. }) {
                    Transition::Following
                } else {
                    Transition::Unchanged
                }
            }
        }
    }

    /// Runs `f` while this replica leads at `epoch` (any epoch if `None`),
    /// holding its state so the ISR cannot change meanwhile: an append made
    /// by `f` is judged against the ISR it was made under.
    pub fn with_leader<R>(&self, me: i32, f: impl FnOnce(&LeaderView) -> R) -> Result<R, Role> {
        let st = self.state.lock().expect("replica lock");
        let Role::Leader { epoch, isr, .. } = &st.role else {
            return Err(st.role.clone());
        };
        let maximal = st.maximal_isr();
        let view = LeaderView {
            epoch: *epoch,
            isr_len: isr.len(),
            alone: maximal == [me],
        };
        Ok(f(&view))
    }

    /// Size of the stored ISR while leading.
    pub fn isr_len(&self) -> Option<usize> {
        match &self.state.lock().expect("replica lock").role {
            Role::Leader { isr, .. } => Some(isr.len()),
            _ => None,
        }
    }

    /// A follower fetched from `fetch_offset`, which is its log end. Moves
    /// the high watermark when it can (returns whether it moved) and
    /// proposes adding the follower to the ISR once it has caught up.
    pub fn follower_fetched(
        &self,
        me: i32,
        log: &PartitionLog,
        follower: i32,
        fetch_offset: i64,
        now_ms: i64,
        lag_max_ms: i64,
    ) -> Result<(bool, Option<IsrChange>), StoreError> {
        let mut st = self.state.lock().expect("replica lock");
        let Role::Leader { isr, version, .. } = &st.role else {
            return Ok((false, None));
        };
        let (isr, version) = (isr.clone(), *version);
        let leo = log.log_end_offset();
        let Some(p) = st.followers.iter_mut().find(|p| p.f.id == follower) else {
            // Not a replica of this partition: ignored.
            return Ok((false, None));
        };
        if fetch_offset >= leo {
            p.f.last_caught_up_ms = now_ms;
        } else if fetch_offset >= p.prev_fetch_leo {
            p.f.last_caught_up_ms = p.f.last_caught_up_ms.max(p.prev_fetch_ms);
        }
        p.prev_fetch_leo = leo;
        p.prev_fetch_ms = now_ms;
        p.f.log_end = fetch_offset;
        let caught_up_ms = p.f.last_caught_up_ms;
        let before = log.high_watermark();
        let hw = isr::high_watermark(me, leo, &st.progress(), &st.maximal_isr(), before);
        if hw > before {
            log.set_high_watermark(hw)?;
        }
        let mut change = None;
        if st.pending.is_none()
            && !isr.contains(&follower)
            && fetch_offset >= log.high_watermark().max(st.epoch_start)
            && now_ms - caught_up_ms <= lag_max_ms
        {
            let mut next = isr;
            next.push(follower);
            let c = IsrChange {
                isr: next,
                expected: version,
            };
            st.pending = Some(c.clone());
            change = Some(c);
        }
        Ok((hw > before, change))
    }

    /// After an append by the leader: the high watermark may move when the
    /// leader's own log end was the slowest of the ISR.
    pub fn leader_appended(&self, me: i32, log: &PartitionLog) -> Result<bool, StoreError> {
        let st = self.state.lock().expect("replica lock");
        if !matches!(st.role, Role::Leader { .. }) {
            return Ok(false);
        }
        let before = log.high_watermark();
        let hw = isr::high_watermark(
            me,
            log.log_end_offset(),
            &st.progress(),
            &st.maximal_isr(),
            before,
        );
        if hw > before {
            log.set_high_watermark(hw)?;
        }
        Ok(hw > before)
    }

    /// The periodic ISR check: proposes removing followers that have not
    /// caught up within `lag_max_ms`. Additions happen only on a fetch
    /// ([`follower_fetched`](Self::follower_fetched)), so a follower that
    /// stopped cannot be re-added from its last progress.
    pub fn check_isr(
        &self,
        me: i32,
        log: &PartitionLog,
        now_ms: i64,
        lag_max_ms: i64,
    ) -> Option<IsrChange> {
        let mut st = self.state.lock().expect("replica lock");
        let Role::Leader { isr, version, .. } = &st.role else {
            return None;
        };
        if st.pending.is_some() {
            return None;
        }
        let version = *version;
        let next: Vec<i32> = isr::next_isr(
            me,
            isr,
            &st.progress(),
            log.high_watermark(),
            now_ms,
            lag_max_ms,
        )?
        .into_iter()
        .filter(|r| isr.contains(r))
        .collect();
        if next == *isr {
            return None;
        }
        let c = IsrChange {
            isr: next,
            expected: version,
        };
        st.pending = Some(c.clone());
        Some(c)
    }

    /// `change` was certainly not stored (the record moved on, or is
    /// gone): it is no longer pending. A newer proposal stays.
    pub fn isr_change_failed(&self, change: &IsrChange) {
        let mut st = self.state.lock().expect("replica lock");
        if st.pending.as_ref() == Some(change) {
            st.pending = None;
        }
    }

    /// Whether `change` is still waiting to be settled.
    pub fn is_pending(&self, change: &IsrChange) -> bool {
        self.state.lock().expect("replica lock").pending.as_ref() == Some(change)
    }

    /// Runs `f` while this replica follows at `epoch`, holding its state so
    /// the role cannot change meanwhile: a follower's truncation or append
    /// never lands after it stopped following that epoch. `None` when it
    /// does not follow at that epoch.
    pub fn with_following<R>(&self, epoch: i32, f: impl FnOnce() -> R) -> Option<R> {
        let st = self.state.lock().expect("replica lock");
        match st.role {
            Role::Follower { epoch: e, .. } if e == epoch => Some(f()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(replicas: &[i32], isr: &[i32], leader: i32, epoch: i32) -> PartitionRecord {
        PartitionRecord {
            replicas: replicas.to_vec(),
            isr: isr.to_vec(),
            leader: Some(leader),
            leader_epoch: epoch,
            ..Default::default()
        }
    }

    #[test]
    fn roles_follow_the_record() {
        let r = Replica::default();
        let t = r.apply(1, Some((&rec(&[1, 2, 3], &[1, 2, 3], 1, 0), 5)), 0, 0);
        assert_eq!(t, Transition::BecameLeader(0));
        // An ISR change stored: same leadership.
        let t = r.apply(1, Some((&rec(&[1, 2, 3], &[1, 2], 1, 0), 6)), 0, 0);
        assert_eq!(t, Transition::Unchanged);
        assert_eq!(r.isr_len(), Some(2));
        let t = r.apply(1, Some((&rec(&[1, 2, 3], &[2], 2, 1), 7)), 0, 0);
        assert_eq!(t, Transition::StoppedLeading);
        assert_eq!(
            r.role(),
            Role::Follower {
                leader: 2,
                epoch: 1
            }
        );
        assert_eq!(r.apply(4, Some((&rec(&[1, 2, 3], &[2], 2, 1), 7)), 0, 0), {
            Transition::Unchanged
        });
        let offline = PartitionRecord {
            leader: None,
            ..rec(&[1, 2, 3], &[2], 2, 2)
        };
        r.apply(1, Some((&offline, 8)), 0, 0);
        assert_eq!(r.role(), Role::None);
    }

    #[test]
    fn alone_only_when_the_maximal_isr_is_this_replica() {
        let r = Replica::default();
        r.apply(1, Some((&rec(&[1, 2], &[1], 1, 0), 1)), 0, 0);
        assert!(r.with_leader(1, |v| v.alone).unwrap());
        r.state.lock().unwrap().pending = Some(IsrChange {
            isr: vec![1, 2],
            expected: 1,
        });
        assert!(!r.with_leader(1, |v| v.alone).unwrap());
        let f = Replica::default();
        f.apply(2, Some((&rec(&[1, 2], &[1], 1, 0), 1)), 0, 0);
        assert!(f.with_leader(2, |_| ()).is_err());
    }

    fn leader_log(records: usize) -> (tempfile::TempDir, PartitionLog) {
        use crate::log::{Store, TimestampType};
        use kafka_protocol::records::Compression;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let log = PartitionLog::open(store, &uuid::Uuid::new_v4(), 0).unwrap();
        if records > 0 {
            let b = crate::log::batch::tests::encode(records, Compression::None);
            log.append(&b, 0, TimestampType::CreateTime, 0).unwrap();
        }
        (dir, log)
    }

    #[test]
    fn a_newer_record_settles_a_pending_isr_change_it_does_not_carry() {
        use crate::log::TimestampType;
        use kafka_protocol::records::Compression;
        // A reassignment [1,2,3] -> [1,2,4]: 4 is adding, 3 removing.
        let (_d, log) = leader_log(10);
        let r = Replica::default();
        r.apply(1, Some((&rec(&[1, 2, 3, 4], &[1, 2, 3], 1, 0), 1)), 0, 10);
        for f in [2, 3] {
            r.follower_fetched(1, &log, f, 10, 100, 1_000).unwrap();
        }
        // 4 catches up: the leader proposes {1,2,3,4} at version 1...
        let (_, change) = r.follower_fetched(1, &log, 4, 10, 100, 1_000).unwrap();
        assert_eq!(change.unwrap().isr, vec![1, 2, 3, 4]);
        // ...and a controller, reacting to the same progress, completes the
        // reassignment at version 3 first; the leader never sees its own.
        r.apply(1, Some((&rec(&[1, 2, 4], &[1, 2, 4], 1, 0), 3)), 100, 10);
        let b = crate::log::batch::tests::encode(5, Compression::None);
        log.append(&b, 0, TimestampType::CreateTime, 0).unwrap();
        for f in [2, 4] {
            r.follower_fetched(1, &log, f, 15, 200, 1_000).unwrap();
        }
        // Not wedged: the high watermark counts the ISR as stored...
        assert_eq!(log.high_watermark(), 15);
        // ...and ISR changes are possible again.
        assert!(r.check_isr(1, &log, 5_000, 1_000).is_some());
    }

    #[test]
    fn a_failed_write_clears_only_its_own_proposal() {
        let (_d, log) = leader_log(10);
        let r = Replica::default();
        r.apply(1, Some((&rec(&[1, 2], &[1], 1, 0), 1)), 0, 10);
        let (_, change) = r.follower_fetched(1, &log, 2, 10, 100, 1_000).unwrap();
        let change = change.unwrap();
        let stale = IsrChange {
            isr: vec![1],
            expected: 0,
        };
        r.isr_change_failed(&stale);
        assert!(r.is_pending(&change));
        r.isr_change_failed(&change);
        assert!(!r.is_pending(&change));
    }

    #[test]
    fn a_follower_joins_only_past_the_leaders_epoch_start() {
        // Node 2 became leader with log end 10; its high watermark is 5 (the
        // old leader acknowledged up to 10). Follower 4 of its ISR has not
        // fetched yet, so the high watermark stays at 5.
        let (_d, log) = leader_log(10);
        log.set_high_watermark(5).unwrap();
        let r = Replica::default();
        r.apply(2, Some((&rec(&[1, 2, 3, 4], &[2, 4], 2, 1), 1)), 0, 10);
        // Follower 3 at 7: past the high watermark, short of the epoch start.
        let (_, change) = r.follower_fetched(2, &log, 3, 7, 100, 1_000).unwrap();
        assert_eq!(change, None);
        // At 10 it may join.
        let (_, change) = r.follower_fetched(2, &log, 3, 10, 200, 1_000).unwrap();
        assert_eq!(change.unwrap().isr, vec![2, 4, 3]);
    }

    #[test]
    fn followers_change_their_log_only_while_following_that_epoch() {
        let r = Replica::default();
        r.apply(2, Some((&rec(&[1, 2], &[1, 2], 1, 3), 1)), 0, 0);
        assert_eq!(r.with_following(3, || "appended"), Some("appended"));
        assert_eq!(r.with_following(2, || "appended"), None);
        r.apply(2, Some((&rec(&[1, 2], &[2], 2, 4), 2)), 0, 0);
        assert_eq!(r.with_following(3, || "appended"), None);
    }

    #[test]
    fn high_watermark_follows_the_isr_and_laggards_leave() {
        use crate::log::{Store, TimestampType};
        use kafka_protocol::records::Compression;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Default::default()).unwrap();
        let log = PartitionLog::open(store, &uuid::Uuid::new_v4(), 0).unwrap();
        let r = Replica::default();
        r.apply(1, Some((&rec(&[1, 2, 3], &[1, 2, 3], 1, 0), 1)), 0, 0);
        let b = crate::log::batch::tests::encode(10, Compression::None);
        log.append(&b, 0, TimestampType::CreateTime, 0).unwrap();
        assert!(!r.leader_appended(1, &log).unwrap());
        assert_eq!(log.high_watermark(), 0);
        // One follower caught up: not enough, the ISR has three.
        let (moved, change) = r.follower_fetched(1, &log, 2, 10, 100, 1_000).unwrap();
        assert!(!moved && change.is_none());
        let (moved, _) = r.follower_fetched(1, &log, 3, 4, 100, 1_000).unwrap();
        assert!(moved);
        assert_eq!(log.high_watermark(), 4);
        // Follower 3 stops fetching: after the lag limit it is proposed out.
        assert_eq!(r.check_isr(1, &log, 900, 1_000), None);
        r.follower_fetched(1, &log, 2, 10, 1_500, 1_000).unwrap();
        let out = r.check_isr(1, &log, 1_500, 1_000).unwrap();
        assert_eq!(
            out,
            IsrChange {
                isr: vec![1, 2],
                expected: 1
            }
        );
        // Only one proposal at a time; once stored, the HW counts 1 and 2.
        assert_eq!(r.check_isr(1, &log, 1_600, 1_000), None);
        r.apply(1, Some((&rec(&[1, 2, 3], &[1, 2], 1, 0), 2)), 1_600, 0);
        r.leader_appended(1, &log).unwrap();
        assert_eq!(log.high_watermark(), 10);
        // Follower 3 comes back and catches up to the HW: proposed in.
        let (_, back) = r.follower_fetched(1, &log, 3, 10, 1_700, 1_000).unwrap();
        assert_eq!(
            back,
            Some(IsrChange {
                isr: vec![1, 2, 3],
                expected: 2
            })
        );
    }
}
