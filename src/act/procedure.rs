//! Runs a rollback procedure (or a drill) for one stored incident: every
//! step's start is committed before the step is spawned and its end after it
//! exits, so a restarted rollwatch knows what may have run. A failure runs the
//! recovery steps and ends the procedure with the reason; nothing here decides
//! to roll back, the engine did.

use std::sync::Arc;
use std::time::Instant;

use chrono::Utc;

use crate::engine::policy::Tier;
use crate::policy::Compiled;
use crate::procedure::command::CommandSpec;
use crate::procedure::config::{Stage, Step};
use crate::sources::http;
use crate::store::{IncidentPhase, NewStep, StepEnd, StepOutcome, StepStage, Store};

use super::failpoint;
use super::plan::{self, Plan, Request};
use super::runner;

/// Everything a procedure run needs; cheap to clone into a task.
#[derive(Clone)]
pub struct Context {
    pub store: Store,
    /// The stored incident's id (`ROLLWATCH_INCIDENT_ID`).
    pub incident: i64,
    pub target: Arc<Compiled>,
    pub tier: Tier,
    pub component: Option<String>,
    pub migrations: Vec<String>,
    /// Why (`ROLLWATCH_REASON`): the decision's explanation or a human's reason.
    pub reason: String,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    /// Where progress lines go (the terminal, the log).
    pub say: Arc<dyn Fn(&str) + Send + Sync>,
    /// Counts steps in `rollwatch_procedure_steps_total` (the sidecar).
    pub telemetry: Option<Arc<crate::telemetry::Telemetry>>,
    /// With several replicas: whether this one still owns the target. No
    /// step starts once it does not (the new owner takes the procedure up
    /// from the stored steps); none: a lone rollwatch, always the owner.
    pub owner: Option<tokio::sync::watch::Receiver<bool>>,
}

/// How a procedure ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Ended {
    pub result: Result<(), String>,
    /// What a restart could not know (steps that may or may not have run).
    pub unknown: Vec<String>,
    pub notes: Vec<String>,
}

impl Context {
    /// Why no step may start here now: another replica owns the target.
    fn not_owner(&self) -> Option<String> {
        let owner = self.owner.as_ref()?;
        (!*owner.borrow()).then(|| {
            format!(
                "this replica no longer owns {}: the procedure stops here, and the replica that owns the target takes it up from its stored steps",
                self.name()
            )
        })
    }

    fn name(&self) -> String {
        format!(
            "{}/{}",
            self.target.policy.service, self.target.policy.environment
        )
    }

    /// The variables every step gets (a contract:
    /// docs/operations.md#acting-the-rollback-procedure).
    fn env(&self) -> Vec<(String, String)> {
        let policy = &self.target.policy;
        [
            ("ROLLWATCH_SERVICE", policy.service.clone()),
            ("ROLLWATCH_ENVIRONMENT", policy.environment.clone()),
            (
                "ROLLWATCH_COMPONENT",
                self.component.clone().unwrap_or_default(),
            ),
            ("ROLLWATCH_INCIDENT_ID", self.incident.to_string()),
            ("ROLLWATCH_REASON", self.reason.clone()),
            (
                "ROLLWATCH_FROM_VERSION",
                self.from_version.clone().unwrap_or_default(),
            ),
            (
                "ROLLWATCH_TO_VERSION",
                self.to_version.clone().unwrap_or_default(),
            ),
            ("ROLLWATCH_DRY_RUN", "0".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), env_value(v)))
        .collect()
    }

    pub fn plan(&self) -> Option<Plan> {
        let procedure = self.target.procedure.as_ref()?;
        Some(plan::plan(
            procedure,
            &Request {
                tier: self.tier,
                component: self.component.as_deref(),
                migrations: &self.migrations,
            },
        ))
    }

    async fn phase(&self, phase: IncidentPhase) -> Result<(), String> {
        self.store
            .set_incident_phase(self.incident, phase, Utc::now(), None)
            .await
            .map_err(|e| format!("cannot record the incident's phase {}: {e}", phase.as_str()))
    }
}

/// A value a step can always be started with: no NUL byte (a human's reason
/// or an old record may hold one), at most 16 KiB (the kernel refuses a
/// variable over 128 KiB).
fn env_value(value: String) -> String {
    const LIMIT: usize = 16 * 1024;
    let mut value = if value.contains('\0') {
        value.replace('\0', "\u{fffd}")
    } else {
        value
    };
    if value.len() > LIMIT {
        let mut cut = LIMIT;
        while !value.is_char_boundary(cut) {
            cut -= 1;
        }
        value.truncate(cut);
        value.push_str(" [cut]");
    }
    value
}

/// Runs the procedure of `ctx.incident` from wherever its stored steps say it
/// stands (the start, for a new rollback).
pub async fn execute(ctx: &Context) -> Ended {
    let Some(plan) = ctx.plan() else {
        return Ended {
            result: Err(format!(
                "{} has no [procedure]: nothing to roll back with",
                ctx.target.policy.path
            )),
            unknown: Vec::new(),
            notes: Vec::new(),
        };
    };
    let stored = match interrupted_steps_closed(ctx).await {
        Ok(stored) => stored,
        Err(error) => {
            return Ended {
                result: Err(error),
                unknown: Vec::new(),
                notes: plan.notes,
            };
        }
    };
    let resume = plan::resume(&plan, &stored);
    for note in plan.notes.iter().chain(&resume.unknown) {
        (ctx.say)(&format!("{} {}: {note}", ctx.name(), ctx.incident));
    }
    let result = match (resume.escalate.clone(), resume.failed.clone()) {
        (Some(unknown), _) => {
            tracing::error!(incident = ctx.incident, "{unknown}");
            Err(unknown)
        }
        (None, Some(failure)) => recover(ctx, &plan, &resume.recovery, failure).await,
        (None, None) => run_plan(ctx, &plan, &resume.run, &stored).await,
    };
    Ended {
        result,
        unknown: resume.unknown,
        notes: plan.notes,
    }
}

/// Steps found `running` (rollwatch stopped, or another replica owned the
/// target, while they ran) are waited for while their runner beats, so a
/// rollback step that is still running is never overtaken by verification;
/// one whose runner is gone without an end is closed as `unknown`. Returns
/// the incident's steps, every one ended.
async fn interrupted_steps_closed(ctx: &Context) -> Result<Vec<crate::store::StepRecord>, String> {
    let steps = ctx
        .store
        .steps(ctx.incident)
        .await
        .map_err(|e| format!("cannot read the incident's steps: {e}"))?;
    let mut closed = Vec::with_capacity(steps.len());
    for step in steps {
        if !step.may_have_run_unrecorded() {
            closed.push(step);
            continue;
        }
        let name = step.name.clone();
        let progress = |line: &str| {
            (ctx.say)(&format!(
                "{} {} {}: {line}",
                crate::engine::time_text(Utc::now()),
                ctx.name(),
                ctx.incident
            ))
        };
        let awaited = runner::await_end(&ctx.store, step, progress)
            .await
            .map_err(|e| format!("cannot wait for the interrupted step {name}: {e}"))?;
        let step = match awaited {
            runner::Awaited::Ended(step) => {
                (ctx.say)(&format!(
                    "{} {} {}: step {name} ended while rollwatch was away: {}{}",
                    crate::engine::time_text(Utc::now()),
                    ctx.name(),
                    ctx.incident,
                    step.outcome.as_str(),
                    step.detail
                        .as_deref()
                        .map_or_else(String::new, |d| format!(" ({d})"))
                ));
                step
            }
            runner::Awaited::Unknown(step) => {
                tracing::warn!(incident = ctx.incident, step = %name, detail = ?step.detail, "step end unknown");
                step
            }
        };
        closed.push(step);
    }
    Ok(closed)
}

async fn run_plan(
    ctx: &Context,
    plan: &Plan,
    to_run: &[usize],
    stored: &[crate::store::StepRecord],
) -> Result<(), String> {
    let mut verifying = false;
    let probe_stored = stored.iter().any(|s| s.name == HEALTH_PROBE);
    for &index in to_run {
        let step = &plan.steps[index];
        if step.stage == Stage::Verification && !verifying {
            verifying = true;
            if let Err(failure) = start_verification(ctx, probe_stored).await {
                return recover(ctx, plan, &all(&plan.recovery), failure).await;
            }
        }
        if let Err(failure) = run_step(ctx, step).await {
            return recover(ctx, plan, &all(&plan.recovery), failure).await;
        }
    }
    if !verifying {
        // No verification step left to run: the health probe still confirms.
        if let Err(failure) = start_verification(ctx, probe_stored).await {
            return recover(ctx, plan, &all(&plan.recovery), failure).await;
        }
    }
    failpoint::hit("after-procedure");
    Ok(())
}

fn all<T>(steps: &[T]) -> Vec<usize> {
    (0..steps.len()).collect()
}

const HEALTH_PROBE: &str = "health-probe";

/// Phase `verifying`, then the policy's health probe (a recorded step of its
/// own) unless a previous run already stored it.
async fn start_verification(ctx: &Context, probe_stored: bool) -> Result<(), String> {
    ctx.phase(IncidentPhase::Verifying).await?;
    let Some(health) = ctx.target.health.as_ref().filter(|_| !probe_stored) else {
        return Ok(());
    };
    let new = NewStep {
        name: HEALTH_PROBE.to_string(),
        stage: StepStage::Verification,
        component: None,
        argv: vec!["GET".into(), health.url.clone()],
    };
    let id = started(ctx, &new).await?;
    let began = Instant::now();
    let client = http::client().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let (outcome, detail) = match health.probe(&client, None).await {
        Ok(probed) if probed.healthy => {
            (StepOutcome::Succeeded, format!("status {}", probed.status))
        }
        Ok(probed) => (
            StepOutcome::Failed,
            format!(
                "status {}, expected {}",
                probed.status, health.expect_status
            ),
        ),
        Err(error) => (StepOutcome::Failed, format!("{error}")),
    };
    let end = StepEnd {
        outcome,
        exit_code: None,
        detail: Some(detail.clone()),
        stdout: String::new(),
        stderr: String::new(),
        duration: began.elapsed(),
        ended_at: Utc::now(),
    };
    finished(ctx, id, &new, &end, false).await?;
    if outcome == StepOutcome::Succeeded {
        Ok(())
    } else {
        Err(format!(
            "verification: health probe {}: {detail}",
            health.url
        ))
    }
}

async fn started(ctx: &Context, step: &NewStep) -> Result<i64, String> {
    if let Some(lost) = ctx.not_owner() {
        tracing::warn!(incident = ctx.incident, step = %step.name, "{lost}");
        return Err(format!("step {} was NOT run: {lost}", step.name));
    }
    let id = ctx
        .store
        .step_started(ctx.incident, step, Utc::now())
        .await
        .map_err(|e| {
            let message = format!(
                "cannot record the start of step {} in {}: {e}; a step runs only after its start is stored, so it was NOT run",
                step.name,
                ctx.store.database()
            );
            tracing::error!(incident = ctx.incident, "{message}");
            message
        })?;
    (ctx.say)(&format!(
        "{} {} {} step {} started: {}",
        crate::engine::time_text(Utc::now()),
        ctx.name(),
        step.stage.as_str(),
        step.name,
        step.argv.join(" ")
    ));
    failpoint::hit(&format!("before-step:{}", step.name));
    Ok(id)
}

/// A step's end: counted, said, and stored unless its runner stored it.
async fn finished(
    ctx: &Context,
    id: i64,
    step: &NewStep,
    end: &StepEnd,
    recorded: bool,
) -> Result<(), String> {
    if let Some(telemetry) = &ctx.telemetry {
        telemetry
            .steps
            .get_or_create(&crate::telemetry::StepLabels {
                target: ctx.name(),
                stage: step.stage.as_str().to_string(),
                result: end.outcome.as_str().to_string(),
            })
            .inc();
    }
    (ctx.say)(&format!(
        "{} {} {} step {} {} after {:.1}s{}",
        crate::engine::time_text(end.ended_at),
        ctx.name(),
        step.stage.as_str(),
        step.name,
        end.outcome.as_str(),
        end.duration.as_secs_f64(),
        end.detail
            .as_deref()
            .map_or_else(String::new, |d| format!(": {d}"))
    ));
    let stored = if recorded {
        Ok(())
    } else {
        match ctx.store.step_finished(id, end).await {
            // Its runner stored it after all.
            Err(crate::store::StoreError::StepNotRunning(_)) => Ok(()),
            other => other,
        }
    };
    stored.map_err(|e| {
        let message = format!(
            "step {} ended ({}) but its end cannot be recorded in {}: {e}; stopping the procedure",
            step.name,
            end.outcome.as_str(),
            ctx.store.database()
        );
        tracing::error!(incident = ctx.incident, "{message}");
        message
    })?;
    failpoint::hit(&format!("after-step:{}", step.name));
    Ok(())
}

/// Runs one step: start stored, spawned with the ROLLWATCH_* variables
/// (docs/operations.md) in its own process group, end stored. `Err` says why it
/// failed.
async fn run_step(ctx: &Context, step: &Step) -> Result<(), String> {
    let new = NewStep {
        name: step.name.clone(),
        stage: plan::stored_stage(step.stage),
        component: step.component.clone(),
        argv: step.command.argv.clone(),
    };
    let id = started(ctx, &new).await?;
    let mut spec: CommandSpec = step.command.clone();
    spec.env.extend(ctx.env());
    let ran = runner::run(&ctx.store, id, &spec, &runner::program()).await;
    finished(ctx, id, &new, &ran.end, ran.recorded).await?;
    let detail = ran.end.detail.clone().unwrap_or_default();
    if ran.end.outcome == StepOutcome::Succeeded {
        Ok(())
    } else {
        Err(format!(
            "{} step {} failed: {detail}",
            step.stage.as_str(),
            step.name
        ))
    }
}

/// "Failed Rollback Recovery": the recovery steps not yet run, each to its
/// end whatever the previous one did; then the failure stands (escalate).
async fn recover(
    ctx: &Context,
    plan: &Plan,
    steps: &[usize],
    failure: String,
) -> Result<(), String> {
    if let Some(lost) = ctx.not_owner() {
        tracing::warn!(
            incident = ctx.incident,
            "{failure}; no recovery from here: {lost}"
        );
        return Err(format!("{failure}; {lost}"));
    }
    (ctx.say)(&format!(
        "{} {} {}: {failure}; running the recovery steps",
        crate::engine::time_text(Utc::now()),
        ctx.name(),
        ctx.incident
    ));
    if let Err(error) = ctx.phase(IncidentPhase::Recovering).await {
        return Err(format!("{failure}; recovery not started: {error}"));
    }
    let mut problems = Vec::new();
    for &index in steps {
        if let Err(problem) = run_step(ctx, &plan.recovery[index]).await {
            problems.push(problem);
        }
    }
    if problems.is_empty() {
        Err(failure)
    } else {
        Err(format!(
            "{failure}; recovery failed too: {}",
            problems.join("; ")
        ))
    }
}
