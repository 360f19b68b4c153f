//! The loop for one target: poll on the interval (with a little jitter, never
//! two polls of one target at once), feed the engine, wake it at its deadlines,
//! and hand its decisions out. Owns the clock: the engine never reads it.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::Engine;
use crate::engine::decision::Decision;
use crate::engine::input::Event;
use crate::engine::policy::Action;
use crate::policy::Compiled;
use crate::telemetry::{DecisionLabels, Telemetry};
use crate::trace::TraceItem;

use super::poll::{PollOutcome, Poller};
use super::record::Recorder;

/// Feeds one poll's outcome to the engine (and the recording). Returns whether
/// the poll carried any usable data.
pub fn feed(engine: &mut Engine, outcome: &PollOutcome, recorder: Option<&Recorder>) -> bool {
    let service = engine.policy().service.clone();
    for problem in &outcome.problems {
        tracing::warn!(target_service = %service, "{problem}");
    }
    if let Some(recorder) = recorder {
        recorder.record(&outcome.item);
    }
    let result = match &outcome.item {
        TraceItem::Observation(observation) => {
            engine.handle_observation(observation).map(|()| true)
        }
        TraceItem::NoData { at, reason } => engine.handle_no_data(*at, reason).map(|()| false),
        TraceItem::Event { at, event } => engine.handle_event(*at, event.clone()).map(|()| false),
    };
    result.unwrap_or_else(|error| {
        // The wall clock stepped back (NTP): skip this poll rather than corrupt the state.
        tracing::warn!(target_service = %service, %error, "poll skipped");
        false
    })
}

/// The dry-run loop: polls until `shutdown`, handing each decision to `on_decision`.
/// Nothing is executed or sent; a rollback counts as succeeded at once, as in backtest.
pub async fn run_dry(
    target: Compiled,
    recorder: Option<Recorder>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
    mut on_decision: impl FnMut(&Decision),
) -> anyhow::Result<()> {
    let policy = Arc::new(target.policy.clone());
    let name = format!("{}/{}", policy.service, policy.environment);
    let labels = Telemetry::target(&name);
    let interval = policy
        .evaluation
        .interval
        .to_std()
        .unwrap_or(Duration::from_secs(15));
    let mut poller = Poller::new(&target, interval)?;
    let mut engine = Engine::new(policy);
    // Spread many targets over the interval rather than polling them all at once.
    let mut next_poll = Instant::now() + jitter(interval, 0.5);
    let mut missed_ticks: u64 = 0;
    loop {
        let deadline = engine.poll_timeout().map(|at| {
            let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            Instant::now() + wait
        });
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep_until(deadline.unwrap_or(next_poll)), if deadline.is_some_and(|d| d < next_poll) => {
                if let Some(at) = engine.poll_timeout() {
                    let _ = engine.handle_timeout(at.max(Utc::now()));
                }
            }
            _ = tokio::time::sleep_until(next_poll) => {
                let started = Instant::now();
                let outcome = poller.poll(Utc::now()).await;
                telemetry.poll_duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
                telemetry.polls.get_or_create(&labels).inc();
                if outcome.source_failed {
                    telemetry.source_errors.get_or_create(&labels).inc();
                }
                telemetry.unreadable_lines.get_or_create(&labels).inc_by(outcome.unreadable_lines as u64);
                feed(&mut engine, &outcome, recorder.as_ref());
                next_poll += interval + jitter(interval, 0.05);
                let now = Instant::now();
                if next_poll < now {
                    // The poll took longer than the interval: count the ticks skipped.
                    let behind = now - next_poll;
                    let skipped = behind.as_nanos() / interval.as_nanos().max(1) + 1;
                    missed_ticks += skipped as u64;
                    telemetry.missed_ticks.get_or_create(&labels).inc_by(skipped as u64);
                    tracing::warn!(target_name = %name, missed_ticks, "polling is behind the interval");
                    next_poll = now;
                }
            }
        }
        while let Some(decision) = engine.poll_decision() {
            let decision_labels = DecisionLabels {
                target: name.clone(),
                action: decision.action.name().to_string(),
                tier: decision.tier.name().to_string(),
            };
            telemetry.decisions.get_or_create(&decision_labels).inc();
            on_decision(&decision);
            if decision.action == Action::Rollback
                && let Some(incident) = decision.incident
            {
                let _ = engine.handle_rollback_finished(decision.at, incident, Ok(()));
            }
        }
    }
}

/// Up to `fraction` of `interval`, at random.
fn jitter(interval: Duration, fraction: f64) -> Duration {
    interval.mul_f64(rand::rng().random_range(0.0..fraction))
}

/// What `evaluate` found.
pub struct Evaluation {
    pub decisions: Vec<Decision>,
    pub engine: Engine,
    pub polls: usize,
    pub polls_with_data: usize,
    pub last_problems: Vec<String>,
}

/// Samples a target for `duration`, polling every `every`, judging as it goes.
/// The sampled version counts as just deployed: evaluate is the post-deploy gate.
pub async fn evaluate(
    target: &Compiled,
    duration: Duration,
    every: Duration,
    recorder: Option<Recorder>,
) -> anyhow::Result<Evaluation> {
    let policy = Arc::new(evaluation_policy(&target.policy, every));
    let mut poller = Poller::new(target, every)?;
    let mut engine = Engine::new(policy);
    let mut decisions = Vec::new();
    let started = Instant::now();
    let total_polls = (duration.as_millis() / every.as_millis().max(1)) as u32 + 1;
    let mut polls = 0;
    let mut polls_with_data = 0;
    let mut last_problems = Vec::new();
    for index in 0..total_polls {
        let tick = started + every * index;
        tokio::time::sleep_until(tick).await;
        let at = Utc::now();
        let outcome = poller.poll(at).await;
        if polls == 0 {
            let version = match &outcome.item {
                TraceItem::Observation(o) => o.version.clone(),
                _ => None,
            };
            let deploy = TraceItem::Event {
                at,
                event: Event::Deploy {
                    version,
                    previous: None,
                    migrations: Vec::new(),
                },
            };
            if let Some(recorder) = &recorder {
                recorder.record(&deploy);
            }
            if let TraceItem::Event { at, event } = deploy {
                let _ = engine.handle_event(at, event);
            }
        }
        polls += 1;
        if feed(&mut engine, &outcome, recorder.as_ref()) {
            polls_with_data += 1;
        }
        last_problems = outcome.problems;
        while let Some(decision) = engine.poll_decision() {
            decisions.push(decision);
        }
    }
    let _ = engine.handle_sampling_end(Utc::now());
    while let Some(decision) = engine.poll_decision() {
        decisions.push(decision);
    }
    Ok(Evaluation {
        decisions,
        engine,
        polls,
        polls_with_data,
        last_problems,
    })
}

/// The policy as `evaluate` applies it: polls every `every`. (A rule that holds
/// through the whole sampling is confirmed by `Engine::handle_sampling_end`.)
pub fn evaluation_policy(
    policy: &crate::engine::policy::Policy,
    every: Duration,
) -> crate::engine::policy::Policy {
    let mut policy = policy.clone();
    let every = chrono::TimeDelta::from_std(every).unwrap_or(chrono::TimeDelta::seconds(2));
    policy.evaluation.interval = every;
    for rule in &mut policy.rules {
        rule.window = rule.window.max(every);
    }
    policy
}
