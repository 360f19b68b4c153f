//! What a policy says about how to look at its target: the metrics source,
//! the health probe and the named check commands. Compiled and validated by
//! `crate::policy`; used by the poller.

use std::time::Duration;

use crate::procedure::command::CommandSpec;
use crate::text_enum::text_enum;

use super::scrape::ScrapeMetrics;

#[derive(Clone, Debug)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// Bounds every request to the source.
    pub timeout: Duration,
    pub max_bytes: u64,
}

#[derive(Clone, Debug)]
pub enum SourceKind {
    /// GET a Prometheus text exposition at `url`.
    Scrape { url: String, metrics: ScrapeMetrics },
    /// PromQL instant queries against the Prometheus server at `url`.
    Prometheus { url: String, queries: Queries },
}

/// One PromQL query per signal; `$interval` stands for the poll interval as a
/// PromQL duration (`15s`) and `$interval_seconds` for it in seconds (`15`).
#[derive(Clone, Debug, Default)]
pub struct Queries {
    pub requests: Option<String>,
    pub errors: Option<String>,
    pub latency_p50: Option<String>,
    pub latency_p90: Option<String>,
    pub latency_p95: Option<String>,
    pub latency_p99: Option<String>,
    pub users: Option<String>,
    pub users_affected: Option<String>,
    pub up: Option<String>,
    pub version: Option<String>,
    pub version_label: String,
}

impl Queries {
    /// (signal, query) for every configured numeric signal, `$interval` replaced.
    pub fn numeric(&self, interval: &str) -> Vec<(PromSignal, String)> {
        [
            (PromSignal::Requests, &self.requests),
            (PromSignal::Errors, &self.errors),
            (PromSignal::LatencyP50, &self.latency_p50),
            (PromSignal::LatencyP90, &self.latency_p90),
            (PromSignal::LatencyP95, &self.latency_p95),
            (PromSignal::LatencyP99, &self.latency_p99),
            (PromSignal::Users, &self.users),
            (PromSignal::UsersAffected, &self.users_affected),
            (PromSignal::Up, &self.up),
        ]
        .into_iter()
        .filter_map(|(signal, query)| Some((signal, render(query.as_ref()?, interval))))
        .collect()
    }
}

text_enum! {
    /// What a numeric query measures: the observation field its value goes
    /// into (`prometheus::set_signal`), named as the `[source.queries]` key.
    pub enum PromSignal ("query signal") {
        Requests => "requests",
        Errors => "errors",
        LatencyP50 => "latency_p50",
        LatencyP90 => "latency_p90",
        LatencyP95 => "latency_p95",
        LatencyP99 => "latency_p99",
        Users => "users",
        UsersAffected => "users_affected",
        Up => "up",
    }
}

/// Fills in `$interval_seconds` and `$interval` (`interval` as PromQL writes it, `15s`).
pub fn render(query: &str, interval: &str) -> String {
    let seconds = interval
        .strip_suffix("ms")
        .and_then(|ms| ms.parse::<f64>().ok())
        .map(|ms| ms / 1000.0)
        .or_else(|| {
            interval
                .strip_suffix('s')
                .and_then(|s| s.parse::<f64>().ok())
        })
        .map_or_else(|| interval.to_string(), |s| s.to_string());
    query
        .replace("$interval_seconds", &seconds)
        .replace("$interval", interval)
}

#[cfg(test)]
mod tests {
    #[test]
    fn interval_placeholders() {
        assert_eq!(
            super::render("rate(x[1m]) * $interval_seconds", "15s"),
            "rate(x[1m]) * 15"
        );
        assert_eq!(
            super::render("increase(x[$interval])", "15s"),
            "increase(x[15s])"
        );
        assert_eq!(super::render("$interval_seconds", "1500ms"), "1.5");
    }
}

#[derive(Clone, Debug)]
pub struct HealthConfig {
    pub url: String,
    pub expect_status: u16,
    pub timeout: Duration,
}

/// What one health probe found: the status and whether it is the expected one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probed {
    pub status: u16,
    pub healthy: bool,
}

impl HealthConfig {
    /// One probe, within the probe's timeout, the one way both the poll and a
    /// rollback's verification ask (`parsed` is the URL already parsed, if the
    /// caller keeps it).
    pub async fn probe(
        &self,
        client: &reqwest::Client,
        parsed: Option<&reqwest::Url>,
    ) -> Result<Probed, super::http::FetchError> {
        let status = match parsed {
            Some(url) => super::http::status(client, url.clone(), self.timeout).await,
            None => super::http::status(client, &self.url, self.timeout).await,
        }?;
        Ok(Probed {
            status,
            healthy: status == self.expect_status,
        })
    }
}

#[derive(Clone, Debug)]
pub struct CheckConfig {
    pub name: String,
    pub command: CommandSpec,
}

pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
