//! The command line (SPEC 10): parse arguments, dispatch, and map failures to
//! exit codes: 0 fine, 1 runtime failure, 2 usage or policy error.

use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::backtest::{self, Summary};
use crate::engine::decision::Decision;
use crate::engine::policy::Policy;
use crate::{explain, policy};

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
    /// Replay a recorded trace (JSON Lines) through the engine.
    Backtest {
        #[arg(long)]
        policy: PathBuf,
        #[arg(long)]
        trace: PathBuf,
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        format: OutputFormat,
    },
}

/// A failure and the exit code it maps to.
pub enum Failure {
    /// Exit 2: the command line or a policy is wrong.
    Usage(String),
    /// Exit 1: something failed while running.
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Runtime(error)
    }
}

pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Check { paths } => check(&paths),
        Command::Explain { path } => load_policy(&path).map(|p| print!("{}", explain::explain(&p))),
        Command::Backtest {
            policy,
            trace,
            format,
        } => run_backtest(&policy, &trace, format),
    };
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
    }
}

fn load_policy(path: &Path) -> Result<Policy, Failure> {
    policy::load(path).map_err(|errors| Failure::Usage(errors.to_string()))
}

fn check(paths: &[PathBuf]) -> Result<(), Failure> {
    let mut failed = Vec::new();
    for path in paths {
        match policy::load(path) {
            Ok(policy) => println!(
                "ok: {} ({} in {}, {} rules, sha256:{})",
                path.display(),
                policy.service,
                policy.environment,
                policy.rules.len(),
                policy.short_hash()
            ),
            Err(errors) => failed.push(errors.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Usage(failed.join("\n")))
    }
}

fn run_backtest(
    policy_path: &Path,
    trace_path: &Path,
    format: OutputFormat,
) -> Result<(), Failure> {
    let policy = Arc::new(load_policy(policy_path)?);
    let file = std::fs::File::open(trace_path)
        .map_err(|e| anyhow::anyhow!("cannot open trace {}: {e}", trace_path.display()))?;
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if format == OutputFormat::Table {
        writeln!(
            out,
            "{:<22} {:<19} {:<10} {:<20} EXPLANATION",
            "AT", "ACTION", "TIER", "RULE"
        )
        .map_err(anyhow::Error::from)?;
    }
    let write_decision = |out: &mut BufWriter<_>, decision: &Decision| match format {
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, decision).map_err(std::io::Error::from)?;
            writeln!(out)
        }
        OutputFormat::Table => writeln!(
            out,
            "{:<22} {:<19} {:<10} {:<20} {}",
            crate::engine::time_text(decision.at),
            decision.action.name(),
            decision.tier.name(),
            decision.rule,
            decision.explanation
        ),
    };
    let summary = backtest::replay(policy, BufReader::new(file), |d| {
        write_decision(&mut out, d)
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", trace_path.display()))?;
    write_summary(&mut out, &summary, format).map_err(anyhow::Error::from)?;
    out.flush().map_err(anyhow::Error::from)?;
    Ok(())
}

fn write_summary(
    out: &mut impl Write,
    summary: &Summary,
    format: OutputFormat,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Json => {
            #[derive(serde::Serialize)]
            struct SummaryLine<'a> {
                summary: &'a Summary,
            }
            serde_json::to_writer(&mut *out, &SummaryLine { summary })?;
            writeln!(out)
        }
        OutputFormat::Table => {
            let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
                t.map_or_else(|| "never".to_string(), crate::engine::time_text)
            };
            writeln!(
                out,
                "\n{} observations; {} rollbacks (first {}); {} pages (first {})",
                summary.observations,
                summary.rollbacks,
                at(summary.first_rollback_at),
                summary.pages,
                at(summary.first_page_at)
            )
        }
    }
}
