//! The live commands: `evaluate` (sample, judge, exit with a verdict) and
//! `run --dry-run` (watch until a signal, printing every recommendation).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::cli::{Failure, OutputFormat, load_target};
use crate::engine::decision::Decision;
use crate::engine::policy::Action;
use crate::engine::{RuleStatus, time_text};
use crate::policy::units::{HumanDuration, format_duration};
use crate::runtime::record::Recorder;
use crate::runtime::target;
use crate::telemetry::Telemetry;

/// `evaluate` polls at least this often.
const EVALUATE_MAX_POLL: Duration = Duration::from_secs(2);

#[derive(Serialize)]
struct Report<'a> {
    verdict: &'static str,
    exit_code: u8,
    service: &'a str,
    environment: &'a str,
    policy: &'a str,
    sha256: &'a str,
    sampled_seconds: f64,
    polls: usize,
    polls_with_data: usize,
    decisions: &'a [Decision],
    rules: &'a [RuleStatus],
}

pub async fn evaluate(
    path: &Path,
    sample_for: Option<HumanDuration>,
    format: OutputFormat,
    record: Option<&Path>,
) -> Result<(), Failure> {
    let target = load_target(path)?;
    if target.source.is_none() && target.health.is_none() && target.checks.is_empty() {
        return Err(Failure::Usage(format!(
            "{}: nothing to sample: add a [source], a [health] probe or a [[check]]",
            path.display()
        )));
    }
    let policy = &target.policy;
    let shortest_for = policy
        .rules
        .iter()
        .map(|r| r.hold_for)
        .min()
        .unwrap_or(policy.evaluation.interval);
    let duration = sample_for
        .map_or(shortest_for, |d| d.delta())
        .to_std()
        .unwrap_or(Duration::from_secs(30));
    let every = policy
        .evaluation
        .interval
        .to_std()
        .unwrap_or(EVALUATE_MAX_POLL)
        .min(EVALUATE_MAX_POLL);
    let recorder = open_recorder(record)?;
    eprintln!(
        "sampling {} in {} for {}, every {}...",
        policy.service,
        policy.environment,
        format_duration(chrono::TimeDelta::from_std(duration).unwrap_or_default()),
        format_duration(chrono::TimeDelta::from_std(every).unwrap_or_default())
    );
    let result = target::evaluate(&target, duration, every, recorder)
        .await
        .map_err(Failure::Runtime)?;
    if result.polls_with_data == 0 {
        eprintln!(
            "no data: none of {} polls of {} in {} returned anything to judge ({})",
            result.polls,
            policy.service,
            policy.environment,
            if result.last_problems.is_empty() {
                "no reason given".to_string()
            } else {
                result.last_problems.join("; ")
            }
        );
        return Err(Failure::Exit(1));
    }
    let strongest = result
        .decisions
        .iter()
        .map(|d| d.action)
        .max()
        .unwrap_or(Action::None);
    let (verdict, exit_code) = match strongest {
        Action::Rollback => ("rollback", 4),
        Action::Page | Action::PageThenRollback => ("page", 3),
        Action::Notify | Action::None => ("healthy", 0),
    };
    let rules = result.engine.rule_status();
    let report = Report {
        verdict,
        exit_code,
        service: &policy.service,
        environment: &policy.environment,
        policy: &policy.path,
        sha256: &policy.sha256,
        sampled_seconds: duration.as_secs_f64(),
        polls: result.polls,
        polls_with_data: result.polls_with_data,
        decisions: &result.decisions,
        rules: &rules,
    };
    match format {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string(&report).map_err(|e| Failure::Runtime(e.into()))?
        ),
        OutputFormat::Table => print_report(&report),
    }
    if exit_code == 0 {
        Ok(())
    } else {
        Err(Failure::Exit(exit_code))
    }
}

fn print_report(report: &Report<'_>) {
    println!(
        "{} in {}: sampled {} polls over {}s, {} with data [{} sha256:{}]",
        report.service,
        report.environment,
        report.polls,
        report.sampled_seconds,
        report.polls_with_data,
        report.policy,
        &report.sha256[..12.min(report.sha256.len())]
    );
    for rule in report.rules {
        let state = if rule.firing {
            "FIRING"
        } else if rule.pending_since.is_some() {
            "breaching"
        } else if rule.watching {
            "watch band"
        } else {
            match rule.reading.as_ref().map(|r| r.verdict) {
                Some(crate::engine::signals::Verdict::Inconclusive) | None => "inconclusive",
                _ => "ok",
            }
        };
        let detail = rule
            .reading
            .as_ref()
            .and_then(|r| r.reason.clone())
            .unwrap_or_default();
        println!("  {:<22} {:<12} {detail}", rule.rule, state);
    }
    for decision in report.decisions {
        println!(
            "{} {} [{} {}] {}",
            time_text(decision.at),
            decision.action,
            decision.tier,
            decision.rule,
            decision.explanation
        );
    }
    let meaning = match report.verdict {
        "rollback" => "rollback recommended",
        "page" => "page recommended",
        _ => "healthy: no rule fired",
    };
    println!("verdict: {meaning} (exit {})", report.exit_code);
}

fn open_recorder(path: Option<&Path>) -> Result<Option<Recorder>, Failure> {
    path.map(|p| {
        Recorder::create(p).map_err(|e| {
            Failure::Runtime(anyhow::anyhow!(
                "cannot write the recording {}: {e}",
                p.display()
            ))
        })
    })
    .transpose()
}

pub async fn run(
    paths: &[PathBuf],
    dry_run: bool,
    record: Option<&Path>,
    listen: SocketAddr,
    db: &str,
) -> Result<(), Failure> {
    // Every policy is read and validated before anything starts.
    let targets = paths
        .iter()
        .map(|p| load_target(p))
        .collect::<Result<Vec<_>, _>>()?;
    let store = if dry_run {
        None
    } else {
        for target in &targets {
            if target.procedure.is_none() {
                eprintln!(
                    "warning: {} has no [procedure]: its rollback decisions will fail and escalate; add one, or use --dry-run",
                    target.policy.path
                );
            }
        }
        let store = crate::store::Store::open(db)
            .await
            .map_err(|e| Failure::Runtime(anyhow::anyhow!("{e}")))?;
        eprintln!("incidents are stored in {}", store.database());
        Some(store)
    };
    let recorder = open_recorder(record)?;
    let shutdown = CancellationToken::new();
    let telemetry = Telemetry::new();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(e.into()))?;
    eprintln!("serving /healthz, /metrics and /api/v1 on http://{local}");
    let server_shutdown = shutdown.clone();
    let status = crate::server::status::StatusBoard::default();
    let mut inputs = std::collections::HashMap::new();
    let mut inboxes = std::collections::HashMap::new();
    let mut reload_inboxes = std::collections::HashMap::new();
    let mut watched = Vec::new();
    for (target, path) in targets.iter().zip(paths) {
        let name = format!("{}/{}", target.policy.service, target.policy.environment);
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        inputs.insert(name.clone(), sender);
        inboxes.insert(name.clone(), receiver);
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        reload_inboxes.insert(name.clone(), receiver);
        watched.push(Watched {
            path: path.clone(),
            target: name,
            in_force: target.policy.sha256.clone(),
            last_seen: target.policy.sha256.clone(),
            stamp: file_stamp(path),
            reloads: sender,
        });
    }
    let token = std::env::var("ROLLWATCH_API_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    if token.is_none() {
        eprintln!("the API's write endpoints are off: set ROLLWATCH_API_TOKEN to enable them");
    }
    let app = crate::server::app(crate::server::Api {
        telemetry: Arc::clone(&telemetry),
        status: status.clone(),
        store: store.clone(),
        inputs,
        token,
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { server_shutdown.cancelled().await })
            .await
    });
    // Several replicas on one PostgreSQL: each target is acted on by the
    // replica holding its advisory lock; the others stay passive.
    let mut leaderships = match &store {
        Some(store) if store.backend() == crate::store::Backend::Postgres => {
            let names: Vec<String> = targets
                .iter()
                .map(|t| format!("{}/{}", t.policy.service, t.policy.environment))
                .collect();
            let interval = targets
                .iter()
                .filter_map(|t| t.policy.evaluation.interval.to_std().ok())
                .min()
                .unwrap_or(Duration::from_secs(15));
            crate::ha::lead(store.clone(), &names, interval, shutdown.clone())
        }
        _ => std::collections::HashMap::new(),
    };
    // The outbox worker delivers what the targets' decisions store.
    let delivery = Arc::new(tokio::sync::Notify::new());
    let mut worker = None;
    if let Some(store) = &store {
        let mut routing = crate::notify::deliver::Routing::default();
        for target in &targets {
            let name = format!("{}/{}", target.policy.service, target.policy.environment);
            let owner = leaderships.get(&name).cloned();
            routing.add_owned(name, target.notify.clone(), owner);
        }
        let worker_task =
            crate::notify::deliver::Worker::new(store.clone(), routing, Arc::clone(&delivery))
                .with_telemetry(Arc::clone(&telemetry));
        worker = Some(tokio::spawn(worker_task.run(shutdown.clone())));
    }
    let watcher = tokio::spawn(watch_policies(
        watched,
        Arc::clone(&telemetry),
        shutdown.clone(),
    ));
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let name = format!("{}/{}", target.policy.service, target.policy.environment);
        let path = target.policy.path.clone();
        let sources = describe_sources(&target);
        let mode = if dry_run {
            "dry run: nothing is executed or sent"
        } else {
            "acting: rollbacks run the policy's procedure"
        };
        say(&format!(
            "{} watching {name} with {path} ({sources}); {mode}",
            time_text(chrono::Utc::now())
        ));
        let actor = store.as_ref().map(|store| {
            crate::act::actor::Actor::new(store.clone(), Arc::new(target.clone()), Arc::new(say))
                .with_delivery(Arc::clone(&delivery))
                .with_telemetry(Arc::clone(&telemetry))
        });
        let (policy, notify) = (target.policy.clone(), target.notify.clone());
        let wiring = target::Wiring {
            status: Some(status.clone()),
            events: inboxes.remove(&name),
            reloads: reload_inboxes.remove(&name),
            leadership: leaderships.remove(&name),
        };
        let recorder = recorder.clone();
        let shutdown = shutdown.clone();
        let telemetry = Arc::clone(&telemetry);
        tasks.spawn(async move {
            let result =
                target::run_target(target, recorder, telemetry, shutdown, |decision| {
                    print_decision(&name, decision, dry_run);
                    if dry_run {
                        print_messages(&policy, notify.as_ref(), decision);
                    }
                }, actor, wiring).await;
            if let Err(error) = &result {
                tracing::error!(target_name = %name, error = %format!("{error:#}"), "target stopped");
            }
            result.map(|_| ())
        });
    }
    // A target that stops is a target nobody watches: stop loudly, so the
    // supervisor (systemd, Kubernetes) restarts rollwatch.
    let mut failure: Option<anyhow::Error> = None;
    tokio::select! {
        _ = wait_for_signal() => eprintln!("stopping"),
        Some(joined) = tasks.join_next() => {
            let error = match joined {
                Ok(Ok(())) => anyhow::anyhow!("a target loop ended unexpectedly"),
                Ok(Err(error)) => error,
                Err(join) => anyhow::anyhow!("a target loop crashed: {join}"),
            };
            tracing::error!(error = %format!("{error:#}"), "stopping: a target is no longer watched");
            failure = Some(error);
        }
    }
    shutdown.cancel();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Err(error)) => {
                failure.get_or_insert(error);
            }
            Err(join) if join.is_panic() => {
                failure.get_or_insert(anyhow::anyhow!("a target loop crashed: {join}"));
            }
            _ => {}
        }
    }
    let _ = server.await;
    let _ = watcher.await;
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    match failure {
        Some(error) => Err(Failure::Runtime(error)),
        None => Ok(()),
    }
}

fn describe_sources(target: &crate::policy::Compiled) -> String {
    use crate::sources::config::SourceKind;
    let mut parts = Vec::new();
    match target.source.as_ref().map(|s| &s.kind) {
        Some(SourceKind::Scrape { url, .. }) => parts.push(format!("scrape {url}")),
        Some(SourceKind::Prometheus { url, .. }) => parts.push(format!("prometheus {url}")),
        None => {}
    }
    if let Some(health) = &target.health {
        parts.push(format!("health {}", health.url));
    }
    if !target.checks.is_empty() {
        parts.push(format!("{} checks", target.checks.len()));
    }
    if parts.is_empty() {
        "no sources configured".into()
    } else {
        parts.join(", ")
    }
}

/// One line per decision: what rollwatch does (or, in a dry run, would do), and why.
pub fn print_decision(name: &str, decision: &Decision, dry_run: bool) {
    let (would, mode) = if dry_run {
        ("WOULD ", " DRY-RUN")
    } else {
        ("", "")
    };
    let what = match decision.action {
        Action::Rollback => format!(
            "{would}ROLL BACK {} -> {}",
            decision
                .from_version
                .as_deref()
                .unwrap_or("the current version"),
            decision
                .to_version
                .as_deref()
                .unwrap_or("the previous version")
        ),
        Action::PageThenRollback => format!(
            "{would}PAGE on-call, then roll back at {} unless answered",
            decision
                .deadline
                .map_or_else(|| "the deadline".into(), time_text)
        ),
        Action::Page => format!("{would}PAGE on-call"),
        Action::Notify => format!("{would}NOTIFY the team"),
        Action::None => "no action".into(),
    };
    say(&format!(
        "{} {name}{mode} {what} [{} {}]: {}",
        time_text(decision.at),
        decision.tier,
        decision.rule,
        decision.explanation
    ));
}

/// A policy file `run` watches for edits.
struct Watched {
    path: PathBuf,
    target: String,
    /// The hash of the policy in force.
    in_force: String,
    /// The hash of the file as last read (a rejected edit is reported once).
    last_seen: String,
    /// Size and modification time when last read: unchanged, not read again.
    stamp: Option<(u64, std::time::SystemTime)>,
    reloads: tokio::sync::mpsc::Sender<target::Reload>,
}

/// How often policy files are looked at for edits.
const POLICY_CHECK: Duration = Duration::from_secs(2);

/// Hot reload (SPEC 4): every `POLICY_CHECK`, and at once on SIGHUP, each
/// policy file is read; an edit is validated: valid → the target puts it in
/// force between polls; invalid → rejected, the last good policy stays, the
/// error is logged, counted and shown in status.
async fn watch_policies(
    mut watched: Vec<Watched>,
    telemetry: Arc<Telemetry>,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(POLICY_CHECK);
    loop {
        #[cfg(unix)]
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => false,
            _ = hup => true,
        };
        if forced {
            tracing::info!("SIGHUP: re-reading every policy");
        }
        for entry in &mut watched {
            reload_one(entry, forced, &telemetry).await;
        }
    }
}

/// A file's size and modification time (`None` when it cannot be read).
fn file_stamp(path: &Path) -> Option<(u64, std::time::SystemTime)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

async fn reload_one(entry: &mut Watched, forced: bool, telemetry: &Telemetry) {
    use sha2::Digest;
    // Most checks end here: 1,000 files every 2 s must not be 1,000 reads.
    let stamp = file_stamp(&entry.path);
    if !forced && stamp.is_some() && stamp == entry.stamp {
        return;
    }
    entry.stamp = stamp;
    let bytes = match std::fs::read(&entry.path) {
        Ok(bytes) => bytes,
        Err(error) => {
            let seen = format!("unreadable: {error}");
            if entry.last_seen != seen || forced {
                entry.last_seen = seen;
                reject(
                    entry,
                    telemetry,
                    format!("{}: cannot read the policy: {error}", entry.path.display()),
                )
                .await;
            }
            return;
        }
    };
    let hash: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !forced && (hash == entry.last_seen || hash == entry.in_force) {
        entry.last_seen = hash;
        return;
    }
    entry.last_seen = hash;
    match crate::policy::load_target(&entry.path) {
        Ok(compiled) => {
            let name = format!(
                "{}/{}",
                compiled.policy.service, compiled.policy.environment
            );
            if name != entry.target {
                let reason = format!(
                    "{}: [target] changed from {} to {name}; a new target needs a restart of rollwatch",
                    entry.path.display(),
                    entry.target
                );
                reject(entry, telemetry, reason).await;
                return;
            }
            if compiled.policy.sha256 == entry.in_force {
                return;
            }
            entry.in_force = compiled.policy.sha256.clone();
            telemetry
                .reloads
                .get_or_create(&crate::telemetry::ReloadLabels {
                    target: entry.target.clone(),
                    result: "ok".into(),
                })
                .inc();
            say(&format!(
                "{} {} policy {} reloaded: sha256:{} is in force",
                time_text(chrono::Utc::now()),
                entry.target,
                entry.path.display(),
                compiled.policy.short_hash()
            ));
            let _ = entry
                .reloads
                .send(target::Reload::Apply(Box::new(compiled)))
                .await;
        }
        Err(errors) => reject(entry, telemetry, errors.to_string()).await,
    }
}

async fn reject(entry: &Watched, telemetry: &Telemetry, reason: String) {
    telemetry
        .reloads
        .get_or_create(&crate::telemetry::ReloadLabels {
            target: entry.target.clone(),
            result: "failed".into(),
        })
        .inc();
    say(&format!(
        "{} {} POLICY EDIT REJECTED, the last good policy stays in force: {reason}",
        time_text(chrono::Utc::now()),
        entry.target
    ));
    let _ = entry.reloads.send(target::Reload::Rejected(reason)).await;
}

/// A dry run's messages: what would be sent, on which channel, to whom.
fn print_messages(
    policy: &crate::engine::policy::Policy,
    notify: Option<&crate::notify::config::NotifyConfig>,
    decision: &Decision,
) {
    let Some(message) = crate::notify::message::for_decision(policy, decision, None, "") else {
        return;
    };
    for row in message.addressed(notify, "dry-run") {
        let to = if row.recipients.is_empty() {
            String::new()
        } else {
            format!(" to {}", row.recipients.join(", "))
        };
        say(&format!(
            "  WOULD SEND {} via {}{to}: {}",
            row.kind.as_str(),
            row.channel,
            row.subject
        ));
    }
}

/// One line on stdout. A closed stdout (the reader went away) must not take
/// the watchdog down with it: the line goes to the log instead.
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::warn!(%error, "stdout is closed; the line follows here: {line}");
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM; stopping on SIGINT only");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
