//! The outbox worker: delivers stored messages channel by channel, in the
//! order they were stored, retrying with exponential backoff and jitter until
//! the channel's deadline. A channel outage delays messages, never drops or
//! reorders them; a message that finally fails is recorded as failed and
//! raises an escalation on another channel, once: an escalation that fails
//! is logged, counted and shown in status, and goes no further, so dead
//! channels add rows per message, never per minute. Each attempt claims its
//! row with a lease first (`Store::claim_notification`), so two workers (two
//! replicas) never send one row at once; every state change is stored before
//! the next attempt, so a restart neither loses nor repeats one (beyond the
//! single attempt in flight when the process died, which is sent again with
//! the same identity once its lease expires).
//!
//! Beside the deliveries, and never in their way, the owner of a target
//! re-posts its open incidents' Alertmanager alerts every minute.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use futures_util::StreamExt;

use super::channels::{self, SendError};
use super::dedupe::DedupeKey;
use super::message::{self, Details, LOG_CHANNEL, text_body};
use crate::policy::notify::{Channel, ChannelKind, NotifyConfig};
use crate::store::Fence;
use crate::store::{
    NewNotification, NotificationKind, NotificationRecord, NotificationState, Store,
};
use crate::telemetry::{ChannelLabels, DeliveryLabels, Telemetry};

/// The longest pause between two attempts on one message.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The first retry comes after about this long.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// The worker looks at the outbox at least this often.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// Two rounds are at least this far apart, whatever happens: the worker
/// never spins (a backlog drains at up to 20 messages a second per channel).
const MIN_PAUSE: Duration = Duration::from_millis(50);
/// A claim outlasts its attempt (the channel's timeout and a second) by
/// this much: time to record the outcome, and room for clocks of replicas
/// that disagree a little.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Open incidents' alerts are posted to Alertmanager again this often: it
/// resolves an alert nobody re-posts within its `resolve_timeout` (5m). A
/// refresh is cut off after as long, and posts at most this many at once.
const ALERT_REFRESH: Duration = Duration::from_secs(60);
const ALERT_REFRESH_CONCURRENCY: usize = 8;

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
    /// ... and claimed under its ownership epoch.
    fence: Option<Fence>,
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
            fence: None,
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
    /// Claims of `target`'s messages carry this replica's ownership epoch.
    pub fn set_fence(&self, target: &str, fence: Fence) {
        if let Some(route) = self
            .0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(target)
        {
            route.fence = Some(fence);
        }
    }

    fn epoch_of(&self, target: &str) -> Option<i64> {
        let routes = self.0.read().unwrap_or_else(|e| e.into_inner());
        routes
            .get(target)
            .and_then(|r| r.fence.as_ref())
            .map(Fence::epoch)
    }

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
    /// Who this worker is in the outbox's claims: host, process and a
    /// random part (two workers of one process are two claimants).
    claimant: String,
}

impl Worker {
    pub fn new(store: Store, routing: Routing, wake: Arc<Notify>) -> Worker {
        Worker {
            store,
            routing,
            wake,
            telemetry: None,
            claimant: format!(
                "{}:{}:{:08x}",
                crate::store::host_name(),
                std::process::id(),
                rand::random::<u32>()
            ),
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

    /// Counts every attempt in `rollwatch_notification_deliveries_total`
    /// and every escalation that could not be delivered in
    /// `rollwatch_undelivered_escalations_total`.
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

    /// Delivers, and refreshes the owned targets' alerts, until `shutdown`.
    /// The two go on side by side: a refresh waiting for a silent
    /// Alertmanager holds no message up.
    pub async fn run(self, shutdown: CancellationToken) {
        tokio::join!(self.deliver_until(&shutdown), self.refresh_until(&shutdown));
    }

    async fn deliver_until(&self, shutdown: &CancellationToken) {
        loop {
            let next = self.round(Utc::now()).await;
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(MIN_PAUSE) => {}
            }
            let wait = next.map_or(IDLE_CHECK, |at| {
                (at - Utc::now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(IDLE_CHECK)
            });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn refresh_until(&self, shutdown: &CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                refreshed = tokio::time::timeout(ALERT_REFRESH, self.refresh_alerts(Utc::now())) => {
                    if refreshed.is_err() {
                        tracing::warn!(
                            "refreshing the Alertmanager alerts took over {}s: cut off until the next refresh",
                            ALERT_REFRESH.as_secs()
                        );
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(ALERT_REFRESH) => {}
            }
        }
    }

    /// One pass at `now` (the wall clock, or a test's simulated one): every
    /// channel whose oldest pending message is due gets one attempt (channels
    /// in parallel). Returns when the next one is due: `now` only when this
    /// round settled a message (the channel's next one may be due at once),
    /// else later, or `None` when nothing waits.
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
        let attempts = due.iter().map(|n| self.claim_and_deliver(n, now));
        let outcomes = futures_util::future::join_all(attempts).await;
        let look_again = now + TimeDelta::from_std(IDLE_CHECK).unwrap_or_default();
        outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Attempt::Settled => now,
                Attempt::RetryAt(at) => at,
                // Held by another worker, or the store failed: after a pause.
                Attempt::NotMade => look_again,
            })
            .chain(waiting.iter().map(|n| n.next_attempt_at))
            .min()
    }

    /// Claims one due message and makes one attempt. A message another
    /// worker holds is left to it.
    async fn claim_and_deliver(&self, head: &NotificationRecord, now: DateTime<Utc>) -> Attempt {
        let config = self.routing.notify_of(&head.target);
        let channel = config.as_deref().and_then(|c| c.channel(&head.channel));
        // The attempt is bounded by `channels::send`; the lease outlasts it.
        let attempt = channel.map_or(Duration::ZERO, |c| c.timeout + Duration::from_secs(1));
        let lease_until =
            now + TimeDelta::from_std(attempt + LEASE_MARGIN).unwrap_or(TimeDelta::minutes(5));
        match self
            .store
            .claim_notification_fenced(
                head.id,
                &self.claimant,
                now,
                lease_until,
                self.routing.epoch_of(&head.target),
            )
            .await
        {
            Ok(Some(claimed)) => self.deliver(&claimed, channel, now).await,
            Ok(None) => {
                tracing::debug!(
                    notification = head.id,
                    "another worker holds this message; it is theirs to send"
                );
                Attempt::NotMade
            }
            Err(error) => {
                tracing::error!(%error, notification = head.id, "cannot claim the message; it waits");
                Attempt::NotMade
            }
        }
    }

    /// One attempt on one claimed message.
    async fn deliver(
        &self,
        notification: &NotificationRecord,
        channel: Option<&Channel>,
        now: DateTime<Utc>,
    ) -> Attempt {
        let result = if notification.channel == LOG_CHANNEL {
            log_message(notification);
            Ok(())
        } else {
            match channel {
                Some(channel) => {
                    let thread = self.thread_of(notification, channel).await;
                    channels::send(channel, notification, thread.as_deref()).await
                }
                None => Err(SendError::Permanent(format!(
                    "no channel \"{}\" in the policy of {} (it changed, or the target is not watched)",
                    notification.channel, notification.target
                ))),
            }
        };
        let deadline = channel.map_or(TimeDelta::hours(1), |c| {
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
                match self
                    .store
                    .mark_notification_sent(notification.id, &self.claimant, now)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => self.claim_lost(notification),
                    Err(error) => {
                        tracing::error!(%error, notification = notification.id, "delivered, but cannot record it: it is sent again (with the same identity) once its claim expires");
                    }
                }
                Attempt::Settled
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
                match self
                    .store
                    .mark_notification_failed(
                        notification.id,
                        &self.claimant,
                        &error.to_string(),
                        retry,
                    )
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        self.claim_lost(notification);
                        return Attempt::NotMade;
                    }
                    Err(store_error) => {
                        tracing::error!(%store_error, notification = notification.id, "cannot record the failed attempt");
                        return Attempt::NotMade;
                    }
                }
                match retry {
                    Some(at) => Attempt::RetryAt(at),
                    None => {
                        self.undeliverable(notification, &error, now).await;
                        Attempt::Settled
                    }
                }
            }
        }
    }

    fn claim_lost(&self, notification: &NotificationRecord) {
        tracing::warn!(
            notification = notification.id,
            channel = %notification.channel,
            "the attempt outlasted its claim and another worker took the message over: it may be delivered twice (with the same identity)"
        );
    }

    /// The identity of the first message of the incident on this channel,
    /// which an email answers so that one incident is one thread; `None`
    /// for the first itself, for messages of no incident, and on channels
    /// without threads.
    async fn thread_of(
        &self,
        notification: &NotificationRecord,
        channel: &Channel,
    ) -> Option<String> {
        if !matches!(channel.kind, ChannelKind::Email { .. }) {
            return None;
        }
        let incident = notification.incident?;
        let first = match self
            .store
            .first_notification(incident, &notification.channel)
            .await
        {
            Ok(first) => first?,
            Err(error) => {
                tracing::warn!(%error, notification = notification.id, "cannot find the incident's first message: this one starts a thread of its own");
                return None;
            }
        };
        (first.id != notification.id).then(|| message::identity(&first))
    }

    /// Re-posts the alert of every unresolved incident that has one on an
    /// Alertmanager channel, so it stays open there until rollwatch resolves
    /// it; only for the targets this replica sends for (a passive replica
    /// sends nothing). At most `ALERT_REFRESH_CONCURRENCY` posts at once,
    /// each bounded by its channel's timeout.
    pub async fn refresh_alerts(&self, now: DateTime<Utc>) {
        let incidents = match self.store.list_incidents(500).await {
            Ok(incidents) => incidents,
            Err(error) => {
                tracing::warn!(%error, "cannot list incidents to refresh their alerts");
                return;
            }
        };
        let mut posts = Vec::new();
        for incident in incidents.iter().filter(|i| {
            matches!(i.state, crate::store::IncidentState::Active { .. })
                && self.routing.sends_for(&i.target)
        }) {
            let Some(config) = self.routing.notify_of(&incident.target) else {
                continue;
            };
            let Ok(sent) = self.store.notifications(incident.id).await else {
                continue;
            };
            for channel in &config.channels {
                let ChannelKind::Alertmanager { url } = &channel.kind else {
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
                posts.push((incident.id, channel.clone(), url.clone(), details));
            }
        }
        futures_util::stream::iter(posts)
            .for_each_concurrent(ALERT_REFRESH_CONCURRENCY, |(incident, channel, url, details)| async move {
                if let Err(error) = channels::post_alert(url.expose(), channel.timeout, &details, now).await {
                    tracing::warn!(incident, channel = %channel.name, %error, "cannot refresh the alert");
                }
            })
            .await;
    }

    /// A message that finally failed escalates on another channel (the
    /// log when there is none), once: an escalation that fails (including
    /// this one) is not escalated again but logged, counted and left failed,
    /// where status shows it.
    async fn undeliverable(
        &self,
        failed: &NotificationRecord,
        error: &SendError,
        now: DateTime<Utc>,
    ) {
        if failed.kind == NotificationKind::Escalation {
            tracing::error!(
                notification = failed.id,
                channel = %failed.channel,
                incident = ?failed.incident,
                %error,
                "UNDELIVERED ESCALATION, not escalated again (see undelivered in status): {}\n{}",
                failed.subject,
                failed.body
            );
            if let Some(telemetry) = &self.telemetry {
                telemetry
                    .undelivered_escalations
                    .get_or_create(&ChannelLabels {
                        channel: failed.channel.clone(),
                    })
                    .inc();
            }
            return;
        }
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
        let fallback = self.routing.notify_of(&failed.target).and_then(|config| {
            config
                .routes
                .escalation
                .iter()
                .chain(&config.routes.page)
                .filter(|name| **name != failed.channel)
                .find_map(|name| config.channel(name))
                .map(|c| (c.name.clone(), c.kind.recipients()))
        });
        let (channel, recipients) =
            fallback.unwrap_or_else(|| (LOG_CHANNEL.to_string(), Vec::new()));
        let escalation = NewNotification {
            incident: failed.incident,
            kind: NotificationKind::Escalation,
            dedupe_key: DedupeKey::Undeliverable {
                notification: failed.id,
            }
            .for_channel(&channel),
            channel,
            recipients,
            subject: details.summary.clone(),
            body: text_body(&details, now),
            created_at: now,
            target: failed.target.clone(),
            details: serde_json::to_value(&details).unwrap_or_default(),
        };
        if let Err(store_error) = self.store.enqueue_notification(&escalation).await {
            tracing::error!(%store_error, "cannot store the escalation of an undeliverable message");
        }
    }
}

/// Sends `notifications` at once, one attempt each, without the outbox: for
/// a message a human must get while the database that holds the outbox does
/// not answer. Best effort by design: nothing is stored, retried or
/// deduplicated across replicas (two replicas that both lost the database
/// may both send), and the log gets every message whatever the channels do.
/// Returns how many reached a channel other than the log.
pub async fn send_without_outbox(
    notify: Option<&NotifyConfig>,
    notifications: &[NewNotification],
) -> usize {
    let mut delivered = 0;
    for notification in notifications {
        let record = NotificationRecord {
            id: 0,
            incident: notification.incident,
            kind: notification.kind,
            channel: notification.channel.clone(),
            recipients: notification.recipients.clone(),
            subject: notification.subject.clone(),
            body: notification.body.clone(),
            dedupe_key: notification.dedupe_key.clone(),
            state: NotificationState::Pending,
            attempts: 0,
            next_attempt_at: notification.created_at,
            last_error: None,
            created_at: notification.created_at,
            sent_at: None,
            target: notification.target.clone(),
            details: notification.details.clone(),
        };
        log_message(&record);
        if record.channel == LOG_CHANNEL {
            continue;
        }
        let Some(channel) = notify.and_then(|n| n.channel(&record.channel)) else {
            continue;
        };
        match channels::send(channel, &record, None).await {
            Ok(()) => {
                delivered += 1;
                tracing::warn!(channel = %record.channel, "sent without the outbox: {}", record.subject);
            }
            Err(error) => {
                tracing::error!(channel = %record.channel, %error, "cannot send without the outbox (not retried): {}", record.subject);
            }
        }
    }
    delivered
}

/// What one round did with one channel's head.
enum Attempt {
    /// Sent, or failed for good.
    Settled,
    /// Failed; the next attempt is due then.
    RetryAt(DateTime<Utc>),
    /// No attempt: another worker holds the message, or the store failed.
    NotMade,
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
