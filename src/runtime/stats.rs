//! Runtime counters, kept per thread and sent in batches.
//!
//! Activations and their shard share a thread, so they count into a
//! thread-local with no synchronisation at all. Every `REPORT_EVERY` the
//! shard takes the counts and sends them to the metrics actor with
//! `try_send`: it never waits on it, and a report that finds its mailbox
//! full is dropped and counted.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use actix::Message;
use troupe_actors::Kind;

/// How often a shard reports.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);
/// Batch sizes kept between two reports; more are summarised by the count.
const MAX_BATCH_SAMPLES: usize = 4096;

/// What one shard counted since its last report, plus its gauges.
#[derive(Debug, Default, Clone, Message)]
#[rtype(result = "()")]
pub struct RuntimeReport {
    pub shard: usize,
    /// Live activations by kind (a gauge).
    pub live: Vec<(&'static str, u64)>,
    /// Messages routed and not yet answered, summed over the shard (a gauge).
    pub mailbox_depth: u64,
    pub activations: HashMap<&'static str, u64>,
    pub passivations: HashMap<&'static str, u64>,
    pub restarts: HashMap<&'static str, u64>,
    pub failures: HashMap<&'static str, u64>,
    pub deadline_drops: HashMap<&'static str, u64>,
    pub abandoned_drops: HashMap<&'static str, u64>,
    /// (kind, message, outcome) -> count.
    pub messages: HashMap<(&'static str, &'static str, &'static str), u64>,
    /// Messages per group commit.
    pub batch_sizes: Vec<u32>,
}

thread_local! {
    static LOCAL: RefCell<RuntimeReport> = RefCell::default();
}

fn bump(f: impl FnOnce(&mut RuntimeReport)) {
    LOCAL.with(|l| f(&mut l.borrow_mut()));
}

pub fn activated(kind: Kind) {
    let kind = kind.as_str();
    bump(|r| *r.activations.entry(kind).or_default() += 1);
}

pub fn passivated(kind: Kind, n: u64) {
    let kind = kind.as_str();
    bump(|r| *r.passivations.entry(kind).or_default() += n);
}

pub fn restarted(kind: Kind) {
    let kind = kind.as_str();
    bump(|r| *r.restarts.entry(kind).or_default() += 1);
}

pub fn failed(kind: Kind) {
    let kind = kind.as_str();
    bump(|r| *r.failures.entry(kind).or_default() += 1);
}

pub fn deadline_dropped(kind: Kind) {
    let kind = kind.as_str();
    bump(|r| *r.deadline_drops.entry(kind).or_default() += 1);
}

pub fn abandoned_dropped(kind: Kind) {
    let kind = kind.as_str();
    bump(|r| *r.abandoned_drops.entry(kind).or_default() += 1);
}

pub fn message(kind: Kind, message: &'static str, outcome: &'static str) {
    let kind = kind.as_str();
    bump(|r| *r.messages.entry((kind, message, outcome)).or_default() += 1);
}

pub fn batch(size: u32) {
    bump(|r| {
        if r.batch_sizes.len() < MAX_BATCH_SAMPLES {
            r.batch_sizes.push(size);
        }
    });
}

/// Takes this thread's counts, leaving zeros.
pub fn take() -> RuntimeReport {
    LOCAL.with(|l| std::mem::take(&mut *l.borrow_mut()))
}
