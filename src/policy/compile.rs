//! Raw policy → validated `engine::Policy`. Applies defaults, checks every value
//! and the relations between rules, and collects all problems before failing
//! (a person fixing a policy at 3 a.m. wants the whole list at once).

use std::ops::Range;

use chrono::{DateTime, TimeDelta, Utc};
use statrs::distribution::{ContinuousCDF, Normal};
use toml::Spanned;

use super::raw::{
    RawActions, RawBaseline, RawEvaluation, RawHealth, RawNotify, RawPolicy, RawProcedure, RawRule,
    RawSource,
};
use crate::engine::policy::{
    Action, Actions, Baseline, BaselineMode, Evaluation, KnownIssue, Policy, Quantile, Rule,
    Signal, Tier,
};
use crate::engine::signals::MAX_CHECKS;
use crate::policy::notify::{
    Channel, ChannelKind, DEFAULT_CHANNEL_DEADLINE, DEFAULT_CHANNEL_TIMEOUT,
    DEFAULT_ESCALATE_AFTER, NotifyConfig, Routes, SmtpSecurity,
};
use crate::procedure::command::CommandSpec;
use crate::procedure::config::{Procedure, Stage, Step};
use crate::sources::config::{
    CheckConfig, DEFAULT_CHECK_TIMEOUT, DEFAULT_HEALTH_TIMEOUT, DEFAULT_MAX_BYTES, HealthConfig,
    Queries, SourceConfig, SourceKind,
};
use crate::sources::scrape::ScrapeMetrics;
use crate::sources::selector::Selector;
use crate::units::{HumanDuration, Ratio, format_duration};

/// A problem: where it is in the (substituted) text and what it says.
pub type Problem = (Range<usize>, String);

pub const DEFAULT_INTERVAL_SECS: i64 = 15;
pub const DEFAULT_CONFIDENCE: f64 = 0.95;
pub const DEFAULT_RECENT_DEPLOY_WINDOW_SECS: i64 = 24 * 3600;
pub const DEFAULT_COOLDOWN_SECS: i64 = 30 * 60;
pub const DEFAULT_RESOLVE_AFTER_SECS: i64 = 5 * 60;
pub const DEFAULT_BLIND_AFTER_SECS: i64 = 5 * 60;
pub const DEFAULT_BASELINE_WINDOW_SECS: i64 = 30 * 60;
pub const DEFAULT_PAGE_TIMEOUT_SECS: i64 = 10 * 60;
pub const DEFAULT_STABILIZATION_SECS: i64 = 15 * 60;
pub const DEFAULT_MIN_REQUESTS: u64 = 50;
pub const DEFAULT_MIN_USERS: u64 = 50;
pub const DEFAULT_MIN_SAMPLES: u64 = 3;

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.0.push((span, message.into()));
    }
}

/// The whole compiled file: the engine's policy and how to look at the target.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub policy: Policy,
    pub source: Option<SourceConfig>,
    pub health: Option<HealthConfig>,
    pub checks: Vec<CheckConfig>,
    pub procedure: Option<Procedure>,
    pub notify: Option<NotifyConfig>,
}

pub fn compile(raw: RawPolicy, path: &str, sha256: String) -> Result<Compiled, Vec<Problem>> {
    let mut problems = Problems::default();
    let source = raw
        .source
        .map(|s| compile_source(&mut problems, s.into_inner()));
    let procedure = raw
        .procedure
        .map(|p| compile_procedure(&mut problems, p.into_inner()));
    let health = raw
        .health
        .map(|h| compile_health(&mut problems, h.into_inner()));
    let notify = raw
        .notify
        .map(|n| compile_notify(&mut problems, n.into_inner()));
    let mut checks: Vec<CheckConfig> = Vec::new();
    let mut check_spans: Vec<(String, Range<usize>)> = Vec::new();
    for raw_check in raw.check {
        let check = raw_check.into_inner();
        let name_span = check.name.span();
        let name = non_empty(&mut problems, check.name, "check name");
        check_spans.push((name.clone(), name_span.clone()));
        if checks.iter().any(|c| c.name == name) {
            problems.add(
                name_span,
                format!("duplicate check \"{name}\", expected each check once"),
            );
        }
        let command_span = check.command.span();
        let argv = check.command.into_inner();
        if argv.is_empty() || argv[0].trim().is_empty() {
            problems.add(
                command_span,
                "command is empty, expected e.g. command = [\"./bin/health-check\", \"--strict\"]",
            );
        }
        let timeout = check.timeout.map_or(DEFAULT_CHECK_TIMEOUT, |t| {
            positive(&mut problems, t, "check timeout")
                .to_std()
                .unwrap_or(DEFAULT_CHECK_TIMEOUT)
        });
        let pass_env = env_names(&mut problems, check.env);
        checks.push(CheckConfig {
            name,
            command: CommandSpec {
                argv,
                shell: check.shell.unwrap_or(false),
                timeout,
                env: Vec::new(),
                pass_env,
                kill_group_on_exit: true,
            },
        });
    }
    let target_span = raw.target.span();
    let target = raw.target.into_inner();
    let service = non_empty(&mut problems, target.service, "service");
    let environment = non_empty(&mut problems, target.environment, "environment");

    let evaluation = compile_evaluation(&mut problems, raw.evaluation.map(Spanned::into_inner));
    let baseline = compile_baseline(
        &mut problems,
        raw.baseline.map(Spanned::into_inner),
        &evaluation,
    );
    // Validated (with its position) by `compile_notify`; the engine decides with it.
    let escalate_after = notify
        .as_ref()
        .map_or(DEFAULT_ESCALATE_AFTER, |n| n.escalate_after);
    let actions = compile_actions(
        &mut problems,
        raw.actions.map(Spanned::into_inner),
        escalate_after,
    );
    let stabilization = raw
        .stabilization
        .and_then(|s| s.into_inner().duration)
        .map(|d| positive(&mut problems, d, "stabilization duration"))
        .unwrap_or_else(|| TimeDelta::seconds(DEFAULT_STABILIZATION_SECS));

    let mut rule_checks: Vec<(String, Range<usize>)> = Vec::new();
    let mut rules: Vec<Rule> = Vec::new();
    let mut rule_spans: Vec<Range<usize>> = Vec::new();
    for raw_rule in raw.rule {
        let span = raw_rule.span();
        let name_span = raw_rule.get_ref().name.span();
        if let Some(rule) = compile_rule(
            &mut problems,
            raw_rule.into_inner(),
            &evaluation,
            &mut rule_checks,
        ) {
            if rules.iter().any(|existing| existing.name == rule.name) {
                problems.add(
                    name_span,
                    format!(
                        "duplicate rule name \"{}\", expected each rule to have its own name",
                        rule.name
                    ),
                );
            }
            rules.push(rule);
            rule_spans.push(span);
        }
    }
    if rules.is_empty() && problems.0.is_empty() {
        problems.add(
            target_span.clone(),
            "the policy has no [[rule]], expected at least one",
        );
    }
    check_tier_order(&mut problems, &rules, &rule_spans);

    let mut known_issues = Vec::new();
    for raw_issue in raw.known_issue {
        let issue = raw_issue.into_inner();
        let rule_name = issue.rule.get_ref().clone();
        match rules.iter().find(|rule| rule.name == rule_name) {
            None => problems.add(
                issue.rule.span(),
                unknown_name_message("rule", &rule_name, rules.iter().map(|r| r.name.as_str())),
            ),
            Some(rule) if rule.tier == Tier::Immediate && !evaluation.allow_immediate_suppression => {
                problems.add(
                    issue.rule.span(),
                    format!(
                        "rule \"{rule_name}\" is immediate and cannot be suppressed, \
                         expected a consider or watch rule (or set evaluation.allow_immediate_suppression = true)"
                    ),
                )
            }
            Some(_) => {}
        }
        let until = match toml_datetime(issue.until.get_ref()) {
            Some(until) => until,
            None => {
                problems.add(
                    issue.until.span(),
                    "until must be a date and time with an offset, expected e.g. 2026-12-01T00:00:00Z",
                );
                continue;
            }
        };
        let reason = non_empty(&mut problems, issue.reason, "reason");
        known_issues.push(KnownIssue {
            rule: rule_name,
            until,
            reason,
        });
    }

    if let Some(procedure) = &procedure {
        let components = procedure.components();
        for (rule, span) in rules.iter().zip(&rule_spans) {
            if let Some(component) = &rule.component
                && !components.contains(&component.as_str())
            {
                problems.add(
                    span.clone(),
                    unknown_name_message("component", component, components.iter().copied())
                        .replace(
                            "expected one of",
                            "expected a component some [[procedure.step]] names, one of",
                        ),
                );
            }
        }
        let rolls_back = [actions.immediate, actions.consider]
            .iter()
            .any(|a| a.may_roll_back());
        if rolls_back
            && procedure
                .steps_for(Stage::Application, None)
                .next()
                .is_none()
        {
            problems.add(
                target_span.clone(),
                "the actions can roll back but [procedure] has no step with stage = \"application\", expected the rollback command",
            );
        }
    }
    // With check commands configured, every check a rule reads must have one:
    // a misspelt name would leave its rule inconclusive forever.
    if !checks.is_empty() {
        for (name, span) in &rule_checks {
            if !checks.iter().any(|c| &c.name == name) {
                let known = checks.iter().map(|c| c.name.as_str());
                problems.add(span.clone(), unknown_name_message("check", name, known));
            }
        }
        for check in &checks {
            if !rule_checks.iter().any(|(name, _)| *name == check.name) {
                let span = check_spans
                    .iter()
                    .find(|(n, _)| *n == check.name)
                    .map_or(0..0, |(_, s)| s.clone());
                problems.add(span, format!("check \"{}\" is not read by any rule, expected a [[rule]] with signal = \"check\" and check = \"{}\"", check.name, check.name));
            }
        }
    }
    if !problems.0.is_empty() {
        return Err(problems.0);
    }
    let check_names: Vec<String> = rule_checks.into_iter().map(|(name, _)| name).collect();
    let policy = Policy {
        path: path.to_string(),
        sha256,
        service,
        environment,
        evaluation,
        baseline,
        actions,
        stabilization,
        known_issues,
        rules,
        checks: check_names,
    };
    Ok(Compiled {
        policy,
        source,
        health,
        checks,
        procedure,
        notify,
    })
}

fn compile_evaluation(problems: &mut Problems, raw: Option<RawEvaluation>) -> Evaluation {
    let raw = raw.unwrap_or_default();
    let duration = |problems: &mut Problems,
                    value: Option<Spanned<HumanDuration>>,
                    default: i64,
                    what: &str| {
        value.map_or(TimeDelta::seconds(default), |v| positive(problems, v, what))
    };
    let interval = duration(problems, raw.interval, DEFAULT_INTERVAL_SECS, "interval");
    let confidence = match raw.confidence {
        None => DEFAULT_CONFIDENCE,
        Some(c) if c.get_ref().0 > 0.5 && c.get_ref().0 < 1.0 => c.get_ref().0,
        Some(c) => {
            problems.add(
                c.span(),
                format!(
                    "confidence {} is impossible, expected more than 50% and less than 100%",
                    c.get_ref()
                ),
            );
            DEFAULT_CONFIDENCE
        }
    };
    let blind_after_span = raw.blind_after.as_ref().map(|b| b.span());
    let evaluation = Evaluation {
        interval,
        confidence,
        z: standard_normal_quantile(confidence),
        recent_deploy_window: duration(
            problems,
            raw.recent_deploy_window,
            DEFAULT_RECENT_DEPLOY_WINDOW_SECS,
            "recent_deploy_window",
        ),
        cooldown: raw
            .cooldown
            .map_or(TimeDelta::seconds(DEFAULT_COOLDOWN_SECS), |c| {
                c.into_inner().delta()
            }),
        resolve_after: duration(
            problems,
            raw.resolve_after,
            DEFAULT_RESOLVE_AFTER_SECS,
            "resolve_after",
        ),
        blind_after: duration(
            problems,
            raw.blind_after,
            DEFAULT_BLIND_AFTER_SECS,
            "blind_after",
        ),
        allow_immediate_suppression: raw.allow_immediate_suppression.unwrap_or(false),
    };
    if let Some(span) = blind_after_span
        && evaluation.blind_after < interval
    {
        problems.add(
            span,
            format!(
                "blind_after is shorter than the interval, expected at least {}",
                format_duration(interval)
            ),
        );
    }
    evaluation
}

fn standard_normal_quantile(confidence: f64) -> f64 {
    // Normal::new(0, 1) cannot fail: the standard deviation is positive.
    Normal::new(0.0, 1.0).map_or(1.6448536269514722, |normal| normal.inverse_cdf(confidence))
}

fn compile_baseline(
    problems: &mut Problems,
    raw: Option<RawBaseline>,
    evaluation: &Evaluation,
) -> Baseline {
    let raw = raw.unwrap_or_default();
    let quantile = match raw.quantile {
        None => Quantile::P95,
        Some(q) => lookup_name(problems, &q, "quantile", &Quantile::ALL).unwrap_or(Quantile::P95),
    };
    let window = match raw.window {
        None => TimeDelta::seconds(DEFAULT_BASELINE_WINDOW_SECS),
        Some(w) => at_least_interval(problems, w, "baseline window", evaluation.interval),
    };
    let mode_span = raw.mode.as_ref().map(|m| m.span());
    let fixed_ms = raw
        .fixed
        .map(|f| positive(problems, f, "fixed baseline").num_milliseconds() as f64);
    let mode = match raw.mode {
        None => BaselineMode::PreDeploy,
        Some(m) => lookup_name(
            problems,
            &m,
            "baseline",
            &[
                ("pre-deploy", BaselineMode::PreDeploy),
                ("fixed", BaselineMode::Fixed),
            ],
        )
        .unwrap_or(BaselineMode::PreDeploy),
    };
    if mode == BaselineMode::Fixed && fixed_ms.is_none() {
        problems.add(
            mode_span.unwrap_or(0..0),
            "use = \"fixed\" needs a fixed baseline, expected e.g. fixed = \"300ms\"",
        );
    }
    Baseline {
        quantile,
        window,
        fixed_ms,
        mode,
    }
}

fn compile_actions(
    problems: &mut Problems,
    raw: Option<RawActions>,
    escalate_after: std::time::Duration,
) -> Actions {
    let raw = raw.unwrap_or_default();
    let mut action =
        |value: Option<Spanned<String>>, default: Action, allowed: &[(&str, Action)]| {
            value
                .and_then(|v| lookup_name(problems, &v, "action", allowed))
                .unwrap_or(default)
        };
    let immediate = action(raw.immediate, Action::Rollback, &Action::ALL);
    let consider = action(raw.consider, Action::Page, &Action::ALL);
    let watch = action(
        raw.watch,
        Action::None,
        &[("none", Action::None), ("notify", Action::Notify)],
    );
    let page_timeout = raw
        .page_timeout
        .map_or(TimeDelta::seconds(DEFAULT_PAGE_TIMEOUT_SECS), |t| {
            positive(problems, t, "page_timeout")
        });
    Actions {
        immediate,
        consider,
        watch,
        page_timeout,
        escalate_after: TimeDelta::from_std(escalate_after).unwrap_or(TimeDelta::MAX),
    }
}

fn compile_rule(
    problems: &mut Problems,
    raw: RawRule,
    evaluation: &Evaluation,
    checks: &mut Vec<(String, Range<usize>)>,
) -> Option<Rule> {
    let before = problems.0.len();
    let name = non_empty(problems, raw.name, "rule name");
    let tier = lookup_name(problems, &raw.tier, "tier", &Tier::ALL);
    let signal_name = raw.signal.get_ref().as_str();
    if !Signal::NAMES.contains(&signal_name) {
        problems.add(
            raw.signal.span(),
            unknown_name_message("signal", signal_name, Signal::NAMES.iter().copied()),
        );
        return None;
    }
    let windowed = matches!(
        signal_name,
        "error-rate" | "latency-degradation" | "users-affected"
    );

    let not_for = |problems: &mut Problems, span: Option<Range<usize>>, key: &str| {
        if let Some(span) = span {
            problems.add(
                span,
                format!("{key} has no meaning for signal \"{signal_name}\", remove it"),
            );
        }
    };
    if !windowed {
        not_for(
            problems,
            raw.threshold.as_ref().map(Spanned::span),
            "threshold",
        );
        not_for(
            problems,
            raw.watch_above.as_ref().map(Spanned::span),
            "watch_above",
        );
        not_for(problems, raw.window.as_ref().map(Spanned::span), "window");
    }
    if signal_name != "check" {
        not_for(problems, raw.check.as_ref().map(Spanned::span), "check");
    }
    if signal_name != "error-rate" {
        not_for(
            problems,
            raw.min_requests.as_ref().map(Spanned::span),
            "min_requests",
        );
    }
    if signal_name != "users-affected" {
        not_for(
            problems,
            raw.min_users.as_ref().map(Spanned::span),
            "min_users",
        );
    }
    if signal_name != "latency-degradation" {
        not_for(
            problems,
            raw.min_samples.as_ref().map(Spanned::span),
            "min_samples",
        );
    }

    let hold_for = match raw.hold_for {
        None => evaluation.interval,
        Some(f) => {
            let value = f.get_ref().delta();
            if value < evaluation.interval {
                problems.add(
                    f.span(),
                    format!(
                        "for = \"{}\" is shorter than the poll interval, expected at least {} (a rule can only hold for whole polls)",
                        f.get_ref(),
                        format_duration(evaluation.interval)
                    ),
                );
            }
            value
        }
    };
    let window = match raw.window {
        Some(w) if windowed => {
            let window = at_least_interval(problems, w.clone(), "window", evaluation.interval);
            if window > hold_for {
                problems.add(
                    w.span(),
                    format!(
                        "window \"{}\" is longer than for = \"{}\": one bad interval would stay in the window long enough to fire the rule, expected a window of at most {}",
                        w.get_ref(),
                        format_duration(hold_for),
                        format_duration(hold_for)
                    ),
                );
            }
            window
        }
        // By default the window is the confirmation time: one bad interval can never fire a rule.
        _ => hold_for,
    };

    let threshold = if windowed {
        match &raw.threshold {
            None => {
                problems.add(raw.signal.span(), format!("signal \"{signal_name}\" needs a threshold, expected e.g. threshold = \"5%\""));
                None
            }
            Some(t) => {
                let value = t.get_ref().0;
                let upper = if signal_name == "latency-degradation" {
                    f64::INFINITY
                } else {
                    1.0
                };
                if value <= 0.0 || value > upper {
                    let expected = if upper.is_finite() {
                        "more than 0% and at most 100%"
                    } else {
                        "more than 0%"
                    };
                    problems.add(
                        t.span(),
                        format!(
                            "threshold {} is impossible, expected {expected}",
                            t.get_ref()
                        ),
                    );
                }
                Some(value)
            }
        }
    } else {
        None
    };
    let watch_above = match (&raw.watch_above, threshold) {
        (Some(w), Some(threshold)) => {
            let value = w.get_ref().0;
            if value < 0.0 || value >= threshold {
                problems.add(
                    w.span(),
                    format!("watch_above {} must lie below the threshold {}, expected 0% up to the threshold", w.get_ref(), Ratio(threshold)),
                );
            }
            Some(value)
        }
        _ => None,
    };
    let minimum =
        |problems: &mut Problems, value: Option<Spanned<u64>>, default: u64, key: &str| match value
        {
            None => default,
            Some(v) if *v.get_ref() >= 1 => *v.get_ref(),
            Some(v) => {
                problems.add(v.span(), format!("{key} must be at least 1"));
                default
            }
        };
    let signal = match signal_name {
        "down" => Signal::Down,
        "check" => {
            match raw.check {
                None => {
                    problems.add(raw.signal.span(), "signal \"check\" needs the name of a check, expected e.g. check = \"data_integrity\"");
                    return None;
                }
                Some(check) => {
                    let span = check.span();
                    let check = non_empty(problems, check, "check");
                    let index = match checks.iter().position(|(c, _)| *c == check) {
                        Some(index) => index,
                        None if checks.len() >= MAX_CHECKS => {
                            problems.add(span, format!("more than {MAX_CHECKS} named checks, expected at most {MAX_CHECKS}"));
                            return None;
                        }
                        None => {
                            checks.push((check.clone(), span));
                            checks.len() - 1
                        }
                    };
                    Signal::Check { name: check, index }
                }
            }
        }
        "error-rate" => Signal::ErrorRate {
            threshold: threshold.unwrap_or(1.0),
            min_requests: minimum(
                problems,
                raw.min_requests,
                DEFAULT_MIN_REQUESTS,
                "min_requests",
            ) as f64,
        },
        "users-affected" => Signal::UsersAffected {
            threshold: threshold.unwrap_or(1.0),
            min_users: minimum(problems, raw.min_users, DEFAULT_MIN_USERS, "min_users") as f64,
        },
        // The name was checked against Signal::NAMES above.
        _ => Signal::LatencyDegradation {
            threshold: threshold.unwrap_or(1.0),
            min_samples: minimum(
                problems,
                raw.min_samples,
                DEFAULT_MIN_SAMPLES,
                "min_samples",
            ) as usize,
        },
    };
    let component = raw.component.map(|c| non_empty(problems, c, "component"));
    if problems.0.len() != before {
        return None;
    }
    Some(Rule {
        name,
        tier: tier?,
        signal,
        hold_for,
        window,
        watch_above,
        component,
    })
}

/// A consider rule must not be stricter (fire later) than an immediate rule on the same signal.
fn check_tier_order(problems: &mut Problems, rules: &[Rule], spans: &[Range<usize>]) {
    for (consider, span) in rules
        .iter()
        .zip(spans)
        .filter(|(r, _)| r.tier == Tier::Consider)
    {
        for immediate in rules.iter().filter(|r| r.tier == Tier::Immediate) {
            if std::mem::discriminant(&immediate.signal) != std::mem::discriminant(&consider.signal)
            {
                continue;
            }
            if let (Some(c), Some(i)) = (consider.signal.threshold(), immediate.signal.threshold())
                && c > i
            {
                problems.add(
                    span.clone(),
                    format!(
                        "consider rule \"{}\" threshold {} is stricter than immediate rule \"{}\" threshold {}, expected at most {}",
                        consider.name,
                        Ratio(c),
                        immediate.name,
                        Ratio(i),
                        Ratio(i)
                    ),
                );
            }
        }
    }
}

fn positive(problems: &mut Problems, value: Spanned<HumanDuration>, what: &str) -> TimeDelta {
    let delta = value.get_ref().delta();
    if delta <= TimeDelta::zero() {
        problems.add(value.span(), format!("{what} must be longer than 0s"));
    }
    delta
}

fn at_least_interval(
    problems: &mut Problems,
    value: Spanned<HumanDuration>,
    what: &str,
    interval: TimeDelta,
) -> TimeDelta {
    let delta = value.get_ref().delta();
    if delta < interval {
        problems.add(
            value.span(),
            format!(
                "{what} \"{}\" is shorter than the poll interval, expected at least {}",
                value.get_ref(),
                format_duration(interval)
            ),
        );
    }
    delta
}

fn non_empty(problems: &mut Problems, value: Spanned<String>, what: &str) -> String {
    if value.get_ref().trim().is_empty() {
        problems.add(value.span(), format!("{what} is empty, expected a name"));
    }
    value.into_inner()
}

fn lookup_name<T: Copy>(
    problems: &mut Problems,
    value: &Spanned<String>,
    what: &str,
    names: &[(&str, T)],
) -> Option<T> {
    let found = names
        .iter()
        .find(|(name, _)| *name == value.get_ref())
        .map(|(_, v)| *v);
    if found.is_none() {
        problems.add(
            value.span(),
            unknown_name_message(what, value.get_ref(), names.iter().map(|(n, _)| *n)),
        );
    }
    found
}

/// `unknown tier "consder", expected one of immediate, consider, watch, ignore; did you mean "consider"?`
pub fn unknown_name_message<'a>(
    what: &str,
    got: &str,
    expected: impl Iterator<Item = &'a str> + Clone,
) -> String {
    let list: Vec<&str> = expected.clone().collect();
    let mut message = format!(
        "unknown {what} \"{got}\", expected one of {}",
        list.join(", ")
    );
    if let Some(best) = closest(got, &list) {
        message.push_str(&format!("; did you mean \"{best}\"?"));
    }
    message
}

fn closest<'a>(got: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(got, c), *c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Turns the TOML parser's serde wording into the policy's: keys, not fields,
/// with a suggestion for a misspelt key.
pub fn rewrite_parser_message(message: &str, key: Option<String>) -> String {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let Some((name, tail)) = rest.split_once('`')
    {
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        if expected.is_empty() {
            return format!("unknown key \"{name}\", this table takes no keys");
        }
        return unknown_name_message("key", name, expected.into_iter());
    }
    if let Some(rest) = message.strip_prefix("missing field `")
        && let Some((name, _)) = rest.split_once('`')
    {
        return format!("missing key \"{name}\", expected it in this table");
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        let rest = rest
            .replace("expected u64", "expected a whole number")
            .replace("expected a boolean", "expected true or false")
            .replace("expected struct", "expected a table");
        return match key.filter(|k| !k.is_empty() && !k.starts_with('[')) {
            Some(key) => format!("wrong type for \"{key}\": {rest}"),
            None => format!("wrong type: {rest}"),
        };
    }
    message.to_string()
}

fn toml_datetime(value: &toml::value::Datetime) -> Option<DateTime<Utc>> {
    value.date?;
    value.time?;
    value.offset?;
    DateTime::parse_from_rfc3339(&value.to_string())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn compile_source(problems: &mut Problems, raw: RawSource) -> SourceConfig {
    let url = http_url(problems, raw.url);
    let timeout = raw.timeout.map_or(std::time::Duration::from_secs(10), |t| {
        positive(problems, t, "source timeout")
            .to_std()
            .unwrap_or_default()
    });
    let max_bytes = match raw.max_bytes {
        None => DEFAULT_MAX_BYTES,
        Some(m) if *m.get_ref() >= 1024 => *m.get_ref(),
        Some(m) => {
            problems.add(
                m.span(),
                "max_bytes below 1024 cannot hold a response, expected e.g. 16777216",
            );
            DEFAULT_MAX_BYTES
        }
    };
    let kind_span = raw.kind.span();
    let kind = match raw.kind.get_ref().as_str() {
        "scrape" => {
            if let Some(q) = &raw.queries {
                problems.add(q.span(), "[source.queries] is for kind = \"prometheus\"; a scrape source reads [source.metrics]");
            }
            let metrics = match raw.metrics {
                None => {
                    problems.add(kind_span, "a scrape source needs [source.metrics], expected at least requests = \"http_requests_total\"");
                    None
                }
                Some(m) => Some(compile_scrape_metrics(problems, m.into_inner())),
            };
            metrics.map(|metrics| SourceKind::Scrape {
                url: url.clone(),
                metrics,
            })
        }
        "prometheus" => {
            if let Some(m) = &raw.metrics {
                problems.add(m.span(), "[source.metrics] is for kind = \"scrape\"; a prometheus source reads [source.queries]");
            }
            let queries = match raw.queries {
                None => {
                    problems.add(kind_span, "a prometheus source needs [source.queries], expected at least requests = '...'");
                    None
                }
                Some(q) => Some(compile_queries(problems, q.into_inner())),
            };
            queries.map(|queries| SourceKind::Prometheus {
                url: url.clone(),
                queries,
            })
        }
        other => {
            problems.add(
                kind_span,
                unknown_name_message("source kind", other, ["scrape", "prometheus"].into_iter()),
            );
            None
        }
    };
    // A placeholder when the kind was wrong: the problems stop compilation anyway.
    let kind = kind.unwrap_or(SourceKind::Prometheus {
        url,
        queries: Queries::default(),
    });
    SourceConfig {
        kind,
        timeout,
        max_bytes,
    }
}

fn compile_scrape_metrics(
    problems: &mut Problems,
    raw: super::raw::RawScrapeMetrics,
) -> ScrapeMetrics {
    let mut selector = |value: Option<Spanned<String>>| {
        let value = value?;
        match Selector::parse(value.get_ref()) {
            Ok(selector) => Some(selector),
            Err(message) => {
                problems.add(value.span(), message);
                None
            }
        }
    };
    ScrapeMetrics {
        requests: selector(raw.requests),
        errors: selector(raw.errors),
        latency: selector(raw.latency),
        users: selector(raw.users),
        users_affected: selector(raw.users_affected),
        version: selector(raw.version),
        version_label: raw
            .version_label
            .map_or_else(|| "version".to_string(), Spanned::into_inner),
    }
}

fn compile_queries(problems: &mut Problems, raw: super::raw::RawQueries) -> Queries {
    let mut query = |value: Option<Spanned<String>>| {
        let value = value?;
        if value.get_ref().trim().is_empty() {
            problems.add(value.span(), "empty query, expected PromQL");
            return None;
        }
        Some(value.into_inner())
    };
    Queries {
        requests: query(raw.requests),
        errors: query(raw.errors),
        latency_p50: query(raw.latency_p50),
        latency_p90: query(raw.latency_p90),
        latency_p95: query(raw.latency_p95),
        latency_p99: query(raw.latency_p99),
        users: query(raw.users),
        users_affected: query(raw.users_affected),
        up: query(raw.up),
        version: query(raw.version),
        version_label: raw
            .version_label
            .map_or_else(|| "version".to_string(), Spanned::into_inner),
    }
}

fn compile_health(problems: &mut Problems, raw: RawHealth) -> HealthConfig {
    let url = http_url(problems, raw.url);
    let expect_status = match raw.expect_status {
        None => 200,
        Some(s) if (100..600).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            problems.add(
                s.span(),
                format!(
                    "expect_status {} is not an HTTP status, expected 100 to 599",
                    s.get_ref()
                ),
            );
            200
        }
    };
    let timeout = raw.timeout.map_or(DEFAULT_HEALTH_TIMEOUT, |t| {
        positive(problems, t, "health timeout")
            .to_std()
            .unwrap_or(DEFAULT_HEALTH_TIMEOUT)
    });
    HealthConfig {
        url,
        expect_status,
        timeout,
    }
}

fn compile_notify(problems: &mut Problems, raw: RawNotify) -> NotifyConfig {
    let mut channels: Vec<Channel> = Vec::new();
    for raw_channel in raw.channel {
        let raw_channel = raw_channel.into_inner();
        let name_span = raw_channel.name.span();
        let name = non_empty(problems, raw_channel.name, "channel name");
        if channels.iter().any(|c| c.name == name) {
            problems.add(
                name_span,
                format!("duplicate channel \"{name}\", expected each channel once"),
            );
        }
        let kind_names = [("email", 0), ("alertmanager", 1), ("webhook", 2)];
        let Some(kind) = lookup_name(problems, &raw_channel.kind, "channel kind", &kind_names)
        else {
            continue;
        };
        let kind_span = raw_channel.kind.span();
        let needs = |problems: &mut Problems,
                     value: Option<Spanned<String>>,
                     key: &str|
         -> Option<Spanned<String>> {
            if value.is_none() {
                problems.add(
                    kind_span.clone(),
                    format!(
                        "a channel of kind {} needs `{key}`",
                        raw_channel.kind.get_ref()
                    ),
                );
            }
            value
        };
        let kind = match kind {
            0 => {
                let server = needs(problems, raw_channel.server, "server");
                let (host, port, security) = match &server {
                    Some(server) => smtp_server(problems, server),
                    None => (String::new(), 25, SmtpSecurity::Plain),
                };
                let from = needs(problems, raw_channel.from, "from")
                    .map(|f| email_address(problems, f))
                    .unwrap_or_default();
                if raw_channel.to.is_empty() {
                    problems.add(
                        kind_span.clone(),
                        "an email channel needs `to`, expected e.g. to = [\"oncall@example.com\"]",
                    );
                }
                let to = raw_channel
                    .to
                    .into_iter()
                    .map(|t| email_address(problems, t))
                    .collect();
                let env_name = |problems: &mut Problems, value: Option<Spanned<String>>| {
                    value.map(|v| {
                        let name = v.get_ref().trim();
                        if name.is_empty() || name.contains('=') || name.starts_with("${") {
                            problems.add(v.span(), format!("\"{name}\" is not an environment variable's name, expected e.g. ROLLWATCH_SMTP_PASSWORD (the name, never the secret)"));
                        }
                        name.to_string()
                    })
                };
                let username_env = env_name(problems, raw_channel.username_env);
                let password_env = env_name(problems, raw_channel.password_env);
                // One without the other would send unauthenticated, silently.
                match (&username_env, &password_env) {
                    (Some(_), None) => problems.add(
                        kind_span.clone(),
                        "username_env is set but password_env is not: SMTP authentication needs both (or neither, for a relay that needs none)",
                    ),
                    (None, Some(_)) => problems.add(
                        kind_span.clone(),
                        "password_env is set but username_env is not: SMTP authentication needs both (or neither, for a relay that needs none)",
                    ),
                    _ => {}
                }
                ChannelKind::Email {
                    host,
                    port,
                    security,
                    from,
                    to,
                    username_env,
                    password_env,
                }
            }
            1 => ChannelKind::Alertmanager {
                url: needs(problems, raw_channel.url, "url")
                    .map(|u| http_url(problems, u).trim_end_matches('/').to_string())
                    .unwrap_or_default()
                    .into(),
            },
            _ => ChannelKind::Webhook {
                url: needs(problems, raw_channel.url, "url")
                    .map(|u| http_url(problems, u))
                    .unwrap_or_default()
                    .into(),
            },
        };
        let timeout = raw_channel.timeout.map_or(DEFAULT_CHANNEL_TIMEOUT, |t| {
            positive(problems, t, "channel timeout")
                .to_std()
                .unwrap_or(DEFAULT_CHANNEL_TIMEOUT)
        });
        let deadline = raw_channel.deadline.map_or(DEFAULT_CHANNEL_DEADLINE, |d| {
            positive(problems, d, "channel deadline")
                .to_std()
                .unwrap_or(DEFAULT_CHANNEL_DEADLINE)
        });
        channels.push(Channel {
            name,
            kind,
            timeout,
            deadline,
        });
    }
    let route = |problems: &mut Problems, names: Vec<Spanned<String>>| -> Vec<String> {
        names
            .into_iter()
            .map(|name| {
                if !channels.iter().any(|c| &c.name == name.get_ref()) {
                    let known: Vec<&str> = channels.iter().map(|c| c.name.as_str()).collect();
                    problems.add(
                        name.span(),
                        format!(
                            "unknown channel \"{}\", expected one of {}",
                            name.get_ref(),
                            if known.is_empty() {
                                "the [[notify.channel]] names (none defined)".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                }
                name.into_inner()
            })
            .collect()
    };
    let routes = Routes {
        page: route(problems, raw.page),
        notice: route(problems, raw.notice),
        escalation: route(problems, raw.escalation),
    };
    let escalate_after = raw.escalate_after.map_or(DEFAULT_ESCALATE_AFTER, |d| {
        positive(problems, d, "escalate_after")
            .to_std()
            .unwrap_or(DEFAULT_ESCALATE_AFTER)
    });
    NotifyConfig {
        channels,
        routes,
        escalate_after,
    }
}

/// `smtp://host[:port]` (plain, 25), `smtp+starttls://host[:port]` (587) or
/// `smtps://host[:port]` (465).
fn smtp_server(problems: &mut Problems, value: &Spanned<String>) -> (String, u16, SmtpSecurity) {
    let text = value.get_ref().trim();
    let schemes = [
        ("smtp://", SmtpSecurity::Plain, 25),
        ("smtp+starttls://", SmtpSecurity::StartTls, 587),
        ("smtps://", SmtpSecurity::Tls, 465),
    ];
    let Some((rest, security, default_port)) =
        schemes.iter().find_map(|(scheme, security, port)| {
            text.strip_prefix(scheme)
                .map(|rest| (rest, *security, *port))
        })
    else {
        problems.add(value.span(), format!("server \"{text}\" is not an SMTP URL, expected smtp://host:25 (plain, a local relay), smtp+starttls://host:587 or smtps://host:465"));
        return (String::new(), 25, SmtpSecurity::Plain);
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) => match port.parse::<u16>() {
            Ok(port) if port > 0 => (host, port),
            _ => {
                problems.add(
                    value.span(),
                    format!("server \"{text}\": port \"{port}\" is not a port number"),
                );
                (host, default_port)
            }
        },
        None => (rest, default_port),
    };
    if host.is_empty() || host.contains('@') || host.contains('/') {
        problems.add(value.span(), format!("server \"{text}\" has no host name (credentials go in username_env/password_env, never in the URL)"));
    }
    (host.to_string(), port, security)
}

fn email_address(problems: &mut Problems, value: Spanned<String>) -> String {
    let text = value.get_ref().trim().to_string();
    if text.parse::<lettre::Address>().is_err() && text.parse::<lettre::message::Mailbox>().is_err()
    {
        problems.add(
            value.span(),
            format!("\"{text}\" is not an email address, expected e.g. oncall@example.com"),
        );
    }
    text
}

fn http_url(problems: &mut Problems, value: Spanned<String>) -> String {
    let url = value.get_ref().trim();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < "http://x".len()
    {
        problems.add(
            value.span(),
            format!("url \"{url}\" is not an http:// or https:// URL"),
        );
    }
    url.to_string()
}

/// `env = [...]` of a step or check: the names of rollwatch's variables it
/// gets as they are (it gets nothing else of rollwatch's environment but
/// `PATH`, `HOME`, `LANG`, `LC_ALL`, `TZ`, `TMPDIR` and the `ROLLWATCH_*` step
/// variables).
fn env_names(problems: &mut Problems, raw: Option<Spanned<Vec<String>>>) -> Vec<String> {
    let Some(raw) = raw else {
        return Vec::new();
    };
    let span = raw.span();
    let names = raw.into_inner();
    for name in &names {
        let valid = name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            problems.add(
                span.clone(),
                format!(
                    "env: {name:?} is not a variable name, expected names like \"KUBECONFIG\" (letters, digits, _)"
                ),
            );
        } else if name.starts_with("ROLLWATCH_") {
            problems.add(
                span.clone(),
                format!(
                    "env: {name:?} is rollwatch's own (its token, or a step variable rollwatch sets), expected another variable"
                ),
            );
        }
    }
    names
}

pub const DEFAULT_STEP_TIMEOUT_SECS: i64 = 10 * 60;
pub const DEFAULT_BACKUP_BUDGET_SECS: i64 = 2 * 60;

fn compile_procedure(problems: &mut Problems, raw: RawProcedure) -> Procedure {
    let backup_budget = raw
        .backup_budget
        .map_or(TimeDelta::seconds(DEFAULT_BACKUP_BUDGET_SECS), |b| {
            b.into_inner().delta()
        })
        .to_std()
        .unwrap_or_default();
    let mut steps: Vec<Step> = Vec::new();
    for raw_step in raw.step {
        let step = raw_step.into_inner();
        let name_span = step.name.span();
        let name = non_empty(problems, step.name, "step name");
        if steps.iter().any(|s| s.name == name) {
            problems.add(
                name_span,
                format!("duplicate step \"{name}\", expected each step once"),
            );
        }
        let stage = lookup_name(problems, &step.stage, "stage", &Stage::ALL);
        let command_span = step.command.span();
        let argv = step.command.into_inner();
        if argv.is_empty() || argv[0].trim().is_empty() {
            problems.add(command_span, "command is empty, expected e.g. command = [\"./scripts/deployment/rollback/rollback-production.sh\"]");
        }
        let timeout = step
            .timeout
            .map_or(TimeDelta::seconds(DEFAULT_STEP_TIMEOUT_SECS), |t| {
                positive(problems, t, "step timeout")
            })
            .to_std()
            .unwrap_or_default();
        let component = step.component.map(|c| non_empty(problems, c, "component"));
        let pass_env = env_names(problems, step.env);
        let Some(stage) = stage else { continue };
        // A step that starts services must leave them running: only a timeout ends its group.
        let command = CommandSpec {
            argv,
            shell: step.shell.unwrap_or(false),
            timeout,
            env: Vec::new(),
            pass_env,
            kill_group_on_exit: false,
        };
        steps.push(Step {
            name,
            stage,
            component,
            command,
            idempotent: step.idempotent.unwrap_or(false),
        });
    }
    let drill_every = raw.drill_every.map(|d| {
        positive(problems, d, "drill_every")
            .to_std()
            .unwrap_or_default()
    });
    Procedure {
        steps,
        backup_budget,
        database_rollback: raw.database_rollback.unwrap_or(false),
        drill_every,
    }
}
