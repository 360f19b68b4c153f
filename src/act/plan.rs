//! Which steps a rollback runs, in which order, and where a restarted
//! rollwatch takes an interrupted procedure up again. Pure: the executor in
//! `super::procedure` does the IO.

use crate::engine::policy::Tier;
use crate::procedure::config::{Procedure, Stage, Step};
use crate::store::{StepOutcome, StepRecord, StepStage};
use crate::units::format_duration;

/// What the rollback is for.
#[derive(Clone, Debug)]
pub struct Request<'a> {
    pub tier: Tier,
    /// A partial rollback of this component only.
    pub component: Option<&'a str>,
    /// The rolled-back deployment's migrations.
    pub migrations: &'a [String],
}

/// The steps in the order they run, and what was left out and why.
#[derive(Clone, Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub recovery: Vec<Step>,
    /// "backup skipped: ...", "database stage skipped: ...".
    pub notes: Vec<String>,
}

/// The runbook's order: backup (if time permits) → application → database
/// (only when allowed and the deployment carried migrations, or the database
/// component is rolled back on its own) → verification. Recovery runs only
/// after a failure.
pub fn plan(procedure: &Procedure, request: &Request<'_>) -> Plan {
    let mut notes = Vec::new();
    let component = request.component;
    let mut steps: Vec<Step> = Vec::new();
    let backup: Vec<Step> = procedure
        .steps_for(Stage::Backup, component)
        .cloned()
        .collect();
    let backup_time = backup
        .iter()
        .map(|s| s.command.timeout)
        .sum::<std::time::Duration>();
    if !backup.is_empty()
        && request.tier == Tier::Immediate
        && backup_time > procedure.backup_budget
    {
        notes.push(format!(
            "backup skipped: it may take up to {}, more than the {} an immediate rollback may wait",
            format_std(backup_time),
            format_std(procedure.backup_budget)
        ));
    } else {
        steps.extend(backup);
    }
    steps.extend(procedure.steps_for(Stage::Application, component).cloned());
    let database: Vec<Step> = procedure
        .steps_for(Stage::Database, component)
        .cloned()
        .collect();
    if !database.is_empty() {
        let asked = component == Some("database");
        if !procedure.database_rollback {
            notes.push(
                "database stage skipped: the policy does not allow database rollbacks".into(),
            );
        } else if request.migrations.is_empty() && !asked {
            notes.push("database stage skipped: the deployment carried no migrations".into());
        } else {
            steps.extend(database);
        }
    }
    steps.extend(procedure.steps_for(Stage::Verification, component).cloned());
    let recovery = procedure
        .steps_for(Stage::Recovery, component)
        .cloned()
        .collect();
    Plan {
        steps,
        recovery,
        notes,
    }
}

fn format_std(duration: std::time::Duration) -> String {
    format_duration(chrono::TimeDelta::from_std(duration).unwrap_or_default())
}

pub fn stored_stage(stage: Stage) -> StepStage {
    match stage {
        Stage::Backup => StepStage::Backup,
        Stage::Application => StepStage::Application,
        Stage::Database => StepStage::Database,
        Stage::Verification => StepStage::Verification,
        Stage::Recovery => StepStage::Recovery,
    }
}

/// Where a procedure goes on, given the steps already stored for it (a step
/// found `running` after a restart must first be waited for, and marked
/// `unknown` only when its runner is gone without recording its end).
#[derive(Clone, Debug, PartialEq)]
pub struct Resume {
    /// Steps of the plan still to run, in order (indexes into `Plan::steps`).
    pub run: Vec<usize>,
    /// A stored step failed: go straight to the recovery steps not yet run.
    pub failed: Option<String>,
    /// A rollback step's end is unknown and the step is not idempotent: it
    /// is not run again, nothing else runs, the escalation contacts decide.
    pub escalate: Option<String>,
    /// What is not known, in words, for the incident record.
    pub unknown: Vec<String>,
    /// Recovery steps not yet run (indexes into `Plan::recovery`).
    pub recovery: Vec<usize>,
}

/// A step that may have run is never run again unless it is idempotent: a
/// step stored with any outcome is done. An idempotent step whose only
/// record is `unknown` (its runner died with it) runs again, once. Any other
/// unknown step: after an unknown backup the rollback goes on without it; an
/// unknown application or database step escalates (whether the rollback
/// happened is for a human to check; nothing else runs, no recovery); an
/// unknown verification step is skipped. A stored failure goes to recovery.
pub fn resume(plan: &Plan, stored: &[StepRecord]) -> Resume {
    let records = |stage: Stage, name: &str| -> Vec<&StepRecord> {
        stored
            .iter()
            .filter(|s| s.stage == stored_stage(stage) && s.name == name)
            .collect()
    };
    // Idempotent steps whose one run ended unknown: run again.
    let rerun = |step: &Step| {
        let runs = records(step.stage, &step.name);
        step.idempotent && runs.len() == 1 && runs[0].outcome == StepOutcome::Unknown
    };
    let rerun_ids: Vec<i64> = plan
        .steps
        .iter()
        .filter(|step| rerun(step))
        .flat_map(|step| records(step.stage, &step.name))
        .map(|r| r.id)
        .collect();
    let mut unknown = Vec::new();
    let mut failed = None;
    for record in stored {
        match record.outcome {
            StepOutcome::Unknown if rerun_ids.contains(&record.id) => unknown.push(format!(
                "{} step {} may or may not have run; it is idempotent: running it again",
                record.stage.as_str(),
                record.name
            )),
            StepOutcome::Unknown => unknown.push(format!(
                "{} step {} may or may not have run (its runner stopped without recording its end)",
                record.stage.as_str(),
                record.name
            )),
            StepOutcome::Failed | StepOutcome::TimedOut | StepOutcome::FailedToStart
                if record.stage != StepStage::Recovery =>
            {
                failed.get_or_insert_with(|| {
                    format!(
                        "{} step {} {}",
                        record.stage.as_str(),
                        record.name,
                        record.detail.as_deref().unwrap_or("failed")
                    )
                });
            }
            _ => {}
        }
    }
    let recovery = plan
        .recovery
        .iter()
        .enumerate()
        .filter(|(_, step)| records(Stage::Recovery, &step.name).is_empty())
        .map(|(i, _)| i)
        .collect();
    let recovering = stored.iter().any(|s| s.stage == StepStage::Recovery);
    if failed.is_some() || recovering {
        return Resume {
            run: Vec::new(),
            failed: failed.or_else(|| Some("the procedure was recovering from a failure".into())),
            escalate: None,
            unknown,
            recovery,
        };
    }
    let unknown_in = |stages: &[Stage]| {
        stored.iter().find(|s| {
            s.outcome == StepOutcome::Unknown
                && !rerun_ids.contains(&s.id)
                && stages.iter().any(|&st| stored_stage(st) == s.stage)
        })
    };
    if let Some(step) = unknown_in(&[Stage::Application, Stage::Database]) {
        let idempotent = plan
            .steps
            .iter()
            .any(|s| s.name == step.name && s.idempotent);
        return Resume {
            run: Vec::new(),
            failed: None,
            escalate: Some(format!(
                "the outcome of {} step {} is unknown: its runner stopped without recording its end, so it may or may not have run; {}, so it is not run again and nothing else is run: a human must check the running version",
                step.stage.as_str(),
                step.name,
                if idempotent {
                    "it is idempotent but was already run again once"
                } else {
                    "it is not idempotent"
                }
            )),
            unknown,
            recovery: Vec::new(),
        };
    }
    let backup_unknown = unknown_in(&[Stage::Backup]).is_some();
    let run = plan
        .steps
        .iter()
        .enumerate()
        .filter(|(_, step)| records(step.stage, &step.name).is_empty() || rerun(step))
        .filter(|(_, step)| step.stage != Stage::Backup || !backup_unknown)
        .map(|(i, _)| i)
        .collect();
    Resume {
        run,
        failed: None,
        escalate: None,
        unknown,
        recovery,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::Utc;

    use super::*;
    use crate::procedure::command::CommandSpec;

    fn step(name: &str, stage: Stage, component: Option<&str>, secs: u64) -> Step {
        Step {
            name: name.into(),
            stage,
            component: component.map(str::to_string),
            command: CommandSpec {
                argv: vec![name.to_string()],
                shell: false,
                timeout: Duration::from_secs(secs),
                env: Vec::new(),
                pass_env: Vec::new(),
                kill_group_on_exit: false,
            },
            idempotent: false,
        }
    }

    fn procedure() -> Procedure {
        Procedure {
            steps: vec![
                step("backup", Stage::Backup, None, 600),
                step("app", Stage::Application, None, 60),
                step("frontend", Stage::Application, Some("frontend"), 60),
                step("migrate-down", Stage::Database, None, 60),
                step("db-only", Stage::Database, Some("database"), 60),
                step("health", Stage::Verification, None, 60),
                step("smoke", Stage::Verification, None, 60),
                step("restart", Stage::Recovery, None, 60),
                step("restore", Stage::Recovery, None, 60),
            ],
            backup_budget: Duration::from_secs(120),
            database_rollback: true,
            drill_every: None,
        }
    }

    fn names(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(|s| s.name.as_str()).collect()
    }

    fn request(tier: Tier, component: Option<&str>, migrations: &[String]) -> Plan {
        plan(
            &procedure(),
            &Request {
                tier,
                component,
                migrations,
            },
        )
    }

    #[test]
    fn the_runbook_order_with_backup_and_database_when_they_apply() {
        let migrations = vec!["0042_add_index".to_string()];
        let full = request(Tier::Consider, None, &migrations);
        assert_eq!(
            names(&full.steps),
            ["backup", "app", "migrate-down", "health", "smoke"]
        );
        assert_eq!(names(&full.recovery), ["restart", "restore"]);
        assert!(full.notes.is_empty());
    }

    #[test]
    fn an_immediate_rollback_skips_a_backup_longer_than_its_budget() {
        let plan = request(Tier::Immediate, None, &[]);
        assert_eq!(names(&plan.steps), ["app", "health", "smoke"]);
        assert!(
            plan.notes[0].contains("backup skipped: it may take up to 10m"),
            "{:?}",
            plan.notes
        );
        assert!(plan.notes[1].contains("no migrations"), "{:?}", plan.notes);
    }

    #[test]
    fn a_partial_rollback_runs_its_component_and_the_shared_stages() {
        let plan = request(Tier::Consider, Some("frontend"), &[]);
        assert_eq!(
            names(&plan.steps),
            ["backup", "frontend", "health", "smoke"]
        );
        let database = request(Tier::Consider, Some("database"), &[]);
        assert_eq!(
            names(&database.steps),
            ["backup", "db-only", "health", "smoke"]
        );
    }

    #[test]
    fn a_policy_without_database_rollbacks_never_runs_the_stage() {
        let mut procedure = procedure();
        procedure.database_rollback = false;
        let migrations = vec!["0042".to_string()];
        let plan = plan(
            &procedure,
            &Request {
                tier: Tier::Consider,
                component: None,
                migrations: &migrations,
            },
        );
        assert!(!names(&plan.steps).contains(&"migrate-down"));
        assert!(plan.notes[0].contains("does not allow"));
    }

    fn record(name: &str, stage: StepStage, outcome: StepOutcome) -> StepRecord {
        StepRecord {
            id: 1,
            incident: 1,
            name: name.into(),
            stage,
            component: None,
            argv: vec![],
            started_at: Utc::now(),
            ended_at: None,
            outcome,
            exit_code: None,
            detail: None,
            stdout: String::new(),
            stderr: String::new(),
            duration: None,
            runner: None,
            heartbeat_at: None,
            step_pgid: None,
            timeout: None,
        }
    }

    #[test]
    fn a_restart_never_runs_a_stored_step_again() {
        let migrations = vec!["0042".to_string()];
        let plan = request(Tier::Consider, None, &migrations);
        let at = |stored: &[StepRecord]| -> Vec<&str> {
            resume(&plan, stored)
                .run
                .iter()
                .map(|&i| plan.steps[i].name.as_str())
                .collect()
        };
        use StepOutcome::*;
        use StepStage as S;
        assert_eq!(
            at(&[]),
            ["backup", "app", "migrate-down", "health", "smoke"]
        );
        // Died between steps: go on with the next.
        assert_eq!(
            at(&[record("backup", S::Backup, Succeeded)]),
            ["app", "migrate-down", "health", "smoke"]
        );
        // Died during the backup: go on without it.
        assert_eq!(
            at(&[record("backup", S::Backup, Unknown)]),
            ["app", "migrate-down", "health", "smoke"]
        );
        // The rollback's end is unknown: never again, nothing else; escalate.
        let stored = [
            record("backup", S::Backup, Succeeded),
            record("app", S::Application, Unknown),
        ];
        assert!(at(&stored).is_empty());
        let resumed = resume(&plan, &stored);
        assert!(resumed.unknown[0].contains("application step app"));
        assert!(
            resumed
                .escalate
                .as_deref()
                .unwrap()
                .contains("not idempotent"),
            "{resumed:?}"
        );
        // Died during verification: the rest of it.
        let stored = [
            record("backup", S::Backup, Succeeded),
            record("app", S::Application, Succeeded),
            record("migrate-down", S::Database, Succeeded),
            record("health", S::Verification, Unknown),
        ];
        assert_eq!(at(&stored), ["smoke"]);
    }

    #[test]
    fn an_idempotent_step_with_an_unknown_end_runs_again_once() {
        let mut procedure = procedure();
        for step in &mut procedure.steps {
            step.idempotent = step.name == "app";
        }
        let plan = plan(
            &procedure,
            &Request {
                tier: Tier::Consider,
                component: None,
                migrations: &[],
            },
        );
        let names = |resume: &Resume| -> Vec<String> {
            resume
                .run
                .iter()
                .map(|&i| plan.steps[i].name.clone())
                .collect()
        };
        use StepOutcome::*;
        use StepStage as S;
        let mut first = record("backup", S::Backup, Succeeded);
        first.id = 1;
        let mut app = record("app", S::Application, Unknown);
        app.id = 2;
        let once = resume(&plan, &[first.clone(), app.clone()]);
        assert_eq!(names(&once), ["app", "health", "smoke"]);
        assert_eq!(once.escalate, None);
        assert!(once.unknown[0].contains("idempotent: running it again"));
        // Its second run's end is unknown too: never a third run; escalate.
        let mut again = record("app", S::Application, Unknown);
        again.id = 3;
        let twice = resume(&plan, &[first, app, again]);
        assert!(twice.run.is_empty());
        assert!(twice.escalate.is_some());
    }

    #[test]
    fn a_stored_failure_goes_on_with_the_recovery_not_yet_run() {
        let plan = request(Tier::Consider, None, &[]);
        use StepOutcome::*;
        use StepStage as S;
        let stored = [
            record("backup", S::Backup, Succeeded),
            record("app", S::Application, Failed),
            record("restart", S::Recovery, Unknown),
        ];
        let resume = resume(&plan, &stored);
        assert!(resume.run.is_empty());
        assert!(resume.failed.unwrap().contains("application step app"));
        let recovery: Vec<&str> = resume
            .recovery
            .iter()
            .map(|&i| plan.recovery[i].name.as_str())
            .collect();
        assert_eq!(recovery, ["restore"]);
    }
}
