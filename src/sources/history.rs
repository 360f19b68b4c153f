//! A policy's PromQL queries over a stretch of Prometheus history
//! (`/api/v1/query_range`, step = the policy's interval, in chunks), turned
//! into trace items for `backtest --from --to`.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::future::join_all;

use crate::engine::input::Observation;
use crate::trace::TraceItem;

use super::config::{Queries, SourceConfig, SourceKind, render};
use super::prometheus;

/// Prometheus refuses more than 11,000 points per series; stay below.
const MAX_POINTS_PER_QUERY: i32 = 10_000;

/// Fetches `[from, to]` at `step` and returns one item per step, in time order.
pub async fn fetch(
    source: &SourceConfig,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: TimeDelta,
) -> Result<Vec<TraceItem>, String> {
    let SourceKind::Prometheus { url, queries } = &source.kind else {
        return Err("backtest --from/--to needs a policy with a prometheus source ([source] kind = \"prometheus\")".into());
    };
    if to <= from {
        return Err("--to must be after --from".into());
    }
    let client = super::http::client().map_err(|e| format!("http client: {e}"))?;
    let interval = crate::units::promql_duration(step.to_std().unwrap_or(Duration::from_secs(15)));
    // History answers are bigger than live ones: allow more per response.
    let max_bytes = source.max_bytes.saturating_mul(16);
    let timeout = source.timeout.max(Duration::from_secs(30));
    let mut items = Vec::new();
    // Steps fall on whole seconds, as the API is asked for them.
    let from = DateTime::from_timestamp(from.timestamp(), 0).unwrap_or(from);
    let mut chunk_start = from;
    while chunk_start <= to {
        let chunk_end = (chunk_start + step * (MAX_POINTS_PER_QUERY - 1)).min(to);
        let points = fetch_chunk(
            &client,
            url,
            queries,
            &interval,
            (chunk_start, chunk_end, step),
            timeout,
            max_bytes,
        )
        .await?;
        items.extend(points);
        chunk_start = chunk_end + step;
    }
    Ok(items)
}

async fn fetch_chunk(
    client: &reqwest::Client,
    url: &str,
    queries: &Queries,
    interval: &str,
    range: (DateTime<Utc>, DateTime<Utc>, TimeDelta),
    timeout: Duration,
    max_bytes: u64,
) -> Result<Vec<TraceItem>, String> {
    let numeric = queries.numeric(interval);
    let runs = numeric
        .iter()
        .map(|(_, query)| prometheus::range(client, url, query, range, timeout, max_bytes));
    let results = join_all(runs).await;
    let mut observations: BTreeMap<DateTime<Utc>, Observation> = BTreeMap::new();
    let mut step_at = range.0;
    while step_at <= range.1 {
        observations.insert(step_at, Observation::new(step_at));
        step_at += range.2;
    }
    for ((signal, query), result) in numeric.iter().zip(results) {
        let series = result.map_err(|reason| format!("{signal}: query {query}: {reason}"))?;
        if series.len() > 1 {
            return Err(format!(
                "{signal}: query {query} returned {} series, expected one: aggregate it with sum(...)",
                series.len()
            ));
        }
        for (at, value) in series.iter().flat_map(|s| s.points.iter()) {
            if !value.is_finite() {
                continue;
            }
            if let Some(observation) = observations.get_mut(at) {
                prometheus::set_signal(observation, signal, *value);
            }
        }
    }
    if let Some(query) = &queries.version {
        let query = render(query, interval);
        let series = prometheus::range(client, url, &query, range, timeout, max_bytes)
            .await
            .map_err(|reason| format!("version: query {query}: {reason}"))?;
        for one in &series {
            let Some(version) = one.labels.get(&queries.version_label) else {
                continue;
            };
            for (at, value) in &one.points {
                if *value != 0.0
                    && let Some(observation) = observations.get_mut(at)
                {
                    observation.version = Some(version.clone());
                }
            }
        }
    }
    Ok(observations
        .into_values()
        .map(|o| {
            if o.is_empty() {
                TraceItem::NoData {
                    at: o.at,
                    reason: "no samples in Prometheus history at this step".into(),
                }
            } else {
                TraceItem::Observation(o)
            }
        })
        .collect())
}
