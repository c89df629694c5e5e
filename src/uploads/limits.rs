//! The bounds on uploads that span requests: bytes stored ([`Quota`]),
//! uploads received at once, overall and per host ([`Admission`]), and one
//! upload at a time per id ([`KeyLocks`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use edgebus_actors::frame::DeviceId;

/// Bytes stored, against `uploads.max_total_bytes`. Each upload counts at
/// least [`Quota::MIN_ACCOUNTED`]: a flood of tiny uploads is bounded by
/// count as well as by bytes (its records and index lines cost too).
#[derive(Debug)]
pub struct Quota {
    used: AtomicU64,
    max: u64,
}

impl Quota {
    pub const MIN_ACCOUNTED: u64 = 4096;

    pub fn new(used: u64, max: u64) -> Self {
        Self {
            used: AtomicU64::new(used),
            max,
        }
    }

    /// What a stored upload of `size` bytes counts for.
    pub fn accounted(size: u64) -> u64 {
        size.max(Self::MIN_ACCOUNTED)
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes, unless that would pass the maximum.
    pub fn reserve(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.max)
            })
            .is_ok()
    }

    /// Gives back `n` reserved bytes (a refused or duplicate body).
    pub fn release(&self, n: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(n))
            });
    }

    /// Bytes found stored after start (a bucket measured late).
    pub fn add(&self, n: u64) {
        self.used.fetch_add(n, Ordering::AcqRel);
    }

    /// A body of `size` bytes was stored: it counts for at least the floor,
    /// even past the maximum (the bytes are on disk already).
    pub fn settle(&self, size: u64) {
        let extra = Self::accounted(size) - size;
        self.used.fetch_add(extra, Ordering::AcqRel);
    }
}

/// Uploads being received: at most `max` at once, `per_host` of them for
/// one host, so one busy host cannot take every place. (A client that
/// names several hosts can; each place is bounded in time by
/// `uploads.max_duration_seconds`.)
#[derive(Debug)]
pub struct Admission {
    max: usize,
    per_host: usize,
    hosts: Mutex<HashMap<DeviceId, usize>>,
}

/// Why an upload was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crowded {
    Instance(usize),
    Host(usize),
}

/// A place among the uploads being received; dropping it frees the place.
#[derive(Debug)]
pub struct Place {
    admission: Arc<Admission>,
    host: DeviceId,
}

impl Admission {
    pub fn new(max: usize, per_host: usize) -> Self {
        Self {
            max,
            per_host,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    pub fn admit(self: &Arc<Self>, host: &DeviceId) -> Result<Place, Crowded> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        let total: usize = hosts.values().sum();
        if total >= self.max {
            return Err(Crowded::Instance(self.max));
        }
        let count = hosts.entry(host.clone()).or_insert(0);
        if *count >= self.per_host {
            return Err(Crowded::Host(self.per_host));
        }
        *count += 1;
        Ok(Place {
            admission: self.clone(),
            host: host.clone(),
        })
    }

    /// Uploads being received now.
    pub fn active(&self) -> usize {
        let hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        hosts.values().sum()
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut hosts = self
            .admission
            .hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = hosts.get_mut(self.host.as_str()) {
            *count -= 1;
            if *count == 0 {
                hosts.remove(self.host.as_str());
            }
        }
    }
}

/// One upload at a time per id: a second upload of the same id waits for
/// the first, then finds its record. Entries exist only while held or
/// awaited, so the map is bounded by the uploads admitted.
#[derive(Debug, Default)]
pub struct KeyLocks {
    keys: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds an id; dropping it lets the next upload of that id go.
pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    pub async fn lock(&self, key: String) -> KeyGuard<'_> {
        let lock = {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            keys.entry(key.clone()).or_default().clone()
        };
        // The guard exists while waiting too: a wait given up (its future
        // dropped) still removes the entry when it is the last one.
        let mut held = KeyGuard {
            locks: self,
            key,
            lock: lock.clone(),
            guard: None,
        };
        held.guard = Some(lock.lock_owned().await);
        held
    }

    /// Ids held or awaited now.
    pub fn held(&self) -> usize {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut keys = self
            .locks
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.guard = None;
        // Clones are made under the map's lock: two references (the map's
        // and ours) mean nobody else holds or awaits this id.
        if Arc::strong_count(&self.lock) == 2 {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quota_refuses_what_would_pass_it_and_counts_a_floor_per_upload() {
        let q = Quota::new(0, 10_000);
        assert!(q.reserve(6_000));
        assert!(!q.reserve(5_000));
        q.release(6_000);
        assert!(q.reserve(10));
        q.settle(10);
        assert_eq!(q.used(), Quota::MIN_ACCOUNTED);
    }

    #[test]
    fn admission_bounds_the_instance_and_each_host() {
        let a = Arc::new(Admission::new(3, 2));
        let h1 = DeviceId::parse("h1").unwrap();
        let h2 = DeviceId::parse("h2").unwrap();
        let p1 = a.admit(&h1).unwrap();
        let _p2 = a.admit(&h1).unwrap();
        assert_eq!(a.admit(&h1).unwrap_err(), Crowded::Host(2));
        let _p3 = a.admit(&h2).unwrap();
        assert_eq!(a.admit(&h2).unwrap_err(), Crowded::Instance(3));
        drop(p1);
        assert!(a.admit(&h1).is_ok());
    }

    #[actix_web::test]
    async fn one_upload_per_id_at_a_time_and_no_entry_left_behind() {
        let locks = Arc::new(KeyLocks::default());
        let first = locks.lock("h/e".into()).await;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let locks = locks.clone();
            actix_web::rt::spawn(async move {
                let _second = locks.lock("h/e".into()).await;
                let _ = tx.send(());
            })
        };
        actix_web::rt::task::yield_now().await;
        assert!(rx.try_recv().is_err(), "the second waits for the first");
        drop(first);
        waiter.await.unwrap();
        assert_eq!(locks.held(), 0);
    }

    #[actix_web::test]
    async fn a_wait_given_up_leaves_no_entry_behind() {
        let locks = KeyLocks::default();
        let first = locks.lock("h/e".into()).await;
        let gave_up = tokio::time::timeout(
            std::time::Duration::from_millis(10),
            locks.lock("h/e".into()),
        )
        .await;
        assert!(gave_up.is_err());
        drop(first);
        assert_eq!(locks.held(), 0);
    }
}
