//! Humans' answers and known-issue suppressions.

use chrono::{DateTime, Utc};

use super::ops::{at, get, time, word};
use super::{
    AnswerKind, AnswerRecord, NewAnswer, NewSuppression, Store, StoreError, SuppressionRecord,
    on_backend, query_failed,
};

macro_rules! answer_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "answer";
        AnswerRecord {
            id: get(row, what, "id")?,
            incident: get(row, what, "incident_id")?,
            kind: word(row, "answers", "kind")?,
            by: get(row, what, "answered_by")?,
            at: time(row, what, "at")?,
            note: get(row, what, "note")?,
        }
    }};
}

macro_rules! suppression_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "suppression";
        SuppressionRecord {
            id: get(row, what, "id")?,
            target: get(row, what, "target")?,
            rule: get(row, what, "rule")?,
            until: time(row, what, "until")?,
            reason: get(row, what, "reason")?,
            created_by: get(row, what, "created_by")?,
            created_at: time(row, what, "created_at")?,
        }
    }};
}

impl Store {
    /// Records a human's answer and, for `ack` and `hold`, sets the incident's
    /// flag, in one transaction; returns the answer's id.
    pub async fn record_answer(&self, answer: &NewAnswer) -> Result<i64, StoreError> {
        let acknowledged = answer.kind == AnswerKind::Ack;
        let held = answer.kind == AnswerKind::Hold;
        let id: Option<i64> = on_backend!(self, pool => {
            let failed = query_failed("record answer");
            let mut tx = pool
                .begin_with(self.begin_statement())
                .await
                .map_err(query_failed("record answer"))?;
            let exists = sqlx::query_scalar::<_, i64>("SELECT id FROM incidents WHERE id = $1")
                .bind(answer.incident)
                .fetch_optional(&mut *tx)
                .await
                .map_err(query_failed("record answer"))?;
            if exists.is_none() {
                None
            } else {
                let id = sqlx::query_scalar::<_, i64>(
                    "INSERT INTO answers (incident_id, kind, answered_by, at, note) \
                     VALUES ($1, $2, $3, $4, $5) RETURNING id",
                )
                .bind(answer.incident)
                .bind(answer.kind.as_str())
                .bind(answer.by.clone())
                .bind(at(answer.at))
                .bind(answer.note.clone())
                .fetch_one(&mut *tx)
                .await
                .map_err(query_failed("record answer"))?;
                sqlx::query(
                    "UPDATE incidents SET acknowledged = (acknowledged OR $2), held = (held OR $3) \
                     WHERE id = $1 AND phase <> 'resolved'",
                )
                .bind(answer.incident)
                .bind(acknowledged)
                .bind(held)
                .execute(&mut *tx)
                .await
                .map_err(query_failed("record answer"))?;
                tx.commit().await.map_err(failed)?;
                Some(id)
            }
        });
        id.ok_or(StoreError::NoSuchIncident(answer.incident))
    }

    /// An incident's answers in time order.
    pub async fn answers(&self, incident: i64) -> Result<Vec<AnswerRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT * FROM answers WHERE incident_id = $1 ORDER BY at, id")
                .bind(incident)
                .fetch_all(pool)
                .await
                .map_err(query_failed("list answers"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(answer_from_row!(row));
            }
            Ok(out)
        })
    }

    /// Adds a known-issue suppression; returns its id.
    pub async fn add_suppression(&self, suppression: &NewSuppression) -> Result<i64, StoreError> {
        if suppression.until <= suppression.created_at {
            return Err(StoreError::Invalid {
                what: "suppression",
                reason: "`until` must be later than its creation".to_string(),
            });
        }
        on_backend!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO suppressions (target, rule, until, reason, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            )
            .bind(suppression.target.clone())
            .bind(suppression.rule.clone())
            .bind(at(suppression.until))
            .bind(suppression.reason.clone())
            .bind(suppression.created_by.clone())
            .bind(at(suppression.created_at))
            .fetch_one(pool)
            .await
            .map_err(query_failed("add suppression"))
        })
    }

    /// The target's suppressions still in force at `now`, soonest to expire first.
    pub async fn active_suppressions(
        &self,
        target: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<SuppressionRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM suppressions WHERE target = $1 AND until > $2 ORDER BY until, id",
            )
            .bind(target.to_string())
            .bind(at(now))
            .fetch_all(pool)
            .await
            .map_err(query_failed("list suppressions"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(suppression_from_row!(row));
            }
            Ok(out)
        })
    }
}
