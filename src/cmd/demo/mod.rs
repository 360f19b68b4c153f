//! `rollwatch demo`: the whole story in under a minute with nothing
//! installed. A stand-in service on loopback runs v1.4.2, a scripted
//! deployment of v1.5.0 breaks it, and rollwatch (the real runtime, store and
//! procedure, with a policy in seconds instead of minutes) decides, rolls
//! back, verifies, watches and resolves; then the incident report.

mod service;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::act::actor::Actor;
use crate::cmd::{Failure, runtime_error};
use crate::console::say;
use crate::engine::time_text;
use crate::runtime::target;
use crate::store::{IncidentState, Store};
use crate::telemetry::Telemetry;

use service::{BAD, GOOD, StandIn};

/// How long the demo waits for the story to end before it gives up.
const STORY_LIMIT: Duration = Duration::from_secs(80);

fn policy(url: &str, dir: &Path) -> String {
    let version_file = dir.join("deployed-version");
    format!(
        r#"# The demo's policy: production's rules, in seconds instead of minutes.
[target]
service = "checkout"
environment = "demo"

[evaluation]
interval = "1s"
recent_deploy_window = "1h"
cooldown = "1m"
resolve_after = "10s"

[baseline]
quantile = "p95"
window = "30s"

[actions]
immediate = "rollback"
consider = "rollback"

[stabilization]
duration = "12s"

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
min_requests = 100
for = "4s"

[[rule]]
name = "latency-degradation"
tier = "consider"
signal = "latency-degradation"
threshold = "50%"
watch_above = "20%"
for = "4s"

[procedure]
backup_budget = "30s"

[[procedure.step]]
name = "create-backup"
stage = "backup"
command = ["sh", "-c", "echo 'snapshotting the orders database'; sleep 1; echo 'backup done'"]
timeout = "20s"

[[procedure.step]]
name = "rollback-application"
stage = "application"
command = ["sh", "-c", "echo \"deploying $ROLLWATCH_TO_VERSION\"; sleep 1; echo \"$ROLLWATCH_TO_VERSION\" > '{version_file}'; echo done"]
timeout = "20s"

[[procedure.step]]
name = "smoke-tests"
stage = "verification"
command = ["sh", "-c", "echo 'checkout smoke tests: 12 passed'"]
timeout = "20s"

[[procedure.step]]
name = "restart-services"
stage = "recovery"
command = ["sh", "-c", "echo 'restarting checkout'"]
timeout = "20s"
"#,
        version_file = version_file.display()
    )
}

fn narrate(line: &str) {
    say(&format!("{} [demo] {line}", time_text(Utc::now())));
}

pub async fn run() -> Result<(), Failure> {
    let dir = std::env::temp_dir().join(format!(
        "rollwatch-demo-{}-{}",
        std::process::id(),
        Utc::now().timestamp()
    ));
    std::fs::create_dir_all(&dir).map_err(|e| runtime_error(format!("{}: {e}", dir.display())))?;
    let version_file = dir.join("deployed-version");
    let standin = StandIn::start(version_file.clone())
        .await
        .map_err(|e| runtime_error(format!("starting the stand-in service: {e}")))?;
    let policy_path = dir.join("demo.toml");
    std::fs::write(&policy_path, policy(&standin.url(), &dir)).map_err(runtime_error)?;
    let target = crate::cmd::load_target(&policy_path)?;
    let db = format!("sqlite://{}", dir.join("demo.db").display());
    let store = Store::open(&db).await.map_err(runtime_error)?;
    narrate(&format!(
        "checkout {GOOD} is serving on {} (400 requests/s, 0.2% errors, p95 120 ms)",
        standin.url()
    ));
    narrate(&format!(
        "rollwatch watches it with {} (1 s polls; rules from the production policy: error rate > 5%, latency > +50%, confirmed over 4 s)",
        policy_path.display()
    ));
    let name = "checkout/demo".to_string();
    let delivery = Arc::new(tokio::sync::Notify::new());
    let actor = Actor::new(store.clone(), Arc::new(target.clone()), Arc::new(say))
        .with_delivery(Arc::clone(&delivery));
    let shutdown = CancellationToken::new();
    let worker = crate::notify::deliver::Worker::for_target(
        store.clone(),
        name.clone(),
        target.notify.clone(),
        delivery,
    );
    let worker_task = tokio::spawn(worker.run(shutdown.clone()));
    let loop_shutdown = shutdown.clone();
    let watching = tokio::spawn(async move {
        target::run_target(
            target,
            None,
            Telemetry::new(),
            loop_shutdown,
            |decision| say(&decision.line(&name, false)),
            Some(actor),
            target::Wiring::default(),
        )
        .await
    });
    // What the service is doing, every 3 s, beside what rollwatch makes of it.
    let narrated = version_file.clone();
    let narrator = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3));
        loop {
            tick.tick().await;
            narrate(&StandIn::describe(&narrated));
        }
    });
    tokio::time::sleep(Duration::from_secs(8)).await;
    narrate(&format!(
        "deploying {BAD}: it has a bug; errors rise to 12% and p95 latency to 450 ms"
    ));
    std::fs::write(&version_file, BAD).map_err(runtime_error)?;
    let started = std::time::Instant::now();
    let ended = loop {
        if watching.is_finished() {
            break None;
        }
        let incidents = store.list_incidents(5).await.map_err(runtime_error)?;
        if let Some(incident) = incidents.iter().find(|i| {
            matches!(i.state, IncidentState::Resolved { .. })
                || i.state
                    == (IncidentState::Active {
                        phase: crate::store::IncidentPhase::Escalated,
                    })
        }) {
            break Some(incident.id);
        }
        if started.elapsed() > STORY_LIMIT {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    narrator.abort();
    shutdown.cancel();
    let _ = worker_task.await;
    match watching.await {
        Ok(Err(error)) => return Err(Failure::Runtime(error)),
        Err(join) => return Err(runtime_error(format!("the watching loop failed: {join}"))),
        Ok(Ok(_)) => {}
    }
    let Some(id) = ended else {
        return Err(runtime_error(format!(
            "the demo did not reach a resolved incident within {}s; its files are in {}",
            STORY_LIMIT.as_secs(),
            dir.display()
        )));
    };
    report(&store, id, &dir).await?;
    drop(standin);
    Ok(())
}

async fn report(store: &Store, id: i64, dir: &Path) -> Result<(), Failure> {
    let Some(timeline) = store.incident(id).await.map_err(runtime_error)? else {
        return Err(runtime_error(format!("incident {id} vanished")));
    };
    let samples = store.samples(id).await.map_err(runtime_error)?;
    let chart: PathBuf = dir.join(format!("incident-{id}.svg"));
    let chart_name = chart.display().to_string();
    let mut input = crate::report::ReportInput {
        timeline: &timeline,
        samples: &samples,
        chart_file: None,
    };
    if let Ok(svg) = crate::report::chart_svg(&input)
        && std::fs::write(&chart, svg).is_ok()
    {
        input.chart_file = Some(&chart_name);
    }
    narrate(&format!(
        "incident {id} is over; its report (`rollwatch incidents report {id} --db sqlite://{}/demo.db`):",
        dir.display()
    ));
    println!();
    print!("{}", crate::report::markdown(&input));
    Ok(())
}
