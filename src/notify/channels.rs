//! Sending one stored message on one channel: SMTP (lettre), Alertmanager's
//! API v2, a JSON webhook. Each attempt is bounded by the channel's timeout;
//! an error says whether trying again can help. A message carries its
//! identity (`message::identity`), the same on every attempt, so that a
//! receiver can recognise a resend: an email's `Message-ID`, a webhook's
//! `Idempotency-Key`; an Alertmanager alert is recognised by its labels.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde_json::json;

use super::message::{Details, html_body, identity};
use crate::policy::notify::{Channel, ChannelKind, SmtpSecurity};
use crate::sources::http;
use crate::store::NotificationRecord;

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SendError {
    /// Worth another attempt (connection refused, timeout, 5xx, SMTP 4xx).
    #[error("{0}")]
    Transient(String),
    /// Trying again cannot help (a malformed address, SMTP 5xx, HTTP 4xx).
    #[error("{0}")]
    Permanent(String),
}

impl SendError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, SendError::Permanent(_))
    }
}

fn details_of(notification: &NotificationRecord) -> Details {
    serde_json::from_value(notification.details.clone()).unwrap_or_else(|_| Details {
        summary: notification.subject.clone(),
        explanation: notification.body.clone(),
        target: notification.target.clone(),
        ..Details::default()
    })
}

/// One attempt to deliver `notification` on `channel`. `thread` is the
/// identity of the message this one follows up (an email's `In-Reply-To`):
/// the first message of its incident on this channel.
pub async fn send(
    channel: &Channel,
    notification: &NotificationRecord,
    thread: Option<&str>,
) -> Result<(), SendError> {
    let attempt = async {
        match &channel.kind {
            ChannelKind::Email { .. } => send_email(channel, notification, thread).await,
            ChannelKind::Alertmanager { url } => {
                let details = details_of(notification);
                post_alert(url.expose(), channel.timeout, &details, Utc::now()).await
            }
            ChannelKind::Webhook { url } => {
                send_webhook(url.expose(), channel.timeout, notification).await
            }
        }
    };
    match tokio::time::timeout(channel.timeout + Duration::from_secs(1), attempt).await {
        Ok(result) => result,
        Err(_) => Err(SendError::Transient(format!(
            "no answer within {}s",
            channel.timeout.as_secs_f64()
        ))),
    }
}

/// The `Message-ID` of the message with `identity` sent from `from`: at
/// the sender's domain, which the sender may vouch for.
pub fn message_id(identity: &str, from: &Mailbox) -> String {
    let domain = match from.email.domain() {
        "" => "rollwatch.invalid",
        domain => domain,
    };
    format!("<rollwatch.{identity}@{domain}>")
}

async fn send_email(
    channel: &Channel,
    notification: &NotificationRecord,
    thread: Option<&str>,
) -> Result<(), SendError> {
    let ChannelKind::Email {
        host,
        port,
        security,
        from,
        to,
        username_env,
        password_env,
    } = &channel.kind
    else {
        return Err(SendError::Permanent("not an email channel".into()));
    };
    let mailbox = |address: &str| -> Result<Mailbox, SendError> {
        address
            .parse::<Mailbox>()
            .map_err(|e| SendError::Permanent(format!("address \"{address}\" is not valid: {e}")))
    };
    let details = details_of(notification);
    let sender = mailbox(from)?;
    let mut builder = lettre::Message::builder()
        .message_id(Some(message_id(&identity(notification), &sender)))
        .from(sender.clone())
        .subject(format!("[rollwatch] {}", notification.subject));
    for recipient in to {
        builder = builder.to(mailbox(recipient)?);
    }
    if let Some(first) = thread {
        // One incident, one thread in the mail client: every later message
        // answers the first.
        let first = message_id(first, &sender);
        builder = builder.in_reply_to(first.clone()).references(first);
    }
    let email = builder
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(notification.body.clone()),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(html_body(&details, &notification.body)),
                ),
        )
        .map_err(|e| SendError::Permanent(format!("cannot build the email: {e}")))?;
    let transport = match security {
        SmtpSecurity::Plain => {
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
        }
        SmtpSecurity::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
            .map_err(|e| SendError::Permanent(format!("TLS setup for {host}: {e}")))?,
        SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
            .map_err(|e| SendError::Permanent(format!("TLS setup for {host}: {e}")))?,
    };
    let mut transport = transport.port(*port).timeout(Some(channel.timeout));
    let credential = |name: &Option<String>| -> Result<Option<String>, SendError> {
        match name {
            None => Ok(None),
            Some(name) => std::env::var(name).map(Some).map_err(|_| {
                SendError::Permanent(format!(
                    "the environment variable {name} (SMTP credentials) is not set"
                ))
            }),
        }
    };
    if let (Some(user), Some(password)) = (credential(username_env)?, credential(password_env)?) {
        transport = transport.credentials(Credentials::new(user, password));
    }
    match transport.build().send(email).await {
        Ok(_) => Ok(()),
        Err(error) if error.is_permanent() => Err(SendError::Permanent(format!(
            "SMTP {host}:{port} refused it: {error}"
        ))),
        Err(error) => Err(SendError::Transient(format!("SMTP {host}:{port}: {error}"))),
    }
}

/// How much of an answer's body is read: plenty for an error message, and
/// all a receiver that sends more, or never stops, can make rollwatch hold.
pub const MAX_ANSWER_BODY: usize = 64 * 1024;

/// An HTTP answer: its status and the start of its body.
struct Answer {
    status: u16,
    body: String,
    /// The body went on beyond `MAX_ANSWER_BODY`, unread.
    cut: bool,
}

/// Classifies an HTTP status: 2xx delivered, 408/429/5xx worth a retry, other 4xx not.
fn http_outcome(what: &str, answer: &Answer) -> Result<(), SendError> {
    let status = answer.status;
    let mut body = answer.body.chars().take(200).collect::<String>();
    if answer.cut {
        body.push_str(&format!(
            "… (a body of more than {} KiB, not read further)",
            MAX_ANSWER_BODY / 1024
        ));
    }
    match status {
        200..=299 => Ok(()),
        408 | 429 | 500..=599 => Err(SendError::Transient(format!(
            "{what} answered {status}: {body}"
        ))),
        _ => Err(SendError::Permanent(format!(
            "{what} answered {status}: {body}"
        ))),
    }
}

async fn post_json(
    url: &str,
    timeout: Duration,
    body: &serde_json::Value,
    idempotency_key: Option<&str>,
) -> Result<Answer, SendError> {
    let client = http::client().map_err(|e| SendError::Permanent(format!("HTTP client: {e}")))?;
    let mut request = client.post(url).timeout(timeout).json(body);
    if let Some(key) = idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.map_err(|e| {
        // The client's error quotes the URL it failed on: never its token.
        let chain = crate::secret::scrub(&http::error_chain(&e), url);
        SendError::Transient(format!("POST {}: {chain}", crate::secret::redact_url(url)))
    })?;
    let status = response.status().as_u16();
    let (body, cut) = read_at_most(response, MAX_ANSWER_BODY).await;
    Ok(Answer { status, body, cut })
}

/// The start of `response`'s body, at most `max` bytes of it read, and
/// whether there was more. A body that breaks off is what arrived of it.
async fn read_at_most(mut response: reqwest::Response, max: usize) -> (String, bool) {
    let mut body: Vec<u8> = Vec::new();
    let mut cut = false;
    while let Ok(Some(chunk)) = response.chunk().await {
        let room = max - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        body.extend_from_slice(&chunk);
    }
    // Dropping the response closes its connection: the rest is never read.
    (String::from_utf8_lossy(&body).into_owned(), cut)
}

async fn send_webhook(
    url: &str,
    timeout: Duration,
    notification: &NotificationRecord,
) -> Result<(), SendError> {
    let details = details_of(notification);
    let body = json!({
        "text": format!("*{}*\n{}", notification.subject, notification.body),
        "kind": notification.kind.as_str(),
        "subject": notification.subject,
        "notification": notification.id,
        "rollwatch": details,
    });
    // The same key on every attempt: a receiver that saw it already
    // (the 2xx was lost, or rollwatch died before recording it) drops it.
    let key = format!("rollwatch.{}", identity(notification));
    let answer = post_json(url, timeout, &body, Some(&key)).await?;
    http_outcome("the webhook", &answer)
}

/// The alert Alertmanager keeps for an incident: the same labels every time,
/// so a re-post refreshes it and an `endsAt` in the past resolves it.
pub fn alert(details: &Details, now: DateTime<Utc>) -> serde_json::Value {
    let incident = details.incident.map(|i| i.to_string()).unwrap_or_default();
    // Labels identify the alert: they must not change between the page, its
    // re-posts and its resolution, so nothing here depends on the message kind.
    let severity = match details.tier.as_str() {
        "immediate" => "critical",
        "consider" => "warning",
        _ => "info",
    };
    let mut alert = json!({
        "labels": {
            "alertname": "RollwatchIncident",
            "service": details.service,
            "environment": details.environment,
            "rule": details.rule,
            "tier": details.tier,
            "incident": incident,
            "severity": severity,
        },
        "annotations": {
            "summary": details.summary,
            "recommendation": details.recommendation,
            "answer": details.commands.join("\n"),
            "explanation": details.explanation,
        },
        "startsAt": now.to_rfc3339(),
    });
    if details.resolved {
        alert["endsAt"] = json!(now.to_rfc3339());
    }
    alert
}

/// `POST {url}/api/v2/alerts` with the incident's alert.
pub async fn post_alert(
    url: &str,
    timeout: Duration,
    details: &Details,
    now: DateTime<Utc>,
) -> Result<(), SendError> {
    let endpoint = format!("{url}/api/v2/alerts");
    let answer = post_json(&endpoint, timeout, &json!([alert(details, now)]), None).await?;
    http_outcome("Alertmanager", &answer)
}
