//! One in-process message round trip through the runtime (handler side ->
//! shard -> activation -> reply), beside a bare actix `Addr::send` to an
//! actor on another arbiter as the baseline. Run with `make bench`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use criterion::{criterion_group, criterion_main, Criterion};
use troupe::runtime::{RestartPolicy, Runtime, RuntimeOptions};
use troupe::store::{EmbeddedStore, Store, StoreOptions};
use troupe_actors::account::Command;
use troupe_actors::{ActorId, Address, Amount, AnyCommand};

struct Echo;
impl Actor for Echo {
    type Context = Context<Self>;
}
#[derive(Message)]
#[rtype(result = "u64")]
struct Ping(u64);
impl Handler<Ping> for Echo {
    type Result = u64;
    fn handle(&mut self, msg: Ping, _: &mut Context<Self>) -> u64 {
        msg.0
    }
}

fn options() -> RuntimeOptions {
    RuntimeOptions {
        mailbox_capacity: 1024,
        shard_mailbox_capacity: 65536,
        idle_timeout: Duration::from_secs(600),
        default_timeout: Duration::from_secs(5),
        max_timeout: Duration::from_secs(30),
        effect_timeout: Duration::from_secs(2),
        ask_min_backoff: Duration::from_millis(5),
        ask_max_backoff: Duration::from_secs(2),
        retry_interval: Duration::from_secs(1),
        max_activations: 200_000,
        wake_concurrency: 256,
        restart: RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(10),
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_secs(1),
        },
        idempotency_cache: 16,
    }
}

fn round_trip(c: &mut Criterion) {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let system = System::new();
    let (runtime, echo) = system.block_on(async {
        let store = EmbeddedStore::open(
            dir.path(),
            StoreOptions {
                idempotency_retention: Duration::from_secs(60),
                max_batch: 1024,
                queue: 8192,
                ..Default::default()
            },
        )
        .expect("store opens");
        let store: Arc<dyn Store> = Arc::new(store);
        let runtime = Runtime::start(store, options(), 1);
        let arbiter = Arbiter::new();
        let echo = Echo::start_in_arbiter(&arbiter.handle(), |_| Echo);
        (runtime, echo)
    });
    let id = ActorId::parse("bench").expect("id");
    let address = Address::new(troupe_actors::Kind::Account, id);
    let open = AnyCommand::Account(Command::Open {
        currency: troupe_actors::Currency::USD,
        overdraft_limit: 0,
    });
    system.block_on(runtime.ask(address.clone(), open, runtime.deadline(None), None));

    let mut group = c.benchmark_group("round_trip");
    group.bench_function("actix_addr_send_baseline", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let _ = echo.send(Ping(i)).await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("runtime_ask_get", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let get = AnyCommand::Account(Command::Get);
                    let _ = runtime
                        .ask(address.clone(), get, runtime.deadline(None), None)
                        .await;
                }
                start.elapsed()
            })
        })
    });
    group.bench_function("runtime_ask_durable_deposit", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let deposit = AnyCommand::Account(Command::Deposit {
                        amount: Amount::new(1).expect("amount"),
                    });
                    let _ = runtime
                        .ask(address.clone(), deposit, runtime.deadline(None), None)
                        .await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
}

criterion_group!(benches, round_trip);
criterion_main!(benches);
