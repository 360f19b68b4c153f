//! The outbox worker: delivers stored messages channel by channel, in the
//! order they were stored, retrying with exponential backoff and jitter until
//! the channel's deadline. A channel outage delays messages, never drops or
//! reorders them; a message that finally fails is recorded as failed and
//! raises an escalation on another channel. Every state change is stored
//! before the next attempt, so a restart neither loses nor repeats one
//! (beyond the single attempt in flight when the process died).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::channels::{self, SendError};
use super::config::NotifyConfig;
use super::message::{Details, LOG_CHANNEL, text_body};
use crate::store::{NewNotification, NotificationKind, NotificationRecord, Store};
use crate::telemetry::{DeliveryLabels, Telemetry};

/// The longest pause between two attempts on one message.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The first retry comes after about this long.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The worker looks at the outbox at least this often.
const IDLE_CHECK: Duration = Duration::from_secs(5);

/// Open incidents' alerts are posted to Alertmanager again this often: it
/// resolves an alert nobody re-posts within its `resolve_timeout` (5m).
const ALERT_REFRESH: Duration = Duration::from_secs(60);

/// The channels of every watched target, by target name (`web/production`).
/// Shared: `run` adds targets as policy files appear and updates their
/// channels as policies are edited. A removed target stays, so that what its
/// incidents left in the outbox is still delivered.
#[derive(Clone, Default)]
pub struct Routing(Arc<RwLock<HashMap<String, Route>>>);

struct Route {
    notify: Option<Arc<NotifyConfig>>,
    /// With several replicas, a target's messages are sent by its owner only.
    owner: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Routing {
    pub fn add(&self, target: String, notify: Option<NotifyConfig>) {
        self.add_owned(target, notify, None);
    }

    /// Like `add`, for a target this replica sends for only while it owns it.
    pub fn add_owned(
        &self,
        target: String,
        notify: Option<NotifyConfig>,
        owner: Option<tokio::sync::watch::Receiver<bool>>,
    ) {
        let route = Route {
            notify: notify.map(Arc::new),
            owner,
        };
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target, route);
    }

    /// An edited policy's channels, for a target already routed.
    pub fn update(&self, target: &str, notify: Option<NotifyConfig>) {
        if let Some(route) = self
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(target)
        {
            route.notify = notify.map(Arc::new);
        }
    }

    /// The target's channels (none: not routed, or the policy has none).
    fn notify_of(&self, target: &str) -> Option<Arc<NotifyConfig>> {
        let routes = self.0.read().unwrap_or_else(|e| e.into_inner());
        routes.get(target).and_then(|r| r.notify.clone())
    }

    /// This replica sends the target's messages (it owns the target, or
    /// there is no leadership: one replica).
    fn sends_for(&self, target: &str) -> bool {
        let routes = self.0.read().unwrap_or_else(|e| e.into_inner());
        routes
            .get(target)
            .is_some_and(|r| r.owner.as_ref().is_none_or(|owner| *owner.borrow()))
    }
}

/// Delay before attempt `attempts + 1`: doubling from `FIRST_BACKOFF` up to
/// `MAX_BACKOFF`, times a random factor in [0.5, 1.5) so that many messages
/// failing together do not retry together.
pub fn backoff(attempts: i32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1u32 << attempts.clamp(0, 16) as u32);
    doubled
        .min(MAX_BACKOFF)
        .mul_f64(rand::rng().random_range(0.5..1.5))
}

pub struct Worker {
    store: Store,
    routing: Routing,
    wake: Arc<Notify>,
    telemetry: Option<Arc<Telemetry>>,
}

impl Worker {
    pub fn new(store: Store, routing: Routing, wake: Arc<Notify>) -> Worker {
        Worker {
            store,
            routing,
            wake,
            telemetry: None,
        }
    }

    /// A worker for one target's messages (`rollback`, `drill`, the demo).
    pub fn for_target(
        store: Store,
        target: String,
        notify: Option<NotifyConfig>,
        wake: Arc<Notify>,
    ) -> Worker {
        let routing = Routing::default();
        routing.add(target, notify);
        Worker::new(store, routing, wake)
    }

    /// Counts every attempt in `rollwatch_notification_deliveries_total`.
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Worker {
        self.telemetry = Some(telemetry);
        self
    }

    fn count(&self, channel: &str, result: &str) {
        if let Some(telemetry) = &self.telemetry {
            telemetry
                .deliveries
                .get_or_create(&DeliveryLabels {
                    channel: channel.to_string(),
                    result: result.to_string(),
                })
                .inc();
        }
    }

    /// Delivers until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut next_refresh = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_refresh {
                self.refresh_alerts(Utc::now()).await;
                next_refresh = tokio::time::Instant::now() + ALERT_REFRESH;
            }
            let next = self.round(Utc::now()).await;
            let sleep = next.map_or(IDLE_CHECK, |at| {
                (at - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_CHECK)
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// One pass at `now` (the wall clock, or a test's simulated one): every
    /// channel whose oldest pending message is due gets one attempt (channels
    /// in parallel). Returns when the next one is due.
    pub async fn round(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let heads = match self.store.channel_heads().await {
            Ok(heads) => heads,
            Err(error) => {
                tracing::error!(%error, "cannot read the outbox; messages wait");
                return Some(now + TimeDelta::seconds(5));
            }
        };
        let (due, waiting): (Vec<_>, Vec<_>) = heads
            .into_iter()
            .filter(|n| self.routing.sends_for(&n.target))
            .partition(|n| n.next_attempt_at <= now);
        let attempts = due.iter().map(|n| self.deliver(n, now));
        let delivered = futures_util::future::join_all(attempts).await;
        if delivered.iter().any(|more| *more) {
            // The next message of that channel may be due at once.
            return Some(now);
        }
        waiting.iter().map(|n| n.next_attempt_at).min()
    }

    /// One attempt on one message; true when it settled (sent or failed).
    async fn deliver(&self, notification: &NotificationRecord, now: DateTime<Utc>) -> bool {
        let config = self.routing.notify_of(&notification.target);
        let result = if notification.channel == LOG_CHANNEL {
            log_message(notification);
            Ok(())
        } else {
            match config
                .as_deref()
                .and_then(|c| c.channel(&notification.channel))
            {
                Some(channel) => channels::send(channel, notification).await,
                None => Err(SendError::Permanent(format!(
                    "no channel \"{}\" in the policy of {} (it changed, or the target is not watched)",
                    notification.channel, notification.target
                ))),
            }
        };
        let deadline = config
            .as_deref()
            .and_then(|c| c.channel(&notification.channel))
            .map_or(TimeDelta::hours(1), |c| {
                TimeDelta::from_std(c.deadline).unwrap_or(TimeDelta::hours(1))
            });
        match result {
            Ok(()) => {
                tracing::info!(
                    notification = notification.id,
                    channel = %notification.channel,
                    kind = notification.kind.as_str(),
                    attempts = notification.attempts + 1,
                    "delivered: {}",
                    notification.subject
                );
                self.count(&notification.channel, "sent");
                if let Err(error) = self
                    .store
                    .mark_notification_sent(notification.id, now)
                    .await
                {
                    tracing::error!(%error, notification = notification.id, "delivered, but cannot record it");
                }
                true
            }
            Err(error) => {
                let retry_at =
                    now + TimeDelta::from_std(backoff(notification.attempts)).unwrap_or_default();
                let give_up = error.is_permanent() || retry_at > notification.created_at + deadline;
                let retry = (!give_up).then_some(retry_at);
                self.count(
                    &notification.channel,
                    if give_up { "failed" } else { "retry" },
                );
                tracing::warn!(
                    notification = notification.id,
                    channel = %notification.channel,
                    attempts = notification.attempts + 1,
                    %error,
                    retry_at = ?retry,
                    "delivery failed"
                );
                if let Err(store_error) = self
                    .store
                    .mark_notification_failed(notification.id, &error.to_string(), retry)
                    .await
                {
                    tracing::error!(%store_error, notification = notification.id, "cannot record the failed attempt");
                    return false;
                }
                if give_up {
                    self.undeliverable(notification, &error, now).await;
                }
                give_up
            }
        }
    }

    /// Re-posts the alert of every unresolved incident that has one on an
    /// Alertmanager channel, so it stays open there until rollwatch resolves it.
    pub async fn refresh_alerts(&self, now: DateTime<Utc>) {
        let incidents = match self.store.list_incidents(500).await {
            Ok(incidents) => incidents,
            Err(error) => {
                tracing::warn!(%error, "cannot list incidents to refresh their alerts");
                return;
            }
        };
        for incident in incidents
            .iter()
            .filter(|i| matches!(i.state, crate::store::IncidentState::Active { .. }))
        {
            let Some(config) = self.routing.notify_of(&incident.target) else {
                continue;
            };
            let Ok(sent) = self.store.notifications(incident.id).await else {
                continue;
            };
            for channel in &config.channels {
                let super::config::ChannelKind::Alertmanager { url } = &channel.kind else {
                    continue;
                };
                let latest = sent.iter().rev().find(|n| {
                    n.channel == channel.name
                        && n.state == crate::store::NotificationState::Sent
                        && matches!(
                            n.kind,
                            NotificationKind::Page | NotificationKind::Escalation
                        )
                });
                let Some(latest) = latest else { continue };
                let Ok(details) = serde_json::from_value::<Details>(latest.details.clone()) else {
                    continue;
                };
                if let Err(error) = channels::post_alert(url, channel.timeout, &details, now).await
                {
                    tracing::warn!(incident = incident.id, channel = %channel.name, %error, "cannot refresh the alert");
                }
            }
        }
    }

    /// A message that finally failed escalates on the other escalation
    /// channels (the log when there are none).
    async fn undeliverable(
        &self,
        failed: &NotificationRecord,
        error: &SendError,
        now: DateTime<Utc>,
    ) {
        tracing::error!(
            notification = failed.id,
            channel = %failed.channel,
            %error,
            "UNDELIVERABLE: {}",
            failed.subject
        );
        let mut details: Details =
            serde_json::from_value(failed.details.clone()).unwrap_or_default();
        details.summary = format!(
            "ESCALATION: could not deliver \"{}\" via {}: {error}",
            failed.subject, failed.channel
        );
        details.recommendation = format!(
            "fix the {} channel; the undelivered {} said: {}",
            failed.channel,
            failed.kind.as_str(),
            failed.subject
        );
        let channels: Vec<(String, Vec<String>)> = match self.routing.notify_of(&failed.target) {
            Some(config) => config
                .routes
                .escalation
                .iter()
                .chain(&config.routes.page)
                .filter(|name| **name != failed.channel)
                .filter_map(|name| config.channel(name))
                .map(|c| (c.name.clone(), c.kind.recipients()))
                .take(1)
                .collect(),
            None => Vec::new(),
        };
        let channels = if channels.is_empty() {
            vec![(LOG_CHANNEL.to_string(), Vec::new())]
        } else {
            channels
        };
        let body = text_body(&details, now);
        let details_json = serde_json::to_value(&details).unwrap_or_default();
        for (channel, recipients) in channels {
            let escalation = NewNotification {
                incident: failed.incident,
                kind: NotificationKind::Escalation,
                dedupe_key: format!("undeliverable:{}:{channel}", failed.id),
                channel,
                recipients,
                subject: details.summary.clone(),
                body: body.clone(),
                created_at: now,
                target: failed.target.clone(),
                details: details_json.clone(),
            };
            if let Err(store_error) = self.store.enqueue_notification(&escalation).await {
                tracing::error!(%store_error, "cannot store the escalation of an undeliverable message");
            }
        }
    }
}

/// The `log` channel: the message goes to the log at WARN, where a policy
/// without `[notify]` still shows it.
fn log_message(notification: &NotificationRecord) {
    tracing::warn!(
        channel = LOG_CHANNEL,
        kind = notification.kind.as_str(),
        incident = ?notification.incident,
        "{}\n{}",
        notification.subject,
        notification.body
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_five_minutes() {
        for _ in 0..100 {
            let first = backoff(0);
            assert!(
                first >= Duration::from_secs(1) && first < Duration::from_secs(3),
                "{first:?}"
            );
            let fourth = backoff(3);
            assert!(
                fourth >= Duration::from_secs(8) && fourth < Duration::from_secs(24),
                "{fourth:?}"
            );
            let late = backoff(40);
            assert!(
                late >= Duration::from_secs(150) && late < Duration::from_secs(450),
                "{late:?}"
            );
        }
    }
}
