//! `rollwatch run`: the sidecar. Loads the policies (files or directories),
//! opens the store, starts the fleet of target loops, leadership, the outbox
//! and the API, and stops them in order on SIGTERM or SIGINT: the target
//! loops first (a running procedure step finishes), then leadership, the
//! API (which answers `/readyz` 503 meanwhile) and the outbox; every task of
//! the process is tracked and waited for. A second SIGTERM or SIGINT quits
//! at once (exit code 143 or 130). `--dry-run` only prints what it would do.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Failure, load_target, open_recorder};
use crate::fleet::{self, Fleet};
use crate::server::ready::Readiness;
use crate::telemetry::Telemetry;

pub async fn run(
    paths: &[PathBuf],
    dry_run: bool,
    record: Option<&Path>,
    listen: SocketAddr,
    db: &str,
) -> Result<(), Failure> {
    let readiness = Readiness::default();
    let tasks = TaskTracker::new();
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
    readiness.policies_loaded();
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
    readiness.store_open();
    let recorder = open_recorder(record)?;
    let shutdown = CancellationToken::new();
    let telemetry = Telemetry::new();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Runtime(e.into()))?;
    eprintln!("serving /healthz, /readyz, /metrics and /api/v1 on http://{local}");
    let status = crate::runtime::status::StatusBoard::default();
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
        readiness: readiness.clone(),
    });
    // The API answers until the target loops have stopped (`/readyz`: 503).
    let serving = CancellationToken::new();
    tasks.spawn(crate::server::listen::serve(
        listener,
        app,
        crate::server::listen::Limits::default(),
        Arc::clone(&telemetry),
        serving.clone(),
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
            let leader = crate::ha::Leader::start(store.clone(), interval, leadership.clone());
            if !targets.is_empty() {
                let contended = leader.clone();
                readiness.leadership(Arc::new(move || contended.rounds() > 0));
            }
            Some(leader)
        }
        _ => None,
    };
    // The outbox worker delivers what the targets' decisions store.
    let delivery = Arc::new(tokio::sync::Notify::new());
    let routing = store
        .as_ref()
        .map(|_| crate::notify::deliver::Routing::default());
    if let (Some(store), Some(routing)) = (&store, &routing) {
        let worker = crate::notify::deliver::Worker::new(
            store.clone(),
            routing.clone(),
            Arc::clone(&delivery),
        )
        .with_telemetry(Arc::clone(&telemetry));
        tasks.spawn(worker.run(shutdown.clone()));
    }
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
            readiness: readiness.clone(),
            tasks: tasks.clone(),
        },
        paths.to_vec(),
    );
    readiness.expect_loops(targets.iter().map(|(_, t)| fleet::target_name(t)));
    for (path, target) in targets {
        fleet.start(&path, target);
    }
    // A target that stops is a target nobody watches: stop loudly, so the
    // supervisor (systemd, Kubernetes) restarts rollwatch.
    let mut failure: Option<anyhow::Error> = None;
    let mut signals = Signals::new();
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
            _ = signals.next() => {
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
    readiness.stopping();
    shutdown.cancel();
    let drain = async {
        let stopped = fleet.stop_all().await;
        leadership.cancel();
        serving.cancel();
        tasks.close();
        tasks.wait().await;
        stopped
    };
    tokio::select! {
        stopped = drain => {
            if let Some(error) = stopped {
                failure.get_or_insert(error);
            }
        }
        signal = signals.next() => {
            eprintln!("{} again: quitting at once", signal.name());
            std::process::exit(signal.exit_code());
        }
    }
    match failure {
        Some(error) => Err(Failure::Runtime(error)),
        None => Ok(()),
    }
}

/// A signal that stops rollwatch.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Interrupt,
    Terminate,
}

impl Stop {
    fn name(self) -> &'static str {
        match self {
            Stop::Interrupt => "SIGINT",
            Stop::Terminate => "SIGTERM",
        }
    }

    /// The exit code of a process ended by the signal: 128 + its number.
    fn exit_code(self) -> i32 {
        match self {
            Stop::Interrupt => 130,
            Stop::Terminate => 143,
        }
    }
}

/// SIGTERM and SIGINT, listened for once everything has started, until the
/// process ends (a second one must not be missed).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let term = signal(SignalKind::terminate())
                .inspect_err(|error| {
                    tracing::error!(%error, "cannot listen for SIGTERM; stopping on SIGINT only");
                })
                .ok();
            let int = signal(SignalKind::interrupt())
                .inspect_err(|error| tracing::error!(%error, "cannot listen for SIGINT"))
                .ok();
            Signals { term, int }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The next SIGTERM or SIGINT.
    async fn next(&mut self) -> Stop {
        #[cfg(unix)]
        {
            async fn recv(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        if signal.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(self.int.as_mut()) => Stop::Interrupt,
                () = recv(self.term.as_mut()) => Stop::Terminate,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            Stop::Interrupt
        }
    }
}
