//! The deterministic simulator over the ledger: the real activation core
//! of accounts and transfers, a simulated store with failures, commits of
//! unknown outcome and crashes, and hostile clients (see `troupe::sim`).
//!
//! `make test` runs a fixed budget of seeds; `make simulate SEEDS=N` runs
//! as many as asked, in release, and prints what they covered. A failing
//! seed is named; `SIM_SEED=<seed> SIM_TRACE=1` replays it with a trace of
//! its last events, and it joins `REGRESSIONS` once understood.

mod ledger;
mod scenarios;

use std::cell::RefCell;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use troupe::sim::{Config, Coverage, Failure, Faults, Simulation};
use troupe_actors::account::Account;
use troupe_actors::transfer::Transfer;

use ledger::Ledger;

/// Seeds that once failed, run every time:
/// - 630: two bodies under one transfer id at once, the first's record lost
///   while its debit landed; the second is recorded and fails on the
///   debit's fact (422 with the failed transfer), the first's debit is
///   refunded through the outbox. The invariant first read that 422 as a
///   refusal of the stored body.
/// - 8: a transfer sent once, whose `failed` record's commit was refused,
///   was told `Idempotent-Replayed: true` after the reload (re-handled,
///   its own pending work looked like another request's).
const REGRESSIONS: &[u64] = &[630, 8];

/// Seeds `make test` runs (about two minutes on this machine's 2 cores).
const BUDGET: u64 = 4000;

/// One run of the ledger under `seed`: everything is drawn from it.
fn run(seed: u64, trace: bool) -> Result<(Coverage, u64), Failure> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed);
    let mut faults = Faults::random(&mut rng);
    // Live reloads came later: drawn apart, so that every seed without
    // one runs as it did before them, and none for the regression seeds,
    // which replay the runs they were found in.
    if !REGRESSIONS.contains(&seed) {
        faults.reloads = ChaCha8Rng::seed_from_u64(seed ^ 0x7e10_ad01).random_range(0..=2);
    }
    let ledger = Ledger::new(&mut rng);
    let config = Config {
        seed,
        active: Duration::from_secs(2),
        settle: Duration::from_secs(30),
        faults,
        trace,
    };
    let (result, causes) = Panics::collect(|| {
        Simulation::new(config, ledger)
            .host::<Account>()
            .host::<Transfer>()
            .run()
    });
    let (mut coverage, ledger) = result?;
    // An operator learns why an actor panicked from the log alone; and the
    // only panics are the ones the clients asked for.
    if let Some(cause) = causes
        .iter()
        .find(|c| !c.starts_with("fault injection: account "))
    {
        return Err(Failure {
            seed,
            at: coverage.simulated,
            what: format!(
                "a panic was logged with the cause {cause:?}: not what an injected panic says"
            ),
            trace: Vec::new(),
        });
    }
    coverage.panics_logged = causes.len() as u64;
    Ok((coverage, ledger.duplicates))
}

/// Collects the causes of the panics the runtime logs (`actor panicked`)
/// on this thread. One subscriber for the whole test binary, installed
/// once: a default set per thread would let another thread's first use of
/// a log line decide, for every thread, that nobody listens to it.
struct Panics;

thread_local! {
    static CAUSES: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

impl Panics {
    fn collect<T>(run: impl FnOnce() -> T) -> (T, Vec<String>) {
        static INSTALLED: OnceLock<()> = OnceLock::new();
        INSTALLED.get_or_init(|| {
            let subscriber =
                tracing_subscriber::registry().with(Panics.with_filter(LevelFilter::ERROR));
            // Nothing else in this binary installs one.
            let _ = tracing::subscriber::set_global_default(subscriber);
        });
        CAUSES.with(|c| *c.borrow_mut() = Some(Vec::new()));
        let result = run();
        let causes = CAUSES.with(|c| c.borrow_mut().take()).unwrap_or_default();
        (result, causes)
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Panics {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        #[derive(Default)]
        struct Fields {
            panicked: bool,
            cause: String,
        }
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                match field.name() {
                    "message" => self.panicked = format!("{value:?}") == "actor panicked",
                    "error.message" => self.cause = format!("{value:?}"),
                    _ => {}
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.panicked {
            CAUSES.with(|c| {
                if let Some(causes) = c.borrow_mut().as_mut() {
                    causes.push(fields.cause);
                }
            });
        }
    }
}

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// The `crash` messages the clients send panic on purpose: their panics
/// are not news. Every other panic is reported as usual.
pub(crate) fn quiet_injected_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with("fault injection"));
        if !injected {
            report(info);
        }
    }));
}

#[test]
fn the_ledger_keeps_every_promise_under_every_seed() {
    quiet_injected_panics();
    if let Some(seed) = env("SIM_SEED") {
        let trace = std::env::var("SIM_TRACE").is_ok();
        match run(seed, trace) {
            Ok((coverage, _)) => println!("seed {seed} passed: {coverage:?}"),
            Err(failure) => panic!("{failure}"),
        }
        return;
    }
    let first = env("SIM_FIRST_SEED").unwrap_or(0);
    let count = env("SIM_SEEDS").unwrap_or(BUDGET);
    let started = Instant::now();
    let mut total = Coverage::default();
    let mut duplicates = 0;
    let seeds = REGRESSIONS.iter().copied().chain(first..first + count);
    let mut ran = 0u64;
    for seed in seeds {
        match run(seed, false) {
            Ok((coverage, dups)) => {
                total.add(&coverage);
                duplicates += dups;
                ran += 1;
            }
            Err(failure) => {
                // Replayed with a trace for the report.
                let traced = run(seed, true).err().unwrap_or(failure);
                panic!("{traced}");
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{ran} seeds clean in {elapsed:.1} s ({:.1} seeds/s): {} events, {} requests ({duplicates} sent twice at once), {} commits, {} crashes, {} passivations, {:.0} s simulated",
        ran as f64 / elapsed,
        total.events,
        total.requests,
        total.commits,
        total.crashes,
        total.passivations,
        total.simulated.as_secs_f64(),
    );
    println!("faults injected: {:?}", total.faults);
    println!("phases reached (events seen in each): {:?}", total.phases);
    println!(
        "most held by one activation: {} messages, {} parked callers",
        total.held.0, total.held.1
    );
    println!(
        "ask retries spread past their base: {}; panics logged with their cause: {}",
        total.spread, total.panics_logged
    );
    if ran >= GATED {
        covered(&total);
    }
}

/// From this many seeds on, a run must have reached everything below: a
/// workload that stops reaching a phase or a fault tests less in silence.
const GATED: u64 = 500;

/// Every phase of the core, every fault, and the memory bounds reached. A
/// failure here is a shortfall of coverage, not of correctness: the seeds
/// ran clean, but tested less than they should.
fn covered(total: &Coverage) {
    const PHASES: &[&str] = &[
        "unloaded",
        "unloaded_in_doubt",
        "loading",
        "fencing",
        "restarting",
        "ready",
        "looking_up",
        "committing",
        "committing_before_restart",
    ];
    const FAULTS: &[&str] = &[
        "commit_fails",
        "commit_lands_late",
        "commit_lands_unseen",
        "commit_lost_unseen",
        "fence_lost",
        "read_fails",
        "reloads",
        "route_fails",
    ];
    for phase in PHASES {
        assert!(
            total.phases.get(phase).is_some_and(|n| *n > 0),
            "coverage shortfall: no seed reached phase {phase}: {:?}",
            total.phases
        );
    }
    assert_eq!(
        total.phases.len(),
        PHASES.len(),
        "phases reached: {:?}",
        total.phases
    );
    for fault in FAULTS {
        assert!(
            total.faults.get(fault).is_some_and(|n| *n > 0),
            "coverage shortfall: no seed injected {fault}: {:?}",
            total.faults
        );
    }
    assert!(total.crashes > 0 && total.passivations > 0);
    assert!(
        total.spread > 0,
        "coverage shortfall: no ask retry was spread past its backoff's base"
    );
    assert!(
        total.panics_logged > 0,
        "coverage shortfall: no panic was logged"
    );
    assert!(
        total.held.0 > 0 && total.held.1 > 0,
        "coverage shortfall: no activation ever held a waiting message and a parked caller: {:?}",
        total.held
    );
}
