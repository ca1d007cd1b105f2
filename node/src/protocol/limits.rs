//! What one client may take from a node: connections (in all and per
//! address) and memory for requests in flight and fetch answers being built
//! (Kafka's `max.connections`, `max.connections.per.ip`,
//! `queued.max.request.bytes`).
//!
//! Memory is a pool of bytes. A connection reserves a frame's size before it
//! reads the frame's body and keeps it until the answer is written; a fetch
//! reserves room for its answer before it reads from the log, and takes
//! less (a smaller answer) when the pool is short. When the pool is empty,
//! connections wait instead of allocating: the node's memory for requests
//! never exceeds the pool, however many clients send their largest requests
//! at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes of the pool held by one request or answer; given back on drop.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Gives back all but `keep` bytes.
    pub fn shrink_to(&mut self, keep: usize) {
        let have = self.bytes();
        if keep < have {
            if let Some(p) = self.permit.as_mut() {
                drop(p.split(have - keep));
            }
        }
    }

    /// Holds `other`'s bytes too.
    pub fn absorb(&mut self, mut other: Reservation) {
        match (self.permit.as_mut(), other.permit.take()) {
            (Some(p), Some(o)) => p.merge(o),
            (None, o) => self.permit = o,
            (Some(_), None) => {}
        }
    }
}

/// The memory pool (`queued.max.request.bytes`).
pub struct MemoryPool {
    sem: Arc<Semaphore>,
    capacity: usize,
}

impl MemoryPool {
    pub fn new(capacity: usize) -> MemoryPool {
        let capacity = capacity.clamp(1, Semaphore::MAX_PERMITS);
        MemoryPool {
            sem: Arc::new(Semaphore::new(capacity)),
            capacity,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes not held by anyone now.
    pub fn available(&self) -> usize {
        self.sem.available_permits()
    }

    /// Waits until `bytes` (at most the whole pool) are free and holds them.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        let n = bytes.min(self.capacity);
        let permit = match u32::try_from(n) {
            Ok(0) => None,
            Ok(n) => self.sem.clone().acquire_many_owned(n).await.ok(),
            // Larger than a u32: in steps (the pool is this large).
            Err(_) => {
                let mut held: Option<OwnedSemaphorePermit> = None;
                let mut left = n;
                while left > 0 {
                    let step = left.min(u32::MAX as usize);
                    let p = self.sem.clone().acquire_many_owned(step as u32).await.ok();
                    match (&mut held, p) {
                        (Some(h), Some(p)) => h.merge(p),
                        (None, p) => held = p,
                        _ => {}
                    }
                    left -= step;
                }
                held
            }
        };
        Reservation { permit }
    }

    /// Holds up to `want` bytes: as many as are free now when that is at
    /// least `at_least`, else waits for `at_least`.
    pub async fn reserve_up_to(&self, want: usize, at_least: usize) -> Reservation {
        let at_least = at_least.min(want);
        let free = self.available();
        if free >= at_least {
            let n = want.min(free).min(u32::MAX as usize);
            if let Ok(p) = self.sem.clone().try_acquire_many_owned(n as u32) {
                return Reservation { permit: Some(p) };
            }
        }
        self.reserve(at_least).await
    }
}

/// Open connections, in all and per client address.
pub struct Connections {
    max: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection; counted until dropped.
pub struct Admitted {
    conns: Arc<Connections>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.conns.open.lock().expect("connections lock");
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `max.connections` reached.
    Total,
    /// `max.connections.per.ip` reached for this address.
    PerIp,
}

impl Connections {
    pub fn new(max: usize, max_per_ip: usize) -> Arc<Connections> {
        Arc::new(Connections {
            max,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// Counts a new connection from `ip`, or says why it may not open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let mut open = self.open.lock().expect("connections lock");
        if open.0 >= self.max {
            return Err(Refused::Total);
        }
        let from_ip = open.1.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        open.0 += 1;
        open.1.insert(ip, from_ip + 1);
        Ok(Admitted {
            conns: self.clone(),
            ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pool_never_hands_out_more_than_it_has() {
        let pool = MemoryPool::new(100);
        let mut a = pool.reserve(60).await;
        assert_eq!(pool.available(), 40);
        // Short of room: a partial grant when at least the minimum is free.
        let b = pool.reserve_up_to(80, 10).await;
        assert_eq!(b.bytes(), 40);
        assert_eq!(pool.available(), 0);
        // Waiting for room: the grant comes once bytes are given back.
        let waiter = tokio::spawn({
            let sem = pool.sem.clone();
            async move { sem.acquire_many_owned(30).await.unwrap().num_permits() }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        a.shrink_to(20);
        assert_eq!(waiter.await.unwrap(), 30);
        drop(b);
        assert_eq!(pool.available(), 100 - 20);
        // A request larger than the pool is held to the pool's size.
        drop(a);
        assert_eq!(pool.reserve(1_000).await.bytes(), 100);
    }

    #[test]
    fn connections_are_capped_in_all_and_per_address() {
        let c = Connections::new(3, 2);
        let ip1: IpAddr = "127.0.0.1".parse().unwrap();
        let ip2: IpAddr = "127.0.0.2".parse().unwrap();
        let a = c.admit(ip1).unwrap();
        let _b = c.admit(ip1).unwrap();
        assert_eq!(c.admit(ip1).err(), Some(Refused::PerIp));
        let _d = c.admit(ip2).unwrap();
        assert_eq!(c.admit(ip2).err(), Some(Refused::Total));
        drop(a);
        assert!(c.admit(ip1).is_ok());
    }
}
