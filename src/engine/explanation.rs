//! The prose explanations are built from: instants, versions, a rule with
//! its reading, and what a resumed watch did not see.

use chrono::{DateTime, SecondsFormat, Utc};

use super::Engine;
use crate::units::format_duration;

impl Engine {
    /// "error-rate (consider): error-rate 8.1% (95% lower bound 7.4%) > 5% over 2m of 9600 requests, held 2m since the deploy of v2.3.1 at 10:00:15Z"
    pub(super) fn describe_rule(&self, index: usize, now: DateTime<Utc>) -> String {
        let rule = &self.policy.rules[index];
        let state = &self.rules[index];
        let reading = state.reading.as_ref().map_or_else(
            || "no reading".to_string(),
            |r| r.describe(rule, self.policy.evaluation.confidence),
        );
        // Both readings: the window the rule is judged on, and its most recent part.
        let reading = match &state.recent {
            Some(recent) if state.reading.as_ref().is_some_and(|r| r.reason.is_none()) => {
                format!("{reading}, {}", recent.describe_recent())
            }
            _ => reading,
        };
        let held = state
            .breach_since
            .or(state.band_since)
            .map_or_else(String::new, |since| {
                format!(", held {}", format_duration(now - since))
            });
        let deploy = self.deployment.as_ref().map_or_else(String::new, |d| {
            format!(
                " since the {} of {} at {}",
                if d.rollback { "rollback" } else { "deploy" },
                version_text(d.version.as_deref()),
                time_text(d.at)
            )
        });
        format!("{} ({}): {reading}{held}{deploy}", rule.name, rule.tier)
    }

    /// For a watch taken up after a restart: what was not observed, and
    /// whether its end was extended.
    pub(super) fn resumed_watch_note(&self, now: DateTime<Utc>) -> String {
        let Some(incident) = &self.incident else {
            return String::new();
        };
        let Some(resumed_at) = incident.resumed_at else {
            return String::new();
        };
        let extended = incident.watch_extended_from.map_or_else(String::new, |stored| {
            format!(
                "; its stored end {} was extended to {} to leave the longest rule's `for` plus one interval to judge",
                time_text(stored),
                time_text(now)
            )
        });
        format!(
            " (rollwatch took the watch up at {}: nothing was observed while it was not running{extended})",
            time_text(resumed_at)
        )
    }
}

/// RFC 3339 in UTC, whole seconds unless the input had fractions.
pub fn time_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub(super) fn version_text(version: Option<&str>) -> &str {
    version.unwrap_or("an unknown version")
}
