//! Scenarios the simulator's seeds once found (or an audit did), written out
//! event by event against the real core: they stay regression tests
//! whatever the simulator draws from a seed in later versions. Some pin
//! down a decision the ledger's seeds cannot tell apart (a term that a
//! pending state already decides, an instant exactly at a deadline).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use troupe::runtime::core::{digest, Action, AskId, Core, Incoming, Loaded, Now, Page, Timer};
use troupe::runtime::{Answer, IdempotencyRequest};
use troupe::sim::{self, Durable};
use troupe::store::{Commit, StoreError};
use troupe_actors::account::{Account, AccountState};
use troupe_actors::transfer::Transfer;
use troupe_actors::{kinds, ActorId, Address, Behavior, ErrorCode, Reply};

const ACTOR: &str = "account/a";
const TRANSFER: &str = "transfer/t-1";

type State = <Account as Behavior>::State;

/// The core of one actor, driven by hand; replies collected by number.
struct Hand<B: Behavior> {
    core: Core<B, u32>,
    base: Instant,
    elapsed: Duration,
    replies: Vec<(u32, Answer)>,
    actions: Vec<Action<u32>>,
}

/// Account `a`'s.
type Driver = Hand<Account>;

impl Driver {
    fn new() -> Self {
        Hand::at("a")
    }
}

impl<B: Behavior> Hand<B> {
    fn at(id: &str) -> Self {
        let address = Address::new(B::KIND, ActorId::parse(id).expect("an id"));
        let mut driver = Self {
            core: Core::new(address, Arc::new(sim::options())),
            base: Instant::now(),
            elapsed: Duration::ZERO,
            replies: Vec::new(),
            actions: Vec::new(),
        };
        let now = driver.now();
        driver.core.start(now);
        driver.collect();
        driver
    }

    /// The next event's moment: a millisecond after the last one.
    fn now(&mut self) -> Now {
        self.elapsed += Duration::from_millis(1);
        Now {
            at: self.base + self.elapsed,
            wall: chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap_or_default(),
        }
    }

    /// The instant the next event happens at, if nothing else is said.
    fn next_instant(&self) -> Instant {
        self.base + self.elapsed + Duration::from_millis(1)
    }

    /// Makes the next event happen exactly at `at`.
    fn clock_to(&mut self, at: Instant) {
        self.elapsed = at.duration_since(self.base) - Duration::from_millis(1);
    }

    fn collect(&mut self) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Reply { to, answer } => self.replies.push((to, answer)),
                other => self.actions.push(other),
            }
        }
    }

    /// The actions asked for since the last call.
    fn take(&mut self) -> Vec<Action<u32>> {
        std::mem::take(&mut self.actions)
    }

    fn deliver(
        &mut self,
        to: u32,
        command: B::Command,
        key: Option<IdempotencyRequest>,
        deadline: Instant,
    ) {
        let now = self.now();
        let incoming = Incoming {
            command,
            reply: to,
            idempotency: key,
            deadline,
            span: tracing::Span::none(),
            sent_at: now.at,
        };
        self.core.handle_message(now, incoming);
        self.collect();
    }

    /// Sends `message` with a deadline of `deadline` from now.
    fn send_within(
        &mut self,
        to: u32,
        message: &str,
        payload: serde_json::Value,
        key: Option<&str>,
        deadline: Duration,
    ) {
        let idempotency = key.map(|k| IdempotencyRequest::new(k.into(), message, &payload));
        let any = kinds::parse(B::KIND, message, payload).expect("a command");
        let command = B::from_any(any).expect("a command of the kind");
        let deadline = self.next_instant() + deadline;
        self.deliver(to, command, idempotency, deadline);
    }

    fn send(&mut self, to: u32, message: &str, payload: serde_json::Value, key: Option<&str>) {
        self.send_within(to, message, payload, key, Duration::from_secs(2));
    }

    fn event(&mut self, f: impl FnOnce(&mut Core<B, u32>, Now)) {
        let now = self.now();
        f(&mut self.core, now);
        self.collect();
    }

    fn loaded(&mut self, loaded: Result<Loaded<B::State>, StoreError>) {
        self.event(|core, now| core.handle_loaded(now, loaded));
    }

    fn committed(&mut self, result: Result<Vec<Page>, StoreError>) {
        self.event(|core, now| core.handle_committed(now, result));
    }

    fn answer(&mut self, id: AskId, answer: Answer) {
        self.event(|core, now| core.handle_answer(now, id, answer));
    }

    fn timer(&mut self, timer: Timer) {
        self.event(|core, now| core.handle_timer(now, timer));
    }

    fn reply(&self, to: u32) -> Option<&Answer> {
        self.replies.iter().find(|(t, _)| *t == to).map(|(_, a)| a)
    }

    /// The mailbox drained: what the core asked for then.
    fn drain(&mut self) -> Vec<Action<u32>> {
        self.event(|core, now| core.handle_drained(now));
        self.take()
    }

    /// The commit the core sealed when its mailbox drained.
    fn flush(&mut self) -> Commit {
        self.drain()
            .into_iter()
            .find_map(|a| match a {
                Action::Commit { commit, .. } => commit,
                _ => None,
            })
            .expect("a commit")
    }
}

/// The asks among `actions`: their ids and what they ask, by name.
fn asks(actions: &[Action<u32>]) -> Vec<(AskId, String)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Ask { id, command, .. } => Some((*id, format!("{command:?}"))),
            _ => None,
        })
        .collect()
}

/// The one ask among `actions` whose command is named `name`.
fn ask(actions: &[Action<u32>], name: &str) -> AskId {
    let found: Vec<_> = asks(actions)
        .into_iter()
        .filter(|(_, c)| c.contains(name))
        .collect();
    assert_eq!(found.len(), 1, "one {name} asked in {:?}", asks(actions));
    found[0].0
}

fn reload_planned(actions: &[Action<u32>]) -> bool {
    actions.iter().any(|a| {
        matches!(
            a,
            Action::Timer {
                timer: Timer::Reload,
                ..
            }
        )
    })
}

fn loads(actions: &[Action<u32>]) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Load { .. }))
        .count()
}

/// What a load of `actor` finds in `store`, as the service's loader
/// reports it.
fn found_at<S: serde::de::DeserializeOwned + Default>(store: &Durable, actor: &str) -> Loaded<S> {
    match store.load(actor) {
        None => Loaded {
            state: S::default(),
            version: 0,
            found: 0,
            digest: None,
        },
        Some(s) => Loaded {
            state: serde_json::from_slice(&s.state).expect("a state"),
            version: s.version,
            found: s.version,
            digest: Some(digest(&s.state)),
        },
    }
}

/// A fenced load of `actor` against `store`: what it found, then its write
/// one up.
fn fenced_at<S: serde::de::DeserializeOwned + Default>(
    store: &mut Durable,
    actor: &str,
) -> Loaded<S> {
    let before = found_at(store, actor);
    store.fence(actor, b"null");
    Loaded {
        version: before.found + 1,
        ..before
    }
}

fn found(store: &Durable) -> Loaded<State> {
    found_at(store, ACTOR)
}

fn fenced(store: &mut Durable) -> Loaded<State> {
    fenced_at(store, ACTOR)
}

fn balance(store: &Durable) -> i64 {
    let state: Option<AccountState> = store
        .load(ACTOR)
        .and_then(|s| serde_json::from_slice(&s.state).ok())
        .flatten();
    state.map_or(0, |s| s.balance)
}

/// Opens `a` with its first load answered from `store`.
fn opened(store: &mut Durable) -> Driver {
    let mut d = Driver::new();
    assert!(matches!(
        d.take().as_slice(),
        [Action::Load { fence: false }]
    ));
    d.loaded(Ok(found(store)));
    d.send(1, "open", json!({"currency": "EUR"}), None);
    let commit = d.flush();
    store.apply(&commit).expect("the open lands");
    d.committed(Ok(Vec::new()));
    assert!(d.reply(1).is_some_and(|a| a.outcome.is_ok()));
    d
}

/// A deposit's commit gets no answer and never lands; the first fence's
/// write lands and gets no answer either; the second fence finds the first
/// fence's version, which is the deposit's. The version alone would call
/// the deposit landed: its client would be told 200 for money the store
/// does not hold.
#[test]
fn a_fence_that_landed_unseen_is_not_taken_for_the_lost_commit() {
    let mut store = Durable::default();
    let mut d = opened(&mut store);
    d.send(2, "deposit", json!({"amount": 100}), None);
    let _lost = d.flush();
    d.committed(Err(StoreError::Unknown("timed out".into())));
    assert!(d
        .take()
        .iter()
        .any(|a| matches!(a, Action::Load { fence: true })));
    store.fence(ACTOR, b"null");
    d.loaded(Err(StoreError::Unknown("the fence timed out".into())));
    assert!(d.reply(2).is_none(), "answered while in doubt");
    assert!(d.core.is_pinned(), "a doubt must keep the actor in memory");
    d.event(|core, now| core.handle_timer(now, Timer::Reload));
    assert!(d
        .take()
        .iter()
        .any(|a| matches!(a, Action::Load { fence: true })));
    let loaded = fenced(&mut store);
    d.loaded(Ok(loaded));
    let told = d.reply(2).expect("answered once the fence tells");
    assert_eq!(balance(&store), 0);
    assert!(
        matches!(&told.outcome, Err(r) if r.code == ErrorCode::Unavailable),
        "told {:?} for a deposit the store does not hold",
        told.outcome
    );
}

/// A second writer's commit at the lost commit's version is not the lost
/// commit either (two activations of one actor, as during a handover).
#[test]
fn another_writers_commit_is_not_taken_for_the_lost_commit() {
    let mut store = Durable::default();
    let mut a = opened(&mut store);
    let mut b = Driver::new();
    b.take();
    b.loaded(Ok(found(&store)));
    a.send(2, "deposit", json!({"amount": 100}), None);
    let _lost = a.flush();
    a.committed(Err(StoreError::Unknown("timed out".into())));
    b.send(9, "deposit", json!({"amount": 7}), None);
    let theirs = b.flush();
    store.apply(&theirs).expect("b's deposit lands");
    a.take();
    let loaded = fenced(&mut store);
    a.loaded(Ok(loaded));
    let told = a.reply(2).expect("answered");
    assert_eq!(balance(&store), 7);
    assert!(told.outcome.is_err(), "told {:?}", told.outcome);
}

/// A commit of unknown outcome that did land is answered as made.
#[test]
fn a_lost_commit_that_landed_is_answered_as_made() {
    let mut store = Durable::default();
    let mut d = opened(&mut store);
    d.send(2, "deposit", json!({"amount": 100}), None);
    let landed = d.flush();
    store.apply(&landed).expect("the deposit lands");
    d.committed(Err(StoreError::Unknown("timed out".into())));
    d.take();
    let loaded = fenced(&mut store);
    d.loaded(Ok(loaded));
    let told = d.reply(2).expect("answered");
    assert!(told.outcome.is_ok(), "told {:?}", told.outcome);
    assert_eq!(balance(&store), 100);
}

/// A refused commit whose reload fails: the state in memory (what the
/// refused commit would have written) no longer says whether unfinished
/// work is stored, so the actor keeps reloading until a load succeeds.
/// Seeds 766 and 1855 of an earlier simulator found a transfer left
/// pending after its client was told 201: the refused commit was its
/// `completed` record, and the stale state said nothing was left to do.
#[test]
fn unfinished_work_stored_is_resumed_after_a_refused_commit_and_a_failed_load() {
    let mut store = Durable::default();
    let mut d = opened(&mut store);
    d.send(2, "deposit", json!({"amount": 100}), None);
    let commit = d.flush();
    store.apply(&commit).expect("the deposit lands");
    d.committed(Ok(Vec::new()));
    // A transfer's debit: the account now stores work in its outbox.
    let command = troupe_actors::account::Command::TransferDebit {
        transfer: ActorId::parse("t-1").expect("an id"),
        to: ActorId::parse("b").expect("an id"),
        amount: troupe_actors::Amount::new(10).expect("an amount"),
    };
    let now = d.now();
    d.core.handle_message(
        now,
        Incoming {
            command,
            reply: 3,
            idempotency: None,
            deadline: now.at + Duration::from_secs(2),
            span: tracing::Span::none(),
            sent_at: now.at,
        },
    );
    d.collect();
    d.take(); // the fact's lookup
    d.event(|core, now| core.handle_looked_up(now, Ok(None)));
    let commit = d.flush();
    assert!(commit.pending, "the debit stores unfinished work");
    store.apply(&commit).expect("the debit lands");
    d.committed(Ok(Vec::new()));
    // The transfer settles the debit (lazily) and the lazy change's commit
    // is refused; the reload fails too.
    let now = d.now();
    d.core.handle_message(
        now,
        Incoming {
            command: troupe_actors::account::Command::Settle {
                transfer: ActorId::parse("t-1").expect("an id"),
            },
            reply: 4,
            idempotency: None,
            deadline: now.at + Duration::from_secs(2),
            span: tracing::Span::none(),
            sent_at: now.at,
        },
    );
    d.collect();
    d.event(|core, now| core.handle_timer(now, Timer::Lazy { epoch: 1 }));
    let _refused = d.flush();
    d.committed(Err(StoreError::Unavailable("refused".into())));
    d.take();
    d.loaded(Err(StoreError::Unavailable("still down".into())));
    assert!(
        d.core.is_pinned(),
        "an actor whose stored state has unfinished work was let go"
    );
    assert!(
        d.take().iter().any(|a| matches!(
            a,
            Action::Timer {
                timer: Timer::Reload,
                ..
            }
        )),
        "no reload is planned for stored unfinished work"
    );
}

/// An opened account is kept in memory while idle (until the idle
/// timeout); one never opened is let go at once: a `404` keeps nothing.
#[test]
fn an_opened_account_is_kept_while_idle_and_an_unknown_one_is_not() {
    let mut store = Durable::default();
    let mut unknown = Driver::new();
    unknown.take();
    unknown.loaded(Ok(found(&store)));
    unknown.send(1, "get", json!({}), None);
    assert!(unknown.reply(1).is_some_and(|a| a.outcome.is_err()));
    assert!(!unknown.core.is_pinned());
    assert!(
        !unknown.core.is_resident(),
        "an account never opened was kept"
    );
    let d = opened(&mut store);
    assert!(!d.core.is_pinned());
    assert!(
        d.core.is_resident(),
        "an idle opened account was let go at once"
    );
}

/// Journal reads change nothing, so a read after them is answered at once,
/// not held until their pages are read. A page ends where the journal
/// does: `next` only when a row beyond `limit` was read, and never more
/// than `limit` entries, whatever the store hands back.
#[test]
fn a_read_is_not_held_behind_journal_reads_and_pages_end_where_the_journal_does() {
    let mut store = Durable::default();
    let mut d = opened(&mut store);
    for (to, amount) in [(2, 5), (3, 7), (4, 9)] {
        d.send(to, "deposit", json!({ "amount": amount }), None);
    }
    let commit = d.flush();
    store.apply(&commit).expect("the deposits land");
    d.committed(Ok(Vec::new()));
    // (caller, limit, rows the store hands back, the page's `next`): the
    // whole journal in one page, a page with a next one, and a store that
    // hands back more rows than the `limit + 1` asked.
    let reads: [(u32, u32, u32, Option<u64>); 3] =
        [(5, 3, 4, None), (6, 2, 3, Some(2)), (7, 1, 3, Some(1))];
    for (to, limit, _, _) in reads {
        d.send(to, "entries", json!({ "after": 0, "limit": limit }), None);
    }
    assert!(d.reply(5).is_none(), "a page answered before it was read");
    d.send(8, "get", json!({}), None);
    assert!(
        d.reply(8).is_some(),
        "a read was held behind journal reads, which change nothing"
    );
    let pages = match d.drain().as_slice() {
        [Action::Commit {
            commit: None,
            pages,
            ..
        }] => pages.clone(),
        _ => panic!("journal reads alone commit nothing and read their pages"),
    };
    assert_eq!(pages, vec![(0, 3), (0, 2), (0, 1)]);
    let rows = reads
        .iter()
        .map(|(_, _, rows, _)| Ok(store.page(ACTOR, 0, *rows)))
        .collect();
    d.committed(Ok(rows));
    for (to, limit, _, next) in reads {
        let answer = d.reply(to).expect("a page");
        let body = &answer.outcome.as_ref().expect("a page").body;
        let entries = body["entries"].as_array().map_or(0, Vec::len);
        assert_eq!(entries, limit as usize, "page {to}: {body}");
        assert_eq!(body["next"].as_u64(), next, "page {to}: {body}");
    }
}

/// A lookup holds the open batch's callers while the store reads, so once
/// the earliest of their deadlines has come (that very instant included,
/// as everywhere a deadline is compared) the batch is committed first.
#[test]
fn a_batch_due_this_very_instant_is_committed_before_a_lookup() {
    let mut store = Durable::default();
    let mut d = opened(&mut store);
    let within = Duration::from_millis(50);
    let due = d.next_instant() + within;
    d.send_within(2, "deposit", json!({"amount": 5}), Some("k1"), within);
    assert!(matches!(d.take().as_slice(), [Action::Lookup(_)]));
    d.event(|core, now| core.handle_looked_up(now, Ok(None)));
    assert!(d.reply(2).is_none(), "answered before its commit");
    d.clock_to(due);
    d.send(3, "deposit", json!({"amount": 7}), Some("k2"));
    let actions = d.take();
    assert!(
        matches!(
            actions.as_slice(),
            [Action::Commit {
                commit: Some(_),
                ..
            }]
        ),
        "a lookup held a batch due now instead of committing it first"
    );
    d.committed(Ok(Vec::new()));
    assert!(d.reply(2).is_some_and(|a| a.outcome.is_ok()));
    assert!(
        matches!(d.take().as_slice(), [Action::Lookup(_)]),
        "the message that waited is served after the commit"
    );
}

/// A refusal under a client's key is recorded like a success: retried
/// after the money arrived, by another activation, the key still answers
/// the refusal.
#[test]
fn a_refusal_under_a_key_is_durable_and_replayed() {
    let mut store = Durable::default();
    let mut d = opened(&mut store);
    d.send(2, "withdraw", json!({"amount": 100}), Some("w"));
    d.take();
    d.event(|core, now| core.handle_looked_up(now, Ok(None)));
    let commit = d.flush();
    assert!(
        commit.state.is_none() && commit.idempotency.len() == 1,
        "a refusal writes its record and no state: {commit:?}"
    );
    store.apply(&commit).expect("the record lands");
    d.committed(Ok(Vec::new()));
    let first = d.reply(2).expect("answered").clone();
    assert!(matches!(&first.outcome, Err(r) if r.code == ErrorCode::InsufficientFunds));
    d.send(3, "deposit", json!({"amount": 500}), None);
    let commit = d.flush();
    store.apply(&commit).expect("the deposit lands");
    d.committed(Ok(Vec::new()));
    let mut again = Driver::new();
    again.take();
    again.loaded(Ok(found(&store)));
    again.send(4, "withdraw", json!({"amount": 100}), Some("w"));
    let key = match again.take().as_slice() {
        [Action::Lookup(troupe::runtime::core::LookupKey::Idempotency(k))] => k.clone(),
        _ => panic!("the retry looks its key up"),
    };
    let record = store.idempotency.get(&(ACTOR.to_owned(), key)).cloned();
    again.event(|core, now| core.handle_looked_up(now, Ok(record)));
    let told = again.reply(4).expect("answered from the record");
    assert!(told.replayed, "the retry was not answered from the record");
    assert_eq!(told.outcome, first.outcome);
    assert!(
        !again
            .drain()
            .iter()
            .any(|a| matches!(a, Action::Commit { .. })),
        "a replay wrote something"
    );
}

/// A reload timer set while the store was down can fire while the actor
/// waits out a restart's backoff: it must not end the backoff.
#[test]
fn a_stale_reload_timer_does_not_cut_a_restart_short() {
    crate::quiet_injected_panics();
    let mut store = Durable::default();
    let mut d = opened(&mut store);
    d.send(2, "deposit", json!({"amount": 5}), None);
    let _lost = d.flush();
    d.committed(Err(StoreError::Unknown("timed out".into())));
    assert_eq!(loads(&d.take()), 1);
    d.loaded(Err(StoreError::Unavailable("down".into())));
    assert!(
        reload_planned(&d.take()),
        "a commit in doubt is settled without waiting for a client"
    );
    // A client comes by before that timer: its message loads (and fences).
    d.send(3, "get", json!({}), None);
    assert_eq!(loads(&d.take()), 1);
    d.loaded(Ok(fenced(&mut store)));
    assert!(d.reply(2).is_some_and(|a| a.outcome.is_err()));
    assert!(d.reply(3).is_some_and(|a| a.outcome.is_ok()));
    d.send(4, "crash", json!({}), None);
    assert!(d.reply(4).is_some_and(|a| a.outcome.is_err()));
    assert!(d.take().iter().any(|a| matches!(
        a,
        Action::Timer {
            timer: Timer::Restart,
            ..
        }
    )));
    d.timer(Timer::Reload);
    assert_eq!(
        loads(&d.take()),
        0,
        "a stale reload timer ended a restart's backoff"
    );
    d.timer(Timer::Restart);
    assert_eq!(loads(&d.take()), 1);
}

fn id(id: &str) -> ActorId {
    ActorId::parse(id).expect("an id")
}

/// Transfer `t-1` of 10 from `a` to `b`, started by caller `to`.
fn start(t: &mut Hand<Transfer>, to: u32) {
    let command = troupe_actors::transfer::Command::Start {
        from: id("a"),
        to: id("b"),
        amount: troupe_actors::Amount::new(10).expect("an amount"),
    };
    let deadline = t.next_instant() + Duration::from_secs(2);
    t.deliver(to, command, None, deadline);
}

/// Transfer `t-1`, loaded from `store`.
fn transfer(store: &Durable) -> Hand<Transfer> {
    let mut t = Hand::<Transfer>::at("t-1");
    assert_eq!(loads(&t.take()), 1);
    t.loaded(Ok(found_at(store, TRANSFER)));
    t
}

fn debited() -> Answer {
    Answer::new(Ok(Reply::ok(json!({"currency": "EUR"}))))
}

fn done() -> Answer {
    Answer::new(Ok(Reply::ok(json!({}))))
}

/// A transfer settles before its notice to the source account is
/// answered: until it is, the notice's retries need the activation, so it
/// stays in memory though nothing else is left to do.
#[test]
fn a_settled_transfer_stays_until_its_settle_notice_is_answered() {
    let mut store = Durable::default();
    let mut t = transfer(&store);
    start(&mut t, 1);
    let debit = ask(&t.take(), "TransferDebit");
    let commit = t.flush();
    store.apply(&commit).expect("the pending record lands");
    t.committed(Ok(Vec::new()));
    t.answer(debit, debited());
    let credit = ask(&t.take(), "TransferCredit");
    t.answer(credit, done());
    assert!(
        t.reply(1).is_some_and(|a| a.outcome.is_ok()),
        "a completed transfer is answered once its credit is durable"
    );
    let notice = ask(&t.take(), "Settle");
    let commit = t.flush();
    store.apply(&commit).expect("the completed record lands");
    t.committed(Ok(Vec::new()));
    assert!(
        t.core.is_pinned(),
        "a transfer was let go with its settle notice unanswered"
    );
    t.answer(notice, done());
    assert!(!t.core.is_pinned(), "a transfer with nothing left was kept");
    assert!(!t.core.is_resident());
}

/// A transfer whose first commit was refused and whose reload failed still
/// owes its waiting caller the outcome: it reloads on its own and starts
/// the work again for that caller.
#[test]
fn a_parked_caller_outlives_a_refused_commit_and_a_failed_load() {
    let store = Durable::default();
    let mut t = transfer(&store);
    start(&mut t, 1);
    ask(&t.take(), "TransferDebit");
    let _refused = t.flush();
    t.committed(Err(StoreError::Unavailable("refused".into())));
    assert_eq!(loads(&t.take()), 1);
    t.loaded(Err(StoreError::Unavailable("still down".into())));
    assert!(
        reload_planned(&t.take()),
        "nothing reloads a transfer whose caller waits"
    );
    assert!(t.reply(1).is_none());
    t.timer(Timer::Reload);
    assert_eq!(loads(&t.take()), 1);
    t.loaded(Ok(found_at(&store, TRANSFER)));
    ask(&t.take(), "TransferDebit");
    let commit = t.flush();
    assert!(commit.pending, "the transfer's record is written again");
    assert!(
        t.reply(1).is_none(),
        "the caller still waits for the outcome"
    );
}

/// A transfer's first commit ends with an unknown outcome and did land:
/// after the fence, its caller's own work is found going on. It is the
/// caller's first request, not a replay.
#[test]
fn a_transfer_whose_commit_landed_unseen_is_not_told_replayed() {
    let mut store = Durable::default();
    let mut t = transfer(&store);
    start(&mut t, 1);
    t.take();
    let landed = t.flush();
    store.apply(&landed).expect("the pending record lands");
    t.committed(Err(StoreError::Unknown("timed out".into())));
    assert_eq!(loads(&t.take()), 1);
    t.loaded(Ok(fenced_at(&mut store, TRANSFER)));
    let debit = ask(&t.take(), "TransferDebit");
    t.answer(debit, debited());
    let credit = ask(&t.take(), "TransferCredit");
    t.answer(credit, done());
    let told = t.reply(1).expect("answered");
    assert!(told.outcome.is_ok(), "told {:?}", told.outcome);
    assert!(
        !told.replayed,
        "a transfer sent once was told it was replayed"
    );
}
