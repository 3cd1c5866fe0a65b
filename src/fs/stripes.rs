//! Striped locks: a fixed set of mutexes picked by a node id, so operations on one object or
//! directory serialize without a lock per node.

use parking_lot::{Mutex, MutexGuard};

const STRIPES: usize = 64;

/// A fixed array of mutexes indexed by node id.
#[derive(Debug)]
pub struct Stripes(Vec<Mutex<()>>);

/// Guards of one or two stripes (two ids may share one).
pub type Guards<'a> = (MutexGuard<'a, ()>, Option<MutexGuard<'a, ()>>);

impl Stripes {
    /// A fresh set.
    pub fn new() -> Stripes {
        Stripes((0..STRIPES).map(|_| Mutex::new(())).collect())
    }

    fn slot(id: u64) -> usize {
        (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as usize % STRIPES
    }

    /// Locks the stripe of `id`.
    pub fn lock(&self, id: u64) -> MutexGuard<'_, ()> {
        self.0[Self::slot(id)].lock()
    }

    /// Locks the stripes of `a` and `b` in a fixed order (once if they share one).
    pub fn lock_two(&self, a: u64, b: u64) -> Guards<'_> {
        let (x, y) = (Self::slot(a), Self::slot(b));
        if x == y {
            return (self.0[x].lock(), None);
        }
        let (lo, hi) = (x.min(y), x.max(y));
        let first = self.0[lo].lock();
        (first, Some(self.0[hi].lock()))
    }
}

impl Default for Stripes {
    fn default() -> Self {
        Stripes::new()
    }
}
