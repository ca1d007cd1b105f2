//! Leader election through a lock ([`LockRecord`]), the way client-go's
//! `leaderelection` uses a `Lease`: the holder renews it every
//! `renew_every_ms`; a candidate takes it over once it has seen the same
//! version of it, unrenewed, for a whole `duration_ms` on its own monotonic
//! clock (never by comparing its clock with the holder's). The holder
//! counts itself leader only until `renew_deadline` of a duration after the
//! renewal it last sent, well before any candidate can take over, and
//! everything the controller writes is a compare-and-swap, so two leaders
//! for a moment still change nothing twice.
//!
//! [`decide`] is the pure rule; [`run`] drives it against a backend.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::{mono_ms, CResult, CoordError, Coordination, LockRecord, Version, Versioned};

#[derive(Debug, Clone)]
pub struct ElectorConfig {
    /// The lock's name (`<cluster>-controller`).
    pub name: String,
    /// This candidate (an operator pod's name, `node-<id>`).
    pub identity: String,
    pub duration_ms: i64,
    pub renew_every_ms: i64,
}

impl ElectorConfig {
    /// How long after sending a renewal the holder may act on it: two
    /// thirds of a duration (client-go's default renew deadline is 10 s of
    /// a 15 s lease).
    pub fn renew_deadline_ms(&self) -> i64 {
        self.duration_ms * 2 / 3
    }
}

/// What a candidate does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nobody ever held it: take it.
    Create(LockRecord),
    /// Renew it, or take it over (lapsed), if it is still at the version.
    Write(LockRecord, Version),
    /// Someone else holds it; look again later.
    Wait,
}

/// When this candidate first saw the lock's current version (its own
/// monotonic clock).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sighting {
    version: Option<Version>,
    since_mono_ms: i64,
}

/// Decides the next step from the lock as read now.
pub fn decide(
    cfg: &ElectorConfig,
    current: Option<&Versioned<LockRecord>>,
    seen: &mut Sighting,
    now_mono_ms: i64,
    now_wall_ms: i64,
) -> Step {
    let mine = |transitions| LockRecord {
        holder: cfg.identity.clone(),
        duration_ms: cfg.duration_ms,
        renewed_ms: now_wall_ms,
        transitions,
    };
    let Some(cur) = current else {
        return Step::Create(mine(0));
    };
    if cur.value.holder == cfg.identity {
        return Step::Write(mine(cur.value.transitions), cur.version);
    }
    if seen.version != Some(cur.version) {
        *seen = Sighting {
            version: Some(cur.version),
            since_mono_ms: now_mono_ms,
        };
    }
    // An empty holder is a lock given up on purpose.
    let lapsed =
        cur.value.holder.is_empty() || now_mono_ms >= seen.since_mono_ms + cur.value.duration_ms;
    if lapsed {
        Step::Write(mine(cur.value.transitions + 1), cur.version)
    } else {
        Step::Wait
    }
}

/// What the elector needs of a backend: the lock, read and written.
/// Every [`Coordination`] has it.
#[async_trait::async_trait]
pub trait Locks: Send + Sync + 'static {
    async fn read_lock(&self, name: &str) -> CResult<Option<Versioned<LockRecord>>>;
    async fn write_lock(
        &self,
        name: &str,
        record: LockRecord,
        expected: Option<Version>,
    ) -> CResult<Version>;
}

#[async_trait::async_trait]
impl<T: Coordination + ?Sized> Locks for T {
    async fn read_lock(&self, name: &str) -> CResult<Option<Versioned<LockRecord>>> {
        self.lock(name).await
    }
    async fn write_lock(
        &self,
        name: &str,
        record: LockRecord,
        expected: Option<Version>,
    ) -> CResult<Version> {
        self.put_lock(name, record, expected).await
    }
}

/// Campaigns for the lock forever, saying on `leading` whether this
/// candidate leads now.
pub async fn run<C: Locks + ?Sized>(
    coord: Arc<C>,
    cfg: ElectorConfig,
    leading: watch::Sender<bool>,
) {
    let mut seen = Sighting::default();
    // Until when the last successful write lets this candidate lead.
    let mut lead_until: Option<i64> = None;
    loop {
        let sent = mono_ms();
        // A backend call that hangs must not keep a leader leading past
        // its deadline: the round (read, then write) gets only the time
        // that is left of it, or a renew deadline when not leading.
        let budget = match lead_until {
            Some(t) => (t - sent).max(1),
            None => cfg.renew_deadline_ms(),
        };
        let round = async {
            // A read that fails changes nothing: the deadline decides.
            let current = coord.read_lock(&cfg.name).await?;
            // A takeover counts from when the lock was seen, after the
            // read returned (never from before it was sent).
            let step = decide(&cfg, current.as_ref(), &mut seen, mono_ms(), now_wall_ms());
            match step {
                Step::Create(r) => coord.write_lock(&cfg.name, r, None).await.map(Some),
                Step::Write(r, v) => coord.write_lock(&cfg.name, r, Some(v)).await.map(Some),
                Step::Wait => Ok(None),
            }
        };
        let wrote = tokio::time::timeout(Duration::from_millis(budget as u64), round)
            .await
            .unwrap_or_else(|_| {
                Err(CoordError::Backend(format!(
                    "no answer from the backend within {budget} ms"
                )))
            });
        match wrote {
            Ok(Some(_)) => {
                if lead_until.is_none() {
                    tracing::info!(lock = %cfg.name, identity = %cfg.identity, "leading");
                }
                lead_until = Some(sent + cfg.renew_deadline_ms());
            }
            Ok(None) => lead_until = None,
            Err(CoordError::Conflict(_) | CoordError::AlreadyExists(_)) => lead_until = None,
            Err(e) => tracing::warn!(lock = %cfg.name, error = %e, "writing the lock failed"),
        }
        if lead_until.is_some_and(|t| mono_ms() >= t) {
            lead_until = None;
        }
        let now_leading = lead_until.is_some();
        if *leading.borrow() && !now_leading {
            tracing::warn!(lock = %cfg.name, identity = %cfg.identity, "no longer leading");
        }
        leading.send_if_modified(|l| std::mem::replace(l, now_leading) != now_leading);
        // Wake in time to stop leading at the deadline when renewals fail.
        let wait = match lead_until {
            Some(t) => (t - mono_ms()).clamp(0, cfg.renew_every_ms),
            None => cfg.renew_every_ms,
        };
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        if lead_until.is_some_and(|t| mono_ms() >= t) {
            lead_until = None;
            leading.send_if_modified(|l| std::mem::replace(l, false));
        }
    }
}

/// Runs `work` while `leading` says so: started when leadership is won,
/// dropped (cancelled) the moment it is lost, started again when won again.
pub async fn while_leading<F, Fut>(mut leading: watch::Receiver<bool>, work: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = ()>,
{
    loop {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
        }
        let lost = async {
            loop {
                if leading.changed().await.is_err() || !*leading.borrow() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = work() => {}
            _ = lost => {}
        }
    }
}

fn now_wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemory;

    fn cfg(me: &str) -> ElectorConfig {
        ElectorConfig {
            name: "c-controller".into(),
            identity: me.into(),
            duration_ms: 3000,
            renew_every_ms: 100,
        }
    }

    fn held(by: &str, version: Version) -> Versioned<LockRecord> {
        Versioned {
            value: LockRecord {
                holder: by.into(),
                duration_ms: 3000,
                renewed_ms: 0,
                transitions: 2,
            },
            version,
        }
    }

    #[test]
    fn a_candidate_takes_over_only_after_a_whole_unrenewed_duration_on_its_clock() {
        let c = cfg("b");
        let mut seen = Sighting::default();
        // First sight at t=1000: wait, however old the holder's clock says it is.
        assert_eq!(
            decide(&c, Some(&held("a", 7)), &mut seen, 1000, 0),
            Step::Wait
        );
        assert_eq!(
            decide(&c, Some(&held("a", 7)), &mut seen, 3999, 0),
            Step::Wait
        );
        // Renewed (a new version) at 3500: the count starts again.
        assert_eq!(
            decide(&c, Some(&held("a", 8)), &mut seen, 3500, 0),
            Step::Wait
        );
        assert_eq!(
            decide(&c, Some(&held("a", 8)), &mut seen, 6499, 0),
            Step::Wait
        );
        match decide(&c, Some(&held("a", 8)), &mut seen, 6500, 42) {
            Step::Write(r, 8) => {
                assert_eq!(
                    (r.holder.as_str(), r.transitions, r.renewed_ms),
                    ("b", 3, 42)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_holder_renews_and_nobody_holding_means_take_it() {
        let c = cfg("a");
        let mut seen = Sighting::default();
        assert!(matches!(decide(&c, None, &mut seen, 0, 0), Step::Create(r) if r.transitions == 0));
        assert!(matches!(
            decide(&c, Some(&held("a", 9)), &mut seen, 0, 0),
            Step::Write(r, 9) if r.transitions == 2
        ));
        assert!(matches!(
            decide(&cfg("b"), Some(&held("", 9)), &mut seen, 0, 0),
            Step::Write(r, 9) if r.holder == "b"
        ));
    }

    /// A backend whose lock calls hang (an API server that accepts the
    /// connection and never answers) once `hang` is set.
    struct Hanging {
        inner: InMemory,
        hang: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Locks for Hanging {
        async fn read_lock(&self, name: &str) -> CResult<Option<Versioned<LockRecord>>> {
            if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.inner.lock(name).await
        }
        async fn write_lock(
            &self,
            name: &str,
            record: LockRecord,
            expected: Option<Version>,
        ) -> CResult<Version> {
            if self.hang.load(std::sync::atomic::Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            self.inner.put_lock(name, record, expected).await
        }
    }

    #[tokio::test]
    async fn a_leader_whose_backend_stops_answering_steps_down_before_anyone_could_take_over() {
        let coord = Arc::new(Hanging {
            inner: InMemory::new(),
            hang: false.into(),
        });
        let (tx, mut rx) = watch::channel(false);
        let a = tokio::spawn(run(coord.clone(), cfg("a"), tx));
        rx.wait_for(|l| *l).await.unwrap();
        let last_renewal = mono_ms();
        coord.hang.store(true, std::sync::atomic::Ordering::SeqCst);
        rx.wait_for(|l| !*l).await.unwrap();
        // Another candidate counts a whole duration (3000 ms) from the
        // last renewal it saw; this one stopped at its renew deadline.
        let led_for = mono_ms() - last_renewal;
        assert!(
            led_for < 3000,
            "still leading {led_for} ms after the last renewal"
        );
        a.abort();
    }

    #[tokio::test]
    async fn one_leader_at_a_time_and_the_standby_takes_over_when_it_stops() {
        let coord: Arc<dyn Coordination> = Arc::new(InMemory::new());
        let (a_tx, mut a_rx) = watch::channel(false);
        let (b_tx, mut b_rx) = watch::channel(false);
        let a = tokio::spawn(run(coord.clone(), cfg("a"), a_tx));
        a_rx.wait_for(|l| *l).await.unwrap();
        let b = tokio::spawn(run(coord.clone(), cfg("b"), b_tx));
        // b never leads while a renews (here for a lease duration and more).
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert!(*a_rx.borrow() && !*b_rx.borrow());
        a.abort();
        let stopped = mono_ms();
        b_rx.wait_for(|l| *l).await.unwrap();
        assert!(
            mono_ms() - stopped >= 3000 - 100,
            "b took over before a could lapse"
        );
        let lock = coord.lock("c-controller").await.unwrap().unwrap();
        assert_eq!(
            (lock.value.holder.as_str(), lock.value.transitions),
            ("b", 1)
        );
        b.abort();
    }
}
