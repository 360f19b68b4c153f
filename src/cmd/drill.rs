//! `rollwatch drill`: the monthly practice run of a target's rollback
//! procedure, in staging.

use std::path::Path;

use super::rollback::{operator, say_line, target_name};
use super::{Failure, load_target, runtime_error};
use crate::store::{IncidentKind, IncidentPhase, IncidentState, Store};

/// `rollwatch drill`: exit 0 when the drill passed, 1 when it failed or was
/// refused (a rollback or another drill of the target is running).
pub async fn drill(path: &Path, db: &str, force: bool) -> Result<(), Failure> {
    let target = load_target(path)?;
    if target.procedure.is_none() {
        return Err(Failure::Usage(format!(
            "{}: no [procedure] to drill",
            path.display()
        )));
    }
    if target.policy.environment == "production" && !force {
        return Err(Failure::Usage(format!(
            "{}: a drill runs the real rollback scripts; drills are for staging (runbook: \"Rollback drills monthly in staging\"). Pass --force to drill production",
            path.display()
        )));
    }
    let store = Store::open(db).await.map_err(runtime_error)?;
    let name = target_name(&target);
    let unfinished = store
        .unfinished_incidents(&name)
        .await
        .map_err(runtime_error)?;
    if let Some(busy) = unfinished.iter().find(|u| {
        u.incident.kind == IncidentKind::Drill
            || !matches!(
                u.incident.state,
                IncidentState::Active {
                    phase: IncidentPhase::Open | IncidentPhase::Escalated
                }
            )
    }) {
        return Err(runtime_error(format!(
            "not drilling {name}: incident {} ({}) is running the procedure; see `rollwatch incidents show {}`",
            busy.incident.id,
            busy.incident.kind.as_str(),
            busy.incident.id
        )));
    }
    let outcome = crate::act::drill::run(&store, &target, say_line(), &operator())
        .await
        .map_err(runtime_error)?;
    if outcome.passed {
        Ok(())
    } else {
        Err(Failure::Exit(1))
    }
}
