//! Serde types that mirror the policy file exactly. Every table denies unknown
//! keys; values that later checks may reject are kept `Spanned` so the error
//! can point at them. Defaults are applied in `compile`, not here.

use serde::Deserialize;
use toml::Spanned;

use crate::units::{HumanDuration, Ratio};

type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub target: S<RawTarget>,
    #[serde(default)]
    pub evaluation: Option<S<RawEvaluation>>,
    #[serde(default)]
    pub baseline: Option<S<RawBaseline>>,
    #[serde(default)]
    pub actions: Option<S<RawActions>>,
    #[serde(default)]
    pub stabilization: Option<S<RawStabilization>>,
    #[serde(default)]
    pub known_issue: Vec<S<RawKnownIssue>>,
    #[serde(default)]
    pub source: Option<S<RawSource>>,
    #[serde(default)]
    pub health: Option<S<RawHealth>>,
    #[serde(default)]
    pub check: Vec<S<RawCheck>>,
    #[serde(default)]
    pub procedure: Option<S<RawProcedure>>,
    #[serde(default)]
    pub notify: Option<S<RawNotify>>,
    #[serde(default)]
    pub rule: Vec<S<RawRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub service: S<String>,
    pub environment: S<String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawEvaluation {
    pub interval: Option<S<HumanDuration>>,
    pub confidence: Option<S<Ratio>>,
    pub recent_deploy_window: Option<S<HumanDuration>>,
    pub cooldown: Option<S<HumanDuration>>,
    pub resolve_after: Option<S<HumanDuration>>,
    pub blind_after: Option<S<HumanDuration>>,
    pub allow_immediate_suppression: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawBaseline {
    pub quantile: Option<S<String>>,
    pub window: Option<S<HumanDuration>>,
    pub fixed: Option<S<HumanDuration>>,
    #[serde(rename = "use")]
    pub mode: Option<S<String>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawActions {
    pub immediate: Option<S<String>>,
    pub consider: Option<S<String>>,
    pub watch: Option<S<String>>,
    pub page_timeout: Option<S<HumanDuration>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawStabilization {
    pub duration: Option<S<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKnownIssue {
    pub rule: S<String>,
    pub until: S<toml::value::Datetime>,
    pub reason: S<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: S<String>,
    pub tier: S<String>,
    pub signal: S<String>,
    #[serde(rename = "for")]
    pub hold_for: Option<S<HumanDuration>>,
    pub threshold: Option<S<Ratio>>,
    pub watch_above: Option<S<Ratio>>,
    pub window: Option<S<HumanDuration>>,
    pub short_window: Option<S<HumanDuration>>,
    pub check: Option<S<String>>,
    pub min_requests: Option<S<u64>>,
    pub min_users: Option<S<u64>>,
    pub min_samples: Option<S<u64>>,
    pub component: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub kind: S<String>,
    pub url: S<String>,
    pub timeout: Option<S<HumanDuration>>,
    pub max_bytes: Option<S<u64>>,
    pub metrics: Option<S<RawScrapeMetrics>>,
    pub queries: Option<S<RawQueries>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScrapeMetrics {
    pub requests: Option<S<String>>,
    pub errors: Option<S<String>>,
    pub latency: Option<S<String>>,
    pub users: Option<S<String>>,
    pub users_affected: Option<S<String>>,
    pub version: Option<S<String>>,
    pub version_label: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueries {
    pub requests: Option<S<String>>,
    pub errors: Option<S<String>>,
    pub latency_p50: Option<S<String>>,
    pub latency_p90: Option<S<String>>,
    pub latency_p95: Option<S<String>>,
    pub latency_p99: Option<S<String>>,
    pub users: Option<S<String>>,
    pub users_affected: Option<S<String>>,
    pub up: Option<S<String>>,
    pub version: Option<S<String>>,
    pub version_label: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub url: S<String>,
    pub expect_status: Option<S<u16>>,
    pub timeout: Option<S<HumanDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: S<String>,
    pub command: S<Vec<String>>,
    pub shell: Option<bool>,
    pub timeout: Option<S<HumanDuration>>,
    pub env: Option<S<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProcedure {
    pub backup_budget: Option<S<HumanDuration>>,
    pub database_rollback: Option<bool>,
    pub drill_every: Option<S<HumanDuration>>,
    #[serde(default)]
    pub step: Vec<S<RawStep>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStep {
    pub name: S<String>,
    pub stage: S<String>,
    pub command: S<Vec<String>>,
    pub timeout: Option<S<HumanDuration>>,
    pub component: Option<S<String>>,
    pub shell: Option<bool>,
    pub idempotent: Option<bool>,
    pub env: Option<S<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    #[serde(default)]
    pub page: Vec<S<String>>,
    #[serde(default)]
    pub notice: Vec<S<String>>,
    #[serde(default)]
    pub escalation: Vec<S<String>>,
    pub escalate_after: Option<S<HumanDuration>>,
    #[serde(default)]
    pub channel: Vec<S<RawChannel>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawChannel {
    pub name: S<String>,
    pub kind: S<String>,
    /// email: `smtp://host:port`, `smtp+starttls://host:port` or `smtps://host:port`.
    pub server: Option<S<String>>,
    pub from: Option<S<String>>,
    #[serde(default)]
    pub to: Vec<S<String>>,
    pub username_env: Option<S<String>>,
    pub password_env: Option<S<String>>,
    /// alertmanager, webhook.
    pub url: Option<S<String>>,
    pub timeout: Option<S<HumanDuration>>,
    pub deadline: Option<S<HumanDuration>>,
}
