//! The `[procedure]` section: the runbook's steps.

use chrono::TimeDelta;

use super::{Problems, env_names, lookup_word, non_empty, positive};
use crate::policy::raw::RawProcedure;
use crate::procedure::command::CommandSpec;
use crate::procedure::config::{Procedure, Stage, Step};

pub const DEFAULT_STEP_TIMEOUT_SECS: i64 = 10 * 60;
pub const DEFAULT_BACKUP_BUDGET_SECS: i64 = 2 * 60;

pub(super) fn compile_procedure(problems: &mut Problems, raw: RawProcedure) -> Procedure {
    let backup_budget = raw
        .backup_budget
        .map_or(TimeDelta::seconds(DEFAULT_BACKUP_BUDGET_SECS), |b| {
            b.into_inner().delta()
        })
        .to_std()
        .unwrap_or_default();
    let mut steps: Vec<Step> = Vec::new();
    for raw_step in raw.step {
        let step = raw_step.into_inner();
        let name_span = step.name.span();
        let name = non_empty(problems, step.name, "step name");
        if steps.iter().any(|s| s.name == name) {
            problems.add(
                name_span,
                format!("duplicate step \"{name}\", expected each step once"),
            );
        }
        let stage = lookup_word(problems, &step.stage, "stage", Stage::ALL);
        let command_span = step.command.span();
        let argv = step.command.into_inner();
        if argv.is_empty() || argv[0].trim().is_empty() {
            problems.add(command_span, "command is empty, expected e.g. command = [\"./scripts/deployment/rollback/rollback-production.sh\"]");
        }
        let timeout = step
            .timeout
            .map_or(TimeDelta::seconds(DEFAULT_STEP_TIMEOUT_SECS), |t| {
                positive(problems, t, "step timeout")
            })
            .to_std()
            .unwrap_or_default();
        let component = step.component.map(|c| non_empty(problems, c, "component"));
        let pass_env = env_names(problems, step.env);
        let Some(stage) = stage else { continue };
        // A step that starts services must leave them running: only a timeout ends its group.
        let command = CommandSpec {
            argv,
            shell: step.shell.unwrap_or(false),
            timeout,
            env: Vec::new(),
            pass_env,
            kill_group_on_exit: false,
        };
        steps.push(Step {
            name,
            stage,
            component,
            command,
            idempotent: step.idempotent.unwrap_or(false),
        });
    }
    let drill_every = raw.drill_every.map(|d| {
        positive(problems, d, "drill_every")
            .to_std()
            .unwrap_or_default()
    });
    Procedure {
        steps,
        backup_budget,
        database_rollback: raw.database_rollback.unwrap_or(false),
        drill_every,
    }
}
