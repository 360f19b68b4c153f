//! The loop for one target: poll on the interval (with a little jitter, never
//! two polls of one target at once), feed the engine through `drive`, wake it
//! at its deadlines, and hand its decisions out. Owns the clock: the engine
//! never reads it.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use tokio::time::Instant;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

use crate::drive::{self, DriveError, Rollbacks};
use crate::engine::Engine;
use crate::engine::decision::Decision;
use crate::engine::input::Event;
use crate::engine::policy::Policy;
use crate::policy::Compiled;
use crate::telemetry::Telemetry;
use crate::trace::TraceItem;

use super::poll::{PollOutcome, Poller};
use super::record::Recorder;
use super::target_loop::TargetLoop;
use crate::act::actor::{Actor, IncidentEnd};
use crate::runtime::status::StatusBoard;

/// Wall-clock time that never jumps: read once, then advanced by the monotonic
/// clock. An NTP step can neither fire a page-then-rollback deadline early nor
/// make every input "go back in time".
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    wall: DateTime<Utc>,
    monotonic: Instant,
}

impl Clock {
    pub fn start() -> Clock {
        Clock {
            wall: Utc::now(),
            monotonic: Instant::now(),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.wall + TimeDelta::from_std(self.monotonic.elapsed()).unwrap_or_default()
    }

    /// The monotonic instant of a wall time (now, when it has passed).
    pub fn instant_of(&self, at: DateTime<Utc>) -> Instant {
        let after = (at - self.wall).to_std().unwrap_or(Duration::ZERO);
        self.monotonic + after
    }
}

/// Logs the poll's problems, records it, and feeds it to the engine.
pub(super) fn feed(
    engine: &mut Engine,
    outcome: PollOutcome,
    recorder: Option<&Recorder>,
    rollbacks: Rollbacks,
    on_decision: &mut dyn FnMut(&Decision) -> std::io::Result<()>,
) -> Result<(), DriveError> {
    let service = engine.policy().service.clone();
    for problem in &outcome.problems {
        tracing::warn!(target_service = %service, "{problem}");
    }
    if let Some(recorder) = recorder {
        recorder.record(&outcome.item);
    }
    drive::feed(engine, outcome.item, rollbacks, on_decision)
}

/// The loop for one target: polls until `shutdown`, handing each decision to
/// `on_decision`. Without an actor it is the dry run: nothing is executed or
/// sent and a rollback counts as succeeded at once, as in backtest. With one,
/// decisions become stored incidents and procedures, and the loop also ends
/// when the incident the actor waits for has ended. (`TargetLoop`.)
///
/// The loop is set up when this is called and the future holds only it: an
/// `async fn` would also keep its arguments (the compiled policy, the actor)
/// in every target's task for the task's whole life.
pub fn run_target(
    target: Compiled,
    recorder: Option<Recorder>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
    on_decision: impl FnMut(&Decision),
    actor: Option<Actor>,
    wiring: Wiring,
) -> impl std::future::Future<Output = anyhow::Result<Option<IncidentEnd>>> {
    match TargetLoop::new(
        target,
        recorder,
        telemetry,
        shutdown,
        on_decision,
        actor,
        wiring,
    ) {
        Ok(target_loop) => Either::Left(target_loop.run()),
        Err(error) => Either::Right(std::future::ready(Err(error))),
    }
}

/// What connects a target loop to the sidecar around it.
#[derive(Default)]
pub struct Wiring {
    /// Where the loop publishes its status after every step.
    pub status: Option<StatusBoard>,
    /// Events from the API and edited policies, in the order they came.
    pub inbox: Option<tokio::sync::mpsc::Receiver<Input>>,
    /// Whether this replica owns the target (`crate::ha`); none: it does.
    pub leadership: Option<tokio::sync::watch::Receiver<bool>>,
    /// Cancelled when the whole process stops. A loop stopped without it (its
    /// policy file removed) waits for its running procedure to end however
    /// long it takes: its lock is released only after the loop ends, and a
    /// procedure must not run on unowned. On process exit the grace applies.
    pub exit: Option<CancellationToken>,
    /// Called once the loop has set up and taken up what the store kept:
    /// it has started (readiness).
    pub started: Option<Box<dyn FnOnce() + Send>>,
}

/// What reaches a target loop from outside.
pub enum Input {
    /// From the API: a deployment, declaration or suppression.
    Event(Event),
    /// From the policy watcher, applied between polls.
    Reload(Reload),
}

/// What the policy watcher found.
pub enum Reload {
    /// A valid edit: it goes into force.
    Apply(Box<Compiled>),
    /// An invalid edit: rejected; the policy in force stays. The reason.
    Rejected(String),
    /// The file is back to the policy in force (a rejected edit undone).
    Restored,
}

/// A decision sink that keeps them for the actor (which is async).
pub(super) fn collect(
    into: &mut Vec<Decision>,
) -> impl FnMut(&Decision) -> std::io::Result<()> + '_ {
    |decision| {
        into.push(decision.clone());
        Ok(())
    }
}

/// Up to `fraction` of `interval`, at random.
pub(super) fn jitter(interval: Duration, fraction: f64) -> Duration {
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
    let clock = Clock::start();
    let started = Instant::now();
    let total_polls = (duration.as_millis() / every.as_millis().max(1)) as u32 + 1;
    let mut polls_with_data = 0;
    let mut last_problems = Vec::new();
    for index in 0..total_polls {
        tokio::time::sleep_until(started + every * index).await;
        let at = clock.now();
        let outcome = poller.poll(at).await;
        if index == 0 {
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
            drive::feed(
                &mut engine,
                deploy,
                Rollbacks::Reported,
                &mut collect(&mut decisions),
            )?;
        }
        if matches!(&outcome.item, TraceItem::Observation(o) if !o.is_empty()) {
            polls_with_data += 1;
        }
        last_problems = outcome.problems.clone();
        feed(
            &mut engine,
            outcome,
            recorder.as_ref(),
            Rollbacks::Reported,
            &mut collect(&mut decisions),
        )?;
    }
    engine.handle_sampling_end(clock.now())?;
    drive::drain(
        &mut engine,
        Rollbacks::Reported,
        &mut collect(&mut decisions),
    )?;
    Ok(Evaluation {
        decisions,
        engine,
        polls: total_polls as usize,
        polls_with_data,
        last_problems,
    })
}

/// The policy as `evaluate` applies it: polls every `every`. (A rule that holds
/// through the whole sampling is confirmed by `Engine::handle_sampling_end`.)
pub fn evaluation_policy(policy: &Policy, every: Duration) -> Policy {
    let mut policy = policy.clone();
    let every = TimeDelta::from_std(every).unwrap_or(TimeDelta::seconds(2));
    policy.evaluation.interval = every;
    for rule in &mut policy.rules {
        rule.window = rule.window.max(every);
    }
    policy
}
