//! One target's loop as a value: `TargetLoop` waits for the next `Event`
//! (a poll tick, an engine deadline, an API event, a policy reload, the end
//! of a procedure, a change of ownership, shutdown), handles it, hands the
//! engine's decisions out once, and publishes its status. Procedures and
//! drills run as the actor's tasks; the loop waits for their ends alongside
//! everything else.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::act::actor::{Actor, Followup, IncidentEnd};
use crate::act::procedure::Ended;
use crate::drive::{self, DriveError, Rollbacks};
use crate::engine::Engine;
use crate::engine::decision::Decision;
use crate::engine::input;
use crate::policy::Compiled;
use crate::telemetry::{DecisionLabels, RuleLabels, TargetLabels, Telemetry};
use crate::trace::TraceItem;

use super::poll::Poller;
use super::record::Recorder;
use super::status::{Mode, SourceHealth, StatusBoard, TargetStatus};
use super::target::{Clock, Input, Reload, Wiring, collect, feed, jitter};

/// How a mode reports rollbacks to the engine: only an acting replica runs
/// them; a dry run or a passive replica counts them as succeeded at once, as
/// a backtest does.
fn rollbacks(mode: Mode) -> Rollbacks {
    match mode {
        Mode::Acting => Rollbacks::Reported,
        Mode::DryRun | Mode::Passive => Rollbacks::SucceedAtOnce,
    }
}

/// Everything that wakes the loop.
pub enum Event {
    /// The process, or this target, stops.
    Shutdown,
    /// Whether this replica owns the target has changed.
    Ownership,
    /// From the API: a deployment, declaration or suppression.
    Api(input::Event),
    /// From the policy watcher.
    Reload(Reload),
    /// The running procedure has ended: the engine's incident, and how.
    ProcedureEnded(u64, Ended),
    /// An instant the engine asked to be woken at, before the next poll.
    Deadline,
    /// Time to poll.
    Tick,
}

pub struct TargetLoop<D> {
    name: String,
    labels: TargetLabels,
    policy_path: String,
    sha256: String,
    interval: Duration,
    engine: Engine,
    poller: Poller,
    clock: Clock,
    mode: Mode,
    /// Acting or passive: the actor (it acts only while `Acting`).
    actor: Option<Actor>,
    on_decision: D,
    recorder: Option<Recorder>,
    telemetry: Arc<Telemetry>,
    series: Series,
    shutdown: CancellationToken,
    status: Option<StatusBoard>,
    inbox: Option<tokio::sync::mpsc::Receiver<Input>>,
    leadership: Option<tokio::sync::watch::Receiver<bool>>,
    exit: Option<CancellationToken>,
    /// Decisions drained from the engine, not yet handed out.
    pending: Vec<Decision>,
    reload_error: Option<String>,
    source: SourceHealth,
    last_decision: Option<Decision>,
    next_poll: Instant,
    /// Told once the loop has set up and taken up what the store kept.
    started: Option<Box<dyn FnOnce() + Send>>,
}

impl<D: FnMut(&Decision)> TargetLoop<D> {
    /// Sets the loop up: its poller, engine and mode (without an actor, a
    /// dry run; with one, passive while another replica owns the target).
    pub fn new(
        target: Compiled,
        recorder: Option<Recorder>,
        telemetry: Arc<Telemetry>,
        shutdown: CancellationToken,
        on_decision: D,
        actor: Option<Actor>,
        wiring: Wiring,
    ) -> anyhow::Result<TargetLoop<D>> {
        let Wiring {
            status,
            inbox,
            leadership,
            exit,
            started,
        } = wiring;
        let (policy_path, sha256) = (target.policy.path.clone(), target.policy.sha256.clone());
        let policy = Arc::new(target.policy.clone());
        let name = format!("{}/{}", policy.service, policy.environment);
        let labels = Telemetry::target(&name);
        let interval = policy
            .evaluation
            .interval
            .to_std()
            .unwrap_or(Duration::from_secs(15));
        let poller = Poller::new(&target, interval)?;
        // Not kept for the loop's lifetime: a thousand targets' tasks add up.
        drop(target);
        let owns = leadership.as_ref().is_none_or(|l| *l.borrow());
        let mode = match (&actor, owns) {
            (None, _) => Mode::DryRun,
            (Some(_), true) => Mode::Acting,
            (Some(_), false) => Mode::Passive,
        };
        Ok(TargetLoop {
            name,
            labels,
            policy_path,
            sha256,
            interval,
            engine: Engine::new(policy),
            poller,
            clock: Clock::start(),
            mode,
            actor,
            on_decision,
            recorder,
            telemetry,
            // This target's series, looked up once and then held (a lookup
            // hashes and compares the label set under the family's lock).
            series: Series::default(),
            shutdown,
            status,
            inbox,
            leadership,
            exit,
            pending: Vec::new(),
            reload_error: None,
            source: SourceHealth::default(),
            last_decision: None,
            next_poll: Instant::now(),
            started,
        })
    }

    /// Runs until shutdown (`None`) or, with an actor told to stop when an
    /// incident ends, until it has (how).
    pub async fn run(mut self) -> anyhow::Result<Option<IncidentEnd>> {
        let now = self.clock.now();
        if let Some(actor) = self.actor.as_mut().filter(|_| self.mode == Mode::Acting) {
            Box::pin(actor.try_resume(&mut self.engine, now)).await;
        }
        // Spread many targets over the interval rather than polling them all at once.
        self.next_poll = Instant::now() + jitter(self.interval, 0.5);
        if let Some(started) = self.started.take() {
            started();
        }
        loop {
            let acting = self.actor.as_ref().filter(|_| self.mode == Mode::Acting);
            if let Some(end) = acting.and_then(Actor::done) {
                return Ok(Some(end));
            }
            // Each step's future is boxed while it runs: awaited inline, the
            // largest of them would sit in every target's task for good
            // (measured: 8 KB a target before the loop was a type, 13 KB
            // with the steps inline; a thousand targets add up).
            Box::pin(self.follow_ownership()).await;
            let event = Box::pin(self.next_event()).await;
            if matches!(event, Event::Shutdown) {
                Box::pin(self.stop()).await?;
                return Ok(None);
            }
            Box::pin(self.handle(event)).await?;
            if let Some(decision) = Box::pin(self.hand_out()).await? {
                self.last_decision = Some(decision);
            }
            self.publish();
        }
    }

    /// Ownership moved: take over (a fresh engine, the store's unfinished
    /// incidents taken up as after a restart) or step back to passive.
    async fn follow_ownership(&mut self) {
        if self.mode == Mode::DryRun {
            return;
        }
        let owns = self.leadership.as_ref().is_none_or(|l| *l.borrow());
        if owns == (self.mode == Mode::Acting) {
            return;
        }
        if owns {
            self.mode = Mode::Acting;
            if let Some(taken) = self.actor.as_mut() {
                Box::pin(taken.await_own_procedure()).await;
                self.engine = Engine::new(Arc::clone(self.engine.policy()));
                taken.reset_for_takeover();
                Box::pin(taken.try_resume(&mut self.engine, self.clock.now())).await;
            }
        } else {
            self.mode = Mode::Passive;
        }
        self.telemetry
            .leader
            .get_or_create(&self.labels)
            .set(i64::from(owns));
    }

    /// Waits for whatever comes first.
    async fn next_event(&mut self) -> Event {
        let deadline = self
            .engine
            .poll_timeout()
            .map(|at| self.clock.instant_of(at))
            .filter(|d| *d < self.next_poll);
        let acting = self.mode == Mode::Acting;
        let procedure = async {
            match self.actor.as_mut().filter(|_| acting) {
                Some(actor) => actor.procedure_ended().await,
                None => std::future::pending().await,
            }
        };
        let input = async {
            match self.inbox.as_mut() {
                Some(inbox) => inbox.recv().await,
                None => std::future::pending().await,
            }
        };
        let ownership = async {
            match self.leadership.as_mut() {
                Some(leadership) => leadership.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.shutdown.cancelled() => Event::Shutdown,
            Ok(()) = ownership => Event::Ownership,
            Some(input) = input => match input {
                Input::Event(event) => Event::Api(event),
                Input::Reload(reload) => Event::Reload(reload),
            },
            (engine_incident, ended) = procedure => Event::ProcedureEnded(engine_incident, ended),
            _ = tokio::time::sleep_until(deadline.unwrap_or(self.next_poll)), if deadline.is_some() => Event::Deadline,
            _ = tokio::time::sleep_until(self.next_poll) => Event::Tick,
        }
    }

    async fn handle(&mut self, event: Event) -> anyhow::Result<()> {
        let rollbacks = rollbacks(self.mode);
        match event {
            Event::Shutdown | Event::Ownership => {}
            Event::Reload(Reload::Apply(compiled)) => {
                let policy = Arc::new(compiled.policy.clone());
                self.sha256 = policy.sha256.clone();
                self.engine.replace_policy(Arc::clone(&policy));
                let interval = policy.evaluation.interval.to_std().unwrap_or(self.interval);
                self.poller = Poller::new(&compiled, interval)?;
                if let Some(actor) = self.actor.as_mut() {
                    actor.set_target(Arc::new(*compiled));
                }
                self.reload_error = None;
                tracing::warn!(target_name = %self.name, sha256 = %self.sha256, "policy reloaded: the edit is in force");
            }
            Event::Reload(Reload::Rejected(reason)) => {
                tracing::error!(target_name = %self.name, "policy edit rejected; the last good policy stays in force: {reason}");
                self.reload_error = Some(reason);
            }
            Event::Reload(Reload::Restored) => self.reload_error = None,
            Event::Api(event) => {
                tracing::info!(target_name = %self.name, event = event.name(), "event from the API");
                let item = TraceItem::Event {
                    at: self.clock.now(),
                    event,
                };
                if let Some(recorder) = &self.recorder {
                    recorder.record(&item);
                }
                drive::feed(
                    &mut self.engine,
                    item,
                    rollbacks,
                    &mut collect(&mut self.pending),
                )?;
            }
            Event::ProcedureEnded(engine_incident, ended) => {
                let now = self.clock.now();
                self.engine
                    .handle_rollback_finished(now, engine_incident, ended.result)?;
                drive::drain(&mut self.engine, rollbacks, &mut collect(&mut self.pending))?;
            }
            Event::Deadline => {
                let now = self.clock.now();
                drive::wake(
                    &mut self.engine,
                    now,
                    rollbacks,
                    &mut collect(&mut self.pending),
                )?;
            }
            Event::Tick => self.poll().await?,
        }
        Ok(())
    }

    /// The poll tick: what the store has for the actor, then one poll.
    async fn poll(&mut self) -> anyhow::Result<()> {
        let rollbacks = rollbacks(self.mode);
        let now = self.clock.now();
        if let Some(actor) = self.actor.as_mut().filter(|_| self.mode == Mode::Acting) {
            Box::pin(actor.try_resume(&mut self.engine, now)).await;
            Box::pin(actor.drill_if_due(&self.engine, now)).await;
            for event in Box::pin(actor.new_answers()).await {
                let answer = TraceItem::Event {
                    at: self.clock.now(),
                    event,
                };
                drive::feed(
                    &mut self.engine,
                    answer,
                    rollbacks,
                    &mut collect(&mut self.pending),
                )?;
            }
        }
        let (telemetry, labels, series) = (&self.telemetry, &self.labels, &mut self.series);
        let started = Instant::now();
        let outcome = Box::pin(self.poller.poll(self.clock.now())).await;
        held(&mut series.poll_duration, &telemetry.poll_duration, labels)
            .observe(started.elapsed().as_secs_f64());
        held(&mut series.polls, &telemetry.polls, labels).inc();
        if outcome.source_failed {
            held(&mut series.source_errors, &telemetry.source_errors, labels).inc();
        }
        held(
            &mut series.unreadable_lines,
            &telemetry.unreadable_lines,
            labels,
        )
        .inc_by(outcome.unreadable_lines as u64);
        self.source = SourceHealth {
            last_poll_at: Some(outcome.item.at()),
            ok: matches!(&outcome.item, TraceItem::Observation(o) if !o.is_empty()),
            problems: outcome.problems.clone(),
            polls: self.source.polls + 1,
        };
        feed(
            &mut self.engine,
            outcome,
            self.recorder.as_ref(),
            rollbacks,
            &mut collect(&mut self.pending),
        )?;
        let interval = self.interval;
        self.next_poll += interval + jitter(interval, 0.05);
        let now = Instant::now();
        if self.next_poll < now {
            // The poll took longer than the interval: count the ticks skipped.
            let behind = now - self.next_poll;
            let skipped = (behind.as_nanos() / interval.as_nanos().max(1) + 1) as u64;
            telemetry.missed_ticks.get_or_create(labels).inc_by(skipped);
            tracing::warn!(target_name = %self.name, skipped, "polling is behind the interval");
            self.next_poll = now;
        }
        Ok(())
    }

    /// Hands the pending decisions out, once each, and drains what they
    /// lead to. The last one handed out.
    async fn hand_out(&mut self) -> Result<Option<Decision>, DriveError> {
        let mut last = None;
        let rollbacks = rollbacks(self.mode);
        while !self.pending.is_empty() {
            for decision in std::mem::take(&mut self.pending) {
                last = Some(decision.clone());
                let decision_labels = DecisionLabels {
                    target: self.name.clone(),
                    action: decision.action.as_str().to_string(),
                    tier: decision.tier.as_str().to_string(),
                };
                self.telemetry
                    .decisions
                    .get_or_create(&decision_labels)
                    .inc();
                if self.mode == Mode::Passive {
                    // Evaluated, never acted on: say so rather than print
                    // what only the owner does.
                    if decision.action.may_roll_back() || decision.action.pages() {
                        tracing::warn!(
                            target_name = %self.name,
                            action = %decision.action,
                            "PASSIVE, NOT ROLLING BACK OR PAGING from this replica: it does not own the target (another replica does, or the database is unreachable): {}",
                            decision.explanation
                        );
                        // Unless this replica is passive because it lost the
                        // database, and so may everyone: then it tells on-call.
                        if let Some(parked) = self.actor.as_mut() {
                            Box::pin(parked.passive_decision(&decision)).await;
                        }
                    }
                    continue;
                }
                (self.on_decision)(&decision);
                let Some(actor) = self.actor.as_mut().filter(|_| self.mode == Mode::Acting) else {
                    continue;
                };
                if let Followup::RollbackRefused {
                    engine_incident,
                    reason,
                } = Box::pin(actor.handle(&decision, &self.engine)).await
                {
                    self.engine.handle_rollback_finished(
                        decision.at,
                        engine_incident,
                        Err(reason),
                    )?;
                }
            }
            drive::drain(&mut self.engine, rollbacks, &mut collect(&mut self.pending))?;
        }
        if let Some(actor) = self.actor.as_mut().filter(|_| self.mode == Mode::Acting) {
            Box::pin(actor.observed(&self.engine)).await;
        }
        Ok(last)
    }

    /// Stopping: a running step finishes (its end recorded, the engine
    /// told); one that outlasts the grace is parked: its runner goes on and
    /// records its end, and the restart waits for that end.
    async fn stop(&mut self) -> anyhow::Result<()> {
        let rollbacks = rollbacks(self.mode);
        let running = self
            .actor
            .as_mut()
            .filter(|a| a.procedure_running())
            .filter(|_| self.mode == Mode::Acting);
        let Some(running) = running else {
            return Ok(());
        };
        tracing::warn!(target_name = %self.name, grace_s = STOP_GRACE.as_secs(), "stopping: waiting for the running procedure");
        let exit = self.exit.clone();
        let grace = async {
            if let Some(exit) = &exit {
                exit.cancelled().await;
            }
            tokio::time::sleep(STOP_GRACE).await;
        };
        let ended = tokio::select! {
            ended = running.procedure_ended() => Some(ended),
            () = grace => None,
        };
        match ended {
            Some((engine_incident, ended)) => {
                let now = self.clock.now();
                self.engine
                    .handle_rollback_finished(now, engine_incident, ended.result)?;
                drive::drain(&mut self.engine, rollbacks, &mut collect(&mut self.pending))?;
                self.hand_out().await?;
            }
            None => tracing::error!(
                target_name = %self.name,
                "stopping with a step still running: it is parked; its runner goes on and records its end, and the next start waits for that end before going on"
            ),
        }
        Ok(())
    }

    /// The gauges and the status board, after every step.
    fn publish(&mut self) {
        let (telemetry, labels, series) = (&self.telemetry, &self.labels, &mut self.series);
        held(&mut series.incident_open, &telemetry.incident_open, labels)
            .set(i64::from(self.engine.incident().is_some()));
        let rules = self.engine.rule_status();
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
                target: self.name.clone(),
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
        if let Some(board) = &self.status {
            let acting = self.actor.as_ref().filter(|_| self.mode == Mode::Acting);
            board.publish(TargetStatus {
                target: self.name.clone(),
                policy: self.policy_path.clone(),
                sha256: self.sha256.clone(),
                mode: self.mode,
                rules,
                deployment: self.engine.deployment().cloned(),
                incident: self.engine.incident().cloned(),
                incident_id: acting.and_then(|a| a.stored_incident_of(&self.engine)),
                last_decision: self.last_decision.clone(),
                source: self.source.clone(),
                reload_error: self.reload_error.clone(),
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
