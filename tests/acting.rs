//! `rollwatch run` acting for real: a stand-in service goes bad after a
//! deployment, rollwatch rolls it back through a procedure of real scripts
//! (each appends its name to `calls.log`, so executions are counted), verifies,
//! watches and resolves, with every record in the store. Then the same with
//! rollwatch killed (`kill -9`, or a failpoint that does the same at an exact
//! stage boundary) and restarted: no step that may have run is run again, the
//! incident ends resolved or escalated, and nothing recorded is lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use common::pg::Schema;
use common::service::TestService;
use rollwatch::store::{
    IncidentKind, IncidentOutcome, IncidentPhase, IncidentRecord, IncidentState, StepOutcome, Store,
};

const STEP_SCRIPT: &str = r#"#!/bin/sh
# A procedure step for tests: records the call, fails when asked, waits while held.
name="$1"
dir="$(dirname "$0")"
env > "$dir/env-$name"
echo "$name incident=$ROLLWATCH_INCIDENT_ID service=$ROLLWATCH_SERVICE env=$ROLLWATCH_ENVIRONMENT component=$ROLLWATCH_COMPONENT from=$ROLLWATCH_FROM_VERSION to=$ROLLWATCH_TO_VERSION dry=$ROLLWATCH_DRY_RUN" >> "$dir/calls.log"
if [ -e "$dir/fail-$name" ]; then echo "failing $name on purpose" >&2; exit 3; fi
while [ -e "$dir/hold-$name" ]; do sleep 0.05; done
echo "$name done"
"#;

/// One test's world: a directory with the step script and policy, a service,
/// and a database.
struct World {
    dir: tempfile::TempDir,
    service: TestService,
    policy: PathBuf,
    db: String,
    /// Lines rollwatch printed, across restarts.
    output: common::process::Lines,
}

impl World {
    async fn new(db: Option<String>, extra_rules: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("step.sh");
        common::process::write_script(&script, STEP_SCRIPT);
        let service = TestService::start().await;
        let policy = dir.path().join("staging.toml");
        std::fs::write(&policy, policy_text(&service.url(), &script, extra_rules)).unwrap();
        let db =
            db.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("rollwatch.db").display()));
        World {
            dir,
            service,
            policy,
            db,
            output: Arc::default(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn hold(&self, step: &str) {
        std::fs::write(self.path(&format!("hold-{step}")), "").unwrap();
    }

    fn release(&self, step: &str) {
        let _ = std::fs::remove_file(self.path(&format!("hold-{step}")));
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn count(&self, step: &str) -> usize {
        self.calls()
            .iter()
            .filter(|l| l.split_whitespace().next() == Some(step))
            .count()
    }

    /// Starts `rollwatch run` (acting) with `env` set.
    fn start(&self, env: &[(&str, &str)]) -> Running {
        let mut command = Command::new(cargo_bin("rollwatch"));
        command
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
            .env("RUST_LOG", "rollwatch=info");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        common::process::capture(&mut child, &self.output);
        Running(Some(child))
    }

    fn output(&self) -> String {
        common::process::text(&self.output)
    }

    /// Healthy at v1, then a deployment of v2 that serves 30 % errors; the
    /// service is healthy at v1 again once the rollback script has run.
    async fn bad_deploy(&self) {
        self.healthy_seen().await;
        self.service.set(|k| {
            k.version = "v2.0.0".into();
            k.error_rate = 0.3;
        });
    }

    /// Returns once rollwatch has scraped the healthy v1 service twice, so the
    /// change that follows is a deployment it sees (a fixed sleep was not
    /// enough on a loaded machine: the first scrape came after the change).
    async fn healthy_seen(&self) {
        self.service.wait_for_scrapes(2).await;
    }

    /// Turns the service back to v1 when the rollback script runs.
    fn rollback_heals(&self) -> tokio::task::JoinHandle<()> {
        let log = self.path("calls.log");
        let service = self.service.knobs();
        tokio::spawn(async move {
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.lines().any(|l| l.starts_with("rollback-app ")) {
                    service.set(|k| {
                        k.version = "v1.0.0".into();
                        k.error_rate = 0.002;
                        k.session_error_rate = 0.0;
                    });
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    async fn store(&self) -> Store {
        Store::open(&self.db).await.unwrap()
    }

    async fn incidents(&self) -> Vec<IncidentRecord> {
        let store = self.store().await;
        let incidents = store.list_incidents(100).await.unwrap();
        store.close().await;
        incidents
    }

    /// Waits until the store shows the incident in `phase` (or any end).
    async fn wait_for(&self, what: &str, done: impl Fn(&IncidentRecord) -> bool) -> IncidentRecord {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(incident) = self.incidents().await.into_iter().find(|i| done(i)) {
                return incident;
            }
            assert!(
                Instant::now() < deadline,
                "no incident {what} within 60 s; calls: {:#?}\noutput:\n{}",
                self.calls(),
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_for_output(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.output().contains(text) {
            assert!(
                Instant::now() < deadline,
                "rollwatch never said {text:?} within 60 s; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The stored step `name` once its runner has recorded itself and the
    /// step's process group.
    async fn wait_for_runner(&self, name: &str) -> rollwatch::store::StepRecord {
        let deadline = Instant::now() + Duration::from_secs(60);
        let store = self.store().await;
        loop {
            for incident in store.list_incidents(10).await.unwrap() {
                if let Some(step) = store
                    .steps(incident.id)
                    .await
                    .unwrap()
                    .into_iter()
                    .find(|s| s.name == name && s.runner.is_some() && s.step_pgid.is_some())
                {
                    store.close().await;
                    return step;
                }
            }
            assert!(
                Instant::now() < deadline,
                "step {name} never got a runner; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_for_step(&self, step: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.count(step) == 0 {
            assert!(
                Instant::now() < deadline,
                "step {step} never ran; output:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ended(incident: &IncidentRecord) -> bool {
    matches!(
        incident.state,
        IncidentState::Resolved { .. }
            | IncidentState::Active {
                phase: IncidentPhase::Escalated
            }
    )
}

fn in_phase(phase: IncidentPhase) -> impl Fn(&IncidentRecord) -> bool {
    move |incident| incident.state == IncidentState::Active { phase }
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

    /// Waits for it to die on its own (a failpoint).
    fn wait_dead(&mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("rollwatch did not die at its failpoint within 60 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Staging-like: 1 s polls, errors confirmed after 3 s, a 4 s watch, and the
/// runbook's procedure as test scripts.
fn policy_text(url: &str, script: &Path, extra_rules: &str) -> String {
    let step = |name: &str, stage: &str, extra: &str| {
        format!(
            "[[procedure.step]]\nname = \"{name}\"\nstage = \"{stage}\"\ncommand = [\"{}\", \"{name}\"]\ntimeout = \"20s\"\n{extra}\n",
            script.display()
        )
    };
    format!(
        r#"[target]
service = "web"
environment = "staging"

[evaluation]
interval = "1s"
cooldown = "1m"
resolve_after = "30s"

[baseline]
fixed = "300ms"

[actions]
immediate = "rollback"
consider = "rollback"

[stabilization]
duration = "4s"

[source]
kind = "scrape"
url = "{url}/metrics"
timeout = "900ms"

[source.metrics]
requests = "http_requests_total"
errors = 'http_requests_total{{code=~"5.."}}'
latency = "http_request_duration_seconds"
users = "app_sessions_total"
users_affected = "app_sessions_with_errors_total"
version = "app_build_info"

[health]
url = "{url}/healthz"
timeout = "900ms"

[[rule]]
name = "error-rate"
tier = "consider"
signal = "error-rate"
threshold = "5%"
min_requests = 50
for = "3s"
{extra_rules}
[procedure]
backup_budget = "1m"

{}{}{}{}{}"#,
        step("create-backup", "backup", ""),
        step("rollback-app", "application", ""),
        step("smoke-tests", "verification", ""),
        step("restart-services", "recovery", ""),
        step("restore-backup", "recovery", ""),
    )
}

/// Everything about a finished incident that must hold whatever happened.
async fn assert_complete_record(world: &World, incident: &IncidentRecord) {
    let store = world.store().await;
    let timeline = store.incident(incident.id).await.unwrap().unwrap();
    assert!(
        timeline
            .decisions
            .iter()
            .any(|d| d.action.as_str() == "rollback" && d.cause.as_str() == "rule-fired"),
        "the rollback decision is kept: {:#?}",
        timeline.decisions
    );
    assert!(
        timeline
            .steps
            .iter()
            .all(|s| s.outcome != StepOutcome::Running),
        "no step is left running: {:#?}",
        timeline.steps
    );
    let service = incident.target.split('/').next().unwrap();
    assert!(
        timeline.notifications.iter().any(|n| n
            .subject
            .starts_with(&format!("Rolling back staging {service} due to error-rate"))),
        "the team is told before the rollback: {:#?}",
        timeline.notifications
    );
    let first_step = timeline.steps.first().map(|s| s.started_at);
    let notice = timeline
        .notifications
        .iter()
        .find(|n| n.subject.starts_with("Rolling back"))
        .map(|n| n.created_at);
    assert!(
        notice <= first_step,
        "notice {notice:?} before the first step {first_step:?}"
    );
    assert!(
        !store.samples(incident.id).await.unwrap().is_empty(),
        "the chart's samples are kept"
    );
    let all = store.list_incidents(100).await.unwrap();
    assert_eq!(
        all.iter().filter(|i| i.kind != IncidentKind::Drill).count(),
        1,
        "one incident: {all:#?}"
    );
    store.close().await;
}

/// The whole runbook from a firing rule to a resolved incident.
async fn a_bad_deploy_is_rolled_back_verified_watched_and_resolved(db: Option<String>) {
    let world = World::new(db, "").await;
    let _heal = world.rollback_heals();
    let mut rollwatch = world.start(&[]);
    world.bad_deploy().await;
    let incident = world.wait_for("resolved", ended).await;
    assert_eq!(
        incident.state,
        IncidentState::Resolved {
            at: match incident.state {
                IncidentState::Resolved { at, .. } => at,
                _ => unreachable!(),
            },
            outcome: IncidentOutcome::Stable
        },
        "output:\n{}",
        world.output()
    );
    assert_eq!(world.count("create-backup"), 1);
    assert_eq!(world.count("rollback-app"), 1);
    assert_eq!(world.count("smoke-tests"), 1);
    assert_eq!(
        world.count("restart-services"),
        0,
        "no recovery after success"
    );
    let call = world
        .calls()
        .into_iter()
        .find(|l| l.starts_with("rollback-app"))
        .unwrap();
    assert!(
        call.contains(&format!("incident={}", incident.id))
            && call.contains("service=web env=staging component= from=v2.0.0 to=v1.0.0 dry=0"),
        "the step's variables: {call}"
    );
    assert_eq!(incident.from_version.as_deref(), Some("v2.0.0"));
    assert_complete_record(&world, &incident).await;
    let store = world.store().await;
    let steps = store.steps(incident.id).await.unwrap();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "create-backup",
            "rollback-app",
            "health-probe",
            "smoke-tests"
        ]
    );
    assert!(steps.iter().all(|s| s.outcome == StepOutcome::Succeeded));
    assert!(steps[1].stdout.contains("rollback-app done"));
    assert_eq!(steps[1].exit_code, Some(0));
    let decisions = store.decisions(incident.id).await.unwrap();
    let causes: Vec<&str> = decisions.iter().map(|d| d.cause.as_str()).collect();
    assert_eq!(
        causes,
        ["rule-fired", "rollback-finished", "stable"],
        "{decisions:#?}"
    );
    // The sidecar's own metrics tell the same story.
    let address =
        common::process::listen_address(&world.output).expect("the sidecar says where it listens");
    let metrics = common::process::get_text(&format!("{address}/metrics")).await;
    for line in [
        "rollwatch_procedure_steps_total{target=\"web/staging\",stage=\"application\",result=\"succeeded\"} 1",
        "rollwatch_procedure_steps_total{target=\"web/staging\",stage=\"verification\",result=\"succeeded\"} 2",
        "rollwatch_incident_open{target=\"web/staging\"} 0",
        "rollwatch_signal_threshold{target=\"web/staging\",rule=\"error-rate\"} 0.05",
        "rollwatch_decisions_total{target=\"web/staging\",action=\"rollback\",tier=\"consider\"} 1",
    ] {
        assert!(metrics.contains(line), "{line}\n{metrics}");
    }
    assert!(decisions.iter().all(|d| d.policy_sha256.len() == 64));
    rollwatch.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_bad_deploy_is_rolled_back_verified_watched_and_resolved() {
    a_bad_deploy_is_rolled_back_verified_watched_and_resolved(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_bad_deploy_is_rolled_back_verified_watched_and_resolved() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    a_bad_deploy_is_rolled_back_verified_watched_and_resolved(Some(schema.url.clone())).await;
}

/// Kill -9 while `step` runs, restart while it still runs: the step's runner
/// outlives rollwatch, the restarted rollwatch waits for the end the runner
/// records, and only then goes on. The step ran once, its end is the real
/// one, and no later step started before it.
async fn killed_while(step: &str, db: Option<String>) -> (World, IncidentRecord) {
    let world = World::new(db, "").await;
    // Advisory locks are database-wide: on PostgreSQL, a service name of its
    // own keeps this test's target apart from the other tests'.
    let text = std::fs::read_to_string(&world.policy)
        .unwrap()
        .replace("service = \"web\"", &format!("service = \"web-{step}\""));
    std::fs::write(&world.policy, text).unwrap();
    let _heal = world.rollback_heals();
    world.hold(step);
    let mut first = world.start(&[]);
    world.bad_deploy().await;
    world.wait_for_step(step).await;
    first.kill9();
    let _second = world.start(&[]);
    // Still held: the new rollwatch must be waiting, not going on.
    world.wait_for_output("waiting for its recorded end").await;
    assert_eq!(world.count(step), 1, "{}", world.output());
    world.release(step);
    let incident = world.wait_for("ended", ended).await;
    assert_eq!(
        world.count("rollback-app"),
        1,
        "the rollback script ran exactly once: {:#?}\n{}",
        world.calls(),
        world.output()
    );
    assert_eq!(
        world.count(step),
        1,
        "the interrupted {step} is not run again"
    );
    assert_complete_record(&world, &incident).await;
    let store = world.store().await;
    let steps = store.steps(incident.id).await.unwrap();
    let interrupted = steps.iter().find(|s| s.name == step).unwrap();
    assert_eq!(
        interrupted.outcome,
        StepOutcome::Succeeded,
        "its runner recorded the real end: {steps:#?}"
    );
    assert!(interrupted.runner.is_some(), "{interrupted:#?}");
    let end = interrupted.ended_at.unwrap();
    for later in steps.iter().filter(|s| s.id > interrupted.id) {
        assert!(
            later.started_at >= end,
            "{} started at {} before {step} ended at {end}",
            later.name,
            later.started_at
        );
    }
    store.close().await;
    (world, incident)
}

fn resolved_stable(incident: &IncidentRecord) -> bool {
    matches!(
        incident.state,
        IncidentState::Resolved {
            outcome: IncidentOutcome::Stable,
            ..
        }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_backup_the_rollback_goes_on_without_it() {
    let (world, incident) = killed_while("create-backup", None).await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_rollback_the_restart_waits_for_its_end_and_resolves() {
    let (world, incident) = killed_while("rollback-app", None).await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_during_the_rollback_the_restart_waits_for_its_end_and_resolves() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (world, incident) = killed_while("rollback-app", Some(schema.url.clone())).await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
}

/// Kill -9 of rollwatch, then of the step's runner and the step itself while
/// the rollback step runs: nobody can know whether it ran.
async fn runner_killed_with_its_step(world: &World) {
    world.hold("rollback-app");
    let mut first = world.start(&[]);
    world.bad_deploy().await;
    world.wait_for_step("rollback-app").await;
    let step = world.wait_for_runner("rollback-app").await;
    first.kill9();
    let runner_pid: i32 = step
        .runner
        .as_deref()
        .and_then(|r| r.rsplit_once(':'))
        .and_then(|(_, pid)| pid.parse().ok())
        .unwrap();
    // SAFETY: signals to processes this test started (through rollwatch).
    unsafe {
        libc::kill(runner_pid, libc::SIGKILL);
        libc::killpg(step.step_pgid.unwrap(), libc::SIGKILL);
    }
    world.release("rollback-app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_runner_died_with_it_is_unknown_and_escalates() {
    let world = World::new(None, "").await;
    let _heal = world.rollback_heals();
    runner_killed_with_its_step(&world).await;
    let _second = world.start(&[]);
    let incident = world.wait_for("ended", ended).await;
    assert_eq!(
        incident.state,
        IncidentState::Active {
            phase: IncidentPhase::Escalated
        },
        "{}",
        world.output()
    );
    assert_eq!(world.count("rollback-app"), 1, "never run again");
    assert_eq!(
        world.count("smoke-tests"),
        0,
        "nothing runs after an unknown rollback step"
    );
    let store = world.store().await;
    let steps = store.steps(incident.id).await.unwrap();
    let app = steps.iter().find(|s| s.name == "rollback-app").unwrap();
    assert_eq!(app.outcome, StepOutcome::Unknown, "{steps:#?}");
    assert!(
        app.detail.as_deref().unwrap().contains("stopped beating"),
        "{app:#?}"
    );
    let decisions = store.decisions(incident.id).await.unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d.cause.as_str() == "rollback-failed"
                && d.action.as_str() == "page"
                && d.explanation.contains("not idempotent")),
        "{decisions:#?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_step_whose_runner_died_with_it_runs_again_once() {
    let world = World::new(None, "").await;
    let text = std::fs::read_to_string(&world.policy).unwrap().replace(
        "name = \"rollback-app\"\n",
        "name = \"rollback-app\"\nidempotent = true\n",
    );
    std::fs::write(&world.policy, text).unwrap();
    let _heal = world.rollback_heals();
    runner_killed_with_its_step(&world).await;
    let _second = world.start(&[]);
    let incident = world.wait_for("ended", ended).await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
    assert_eq!(world.count("rollback-app"), 2, "run again, once");
    let store = world.store().await;
    let runs: Vec<StepOutcome> = store
        .steps(incident.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|s| s.name == "rollback-app")
        .map(|s| s.outcome)
        .collect();
    assert_eq!(runs, [StepOutcome::Unknown, StepOutcome::Succeeded]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_verification_the_watch_still_runs() {
    let (world, incident) = killed_while("smoke-tests", None).await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_watch_it_watches_again_and_resolves() {
    let world = World::new(None, "").await;
    let _heal = world.rollback_heals();
    let mut first = world.start(&[]);
    world.bad_deploy().await;
    world
        .wait_for("watching", in_phase(IncidentPhase::Watching))
        .await;
    first.kill9();
    let _second = world.start(&[]);
    let incident = world.wait_for("ended", ended).await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
    assert_eq!(world.count("rollback-app"), 1);
    assert_eq!(world.count("smoke-tests"), 1);
    assert_complete_record(&world, &incident).await;
    assert!(
        world.output().contains("watching again"),
        "{}",
        world.output()
    );
}

/// Dies at a stage boundary (a failpoint: SIGKILL at an exact point), restarts.
async fn killed_at(point: &str) -> (World, IncidentRecord) {
    let world = World::new(None, "").await;
    let _heal = world.rollback_heals();
    let mut first = world.start(&[("ROLLWATCH_FAILPOINT", point)]);
    world.bad_deploy().await;
    let status = first.wait_dead();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9),
        "died at {point}: {}",
        world.output()
    );
    let _second = world.start(&[]);
    let incident = world.wait_for("ended", ended).await;
    assert_complete_record(&world, &incident).await;
    (world, incident)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_backup_and_rollback() {
    let (world, incident) = killed_at("after-step:create-backup").await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
    assert_eq!(world.count("create-backup"), 1);
    assert_eq!(world.count("rollback-app"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_rollback_and_verification() {
    let (world, incident) = killed_at("after-step:rollback-app").await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
    assert_eq!(world.count("rollback-app"), 1);
    assert_eq!(world.count("smoke-tests"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_verification_and_watch() {
    let (world, incident) = killed_at("after-procedure").await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
    assert_eq!(world.count("rollback-app"), 1);
    assert_eq!(world.count("smoke-tests"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_after_storing_the_rollbacks_start_it_is_never_run_and_escalates() {
    // The start is committed, the script never spawned: whether it ran is
    // unknown to the restarted rollwatch, so it must not run it.
    let (world, incident) = killed_at("before-step:rollback-app").await;
    assert_eq!(world.count("rollback-app"), 0, "{:#?}", world.calls());
    assert_eq!(
        incident.state,
        IncidentState::Active {
            phase: IncidentPhase::Escalated
        },
        "no runner ever took the step up: its outcome is unknown and humans decide\n{}",
        world.output()
    );
    let store = world.store().await;
    let decisions = store.decisions(incident.id).await.unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d.cause.as_str() == "rollback-failed" && d.action.as_str() == "page"),
        "{decisions:#?}"
    );
    assert_eq!(
        decisions
            .iter()
            .filter(|d| d.action.as_str() == "rollback")
            .count(),
        1,
        "never a second automatic rollback: {decisions:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_overlapping_rules_open_one_incident_and_one_rollback() {
    let users = r#"
[[rule]]
name = "users-affected"
tier = "consider"
signal = "users-affected"
threshold = "10%"
min_users = 20
for = "3s"
"#;
    let world = World::new(None, users).await;
    let _heal = world.rollback_heals();
    let _rollwatch = world.start(&[]);
    world.healthy_seen().await;
    world.service.set(|k| {
        k.version = "v2.0.0".into();
        k.error_rate = 0.3;
        k.session_error_rate = 0.5;
    });
    let incident = world.wait_for("ended", ended).await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
    assert_eq!(world.count("rollback-app"), 1);
    assert_eq!(world.incidents().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rollback_runs_recovery_and_escalates_without_a_second_rollback() {
    let world = World::new(None, "").await;
    std::fs::write(world.path("fail-rollback-app"), "").unwrap();
    let _rollwatch = world.start(&[]);
    world.bad_deploy().await;
    let incident = world.wait_for("ended", ended).await;
    assert_eq!(
        incident.state,
        IncidentState::Active {
            phase: IncidentPhase::Escalated
        },
        "{}",
        world.output()
    );
    // Keep watching a while (five more of the sidecar's polls, so a stalled
    // loop fails rather than passes): the rule still fires, but nothing is
    // rolled back again.
    common::process::wait_for_polls(&latest_address(&world), 5, Duration::from_secs(60)).await;
    assert_eq!(world.count("rollback-app"), 1);
    assert_eq!(world.count("restart-services"), 1);
    assert_eq!(world.count("restore-backup"), 1);
    assert_eq!(
        world.count("smoke-tests"),
        0,
        "no verification after a failed rollback"
    );
    let store = world.store().await;
    let steps = store.steps(incident.id).await.unwrap();
    let failed = steps.iter().find(|s| s.name == "rollback-app").unwrap();
    assert_eq!(failed.outcome, StepOutcome::Failed);
    assert_eq!(failed.exit_code, Some(3));
    assert!(failed.stderr.contains("failing rollback-app on purpose"));
    let notifications = store.notifications(incident.id).await.unwrap();
    assert!(
        notifications
            .iter()
            .any(|n| n.subject.contains("ESCALATION")),
        "{notifications:#?}"
    );
}

/// A webhook channel inside the test: every JSON message it was sent.
struct Webhook {
    url: String,
    received: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

impl Webhook {
    async fn start() -> Webhook {
        use axum::extract::State;
        type Received = Arc<std::sync::Mutex<Vec<serde_json::Value>>>;
        let received = Received::default();
        let app = axum::Router::new()
            .route(
                "/hook",
                axum::routing::post(
                    |State(received): State<Received>, body: String| async move {
                        received.lock().unwrap().push(
                            serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
                        );
                        axum::http::StatusCode::OK
                    },
                ),
            )
            .with_state(Arc::clone(&received));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Webhook { url, received }
    }

    /// `[notify]` sending every kind of message to this webhook.
    fn policy(&self) -> String {
        format!(
            "[notify]\npage = [\"hook\"]\nnotice = [\"hook\"]\nescalation = [\"hook\"]\n[[notify.channel]]\nname = \"hook\"\nkind = \"webhook\"\nurl = \"{}\"\ntimeout = \"5s\"\n",
            self.url
        )
    }

    fn received(&self) -> Vec<serde_json::Value> {
        self.received.lock().unwrap().clone()
    }
}

/// The owner's database opens the incident but refuses its messages (a full
/// disk, a table it cannot write): the rollback is not run, since the team
/// would not hear of it, and what asks a human goes out without the outbox,
/// once, however many polls follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_cannot_store_its_messages_runs_nothing_and_tells_on_call_directly_once() {
    let hook = Webhook::start().await;
    let world = World::new(None, &hook.policy()).await;
    let _rollwatch = world.start(&[("ROLLWATCH_FAILPOINT", "fail:enqueue-notification")]);
    world.bad_deploy().await;
    let asks_a_human =
        |m: &serde_json::Value| matches!(m["kind"].as_str(), Some("page" | "escalation"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !hook.received().iter().any(asks_a_human) {
        assert!(
            Instant::now() < deadline,
            "on-call was never told; the webhook got {:#?}\noutput:\n{}",
            hook.received(),
            world.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::process::wait_for_polls(&latest_address(&world), 5, Duration::from_secs(60)).await;
    let told: Vec<_> = hook.received().into_iter().filter(asks_a_human).collect();
    assert_eq!(told.len(), 1, "told once: {told:#?}\n{}", world.output());
    let subject = told[0]["subject"].as_str().unwrap_or_default();
    assert!(subject.contains("staging web"), "{told:#?}");
    assert!(
        world.calls().is_empty(),
        "nothing ran: {:#?}\n{}",
        world.calls(),
        world.output()
    );
    assert!(
        world.output().contains("cannot store the notification"),
        "{}",
        world.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_database_unreachable_nothing_is_run_and_on_call_is_told() {
    let Some(cluster) = common::pg::Cluster::create() else {
        return;
    };
    cluster.start();
    let hook = Webhook::start().await;
    let world = World::new(Some(cluster.url()), &hook.policy()).await;
    let _rollwatch = world.start(&[]);
    // Started and migrated against the live cluster; then the database goes away.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !world.output().contains("watching web/staging") {
        assert!(Instant::now() < deadline, "{}", world.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.stop();
    world.bad_deploy().await;
    // The rollback is not run (it could not be recorded), and README's
    // promise holds: the decision escalates to a human. With no database the
    // outbox cannot hold the message, so it is sent directly.
    let deadline = Instant::now() + Duration::from_secs(60);
    let told = loop {
        if let Some(message) = hook.received().into_iter().find(|m| {
            m["subject"]
                .as_str()
                .is_some_and(|s| s.contains("DATABASE UNREACHABLE"))
        }) {
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "on-call was never told; the webhook got {:#?}\noutput:\n{}",
            hook.received(),
            world.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(told["kind"], "escalation", "{told:#}");
    let subject = told["subject"].as_str().unwrap();
    assert!(
        subject.contains("staging web") && subject.contains("NOT ROLLING BACK"),
        "{told:#}"
    );
    assert!(
        told["rollwatch"]["recommendation"]
            .as_str()
            .is_some_and(|r| r.contains("a human must decide")),
        "{told:#}"
    );
    assert!(
        world.calls().is_empty(),
        "no step ran: {:#?}",
        world.calls()
    );
    let output = world.output();
    assert!(output.contains("DATABASE UNREACHABLE"), "{output}");
    assert!(output.contains("NOT ROLLING BACK"), "{output}");
    // Told once per incident, not at every poll: the loop polls on (the
    // scrapes prove it is not stalled) and sends nothing more.
    world.service.wait_for_scrapes(6).await;
    let unreachable = hook
        .received()
        .iter()
        .filter(|m| {
            m["subject"]
                .as_str()
                .is_some_and(|s| s.contains("DATABASE UNREACHABLE"))
        })
        .count();
    assert_eq!(unreachable, 1, "{:#?}", hook.received());
    // The database comes back: the replica takes the target again (a
    // rollback it then decides is safe to run: its start can be stored).
    let taken_before = world.output().matches("leadership taken").count();
    cluster.start();
    let deadline = Instant::now() + Duration::from_secs(20);
    while world.output().matches("leadership taken").count() <= taken_before {
        assert!(Instant::now() < deadline, "{}", world.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The policy's procedure drills every `every`.
fn schedule_drills(world: &World, every: &str) {
    let text = std::fs::read_to_string(&world.policy).unwrap();
    let text = text.replace(
        "backup_budget = \"1m\"",
        &format!("backup_budget = \"1m\"\ndrill_every = \"{every}\""),
    );
    std::fs::write(&world.policy, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_carries_out_a_scheduled_drill_once_per_period() {
    let world = World::new(None, "").await;
    schedule_drills(&world, "1h");
    let mut first = world.start(&[]);
    let drill = world
        .wait_for("drill ended", |i| {
            i.kind == IncidentKind::Drill && matches!(i.state, IncidentState::Resolved { .. })
        })
        .await;
    let store = world.store().await;
    let steps = store.steps(drill.id).await.unwrap();
    assert!(
        matches!(
            drill.state,
            IncidentState::Resolved {
                outcome: IncidentOutcome::DrillPassed,
                ..
            }
        ),
        "{drill:#?}\n{steps:#?}\n{}",
        world.output()
    );
    assert_eq!(world.count("rollback-app"), 1, "{}", world.output());
    assert!(
        world.output().contains("drill due (never drilled"),
        "{}",
        world.output()
    );
    let store = world.store().await;
    let steps = store.steps(drill.id).await.unwrap();
    assert!(
        steps
            .iter()
            .any(|s| s.name == "smoke-tests" && s.outcome == StepOutcome::Succeeded),
        "the drill verifies: {steps:#?}"
    );
    first.kill9();
    // Restarted within the hour: the last drill is recent, no second one.
    let _second = world.start(&[]);
    wait_for_sidecars(&world, 2).await;
    // Four of the restarted sidecar's polls, not a fixed sleep: a loop that
    // stalled would start no drill and must not pass for one that chose not to.
    common::process::wait_for_polls(&latest_address(&world), 4, Duration::from_secs(60)).await;
    assert_eq!(world.count("rollback-app"), 1, "{}", world.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_drill_waits_for_an_open_incident_and_is_reported() {
    let world = World::new(None, "").await;
    schedule_drills(&world, "1h");
    let store = world.store().await;
    store
        .open_incident(&rollwatch::store::NewIncident {
            target: "web/staging".into(),
            kind: IncidentKind::Rule,
            tier: rollwatch::engine::policy::Tier::Consider,
            rule: "error-rate".into(),
            reason: String::new(),
            component: None,
            from_version: None,
            to_version: None,
            opened_at: chrono::Utc::now(),
            deadline: None,
        })
        .await
        .unwrap();
    store.close().await;
    let _rollwatch = world.start(&[]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !world
        .output()
        .contains("DRILL OVERDUE (never drilled, due every 1h)")
    {
        assert!(Instant::now() < deadline, "{}", world.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        world.calls().is_empty(),
        "no drill while an incident is open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_step_finish_records_it_and_exits_0() {
    let world = World::new(None, "").await;
    let _heal = world.rollback_heals();
    world.hold("rollback-app");
    let mut rollwatch = world.start(&[]);
    world.bad_deploy().await;
    world.wait_for_step("rollback-app").await;
    let pid = rollwatch.0.as_ref().unwrap().id() as i32;
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    world.release("rollback-app");
    let status = rollwatch.wait_dead();
    assert_eq!(status.code(), Some(0), "{}", world.output());
    let store = world.store().await;
    let incident = store.list_incidents(1).await.unwrap().remove(0);
    let steps = store.steps(incident.id).await.unwrap();
    let step = steps.iter().find(|s| s.name == "rollback-app").unwrap();
    assert_eq!(step.outcome, StepOutcome::Succeeded, "{steps:#?}");
    assert_eq!(world.count("rollback-app"), 1);
}

/// What systemd's default `KillMode=control-group` does on a stop: SIGTERM to
/// every process of the unit at once, the step runner and the step included.
/// The runner does not die of it: it records how the step ended, so the end
/// is known rather than lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_every_process_leaves_a_known_end_not_an_unknown_one() {
    let world = World::new(None, "").await;
    world.hold("rollback-app");
    let mut rollwatch = world.start(&[]);
    world.bad_deploy().await;
    world.wait_for_step("rollback-app").await;
    let step = world.wait_for_runner("rollback-app").await;
    let runner_pid: i32 = step
        .runner
        .as_deref()
        .and_then(|r| r.rsplit_once(':'))
        .and_then(|(_, pid)| pid.parse().ok())
        .unwrap();
    let pid = rollwatch.0.as_ref().unwrap().id() as i32;
    // SAFETY: signals to processes this test started (through rollwatch).
    unsafe {
        libc::kill(pid, libc::SIGTERM);
        libc::kill(runner_pid, libc::SIGTERM);
        libc::killpg(step.step_pgid.unwrap(), libc::SIGTERM);
    }
    let status = rollwatch.wait_dead();
    assert_eq!(status.code(), Some(0), "{}", world.output());
    world.release("rollback-app");
    let store = world.store().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ended = loop {
        let record = store.step(step.id).await.unwrap().unwrap();
        if record.outcome != StepOutcome::Running {
            break record;
        }
        assert!(
            Instant::now() < deadline,
            "the runner never recorded the end"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ended.outcome, StepOutcome::Failed, "{ended:#?}");
    assert!(
        ended.detail.as_deref().unwrap().contains("signal 15"),
        "{ended:#?}"
    );
    store.close().await;
}

/// The shipped systemd unit stops rollwatch the way the README promises: the
/// stop's SIGTERM to rollwatch alone (a running step is not killed at once),
/// with time for the 60 s grace before anything is killed.
#[test]
fn the_systemd_unit_sends_the_stop_signal_to_rollwatch_alone() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/rollwatch.service"),
    )
    .unwrap();
    let setting = |key: &str| {
        unit.lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .next_back()
            .map(str::to_string)
    };
    assert_eq!(setting("KillMode").as_deref(), Some("mixed"), "{unit}");
    assert_eq!(setting("KillSignal").as_deref(), Some("SIGTERM"));
    let stop: u64 = setting("TimeoutStopSec").unwrap().parse().unwrap();
    assert!(
        stop > 60,
        "TimeoutStopSec={stop} must exceed the 60 s grace"
    );
    assert_eq!(setting("Restart").as_deref(), Some("always"));
}

/// Steps get `PATH`, `HOME`, `LANG`..., the `ROLLWATCH_*` step variables and
/// what the policy lists in `env`, never rollwatch's own secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_get_a_clean_environment_with_what_the_policy_lists() {
    let world = World::new(None, "").await;
    let text = std::fs::read_to_string(&world.policy).unwrap().replace(
        "name = \"rollback-app\"\n",
        "name = \"rollback-app\"\nenv = [\"DEPLOY_CONTEXT\"]\n",
    );
    std::fs::write(&world.policy, text).unwrap();
    let _heal = world.rollback_heals();
    let _rollwatch = world.start(&[
        ("ROLLWATCH_API_TOKEN", "tok-s3cret"),
        ("SMTP_PASSWORD", "pw-s3cret"),
        ("DEPLOY_CONTEXT", "prod-cluster"),
    ]);
    world.bad_deploy().await;
    let incident = world.wait_for("ended", ended).await;
    assert!(resolved_stable(&incident), "{}", world.output());
    let env = std::fs::read_to_string(world.path("env-rollback-app")).unwrap();
    assert!(!env.contains("s3cret"), "a secret reached the step:\n{env}");
    assert!(env.contains("DEPLOY_CONTEXT=prod-cluster"), "{env}");
    assert!(
        env.contains(&format!("ROLLWATCH_INCIDENT_ID={}", incident.id)),
        "{env}"
    );
    assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");
    let smoke = std::fs::read_to_string(world.path("env-smoke-tests")).unwrap();
    assert!(
        !smoke.contains("DEPLOY_CONTEXT"),
        "only the step that lists it: {smoke}"
    );
    assert!(!smoke.contains("s3cret"), "{smoke}");
}

/// The version comes from the service being judged: a bad deploy whose
/// `app_build_info` version holds a NUL byte and 60 KB of junk is still
/// rolled back (a NUL or 128 KiB cannot be passed to a step); the step sees
/// a bounded, printable version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_version_label_cannot_block_its_own_rollback() {
    let world = World::new(None, "").await;
    let _heal = world.rollback_heals();
    let _rollwatch = world.start(&[]);
    world.healthy_seen().await;
    world.service.set(|k| {
        k.version = format!("v2\0{}", "x".repeat(60_000));
        k.error_rate = 0.3;
    });
    let incident = world.wait_for("ended", ended).await;
    assert!(
        resolved_stable(&incident),
        "{incident:#?}\n{}",
        world.output()
    );
    assert_eq!(world.count("rollback-app"), 1);
    let call = world
        .calls()
        .into_iter()
        .find(|l| l.starts_with("rollback-app "))
        .unwrap();
    let from = call
        .split_whitespace()
        .find_map(|w| w.strip_prefix("from="))
        .unwrap();
    assert!(from.len() <= 128, "{} bytes: {from}", from.len());
    assert!(from.starts_with("v2\\u{0}xxx"), "{from}");
    assert!(from.contains('~'), "ends in a hash of the original: {from}");
    assert!(
        world.output().contains("not clean printable text"),
        "said once, with the hash"
    );
}

/// Where the most recently started sidecar of `world` listens.
fn latest_address(world: &World) -> String {
    let lines = world.output.lock().unwrap().clone();
    lines
        .iter()
        .rev()
        .find_map(|l| {
            l.split_once(" on http://")
                .map(|(_, a)| format!("http://{a}"))
        })
        .expect("the sidecar says where it listens")
}

/// Waits until `n` sidecars of `world` have said where they listen.
async fn wait_for_sidecars(world: &World, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let started = world
            .output
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" on http://"))
            .count();
        if started >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{started} of {n} sidecars listen after 60 s; output:\n{}",
            world.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `path` of the API at `base`: the status and the JSON body.
async fn api_get(base: &str, path: &str) -> (u16, serde_json::Value) {
    let response = rollwatch::sources::http::client()
        .unwrap()
        .get(format!("{base}{path}"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The first signal lets the held step finish: meanwhile `/readyz` is 503
/// (shutting down), `/healthz` still answers and writes are refused. A
/// second signal quits at once, with 128 + its number.
async fn a_second_signal_quits_at_once_while_a_step_is_held(second: i32, code: i32) {
    let world = World::new(None, "").await;
    world.hold("rollback-app");
    let mut rollwatch = world.start(&[]);
    let base = common::process::wait_for_listen_address(&world.output);
    world.bad_deploy().await;
    world.wait_for_step("rollback-app").await;
    assert_eq!(api_get(&base, "/readyz").await.0, 200, "{}", world.output());
    let pid = rollwatch.0.as_ref().unwrap().id() as i32;
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = api_get(&base, "/readyz").await;
        if status == 503 {
            assert_eq!(
                body,
                serde_json::json!({"ready": false, "reason": "shutting down"})
            );
            break;
        }
        assert!(Instant::now() < deadline, "{body} {}", world.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let healthz = common::process::get_text(&format!("{base}/healthz")).await;
    assert_eq!(healthz, "ok\n");
    let write = rollwatch::sources::http::client()
        .unwrap()
        .post(format!("{base}/api/v1/deployments"))
        .header("content-type", "application/json")
        .body(r#"{"version": "v3"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(write.status().as_u16(), 503, "writes are refused");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let child = rollwatch.0.as_mut().unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the step: {}",
        world.output()
    );
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(pid, second);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "a second signal quits at once: {}",
            world.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(code), "{}", world.output());
    rollwatch.0 = None;
    world.release("rollback-app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_quits_at_once_with_143() {
    a_second_signal_quits_at_once_while_a_step_is_held(libc::SIGTERM, 143).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_quits_at_once_with_130() {
    a_second_signal_quits_at_once_while_a_step_is_held(libc::SIGINT, 130).await;
}
