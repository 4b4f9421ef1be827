//! One instance per Redis prefix: the instance lease.
//!
//! Until troupe runs as a cluster, two instances on one Redis and prefix
//! would each keep their own activation of the same actor: one serves a
//! stale read of what the other acknowledged, and concurrent writers turn
//! into version conflicts. So an instance serves only while it holds the
//! prefix's lease, a key (`<prefix>:instance`) naming it with an expiry
//! (`store.redis.lease_ms`), renewed a third of that apart:
//!
//! - A second instance finds the lease held, stays not ready and answers
//!   503 to everything, saying what to do; it takes over when the first
//!   one stops (its lease is deleted) or dies (its lease expires).
//! - Every commit script checks that the lease names this instance, so an
//!   instance frozen past its lease (a pause, SIGSTOP) writes nothing
//!   once it wakes, whoever holds the lease then.
//! - Each acquisition from an empty key counts an epoch. An instance that
//!   finds the epoch moved past its own while it was not renewing knows
//!   another instance served in between: its activations may be stale, so
//!   it serves nothing more until it is restarted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::StoreError;

/// Acquires or renews. KEYS: the lease, its epoch counter; ARGV: this
/// instance's id, the lease in ms. Returns `{'held', epoch}` or
/// `{'other', holder}`.
pub(super) const ACQUIRE: &str = r"
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {'held', redis.call('GET', KEYS[2]) or '0'}
end
if held then return {'other', held} end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {'held', tostring(epoch)}
";

/// Deletes the lease if it is this instance's. KEYS: the lease; ARGV: the id.
pub(super) const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// What this instance knows of its lease.
pub(super) struct Lease {
    /// This instance's id, as the lease key holds it.
    pub(super) id: String,
    /// The lease's length in ms, set when it is enabled.
    ttl_ms: AtomicU64,
    /// Whether the lease is kept at all (the service keeps it; a store
    /// opened by a tool or a test may not).
    enabled: AtomicBool,
    origin: Instant,
    /// Until when (ms after `origin`) the lease is surely ours; 0: never held.
    until_ms: AtomicU64,
    /// The epoch of this instance's acquisition; 0 before the first.
    epoch: AtomicU64,
    /// Another instance served after this one held the lease.
    lost: AtomicBool,
    /// Who else held the lease when last asked.
    other: Mutex<Option<String>>,
    /// Why the last attempt got no answer, until one answers.
    failure: Mutex<Option<String>>,
    prefix: String,
}

/// What one acquisition attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    Held,
    /// Another instance holds it.
    Other(String),
    /// Another instance held it since this one did: stopped for good.
    Lost,
}

impl Lease {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            id: format!("{} pid {}", uuid::Uuid::new_v4(), std::process::id()),
            ttl_ms: AtomicU64::new(0),
            enabled: AtomicBool::new(false),
            origin: Instant::now(),
            until_ms: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            lost: AtomicBool::new(false),
            other: Mutex::new(None),
            failure: Mutex::new(None),
            prefix: prefix.to_owned(),
        }
    }

    pub(super) fn enable(&self, ttl: Duration) {
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.ttl_ms.store(ttl, Ordering::Release);
        self.enabled.store(true, Ordering::Release);
    }

    /// The lease's length in ms.
    pub(super) fn ttl_ms(&self) -> u64 {
        self.ttl_ms.load(Ordering::Acquire)
    }

    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The id a commit script checks the lease against; empty when no
    /// lease is kept.
    pub(super) fn fence(&self) -> &str {
        if self.enabled() {
            &self.id
        } else {
            ""
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Records an answer to an attempt sent at `sent` (ms after origin):
    /// a held lease is surely ours until `sent + ttl`.
    pub(super) fn answered(&self, sent: u64, answer: (String, String)) -> LeaseState {
        if self.lost.load(Ordering::Acquire) {
            return LeaseState::Lost;
        }
        if let Ok(mut failure) = self.failure.lock() {
            *failure = None;
        }
        let (what, value) = answer;
        if what != "held" {
            // Whatever this instance believed, another holds it now.
            self.until_ms.store(0, Ordering::Release);
            if let Ok(mut other) = self.other.lock() {
                *other = Some(value.clone());
            }
            return LeaseState::Other(value);
        }
        if let Ok(mut other) = self.other.lock() {
            *other = None;
        }
        let epoch: u64 = value.parse().unwrap_or(0);
        let mine = self.epoch.load(Ordering::Acquire);
        // A renewal answers the current epoch; a new acquisition after this
        // instance's own lease lapsed, the next one. Anything else: another
        // instance acquired in between, or Redis lost or went back on what
        // it held (a restart without persistence, a restored backup), and
        // what this instance holds in memory may no longer be Redis's.
        if mine != 0 && epoch != mine && epoch != mine + 1 {
            self.lost.store(true, Ordering::Release);
            self.until_ms.store(0, Ordering::Release);
            return LeaseState::Lost;
        }
        self.epoch.store(epoch, Ordering::Release);
        self.until_ms
            .fetch_max(sent.saturating_add(self.ttl_ms()).max(1), Ordering::AcqRel);
        LeaseState::Held
    }

    /// Records an attempt that got no answer.
    pub(super) fn failed(&self, why: &StoreError) {
        if let Ok(mut failure) = self.failure.lock() {
            *failure = Some(why.to_string());
        }
    }

    /// The time an attempt is sent, for [`Lease::answered`].
    pub(super) fn sent(&self) -> u64 {
        self.now_ms()
    }

    /// Ok while the lease is this instance's (or none is kept); else why
    /// this instance serves nothing.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if !self.enabled() {
            return Ok(());
        }
        if self.lost.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(format!(
                "another troupe instance served from this Redis under store.redis.prefix {:?} \
                 while this one was not renewing its lease (a pause past store.redis.lease_ms): \
                 what this instance holds in memory may be stale, so it serves nothing until \
                 it is restarted",
                self.prefix
            )));
        }
        if self.now_ms() < self.until_ms.load(Ordering::Acquire) {
            return Ok(());
        }
        let other = self.other.lock().ok().and_then(|o| o.clone());
        let failure = self.failure.lock().ok().and_then(|f| f.clone());
        Err(StoreError::Unavailable(match (other, failure) {
            (Some(holder), _) => format!(
                "another troupe instance ({holder}) serves this Redis under store.redis.prefix \
                 {:?}: one instance per prefix until troupe runs as a cluster. This instance \
                 takes over when that one stops; to run both, give each its own prefix",
                self.prefix
            ),
            (None, Some(failure)) => {
                format!("this instance's Redis lease is not renewed ({failure})")
            }
            (None, None) => "this instance does not hold its Redis lease yet".to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease() -> Lease {
        let lease = Lease::new("p");
        lease.enable(Duration::from_secs(60));
        lease
    }

    #[test]
    fn a_lease_serves_only_while_held_and_names_the_other_holder() {
        let lease = lease();
        assert!(lease.check().is_err(), "not held before the first answer");
        let other = lease.answered(lease.sent(), ("other".into(), "b pid 2".into()));
        assert_eq!(other, LeaseState::Other("b pid 2".into()));
        let refused = lease.check().unwrap_err().to_string();
        assert!(
            refused.contains("b pid 2") && refused.contains("prefix"),
            "{refused}"
        );
        assert_eq!(
            lease.answered(lease.sent(), ("held".into(), "1".into())),
            LeaseState::Held
        );
        assert!(lease.check().is_ok());
        // Renewed (same epoch), re-acquired after an expiry (the next).
        assert_eq!(
            lease.answered(lease.sent(), ("held".into(), "1".into())),
            LeaseState::Held
        );
        assert_eq!(
            lease.answered(lease.sent(), ("held".into(), "2".into())),
            LeaseState::Held
        );
    }

    #[test]
    fn an_epoch_that_skipped_means_another_served_and_stops_this_one_for_good() {
        let lease = lease();
        lease.answered(lease.sent(), ("held".into(), "4".into()));
        assert_eq!(
            lease.answered(lease.sent(), ("held".into(), "6".into())),
            LeaseState::Lost
        );
        assert!(lease.check().unwrap_err().to_string().contains("restarted"));
        assert_eq!(
            lease.answered(lease.sent(), ("held".into(), "6".into())),
            LeaseState::Lost
        );
    }

    #[test]
    fn an_epoch_that_went_back_is_a_redis_that_forgot_and_stops_this_one() {
        for answer in ["0", "2"] {
            let lease = lease();
            lease.answered(lease.sent(), ("held".into(), "3".into()));
            assert_eq!(
                lease.answered(lease.sent(), ("held".into(), answer.into())),
                LeaseState::Lost,
                "epoch {answer} after 3"
            );
            assert!(lease.check().is_err());
        }
    }

    #[test]
    fn another_holder_ends_this_ones_lease_at_once_and_a_failure_is_named() {
        let lease = lease();
        lease.answered(lease.sent(), ("held".into(), "1".into()));
        assert!(lease.check().is_ok());
        lease.answered(lease.sent(), ("other".into(), "b pid 2".into()));
        assert!(
            lease.check().is_err(),
            "a held lease ends when another holds it"
        );
        let quiet = Lease::new("p");
        quiet.enable(Duration::from_secs(60));
        quiet.failed(&StoreError::Unavailable(
            "redis lease: connection refused".into(),
        ));
        let message = quiet.check().unwrap_err().to_string();
        assert!(message.contains("connection refused"), "{message}");
    }

    #[test]
    fn a_held_lease_lapses_at_its_ttl_from_when_it_was_asked() {
        let lease = Lease::new("p");
        lease.enable(Duration::from_millis(1));
        lease.answered(lease.sent(), ("held".into(), "1".into()));
        std::thread::sleep(Duration::from_millis(5));
        assert!(lease.check().is_err());
        let off = Lease::new("p");
        assert!(off.check().is_ok(), "no lease kept, nothing refused");
        assert_eq!(off.fence(), "");
    }
}
