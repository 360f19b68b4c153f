//! The Prometheus HTTP API: instant queries (`/api/v1/query`) for live polls
//! and range queries (`/api/v1/query_range`) for backtests over history. An
//! error status, an empty result or NaN is no data, with the query and the
//! reason; never zero.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Deserialize;

use super::config::PromSignal;
use super::http::{FetchError, get};
use crate::engine::input::Observation;

/// One series of a result: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// One series of a range result: its labels and (time, value) points.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    pub labels: BTreeMap<String, String>,
    pub points: Vec<(DateTime<Utc>, f64)>,
}

#[derive(Debug, Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Data {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct VectorItem {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    value: (f64, String),
}

#[derive(Debug, Deserialize)]
struct MatrixItem {
    #[serde(default)]
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// Runs an instant query at `at` (now when `None`).
pub async fn instant(
    client: &reqwest::Client,
    base_url: &str,
    query: &str,
    at: Option<DateTime<Utc>>,
    timeout: Duration,
    max_bytes: u64,
) -> Result<Vec<Series>, String> {
    let mut url = format!(
        "{}/api/v1/query?query={}",
        base_url.trim_end_matches('/'),
        encode(query)
    );
    if let Some(at) = at {
        url.push_str(&format!("&time={}", at.timestamp_millis() as f64 / 1000.0));
    }
    let body = fetch(client, &url, timeout, max_bytes).await?;
    parse_instant(&body)
}

/// Runs a range query from `start` to `end` at `step`.
pub async fn range(
    client: &reqwest::Client,
    base_url: &str,
    query: &str,
    (start, end, step): (DateTime<Utc>, DateTime<Utc>, TimeDelta),
    timeout: Duration,
    max_bytes: u64,
) -> Result<Vec<RangeSeries>, String> {
    let url = format!(
        "{}/api/v1/query_range?query={}&start={}&end={}&step={}",
        base_url.trim_end_matches('/'),
        encode(query),
        start.timestamp(),
        end.timestamp(),
        step.num_milliseconds() as f64 / 1000.0
    );
    let body = fetch(client, &url, timeout, max_bytes).await?;
    parse_range(&body)
}

async fn fetch(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
    max_bytes: u64,
) -> Result<String, String> {
    // A bad query is HTTP 400 with a JSON body that says why: read it either way.
    match get(client, url, timeout, max_bytes).await {
        Ok(fetched) if fetched.status == 200 || fetched.body.trim_start().starts_with('{') => {
            Ok(fetched.body)
        }
        Ok(fetched) => Err(format!("HTTP {}", fetched.status)),
        Err(FetchError::Connect(why)) => Err(format!("prometheus unreachable: {why}")),
        Err(error) => Err(format!("prometheus: {error}")),
    }
}

fn envelope(body: &str) -> Result<Data, String> {
    let envelope: Envelope =
        serde_json::from_str(body).map_err(|e| format!("not a Prometheus API response: {e}"))?;
    if envelope.status != "success" {
        return Err(format!(
            "query failed: {}: {}",
            envelope.error_type.unwrap_or_else(|| "error".into()),
            envelope.error.unwrap_or_else(|| "no reason given".into())
        ));
    }
    envelope
        .data
        .ok_or_else(|| "response without data".to_string())
}

pub fn parse_instant(body: &str) -> Result<Vec<Series>, String> {
    let data = envelope(body)?;
    let items: Vec<VectorItem> = match data.result_type.as_str() {
        "vector" => {
            serde_json::from_value(data.result).map_err(|e| format!("malformed vector: {e}"))?
        }
        "scalar" => {
            let value: (f64, String) = serde_json::from_value(data.result)
                .map_err(|e| format!("malformed scalar: {e}"))?;
            vec![VectorItem {
                metric: BTreeMap::new(),
                value,
            }]
        }
        other => {
            return Err(format!(
                "expected an instant vector or scalar, got a {other}"
            ));
        }
    };
    items
        .into_iter()
        .map(|item| {
            Ok(Series {
                labels: item.metric,
                value: parse_value(&item.value.1)?,
            })
        })
        .collect()
}

pub fn parse_range(body: &str) -> Result<Vec<RangeSeries>, String> {
    let data = envelope(body)?;
    if data.result_type != "matrix" {
        return Err(format!(
            "expected a range vector (matrix), got a {}",
            data.result_type
        ));
    }
    let items: Vec<MatrixItem> =
        serde_json::from_value(data.result).map_err(|e| format!("malformed matrix: {e}"))?;
    items
        .into_iter()
        .map(|item| {
            let points = item
                .values
                .into_iter()
                .map(|(t, v)| {
                    let at = DateTime::from_timestamp_millis((t * 1000.0).round() as i64)
                        .ok_or("timestamp out of range")?;
                    Ok((at, parse_value(&v)?))
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(RangeSeries {
                labels: item.metric,
                points,
            })
        })
        .collect()
}

fn parse_value(text: &str) -> Result<f64, String> {
    text.parse::<f64>()
        .map_err(|_| format!("invalid sample value \"{text}\""))
}

/// The one number a signal query must give: exactly one finite series.
pub fn single_value(series: &[Series]) -> Result<f64, String> {
    match series {
        [] => Err("empty result (no series matched)".into()),
        [one] if one.value.is_finite() => Ok(one.value),
        [one] => Err(format!("the value is {}", one.value)),
        many => Err(format!(
            "{} series, expected one: aggregate the query with sum(...)",
            many.len()
        )),
    }
}

/// Puts a query's value into the observation field its signal names.
pub fn set_signal(observation: &mut Observation, signal: &PromSignal, value: f64) {
    match signal {
        PromSignal::Requests => observation.requests = Some(value),
        PromSignal::Errors => observation.errors = Some(value),
        PromSignal::LatencyP50 => observation.latency_ms.p50 = Some(value),
        PromSignal::LatencyP90 => observation.latency_ms.p90 = Some(value),
        PromSignal::LatencyP95 => observation.latency_ms.p95 = Some(value),
        PromSignal::LatencyP99 => observation.latency_ms.p99 = Some(value),
        PromSignal::Users => observation.users = Some(value),
        PromSignal::UsersAffected => observation.users_affected = Some(value),
        PromSignal::Up => observation.up = Some(value != 0.0),
    }
}

/// Percent-encodes a query for a URL (RFC 3986 unreserved characters pass).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_and_scalar_results() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"version":"v2"},"value":[1700000000.5,"1"]}]}}"#;
        let series = parse_instant(body).unwrap();
        assert_eq!(series[0].labels["version"], "v2");
        assert_eq!(single_value(&series), Ok(1.0));
        let scalar =
            r#"{"status":"success","data":{"resultType":"scalar","result":[1700000000,"42.5"]}}"#;
        assert_eq!(single_value(&parse_instant(scalar).unwrap()), Ok(42.5));
    }

    #[test]
    fn errors_empty_results_and_nan_are_no_data_with_the_reason() {
        let error = r#"{"status":"error","errorType":"bad_data","error":"invalid parameter \"query\": 1:5: parse error"}"#;
        assert!(
            parse_instant(error)
                .unwrap_err()
                .contains("bad_data: invalid parameter")
        );
        let empty = r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#;
        assert!(
            single_value(&parse_instant(empty).unwrap())
                .unwrap_err()
                .contains("empty result")
        );
        let nan = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"NaN"]}]}}"#;
        assert!(
            single_value(&parse_instant(nan).unwrap())
                .unwrap_err()
                .contains("NaN")
        );
        assert!(
            parse_instant("<html>")
                .unwrap_err()
                .contains("not a Prometheus API response")
        );
        let two = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"a":"1"},"value":[1,"1"]},{"metric":{"a":"2"},"value":[1,"2"]}]}}"#;
        assert!(
            single_value(&parse_instant(two).unwrap())
                .unwrap_err()
                .contains("2 series")
        );
    }

    #[test]
    fn matrix_results() {
        let body = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1700000000,"1"],[1700000015,"2.5"]]}]}}"#;
        let series = parse_range(body).unwrap();
        assert_eq!(series[0].points.len(), 2);
        assert_eq!(series[0].points[1].1, 2.5);
        assert_eq!(series[0].points[1].0.timestamp(), 1_700_000_015);
    }

    #[test]
    fn queries_are_url_encoded() {
        assert_eq!(encode(r#"sum(x{a="b"})"#), "sum%28x%7Ba%3D%22b%22%7D%29");
    }
}
