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
use crate::fleet::{self, Fleet};
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
    let (files, unlisted) = fleet::policy_files(paths, &Default::default());
    if let Some((dir, error)) = unlisted.first() {
        return Err(Failure::Usage(format!(
            "{}: cannot list the policy directory: {error}",
            dir.display()
        )));
    }
    let mut targets: Vec<(PathBuf, crate::policy::Compiled)> = Vec::new();
    for path in &files {
        let target = load_target(path)?;
        let name = fleet::target_name(&target);
        if let Some((other, _)) = targets.iter().find(|(_, t)| fleet::target_name(t) == name) {
            return Err(Failure::Usage(format!(
                "{}: target {name} is already watched with {}; one policy file per target",
                path.display(),
                other.display()
            )));
        }
        targets.push((path.clone(), target));
    }
    for dir in paths.iter().filter(|p| p.is_dir()) {
        eprintln!(
            "watching {} for policy files (*.toml): a new file adds a target, a removed one removes it",
            dir.display()
        );
    }
    if targets.is_empty() {
        eprintln!("warning: no policy files yet: nothing is watched until one appears");
    }
    let store = if dry_run {
        None
    } else {
        for (_, target) in &targets {
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
    let status = crate::server::status::StatusBoard::default();
    let inboxes = crate::server::Inboxes::default();
    let token = std::env::var("ROLLWATCH_API_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    if token.is_none() {
        eprintln!("the API's write endpoints are off: set ROLLWATCH_API_TOKEN to enable them");
    }
    let reads_need_token = crate::server::reads_need_token(local);
    if reads_need_token && token.is_none() {
        eprintln!(
            "warning: the API's reads are off: {local} is not loopback and ROLLWATCH_API_TOKEN is not set (/healthz and /metrics stay open)"
        );
    }
    let app = crate::server::app(crate::server::Api {
        telemetry: Arc::clone(&telemetry),
        status: status.clone(),
        store: store.clone(),
        inputs: inboxes.clone(),
        token,
        reads_need_token,
    });
    let server_shutdown = shutdown.clone();
    let server = tokio::spawn(crate::server::listen::serve(
        listener,
        app,
        crate::server::listen::Limits::default(),
        Arc::clone(&telemetry),
        server_shutdown,
    ));
    // Several replicas on one PostgreSQL: each target is acted on by the
    // replica holding its advisory lock; the others stay passive. The locks
    // are let go only once every target loop has stopped (a step finishing
    // after SIGTERM still runs under this replica's lock).
    let leadership = CancellationToken::new();
    let leader = match &store {
        Some(store) if store.backend() == crate::store::Backend::Postgres => {
            let interval = targets
                .iter()
                .filter_map(|(_, t)| t.policy.evaluation.interval.to_std().ok())
                .min()
                .unwrap_or(Duration::from_secs(15));
            Some(crate::ha::Leader::start(
                store.clone(),
                interval,
                leadership.clone(),
            ))
        }
        _ => None,
    };
    // The outbox worker delivers what the targets' decisions store.
    let delivery = Arc::new(tokio::sync::Notify::new());
    let routing = store
        .as_ref()
        .map(|_| crate::notify::deliver::Routing::default());
    let worker = match (&store, &routing) {
        (Some(store), Some(routing)) => {
            let worker = crate::notify::deliver::Worker::new(
                store.clone(),
                routing.clone(),
                Arc::clone(&delivery),
            )
            .with_telemetry(Arc::clone(&telemetry));
            Some(tokio::spawn(worker.run(shutdown.clone())))
        }
        _ => None,
    };
    let mut fleet = Fleet::new(
        fleet::Shared {
            dry_run,
            store,
            telemetry,
            status,
            inboxes,
            leader,
            routing,
            delivery,
            recorder,
            shutdown: shutdown.clone(),
        },
        paths.to_vec(),
    );
    for (path, target) in targets {
        fleet.start(&path, target);
    }
    // A target that stops is a target nobody watches: stop loudly, so the
    // supervisor (systemd, Kubernetes) restarts rollwatch.
    let mut failure: Option<anyhow::Error> = None;
    let stop = wait_for_signal();
    tokio::pin!(stop);
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(fleet::POLICY_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.reset();
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
        tokio::select! {
            _ = &mut stop => {
                eprintln!("stopping");
                break;
            }
            _ = tick.tick() => fleet.check(false).await,
            _ = hup => fleet.check(true).await,
            Some(joined) = fleet.next_end() => {
                let outcome = match joined {
                    Ok(ended) => fleet.ended(ended),
                    Err(join) => Err(anyhow::anyhow!("a target loop crashed: {join}")),
                };
                if let Err(error) = outcome {
                    tracing::error!(error = %format!("{error:#}"), "stopping: a target is no longer watched");
                    failure = Some(error);
                    break;
                }
            }
        }
    }
    shutdown.cancel();
    if let Some(error) = fleet.stop_all().await {
        failure.get_or_insert(error);
    }
    leadership.cancel();
    let _ = server.await;
    if let Some(worker) = worker {
        let _ = worker.await;
    }
    match failure {
        Some(error) => Err(Failure::Runtime(error)),
        None => Ok(()),
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
        Action::Page if decision.cause == crate::engine::decision::Cause::Unanswered => {
            format!("{would}ESCALATE the unanswered page to the escalation contacts")
        }
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

/// A dry run's messages: what would be sent, on which channel, to whom.
pub fn print_messages(
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
