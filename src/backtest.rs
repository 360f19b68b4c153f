//! Replays a trace through the engine with time taken from the trace: the same
//! calling order as the live runtime, with every rollback counted as succeeded
//! at the instant it is decided. Streams: memory is bounded by the policy's
//! windows, not by the length of the trace.

use std::io::BufRead;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::drive::{self, DriveError, Rollbacks};
use crate::engine::Engine;
use crate::engine::decision::{Cause, Decision};
use crate::engine::policy::{Action, Policy};
use crate::trace::{TraceItem, parse_line};

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("line {line}: {message}")]
    Trace { line: usize, message: String },
    #[error("reading the trace: {0}")]
    Io(#[from] std::io::Error),
}

/// The last line of `backtest --format json` (contract).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub observations: u64,
    pub first_rollback_at: Option<DateTime<Utc>>,
    pub first_page_at: Option<DateTime<Utc>>,
    pub rollbacks: u64,
    pub pages: u64,
}

impl Summary {
    fn count(&mut self, decision: &Decision) {
        if decision.action == Action::Rollback {
            self.rollbacks += 1;
            self.first_rollback_at.get_or_insert(decision.at);
        }
        // An unanswered page escalating is the same incident's page reaching
        // the escalation contacts, not a new page: it has its decision line
        // but is not counted again.
        if decision.action.pages() && decision.cause != Cause::Unanswered {
            self.pages += 1;
            self.first_page_at.get_or_insert(decision.at);
        }
    }
}

/// Feeds every line of `trace` to a fresh engine, calling `on_decision` for
/// each decision as it is made.
pub fn replay<R: BufRead>(
    policy: Arc<Policy>,
    trace: R,
    on_decision: impl FnMut(&Decision) -> std::io::Result<()>,
) -> Result<Summary, BacktestError> {
    replay_items(
        policy,
        TraceLines {
            reader: trace,
            text: String::new(),
            line: 0,
        },
        on_decision,
    )
}

/// Feeds numbered trace items (from a file, or fetched from Prometheus) to a
/// fresh engine in the documented calling order.
pub fn replay_items(
    policy: Arc<Policy>,
    items: impl IntoIterator<Item = Result<(usize, TraceItem), BacktestError>>,
    mut on_decision: impl FnMut(&Decision) -> std::io::Result<()>,
) -> Result<Summary, BacktestError> {
    let mut engine = Engine::new(policy);
    let mut summary = Summary::default();
    let mut previous_at: Option<DateTime<Utc>> = None;
    for item in items {
        let (line, item) = item?;
        let at = item.at();
        if let Some(previous) = previous_at
            && at < previous
        {
            return Err(BacktestError::Trace {
                line,
                message: format!(
                    "time goes backwards: {} is before the previous line's {}",
                    crate::engine::time_text(at),
                    crate::engine::time_text(previous)
                ),
            });
        }
        previous_at = Some(at);
        let mut count_and_write = |decision: &Decision| {
            summary.count(decision);
            on_decision(decision)
        };
        drive::feed(
            &mut engine,
            item,
            Rollbacks::SucceedAtOnce,
            &mut count_and_write,
        )
        .map_err(|error| match error {
            DriveError::Output(io) => BacktestError::Io(io),
            DriveError::Input(input) => BacktestError::Trace {
                line,
                message: input.to_string(),
            },
        })?;
    }
    summary.observations = engine.observations();
    Ok(summary)
}

/// The non-empty lines of a trace, parsed, with their line numbers.
struct TraceLines<R> {
    reader: R,
    text: String,
    line: usize,
}

impl<R: BufRead> Iterator for TraceLines<R> {
    type Item = Result<(usize, TraceItem), BacktestError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.text.clear();
            match self.reader.read_line(&mut self.text) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(error) => return Some(Err(error.into())),
            }
            self.line += 1;
            let trimmed = self.text.trim();
            if trimmed.is_empty() {
                continue;
            }
            let line = self.line;
            return Some(
                parse_line(trimmed)
                    .map(|item| (line, item))
                    .map_err(|message| BacktestError::Trace { line, message }),
            );
        }
    }
}
