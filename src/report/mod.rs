//! The post-mortem report of one stored incident (`incidents report ID`, docs/operations.md):
//! Markdown a person can paste into a post-mortem (summary, what fired with
//! values against thresholds, the timeline, the steps and their output, the
//! stabilization watch, the policy) and an SVG chart of error rate and latency
//! around the incident (`chart.rs`).
//!
//! Rendering is pure: it reads an [`IncidentTimeline`] and its samples that the
//! caller loaded from the store, and returns text. Stored data may be odd (an
//! unresolved incident, a step whose end was never written, a reading that does
//! not parse, no samples at all); the report says so instead of failing.

mod chart;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::LazyLock;

use chrono::{DateTime, TimeDelta, Utc};
use regex::Regex;
use serde::Deserialize;

use crate::engine::decision::Cause;
use crate::store::{
    DecisionRecord, IncidentKind, IncidentState, IncidentTimeline, SamplePoint, StepOutcome,
    StepRecord, TimelineEntry,
};
use crate::units::{format_duration, format_percent};

pub use chart::chart_svg;

/// What a report is rendered from.
#[derive(Clone, Copy, Debug)]
pub struct ReportInput<'a> {
    /// The incident with its decisions, steps, answers and notifications.
    pub timeline: &'a IncidentTimeline,
    /// The target's samples around the incident, in time order.
    pub samples: &'a [SamplePoint],
    /// The file name the Markdown links the chart as (e.g. "incident-17.svg"); None: no chart link.
    pub chart_file: Option<&'a str>,
}

/// Why a chart could not be drawn. The Markdown report itself never fails: a
/// caller that gets an error renders the Markdown with `chart_file: None`.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// No sample was stored for the incident.
    #[error("incident {incident} has no stored samples: there is nothing to chart")]
    NoSamples { incident: i64 },
    /// Samples were stored, but none has an error rate or a latency.
    #[error(
        "none of the {samples} samples of incident {incident} has an error rate or a latency: there is nothing to chart"
    )]
    NoValues { incident: i64, samples: usize },
    /// plotters failed to draw (it draws into memory, so this is not expected).
    #[error("cannot draw the chart: {0}")]
    Draw(String),
}

/// Lines of a step's stdout or stderr shown in the report: the end of the output
/// is where a failing command says why.
const OUTPUT_TAIL_LINES: usize = 20;
/// Longest line of step output shown, in characters: a longer line keeps its end.
const OUTPUT_LINE_CHARS: usize = 300;

/// The whole report in Markdown.
pub fn markdown(input: &ReportInput<'_>) -> String {
    let timeline = input.timeline;
    let times = Times::of(timeline);
    let mut out = String::new();
    write_summary(&mut out, timeline);
    write_what_fired(&mut out, &timeline.decisions, times);
    write_timeline(&mut out, timeline, times);
    write_actions(&mut out, &timeline.steps, times);
    write_watch(&mut out, timeline);
    if let Some(file) = input.chart_file {
        out.push_str("\n## Chart\n\n");
        out.push_str(&format!(
            "![error rate and latency]({})\n",
            link_target(file)
        ));
    }
    write_policy(&mut out, &timeline.decisions);
    out
}

// ---------------------------------------------------------------------------
// Sections

fn write_summary(out: &mut String, timeline: &IncidentTimeline) {
    let incident = &timeline.incident;
    out.push_str(&format!(
        "# Incident {}: {} — {} ({})\n\n",
        incident.id,
        inline(&incident.target),
        inline(&incident.rule),
        inline(incident.tier.as_str())
    ));
    let mut rows: Vec<(&str, String)> = vec![
        ("target", incident.target.clone()),
        ("kind", kind_text(incident.kind).to_string()),
        ("opened", full_time(incident.opened_at)),
    ];
    match incident.state {
        IncidentState::Resolved { at, outcome } => {
            rows.push(("resolved", format!("{} ({outcome})", full_time(at))));
            rows.push(("duration", rounded_duration(at - incident.opened_at)));
        }
        IncidentState::Active { phase } => {
            rows.push((
                "phase",
                format!(
                    "{phase} since {} (not resolved)",
                    full_time(incident.phase_at)
                ),
            ));
            rows.push((
                "duration",
                format!(
                    "unresolved; at least {}",
                    rounded_duration(incident.phase_at - incident.opened_at)
                ),
            ));
        }
    }
    rows.push((
        "versions",
        format!(
            "{} → {}",
            incident.from_version.as_deref().unwrap_or("unknown"),
            incident.to_version.as_deref().unwrap_or("unknown")
        ),
    ));
    rows.push((
        "component",
        incident
            .component
            .clone()
            .unwrap_or_else(|| "all (whole application)".to_string()),
    ));
    if !incident.reason.trim().is_empty() {
        rows.push(("reason", incident.reason.clone()));
    }
    if let Some(deadline) = incident.deadline {
        rows.push(("rollback deadline", full_time(deadline)));
    }
    rows.push(("acknowledged", yes_no(incident.acknowledged).to_string()));
    rows.push(("held", yes_no(incident.held).to_string()));

    out.push_str("| field | value |\n|---|---|\n");
    for (field, value) in rows {
        out.push_str(&format!("| {field} | {} |\n", cell(&value)));
    }
}

fn write_what_fired(out: &mut String, decisions: &[DecisionRecord], times: Times) {
    out.push_str("\n## What fired\n\n");
    let with_readings: Vec<_> = decisions
        .iter()
        .filter_map(|d| d.reading.as_ref().map(|r| (d, r)))
        .collect();
    if with_readings.is_empty() {
        out.push_str("No decision carried a signal reading (a declared incident or a drill, or no decision was recorded).\n");
        return;
    }
    for (decision, json) in with_readings {
        let reading = match StoredReading::from_json(json) {
            Some(reading) => reading.describe(&decision.rule, &decision.explanation),
            None => format!("reading not understood: {json}"),
        };
        out.push_str(&format!(
            "- **{}** {} ({}, {} → {}): {}\n",
            times.show(decision.at),
            inline(&decision.rule),
            inline(decision.tier.as_str()),
            inline(decision.cause.as_str()),
            inline(decision.action.as_str()),
            inline(&reading)
        ));
        for line in decision.explanation.lines() {
            out.push_str(&format!("  > {}\n", inline(line)));
        }
    }
}

fn write_timeline(out: &mut String, timeline: &IncidentTimeline, times: Times) {
    let incident = &timeline.incident;
    // Rows sort by instant, then by rank: what happened at one instant is
    // listed opening first, then the steps that ended and the answers given
    // (a decision at the same instant reacts to them), then everything else
    // in `entries`' order.
    let rank = |entry: &TimelineEntry<'_>| match entry {
        TimelineEntry::Opened(_) => 0,
        TimelineEntry::Answer(_) => 1,
        _ => 2,
    };
    let mut rows: Vec<(DateTime<Utc>, u8, String)> = timeline
        .entries()
        .into_iter()
        .map(|entry| (entry.at(), rank(&entry), entry_text(&entry, times)))
        .collect();
    // `entries` places a step at its start; its end is a moment of its own.
    for step in &timeline.steps {
        if let Some(ended) = step.ended_at {
            // A step that ended as it started is listed after its start.
            let end_rank = if ended > step.started_at { 1 } else { 2 };
            rows.push((ended, end_rank, step_end_text(step)));
        }
    }
    // A stable sort keeps `entries`' order among rows of one instant and rank.
    rows.sort_by_key(|(at, rank, _)| (*at, *rank));

    out.push_str("\n## Timeline\n\n");
    if times.one_day {
        out.push_str(&format!(
            "All times on {} (UTC).\n\n",
            incident.opened_at.format("%Y-%m-%d")
        ));
    }
    out.push_str("| time (UTC) | what |\n|---|---|\n");
    for (at, _, text) in rows {
        out.push_str(&format!("| {} | {} |\n", times.show(at), cell(&text)));
    }
}

fn entry_text(entry: &TimelineEntry<'_>, times: Times) -> String {
    match entry {
        TimelineEntry::Opened(incident) => {
            let mut text = format!(
                "incident opened: {} {} ({})",
                kind_text(incident.kind),
                incident.rule,
                incident.tier
            );
            if !incident.reason.trim().is_empty() {
                text.push_str(&format!("; reason: {}", incident.reason));
            }
            text
        }
        TimelineEntry::Decision(decision) => {
            let mut text = format!(
                "decision **{}** ({}, rule {}",
                decision.action, decision.cause, decision.rule
            );
            if let Some(guard) = &decision.guard {
                text.push_str(&format!(", guard {guard}"));
            }
            text.push_str(&format!("): {}", decision.explanation));
            text
        }
        TimelineEntry::Step(step) => {
            let mut text = format!("step {} started", step_name(step));
            if let Some(component) = &step.component {
                text.push_str(&format!(" (component {component})"));
            }
            if step.ended_at.is_none() {
                text.push_str(&format!("; {}", outcome_text(step.outcome)));
            }
            text
        }
        TimelineEntry::Answer(answer) => {
            let mut text = format!("{} by {}", answer.kind, answer.by);
            if let Some(note) = answer.note.as_deref().filter(|n| !n.trim().is_empty()) {
                text.push_str(&format!(": {note}"));
            }
            text
        }
        TimelineEntry::Notification(notification) => {
            let mut text = format!(
                "{} via {}{}: {} ({}",
                notification.kind,
                notification.channel,
                if notification.recipients.is_empty() {
                    String::new()
                } else {
                    format!(" to {}", notification.recipients.join(", "))
                },
                notification.subject,
                notification.state
            );
            if let Some(sent) = notification.sent_at {
                text.push_str(&format!(" at {}", times.show(sent)));
            }
            if notification.attempts > 1 {
                text.push_str(&format!(", {} attempts", notification.attempts));
            }
            if let Some(error) = &notification.last_error {
                text.push_str(&format!(", last error: {error}"));
            }
            text.push(')');
            text
        }
        TimelineEntry::Resolved(incident) => match incident.state {
            IncidentState::Resolved { outcome, .. } => format!("incident resolved: {outcome}"),
            IncidentState::Active { phase } => format!("incident {phase}"),
        },
    }
}

fn step_end_text(step: &StepRecord) -> String {
    let mut text = format!("step {} {}", step_name(step), outcome_text(step.outcome));
    if let Some(duration) = step_duration(step) {
        text.push_str(&format!(" after {duration}"));
    }
    if let Some(code) = step.exit_code {
        text.push_str(&format!(", exit code {code}"));
    }
    if let Some(detail) = step.detail.as_deref().filter(|d| !d.trim().is_empty()) {
        text.push_str(&format!(": {detail}"));
    }
    text
}

fn write_actions(out: &mut String, steps: &[StepRecord], times: Times) {
    out.push_str("\n## Actions\n\n");
    if steps.is_empty() {
        out.push_str("No procedure step ran.\n");
        return;
    }
    out.push_str(
        "| stage | step | component | started | duration | outcome | exit code | detail |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for step in steps {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            step.stage,
            cell(&step.name),
            cell(step.component.as_deref().unwrap_or("—")),
            times.show(step.started_at),
            step_duration(step).unwrap_or_else(|| "—".to_string()),
            outcome_text(step.outcome),
            step.exit_code
                .map_or_else(|| "—".to_string(), |code| code.to_string()),
            cell(step.detail.as_deref().unwrap_or("")),
        ));
    }
    for step in steps {
        let failed = !matches!(step.outcome, StepOutcome::Succeeded);
        let has_output = !step.stdout.trim().is_empty() || !step.stderr.trim().is_empty();
        if !failed && !has_output {
            continue;
        }
        out.push_str(&format!(
            "\n### {} — {}\n",
            inline(&step_name(step)),
            outcome_text(step.outcome)
        ));
        if !step.argv.is_empty() {
            out.push_str(&format!("\nCommand: {}\n", code_span(&step.argv.join(" "))));
        }
        if !has_output {
            out.push_str("\nNo output was captured.\n");
        }
        for (stream, text) in [("stdout", &step.stdout), ("stderr", &step.stderr)] {
            if !text.trim().is_empty() {
                write_output_tail(out, stream, text);
            }
        }
    }
}

fn write_output_tail(out: &mut String, stream: &str, text: &str) {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    let shown = lines.len().min(OUTPUT_TAIL_LINES);
    let skipped = lines.len() - shown;
    if skipped > 0 {
        out.push_str(&format!(
            "\n{stream} (last {shown} of {} lines):\n\n",
            group_thousands(lines.len() as f64)
        ));
    } else {
        out.push_str(&format!("\n{stream}:\n\n"));
    }
    let tail: Vec<String> = lines[skipped..]
        .iter()
        .map(|line| shorten_line(line))
        .collect();
    let body = tail.join("\n");
    let fence = fence_for(&body);
    out.push_str(&format!("{fence}text\n{body}\n{fence}\n"));
}

fn write_watch(out: &mut String, timeline: &IncidentTimeline) {
    out.push_str("\n## Stabilization watch\n\n");
    let incident = &timeline.incident;
    let by_cause = |cause: Cause| timeline.decisions.iter().find(|d| d.cause == cause);
    let started = by_cause(Cause::RollbackFinished);
    let stable = by_cause(Cause::Stable);
    let failed = by_cause(Cause::WatchFailed);
    let rollback_failed = by_cause(Cause::RollbackFailed);

    if started.is_none() && incident.watch_until.is_none() {
        match rollback_failed {
            Some(decision) => out.push_str(&format!(
                "The rollback failed at {}, so no stabilization watch ran: {}\n",
                full_time(decision.at),
                inline(&decision.explanation)
            )),
            None if timeline.steps.is_empty() => {
                out.push_str("No rollback ran, so there was no stabilization watch.\n");
            }
            None => out.push_str("No stabilization watch was recorded for this incident.\n"),
        }
        return;
    }

    let from = started.map_or_else(|| "an unrecorded time".to_string(), |d| full_time(d.at));
    let until = match (stable.or(failed), incident.watch_until) {
        (Some(end), Some(due)) if end.at < due => format!(
            "{} (ended early; it was due to end at {})",
            full_time(end.at),
            full_time(due)
        ),
        (Some(end), _) => full_time(end.at),
        (None, Some(due)) => format!("{} (due)", full_time(due)),
        (None, None) => "an unrecorded time".to_string(),
    };
    let length = match (started, stable.or(failed)) {
        (Some(start), Some(end)) => format!(" ({})", rounded_duration(end.at - start.at)),
        _ => String::new(),
    };
    out.push_str(&format!("Watched from {from} until {until}{length}.\n\n"));

    let verdict = match (failed, stable) {
        (Some(decision), _) => format!(
            "**Not stable**: a rule fired during the watch, so the incident was escalated. {}",
            inline(&decision.explanation)
        ),
        (None, Some(decision)) => format!("**Stable.** {}", inline(&decision.explanation)),
        (None, None) => match incident.state {
            IncidentState::Active { phase } => {
                format!("No result yet: the incident is {phase}.")
            }
            IncidentState::Resolved { outcome, .. } => {
                format!("No watch result was recorded; the incident was resolved as {outcome}.")
            }
        },
    };
    out.push_str(&verdict);
    out.push('\n');
}

fn write_policy(out: &mut String, decisions: &[DecisionRecord]) {
    out.push_str("\n## Policy\n\n");
    let mut seen = HashSet::new();
    let policies: Vec<_> = decisions
        .iter()
        .map(|d| (d.policy_path.as_str(), d.policy_sha256.as_str()))
        .filter(|pair| seen.insert(*pair))
        .collect();
    if policies.is_empty() {
        out.push_str("No decision was recorded, so no policy is named.\n");
        return;
    }
    out.push_str("Decisions were made under:\n\n");
    for (path, sha256) in policies {
        out.push_str(&format!(
            "- {} sha256 {}\n",
            code_span(path),
            code_span(sha256)
        ));
    }
}

// ---------------------------------------------------------------------------
// Readings

/// The signal names an `engine::signals::Reading` carries (`Signal::name`).
pub(crate) const ERROR_RATE: &str = "error-rate";
pub(crate) const LATENCY: &str = "latency-degradation";
const USERS_AFFECTED: &str = "users-affected";
const DOWN: &str = "down";
const CHECK: &str = "check";

/// A decision's reading as stored: the JSON of `engine::signals::Reading`, read
/// back leniently (absent fields are unknown) so that a report of an incident
/// stored by an older rollwatch still renders.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StoredReading {
    pub signal: String,
    pub verdict: Option<String>,
    /// A ratio for rates, the degradation for latency, 1.0/0.0 for down and checks.
    pub value: Option<f64>,
    pub bound: Option<f64>,
    pub threshold: Option<f64>,
    pub count: Option<f64>,
    pub window_seconds: Option<i64>,
    pub current_ms: Option<f64>,
    pub baseline: Option<StoredBaseline>,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct StoredBaseline {
    pub ms: Option<f64>,
    pub source: Option<String>,
}

impl StoredReading {
    pub(crate) fn from_json(json: &serde_json::Value) -> Option<StoredReading> {
        serde_json::from_value(json.clone()).ok()
    }

    fn value(&self) -> Option<f64> {
        self.value.filter(|v| v.is_finite())
    }

    fn bound(&self) -> Option<f64> {
        self.bound.filter(|v| v.is_finite())
    }

    pub(crate) fn threshold(&self) -> Option<f64> {
        self.threshold.filter(|v| v.is_finite())
    }

    fn baseline_ms(&self) -> Option<f64> {
        self.baseline
            .as_ref()
            .and_then(|b| b.ms)
            .filter(|ms| ms.is_finite() && *ms > 0.0)
    }

    /// For latency: the latency in milliseconds the threshold stands for,
    /// baseline × (1 + threshold).
    pub(crate) fn latency_bound_ms(&self) -> Option<f64> {
        let bound = self.baseline_ms()? * (1.0 + self.threshold()?);
        bound.is_finite().then_some(bound)
    }

    /// "error rate 8.1% (95% lower bound 7.4%) > 5% over 2m, 1,200 requests".
    /// `explanation` is the decision's, which names the confidence level the
    /// reading itself does not carry.
    fn describe(&self, rule: &str, explanation: &str) -> String {
        if let Some(reason) = &self.reason {
            return format!("{} inconclusive: {reason}", self.signal);
        }
        let mut text = match self.signal.as_str() {
            ERROR_RATE => self.describe_rate("error rate", "requests", explanation),
            USERS_AFFECTED => self.describe_rate("users affected", "users", explanation),
            LATENCY => self.describe_latency(),
            DOWN => match self.value() {
                Some(v) if v > 0.0 => "health probe failing".to_string(),
                Some(_) => "health probe passing".to_string(),
                None => "health probe result unknown".to_string(),
            },
            CHECK => match self.value() {
                Some(v) if v > 0.0 => format!("check of rule {rule} failing"),
                Some(_) => format!("check of rule {rule} passing"),
                None => format!("check of rule {rule}: result unknown"),
            },
            other => format!(
                "{other} {} against threshold {}",
                optional_number(self.value()),
                optional_number(self.threshold())
            ),
        };
        if let Some(verdict) = &self.verdict {
            text.push_str(&format!(" — {verdict}"));
        }
        text
    }

    fn describe_rate(&self, label: &str, unit: &str, explanation: &str) -> String {
        let mut text = format!("{label} {}", optional_percent(self.value()));
        if let Some(bound) = self.bound() {
            text.push_str(&format!(
                " ({} {})",
                confidence_label(explanation),
                format_percent(bound)
            ));
        }
        // The engine judges a rate by its lower bound, not by the raw value.
        let judged = self.bound().or(self.value());
        if let Some(threshold) = self.threshold() {
            text.push_str(&format!(
                " {} {}",
                comparison(judged, threshold),
                format_percent(threshold)
            ));
        }
        text.push_str(&self.window_text());
        if let Some(count) = self.count.filter(|c| c.is_finite()) {
            text.push_str(&format!(", {} {unit}", group_thousands(count)));
        }
        text
    }

    fn describe_latency(&self) -> String {
        let mut text = format!("latency {}", optional_ms(self.current_ms));
        if let Some(value) = self.value() {
            text.push_str(&format!(" ({})", signed_percent(value)));
        }
        if let Some(baseline) = self.baseline_ms() {
            let source = self
                .baseline
                .as_ref()
                .and_then(|b| b.source.as_deref())
                .unwrap_or("latency");
            text.push_str(&format!(
                " against the {source} baseline {}",
                optional_ms(Some(baseline))
            ));
        }
        if let Some(threshold) = self.threshold() {
            text.push_str(&format!(
                " {} {}",
                comparison(self.value(), threshold),
                signed_percent(threshold)
            ));
            if let Some(bound) = self.latency_bound_ms() {
                text.push_str(&format!(" (bound {})", optional_ms(Some(bound))));
            }
        }
        text.push_str(&self.window_text());
        if let Some(count) = self.count.filter(|c| c.is_finite()) {
            text.push_str(&format!(", median of {} samples", group_thousands(count)));
        }
        text
    }

    fn window_text(&self) -> String {
        self.window_seconds
            .and_then(TimeDelta::try_seconds)
            .map_or_else(String::new, |w| format!(" over {}", format_duration(w)))
    }
}

/// "95% lower bound", with the confidence the explanation names (the engine
/// writes "... (95% lower bound 7.4%) ..."); a plain label when it names none.
fn confidence_label(explanation: &str) -> String {
    static CONFIDENCE: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(r"(\d+(?:\.\d+)?%) lower bound").expect("the pattern is a valid regex")
    });
    CONFIDENCE
        .captures(explanation)
        .and_then(|c| c.get(1))
        .map_or_else(
            || "lower confidence bound".to_string(),
            |level| format!("{} lower bound", level.as_str()),
        )
}

fn comparison(value: Option<f64>, threshold: f64) -> &'static str {
    match value {
        Some(value) if value > threshold => ">",
        Some(_) => "≤",
        None => "vs",
    }
}

// ---------------------------------------------------------------------------
// Formatting helpers

fn kind_text(kind: IncidentKind) -> &'static str {
    match kind {
        IncidentKind::Rule => "rule",
        IncidentKind::Declared => "declared",
        IncidentKind::Drill => "drill",
    }
}

fn yes_no(flag: bool) -> &'static str {
    if flag { "yes" } else { "no" }
}

fn full_time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// How the sections write an instant: the time of day when everything about
/// the incident happened on the day it opened (the summary and the timeline
/// give that date), else date and time.
#[derive(Clone, Copy, Debug)]
struct Times {
    one_day: bool,
}

impl Times {
    fn of(timeline: &IncidentTimeline) -> Times {
        let day = timeline.incident.opened_at.date_naive();
        let mut instants = timeline
            .entries()
            .into_iter()
            .map(|entry| entry.at())
            .chain(timeline.steps.iter().filter_map(|s| s.ended_at))
            .chain(timeline.incident.watch_until);
        Times {
            one_day: instants.all(|at| at.date_naive() == day),
        }
    }

    fn show(self, at: DateTime<Utc>) -> String {
        let format = if self.one_day {
            "%H:%M:%S"
        } else {
            "%Y-%m-%d %H:%M:%S"
        };
        at.format(format).to_string()
    }
}

/// A length of time to the second (to the millisecond below ten seconds), the way
/// a policy writes it: `25m`, `1h2m3s`, `1s500ms`.
fn rounded_duration(delta: TimeDelta) -> String {
    if delta.num_milliseconds().abs() < 10_000 {
        format_duration(TimeDelta::milliseconds(delta.num_milliseconds()))
    } else {
        format_duration(TimeDelta::seconds(delta.num_seconds()))
    }
}

fn step_name(step: &StepRecord) -> String {
    format!("{}/{}", step.stage, step.name)
}

fn step_duration(step: &StepRecord) -> Option<String> {
    let duration = step
        .duration
        .and_then(|d| TimeDelta::from_std(d).ok())
        .or_else(|| step.ended_at.map(|end| end - step.started_at))?;
    Some(rounded_duration(duration))
}

fn outcome_text(outcome: StepOutcome) -> &'static str {
    match outcome {
        StepOutcome::Running => "running (its end was not recorded)",
        StepOutcome::Succeeded => "succeeded",
        StepOutcome::Failed => "failed",
        StepOutcome::TimedOut => "timed out",
        StepOutcome::FailedToStart => "failed to start",
        StepOutcome::Unknown => "unknown (interrupted by a restart)",
    }
}

fn optional_percent(value: Option<f64>) -> String {
    value.map_or_else(|| "unknown".to_string(), format_percent)
}

fn signed_percent(value: f64) -> String {
    if value >= 0.0 {
        format!("+{}", format_percent(value))
    } else {
        format_percent(value)
    }
}

fn optional_ms(value: Option<f64>) -> String {
    value
        .filter(|ms| ms.is_finite())
        .map_or_else(|| "unknown".to_string(), |ms| format!("{ms:.0} ms"))
}

fn optional_number(value: Option<f64>) -> String {
    value.map_or_else(|| "unknown".to_string(), |v| format!("{v}"))
}

/// 1200 → "1,200"; counts are whole numbers, so fractions are rounded.
fn group_thousands(count: f64) -> String {
    let digits = format!("{:.0}", count.abs());
    let mut grouped = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if count < 0.0 && digits != "0" {
        grouped.insert(0, '-');
    }
    grouped
}

/// Text inside a Markdown table cell: a `|` would end the cell and a newline
/// the row; `<` would open raw HTML.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '|' => out.push_str("\\|"),
            '<' => out.push_str("&lt;"),
            '\r' => {
                if chars.peek() != Some(&'\n') {
                    out.push_str("<br>");
                }
            }
            '\n' => out.push_str("<br>"),
            _ => out.push(c),
        }
    }
    out
}

/// Stored text on one Markdown line outside a table: no raw HTML, no line break.
fn inline(text: &str) -> String {
    text.replace('<', "&lt;").replace(['\r', '\n'], " ")
}

/// A code span that holds `text` whatever backticks it contains.
fn code_span(text: &str) -> String {
    let text = text.replace(['\r', '\n'], " ");
    let ticks = "`".repeat(longest_run(&text, '`') + 1);
    let pad = if text.starts_with('`') || text.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{ticks}{pad}{text}{pad}{ticks}")
}

/// A code fence longer than any run of backticks in `body`.
fn fence_for(body: &str) -> String {
    "`".repeat(longest_run(body, '`').max(2) + 1)
}

fn longest_run(text: &str, wanted: char) -> usize {
    let (mut longest, mut current) = (0, 0);
    for c in text.chars() {
        current = if c == wanted { current + 1 } else { 0 };
        longest = longest.max(current);
    }
    longest
}

fn shorten_line(line: &str) -> String {
    let chars = line.chars().count();
    if chars <= OUTPUT_LINE_CHARS {
        return line.to_string();
    }
    let tail: String = line.chars().skip(chars - OUTPUT_LINE_CHARS).collect();
    format!("…{tail}")
}

/// A Markdown link target: `<...>` when the name has spaces or parentheses.
fn link_target(file: &str) -> String {
    if file.contains([' ', '(', ')', '<', '>']) {
        format!("<{}>", file.replace('<', "%3C").replace('>', "%3E"))
    } else {
        file.to_string()
    }
}

/// The decisions' readings that parse, with their decisions.
fn readings(
    decisions: &[DecisionRecord],
) -> impl Iterator<Item = (&DecisionRecord, StoredReading)> {
    decisions.iter().filter_map(|decision| {
        let reading = StoredReading::from_json(decision.reading.as_ref()?)?;
        Some((decision, reading))
    })
}
