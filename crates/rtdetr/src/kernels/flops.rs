//! A running count of the floating-point operations of the heavy ops (convolutions,
//! linear layers, attention products), for `rtdetr bench`'s GFLOP/s, and an optional
//! per-operation time profile (`rtdetr bench --profile`). Multiply-adds count as two
//! operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static FLOPS: AtomicU64 = AtomicU64::new(0);
static PROFILING: AtomicBool = AtomicBool::new(false);
static PROFILE: Mutex<Option<HashMap<String, OpStat>>> = Mutex::new(None);

pub(crate) fn add(n: u64) {
    FLOPS.fetch_add(n, Ordering::Relaxed);
}

/// Operations counted since the process started (all threads).
pub fn total() -> u64 {
    FLOPS.load(Ordering::Relaxed)
}

/// Time and work of one kind of operation (same layer shape and kernel path).
#[derive(Debug, Clone, Default)]
pub struct OpStat {
    pub name: String,
    pub calls: u64,
    pub time: Duration,
    pub flops: u64,
}

/// Turns the per-operation profile on or off (off by default: it costs a clock read
/// per operation and a lock per record).
pub fn set_profiling(on: bool) {
    PROFILING.store(on, Ordering::Relaxed);
}

/// A started measurement, when profiling is on.
pub(crate) fn start() -> Option<Instant> {
    PROFILING.load(Ordering::Relaxed).then(Instant::now)
}

/// Records an operation measured from `started` (a no-op when profiling was off).
pub(crate) fn record(started: Option<Instant>, name: impl FnOnce() -> String, flops: u64) {
    let Some(t0) = started else { return };
    let time = t0.elapsed();
    let name = name();
    let mut guard = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    let stat = guard
        .get_or_insert_with(HashMap::new)
        .entry(name.clone())
        .or_insert_with(|| OpStat { name, ..Default::default() });
    stat.calls += 1;
    stat.time += time;
    stat.flops += flops;
}

/// The profile recorded so far, most time first; clears it.
pub fn take_profile() -> Vec<OpStat> {
    let mut guard = PROFILE.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<OpStat> = guard.take().unwrap_or_default().into_values().collect();
    v.sort_by_key(|s| std::cmp::Reverse(s.time));
    v
}
