//! What the engine decides: an action with the tier and rule behind it, the
//! guard that changed it (if any) and an explanation a person can act on.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::policy::{Action, Tier};
use super::signals::Reading;
use super::time_text;

/// The rule a human's rollback by hand (`rollwatch rollback`) is decided
/// and recorded under.
pub const MANUAL_ROLLBACK_RULE: &str = "manual-rollback";

/// Why the engine did not do what the tier's action asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guard {
    /// No deployment inside `recent_deploy_window`: a rollback would not fix it.
    NoRecentDeploy,
    /// The signal breached already before the deployment.
    Preexisting,
    /// A rollback is already running.
    InProgress,
    /// The previous rollback is too recent.
    Cooldown,
    /// The running version is itself a rollback.
    RollbackOfRollback,
    /// A known issue suppresses the rule.
    KnownIssue,
    /// A human holds the incident.
    Held,
    /// A human owns the incident.
    Acknowledged,
    /// The signal is no longer breaching.
    Recovered,
    /// No usable data.
    NoData,
}

impl Guard {
    pub fn name(&self) -> &'static str {
        match self {
            Guard::NoRecentDeploy => "no-recent-deploy",
            Guard::Preexisting => "preexisting",
            Guard::InProgress => "in-progress",
            Guard::Cooldown => "cooldown",
            Guard::RollbackOfRollback => "rollback-of-rollback",
            Guard::KnownIssue => "known-issue",
            Guard::Held => "held",
            Guard::Acknowledged => "acknowledged",
            Guard::Recovered => "recovered",
            Guard::NoData => "no-data",
        }
    }
}

/// What led to a decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// A rule held for its `for` time.
    RuleFired,
    /// A rule entered its watch band.
    WatchBand,
    /// A human declared an incident.
    Declared,
    /// A human approved a rollback.
    Approved,
    /// A human acknowledged the page.
    Acknowledged,
    /// A human held the incident.
    Held,
    /// A page-then-rollback deadline passed unanswered.
    DeadlinePassed,
    /// The rollback finished; the stabilization watch starts.
    RollbackFinished,
    /// The rollback procedure failed.
    RollbackFailed,
    /// A rule fired during the stabilization watch.
    WatchFailed,
    /// The stabilization watch ended without a firing rule.
    Stable,
    /// The incident's rules stayed clear for `resolve_after`.
    Recovered,
    /// No usable data for `blind_after` after a recent deployment.
    Blind,
    /// Nobody answered the incident's page within `escalate_after`: it goes
    /// to the escalation contacts (once per incident).
    Unanswered,
}

impl Cause {
    pub const ALL: [Cause; 14] = [
        Cause::RuleFired,
        Cause::WatchBand,
        Cause::Declared,
        Cause::Approved,
        Cause::Acknowledged,
        Cause::Held,
        Cause::DeadlinePassed,
        Cause::RollbackFinished,
        Cause::RollbackFailed,
        Cause::WatchFailed,
        Cause::Stable,
        Cause::Recovered,
        Cause::Blind,
        Cause::Unanswered,
    ];

    /// The word it is serialized and stored as (`rule-fired`).
    pub fn name(self) -> &'static str {
        match self {
            Cause::RuleFired => "rule-fired",
            Cause::WatchBand => "watch-band",
            Cause::Declared => "declared",
            Cause::Approved => "approved",
            Cause::Acknowledged => "acknowledged",
            Cause::Held => "held",
            Cause::DeadlinePassed => "deadline-passed",
            Cause::RollbackFinished => "rollback-finished",
            Cause::RollbackFailed => "rollback-failed",
            Cause::WatchFailed => "watch-failed",
            Cause::Stable => "stable",
            Cause::Recovered => "recovered",
            Cause::Blind => "blind",
            Cause::Unanswered => "unanswered",
        }
    }

    /// The cause stored as `name`, if it is one.
    pub fn named(name: &str) -> Option<Cause> {
        Cause::ALL.into_iter().find(|c| c.name() == name)
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
