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
use crate::notify::dedupe::DedupeKey;
use crate::notify::{deliver, message};

mod bookkeeping;
mod decide;
mod messages;
mod resume;

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
