//! Handle tables: the `fh` values handed to the kernel.
//!
//! File and directory handles live in separate tables, so a directory handle
//! sent where a file handle is expected (or a forged number) is simply not
//! found: EBADF. Handle numbers come from one process-wide counter, so no
//! number is ever valid in two tables, and are never reused. One std mutex
//! per table, never held across `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The next handle number, shared by every table.
static NEXT_FH: AtomicU64 = AtomicU64::new(1);

/// A table of handles of one type.
#[derive(Debug)]
pub struct HandleTable<T> {
    map: Mutex<HashMap<u64, Arc<T>>>,
}

impl<T> Default for HandleTable<T> {
    fn default() -> Self {
        HandleTable { map: Mutex::new(HashMap::new()) }
    }
}

impl<T> HandleTable<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<T>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, v: T) -> u64 {
        let fh = NEXT_FH.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(fh, Arc::new(v));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<T>> {
        self.lock().get(&fh).cloned()
    }

    pub fn remove(&self, fh: u64) -> Option<Arc<T>> {
        self.lock().remove(&fh)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drop every handle (session end).
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_unique_and_forgeable_ones_miss() {
        let t: HandleTable<u32> = HandleTable::default();
        let a = t.insert(1);
        let b = t.insert(2);
        assert_ne!(a, b);
        assert_eq!(*t.get(a).unwrap(), 1);
        assert!(t.get(12345).is_none());
        assert_eq!(*t.remove(a).unwrap(), 1);
        assert!(t.get(a).is_none());
        let c = t.insert(3);
        assert_ne!(c, a, "numbers are not reused");
        let other: HandleTable<u8> = HandleTable::default();
        let d = other.insert(0);
        assert!(t.get(d).is_none(), "a number from one table is not valid in another");
    }
}
