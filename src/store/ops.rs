//! Deployments, incidents, decisions, steps, answers and suppressions.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::time::StoredTime;
use super::{
    AnswerKind, AnswerRecord, DecisionRecord, DeploymentRecord, DeploymentSource, IncidentKind,
    IncidentOutcome, IncidentPhase, IncidentRecord, IncidentState, IncidentTimeline, NewAnswer,
    NewDeployment, NewIncident, NewStep, NewSuppression, StepEnd, StepOutcome, StepRecord,
    StepStage, Store, StoreError, SuppressionRecord, UnfinishedIncident, keep_tail, on_backend,
    parse_word, query_failed,
};
use crate::engine::decision::Decision;
use crate::engine::policy::Policy;

/// One column of a row, or a `Corrupt` error naming what was being read.
pub(super) fn get<'r, R, T>(row: &'r R, what: &'static str, column: &str) -> Result<T, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(column).map_err(|e| StoreError::Corrupt {
        what,
        reason: format!("column {column}: {e}"),
    })
}

pub(super) fn time<'r, R>(
    row: &'r R,
    what: &'static str,
    column: &str,
) -> Result<DateTime<Utc>, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    StoredTime: Decode<'r, R::Database> + Type<R::Database>,
{
    get::<R, StoredTime>(row, what, column).map(|t| t.0)
}

pub(super) fn optional_time<'r, R>(
    row: &'r R,
    what: &'static str,
    column: &str,
) -> Result<Option<DateTime<Utc>>, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    Option<StoredTime>: Decode<'r, R::Database> + Type<R::Database>,
{
    get::<R, Option<StoredTime>>(row, what, column).map(|t| t.map(|t| t.0))
}

fn at(at: DateTime<Utc>) -> StoredTime {
    StoredTime(at)
}

fn optional(at: Option<DateTime<Utc>>) -> Option<StoredTime> {
    at.map(StoredTime)
}

macro_rules! deployment_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "deployment";
        let source: String = get(row, what, "source")?;
        let migrations: Json<Vec<String>> = get(row, what, "migrations")?;
        DeploymentRecord {
            id: get(row, what, "id")?,
            target: get(row, what, "target")?,
            version: get(row, what, "version")?,
            previous: get(row, what, "previous")?,
            migrations: migrations.0,
            at: time(row, what, "at")?,
            rollback: get(row, what, "is_rollback")?,
            source: parse_word(what, &source, DeploymentSource::parse)?,
        }
    }};
}

macro_rules! incident_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "incident";
        let kind: String = get(row, what, "kind")?;
        let phase: String = get(row, what, "phase")?;
        let outcome: Option<String> = get(row, what, "outcome")?;
        let resolved_at = optional_time(row, what, "resolved_at")?;
        let state = match (resolved_at, outcome) {
            (Some(at), Some(outcome)) => IncidentState::Resolved {
                at,
                outcome: parse_word(what, &outcome, IncidentOutcome::parse)?,
            },
            _ => IncidentState::Active {
                phase: parse_word(what, &phase, IncidentPhase::parse)?,
            },
        };
        IncidentRecord {
            id: get(row, what, "id")?,
            target: get(row, what, "target")?,
            kind: parse_word(what, &kind, IncidentKind::parse)?,
            tier: get(row, what, "tier")?,
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
            action: get(row, what, "action")?,
            tier: get(row, what, "tier")?,
            rule: get(row, what, "rule")?,
            cause: get(row, what, "cause")?,
            guard: get(row, what, "guard")?,
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

macro_rules! step_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "step";
        let stage: String = get(row, what, "stage")?;
        let outcome: String = get(row, what, "outcome")?;
        let argv: Json<Vec<String>> = get(row, what, "argv")?;
        let duration_ms: Option<i64> = get(row, what, "duration_ms")?;
        let timeout_ms: Option<i64> = get(row, what, "timeout_ms")?;
        StepRecord {
            id: get(row, what, "id")?,
            incident: get(row, what, "incident_id")?,
            name: get(row, what, "name")?,
            stage: parse_word(what, &stage, StepStage::parse)?,
            component: get(row, what, "component")?,
            argv: argv.0,
            started_at: time(row, what, "started_at")?,
            ended_at: optional_time(row, what, "ended_at")?,
            outcome: parse_word(what, &outcome, StepOutcome::parse)?,
            exit_code: get(row, what, "exit_code")?,
            detail: get(row, what, "detail")?,
            stdout: get(row, what, "stdout")?,
            stderr: get(row, what, "stderr")?,
            duration: duration_ms
                .map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
            runner: get(row, what, "runner")?,
            heartbeat_at: optional_time(row, what, "heartbeat_at")?,
            step_pgid: get(row, what, "step_pgid")?,
            timeout: timeout_ms
                .map(|ms| std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))),
        }
    }};
}

macro_rules! answer_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "answer";
        let kind: String = get(row, what, "kind")?;
        AnswerRecord {
            id: get(row, what, "id")?,
            incident: get(row, what, "incident_id")?,
            kind: parse_word(what, &kind, AnswerKind::parse)?,
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

/// SQL that holds while no owner of the fence's target newer than this
/// replica exists; binds `$first` (the target) and `$first + 1` (the epoch).
pub(super) fn unfenced(first: usize) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM ownership WHERE target = ${first} AND epoch > ${})",
        first + 1
    )
}

/// Is this a violation of a UNIQUE or a FOREIGN KEY constraint?
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_foreign_key_violation())
}

/// A serde value's word (`RuleFired` → `rule-fired`).
fn serde_word(value: impl serde::Serialize, fallback: impl FnOnce() -> String) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(word)) => word,
        _ => fallback(),
    }
}

impl Store {
    /// The fence's binds: without a fence nothing is refused.
    pub(super) fn fence_target(&self) -> String {
        self.fence
            .as_ref()
            .map_or_else(String::new, |f| f.target().to_string())
    }

    pub(super) fn fence_epoch(&self) -> i64 {
        self.fence.as_ref().map_or(i64::MAX, super::Fence::epoch)
    }

    /// After a fenced write changed nothing: `Fenced` when a newer owner
    /// exists (logged loudly), else `None` (another reason).
    pub(super) async fn fenced_out(&self) -> Option<StoreError> {
        let fence = self.fence.as_ref()?;
        let newer = on_backend!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT epoch FROM ownership WHERE target = $1")
                .bind(fence.target().to_string())
                .fetch_optional(pool)
                .await
        })
        .ok()
        .flatten()?;
        (newer > fence.epoch()).then(|| {
            let error = StoreError::Fenced {
                target: fence.target().to_string(),
                epoch: fence.epoch(),
                newer,
            };
            tracing::error!(target_name = %fence.target(), "FENCED: {error}");
            super::FENCED_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            error
        })
    }

    /// Takes `target` over: raises its ownership epoch (the first owner gets
    /// epoch one) and returns it. Every acting write of the previous owner is
    /// refused from now on (`Fence`).
    pub async fn take_ownership(
        &self,
        target: &str,
        owner: &str,
        at_: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        on_backend!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO ownership (target, epoch, owner, acquired_at) VALUES ($1, 1, $2, $3) \
                 ON CONFLICT (target) DO UPDATE SET epoch = ownership.epoch + 1, \
                 owner = excluded.owner, acquired_at = excluded.acquired_at RETURNING epoch",
            )
            .bind(target.to_string())
            .bind(owner.to_string())
            .bind(at(at_))
            .fetch_one(pool)
            .await
            .map_err(query_failed("take ownership"))
        })
    }

    /// Records a deployment; returns its id.
    pub async fn record_deployment(&self, deployment: &NewDeployment) -> Result<i64, StoreError> {
        on_backend!(self, pool => {
            sqlx::query(
                "INSERT INTO deployments (target, version, previous, migrations, at, is_rollback, source) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(deployment.target.clone())
            .bind(deployment.version.clone())
            .bind(deployment.previous.clone())
            .bind(Json(deployment.migrations.clone()))
            .bind(at(deployment.at))
            .bind(deployment.rollback)
            .bind(deployment.source.as_str())
            .fetch_one(pool)
            .await
            .map_err(query_failed("record deployment"))?
            .try_get::<i64, _>(0)
            .map_err(query_failed("record deployment"))
        })
    }

    /// The target's deployments, newest first.
    pub async fn deployments(
        &self,
        target: &str,
        limit: i64,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM deployments WHERE target = $1 ORDER BY at DESC, id DESC LIMIT $2",
            )
            .bind(target.to_string())
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(query_failed("list deployments"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(deployment_from_row!(row));
            }
            Ok(out)
        })
    }

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
            .bind(incident.tier.clone())
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
        let cause = serde_word(decision.cause, || format!("{:?}", decision.cause));
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
            .bind(decision.action.name())
            .bind(decision.tier.name())
            .bind(decision.rule.clone())
            .bind(cause)
            .bind(decision.guard.as_ref().map(|g| g.name()))
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

    /// Stores a step's start (outcome `running`) and returns its id. Await
    /// this before spawning the step: once it returns, the start is committed.
    pub async fn step_started(
        &self,
        incident: i64,
        step: &NewStep,
        started_at: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        let inserted = on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO steps (incident_id, name, stage, component, argv, started_at, outcome) \
                 SELECT $1, $2, $3, $4, $5, $6, 'running' WHERE {} RETURNING id",
                unfenced(7)
            )))
            .bind(incident)
            .bind(step.name.clone())
            .bind(step.stage.as_str())
            .bind(step.component.clone())
            .bind(Json(step.argv.clone()))
            .bind(at(started_at))
            .bind(self.fence_target())
            .bind(self.fence_epoch())
            .fetch_one(pool)
            .await
            .and_then(|row| row.try_get::<i64, _>(0))
        });
        match inserted {
            Err(sqlx::Error::RowNotFound) => {
                Err(self.fenced_out().await.unwrap_or(StoreError::Invalid {
                    what: "step",
                    reason: "the insert stored nothing".to_string(),
                }))
            }
            Err(error) if is_foreign_key_violation(&error) => {
                Err(StoreError::NoSuchIncident(incident))
            }
            other => other.map_err(query_failed("store step start")),
        }
    }

    /// Stores a running step's end. stdout and stderr keep their last 64 KiB.
    pub async fn step_finished(&self, step_id: i64, end: &StepEnd) -> Result<(), StoreError> {
        if end.outcome == StepOutcome::Running {
            return Err(StoreError::Invalid {
                what: "step end",
                reason: "a finished step's outcome cannot be `running`".to_string(),
            });
        }
        let duration_ms = i64::try_from(end.duration.as_millis()).unwrap_or(i64::MAX);
        let changed = on_backend!(self, pool => {
            sqlx::query(
                "UPDATE steps SET ended_at = $2, outcome = $3, exit_code = $4, detail = $5, \
                 stdout = $6, stderr = $7, duration_ms = $8 \
                 WHERE id = $1 AND outcome = 'running'",
            )
            .bind(step_id)
            .bind(at(end.ended_at))
            .bind(end.outcome.as_str())
            .bind(end.exit_code)
            .bind(end.detail.clone())
            .bind(keep_tail(&end.stdout).to_string())
            .bind(keep_tail(&end.stderr).to_string())
            .bind(duration_ms)
            .execute(pool)
            .await
            .map_err(query_failed("store step end"))?
            .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::StepNotRunning(step_id));
        }
        Ok(())
    }

    /// Closes a step a restarted rollwatch found running: outcome `unknown`,
    /// with `detail` saying so. It is never run again automatically.
    pub async fn mark_step_unknown(
        &self,
        step_id: i64,
        at_: DateTime<Utc>,
        detail: &str,
    ) -> Result<(), StoreError> {
        let changed = on_backend!(self, pool => {
            sqlx::query(
                sqlx::AssertSqlSafe(format!(
                    "UPDATE steps SET ended_at = $2, outcome = 'unknown', detail = $3 \
                     WHERE id = $1 AND outcome = 'running' AND {}",
                    unfenced(4)
                )),
            )
            .bind(step_id)
            .bind(at(at_))
            .bind(detail.to_string())
            .bind(self.fence_target())
            .bind(self.fence_epoch())
            .execute(pool)
            .await
            .map_err(query_failed("mark step unknown"))?
            .rows_affected()
        });
        if changed == 0
            && let Some(fenced) = self.fenced_out().await
        {
            return Err(fenced);
        }
        if changed == 0 {
            return Err(StoreError::StepNotRunning(step_id));
        }
        Ok(())
    }

    /// A step a waiter closed as `unknown` (its runner looked gone) whose
    /// runner then recorded its real end: the end is a fact and replaces the
    /// guess.
    pub async fn step_end_corrected(&self, step_id: i64, end: &StepEnd) -> Result<(), StoreError> {
        let duration_ms = i64::try_from(end.duration.as_millis()).unwrap_or(i64::MAX);
        let changed = on_backend!(self, pool => {
            sqlx::query(
                "UPDATE steps SET ended_at = $2, outcome = $3, exit_code = $4, detail = $5, \
                 stdout = $6, stderr = $7, duration_ms = $8 \
                 WHERE id = $1 AND outcome = 'unknown'",
            )
            .bind(step_id)
            .bind(at(end.ended_at))
            .bind(end.outcome.as_str())
            .bind(end.exit_code)
            .bind(format!(
                "{} (recorded by its runner after rollwatch had given up on it)",
                end.detail.as_deref().unwrap_or("ended")
            ))
            .bind(keep_tail(&end.stdout).to_string())
            .bind(keep_tail(&end.stderr).to_string())
            .bind(duration_ms)
            .execute(pool)
            .await
            .map_err(query_failed("correct a step's end"))?
            .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::StepNotRunning(step_id));
        }
        Ok(())
    }

    /// The runner that runs step `step_id` names itself (`HOST:PID`) and the
    /// step's timeout, with its first heartbeat. Refused (`StepNotRunning`)
    /// when the step is no longer `running` (a waiter gave up on it): the
    /// runner then does not run it.
    pub async fn step_runner_attached(
        &self,
        step_id: i64,
        runner: &str,
        timeout: std::time::Duration,
        at_: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        let changed = on_backend!(self, pool => {
            sqlx::query(
                "UPDATE steps SET runner = $2, timeout_ms = $3, heartbeat_at = $4 \
                 WHERE id = $1 AND outcome = 'running'",
            )
            .bind(step_id)
            .bind(runner.to_string())
            .bind(timeout_ms)
            .bind(at(at_))
            .execute(pool)
            .await
            .map_err(query_failed("store the step's runner"))?
            .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::StepNotRunning(step_id));
        }
        Ok(())
    }

    /// The runner of a running step is alive at `at_`; `pgid` is the step's
    /// process group once spawned.
    pub async fn step_heartbeat(
        &self,
        step_id: i64,
        at_: DateTime<Utc>,
        pgid: Option<i32>,
    ) -> Result<(), StoreError> {
        on_backend!(self, pool => {
            sqlx::query(
                "UPDATE steps SET heartbeat_at = $2, step_pgid = COALESCE($3, step_pgid) \
                 WHERE id = $1 AND outcome = 'running'",
            )
            .bind(step_id)
            .bind(at(at_))
            .bind(pgid)
            .execute(pool)
            .await
            .map_err(query_failed("store the step's heartbeat"))?;
        });
        Ok(())
    }

    /// One stored step.
    pub async fn step(&self, step_id: i64) -> Result<Option<StepRecord>, StoreError> {
        on_backend!(self, pool => {
            let row = sqlx::query("SELECT * FROM steps WHERE id = $1")
                .bind(step_id)
                .fetch_optional(pool)
                .await
                .map_err(query_failed("read a step"))?;
            match row {
                Some(row) => Ok(Some(step_from_row!(&row))),
                None => Ok(None),
            }
        })
    }

    /// An incident's steps in the order they started.
    pub async fn steps(&self, incident: i64) -> Result<Vec<StepRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM steps WHERE incident_id = $1 ORDER BY started_at, id",
            )
            .bind(incident)
            .fetch_all(pool)
            .await
            .map_err(query_failed("list steps"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(step_from_row!(row));
            }
            Ok(out)
        })
    }

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
