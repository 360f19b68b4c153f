//! `rollwatch rollback`: the emergency path a human runs by hand, through the
//! same procedure, records and watch as an automatic rollback.

use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::{Failure, load_target, runtime_error};
use crate::act::actor::{Actor, IncidentEnd};
use crate::act::procedure::Context;
use crate::console::say;
use crate::engine::decision::{Decision, Guard, MANUAL_ROLLBACK_RULE};
use crate::engine::input::Event;
use crate::engine::policy::{Action, Tier};
use crate::engine::{Deployment, Engine, Phase, Resumed};
use crate::notify::dedupe::DedupeKey;
use crate::notify::message;
use crate::policy::Compiled;
use crate::runtime::target;
use crate::store::{
    DeploymentRecord, DeploymentSource, IncidentKind, IncidentOutcome, IncidentPhase,
    IncidentRecord, IncidentState, NewIncident, Store,
};
use crate::telemetry::Telemetry;
use crate::units::format_duration;

pub struct RollbackRequest<'a> {
    pub policy: &'a Path,
    pub reason: &'a str,
    pub component: Option<&'a str>,
    pub to: Option<&'a str>,
    pub dry_run: bool,
    pub force: bool,
    pub db: &'a str,
}

pub(super) fn target_name(target: &Compiled) -> String {
    format!("{}/{}", target.policy.service, target.policy.environment)
}

pub(super) fn say_line() -> Arc<dyn Fn(&str) + Send + Sync> {
    Arc::new(say)
}

/// `rollwatch rollback`: exit 0 when the rollback was verified and the watch
/// found the system stable, 1 when it failed or escalated, 2 for a bad request.
pub async fn rollback(request: RollbackRequest<'_>) -> Result<(), Failure> {
    let target = load_target(request.policy)?;
    let name = target_name(&target);
    let Some(procedure) = target.procedure.as_ref() else {
        return Err(Failure::Usage(format!(
            "{}: no [procedure] to roll back with",
            request.policy.display()
        )));
    };
    if request.reason.trim().is_empty() {
        return Err(Failure::Usage("--reason must say why".into()));
    }
    if let Some(component) = request.component
        && !procedure.components().contains(&component)
    {
        return Err(Failure::Usage(format!(
            "{}: no step is limited to component \"{component}\"; components: {}",
            request.policy.display(),
            list_or_none(&procedure.components())
        )));
    }
    let store = Store::open(request.db).await.map_err(runtime_error)?;
    let deployments = store.deployments(&name, 1).await.map_err(runtime_error)?;
    let latest = deployments.first();
    let migrations = latest.map(|d| d.migrations.clone()).unwrap_or_default();
    let unfinished = store
        .unfinished_incidents(&name)
        .await
        .map_err(runtime_error)?;
    if let Some(drill) = unfinished
        .iter()
        .find(|u| u.incident.kind == IncidentKind::Drill)
    {
        return Err(runtime_error(format!(
            "not rolling back {name}: drill {} is running the same procedure; wait for it (`rollwatch incidents show {}`)",
            drill.incident.id, drill.incident.id
        )));
    }
    let open = unfinished
        .iter()
        .find(|u| u.incident.kind != IncidentKind::Drill)
        .map(|u| &u.incident);
    // The engine's guards decide, as for any rollback.
    let now = Utc::now();
    let (decision, answers_open) = decide(&target, latest, open, &request, now)?;
    if decision.action != Action::Rollback {
        return Err(runtime_error(refusal(&name, open, &decision)));
    }
    let (from, to) = (decision.from_version.clone(), decision.to_version.clone());
    let ctx = Context {
        store: store.clone(),
        incident: 0,
        target: Arc::new(target.clone()),
        tier: Tier::Immediate,
        component: request.component.map(str::to_string),
        migrations,
        reason: request.reason.to_string(),
        from_version: from.clone(),
        to_version: to.clone(),
        say: say_line(),
        telemetry: None,
        owner: None,
    };
    if request.dry_run {
        print_plan(&ctx, &name);
        return Ok(());
    }
    let id = match open {
        // The page a human answers with a rollback: the same incident, now theirs.
        Some(open) if answers_open => {
            store
                .amend_incident(
                    open.id,
                    request.component,
                    from.as_deref(),
                    to.as_deref(),
                    request.reason,
                )
                .await
                .map_err(runtime_error)?;
            open.id
        }
        // A human retries after an escalation: that attempt is over; a new one starts.
        Some(open) => {
            store
                .resolve_incident(open.id, IncidentOutcome::Escalated, now)
                .await
                .map_err(runtime_error)?;
            println!(
                "incident {} (escalated) is closed: this rollback is a new attempt",
                open.id
            );
            open_declared(&store, &name, &request, from.clone(), to.clone(), now).await?
        }
        None => open_declared(&store, &name, &request, from.clone(), to.clone(), now).await?,
    };
    store
        .record_decision(&name, Some(id), &decision, &target.policy)
        .await
        .map_err(runtime_error)?;
    store
        .set_incident_phase(id, IncidentPhase::RollingBack, now, None)
        .await
        .map_err(runtime_error)?;
    // "Notify team" before the first step.
    if let Some(mut notice) =
        message::for_decision(&target.policy, &decision, Some(id), store.database())
    {
        notice.subject = message::rollback_subject(&target.policy, request.reason);
        notice.details.summary = notice.subject.clone();
        notice.body = message::text_body(&notice.details, now);
        for row in notice.addressed(
            target.notify.as_ref(),
            &DedupeKey::ManualRollback {
                incident: id,
                at: now,
            },
        ) {
            store
                .enqueue_notification(&row)
                .await
                .map_err(runtime_error)?;
        }
    }
    say(&decision.line(&name, false));
    // The watching loop takes the incident up as a restart would: the
    // procedure, then the stabilization watch.
    let delivery = Arc::new(tokio::sync::Notify::new());
    let mut actor = Actor::new(store.clone(), Arc::new(target.clone()), say_line())
        .with_delivery(Arc::clone(&delivery));
    actor.stop_when_done(id);
    let shutdown = CancellationToken::new();
    let worker = crate::notify::deliver::Worker::for_target(
        store.clone(),
        name.clone(),
        target.notify.clone(),
        delivery,
    );
    let worker_stop = CancellationToken::new();
    let worker_task = tokio::spawn(worker.run(worker_stop.clone()));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        stop.cancel();
    });
    let end = watch_until_done(target, actor, shutdown).await;
    // The last messages (the result) get a moment to go out; what a channel
    // outage holds back waits in the outbox for `rollwatch run`.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    worker_stop.cancel();
    let _ = worker_task.await;
    let waiting = store
        .notifications(id)
        .await
        .map(|n| {
            n.iter()
                .filter(|n| n.state == crate::store::NotificationState::Pending)
                .count()
        })
        .unwrap_or(0);
    if waiting > 0 {
        eprintln!(
            "{waiting} message(s) of incident {id} wait in the outbox: `rollwatch run` delivers them"
        );
    }
    finish(id, end?)
}

/// The engine's decision on the manual rollback, on what the store knows
/// (the latest deployment, the unfinished incident), and whether the
/// rollback answers that incident (else it starts its own).
fn decide(
    target: &Compiled,
    latest: Option<&DeploymentRecord>,
    open: Option<&IncidentRecord>,
    request: &RollbackRequest<'_>,
    now: DateTime<Utc>,
) -> Result<(Decision, bool), Failure> {
    let mut engine = Engine::new(Arc::new(target.policy.clone()));
    if let Some(latest) = latest {
        engine.restore_deployment(Deployment {
            at: latest.at,
            version: latest.version.clone(),
            previous: latest.previous.clone(),
            migrations: latest.migrations.clone(),
            rollback: latest.rollback,
            seen: latest.source != DeploymentSource::Announced,
        });
    }
    let mut resumed = None;
    if let Some(open) = open
        && let IncidentState::Active { phase } = open.state
    {
        let phase = match phase {
            IncidentPhase::Open => Phase::Open,
            IncidentPhase::RollingBack | IncidentPhase::Verifying | IncidentPhase::Recovering => {
                Phase::RollingBack
            }
            IncidentPhase::Watching => Phase::Watching {
                until: open
                    .watch_until
                    .unwrap_or(open.phase_at + target.policy.stabilization),
                saw_data: false,
            },
            IncidentPhase::Escalated => Phase::Escalated,
        };
        let id = engine
            .resume_incident(
                now,
                Resumed {
                    opened_at: open.opened_at,
                    tier: open.tier,
                    rule: open.rule.clone(),
                    component: open.component.clone(),
                    phase,
                    phase_at: open.phase_at,
                    announced: Action::None,
                    acknowledged: open.acknowledged,
                    held: open.held,
                    // The manual rollback cancels any deadline.
                    deadline: None,
                    declared: open.kind == IncidentKind::Declared,
                    from_version: open.from_version.clone(),
                    to_version: open.to_version.clone(),
                    paged_at: None,
                    unanswered_escalated: false,
                    clear_for: TimeDelta::zero(),
                },
            )
            .map_err(runtime_error)?;
        resumed = Some(id);
    }
    let event = Event::ManualRollback {
        by: Some(operator()),
        reason: request.reason.to_string(),
        component: request.component.map(str::to_string),
        to: request.to.map(str::to_string),
        force: request.force,
    };
    engine.handle_event(now, event).map_err(runtime_error)?;
    let decision = std::iter::from_fn(|| engine.poll_decision())
        .find(|d| d.rule == MANUAL_ROLLBACK_RULE)
        .ok_or_else(|| runtime_error("the engine made no decision on the manual rollback"))?;
    let answers_open = resumed.is_some() && decision.incident == resumed;
    Ok((
        Decision {
            incident: None,
            ..decision
        },
        answers_open,
    ))
}

/// Why the rollback is refused: the engine's explanation, the incident in
/// the way, and what `--force` may do.
fn refusal(name: &str, open: Option<&IncidentRecord>, decision: &Decision) -> String {
    let incident = open.map_or_else(String::new, |open| {
        let phase = match open.state {
            IncidentState::Active { phase } => phase.as_str(),
            IncidentState::Resolved { .. } => "resolved",
        };
        format!(
            "; incident {} is {phase}: see `rollwatch incidents show {}`",
            open.id, open.id
        )
    });
    let force = if decision.guard == Some(Guard::NoRecentDeploy) {
        "; pass --force if you have checked that this change is the cause"
    } else {
        ""
    };
    format!(
        "not rolling back {name} ({}): {}{incident}{force}",
        decision.guard.as_ref().map_or("refused", |g| g.as_str()),
        decision.explanation
    )
}

async fn open_declared(
    store: &Store,
    name: &str,
    request: &RollbackRequest<'_>,
    from: Option<String>,
    to: Option<String>,
    now: DateTime<Utc>,
) -> Result<i64, Failure> {
    store
        .open_incident(&NewIncident {
            target: name.to_string(),
            kind: IncidentKind::Declared,
            tier: Tier::Immediate,
            rule: MANUAL_ROLLBACK_RULE.into(),
            reason: request.reason.to_string(),
            component: request.component.map(str::to_string),
            from_version: from,
            to_version: to,
            opened_at: now,
            deadline: None,
        })
        .await
        .map_err(runtime_error)
}

async fn watch_until_done(
    target: Compiled,
    actor: Actor,
    shutdown: CancellationToken,
) -> Result<Option<IncidentEnd>, Failure> {
    let name = target_name(&target);
    target::run_target(
        target,
        None,
        Telemetry::new(),
        shutdown,
        |decision| say(&decision.line(&name, false)),
        Some(actor),
        target::Wiring::default(),
    )
    .await
    .map_err(Failure::Runtime)
}

fn finish(id: i64, end: Option<IncidentEnd>) -> Result<(), Failure> {
    match end {
        Some(IncidentEnd::Resolved(IncidentOutcome::Stable)) => {
            println!(
                "incident {id}: rolled back, verified and stable. Report: rollwatch incidents report {id}"
            );
            Ok(())
        }
        Some(IncidentEnd::Resolved(outcome)) => {
            println!("incident {id}: ended {}", outcome.as_str());
            Ok(())
        }
        Some(IncidentEnd::Escalated) => {
            eprintln!(
                "incident {id}: ESCALATED: the rollback failed or did not settle the system; see `rollwatch incidents show {id}`"
            );
            Err(Failure::Exit(1))
        }
        None => {
            eprintln!("incident {id}: interrupted; `rollwatch run` takes it up where it stopped");
            Err(Failure::Exit(1))
        }
    }
}

fn print_plan(ctx: &Context, name: &str) {
    let Some(plan) = ctx.plan() else { return };
    println!(
        "DRY-RUN rollback of {name}{} {} -> {}: nothing is run or stored",
        ctx.component
            .as_deref()
            .map_or_else(String::new, |c| format!(" (component {c})")),
        ctx.from_version.as_deref().unwrap_or("(current)"),
        ctx.to_version.as_deref().unwrap_or("(previous)")
    );
    println!(
        "  notify: \"{}\"",
        message::rollback_subject(&ctx.target.policy, &ctx.reason)
    );
    let mut probe_shown = ctx.target.health.is_none();
    for step in &plan.steps {
        if !probe_shown && step.stage == crate::procedure::config::Stage::Verification {
            println!("  verification  health-probe             the policy's health probe");
            probe_shown = true;
        }
        println!(
            "  {:<13} {:<24} {} (timeout {})",
            step.stage.as_str(),
            step.name,
            step.command.argv.join(" "),
            format_duration(TimeDelta::from_std(step.command.timeout).unwrap_or_default())
        );
    }
    if !probe_shown {
        println!("  verification  health-probe             the policy's health probe");
    }
    println!(
        "  watch         {} on error rate and latency",
        format_duration(ctx.target.policy.stabilization)
    );
    for step in &plan.recovery {
        println!(
            "  on failure    {:<24} {}",
            step.name,
            step.command.argv.join(" ")
        );
    }
    for note in &plan.notes {
        println!("  note: {note}");
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

/// Who is at the keyboard, for the record.
pub fn operator() -> String {
    std::env::var("ROLLWATCH_OPERATOR")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "a human".into())
}
