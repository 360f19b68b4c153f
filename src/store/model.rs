//! The values the store takes and gives back. Enumerations are stored as the
//! words `text_enum!` gives them (`as_str`; a CHECK constraint in each table
//! lists the same words); a stored word outside the set is a corrupt row.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::decision::{Cause, Guard};
use crate::engine::policy::{Action, Tier};
use crate::text_enum::text_enum;

text_enum! {
    /// How rollwatch learnt of a deployment.
    pub enum DeploymentSource ("deployment source") {
        /// `POST /api/v1/deployments` or a trace event.
        Announced => "announced",
        /// The running version changed.
        Observed => "observed",
        /// rollwatch's own rollback.
        Rollback => "rollback",
    }
}

text_enum! {
    /// What opened an incident.
    pub enum IncidentKind ("incident kind") {
        /// A rule fired.
        Rule => "rule",
        /// A human declared it (`declare`, `rollback --reason`).
        Declared => "declared",
        /// A rollback drill.
        Drill => "drill",
    }
}

text_enum! {
    /// Where an unresolved incident stands in the runbook's procedure.
    pub enum IncidentPhase ("incident phase") {
        /// Paged or notified, or waiting for a page-then-rollback deadline.
        Open => "open",
        /// The rollback steps are running.
        RollingBack => "rolling-back",
        /// The verification steps are running.
        Verifying => "verifying",
        /// The stabilization watch runs (until `watch_until`).
        Watching => "watching",
        /// A step failed; the recovery steps are running.
        Recovering => "recovering",
        /// Handed to humans.
        Escalated => "escalated",
    }
}

text_enum! {
    /// How an incident ended.
    pub enum IncidentOutcome ("incident outcome") {
        /// The stabilization watch ended stable.
        Stable => "stable",
        /// The signals recovered without a rollback.
        Recovered => "recovered",
        /// Escalated, then closed by a human.
        Escalated => "escalated",
        /// Closed by a human as not needing action.
        Dismissed => "dismissed",
        /// A drill whose procedure and verification succeeded.
        DrillPassed => "drill-passed",
        /// A drill that failed.
        DrillFailed => "drill-failed",
    }
}

text_enum! {
    /// The runbook stage a step belongs to.
    pub enum StepStage ("step stage") {
        Notify => "notify",
        Backup => "backup",
        Application => "application",
        Database => "database",
        Verification => "verification",
        Recovery => "recovery",
        Escalation => "escalation",
    }
}

text_enum! {
    /// How a step ended. `Running` means its start is stored and its end is
    /// not: after a restart, such a step may or may not have run.
    pub enum StepOutcome ("step outcome") {
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        TimedOut => "timed-out",
        FailedToStart => "failed-to-start",
        /// A restarted rollwatch found it running and cannot know its end.
        Unknown => "unknown",
    }
}

text_enum! {
    /// What a notification is for.
    pub enum NotificationKind ("notification kind") {
        Page => "page",
        Notice => "notice",
        Escalation => "escalation",
        Resolved => "resolved",
    }
}

text_enum! {
    /// Where a notification stands in the outbox.
    pub enum NotificationState ("notification state") {
        /// Waiting for its first or next attempt (`next_attempt_at`).
        Pending => "pending",
        Sent => "sent",
        /// Given up on; `last_error` says why.
        Failed => "failed",
    }
}

text_enum! {
    /// A human's answer to an incident.
    pub enum AnswerKind ("answer kind") {
        Ack => "ack",
        Hold => "hold",
        Approve => "approve",
    }
}

/// A deployment to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDeployment {
    pub target: String,
    pub version: Option<String>,
    pub previous: Option<String>,
    pub migrations: Vec<String>,
    pub at: DateTime<Utc>,
    pub rollback: bool,
    pub source: DeploymentSource,
}

/// A stored deployment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeploymentRecord {
    pub id: i64,
    pub target: String,
    pub version: Option<String>,
    pub previous: Option<String>,
    pub migrations: Vec<String>,
    pub at: DateTime<Utc>,
    pub rollback: bool,
    pub source: DeploymentSource,
}

/// An incident to open.
#[derive(Clone, Debug, PartialEq)]
pub struct NewIncident {
    pub target: String,
    pub kind: IncidentKind,
    pub tier: Tier,
    /// The rule that opened it, or `declared` / `drill`.
    pub rule: String,
    /// A human's reason (declarations, manual rollbacks, drills); may be empty.
    pub reason: String,
    pub component: Option<String>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub opened_at: DateTime<Utc>,
    /// A page-then-rollback rolls back at this instant unless answered.
    pub deadline: Option<DateTime<Utc>>,
}

/// Whether an incident is still going, and if not how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "state")]
pub enum IncidentState {
    Active {
        phase: IncidentPhase,
    },
    Resolved {
        at: DateTime<Utc>,
        outcome: IncidentOutcome,
    },
}

impl IncidentState {
    pub fn is_resolved(&self) -> bool {
        matches!(self, IncidentState::Resolved { .. })
    }
}

/// A stored incident (without its timeline).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentRecord {
    pub id: i64,
    pub target: String,
    pub kind: IncidentKind,
    pub tier: Tier,
    pub rule: String,
    pub reason: String,
    pub component: Option<String>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub opened_at: DateTime<Utc>,
    pub state: IncidentState,
    /// When the phase (or resolution) last changed.
    pub phase_at: DateTime<Utc>,
    pub deadline: Option<DateTime<Utc>>,
    pub watch_until: Option<DateTime<Utc>>,
    pub acknowledged: bool,
    pub held: bool,
    /// Every rule has been seen clear since this instant, counting observed
    /// time only (`engine::Incident::clear_since`); `None` while one breaches.
    pub clear_since: Option<DateTime<Utc>>,
}

/// A stored engine decision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DecisionRecord {
    pub id: i64,
    pub incident: Option<i64>,
    pub target: String,
    pub at: DateTime<Utc>,
    pub action: Action,
    pub tier: Tier,
    pub rule: String,
    pub cause: Cause,
    pub guard: Option<Guard>,
    pub explanation: String,
    pub reading: Option<serde_json::Value>,
    pub deadline: Option<DateTime<Utc>>,
    pub component: Option<String>,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub policy_path: String,
    pub policy_sha256: String,
}

/// A step about to run.
#[derive(Clone, Debug, PartialEq)]
pub struct NewStep {
    pub name: String,
    pub stage: StepStage,
    pub component: Option<String>,
    pub argv: Vec<String>,
}

/// How a step ended, as the runner saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct StepEnd {
    /// Anything but `Running`.
    pub outcome: StepOutcome,
    pub exit_code: Option<i32>,
    /// A reason in words ("timed out after 30s", "no such file: ./rollback.sh").
    pub detail: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub duration: Duration,
    pub ended_at: DateTime<Utc>,
}

/// A stored step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepRecord {
    pub id: i64,
    pub incident: i64,
    pub name: String,
    pub stage: StepStage,
    pub component: Option<String>,
    pub argv: Vec<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: StepOutcome,
    pub exit_code: Option<i32>,
    pub detail: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub duration: Option<Duration>,
    /// The runner process that runs the step (`HOST:PID`), once it started.
    pub runner: Option<String>,
    /// The runner's latest heartbeat: fresh while the step may still run.
    pub heartbeat_at: Option<DateTime<Utc>>,
    /// The step's process group on the runner's host, once spawned.
    pub step_pgid: Option<i32>,
    /// The step's timeout as the runner was given it.
    pub timeout: Option<Duration>,
}

impl StepRecord {
    /// Started but its end was never stored: it may have run, wholly or in
    /// part, and must not be run again automatically.
    pub fn may_have_run_unrecorded(&self) -> bool {
        self.outcome == StepOutcome::Running
    }
}

/// An unresolved incident with its steps, for a restarted rollwatch.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnfinishedIncident {
    pub incident: IncidentRecord,
    /// In the order they started.
    pub steps: Vec<StepRecord>,
}

impl UnfinishedIncident {
    /// Steps whose start is stored and whose end is not.
    pub fn interrupted_steps(&self) -> impl Iterator<Item = &StepRecord> {
        self.steps.iter().filter(|s| s.may_have_run_unrecorded())
    }
}

/// A notification to put in the outbox.
#[derive(Clone, Debug, PartialEq)]
pub struct NewNotification {
    pub incident: Option<i64>,
    pub kind: NotificationKind,
    /// The channel's name in the policy (`email`, `alertmanager`, `webhook`...).
    pub channel: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub body: String,
    /// At most one notification per key: e.g. `incident:17:page:email`, so one
    /// incident pages once however often it is asked to.
    pub dedupe_key: String,
    pub created_at: DateTime<Utc>,
    /// The target whose policy names the channel.
    pub target: String,
    /// Structured fields (`notify::message::Details`).
    pub details: serde_json::Value,
}

/// What `enqueue_notification` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    /// A new notification with this id.
    New(i64),
    /// The dedupe key was taken by this earlier notification; nothing added.
    Duplicate(i64),
}

impl Enqueued {
    pub fn id(self) -> i64 {
        match self {
            Enqueued::New(id) | Enqueued::Duplicate(id) => id,
        }
    }
}

/// A stored notification.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NotificationRecord {
    pub id: i64,
    pub incident: Option<i64>,
    pub kind: NotificationKind,
    pub channel: String,
    pub recipients: Vec<String>,
    pub subject: String,
    pub body: String,
    pub dedupe_key: String,
    pub state: NotificationState,
    pub attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub target: String,
    pub details: serde_json::Value,
}

/// A human's answer to record.
#[derive(Clone, Debug, PartialEq)]
pub struct NewAnswer {
    pub incident: i64,
    pub kind: AnswerKind,
    pub by: String,
    pub at: DateTime<Utc>,
    pub note: Option<String>,
}

/// A stored answer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnswerRecord {
    pub id: i64,
    pub incident: i64,
    pub kind: AnswerKind,
    pub by: String,
    pub at: DateTime<Utc>,
    pub note: Option<String>,
}

/// A known-issue suppression to add.
#[derive(Clone, Debug, PartialEq)]
pub struct NewSuppression {
    pub target: String,
    /// `None` suppresses every rule of the target.
    pub rule: Option<String>,
    pub until: DateTime<Utc>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// A stored suppression.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SuppressionRecord {
    pub id: i64,
    pub target: String,
    pub rule: Option<String>,
    pub until: DateTime<Utc>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// An incident with everything that happened to it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct IncidentTimeline {
    pub incident: IncidentRecord,
    pub decisions: Vec<DecisionRecord>,
    pub steps: Vec<StepRecord>,
    pub answers: Vec<AnswerRecord>,
    pub notifications: Vec<NotificationRecord>,
}

/// One line of an incident's timeline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TimelineEntry<'a> {
    Opened(&'a IncidentRecord),
    Decision(&'a DecisionRecord),
    /// At the step's start.
    Step(&'a StepRecord),
    Answer(&'a AnswerRecord),
    /// At the notification's creation.
    Notification(&'a NotificationRecord),
    Resolved(&'a IncidentRecord),
}

impl TimelineEntry<'_> {
    pub fn at(&self) -> DateTime<Utc> {
        match self {
            TimelineEntry::Opened(i) => i.opened_at,
            TimelineEntry::Decision(d) => d.at,
            TimelineEntry::Step(s) => s.started_at,
            TimelineEntry::Answer(a) => a.at,
            TimelineEntry::Notification(n) => n.created_at,
            TimelineEntry::Resolved(i) => match i.state {
                IncidentState::Resolved { at, .. } => at,
                IncidentState::Active { .. } => i.phase_at,
            },
        }
    }
}

impl IncidentTimeline {
    /// Everything in time order; at one instant, in the order opened,
    /// decision, step, answer, notification, resolved (a stable sort keeps
    /// each kind's own order).
    pub fn entries(&self) -> Vec<TimelineEntry<'_>> {
        let mut entries = vec![TimelineEntry::Opened(&self.incident)];
        entries.extend(self.decisions.iter().map(TimelineEntry::Decision));
        entries.extend(self.steps.iter().map(TimelineEntry::Step));
        entries.extend(self.answers.iter().map(TimelineEntry::Answer));
        entries.extend(self.notifications.iter().map(TimelineEntry::Notification));
        if matches!(self.incident.state, IncidentState::Resolved { .. }) {
            entries.push(TimelineEntry::Resolved(&self.incident));
        }
        entries.sort_by_key(|entry| entry.at());
        entries
    }
}
