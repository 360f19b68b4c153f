//! What the engine decides: an action with the tier and rule behind it, the
//! guard that changed it (if any) and an explanation a person can act on.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::policy::{Action, Tier};
use super::signals::Reading;
use super::time_text;
use crate::text_enum::text_enum;

/// The rule a human's rollback by hand (`rollwatch rollback`) is decided
/// and recorded under.
pub const MANUAL_ROLLBACK_RULE: &str = "manual-rollback";

text_enum! {
    /// Why the engine did not do what the tier's action asked for.
    pub enum Guard ("guard") {
        /// No deployment inside `recent_deploy_window`: a rollback would not fix it.
        NoRecentDeploy => "no-recent-deploy",
        /// The signal breached already before the deployment.
        Preexisting => "preexisting",
        /// A rollback is already running.
        InProgress => "in-progress",
        /// The previous rollback is too recent.
        Cooldown => "cooldown",
        /// The running version is itself a rollback.
        RollbackOfRollback => "rollback-of-rollback",
        /// A known issue suppresses the rule.
        KnownIssue => "known-issue",
        /// A human holds the incident.
        Held => "held",
        /// A human owns the incident.
        Acknowledged => "acknowledged",
        /// The signal is no longer breaching.
        Recovered => "recovered",
        /// No usable data.
        NoData => "no-data",
    }
}

text_enum! {
    /// What led to a decision.
    pub enum Cause ("cause") {
        /// A rule held for its `for` time.
        RuleFired => "rule-fired",
        /// A rule held for its `for` time on a burst that has ended: its
        /// short window is confidently healthy, so it is told, not paged.
        BurstEnded => "burst-ended",
        /// A rule entered its watch band.
        WatchBand => "watch-band",
        /// A human declared an incident.
        Declared => "declared",
        /// A human approved a rollback.
        Approved => "approved",
        /// A human acknowledged the page.
        Acknowledged => "acknowledged",
        /// A human held the incident.
        Held => "held",
        /// A page-then-rollback deadline passed unanswered.
        DeadlinePassed => "deadline-passed",
        /// The rollback finished; the stabilization watch starts.
        RollbackFinished => "rollback-finished",
        /// The rollback procedure failed.
        RollbackFailed => "rollback-failed",
        /// A rule fired during the stabilization watch.
        WatchFailed => "watch-failed",
        /// The stabilization watch ended without a firing rule.
        Stable => "stable",
        /// The incident's rules stayed clear for `resolve_after`.
        Recovered => "recovered",
        /// No usable data for `blind_after` after a recent deployment.
        Blind => "blind",
        /// Nobody answered the incident's page within `escalate_after`: it goes
        /// to the escalation contacts (once per incident).
        Unanswered => "unanswered",
    }
}

/// Whether a decision is a page that waits for a human's answer (ack, hold
/// or approve): a rule or a declaration paging on-call. It starts the
/// incident's `escalate_after` clock. Escalations (an unanswered page, a
/// failed rollback, an unstable watch) and the watchdog-blind page do not.
pub fn awaits_answer(action: Action, cause: Cause) -> bool {
    action.pages() && matches!(cause, Cause::RuleFired | Cause::Declared)
}

/// One decision. `action` is what should happen now; `explanation` says why in
/// a sentence that names the rule, the value, the threshold, the bound, the
/// window, the baseline and the policy with its content hash.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Decision {
    pub at: DateTime<Utc>,
    pub action: Action,
    pub tier: Tier,
    pub rule: String,
    pub explanation: String,
    pub cause: Cause,
    /// The engine's incident number (per target, from 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<Guard>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reading: Option<Reading>,
    /// When a page-then-rollback rolls back unless answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    /// Only this component is to be rolled back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub component: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_version: Option<String>,
    /// The deployment carried database migrations.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub migrations: Vec<String>,
}

impl Decision {
    /// Its line for people: what rollwatch does (or, in a dry run, would
    /// do) on target `name`, and why.
    pub fn line(&self, name: &str, dry_run: bool) -> String {
        let decision = self;
        let (would, mode) = if dry_run {
            ("WOULD ", " DRY-RUN")
        } else {
            ("", "")
        };
        let what = match decision.action {
            Action::Rollback => format!(
                "{would}ROLL BACK {} -> {}",
                decision
                    .from_version
                    .as_deref()
                    .unwrap_or("the current version"),
                decision
                    .to_version
                    .as_deref()
                    .unwrap_or("the previous version")
            ),
            Action::PageThenRollback => format!(
                "{would}PAGE on-call, then roll back at {} unless answered",
                decision
                    .deadline
                    .map_or_else(|| "the deadline".into(), time_text)
            ),
            Action::Page if decision.cause == Cause::Unanswered => {
                format!("{would}ESCALATE the unanswered page to the escalation contacts")
            }
            Action::Page => format!("{would}PAGE on-call"),
            Action::Notify => format!("{would}NOTIFY the team"),
            Action::None => "no action".into(),
        };
        format!(
            "{} {name}{mode} {what} [{} {}]: {}",
            time_text(decision.at),
            decision.tier,
            decision.rule,
            decision.explanation
        )
    }
}
