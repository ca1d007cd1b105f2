//! The cluster glue: what ties a node to the cluster's metadata.
//!
//! - the node's lease, renewed every fifth of its duration, and the
//!   self-fencing that stops a node leading before its lease can lapse;
//!   on SIGTERM the lease says the node is leaving and it waits until its
//!   leaderships have moved (controlled shutdown, [`hand_over`]);
//! - the sync loop: reads the metadata from [`Coordination`] when it changes,
//!   has the broker apply it (topics and replica roles), tells the group
//!   coordinator which offsets partitions it now leads, and points the
//!   follower fetch sessions at the right leaders;
//! - the leader's side of the ISR: follower progress from replication
//!   fetches, periodic shrink checks, and storing ISR changes by
//!   compare-and-swap;
//!
//! The controller (elections, the offsets topic) is in `sluice_coord`: one
//! process runs it for the whole cluster (in process in `sluice dev`, the
//! operator on Kubernetes).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::broker::{mono_ms, now_ms, Broker};
use crate::coord::{CoordError, NodeInfo, PartitionKey, PartitionRecord, View};
use crate::group::Coordinator;
use crate::log::PartitionLog;
use crate::replication::replica::{IsrChange, Role};
use crate::replication::throttle::Throttle;
use crate::replication::{follower, FetchError, Following, LeaderLogs};

/// Renews this node's lease forever. Each success extends how long the node
/// may lead (see [`Broker::lease_renewed`]).
pub async fn run_lease(broker: Arc<Broker>, mut info: NodeInfo) {
    let duration = broker.config.lease_duration_ms;
    let every = Duration::from_millis((duration / 5).max(10) as u64);
    // When this node renewed after a gap in its lease, until it may lead
    // again.
    let mut back_since: Option<i64> = None;
    let mut leaving = broker.leaving();
    loop {
        // Data kept for topics the metadata lost is announced, so a topic of
        // that name declared again takes its old id.
        info.orphans = broker.orphans();
        info.leaving = *leaving.borrow_and_update();
        let sent = mono_ms();
        match broker.coord.renew_node(&info, now_ms(), duration).await {
            Ok(()) if broker.fenced() => {
                // Back after a gap: leadership may have moved meanwhile.
                // Lead again only once a view read after this renewal has
                // been applied (never on one read before it), so roles,
                // metadata and producer state are current first.
                let since = *back_since.get_or_insert(sent);
                if broker.view_read_since(since) {
                    broker.lease_renewed(sent);
                    back_since = None;
                } else {
                    tracing::info!("lease renewed after a gap; waiting for fresh metadata");
                    let _ = tokio::time::timeout(every, broker.next_view()).await;
                    continue;
                }
            }
            Ok(()) => {
                back_since = None;
                broker.lease_renewed(sent);
            }
            Err(e) => {
                broker.metrics.lease_renewal_failures.inc();
                tracing::warn!(error = %e, "lease renewal failed");
            }
        }
        // A controlled shutdown is announced at once, not a renewal later.
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = leaving.changed() => {}
        }
    }
}

/// A controlled shutdown: announces in the lease that this node is leaving
/// and waits until the controller has moved every leadership it held to
/// another in-sync replica (so clients move without a failed request), or
/// until `within` has passed. Returns how many partitions it still leads.
pub async fn hand_over(broker: &Broker, within: Duration) -> usize {
    broker.leave();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let led = broker.partitions_led();
        if led == 0 || tokio::time::Instant::now() >= deadline {
            return led;
        }
        let _ = tokio::time::timeout_at(
            deadline.min(tokio::time::Instant::now() + Duration::from_millis(200)),
            broker.next_view(),
        )
        .await;
    }
}

/// The follower fetch sessions of this node, one per leader node.
pub struct Fetchers {
    sessions: HashMap<(i32, String), watch::Sender<Vec<Following>>>,
    throttle: Arc<Throttle>,
}

impl Fetchers {
    pub fn new(throttle: Throttle) -> Fetchers {
        Fetchers {
            sessions: HashMap::new(),
            throttle: Arc::new(throttle),
        }
    }

    /// Points sessions at the leaders of the partitions this node follows:
    /// starts sessions for new leaders, updates the partitions of existing
    /// ones, and ends sessions nobody needs (dropping the sender ends them).
    pub fn update(&mut self, broker: &Broker) {
        let view = broker.view();
        let mut want: HashMap<(i32, String), Vec<Following>> = HashMap::new();
        for t in broker.topics() {
            for (i, p) in t.partitions.iter().enumerate() {
                let Role::Follower { leader, epoch } = p.replica.role() else {
                    continue;
                };
                let Some(node) = view.node(leader) else {
                    continue;
                };
                let me = broker.node_id();
                // Only while catching up: once in the ISR a replica holds
                // back acks=all and the high watermark if it waits.
                let throttled = view
                    .record(&t.record.name, i as i32)
                    .is_some_and(|r| r.value.adding.contains(&me) && !r.value.isr.contains(&me));
                want.entry((leader, node.info.replication_addr.clone()))
                    .or_default()
                    .push(Following {
                        topic: t.record.name.clone(),
                        partition: i as i32,
                        leader_epoch: epoch,
                        log: p.log.clone(),
                        replica: Some(p.replica.clone()),
                        throttled,
                    });
            }
        }
        self.sessions.retain(|k, _| want.contains_key(k));
        for (key, set) in want {
            match self.sessions.get(&key) {
                Some(tx) => {
                    tx.send_if_modified(|cur| {
                        let changed = *cur != set;
                        if changed {
                            *cur = set;
                        }
                        changed
                    });
                }
                None => {
                    tracing::info!(leader = key.0, addr = %key.1, partitions = set.len(), "following a leader");
                    let (tx, rx) = watch::channel(set);
                    tokio::spawn(follower::run(
                        broker.node_id(),
                        key.1.clone(),
                        rx,
                        self.throttle.clone(),
                        broker.node_tls.get().cloned(),
                    ));
                    self.sessions.insert(key, tx);
                }
            }
        }
    }
}

/// The coordinators that follow leadership of their internal topic's
/// partitions.
pub struct Coordinators {
    pub groups: Arc<Coordinator>,
    pub txns: Arc<crate::txn::Coordinator>,
}

/// Reads the metadata, applies it, and tells everyone who cares.
pub async fn refresh(broker: &Arc<Broker>, coordinators: &Coordinators, fetchers: &mut Fetchers) {
    let read_at = mono_ms();
    let view = match View::read(broker.coord.as_ref()).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(error = %e, "reading cluster metadata failed");
            return;
        }
    };
    let b = broker.clone();
    let applied = tokio::task::spawn_blocking(move || b.apply_view(view)).await;
    match applied {
        Ok(Ok(applied)) => {
            broker.view_read(read_at);
            coordinators.groups.leadership_changed(&applied.transitions);
            coordinators.txns.leadership_changed(&applied.transitions);
            for (name, id) in applied.dropped {
                if let Err(e) = broker
                    .coord
                    .topic_dropped(&name, id, broker.node_id())
                    .await
                {
                    tracing::warn!(topic = %name, error = %e, "reporting a deleted topic's data dropped failed; the next view retries");
                }
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "applying cluster metadata failed"),
        Err(e) if e.is_cancelled() => {} // the node is stopping
        Err(e) => tracing::error!(error = %e, "applying cluster metadata panicked"),
    }
    fetchers.update(broker);
}

/// Follows the metadata: on every change, and every half second (leases
/// lapse without anything being written).
pub async fn run_sync(broker: Arc<Broker>, coordinators: Coordinators, mut fetchers: Fetchers) {
    let mut changes = broker.coord.changes();
    loop {
        changes.borrow_and_update();
        refresh(&broker, &coordinators, &mut fetchers).await;
        let _ = tokio::time::timeout(Duration::from_millis(500), changes.changed()).await;
    }
}

/// Stores an ISR change the leader proposed, by compare-and-swap on the
/// record version it was based on.
///
/// - stored: the next view carries it, which settles it;
/// - conflict or gone: it was certainly not stored (the record moved on) and
///   stops being pending; the newer record decides;
/// - any other failure (a timeout, a 5xx): it may or may not have been
///   stored. It stays pending, so the high watermark keeps counting a
///   follower it adds and a follower it removes, and the same write is
///   retried until an answer or a newer record settles it.
async fn store_isr(broker: Arc<Broker>, topic: String, partition: i32, change: IsrChange) {
    let key = PartitionKey::new(&topic, partition);
    let replica = broker
        .topic(&topic)
        .and_then(|t| t.partition(partition).map(|p| p.replica.clone()));
    let Some(replica) = replica else { return };
    let mut backoff = Duration::from_millis(100);
    // Whether an earlier attempt may have been stored.
    let mut uncertain = false;
    loop {
        if !replica.is_pending(&change) {
            return; // a newer record settled it
        }
        let view = broker.view();
        let current = view
            .record(&topic, partition)
            .filter(|r| r.version == change.expected);
        // Only nodes with a live lease may join: a stopped follower's last
        // fetch must not bring it back.
        let joining_alive = current.is_some_and(|c| {
            change
                .isr
                .iter()
                .all(|r| c.value.isr.contains(r) || view.alive(*r))
        });
        let Some(current) = current.filter(|_| joining_alive) else {
            replica.isr_change_failed(&change);
            return;
        };
        let next = PartitionRecord {
            isr: change.isr.clone(),
            ..current.value.clone()
        };
        match broker
            .coord
            .update_partition(&key, next, change.expected)
            .await
        {
            Ok(_) => {
                tracing::info!(topic, partition, isr = ?change.isr, "ISR changed");
                return;
            }
            Err(CoordError::Conflict(_)) | Err(CoordError::NotFound(_)) if uncertain => {
                // The record moved on, perhaps by this very change (an
                // earlier attempt landed): the newer record settles it.
                return;
            }
            Err(CoordError::Conflict(_)) | Err(CoordError::NotFound(_)) => {
                tracing::debug!(
                    topic,
                    partition,
                    "ISR change not stored: the record moved on"
                );
                replica.isr_change_failed(&change);
                return;
            }
            Err(e) => {
                uncertain = true;
                tracing::warn!(topic, partition, error = %e, "ISR change may not have been stored; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// The leader's periodic ISR check: followers that have not caught up for
/// `replica.lag.time.max.ms` leave the ISR. Also refreshes the leadership
/// gauges in `/metrics`.
pub async fn run_isr_checks(broker: Arc<Broker>) {
    let lag = broker.config.replica_lag_time_max_ms;
    let every = Duration::from_millis((lag / 4).clamp(50, 5_000) as u64);
    let me = broker.node_id();
    loop {
        tokio::time::sleep(every).await;
        let fenced = broker.fenced();
        broker.metrics.fenced.set(i64::from(fenced));
        let (mut led, mut under) = (0, 0);
        for t in broker.topics() {
            for p in &t.partitions {
                if let Role::Leader { isr, replicas, .. } = p.replica.role() {
                    led += 1;
                    under += i64::from(isr.len() < replicas.len());
                }
            }
        }
        broker.metrics.partitions_led.set(led);
        broker.metrics.under_replicated_partitions.set(under);
        if fenced {
            continue;
        }
        let now = now_ms();
        for t in broker.topics() {
            for (i, p) in t.partitions.iter().enumerate() {
                if let Some(change) = p.replica.check_isr(me, &p.log, now, lag) {
                    tokio::spawn(store_isr(
                        broker.clone(),
                        t.record.name.clone(),
                        i as i32,
                        change,
                    ));
                }
            }
        }
    }
}

impl LeaderLogs for Broker {
    fn leader_log(
        &self,
        topic: &str,
        partition: i32,
        epoch: i32,
    ) -> Result<Arc<PartitionLog>, FetchError> {
        let p = self
            .topic(topic)
            .and_then(|t| t.partition(partition).cloned())
            .ok_or(FetchError::UnknownPartition)?;
        match p.replica.role() {
            Role::Leader { epoch: e, .. } if e == epoch => Ok(p.log.clone()),
            Role::Leader { epoch: e, .. } if epoch < e => Err(FetchError::FencedLeaderEpoch),
            Role::Leader { .. } => Err(FetchError::UnknownLeaderEpoch),
            _ => Err(FetchError::NotLeader),
        }
    }

    fn follower_fetched(&self, topic: &str, partition: i32, follower: i32, fetch_offset: i64) {
        let Some(p) = self
            .topic(topic)
            .and_then(|t| t.partition(partition).cloned())
        else {
            return;
        };
        match p.replica.follower_fetched(
            self.node_id(),
            &p.log,
            follower,
            fetch_offset,
            now_ms(),
            self.config.replica_lag_time_max_ms,
        ) {
            Ok((_, change)) => {
                // A moved high watermark wakes the partition's waiters by
                // itself (PartitionLog::changed).
                if let Some(change) = change {
                    if let Some(me) = self.me() {
                        tokio::spawn(store_isr(me, topic.to_string(), partition, change));
                    }
                }
            }
            Err(e) => {
                tracing::error!(topic, partition, error = %e, "storing the high watermark failed")
            }
        }
    }

    fn roles_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.next_view()
    }

    fn woke_after(&self, seconds: f64) {
        self.metrics.observe_wake("follower", seconds);
    }
}
