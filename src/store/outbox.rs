//! The notification outbox: notifications are stored first and delivered by a
//! worker that asks for the due ones, so an SMTP or webhook outage delays a
//! page but never drops it. The unique `dedupe_key` makes enqueueing
//! idempotent: one incident pages once however often it is asked to. A
//! worker claims a row (with a lease) before each attempt and only the
//! claimant records its outcome, so two workers never send one row at once.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::types::Json;

use super::ops::{get, optional_time, time, word};
use super::time::StoredTime;
use super::{
    Enqueued, NewNotification, NotificationRecord, Store, StoreError, on_backend, query_failed,
};

macro_rules! notification_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "notification";
        let recipients: Json<Vec<String>> = get(row, what, "recipients")?;
        NotificationRecord {
            id: get(row, what, "id")?,
            incident: get(row, what, "incident_id")?,
            kind: word(row, "notifications", "kind")?,
            channel: get(row, what, "channel")?,
            recipients: recipients.0,
            subject: get(row, what, "subject")?,
            body: get(row, what, "body")?,
            dedupe_key: get(row, what, "dedupe_key")?,
            state: word(row, "notifications", "state")?,
            attempts: get(row, what, "attempts")?,
            next_attempt_at: time(row, what, "next_attempt_at")?,
            last_error: get(row, what, "last_error")?,
            created_at: time(row, what, "created_at")?,
            sent_at: optional_time(row, what, "sent_at")?,
            target: get(row, what, "target")?,
            details: {
                let details: Json<serde_json::Value> = get(row, what, "details")?;
                details.0
            },
        }
    }};
}

impl Store {
    /// Puts a notification in the outbox, due at once. When its dedupe key is
    /// already taken nothing is added and the earlier one's id comes back.
    pub async fn enqueue_notification(
        &self,
        notification: &NewNotification,
    ) -> Result<Enqueued, StoreError> {
        let inserted: Option<i64> = on_backend!(self, pool => {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
                "INSERT INTO notifications (incident_id, kind, channel, recipients, subject, body, \
                 dedupe_key, state, attempts, next_attempt_at, created_at, target, details) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $9, $10 WHERE {} \
                 ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
                super::ops::unfenced(11)
            )))
            .bind(notification.incident)
            .bind(notification.kind.as_str())
            .bind(notification.channel.clone())
            .bind(Json(notification.recipients.clone()))
            .bind(notification.subject.clone())
            .bind(notification.body.clone())
            .bind(notification.dedupe_key.clone())
            .bind(StoredTime(notification.created_at))
            .bind(notification.target.clone())
            .bind(Json(notification.details.clone()))
            .bind(self.fence_target())
            .bind(self.fence_epoch())
            .fetch_optional(pool)
            .await
            .map_err(query_failed("enqueue notification"))?
        });
        if let Some(id) = inserted {
            return Ok(Enqueued::New(id));
        }
        if let Some(fenced) = self.fenced_out().await {
            return Err(fenced);
        }
        let existing = on_backend!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT id FROM notifications WHERE dedupe_key = $1")
                .bind(notification.dedupe_key.clone())
                .fetch_one(pool)
                .await
                .map_err(query_failed("find notification by dedupe key"))?
        });
        Ok(Enqueued::Duplicate(existing))
    }

    /// Pending notifications whose next attempt is due at `now`, earliest
    /// first, at most `limit`.
    pub async fn due_notifications(
        &self,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM notifications WHERE state = 'pending' AND next_attempt_at <= $1 \
                 ORDER BY next_attempt_at, id LIMIT $2",
            )
            .bind(StoredTime(now))
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(query_failed("list due notifications"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(notification_from_row!(row));
            }
            Ok(out)
        })
    }

    /// The oldest pending notification of every channel (per target), due or
    /// not: a channel delivers in order, so a later message never overtakes
    /// one that waits for a retry.
    pub async fn channel_heads(&self) -> Result<Vec<NotificationRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT n.* FROM notifications n JOIN ( \
                   SELECT target, channel, MIN(id) AS id FROM notifications \
                   WHERE state = 'pending' GROUP BY target, channel \
                 ) head ON n.id = head.id ORDER BY n.next_attempt_at, n.id",
            )
            .fetch_all(pool)
            .await
            .map_err(query_failed("list pending notifications"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(notification_from_row!(row));
            }
            Ok(out)
        })
    }

    /// The first notification of an incident on a channel (the one later
    /// messages there follow up), if any.
    pub async fn first_notification(
        &self,
        incident: i64,
        channel: &str,
    ) -> Result<Option<NotificationRecord>, StoreError> {
        on_backend!(self, pool => {
            let row = sqlx::query(
                "SELECT * FROM notifications WHERE incident_id = $1 AND channel = $2 \
                 ORDER BY id LIMIT 1",
            )
            .bind(incident)
            .bind(channel.to_string())
            .fetch_optional(pool)
            .await
            .map_err(query_failed("find an incident's first notification"))?;
            match row {
                Some(row) => Ok(Some(notification_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// Notifications that finally failed, newest first (status, metrics).
    pub async fn failed_notifications(
        &self,
        limit: i64,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM notifications WHERE state = 'failed' ORDER BY id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(query_failed("list failed notifications"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(notification_from_row!(row));
            }
            Ok(out)
        })
    }

    /// An incident's notifications in the order they were created.
    pub async fn notifications(
        &self,
        incident: i64,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM notifications WHERE incident_id = $1 ORDER BY created_at, id",
            )
            .bind(incident)
            .fetch_all(pool)
            .await
            .map_err(query_failed("list notifications"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(notification_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Claims a due pending notification for one delivery attempt by
    /// `claimant` (a token unique to one worker) until `lease_until`: the
    /// row's claim is taken in one conditional UPDATE, so of two workers
    /// asking at once one gets the row and the other `None`. A row whose
    /// earlier claimant's lease has expired (it died between sending and
    /// recording) can be claimed again. `None` also when the row is settled,
    /// not due at `now`, or gone. Only the claimant sends the row and
    /// records its outcome (`mark_notification_sent`, `..._failed`).
    ///
    /// Every condition of a claim lives in this one statement (a fencing
    /// epoch would be one more `AND`).
    pub async fn claim_notification(
        &self,
        id: i64,
        claimant: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<Option<NotificationRecord>, StoreError> {
        self.claim_notification_fenced(id, claimant, now, lease_until, None)
            .await
    }

    /// `claim_notification` by a replica that owns the row's target at
    /// ownership epoch `epoch` (`Fence`): refused (`None`) once a newer owner
    /// exists, so a stalled owner that thaws sends nothing more. `None`: a
    /// lone rollwatch, no fencing.
    pub async fn claim_notification_fenced(
        &self,
        id: i64,
        claimant: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        epoch: Option<i64>,
    ) -> Result<Option<NotificationRecord>, StoreError> {
        on_backend!(self, pool => {
            let row = sqlx::query(
                "UPDATE notifications SET claimed_by = $2, claimed_until = $4 \
                 WHERE id = $1 AND state = 'pending' AND next_attempt_at <= $3 \
                 AND (claimed_until IS NULL OR claimed_until <= $3) \
                 AND NOT EXISTS (SELECT 1 FROM ownership o \
                     WHERE o.target = notifications.target AND o.epoch > $5) \
                 RETURNING *",
            )
            .bind(id)
            .bind(claimant.to_string())
            .bind(StoredTime(now))
            .bind(StoredTime(lease_until))
            .bind(epoch.unwrap_or(i64::MAX))
            .fetch_optional(pool)
            .await
            .map_err(query_failed("claim notification"))?;
            match row {
                Some(row) => Ok(Some(notification_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// The notification `claimant` claimed was delivered: true when
    /// recorded; false when the claim was lost (another worker claimed the
    /// row after the lease expired, or it is settled already), which
    /// changes nothing.
    pub async fn mark_notification_sent(
        &self,
        id: i64,
        claimant: &str,
        sent_at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query(
                "UPDATE notifications SET state = 'sent', sent_at = $2, attempts = attempts + 1, \
                 last_error = NULL, claimed_by = NULL, claimed_until = NULL \
                 WHERE id = $1 AND state = 'pending' AND claimed_by = $3",
            )
            .bind(id)
            .bind(StoredTime(sent_at))
            .bind(claimant.to_string())
            .execute(pool)
            .await
            .map_err(query_failed("mark notification sent"))?
            .rows_affected()
        });
        self.settled_or_missing(id, changed).await
    }

    /// An attempt by `claimant` failed: try again at `retry_at` (the claim
    /// is let go), or with `None` give up (state `failed`). `error` is kept
    /// as `last_error`. True when recorded, false when the claim was lost.
    pub async fn mark_notification_failed(
        &self,
        id: i64,
        claimant: &str,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query(
                "UPDATE notifications SET attempts = attempts + 1, last_error = $2, \
                 state = CASE WHEN $3 IS NULL THEN 'failed' ELSE 'pending' END, \
                 next_attempt_at = COALESCE($3, next_attempt_at), \
                 claimed_by = NULL, claimed_until = NULL \
                 WHERE id = $1 AND state = 'pending' AND claimed_by = $4",
            )
            .bind(id)
            .bind(error.to_string())
            .bind(retry_at.map(StoredTime))
            .bind(claimant.to_string())
            .execute(pool)
            .await
            .map_err(query_failed("mark notification failed"))?
            .rows_affected()
        });
        self.settled_or_missing(id, changed).await
    }

    /// True when the row changed; false when it exists but did not.
    async fn settled_or_missing(&self, id: i64, changed: u64) -> Result<bool, StoreError> {
        if changed > 0 {
            return Ok(true);
        }
        let exists = on_backend!(self, pool => {
            sqlx::query("SELECT id FROM notifications WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(query_failed("find notification"))?
                .map(|row| row.len())
        });
        match exists {
            Some(_) => Ok(false),
            None => Err(StoreError::NoSuchNotification(id)),
        }
    }
}
