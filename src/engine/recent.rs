//! The most recent evidence: each windowed rule read over its short window
//! (docs/decisions.md, "A burst that ended is told, not paged"), and the shape
//! of a burst that has ended, for the notice that tells it.
//!
//! A rule that held for `for` acts only when this reading is not confidently
//! healthy. Confidently healthy means the whole confidence interval lies at
//! or below the threshold: for a proportion its upper Wilson bound, for
//! latency the median of the short window. Too few requests, users or samples
//! (the rule's minimum scaled to the short window), or an interval that
//! straddles the threshold, is inconclusive, and inconclusive never vetoes.

use chrono::{DateTime, TimeDelta, Utc};

use super::policy::{Rule, Signal};
use super::signals::{
    History, LatencyBaseline, Reading, Sample, Verdict, clipped, proportion_sums,
};
use super::stats::{median, wilson_lower_bound, wilson_upper_bound};
use crate::units::{format_duration, format_percent};

/// `rule`'s signal over its short window at `now`; `None` for instant signals
/// (down, checks), whose every reading is already current.
pub fn read_recent(
    rule: &Rule,
    history: &History,
    now: DateTime<Utc>,
    epoch: Option<DateTime<Utc>>,
    baseline: Option<&LatencyBaseline>,
    z: f64,
) -> Option<Reading> {
    let signal = rule.signal.name();
    let span = clipped(rule.short_window, now, epoch);
    let reading = match &rule.signal {
        Signal::Down | Signal::Check { .. } => return None,
        Signal::ErrorRate {
            threshold,
            min_requests,
        } => proportion(
            rule,
            history,
            now,
            epoch,
            z,
            *threshold,
            *min_requests,
            Sample::errors,
            "requests",
        ),
        Signal::UsersAffected {
            threshold,
            min_users,
        } => proportion(
            rule,
            history,
            now,
            epoch,
            z,
            *threshold,
            *min_users,
            Sample::users,
            "users",
        ),
        Signal::LatencyDegradation {
            threshold,
            min_samples,
        } => {
            let mut values: Vec<f64> = history
                .window(now, rule.short_window, epoch)
                .filter_map(Sample::latency_ms)
                .collect();
            let needed = scaled(*min_samples as f64, rule).ceil();
            let count = values.len();
            match baseline {
                _ if (count as f64) < needed => Reading::inconclusive(
                    signal,
                    format!("{count} latency samples, {needed:.0} needed"),
                ),
                None => Reading::inconclusive(signal, "no latency baseline"),
                Some(baseline) => {
                    let current = median(&mut values).unwrap_or(0.0);
                    let degradation = current / baseline.ms - 1.0;
                    let verdict = if degradation > *threshold {
                        Verdict::Unhealthy
                    } else {
                        Verdict::Healthy
                    };
                    Reading {
                        value: Some(degradation),
                        threshold: Some(*threshold),
                        count: Some(count as f64),
                        current_ms: Some(current),
                        baseline: Some(baseline.clone()),
                        ..Reading::new(signal, verdict)
                    }
                }
            }
        }
    };
    Some(Reading {
        window_seconds: Some(span.num_seconds().max(0)),
        ..reading
    })
}

/// The rule's minimum count scaled to its short window: what the short window
/// holds of the traffic the full window needs.
fn scaled(minimum: f64, rule: &Rule) -> f64 {
    let window = rule.window.num_milliseconds().max(1) as f64;
    let short = rule.short_window.num_milliseconds().max(0) as f64;
    (minimum * short / window).max(1.0)
}

#[allow(clippy::too_many_arguments)]
fn proportion(
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
    let (total, part) = proportion_sums(history, now, rule.short_window, epoch, pick);
    let needed = scaled(minimum, rule).ceil();
    if total < needed {
        return Reading::inconclusive(signal, format!("{total:.0} {unit}, {needed:.0} needed"));
    }
    let lower = wilson_lower_bound(part, total, z);
    let upper = wilson_upper_bound(part, total, z);
    let (verdict, reason) = if lower > threshold {
        (Verdict::Unhealthy, None)
    } else if upper <= threshold {
        (Verdict::Healthy, None)
    } else {
        (
            Verdict::Inconclusive,
            Some(format!(
                "{} of {total:.0} {unit} cannot tell either way",
                format_percent(part / total)
            )),
        )
    };
    Reading {
        value: Some(part / total),
        bound: Some(lower),
        threshold: Some(threshold),
        count: Some(total),
        reason,
        ..Reading::new(signal, verdict)
    }
}

impl Reading {
    /// A short-window reading in a few words: "0.4% over the last 15s".
    pub fn describe_recent(&self) -> String {
        let last = format_duration(TimeDelta::seconds(self.window_seconds.unwrap_or(0)));
        if let Some(reason) = &self.reason {
            return format!("inconclusive over the last {last} ({reason})");
        }
        match (self.current_ms, self.value) {
            (Some(ms), Some(value)) => format!(
                "{ms:.0}ms ({}{}) over the last {last}",
                if value >= 0.0 { "+" } else { "" },
                format_percent(value)
            ),
            (None, Some(value)) => format!("{} over the last {last}", format_percent(value)),
            _ => format!("no reading over the last {last}"),
        }
    }
}

/// The latest burst in what is kept of `rule`'s signal since `epoch`: the
/// latest unbroken run of intervals past the threshold on their own, its
/// first and last interval and its worst value. `None` when there is none.
#[derive(Clone, Debug, PartialEq)]
pub struct Burst {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub peak: f64,
}

pub fn burst(
    rule: &Rule,
    history: &History,
    epoch: Option<DateTime<Utc>>,
    baseline: Option<&LatencyBaseline>,
) -> Option<Burst> {
    let threshold = rule.signal.threshold()?;
    let value = |sample: &Sample| -> Option<f64> {
        let ratio = |(total, part): (f64, f64)| (total > 0.0).then(|| part / total);
        match &rule.signal {
            Signal::ErrorRate { .. } => sample.errors().and_then(ratio),
            Signal::UsersAffected { .. } => sample.users().and_then(ratio),
            Signal::LatencyDegradation { .. } => {
                let baseline = baseline?;
                sample.latency_ms().map(|ms| ms / baseline.ms - 1.0)
            }
            Signal::Down | Signal::Check { .. } => None,
        }
    };
    let mut found: Option<Burst> = None;
    // Newest first, back to the epoch; samples without the value are skipped.
    for sample in history.iter().rev() {
        let at = sample.at();
        if epoch.is_some_and(|e| at <= e) {
            break;
        }
        match (value(sample), &mut found) {
            (None, _) => {}
            (Some(v), None) if v > threshold => {
                found = Some(Burst {
                    from: at,
                    to: at,
                    peak: v,
                });
            }
            (Some(v), Some(b)) if v > threshold => {
                b.from = at;
                b.peak = b.peak.max(v);
            }
            (Some(_), Some(_)) => break,
            (Some(_), None) => {}
        }
    }
    found
}
