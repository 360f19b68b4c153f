//! Deployments, versions, epochs and baselines: what changed on the target,
//! since when its windows count, and the latency it is judged against.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::incident::Phase;
use super::policy::{BaselineMode, Policy, Signal};
use super::signals::LatencyBaseline;
use super::{Engine, input, stats};

/// A deployment the engine knows of: announced, seen as a version change, or
/// the engine's own rollback.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Deployment {
    pub at: DateTime<Utc>,
    pub version: Option<String>,
    pub previous: Option<String>,
    pub migrations: Vec<String>,
    /// This deployment is a rollback: it is never rolled back automatically.
    pub rollback: bool,
    /// Its version has been observed (an announced rollout may lag).
    pub seen: bool,
}

impl Engine {
    /// `input::clean_version`, said when the cleaned version is new (not at
    /// every poll of the same hostile version).
    pub(super) fn clean_version<'v>(&self, version: &'v str) -> std::borrow::Cow<'v, str> {
        match input::clean_version(version) {
            Ok(clean) => std::borrow::Cow::Borrowed(clean),
            Err((clean, warning)) => {
                if self.last_seen_version.as_deref() != Some(clean.as_str()) {
                    tracing::warn!(target_service = %self.policy.service, "{warning}");
                }
                std::borrow::Cow::Owned(clean)
            }
        }
    }

    pub(super) fn observe_version(&mut self, now: DateTime<Utc>, version: &str) {
        let Some(seen) = self.last_seen_version.clone() else {
            self.last_seen_version = Some(version.to_string());
            return;
        };
        if seen == version {
            return;
        }
        if let Some(deployment) = &mut self.deployment
            && !deployment.seen
        {
            if deployment.version.as_deref() == Some(version) {
                // The announced version has rolled out.
                deployment.seen = true;
                self.last_seen_version = Some(version.to_string());
                return;
            }
            if deployment.previous.as_deref() == Some(version) {
                // The announced rollout is still in progress: old instances answer.
                return;
            }
        }
        self.last_seen_version = Some(version.to_string());
        self.deployed(now, Some(version.to_string()), Some(seen), Vec::new(), true);
    }

    /// A deployment, announced (`seen` false until its version is observed) or
    /// observed as a version change.
    pub(super) fn deployed(
        &mut self,
        now: DateTime<Utc>,
        version: Option<String>,
        previous: Option<String>,
        migrations: Vec<String>,
        seen: bool,
    ) {
        if let Some(current) = &mut self.deployment
            && version.is_some()
        {
            if current.version == version {
                // The announced version showing up, or announced twice.
                current.seen |= seen;
                if !migrations.is_empty() {
                    current.migrations = migrations;
                }
                return;
            }
            if current.previous == version {
                self.rolled_back_to(now, version, seen);
                return;
            }
        }
        tracing::info!(
            target_service = %self.policy.service,
            version = version.as_deref().unwrap_or("unknown"),
            previous = previous.as_deref().unwrap_or("unknown"),
            "deployment"
        );
        self.baseline = self.pre_deploy_baseline(now);
        self.deployment = Some(Deployment {
            at: now,
            version,
            previous,
            migrations,
            rollback: false,
            seen,
        });
        self.start_epoch(now, true);
    }

    /// The previous version is back: rollwatch's own rollback landing before its
    /// procedure reported, or a human's rollback. Either way it is a rollback
    /// (never rolled back in turn) and the baseline, which describes that
    /// version, stays.
    pub(super) fn rolled_back_to(
        &mut self,
        now: DateTime<Utc>,
        version: Option<String>,
        seen: bool,
    ) {
        let ours = self
            .incident
            .as_ref()
            .is_some_and(|i| i.phase == Phase::RollingBack);
        let from = self.deployment.as_ref().and_then(|d| d.version.clone());
        tracing::info!(
            target_service = %self.policy.service,
            version = version.as_deref().unwrap_or("unknown"),
            by = if ours { "rollwatch" } else { "a human" },
            "rollback landed"
        );
        self.deployment = Some(Deployment {
            at: now,
            version,
            previous: from,
            migrations: Vec::new(),
            rollback: true,
            seen,
        });
        if !ours {
            // Judge the restored version on its own data; ours restarts at the watch.
            self.start_epoch(now, false);
        }
    }

    /// Windows restart at `now`; rule states restart, remembering which rules
    /// fired within the baseline window before it, or were breaching as it came
    /// (a regression must be new). A rollback forgets: those breaches belonged
    /// to the version rolled back.
    pub(super) fn start_epoch(&mut self, now: DateTime<Utc>, remember_breaches: bool) {
        self.epoch = Some(now);
        let since = now - self.policy.baseline.window;
        for state in &mut self.rules {
            let fired_recently = state.last_fired_at.is_some_and(|t| t >= since);
            let breaching = state.breach_since.is_some() && state.breach_readings >= 2;
            let preexisting = remember_breaches && (fired_recently || breaching);
            let last_fired_at = if remember_breaches {
                state.last_fired_at
            } else {
                None
            };
            state.reset(preexisting, last_fired_at);
        }
    }

    pub(super) fn pre_deploy_baseline(&self, deploy_at: DateTime<Utc>) -> Option<LatencyBaseline> {
        if self.policy.baseline.mode == BaselineMode::Fixed {
            return fixed_baseline(&self.policy);
        }
        let min_samples = self
            .policy
            .rules
            .iter()
            .find_map(|r| match r.signal {
                Signal::LatencyDegradation { min_samples, .. } => Some(min_samples),
                _ => None,
            })
            .unwrap_or(3);
        let mut values: Vec<f64> = self
            .latency_trail
            .as_ref()
            .map(|trail| {
                trail
                    .between(deploy_at - self.policy.baseline.window, deploy_at)
                    .collect()
            })
            .unwrap_or_default();
        if values.len() >= min_samples
            && let Some(ms) = stats::median(&mut values)
            && ms > 0.0
        {
            return Some(LatencyBaseline {
                ms,
                source: BaselineMode::PreDeploy,
            });
        }
        // Keep what is known when the new window is too thin: the previous
        // deployment's baseline, else the fixed one.
        self.baseline
            .clone()
            .or_else(|| fixed_baseline(&self.policy))
    }

    pub(super) fn rollback_versions(&self) -> (Option<String>, Option<String>) {
        match &self.deployment {
            Some(d) => (d.version.clone(), d.previous.clone()),
            None => (self.last_seen_version.clone(), None),
        }
    }
}

/// Samples the widest rule window holds at the policy's interval, plus slack.
pub(super) fn history_capacity(policy: &Policy) -> usize {
    let interval = policy.evaluation.interval.num_milliseconds().max(1);
    (policy.rules_span().num_milliseconds() / interval) as usize + 3
}

pub(super) fn fixed_baseline(policy: &Policy) -> Option<LatencyBaseline> {
    policy.baseline.fixed_ms.map(|ms| LatencyBaseline {
        ms,
        source: BaselineMode::Fixed,
    })
}
