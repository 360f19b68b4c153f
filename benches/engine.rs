//! Engine throughput and the end-to-end 30-day backtest (criterion).
//!
//!     cargo bench --bench engine
//!
//! * `engine/handle_observation/30d`: 172,800 pre-built observations through
//!   `Engine::handle_observation` under `policies/production.toml`, driven in
//!   the calling order of the engine's module doc (timeouts first, decisions
//!   drained, rollbacks reported finished). Criterion prints observations/s.
//! * `backtest/replay/30d`: the same trace as JSON Lines (plus its deploy
//!   events), generated once, through `backtest::replay` from memory: parsing
//!   and the engine, no file IO. Target: under 1 s.
//! * `backtest/parse_line/30d`: `trace::parse_line` alone over the same text,
//!   to split the backtest's time between parsing and the engine.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use rollwatch::engine::Engine;
use rollwatch::engine::input::Observation;
use rollwatch::engine::policy::{Action, Policy};

/// Feeds every observation to a fresh engine; returns it so that dropping it
/// is not timed, and the number of decisions so that nothing is optimized away.
fn run_engine(policy: &Arc<Policy>, observations: &[Observation]) -> (Engine, usize) {
    let mut engine = Engine::new(Arc::clone(policy));
    let mut decisions = 0;
    for observation in observations {
        while let Some(deadline) = engine.poll_timeout().filter(|d| *d <= observation.at) {
            engine.handle_timeout(deadline).expect("time goes forward");
            decisions += drain(&mut engine);
        }
        engine
            .handle_observation(observation)
            .expect("time goes forward");
        decisions += drain(&mut engine);
    }
    (engine, decisions)
}

fn drain(engine: &mut Engine) -> usize {
    let mut count = 0;
    while let Some(decision) = engine.poll_decision() {
        count += 1;
        if decision.action == Action::Rollback
            && let Some(incident) = decision.incident
        {
            engine
                .handle_rollback_finished(decision.at, incident, Ok(()))
                .expect("time goes forward");
        }
        black_box(decision);
    }
    count
}

fn engine_throughput(c: &mut Criterion) {
    let policy = common::load_policy();
    let observations = common::observations(common::THIRTY_DAYS);
    let (_, decisions) = run_engine(&policy, &observations);
    assert!(
        decisions > 0,
        "the trace is meant to make the engine decide"
    );

    let mut group = c.benchmark_group("engine");
    group
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(observations.len() as u64));
    group.bench_function("handle_observation/30d", |b| {
        b.iter_with_large_drop(|| run_engine(&policy, black_box(&observations)))
    });
    group.finish();
}

fn backtest_30_days(c: &mut Criterion) {
    let policy = common::load_policy();
    let text = common::trace_text(common::THIRTY_DAYS);
    let replay = || {
        rollwatch::backtest::replay(Arc::clone(&policy), black_box(text.as_bytes()), |d| {
            black_box(d);
            Ok(())
        })
        .expect("the generated trace replays")
    };
    let summary = replay();
    assert_eq!(summary.observations, common::THIRTY_DAYS as u64);
    assert!(
        summary.rollbacks > 0,
        "the trace is meant to roll back: {summary:?}"
    );
    eprintln!(
        "30-day trace: {} lines, {:.1} MB; backtest: {} rollbacks, {} pages",
        text.lines().count(),
        text.len() as f64 / 1e6,
        summary.rollbacks,
        summary.pages
    );

    let mut group = c.benchmark_group("backtest");
    group
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(common::THIRTY_DAYS as u64));
    group.bench_function("replay/30d", |b| b.iter(replay));
    group.bench_function("parse_line/30d", |b| {
        b.iter(|| {
            for line in text.lines() {
                black_box(rollwatch::trace::parse_line(black_box(line)).expect("a valid line"));
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Each iteration is a whole 30-day run (tenths of a second): ten samples
    // are plenty, and keep `cargo bench` to a couple of minutes on 2 cores.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(10));
    targets = engine_throughput, backtest_30_days
}
criterion_main!(benches);
