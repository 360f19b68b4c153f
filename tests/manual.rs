//! The commands a human runs by hand, end to end through the real binary:
//! `rollback` (dry run, full, partial, failing, refused while another rollback
//! runs), `drill` (passing, failing, a hung step, a step printing 100 MB), and
//! `incidents list|show|report` on what they stored. Every procedure step is a
//! test script that appends one line per call to `calls.log`, with the
//! `ROLLWATCH_*` variables it was given, so executions are counted and their
//! environment is checked.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use chrono::Utc;
use common::service::TestService;
use rollwatch::store::{
    IncidentKind, IncidentOutcome, IncidentPhase, IncidentRecord, IncidentState, NewIncident,
    NotificationKind, StepOutcome, StepStage, Store,
};

/// A procedure step for tests: records the call and its variables (tab
/// separated, `<unset>` for a missing one), fails when `fail-NAME` exists.
const STEP_SCRIPT: &str = r#"#!/bin/sh
name="$1"
dir="$(dirname "$0")"
printf '%s\tSERVICE=%s\tENVIRONMENT=%s\tCOMPONENT=%s\tINCIDENT_ID=%s\tREASON=%s\tFROM_VERSION=%s\tTO_VERSION=%s\tDRY_RUN=%s\n' \
  "$name" "${ROLLWATCH_SERVICE-<unset>}" "${ROLLWATCH_ENVIRONMENT-<unset>}" \
  "${ROLLWATCH_COMPONENT-<unset>}" "${ROLLWATCH_INCIDENT_ID-<unset>}" \
  "${ROLLWATCH_REASON-<unset>}" "${ROLLWATCH_FROM_VERSION-<unset>}" \
  "${ROLLWATCH_TO_VERSION-<unset>}" "${ROLLWATCH_DRY_RUN-<unset>}" >> "$dir/calls.log"
if [ -e "$dir/fail-$name" ]; then echo "failing $name on purpose" >&2; exit 3; fi
echo "$name done"
"#;

/// Longest any one rollwatch invocation may take before the test gives up.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

/// One `[[procedure.step]]`. In `command`, `{script}` is the step script and
/// `{dir}` the test's directory.
#[derive(Clone)]
struct StepDef {
    name: &'static str,
    stage: &'static str,
    command: Vec<String>,
    timeout: &'static str,
    component: Option<&'static str>,
    shell: bool,
}

/// A step that runs the recording script.
fn script(name: &'static str, stage: &'static str) -> StepDef {
    StepDef {
        name,
        stage,
        command: vec!["{script}".into(), name.into()],
        timeout: "20s",
        component: None,
        shell: false,
    }
}

/// A step that runs `text` with `sh -c`.
fn shell(name: &'static str, stage: &'static str, text: &str, timeout: &'static str) -> StepDef {
    StepDef {
        name,
        stage,
        command: vec![text.into()],
        timeout,
        component: None,
        shell: true,
    }
}

/// The runbook's procedure, every step a recording script.
fn runbook() -> Vec<StepDef> {
    vec![
        script("create-backup", "backup"),
        script("rollback-app", "application"),
        script("smoke-tests", "verification"),
        script("restart-services", "recovery"),
        script("restore-backup", "recovery"),
    ]
}

/// The runbook with its application step replaced.
fn runbook_with_application(step: StepDef) -> Vec<StepDef> {
    runbook()
        .into_iter()
        .map(|s| {
            if s.stage == "application" {
                step.clone()
            } else {
                s
            }
        })
        .collect()
}

/// A TOML basic string.
fn toml_str(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Staging-like: 1 s polls of the test service's metrics, a health probe, a
/// 3 s stabilization watch, and `steps` as the procedure.
fn policy_text(url: &str, dir: &Path, script: &Path, steps: &[StepDef]) -> String {
    let mut text = format!(
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
duration = "3s"

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

[procedure]
backup_budget = "1m"
database_rollback = false
"#
    );
    for step in steps {
        let command: Vec<String> = step
            .command
            .iter()
            .map(|arg| {
                toml_str(
                    &arg.replace("{script}", &script.display().to_string())
                        .replace("{dir}", &dir.display().to_string()),
                )
            })
            .collect();
        text.push_str(&format!(
            "\n[[procedure.step]]\nname = {}\nstage = {}\ncommand = [{}]\ntimeout = {}\n",
            toml_str(step.name),
            toml_str(step.stage),
            command.join(", "),
            toml_str(step.timeout)
        ));
        if let Some(component) = step.component {
            text.push_str(&format!("component = {}\n", toml_str(component)));
        }
        if step.shell {
            text.push_str("shell = true\n");
        }
    }
    text
}

/// What one rollwatch invocation did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Ran {
    fn both(&self) -> String {
        format!(
            "exit {:?} after {:.1}s\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.took.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

/// Runs the real binary to its end (killed, and the test failed, after
/// `COMMAND_DEADLINE`).
async fn rollwatch(args: Vec<String>) -> Ran {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut child = Command::new(cargo_bin("rollwatch"))
            .args(&args)
            .env("ROLLWATCH_OPERATOR", "test-operator")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let read = |stream: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut text = String::new();
                let mut stream = stream;
                let _ = std::io::Read::read_to_string(&mut stream, &mut text);
                text
            })
        };
        let stdout = read(Box::new(child.stdout.take().unwrap()));
        let stderr = read(Box::new(child.stderr.take().unwrap()));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > COMMAND_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let ran = Ran {
            code: status.and_then(|s| s.code()),
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
            took: started.elapsed(),
        };
        assert!(
            status.is_some(),
            "rollwatch {args:?} did not end within {COMMAND_DEADLINE:?}\n{}",
            ran.both()
        );
        ran
    })
    .await
    .unwrap()
}

/// One call of the step script.
#[derive(Debug)]
struct Call {
    name: String,
    vars: HashMap<String, String>,
}

impl Call {
    fn var(&self, key: &str) -> &str {
        self.vars
            .get(key)
            .map(String::as_str)
            .unwrap_or("<not recorded>")
    }
}

/// One test's world: a directory with the step script and the policy, a
/// stand-in service, and a SQLite database.
struct World {
    dir: tempfile::TempDir,
    _service: TestService,
    policy: PathBuf,
    db: String,
}

impl World {
    async fn new(steps: &[StepDef]) -> World {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("step.sh");
        common::process::write_script(&script, STEP_SCRIPT);
        let service = TestService::start().await;
        let policy = dir.path().join("staging.toml");
        std::fs::write(
            &policy,
            policy_text(&service.url(), dir.path(), &script, steps),
        )
        .unwrap();
        let db = format!("sqlite://{}", dir.path().join("rollwatch.db").display());
        let world = World {
            dir,
            _service: service,
            policy,
            db,
        };
        let check = rollwatch(vec!["check".into(), world.policy_arg()]).await;
        assert_eq!(check.code, Some(0), "the test's policy: {}", check.both());
        world
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn policy_arg(&self) -> String {
        self.policy.display().to_string()
    }

    fn fail(&self, step: &str) {
        std::fs::write(self.path(&format!("fail-{step}")), "").unwrap();
    }

    async fn rollback(&self, extra: &[&str]) -> Ran {
        let mut args = vec![
            "rollback".to_string(),
            "--policy".into(),
            self.policy_arg(),
            "--db".into(),
            self.db.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        rollwatch(args).await
    }

    async fn drill(&self) -> Ran {
        rollwatch(vec![
            "drill".into(),
            "--policy".into(),
            self.policy_arg(),
            "--db".into(),
            self.db.clone(),
        ])
        .await
    }

    async fn incidents(&self, extra: &[&str]) -> Ran {
        let mut args = vec!["incidents".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["--db".to_string(), self.db.clone()]);
        rollwatch(args).await
    }

    fn calls(&self) -> Vec<Call> {
        std::fs::read_to_string(self.path("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(|line| {
                let mut fields = line.split('\t');
                let name = fields.next().unwrap_or_default().to_string();
                let vars = fields
                    .filter_map(|f| f.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                Call { name, vars }
            })
            .collect()
    }

    fn names(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.name).collect()
    }

    fn count(&self, step: &str) -> usize {
        self.calls().iter().filter(|c| c.name == step).count()
    }

    async fn store(&self) -> Store {
        Store::open(&self.db).await.unwrap()
    }

    async fn stored_incidents(&self) -> Vec<IncidentRecord> {
        let store = self.store().await;
        let incidents = store.list_incidents(100).await.unwrap();
        store.close().await;
        incidents
    }

    /// The one incident the store holds.
    async fn only_incident(&self) -> IncidentRecord {
        let mut incidents = self.stored_incidents().await;
        assert_eq!(incidents.len(), 1, "one incident: {incidents:#?}");
        incidents.remove(0)
    }
}

fn outcome(incident: &IncidentRecord) -> Option<IncidentOutcome> {
    match incident.state {
        IncidentState::Resolved { outcome, .. } => Some(outcome),
        IncidentState::Active { .. } => None,
    }
}

/// The index of the first line of `text` that contains every one of `parts`.
fn line_with(text: &str, parts: &[&str]) -> Option<usize> {
    text.lines()
        .position(|line| parts.iter().all(|p| line.contains(p)))
}

/// Gone, or a zombie nobody reaped yet (it runs no more either way).
fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_the_plan_in_runbook_order_and_runs_and_stores_nothing() {
    let world = World::new(&runbook()).await;
    let ran = world
        .rollback(&["--reason", "bad deploy", "--to", "v1.2.3", "--dry-run"])
        .await;
    assert_eq!(ran.code, Some(0), "{}", ran.both());
    let out = &ran.stdout;
    assert!(
        out.contains("DRY-RUN rollback of web/staging") && out.contains("-> v1.2.3"),
        "{}",
        ran.both()
    );
    assert!(out.contains("nothing is run or stored"), "{}", ran.both());
    let script = world.path("step.sh").display().to_string();
    let argv = |name: &str| format!("{script} {name}");
    let plan = [
        line_with(out, &["notify", "Rolling back", "bad deploy"]),
        line_with(
            out,
            &["backup", "create-backup", &argv("create-backup"), "20s"],
        ),
        line_with(out, &["application", "rollback-app", &argv("rollback-app")]),
        line_with(out, &["verification", "health-probe"]),
        line_with(out, &["verification", "smoke-tests", &argv("smoke-tests")]),
        line_with(out, &["watch", "3s"]),
        line_with(
            out,
            &["on failure", "restart-services", &argv("restart-services")],
        ),
        line_with(
            out,
            &["on failure", "restore-backup", &argv("restore-backup")],
        ),
    ];
    assert!(
        plan.iter().all(Option::is_some),
        "every stage of the plan is printed: {plan:?}\n{}",
        ran.both()
    );
    assert!(
        plan.windows(2).all(|w| w[0] < w[1]),
        "in the runbook's order: {plan:?}\n{}",
        ran.both()
    );
    assert!(
        !world.path("calls.log").exists(),
        "no step ran: {:?}",
        world.names()
    );
    let list = world.incidents(&["list"]).await;
    assert_eq!(list.code, Some(0), "{}", list.both());
    assert!(list.stdout.contains("no incidents"), "{}", list.both());
    assert!(world.stored_incidents().await.is_empty());
    let store = world.store().await;
    let pending = store
        .due_notifications(Utc::now() + chrono::TimeDelta::days(1), 100)
        .await
        .unwrap();
    assert!(pending.is_empty(), "no notice is queued: {pending:#?}");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_rollback_runs_the_procedure_with_the_reason_and_resolves_stable() {
    let world = World::new(&runbook()).await;
    let ran = world
        .rollback(&["--reason", "bad deploy", "--to", "v1.2.3"])
        .await;
    assert_eq!(ran.code, Some(0), "{}", ran.both());
    assert!(
        ran.stdout.contains("rolled back, verified and stable"),
        "{}",
        ran.both()
    );
    let incident = world.only_incident().await;
    assert_eq!(
        world.names(),
        ["create-backup", "rollback-app", "smoke-tests"],
        "{}",
        ran.both()
    );
    for call in world.calls() {
        assert_eq!(call.var("REASON"), "bad deploy", "{call:?}");
        assert_eq!(call.var("TO_VERSION"), "v1.2.3", "{call:?}");
        assert_eq!(call.var("DRY_RUN"), "0", "{call:?}");
        assert_eq!(call.var("INCIDENT_ID"), incident.id.to_string(), "{call:?}");
        assert_eq!(call.var("SERVICE"), "web", "{call:?}");
        assert_eq!(call.var("ENVIRONMENT"), "staging", "{call:?}");
        assert_eq!(call.var("COMPONENT"), "", "{call:?}");
    }
    assert_eq!(incident.kind, IncidentKind::Declared);
    assert_eq!(incident.reason, "bad deploy");
    assert_eq!(incident.target, "web/staging");
    assert_eq!(incident.to_version.as_deref(), Some("v1.2.3"));
    assert_eq!(
        outcome(&incident),
        Some(IncidentOutcome::Stable),
        "{incident:#?}\n{}",
        ran.both()
    );
    assert!(
        ran.stdout
            .contains(&format!("incident {}: rolled back", incident.id)),
        "{}",
        ran.both()
    );
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
    assert!(
        steps.iter().all(|s| s.outcome == StepOutcome::Succeeded),
        "{steps:#?}"
    );
    assert!(steps[1].stdout.contains("rollback-app done"), "{steps:#?}");
    let notifications = store.notifications(incident.id).await.unwrap();
    let notice = notifications
        .iter()
        .find(|n| n.subject == "Rolling back staging web due to bad deploy")
        .unwrap_or_else(|| panic!("the team is told first: {notifications:#?}"));
    assert_eq!(notice.kind, NotificationKind::Notice);
    assert!(
        notice.created_at <= steps[0].started_at,
        "notice at {} before the first step at {}",
        notice.created_at,
        steps[0].started_at
    );
    let decisions = store.decisions(incident.id).await.unwrap();
    assert!(
        decisions
            .iter()
            .any(|d| d.action.as_str() == "rollback" && d.explanation.contains("bad deploy")),
        "the human's decision is kept with its reason: {decisions:#?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_rollback_runs_its_component_and_the_shared_steps_only() {
    let component = |name, component| StepDef {
        component: Some(component),
        ..script(name, "application")
    };
    let steps = vec![
        script("create-backup", "backup"),
        script("rollback-app", "application"),
        component("rollback-frontend", "frontend"),
        component("rollback-backend", "backend"),
        script("smoke-tests", "verification"),
        script("restart-services", "recovery"),
        script("restore-backup", "recovery"),
    ];
    let world = World::new(&steps).await;

    let unknown = world
        .rollback(&["--reason", "bad css", "--component", "mobile"])
        .await;
    assert_eq!(unknown.code, Some(2), "{}", unknown.both());
    assert!(
        unknown.stderr.contains("\"mobile\"")
            && unknown.stderr.contains("backend")
            && unknown.stderr.contains("frontend"),
        "names the known components: {}",
        unknown.both()
    );
    assert!(world.calls().is_empty(), "{:?}", world.names());

    let ran = world
        .rollback(&["--reason", "bad css", "--component", "frontend"])
        .await;
    assert_eq!(ran.code, Some(0), "{}", ran.both());
    assert_eq!(
        world.names(),
        ["create-backup", "rollback-frontend", "smoke-tests"],
        "{}",
        ran.both()
    );
    assert!(
        world
            .calls()
            .iter()
            .all(|c| c.var("COMPONENT") == "frontend"),
        "{:#?}",
        world.calls()
    );
    let incident = world.only_incident().await;
    assert_eq!(incident.component.as_deref(), Some("frontend"));
    assert_eq!(outcome(&incident), Some(IncidentOutcome::Stable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rollback_step_runs_recovery_once_and_escalates() {
    let world = World::new(&runbook()).await;
    world.fail("rollback-app");
    let ran = world.rollback(&["--reason", "bad deploy"]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.both());
    assert!(ran.stderr.contains("ESCALATED"), "{}", ran.both());
    assert_eq!(
        world.names(),
        [
            "create-backup",
            "rollback-app",
            "restart-services",
            "restore-backup"
        ],
        "recovery once each, no verification after a failed rollback\n{}",
        ran.both()
    );
    let incident = world.only_incident().await;
    assert_eq!(
        incident.state,
        IncidentState::Active {
            phase: IncidentPhase::Escalated
        },
        "{}",
        ran.both()
    );
    let store = world.store().await;
    let steps = store.steps(incident.id).await.unwrap();
    let failed = steps.iter().find(|s| s.name == "rollback-app").unwrap();
    assert_eq!(failed.outcome, StepOutcome::Failed, "{steps:#?}");
    assert_eq!(failed.exit_code, Some(3));
    assert!(
        failed.stderr.contains("failing rollback-app on purpose"),
        "{failed:#?}"
    );
    assert!(
        steps
            .iter()
            .filter(|s| s.stage == StepStage::Recovery)
            .all(|s| s.outcome == StepOutcome::Succeeded),
        "{steps:#?}"
    );
    let notifications = store.notifications(incident.id).await.unwrap();
    assert!(
        notifications
            .iter()
            .any(|n| n.kind == NotificationKind::Escalation),
        "the escalation contacts are told: {notifications:#?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_refused_while_another_one_runs() {
    let world = World::new(&runbook()).await;
    let running = stored_incident(&world, IncidentPhase::RollingBack).await;

    let ran = world.rollback(&["--reason", "bad deploy"]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.both());
    assert!(
        ran.stderr.contains(&format!("incident {running}")),
        "names the running incident: {}",
        ran.both()
    );
    assert!(world.calls().is_empty(), "{:?}", world.names());
    let incident = world.only_incident().await;
    assert_eq!(incident.id, running);
    assert_eq!(
        incident.state,
        IncidentState::Active {
            phase: IncidentPhase::RollingBack
        }
    );
    let store = world.store().await;
    assert!(store.steps(running).await.unwrap().is_empty());
    assert!(store.decisions(running).await.unwrap().is_empty());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_drill_is_recorded_as_passed() {
    let world = World::new(&runbook()).await;
    let ran = world.drill().await;
    assert_eq!(ran.code, Some(0), "{}", ran.both());
    let incident = world.only_incident().await;
    assert!(
        ran.stdout
            .contains(&format!("DRILL {} PASSED in", incident.id)),
        "{}",
        ran.both()
    );
    assert_eq!(incident.kind, IncidentKind::Drill);
    assert_eq!(
        outcome(&incident),
        Some(IncidentOutcome::DrillPassed),
        "{incident:#?}"
    );
    assert_eq!(
        world.names(),
        ["create-backup", "rollback-app", "smoke-tests"]
    );
    assert!(
        world
            .calls()
            .iter()
            .all(|c| c.var("INCIDENT_ID") == incident.id.to_string() && c.var("DRY_RUN") == "0"),
        "{:#?}",
        world.calls()
    );
    let store = world.store().await;
    let steps = store.steps(incident.id).await.unwrap();
    assert!(
        steps.iter().any(|s| s.name == "health-probe"),
        "a drill verifies with the health probe too: {steps:#?}"
    );
    assert!(steps.iter().all(|s| s.outcome == StepOutcome::Succeeded));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_drill_is_recorded_as_failed_and_recovers() {
    let world = World::new(&runbook()).await;
    world.fail("smoke-tests");
    let ran = world.drill().await;
    assert_eq!(ran.code, Some(1), "{}", ran.both());
    let incident = world.only_incident().await;
    assert!(
        ran.stdout
            .contains(&format!("DRILL {} FAILED", incident.id)),
        "{}",
        ran.both()
    );
    assert_eq!(incident.kind, IncidentKind::Drill);
    assert_eq!(
        outcome(&incident),
        Some(IncidentOutcome::DrillFailed),
        "{incident:#?}"
    );
    assert_eq!(world.count("restart-services"), 1, "{:?}", world.names());
    assert_eq!(world.count("restore-backup"), 1, "{:?}", world.names());
    let store = world.store().await;
    let steps = store.steps(incident.id).await.unwrap();
    let smoke = steps.iter().find(|s| s.name == "smoke-tests").unwrap();
    assert_eq!(smoke.outcome, StepOutcome::Failed);
    assert_eq!(smoke.exit_code, Some(3));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_step_times_out_and_its_whole_process_group_is_killed() {
    // The backgrounded child ignores SIGTERM: only the SIGKILL after the
    // grace period ends it. The shell itself sleeps "forever".
    let hung = shell(
        "rollback-app",
        "application",
        "(trap '' TERM; exec sleep 300) & echo $! > {dir}/child.pid; sleep 300",
        "2s",
    );
    let world = World::new(&runbook_with_application(hung)).await;
    let ran = world.drill().await;
    assert_eq!(ran.code, Some(1), "{}", ran.both());
    assert!(
        ran.took < Duration::from_secs(15),
        "the timeout ended it: {}",
        ran.both()
    );
    let incident = world.only_incident().await;
    assert_eq!(outcome(&incident), Some(IncidentOutcome::DrillFailed));
    let store = world.store().await;
    let steps = store.steps(incident.id).await.unwrap();
    store.close().await;
    let step = steps.iter().find(|s| s.name == "rollback-app").unwrap();
    assert_eq!(step.outcome, StepOutcome::TimedOut, "{steps:#?}");
    assert!(
        step.detail
            .as_deref()
            .unwrap_or_default()
            .contains("timed out"),
        "{step:#?}"
    );
    assert_eq!(world.count("restart-services"), 1, "{:?}", world.names());
    assert_eq!(world.count("restore-backup"), 1, "{:?}", world.names());
    let child: i32 = std::fs::read_to_string(world.path("child.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !process_gone(child) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        process_gone(child),
        "the step's background child {child} outlived its timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_printing_100_mb_keeps_its_tail() {
    let loud = shell(
        "rollback-app",
        "application",
        r"head -c 100000000 /dev/zero | tr '\0' x; echo THE-LAST-LINE",
        "60s",
    );
    let world = World::new(&runbook_with_application(loud)).await;
    // The peak resident memory of this drill is a figure, measured by
    // `cargo bench --bench step_output` (target: under 64 MiB), not asserted
    // here on a shared machine.
    let ran = world.drill().await;
    assert_eq!(ran.code, Some(0), "the drill passed\n{}", ran.both());
    let incident = world.only_incident().await;
    let store = world.store().await;
    let steps = store.steps(incident.id).await.unwrap();
    store.close().await;
    let step = steps.iter().find(|s| s.name == "rollback-app").unwrap();
    assert_eq!(step.outcome, StepOutcome::Succeeded, "{:?}", step.detail);
    let kept = step.stdout.len();
    assert!(
        (60 * 1024..=64 * 1024 + 64).contains(&kept),
        "the last 64 KiB are kept, not {kept} bytes"
    );
    assert!(
        step.stdout.ends_with("xxxxTHE-LAST-LINE\n"),
        "the tail is kept: ...{:?}",
        &step.stdout[kept.saturating_sub(40)..]
    );
    let detail = step.detail.as_deref().unwrap_or_default();
    assert!(detail.contains("truncated"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_list_show_and_report_a_manual_rollback() {
    let world = World::new(&runbook()).await;
    let ran = world
        .rollback(&["--reason", "bad deploy", "--to", "v1.2.3"])
        .await;
    assert_eq!(ran.code, Some(0), "{}", ran.both());
    let incident = world.only_incident().await;
    let id = incident.id.to_string();

    let list = world.incidents(&["list"]).await;
    assert_eq!(list.code, Some(0), "{}", list.both());
    assert!(
        list.stdout.lines().any(|line| {
            line.trim_start().starts_with(&format!("{id} "))
                && [
                    "web/staging",
                    "declared",
                    "manual-rollback",
                    "resolved (stable)",
                ]
                .iter()
                .all(|w| line.contains(w))
        }),
        "{}",
        list.both()
    );

    let show = world.incidents(&["show", &id]).await;
    assert_eq!(show.code, Some(0), "{}", show.both());
    assert!(
        show.stdout.contains("reason: bad deploy"),
        "{}",
        show.both()
    );
    for step in [
        "create-backup",
        "rollback-app",
        "health-probe",
        "smoke-tests",
    ] {
        assert!(
            line_with(&show.stdout, &["step", step, "succeeded"]).is_some(),
            "step {step} with its outcome: {}",
            show.both()
        );
    }

    let chart = world.path("x.svg");
    let report = world
        .incidents(&["report", &id, "--chart", &chart.display().to_string()])
        .await;
    assert_eq!(report.code, Some(0), "{}", report.both());
    for section in ["## Timeline", "## Actions", "## Stabilization watch"] {
        assert!(report.stdout.contains(section), "{}", report.both());
    }
    for step in ["create-backup", "rollback-app", "smoke-tests"] {
        assert!(report.stdout.contains(step), "{}", report.both());
    }
    assert!(
        report.stderr.contains("chart written"),
        "the stabilization watch sampled the target, so there is a chart: {}",
        report.both()
    );
    let svg = std::fs::read_to_string(&chart).unwrap();
    assert!(
        svg.trim_start().starts_with("<svg"),
        "{}",
        svg.chars().take(200).collect::<String>()
    );

    for command in ["show", "report"] {
        let unknown = world.incidents(&[command, "999"]).await;
        assert_eq!(unknown.code, Some(1), "{}", unknown.both());
        assert!(
            unknown.stderr.contains("no incident 999"),
            "{}",
            unknown.both()
        );
    }
}

/// Opens an incident of web/staging through the store, as `run` would have.
async fn stored_incident(world: &World, phase: IncidentPhase) -> i64 {
    let store = world.store().await;
    let now = Utc::now();
    let id = store
        .open_incident(&NewIncident {
            target: "web/staging".into(),
            kind: IncidentKind::Rule,
            tier: rollwatch::engine::policy::Tier::Consider,
            rule: "error-rate".into(),
            reason: String::new(),
            component: None,
            from_version: Some("v2.0.0".into()),
            to_version: Some("v1.0.0".into()),
            opened_at: now,
            deadline: None,
        })
        .await
        .unwrap();
    if phase != IncidentPhase::Open {
        store
            .set_incident_phase(id, phase, now, None)
            .await
            .unwrap();
    }
    store.close().await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_rollback_of_an_open_incident_does_what_the_human_asked() {
    let mut steps = runbook();
    steps.push(StepDef {
        component: Some("frontend"),
        ..script("rollback-frontend", "application")
    });
    let world = World::new(&steps).await;
    let open = stored_incident(&world, IncidentPhase::Open).await;
    let ran = world
        .rollback(&[
            "--reason",
            "bad deploy",
            "--to",
            "v1.2.3",
            "--component",
            "frontend",
        ])
        .await;
    // An open incident is a page waiting for its answer, not a rollback that
    // runs: the human's rollback is that answer, and it runs (README: refused
    // only while another rollback runs). Exit codes (README.md#commands): 0 stable; a
    // refusal would be 1 and a panic 101, neither of which is what was asked.
    assert!(!ran.stderr.contains("panicked"), "{}", ran.both());
    assert_eq!(ran.code, Some(0), "{}", ran.both());
    assert_eq!(
        world.names(),
        ["create-backup", "rollback-frontend", "smoke-tests"],
        "only the frontend was asked for\n{}",
        ran.both()
    );
    for call in world.calls() {
        assert_eq!(call.var("COMPONENT"), "frontend", "{call:?}");
        assert_eq!(call.var("TO_VERSION"), "v1.2.3", "{call:?}");
        assert_eq!(call.var("REASON"), "bad deploy", "{call:?}");
    }
    let incident = world.only_incident().await;
    assert_eq!(incident.id, open, "the open incident is the one answered");
    assert_eq!(incident.component.as_deref(), Some("frontend"));
    assert_eq!(incident.to_version.as_deref(), Some("v1.2.3"));
    assert_eq!(outcome(&incident), Some(IncidentOutcome::Stable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_can_retry_a_rollback_after_it_escalated() {
    let world = World::new(&runbook()).await;
    world.fail("rollback-app");
    let first = world.rollback(&["--reason", "bad deploy"]).await;
    assert_eq!(first.code, Some(1), "{}", first.both());
    std::fs::remove_file(world.path("fail-rollback-app")).unwrap();
    let retry = world
        .rollback(&["--reason", "retry: the rollback script is fixed"])
        .await;
    assert_eq!(
        world.count("rollback-app"),
        2,
        "the retry runs the rollback again: {:?}\n{}",
        world.names(),
        retry.both()
    );
    assert_eq!(retry.code, Some(0), "{}", retry.both());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drill_is_refused_while_a_rollback_runs() {
    let world = World::new(&runbook()).await;
    stored_incident(&world, IncidentPhase::RollingBack).await;
    let ran = world.drill().await;
    assert_eq!(ran.code, Some(1), "{}", ran.both());
    assert!(
        world.calls().is_empty(),
        "no rollback script runs beside the real rollback: {:?}",
        world.names()
    );
}

#[test]
fn a_drill_of_production_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("rollwatch"))
        .args(["drill", "--policy", "policies/production.toml", "--db"])
        .arg(dir.path().join("rollwatch.db"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("drills are for staging"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
}

/// Records a deployment of web/staging, as `run` would have.
async fn stored_deployment(world: &World, rollback: bool, age: chrono::TimeDelta) {
    let store = world.store().await;
    store
        .record_deployment(&rollwatch::store::NewDeployment {
            target: "web/staging".into(),
            version: Some("v2.0.0".into()),
            previous: Some("v1.0.0".into()),
            migrations: Vec::new(),
            at: Utc::now() - age,
            rollback,
            source: if rollback {
                rollwatch::store::DeploymentSource::Rollback
            } else {
                rollwatch::store::DeploymentSource::Observed
            },
        })
        .await
        .unwrap();
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_of_a_rollback_is_refused_even_forced() {
    let world = World::new(&runbook()).await;
    stored_deployment(&world, true, chrono::TimeDelta::hours(2)).await;
    let ran = world.rollback(&["--reason", "bad deploy", "--force"]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.both());
    assert!(
        ran.stderr.contains("rollback-of-rollback"),
        "{}",
        ran.both()
    );
    assert!(world.calls().is_empty(), "{:?}", world.names());
    assert!(world.stored_incidents().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_of_an_old_deployment_needs_force() {
    let world = World::new(&runbook()).await;
    stored_deployment(&world, false, chrono::TimeDelta::hours(25)).await;
    let ran = world.rollback(&["--reason", "bad deploy"]).await;
    assert_eq!(ran.code, Some(1), "{}", ran.both());
    assert!(ran.stderr.contains("no-recent-deploy"), "{}", ran.both());
    assert!(ran.stderr.contains("--force"), "{}", ran.both());
    assert!(world.calls().is_empty(), "{:?}", world.names());
    let forced = world.rollback(&["--reason", "bad deploy", "--force"]).await;
    assert_eq!(forced.code, Some(0), "{}", forced.both());
    let incident = world.only_incident().await;
    assert_eq!(incident.from_version.as_deref(), Some("v2.0.0"));
    assert_eq!(incident.to_version.as_deref(), Some("v1.0.0"));
}
