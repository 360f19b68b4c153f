//! What is said when the store cannot hold a message: a passive replica's
//! decisions and decisions made while the database does not answer go to
//! on-call directly, once each.

use super::*;

impl Actor {
    /// A decision this replica made while passive. One that needs a human
    /// (a page, or a rollback only an owner may run) is the owner's to tell,
    /// through the outbox, while the database answers. When it does not, no
    /// replica may own the target, and none can store a page: this one tells
    /// on-call itself, once per incident, rather than nobody telling anyone.
    pub async fn passive_decision(&mut self, decision: &Decision) {
        if !(decision.action.pages() || decision.action.may_roll_back())
            || self.told_without_database.contains(&told_key(decision))
        {
            return;
        }
        // Any read: it fails after the store's connect timeout when the
        // database does not answer.
        if self.store.deployments(&self.name, 1).await.is_ok() {
            return;
        }
        self.tell_without_database(
            decision,
            "this replica cannot reach its database, so it owns the target no longer and acts on nothing",
        )
        .await;
    }

    /// Sends the "database unreachable" escalation of `decision` on the
    /// policy's escalation channels without the outbox (best effort, one
    /// attempt: `deliver::send_without_outbox`), once per incident.
    pub(super) async fn tell_without_database(&mut self, decision: &Decision, why: &str) {
        let key = told_key(decision);
        if !self.told_without_database.insert(key.clone()) {
            return;
        }
        let message = message::database_unreachable(&self.target.policy, decision, why);
        self.say(&format!(
            "{} {} {}; telling on-call without the outbox",
            time_text(decision.at),
            self.name,
            message.subject
        ));
        let notifications = message.addressed(
            self.target.notify.as_ref(),
            &DedupeKey::DatabaseUnreachable {
                target: self.name.clone(),
                told: key,
            },
        );
        deliver::send_without_outbox(self.target.notify.as_ref(), &notifications).await;
    }

    /// Puts the decision's message in the outbox, once per channel its kind
    /// is routed to; false when it cannot be stored.
    pub(super) async fn tell(
        &self,
        incident: Option<i64>,
        decision: &Decision,
        key: &DedupeKey,
    ) -> bool {
        let policy = &self.target.policy;
        let Some(message) =
            message::for_decision(policy, decision, incident, self.store.database())
        else {
            return true;
        };
        let mut unstored = Vec::new();
        for notification in message.addressed(self.target.notify.as_ref(), key) {
            let stored = if failpoint::fails("enqueue-notification") {
                Err(StoreError::Invalid {
                    what: "notification",
                    reason: "refused by ROLLWATCH_FAILPOINT=fail:enqueue-notification".into(),
                })
            } else {
                self.store
                    .enqueue_notification(&notification)
                    .await
                    .map(drop)
            };
            if let Err(error) = stored {
                tracing::error!(target_name = %self.name, channel = %notification.channel, %error, "cannot store the notification");
                unstored.push(notification);
            }
        }
        if unstored.is_empty() {
            self.delivery.notify_one();
            return true;
        }
        // What asks a human goes out anyway, once, without the outbox.
        if matches!(
            message.kind,
            NotificationKind::Page | NotificationKind::Escalation
        ) {
            deliver::send_without_outbox(self.target.notify.as_ref(), &unstored).await;
        }
        false
    }
}

/// What `told_without_database` remembers of a decision: its engine
/// incident, or its rule when it has none.
fn told_key(decision: &Decision) -> String {
    match decision.incident {
        Some(incident) => format!("incident:{incident}"),
        None => format!("rule:{}", decision.rule),
    }
}
