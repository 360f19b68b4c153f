//! The command line: parse arguments, dispatch to one file per command, and
//! map failures to exit codes: 0 fine, 1 runtime failure, 2 usage or policy
//! error (`evaluate` exits 3 or 4 with its verdict).

pub mod backtest;
pub mod check;
pub mod demo;
pub mod drill;
pub mod evaluate;
pub mod explain;
pub mod incidents;
pub mod rollback;
pub mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use chrono::{DateTime, Utc};

use crate::engine::policy::Policy;
use crate::policy;
use crate::runtime::record::Recorder;
use crate::units::HumanDuration;

#[derive(Parser, Debug)]
#[command(
    name = "rollwatch",
    version,
    about = "A watchdog that decides when to roll a deployment back"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, ValueEnum, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Validate policy files: exit 0 when all are valid, 2 otherwise.
    Check {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Describe a policy in plain words, with each rule's time from fault to decision.
    Explain { path: PathBuf },
    /// Replay a recorded trace (JSON Lines), or a stretch of Prometheus history
    /// (--from/--to, for a policy with a prometheus source), through the engine.
    Backtest {
        #[arg(long)]
        policy: PathBuf,
        #[arg(long, required_unless_present = "from", conflicts_with_all = ["from", "to"])]
        trace: Option<PathBuf>,
        /// Start of the history to replay (RFC 3339).
        #[arg(long, requires = "to")]
        from: Option<DateTime<Utc>>,
        /// End of the history to replay (RFC 3339).
        #[arg(long, requires = "from")]
        to: Option<DateTime<Utc>>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Sample a target for a while, judge it and exit: 0 healthy, 3 page
    /// recommended, 4 rollback recommended, 1 no data. The post-deploy gate.
    Evaluate {
        #[arg(long)]
        policy: PathBuf,
        /// How long to sample (default: the policy's shortest `for`).
        #[arg(long = "for", value_parser = parse_duration)]
        sample_for: Option<HumanDuration>,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
        /// Write what was observed as a trace (JSON Lines) for a later backtest.
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Watch targets until SIGINT/SIGTERM.
    Run {
        #[arg(long, required = true, num_args = 1..)]
        policy: Vec<PathBuf>,
        /// Print every decision as a recommendation; execute and send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Write what was observed as a trace (JSON Lines).
        #[arg(long)]
        record: Option<PathBuf>,
        /// Serve /healthz and /metrics here.
        #[arg(long, default_value = "127.0.0.1:9797")]
        listen: std::net::SocketAddr,
        /// Where incidents are stored: a SQLite file (created on first run) or
        /// postgres://... (not used by --dry-run).
        #[arg(long, default_value = DEFAULT_DB)]
        db: String,
    },
    /// Emergency rollback: the policy's whole procedure (backup, rollback,
    /// verification, stabilization watch) for a human's reason.
    Rollback {
        #[arg(long)]
        policy: PathBuf,
        /// Why: recorded with the incident and given to every step.
        #[arg(long)]
        reason: String,
        /// Roll back only this component (frontend, backend, database).
        #[arg(long)]
        component: Option<String>,
        /// The version to go back to (default: the one before the latest deployment).
        #[arg(long)]
        to: Option<String>,
        /// Print the plan and the guards; run and store nothing.
        #[arg(long)]
        dry_run: bool,
        /// Roll back even though the latest deployment rollwatch knows of is
        /// older than the recent-deploy window (you have checked the change).
        /// Never past a running rollback or a rollback of a rollback.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = DEFAULT_DB)]
        db: String,
    },
    /// Rollback drill: run the (staging) procedure and its verification, and
    /// record how long it took and whether it worked.
    Drill {
        #[arg(long)]
        policy: PathBuf,
        /// Drill a production policy (drills are for staging).
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = DEFAULT_DB)]
        db: String,
    },
    /// A self-contained demonstration: a stand-in service, a bad deployment,
    /// the decision, the rollback, the watch and the report, in about a minute.
    Demo,
    /// Internal: runs one procedure step handed over on stdin, beating a
    /// heartbeat and recording its end in the store (started by `run`,
    /// `rollback` and `drill`, never by hand).
    #[command(hide = true)]
    StepRunner,
    /// Stored incidents: list, show one, or write its post-mortem report.
    Incidents {
        #[command(subcommand)]
        command: IncidentsCommand,
        #[arg(long, global = true, default_value = DEFAULT_DB)]
        db: String,
    },
}

/// A human's answer to an incident.
#[derive(clap::Args, Debug)]
pub struct Answer {
    pub id: i64,
    /// Who answers (default: $ROLLWATCH_OPERATOR, then $USER).
    #[arg(long)]
    pub by: Option<String>,
    /// A note for the record.
    #[arg(long)]
    pub note: Option<String>,
}

/// The store `run`, `rollback`, `drill` and `incidents` use unless `--db` says otherwise.
pub const DEFAULT_DB: &str = crate::store::DEFAULT_DATABASE;

#[derive(Subcommand, Debug)]
pub enum IncidentsCommand {
    /// The newest incidents first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// One incident with its whole timeline.
    Show {
        id: i64,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
    /// Acknowledge a page: you own it; escalation stops and a pending
    /// automatic rollback is cancelled (then approve or hold).
    Ack(Answer),
    /// Hold: no rollback for this incident.
    Hold(Answer),
    /// Approve: roll back now, through the same procedure and guards.
    Approve(Answer),
    /// The post-mortem report in Markdown on stdout; the chart is written as SVG.
    Report {
        id: i64,
        /// Where to write the chart (default: incident-ID.svg in the current directory).
        #[arg(long)]
        chart: Option<PathBuf>,
    },
}

fn parse_duration(text: &str) -> Result<HumanDuration, String> {
    HumanDuration::parse(text)
}

/// A failure and the exit code it maps to.
pub enum Failure {
    /// Exit 2: the command line or a policy is wrong.
    Usage(String),
    /// Exit 1: something failed while running.
    Runtime(anyhow::Error),
    /// Exit with this code, the command having said why.
    Exit(u8),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let result = dispatch(cli.command);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(error)) => {
            eprintln!("error: {error:#}");
            ExitCode::from(1)
        }
        Err(Failure::Exit(code)) => ExitCode::from(code),
    }
}

fn dispatch(command: Command) -> Result<(), Failure> {
    match command {
        Command::Check { paths } => check::check(&paths),
        Command::Explain { path } => load_target(&path).map(|target| {
            print!("{}", explain::explain(&target.policy));
            print!("{}", explain::explain_procedure(target.procedure.as_ref()));
        }),
        Command::Backtest {
            policy,
            trace: Some(trace),
            format,
            ..
        } => backtest::run_backtest(&policy, &trace, format),
        Command::Backtest {
            policy,
            from: Some(from),
            to: Some(to),
            format,
            ..
        } => block_on(backtest::backtest_history(&policy, from, to, format)),
        Command::Backtest { .. } => Err(Failure::Usage(
            "backtest needs --trace FILE, or --from and --to".into(),
        )),
        Command::Evaluate {
            policy,
            sample_for,
            format,
            record,
        } => block_on(evaluate::evaluate(
            &policy,
            sample_for,
            format,
            record.as_deref(),
        )),
        Command::Run {
            policy,
            dry_run,
            record,
            listen,
            db,
        } => block_on(run::run(&policy, dry_run, record.as_deref(), listen, &db)),
        Command::Rollback {
            policy,
            reason,
            component,
            to,
            dry_run,
            force,
            db,
        } => block_on(rollback::rollback(rollback::RollbackRequest {
            policy: &policy,
            reason: &reason,
            component: component.as_deref(),
            to: to.as_deref(),
            dry_run,
            force,
            db: &db,
        })),
        Command::Drill { policy, db, force } => block_on(drill::drill(&policy, &db, force)),
        Command::Demo => block_on(demo::run()),
        Command::StepRunner => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| {
                    Failure::Runtime(anyhow::anyhow!("starting the async runtime: {e}"))
                })?;
            let code = runtime.block_on(crate::act::runner::serve());
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            std::process::exit(code)
        }
        Command::Incidents { command, db } => block_on(incidents::run(command, &db)),
    }
}

/// Runs `work` on a new runtime. On the way out, a blocking task that hangs
/// (a read of a dead network mount) is left behind after a second rather
/// than waited for: the process still exits.
fn block_on<T>(work: impl std::future::Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
    let runtime = runtime()?;
    let result = runtime.block_on(work);
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("starting the async runtime: {e}")))
}

pub(crate) fn load_target(path: &Path) -> Result<crate::policy::Compiled, Failure> {
    policy::load_target(path).map_err(|errors| Failure::Usage(errors.to_string()))
}

pub(crate) fn load_policy(path: &Path) -> Result<Policy, Failure> {
    policy::load(path).map_err(|errors| Failure::Usage(errors.to_string()))
}

pub(crate) fn open_recorder(path: Option<&Path>) -> Result<Option<Recorder>, Failure> {
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

/// A failure while running, with what was being done.
pub(crate) fn runtime_error(error: impl std::fmt::Display) -> Failure {
    Failure::Runtime(anyhow::anyhow!("{error}"))
}
