//! Signals and verdicts: the bounded history of observations, and for each rule
//! the value it reads over its window (with the statistics behind it) and the
//! three-valued verdict that value gives: healthy, unhealthy or inconclusive,
//! plus the watch band between `watch_above` and the threshold.

use std::collections::VecDeque;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::input::Observation;
use super::policy::{Policy, Quantile, Rule, Signal};
use super::stats::{median, wilson_lower_bound};
use crate::policy::units::{format_duration, format_percent};

/// The parts of an observation the rules read, kept compactly: a thousand
/// targets at 1 s polls keep 300 samples each, so the values are `f32`
/// (per-interval counts and milliseconds need no more) and read back as `f64`.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub up: Option<bool>,
    /// (requests, errors), present only when both are known and sane.
    errors: Option<(f32, f32)>,
    /// (users, users affected), same rule.
    users: Option<(f32, f32)>,
    /// The policy's latency quantile, in milliseconds.
    latency_ms: Option<f32>,
    /// Bit i set: `Policy::checks[i]` was reported.
    pub checks_known: u64,
    /// Bit i set: `Policy::checks[i]` failed.
    pub checks_failed: u64,
}

/// Most named checks a policy may refer to (one bit each in a `Sample`).
pub const MAX_CHECKS: usize = 64;

impl Sample {
    /// Keeps what the policy reads; drops (and reports) values that make no sense.
    pub fn from_observation(obs: &Observation, policy: &Policy) -> (Sample, Vec<String>) {
        let mut problems = Vec::new();
        let errors = counts_pair(
            obs.requests,
            obs.errors,
            "requests",
            "errors",
            &mut problems,
        );
        let users = counts_pair(
            obs.users,
            obs.users_affected,
            "users",
            "users_affected",
            &mut problems,
        );
        let latency = match policy.baseline.quantile {
            Quantile::P50 => obs.latency_ms.p50,
            Quantile::P90 => obs.latency_ms.p90,
            Quantile::P95 => obs.latency_ms.p95,
            Quantile::P99 => obs.latency_ms.p99,
        };
        let latency_ms = match latency {
            Some(ms) if ms.is_finite() && ms >= 0.0 => Some(ms),
            Some(ms) => {
                problems.push(format!("latency {ms} ms is not a valid latency"));
                None
            }
            None => None,
        };
        let mut checks_known = 0u64;
        let mut checks_failed = 0u64;
        for (name, passed) in &obs.checks {
            if let Some(index) = policy.checks.iter().position(|c| c == name) {
                checks_known |= 1 << index;
                if !passed {
                    checks_failed |= 1 << index;
                }
            }
        }
        let pair = |p: Option<(f64, f64)>| p.map(|(total, part)| (total as f32, part as f32));
        let sample = Sample {
            at: obs.at,
            up: obs.up,
            errors: pair(errors),
            users: pair(users),
            latency_ms: latency_ms.map(|ms| ms as f32),
            checks_known,
            checks_failed,
        };
        (sample, problems)
    }

    /// (requests, errors) in the interval.
    pub fn errors(&self) -> Option<(f64, f64)> {
        self.errors
            .map(|(total, part)| (f64::from(total), f64::from(part)))
    }

    /// (users, users affected) in the interval.
    pub fn users(&self) -> Option<(f64, f64)> {
        self.users
            .map(|(total, part)| (f64::from(total), f64::from(part)))
    }

    /// The policy's latency quantile, in milliseconds.
    pub fn latency_ms(&self) -> Option<f64> {
        self.latency_ms.map(f64::from)
    }

    /// Whether the sample holds a metric a windowed rule can judge.
    pub fn has_metrics(&self) -> bool {
        self.errors.is_some() || self.users.is_some() || self.latency_ms.is_some()
    }

    /// Whether the sample holds anything a rule can judge.
    pub fn has_data(&self) -> bool {
        self.up.is_some()
            || self.errors.is_some()
            || self.users.is_some()
            || self.latency_ms.is_some()
            || self.checks_known != 0
    }
}

fn counts_pair(
    total: Option<f64>,
    part: Option<f64>,
    total_name: &str,
    part_name: &str,
    problems: &mut Vec<String>,
) -> Option<(f64, f64)> {
    let (total, part) = (total?, part?);
    let sane =
        total.is_finite() && part.is_finite() && total >= 0.0 && part >= 0.0 && part <= total;
    if sane {
        Some((total, part))
    } else {
        problems.push(format!(
            "{part_name} {part} with {total_name} {total} is impossible, ignored"
        ));
        None
    }
}

/// Observations back to the widest rule window, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Room for `capacity` samples up front: the window never needs more, and
    /// a growing buffer would double its memory.
    pub fn with_capacity(capacity: usize) -> History {
        History {
            samples: VecDeque::with_capacity(capacity),
        }
    }

    pub fn push(&mut self, sample: Sample, keep: TimeDelta) {
        let oldest = sample.at - keep;
        while self.samples.front().is_some_and(|s| s.at < oldest) {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }

    /// Samples with `at > from` and `at > now - window` (a 2 min window at
    /// 15 s polls holds 8 samples). An observation stamped at the deployment
    /// instant counts what happened before it, so it is left out.
    pub fn window(
        &self,
        now: DateTime<Utc>,
        window: TimeDelta,
        from: Option<DateTime<Utc>>,
    ) -> impl Iterator<Item = &Sample> {
        let start = now - window;
        self.samples
            .iter()
            .rev()
            .take_while(move |s| s.at > start && from.is_none_or(|from| s.at > from))
    }

    /// Every sample kept, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// How many samples are kept.
    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }
}

/// The latency values the pre-deployment baseline is taken from, over the
/// baseline window, thinned to at most `LatencyTrail::POINTS` points (one per
/// poll at 15 s over 30 min, one in fifteen at 1 s): the median of an even
/// subsample estimates the median, and 1,000 targets stay small.
#[derive(Debug)]
pub struct LatencyTrail {
    points: VecDeque<(DateTime<Utc>, f64)>,
    span: TimeDelta,
    step: TimeDelta,
}

impl LatencyTrail {
    pub const POINTS: i32 = 120;

    pub fn new(span: TimeDelta, interval: TimeDelta) -> LatencyTrail {
        let step = (span / LatencyTrail::POINTS).max(interval);
        LatencyTrail {
            points: VecDeque::with_capacity(LatencyTrail::POINTS as usize + 2),
            span,
            step,
        }
    }

    pub fn push(&mut self, at: DateTime<Utc>, latency_ms: f64) {
        if self
            .points
            .back()
            .is_some_and(|(last, _)| at - *last < self.step)
        {
            return;
        }
        let oldest = at - self.span - self.step;
        while self.points.front().is_some_and(|(t, _)| *t < oldest) {
            self.points.pop_front();
        }
        self.points.push_back((at, latency_ms));
    }

    /// Values in `[from, to)`.
    pub fn between(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> impl Iterator<Item = f64> + '_ {
        self.points
            .iter()
            .filter(move |(t, _)| *t >= from && *t < to)
            .map(|(_, v)| *v)
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }
}

/// A latency baseline and where it came from.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyBaseline {
    pub ms: f64,
    /// "pre-deploy" (median over the window before the deployment) or "fixed".
    pub source: &'static str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Healthy,
    /// Between `watch_above` and the threshold.
    Watch,
    Unhealthy,
    Inconclusive,
}

/// What a rule read over its window: the value, the statistics behind it and
/// the verdict. Rendered into every decision's explanation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Reading {
    pub signal: &'static str,
    pub verdict: Verdict,
    /// The raw value: a ratio for rates, the degradation for latency, 1.0/0.0 for down and checks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The one-sided lower confidence bound, for rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Requests, users or latency samples in the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<f64>,
    /// The window actually used, in seconds (clipped at the latest deployment).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<LatencyBaseline>,
    /// Why the verdict is inconclusive.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Reading {
    fn new(signal: &'static str, verdict: Verdict) -> Self {
        Reading {
            signal,
            verdict,
            value: None,
            bound: None,
            threshold: None,
            count: None,
            window_seconds: None,
            current_ms: None,
            baseline: None,
            reason: None,
        }
    }

    fn inconclusive(signal: &'static str, reason: impl Into<String>) -> Self {
        Reading {
            reason: Some(reason.into()),
            ..Reading::new(signal, Verdict::Inconclusive)
        }
    }

    /// "error-rate 8.1% (95% lower bound 7.4%) > 5% over 2m of 9600 requests"
    pub fn describe(&self, rule: &Rule, confidence: f64) -> String {
        if let Some(reason) = &self.reason {
            return format!("{} inconclusive: {reason}", self.signal);
        }
        let comparison = |value: f64, threshold: f64| if value > threshold { ">" } else { "<=" };
        match &rule.signal {
            Signal::Down => "health probe failing".to_string(),
            Signal::Check { name, .. } => format!("check {name} failing"),
            Signal::ErrorRate { .. } | Signal::UsersAffected { .. } => {
                let (label, unit) = if matches!(rule.signal, Signal::ErrorRate { .. }) {
                    ("error-rate", "requests")
                } else {
                    ("users-affected", "users")
                };
                let value = self.value.unwrap_or(0.0);
                let bound = self.bound.unwrap_or(0.0);
                let threshold = self.threshold.unwrap_or(0.0);
                format!(
                    "{label} {} ({} lower bound {}) {} {} over {} of {:.0} {unit}",
                    format_percent(value),
                    format_percent(confidence),
                    format_percent(bound),
                    comparison(bound, threshold),
                    format_percent(threshold),
                    format_duration(TimeDelta::seconds(self.window_seconds.unwrap_or(0))),
                    self.count.unwrap_or(0.0),
                )
            }
            Signal::LatencyDegradation { .. } => {
                let value = self.value.unwrap_or(0.0);
                let threshold = self.threshold.unwrap_or(0.0);
                let baseline = self.baseline.as_ref();
                format!(
                    "latency {:.0}ms is {}{} against the {} baseline {:.0}ms ({} {}; median of {:.0} samples over {})",
                    self.current_ms.unwrap_or(0.0),
                    if value >= 0.0 { "+" } else { "" },
                    format_percent(value),
                    baseline.map_or("unknown", |b| b.source),
                    baseline.map_or(0.0, |b| b.ms),
                    comparison(value, threshold),
                    format_percent(threshold),
                    self.count.unwrap_or(0.0),
                    format_duration(TimeDelta::seconds(self.window_seconds.unwrap_or(0))),
                )
            }
        }
    }
}

/// Reads `rule`'s signal at `now` over samples since `epoch` (the latest
/// deployment or rollback), against `baseline` for latency.
pub fn read(
    rule: &Rule,
    history: &History,
    now: DateTime<Utc>,
    epoch: Option<DateTime<Utc>>,
    baseline: Option<&LatencyBaseline>,
    z: f64,
) -> Reading {
    let signal = rule.signal.name();
    match &rule.signal {
        Signal::Down => match history.latest().filter(|s| s.at == now).and_then(|s| s.up) {
            Some(up) => Reading {
                value: Some(if up { 0.0 } else { 1.0 }),
                ..Reading::new(
                    signal,
                    if up {
                        Verdict::Healthy
                    } else {
                        Verdict::Unhealthy
                    },
                )
            },
            None => Reading::inconclusive(signal, "no health probe result in this observation"),
        },
        Signal::Check { name, index } => {
            let bit = 1u64 << index;
            match history
                .latest()
                .filter(|s| s.at == now && s.checks_known & bit != 0)
            {
                Some(s) => {
                    let failed = s.checks_failed & bit != 0;
                    Reading {
                        value: Some(if failed { 1.0 } else { 0.0 }),
                        ..Reading::new(
                            signal,
                            if failed {
                                Verdict::Unhealthy
                            } else {
                                Verdict::Healthy
                            },
                        )
                    }
                }
                None => Reading::inconclusive(
                    signal,
                    format!("no result for check {name} in this observation"),
                ),
            }
        }
        Signal::ErrorRate {
            threshold,
            min_requests,
        } => {
            let pick = |s: &Sample| s.errors();
            read_proportion(
                rule,
                history,
                now,
                epoch,
                z,
                *threshold,
                *min_requests,
                pick,
                "requests",
            )
        }
        Signal::UsersAffected {
            threshold,
            min_users,
        } => {
            let pick = |s: &Sample| s.users();
            read_proportion(
                rule, history, now, epoch, z, *threshold, *min_users, pick, "users",
            )
        }
        Signal::LatencyDegradation {
            threshold,
            min_samples,
        } => {
            let mut values: Vec<f64> = history
                .window(now, rule.window, epoch)
                .filter_map(|s| s.latency_ms())
                .collect();
            let count = values.len();
            if count < *min_samples {
                return Reading::inconclusive(
                    signal,
                    format!("{count} latency samples in the window, {min_samples} needed"),
                );
            }
            let Some(baseline) = baseline else {
                return Reading::inconclusive(
                    signal,
                    "no latency baseline is known yet (no pre-deployment window and no fixed baseline)",
                );
            };
            let current = median(&mut values).unwrap_or(0.0);
            let degradation = current / baseline.ms - 1.0;
            Reading {
                value: Some(degradation),
                threshold: Some(*threshold),
                count: Some(count as f64),
                window_seconds: Some(window_span(rule, now, epoch)),
                current_ms: Some(current),
                baseline: Some(baseline.clone()),
                ..Reading::new(
                    signal,
                    band_verdict(degradation, *threshold, rule.watch_above),
                )
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn read_proportion(
    rule: &Rule,
    history: &History,
    now: DateTime<Utc>,
    epoch: Option<DateTime<Utc>>,
    z: f64,
    threshold: f64,
    minimum: f64,
    pick: impl Fn(&Sample) -> Option<(f64, f64)>,
    unit: &str,
) -> Reading {
    let signal = rule.signal.name();
    let (total, part) = history
        .window(now, rule.window, epoch)
        .filter_map(pick)
        .fold((0.0, 0.0), |(t, p), (st, sp)| (t + st, p + sp));
    if total < minimum {
        return Reading::inconclusive(
            signal,
            format!("{total:.0} {unit} in the window, {minimum:.0} needed"),
        );
    }
    let bound = wilson_lower_bound(part, total, z);
    Reading {
        value: Some(part / total),
        bound: Some(bound),
        threshold: Some(threshold),
        count: Some(total),
        window_seconds: Some(window_span(rule, now, epoch)),
        ..Reading::new(signal, band_verdict(bound, threshold, rule.watch_above))
    }
}

fn band_verdict(value: f64, threshold: f64, watch_above: Option<f64>) -> Verdict {
    if value > threshold {
        Verdict::Unhealthy
    } else if watch_above.is_some_and(|w| value > w) {
        Verdict::Watch
    } else {
        Verdict::Healthy
    }
}

fn window_span(rule: &Rule, now: DateTime<Utc>, epoch: Option<DateTime<Utc>>) -> i64 {
    let full = rule.window;
    let clipped = epoch.map_or(full, |e| (now - e).min(full));
    clipped.num_seconds().max(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn a_sample_stays_small() {
        // 1,000 targets x 300 samples at 1 s polls: each byte is 300 KB.
        assert!(
            std::mem::size_of::<Sample>() <= 64,
            "{}",
            std::mem::size_of::<Sample>()
        );
    }

    #[test]
    fn the_latency_trail_keeps_every_poll_at_15s_and_thins_faster_polls() {
        let mut every_poll = LatencyTrail::new(TimeDelta::minutes(30), TimeDelta::seconds(15));
        for i in 0..400 {
            every_poll.push(at(i * 15), i as f64);
        }
        // 30 min at 15 s, plus the step of slack.
        assert_eq!(every_poll.len(), 122);
        let mut thinned = LatencyTrail::new(TimeDelta::minutes(30), TimeDelta::seconds(1));
        for i in 0..7200 {
            thinned.push(at(i), 200.0);
        }
        assert!(
            thinned.len() <= LatencyTrail::POINTS as usize + 2,
            "{}",
            thinned.len()
        );
        let recent: Vec<f64> = thinned.between(at(7200 - 1800), at(7200)).collect();
        assert_eq!(recent.len(), 120);
    }
}
