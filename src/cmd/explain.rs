//! `rollwatch explain`: a policy in plain words, with each rule's time from a
//! fault to the decision, so a reviewer can check the file says what they mean.

use std::fmt::Write;

use chrono::TimeDelta;

use crate::engine::policy::{Action, BaselineMode, Policy, Rule, Signal, Tier};
use crate::procedure::config::{Procedure, Stage};
use crate::units::{format_duration, format_percent};

pub fn explain(policy: &Policy) -> String {
    let mut out = String::new();
    let ev = &policy.evaluation;
    let _ = writeln!(out, "{} in {}", policy.service, policy.environment);
    let _ = writeln!(out, "policy {} (sha256:{})", policy.path, policy.sha256);
    let _ = writeln!(
        out,
        "Samples every {}. Error rates and user impact count only when their one-sided {} confidence bound is past the threshold.",
        format_duration(ev.interval),
        format_percent(ev.confidence)
    );
    for tier in [Tier::Immediate, Tier::Consider, Tier::Watch, Tier::Ignore] {
        let rules: Vec<&Rule> = policy.rules.iter().filter(|r| r.tier == tier).collect();
        if rules.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{}", tier_heading(policy, tier));
        for rule in rules {
            let _ = writeln!(out, "  - {}: {}.", rule.name, condition(policy, rule));
            let _ = writeln!(out, "      {}", timing(policy, rule));
            if let Some(recent) = short_window(policy, rule) {
                let _ = writeln!(out, "      {recent}");
            }
        }
    }
    let watched: Vec<String> = policy
        .rules
        .iter()
        .filter_map(|r| {
            let (watch, threshold) = (r.watch_above?, r.signal.threshold()?);
            Some(format!(
                "{} between {} and {}",
                r.name,
                format_percent(watch),
                format_percent(threshold)
            ))
        })
        .collect();
    if !watched.is_empty() {
        let _ = writeln!(
            out,
            "\nWatched, never paged ({}): {}.",
            action_words(policy.actions.watch).to_lowercase(),
            watched.join("; ")
        );
    }
    let _ = writeln!(out, "\nNot rolled back:");
    let _ = writeln!(
        out,
        "  - anything below a rule's threshold (and below its watch band), and minor issues no rule describes;"
    );
    let _ = writeln!(
        out,
        "  - a rule firing with no deployment in the last {}: it pages instead, saying why;",
        format_duration(ev.recent_deploy_window)
    );
    let _ = writeln!(
        out,
        "  - a breach that already existed before the deployment: it pages instead;"
    );
    let _ = writeln!(
        out,
        "  - while a rollback runs, within {} of the last automatic rollback, and never a rollback of a rollback;",
        format_duration(ev.cooldown)
    );
    let _ = writeln!(
        out,
        "  - no data: after a deployment, {} without usable metrics pages \"watchdog blind\"; missing data never rolls back;",
        format_duration(ev.blind_after)
    );
    if policy.known_issues.is_empty() {
        let _ = writeln!(
            out,
            "  - known issues: none configured{}.",
            immediate_suppression(policy)
        );
    } else {
        let _ = writeln!(out, "  - known issues{}:", immediate_suppression(policy));
        for issue in &policy.known_issues {
            let _ = writeln!(
                out,
                "      {} suppressed until {}: {}",
                issue.rule,
                crate::engine::time_text(issue.until),
                issue.reason
            );
        }
    }
    let _ = writeln!(
        out,
        "\nAfter a rollback: error rate and latency are watched for {}; stable resolves the incident, a rule firing escalates to humans.",
        format_duration(policy.stabilization)
    );
    let _ = writeln!(
        out,
        "An incident without a rollback resolves after every rule has been clear for {}.",
        format_duration(ev.resolve_after)
    );
    let _ = writeln!(
        out,
        "A human may declare an incident (acts at once, through the same guards), and answer a page with ack (owns it, cancels the automatic rollback), hold (no rollback) or approve (roll back now)."
    );
    out
}

fn immediate_suppression(policy: &Policy) -> &'static str {
    if policy.evaluation.allow_immediate_suppression {
        "; immediate rules may be suppressed"
    } else {
        "; immediate rules can never be suppressed"
    }
}

fn tier_heading(policy: &Policy, tier: Tier) -> String {
    let action = policy.actions.for_tier(tier);
    let what = match tier {
        Tier::Immediate => "immediate",
        Tier::Consider => "consider",
        Tier::Watch => "watch",
        Tier::Ignore => "ignore",
    };
    let mut heading = action_words(action).to_string();
    if action == Action::PageThenRollback {
        heading = format!(
            "Pages on-call, then rolls back if nobody acknowledges or holds within {}",
            format_duration(policy.actions.page_timeout)
        );
    }
    format!("{heading} ({what}):")
}

fn action_words(action: Action) -> &'static str {
    match action {
        Action::Rollback => "Rolls back automatically",
        Action::PageThenRollback => "Pages on-call, then rolls back",
        Action::Page => "Pages on-call, never rolls back",
        Action::Notify => "Notifies the team, never pages or rolls back",
        Action::None => "Logged and shown in status only",
    }
}

fn condition(policy: &Policy, rule: &Rule) -> String {
    let window = format_duration(rule.window);
    let held = format_duration(rule.hold_for);
    match &rule.signal {
        Signal::Down => format!("the health probe fails for {held}"),
        Signal::Check { name, .. } => format!("check {name} fails for {held}"),
        Signal::ErrorRate {
            threshold,
            min_requests,
        } => format!(
            "errors / requests over {window} above {} (by its lower bound, with at least {min_requests:.0} requests) for {held}",
            format_percent(*threshold)
        ),
        Signal::UsersAffected {
            threshold,
            min_users,
        } => format!(
            "users affected / users over {window} above {} (by its lower bound, with at least {min_users:.0} users) for {held}",
            format_percent(*threshold)
        ),
        Signal::LatencyDegradation {
            threshold,
            min_samples,
        } => {
            let b = &policy.baseline;
            let baseline = match (b.mode, b.fixed_ms) {
                (BaselineMode::Fixed, Some(ms)) => format!("the fixed baseline {ms:.0}ms"),
                (_, Some(ms)) => format!(
                    "the {} before the latest deployment ({ms:.0}ms when none is known)",
                    format_duration(b.window)
                ),
                (_, None) => format!(
                    "the {} before the latest deployment",
                    format_duration(b.window)
                ),
            };
            format!(
                "{} latency (median over {window}, at least {min_samples} samples) more than {} above {baseline}, for {held}",
                b.quantile.as_str(),
                format_percent(*threshold)
            )
        }
    }
}

/// "fault to decision: about 2m15s (15s polls, must hold 2m)"
fn timing(policy: &Policy, rule: &Rule) -> String {
    let interval = policy.evaluation.interval;
    // A latency median needs min_samples polls before it says anything.
    let (warmup, warmup_text) = match rule.signal {
        Signal::LatencyDegradation { min_samples, .. } if min_samples > 1 => {
            let polls = min_samples as i32 - 1;
            (interval * polls, format!(", {min_samples} samples first"))
        }
        _ => (TimeDelta::zero(), String::new()),
    };
    let decision = interval + warmup + rule.hold_for;
    let mut text = format!(
        "fault to decision: at most about {} ({} polls{warmup_text}, must hold {})",
        format_duration(decision),
        format_duration(interval),
        format_duration(rule.hold_for)
    );
    if rule.signal.is_windowed() {
        text.push_str(&format!(
            "; a breach just over the threshold also needs to fill the {} window",
            format_duration(rule.window)
        ));
    }
    let action = policy.actions.for_tier(rule.tier);
    if action == Action::PageThenRollback {
        let rollback = decision + policy.actions.page_timeout;
        text.push_str(&format!(
            "; unanswered, the rollback starts about {} after the fault",
            format_duration(rollback)
        ));
    }
    if rule.tier == Tier::Watch || rule.tier == Tier::Ignore || action == Action::None {
        return text.replace("fault to decision", "fault to log line");
    }
    text
}

/// "short window 15s: ..." for a windowed rule that pages or rolls back
/// (docs/decisions.md, "A burst that ended is told, not paged"); `None` for
/// instant signals, whose reading is already current, and for rules that
/// do neither.
fn short_window(policy: &Policy, rule: &Rule) -> Option<String> {
    let action = policy.actions.for_tier(rule.tier);
    if !rule.signal.is_windowed() || rule.tier < Tier::Consider || action == Action::None {
        return None;
    }
    let interval = policy.evaluation.interval;
    let warmup = match rule.signal {
        Signal::LatencyDegradation { min_samples, .. } if min_samples > 1 => {
            interval * (min_samples as i32 - 1)
        }
        _ => TimeDelta::zero(),
    };
    // The rule fires `for` after its first conclusive breaching poll; a burst
    // whose last bad poll is a short window before that is told instead.
    let room = warmup + rule.hold_for + interval - rule.short_window;
    let polls = room.num_milliseconds() / interval.num_milliseconds().max(1);
    let short = format_duration(rule.short_window);
    let what = if action.may_roll_back() {
        "pages or rolls back"
    } else {
        "acts"
    };
    let mut text = format!(
        "short window {short}: {what} only if the last {short} is not confidently healthy (too little traffic to tell does not hold it back)"
    );
    if polls > 0 {
        text.push_str(&format!(
            "; a burst of up to about {} that has ended by then is told (notify), not paged",
            format_duration(interval * polls as i32)
        ));
    }
    Some(text)
}

/// The rollback procedure in plain words, stage by stage.
pub fn explain_procedure(procedure: Option<&Procedure>) -> String {
    let Some(procedure) = procedure else {
        return "\nNo [procedure]: rollbacks are decided and announced, but rollwatch has no steps to run.\n".to_string();
    };
    let mut out = String::from(
        "\nRollback procedure (full rollback; partial rollbacks run their component's steps):\n",
    );
    for &stage in Stage::ALL {
        let steps: Vec<String> = procedure
            .steps_for(stage, None)
            .map(|s| {
                format!(
                    "{} ({}, at most {}{})",
                    s.name,
                    s.command.argv.join(" "),
                    std_duration(s.command.timeout),
                    if s.idempotent { ", idempotent" } else { "" }
                )
            })
            .collect();
        let note = match stage {
            Stage::Backup => format!(
                " — skipped for an immediate rollback when it could take longer than {}",
                std_duration(procedure.backup_budget)
            ),
            Stage::Database if !procedure.database_rollback => {
                " — disabled (database_rollback = false)".to_string()
            }
            Stage::Database => " — only for a deployment that carried migrations".to_string(),
            Stage::Recovery => {
                " — only when a stage fails, then the escalation contacts are paged".to_string()
            }
            _ => String::new(),
        };
        let listed = if steps.is_empty() {
            "none".to_string()
        } else {
            steps.join("; ")
        };
        let _ = writeln!(out, "  {}: {listed}{note}", stage.as_str());
    }
    let components = procedure.components();
    if !components.is_empty() {
        let _ = writeln!(
            out,
            "  components that can be rolled back alone: {}",
            components.join(", ")
        );
    }
    let drills = procedure.drill_every.map_or_else(
        || "none scheduled (`rollwatch drill` runs one)".to_string(),
        |every| format!("`run` carries out a drill every {}", std_duration(every)),
    );
    let _ = writeln!(out, "  drills: {drills}");
    let idempotent: Vec<&str> = procedure
        .steps
        .iter()
        .filter(|s| s.idempotent)
        .map(|s| s.name.as_str())
        .collect();
    let _ = writeln!(
        out,
        "  after a crash that loses a step's end: {}",
        if idempotent.is_empty() {
            "the step is not run again and the escalation contacts are paged (no step is marked idempotent)".to_string()
        } else {
            format!(
                "{} (idempotent) run again, once; any other step is not run again and the escalation contacts are paged",
                idempotent.join(", ")
            )
        }
    );
    out
}

fn std_duration(duration: std::time::Duration) -> String {
    format_duration(TimeDelta::from_std(duration).unwrap_or(TimeDelta::MAX))
}
