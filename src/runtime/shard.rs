//! A shard: the directory of the activations living on one arbiter thread.
//!
//! It creates an activation on an address's first message, hands it every
//! message after that, and passivates activations left idle. Activations and
//! their shard share a small [`SlotStatus`] through an `Rc`: they run on the
//! same thread, so the shard can tell without a message whether an
//! activation is idle and stop it without racing a message on its way.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;
use troupe_actors::account::Account;
use troupe_actors::transfer::Transfer;
use troupe_actors::{ActorId, Address, Behavior, ErrorCode};

use super::activation::{Activation, Delivery};
use super::{stats, Answer, Envelope, Runtime};

/// Routes one envelope to the activation at `address`.
pub struct Route {
    pub address: Address,
    pub envelope: Envelope,
}

impl Message for Route {
    type Result = ();
}

/// What a shard and one of its activations both see.
#[derive(Debug)]
pub struct SlotStatus {
    /// Messages routed to the activation and not yet answered.
    pub inflight: Cell<u32>,
    /// The activation has work of its own under way (a transfer's leg).
    pub busy: Cell<bool>,
    pub last_used: Cell<Instant>,
}

impl SlotStatus {
    pub fn done(&self) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
    }
}

struct Slot {
    addr: Recipient<Delivery>,
    status: Rc<SlotStatus>,
}

pub struct Shard {
    index: usize,
    runtime: Runtime,
    directory: HashMap<(&'static str, ActorId), Slot>,
}

impl Shard {
    pub fn new(index: usize, runtime: Runtime, ctx: &mut Context<Self>) -> Self {
        let options = runtime.options();
        ctx.set_mailbox_capacity(options.shard_mailbox_capacity);
        let sweep =
            (options.idle_timeout / 2).clamp(Duration::from_millis(20), Duration::from_secs(1));
        ctx.run_interval(sweep, Shard::passivate_idle);
        ctx.run_interval(stats::REPORT_EVERY, Shard::report);
        Self {
            index,
            runtime,
            directory: HashMap::new(),
        }
    }

    fn activate(&mut self, address: &Address) -> &Slot {
        let status = Rc::new(SlotStatus {
            inflight: Cell::new(0),
            busy: Cell::new(false),
            last_used: Cell::new(Instant::now()),
        });
        let addr = match address.kind {
            Transfer::KIND => {
                Activation::<Transfer>::spawn(address.clone(), self.runtime.clone(), status.clone())
            }
            _ => {
                Activation::<Account>::spawn(address.clone(), self.runtime.clone(), status.clone())
            }
        };
        stats::activated(address.kind);
        let key = (address.kind, address.id.clone());
        self.directory.insert(key.clone(), Slot { addr, status });
        &self.directory[&key]
    }

    fn passivate_idle(&mut self, _ctx: &mut Context<Self>) {
        let idle = self.runtime.options().idle_timeout;
        let now = Instant::now();
        let before = self.directory.len();
        self.directory.retain(|(kind, _), slot| {
            let s = &slot.status;
            let keep = s.inflight.get() > 0
                || s.busy.get()
                || now.duration_since(s.last_used.get()) < idle;
            if !keep {
                slot.addr.do_send(Delivery::Passivate);
                stats::passivated(kind, 1);
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

impl Shard {
    fn report(&mut self, _ctx: &mut Context<Self>) {
        let mut report = stats::take();
        report.shard = self.index;
        let mut live: Vec<(&'static str, u64)> = Vec::new();
        for ((kind, _), slot) in &self.directory {
            match live.iter_mut().find(|(k, _)| k == kind) {
                Some((_, n)) => *n += 1,
                None => live.push((kind, 1)),
            }
            report.mailbox_depth += u64::from(slot.status.inflight.get());
        }
        for kind in troupe_actors::kinds::KINDS {
            if !live.iter().any(|(k, _)| *k == kind) {
                live.push((kind, 0));
            }
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

    fn handle(&mut self, Route { address, envelope }: Route, _ctx: &mut Context<Self>) {
        let key = (address.kind, address.id.clone());
        let mut delivery = Delivery::Message(envelope);
        // A closed mailbox means the activation stopped on its own: replace it once.
        for _ in 0..2 {
            let slot = match self.directory.get(&key) {
                Some(slot) => slot,
                None => self.activate(&address),
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
