//! The notification outbox: notifications are stored first and delivered by a
//! worker that asks for the due ones, so an SMTP or webhook outage delays a
//! page but never drops it. The unique `dedupe_key` makes enqueueing
//! idempotent: one incident pages once however often it is asked to.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::types::Json;

use super::ops::{get, optional_time, time};
use super::time::StoredTime;
use super::{
    Enqueued, NewNotification, NotificationKind, NotificationRecord, NotificationState, Store,
    StoreError, on_backend, parse_word, query_failed,
};

macro_rules! notification_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "notification";
        let kind: String = get(row, what, "kind")?;
        let state: String = get(row, what, "state")?;
        let recipients: Json<Vec<String>> = get(row, what, "recipients")?;
        NotificationRecord {
            id: get(row, what, "id")?,
            incident: get(row, what, "incident_id")?,
            kind: parse_word(what, &kind, NotificationKind::parse)?,
            channel: get(row, what, "channel")?,
            recipients: recipients.0,
            subject: get(row, what, "subject")?,
            body: get(row, what, "body")?,
            dedupe_key: get(row, what, "dedupe_key")?,
            state: parse_word(what, &state, NotificationState::parse)?,
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
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO notifications (incident_id, kind, channel, recipients, subject, body, \
                 dedupe_key, state, attempts, next_attempt_at, created_at, target, details) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', 0, $8, $8, $9, $10) \
                 ON CONFLICT (dedupe_key) DO NOTHING RETURNING id",
            )
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
            .fetch_optional(pool)
            .await
            .map_err(query_failed("enqueue notification"))?
        });
        if let Some(id) = inserted {
            return Ok(Enqueued::New(id));
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

    /// A pending notification was delivered. Marking one that is already
    /// settled changes nothing.
    pub async fn mark_notification_sent(
        &self,
        id: i64,
        sent_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query(
                "UPDATE notifications SET state = 'sent', sent_at = $2, attempts = attempts + 1, \
                 last_error = NULL WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(StoredTime(sent_at))
            .execute(pool)
            .await
            .map_err(query_failed("mark notification sent"))?
            .rows_affected()
        });
        self.settled_or_missing(id, changed).await
    }

    /// A delivery attempt failed: try again at `retry_at`, or with `None` give
    /// up (state `failed`). `error` is kept as `last_error`.
    pub async fn mark_notification_failed(
        &self,
        id: i64,
        error: &str,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query(
                "UPDATE notifications SET attempts = attempts + 1, last_error = $2, \
                 state = CASE WHEN $3 IS NULL THEN 'failed' ELSE 'pending' END, \
                 next_attempt_at = COALESCE($3, next_attempt_at) \
                 WHERE id = $1 AND state = 'pending'",
            )
            .bind(id)
            .bind(error.to_string())
            .bind(retry_at.map(StoredTime))
            .execute(pool)
            .await
            .map_err(query_failed("mark notification failed"))?
            .rows_affected()
        });
        self.settled_or_missing(id, changed).await
    }

    async fn settled_or_missing(&self, id: i64, changed: u64) -> Result<(), StoreError> {
        if changed > 0 {
            return Ok(());
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
            Some(_) => Ok(()),
            None => Err(StoreError::NoSuchNotification(id)),
        }
    }
}
