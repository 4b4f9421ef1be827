//! The ledger's clients and promises, for the simulator: the example of
//! what the author of a kind writes (docs/src/development/testing.md).
//!
//! Every money movement a client asks for has an amount no other request
//! uses, so the journal tells which request each entry came from: a keyed
//! deposit applied twice shows as two entries of its amount, a `504` that
//! hid a deposit shows as an entry of an amount its client was told was
//! not applied.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;
use serde_json::{json, Value};
use troupe::runtime::IdempotencyRequest;
use troupe::sim::{Clients, Durable, Request, RequestId, Told, Workload};
use troupe_actors::account::{AccountState, Entry, EntryKind};
use troupe_actors::transfer::{Status, TransferState};
use troupe_actors::{kinds, ActorId, Address, ErrorCode, Kind};

/// What one logical request is.
#[derive(Debug, Clone)]
enum Op {
    Open {
        account: usize,
    },
    Deposit {
        account: usize,
        keyed: bool,
    },
    Withdraw {
        account: usize,
        keyed: bool,
    },
    Transfer {
        id: String,
        from: usize,
        to: usize,
    },
    /// A journal page (`entries` after, limit) or the account (`get`).
    Read {
        account: usize,
        page: Option<(u64, u32)>,
    },
    /// A handler that panics (the test builds' `crash`): supervision
    /// restarts the account from its durable state.
    Crash {
        account: usize,
    },
}

/// One logical request and every copy of it sent, with what each was told.
#[derive(Debug, Clone)]
struct Logical {
    op: Op,
    amount: u64,
    /// For a transfer: the copies that carried another body (hostile),
    /// with that body's amount.
    told: Vec<(u64, Told)>,
    /// Copies not answered yet.
    open: u32,
}

/// How a copy's answer reads for the invariants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    Applied,
    NotApplied,
    Unknown,
}

fn said(told: &Told) -> Said {
    match told {
        Told::Lost => Said::Unknown,
        Told::Answer(a) => match &a.outcome {
            // Accepted, durable and going on: it completes or fails later.
            Ok(r) if r.status == troupe_actors::Status::Accepted => Said::Unknown,
            Ok(_) => Said::Applied,
            // The work goes on without its caller: it may or may not finish.
            Err(r) if r.message.contains("goes on") => Said::Unknown,
            // The store neither confirmed nor refused it in time.
            Err(r) if r.message.contains("may have been applied") => Said::Unknown,
            Err(_) => Said::NotApplied,
        },
    }
}

pub struct Ledger {
    accounts: Vec<ActorId>,
    currencies: Vec<&'static str>,
    logical: Vec<Logical>,
    /// Request -> (logical, the amount that copy carried, when its
    /// caller's deadline passes).
    copies: BTreeMap<RequestId, (usize, u64, Duration)>,
    /// Promises broken at the moment an answer arrived.
    broken: Vec<String>,
    next_amount: u64,
    /// Operations still to start.
    budget: u32,
    pub duplicates: u64,
}

impl Ledger {
    pub fn new(rng: &mut impl Rng) -> Self {
        let n = rng.random_range(2..=5);
        let accounts = (0..n)
            .map(|i| ActorId::parse(format!("acc-{i}")).expect("a valid id"))
            .collect();
        // Now and then an account of another currency: transfers to it fail.
        let currencies = (0..n)
            .map(|i| {
                if i == n - 1 && rng.random_bool(0.3) {
                    "USD"
                } else {
                    "EUR"
                }
            })
            .collect();
        Self {
            accounts,
            currencies,
            logical: Vec::new(),
            copies: BTreeMap::new(),
            broken: Vec::new(),
            next_amount: 1_000,
            budget: rng.random_range(20..120),
            duplicates: 0,
        }
    }

    fn amount(&mut self) -> u64 {
        self.next_amount += 1;
        self.next_amount
    }

    fn request(&self, op: &Op, amount: u64, key: Option<String>, timeout: Duration) -> Request {
        let account = |i: usize| Address::new(Kind::Account, self.accounts[i].clone());
        let (address, message, payload) = match op {
            Op::Open { account: i } => (
                account(*i),
                "open",
                json!({"currency": self.currencies[*i]}),
            ),
            Op::Deposit { account: i, .. } => (account(*i), "deposit", json!({"amount": amount})),
            Op::Withdraw { account: i, .. } => (account(*i), "withdraw", json!({"amount": amount})),
            Op::Read {
                account: i,
                page: Some((after, limit)),
            } => (
                account(*i),
                "entries",
                json!({"after": after, "limit": limit}),
            ),
            Op::Read {
                account: i,
                page: None,
            } => (account(*i), "get", json!({})),
            Op::Crash { account: i } => (account(*i), "crash", json!({})),
            Op::Transfer { id, from, to } => (
                Address::new(
                    Kind::Transfer,
                    ActorId::parse(id.clone()).expect("a valid id"),
                ),
                "start",
                json!({"from": self.accounts[*from].as_str(), "to": self.accounts[*to].as_str(), "amount": amount}),
            ),
        };
        let idempotency = key.map(|k| IdempotencyRequest::new(k, message, &payload));
        let command = kinds::parse(address.kind, message, payload).expect("a valid command");
        Request {
            address,
            command,
            idempotency,
            timeout,
        }
    }

    fn key(&self, logical: usize) -> Option<String> {
        match &self.logical[logical].op {
            Op::Deposit { keyed: true, .. } | Op::Withdraw { keyed: true, .. } => {
                Some(format!("k-{logical}"))
            }
            _ => None,
        }
    }

    /// Sends one copy of `logical` after `delay`, carrying `amount`.
    fn send_copy(
        &mut self,
        clients: &mut Clients<'_>,
        logical: usize,
        amount: u64,
        delay: Duration,
    ) {
        let rng = clients.rng();
        // Tiny deadlines now and then: a message may be dropped unprocessed,
        // or taken just before its caller gives up.
        let timeout = if rng.random_bool(0.15) {
            Duration::from_micros(rng.random_range(200..5_000))
        } else {
            Duration::from_millis(rng.random_range(20..2_000))
        };
        let request = self.request(
            &self.logical[logical].op,
            amount,
            self.key(logical),
            timeout,
        );
        let deadline = clients.now() + delay + timeout;
        if let Some(id) = clients.send(delay, request) {
            self.copies.insert(id, (logical, amount, deadline));
            self.logical[logical].open += 1;
        }
    }

    fn start_one(&mut self, clients: &mut Clients<'_>, delay: Duration) {
        let n = self.accounts.len();
        let rng = clients.rng();
        let pick = rng.random_range(0..100);
        let account = rng.random_range(0..n);
        let keyed = rng.random_bool(0.7);
        let op = match pick {
            0..=34 => Op::Deposit { account, keyed },
            35..=49 => Op::Withdraw { account, keyed },
            50..=89 => {
                let from = account;
                // Now and then the same account, or one never opened.
                let to = rng.random_range(0..n);
                Op::Transfer {
                    id: format!("t-{}", self.logical.len()),
                    from,
                    to,
                }
            }
            90..=98 => Op::Read {
                account,
                // Short pages, so that pages with a next one are read too.
                page: rng
                    .random_bool(0.5)
                    .then(|| (rng.random_range(0..=3), rng.random_range(1..=4))),
            },
            _ => Op::Crash { account },
        };
        let amount = match op {
            Op::Deposit { .. } => self.amount() * 1_000,
            _ => self.amount(),
        };
        let logical = self.logical.len();
        self.logical.push(Logical {
            op: op.clone(),
            amount,
            told: Vec::new(),
            open: 0,
        });
        self.send_copy(clients, logical, amount, delay);
        // The same request twice at nearly the same time (a request without
        // a key or an id sent twice is two requests: not a duplicate).
        let rng = clients.rng();
        let deduplicated = matches!(
            op,
            Op::Deposit { keyed: true, .. }
                | Op::Withdraw { keyed: true, .. }
                | Op::Transfer { .. }
        );
        if deduplicated && rng.random_bool(0.3) {
            let again = delay + Duration::from_micros(rng.random_range(0..3_000));
            self.duplicates += 1;
            self.send_copy(clients, logical, amount, again);
        }
        // The same transfer id with another body.
        let rng = clients.rng();
        if matches!(op, Op::Transfer { .. }) && rng.random_bool(0.1) {
            let again = delay + Duration::from_micros(rng.random_range(0..3_000));
            let other = self.amount();
            self.send_copy(clients, logical, other, again);
        }
    }
}

impl Workload for Ledger {
    fn start(&mut self, clients: &mut Clients<'_>) {
        for account in 0..self.accounts.len() {
            let logical = self.logical.len();
            self.logical.push(Logical {
                op: Op::Open { account },
                amount: 0,
                told: Vec::new(),
                open: 0,
            });
            self.send_copy(clients, logical, 0, Duration::ZERO);
        }
        let starters = clients.rng().random_range(2..8);
        for _ in 0..starters {
            let delay = Duration::from_micros(clients.rng().random_range(1_000..20_000));
            self.start_one(clients, delay);
        }
    }

    fn told(&mut self, clients: &mut Clients<'_>, id: RequestId, told: &Told) {
        let Some((logical, amount, deadline)) = self.copies.remove(&id) else {
            return;
        };
        // "Unknown" is an answer for a caller who waited its whole deadline
        // (the work goes on, or the store could not be asked in time),
        // never a shortcut.
        // Bounded waits: a caller taken in time waits for its commit, never
        // for a store that does not answer, nor for work that goes on.
        let late = clients.now().saturating_sub(deadline);
        if late > Duration::from_secs(1) {
            let broken = format!("request #{id} was answered {late:?} past its deadline: {told:?}");
            self.broken.push(broken);
        }
        let early = clients.now() < deadline;
        if said(told) == Said::Unknown && matches!(told, Told::Answer(_)) && early {
            let broken = format!(
                "request #{id} was told the outcome is unknown before its deadline: {told:?}"
            );
            self.broken.push(broken);
        }
        // `500` is for the handler that panics on purpose, and nothing else:
        // the store's data is never unreadable here.
        let internal = matches!(told, Told::Answer(a) if matches!(&a.outcome, Err(r) if r.code == troupe_actors::ErrorCode::Internal));
        if internal && !matches!(self.logical[logical].op, Op::Crash { .. }) {
            let broken = format!("request #{id} got an internal error: {told:?}");
            self.broken.push(broken);
        }
        let entry = &mut self.logical[logical];
        entry.open -= 1;
        entry.told.push((amount, told.clone()));
        let transient = match told {
            Told::Lost => true,
            Told::Answer(a) => matches!(&a.outcome, Err(r) if r.code.is_transient()),
        };
        let retries = matches!(
            entry.op,
            Op::Open { .. }
                | Op::Deposit { keyed: true, .. }
                | Op::Withdraw { keyed: true, .. }
                | Op::Transfer { .. }
        );
        // A retry after an error or a lost connection, with the same key
        // or id and the same body: the client's half of exactly-once.
        let rng = clients.rng();
        if transient && retries && amount == entry.amount && rng.random_bool(0.8) {
            let delay = Duration::from_micros(rng.random_range(0..100_000));
            self.send_copy(clients, logical, amount, delay);
        }
        if self.budget > 0 && clients.open() {
            self.budget -= 1;
            let delay = Duration::from_micros(clients.rng().random_range(0..10_000));
            self.start_one(clients, delay);
        }
    }

    fn check(&self, store: &Durable, quiescent: bool) -> Result<(), String> {
        if let Some(broken) = self.broken.first() {
            return Err(broken.clone());
        }
        let books = Books::read(store, &self.accounts)?;
        books.consistent()?;
        if quiescent {
            books.conserved()?;
            self.promises_kept(store, &books)?;
        }
        Ok(())
    }
}

/// The accounts as the store holds them.
struct Books {
    accounts: BTreeMap<String, (AccountState, Vec<Entry>)>,
}

impl Books {
    fn read(store: &Durable, ids: &[ActorId]) -> Result<Self, String> {
        let mut accounts = BTreeMap::new();
        for id in ids {
            let actor = format!("account/{id}");
            let Some((_, bytes)) = store.states.get(&actor) else {
                continue;
            };
            let state: Option<AccountState> = serde_json::from_slice(bytes)
                .map_err(|e| format!("{actor}: unreadable state: {e}"))?;
            let Some(state) = state else { continue };
            let entries = store
                .entries
                .get(&actor)
                .map(|rows| {
                    rows.values()
                        .map(|r| serde_json::from_slice::<Entry>(r))
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()
                .map_err(|e| format!("{actor}: unreadable entry: {e}"))?
                .unwrap_or_default();
            accounts.insert(id.as_str().to_owned(), (state, entries));
        }
        Ok(Self { accounts })
    }

    /// Each account's journal is gapless and adds up to its balance.
    fn consistent(&self) -> Result<(), String> {
        for (id, (state, entries)) in &self.accounts {
            let mut balance = 0i64;
            for (i, e) in entries.iter().enumerate() {
                if e.seq != i as u64 + 1 {
                    return Err(format!(
                        "{id}: entry {} found where {} belongs",
                        e.seq,
                        i + 1
                    ));
                }
                balance += signed(e);
                if e.balance_after != balance {
                    return Err(format!(
                        "{id}: entry {} says balance {} after, the journal adds up to {balance}",
                        e.seq, e.balance_after
                    ));
                }
            }
            if entries.len() as u64 != state.last_seq || balance != state.balance {
                return Err(format!(
                    "{id}: state says balance {} at seq {}, the journal {balance} at {}",
                    state.balance,
                    state.last_seq,
                    entries.len()
                ));
            }
        }
        Ok(())
    }

    /// With nothing in flight, money was neither created nor destroyed.
    fn conserved(&self) -> Result<(), String> {
        let mut held = 0i64;
        let mut brought = 0i64;
        for (id, (state, entries)) in &self.accounts {
            held += state.balance;
            if !state.outbox.is_empty() {
                return Err(format!(
                    "{id}: transfers still in its outbox: {:?}",
                    state.outbox.keys().collect::<Vec<_>>()
                ));
            }
            for e in entries {
                match e.kind {
                    EntryKind::Deposit => brought += e.amount as i64,
                    EntryKind::Withdrawal => brought -= e.amount as i64,
                    _ => {}
                }
            }
        }
        if held != brought {
            return Err(format!(
                "accounts hold {held}, deposits minus withdrawals are {brought}"
            ));
        }
        Ok(())
    }

    /// Entries of `kind` with `amount` at `account`, or with `transfer`.
    fn count(
        &self,
        account: &str,
        kind: EntryKind,
        amount: Option<u64>,
        transfer: Option<&str>,
    ) -> usize {
        self.accounts.get(account).map_or(0, |(_, entries)| {
            entries
                .iter()
                .filter(|e| e.kind == kind)
                .filter(|e| amount.is_none_or(|a| e.amount == a))
                .filter(|e| {
                    transfer.is_none_or(|t| e.transfer_id.as_ref().map(ActorId::as_str) == Some(t))
                })
                .count()
        })
    }
}

fn signed(e: &Entry) -> i64 {
    match e.kind {
        EntryKind::Deposit | EntryKind::TransferCredit | EntryKind::Refund => e.amount as i64,
        EntryKind::Withdrawal | EntryKind::TransferDebit => -(e.amount as i64),
    }
}

impl Ledger {
    /// What every client was told is what the store holds.
    fn promises_kept(&self, store: &Durable, books: &Books) -> Result<(), String> {
        for (n, l) in self.logical.iter().enumerate() {
            if l.open > 0 {
                return Err(format!("request {n} ({:?}) was never answered", l.op));
            }
            // A replay repeats what another copy did: a request sent once
            // is never told it was replayed.
            let single = l.told.len() == 1;
            let replayed = l
                .told
                .iter()
                .any(|(_, t)| matches!(t, Told::Answer(a) if a.replayed));
            if single && replayed {
                return Err(format!(
                    "request {n} ({:?}), sent once, was told it was replayed: {:?}",
                    l.op, l.told
                ));
            }
            // Versions only grow: none told exceeds the one stored last.
            let account = match &l.op {
                Op::Open { account }
                | Op::Deposit { account, .. }
                | Op::Withdraw { account, .. }
                | Op::Read { account, .. } => Some(*account),
                _ => None,
            };
            if let Some(account) = account {
                let stored = store.version(&format!("account/{}", self.accounts[account]));
                for (_, told) in &l.told {
                    let Told::Answer(a) = told else { continue };
                    let version = a
                        .outcome
                        .as_ref()
                        .ok()
                        .and_then(|r| r.body.get("version")?.as_u64());
                    if version.is_some_and(|v| v > stored) {
                        return Err(format!("request {n} ({:?}) was told version {version:?}, the store holds {stored}", l.op));
                    }
                }
            }
            let says: Vec<Said> = l
                .told
                .iter()
                .filter(|(a, _)| *a == l.amount)
                .map(|(_, t)| said(t))
                .collect();
            let applied = says.contains(&Said::Applied);
            let unknown = says.contains(&Said::Unknown);
            match &l.op {
                Op::Open { .. } | Op::Crash { .. } => {}
                Op::Read { account, page } => {
                    self.read_kept(books, n, l, self.accounts[*account].as_str(), *page)?
                }
                Op::Deposit { account, .. } | Op::Withdraw { account, .. } => {
                    let kind = if matches!(l.op, Op::Deposit { .. }) {
                        EntryKind::Deposit
                    } else {
                        EntryKind::Withdrawal
                    };
                    let found =
                        books.count(self.accounts[*account].as_str(), kind, Some(l.amount), None);
                    if found > 1 {
                        return Err(format!(
                            "request {n} ({:?} of {}) was applied {found} times; told {:?}",
                            l.op, l.amount, l.told
                        ));
                    }
                    if applied && found == 0 {
                        return Err(format!(
                            "request {n} ({:?} of {}) was acknowledged and is not in the journal",
                            l.op, l.amount
                        ));
                    }
                    if !applied && !unknown && found == 1 {
                        return Err(format!("request {n} ({:?} of {}) is in the journal, yet every copy was told it was not applied: {:?}", l.op, l.amount, l.told));
                    }
                    // Copies of one key are told one outcome, refusals included.
                    let definitive: Vec<&troupe_actors::Outcome> = l
                        .told
                        .iter()
                        .filter_map(|(_, t)| match t {
                            Told::Answer(a) => Some(&a.outcome)
                                .filter(|o| !matches!(o, Err(r) if r.code.is_transient())),
                            Told::Lost => None,
                        })
                        .collect();
                    if definitive.windows(2).any(|w| w[0] != w[1]) {
                        return Err(format!(
                            "request {n}: copies of one key were told different outcomes: {definitive:?}"
                        ));
                    }
                }
                Op::Transfer { id, from, to } => {
                    self.transfer_kept(store, books, n, l, id, *from, *to, applied, unknown)?
                }
            }
        }
        Ok(())
    }

    /// A read shows only what is durable: every entry of a page is in the
    /// journal as it was read, and a balance is one the journal reached.
    fn read_kept(
        &self,
        books: &Books,
        n: usize,
        l: &Logical,
        account: &str,
        page: Option<(u64, u32)>,
    ) -> Result<(), String> {
        let journal = books
            .accounts
            .get(account)
            .map(|(_, e)| e.as_slice())
            .unwrap_or_default();
        for (_, told) in &l.told {
            let Told::Answer(a) = told else { continue };
            let Ok(reply) = &a.outcome else { continue };
            if let Some((after, limit)) = page {
                let entries = reply
                    .body
                    .get("entries")
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        format!(
                            "read {n} of {account}: a page without entries: {}",
                            reply.body
                        )
                    })?;
                let mut seqs = Vec::new();
                for e in entries {
                    let e: Entry =
                        serde_json::from_value(e.clone()).map_err(|e| format!("read {n}: {e}"))?;
                    if !journal.contains(&e) {
                        return Err(format!("read {n} of {account} showed an entry the journal does not hold: {e:?}"));
                    }
                    seqs.push(e.seq);
                }
                let expected: Vec<u64> = (after + 1..).take(seqs.len()).collect();
                let next = reply.body.get("next").and_then(Value::as_u64);
                let last = seqs.last().copied();
                let bad = seqs != expected
                    || seqs.len() > limit as usize
                    || (seqs.len() < limit as usize && next.is_some())
                    || next.is_some_and(|s| {
                        Some(s) != last || !journal.iter().any(|e| e.seq == s + 1)
                    });
                if bad {
                    return Err(format!(
                        "read {n} of {account} after {after}, limit {limit}: a wrong page: {}",
                        reply.body
                    ));
                }
            } else if let Some(balance) = reply.body.get("balance").and_then(Value::as_i64) {
                if balance != 0 && !journal.iter().any(|e| e.balance_after == balance) {
                    return Err(format!("read {n} of {account} showed a balance of {balance}, which its journal never reached"));
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn transfer_kept(
        &self,
        store: &Durable,
        books: &Books,
        n: usize,
        l: &Logical,
        id: &str,
        from: usize,
        to: usize,
        applied: bool,
        unknown: bool,
    ) -> Result<(), String> {
        let (from, to) = (self.accounts[from].as_str(), self.accounts[to].as_str());
        let state: Option<TransferState> = match store.states.get(&format!("transfer/{id}")) {
            Some((_, bytes)) => serde_json::from_slice(bytes)
                .map_err(|e| format!("transfer {id}: unreadable: {e}"))?,
            None => None,
        };
        let debits = books.count(from, EntryKind::TransferDebit, None, Some(id));
        let credits = books.count(to, EntryKind::TransferCredit, None, Some(id));
        let refunds = books.count(from, EntryKind::Refund, None, Some(id));
        let legs = format!(
            "debits {debits}, credits {credits}, refunds {refunds}; told {:?}",
            l.told
        );
        let Some(t) = state else {
            if debits + credits + refunds > 0 {
                return Err(format!("transfer {id} has no record but legs: {legs}"));
            }
            let accepted = l.told.iter().any(|(_, t)| {
                matches!(t, Told::Answer(a) if a.outcome.as_ref().is_ok_and(|r| r.status == troupe_actors::Status::Accepted))
            });
            // A failed transfer's 422 carries the transfer: it is recorded.
            let failed = l.told.iter().any(|(_, t)| {
                matches!(t, Told::Answer(a) if a.outcome.as_ref().err().is_some_and(|r| r.details.is_some()))
            });
            if applied || accepted || failed {
                return Err(format!(
                    "transfer {id} was acknowledged and has no record: {legs}"
                ));
            }
            return Ok(());
        };
        match t.status {
            Status::Pending => return Err(format!("transfer {id} is still pending: {legs}")),
            Status::Completed if debits != 1 || credits != 1 || refunds != 0 => {
                return Err(format!("transfer {id} completed with {legs}"))
            }
            Status::Failed if credits != 0 || debits != refunds || debits > 1 => {
                return Err(format!("transfer {id} failed with {legs}"))
            }
            _ => {}
        }
        let amount = t.amount.get();
        if t.from.as_str() != from || t.to.as_str() != to {
            return Err(format!("transfer {id} holds another route: {t:?}"));
        }
        for (sent, told) in &l.told {
            let Told::Answer(a) = told else { continue };
            match &a.outcome {
                // Accepted: its record was durable when it was said.
                Ok(r) if r.status == troupe_actors::Status::Accepted && *sent != amount => {
                    return Err(format!(
                        "transfer {id}: a copy of {sent} was told accepted, the store holds {t:?}"
                    ));
                }
                Ok(r) if r.status == troupe_actors::Status::Accepted => {}
                Ok(_) if *sent != amount || t.status != Status::Completed => {
                    return Err(format!(
                        "transfer {id}: a copy of {sent} was told completed, the store holds {t:?}"
                    ))
                }
                // A refusal of the start itself carries no transfer; a
                // transfer that failed because its debit found another
                // body's under its id carries itself, failed.
                Err(r)
                    if r.code == ErrorCode::IdempotencyKeyReused
                        && r.details.is_none()
                        && *sent == amount =>
                {
                    return Err(format!(
                        "transfer {id}: the copy whose body is stored was told another body was"
                    ))
                }
                Err(r)
                    if r.details.is_some() && (*sent != amount || t.status != Status::Failed) =>
                {
                    return Err(format!(
                        "transfer {id}: a copy of {sent} was told failed, the store holds {t:?}"
                    ))
                }
                _ => {}
            }
        }
        // Told it was not done, with nothing left in doubt: it must not be.
        let any_unknown = unknown || l.told.iter().any(|(_, t)| said(t) == Said::Unknown);
        let any_done = l.told.iter().any(|(_, t)| said(t) == Said::Applied)
            || l.told.iter().any(|(_, t)| matches!(t, Told::Answer(a) if a.outcome.as_ref().err().is_some_and(|r| r.details.is_some() || r.code == ErrorCode::IdempotencyKeyReused)));
        if !any_unknown && !any_done && t.status == Status::Completed {
            return Err(format!("transfer {id} (request {n}) completed, yet every copy was told it was not done: {legs}"));
        }
        Ok(())
    }
}
