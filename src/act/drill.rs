//! The rollback drill (the runbook's "Rollback drills monthly in staging"):
//! the procedure and its verification, as an incident of kind `drill`, with
//! its duration and result recorded. Run by `rollwatch drill`, and by `run`
//! when the policy schedules drills (`[procedure] drill_every`).

use std::sync::Arc;
use std::time::Instant;

use chrono::{TimeDelta, Utc};

use crate::engine::policy::Tier;
use crate::engine::time_text;
use crate::policy::Compiled;
use crate::store::{IncidentKind, IncidentOutcome, IncidentPhase, NewIncident, Store, StoreError};
use crate::units::format_duration;

use super::procedure::{self, Context};

/// What a drill found.
pub struct DrillOutcome {
    pub incident: i64,
    pub passed: bool,
    pub took: std::time::Duration,
}

/// Runs the procedure and its verification as a drill incident, and records
/// the duration and the result.
pub async fn run(
    store: &Store,
    target: &Compiled,
    say: Arc<dyn Fn(&str) + Send + Sync>,
    operator: &str,
) -> Result<DrillOutcome, StoreError> {
    let name = format!("{}/{}", target.policy.service, target.policy.environment);
    let now = Utc::now();
    let id = store
        .open_incident(&NewIncident {
            target: name.clone(),
            kind: IncidentKind::Drill,
            tier: Tier::Consider,
            rule: "drill".into(),
            reason: format!("rollback drill by {operator}"),
            component: None,
            from_version: None,
            to_version: None,
            opened_at: now,
            deadline: None,
        })
        .await?;
    store
        .set_incident_phase(id, IncidentPhase::RollingBack, now, None)
        .await?;
    say(&format!(
        "{} {name} DRILL {id}: running the rollback procedure and its verification",
        time_text(now)
    ));
    let started = Instant::now();
    let ctx = Context {
        store: store.clone(),
        incident: id,
        target: Arc::new(target.clone()),
        tier: Tier::Consider,
        component: None,
        migrations: Vec::new(),
        reason: "rollback drill".into(),
        from_version: None,
        to_version: None,
        say: Arc::clone(&say),
        telemetry: None,
        owner: None,
    };
    let ended = procedure::execute(&ctx).await;
    let took = started.elapsed();
    let passed = ended.result.is_ok();
    let outcome = if passed {
        IncidentOutcome::DrillPassed
    } else {
        IncidentOutcome::DrillFailed
    };
    store.resolve_incident(id, outcome, Utc::now()).await?;
    let took_text = format_duration(TimeDelta::from_std(took).unwrap_or_default());
    match &ended.result {
        Ok(()) => say(&format!(
            "{} {name} DRILL {id} PASSED in {took_text} ({:.1}s). Report: rollwatch incidents report {id}",
            time_text(Utc::now()),
            took.as_secs_f64()
        )),
        Err(reason) => say(&format!(
            "{} {name} DRILL {id} FAILED after {took_text} ({:.1}s): {reason}",
            time_text(Utc::now()),
            took.as_secs_f64()
        )),
    }
    Ok(DrillOutcome {
        incident: id,
        passed,
        took,
    })
}
