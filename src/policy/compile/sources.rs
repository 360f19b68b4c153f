//! Where the observations come from: the source, the health probe.

use toml::Spanned;

use super::notify::http_url;
use super::{Problems, positive, unknown_name_message};
use crate::policy::raw::{RawHealth, RawSource};
use crate::sources::config::{
    DEFAULT_HEALTH_TIMEOUT, DEFAULT_MAX_BYTES, HealthConfig, Queries, SourceConfig, SourceKind,
};
use crate::sources::scrape::ScrapeMetrics;
use crate::sources::selector::Selector;

pub(super) fn compile_source(problems: &mut Problems, raw: RawSource) -> SourceConfig {
    let url = http_url(problems, raw.url);
    let timeout = raw.timeout.map_or(std::time::Duration::from_secs(10), |t| {
        positive(problems, t, "source timeout")
            .to_std()
            .unwrap_or_default()
    });
    let max_bytes = match raw.max_bytes {
        None => DEFAULT_MAX_BYTES,
        Some(m) if *m.get_ref() >= 1024 => *m.get_ref(),
        Some(m) => {
            problems.add(
                m.span(),
                "max_bytes below 1024 cannot hold a response, expected e.g. 16777216",
            );
            DEFAULT_MAX_BYTES
        }
    };
    let kind_span = raw.kind.span();
    let kind = match raw.kind.get_ref().as_str() {
        "scrape" => {
            if let Some(q) = &raw.queries {
                problems.add(q.span(), "[source.queries] is for kind = \"prometheus\"; a scrape source reads [source.metrics]");
            }
            let metrics = match raw.metrics {
                None => {
                    problems.add(kind_span, "a scrape source needs [source.metrics], expected at least requests = \"http_requests_total\"");
                    None
                }
                Some(m) => Some(compile_scrape_metrics(problems, m.into_inner())),
            };
            metrics.map(|metrics| SourceKind::Scrape {
                url: url.clone(),
                metrics,
            })
        }
        "prometheus" => {
            if let Some(m) = &raw.metrics {
                problems.add(m.span(), "[source.metrics] is for kind = \"scrape\"; a prometheus source reads [source.queries]");
            }
            let queries = match raw.queries {
                None => {
                    problems.add(kind_span, "a prometheus source needs [source.queries], expected at least requests = '...'");
                    None
                }
                Some(q) => Some(compile_queries(problems, q.into_inner())),
            };
            queries.map(|queries| SourceKind::Prometheus {
                url: url.clone(),
                queries,
            })
        }
        other => {
            problems.add(
                kind_span,
                unknown_name_message("source kind", other, ["scrape", "prometheus"].into_iter()),
            );
            None
        }
    };
    // A placeholder when the kind was wrong: the problems stop compilation anyway.
    let kind = kind.unwrap_or(SourceKind::Prometheus {
        url,
        queries: Queries::default(),
    });
    SourceConfig {
        kind,
        timeout,
        max_bytes,
    }
}

pub(super) fn compile_scrape_metrics(
    problems: &mut Problems,
    raw: crate::policy::raw::RawScrapeMetrics,
) -> ScrapeMetrics {
    let mut selector = |value: Option<Spanned<String>>| {
        let value = value?;
        match Selector::parse(value.get_ref()) {
            Ok(selector) => Some(selector),
            Err(message) => {
                problems.add(value.span(), message);
                None
            }
        }
    };
    ScrapeMetrics {
        requests: selector(raw.requests),
        errors: selector(raw.errors),
        latency: selector(raw.latency),
        users: selector(raw.users),
        users_affected: selector(raw.users_affected),
        version: selector(raw.version),
        version_label: raw
            .version_label
            .map_or_else(|| "version".to_string(), Spanned::into_inner),
    }
}

pub(super) fn compile_queries(
    problems: &mut Problems,
    raw: crate::policy::raw::RawQueries,
) -> Queries {
    let mut query = |value: Option<Spanned<String>>| {
        let value = value?;
        if value.get_ref().trim().is_empty() {
            problems.add(value.span(), "empty query, expected PromQL");
            return None;
        }
        Some(value.into_inner())
    };
    Queries {
        requests: query(raw.requests),
        errors: query(raw.errors),
        latency_p50: query(raw.latency_p50),
        latency_p90: query(raw.latency_p90),
        latency_p95: query(raw.latency_p95),
        latency_p99: query(raw.latency_p99),
        users: query(raw.users),
        users_affected: query(raw.users_affected),
        up: query(raw.up),
        version: query(raw.version),
        version_label: raw
            .version_label
            .map_or_else(|| "version".to_string(), Spanned::into_inner),
    }
}

pub(super) fn compile_health(problems: &mut Problems, raw: RawHealth) -> HealthConfig {
    let url = http_url(problems, raw.url);
    let expect_status = match raw.expect_status {
        None => 200,
        Some(s) if (100..600).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            problems.add(
                s.span(),
                format!(
                    "expect_status {} is not an HTTP status, expected 100 to 599",
                    s.get_ref()
                ),
            );
            200
        }
    };
    let timeout = raw.timeout.map_or(DEFAULT_HEALTH_TIMEOUT, |t| {
        positive(problems, t, "health timeout")
            .to_std()
            .unwrap_or(DEFAULT_HEALTH_TIMEOUT)
    });
    HealthConfig {
        url,
        expect_status,
        timeout,
    }
}
