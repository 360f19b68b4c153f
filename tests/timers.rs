//! Timers that decide survive a restart: `rollwatch run` is killed (`kill -9`)
//! and started again while a timer runs, and the timer still fires at the
//! instant it was set for, exactly once. The instants asserted are the ones
//! rollwatch recorded in its store (decisions, the incident's stored deadline
//! and watch end), never the test's own wall-clock durations: the machine may
//! be slow, the records may not. Each scenario runs on SQLite and PostgreSQL.
//!
//! - a page nobody answers escalates at `paged_at + escalate_after` though
//!   rollwatch restarted in between (it used to be a timer in the actor's
//!   memory, and never came after a restart);
//! - a page-then-rollback rolls back at its stored deadline after a restart,
//!   and a stabilization watch interrupted by a restart ends at its stored end
//!   (it used to start over for its full time);
//! - the store keeps what a restart needs to go on counting `resolve_after`
//!   (how long the rules have been clear, and the last observation).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use chrono::{DateTime, TimeDelta, Utc};
use common::pg::Schema;
use common::service::TestService;
use rollwatch::store::{
    DecisionRecord, IncidentKind, IncidentOutcome, IncidentPhase, IncidentRecord, IncidentState,
    NewIncident, NotificationKind, SamplePoint, Store, StoreError,
};

/// The rollback step: records its call; the test heals the service when it sees it.
const STEP_SCRIPT: &str = "#!/bin/sh\necho \"$1\" >> \"$(dirname \"$0\")/calls.log\"\n";

/// How long the test waits for something rollwatch is expected to record.
const PATIENCE: Duration = Duration::from_secs(90);

struct World {
    dir: tempfile::TempDir,
    service: TestService,
    policy: PathBuf,
    db: String,
    /// Lines every rollwatch of this test printed, across restarts.
    output: common::process::Lines,
}

impl World {
    /// `policy` gets the service's URL and the step script's path.
    async fn new(db: Option<String>, policy: impl Fn(&str, &Path) -> String) -> World {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("step.sh");
        common::process::write_script(&script, STEP_SCRIPT);
        let service = TestService::start().await;
        let path = dir.path().join("production.toml");
        std::fs::write(&path, policy(&service.url(), &script)).unwrap();
        let db =
            db.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("rollwatch.db").display()));
        World {
            dir,
            service,
            policy: path,
            db,
            output: Arc::default(),
        }
    }

    fn start(&self) -> Running {
        let mut child = Command::new(cargo_bin("rollwatch"))
            .args([
                "run",
                "--listen",
                "127.0.0.1:0",
                "--db",
                &self.db,
                "--policy",
            ])
            .arg(&self.policy)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "rollwatch=info")
            .spawn()
            .unwrap();
        common::process::capture(&mut child, &self.output);
        Running(Some(child))
    }

    fn output(&self) -> String {
        common::process::text(&self.output)
    }

    /// The single incident with its decisions, once `done` holds for them.
    async fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&IncidentRecord, &[DecisionRecord]) -> bool,
    ) -> (IncidentRecord, Vec<DecisionRecord>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let store = Store::open(&self.db).await.unwrap();
            let incident = store.list_incidents(10).await.unwrap().into_iter().next();
            let found = match incident {
                Some(incident) => {
                    let decisions = store.decisions(incident.id).await.unwrap();
                    done(&incident, &decisions).then_some((incident, decisions))
                }
                None => None,
            };
            store.close().await;
            if let Some(found) = found {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "not recorded within {PATIENCE:?}: {what}\noutput:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Returns once rollwatch has seen the healthy service twice, so a
    /// change made next is one it sees happen.
    async fn healthy_seen(&self) {
        self.service.wait_for_scrapes(2).await;
    }

    /// Heals the service (v1, no errors) once the rollback step has run.
    fn rollback_heals(&self) -> tokio::task::JoinHandle<()> {
        let log = self.dir.path().join("calls.log");
        let service = self.service.knobs();
        tokio::spawn(async move {
            while !std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("rollback-app")
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            service.set(|k| {
                k.version = "v1.0.0".into();
                k.error_rate = 0.002;
            });
        })
    }

    /// The instant a restarted rollwatch took incident `id` up, as it said.
    fn taken_up_at(&self, id: i64) -> DateTime<Utc> {
        let needle = format!("taking up incident {id} ");
        self.output
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(&needle))
            .find_map(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("incident {id} was not taken up:\n{}", self.output()))
    }
}

/// A running rollwatch, killed with SIGKILL when dropped.
struct Running(Option<Child>);

impl Running {
    fn kill9(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until the wall clock has passed `at` (an instant rollwatch recorded).
async fn wait_until(at: DateTime<Utc>) {
    while Utc::now() < at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn by_cause<'a>(decisions: &'a [DecisionRecord], cause: &str) -> Vec<&'a DecisionRecord> {
    decisions
        .iter()
        .filter(|d| d.cause.as_str() == cause)
        .collect()
}

/// 1 s polls, errors confirmed after 2 s, `actions` and `extra` as given,
/// the application rollback as the test's script. Each scenario has a
/// service of its own: PostgreSQL's advisory locks (one per target) are
/// database-wide, and the scenarios run side by side.
fn policy_text(service: &str, url: &str, script: &Path, actions: &str, extra: &str) -> String {
    let mut policy = common::policy::Policy::stand_in(url)
        .service(service)
        .environment("production")
        .evaluation("resolve_after", "\"10m\"")
        .baseline_fixed("300ms")
        .rule_for("2s")
        .step(
            "rollback-app",
            "application",
            &[script.to_str().unwrap(), "rollback-app"],
            "timeout = \"20s\"",
        )
        .extra(extra);
    for line in actions.lines() {
        let (key, value) = line
            .split_once('=')
            .expect("actions are `key = value` lines");
        policy = policy.action(key.trim(), value.trim());
    }
    policy.text()
}

/// `escalate_after` in the policy below.
const ESCALATE_AFTER: TimeDelta = TimeDelta::seconds(10);

/// The user's report: `escalate_after` (here 10 s), `run` killed -9 and
/// restarted 3 s after the page; the escalation must still come, once, at
/// the page's instant plus `escalate_after`.
async fn an_unanswered_page_escalates_on_time_across_a_restart(db: Option<String>) {
    let world = World::new(db, |url, script| {
        policy_text(
            "timers-escalation",
            url,
            script,
            "consider = \"page\"",
            // The channels are never reached: the outbox rows are what counts.
            r#"
[notify]
page = ["oncall"]
escalation = ["leads"]
escalate_after = "10s"
[[notify.channel]]
name = "oncall"
kind = "webhook"
url = "http://127.0.0.1:9/oncall"
[[notify.channel]]
name = "leads"
kind = "webhook"
url = "http://127.0.0.1:9/leads"
"#,
        )
    })
    .await;
    let mut first = world.start();
    world.healthy_seen().await;
    world.service.set(|k| k.error_rate = 0.3);
    let (incident, decisions) = world
        .wait_for("the page", |_, d| {
            d.iter()
                .any(|d| d.action.as_str() == "page" && d.cause.as_str() == "rule-fired")
        })
        .await;
    let paged_at = by_cause(&decisions, "rule-fired")[0].at;
    wait_until(paged_at + TimeDelta::seconds(3)).await;
    first.kill9();
    let due = paged_at + ESCALATE_AFTER;
    let _second = world.start();

    let (_, decisions) = world
        .wait_for("the escalation of the unanswered page", |_, d| {
            !by_cause(d, "unanswered").is_empty()
        })
        .await;
    let taken_up = world.taken_up_at(incident.id);
    assert!(
        taken_up < due,
        "the machine was too slow: the restarted rollwatch took the incident up at {taken_up}, after the escalation was due at {due}; nothing is proven\n{}",
        world.output()
    );
    let escalation = by_cause(&decisions, "unanswered")[0].clone();
    println!(
        "paged at {paged_at}, restarted (incident taken up) at {taken_up}, escalated at {}: {} after the page",
        escalation.at,
        escalation.at - paged_at
    );
    assert_eq!(
        escalation.at,
        due,
        "the escalation's recorded instant is the page's plus escalate_after\n{}",
        world.output()
    );
    assert_eq!(escalation.action.as_str(), "page");
    // The store keeps microseconds, the explanation the engine's own instant.
    assert!(
        escalation.explanation.contains(&format!(
            "nobody acknowledged, held or approved the page of {}",
            paged_at.format("%Y-%m-%dT%H:%M:%S")
        )) && escalation.explanation.contains("within 10s"),
        "{}",
        escalation.explanation
    );

    // Once: rollwatch goes on observing well past the escalation (its own
    // samples say so), and nothing more is escalated or sent.
    let later = escalation.at + TimeDelta::seconds(3);
    let store = Store::open(&world.db).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while store
        .samples(incident.id)
        .await
        .unwrap()
        .last()
        .is_none_or(|s| s.at < later)
    {
        assert!(Instant::now() < deadline, "no samples after {later}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let decisions = store.decisions(incident.id).await.unwrap();
    assert_eq!(
        by_cause(&decisions, "unanswered").len(),
        1,
        "one escalation: {decisions:#?}"
    );
    let notifications = store.notifications(incident.id).await.unwrap();
    let escalations: Vec<_> = notifications
        .iter()
        .filter(|n| n.kind == NotificationKind::Escalation)
        .collect();
    assert_eq!(escalations.len(), 1, "{notifications:#?}");
    let escalation_message = escalations[0];
    assert_eq!(escalation_message.channel, "leads");
    assert_eq!(
        escalation_message.dedupe_key,
        format!("incident:{}:unanswered:leads", incident.id)
    );
    assert_eq!(escalation_message.created_at, due);
    assert!(
        escalation_message
            .subject
            .contains("ESCALATION production timers-escalation: page unanswered for 10s"),
        "{}",
        escalation_message.subject
    );
    assert_eq!(
        notifications
            .iter()
            .filter(|n| n.kind == NotificationKind::Page)
            .count(),
        1,
        "paged once, to on-call: {notifications:#?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_unanswered_page_escalates_on_time_across_a_restart() {
    an_unanswered_page_escalates_on_time_across_a_restart(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_unanswered_page_escalates_on_time_across_a_restart() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    an_unanswered_page_escalates_on_time_across_a_restart(Some(schema.url.clone())).await;
}

/// A page-then-rollback (deadline 12 s after the page) and a 15 s
/// stabilization watch, each interrupted by kill -9 and a restart: the
/// rollback comes at the stored deadline, the watch ends at its stored end.
async fn the_deadline_and_the_watch_end_at_their_stored_instants_across_restarts(
    db: Option<String>,
) {
    let world = World::new(db, |url, script| {
        policy_text(
            "timers-watch",
            url,
            script,
            "consider = \"page-then-rollback\"\npage_timeout = \"12s\"",
            "\n[stabilization]\nduration = \"15s\"\n",
        )
    })
    .await;
    let _heal = world.rollback_heals();
    let mut first = world.start();
    world.healthy_seen().await;
    world.service.set(|k| {
        k.version = "v2.0.0".into();
        k.error_rate = 0.3;
    });
    let (incident, decisions) = world
        .wait_for("the page", |_, d| {
            d.iter().any(|d| d.action.as_str() == "page-then-rollback")
        })
        .await;
    let page = by_cause(&decisions, "rule-fired")[0].clone();
    let deadline = incident.deadline.expect("the deadline is stored");
    assert_eq!(page.deadline, Some(deadline));
    wait_until(page.at + TimeDelta::seconds(2)).await;
    first.kill9();
    let mut second = world.start();

    let (watching, decisions) = world
        .wait_for("the rollback and the watch", |i, _| {
            i.state
                == IncidentState::Active {
                    phase: IncidentPhase::Watching,
                }
        })
        .await;
    let rollbacks: Vec<_> = decisions
        .iter()
        .filter(|d| d.action.as_str() == "rollback")
        .collect();
    assert_eq!(rollbacks.len(), 1, "{decisions:#?}");
    assert_eq!(
        (rollbacks[0].at, rollbacks[0].cause.as_str()),
        (deadline, "deadline-passed"),
        "the rollback comes at the stored deadline\n{}",
        world.output()
    );
    assert!(world.taken_up_at(incident.id) < deadline);

    let watch_end = watching.watch_until.expect("the watch's end is stored");
    let watch_start = watching.phase_at;
    assert_eq!(watch_end, watch_start + TimeDelta::seconds(15));
    wait_until(watch_start + TimeDelta::seconds(3)).await;
    second.kill9();
    let restarted_once = world.output.lock().unwrap().len();
    let _third = world.start();

    let (resolved, decisions) = world
        .wait_for("the end of the watch", |i, _| i.state.is_resolved())
        .await;
    let stable = by_cause(&decisions, "stable");
    assert_eq!(stable.len(), 1, "{decisions:#?}\n{}", world.output());
    let taken_up = world.output.lock().unwrap()[restarted_once..]
        .iter()
        .find(|l| l.contains("taking up incident"))
        .and_then(|l| l.split_whitespace().next()?.parse::<DateTime<Utc>>().ok())
        .expect("the third rollwatch took the incident up");
    assert!(
        taken_up + TimeDelta::seconds(3) <= watch_end,
        "the machine was too slow: the watch was taken up at {taken_up}, too late to end at its stored end {watch_end}\n{}",
        world.output()
    );
    println!(
        "watch {watch_start} .. {watch_end}, taken up at {taken_up}, stable at {}",
        stable[0].at
    );
    assert_eq!(
        stable[0].at,
        watch_end,
        "the watch ends at its stored end, not a full watch after the restart\n{}",
        world.output()
    );
    assert!(
        stable[0]
            .explanation
            .contains("rollwatch took the watch up at"),
        "{}",
        stable[0].explanation
    );
    assert_eq!(
        resolved.state,
        IncidentState::Resolved {
            at: watch_end,
            outcome: IncidentOutcome::Stable
        }
    );
    assert_eq!(
        resolved.watch_until,
        Some(watch_end),
        "the stored end stays"
    );
    assert!(
        world.output().contains(&format!(
            "watching again until {}, its stored end",
            rollwatch::engine::time_text(watch_end)
        )),
        "{}",
        world.output()
    );
    let calls = std::fs::read_to_string(world.dir.path().join("calls.log")).unwrap();
    assert_eq!(calls.lines().count(), 1, "rolled back once: {calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_deadline_and_the_watch_end_at_their_stored_instants_across_restarts() {
    the_deadline_and_the_watch_end_at_their_stored_instants_across_restarts(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_deadline_and_the_watch_end_at_their_stored_instants_across_restarts() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    the_deadline_and_the_watch_end_at_their_stored_instants_across_restarts(Some(
        schema.url.clone(),
    ))
    .await;
}

/// What a restart needs to go on counting an incident's clear time: the
/// stored `clear_since` and the instant of its latest sample (the last
/// observation). Store level, on both backends.
async fn the_clear_time_and_the_last_observation_are_stored(db: String) {
    let store = Store::open(&db).await.unwrap();
    let at =
        |s: i64| "2026-11-24T10:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::seconds(s);
    let id = store
        .open_incident(&NewIncident {
            target: "timers-store/production".into(),
            kind: IncidentKind::Rule,
            tier: rollwatch::engine::policy::Tier::Consider,
            rule: "error-rate".into(),
            reason: String::new(),
            component: None,
            from_version: None,
            to_version: None,
            opened_at: at(0),
            deadline: None,
        })
        .await
        .unwrap();
    assert_eq!(store.last_sample_at(id).await.unwrap(), None);
    let sample = |s: i64| SamplePoint {
        at: at(s),
        up: Some(true),
        requests: Some(100.0),
        errors: Some(0.0),
        users: None,
        users_affected: None,
        latency_ms: None,
    };
    store
        .record_samples(id, &[sample(15), sample(45), sample(30)])
        .await
        .unwrap();
    assert_eq!(store.last_sample_at(id).await.unwrap(), Some(at(45)));
    let unfinished = |store: Store| async move {
        store
            .unfinished_incidents("timers-store/production")
            .await
            .unwrap()[0]
            .incident
            .clone()
    };
    assert_eq!(unfinished(store.clone()).await.clear_since, None);
    let since = at(20) + TimeDelta::microseconds(123_456);
    store
        .set_incident_clear_since(id, Some(since))
        .await
        .unwrap();
    assert_eq!(unfinished(store.clone()).await.clear_since, Some(since));
    store.set_incident_clear_since(id, None).await.unwrap();
    assert_eq!(unfinished(store.clone()).await.clear_since, None);
    store
        .resolve_incident(id, IncidentOutcome::Recovered, at(60))
        .await
        .unwrap();
    assert!(matches!(
        store.set_incident_clear_since(id, Some(since)).await,
        Err(StoreError::IncidentResolved(resolved)) if resolved == id
    ));
    store.close().await;
}

#[tokio::test]
async fn sqlite_the_clear_time_and_the_last_observation_are_stored() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rollwatch.db").display());
    the_clear_time_and_the_last_observation_are_stored(db).await;
}

#[tokio::test]
async fn postgres_the_clear_time_and_the_last_observation_are_stored() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    the_clear_time_and_the_last_observation_are_stored(schema.url.clone()).await;
}
