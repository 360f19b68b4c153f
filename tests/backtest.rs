//! Trace tests: the real `rollwatch backtest --format json` replays the small
//! traces in `tests/traces/` (written by `tests/traces/generate.py`, which
//! documents each one) through the shipped policies, and every decision is
//! compared with what the runbook ("When to Rollback") and docs/decisions.md call for,
//! at the instant they call for it.
//!
//! The traces share one shape: a healthy lead-in on v1.0.0 from 09:00:00 to
//! 09:30:00 (p95 200 ms: the pre-deploy baseline), the deploy of v1.1.0 at
//! 09:30:00, then the scenario, with its first bad observation at 09:30:15.
//! The expected times follow from the semantics:
//!
//! - a rule fires at the first observation where `now - first breaching
//!   observation >= for`; a windowed signal breaches once its window (clipped at
//!   the latest deploy or rollback, leaving out the observation stamped at that
//!   instant) has enough data and its confidence bound (or median) is past the
//!   threshold;
//! - production: immediate -> rollback, consider -> page-then-rollback with a
//!   10m deadline; staging: both -> rollback; dev: consider -> notify;
//! - a backtest rollback succeeds at the instant it is decided and the 15m
//!   stabilization watch starts; a rule firing during the watch escalates
//!   (page), never a second rollback;
//! - an incident without a rollback resolves after 5m with every rule clear.
//!
//! The trace goes on as recorded after a rollback: where a fault outlasts a
//! rollback (staging rolls back earlier than production), the watch escalates.
//!
//! Each expected line is `at action tier rule [(guard)] [deadline=T]
//! [[unanswered]]` (the last for the escalation of a page nobody answered,
//! which the summary does not count as another page), then one `summary`
//! line; times on 2026-11-24 are written HH:MM:SS. Whitespace between words
//! does not matter.

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

/// The day every decision of these traces falls on.
const DAY: &str = "2026-11-24T";

/// Replays `tests/traces/{trace}.jsonl` through `policies/{policy}.toml` and
/// compares the decisions and the summary with `expected`.
#[track_caller]
fn check(policy: &str, trace: &str, expected: &str) {
    check_each(&[policy], trace, expected);
}

/// `check` for each policy, reporting every policy that differs, not just the first.
#[track_caller]
fn check_each(policies: &[&str], trace: &str, expected: &str) {
    let failures: Vec<String> = policies
        .iter()
        .filter_map(|policy| {
            let actual = backtest(policy, trace);
            (words(&actual) != words(expected)).then(|| {
                format!(
                    "backtest --policy policies/{policy}.toml --trace tests/traces/{trace}.jsonl\n\
                     --- expected\n{}\n--- actual\n{actual}",
                    words(expected).join("\n")
                )
            })
        })
        .collect();
    if !failures.is_empty() {
        panic!("{}", failures.join("\n\n"));
    }
}

/// Every non-empty line with its words separated by single spaces.
fn words(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|line| !line.is_empty())
        .collect()
}

fn rollwatch() -> Command {
    let mut command = Command::cargo_bin("rollwatch").expect("the rollwatch binary is built");
    command.current_dir(env!("CARGO_MANIFEST_DIR"));
    command
}

/// Runs the backtest and renders its output in the form `check` compares,
/// checking the shape of the JSON contract (docs/trace-format.md) on the way.
fn backtest(policy: &str, trace: &str) -> String {
    let policy_path = format!("policies/{policy}.toml");
    let trace_path = format!("tests/traces/{trace}.jsonl");
    let output = rollwatch()
        .args([
            "backtest",
            "--policy",
            &policy_path,
            "--trace",
            &trace_path,
            "--format",
            "json",
        ])
        .output()
        .expect("rollwatch runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{policy_path} {trace_path}: {}\n{stderr}",
        output.status
    );
    let stdout = String::from_utf8(output.stdout).expect("stdout is UTF-8");
    let mut lines: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {e}: {line}")))
        .collect();
    let last = lines.pop().expect("at least the summary line");
    let summary = last
        .get("summary")
        .unwrap_or_else(|| panic!("the last line is not the summary: {last}"));
    let mut rendered = String::new();
    for decision in &lines {
        rendered.push_str(&render_decision(decision, &policy_path));
        rendered.push('\n');
    }
    rendered.push_str(&render_summary(summary));
    rendered
}

fn render_decision(decision: &Value, policy_path: &str) -> String {
    let text = |key: &str| {
        decision
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("decision without a string {key:?}: {decision}"))
    };
    let explanation = text("explanation");
    // docs/decisions.md: every decision names the policy file and its content hash.
    assert!(
        explanation.contains(&format!("[{policy_path} sha256:")),
        "the explanation does not name {policy_path} and its hash: {explanation}"
    );
    let mut line = format!(
        "{:<8} {:<18} {:<9} {:<19}",
        clock(&decision["at"]),
        text("action"),
        text("tier"),
        text("rule")
    );
    if let Some(guard) = decision.get("guard").and_then(Value::as_str) {
        line.push_str(&format!(" ({guard})"));
    }
    if let Some(deadline) = decision.get("deadline") {
        line.push_str(&format!(" deadline={}", clock(deadline)));
    }
    if decision.get("cause").and_then(Value::as_str) == Some("unanswered") {
        line.push_str(" [unanswered]");
    }
    line.trim_end().to_string()
}

fn render_summary(summary: &Value) -> String {
    let mut keys: Vec<&str> = summary
        .as_object()
        .expect("summary is an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "first_page_at",
            "first_rollback_at",
            "observations",
            "pages",
            "rollbacks"
        ],
        "the summary's fields (docs/trace-format.md)"
    );
    format!(
        "summary observations={} rollbacks={} first_rollback_at={} pages={} first_page_at={}",
        summary["observations"],
        summary["rollbacks"],
        clock(&summary["first_rollback_at"]),
        summary["pages"],
        clock(&summary["first_page_at"])
    )
}

/// "2026-11-24T09:32:15Z" -> "09:32:15"; other days in full; null stays null.
fn clock(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::String(at) => match at.strip_prefix(DAY).and_then(|t| t.strip_suffix('Z')) {
            Some(time) => time.to_string(),
            None => at.clone(),
        },
        other => panic!("not a time: {other}"),
    }
}

// --- Roll back immediately ----------------------------------------------------

#[test]
fn system_down_rolls_back_once_the_probe_failed_for_one_minute() {
    // Probe fails 09:30:15..09:31:15; `for = 1m` -> 09:31:15. Healthy after:
    // the watch ends stable at 09:31:15 + 15m.
    check_each(
        &["production", "staging", "dev"],
        "system-down",
        "
        09:31:15 rollback immediate system-down
        09:31:15 none     immediate system-down
        09:46:15 notify   immediate system-down
        summary observations=189 rollbacks=1 first_rollback_at=09:31:15 pages=0 first_page_at=null
        ",
    );
}

#[test]
fn data_corruption_rolls_back_once_data_integrity_failed_for_30s() {
    // data_integrity fails 09:30:15..09:30:45; `for = 30s` -> 09:30:45.
    check_each(
        &["production", "staging", "dev"],
        "data-corruption",
        "
        09:30:45 rollback immediate data-corruption
        09:30:45 none     immediate data-corruption
        09:45:45 notify   immediate data-corruption
        summary observations=189 rollbacks=1 first_rollback_at=09:30:45 pages=0 first_page_at=null
        ",
    );
}

#[test]
fn feature_broken_rolls_back_once_critical_features_failed_for_one_minute() {
    // critical_features fails 09:30:15..09:31:15; `for = 1m` -> 09:31:15.
    check_each(
        &["production", "staging", "dev"],
        "feature-broken",
        "
        09:31:15 rollback immediate feature-broken
        09:31:15 none     immediate feature-broken
        09:46:15 notify   immediate feature-broken
        summary observations=189 rollbacks=1 first_rollback_at=09:31:15 pages=0 first_page_at=null
        ",
    );
}

#[test]
fn a_declared_security_vulnerability_rolls_back_at_the_declaration() {
    // No metric shows it; the `declare` at 09:35:00 acts at once.
    check_each(
        &["production", "staging", "dev"],
        "declare-security",
        "
        09:35:00 rollback immediate declare
        09:35:00 none     immediate declare
        09:50:00 notify   immediate declare
        summary observations=205 rollbacks=1 first_rollback_at=09:35:00 pages=0 first_page_at=null
        ",
    );
}

#[test]
fn an_immediate_rule_cannot_be_suppressed_as_a_known_issue() {
    // allow_immediate_suppression = false: the suppression of system-down is
    // refused and the outage rolls back as in `system-down`.
    check_each(
        &["production", "staging"],
        "suppress-immediate-refused",
        "
        09:31:15 rollback immediate system-down
        09:31:15 none     immediate system-down
        09:46:15 notify   immediate system-down
        summary observations=189 rollbacks=1 first_rollback_at=09:31:15 pages=0 first_page_at=null
        ",
    );
}

// --- Consider rollback ----------------------------------------------------------

#[test]
fn latency_80_percent_over_baseline_pages_then_rolls_back_in_production() {
    // p95 360 ms vs 200 ms from 09:30:15 to 09:46:00. The 5m median needs
    // min_samples = 4, first met at 09:31:00; `for = 5m` -> 09:36:00. Unanswered,
    // the rollback comes at the 09:46:00 deadline; healthy after, stable at 10:01:00.
    check(
        "production",
        "latency-80pct",
        "
        09:36:00 page-then-rollback consider latency-degradation deadline=09:46:00
        09:46:00 rollback           consider latency-degradation
        09:46:00 none               consider latency-degradation
        10:01:00 notify             consider latency-degradation
        summary observations=249 rollbacks=1 first_rollback_at=09:46:00 pages=1 first_page_at=09:36:00
        ",
    );
    // Staging rolls back at 09:36:00. The recorded trace stays slow until
    // 09:46:00: after the rollback the median has 4 samples at 09:37:00 and holds
    // 5m -> escalation at 09:42:00. On the way down the 20-sample median passes
    // 280 ms (+40 %, the watch band) at 09:48:30, and every rule is clear from
    // 09:48:30, so the incident resolves at 09:53:30.
    check(
        "staging",
        "latency-80pct",
        "
        09:36:00 rollback consider latency-degradation
        09:36:00 none     consider latency-degradation
        09:42:00 page     consider latency-degradation (rollback-of-rollback)
        09:48:30 none     watch    latency-degradation
        09:53:30 notify   consider latency-degradation (recovered)
        summary observations=249 rollbacks=1 first_rollback_at=09:36:00 pages=1 first_page_at=09:42:00
        ",
    );
    check(
        "dev",
        "latency-80pct",
        "
        09:36:00 notify consider latency-degradation
        09:48:30 none   watch    latency-degradation
        09:53:30 notify consider latency-degradation (recovered)
        summary observations=249 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

#[test]
fn error_rate_15_percent_pages_then_rolls_back_in_production() {
    // 150 errors in 1000 requests from 09:30:15 to 09:42:15. The window is
    // clipped at the deploy, so 09:30:15 alone (1000 requests) already breaches;
    // `for = 2m` -> 09:32:15, deadline 09:42:15. Healthy from 09:42:30.
    check(
        "production",
        "error-rate-15pct",
        "
        09:32:15 page-then-rollback consider error-rate deadline=09:42:15
        09:42:15 rollback           consider error-rate
        09:42:15 none               consider error-rate
        09:57:15 notify             consider error-rate
        summary observations=233 rollbacks=1 first_rollback_at=09:42:15 pages=1 first_page_at=09:32:15
        ",
    );
    // Staging rolls back at 09:32:15; the recorded errors go on: breaching from
    // 09:32:30, escalation at 09:34:30. The 2m window drops below 5 % once fewer
    // than 3 bad intervals are in it (09:43:45): resolved 5m later.
    check(
        "staging",
        "error-rate-15pct",
        "
        09:32:15 rollback consider error-rate
        09:32:15 none     consider error-rate
        09:34:30 page     consider error-rate (rollback-of-rollback)
        09:48:45 notify   consider error-rate (recovered)
        summary observations=233 rollbacks=1 first_rollback_at=09:32:15 pages=1 first_page_at=09:34:30
        ",
    );
    check(
        "dev",
        "error-rate-15pct",
        "
        09:32:15 notify consider error-rate
        09:48:45 notify consider error-rate (recovered)
        summary observations=233 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

#[test]
fn users_affected_25_percent_pages_then_rolls_back_in_production() {
    // 125 of 500 users affected from 09:30:15 to 09:42:15: breaching from the
    // first interval (500 users >= min_users 50); `for = 2m` -> 09:32:15.
    check(
        "production",
        "users-affected-25pct",
        "
        09:32:15 page-then-rollback consider users-affected deadline=09:42:15
        09:42:15 rollback           consider users-affected
        09:42:15 none               consider users-affected
        09:57:15 notify             consider users-affected
        summary observations=233 rollbacks=1 first_rollback_at=09:42:15 pages=1 first_page_at=09:32:15
        ",
    );
    // After staging's rollback the fault goes on until 09:42:15; the 2m window
    // clears at 09:43:30 (its bound below 10 % with 3 bad intervals of 8): resolved
    // 5m later, at 09:48:30.
    check(
        "staging",
        "users-affected-25pct",
        "
        09:32:15 rollback consider users-affected
        09:32:15 none     consider users-affected
        09:34:30 page     consider users-affected (rollback-of-rollback)
        09:48:30 notify   consider users-affected (recovered)
        summary observations=233 rollbacks=1 first_rollback_at=09:32:15 pages=1 first_page_at=09:34:30
        ",
    );
    check(
        "dev",
        "users-affected-25pct",
        "
        09:32:15 notify consider users-affected
        09:48:30 notify consider users-affected (recovered)
        summary observations=233 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

// --- Don't roll back --------------------------------------------------------------

#[test]
fn latency_30_percent_is_watched_and_never_pages() {
    // +30 % is in the 20-50 % watch band from 09:31:00 (4 samples); after `for`
    // it is logged once, with action none.
    check_each(
        &["production", "staging", "dev"],
        "latency-30pct",
        "
        09:36:00 none watch latency-degradation
        summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

#[test]
fn latency_10_percent_is_ignored() {
    check_each(
        &["production", "staging", "dev"],
        "latency-10pct",
        "summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null",
    );
}

// --- Guards -------------------------------------------------------------------------

#[test]
fn low_traffic_is_inconclusive_and_nothing_fires() {
    // 1 error in 3 requests and 1 of 2 users affected per interval: 24 requests
    // in 2m (100 needed) and 40 users in 5m (50 needed).
    check_each(
        &["production", "staging", "dev"],
        "low-traffic",
        "summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null",
    );
}

#[test]
fn a_one_interval_blip_fires_nothing() {
    // 60 % errors at 09:35:00 keep the 2m window above 5 % until 09:36:45 only,
    // 1m45s < `for`; one failed probe at 09:40:00 is 0s < 1m.
    check_each(
        &["production", "staging", "dev"],
        "blip",
        "summary observations=201 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null",
    );
}

// docs/decisions.md: "One bad interval is a blip." users-affected averages over 5m,
// longer than its 2m `for`, so a single bad interval staying in the window must
// not be able to fire it (error-rate, whose 2m window equals its `for`, holds
// one interval 1m45s at most).

#[test]
fn a_one_interval_blip_right_after_the_deploy_fires_nothing() {
    // At 09:30:15 60 % errors and every user affected; healthy from 09:30:30.
    check_each(
        &["production", "staging", "dev"],
        "blip-after-deploy",
        "summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null",
    );
}

#[test]
fn a_one_interval_burst_of_affected_users_fires_nothing() {
    // At 09:35:00 a burst of 2000 sessions, all affected; healthy otherwise.
    check_each(
        &["production", "staging", "dev"],
        "users-burst",
        "summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null",
    );
}

#[test]
fn errors_without_a_recent_deploy_page_instead_of_rolling_back() {
    // The only deploy is 25h old, so the 2m window is not clipped: it breaches
    // once 3 of its 8 intervals are bad (09:30:45); `for = 2m` -> 09:32:45.
    check_each(
        &["production", "staging"],
        "no-recent-deploy",
        "
        09:32:45 page consider error-rate (no-recent-deploy)
        summary observations=161 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:32:45
        ",
    );
    check(
        "dev",
        "no-recent-deploy",
        "
        09:32:45 notify consider error-rate
        summary observations=161 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

#[test]
fn an_unanswered_page_escalates_exactly_escalate_after_later_and_is_not_counted_again() {
    // As no-recent-deploy, with the errors going on to 09:50:00: paged at
    // 09:32:45, nobody answers; `escalate_after` (default 15m) -> the page
    // goes to the escalation contacts at 09:47:45, once. The summary counts
    // one page: the escalation is that page reaching more people.
    check_each(
        &["production", "staging"],
        "unanswered-page",
        "
        09:32:45 page consider error-rate (no-recent-deploy)
        09:47:45 page consider error-rate [unanswered]
        summary observations=201 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:32:45
        ",
    );
    // Dev only notifies: nothing waits for an answer.
    check(
        "dev",
        "unanswered-page",
        "
        09:32:45 notify consider error-rate
        summary observations=201 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

#[test]
fn system_down_without_any_deploy_pages_instead_of_rolling_back() {
    // Down 09:30:15..09:31:15 with no deploy in the trace: a page, then every
    // rule is clear from 09:31:30, resolved at 09:36:30.
    check_each(
        &["production", "staging", "dev"],
        "down-without-deploy",
        "
        09:31:15 page   immediate system-down (no-recent-deploy)
        09:36:30 notify immediate system-down (recovered)
        summary observations=161 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:31:15
        ",
    );
}

#[test]
fn a_metrics_outage_after_a_deploy_pages_watchdog_blind_and_never_rolls_back() {
    // source_error from 09:30:15 to 09:40:00: no data since the 09:30:00 deploy;
    // `blind_after = 5m` -> 09:35:00. Never "down", never a rollback.
    check_each(
        &["production", "staging", "dev"],
        "metrics-outage",
        "
        09:35:00 page consider watchdog-blind (no-data)
        summary observations=141 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:35:00
        ",
    );
}

#[test]
fn a_suppressed_rule_fires_as_a_log_line_only() {
    // error-rate fires at 09:32:15 as in `error-rate-15pct`, but it is a known issue.
    check_each(
        &["production", "staging", "dev"],
        "suppression",
        "
        09:32:15 none consider error-rate (known-issue)
        summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

#[test]
fn a_suppression_that_expires_lets_the_firing_rule_act() {
    // The known issue ends at 09:40:00 with the rule still firing: it acts then.
    check(
        "production",
        "suppression-expires",
        "
        09:32:15 none               consider error-rate (known-issue)
        09:40:00 page-then-rollback consider error-rate deadline=09:50:00
        09:50:00 rollback           consider error-rate
        09:50:00 none               consider error-rate
        summary observations=205 rollbacks=1 first_rollback_at=09:50:00 pages=1 first_page_at=09:40:00
        ",
    );
    check(
        "staging",
        "suppression-expires",
        "
        09:32:15 none     consider error-rate (known-issue)
        09:40:00 rollback consider error-rate
        09:40:00 none     consider error-rate
        09:42:15 page     consider error-rate (rollback-of-rollback)
        summary observations=205 rollbacks=1 first_rollback_at=09:40:00 pages=1 first_page_at=09:42:15
        ",
    );
    check(
        "dev",
        "suppression-expires",
        "
        09:32:15 none   consider error-rate (known-issue)
        09:40:00 notify consider error-rate
        summary observations=205 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

// --- Human answers ----------------------------------------------------------------

#[test]
fn an_ack_before_the_deadline_cancels_the_automatic_rollback() {
    // Paged at 09:32:15 (deadline 09:42:15), acknowledged at 09:35:00; the
    // errors go on until 09:50:00 and nothing rolls back.
    check(
        "production",
        "ack",
        "
        09:32:15 page-then-rollback consider error-rate deadline=09:42:15
        09:35:00 none               consider error-rate (acknowledged)
        summary observations=201 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:32:15
        ",
    );
    // Staging has already rolled back (and escalated) when the ack comes.
    check(
        "staging",
        "ack",
        "
        09:32:15 rollback consider error-rate
        09:32:15 none     consider error-rate
        09:34:30 page     consider error-rate (rollback-of-rollback)
        09:35:00 none     consider error-rate (acknowledged)
        summary observations=201 rollbacks=1 first_rollback_at=09:32:15 pages=1 first_page_at=09:34:30
        ",
    );
}

#[test]
fn a_hold_means_no_rollback_for_the_incident() {
    check(
        "production",
        "hold",
        "
        09:32:15 page-then-rollback consider error-rate deadline=09:42:15
        09:35:00 none               consider error-rate (held)
        summary observations=201 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:32:15
        ",
    );
    check(
        "staging",
        "hold",
        "
        09:32:15 rollback consider error-rate
        09:32:15 none     consider error-rate
        09:34:30 page     consider error-rate (rollback-of-rollback)
        09:35:00 none     consider error-rate (held)
        summary observations=201 rollbacks=1 first_rollback_at=09:32:15 pages=1 first_page_at=09:34:30
        ",
    );
}

#[test]
fn an_approve_rolls_back_at_the_approve_instant() {
    // Approved at 09:35:00, before the 09:42:15 deadline; healthy from 09:35:15.
    check(
        "production",
        "approve",
        "
        09:32:15 page-then-rollback consider error-rate deadline=09:42:15
        09:35:00 rollback           consider error-rate
        09:35:00 none               consider error-rate
        09:50:00 notify             consider error-rate
        summary observations=205 rollbacks=1 first_rollback_at=09:35:00 pages=1 first_page_at=09:32:15
        ",
    );
    // In dev a human may still approve what only notified.
    check(
        "dev",
        "approve",
        "
        09:32:15 notify   consider error-rate
        09:35:00 rollback consider error-rate
        09:35:00 none     consider error-rate
        09:50:00 notify   consider error-rate
        summary observations=205 rollbacks=1 first_rollback_at=09:35:00 pages=0 first_page_at=null
        ",
    );
    // Staging rolled back at 09:32:15 already: the approve cannot roll back the
    // rollback. The window clears at 09:36:30: resolved at 09:41:30.
    check(
        "staging",
        "approve",
        "
        09:32:15 rollback consider error-rate
        09:32:15 none     consider error-rate
        09:34:30 page     consider error-rate (rollback-of-rollback)
        09:35:00 none     consider error-rate (rollback-of-rollback)
        09:41:30 notify   consider error-rate (recovered)
        summary observations=205 rollbacks=1 first_rollback_at=09:32:15 pages=1 first_page_at=09:34:30
        ",
    );
}

// --- After a rollback -------------------------------------------------------------

#[test]
fn a_rollback_that_does_not_help_escalates_and_never_rolls_back_again() {
    // Errors from 09:30:15 to 10:20:00, whatever runs. After the rollback the
    // window restarts; breaching again from the next interval, 2m later the
    // watch escalates. Nothing more, also after the cooldown has passed.
    check(
        "production",
        "rollback-does-not-help",
        "
        09:32:15 page-then-rollback consider error-rate deadline=09:42:15
        09:42:15 rollback           consider error-rate
        09:42:15 none               consider error-rate
        09:44:30 page               consider error-rate (rollback-of-rollback)
        summary observations=321 rollbacks=1 first_rollback_at=09:42:15 pages=2 first_page_at=09:32:15
        ",
    );
    check(
        "staging",
        "rollback-does-not-help",
        "
        09:32:15 rollback consider error-rate
        09:32:15 none     consider error-rate
        09:34:30 page     consider error-rate (rollback-of-rollback)
        summary observations=321 rollbacks=1 first_rollback_at=09:32:15 pages=1 first_page_at=09:34:30
        ",
    );
}

#[test]
fn errors_that_breach_through_the_deploy_page_instead_of_rolling_back() {
    // 15 % errors from 09:29:00, breaching when v1.1.0 is deployed at 09:30:00.
    check_each(
        &["production", "staging"],
        "preexisting",
        "
        09:32:15 page consider error-rate (preexisting)
        summary observations=181 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:32:15
        ",
    );
    check(
        "dev",
        "preexisting",
        "
        09:32:15 notify consider error-rate
        summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

#[test]
fn errors_that_breached_in_the_baseline_window_page_instead_of_rolling_back() {
    // docs/decisions.md: "when a signal already breached its threshold in the baseline
    // window before the deployment, rolling back will not fix it, so the rule
    // pages instead". Errors 09:05:00..09:15:00 (with no deploy yet: a page at
    // 09:07:30, resolved at 09:21:30), inside the 30m baseline window of the
    // 09:30:00 deploy; the same errors return after it.
    check_each(
        &["production", "staging"],
        "preexisting-in-baseline-window",
        "
        09:07:30 page   consider error-rate (no-recent-deploy)
        09:21:30 notify consider error-rate (recovered)
        09:32:15 page   consider error-rate (preexisting)
        summary observations=181 rollbacks=0 first_rollback_at=null pages=2 first_page_at=09:07:30
        ",
    );
}

#[test]
fn a_second_bad_deploy_inside_the_cooldown_pages_instead_of_rolling_back() {
    // Rolled back at 09:31:15 (system down); v1.2.0 at 09:50:00 with errors
    // from 09:50:15 fires at 09:52:15, 21m after the rollback: inside the 30m
    // cooldown of production.toml and staging.toml.
    check_each(
        &["production", "staging"],
        "cooldown",
        "
        09:31:15 rollback immediate system-down
        09:31:15 none     immediate system-down
        09:46:15 notify   immediate system-down
        09:52:15 page     consider  error-rate (cooldown)
        summary observations=241 rollbacks=1 first_rollback_at=09:31:15 pages=1 first_page_at=09:52:15
        ",
    );
}

// --- A burst that ended (docs/decisions.md) ----------------------------------------

#[test]
fn a_cold_start_that_recovered_before_for_elapsed_is_told_not_paged() {
    // Every request fails 09:30:15-09:30:45, then 0.4 %. The 2m window breaches
    // from 09:30:15 and still does at 09:32:15 (`for` met on history alone),
    // but the 15s short window holds only the healthy 09:32:15: one notify,
    // no page, no rollback, no incident; nothing more when the window clears.
    check_each(
        &["production", "staging", "dev"],
        "cold-start",
        "
        09:32:15 notify consider error-rate (recovered)
        summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

#[test]
fn a_burst_that_resumes_while_the_window_still_breaches_acts_then() {
    // As cold-start, told at 09:32:15; every request fails again from 09:32:30
    // while the 2m window still breaches: the rule fires at 09:32:30 and acts
    // as any breach does (deadline 09:42:30, stable 15m after the rollback).
    check(
        "production",
        "cold-start-resumes",
        "
        09:32:15 notify             consider error-rate (recovered)
        09:32:30 page-then-rollback consider error-rate deadline=09:42:30
        09:42:30 rollback           consider error-rate
        09:42:30 none               consider error-rate
        09:57:30 notify             consider error-rate
        summary observations=233 rollbacks=1 first_rollback_at=09:42:30 pages=1 first_page_at=09:32:30
        ",
    );
    // Staging rolls back at 09:32:30; the recorded errors go on to 09:42:30:
    // breaching again from 09:32:45, the watch escalates 2m later.
    check(
        "staging",
        "cold-start-resumes",
        "
        09:32:15 notify   consider error-rate (recovered)
        09:32:30 rollback consider error-rate
        09:32:30 none     consider error-rate
        09:34:45 page     consider error-rate (rollback-of-rollback)
        09:49:30 notify   consider error-rate (recovered)
        summary observations=233 rollbacks=1 first_rollback_at=09:32:30 pages=1 first_page_at=09:34:45
        ",
    );
}

#[test]
fn errors_that_end_after_the_page_clear_before_the_deadline_and_never_roll_back() {
    // 15 % errors 09:30:15-09:33:00: paged at 09:32:15 as in error-rate-15pct
    // (the short window still breaches); clear from 09:34:30, resolved at
    // 09:39:30, before the 09:42:15 deadline. As before issue 18.
    check(
        "production",
        "errors-end-after-page",
        "
        09:32:15 page-then-rollback consider error-rate deadline=09:42:15
        09:39:30 notify             consider error-rate (recovered)
        summary observations=201 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:32:15
        ",
    );
}

#[test]
fn errors_that_end_just_before_the_deadline_do_not_roll_back() {
    // 15 % errors until 09:41:30. At the 09:42:15 deadline the 2m window still
    // breaches (5 bad intervals of 8) but its short window has been healthy
    // since 09:41:45: the breach has ended, no rollback (recovered); the page
    // stands, nobody answered it, so it escalates at 09:47:15, and the
    // incident resolves at 09:48:00, 5m after the window cleared.
    check(
        "production",
        "errors-end-before-deadline",
        "
        09:32:15 page-then-rollback consider error-rate deadline=09:42:15
        09:42:15 none               consider error-rate (recovered)
        09:47:15 page               consider error-rate [unanswered]
        09:48:00 notify             consider error-rate (recovered)
        summary observations=201 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:32:15
        ",
    );
}

#[test]
fn at_low_traffic_an_inconclusive_short_window_does_not_veto() {
    // 15 requests per interval, all failing 09:30:15-09:32:30. The 2m window
    // is conclusive from 09:31:45 (105 requests), so `for` is met at 09:33:45,
    // when the errors have stopped; but 15 requests without an error cannot
    // tell 0 % from 15 %: inconclusive, and the rule acts as before.
    check(
        "production",
        "low-traffic-cold-start",
        "
        09:33:45 page-then-rollback consider error-rate deadline=09:43:45
        09:39:30 notify             consider error-rate (recovered)
        summary observations=181 rollbacks=0 first_rollback_at=null pages=1 first_page_at=09:33:45
        ",
    );
    check(
        "staging",
        "low-traffic-cold-start",
        "
        09:33:45 rollback consider error-rate
        09:33:45 none     consider error-rate
        summary observations=181 rollbacks=1 first_rollback_at=09:33:45 pages=0 first_page_at=null
        ",
    );
}

#[test]
fn a_latency_burst_that_ended_is_told_not_paged() {
    // p95 1000 ms 09:30:15-09:34:00. The 5m median breaches from 09:31:00 (4
    // samples) and still does at 09:36:00 (12 slow samples of 20), but the
    // 25s short window (1/12 of 5m) holds two 200 ms samples.
    check_each(
        &["production", "staging", "dev"],
        "latency-cold-start",
        "
        09:36:00 notify consider latency-degradation (recovered)
        summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

#[test]
fn a_burst_of_affected_users_that_ended_is_told_not_paged() {
    // Every user affected 09:30:15-09:30:45: the 2m window breaches until
    // 09:32:30, `for` is met at 09:32:15 with a healthy short window.
    check_each(
        &["production", "staging", "dev"],
        "users-cold-start",
        "
        09:32:15 notify consider users-affected (recovered)
        summary observations=181 rollbacks=0 first_rollback_at=null pages=0 first_page_at=null
        ",
    );
}

// --- The command's contract (docs/trace-format.md, README.md#commands) ---------------------------------------------

const GOOD_LINE_1: &str = r#"{"at":"2026-11-24T09:00:00Z","up":true,"requests":1000,"errors":2}"#;
const GOOD_LINE_2: &str = r#"{"at":"2026-11-24T09:00:15Z","up":true,"requests":1000,"errors":2}"#;

/// Runs the backtest on a trace whose third line is `third` and expects exit
/// 1, nothing on stdout, and stderr naming line 3 and containing `says`.
#[track_caller]
fn check_bad_trace(third: &str, says: &str) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let trace = dir.path().join("trace.jsonl");
    std::fs::write(
        &trace,
        format!("{GOOD_LINE_1}\n{GOOD_LINE_2}\n{third}\n{GOOD_LINE_2}\n"),
    )
    .expect("trace written");
    let output = backtest_files(Path::new("policies/production.toml"), &trace);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{third}: {stderr}");
    assert!(
        stderr.contains("line 3:"),
        "stderr does not name line 3 for {third}: {stderr}"
    );
    assert!(
        stderr.contains(says),
        "stderr does not say {says:?} for {third}: {stderr}"
    );
    assert!(
        output.stdout.is_empty(),
        "no summary after a bad trace: {}",
        String::from_utf8_lossy(&output.stdout)
    );
}

fn backtest_files(policy: &Path, trace: &Path) -> std::process::Output {
    rollwatch()
        .arg("backtest")
        .arg("--policy")
        .arg(policy)
        .arg("--trace")
        .arg(trace)
        .args(["--format", "json"])
        .output()
        .expect("rollwatch runs")
}

#[test]
fn a_malformed_line_is_named_by_its_number() {
    check_bad_trace(
        r#"{"at":"2026-11-24T09:00:30Z","up":tru"#,
        "not a trace line",
    );
    check_bad_trace(r#"{"up":true}"#, "missing \"at\"");
    check_bad_trace(
        r#"{"at":"2026-11-24T09:00:30Z","event":"explode"}"#,
        "unknown event",
    );
    check_bad_trace(
        r#"{"at":"2026-11-24T09:00:30Z","requests":"many"}"#,
        "not a trace line",
    );
}

#[test]
fn time_going_backwards_is_named_by_its_line() {
    check_bad_trace(r#"{"at":"2026-11-24T09:00:05Z","up":true}"#, "backwards");
}

#[test]
fn a_missing_trace_file_exits_1() {
    let output = backtest_files(
        Path::new("policies/production.toml"),
        Path::new("tests/traces/no-such-trace.jsonl"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no-such-trace.jsonl"),
        "stderr does not name the file: {stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn a_broken_policy_exits_2_and_names_file_line_and_key() {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/production.toml"),
    )
    .expect("the shipped production policy");
    let misspelt = "treshold = \"5%\"";
    let broken = shipped.replacen("threshold = \"5%\"", misspelt, 1);
    let line = broken
        .lines()
        .position(|l| l.starts_with(misspelt))
        .expect("the misspelt key")
        + 1;
    let dir = tempfile::tempdir().expect("a temporary directory");
    let policy = dir.path().join("broken.toml");
    std::fs::write(&policy, broken).expect("policy written");
    let output = backtest_files(&policy, Path::new("tests/traces/error-rate-15pct.jsonl"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let position = format!("{}:{line}:", policy.display());
    assert!(
        stderr.contains(&position),
        "stderr does not name {position}: {stderr}"
    );
    assert!(
        stderr.contains("treshold"),
        "stderr does not name the key: {stderr}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn an_empty_trace_gives_an_empty_summary() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let trace = dir.path().join("empty.jsonl");
    std::fs::write(&trace, "").expect("trace written");
    let output = backtest_files(Path::new("policies/production.toml"), &trace);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(
        summary,
        serde_json::json!({"summary": {"observations": 0, "first_rollback_at": null, "first_page_at": null, "rollbacks": 0, "pages": 0}})
    );
}
