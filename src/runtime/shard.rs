//! A shard: the directory of the activations living on one arbiter thread.
//!
//! It creates an activation on an address's first message, hands it every
//! message after that, and passivates activations left idle. Activations and
//! their shard share a small [`SlotStatus`] through an `Rc`: they run on the
//! same thread, so the shard can tell without a message whether an
//! activation is idle and stop it without racing a message on its way.
//!
//! Memory is bounded: an activation with nothing worth keeping retires
//! itself at once ([`Retired`]), idle ones are passivated after the idle
//! timeout, and the number of live activations is capped
//! (`runtime.max_activations`): at the cap the least recently used idle
//! ones make room, and when none is idle the shard answers `429`.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;
use troupe_actors::account::Account;
use troupe_actors::transfer::Transfer;
use troupe_actors::{ActorId, Address, ErrorCode, Kind};

use super::activation::{Activation, Delivery};
use super::slot::{Retired, SlotStatus};
use super::{stats, Answer, Envelope, Runtime};

/// Routes one envelope to the activation at `address`.
pub struct Route {
    pub address: Address,
    pub envelope: Envelope,
}

impl Message for Route {
    type Result = ();
}

struct Slot {
    addr: Recipient<Delivery>,
    status: Rc<SlotStatus>,
}

pub struct Shard {
    index: usize,
    runtime: Runtime,
    directory: HashMap<(Kind, ActorId), Slot>,
    /// When a scan at the cap last found no idle activation.
    full_since: Option<Instant>,
}

/// How long a shard at the cap with nothing idle refuses new actors before
/// scanning for idle ones again.
const FULL_RESCAN: Duration = Duration::from_millis(50);

impl Shard {
    pub fn new(index: usize, runtime: Runtime, ctx: &mut Context<Self>) -> Self {
        let options = runtime.options();
        ctx.set_mailbox_capacity(options.shard_mailbox_capacity);
        Shard::sweep_later(ctx, options.idle_timeout);
        ctx.run_interval(stats::REPORT_EVERY, Shard::report);
        Self {
            index,
            runtime,
            directory: HashMap::new(),
            full_since: None,
        }
    }

    /// The most activations this shard keeps live.
    fn capacity(&self) -> usize {
        let shards = self.runtime.shard_count().max(1);
        (self.runtime.options().max_activations / shards).max(1)
    }

    /// Creates the activation of `address`. At the cap, room is made first;
    /// when none can be made a client's message is refused, while an
    /// internal one (a leg, a wake-up) goes over the cap rather than leave
    /// unfinished work stranded.
    fn activate(
        &mut self,
        address: &Address,
        internal: bool,
        ctx: &mut Context<Self>,
    ) -> Option<&Slot> {
        if self.directory.len() >= self.capacity() && !self.make_room() && !internal {
            return None;
        }
        let status = Rc::new(SlotStatus {
            inflight: Cell::new(0),
            pinned: Cell::new(true),
            retired: Cell::new(false),
            last_used: Cell::new(Instant::now()),
        });
        let (runtime, shard) = (self.runtime.clone(), ctx.address().recipient());
        let addr = match address.kind {
            Kind::Account => {
                Activation::<Account>::spawn(address.clone(), runtime, status.clone(), shard)
            }
            Kind::Transfer => {
                Activation::<Transfer>::spawn(address.clone(), runtime, status.clone(), shard)
            }
        };
        stats::activated(address.kind);
        let key = (address.kind, address.id.clone());
        self.directory.insert(key.clone(), Slot { addr, status });
        self.directory.get(&key)
    }

    /// At the cap: passivates the least recently used tenth of the idle
    /// activations (at least one), so that making room costs one scan per
    /// many activations. Returns whether any room was made.
    fn make_room(&mut self) -> bool {
        // A scan that just found nothing idle is not repeated at once: at
        // the cap under load, that would be a full scan per message.
        if self.full_since.is_some_and(|at| at.elapsed() < FULL_RESCAN) {
            return false;
        }
        let mut idle: Vec<(Instant, (Kind, ActorId))> = self
            .directory
            .iter()
            .filter(|(_, slot)| slot.status.is_idle())
            .map(|(key, slot)| (slot.status.last_used.get(), key.clone()))
            .collect();
        if idle.is_empty() {
            self.full_since = Some(Instant::now());
            return false;
        }
        self.full_since = None;
        let evict = (self.directory.len() / 10).clamp(1, idle.len());
        if evict < idle.len() {
            idle.select_nth_unstable_by_key(evict, |(used, _)| *used);
        }
        for (_, key) in idle.into_iter().take(evict) {
            if let Some(slot) = self.directory.remove(&key) {
                slot.addr.do_send(Delivery::Passivate);
                stats::passivated(key.0, 1);
            }
        }
        true
    }

    /// Schedules the next sweep for idle activations at half the idle
    /// timeout read now, so a reloaded `runtime.idle_timeout_ms` takes effect
    /// from the next sweep on.
    fn sweep_later(ctx: &mut Context<Self>, idle: Duration) {
        let every = (idle / 2).clamp(Duration::from_millis(20), Duration::from_secs(1));
        ctx.run_later(every, Shard::passivate_idle);
    }

    fn passivate_idle(&mut self, ctx: &mut Context<Self>) {
        let idle = self.runtime.options().idle_timeout;
        Shard::sweep_later(ctx, idle);
        let now = Instant::now();
        let before = self.directory.len();
        self.directory.retain(|(kind, _), slot| {
            let s = &slot.status;
            if s.retired.get() {
                return false;
            }
            let keep = !s.is_idle() || now.duration_since(s.last_used.get()) < idle;
            if !keep {
                slot.addr.do_send(Delivery::Passivate);
                stats::passivated(*kind, 1);
            }
            keep
        });
        let passivated = before - self.directory.len();
        if passivated > 0 {
            tracing::debug!(
                shard = self.index,
                passivated,
                live = self.directory.len(),
                "passivated idle actors"
            );
        }
    }
}

impl Handler<Retired> for Shard {
    type Result = ();

    fn handle(&mut self, Retired { address }: Retired, _ctx: &mut Context<Self>) {
        let key = (address.kind, address.id);
        if self
            .directory
            .get(&key)
            .is_some_and(|slot| slot.status.retired.get())
        {
            self.directory.remove(&key);
            stats::passivated(key.0, 1);
        }
    }
}

impl Shard {
    fn report(&mut self, _ctx: &mut Context<Self>) {
        let mut report = stats::take();
        report.shard = self.index;
        let mut live: Vec<(&'static str, u64)> =
            Kind::ALL.iter().map(|k| (k.as_str(), 0)).collect();
        for ((kind, _), slot) in &self.directory {
            if let Some((_, n)) = live.iter_mut().find(|(k, _)| *k == kind.as_str()) {
                *n += 1;
            }
            report.mailbox_depth += u64::from(slot.status.inflight.get());
        }
        report.live = live;
        self.runtime.report(report);
    }
}

impl Actor for Shard {
    type Context = Context<Self>;
}

impl Handler<Route> for Shard {
    type Result = ();

    fn handle(&mut self, Route { address, envelope }: Route, ctx: &mut Context<Self>) {
        // The caller left before its message was routed: activate nothing
        // for it (a client spraying ids and hanging up costs no loads).
        if envelope.abandoned() {
            super::stats::abandoned_dropped(address.kind);
            return;
        }
        let key = (address.kind, address.id.clone());
        let internal = envelope.internal;
        let mut delivery = Delivery::Message(envelope);
        // A closed mailbox means the activation stopped on its own: replace it once.
        for _ in 0..2 {
            if self
                .directory
                .get(&key)
                .is_some_and(|slot| slot.status.retired.get())
            {
                self.directory.remove(&key);
            }
            let slot = match self.directory.get(&key) {
                Some(slot) => slot,
                None => match self.activate(&address, internal, ctx) {
                    Some(slot) => slot,
                    None => {
                        if let Delivery::Message(envelope) = delivery {
                            let _ = envelope.reply.send(Answer::error(
                                ErrorCode::Overloaded,
                                "every actor of this shard is busy; retry later",
                            ));
                        }
                        return;
                    }
                },
            };
            slot.status.inflight.set(slot.status.inflight.get() + 1);
            slot.status.last_used.set(Instant::now());
            match slot.addr.try_send(delivery) {
                Ok(()) => return,
                Err(SendError::Full(Delivery::Message(envelope))) => {
                    slot.status.done();
                    let _ = envelope.reply.send(Answer::error(
                        ErrorCode::Overloaded,
                        format!("the mailbox of {address} is full; retry later"),
                    ));
                    return;
                }
                Err(SendError::Full(other) | SendError::Closed(other)) => {
                    slot.status.done();
                    self.directory.remove(&key);
                    delivery = other;
                }
            }
        }
        if let Delivery::Message(envelope) = delivery {
            let _ = envelope.reply.send(Answer::error(
                ErrorCode::Unavailable,
                format!("{address} cannot be activated"),
            ));
        }
    }
}
