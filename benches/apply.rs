//! The domain's apply: the pure cost of handling one deposit and one
//! transfer step, with no runtime around it. Run with `make bench`.

use std::hint::black_box;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion};
use troupe_actors::account::{Account, AccountState, Command};
use troupe_actors::transfer::{Command as TransferCommand, Transfer};
use troupe_actors::{ActorId, Amount, Behavior, Currency, Env};

fn apply(c: &mut Criterion) {
    let env = Env::new(ActorId::parse("acc").expect("id"), Utc::now(), 7);
    let state = Some(AccountState {
        currency: Currency::USD,
        overdraft_limit: 0,
        balance: 1_000,
        last_seq: 6,
        outbox: Default::default(),
    });
    let amount = Amount::new(5).expect("amount");
    c.bench_function("account_deposit", |b| {
        b.iter(|| Account::handle(black_box(&state), Command::Deposit { amount }, &env))
    });
    c.bench_function("account_get", |b| {
        b.iter(|| Account::handle(black_box(&state), Command::Get, &env))
    });
    let start = TransferCommand::Start {
        from: ActorId::parse("a").expect("id"),
        to: ActorId::parse("b").expect("id"),
        amount,
    };
    c.bench_function("transfer_start", |b| {
        b.iter(|| Transfer::handle(black_box(&None), start.clone(), &env))
    });
}

criterion_group!(benches, apply);
criterion_main!(benches);
