//! Property test of the pure transfer protocol, hosted in a simulated runtime.
//!
//! A small world runs the real [`Account`] and [`Transfer`] behaviours the
//! way the runtime does: durable and in-memory state, facts read back through
//! [`Env::fact`], effects sent in parallel with their step's commit, answers
//! handed back only once that commit is durable and only to the epoch that
//! asked, replies held while anything before them is unsaved, parked callers
//! answered by a settle. Accounts commit each step at once; a transfer's
//! change becomes durable on a separate commit event.
//!
//! Proptest picks the interleaving: asks delivered in any order, or twice (a
//! retry after a timeout), asks of a passed epoch lingering and arriving late,
//! answers lost (the asker sends the ask again), transfer commits delayed,
//! transfer actors crashed (a failed commit keeps parked callers, a dead
//! process loses them) and resumed, accounts reloaded (they hand their outbox
//! back with `adopt`), clients re-sending `start`, hostile clients reusing a
//! transfer id with another body, deposits in the middle of it all. Then the
//! world quiesces: every commit, ask and answer goes through without faults
//! and whatever is still pending is resumed, as the runtime's retry timer
//! does, until nothing is left.
//!
//! What it checks, for every interleaving:
//! 1. no account's balance ever goes below its overdraft limit;
//! 2. once the world is quiet, money is conserved (per currency: balances
//!    add up to what was deposited), no account holds a transfer in its
//!    outbox and no transfer is pending;
//! 3. what a client was told is the truth: a transfer told `completed` is
//!    completed, with one debit at its source, one credit at its target and
//!    no refund at its source; a transfer told failed is failed and moved
//!    nothing net (every debit naming it has its refund); and the answer is
//!    about the body that client asked for;
//! 4. each account's journal (the entries of its committed changes) replays
//!    to its balance, with gapless sequence numbers;
//! 5. no transfer leg is applied twice: per transfer id, at most one
//!    `transfer_debit`, `transfer_credit` and `refund` entry per account, a
//!    refund only where a debit was, one credit in all and at most one debit
//!    not given back. (An id whose first record was lost may be reused with
//!    another body and debit a second account; the protocol gives that debit
//!    back on adoption, so "one debit across all accounts" is not a rule.)
//!
//! A deterministic test next to it drives one debit through a lost answer
//! and a crash and checks the account applied it once.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{TestCaseError, TestRunner};
use serde_json::Value;
use troupe_actors::account::{self, Account, AccountState, Entry, EntryKind};
use troupe_actors::transfer::{self, Status as TransferStatus, Transfer, TransferState};
use troupe_actors::{
    ActorId, Address, Amount, AnyCommand, Behavior, Currency, Effect, Env, ErrorCode, Outcome,
    Reply, ReplyPlan, Step,
};

/// Accounts opened and funded: `acc-0` to `acc-3`. `acc-4` is never opened.
const OPENED: usize = 4;
/// The opened account that holds EUR; the others hold USD.
const EUR_ACCOUNT: usize = 3;
/// Every account id a transfer may name, the unopened one included.
const ACCOUNTS: usize = OPENED + 1;
/// At most this many transfer actors, `t-0` onwards.
const TRANSFERS: usize = 8;
/// Rounds of "drain everything, then resume what is still pending" allowed
/// before the world is declared stuck.
const QUIESCE_ROUNDS: usize = 20;
/// Deliveries allowed within one quiescing round.
const QUIESCE_BUDGET: usize = 10_000;

type TestResult<T = ()> = Result<T, TestCaseError>;

fn fail(message: impl Into<String>) -> TestCaseError {
    TestCaseError::fail(message.into())
}

/// The clock of the world: entries carry it, nothing depends on it.
fn now() -> DateTime<Utc> {
    DateTime::default()
}

// ---------------------------------------------------------------------------
// The simulated runtime
// ---------------------------------------------------------------------------

/// An actor of the world, by kind and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Account(usize),
    Transfer(usize),
}

/// One ask (an effect) on its way to its target. The same `id` names every
/// attempt of the ask, retries included.
#[derive(Debug, Clone)]
struct Ask {
    id: u64,
    asker: Who,
    /// The asker's epoch when it asked: an answer from another epoch is
    /// stale and dropped, and a stale ask is never sent again.
    epoch: u32,
    tag: String,
    target: Who,
    command: AnyCommand,
}

/// The outcome of an ask, on its way back to the asker.
#[derive(Debug, Clone)]
struct Answer {
    ask: Ask,
    outcome: Outcome,
}

/// Whoever waits for a reply.
#[derive(Debug, Clone)]
enum Caller {
    /// A client's request, by index in [`World::clients`].
    Client(usize),
    /// An actor's ask: the reply becomes an [`Answer`].
    Ask(Ask),
    /// Nobody listens any more (an attempt the asker gave up on after a
    /// timeout, or a set-up message): the reply is dropped.
    Nobody,
}

/// The body of a transfer's `start`, accounts by index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Body {
    from: usize,
    to: usize,
    amount: u64,
}

/// What a client was told, next to what it asked for.
#[derive(Debug, Clone)]
struct Told {
    transfer: usize,
    asked: Body,
    outcome: Outcome,
}

/// What a committed change made durable.
#[derive(Debug)]
struct Durable<S> {
    state: S,
    version: u64,
    facts: HashMap<String, Value>,
    /// Every entry committed, in commit order.
    journal: Vec<Value>,
}

/// What was handled since the last commit and waits for it: the runtime's
/// open batch.
#[derive(Debug, Default)]
struct Unsaved {
    /// The state changed and is written by the commit.
    written: bool,
    entries: Vec<(u64, Value)>,
    facts: Vec<(String, Value)>,
    /// Replies that leave once the commit is durable.
    replies: Vec<(Caller, Outcome)>,
    /// The outcome for every parked caller, once the commit is durable.
    settle: Option<Outcome>,
}

/// What a node's step sends out; the world routes it afterwards.
#[derive(Debug, Default)]
struct Outbox {
    /// Effects to send, with the asker and its epoch.
    effects: Vec<(Who, u32, Effect)>,
    /// Replies leaving now.
    replies: Vec<(Caller, Outcome)>,
    /// Asks whose reply was lost: their askers send them again.
    lost: Vec<Ask>,
}

/// One actor hosted as the runtime hosts it.
struct Node<B: Behavior> {
    who: Who,
    id: ActorId,
    durable: Durable<B::State>,
    /// The state in memory: the durable one plus unsaved changes and memos.
    memory: B::State,
    /// The version of `memory`, counting unsaved changes.
    version: u64,
    unsaved: Option<Unsaved>,
    /// `memory` holds a lazy change: written with the next commit, or on
    /// its own when the runtime's timer fires (modelled at quiescence).
    lazy: bool,
    epoch: u32,
    /// Callers waiting for the behaviour to settle.
    parked: Vec<Caller>,
}

impl<B: Behavior> Node<B> {
    fn new(who: Who, id: ActorId) -> Self {
        Self {
            who,
            id,
            durable: Durable {
                state: B::State::default(),
                version: 0,
                facts: HashMap::new(),
                journal: Vec::new(),
            },
            memory: B::State::default(),
            version: 0,
            unsaved: None,
            epoch: 0,
            parked: Vec::new(),
            lazy: false,
        }
    }

    /// The environment of a handler, with the fact `command` needs read
    /// from memory (written by an unsaved change) or else from the store.
    fn env(&self, command: Option<&B::Command>) -> Env {
        let mut env = Env::new(self.id.clone(), now(), self.version);
        if let Some(key) = command.and_then(|c| B::fact_key(c)) {
            let unsaved = self.unsaved.as_ref().and_then(|u| {
                u.facts
                    .iter()
                    .rev()
                    .find(|(k, _)| *k == key)
                    .map(|(_, fact)| fact.clone())
            });
            env.fact = unsaved.or_else(|| self.durable.facts.get(&key).cloned());
        }
        env
    }

    fn handle(&mut self, command: B::Command, caller: Caller, out: &mut Outbox) {
        let env = self.env(Some(&command));
        let step = B::handle(&self.memory, command, &env);
        self.apply(step, Some(caller), out);
    }

    fn on_effect(&mut self, tag: &str, outcome: Outcome, out: &mut Outbox) {
        let env = self.env(None);
        let step = B::on_effect(&self.memory, tag, outcome, &env);
        self.apply(step, None, out);
    }

    /// Takes in a step as the runtime's `apply` does: the change joins the
    /// unsaved batch, effects leave at once, a late settle and any reply
    /// wait for the commit when something before them is unsaved.
    fn apply(&mut self, step: Step<B::State>, caller: Option<Caller>, out: &mut Outbox) {
        let Step {
            reply,
            change,
            effects,
            settle,
            replayed: _,
            memo,
            lazy,
        } = step;
        if let Some(state) = memo {
            self.memory = state;
        }
        if let Some(state) = lazy {
            self.memory = state;
            self.lazy = true;
        }
        if let Some(change) = change {
            self.memory = change.state;
            self.version += 1;
            let unsaved = self.unsaved.get_or_insert_with(Unsaved::default);
            unsaved.written = true;
            unsaved.entries.extend(change.entries);
            unsaved.facts.extend(change.facts);
        }
        let (who, epoch) = (self.who, self.epoch);
        out.effects
            .extend(effects.into_iter().map(|effect| (who, epoch, effect)));
        if let Some(settle) = settle {
            if settle.early {
                for parked in self.parked.drain(..) {
                    out.replies.push((parked, settle.outcome.clone()));
                }
            } else {
                self.unsaved.get_or_insert_with(Unsaved::default).settle = Some(settle.outcome);
            }
        }
        let Some(caller) = caller else { return };
        match reply {
            ReplyPlan::Now(outcome) => match &mut self.unsaved {
                Some(unsaved) => unsaved.replies.push((caller, outcome)),
                None => out.replies.push((caller, outcome)),
            },
            ReplyPlan::Park => self.parked.push(caller),
            ReplyPlan::Journal { .. } => out.replies.push((caller, Ok(Reply::ok(Value::Null)))),
        }
    }

    /// Makes the unsaved batch durable and lets what waited for it go.
    fn commit(&mut self, out: &mut Outbox) {
        let Some(unsaved) = self.unsaved.take() else {
            return;
        };
        if unsaved.written {
            self.durable.state = self.memory.clone();
            self.durable.version = self.version;
            self.lazy = false;
        }
        self.durable.facts.extend(unsaved.facts);
        self.durable
            .journal
            .extend(unsaved.entries.into_iter().map(|(_, entry)| entry));
        out.replies.extend(unsaved.replies);
        if let Some(outcome) = unsaved.settle {
            for parked in self.parked.drain(..) {
                out.replies.push((parked, outcome.clone()));
            }
        }
    }

    /// Throws memory away and reloads the durable state: the unsaved batch
    /// is lost, answers to earlier asks become stale, and the behaviour
    /// resumes its unfinished work. `keep_parked`: the activation survives
    /// (a failed commit) and keeps its parked callers; otherwise the
    /// process died and they are gone.
    fn crash(&mut self, keep_parked: bool, out: &mut Outbox) {
        self.lazy = false;
        if let Some(unsaved) = self.unsaved.take() {
            for (caller, _) in unsaved.replies {
                if let Caller::Ask(ask) = caller {
                    out.lost.push(ask);
                }
            }
        }
        if !keep_parked {
            for parked in self.parked.drain(..) {
                if let Caller::Ask(ask) = parked {
                    out.lost.push(ask);
                }
            }
        }
        self.memory = self.durable.state.clone();
        self.version = self.durable.version;
        self.epoch += 1;
        if !B::is_pending(&self.memory) {
            // As the runtime does: nothing will settle these callers, and
            // the id may next carry another body, so they are told to retry.
            let lost =
                troupe_actors::Rejection::new(ErrorCode::Unavailable, "lost before durable; retry");
            for parked in self.parked.drain(..) {
                out.replies.push((parked, Err(lost.clone())));
            }
        }
        self.resume(out);
    }

    /// Sends the effects [`Behavior::resume`] asks for from memory.
    fn resume(&mut self, out: &mut Outbox) {
        let env = self.env(None);
        let (who, epoch) = (self.who, self.epoch);
        out.effects.extend(
            B::resume(&self.memory, &env)
                .into_iter()
                .map(|effect| (who, epoch, effect)),
        );
    }
}

/// How a run was set up: overdraft limits and funding of the opened
/// accounts, and each transfer's honest body.
#[derive(Debug, Clone)]
struct Setup {
    limits: Vec<u64>,
    funding: Vec<u64>,
    bodies: Vec<Body>,
    /// Quiescing delivers asks left over from an epoch that has passed
    /// only after all the others (else oldest first).
    stale_last: bool,
}

/// One event of the world, chosen by proptest. `pick`s select among what
/// is in flight (modulo its length); transfers are taken modulo their count.
#[derive(Debug, Clone)]
enum Op {
    /// The transfer's client sends `start` with the honest body (again).
    Start { transfer: usize },
    /// A client sends `start` with another body under the transfer's id.
    Hostile { transfer: usize, body: Body },
    /// An in-flight ask reaches its target. `retried`: its answer comes too
    /// late, the asker timed out and will send it again.
    DeliverAsk { pick: usize, retried: bool },
    /// An ask of an epoch that has passed, lingering in a mailbox, arrives.
    DeliverStaleAsk { pick: usize },
    /// An answer is lost on the way: the asker sends the ask again.
    LoseAnswer { pick: usize },
    /// An answer reaches an asker that can take it.
    DeliverAnswer { pick: usize },
    /// A transfer's unsaved batch becomes durable.
    Commit { transfer: usize },
    /// A transfer actor loses its memory and resumes from durable state.
    CrashTransfer { transfer: usize, keep_parked: bool },
    /// An account actor reloads and hands its outbox back (`adopt`).
    CrashAccount { account: usize },
    /// A client deposits into an account (more funding, in the middle of
    /// transfers: a debit refused earlier may now go through).
    Deposit { account: usize, amount: u64 },
}

/// What the runs reached, to show the property test is not vacuous.
#[derive(Debug, Default, Clone, Copy)]
struct Coverage {
    told_completed: u32,
    told_failed: u32,
    refunds_by_transfer: u32,
    refunds_by_adoption: u32,
    adoptions_recorded: u32,
    stale_answers: u32,
    hostile_refused: u32,
    /// Debits applied by an ask whose asker has since reloaded.
    stale_debits_applied: u32,
}

/// The simulated world: accounts, transfer actors and what is in flight.
struct World {
    accounts: Vec<Node<Account>>,
    transfers: Vec<Node<Transfer>>,
    bodies: Vec<Body>,
    stale_last: bool,
    limits: Vec<u64>,
    /// Money put in by deposits, per currency.
    funding: HashMap<Currency, i64>,
    asks: Vec<Ask>,
    answers: Vec<Answer>,
    next_ask: u64,
    /// Every client request: the transfer and the body it sent.
    clients: Vec<(usize, Body)>,
    told: Vec<Told>,
    coverage: Coverage,
}

impl World {
    /// Opens and funds `acc-0` to `acc-3`; `acc-4` stays unopened.
    fn new(setup: &Setup) -> TestResult<Self> {
        let mut accounts = Vec::new();
        for i in 0..ACCOUNTS {
            let id = ActorId::parse(format!("acc-{i}")).map_err(|e| fail(e.to_string()))?;
            accounts.push(Node::<Account>::new(Who::Account(i), id));
        }
        let mut transfers = Vec::new();
        for i in 0..setup.bodies.len() {
            let id = ActorId::parse(format!("t-{i}")).map_err(|e| fail(e.to_string()))?;
            transfers.push(Node::<Transfer>::new(Who::Transfer(i), id));
        }
        let eur = Currency::parse("EUR").map_err(|e| fail(e.to_string()))?;
        let mut funding = HashMap::new();
        let mut limits = Vec::new();
        for (i, node) in accounts.iter_mut().take(OPENED).enumerate() {
            let currency = if i == EUR_ACCOUNT { eur } else { Currency::USD };
            let limit = setup.limits.get(i).copied().unwrap_or(0);
            let fund = setup.funding.get(i).copied().unwrap_or(0);
            limits.push(limit);
            let mut out = Outbox::default();
            let open = account::Command::Open {
                currency,
                overdraft_limit: limit,
            };
            node.handle(open, Caller::Nobody, &mut out);
            if fund > 0 {
                let deposit = account::Command::Deposit {
                    amount: amount(fund)?,
                };
                node.handle(deposit, Caller::Nobody, &mut out);
            }
            node.commit(&mut out);
            *funding.entry(currency).or_insert(0) += i64::try_from(fund).unwrap_or(i64::MAX);
        }
        Ok(Self {
            accounts,
            transfers,
            bodies: setup.bodies.clone(),
            stale_last: setup.stale_last,
            limits,
            funding,
            asks: Vec::new(),
            answers: Vec::new(),
            next_ask: 0,
            clients: Vec::new(),
            told: Vec::new(),
            coverage: Coverage::default(),
        })
    }

    /// Plays one event.
    fn run(&mut self, op: &Op) -> TestResult {
        let transfers = self.transfers.len();
        match *op {
            Op::Start { transfer } => {
                let t = transfer % transfers;
                self.start(t, self.bodies[t])
            }
            Op::Hostile { transfer, body } => self.start(transfer % transfers, body),
            Op::DeliverAsk { pick, retried } => self.deliver_ask(pick, retried, false),
            Op::DeliverStaleAsk { pick } => self.deliver_ask(pick, false, true),
            Op::LoseAnswer { pick } => {
                self.lose_answer(pick);
                Ok(())
            }
            Op::DeliverAnswer { pick } => self.deliver_answer(pick),
            Op::Commit { transfer } => self.commit(transfer % transfers),
            Op::CrashTransfer {
                transfer,
                keep_parked,
            } => self.crash_transfer(transfer % transfers, keep_parked),
            Op::CrashAccount { account } => self.crash_account(account % ACCOUNTS),
            Op::Deposit { account, amount } => self.deposit(account % ACCOUNTS, amount),
        }
    }

    /// A client sends `start` to transfer `t`.
    fn start(&mut self, t: usize, body: Body) -> TestResult {
        let client = self.clients.len();
        self.clients.push((t, body));
        let start = transfer::Command::Start {
            from: self.accounts[body.from].id.clone(),
            to: self.accounts[body.to].id.clone(),
            amount: amount(body.amount)?,
        };
        self.deliver(
            Who::Transfer(t),
            AnyCommand::Transfer(start),
            Caller::Client(client),
        )
    }

    /// Hands `command` to `target`; an account commits at once.
    fn deliver(&mut self, target: Who, command: AnyCommand, caller: Caller) -> TestResult {
        let mut out = Outbox::default();
        match (target, command) {
            (Who::Account(i), AnyCommand::Account(command)) => {
                let stale = matches!(&caller, Caller::Ask(ask) if !self.live(ask));
                let debit = matches!(command, account::Command::TransferDebit { .. });
                let node = &mut self.accounts[i];
                node.handle(command, caller, &mut out);
                let applied = node.unsaved.as_ref().is_some_and(|u| u.written);
                node.commit(&mut out);
                if stale && debit && applied {
                    self.coverage.stale_debits_applied += 1;
                }
            }
            (Who::Transfer(i), AnyCommand::Transfer(command)) => {
                let node = &mut self.transfers[i];
                let created = node.memory.is_none();
                let adopt = matches!(command, transfer::Command::Adopt { .. });
                node.handle(command, caller, &mut out);
                if created && adopt && node.memory.is_some() {
                    self.coverage.adoptions_recorded += 1;
                }
            }
            (target, command) => return Err(fail(format!("{command:?} routed to {target:?}"))),
        }
        self.route(out)
    }

    /// Sends effects as asks, hands replies to clients and askers, and
    /// retries the asks whose replies were lost.
    fn route(&mut self, out: Outbox) -> TestResult {
        for (asker, epoch, effect) in out.effects {
            let target = self.locate(&effect.target)?;
            self.next_ask += 1;
            self.asks.push(Ask {
                id: self.next_ask,
                asker,
                epoch,
                tag: effect.tag,
                target,
                command: effect.command,
            });
        }
        for (caller, outcome) in out.replies {
            match caller {
                Caller::Client(client) => {
                    let (transfer, asked) = self.clients[client];
                    match &outcome {
                        Ok(_) => self.coverage.told_completed += 1,
                        Err(r) if r.details.is_some() => self.coverage.told_failed += 1,
                        Err(_) => self.coverage.hostile_refused += 1,
                    }
                    self.told.push(Told {
                        transfer,
                        asked,
                        outcome,
                    });
                }
                Caller::Ask(ask) => self.answers.push(Answer { ask, outcome }),
                Caller::Nobody => {}
            }
        }
        for ask in out.lost {
            self.retry(ask);
        }
        Ok(())
    }

    /// The actor an effect's address names.
    fn locate(&self, address: &Address) -> TestResult<Who> {
        let found = if address.kind == Account::KIND {
            self.accounts
                .iter()
                .position(|n| n.id == address.id)
                .map(Who::Account)
        } else if address.kind == Transfer::KIND {
            self.transfers
                .iter()
                .position(|n| n.id == address.id)
                .map(Who::Transfer)
        } else {
            None
        };
        found.ok_or_else(|| fail(format!("no actor {address}")))
    }

    fn epoch(&self, who: Who) -> u32 {
        match who {
            Who::Account(i) => self.accounts[i].epoch,
            Who::Transfer(i) => self.transfers[i].epoch,
        }
    }

    /// Whether answers may be handed to `who` now: not while a change of
    /// its is unsaved (the runtime holds them until the commit).
    fn takes_answers(&self, who: Who) -> bool {
        match who {
            Who::Account(i) => self.accounts[i].unsaved.is_none(),
            Who::Transfer(i) => self.transfers[i].unsaved.is_none(),
        }
    }

    /// The asker sends `ask` again, unless its epoch has passed (retries of
    /// a state thrown away stop) or an attempt is already in flight.
    fn retry(&mut self, ask: Ask) {
        if self.live(&ask) && !self.asks.iter().any(|a| a.id == ask.id) {
            self.asks.push(ask);
        }
    }

    /// Whether `ask` was made in its asker's current epoch.
    fn live(&self, ask: &Ask) -> bool {
        self.epoch(ask.asker) == ask.epoch
    }

    /// Delivers the `pick`th of the asks that are live (`stale == false`)
    /// or left over from a passed epoch (`stale == true`).
    fn deliver_ask(&mut self, pick: usize, retried: bool, stale: bool) -> TestResult {
        let among: Vec<usize> = (0..self.asks.len())
            .filter(|&i| self.live(&self.asks[i]) != stale)
            .collect();
        if among.is_empty() {
            return Ok(());
        }
        let i = among[pick % among.len()];
        // A retried ask stays in flight; an ask of a passed epoch is not retried.
        let (ask, caller) = if retried && !stale {
            (self.asks[i].clone(), Caller::Nobody)
        } else {
            let ask = self.asks.remove(i);
            (ask.clone(), Caller::Ask(ask))
        };
        self.deliver(ask.target, ask.command, caller)
    }

    /// Loses the `pick`th answer on its way: the asker sends the ask again.
    fn lose_answer(&mut self, pick: usize) {
        if self.answers.is_empty() {
            return;
        }
        let answer = self.answers.remove(pick % self.answers.len());
        self.retry(answer.ask);
    }

    /// Hands the `pick`th of the answers their askers can take now to its
    /// asker, unless it is stale; an account commits what it does at once.
    fn deliver_answer(&mut self, pick: usize) -> TestResult {
        let ready: Vec<usize> = (0..self.answers.len())
            .filter(|&i| self.takes_answers(self.answers[i].ask.asker))
            .collect();
        if ready.is_empty() {
            return Ok(());
        }
        let Answer { ask, outcome } = self.answers.remove(ready[pick % ready.len()]);
        if !self.live(&ask) {
            self.coverage.stale_answers += 1;
            return Ok(());
        }
        // The asker's wait is over: no other attempt of this ask goes on.
        self.asks.retain(|a| a.id != ask.id);
        self.answers.retain(|a| a.ask.id != ask.id);
        let mut out = Outbox::default();
        match ask.asker {
            Who::Account(i) => {
                let node = &mut self.accounts[i];
                node.on_effect(&ask.tag, outcome, &mut out);
                let refunds = node.unsaved.as_ref().map_or(0, |u| u.entries.len());
                self.coverage.refunds_by_adoption += u32::try_from(refunds).unwrap_or(0);
                node.commit(&mut out);
            }
            Who::Transfer(i) => {
                let refund = matches!(
                    ask.command,
                    AnyCommand::Account(account::Command::Refund { .. })
                ) && outcome
                    .as_ref()
                    .is_ok_and(|r| r.body["refunded"] == Value::Bool(true));
                self.transfers[i].on_effect(&ask.tag, outcome, &mut out);
                if refund {
                    self.coverage.refunds_by_transfer += 1;
                }
            }
        }
        self.route(out)
    }

    /// Makes transfer `t`'s unsaved batch durable.
    fn commit(&mut self, t: usize) -> TestResult {
        let mut out = Outbox::default();
        self.transfers[t].commit(&mut out);
        self.route(out)
    }

    /// Transfer `t` reloads from durable state and resumes.
    fn crash_transfer(&mut self, t: usize, keep_parked: bool) -> TestResult {
        let mut out = Outbox::default();
        self.transfers[t].crash(keep_parked, &mut out);
        self.route(out)
    }

    /// A client deposits `value` into account `a`; what it puts in counts
    /// as funding.
    fn deposit(&mut self, a: usize, value: u64) -> TestResult {
        let node = &mut self.accounts[a];
        let mut out = Outbox::default();
        let deposit = account::Command::Deposit {
            amount: amount(value)?,
        };
        node.handle(deposit, Caller::Nobody, &mut out);
        let put_in = node.unsaved.as_ref().is_some_and(|u| u.written);
        node.commit(&mut out);
        if let (true, Some(state)) = (put_in, &node.durable.state) {
            *self.funding.entry(state.currency).or_insert(0) +=
                i64::try_from(value).unwrap_or(i64::MAX);
        }
        self.route(out)
    }

    /// Account `a` reloads (it has nothing unsaved) and resumes: it asks
    /// every transfer in its outbox to adopt it.
    fn crash_account(&mut self, a: usize) -> TestResult {
        let mut out = Outbox::default();
        self.accounts[a].crash(true, &mut out);
        self.route(out)
    }

    /// Lets the world run without faults until nothing is in flight and no
    /// actor has unfinished work: commits everything, delivers every ask and
    /// answer, and resumes whatever is still pending with nothing driving it
    /// (as the runtime's retry timer does).
    fn quiesce(&mut self) -> TestResult {
        for _ in 0..QUIESCE_ROUNDS {
            let mut budget = QUIESCE_BUDGET;
            loop {
                for t in 0..self.transfers.len() {
                    self.commit(t)?;
                }
                if !self.answers.is_empty() {
                    self.deliver_answer(0)?;
                } else if !self.asks.is_empty() {
                    let stale = if self.stale_last {
                        !self.asks.iter().any(|a| self.live(a))
                    } else {
                        !self.live(&self.asks[0])
                    };
                    self.deliver_ask(0, false, stale)?;
                } else {
                    break;
                }
                budget -= 1;
                if budget == 0 {
                    return Err(fail("asks and answers never stop"));
                }
            }
            let mut out = Outbox::default();
            for node in &mut self.accounts {
                // The runtime's timer writes a lazy change nothing joined.
                if node.lazy {
                    node.lazy = false;
                    node.version += 1;
                    node.durable.state = node.memory.clone();
                    node.durable.version = node.version;
                }
                if Account::is_pending(&node.memory) {
                    node.resume(&mut out);
                }
            }
            for node in &mut self.transfers {
                if Transfer::is_pending(&node.memory) {
                    node.resume(&mut out);
                }
            }
            if out.effects.is_empty() {
                return Ok(());
            }
            self.route(out)?;
        }
        let pending: Vec<&ActorId> = self
            .accounts
            .iter()
            .filter(|n| Account::is_pending(&n.memory))
            .map(|n| &n.id)
            .chain(
                self.transfers
                    .iter()
                    .filter(|n| Transfer::is_pending(&n.memory))
                    .map(|n| &n.id),
            )
            .collect();
        Err(fail(format!(
            "still pending after {QUIESCE_ROUNDS} rounds: {pending:?}"
        )))
    }

    // -----------------------------------------------------------------------
    // Properties
    // -----------------------------------------------------------------------

    /// Property 1: every balance is within its overdraft limit.
    fn check_limits(&self) -> TestResult {
        for (node, limit) in self.accounts.iter().zip(&self.limits) {
            for state in [&node.memory, &node.durable.state].into_iter().flatten() {
                let floor = -i64::try_from(*limit).unwrap_or(i64::MAX);
                prop_assert!(
                    state.balance >= floor,
                    "{} has balance {} below -{limit}",
                    node.id,
                    state.balance
                );
            }
        }
        Ok(())
    }

    /// The opened accounts' durable states.
    fn opened(&self) -> impl Iterator<Item = (&Node<Account>, &AccountState)> {
        self.accounts
            .iter()
            .filter_map(|n| n.durable.state.as_ref().map(|s| (n, s)))
    }

    /// Each account's committed journal, parsed.
    fn journals(&self) -> TestResult<Vec<Vec<Entry>>> {
        self.accounts
            .iter()
            .map(|n| {
                n.durable
                    .journal
                    .iter()
                    .map(|v| serde_json::from_value::<Entry>(v.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| fail(format!("unreadable entry at {}: {e}", n.id)))
            })
            .collect()
    }

    /// Properties 2 to 5, once the world is quiet.
    fn check_end(&self) -> TestResult {
        self.check_limits()?;
        let journals = self.journals()?;

        // 2. Conservation, empty outboxes, nothing pending.
        let mut held: HashMap<Currency, i64> = HashMap::new();
        for (node, state) in self.opened() {
            *held.entry(state.currency).or_insert(0) += state.balance;
            prop_assert!(
                state.outbox.is_empty(),
                "{} still holds {:?} in its outbox",
                node.id,
                state.outbox
            );
        }
        for currency in self.funding.keys().chain(held.keys()) {
            let put_in = self.funding.get(currency).copied().unwrap_or(0);
            let now = held.get(currency).copied().unwrap_or(0);
            prop_assert_eq!(now, put_in, "{} not conserved", currency.as_str());
        }
        for node in &self.transfers {
            prop_assert!(
                !Transfer::is_pending(&node.durable.state) && !Transfer::is_pending(&node.memory),
                "{} is still pending: {:?}",
                node.id,
                node.durable.state
            );
        }

        // 4. Each journal replays to its balance.
        for (node, journal) in self.accounts.iter().zip(&journals) {
            let mut balance = 0i64;
            for (n, entry) in journal.iter().enumerate() {
                prop_assert_eq!(entry.seq, n as u64 + 1, "seq gap at {}", node.id);
                let amount = i64::try_from(entry.amount).unwrap_or(i64::MAX);
                balance += match entry.kind {
                    EntryKind::Deposit | EntryKind::TransferCredit | EntryKind::Refund => amount,
                    EntryKind::Withdrawal | EntryKind::TransferDebit => -amount,
                };
                prop_assert_eq!(
                    entry.balance_after,
                    balance,
                    "{} entry {} does not follow",
                    node.id,
                    entry.seq
                );
            }
            if let Some(state) = &node.durable.state {
                prop_assert_eq!(state.balance, balance, "{} journal vs balance", node.id);
                prop_assert_eq!(state.last_seq, journal.len() as u64, "{} last_seq", node.id);
            } else {
                prop_assert!(journal.is_empty(), "{} was never opened", node.id);
            }
        }

        // 5. No leg applied twice. An id reused with another body after
        // its first record was lost may debit a second account; that debit
        // is refunded on adoption, so per id: at most one leg of each kind
        // per account, one credit in all, and one debit not given back.
        for node in &self.transfers {
            let legs = Legs::of(&node.id, &journals);
            for account in 0..ACCOUNTS {
                let (debits, refunds) = (legs.debits_at(account), legs.refunds_at(account));
                prop_assert!(
                    debits <= 1 && refunds <= debits && legs.credits_at(account) <= 1,
                    "a leg of {} was applied twice at {}: {:?}",
                    node.id,
                    self.accounts[account].id,
                    legs
                );
            }
            let kept = (0..ACCOUNTS)
                .filter(|&a| legs.debits_at(a) > legs.refunds_at(a))
                .count();
            prop_assert!(
                legs.credits.len() <= 1 && kept <= 1,
                "{} moved money from or to two accounts: {:?}",
                node.id,
                legs
            );
        }

        // 3. Clients were told the truth.
        for told in &self.told {
            self.check_told(told, &journals)?;
        }
        Ok(())
    }

    /// Property 3 for one answer to a client.
    fn check_told(&self, told: &Told, journals: &[Vec<Entry>]) -> TestResult {
        let node = &self.transfers[told.transfer];
        let (view, completed) = match &told.outcome {
            Ok(reply) => (&reply.body, true),
            Err(r) => match &r.details {
                Some(view) => (view, false),
                // Refused without a transfer (`idempotency_key_reused`, or
                // `unavailable` for a retry): nothing was claimed about it.
                None => {
                    prop_assert!(
                        matches!(
                            r.code,
                            ErrorCode::IdempotencyKeyReused | ErrorCode::Unavailable
                        ),
                        "{:?}",
                        r
                    );
                    return Ok(());
                }
            },
        };
        let asked = told.asked;
        let about = (
            view["from"].as_str(),
            view["to"].as_str(),
            view["amount"].as_u64(),
        );
        let expected = (
            Some(self.accounts[asked.from].id.as_str()),
            Some(self.accounts[asked.to].id.as_str()),
            Some(asked.amount),
        );
        prop_assert_eq!(
            about,
            expected,
            "a client of {} was answered about another body: {:?}",
            node.id,
            told.outcome
        );
        let Some(state) = &node.durable.state else {
            return Err(fail(format!(
                "{} was told about but never recorded",
                node.id
            )));
        };
        let legs = Legs::of(&node.id, journals);
        let (from, to) = (self.index(&state.from)?, self.index(&state.to)?);
        prop_assert_eq!(legs.net, 0, "{} moved money net: {:?}", node.id, legs);
        if completed {
            prop_assert_eq!(
                state.status,
                TransferStatus::Completed,
                "{} told completed",
                node.id
            );
            prop_assert!(
                legs.debits_at(from) == 1 && legs.refunds_at(from) == 0,
                "{} told completed, its source was not debited once: {:?}",
                node.id,
                legs
            );
            prop_assert_eq!(legs.credits.as_slice(), &[to], "{} credit", node.id);
        } else {
            prop_assert_eq!(
                state.status,
                TransferStatus::Failed,
                "{} told failed",
                node.id
            );
            prop_assert!(
                legs.credits.is_empty(),
                "{} told failed: {:?}",
                node.id,
                legs
            );
            let mut debits = legs.debits.clone();
            let mut refunds = legs.refunds.clone();
            debits.sort_unstable();
            refunds.sort_unstable();
            prop_assert_eq!(debits, refunds, "{} debit without refund", node.id);
        }
        Ok(())
    }

    fn index(&self, id: &ActorId) -> TestResult<usize> {
        self.accounts
            .iter()
            .position(|n| n.id == *id)
            .ok_or_else(|| fail(format!("no account {id}")))
    }
}

/// The entries naming one transfer, across all accounts.
#[derive(Debug, Default)]
struct Legs {
    /// The account of each `transfer_debit` entry naming it.
    debits: Vec<usize>,
    /// The account of each `transfer_credit` entry naming it.
    credits: Vec<usize>,
    /// The account of each `refund` entry naming it.
    refunds: Vec<usize>,
    /// The sum of its movements: 0 when it moved nothing net.
    net: i64,
}

impl Legs {
    fn debits_at(&self, account: usize) -> usize {
        count(&self.debits, account)
    }

    fn credits_at(&self, account: usize) -> usize {
        count(&self.credits, account)
    }

    fn refunds_at(&self, account: usize) -> usize {
        count(&self.refunds, account)
    }

    /// The legs of `transfer` in the accounts' journals.
    fn of(transfer: &ActorId, journals: &[Vec<Entry>]) -> Self {
        let mut legs = Self::default();
        for (account, journal) in journals.iter().enumerate() {
            for entry in journal
                .iter()
                .filter(|e| e.transfer_id.as_ref() == Some(transfer))
            {
                let amount = i64::try_from(entry.amount).unwrap_or(i64::MAX);
                match entry.kind {
                    EntryKind::TransferDebit => {
                        legs.debits.push(account);
                        legs.net -= amount;
                    }
                    EntryKind::TransferCredit => {
                        legs.credits.push(account);
                        legs.net += amount;
                    }
                    EntryKind::Refund => {
                        legs.refunds.push(account);
                        legs.net += amount;
                    }
                    EntryKind::Deposit | EntryKind::Withdrawal => {}
                }
            }
        }
        legs
    }
}

/// How many times `account` appears in `accounts`.
fn count(accounts: &[usize], account: usize) -> usize {
    accounts.iter().filter(|&&a| a == account).count()
}

fn amount(value: u64) -> TestResult<Amount> {
    Amount::new(value).map_err(|e| fail(e.to_string()))
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

/// An account by index: mostly `acc-0` and `acc-1`, so that transfers
/// meet at the same accounts, sometimes `acc-2`, the EUR account `acc-3` or
/// the unopened `acc-4`.
fn account_index() -> impl Strategy<Value = usize> {
    prop_oneof![
        10 => 0..2usize,
        2 => Just(2usize),
        1 => Just(EUR_ACCOUNT),
        1 => Just(OPENED),
    ]
}

/// Amounts in the range of the funding: some are refused for want of funds.
fn amount_value() -> impl Strategy<Value = u64> {
    1u64..800
}

/// A transfer between two accounts, rarely the same one.
fn body() -> impl Strategy<Value = Body> {
    let same = prop::bool::weighted(0.05);
    (account_index(), account_index(), amount_value(), same).prop_map(|(from, to, amount, same)| {
        let to = match (same, to == from) {
            (true, _) => from,
            (false, true) => (from + 1) % ACCOUNTS,
            (false, false) => to,
        };
        Body { from, to, amount }
    })
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        vec(0u64..200, OPENED),
        vec(0u64..600, OPENED),
        vec(body(), 4..=TRANSFERS),
        any::<bool>(),
    )
        .prop_map(|(limits, funding, bodies, stale_last)| Setup {
            limits,
            funding,
            bodies,
            stale_last,
        })
}

fn op() -> impl Strategy<Value = Op> {
    let pick = 0usize..64;
    prop_oneof![
        3 => (0..TRANSFERS).prop_map(|transfer| Op::Start { transfer }),
        1 => (0..TRANSFERS, body()).prop_map(|(transfer, body)| Op::Hostile { transfer, body }),
        6 => (pick.clone(), prop::bool::weighted(0.2))
            .prop_map(|(pick, retried)| Op::DeliverAsk { pick, retried }),
        1 => pick.clone().prop_map(|pick| Op::DeliverStaleAsk { pick }),
        1 => pick.clone().prop_map(|pick| Op::LoseAnswer { pick }),
        6 => pick.prop_map(|pick| Op::DeliverAnswer { pick }),
        3 => (0..TRANSFERS).prop_map(|transfer| Op::Commit { transfer }),
        3 => (0..TRANSFERS, any::<bool>())
            .prop_map(|(transfer, keep_parked)| Op::CrashTransfer { transfer, keep_parked }),
        1 => (0..ACCOUNTS).prop_map(|account| Op::CrashAccount { account }),
        2 => (account_index(), amount_value())
            .prop_map(|(account, amount)| Op::Deposit { account, amount }),
    ]
}

fn scenario() -> impl Strategy<Value = (Setup, Vec<Op>)> {
    (setup(), vec(op(), 0..200))
}

/// Runs `ops`, checking property 1 after each, then quiesces.
fn play(setup: &Setup, ops: &[Op]) -> TestResult<World> {
    let mut world = World::new(setup)?;
    for op in ops {
        world.run(op)?;
        world.check_limits()?;
    }
    world.quiesce()?;
    Ok(world)
}

proptest! {
    #![proptest_config(ProptestConfig {
        // One file only: a failure is reported with its shrunk case, not
        // saved to a regressions file next to this one.
        failure_persistence: None,
        ..ProptestConfig::with_cases(200)
    })]

    #[test]
    fn transfers_are_exactly_once_and_clients_are_told_the_truth(
        (setup, ops) in scenario(),
    ) {
        let world = play(&setup, &ops)?;
        world.check_end()?;
    }
}

/// The generated runs reach every phase the properties talk about:
/// completions, failures, refunds by the transfer and by adoption,
/// transfers recorded by adoption, stale answers and hostile refusals.
#[test]
fn generated_runs_reach_every_phase() {
    let mut runner = TestRunner::deterministic();
    let strategy = scenario();
    let mut total = Coverage::default();
    for _ in 0..300 {
        let (setup, ops) = strategy
            .new_tree(&mut runner)
            .expect("a scenario")
            .current();
        // Coverage only: the property test judges the outcomes.
        let Ok(world) = play(&setup, &ops) else {
            continue;
        };
        let c = world.coverage;
        total.told_completed += c.told_completed;
        total.told_failed += c.told_failed;
        total.refunds_by_transfer += c.refunds_by_transfer;
        total.refunds_by_adoption += c.refunds_by_adoption;
        total.adoptions_recorded += c.adoptions_recorded;
        total.stale_answers += c.stale_answers;
        total.hostile_refused += c.hostile_refused;
        total.stale_debits_applied += c.stale_debits_applied;
    }
    eprintln!("{total:?}");
    let Coverage {
        told_completed,
        told_failed,
        refunds_by_transfer,
        refunds_by_adoption,
        adoptions_recorded,
        stale_answers,
        hostile_refused,
        stale_debits_applied,
    } = total;
    for (what, n) in [
        ("told completed", told_completed),
        ("told failed", told_failed),
        ("refunds by the transfer", refunds_by_transfer),
        ("refunds by adoption", refunds_by_adoption),
        ("transfers recorded by adoption", adoptions_recorded),
        ("stale answers", stale_answers),
        ("hostile starts refused", hostile_refused),
        ("debits applied by a stale ask", stale_debits_applied),
    ] {
        assert!(n > 0, "no generated run reached: {what} ({total:?})");
    }
}

/// One transfer driven by hand: the debit is delivered, its answer lost,
/// the transfer actor crashes and resumes. The debit is then asked three
/// times (the first attempt, the retry of the lost answer, the resumed
/// ask) and must move money once: the account's fact deduplicates it.
#[test]
fn a_debit_asked_again_after_a_lost_answer_and_a_crash_is_applied_once() {
    let setup = Setup {
        limits: vec![0; OPENED],
        funding: vec![1_000, 0, 0, 0],
        bodies: vec![Body {
            from: 0,
            to: 1,
            amount: 60,
        }],
        stale_last: false,
    };
    let mut world = World::new(&setup).expect("the world opens");
    let steps = [
        Op::Start { transfer: 0 },
        Op::Commit { transfer: 0 },
        Op::DeliverAsk {
            pick: 0,
            retried: false,
        },
        Op::LoseAnswer { pick: 0 },
        Op::CrashTransfer {
            transfer: 0,
            keep_parked: true,
        },
    ];
    for op in &steps {
        world.run(op).expect("the step runs");
    }
    assert_eq!(world.asks.len(), 2, "the retry and the resumed debit");
    world.quiesce().expect("the world goes quiet");

    let journals = world.journals().expect("readable journals");
    let t0 = &world.transfers[0];
    let legs = Legs::of(&t0.id, &journals);
    assert_eq!(legs.debits, vec![0], "the debit applied once: {legs:?}");
    assert_eq!(legs.credits, vec![1], "the credit applied once: {legs:?}");
    let balance = |i: usize| world.accounts[i].durable.state.as_ref().map(|s| s.balance);
    assert_eq!(balance(0), Some(940));
    assert_eq!(balance(1), Some(60));
    assert_eq!(
        t0.durable.state.as_ref().map(|t: &TransferState| t.status),
        Some(TransferStatus::Completed)
    );
    assert!(
        matches!(world.told.as_slice(), [Told { outcome: Ok(_), .. }]),
        "the client is told completed once: {:?}",
        world.told
    );
    if let Err(e) = world.check_end() {
        panic!("{e}");
    }
}
