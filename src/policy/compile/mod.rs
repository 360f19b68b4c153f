//! Raw policy → validated `engine::Policy`. Applies defaults, checks every value
//! and the relations between rules, and collects all problems before failing
//! (a person fixing a policy at 3 a.m. wants the whole list at once).

use std::ops::Range;

use chrono::{DateTime, TimeDelta, Utc};
use toml::Spanned;

mod notify;
mod procedure;
mod rules;
mod sources;

use notify::compile_notify;
use procedure::compile_procedure;
use rules::{
    check_tier_order, compile_actions, compile_baseline, compile_evaluation, compile_rule,
};
use sources::{compile_health, compile_source};

use super::raw::RawPolicy;
use crate::engine::policy::{KnownIssue, Policy, Rule, Tier};
use crate::policy::notify::{DEFAULT_ESCALATE_AFTER, NotifyConfig};
use crate::procedure::command::CommandSpec;
use crate::procedure::config::{Procedure, Stage};
use crate::sources::config::{CheckConfig, DEFAULT_CHECK_TIMEOUT, HealthConfig, SourceConfig};
use crate::text_enum::TextEnum;
use crate::units::{HumanDuration, format_duration};

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

/// `lookup_name` for an enum written as words (`text_enum!`): `listed` in
/// the order a message names them.
fn lookup_word<T: TextEnum>(
    problems: &mut Problems,
    value: &Spanned<String>,
    what: &str,
    listed: &[T],
) -> Option<T> {
    let names: Vec<(&str, T)> = listed.iter().map(|v| (v.as_str(), *v)).collect();
    lookup_name(problems, value, what, &names)
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
