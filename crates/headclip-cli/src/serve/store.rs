//! Overlay PNGs kept in memory for `GET /v1/overlays/{id}.png`: bounded in count and bytes,
//! each kept for a fixed time (oldest dropped first when full).

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;

struct Entry {
    created: Instant,
    png: Bytes,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Ids in insertion order (= expiry order, since the TTL is the same for all).
    order: VecDeque<String>,
    bytes: usize,
}

pub struct OverlayStore {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
    counter: AtomicU64,
}

impl OverlayStore {
    pub fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            ttl,
            max_entries,
            max_bytes,
            inner: Mutex::new(Inner::default()),
            counter: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An unguessable id: 128 bits from SipHash under keys the standard library draws from the
    /// operating system's random source, over a counter and the clock.
    fn new_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let mut id = String::with_capacity(32);
        for half in 0u8..2 {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(n);
            h.write_u128(nanos);
            h.write_u8(half);
            id.push_str(&format!("{:016x}", h.finish()));
        }
        id
    }

    /// Keeps `png` and returns its id; `None` when a single overlay is larger than the store.
    pub fn insert(&self, png: Vec<u8>) -> Option<String> {
        if png.len() > self.max_bytes || self.max_entries == 0 {
            return None;
        }
        let id = self.new_id();
        let now = Instant::now();
        let mut inner = self.lock();
        Self::expire(&mut inner, now, self.ttl);
        while inner.order.len() >= self.max_entries || inner.bytes + png.len() > self.max_bytes {
            match inner.order.pop_front() {
                Some(old) => {
                    if let Some(e) = inner.entries.remove(&old) {
                        inner.bytes -= e.png.len();
                    }
                }
                None => break,
            }
        }
        inner.bytes += png.len();
        inner.entries.insert(
            id.clone(),
            Entry {
                created: now,
                png: Bytes::from(png),
            },
        );
        inner.order.push_back(id.clone());
        Some(id)
    }

    pub fn get(&self, id: &str) -> Option<Bytes> {
        let now = Instant::now();
        let mut inner = self.lock();
        Self::expire(&mut inner, now, self.ttl);
        inner.entries.get(id).map(|e| e.png.clone())
    }

    fn expire(inner: &mut Inner, now: Instant, ttl: Duration) {
        while let Some(id) = inner.order.front() {
            let expired =
                !matches!(inner.entries.get(id), Some(e) if now.duration_since(e.created) < ttl);
            if !expired {
                break;
            }
            let id = inner.order.pop_front().expect("front exists");
            if let Some(e) = inner.entries.remove(&id) {
                inner.bytes -= e.png.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count_bytes_and_time() {
        let store = OverlayStore::new(Duration::from_secs(60), 2, 10);
        let a = store.insert(vec![1; 4]).unwrap();
        let b = store.insert(vec![2; 4]).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        let c = store.insert(vec![3; 4]).unwrap();
        assert!(store.get(&a).is_none(), "oldest dropped at the count limit");
        assert_eq!(store.get(&b).unwrap().as_ref(), &[2; 4]);
        let d = store.insert(vec![4; 8]).unwrap();
        assert!(
            store.get(&b).is_none() && store.get(&c).is_none(),
            "dropped for bytes"
        );
        assert!(store.get(&d).is_some());
        assert!(store.insert(vec![0; 11]).is_none());

        let short = OverlayStore::new(Duration::from_millis(1), 4, 100);
        let e = short.insert(vec![1]).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(short.get(&e).is_none(), "expired");
    }
}
