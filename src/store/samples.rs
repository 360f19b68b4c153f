//! What the target looked like around an incident: the points of its report's
//! chart. Written when the incident opens (the engine's recent history) and at
//! every poll until it is resolved.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::ops::{get, time};
use super::time::StoredTime;
use super::{Store, StoreError, on_backend, query_failed};

/// One poll, as the chart needs it. Counts are per interval; `None` is unknown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SamplePoint {
    pub at: DateTime<Utc>,
    pub up: Option<bool>,
    pub requests: Option<f64>,
    pub errors: Option<f64>,
    pub users: Option<f64>,
    pub users_affected: Option<f64>,
    /// The policy's latency quantile, in milliseconds.
    pub latency_ms: Option<f64>,
}

impl SamplePoint {
    /// errors / requests, when both are known and there were requests.
    pub fn error_rate(&self) -> Option<f64> {
        match (self.requests, self.errors) {
            (Some(requests), Some(errors)) if requests > 0.0 => Some(errors / requests),
            _ => None,
        }
    }
}

impl Store {
    /// Stores an incident's samples; a sample already stored for the same
    /// instant is kept (idempotent after a restart).
    pub async fn record_samples(
        &self,
        incident: i64,
        samples: &[SamplePoint],
    ) -> Result<(), StoreError> {
        if samples.is_empty() {
            return Ok(());
        }
        on_backend!(self, pool => {
            let mut tx = pool
                .begin_with(self.begin_statement())
                .await
                .map_err(query_failed("record samples"))?;
            for sample in samples {
                sqlx::query(
                    "INSERT INTO incident_samples (incident_id, at, up, requests, errors, users, \
                     users_affected, latency_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                     ON CONFLICT (incident_id, at) DO NOTHING",
                )
                .bind(incident)
                .bind(StoredTime(sample.at))
                .bind(sample.up)
                .bind(sample.requests)
                .bind(sample.errors)
                .bind(sample.users)
                .bind(sample.users_affected)
                .bind(sample.latency_ms)
                .execute(&mut *tx)
                .await
                .map_err(query_failed("record samples"))?;
            }
            tx.commit().await.map_err(query_failed("record samples"))
        })
    }

    /// The instant of an incident's latest sample: the last time rollwatch
    /// observed the target for it.
    pub async fn last_sample_at(&self, incident: i64) -> Result<Option<DateTime<Utc>>, StoreError> {
        on_backend!(self, pool => {
            let row = sqlx::query(
                "SELECT at FROM incident_samples WHERE incident_id = $1 ORDER BY at DESC LIMIT 1",
            )
            .bind(incident)
            .fetch_optional(pool)
            .await
            .map_err(query_failed("find the latest sample"))?;
            match row {
                Some(row) => Ok(Some(time(&row, "sample", "at")?)),
                None => Ok(None),
            }
        })
    }

    /// An incident's samples in time order.
    pub async fn samples(&self, incident: i64) -> Result<Vec<SamplePoint>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM incident_samples WHERE incident_id = $1 ORDER BY at",
            )
            .bind(incident)
            .fetch_all(pool)
            .await
            .map_err(query_failed("list samples"))?;
            let what = "sample";
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(SamplePoint {
                    at: time(row, what, "at")?,
                    up: get(row, what, "up")?,
                    requests: get(row, what, "requests")?,
                    errors: get(row, what, "errors")?,
                    users: get(row, what, "users")?,
                    users_affected: get(row, what, "users_affected")?,
                    latency_ms: get(row, what, "latency_ms")?,
                });
            }
            Ok(out)
        })
    }
}
