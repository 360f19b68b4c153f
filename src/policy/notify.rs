//! Where messages go (docs/operations.md#telling-people): the policy's channels and which kinds of
//! message each receives. Compiled and validated by `crate::policy`.

use std::time::Duration;

use crate::secret::SecretUrl;

/// How an SMTP connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain SMTP (a local relay): `smtp://`.
    Plain,
    /// STARTTLS upgrade, required: `smtp+starttls://`.
    StartTls,
    /// TLS from the first byte: `smtps://`.
    Tls,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ChannelKind {
    Email {
        host: String,
        port: u16,
        security: SmtpSecurity,
        from: String,
        to: Vec<String>,
        /// Names of the environment variables holding the credentials (never the values).
        username_env: Option<String>,
        password_env: Option<String>,
    },
    /// Alertmanager's API v2 at this base URL (`POST {url}/api/v2/alerts`).
    Alertmanager { url: SecretUrl },
    /// A JSON POST (Slack-compatible `text` plus structured fields).
    Webhook { url: SecretUrl },
}

impl ChannelKind {
    pub fn name(&self) -> &'static str {
        match self {
            ChannelKind::Email { .. } => "email",
            ChannelKind::Alertmanager { .. } => "alertmanager",
            ChannelKind::Webhook { .. } => "webhook",
        }
    }

    /// Who receives it, for the record and dry runs: email addresses. A URL
    /// channel has none: it is named by its channel name alone, because its
    /// URL may carry its credential (status and incidents never show it).
    pub fn recipients(&self) -> Vec<String> {
        match self {
            ChannelKind::Email { to, .. } => to.clone(),
            ChannelKind::Alertmanager { .. } | ChannelKind::Webhook { .. } => Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Channel {
    pub name: String,
    pub kind: ChannelKind,
    /// One delivery attempt may take this long.
    pub timeout: Duration,
    /// Retries stop this long after the message was created; it then fails
    /// and escalates on another channel.
    pub deadline: Duration,
}

/// Which channels receive which kind of message.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routes {
    pub page: Vec<String>,
    pub notice: Vec<String>,
    pub escalation: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NotifyConfig {
    pub channels: Vec<Channel>,
    pub routes: Routes,
    /// An unanswered page escalates after this.
    pub escalate_after: Duration,
}

pub const DEFAULT_CHANNEL_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_CHANNEL_DEADLINE: Duration = Duration::from_secs(60 * 60);
pub const DEFAULT_ESCALATE_AFTER: Duration = Duration::from_secs(15 * 60);

impl NotifyConfig {
    pub fn channel(&self, name: &str) -> Option<&Channel> {
        self.channels.iter().find(|c| c.name == name)
    }
}
