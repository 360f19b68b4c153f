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
    /// A human rolls back by hand (`rollwatch rollback`), the runbook's
    /// emergency path: it answers the open incident as `Approve` would, or
    /// opens its own, and meets the guards of a human's rollback
    /// (`Engine::rollback_guard`).
    ManualRollback {
        by: Option<String>,
        reason: String,
        /// Only this component is rolled back.
        component: Option<String>,
        /// The version to go back to; else the latest deployment's previous one.
        to: Option<String>,
        /// The human has checked the change themselves: overrides the
        /// recent-deploy guard, and no other.
        force: bool,
    },
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
            Event::ManualRollback { .. } => "manual-rollback",
        }
    }
}

/// The longest version the engine keeps, in bytes.
pub const VERSION_LIMIT: usize = 128;

/// A version as the engine keeps it: the service being judged reports it
/// (a `*_build_info` label), so it must never be able to stop its own
/// rollback (a NUL byte or 128 KiB cannot be passed to a step) nor flood a
/// message. Printable text of at most `VERSION_LIMIT` bytes passes as it is;
/// anything else has its control characters escaped, is cut, and ends in
/// `~` and the first 12 hex digits of the original's SHA-256, so that two
/// different hostile versions stay different. `Err` carries the clean
/// version and a warning that names the original's length and hash.
pub fn clean_version(raw: &str) -> Result<&str, (String, String)> {
    if raw.len() <= VERSION_LIMIT && !raw.chars().any(char::is_control) {
        return Ok(raw);
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(raw.as_bytes());
    let hash: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let suffix = format!("~{}", &hash[..12]);
    let room = VERSION_LIMIT - suffix.len();
    let mut clean = String::with_capacity(VERSION_LIMIT);
    for c in raw.chars() {
        let piece = if c.is_control() {
            c.escape_unicode().to_string()
        } else {
            c.to_string()
        };
        if clean.len() + piece.len() > room {
            break;
        }
        clean.push_str(&piece);
    }
    clean.push_str(&suffix);
    let warning = format!(
        "the reported version is not clean printable text of at most {VERSION_LIMIT} bytes ({} bytes{}): using {clean:?} (sha256 of the original: {hash})",
        raw.len(),
        if raw.chars().any(char::is_control) {
            ", with control characters"
        } else {
            ""
        }
    );
    Err((clean, warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_version_passes_as_it_is() {
        assert_eq!(
            clean_version("v2.3.1-rc.1+build.7"),
            Ok("v2.3.1-rc.1+build.7")
        );
        assert_eq!(clean_version("版本-2"), Ok("版本-2"));
    }

    #[test]
    fn a_hostile_version_is_bounded_printable_and_still_distinct() {
        let hostile = format!("v6\0{}", "x".repeat(60_000));
        let (clean, warning) = clean_version(&hostile).unwrap_err();
        assert!(clean.len() <= VERSION_LIMIT, "{}", clean.len());
        assert!(!clean.chars().any(char::is_control), "{clean:?}");
        assert!(clean.starts_with("v6\\u{0}x"), "{clean:?}");
        assert!(
            warning.contains("60003 bytes, with control characters"),
            "{warning}"
        );
        let other = format!("v6\0{}", "y".repeat(60_000));
        assert_ne!(clean_version(&other).unwrap_err().0, clean);
        // Long but clean text is cut the same way.
        let long = "a".repeat(200);
        let (cut, _) = clean_version(&long).unwrap_err();
        assert_eq!(cut.len(), VERSION_LIMIT);
    }
}
