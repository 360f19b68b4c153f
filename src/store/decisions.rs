//! The engine's decisions, with the policy they were made under.

use sqlx::Row;
use sqlx::types::Json;

use super::ops::{
    at, get, is_foreign_key_violation, optional, optional_time, optional_word, time, unfenced, word,
};
use super::{DecisionRecord, Store, StoreError, on_backend, query_failed};
use crate::engine::decision::{Decision, Guard};
use crate::engine::policy::Policy;

macro_rules! decision_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "decision";
        let reading: Option<Json<serde_json::Value>> = get(row, what, "reading")?;
        DecisionRecord {
            id: get(row, what, "id")?,
            incident: get(row, what, "incident_id")?,
            target: get(row, what, "target")?,
            at: time(row, what, "at")?,
            action: word(row, "decisions", "action")?,
            tier: word(row, "decisions", "tier")?,
            rule: get(row, what, "rule")?,
            cause: word(row, "decisions", "cause")?,
            guard: optional_word(row, "decisions", "guard")?,
            explanation: get(row, what, "explanation")?,
            reading: reading.map(|r| r.0),
            deadline: optional_time(row, what, "deadline")?,
            component: get(row, what, "component")?,
            from_version: get(row, what, "from_version")?,
            to_version: get(row, what, "to_version")?,
            policy_path: get(row, what, "policy_path")?,
            policy_sha256: get(row, what, "policy_sha256")?,
        }
    }};
}

impl Store {
    /// Records one engine decision with the policy (path and content hash) it
    /// was made under; returns its id.
    pub async fn record_decision(
        &self,
        target: &str,
        incident: Option<i64>,
        decision: &Decision,
        policy: &Policy,
    ) -> Result<i64, StoreError> {
        let reading = match &decision.reading {
            Some(reading) => Some(Json(serde_json::to_value(reading).map_err(|e| {
                StoreError::Invalid {
                    what: "decision reading",
                    reason: e.to_string(),
                }
            })?)),
            None => None,
        };
        let inserted = on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO decisions (incident_id, target, at, action, tier, rule, cause, guard, \
                 explanation, reading, deadline, component, from_version, to_version, policy_path, \
                 policy_sha256) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16 \
                 WHERE {} RETURNING id",
                unfenced(17)
            )))
            .bind(incident)
            .bind(target.to_string())
            .bind(at(decision.at))
            .bind(decision.action.as_str())
            .bind(decision.tier.as_str())
            .bind(decision.rule.clone())
            .bind(decision.cause.as_str())
            .bind(decision.guard.map(Guard::as_str))
            .bind(decision.explanation.clone())
            .bind(reading)
            .bind(optional(decision.deadline))
            .bind(decision.component.clone())
            .bind(decision.from_version.clone())
            .bind(decision.to_version.clone())
            .bind(policy.path.clone())
            .bind(policy.sha256.clone())
            .bind(self.fence_target())
            .bind(self.fence_epoch())
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
        });
        match inserted {
            Err(sqlx::Error::RowNotFound) => {
                Err(self.fenced_out().await.unwrap_or(StoreError::Invalid {
                    what: "decision",
                    reason: "the insert stored nothing".to_string(),
                }))
            }
            Err(error) if is_foreign_key_violation(&error) => {
                Err(StoreError::NoSuchIncident(incident.unwrap_or_default()))
            }
            other => other.map_err(query_failed("record decision")),
        }
    }

    /// An incident's decisions in time order.
    pub async fn decisions(&self, incident: i64) -> Result<Vec<DecisionRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM decisions WHERE incident_id = $1 ORDER BY at, id",
            )
            .bind(incident)
            .fetch_all(pool)
            .await
            .map_err(query_failed("list decisions"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(decision_from_row!(row));
            }
            Ok(out)
        })
    }
}
