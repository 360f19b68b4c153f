//! The loop for one target: poll on the interval (with a little jitter, never
//! two polls of one target at once), feed the engine through `drive`, wake it
//! at its deadlines, and hand its decisions out. Owns the clock: the engine
//! never reads it.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::drive::{self, DriveError, Rollbacks};
use crate::engine::Engine;
use crate::engine::decision::Decision;
use crate::engine::input::Event;
use crate::engine::policy::Policy;
use crate::policy::Compiled;
use crate::telemetry::{DecisionLabels, RuleLabels, Telemetry};
use crate::trace::TraceItem;

use super::poll::{PollOutcome, Poller};
use super::record::Recorder;
use crate::act::actor::{Actor, Followup, IncidentEnd};
use crate::runtime::status::{SourceHealth, StatusBoard, TargetStatus};

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
fn feed(
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
/// when the incident the actor waits for has ended.
pub async fn run_target(
    target: Compiled,
    recorder: Option<Recorder>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
    mut on_decision: impl FnMut(&Decision),
    mut actor: Option<Actor>,
    wiring: Wiring,
) -> anyhow::Result<Option<IncidentEnd>> {
    let Wiring {
        status,
        mut inbox,
        mut leadership,
        exit,
        started,
    } = wiring;
    let mut reload_error: Option<String> = None;
    let mut source = SourceHealth::default();
    let mut last_decision: Option<Decision> = None;
    let (policy_path, mut sha256) = (target.policy.path.clone(), target.policy.sha256.clone());
    let dry_run = actor.is_none();
    let policy = Arc::new(target.policy.clone());
    let name = format!("{}/{}", policy.service, policy.environment);
    let labels = Telemetry::target(&name);
    // This target's series, looked up once and then held (a lookup hashes and
    // compares the label set under the family's lock); each is still created
    // on first use, as before.
    let mut series = Series::default();
    let interval = policy
        .evaluation
        .interval
        .to_std()
        .unwrap_or(Duration::from_secs(15));
    let mut poller = Poller::new(&target, interval)?;
    // Not kept for the loop's lifetime: a thousand targets' tasks add up.
    drop(target);
    let mut engine = Engine::new(policy);
    let clock = Clock::start();
    let mut rollbacks = if actor.is_some() {
        Rollbacks::Reported
    } else {
        Rollbacks::SucceedAtOnce
    };
    // A passive replica (another one owns the target) keeps its actor here:
    // it evaluates, and acts only once it owns the target.
    let mut parked: Option<Actor> = None;
    let mut leading = true;
    if let Some(leadership) = &leadership
        && !*leadership.borrow()
    {
        leading = false;
        parked = actor.take();
        rollbacks = Rollbacks::SucceedAtOnce;
    }
    let mut pending: Vec<Decision> = Vec::new();
    let mut hand_out = async |engine: &mut Engine,
                              decisions: &mut Vec<Decision>,
                              actor: &mut Option<Actor>,
                              parked: &mut Option<Actor>,
                              rollbacks: Rollbacks|
           -> Result<Option<Decision>, DriveError> {
        let mut last = None;
        let passive = parked.is_some();
        while !decisions.is_empty() {
            for decision in std::mem::take(decisions) {
                last = Some(decision.clone());
                let decision_labels = DecisionLabels {
                    target: name.clone(),
                    action: decision.action.name().to_string(),
                    tier: decision.tier.name().to_string(),
                };
                telemetry.decisions.get_or_create(&decision_labels).inc();
                if passive {
                    // Evaluated, never acted on: say so rather than print
                    // what only the owner does.
                    if decision.action.may_roll_back() || decision.action.pages() {
                        tracing::warn!(
                            target_name = %name,
                            action = %decision.action,
                            "PASSIVE, NOT ROLLING BACK OR PAGING from this replica: it does not own the target (another replica does, or the database is unreachable): {}",
                            decision.explanation
                        );
                        // Unless this replica is passive because it lost the
                        // database, and so may everyone: then it tells on-call.
                        if let Some(parked) = parked.as_mut() {
                            Box::pin(parked.passive_decision(&decision)).await;
                        }
                    }
                    continue;
                }
                on_decision(&decision);
                let Some(actor) = actor.as_mut() else {
                    continue;
                };
                if let Followup::RollbackRefused {
                    engine_incident,
                    reason,
                } = Box::pin(actor.handle(&decision, engine)).await
                {
                    engine.handle_rollback_finished(decision.at, engine_incident, Err(reason))?;
                }
            }
            drive::drain(engine, rollbacks, &mut collect(decisions))?;
        }
        if let Some(actor) = actor.as_mut() {
            Box::pin(actor.observed(engine)).await;
        }
        Ok(last)
    };
    if let Some(actor) = actor.as_mut() {
        Box::pin(actor.try_resume(&mut engine, clock.now())).await;
    }
    // Spread many targets over the interval rather than polling them all at once.
    let mut next_poll = Instant::now() + jitter(interval, 0.5);
    let mut stopping = false;
    if let Some(started) = started {
        started();
    }
    loop {
        if let Some(end) = actor.as_ref().and_then(Actor::done) {
            return Ok(Some(end));
        }
        // Ownership moved: take over (a fresh engine, the store's unfinished
        // incidents taken up as after a restart) or step back to passive.
        let owns = leadership.as_ref().is_none_or(|l| *l.borrow());
        if owns != leading {
            leading = owns;
            if owns {
                if let Some(mut taken) = parked.take() {
                    Box::pin(taken.await_own_procedure()).await;
                    engine = Engine::new(Arc::clone(engine.policy()));
                    rollbacks = Rollbacks::Reported;
                    taken.reset_for_takeover();
                    Box::pin(taken.try_resume(&mut engine, clock.now())).await;
                    actor = Some(taken);
                }
            } else {
                parked = actor.take();
                rollbacks = Rollbacks::SucceedAtOnce;
            }
            telemetry.leader.get_or_create(&labels).set(i64::from(owns));
        }
        let deadline = engine
            .poll_timeout()
            .map(|at| clock.instant_of(at))
            .filter(|d| *d < next_poll);
        let procedure = async {
            match actor.as_mut() {
                Some(actor) => actor.procedure_ended().await,
                None => std::future::pending().await,
            }
        };
        let input = async {
            match inbox.as_mut() {
                Some(inbox) => inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let ownership = async {
            match leadership.as_mut() {
                Some(leadership) => leadership.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => stopping = true,
            Ok(()) = ownership => {}
            Some(input) = input => match input {
                Input::Reload(Reload::Apply(compiled)) => {
                    let policy = Arc::new(compiled.policy.clone());
                    sha256 = policy.sha256.clone();
                    engine.replace_policy(Arc::clone(&policy));
                    let interval = policy.evaluation.interval.to_std().unwrap_or(interval);
                    poller = Poller::new(&compiled, interval)?;
                    let compiled = Arc::new(*compiled);
                    for actor in [actor.as_mut(), parked.as_mut()].into_iter().flatten() {
                        actor.set_target(Arc::clone(&compiled));
                    }
                    reload_error = None;
                    tracing::warn!(target_name = %name, sha256 = %sha256, "policy reloaded: the edit is in force");
                }
                Input::Reload(Reload::Rejected(reason)) => {
                    tracing::error!(target_name = %name, "policy edit rejected; the last good policy stays in force: {reason}");
                    reload_error = Some(reason);
                }
                Input::Reload(Reload::Restored) => reload_error = None,
                Input::Event(event) => {
                    tracing::info!(target_name = %name, event = event.name(), "event from the API");
                    let item = TraceItem::Event { at: clock.now(), event };
                    if let Some(recorder) = &recorder {
                        recorder.record(&item);
                    }
                    drive::feed(&mut engine, item, rollbacks, &mut collect(&mut pending))?;
                }
            },
            (engine_incident, ended) = procedure => {
                let now = clock.now();
                engine.handle_rollback_finished(now, engine_incident, ended.result)?;
                drive::drain(&mut engine, rollbacks, &mut collect(&mut pending))?;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(next_poll)), if deadline.is_some() => {
                drive::wake(&mut engine, clock.now(), rollbacks, &mut collect(&mut pending))?;
            }
            _ = tokio::time::sleep_until(next_poll) => {
                if let Some(actor) = actor.as_mut() {
                    Box::pin(actor.try_resume(&mut engine, clock.now())).await;
                    Box::pin(actor.drill_if_due(&engine, clock.now())).await;
                    for event in Box::pin(actor.new_answers()).await {
                        let answer = TraceItem::Event { at: clock.now(), event };
                        drive::feed(&mut engine, answer, rollbacks, &mut collect(&mut pending))?;
                    }
                }
                let started = Instant::now();
                let outcome = Box::pin(poller.poll(clock.now())).await;
                held(&mut series.poll_duration, &telemetry.poll_duration, &labels).observe(started.elapsed().as_secs_f64());
                held(&mut series.polls, &telemetry.polls, &labels).inc();
                if outcome.source_failed {
                    held(&mut series.source_errors, &telemetry.source_errors, &labels).inc();
                }
                held(&mut series.unreadable_lines, &telemetry.unreadable_lines, &labels).inc_by(outcome.unreadable_lines as u64);
                source = SourceHealth {
                    last_poll_at: Some(outcome.item.at()),
                    ok: matches!(&outcome.item, TraceItem::Observation(o) if !o.is_empty()),
                    problems: outcome.problems.clone(),
                    polls: source.polls + 1,
                };
                feed(&mut engine, outcome, recorder.as_ref(), rollbacks, &mut collect(&mut pending))?;
                next_poll += interval + jitter(interval, 0.05);
                let now = Instant::now();
                if next_poll < now {
                    // The poll took longer than the interval: count the ticks skipped.
                    let behind = now - next_poll;
                    let skipped = (behind.as_nanos() / interval.as_nanos().max(1) + 1) as u64;
                    telemetry.missed_ticks.get_or_create(&labels).inc_by(skipped);
                    tracing::warn!(target_name = %name, skipped, "polling is behind the interval");
                    next_poll = now;
                }
            }
        }
        if stopping {
            // A running step finishes (its end recorded, the engine told);
            // one that outlasts the grace is parked: its runner goes on and
            // records its end, and the restart waits for that end.
            if let Some(running) = actor.as_mut().filter(|a| a.procedure_running()) {
                tracing::warn!(target_name = %name, grace_s = STOP_GRACE.as_secs(), "stopping: waiting for the running procedure");
                let grace = async {
                    if let Some(exit) = &exit {
                        exit.cancelled().await;
                    }
                    tokio::time::sleep(STOP_GRACE).await;
                };
                let ended = tokio::select! {
                    ended = running.procedure_ended() => Ok(ended),
                    () = grace => Err(()),
                };
                match ended {
                    Ok((engine_incident, ended)) => {
                        engine.handle_rollback_finished(
                            clock.now(),
                            engine_incident,
                            ended.result,
                        )?;
                        drive::drain(&mut engine, rollbacks, &mut collect(&mut pending))?;
                        Box::pin(hand_out(
                            &mut engine,
                            &mut pending,
                            &mut actor,
                            &mut parked,
                            rollbacks,
                        ))
                        .await?;
                    }
                    Err(_) => tracing::error!(
                        target_name = %name,
                        "stopping with a step still running: it is parked; its runner goes on and records its end, and the next start waits for that end before going on"
                    ),
                }
            }
            return Ok(None);
        }
        if let Some(decision) = Box::pin(hand_out(
            &mut engine,
            &mut pending,
            &mut actor,
            &mut parked,
            rollbacks,
        ))
        .await?
        {
            last_decision = Some(decision);
        }
        held(&mut series.incident_open, &telemetry.incident_open, &labels)
            .set(i64::from(engine.incident().is_some()));
        let rules = engine.rule_status();
        for rule in &rules {
            let Some(reading) = &rule.reading else {
                continue;
            };
            let gauges = match series.rules.iter().position(|(r, _)| *r == rule.rule) {
                Some(index) => &mut series.rules[index].1,
                None => {
                    series.rules.push((rule.rule.clone(), Default::default()));
                    &mut series.rules.last_mut().expect("just pushed").1
                }
            };
            let rule_labels = || RuleLabels {
                target: name.clone(),
                rule: rule.rule.clone(),
            };
            for ((slot, family), value) in gauges
                .iter_mut()
                .zip([
                    &telemetry.signal_value,
                    &telemetry.signal_bound,
                    &telemetry.signal_threshold,
                ])
                .zip([reading.value, reading.bound, reading.threshold])
            {
                if let Some(value) = value {
                    slot.get_or_insert_with(|| family.get_or_create_owned(&rule_labels()))
                        .set(value);
                }
            }
        }
        if let Some(board) = &status {
            board.publish(TargetStatus {
                target: name.clone(),
                policy: policy_path.clone(),
                sha256: sha256.clone(),
                mode: match (dry_run, leading) {
                    (true, _) => "dry-run",
                    (false, true) => "acting",
                    (false, false) => "passive",
                },
                rules,
                deployment: engine.deployment().cloned(),
                incident: engine.incident().cloned(),
                incident_id: actor.as_ref().and_then(|a| a.stored_incident_of(&engine)),
                last_decision: last_decision.clone(),
                source: source.clone(),
                reload_error: reload_error.clone(),
            });
        }
    }
}

/// A target's own telemetry series, held once looked up.
#[derive(Default)]
struct Series {
    polls: Option<Counter>,
    source_errors: Option<Counter>,
    unreadable_lines: Option<Counter>,
    poll_duration: Option<Histogram>,
    incident_open: Option<Gauge>,
    /// Per rule name: its value, bound and threshold gauges.
    rules: Vec<(String, [Option<FloatGauge>; 3])>,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The series of `labels` in `family`, looked up on first use and then held.
fn held<'a, S, M, C>(slot: &'a mut Option<M>, family: &Family<S, M, C>, labels: &S) -> &'a M
where
    S: Clone + std::hash::Hash + Eq,
    M: Clone,
    C: MetricConstructor<M>,
{
    slot.get_or_insert_with(|| family.get_or_create_owned(labels))
}

/// On SIGTERM, how long a running procedure may take to finish.
const STOP_GRACE: Duration = Duration::from_secs(60);

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
fn collect(into: &mut Vec<Decision>) -> impl FnMut(&Decision) -> std::io::Result<()> + '_ {
    |decision| {
        into.push(decision.clone());
        Ok(())
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
