//! `rollwatch evaluate`: sample a target for a while, judge it, and exit with
//! the verdict (0 healthy, 3 page, 4 rollback).

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use super::{Failure, OutputFormat, load_target, open_recorder};
use crate::engine::decision::Decision;
use crate::engine::policy::Action;
use crate::engine::{RuleStatus, time_text};
use crate::runtime::target;
use crate::units::{HumanDuration, format_duration};

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
