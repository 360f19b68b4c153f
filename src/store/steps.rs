//! The runbook's steps: start, end, runner and heartbeat.

use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::types::Json;

use super::ops::{at, get, is_foreign_key_violation, optional_time, time, unfenced, word};
use super::{
    NewStep, StepEnd, StepOutcome, StepRecord, Store, StoreError, keep_tail, on_backend,
    query_failed,
};

macro_rules! step_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "step";
        let argv: Json<Vec<String>> = get(row, what, "argv")?;
        let duration_ms: Option<i64> = get(row, what, "duration_ms")?;
        let timeout_ms: Option<i64> = get(row, what, "timeout_ms")?;
        StepRecord {
            id: get(row, what, "id")?,
            incident: get(row, what, "incident_id")?,
            name: get(row, what, "name")?,
            stage: word(row, "steps", "stage")?,
            component: get(row, what, "component")?,
            argv: argv.0,
            started_at: time(row, what, "started_at")?,
            ended_at: optional_time(row, what, "ended_at")?,
            outcome: word(row, "steps", "outcome")?,
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

impl Store {
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
}
