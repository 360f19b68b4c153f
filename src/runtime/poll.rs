//! One poll of one target: the metrics source, the health probe and the named
//! checks, concurrently, each bounded by its timeout, assembled into one trace
//! item. A failed metrics source is no data, never zero and never down; only a
//! scrape target that refuses or times out, with no separate health probe, is down.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;

use crate::engine::input::Observation;
use crate::policy::Compiled;
use crate::procedure::command::{self, Ending};
use crate::sources::config::{
    CheckConfig, HealthConfig, Queries, SourceConfig, SourceKind, render,
};
use crate::sources::exposition::{self, Format};
use crate::sources::http;
use crate::sources::prometheus;
use crate::sources::scrape::Deriver;
use crate::trace::TraceItem;

/// What one poll produced and what went wrong on the way.
#[derive(Debug)]
pub struct PollOutcome {
    pub item: TraceItem,
    /// Reasons values were left out, for the log.
    pub problems: Vec<String>,
    /// Exposition lines that could not be read.
    pub unreadable_lines: usize,
    /// The metrics source failed as a whole.
    pub source_failed: bool,
}

/// Polls one target; keeps what successive polls need (previous counters).
pub struct Poller {
    source: Option<SourceConfig>,
    health: Option<HealthConfig>,
    checks: Vec<CheckConfig>,
    /// The scrape and health URLs, parsed once rather than on every request.
    scrape_url: Option<reqwest::Url>,
    health_url: Option<reqwest::Url>,
    client: reqwest::Client,
    /// The health probe and the scrape go to one host: run them one after the
    /// other on one connection.
    one_connection: bool,
    deriver: Option<Deriver>,
    /// The interval as PromQL writes it, for `$interval`.
    interval_text: String,
    check_env: Vec<(String, String)>,
}

impl Poller {
    pub fn new(target: &Compiled, interval: Duration) -> Result<Poller, reqwest::Error> {
        let deriver = match &target.source {
            Some(SourceConfig {
                kind: SourceKind::Scrape { metrics, .. },
                ..
            }) => Some(Deriver::new(metrics.clone())),
            _ => None,
        };
        let policy = &target.policy;
        let scrape_url = match &target.source {
            Some(SourceConfig {
                kind: SourceKind::Scrape { url, .. },
                ..
            }) => Some(url.as_str()),
            _ => None,
        };
        let one_connection = match (scrape_url, &target.health) {
            (Some(scrape), Some(health)) => {
                http::authority(scrape).is_some()
                    && http::authority(scrape) == http::authority(&health.url)
            }
            _ => false,
        };
        Ok(Poller {
            one_connection,
            scrape_url: scrape_url.and_then(|url| reqwest::Url::parse(url).ok()),
            health_url: target
                .health
                .as_ref()
                .and_then(|health| reqwest::Url::parse(&health.url).ok()),
            source: target.source.clone(),
            health: target.health.clone(),
            checks: target.checks.clone(),
            client: http::client()?,
            deriver,
            interval_text: crate::units::promql_duration(interval),
            check_env: vec![
                ("ROLLWATCH_SERVICE".into(), policy.service.clone()),
                ("ROLLWATCH_ENVIRONMENT".into(), policy.environment.clone()),
            ],
        })
    }

    pub async fn poll(&mut self, at: DateTime<Utc>) -> PollOutcome {
        let metrics = poll_metrics(
            self.source.as_ref(),
            &self.client,
            self.deriver.as_mut(),
            &self.interval_text,
            self.scrape_url.as_ref(),
        );
        let health = probe_health(&self.client, self.health.as_ref(), self.health_url.as_ref());
        let checks = run_checks(&self.checks, &self.check_env);
        let (metrics, health, checks) = if self.one_connection {
            // One host serves both: one kept-alive connection, not two per target.
            let ((health, metrics), checks) =
                tokio::join!(async { (health.await, metrics.await) }, checks);
            (metrics, health, checks)
        } else {
            tokio::join!(metrics, health, checks)
        };
        let mut problems = Vec::new();
        let mut observation = Observation::new(at);
        let mut unreadable_lines = 0;
        let mut source_failed = false;
        match metrics {
            None => {}
            Some(Ok(found)) => {
                unreadable_lines = found.unreadable_lines;
                problems.extend(found.problems);
                observation = Observation {
                    at,
                    ..found.observation
                };
            }
            Some(Err(failure)) => {
                source_failed = true;
                problems.push(failure.reason.clone());
                if failure.target_unreachable && self.health.is_none() {
                    // With no separate probe, a scrape target that does not answer is down.
                    observation.up = Some(false);
                }
            }
        }
        match health {
            None => {}
            Some(Ok(up)) => observation.up = Some(up),
            // The probe could not be judged: no data for "down", never down.
            Some(Err(reason)) => problems.push(reason),
        }
        for (name, result) in checks {
            match result {
                Ok(passed) => observation.checks.push((name, passed)),
                Err(reason) => problems.push(format!("check {name}: {reason}")),
            }
        }
        let item = if source_failed && observation.is_empty() {
            TraceItem::NoData {
                at,
                reason: problems.join("; "),
            }
        } else {
            TraceItem::Observation(observation)
        };
        PollOutcome {
            item,
            problems,
            unreadable_lines,
            source_failed,
        }
    }
}

async fn poll_metrics(
    source: Option<&SourceConfig>,
    client: &reqwest::Client,
    deriver: Option<&mut Deriver>,
    interval_text: &str,
    parsed_url: Option<&reqwest::Url>,
) -> Option<Result<Metrics, SourceFailure>> {
    let source = source?;
    Some(match &source.kind {
        SourceKind::Scrape { url, .. } => {
            let Some(deriver) = deriver else {
                return Some(Err(SourceFailure {
                    reason: "scrape source without metrics".into(),
                    target_unreachable: false,
                }));
            };
            let result = scrape(client, url, parsed_url, source, &mut *deriver).await;
            if result.is_err() {
                // The next delta would span the gap: start afresh.
                deriver.reset();
            }
            result
        }
        SourceKind::Prometheus { url, queries } => {
            query_all(client, url, queries, source, interval_text).await
        }
    })
}

/// The health probe: the expected status is up; any other status, a refusal or
/// a timeout is down; anything else (a broken URL, a TLS failure) is no data.
async fn probe_health(
    client: &reqwest::Client,
    health: Option<&HealthConfig>,
    parsed_url: Option<&reqwest::Url>,
) -> Option<Result<bool, String>> {
    let health = health?;
    Some(match health.probe(client, parsed_url).await {
        Ok(probed) => {
            if !probed.healthy {
                tracing::debug!(url = %health.url, status = probed.status, "health probe failed");
            }
            Ok(probed.healthy)
        }
        Err(error) if error.target_unreachable() => Ok(false),
        Err(error) => Err(format!("health probe {}: {error}", health.url)),
    })
}

async fn run_checks(
    checks: &[CheckConfig],
    env: &[(String, String)],
) -> Vec<(String, Result<bool, String>)> {
    let runs = checks.iter().map(|check| async move {
        let mut spec = check.command.clone();
        spec.env.extend(env.iter().cloned());
        let outcome = command::run(&spec).await;
        let result = match &outcome.ending {
            Ending::Exited(0) => Ok(true),
            Ending::Exited(_) | Ending::Signalled(_) | Ending::TimedOut => {
                tracing::info!(check = %check.name, result = %outcome.describe(spec.timeout), stderr = %outcome.stderr.trim(), "check failed");
                Ok(false)
            }
            // A check that cannot start says nothing about the service: no data, loudly.
            Ending::FailedToStart(why) => {
                tracing::error!(check = %check.name, %why, "check could not start: its result is unknown");
                Err(format!("could not start: {why}"))
            }
        };
        (check.name.clone(), result)
    });
    join_all(runs).await
}

/// What the metrics source yielded: the observation's metric fields.
#[derive(Debug, Default)]
struct Metrics {
    observation: Observation,
    problems: Vec<String>,
    unreadable_lines: usize,
}

#[derive(Debug)]
struct SourceFailure {
    reason: String,
    target_unreachable: bool,
}

async fn scrape(
    client: &reqwest::Client,
    url: &str,
    parsed_url: Option<&reqwest::Url>,
    source: &SourceConfig,
    deriver: &mut Deriver,
) -> Result<Metrics, SourceFailure> {
    let fetched = match parsed_url {
        Some(parsed) => http::get(client, parsed.clone(), source.timeout, source.max_bytes).await,
        None => http::get(client, url, source.timeout, source.max_bytes).await,
    };
    let fetched = fetched.map_err(|error| SourceFailure {
        reason: format!("scrape {url}: {error}"),
        target_unreachable: error.target_unreachable(),
    })?;
    if fetched.status != 200 {
        return Err(SourceFailure {
            reason: format!("scrape {url}: HTTP {}", fetched.status),
            target_unreachable: false,
        });
    }
    let format = Format::detect(fetched.content_type.as_deref(), &fetched.body);
    let exposition = exposition::parse(&fetched.body, format);
    if exposition.samples.is_empty() {
        return Err(SourceFailure {
            reason: format!(
                "scrape {url}: no readable samples ({} unreadable lines{})",
                exposition.errors.len(),
                exposition
                    .errors
                    .first()
                    .map_or_else(String::new, |e| format!("; line {}: {}", e.line, e.message))
            ),
            target_unreachable: false,
        });
    }
    let mut problems: Vec<String> = exposition
        .errors
        .iter()
        .take(5)
        .map(|e| format!("scrape {url}: line {} unreadable: {}", e.line, e.message))
        .collect();
    let derived = deriver.derive(&exposition);
    problems.extend(derived.problems);
    let observation = Observation {
        requests: derived.requests,
        errors: derived.errors,
        latency_ms: derived.latency_ms,
        users: derived.users,
        users_affected: derived.users_affected,
        version: derived.version,
        ..Observation::default()
    };
    Ok(Metrics {
        observation,
        problems,
        unreadable_lines: exposition.errors.len(),
    })
}

async fn query_all(
    client: &reqwest::Client,
    url: &str,
    queries: &Queries,
    source: &SourceConfig,
    interval: &str,
) -> Result<Metrics, SourceFailure> {
    let numeric = queries.numeric(interval);
    let runs = numeric.iter().map(|(_, query)| {
        prometheus::instant(client, url, query, None, source.timeout, source.max_bytes)
    });
    let version_query = queries.version.as_ref().map(|q| render(q, interval));
    let version_run = async {
        match &version_query {
            Some(q) => Some(
                prometheus::instant(client, url, q, None, source.timeout, source.max_bytes).await,
            ),
            None => None,
        }
    };
    let (results, version) = tokio::join!(join_all(runs), version_run);
    let mut metrics = Metrics::default();
    let mut answered = 0;
    for ((signal, query), result) in numeric.iter().zip(results) {
        let value = result.and_then(|series| prometheus::single_value(&series));
        match value {
            Ok(value) => {
                answered += 1;
                prometheus::set_signal(&mut metrics.observation, signal, value);
            }
            Err(reason) => metrics
                .problems
                .push(format!("{signal}: query {query}: {reason}")),
        }
    }
    match version {
        Some(Ok(series)) => {
            answered += 1;
            metrics.observation.version = series
                .iter()
                .find(|s| s.value != 0.0)
                .and_then(|s| s.labels.get(&queries.version_label).cloned());
        }
        Some(Err(reason)) => metrics.problems.push(format!("version: {reason}")),
        None => {}
    }
    if answered == 0 {
        return Err(SourceFailure {
            reason: format!(
                "prometheus {url}: no query answered ({})",
                metrics.problems.join("; ")
            ),
            target_unreachable: false,
        });
    }
    Ok(metrics)
}
