//! Evaluation, baseline, actions and rules.

use std::ops::Range;

use chrono::TimeDelta;
use statrs::distribution::{ContinuousCDF, Normal};
use toml::Spanned;

use super::{
    DEFAULT_BASELINE_WINDOW_SECS, DEFAULT_BLIND_AFTER_SECS, DEFAULT_CONFIDENCE,
    DEFAULT_COOLDOWN_SECS, DEFAULT_INTERVAL_SECS, DEFAULT_MIN_REQUESTS, DEFAULT_MIN_SAMPLES,
    DEFAULT_MIN_USERS, DEFAULT_PAGE_TIMEOUT_SECS, DEFAULT_RECENT_DEPLOY_WINDOW_SECS,
    DEFAULT_RESOLVE_AFTER_SECS, Problems, at_least_interval, lookup_word, non_empty, positive,
    unknown_name_message,
};
use crate::engine::policy::{
    Action, Actions, Baseline, BaselineMode, Evaluation, Quantile, Rule, Signal, Tier,
};
use crate::engine::signals::MAX_CHECKS;
use crate::policy::raw::{RawActions, RawBaseline, RawEvaluation, RawRule};
use crate::units::{HumanDuration, Ratio, format_duration};

/// The tiers in the order messages list them: strongest first.
const TIERS: [Tier; 4] = [Tier::Immediate, Tier::Consider, Tier::Watch, Tier::Ignore];

/// The actions in the order messages list them.
const ACTIONS: [Action; 5] = [
    Action::Rollback,
    Action::Page,
    Action::PageThenRollback,
    Action::Notify,
    Action::None,
];

pub(super) fn compile_evaluation(
    problems: &mut Problems,
    raw: Option<RawEvaluation>,
) -> Evaluation {
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

pub(super) fn compile_baseline(
    problems: &mut Problems,
    raw: Option<RawBaseline>,
    evaluation: &Evaluation,
) -> Baseline {
    let raw = raw.unwrap_or_default();
    let quantile = match raw.quantile {
        None => Quantile::P95,
        Some(q) => lookup_word(problems, &q, "quantile", Quantile::ALL).unwrap_or(Quantile::P95),
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
        Some(m) => lookup_word(problems, &m, "baseline", BaselineMode::ALL)
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

pub(super) fn compile_actions(
    problems: &mut Problems,
    raw: Option<RawActions>,
    escalate_after: std::time::Duration,
) -> Actions {
    let raw = raw.unwrap_or_default();
    let mut action = |value: Option<Spanned<String>>, default: Action, allowed: &[Action]| {
        value
            .and_then(|v| lookup_word(problems, &v, "action", allowed))
            .unwrap_or(default)
    };
    let immediate = action(raw.immediate, Action::Rollback, &ACTIONS);
    let consider = action(raw.consider, Action::Page, &ACTIONS);
    let watch = action(raw.watch, Action::None, &[Action::None, Action::Notify]);
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

/// One `[[rule]]`, in named steps: its name and tier, the signal's name,
/// keys the signal has no use for, `for`, `window`, `threshold`,
/// `watch_above`, the signal itself and the component. `None` when any step
/// found a problem (each is in `problems`).
pub(super) fn compile_rule(
    problems: &mut Problems,
    raw: RawRule,
    evaluation: &Evaluation,
    checks: &mut Vec<(String, Range<usize>)>,
) -> Option<Rule> {
    let before = problems.0.len();
    let name = non_empty(problems, raw.name.clone(), "rule name");
    let tier = lookup_word(problems, &raw.tier, "tier", &TIERS);
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
    reject_keys_without_meaning(problems, &raw, signal_name, windowed);
    let hold_for = rule_hold_for(problems, raw.hold_for.as_ref(), evaluation);
    let window = rule_window(
        problems,
        raw.window.as_ref(),
        windowed,
        hold_for,
        evaluation,
    );
    let short_window = rule_short_window(
        problems,
        raw.short_window.as_ref(),
        windowed,
        window,
        evaluation,
    );
    let threshold = rule_threshold(problems, &raw, signal_name, windowed);
    let watch_above = rule_watch_above(problems, raw.watch_above.as_ref(), threshold);
    let signal = rule_signal(problems, &raw, signal_name, threshold, checks)?;
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
        short_window,
        watch_above,
        component,
    })
}

/// A key the rule's signal does not read is a mistake, not a no-op.
fn reject_keys_without_meaning(
    problems: &mut Problems,
    raw: &RawRule,
    signal_name: &str,
    windowed: bool,
) {
    let mut not_for = |span: Option<Range<usize>>, key: &str| {
        if let Some(span) = span {
            problems.add(
                span,
                format!("{key} has no meaning for signal \"{signal_name}\", remove it"),
            );
        }
    };
    if !windowed {
        not_for(raw.threshold.as_ref().map(Spanned::span), "threshold");
        not_for(raw.watch_above.as_ref().map(Spanned::span), "watch_above");
        not_for(raw.window.as_ref().map(Spanned::span), "window");
        not_for(raw.short_window.as_ref().map(Spanned::span), "short_window");
    }
    if signal_name != "check" {
        not_for(raw.check.as_ref().map(Spanned::span), "check");
    }
    if signal_name != "error-rate" {
        not_for(raw.min_requests.as_ref().map(Spanned::span), "min_requests");
    }
    if signal_name != "users-affected" {
        not_for(raw.min_users.as_ref().map(Spanned::span), "min_users");
    }
    if signal_name != "latency-degradation" {
        not_for(raw.min_samples.as_ref().map(Spanned::span), "min_samples");
    }
}

/// `for`: at least one poll interval; one interval by default.
fn rule_hold_for(
    problems: &mut Problems,
    raw: Option<&Spanned<HumanDuration>>,
    evaluation: &Evaluation,
) -> TimeDelta {
    let Some(f) = raw else {
        return evaluation.interval;
    };
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

/// `window`: at most `for`. By default the window is the confirmation time:
/// one bad interval can never fire a rule.
fn rule_window(
    problems: &mut Problems,
    raw: Option<&Spanned<HumanDuration>>,
    windowed: bool,
    hold_for: TimeDelta,
    evaluation: &Evaluation,
) -> TimeDelta {
    match raw {
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
        _ => hold_for,
    }
}

/// `short_window`: at least one interval and at most `window`. By default
/// the larger of one interval and 1/12 of the window (the multiwindow alerts
/// of docs/decisions.md). Instant signals read only the latest observation:
/// their short window is their window.
fn rule_short_window(
    problems: &mut Problems,
    raw: Option<&Spanned<HumanDuration>>,
    windowed: bool,
    window: TimeDelta,
    evaluation: &Evaluation,
) -> TimeDelta {
    match raw {
        Some(w) if windowed => {
            let short = at_least_interval(problems, w.clone(), "short_window", evaluation.interval);
            if short > window {
                problems.add(
                    w.span(),
                    format!(
                        "short_window \"{}\" is longer than window = \"{}\", expected at most {}",
                        w.get_ref(),
                        format_duration(window),
                        format_duration(window)
                    ),
                );
            }
            short
        }
        _ if windowed => (window / 12).max(evaluation.interval).min(window),
        _ => window,
    }
}

/// `threshold`: required by a windowed signal; a ratio in (0, 1], or any
/// positive ratio for latency degradation.
fn rule_threshold(
    problems: &mut Problems,
    raw: &RawRule,
    signal_name: &str,
    windowed: bool,
) -> Option<f64> {
    if !windowed {
        return None;
    }
    let Some(t) = &raw.threshold else {
        problems.add(
            raw.signal.span(),
            format!("signal \"{signal_name}\" needs a threshold, expected e.g. threshold = \"5%\""),
        );
        return None;
    };
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

/// `watch_above`: below the threshold.
fn rule_watch_above(
    problems: &mut Problems,
    raw: Option<&Spanned<Ratio>>,
    threshold: Option<f64>,
) -> Option<f64> {
    let (w, threshold) = (raw?, threshold?);
    let value = w.get_ref().0;
    if value < 0.0 || value >= threshold {
        problems.add(
            w.span(),
            format!(
                "watch_above {} must lie below the threshold {}, expected 0% up to the threshold",
                w.get_ref(),
                Ratio(threshold)
            ),
        );
    }
    Some(value)
}

/// A `min_*` key: at least 1, `default` when absent.
fn minimum(problems: &mut Problems, value: Option<&Spanned<u64>>, default: u64, key: &str) -> u64 {
    match value {
        None => default,
        Some(v) if *v.get_ref() >= 1 => *v.get_ref(),
        Some(v) => {
            problems.add(v.span(), format!("{key} must be at least 1"));
            default
        }
    }
}

/// The signal with its parameters. A named check is added to `checks` (its
/// index is the signal's); `None` when the check is missing or one too many.
fn rule_signal(
    problems: &mut Problems,
    raw: &RawRule,
    signal_name: &str,
    threshold: Option<f64>,
    checks: &mut Vec<(String, Range<usize>)>,
) -> Option<Signal> {
    let threshold = threshold.unwrap_or(1.0);
    Some(match signal_name {
        "down" => Signal::Down,
        "check" => rule_check(problems, raw, checks)?,
        "error-rate" => Signal::ErrorRate {
            threshold,
            min_requests: minimum(
                problems,
                raw.min_requests.as_ref(),
                DEFAULT_MIN_REQUESTS,
                "min_requests",
            ) as f64,
        },
        "users-affected" => Signal::UsersAffected {
            threshold,
            min_users: minimum(
                problems,
                raw.min_users.as_ref(),
                DEFAULT_MIN_USERS,
                "min_users",
            ) as f64,
        },
        // The name was checked against Signal::NAMES by `compile_rule`.
        _ => Signal::LatencyDegradation {
            threshold,
            min_samples: minimum(
                problems,
                raw.min_samples.as_ref(),
                DEFAULT_MIN_SAMPLES,
                "min_samples",
            ) as usize,
        },
    })
}

/// `signal = "check"`: the named check, numbered in the order first read.
fn rule_check(
    problems: &mut Problems,
    raw: &RawRule,
    checks: &mut Vec<(String, Range<usize>)>,
) -> Option<Signal> {
    let Some(check) = &raw.check else {
        problems.add(
            raw.signal.span(),
            "signal \"check\" needs the name of a check, expected e.g. check = \"data_integrity\"",
        );
        return None;
    };
    let span = check.span();
    let check = non_empty(problems, check.clone(), "check");
    let index = match checks.iter().position(|(c, _)| *c == check) {
        Some(index) => index,
        None if checks.len() >= MAX_CHECKS => {
            problems.add(
                span,
                format!("more than {MAX_CHECKS} named checks, expected at most {MAX_CHECKS}"),
            );
            return None;
        }
        None => {
            checks.push((check.clone(), span));
            checks.len() - 1
        }
    };
    Some(Signal::Check { name: check, index })
}

/// A consider rule must not be stricter (fire later) than an immediate rule on the same signal.
pub(super) fn check_tier_order(problems: &mut Problems, rules: &[Rule], spans: &[Range<usize>]) {
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
