//! The rollback procedure a policy describes
//! (docs/operations.md#acting-the-rollback-procedure): the runbook's stages in
//! their fixed order, each an ordered list of steps (argv, timeout, optional
//! component). Compiled and validated by `crate::policy`.

use std::time::Duration;

use super::command::CommandSpec;
use crate::text_enum::text_enum;

text_enum! {
    /// The runbook's stages, in the order they run. `Recovery` runs only when a
    /// stage fails ("Failed Rollback Recovery").
    #[derive(PartialOrd, Ord)]
    pub enum Stage ("stage") {
        /// "Create backup (if time permits)".
        Backup => "backup",
        /// "Application Rollback".
        Application => "application",
        /// "Database Rollback (if needed)": only when the deployment carried
        /// migrations and the policy allows it.
        Database => "database",
        /// "Verification": health checks, error logs, smoke tests.
        Verification => "verification",
        /// "Failed Rollback Recovery": status, restart, restore the backup.
        Recovery => "recovery",
    }
}

#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    pub stage: Stage,
    /// Only for a partial rollback of this component (frontend, backend,
    /// database); a step without one belongs to the full rollback (and, in the
    /// backup, verification and recovery stages, to every rollback).
    pub component: Option<String>,
    pub command: CommandSpec,
    /// Running it twice does what running it once does (a rollback to a
    /// fixed version usually is): after an end nobody could record (its
    /// runner died with it) it is run again, once, instead of escalating.
    pub idempotent: bool,
}

#[derive(Clone, Debug)]
pub struct Procedure {
    /// Steps in the order written; `steps_for` orders them by stage.
    pub steps: Vec<Step>,
    /// The backup is skipped for an `immediate` rollback when its steps'
    /// timeouts add up to more than this.
    pub backup_budget: Duration,
    /// Whether the database stage may run at all (it also needs migrations).
    pub database_rollback: bool,
    /// `run` carries out a drill when the last one is older than this
    /// (the runbook's "Rollback drills monthly in staging").
    pub drill_every: Option<Duration>,
}

impl Procedure {
    /// The steps of one stage, in the order written. A full rollback
    /// (`component` None) runs the steps that name no component. A partial
    /// rollback of a component runs that component's steps, and the shared
    /// steps (no component) of the backup, verification and recovery stages.
    pub fn steps_for(&self, stage: Stage, component: Option<&str>) -> impl Iterator<Item = &Step> {
        let shared_stage = matches!(stage, Stage::Backup | Stage::Verification | Stage::Recovery);
        self.steps.iter().filter(move |step| {
            step.stage == stage
                && match (component, step.component.as_deref()) {
                    (None, own) => own.is_none(),
                    (Some(_), None) => shared_stage,
                    (Some(wanted), Some(own)) => wanted == own,
                }
        })
    }

    /// Components some step is limited to.
    pub fn components(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .steps
            .iter()
            .filter_map(|s| s.component.as_deref())
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// The longest the backup stage can take: its steps' timeouts added up.
    pub fn backup_time(&self) -> Duration {
        self.steps
            .iter()
            .filter(|s| s.stage == Stage::Backup)
            .map(|s| s.command.timeout)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, stage: Stage, component: Option<&str>) -> Step {
        let command = CommandSpec {
            argv: vec![name.to_string()],
            shell: false,
            timeout: Duration::from_secs(60),
            env: Vec::new(),
            pass_env: Vec::new(),
            kill_group_on_exit: false,
        };
        Step {
            name: name.into(),
            stage,
            component: component.map(str::to_string),
            command,
            idempotent: false,
        }
    }

    #[test]
    fn full_and_partial_rollbacks_pick_their_steps() {
        let procedure = Procedure {
            steps: vec![
                step("backup", Stage::Backup, None),
                step("app", Stage::Application, None),
                step("web", Stage::Application, Some("frontend")),
                step("api", Stage::Application, Some("backend")),
                step("migrations", Stage::Database, None),
                step("migrations-only", Stage::Database, Some("database")),
                step("smoke", Stage::Verification, None),
            ],
            backup_budget: Duration::from_secs(120),
            database_rollback: true,
            drill_every: None,
        };
        let names = |stage, component| {
            procedure
                .steps_for(stage, component)
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(Stage::Application, None), ["app"]);
        assert_eq!(names(Stage::Application, Some("frontend")), ["web"]);
        assert_eq!(names(Stage::Backup, Some("frontend")), ["backup"]);
        assert_eq!(names(Stage::Verification, Some("backend")), ["smoke"]);
        assert_eq!(names(Stage::Database, None), ["migrations"]);
        assert_eq!(
            names(Stage::Database, Some("database")),
            ["migrations-only"]
        );
        assert_eq!(procedure.components(), ["backend", "database", "frontend"]);
        assert_eq!(procedure.backup_time(), Duration::from_secs(60));
    }
}
