//! Signals and verdicts: the bounded history of observations, and for each rule
//! the value it reads over its window (with the statistics behind it) and the
//! three-valued verdict that value gives: healthy, unhealthy or inconclusive,
//! plus the watch band between `watch_above` and the threshold.

use std::collections::VecDeque;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::input::Observation;
use super::policy::{BaselineMode, Policy, Quantile, Rule, Signal};
use super::stats::{median, wilson_lower_bound};
use crate::text_enum::text_enum;
use crate::units::{format_duration, format_percent};

/// The parts of an observation the rules read, kept compactly (40 bytes): a
/// thousand targets at 1 s polls keep 300 samples each. The time is in
/// nanoseconds since the epoch; the values are `f32` (per-interval counts and
/// milliseconds need no more), NaN for unknown, and read back as `f64`.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    at_ns: i64,
    /// (requests, errors), NaN unless both are known and sane.
    errors: [f32; 2],
    /// (users, users affected), same rule.
    users: [f32; 2],
    /// The policy's latency quantile, in milliseconds.
    latency_ms: f32,
    /// Bit i set: `Policy::checks[i]` was reported.
    checks_known: u32,
    /// Bit i set: `Policy::checks[i]` failed.
    checks_failed: u32,
    /// 0 unknown, 1 down, 2 up.
    up: u8,
}

/// Most named checks a policy may refer to (one bit each in a `Sample`).
pub const MAX_CHECKS: usize = 32;

/// A time as `Sample` keeps it: nanoseconds since the epoch, clamped to the
/// years 1678 to 2261 (both sides of a comparison are clamped alike).
pub fn nanos(at: DateTime<Utc>) -> i64 {
    at.timestamp_nanos_opt().unwrap_or(if at.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

fn pair(p: Option<(f64, f64)>) -> [f32; 2] {
    p.map_or([f32::NAN; 2], |(total, part)| [total as f32, part as f32])
}

fn unpair(p: [f32; 2]) -> Option<(f64, f64)> {
    (!p[0].is_nan()).then(|| (f64::from(p[0]), f64::from(p[1])))
}

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
        let mut checks_known = 0u32;
        let mut checks_failed = 0u32;
        for (name, passed) in &obs.checks {
            let bit = policy
                .checks
                .iter()
                .position(|c| c == name)
                .and_then(|index| 1u32.checked_shl(u32::try_from(index).ok()?));
            if let Some(bit) = bit {
                checks_known |= bit;
                if !passed {
                    checks_failed |= bit;
                }
            }
        }
        let sample = Sample {
            at_ns: nanos(obs.at),
            up: match obs.up {
                None => 0,
                Some(false) => 1,
                Some(true) => 2,
            },
            errors: pair(errors),
            users: pair(users),
            latency_ms: latency_ms.map_or(f32::NAN, |ms| ms as f32),
            checks_known,
            checks_failed,
        };
        (sample, problems)
    }

    /// When it was observed.
    pub fn at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_nanos(self.at_ns)
    }

    /// Whether it was observed at `at`.
    pub fn is_at(&self, at: DateTime<Utc>) -> bool {
        self.at_ns == nanos(at)
    }

    /// The health probe's result.
    pub fn up(&self) -> Option<bool> {
        match self.up {
            0 => None,
            up => Some(up == 2),
        }
    }

    /// Whether check `index` of the policy was reported, and if so whether it failed.
    pub fn check_failed(&self, index: usize) -> Option<bool> {
        let bit = 1u32.checked_shl(u32::try_from(index).ok()?)?;
        (self.checks_known & bit != 0).then_some(self.checks_failed & bit != 0)
    }

    /// (requests, errors) in the interval.
    pub fn errors(&self) -> Option<(f64, f64)> {
        unpair(self.errors)
    }

    /// (users, users affected) in the interval.
    pub fn users(&self) -> Option<(f64, f64)> {
        unpair(self.users)
    }

    /// The policy's latency quantile, in milliseconds.
    pub fn latency_ms(&self) -> Option<f64> {
        (!self.latency_ms.is_nan()).then_some(f64::from(self.latency_ms))
    }

    /// Whether the sample holds a metric a windowed rule can judge.
    pub fn has_metrics(&self) -> bool {
        self.errors().is_some() || self.users().is_some() || self.latency_ms().is_some()
    }

    /// Whether the sample holds anything a rule can judge.
    pub fn has_data(&self) -> bool {
        self.up != 0 || self.has_metrics() || self.checks_known != 0
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
        let oldest = nanos(sample.at() - keep);
        while self.samples.front().is_some_and(|s| s.at_ns < oldest) {
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
        let start = nanos(now - window);
        let from = from.map(nanos);
        self.samples
            .iter()
            .rev()
            .take_while(move |s| s.at_ns > start && from.is_none_or(|from| s.at_ns > from))
    }

    /// Every sample kept, oldest first.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Sample> {
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
    /// Pre-deploy (median over the window before the deployment) or fixed.
    pub source: BaselineMode,
}

text_enum! {
    /// What a reading says of its rule.
    pub enum Verdict ("verdict") {
        Healthy => "healthy",
        /// Between `watch_above` and the threshold.
        Watch => "watch",
        Unhealthy => "unhealthy",
        Inconclusive => "inconclusive",
    }
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
    pub(super) fn new(signal: &'static str, verdict: Verdict) -> Self {
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

    pub(super) fn inconclusive(signal: &'static str, reason: impl Into<String>) -> Self {
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
                    baseline.map_or("unknown", |b| b.source.as_str()),
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
        Signal::Down => match history
            .latest()
            .filter(|s| s.is_at(now))
            .and_then(Sample::up)
        {
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
            match history
                .latest()
                .filter(|s| s.is_at(now))
                .and_then(|s| s.check_failed(*index))
            {
                Some(failed) => Reading {
                    value: Some(if failed { 1.0 } else { 0.0 }),
                    ..Reading::new(
                        signal,
                        if failed {
                            Verdict::Unhealthy
                        } else {
                            Verdict::Healthy
                        },
                    )
                },
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
    let (total, part) = proportion_sums(history, now, rule.window, epoch, pick);
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
    clipped(rule.window, now, epoch).num_seconds().max(0)
}

/// `window` before `now`, cut at the epoch (a window never reaches back
/// past the latest deployment).
pub(super) fn clipped(
    window: TimeDelta,
    now: DateTime<Utc>,
    epoch: Option<DateTime<Utc>>,
) -> TimeDelta {
    epoch.map_or(window, |e| (now - e).min(window))
}

/// The totals and parts `pick` finds in the samples of `window` before
/// `now`: what a proportion (error rate, users affected) is read from.
pub(super) fn proportion_sums(
    history: &History,
    now: DateTime<Utc>,
    window: TimeDelta,
    epoch: Option<DateTime<Utc>>,
    pick: impl Fn(&Sample) -> Option<(f64, f64)>,
) -> (f64, f64) {
    history
        .window(now, window, epoch)
        .filter_map(pick)
        .fold((0.0, 0.0), |(t, p), (st, sp)| (t + st, p + sp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn a_sample_reads_back_what_it_keeps() {
        let text = include_str!("../../policies/production.toml");
        let mut policy = crate::policy::from_bytes("p.toml", text.as_bytes(), |_| None).unwrap();
        policy.checks = vec!["data_integrity".into(), "critical_features".into()];
        let mut obs = Observation::new(at(7));
        obs.up = Some(false);
        obs.requests = Some(1200.0);
        obs.errors = Some(6.0);
        obs.checks.push(("critical_features".into(), false));
        obs.checks.push(("unknown".into(), false));
        let (sample, problems) = Sample::from_observation(&obs, &policy);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(sample.at(), at(7));
        assert!(sample.is_at(at(7)) && !sample.is_at(at(8)));
        assert_eq!(sample.up(), Some(false));
        assert_eq!(sample.errors(), Some((1200.0, 6.0)));
        assert_eq!((sample.users(), sample.latency_ms()), (None, None));
        assert_eq!(sample.check_failed(0), None);
        assert_eq!(sample.check_failed(1), Some(true));
        assert_eq!(sample.check_failed(40), None);
        assert!(sample.has_data() && sample.has_metrics());
        let empty = Sample::from_observation(&Observation::new(at(8)), &policy).0;
        assert!(!empty.has_data() && empty.up().is_none());
        // Far outside the representable range, times clamp alike.
        let far = DateTime::from_timestamp(400_000_000_000, 0).unwrap();
        assert_eq!(nanos(far), i64::MAX);
    }

    #[test]
    fn a_sample_stays_small() {
        // 1,000 targets x 300 samples at 1 s polls: each byte is 300 KB.
        assert!(
            std::mem::size_of::<Sample>() <= 40,
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
