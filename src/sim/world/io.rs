//! The simulated store's answers and faults, and the process's crashes and
//! restarts.

use std::time::Duration;

use rand::Rng;
use troupe_actors::{kinds, Address, Kind};

use super::{Event, Fate, Io, Simulation};
use crate::runtime::core::LookupKey;
use crate::sim::{Failure, ReplyTo, RequestId, Told, Workload};
use crate::store::StoreError;

impl<W: Workload> Simulation<W> {
    pub(super) fn fate(&mut self) -> Fate {
        let f = self.config.faults.clone();
        if self.chance(f.commit_fails) {
            self.count("commit_fails");
            Fate::FailsUnsent
        } else if self.chance(f.commit_lost_unseen) {
            self.count("commit_lost_unseen");
            Fate::LostUnseen
        } else if self.chance(f.commit_lands_unseen) {
            self.count("commit_lands_unseen");
            Fate::LandsUnseen
        } else if self.chance(f.commit_lands_late) {
            self.count("commit_lands_late");
            Fate::LandsLate
        } else {
            Fate::Lands
        }
    }

    pub(super) fn count(&mut self, fault: &'static str) {
        *self.coverage.faults.entry(fault).or_default() += 1;
    }

    pub(super) fn io_done(
        &mut self,
        actor: String,
        incarnation: u64,
        io: Io,
    ) -> Result<(), Failure> {
        if self.slot(&actor, incarnation).is_none() {
            // The activation is gone (a crash): a commit it sent is decided
            // with the crash, reads are simply lost.
            return Ok(());
        }
        let now = self.now_of();
        let unavailable = || StoreError::Unavailable("simulated".into());
        let unknown = || StoreError::Unknown("simulated".into());
        match io {
            Io::Load { fence } => {
                let fails = self.outage() || self.chance(self.config.faults.read_fails);
                let default = self
                    .hosts
                    .get(&actor)
                    .map(|s| s.host.default_state())
                    .unwrap_or_default();
                let lost = fence && !fails && self.chance(self.config.faults.fence_lost);
                // The tunables of the day, taken at every load.
                let options = self.options.clone();
                if let Some(slot) = self.slot(&actor, incarnation) {
                    slot.options = options.clone();
                    slot.host.set_options(options);
                }
                let result = if fails {
                    self.count("read_fails");
                    Err(unavailable())
                } else if lost {
                    // The fence's own write gets no answer: it landed, or not.
                    self.count("fence_lost");
                    if self.rng.random_bool(0.5) {
                        self.store.fence(&actor, &default);
                    }
                    Err(unknown())
                } else if fence {
                    Ok((self.store.fence(&actor, &default), true))
                } else {
                    Ok((self.store.load(&actor), false))
                };
                if let Some(slot) = self.slot(&actor, incarnation) {
                    slot.host.loaded(now, result);
                }
            }
            Io::Lookup(key) => {
                let fails = self.outage() || self.chance(self.config.faults.read_fails);
                let result = if fails {
                    self.count("read_fails");
                    Err(unavailable())
                } else {
                    Ok(match key {
                        LookupKey::Idempotency(k) => {
                            self.store.idempotency.get(&(actor.clone(), k)).cloned()
                        }
                        LookupKey::Fact(k) => self.store.facts.get(&(actor.clone(), k)).cloned(),
                    })
                };
                if let Some(slot) = self.slot(&actor, incarnation) {
                    slot.host.looked_up(now, result);
                }
            }
            Io::Commit {
                commit,
                pages,
                fate,
            } => {
                // A store that is down refuses what reaches it now.
                let fate = if self.outage() && fate == Fate::Lands {
                    Fate::FailsUnsent
                } else {
                    fate
                };
                let down = self.outage();
                let applied = match (commit, fate) {
                    (None, _) if down => Err(unavailable()),
                    (None, _) => Ok(()),
                    (Some(id), Fate::Lands) => self
                        .sent
                        .remove(&id)
                        .map_or(Ok(()), |c| self.store.apply(&c)),
                    (Some(id), Fate::FailsUnsent) => {
                        self.sent.remove(&id);
                        Err(unavailable())
                    }
                    (Some(id), Fate::LostUnseen) => {
                        self.sent.remove(&id);
                        Err(unknown())
                    }
                    (Some(id), Fate::LandsUnseen) => {
                        if let Some(c) = self.sent.remove(&id) {
                            let _ = self.store.apply(&c);
                        }
                        Err(unknown())
                    }
                    (Some(id), Fate::LandsLate) => {
                        let delay = Duration::from_micros(self.rng.random_range(0..300_000));
                        self.schedule(delay, Event::Late { commit: id });
                        Err(unknown())
                    }
                };
                let result = applied.map(|()| {
                    pages
                        .iter()
                        .map(|(after, limit)| {
                            Ok(self.store.page(&actor, *after, limit.saturating_add(1)))
                        })
                        .collect()
                });
                if let Some(slot) = self.slot(&actor, incarnation) {
                    slot.host.committed(now, result);
                }
            }
        }
        self.drive(&actor)
    }

    /// Asks an actor with unfinished work for its state, so that it loads
    /// and resumes its work (`Runtime::wake`).
    pub(super) fn wake(&mut self, address: Address, attempt: u32) {
        let Ok(command) = kinds::parse(address.kind, "get", serde_json::Value::Null) else {
            return;
        };
        let deadline = self.now + self.options.default_timeout;
        let reply = ReplyTo::Wake {
            address: address.clone(),
            attempt,
        };
        self.route(address, command, None, deadline, reply);
    }

    /// The operator changes the tunables: activations take them at their
    /// next load, as the service's do, and new ones at once. Drawn from
    /// their own generator, so that a seed without reloads runs as it did
    /// before reloads were simulated.
    pub(super) fn reload(&mut self) {
        let rng = &mut self.reload_rng;
        let mut ms =
            |range: std::ops::RangeInclusive<u64>| Duration::from_millis(rng.random_range(range));
        let options = crate::runtime::RuntimeOptions {
            retry_interval: ms(50..=200),
            effect_timeout: ms(100..=400),
            ask_min_backoff: ms(2..=10),
            ask_max_backoff: ms(50..=200),
            idempotency_cache: self.reload_rng.random_range(1..=4),
            ..(*self.options).clone()
        };
        self.count("reloads");
        self.options = std::sync::Arc::new(options);
    }

    /// The process dies: every activation and every call in flight is
    /// lost; a commit already sent lands or not, as it happens.
    pub(super) fn crash(&mut self) {
        self.coverage.crashes += 1;
        // A commit already sent lands or not, before anything restarts: a
        // store takes what reached it before the connection closed (Redis
        // runs what it already read) or nothing of it.
        for (_, commit) in std::mem::take(&mut self.sent) {
            if self.rng.random_bool(0.5) {
                let _ = self.store.apply(&commit);
            }
        }
        self.hosts.clear();
        self.up = false;
        self.process += 1;
        let lost: Vec<RequestId> = self.requests.keys().copied().collect();
        for id in lost {
            self.schedule(
                Duration::ZERO,
                Event::Told {
                    id,
                    told: Told::Lost,
                },
            );
        }
        let down = Duration::from_micros(self.rng.random_range(1_000..200_000));
        self.schedule(down, Event::Restart);
    }

    /// The process starts again and wakes every actor the store lists as
    /// having unfinished work.
    pub(super) fn restart(&mut self) {
        self.up = true;
        let process = self.process;
        let pending: Vec<String> = self.store.pending.iter().cloned().collect();
        for actor in pending {
            let Some((kind, id)) = actor.split_once('/') else {
                continue;
            };
            let (Some(kind), Ok(id)) = (Kind::parse(kind), troupe_actors::ActorId::parse(id))
            else {
                continue;
            };
            self.schedule(
                Duration::ZERO,
                Event::Wake {
                    process,
                    address: Address::new(kind, id),
                    attempt: 0,
                },
            );
        }
    }
}
