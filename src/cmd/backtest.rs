//! `rollwatch backtest`: a policy replayed over a recorded trace or over
//! Prometheus history, printing each decision (table or JSON lines) and a
//! summary.

use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::{Failure, OutputFormat, load_policy, load_target};
use crate::backtest::{self, Summary};
use crate::engine::decision::Decision;

pub fn run_backtest(
    policy_path: &Path,
    trace_path: &Path,
    format: OutputFormat,
) -> Result<(), Failure> {
    let policy = Arc::new(load_policy(policy_path)?);
    let file = std::fs::File::open(trace_path)
        .map_err(|e| anyhow::anyhow!("cannot open trace {}: {e}", trace_path.display()))?;
    print_backtest(format, |on_decision| {
        backtest::replay(policy, BufReader::new(file), on_decision)
    })
    .map_err(|e| Failure::Runtime(anyhow::anyhow!("{}: {e:#}", trace_path.display())))
}

pub async fn backtest_history(
    policy_path: &Path,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    format: OutputFormat,
) -> Result<(), Failure> {
    let target = load_target(policy_path)?;
    let Some(source) = &target.source else {
        return Err(Failure::Usage(format!(
            "{}: backtest --from/--to needs a [source] with kind = \"prometheus\"",
            policy_path.display()
        )));
    };
    if !matches!(
        source.kind,
        crate::sources::config::SourceKind::Prometheus { .. }
    ) {
        return Err(Failure::Usage(format!(
            "{}: backtest --from/--to needs kind = \"prometheus\"; a scrape source has no history",
            policy_path.display()
        )));
    }
    let items = crate::sources::history::fetch(source, from, to, target.policy.evaluation.interval)
        .await
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("fetching history: {e}")))?;
    let policy = Arc::new(target.policy);
    let numbered = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| Ok((i + 1, item)));
    print_backtest(format, |on_decision| {
        backtest::replay_items(policy, numbered, on_decision)
    })
    .map_err(Failure::Runtime)
}

/// Prints decisions as they come and the summary at the end, in either format.
fn print_backtest(
    format: OutputFormat,
    replay: impl FnOnce(
        &mut dyn FnMut(&Decision) -> std::io::Result<()>,
    ) -> Result<Summary, backtest::BacktestError>,
) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if format == OutputFormat::Table {
        writeln!(
            out,
            "{:<22} {:<19} {:<10} {:<20} EXPLANATION",
            "AT", "ACTION", "TIER", "RULE"
        )?;
    }
    let summary = replay(&mut |decision| write_decision(&mut out, decision, format))?;
    write_summary(&mut out, &summary, format)?;
    out.flush()?;
    Ok(())
}

fn write_decision(
    out: &mut impl Write,
    decision: &Decision,
    format: OutputFormat,
) -> std::io::Result<()> {
    match format {
        OutputFormat::Json => {
            serde_json::to_writer(&mut *out, decision).map_err(std::io::Error::from)?;
            writeln!(out)
        }
        OutputFormat::Table => writeln!(
            out,
            "{:<22} {:<19} {:<10} {:<20} {}",
            crate::engine::time_text(decision.at),
            decision.action.as_str(),
            decision.tier.as_str(),
            decision.rule,
            decision.explanation
        ),
    }
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
