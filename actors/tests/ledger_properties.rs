//! Property tests on the pure actors: random sequences of deposits,
//! withdrawals and transfers (some interrupted by a simulated crash and
//! resumed) keep money conserved and never break an overdraft limit.

use std::collections::HashMap;

use chrono::Utc;
use proptest::prelude::*;
use troupe_actors::account::{Account, AccountState, Command as AccountCommand};
use troupe_actors::transfer::{Command as TransferCommand, Transfer};
use troupe_actors::{ActorId, Amount, AnyCommand, Behavior, Currency, Env, Outcome, ReplyPlan};

const ACCOUNTS: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    Deposit {
        account: usize,
        amount: u64,
    },
    Withdraw {
        account: usize,
        amount: u64,
    },
    /// `crash_after` legs, the transfer actor loses its in-flight ask and resumes.
    Transfer {
        from: usize,
        to: usize,
        amount: u64,
        crash_after: Option<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let acc = 0..ACCOUNTS + 1; // the last index is never opened
    let amount = 1u64..2_000;
    prop_oneof![
        (acc.clone(), amount.clone()).prop_map(|(account, amount)| Op::Deposit { account, amount }),
        (acc.clone(), amount.clone())
            .prop_map(|(account, amount)| Op::Withdraw { account, amount }),
        (acc.clone(), acc, amount, proptest::option::of(0u8..4)).prop_map(
            |(from, to, amount, crash_after)| Op::Transfer {
                from,
                to,
                amount,
                crash_after
            }
        ),
    ]
}

/// A world of accounts with the runtime's idempotency replay emulated.
struct World {
    accounts: HashMap<ActorId, (Option<AccountState>, u64)>,
    replays: HashMap<(ActorId, String), Outcome>,
}

impl World {
    fn new(limits: &[u64]) -> Self {
        let mut accounts = HashMap::new();
        for (i, limit) in limits.iter().enumerate() {
            let open = AccountCommand::Open {
                currency: Currency::USD,
                overdraft_limit: *limit,
            };
            let step = Account::handle(&None, open, &env(&name(i), 0));
            accounts.insert(name(i), (step.change.unwrap().state, 1));
        }
        Self {
            accounts,
            replays: HashMap::new(),
        }
    }

    fn send(&mut self, id: &ActorId, command: AccountCommand, key: Option<String>) -> Outcome {
        if let Some(key) = &key {
            if let Some(o) = self.replays.get(&(id.clone(), key.clone())) {
                return o.clone();
            }
        }
        let (state, version) = self.accounts.get(id).cloned().unwrap_or((None, 0));
        let step = Account::handle(&state, command, &env(id, version));
        if let Some(change) = step.change {
            self.accounts
                .insert(id.clone(), (change.state, version + 1));
        }
        let ReplyPlan::Now(outcome) = step.reply else {
            panic!("account legs answer at once")
        };
        if let Some(key) = key {
            self.replays.insert((id.clone(), key), outcome.clone());
        }
        outcome
    }

    fn transfer(&mut self, from: usize, to: usize, amount: u64, crash_after: Option<u8>) {
        let tid = ActorId::parse("t").unwrap();
        let start = TransferCommand::Start {
            from: name(from),
            to: name(to),
            amount: Amount::new(amount).unwrap(),
        };
        let mut step = Transfer::handle(&None, start, &env(&tid, 0));
        let mut state = None;
        let mut version = 0;
        let mut legs = 0u8;
        loop {
            if let Some(change) = step.change.take() {
                state = change.state;
                version += 1;
            }
            if step.settle.is_some() || !Transfer::is_pending(&state) {
                return;
            }
            let effect = if crash_after == Some(legs) {
                // The actor crashed with its ask in flight; a new activation resumes.
                Transfer::resume(&state, &env(&tid, version)).expect("pending transfers resume")
            } else {
                step.effects
                    .pop()
                    .expect("a pending transfer waits on one effect")
            };
            legs += 1;
            let AnyCommand::Account(command) = effect.command else {
                panic!("legs go to accounts")
            };
            let outcome = self.send(&effect.target.id, command, effect.idempotency_key);
            step = Transfer::on_effect(&state, outcome, &env(&tid, version));
        }
    }

    fn total(&self) -> i64 {
        self.accounts
            .values()
            .filter_map(|(s, _)| s.as_ref())
            .map(|a| a.balance)
            .sum()
    }
}

fn name(i: usize) -> ActorId {
    ActorId::parse(format!("acc-{i}")).unwrap()
}

fn env(id: &ActorId, version: u64) -> Env {
    Env {
        id: id.clone(),
        now: Utc::now(),
        version,
    }
}

proptest! {
    #[test]
    fn money_is_conserved_and_overdrafts_hold(
        limits in proptest::collection::vec(0u64..500, ACCOUNTS),
        ops in proptest::collection::vec(op(), 1..80),
    ) {
        let mut world = World::new(&limits);
        let mut external: i64 = 0;
        for op in ops {
            match op {
                Op::Deposit { account, amount } => {
                    let cmd = AccountCommand::Deposit { amount: Amount::new(amount).unwrap() };
                    if world.send(&name(account), cmd, None).is_ok() { external += amount as i64; }
                }
                Op::Withdraw { account, amount } => {
                    let cmd = AccountCommand::Withdraw { amount: Amount::new(amount).unwrap() };
                    if world.send(&name(account), cmd, None).is_ok() { external -= amount as i64; }
                }
                Op::Transfer { from, to, amount, crash_after } => {
                    // Each transfer is a fresh saga; clear replays of the previous one's id.
                    world.replays.clear();
                    world.transfer(from, to, amount, crash_after);
                }
            }
            prop_assert_eq!(world.total(), external);
            for (state, _) in world.accounts.values() {
                let a = state.as_ref().unwrap();
                prop_assert!(a.balance >= -(a.overdraft_limit as i64));
            }
        }
    }
}
