//! What the engine is fed: observations (what one poll saw) and events (a
//! deployment, a human's answer, a declaration, a suppression). Both carry the
//! instant they happened at; the engine has no other notion of time.

use chrono::{DateTime, Utc};

use super::policy::Tier;

/// What one poll saw for a target at one instant. Every field is optional: a
/// missing field is "unknown", never zero. Counts are what happened since the
/// previous observation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub at: DateTime<Utc>,
    pub up: Option<bool>,
    pub requests: Option<f64>,
    pub errors: Option<f64>,
    pub latency_ms: LatencyQuantiles,
    pub users: Option<f64>,
    pub users_affected: Option<f64>,
    /// Named checks and whether they passed.
    pub checks: Vec<(String, bool)>,
    pub version: Option<String>,
}

impl Observation {
    pub fn new(at: DateTime<Utc>) -> Self {
        Observation {
            at,
            ..Observation::default()
        }
    }

    /// Nothing is known: every field is missing.
    pub fn is_empty(&self) -> bool {
        self.up.is_none()
            && self.requests.is_none()
            && self.errors.is_none()
            && self.latency_ms == LatencyQuantiles::default()
            && self.users.is_none()
            && self.users_affected.is_none()
            && self.checks.is_empty()
            && self.version.is_none()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencyQuantiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
}

/// Something that happened to the target, as opposed to something measured.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A deployment was announced.
    Deploy {
        version: Option<String>,
        previous: Option<String>,
        migrations: Vec<String>,
    },
    /// A human declared an incident of a tier: acts at once.
    Declare {
        tier: Tier,
        reason: String,
        component: Option<String>,
    },
    /// A known issue: the rule's firing becomes a log line until `until`.
    Suppress {
        rule: String,
        until: DateTime<Utc>,
        reason: String,
    },
    /// A human owns the open incident: escalation stops, no automatic rollback.
    Ack { by: Option<String> },
    /// No rollback for the open incident.
    Hold { by: Option<String> },
    /// Roll back now, through the same procedure and guards.
    Approve { by: Option<String> },
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Deploy { .. } => "deploy",
            Event::Declare { .. } => "declare",
            Event::Suppress { .. } => "suppress",
            Event::Ack { .. } => "ack",
            Event::Hold { .. } => "hold",
            Event::Approve { .. } => "approve",
        }
    }
}
