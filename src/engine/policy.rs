//! The compiled, validated policy the engine runs on. Built by `crate::policy`
//! from a TOML file; every value here has already been checked, so the engine
//! never re-validates. Durations are `chrono::TimeDelta`, ratios are fractions.

use chrono::{DateTime, TimeDelta, Utc};

use crate::text_enum::text_enum;

/// One target's policy: what to watch, how to judge it and what to do.
#[derive(Clone, Debug)]
pub struct Policy {
    /// The file it came from, as given on the command line.
    pub path: String,
    /// Hex SHA-256 of the file's bytes as written (before `${VAR}` substitution).
    pub sha256: String,
    pub service: String,
    pub environment: String,
    pub evaluation: Evaluation,
    pub baseline: Baseline,
    pub actions: Actions,
    pub stabilization: TimeDelta,
    pub known_issues: Vec<KnownIssue>,
    pub rules: Vec<Rule>,
    /// Names of the named checks the rules refer to; a rule's `Signal::Check`
    /// holds an index into this list.
    pub checks: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct Evaluation {
    /// How often the target is sampled.
    pub interval: TimeDelta,
    /// One-sided confidence for error-rate and user-impact bounds, e.g. 0.95.
    pub confidence: f64,
    /// The standard normal quantile for `confidence` (1.645 for 95 %).
    pub z: f64,
    /// A rollback answers only a deployment at most this old.
    pub recent_deploy_window: TimeDelta,
    /// No automatic rollback within this time of the previous one.
    pub cooldown: TimeDelta,
    /// An incident without a rollback closes after its rules have been clear this long.
    pub resolve_after: TimeDelta,
    /// No usable data for this long after a recent deployment pages "watchdog blind".
    pub blind_after: TimeDelta,
    /// Whether a known-issue suppression may silence an `immediate` rule.
    pub allow_immediate_suppression: bool,
}

#[derive(Clone, Debug)]
pub struct Baseline {
    pub quantile: Quantile,
    /// The pre-deployment window the baseline is taken from.
    pub window: TimeDelta,
    /// A fixed latency baseline (an SLO), in milliseconds.
    pub fixed_ms: Option<f64>,
    pub mode: BaselineMode,
}

text_enum! {
    pub enum BaselineMode ("baseline mode") {
        /// The same quantile before the latest deployment; `fixed_ms` when none is known.
        PreDeploy => "pre-deploy",
        /// Always `fixed_ms`.
        Fixed => "fixed",
    }
}

text_enum! {
    pub enum Quantile ("quantile") {
        P50 => "p50",
        P90 => "p90",
        P95 => "p95",
        P99 => "p99",
    }
}

impl Quantile {
    /// The quantile as a fraction, 0.95 for p95.
    pub fn fraction(self) -> f64 {
        match self {
            Quantile::P50 => 0.5,
            Quantile::P90 => 0.9,
            Quantile::P95 => 0.95,
            Quantile::P99 => 0.99,
        }
    }
}

/// What each tier does in this policy's environment.
#[derive(Clone, Debug)]
pub struct Actions {
    pub immediate: Action,
    pub consider: Action,
    pub watch: Action,
    /// For `page-then-rollback`: how long a page waits for an answer before
    /// rollwatch rolls back by itself.
    pub page_timeout: TimeDelta,
    /// A page nobody acknowledges, holds or approves within this goes to the
    /// escalation contacts (`[notify].escalate_after`).
    pub escalate_after: TimeDelta,
}

impl Actions {
    pub fn for_tier(&self, tier: Tier) -> Action {
        match tier {
            Tier::Immediate => self.immediate,
            Tier::Consider => self.consider,
            Tier::Watch => self.watch,
            Tier::Ignore => Action::None,
        }
    }
}

text_enum! {
    /// Declared weakest first: `Ord` is strength.
    #[derive(PartialOrd, Ord)]
    pub enum Tier ("tier") {
        Ignore => "ignore",
        Watch => "watch",
        Consider => "consider",
        Immediate => "immediate",
    }
}

text_enum! {
    /// What a decision asks for. Ordered by strength: a later decision in the
    /// same incident is only announced when it asks for more than the earlier
    /// ones did.
    #[derive(PartialOrd, Ord)]
    pub enum Action ("action") {
        None => "none",
        Notify => "notify",
        Page => "page",
        PageThenRollback => "page-then-rollback",
        Rollback => "rollback",
    }
}

impl Action {
    /// True for actions that page a human.
    pub fn pages(self) -> bool {
        matches!(self, Action::Page | Action::PageThenRollback)
    }

    /// True for actions that may end in an automatic rollback.
    pub fn may_roll_back(self) -> bool {
        matches!(self, Action::Rollback | Action::PageThenRollback)
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub tier: Tier,
    pub signal: Signal,
    /// How long the condition must hold before the rule fires.
    pub hold_for: TimeDelta,
    /// The window a windowed signal is computed over.
    pub window: TimeDelta,
    /// The most recent evidence a windowed signal is judged on before it acts
    /// (docs/decisions.md, "A burst that ended is told, not paged"): a rule
    /// that held for `for` pages or rolls back only when this short window is
    /// not confidently healthy. Equal to `window` for instant signals.
    pub short_window: TimeDelta,
    /// Values between this and the threshold put the rule in the watch band:
    /// logged and shown, never paged.
    pub watch_above: Option<f64>,
    /// Only this component is rolled back when the rule fires (partial rollback).
    pub component: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Signal {
    /// The health probe failed.
    Down,
    /// A named check failed; `index` points into `Policy::checks`.
    Check { name: String, index: usize },
    /// The share of failed requests, judged by its lower confidence bound.
    ErrorRate { threshold: f64, min_requests: f64 },
    /// Current latency quantile over the baseline, minus one.
    LatencyDegradation { threshold: f64, min_samples: usize },
    /// The share of users affected, judged by its lower confidence bound.
    UsersAffected { threshold: f64, min_users: f64 },
}

impl Signal {
    pub const NAMES: [&'static str; 5] = [
        "down",
        "check",
        "error-rate",
        "latency-degradation",
        "users-affected",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            Signal::Down => "down",
            Signal::Check { .. } => "check",
            Signal::ErrorRate { .. } => "error-rate",
            Signal::LatencyDegradation { .. } => "latency-degradation",
            Signal::UsersAffected { .. } => "users-affected",
        }
    }

    pub fn threshold(&self) -> Option<f64> {
        match self {
            Signal::ErrorRate { threshold, .. }
            | Signal::LatencyDegradation { threshold, .. }
            | Signal::UsersAffected { threshold, .. } => Some(*threshold),
            Signal::Down | Signal::Check { .. } => None,
        }
    }

    /// Whether the signal is computed over a window of observations.
    pub fn is_windowed(&self) -> bool {
        self.threshold().is_some()
    }
}

/// A suppression of one rule until a time, because a fix is known.
#[derive(Clone, Debug, PartialEq)]
pub struct KnownIssue {
    pub rule: String,
    pub until: DateTime<Utc>,
    pub reason: String,
}

impl Policy {
    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| rule.name == name)
    }

    /// The widest rule window: full samples are kept this far back, no further.
    pub fn rules_span(&self) -> TimeDelta {
        self.rules
            .iter()
            .map(|rule| rule.window)
            .max()
            .unwrap_or_else(TimeDelta::zero)
    }

    /// Whether a pre-deployment latency baseline is ever taken.
    pub fn needs_latency_trail(&self) -> bool {
        self.baseline.mode == BaselineMode::PreDeploy
            && self
                .rules
                .iter()
                .any(|r| matches!(r.signal, Signal::LatencyDegradation { .. }))
    }

    /// The short form of the content hash used in explanations.
    pub fn short_hash(&self) -> &str {
        &self.sha256[..self.sha256.len().min(12)]
    }
}
