//! The outbox's dedupe keys, built in one place. A key names one message
//! (`incident:17:page`); each channel's row appends the channel's name
//! (`incident:17:page:email`), and the store keeps at most one row per key,
//! so asking again to send the same message adds nothing.

use std::fmt;

use chrono::{DateTime, Utc};

use crate::engine::policy::Action;

/// What a message is, for deduplication. Keys with an instant (`at`, in
/// microseconds) are new messages each time; the others are sent once per
/// incident.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DedupeKey {
    /// A page or a page-then-rollback of an incident, once per action: a
    /// repeat is dropped, an upgrade to page-then-rollback is news.
    Page { incident: i64, action: Action },
    /// A page without a stored incident (the store refused it).
    PageWithoutIncident { target: String, at: DateTime<Utc> },
    /// A burst that ended by itself before anything was done, with no
    /// incident open: told once, at the decision's instant.
    BurstEnded { target: String, at: DateTime<Utc> },
    /// "Notify team" before an automatic rollback's first step.
    RollbackNotice { incident: i64, at: DateTime<Utc> },
    /// The notice before a human's rollback (`rollwatch rollback`).
    ManualRollback { incident: i64, at: DateTime<Utc> },
    /// The rollback finished; the stabilization watch starts.
    RolledBack { incident: i64 },
    /// A failed rollback or watch, handed to humans.
    Escalation { incident: i64 },
    /// A page nobody answered, to the escalation contacts.
    Unanswered { incident: i64 },
    /// A notice of the incident at `at`.
    Notice { incident: i64, at: DateTime<Utc> },
    /// The incident ended.
    Resolved { incident: i64 },
    /// A notification given up on, escalated elsewhere.
    Undeliverable { notification: i64 },
    /// Sent without the outbox because the database is unreachable; `told`
    /// names the decision's engine incident or rule.
    DatabaseUnreachable { target: String, told: String },
    /// The messages a dry run shows (never stored).
    DryRun,
}

impl DedupeKey {
    /// The key of the row for `channel`.
    pub fn for_channel(&self, channel: &str) -> String {
        format!("{self}:{channel}")
    }
}

impl fmt::Display for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let micros = |at: &DateTime<Utc>| at.timestamp_micros();
        match self {
            DedupeKey::Page { incident, action } => write!(f, "incident:{incident}:{action}"),
            DedupeKey::PageWithoutIncident { target, at } => {
                write!(f, "{target}:page:{}", micros(at))
            }
            DedupeKey::BurstEnded { target, at } => {
                write!(f, "{target}:burst-ended:{}", micros(at))
            }
            DedupeKey::RollbackNotice { incident, at } => {
                write!(f, "incident:{incident}:rollback-notice:{}", micros(at))
            }
            DedupeKey::ManualRollback { incident, at } => {
                write!(f, "incident:{incident}:rollback:{}", micros(at))
            }
            DedupeKey::RolledBack { incident } => write!(f, "incident:{incident}:rolled-back"),
            DedupeKey::Escalation { incident } => write!(f, "incident:{incident}:escalation"),
            DedupeKey::Unanswered { incident } => write!(f, "incident:{incident}:unanswered"),
            DedupeKey::Notice { incident, at } => {
                write!(f, "incident:{incident}:notice:{}", micros(at))
            }
            DedupeKey::Resolved { incident } => write!(f, "incident:{incident}:resolved"),
            DedupeKey::Undeliverable { notification } => write!(f, "undeliverable:{notification}"),
            DedupeKey::DatabaseUnreachable { target, told } => {
                write!(f, "{target}:database-unreachable:{told}")
            }
            DedupeKey::DryRun => f.write_str("dry-run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    /// The keys stored rows already hold: a changed key would send a
    /// message again after an upgrade.
    #[test]
    fn keys_keep_their_stored_text() {
        let at = Utc.timestamp_micros(1_777_000_000_123_456).unwrap();
        let cases = [
            (
                DedupeKey::Page {
                    incident: 17,
                    action: Action::PageThenRollback,
                },
                "incident:17:page-then-rollback:email",
            ),
            (
                DedupeKey::PageWithoutIncident {
                    target: "web/prod".into(),
                    at,
                },
                "web/prod:page:1777000000123456:email",
            ),
            (
                DedupeKey::BurstEnded {
                    target: "web/prod".into(),
                    at,
                },
                "web/prod:burst-ended:1777000000123456:email",
            ),
            (
                DedupeKey::RollbackNotice { incident: 17, at },
                "incident:17:rollback-notice:1777000000123456:email",
            ),
            (
                DedupeKey::ManualRollback { incident: 17, at },
                "incident:17:rollback:1777000000123456:email",
            ),
            (
                DedupeKey::RolledBack { incident: 17 },
                "incident:17:rolled-back:email",
            ),
            (
                DedupeKey::Escalation { incident: 17 },
                "incident:17:escalation:email",
            ),
            (
                DedupeKey::Unanswered { incident: 17 },
                "incident:17:unanswered:email",
            ),
            (
                DedupeKey::Notice { incident: 17, at },
                "incident:17:notice:1777000000123456:email",
            ),
            (
                DedupeKey::Resolved { incident: 17 },
                "incident:17:resolved:email",
            ),
            (
                DedupeKey::Undeliverable { notification: 9 },
                "undeliverable:9:email",
            ),
            (
                DedupeKey::DatabaseUnreachable {
                    target: "web/prod".into(),
                    told: "incident:3".into(),
                },
                "web/prod:database-unreachable:incident:3:email",
            ),
            (DedupeKey::DryRun, "dry-run:email"),
        ];
        for (key, text) in cases {
            assert_eq!(key.for_channel("email"), text);
        }
    }
}
