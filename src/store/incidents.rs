//! Incidents: opening, their phase, resolution and reading them back.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::ops::{
    at, get, is_unique_violation, optional, optional_time, optional_word, time, unfenced, word,
};
use super::{
    IncidentOutcome, IncidentPhase, IncidentRecord, IncidentState, IncidentTimeline, NewIncident,
    Store, StoreError, UnfinishedIncident, on_backend, query_failed,
};

macro_rules! incident_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "incident";
        let outcome: Option<IncidentOutcome> = optional_word(row, "incidents", "outcome")?;
        let resolved_at = optional_time(row, what, "resolved_at")?;
        let state = match (resolved_at, outcome) {
            (Some(at), Some(outcome)) => IncidentState::Resolved { at, outcome },
            _ => IncidentState::Active {
                phase: word(row, "incidents", "phase")?,
            },
        };
        IncidentRecord {
            id: get(row, what, "id")?,
            target: get(row, what, "target")?,
            kind: word(row, "incidents", "kind")?,
            tier: word(row, "incidents", "tier")?,
            rule: get(row, what, "rule")?,
            reason: get(row, what, "reason")?,
            component: get(row, what, "component")?,
            from_version: get(row, what, "from_version")?,
            to_version: get(row, what, "to_version")?,
            opened_at: time(row, what, "opened_at")?,
            state,
            phase_at: time(row, what, "phase_at")?,
            deadline: optional_time(row, what, "deadline")?,
            watch_until: optional_time(row, what, "watch_until")?,
            acknowledged: get(row, what, "acknowledged")?,
            held: get(row, what, "held")?,
            clear_since: optional_time(row, what, "clear_since")?,
        }
    }};
}

impl Store {
    /// Opens an incident in phase `open`; returns its id. A target has at most
    /// one unresolved incident (drills aside): a second one is
    /// `IncidentAlreadyOpen` naming the first.
    pub async fn open_incident(&self, incident: &NewIncident) -> Result<i64, StoreError> {
        let inserted = on_backend!(self, pool => {
            sqlx::query(
                sqlx::AssertSqlSafe(format!(
                    "INSERT INTO incidents (target, kind, tier, rule, reason, component, from_version, \
                     to_version, opened_at, phase, phase_at, deadline) \
                     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, 'open', $9, $10 WHERE {} RETURNING id",
                    unfenced(11)
                )),
            )
            .bind(incident.target.clone())
            .bind(incident.kind.as_str())
            .bind(incident.tier.as_str())
            .bind(incident.rule.clone())
            .bind(incident.reason.clone())
            .bind(incident.component.clone())
            .bind(incident.from_version.clone())
            .bind(incident.to_version.clone())
            .bind(at(incident.opened_at))
            .bind(optional(incident.deadline))
            .bind(self.fence_target())
            .bind(self.fence_epoch())
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
        });
        match inserted {
            Ok(id) => Ok(id),
            Err(sqlx::Error::RowNotFound) => {
                Err(self.fenced_out().await.unwrap_or(StoreError::Invalid {
                    what: "incident",
                    reason: "the insert stored nothing".to_string(),
                }))
            }
            Err(error) if is_unique_violation(&error) => {
                let existing = self
                    .unresolved_incident_id(&incident.target)
                    .await?
                    .unwrap_or_default();
                Err(StoreError::IncidentAlreadyOpen {
                    target: incident.target.clone(),
                    existing,
                })
            }
            Err(error) => Err(query_failed("open incident")(error)),
        }
    }

    async fn unresolved_incident_id(&self, target: &str) -> Result<Option<i64>, StoreError> {
        on_backend!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "SELECT id FROM incidents WHERE target = $1 AND phase <> 'resolved' \
                 AND kind <> 'drill' ORDER BY id LIMIT 1",
            )
            .bind(target.to_string())
            .fetch_optional(pool)
            .await
            .map_err(query_failed("find unresolved incident"))
        })
    }

    /// After an UPDATE of an unresolved incident changed nothing: which error?
    async fn incident_not_changed(&self, id: i64) -> StoreError {
        if let Some(fenced) = self.fenced_out().await {
            return fenced;
        }
        let exists = on_backend!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT id FROM incidents WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        });
        match exists {
            Ok(Some(_)) => StoreError::IncidentResolved(id),
            Ok(None) => StoreError::NoSuchIncident(id),
            Err(error) => query_failed("find incident")(error),
        }
    }

    /// Moves an unresolved incident to `phase` at `at`. `watch_until`, when
    /// given, is stored too (the end of the stabilization watch).
    pub async fn set_incident_phase(
        &self,
        id: i64,
        phase: IncidentPhase,
        at_: DateTime<Utc>,
        watch_until: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query(
                sqlx::AssertSqlSafe(format!(
                    "UPDATE incidents SET phase = $2, phase_at = $3, \
                     watch_until = COALESCE($4, watch_until) \
                     WHERE id = $1 AND phase <> 'resolved' AND {}",
                    unfenced(5)
                )),
            )
            .bind(id)
            .bind(phase.as_str())
            .bind(at(at_))
            .bind(optional(watch_until))
            .bind(self.fence_target())
            .bind(self.fence_epoch())
            .execute(pool)
            .await
            .map_err(query_failed("set incident phase"))?
            .rows_affected()
        });
        if changed == 0 {
            return Err(self.incident_not_changed(id).await);
        }
        Ok(())
    }

    /// A human takes an open incident over with a rollback of their own: what
    /// is rolled back (component, versions) and why become theirs.
    pub async fn amend_incident(
        &self,
        id: i64,
        component: Option<&str>,
        from_version: Option<&str>,
        to_version: Option<&str>,
        reason: &str,
    ) -> Result<(), StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query(
                sqlx::AssertSqlSafe(format!(
                    "UPDATE incidents SET component = $2, from_version = $3, to_version = $4, \
                     reason = $5 WHERE id = $1 AND phase <> 'resolved' AND {}",
                    unfenced(6)
                )),
            )
            .bind(id)
            .bind(component.map(str::to_string))
            .bind(from_version.map(str::to_string))
            .bind(to_version.map(str::to_string))
            .bind(reason.to_string())
            .bind(self.fence_target())
            .bind(self.fence_epoch())
            .execute(pool)
            .await
            .map_err(query_failed("amend incident"))?
            .rows_affected()
        });
        if changed == 0 {
            return Err(self.incident_not_changed(id).await);
        }
        Ok(())
    }

    /// Sets or clears the page-then-rollback deadline of an unresolved incident.
    pub async fn set_incident_deadline(
        &self,
        id: i64,
        deadline: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE incidents SET deadline = $2 WHERE id = $1 AND phase <> 'resolved' AND {}",
                unfenced(3)
            )))
                .bind(id)
                .bind(optional(deadline))
                .bind(self.fence_target())
                .bind(self.fence_epoch())
                .execute(pool)
                .await
                .map_err(query_failed("set incident deadline"))?
                .rows_affected()
        });
        if changed == 0 {
            return Err(self.incident_not_changed(id).await);
        }
        Ok(())
    }

    /// Sets or clears the instant an unresolved incident's rules have been
    /// clear since (`IncidentRecord::clear_since`).
    pub async fn set_incident_clear_since(
        &self,
        id: i64,
        clear_since: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query("UPDATE incidents SET clear_since = $2 WHERE id = $1 AND phase <> 'resolved'")
                .bind(id)
                .bind(optional(clear_since))
                .execute(pool)
                .await
                .map_err(query_failed("set incident clear_since"))?
                .rows_affected()
        });
        if changed == 0 {
            return Err(self.incident_not_changed(id).await);
        }
        Ok(())
    }

    /// Resolves an incident: it leaves `unfinished_incidents` for good.
    pub async fn resolve_incident(
        &self,
        id: i64,
        outcome: IncidentOutcome,
        at_: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query(
                sqlx::AssertSqlSafe(format!(
                    "UPDATE incidents SET phase = 'resolved', phase_at = $3, resolved_at = $3, \
                     outcome = $2 WHERE id = $1 AND phase <> 'resolved' AND {}",
                    unfenced(4)
                )),
            )
            .bind(id)
            .bind(outcome.as_str())
            .bind(at(at_))
            .bind(self.fence_target())
            .bind(self.fence_epoch())
            .execute(pool)
            .await
            .map_err(query_failed("resolve incident"))?
            .rows_affected()
        });
        if changed == 0 {
            return Err(self.incident_not_changed(id).await);
        }
        Ok(())
    }

    /// The newest incidents first.
    pub async fn list_incidents(&self, limit: i64) -> Result<Vec<IncidentRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM incidents ORDER BY opened_at DESC, id DESC LIMIT $1",
            )
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(query_failed("list incidents"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(incident_from_row!(row));
            }
            Ok(out)
        })
    }

    async fn incident_record(&self, id: i64) -> Result<Option<IncidentRecord>, StoreError> {
        on_backend!(self, pool => {
            let row = sqlx::query("SELECT * FROM incidents WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
                .map_err(query_failed("read incident"))?;
            match row {
                Some(row) => Ok(Some(incident_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// The target's latest drill, if any.
    pub async fn last_drill(&self, target: &str) -> Result<Option<IncidentRecord>, StoreError> {
        on_backend!(self, pool => {
            let row = sqlx::query(
                "SELECT * FROM incidents WHERE target = $1 AND kind = 'drill' \
                 ORDER BY opened_at DESC, id DESC LIMIT 1",
            )
            .bind(target.to_string())
            .fetch_optional(pool)
            .await
            .map_err(query_failed("find the last drill"))?;
            match row {
                Some(row) => Ok(Some(incident_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// An incident with its timeline (decisions, steps, answers,
    /// notifications, each in time order); `None` when there is no such id.
    pub async fn incident(&self, id: i64) -> Result<Option<IncidentTimeline>, StoreError> {
        let Some(incident) = self.incident_record(id).await? else {
            return Ok(None);
        };
        Ok(Some(IncidentTimeline {
            incident,
            decisions: self.decisions(id).await?,
            steps: self.steps(id).await?,
            answers: self.answers(id).await?,
            notifications: self.notifications(id).await?,
        }))
    }

    /// The target's unresolved incidents (oldest first) with their steps: what
    /// a restarted rollwatch must pick up. A step with outcome `running` was
    /// started and never finished: it may have run.
    pub async fn unfinished_incidents(
        &self,
        target: &str,
    ) -> Result<Vec<UnfinishedIncident>, StoreError> {
        let incidents: Vec<IncidentRecord> = on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM incidents WHERE target = $1 AND phase <> 'resolved' \
                 ORDER BY opened_at, id",
            )
            .bind(target.to_string())
            .fetch_all(pool)
            .await
            .map_err(query_failed("list unfinished incidents"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(incident_from_row!(row));
            }
            out
        });
        let mut unfinished = Vec::with_capacity(incidents.len());
        for incident in incidents {
            let steps = self.steps(incident.id).await?;
            unfinished.push(UnfinishedIncident { incident, steps });
        }
        Ok(unfinished)
    }
}
