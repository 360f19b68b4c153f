//! What rollwatch says (docs/operations.md#telling-people), built once per
//! decision and stored in the outbox per channel: a subject, a plain-text body,
//! and structured details (labels for Alertmanager, fields for webhooks, the
//! HTML of an email is rendered from the text).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::dedupe::DedupeKey;
use crate::engine::decision::{Cause, Decision};
use crate::engine::policy::{Action, Policy};
use crate::engine::time_text;
use crate::store::{NewNotification, NotificationKind, NotificationRecord};

use crate::policy::notify::NotifyConfig;

/// The channel a policy without `[notify]` uses: messages go to the log (and
/// are recorded as sent there), so nothing waits forever.
pub const LOG_CHANNEL: &str = "log";

/// Structured fields of a message, stored as JSON with it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Details {
    pub service: String,
    pub environment: String,
    pub target: String,
    pub rule: String,
    pub tier: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    pub summary: String,
    pub recommendation: String,
    /// The exact commands to answer, when there is an incident to answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    pub explanation: String,
    /// The incident has ended: Alertmanager resolves the alert.
    #[serde(default)]
    pub resolved: bool,
}

/// One message, before it is addressed to its channels.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub kind: NotificationKind,
    pub subject: String,
    pub body: String,
    pub details: Details,
    pub at: DateTime<Utc>,
    pub incident: Option<i64>,
}

/// What fired, with its value against its threshold, or the rule's name.
pub fn what_fired(policy: &Policy, decision: &Decision) -> String {
    match (&decision.reading, policy.rule(&decision.rule)) {
        (Some(reading), Some(rule)) => reading.describe(rule, policy.evaluation.confidence),
        _ => decision.rule.clone(),
    }
}

/// "Rolling back production web due to error-rate 8.1% (95% lower bound 7.4%) > 5% over 2m of 9600 requests"
pub fn rollback_subject(policy: &Policy, why: &str) -> String {
    format!(
        "Rolling back {} {} due to {why}",
        policy.environment, policy.service
    )
}

/// The commands that answer incident `id` (`db` when not the default store).
pub fn answer_commands(id: i64, db: &str) -> Vec<String> {
    let db = if db == crate::store::DEFAULT_DATABASE || db.is_empty() {
        String::new()
    } else {
        format!(" --db '{db}'")
    };
    ["ack", "hold", "approve"]
        .iter()
        .map(|verb| format!("rollwatch incidents {verb} {id} --by YOUR-NAME{db}"))
        .collect()
}

/// The message for a decision, or `None` when it tells nobody anything.
/// `incident` is the stored incident's id; `db` names the store for the
/// answer commands.
pub fn for_decision(
    policy: &Policy,
    decision: &Decision,
    incident: Option<i64>,
    db: &str,
) -> Option<Message> {
    if decision.cause == Cause::Unanswered {
        return Some(unanswered_page(policy, decision, incident, db));
    }
    let target = format!("{}/{}", policy.service, policy.environment);
    let fired = what_fired(policy, decision);
    let place = format!("{} {}", policy.environment, policy.service);
    let (kind, subject, recommendation, resolved) = match (decision.action, decision.cause) {
        (_, Cause::RollbackFailed | Cause::WatchFailed) => (
            NotificationKind::Escalation,
            format!("ESCALATION {place}: {}", short_cause(decision.cause)),
            "a human must take over: the rollback failed or did not settle the system; rollwatch will not roll back again".to_string(),
            false,
        ),
        (Action::Rollback, _) => (
            NotificationKind::Notice,
            rollback_subject(policy, &fired),
            format!(
                "rolling back {} -> {} now",
                decision.from_version.as_deref().unwrap_or("the current version"),
                decision.to_version.as_deref().unwrap_or("the previous version")
            ),
            false,
        ),
        (Action::PageThenRollback, _) => (
            NotificationKind::Page,
            format!("PAGE {place}: {fired}"),
            format!(
                "roll back: rollwatch rolls back automatically at {} unless acknowledged or held",
                decision.deadline.map_or_else(|| "the deadline".into(), time_text)
            ),
            false,
        ),
        (Action::Page, _) => (
            NotificationKind::Page,
            format!("PAGE {place}: {fired}"),
            match &decision.guard {
                Some(guard) => format!(
                    "decide whether to roll back: rollwatch does not roll back automatically ({})",
                    guard.as_str()
                ),
                None => "decide whether to roll back (approve) or not (hold)".to_string(),
            },
            false,
        ),
        (_, Cause::Stable) => (
            NotificationKind::Resolved,
            format!("RESOLVED {place}: stable after the rollback"),
            "nothing to do; write the post-mortem (rollwatch incidents report)".to_string(),
            true,
        ),
        (_, Cause::Recovered) => (
            NotificationKind::Resolved,
            format!("RESOLVED {place}: every rule clear"),
            "nothing to do".to_string(),
            true,
        ),
        (_, Cause::RollbackFinished) => (
            NotificationKind::Notice,
            format!("Rolled back {place}: watching for stability"),
            "nothing to do yet: the stabilization watch decides".to_string(),
            false,
        ),
        (_, Cause::BurstEnded) => (
            NotificationKind::Notice,
            format!("{place}: a burst that ended by itself, no action: {fired}"),
            "nothing to do: the rule held for its `for` on a burst that is over (docs/decisions.md); look into it if it recurs".to_string(),
            false,
        ),
        (Action::Notify, _) => (
            NotificationKind::Notice,
            format!("{place}: {fired}"),
            "for information".to_string(),
            false,
        ),
        (Action::None, _) => return None,
    };
    let commands = match (incident, kind) {
        (Some(id), NotificationKind::Page | NotificationKind::Escalation) => {
            answer_commands(id, db)
        }
        _ => Vec::new(),
    };
    let details = Details {
        service: policy.service.clone(),
        environment: policy.environment.clone(),
        target,
        rule: decision.rule.clone(),
        tier: decision.tier.as_str().to_string(),
        action: decision.action.as_str().to_string(),
        incident,
        deadline: decision.deadline,
        summary: subject.clone(),
        recommendation,
        commands,
        explanation: decision.explanation.clone(),
        resolved,
    };
    let body = text_body(&details, decision.at);
    Some(Message {
        kind,
        subject,
        body,
        details,
        at: decision.at,
        incident,
    })
}

/// The escalation of a page nobody acknowledged, held or approved within
/// `escalate_after` (the engine's `Cause::Unanswered` decision): to the
/// escalation contacts, with the commands to take the incident over.
pub fn unanswered_page(
    policy: &Policy,
    decision: &Decision,
    incident: Option<i64>,
    db: &str,
) -> Message {
    let waited = crate::units::format_duration(policy.actions.escalate_after);
    let subject = format!(
        "ESCALATION {} {}: page unanswered for {waited}",
        policy.environment, policy.service
    );
    let details = Details {
        service: policy.service.clone(),
        environment: policy.environment.clone(),
        target: format!("{}/{}", policy.service, policy.environment),
        rule: decision.rule.clone(),
        tier: decision.tier.as_str().to_string(),
        action: Action::Page.as_str().to_string(),
        incident,
        deadline: decision.deadline,
        summary: subject.clone(),
        recommendation:
            "the on-call engineer did not answer: take the incident over (ack), then approve or hold"
                .into(),
        commands: incident.map_or_else(Vec::new, |id| answer_commands(id, db)),
        explanation: decision.explanation.clone(),
        resolved: false,
    };
    Message {
        kind: NotificationKind::Escalation,
        body: text_body(&details, decision.at),
        subject,
        details,
        at: decision.at,
        incident,
    }
}

/// A decision that needs a human, made while the database does not answer:
/// rollwatch cannot store an incident, so it rolls nothing back and the
/// outbox cannot hold a page. This escalation says what was decided and
/// that nobody acts on it; it is sent without the outbox
/// (`deliver::send_without_outbox`), so it carries no answer commands (they
/// need the database too).
pub fn database_unreachable(policy: &Policy, decision: &Decision, why: &str) -> Message {
    let place = format!("{} {}", policy.environment, policy.service);
    let fired = what_fired(policy, decision);
    let subject = format!("DATABASE UNREACHABLE {place}: {fired}; NOT ROLLING BACK");
    let details = Details {
        service: policy.service.clone(),
        environment: policy.environment.clone(),
        target: format!("{}/{}", policy.service, policy.environment),
        rule: decision.rule.clone(),
        tier: decision.tier.as_str().to_string(),
        action: decision.action.as_str().to_string(),
        incident: None,
        deadline: None,
        summary: subject.clone(),
        recommendation: format!(
            "a human must decide whether to roll back: rollwatch decided \"{}\" but does not act without its database ({why})",
            decision.action.as_str()
        ),
        commands: Vec::new(),
        explanation: decision.explanation.clone(),
        resolved: false,
    };
    Message {
        kind: NotificationKind::Escalation,
        body: text_body(&details, decision.at),
        subject,
        details,
        at: decision.at,
        incident: None,
    }
}

fn short_cause(cause: Cause) -> &'static str {
    match cause {
        Cause::RollbackFailed => "the rollback failed",
        Cause::WatchFailed => "not stable after the rollback",
        _ => "needs a human",
    }
}

/// A stored message's identity for the people and systems receiving it
/// (`17.3fa29c0de1b2a4f5`): the same on every attempt, after a restart and
/// from any replica, and different for every outbox row. The row id alone
/// would repeat across installations (two databases both have a row 1), so
/// a hash of what the row says it is (target, dedupe key, creation instant
/// to the microsecond) follows it.
pub fn identity(notification: &NotificationRecord) -> String {
    let digest = sha2::Sha256::digest(
        format!(
            "{}\n{}\n{}",
            notification.target,
            notification.dedupe_key,
            notification.created_at.timestamp_micros()
        )
        .as_bytes(),
    );
    let hash: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}.{hash}", notification.id)
}

/// The plain-text body every channel shows in some form.
pub fn text_body(details: &Details, at: DateTime<Utc>) -> String {
    let mut out = format!(
        "{}\n\nService: {} in {}\nRule: {} ({})\nWhen: {}\n",
        details.summary,
        details.service,
        details.environment,
        details.rule,
        details.tier,
        time_text(at)
    );
    if let Some(id) = details.incident {
        out.push_str(&format!("Incident: {id}\n"));
    }
    out.push_str(&format!("Recommendation: {}\n", details.recommendation));
    if let Some(deadline) = details.deadline {
        out.push_str(&format!(
            "Deadline: {} (automatic rollback unless acknowledged or held)\n",
            time_text(deadline)
        ));
    }
    if !details.commands.is_empty() {
        out.push_str("\nAnswer with one of:\n");
        for command in &details.commands {
            out.push_str(&format!("  {command}\n"));
        }
    }
    out.push_str(&format!("\nWhy: {}\n", details.explanation));
    out
}

/// The HTML part of an email: the text, escaped, in a readable layout.
pub fn html_body(details: &Details, text: &str) -> String {
    let escape = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let commands = if details.commands.is_empty() {
        String::new()
    } else {
        let items: String = details
            .commands
            .iter()
            .map(|c| format!("<li><code>{}</code></li>", escape(c)))
            .collect();
        format!("<p>Answer with one of:</p><ul>{items}</ul>")
    };
    format!(
        "<html><body><h2>{}</h2><p><b>Recommendation:</b> {}</p>{commands}<pre>{}</pre></body></html>",
        escape(&details.summary),
        escape(&details.recommendation),
        escape(text)
    )
}

impl Message {
    /// The outbox rows for this message: one per channel the policy routes
    /// its kind to (the log when the policy has no `[notify]`). `key` makes
    /// each idempotent: one incident, one page per channel.
    pub fn addressed(
        &self,
        notify: Option<&NotifyConfig>,
        key: &DedupeKey,
    ) -> Vec<NewNotification> {
        let channels: Vec<(String, Vec<String>)> = match notify {
            None => vec![(LOG_CHANNEL.to_string(), Vec::new())],
            Some(config) => {
                let names = match self.kind {
                    NotificationKind::Page => &config.routes.page,
                    NotificationKind::Escalation => &config.routes.escalation,
                    // The end of an incident goes wherever its page or notice went.
                    NotificationKind::Notice | NotificationKind::Resolved => &config.routes.notice,
                };
                let mut names: Vec<&String> = names.iter().collect();
                if self.kind == NotificationKind::Resolved {
                    names.extend(config.routes.page.iter());
                }
                names.sort();
                names.dedup();
                names
                    .into_iter()
                    .filter_map(|name| config.channel(name))
                    .map(|c| (c.name.clone(), c.kind.recipients()))
                    .collect()
            }
        };
        let details = serde_json::to_value(&self.details).unwrap_or_default();
        channels
            .into_iter()
            .map(|(channel, recipients)| NewNotification {
                incident: self.incident,
                kind: self.kind,
                dedupe_key: key.for_channel(&channel),
                channel,
                recipients,
                subject: self.subject.clone(),
                body: self.body.clone(),
                created_at: self.at,
                target: self.details.target.clone(),
                details: details.clone(),
            })
            .collect()
    }
}

/// A dry run's messages: what would be sent, on which channel, to whom, a
/// line each.
pub fn dry_run_lines(
    policy: &Policy,
    notify: Option<&NotifyConfig>,
    decision: &Decision,
) -> Vec<String> {
    let Some(message) = for_decision(policy, decision, None, "") else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    for row in message.addressed(notify, &DedupeKey::DryRun) {
        let to = if row.recipients.is_empty() {
            String::new()
        } else {
            format!(" to {}", row.recipients.join(", "))
        };
        lines.push(format!(
            "  WOULD SEND {} via {}{to}: {}",
            row.kind.as_str(),
            row.channel,
            row.subject
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_that_ended_is_a_notice_that_says_so() {
        let text = include_str!("../../policies/production.toml");
        let policy = crate::policy::from_bytes("p.toml", text.as_bytes(), |_| None).unwrap();
        let decision = Decision {
            at: chrono::Utc::now(),
            action: Action::Notify,
            tier: crate::engine::policy::Tier::Consider,
            rule: "error-rate".into(),
            explanation: "v2: 100% errors for 45s after its deploy, recovered by itself; no action"
                .into(),
            cause: Cause::BurstEnded,
            incident: None,
            guard: Some(crate::engine::decision::Guard::Recovered),
            reading: None,
            deadline: None,
            component: None,
            from_version: None,
            to_version: None,
            migrations: Vec::new(),
        };
        let message = for_decision(&policy, &decision, None, "rollwatch.db").unwrap();
        assert_eq!(message.kind, NotificationKind::Notice);
        assert!(
            message
                .subject
                .contains("a burst that ended by itself, no action"),
            "{}",
            message.subject
        );
        assert!(message.details.commands.is_empty());
    }
}
