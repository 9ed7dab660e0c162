//! A running count of the floating-point operations of the heavy ops (convolutions,
//! linear layers, attention products), for `rtdetr bench`'s GFLOP/s. Multiply-adds count
//! as two operations.

use std::sync::atomic::{AtomicU64, Ordering};

static FLOPS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn add(n: u64) {
    FLOPS.fetch_add(n, Ordering::Relaxed);
}

/// Operations counted since the process started (all threads).
pub fn total() -> u64 {
    FLOPS.load(Ordering::Relaxed)
}
