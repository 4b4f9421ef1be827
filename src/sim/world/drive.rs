//! What the simulated host of one activation does with its core, as the
//! service's actix activation does it: a message is taken unless its
//! caller gave up (the ticket), actions are carried out, the drained event
//! follows them, and an activation that is not pinned may be passivated.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use troupe_actors::{Address, AnyCommand, ErrorCode};

use super::{Event, Io, Message, Simulation, Slot, Ticket};
use crate::runtime::core::{Action, Incoming, Timer};
use crate::runtime::{Answer, IdempotencyRequest};
use crate::sim::{Failure, ReplyTo, Request, RequestId, Told, Workload};

impl<W: Workload> Simulation<W> {
    /// A client sends a request: it gives up at its deadline unless the
    /// activation took it first.
    pub(super) fn send(&mut self, id: RequestId, request: Request) {
        self.requests.insert(id, self.now);
        if !self.up {
            let delay = self.hop();
            return self.schedule(
                delay,
                Event::Told {
                    id,
                    told: Told::Lost,
                },
            );
        }
        let deadline = self.now + request.timeout;
        self.route(
            request.address,
            request.command,
            request.idempotency,
            deadline,
            ReplyTo::Client(id),
        );
    }

    pub(super) fn route(
        &mut self,
        address: Address,
        command: AnyCommand,
        idempotency: Option<IdempotencyRequest>,
        deadline: Duration,
        reply: ReplyTo,
    ) {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        self.tickets.insert(ticket, Ticket::Waiting);
        let message = Message {
            command,
            reply: reply.clone(),
            idempotency,
            deadline,
            ticket,
            sent_at: self.now,
        };
        let delay = self.hop();
        let process = self.process;
        self.schedule(
            delay,
            Event::Deliver {
                process,
                address,
                message,
            },
        );
        self.schedule_at(
            deadline,
            Event::GiveUp {
                process,
                ticket,
                reply,
            },
        );
    }

    pub(super) fn deliver(&mut self, address: Address, message: Message) -> Result<(), Failure> {
        if self.tickets.get(&message.ticket) != Some(&Ticket::Waiting) {
            return Ok(());
        }
        self.tickets.insert(message.ticket, Ticket::Taken);
        let actor = address.to_string();
        let now = self.now_of();
        if !self.hosts.contains_key(&actor) {
            let Some((_, factory)) = self.kinds.iter().find(|(k, _)| *k == address.kind) else {
                let answer = Answer::error(ErrorCode::NotFound, "no such kind");
                self.reply(message.reply, answer);
                return Ok(());
            };
            self.incarnations += 1;
            let host = factory(address, self.options.clone(), now);
            self.hosts.insert(
                actor.clone(),
                Slot {
                    host,
                    incarnation: self.incarnations,
                    drain_queued: false,
                    taken: 0,
                    asks: BTreeMap::new(),
                    options: self.options.clone(),
                    backoff_until: None,
                    recheck: false,
                },
            );
        }
        let incoming = Incoming {
            command: message.command,
            reply: message.reply,
            idempotency: message.idempotency,
            deadline: self.base + message.deadline,
            span: tracing::Span::none(),
            sent_at: self.base + message.sent_at,
        };
        if let Some(slot) = self.hosts.get_mut(&actor) {
            slot.taken += 1;
            slot.host.message(now, incoming);
        }
        self.drive(&actor)
    }

    /// Carries out what one activation's core asked for.
    pub(super) fn drive(&mut self, actor: &str) -> Result<(), Failure> {
        loop {
            let Some(slot) = self.hosts.get_mut(actor) else {
                return Ok(());
            };
            let incarnation = slot.incarnation;
            let Some(action) = slot.host.poll_action() else {
                break;
            };
            self.paced(actor, &action)?;
            match action {
                Action::Reply { to, answer } => {
                    let Some(slot) = self.hosts.get_mut(actor) else {
                        return Ok(());
                    };
                    let Some(taken) = slot.taken.checked_sub(1) else {
                        return Err(
                            self.fail(format!("{actor} answered more messages than it took"))
                        );
                    };
                    slot.taken = taken;
                    self.reply(to, answer);
                }
                Action::Load { fence } => {
                    let delay = self.disk();
                    let io = Io::Load { fence };
                    self.schedule(
                        delay,
                        Event::Io {
                            actor: actor.into(),
                            incarnation,
                            io,
                        },
                    );
                }
                Action::Lookup(key) => {
                    let delay = self.disk();
                    let io = Io::Lookup(key);
                    self.schedule(
                        delay,
                        Event::Io {
                            actor: actor.into(),
                            incarnation,
                            io,
                        },
                    );
                }
                Action::Commit { commit, pages, .. } => {
                    let fate = self.fate();
                    let commit = commit.map(|c| {
                        self.seq += 1;
                        self.sent.insert(self.seq, c);
                        self.seq
                    });
                    let delay = self.disk();
                    let io = Io::Commit {
                        commit,
                        pages,
                        fate,
                    };
                    self.schedule(
                        delay,
                        Event::Io {
                            actor: actor.into(),
                            incarnation,
                            io,
                        },
                    );
                }
                Action::Ask {
                    id,
                    target,
                    command,
                    deadline,
                    ..
                } => {
                    let reply = ReplyTo::Ask {
                        from: actor.into(),
                        incarnation,
                        id,
                    };
                    if self.chance(self.config.faults.route_fails) {
                        self.count("route_fails");
                        let answer = Answer::error(ErrorCode::Overloaded, "simulated full shard");
                        self.reply(reply, answer);
                    } else {
                        let deadline = deadline.saturating_duration_since(self.base);
                        self.route(target, command, None, deadline, reply);
                    }
                }
                Action::Timer { at, timer } => {
                    let at = at.saturating_duration_since(self.base);
                    self.schedule_at(
                        at,
                        Event::Timer {
                            actor: actor.into(),
                            incarnation,
                            timer,
                        },
                    );
                }
            }
        }
        self.after(actor)
    }

    /// What follows every event at an activation: the flush point, the
    /// memory bound, retirement and passivation.
    pub(super) fn after(&mut self, actor: &str) -> Result<(), Failure> {
        let capacity = self.options.mailbox_capacity;
        let Some(slot) = self.hosts.get_mut(actor) else {
            return Ok(());
        };
        let incarnation = slot.incarnation;
        *self.coverage.phases.entry(slot.host.phase()).or_default() += 1;
        let (queued, parked) = slot.host.held();
        let taken = slot.taken;
        if queued > capacity || parked > capacity || queued + parked > taken {
            return Err(self.fail(format!(
                "{actor} holds {queued} messages and {parked} parked callers of the {taken} it took and has not answered (bound {capacity})"
            )));
        }
        self.coverage.held.0 = self.coverage.held.0.max(queued);
        self.coverage.held.1 = self.coverage.held.1.max(parked);
        let Some(slot) = self.hosts.get_mut(actor) else {
            return Ok(());
        };
        if slot.host.wants_flush() && !slot.drain_queued {
            slot.drain_queued = true;
            let delay = Duration::from_micros(self.rng.random_range(0..2_000));
            self.schedule(
                delay,
                Event::Drained {
                    actor: actor.into(),
                    incarnation,
                },
            );
            return Ok(());
        }
        let idle = !slot.host.is_pinned();
        if idle && !slot.host.is_resident() {
            self.passivate(actor)?;
        } else if idle
            && self
                .rng
                .random_bool(self.config.faults.passivate.clamp(0.0, 1.0))
        {
            let delay = Duration::from_micros(self.rng.random_range(0..50_000));
            self.schedule(
                delay,
                Event::Passivate {
                    actor: actor.into(),
                    incarnation,
                },
            );
        }
        Ok(())
    }

    /// Removes an idle activation: it must hold no caller, for nobody
    /// would answer it.
    pub(super) fn passivate(&mut self, actor: &str) -> Result<(), Failure> {
        if let Some(slot) = self.hosts.remove(actor) {
            self.coverage.passivations += 1;
            if slot.taken > 0 {
                return Err(self.fail(format!(
                    "{actor} was let go while {} of the messages it took were unanswered",
                    slot.taken
                )));
            }
        }
        Ok(())
    }

    /// Checks that what an action asks for keeps the pace the runtime's
    /// tunables set: no retry or wake-up sooner than its interval (a store
    /// or a peer that fails is not hammered), each ask's retries backing
    /// off as `ask_min_backoff_ms`..`ask_max_backoff_ms` say, every attempt
    /// given `effect_timeout_ms`, a restart's backoff waited out, no ask
    /// made twice at once, no commit sent that writes nothing, a recheck
    /// set only when it has something to resume.
    fn paced(&mut self, actor: &str, action: &Action<ReplyTo>) -> Result<(), Failure> {
        let now = self.base + self.now;
        let Some(slot) = self.hosts.get_mut(actor) else {
            return Ok(());
        };
        let options = slot.options.clone();
        let broken = match action {
            Action::Load { .. } => {
                // The core forgets its asks with the state that made them.
                slot.asks.clear();
                match slot.backoff_until.take() {
                    Some(until) if now < until => Some(format!(
                        "loaded {:?} before its restart's backoff ended",
                        until - now
                    )),
                    _ => None,
                }
            }
            Action::Ask {
                id,
                deadline,
                target,
                command,
                ..
            } => {
                let what = format!("{command:?} of {target}");
                let twice = slot
                    .asks
                    .iter()
                    .find(|(other, (_, w))| *other != id && *w == what)
                    .map(|(other, _)| *other);
                let ask = slot.asks.entry(*id).or_insert((0, what));
                ask.0 += 1;
                let given = deadline.saturating_duration_since(now);
                if let Some(other) = twice {
                    Some(format!(
                        "ask {id} asks what ask {other} asks, unanswered: {}",
                        ask.1
                    ))
                } else {
                    (given != options.effect_timeout)
                        .then(|| format!("ask {id} sent with {given:?} to live"))
                }
            }
            Action::Timer { at, timer } => {
                let ahead = at.saturating_duration_since(now);
                // A recheck resumes unfinished work nothing drives: one at a
                // time, and only while the state is ready, pending and has
                // no ask unanswered.
                if matches!(timer, Timer::Recheck { .. }) {
                    let idle = slot.host.phase() == "ready"
                        && slot.host.unfinished()
                        && slot.asks.is_empty();
                    if slot.recheck || !idle {
                        let why = format!(
                            "a recheck set while {} (another set: {}, unfinished work: {}, asks unanswered: {})",
                            slot.host.phase(),
                            slot.recheck,
                            slot.host.unfinished(),
                            slot.asks.len()
                        );
                        return Err(self.fail(why));
                    }
                    slot.recheck = true;
                }
                let (least, most) = match timer {
                    Timer::Lazy { .. } | Timer::Recheck { .. } | Timer::Reload | Timer::Doubt => {
                        (options.retry_interval, None)
                    }
                    Timer::Restart => {
                        // The core threw its state away, and its asks.
                        slot.asks.clear();
                        slot.backoff_until = Some(*at);
                        (options.restart.backoff, Some(options.restart.max_backoff))
                    }
                    // A caller's own deadline, passed or not.
                    Timer::Parked => return Ok(()),
                    Timer::Ask(id) => {
                        let sent = slot.asks.get(id).map_or(0, |a| a.0);
                        let base = options
                            .ask_min_backoff
                            .saturating_mul(2u32.saturating_pow(sent.saturating_sub(1)))
                            .min(options.ask_max_backoff);
                        // Asks failing together do not retry together.
                        if ahead > base {
                            self.coverage.spread += 1;
                        }
                        (base, Some(base + base / 2))
                    }
                };
                (ahead < least || most.is_some_and(|m| ahead > m))
                    .then(|| format!("{timer:?} set {ahead:?} ahead, outside {least:?}..{most:?}"))
            }
            Action::Commit {
                commit: Some(c), ..
            } => {
                let nothing = c.state.is_none()
                    && c.entries.is_empty()
                    && c.idempotency.is_empty()
                    && c.facts.is_empty();
                // A new state is a new version; records alone are not.
                let versioned = if c.state.is_some() {
                    c.version > c.expected_version
                } else {
                    c.version == c.expected_version
                };
                if nothing {
                    Some("sent the store a commit that writes nothing".to_owned())
                } else if !versioned {
                    Some(format!(
                        "sent the store version {} over {} (state written: {})",
                        c.version,
                        c.expected_version,
                        c.state.is_some()
                    ))
                } else {
                    None
                }
            }
            _ => None,
        };
        match broken {
            Some(what) => Err(self.fail(format!("{actor}: {what}"))),
            None => Ok(()),
        }
    }

    /// Sends an answer where it is awaited.
    pub(super) fn reply(&mut self, to: ReplyTo, answer: Answer) {
        let delay = self.hop();
        match to {
            ReplyTo::Client(id) => self.schedule(
                delay,
                Event::Told {
                    id,
                    told: Told::Answer(answer),
                },
            ),
            ReplyTo::Ask {
                from,
                incarnation,
                id,
            } => self.schedule(
                delay,
                Event::Answer {
                    actor: from,
                    incarnation,
                    id,
                    answer,
                },
            ),
            ReplyTo::Wake { address, attempt } => {
                let transient = matches!(&answer.outcome, Err(r) if r.code.is_transient());
                if transient {
                    let process = self.process;
                    let wait = self.options.retry_interval;
                    self.schedule(
                        wait,
                        Event::Wake {
                            process,
                            address,
                            attempt: attempt + 1,
                        },
                    );
                }
            }
        }
    }
}
