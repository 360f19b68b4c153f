//! Turns successive scrapes of a Prometheus text endpoint into observations:
//! counters become per-interval deltas (a counter that goes down is a reset,
//! handled as `rate()` does), latency quantiles come from the histogram's
//! bucket deltas as `histogram_quantile` computes them, and the version from a
//! `*_build_info` label. Pure: the HTTP fetch lives in `fetch`.

use std::collections::HashMap;

use crate::engine::input::LatencyQuantiles;

use super::exposition::{Exposition, Sample};
use super::selector::Selector;

/// Which series a scrape reads, from the policy's `[source.metrics]`.
#[derive(Clone, Debug)]
pub struct ScrapeMetrics {
    pub requests: Option<Selector>,
    pub errors: Option<Selector>,
    /// A histogram in seconds; its `_bucket` series are read.
    pub latency: Option<Selector>,
    pub users: Option<Selector>,
    pub users_affected: Option<Selector>,
    /// A gauge (value 1) whose `version_label` names the running version.
    pub version: Option<Selector>,
    pub version_label: String,
}

/// What one scrape yields: per-interval counts (unknown on the first scrape),
/// quantiles and the version, plus every reason a value had to be left out.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Derived {
    pub requests: Option<f64>,
    pub errors: Option<f64>,
    pub latency_ms: LatencyQuantiles,
    pub users: Option<f64>,
    pub users_affected: Option<f64>,
    pub version: Option<String>,
    pub problems: Vec<String>,
}

/// Current counter values per series, for one selector; `None` when a selected
/// series held an impossible value (NaN, negative), which makes the signal unusable.
type Counters = Option<HashMap<String, f64>>;

/// Keeps the previous scrape's counters to take deltas against.
#[derive(Debug)]
pub struct Deriver {
    metrics: ScrapeMetrics,
    previous: Option<Snapshot>,
}

#[derive(Debug, Default)]
struct Snapshot {
    requests: Counters,
    errors: Counters,
    users: Counters,
    users_affected: Counters,
    /// Series (without `le`) → its buckets as (le, cumulative count), sorted by le.
    buckets: HashMap<String, Vec<(f64, f64)>>,
}

impl Deriver {
    pub fn new(metrics: ScrapeMetrics) -> Deriver {
        Deriver {
            metrics,
            previous: None,
        }
    }

    /// Forget the previous scrape (after a failed one the next starts afresh:
    /// a delta across a gap would be attributed to one interval).
    pub fn reset(&mut self) {
        self.previous = None;
    }

    pub fn derive(&mut self, exposition: &Exposition) -> Derived {
        let mut derived = Derived::default();
        let problems = &mut derived.problems;
        let m = &self.metrics;
        let mut current = Snapshot {
            requests: collect_counters(exposition, m.requests.as_ref(), problems),
            errors: collect_counters(exposition, m.errors.as_ref(), problems),
            users: collect_counters(exposition, m.users.as_ref(), problems),
            users_affected: collect_counters(exposition, m.users_affected.as_ref(), problems),
            buckets: HashMap::new(),
        };
        if let Some(latency) = &m.latency {
            current.buckets = collect_buckets(exposition, latency, problems);
        }
        derived.version = m.version.as_ref().and_then(|selector| {
            exposition
                .samples
                .iter()
                .filter(|s| {
                    s.name == selector.metric
                        && s.value != 0.0
                        && selector.matches_labels(&s.labels)
                })
                .find_map(|s| s.label(&m.version_label).map(str::to_string))
        });
        if let Some(previous) = &self.previous {
            derived.requests = if has_series(&current.requests) {
                delta(&previous.requests, &current.requests)
            } else {
                None
            };
            // No 5xx series yet means no errors, once requests are known.
            derived.errors = match (&m.errors, derived.requests) {
                (Some(_), Some(_)) => delta(&previous.errors, &current.errors),
                _ => None,
            };
            derived.users = if has_series(&current.users) {
                delta(&previous.users, &current.users)
            } else {
                None
            };
            derived.users_affected = match (&m.users_affected, derived.users) {
                (Some(_), Some(_)) => delta(&previous.users_affected, &current.users_affected),
                _ => None,
            };
            if m.latency.is_some() && !current.buckets.is_empty() {
                match bucket_deltas(&previous.buckets, &current.buckets) {
                    Ok(buckets) => derived.latency_ms = quantiles_ms(&buckets, problems),
                    Err(problem) => problems.push(problem),
                }
            }
        }
        if m.requests.is_some() && current.requests.as_ref().is_some_and(|c| c.is_empty()) {
            problems.push(format!("no series matches {}", display(&m.requests)));
        }
        self.previous = Some(current);
        derived
    }
}

fn display(selector: &Option<Selector>) -> String {
    selector
        .as_ref()
        .map_or_else(String::new, |s| s.to_string())
}

fn series_key(labels: &[(String, String)], skip: Option<&str>) -> String {
    let mut pairs: Vec<&(String, String)> = labels
        .iter()
        .filter(|(n, _)| Some(n.as_str()) != skip)
        .collect();
    pairs.sort();
    let mut key = String::new();
    for (name, value) in pairs {
        key.push_str(name);
        key.push('\u{1}');
        key.push_str(value);
        key.push('\u{2}');
    }
    key
}

/// The counter series a selector picks. The selector may name the family
/// without its OpenMetrics `_total` suffix.
fn collect_counters(
    exposition: &Exposition,
    selector: Option<&Selector>,
    problems: &mut Vec<String>,
) -> Counters {
    let Some(selector) = selector else {
        return Some(HashMap::new());
    };
    match counters_named(exposition, selector, &selector.metric, problems) {
        Some(counters) if counters.is_empty() => counters_named(
            exposition,
            selector,
            &format!("{}_total", selector.metric),
            problems,
        ),
        other => other,
    }
}

fn counters_named(
    exposition: &Exposition,
    selector: &Selector,
    name: &str,
    problems: &mut Vec<String>,
) -> Counters {
    let mut counters = HashMap::new();
    for sample in exposition
        .samples
        .iter()
        .filter(|s| s.name == name && selector.matches_labels(&s.labels))
    {
        if !(sample.value.is_finite() && sample.value >= 0.0) {
            problems.push(format!(
                "{name} has the impossible counter value {}: left out",
                sample.value
            ));
            return None;
        }
        counters.insert(series_key(&sample.labels, None), sample.value);
    }
    Some(counters)
}

/// Sum of per-series increases; a series that went down was reset and counts
/// from zero, a new series counts whole (it started at zero since the last scrape).
/// None when either scrape could not read the counter.
fn delta(previous: &Counters, current: &Counters) -> Option<f64> {
    let (previous, current) = (previous.as_ref()?, current.as_ref()?);
    Some(
        current
            .iter()
            .map(|(key, &now)| match previous.get(key) {
                Some(&before) if now >= before => now - before,
                _ => now,
            })
            .sum(),
    )
}

fn has_series(counters: &Counters) -> bool {
    counters.as_ref().is_some_and(|c| !c.is_empty())
}

fn collect_buckets(
    exposition: &Exposition,
    selector: &Selector,
    problems: &mut Vec<String>,
) -> HashMap<String, Vec<(f64, f64)>> {
    let name = format!("{}_bucket", selector.metric);
    let mut series: HashMap<String, Vec<(f64, f64)>> = HashMap::new();
    for sample in exposition
        .samples
        .iter()
        .filter(|s| s.name == name && selector.matches_labels(&s.labels))
    {
        let Some(le) = bucket_bound(sample) else {
            problems.push(format!("{name} has a bucket without a valid le label"));
            continue;
        };
        series
            .entry(series_key(&sample.labels, Some("le")))
            .or_default()
            .push((le, sample.value));
    }
    for buckets in series.values_mut() {
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series
}

fn bucket_bound(sample: &Sample) -> Option<f64> {
    sample
        .label("le")?
        .parse::<f64>()
        .ok()
        .filter(|le| !le.is_nan())
}

/// Per-`le` increases summed over series. A series whose `+Inf` bucket went
/// down was reset and counts from zero.
///
/// Linear in the number of buckets (n log n for the final sort): each series'
/// previous buckets are sorted by `le`, so the old count is a binary search, and
/// the increases of all series are summed by sorting them once, never by a scan
/// per bucket (a series with thousands of `le` values made that quadratic).
fn bucket_deltas(
    previous: &HashMap<String, Vec<(f64, f64)>>,
    current: &HashMap<String, Vec<(f64, f64)>>,
) -> Result<Vec<(f64, f64)>, String> {
    let mut increases: Vec<(f64, f64)> = Vec::with_capacity(current.values().map(Vec::len).sum());
    for (key, now) in current {
        check_monotonic(now)?;
        let before = previous.get(key);
        let reset = match before {
            Some(before) => before.last().map(|b| b.1) > now.last().map(|n| n.1),
            None => false,
        };
        for &(le, count) in now {
            let old = if reset {
                None
            } else {
                before.and_then(|b| count_at(b, le))
            };
            let increase = match old {
                Some(old) if count >= old => count - old,
                Some(_) => count,
                None => count,
            };
            increases.push((le, increase));
        }
    }
    // A stable sort keeps each `le`'s increases in the order they were found,
    // so the sums are added in the same order as a scan would add them.
    increases.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut summed: Vec<(f64, f64)> = Vec::new();
    for (le, increase) in increases {
        match summed.last_mut() {
            // `==`, not the sort's total order: -0 and 0 are one bound.
            Some(slot) if slot.0 == le => slot.1 += increase,
            _ => summed.push((le, increase)),
        }
    }
    check_monotonic(&summed)?;
    Ok(summed)
}

/// The count of the first bucket whose bound equals `le`, in buckets sorted by
/// `le` (`f64::total_cmp`, as `collect_buckets` leaves them).
fn count_at(buckets: &[(f64, f64)], le: f64) -> Option<f64> {
    // The total order refines `<`, so `bound < le` is true then false along it.
    let first = buckets.partition_point(|(bound, _)| *bound < le);
    buckets
        .get(first)
        .filter(|(bound, _)| *bound == le)
        .map(|(_, count)| *count)
}

fn check_monotonic(buckets: &[(f64, f64)]) -> Result<(), String> {
    for pair in buckets.windows(2) {
        let (lower, upper) = (pair[0].1, pair[1].1);
        // Tolerate float noise, as Prometheus does, but not a real decrease.
        if upper < lower - 1e-9 * lower.abs().max(1.0) {
            return Err(format!(
                "histogram buckets go down (le={} has {lower}, le={} has {upper}): latency left out",
                pair[0].0, pair[1].0
            ));
        }
    }
    // A count is never below zero; one that is would make a delta negative.
    if buckets.iter().any(|(_, c)| !(c.is_finite() && *c >= 0.0)) {
        return Err(
            "histogram bucket count is negative or not a finite number: latency left out".into(),
        );
    }
    Ok(())
}

fn quantiles_ms(buckets: &[(f64, f64)], problems: &mut Vec<String>) -> LatencyQuantiles {
    if buckets.last().is_none_or(|b| b.0 != f64::INFINITY) {
        problems.push("histogram has no +Inf bucket: latency left out".into());
        return LatencyQuantiles::default();
    }
    let q = |q: f64| histogram_quantile(q, buckets).map(|seconds| seconds * 1000.0);
    LatencyQuantiles {
        p50: q(0.5),
        p90: q(0.9),
        p95: q(0.95),
        p99: q(0.99),
    }
}

/// `histogram_quantile` as Prometheus computes it over cumulative buckets
/// sorted by upper bound, the last being `+Inf`. None without observations.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 || buckets.len() < 2 {
        return None;
    }
    let rank = q * total;
    let index = buckets.iter().position(|(_, count)| *count >= rank)?;
    if index == buckets.len() - 1 {
        // In the +Inf bucket: the highest finite bound is the best answer.
        return Some(buckets[buckets.len() - 2].0);
    }
    let (upper, count) = buckets[index];
    let (lower, lower_count) = if index == 0 {
        if upper <= 0.0 {
            return Some(upper);
        }
        (0.0, 0.0)
    } else {
        buckets[index - 1]
    };
    if count == lower_count {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - lower_count) / (count - lower_count))
}

#[cfg(test)]
mod tests;
