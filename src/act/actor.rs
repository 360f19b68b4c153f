//! One target's acting side: turns the engine's decisions into stored
//! incidents, outbox notices and procedure runs, and hands a restarted
//! rollwatch its unfinished incidents back. Every write that makes acting safe
//! comes before the act: a rollback whose incident, decision or notice cannot
//! be stored is not started, and the engine hears that it failed. A
//! decision that needs a human while the database does not answer is sent to
//! on-call directly, once per incident, since the outbox cannot hold it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::task::JoinHandle;

use crate::engine::decision::{Cause, Decision, awaits_answer};
use crate::engine::input::Event;
use crate::engine::policy::{Action, Tier};
use crate::engine::signals::Sample;
use crate::engine::{Deployment, Engine, Phase, Resumed, time_text};
use crate::policy::Compiled;
use crate::store::{
    AnswerKind, DeploymentSource, IncidentKind, IncidentOutcome, IncidentPhase, IncidentState,
    NewDeployment, NewIncident, NotificationKind, SamplePoint, Store, StoreError,
};

use super::failpoint;
use super::procedure::{self, Context, Ended};
use crate::notify::{deliver, message};

type Say = Arc<dyn Fn(&str) + Send + Sync>;

/// A procedure running in its own task.
struct Running {
    /// The engine's incident id: its end is reported to the engine.
    engine_incident: u64,
    handle: JoinHandle<Ended>,
}

/// What a procedure run is for; the rest of its context is the actor's.
struct Order {
    /// The stored incident.
    incident: i64,
    tier: Tier,
    component: Option<String>,
    migrations: Vec<String>,
    reason: String,
    from_version: Option<String>,
    to_version: Option<String>,
}

pub struct Actor {
    store: Store,
    target: Arc<Compiled>,
    name: String,
    /// Engine incident id → stored incident id.
    incidents: HashMap<u64, i64>,
    running: Option<Running>,
    recorded_deployment: Option<DateTime<Utc>>,
    last_sample_at: Option<DateTime<Utc>>,
    say: Say,
    /// Stop once this stored incident is resolved or escalated (`rollback`).
    until_done: Option<i64>,
    done: Option<IncidentEnd>,
    /// Unfinished incidents were taken up (the store answered at start).
    resumed: bool,
    /// After a failed write, the bookkeeping writes (deployments, samples)
    /// pause until then, so a store outage cannot slow polling down: each
    /// write would wait for a connection.
    bookkeeping_paused_until: Option<std::time::Instant>,
    /// Per stored incident, the last answer handed to the engine.
    applied_answers: HashMap<i64, i64>,
    /// The stored incident and the `clear_since` last written for it.
    recorded_clear_since: Option<(i64, Option<DateTime<Utc>>)>,
    telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// With several replicas: whether this one owns the target (its
    /// procedures start no step once it does not).
    owner: Option<tokio::sync::watch::Receiver<bool>>,
    /// Wakes the delivery worker when a message is stored.
    delivery: Arc<tokio::sync::Notify>,
    /// A scheduled drill running in its own task.
    drill: Option<JoinHandle<()>>,
    /// The incidents (or, without one, rules) whose "database unreachable"
    /// escalation went out without the outbox: once each.
    told_without_database: HashSet<String>,
    /// When to look at the drill schedule again.
    next_drill_check: Option<std::time::Instant>,
    /// The process's tasks (its shutdown waits for them all); none: plain
    /// tokio tasks.
    tasks: Option<tokio_util::task::TaskTracker>,
}

/// How often `run` looks at the drill schedule.
const DRILL_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// How long bookkeeping writes pause after one failed.
const BOOKKEEPING_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);

/// How an incident the caller waits for ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncidentEnd {
    Resolved(IncidentOutcome),
    Escalated,
}

/// What the loop must tell the engine after a decision was handled.
#[derive(Debug)]
pub enum Followup {
    None,
    /// The rollback could not be started safely: report it failed.
    RollbackRefused {
        engine_incident: u64,
        reason: String,
    },
}

impl Actor {
    pub fn new(store: Store, target: Arc<Compiled>, say: Say) -> Actor {
        let name = format!("{}/{}", target.policy.service, target.policy.environment);
        Actor {
            store,
            target,
            name,
            incidents: HashMap::new(),
            running: None,
            recorded_deployment: None,
            last_sample_at: None,
            say,
            until_done: None,
            done: None,
            resumed: false,
            bookkeeping_paused_until: None,
            drill: None,
            told_without_database: HashSet::new(),
            next_drill_check: None,
            delivery: Arc::new(tokio::sync::Notify::new()),
            telemetry: None,
            owner: None,
            applied_answers: HashMap::new(),
            recorded_clear_since: None,
            tasks: None,
        }
    }

    /// Counts steps in the sidecar's metrics.
    pub fn with_telemetry(mut self, telemetry: Arc<crate::telemetry::Telemetry>) -> Actor {
        self.telemetry = Some(telemetry);
        self
    }

    /// Several replicas: `owner` says whether this one owns the target.
    pub fn with_owner(mut self, owner: Option<tokio::sync::watch::Receiver<bool>>) -> Actor {
        self.owner = owner;
        self
    }

    /// Procedures and drills are spawned on `tasks`.
    pub fn with_tasks(mut self, tasks: tokio_util::task::TaskTracker) -> Actor {
        self.tasks = Some(tasks);
        self
    }

    /// Spawns `task` on the process's tracker, if any.
    fn spawn<T: Send + 'static>(
        &self,
        task: impl std::future::Future<Output = T> + Send + 'static,
    ) -> JoinHandle<T> {
        match &self.tasks {
            Some(tasks) => tasks.spawn(task),
            None => tokio::spawn(task),
        }
    }

    /// Wakes `delivery` whenever a message is put in the outbox.
    pub fn with_delivery(mut self, delivery: Arc<tokio::sync::Notify>) -> Actor {
        self.delivery = delivery;
        self
    }

    /// The loop ends once this stored incident is resolved or escalated.
    pub fn stop_when_done(&mut self, incident: i64) {
        self.until_done = Some(incident);
    }

    /// Before taking a target over again: a procedure this replica started
    /// before it lost ownership runs to its end first (two procedures never
    /// run the same steps at once from one replica).
    pub async fn await_own_procedure(&mut self) {
        if let Some(running) = self.running.take() {
            self.say(&format!(
                "{} {} waiting for the procedure this replica started before it lost ownership",
                time_text(Utc::now()),
                self.name
            ));
            let _ = running.handle.await;
        }
    }

    /// Forgets what this replica knew while another one owned the target:
    /// the store is the truth; `try_resume` takes it up.
    pub fn reset_for_takeover(&mut self) {
        self.incidents.clear();
        self.applied_answers.clear();
        self.recorded_clear_since = None;
        self.resumed = false;
        self.bookkeeping_paused_until = None;
        self.recorded_deployment = None;
        self.last_sample_at = None;
        self.told_without_database.clear();
    }

    /// A decision this replica made while passive. One that needs a human
    /// (a page, or a rollback only an owner may run) is the owner's to tell,
    /// through the outbox, while the database answers. When it does not, no
    /// replica may own the target, and none can store a page: this one tells
    /// on-call itself, once per incident, rather than nobody telling anyone.
    pub async fn passive_decision(&mut self, decision: &Decision) {
        if !(decision.action.pages() || decision.action.may_roll_back())
            || self.told_without_database.contains(&told_key(decision))
        {
            return;
        }
        // Any read: it fails after the store's connect timeout when the
        // database does not answer.
        if self.store.deployments(&self.name, 1).await.is_ok() {
            return;
        }
        self.tell_without_database(
            decision,
            "this replica cannot reach its database, so it owns the target no longer and acts on nothing",
        )
        .await;
    }

    /// Sends the "database unreachable" escalation of `decision` on the
    /// policy's escalation channels without the outbox (best effort, one
    /// attempt: `deliver::send_without_outbox`), once per incident.
    async fn tell_without_database(&mut self, decision: &Decision, why: &str) {
        let key = told_key(decision);
        if !self.told_without_database.insert(key.clone()) {
            return;
        }
        let message = message::database_unreachable(&self.target.policy, decision, why);
        self.say(&format!(
            "{} {} {}; telling on-call without the outbox",
            time_text(decision.at),
            self.name,
            message.subject
        ));
        let notifications = message.addressed(
            self.target.notify.as_ref(),
            &format!("{}:database-unreachable:{key}", self.name),
        );
        deliver::send_without_outbox(self.target.notify.as_ref(), &notifications).await;
    }

    /// An edited policy: later procedures, messages and drills use it (a
    /// procedure already running keeps the one it started with).
    pub fn set_target(&mut self, target: Arc<Compiled>) {
        self.target = target;
    }

    /// The stored id of the engine's open incident, if it has one.
    pub fn stored_incident_of(&self, engine: &Engine) -> Option<i64> {
        engine
            .incident()
            .and_then(|i| self.incidents.get(&i.id))
            .copied()
    }

    /// The awaited incident's end, once it has ended.
    pub fn done(&self) -> Option<IncidentEnd> {
        self.done
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `resume`, until it has worked once: with the store unreachable the
    /// target is watched but nothing is rolled back (an unfinished incident
    /// might be waiting), and the next poll tries again.
    pub async fn try_resume(&mut self, engine: &mut Engine, now: DateTime<Utc>) {
        // Each try may wait for a connection: not at every poll.
        if self.resumed
            || self
                .bookkeeping_paused_until
                .is_some_and(|until| std::time::Instant::now() < until)
        {
            return;
        }
        match self.resume(engine, now).await {
            Ok(()) => self.resumed = true,
            Err(error) => {
                self.pause_bookkeeping();
                let message = format!(
                    "cannot take up unfinished incidents from {}: {error}; watching, but NOT ACTING until the database answers",
                    self.store.database()
                );
                tracing::error!(target_name = %self.name, "{message}");
                self.say(&format!(
                    "{} {} DATABASE UNREACHABLE: {message}",
                    time_text(now),
                    self.name
                ));
            }
        }
    }

    /// Restores the latest recorded deployment and takes up unfinished
    /// incidents with their timers at their stored instants
    /// (`Engine::resume_incident` decides what they become): an open one keeps
    /// waiting for its answer, its page-then-rollback deadline and the
    /// escalation of its unanswered page (from the stored page's instant); a
    /// rollback that was running goes on where its stored steps say (never
    /// repeating one that may have run); a watch ends at its stored end
    /// (extended when too little of it is left to judge any rule: nothing was
    /// watched while rollwatch was down); an escalated one stays with the
    /// humans, and closes once its rules have been seen clear for
    /// `resolve_after`, counting the clear time observed before the stop.
    pub async fn resume(
        &mut self,
        engine: &mut Engine,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if let Some(latest) = self
            .store
            .deployments(&self.name, 1)
            .await?
            .into_iter()
            .next()
        {
            self.recorded_deployment = Some(latest.at);
            engine.restore_deployment(Deployment {
                at: latest.at,
                version: latest.version,
                previous: latest.previous,
                migrations: latest.migrations,
                rollback: latest.rollback,
                seen: latest.source != DeploymentSource::Announced,
            });
        }
        for unfinished in self.store.unfinished_incidents(&self.name).await? {
            let interrupted = unfinished.interrupted_steps().count();
            let record = unfinished.incident.clone();
            let IncidentState::Active { phase } = record.state else {
                continue;
            };
            if record.kind == IncidentKind::Drill {
                // A drill interrupted is a drill failed: never re-run on its own.
                for step in unfinished
                    .steps
                    .iter()
                    .filter(|s| s.may_have_run_unrecorded())
                {
                    self.store
                        .mark_step_unknown(step.id, now, "rollwatch stopped during the drill")
                        .await?;
                }
                self.store
                    .resolve_incident(record.id, IncidentOutcome::DrillFailed, now)
                    .await?;
                self.say(&format!(
                    "drill {} was interrupted by a restart: recorded as failed",
                    record.id
                ));
                continue;
            }
            let decisions = self.store.decisions(record.id).await?;
            let stored = |d: &crate::store::DecisionRecord| {
                let action = Action::ALL
                    .iter()
                    .find(|(n, _)| *n == d.action)
                    .map(|(_, a)| *a);
                (action, Cause::named(&d.cause))
            };
            let announced = decisions
                .iter()
                .filter_map(|d| stored(d).0)
                .max()
                .unwrap_or(Action::None);
            let paged_at = decisions
                .iter()
                .find(|d| match stored(d) {
                    (Some(action), Some(cause)) => awaits_answer(action, cause),
                    _ => false,
                })
                .map(|d| d.at);
            let unanswered_escalated = decisions
                .iter()
                .any(|d| d.cause == Cause::Unanswered.name());
            // An approve sets no flag in the store, but it is an answer.
            let approved = self
                .store
                .answers(record.id)
                .await?
                .iter()
                .any(|a| a.kind == AnswerKind::Approve);
            // The clear time seen before the stop ends at the last sample:
            // what followed it was not observed.
            let clear_for = match (
                record.clear_since,
                self.store.last_sample_at(record.id).await?,
            ) {
                (Some(since), Some(last)) if last > since => last - since,
                _ => chrono::TimeDelta::zero(),
            };
            let stored_watch_end = record
                .watch_until
                .unwrap_or(record.phase_at + engine.policy().stabilization);
            let engine_phase = match phase {
                IncidentPhase::Open => Phase::Open,
                IncidentPhase::RollingBack
                | IncidentPhase::Verifying
                | IncidentPhase::Recovering => Phase::RollingBack,
                IncidentPhase::Watching => Phase::Watching {
                    until: stored_watch_end,
                    saw_data: false,
                },
                IncidentPhase::Escalated => Phase::Escalated,
            };
            let tier = tier_named(&record.tier);
            let id = engine
                .resume_incident(
                    now,
                    Resumed {
                        opened_at: record.opened_at,
                        tier,
                        rule: record.rule.clone(),
                        component: record.component.clone(),
                        phase: engine_phase,
                        phase_at: record.phase_at,
                        announced,
                        acknowledged: record.acknowledged || approved,
                        held: record.held,
                        deadline: record.deadline,
                        declared: record.kind == IncidentKind::Declared,
                        from_version: record.from_version.clone(),
                        to_version: record.to_version.clone(),
                        paged_at,
                        unanswered_escalated,
                        clear_for,
                    },
                )
                .map_err(|e| StoreError::Invalid {
                    what: "resumed incident",
                    reason: e.to_string(),
                })?;
            self.incidents.insert(id, record.id);
            self.recorded_clear_since = Some((record.id, record.clear_since));
            self.say(&format!(
                "{} {} taking up incident {} ({}, {} {}){}",
                time_text(now),
                self.name,
                record.id,
                phase.as_str(),
                record.tier,
                record.rule,
                if interrupted > 0 {
                    format!(
                        "; {interrupted} step(s) were running when rollwatch stopped: waiting for the end their runners record (a step whose runner is gone is unknown and not run again unless idempotent)"
                    )
                } else {
                    String::new()
                }
            ));
            match phase {
                IncidentPhase::RollingBack
                | IncidentPhase::Verifying
                | IncidentPhase::Recovering => {
                    let migrations = self.migrations_of(record.from_version.as_deref()).await;
                    let reason = if record.reason.is_empty() {
                        decisions
                            .iter()
                            .rev()
                            .find(|d| d.action == Action::Rollback.name())
                            .map_or_else(String::new, |d| d.explanation.clone())
                    } else {
                        record.reason.clone()
                    };
                    self.start_procedure(
                        id,
                        Order {
                            incident: record.id,
                            tier,
                            component: record.component.clone(),
                            migrations,
                            reason,
                            from_version: record.from_version.clone(),
                            to_version: record.to_version.clone(),
                        },
                    );
                }
                IncidentPhase::Watching => {
                    let Some(Phase::Watching { until, .. }) = engine.incident().map(|i| i.phase)
                    else {
                        continue;
                    };
                    let why = if until == stored_watch_end {
                        "its stored end".to_string()
                    } else {
                        // The watch's start (the rollback's end) stays as stored.
                        self.store
                            .set_incident_phase(
                                record.id,
                                IncidentPhase::Watching,
                                record.phase_at,
                                Some(until),
                            )
                            .await?;
                        format!(
                            "extended from its stored end {}: too little was left to judge any rule (the longest rule's `for` plus one interval)",
                            time_text(stored_watch_end)
                        )
                    };
                    self.say(&format!(
                        "{} {} incident {}: nothing was watched while rollwatch was down; watching again until {}, {why}",
                        time_text(now),
                        self.name,
                        record.id,
                        time_text(until)
                    ));
                }
                IncidentPhase::Open => {
                    let escalate_after = engine.policy().actions.escalate_after;
                    let mut timers = Vec::new();
                    if let Some(paged) = paged_at.filter(|_| {
                        !unanswered_escalated && !record.acknowledged && !approved && !record.held
                    }) {
                        timers.push(format!(
                            "the page of {} escalates at {} unless answered",
                            time_text(paged),
                            time_text(paged + escalate_after)
                        ));
                    }
                    let resumed = engine.incident();
                    if let Some(deadline) = resumed.and_then(|i| i.deadline) {
                        let postponed = resumed.and_then(|i| i.deadline_postponed_from);
                        if let Some(stored) = postponed {
                            self.store
                                .set_incident_deadline(record.id, Some(deadline))
                                .await?;
                            timers.push(format!(
                                "the automatic rollback due at {} is postponed to {}: the breach must be confirmed on current data first",
                                time_text(stored),
                                time_text(deadline)
                            ));
                        } else {
                            timers.push(format!(
                                "the automatic rollback is due at {} unless answered",
                                time_text(deadline)
                            ));
                        }
                    }
                    if !timers.is_empty() {
                        self.say(&format!(
                            "{} {} incident {}: {}",
                            time_text(now),
                            self.name,
                            record.id,
                            timers.join("; ")
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn migrations_of(&self, version: Option<&str>) -> Vec<String> {
        match self.store.deployments(&self.name, 20).await {
            Ok(deployments) => deployments
                .into_iter()
                .find(|d| !d.rollback && d.version.as_deref() == version)
                .map(|d| d.migrations)
                .unwrap_or_default(),
            Err(error) => {
                tracing::error!(target_name = %self.name, %error, "cannot read the deployments: assuming no migrations");
                Vec::new()
            }
        }
    }

    fn say(&self, line: &str) {
        (self.say)(line);
    }

    /// The running procedure's end, when there is one (pending forever
    /// otherwise, for `select!`).
    pub async fn procedure_ended(&mut self) -> (u64, Ended) {
        let Some(running) = &mut self.running else {
            return std::future::pending().await;
        };
        let ended = match (&mut running.handle).await {
            Ok(ended) => ended,
            Err(join) => Ended {
                result: Err(format!("the procedure's task failed: {join}")),
                unknown: Vec::new(),
                notes: Vec::new(),
            },
        };
        let engine_incident = running.engine_incident;
        self.running = None;
        (engine_incident, ended)
    }

    pub fn procedure_running(&self) -> bool {
        self.running.is_some()
    }

    fn start_procedure(&mut self, engine_incident: u64, order: Order) {
        let ctx = Context {
            store: self.store.clone(),
            incident: order.incident,
            target: Arc::clone(&self.target),
            tier: order.tier,
            component: order.component,
            migrations: order.migrations,
            reason: order.reason,
            from_version: order.from_version,
            to_version: order.to_version,
            say: Arc::clone(&self.say),
            telemetry: self.telemetry.clone(),
            owner: self.owner.clone(),
        };
        let handle = self.spawn(async move { procedure::execute(&ctx).await });
        self.running = Some(Running {
            engine_incident,
            handle,
        });
    }

    /// After each input: record a new deployment and the latest sample of an
    /// open incident. Store trouble here is logged, never fatal.
    pub async fn observed(&mut self, engine: &Engine) {
        if self
            .bookkeeping_paused_until
            .is_some_and(|until| std::time::Instant::now() < until)
        {
            return;
        }
        if let Some(deployment) = engine.deployment()
            && self.recorded_deployment != Some(deployment.at)
        {
            let source = if deployment.rollback {
                DeploymentSource::Rollback
            } else if deployment.seen {
                DeploymentSource::Observed
            } else {
                DeploymentSource::Announced
            };
            let new = NewDeployment {
                target: self.name.clone(),
                version: deployment.version.clone(),
                previous: deployment.previous.clone(),
                migrations: deployment.migrations.clone(),
                at: deployment.at,
                rollback: deployment.rollback,
                source,
            };
            match self.store.record_deployment(&new).await {
                Ok(_) => self.recorded_deployment = Some(deployment.at),
                Err(error) => {
                    tracing::error!(target_name = %self.name, %error, "cannot record the deployment");
                    self.pause_bookkeeping();
                    return;
                }
            }
        }
        let Some(incident) = engine
            .incident()
            .and_then(|i| self.incidents.get(&i.id))
            .copied()
        else {
            return;
        };
        // The clear clock before the samples: a restart counts the clear time
        // up to the latest stored sample, so a sample must never be stored
        // after a breach whose reset of the clock is not.
        let clear_since = engine.incident().and_then(|i| i.clear_since());
        if self.recorded_clear_since != Some((incident, clear_since)) {
            match self
                .store
                .set_incident_clear_since(incident, clear_since)
                .await
            {
                Ok(()) => self.recorded_clear_since = Some((incident, clear_since)),
                Err(error) => {
                    tracing::warn!(target_name = %self.name, %error, "cannot record how long the rules have been clear");
                    return;
                }
            }
        }
        let fresh: Vec<SamplePoint> = engine
            .samples()
            .filter(|s| self.last_sample_at.is_none_or(|t| s.at() > t))
            .map(point)
            .collect();
        if let Some(last) = fresh.last() {
            let at = last.at;
            match self.store.record_samples(incident, &fresh).await {
                Ok(()) => self.last_sample_at = Some(at),
                Err(error) => {
                    tracing::warn!(target_name = %self.name, %error, "cannot record samples")
                }
            }
        }
    }

    /// Answers recorded since the last look (`rollwatch incidents ack|hold|approve`,
    /// possibly from another machine), as engine events, oldest first.
    pub async fn new_answers(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let stored: Vec<i64> = self.incidents.values().copied().collect();
        for incident in stored {
            let answers = match self.store.answers(incident).await {
                Ok(answers) => answers,
                Err(error) => {
                    tracing::warn!(target_name = %self.name, %error, "cannot read the answers");
                    continue;
                }
            };
            let last = self.applied_answers.get(&incident).copied().unwrap_or(0);
            for answer in answers.iter().filter(|a| a.id > last) {
                let by = Some(answer.by.clone());
                self.say(&format!(
                    "{} {} incident {incident}: {} by {}",
                    time_text(Utc::now()),
                    self.name,
                    answer.kind.as_str(),
                    answer.by
                ));
                events.push(match answer.kind {
                    AnswerKind::Ack => Event::Ack { by },
                    AnswerKind::Hold => Event::Hold { by },
                    AnswerKind::Approve => Event::Approve { by },
                });
            }
            if let Some(newest) = answers.iter().map(|a| a.id).max() {
                self.applied_answers.insert(incident, newest.max(last));
            }
        }
        events
    }

    /// Carries out a drill when the policy schedules them and the last one is
    /// older than `drill_every`; an overdue drill that cannot run now (an
    /// incident is open) is reported and tried again later.
    pub async fn drill_if_due(&mut self, engine: &Engine, now: DateTime<Utc>) {
        let Some(every) = self.target.procedure.as_ref().and_then(|p| p.drill_every) else {
            return;
        };
        if !self.resumed
            || self.drill.as_ref().is_some_and(|d| !d.is_finished())
            || self
                .next_drill_check
                .is_some_and(|t| std::time::Instant::now() < t)
        {
            return;
        }
        self.drill = None;
        self.next_drill_check = Some(std::time::Instant::now() + DRILL_CHECK);
        let last = match self.store.last_drill(&self.name).await {
            Ok(last) => last,
            Err(error) => {
                tracing::warn!(target_name = %self.name, %error, "cannot read the last drill");
                return;
            }
        };
        let every_delta = chrono::TimeDelta::from_std(every).unwrap_or(chrono::TimeDelta::MAX);
        if last
            .as_ref()
            .is_some_and(|l| now - l.opened_at < every_delta)
        {
            return;
        }
        let last_text = last.as_ref().map_or_else(
            || "never drilled".to_string(),
            |l| format!("last drill {} at {}", l.id, time_text(l.opened_at)),
        );
        let every_text = crate::units::format_duration(every_delta);
        if engine.incident().is_some() || self.running.is_some() {
            self.say(&format!(
                "{} {} DRILL OVERDUE ({last_text}, due every {every_text}): waiting for the open incident to end",
                time_text(now),
                self.name
            ));
            return;
        }
        self.say(&format!(
            "{} {} drill due ({last_text}, every {every_text}): starting it",
            time_text(now),
            self.name
        ));
        let (store, target, say) = (
            self.store.clone(),
            Arc::clone(&self.target),
            Arc::clone(&self.say),
        );
        self.drill = Some(self.spawn(async move {
            if let Err(error) = super::drill::run(&store, &target, say, "the drill schedule").await
            {
                tracing::error!(%error, "the scheduled drill could not be recorded");
            }
        }));
    }

    fn pause_bookkeeping(&mut self) {
        tracing::warn!(
            target_name = %self.name,
            "pausing deployment and sample records for {}s after a failed write",
            BOOKKEEPING_PAUSE.as_secs()
        );
        self.bookkeeping_paused_until = Some(std::time::Instant::now() + BOOKKEEPING_PAUSE);
    }

    /// Stores one decision and does what it asks.
    pub async fn handle(&mut self, decision: &Decision, engine: &Engine) -> Followup {
        let refuse = |reason: String| match decision.incident {
            Some(engine_incident) if decision.action == Action::Rollback => {
                Followup::RollbackRefused {
                    engine_incident,
                    reason,
                }
            }
            _ => Followup::None,
        };
        if !self.resumed && decision.action == Action::Rollback {
            let reason = format!(
                "the unfinished incidents in {} could not be read yet; NOT ROLLING BACK automatically: a rollback runs only after its record is stored. A human must decide",
                self.store.database()
            );
            tracing::error!(target_name = %self.name, rule = %decision.rule, "{reason}");
            self.say(&format!(
                "{} {} DATABASE UNREACHABLE: {reason}",
                time_text(Utc::now()),
                self.name
            ));
            return refuse(reason);
        }
        let incident = match decision.incident {
            Some(engine_incident) => match self
                .stored_incident(engine_incident, decision, engine)
                .await
            {
                Ok(id) => Some(id),
                Err(error) => {
                    let reason = self.store_down("open the incident", &error, decision);
                    self.page_without_database(decision, &reason).await;
                    return refuse(reason);
                }
            },
            None => None,
        };
        if let Err(error) = self
            .store
            .record_decision(&self.name, incident, decision, &self.target.policy)
            .await
        {
            let reason = self.store_down("record the decision", &error, decision);
            self.page_without_database(decision, &reason).await;
            return refuse(reason);
        }
        let Some(id) = incident else {
            if decision.action.pages() {
                self.tell(
                    None,
                    decision,
                    &format!("{}:page:{}", self.name, decision.at.timestamp_micros()),
                )
                .await;
            }
            return Followup::None;
        };
        match (decision.action, decision.cause) {
            (Action::Rollback, _) => {
                if let Err(error) = self
                    .store
                    .set_incident_phase(id, IncidentPhase::RollingBack, decision.at, None)
                    .await
                {
                    return refuse(self.store_down(
                        "record the rollback's start",
                        &error,
                        decision,
                    ));
                }
                // "Notify team" comes before the first step.
                let key = format!(
                    "incident:{id}:rollback-notice:{}",
                    decision.at.timestamp_micros()
                );
                if !self.tell(Some(id), decision, &key).await {
                    return refuse(format!(
                        "not rolling back: the notice to the team cannot be stored in {}",
                        self.store.database()
                    ));
                }
                let engine_incident = decision.incident.unwrap_or_default();
                if let Some(drill) = self.drill.take()
                    && !drill.is_finished()
                {
                    // Both would run the same scripts: the drill (bounded by its
                    // steps' timeouts) finishes first.
                    self.say(&format!(
                        "{} {} a scheduled drill is running: the rollback starts when it ends",
                        time_text(Utc::now()),
                        self.name
                    ));
                    let _ = drill.await;
                }
                if self.running.is_some() {
                    return refuse("not rolling back: another procedure is still running".into());
                }
                self.start_procedure(
                    engine_incident,
                    Order {
                        incident: id,
                        tier: decision.tier,
                        component: decision.component.clone(),
                        migrations: decision.migrations.clone(),
                        reason: decision.explanation.clone(),
                        from_version: decision.from_version.clone(),
                        to_version: decision.to_version.clone(),
                    },
                );
            }
            (_, Cause::RollbackFinished) => {
                let until = match engine.incident().map(|i| i.phase) {
                    Some(Phase::Watching { until, .. }) => Some(until),
                    _ => None,
                };
                self.write(
                    "record the watch",
                    self.store
                        .set_incident_phase(id, IncidentPhase::Watching, decision.at, until)
                        .await,
                );
                self.tell(Some(id), decision, &format!("incident:{id}:rolled-back"))
                    .await;
            }
            (_, Cause::Stable) => self.ended(id, decision, IncidentOutcome::Stable).await,
            (_, Cause::Recovered) => self.ended(id, decision, IncidentOutcome::Recovered).await,
            (_, Cause::RollbackFailed | Cause::WatchFailed) => {
                self.write(
                    "record the escalation",
                    self.store
                        .set_incident_phase(id, IncidentPhase::Escalated, decision.at, None)
                        .await,
                );
                self.tell(Some(id), decision, &format!("incident:{id}:escalation"))
                    .await;
                if self.until_done == Some(id) {
                    self.done = Some(IncidentEnd::Escalated);
                }
            }
            (_, Cause::Unanswered) => {
                // The engine's escalation deadline passed: carry it out.
                if let Some(message) = message::for_decision(
                    &self.target.policy,
                    decision,
                    Some(id),
                    self.store.database(),
                ) {
                    self.say(&format!(
                        "{} {} {}",
                        time_text(decision.at),
                        self.name,
                        message.subject
                    ));
                }
                self.tell(Some(id), decision, &format!("incident:{id}:unanswered"))
                    .await;
            }
            (Action::Page | Action::PageThenRollback, _) => {
                if let Some(deadline) = decision.deadline {
                    self.write(
                        "record the deadline",
                        self.store.set_incident_deadline(id, Some(deadline)).await,
                    );
                }
                // Keyed by the action: a repeat of the page is dropped, an
                // upgrade to page-then-rollback (with its deadline) is news.
                self.tell(
                    Some(id),
                    decision,
                    &format!("incident:{id}:{}", decision.action.name()),
                )
                .await;
            }
            (_, Cause::Acknowledged | Cause::Held) => {
                // The answer cancelled the automatic rollback: so says the store.
                self.write(
                    "clear the deadline",
                    self.store.set_incident_deadline(id, None).await,
                );
            }
            (Action::Notify, _) => {
                self.tell(
                    Some(id),
                    decision,
                    &format!("incident:{id}:notice:{}", decision.at.timestamp_micros()),
                )
                .await;
            }
            (Action::None, _) => {}
        }
        Followup::None
    }

    /// A page (the engine's escalation of a refused or failed rollback
    /// included) that cannot be stored still reaches on-call. A refused
    /// rollback is not sent here: the engine hears it failed and escalates.
    async fn page_without_database(&mut self, decision: &Decision, reason: &str) {
        if decision.action.pages() {
            self.tell_without_database(decision, reason).await;
        }
    }

    async fn ended(&mut self, id: i64, decision: &Decision, outcome: IncidentOutcome) {
        self.tell(Some(id), decision, &format!("incident:{id}:resolved"))
            .await;
        self.write(
            "resolve the incident",
            self.store.resolve_incident(id, outcome, decision.at).await,
        );
        self.incidents.retain(|_, stored| *stored != id);
        self.last_sample_at = None;
        if self.until_done == Some(id) {
            self.done = Some(IncidentEnd::Resolved(outcome));
        }
    }

    fn write(&self, what: &str, result: Result<(), StoreError>) {
        if let Err(error) = result {
            tracing::error!(target_name = %self.name, %error, "cannot {what}");
            self.say(&format!(
                "{} {} ERROR cannot {what}: {error}",
                time_text(Utc::now()),
                self.name
            ));
        }
    }

    /// Says loudly that the store is down and rollwatch therefore does not
    /// act; returns the reason for the engine.
    fn store_down(&self, what: &str, error: &StoreError, decision: &Decision) -> String {
        let acting = if decision.action == Action::Rollback {
            "NOT ROLLING BACK automatically: a rollback runs only after its record is stored. A human must decide"
        } else {
            "the decision is not recorded"
        };
        let reason = format!(
            "cannot {what} in {}: {error}; {acting}",
            self.store.database()
        );
        tracing::error!(target_name = %self.name, rule = %decision.rule, "{reason}");
        let headline = if matches!(error, StoreError::Fenced { .. }) {
            "FENCED (another replica owns the target now)"
        } else {
            "DATABASE UNREACHABLE"
        };
        self.say(&format!(
            "{} {} {headline}: {reason}",
            time_text(Utc::now()),
            self.name
        ));
        reason
    }

    /// The stored incident of an engine incident, opened (with the samples so
    /// far) on its first decision.
    async fn stored_incident(
        &mut self,
        engine_incident: u64,
        decision: &Decision,
        engine: &Engine,
    ) -> Result<i64, StoreError> {
        if let Some(id) = self.incidents.get(&engine_incident) {
            return Ok(*id);
        }
        let open = engine.incident();
        let new = NewIncident {
            target: self.name.clone(),
            kind: if open.is_some_and(|i| i.declared) {
                IncidentKind::Declared
            } else {
                IncidentKind::Rule
            },
            tier: decision.tier.name().to_string(),
            rule: decision.rule.clone(),
            reason: String::new(),
            component: decision.component.clone(),
            from_version: decision
                .from_version
                .clone()
                .or_else(|| engine.deployment().and_then(|d| d.version.clone())),
            to_version: decision
                .to_version
                .clone()
                .or_else(|| engine.deployment().and_then(|d| d.previous.clone())),
            opened_at: open.map_or(decision.at, |i| i.opened_at),
            deadline: decision.deadline,
        };
        let id = match self.store.open_incident(&new).await {
            Ok(id) => id,
            // Left open by an earlier run that could not be taken up: carry on in it.
            Err(StoreError::IncidentAlreadyOpen { existing, .. }) => existing,
            Err(error) => return Err(error),
        };
        self.incidents.insert(engine_incident, id);
        let samples: Vec<SamplePoint> = engine.samples().map(point).collect();
        self.last_sample_at = samples.last().map(|s| s.at);
        if let Err(error) = self.store.record_samples(id, &samples).await {
            tracing::warn!(target_name = %self.name, %error, "cannot record the incident's samples");
        }
        Ok(id)
    }

    /// Puts the decision's message in the outbox, once per channel its kind
    /// is routed to; false when it cannot be stored.
    async fn tell(&self, incident: Option<i64>, decision: &Decision, key: &str) -> bool {
        let policy = &self.target.policy;
        let Some(message) =
            message::for_decision(policy, decision, incident, self.store.database())
        else {
            return true;
        };
        let mut unstored = Vec::new();
        for notification in message.addressed(self.target.notify.as_ref(), key) {
            let stored = if failpoint::fails("enqueue-notification") {
                Err(StoreError::Invalid {
                    what: "notification",
                    reason: "refused by ROLLWATCH_FAILPOINT=fail:enqueue-notification".into(),
                })
            } else {
                self.store
                    .enqueue_notification(&notification)
                    .await
                    .map(drop)
            };
            if let Err(error) = stored {
                tracing::error!(target_name = %self.name, channel = %notification.channel, %error, "cannot store the notification");
                unstored.push(notification);
            }
        }
        if unstored.is_empty() {
            self.delivery.notify_one();
            return true;
        }
        // What asks a human goes out anyway, once, without the outbox.
        if matches!(
            message.kind,
            NotificationKind::Page | NotificationKind::Escalation
        ) {
            deliver::send_without_outbox(self.target.notify.as_ref(), &unstored).await;
        }
        false
    }
}

/// What `told_without_database` remembers of a decision: its engine
/// incident, or its rule when it has none.
fn told_key(decision: &Decision) -> String {
    match decision.incident {
        Some(incident) => format!("incident:{incident}"),
        None => format!("rule:{}", decision.rule),
    }
}

/// A stored tier name; an unknown one (a newer rollwatch wrote it) is `consider`.
pub fn tier_named(name: &str) -> Tier {
    Tier::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(Tier::Consider, |(_, t)| *t)
}

fn point(sample: &Sample) -> SamplePoint {
    SamplePoint {
        at: sample.at(),
        up: sample.up(),
        requests: sample.errors().map(|(r, _)| r),
        errors: sample.errors().map(|(_, e)| e),
        users: sample.users().map(|(u, _)| u),
        users_affected: sample.users().map(|(_, a)| a),
        latency_ms: sample.latency_ms(),
    }
}
