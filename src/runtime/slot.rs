//! What a shard and one of its activations share: the slot's status, read
//! by the shard without a message (they run on one thread), and the
//! message an activation sends when it retires. Apart from the shard so
//! that the activation depends on it and not on the shard, which creates
//! activations.

use std::cell::Cell;

use actix::prelude::*;
use tokio::time::Instant;
use troupe_actors::Address;

/// An activation stopped itself: it had nothing left worth keeping.
pub struct Retired {
    pub address: Address,
}

impl Message for Retired {
    type Result = ();
}

/// What a shard and one of its activations both see.
#[derive(Debug)]
pub struct SlotStatus {
    /// Messages routed to the activation and not yet answered.
    pub inflight: Cell<u32>,
    /// The activation must not be passivated: it is loading, committing,
    /// waiting on an ask, holding a parked caller or unfinished work.
    pub pinned: Cell<bool>,
    /// The activation stopped itself; the slot is to be dropped.
    pub retired: Cell<bool>,
    pub last_used: Cell<Instant>,
}

impl SlotStatus {
    pub fn done(&self) {
        self.inflight.set(self.inflight.get().saturating_sub(1));
    }

    pub fn is_idle(&self) -> bool {
        self.inflight.get() == 0 && !self.pinned.get()
    }
}
