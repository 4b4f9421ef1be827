//! Scenarios the simulator's seeds once found (or an audit did), written out
//! event by event against the real core: they stay regression tests
//! whatever the simulator draws from a seed in later versions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use troupe::runtime::core::{digest, Action, Core, Incoming, Loaded, Now, Page, Timer};
use troupe::runtime::{Answer, IdempotencyRequest};
use troupe::sim::{self, Durable};
use troupe::store::{Commit, StoreError};
use troupe_actors::account::{Account, AccountState};
use troupe_actors::{kinds, ActorId, Address, Behavior, ErrorCode, Kind};

const ACTOR: &str = "account/a";

type State = <Account as Behavior>::State;

/// The core of account `a`, driven by hand; replies collected by number.
struct Driver {
    core: Core<Account, u32>,
    base: Instant,
    elapsed: Duration,
    replies: Vec<(u32, Answer)>,
    actions: Vec<Action<u32>>,
}

impl Driver {
    fn new() -> Self {
        let address = Address::new(Kind::Account, ActorId::parse("a").expect("an id"));
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

    fn now(&mut self) -> Now {
        self.elapsed += Duration::from_millis(1);
        Now {
            at: self.base + self.elapsed,
            wall: chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap_or_default(),
        }
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

    fn send(&mut self, to: u32, message: &str, payload: serde_json::Value, key: Option<&str>) {
        let idempotency = key.map(|k| IdempotencyRequest::new(k.into(), message, &payload));
        let any = kinds::parse(Kind::Account, message, payload).expect("a command");
        let command = Account::from_any(any).expect("an account command");
        let now = self.now();
        let incoming = Incoming {
            command,
            reply: to,
            idempotency,
            deadline: now.at + Duration::from_secs(2),
            span: tracing::Span::none(),
            sent_at: now.at,
        };
        self.core.handle_message(now, incoming);
        self.collect();
    }

    fn event(&mut self, f: impl FnOnce(&mut Core<Account, u32>, Now)) {
        let now = self.now();
        f(&mut self.core, now);
        self.collect();
    }

    fn loaded(&mut self, loaded: Result<Loaded<State>, StoreError>) {
        self.event(|core, now| core.handle_loaded(now, loaded));
    }

    fn committed(&mut self, result: Result<Vec<Page>, StoreError>) {
        self.event(|core, now| core.handle_committed(now, result));
    }

    fn reply(&self, to: u32) -> Option<&Answer> {
        self.replies.iter().find(|(t, _)| *t == to).map(|(_, a)| a)
    }

    /// The commit the core sealed when its mailbox drained.
    fn flush(&mut self) -> Commit {
        self.event(|core, now| core.handle_drained(now));
        self.take()
            .into_iter()
            .find_map(|a| match a {
                Action::Commit { commit, .. } => commit,
                _ => None,
            })
            .expect("a commit")
    }
}

/// What a load finds in `store`, as the service's loader reports it.
fn found(store: &Durable) -> Loaded<State> {
    match store.load(ACTOR) {
        None => Loaded {
            state: None,
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

/// A fenced load against `store`: what it found, then its write one up.
fn fenced(store: &mut Durable) -> Loaded<State> {
    let before = found(store);
    store.fence(ACTOR, b"null");
    Loaded {
        version: before.found + 1,
        ..before
    }
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
    let debit = json!({"transfer": "t-1", "to": "b", "amount": 10});
    let command = troupe_actors::account::Command::TransferDebit {
        transfer: ActorId::parse("t-1").expect("an id"),
        to: ActorId::parse("b").expect("an id"),
        amount: troupe_actors::Amount::new(10).expect("an amount"),
    };
    let _ = debit;
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
