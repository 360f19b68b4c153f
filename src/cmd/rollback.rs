//! `rollwatch rollback`: the emergency path a human runs by hand, through the
//! same procedure, records and watch as an automatic rollback.

use std::path::Path;
use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::{Failure, load_target, runtime_error};
use crate::act::actor::{Actor, IncidentEnd};
use crate::act::procedure::Context;
use crate::console::say;
use crate::engine::decision::{Cause, Decision};
use crate::engine::policy::{Action, Tier};
use crate::notify::dedupe::DedupeKey;
use crate::notify::message;
use crate::policy::Compiled;
use crate::runtime::target;
use crate::store::{
    IncidentKind, IncidentOutcome, IncidentPhase, IncidentState, NewIncident, Store,
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
    let from = latest.and_then(|d| d.version.clone());
    let to = request
        .to
        .map(str::to_string)
        .or_else(|| latest.and_then(|d| d.previous.clone()));
    let migrations = latest.map(|d| d.migrations.clone()).unwrap_or_default();
    // Guards: never two rollbacks at once; a rollback of a recent rollback only when forced.
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
        .find(|u| u.incident.kind != IncidentKind::Drill);
    if let Some(open) = open
        && let IncidentState::Active { phase } = open.incident.state
        && !matches!(phase, IncidentPhase::Open | IncidentPhase::Escalated)
    {
        return Err(runtime_error(format!(
            "not rolling back {name}: incident {} is already {} (a rollback is running); see `rollwatch incidents show {}`",
            open.incident.id,
            phase.as_str(),
            open.incident.id
        )));
    }
    let cooldown = target.policy.evaluation.cooldown;
    if let Some(latest) = latest.filter(|d| d.rollback && Utc::now() - d.at < cooldown)
        && !request.force
    {
        return Err(runtime_error(format!(
            "not rolling back {name}: the running version {} is itself a rollback from {} ago (within the {} cooldown), and a rollback is not rolled back; pass --force if you are sure",
            latest.version.as_deref().unwrap_or("(unknown)"),
            format_duration(Utc::now() - latest.at),
            format_duration(cooldown)
        )));
    }
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
    let now = Utc::now();
    let phase_of = |open: &crate::store::UnfinishedIncident| match open.incident.state {
        IncidentState::Active { phase } => Some(phase),
        IncidentState::Resolved { .. } => None,
    };
    let id = match open {
        // The page a human answers with a rollback: the same incident, now theirs.
        Some(open) if phase_of(open) == Some(IncidentPhase::Open) => {
            store
                .amend_incident(
                    open.incident.id,
                    request.component,
                    from.as_deref(),
                    to.as_deref(),
                    request.reason,
                )
                .await
                .map_err(runtime_error)?;
            open.incident.id
        }
        // A human retries after an escalation: that attempt is over; a new one starts.
        Some(open) => {
            store
                .resolve_incident(open.incident.id, IncidentOutcome::Escalated, now)
                .await
                .map_err(runtime_error)?;
            println!(
                "incident {} (escalated) is closed: this rollback is a new attempt",
                open.incident.id
            );
            open_declared(&store, &name, &request, from.clone(), to.clone(), now).await?
        }
        None => open_declared(&store, &name, &request, from.clone(), to.clone(), now).await?,
    };
    let decision = Decision {
        at: now,
        action: Action::Rollback,
        tier: Tier::Immediate,
        rule: "manual-rollback".into(),
        explanation: format!(
            "manual rollback by {}: {}; rolling back {} -> {} [{} sha256:{}]",
            operator(),
            request.reason,
            from.as_deref().unwrap_or("the current version"),
            to.as_deref().unwrap_or("the previous version"),
            target.policy.path,
            target.policy.short_hash()
        ),
        cause: Cause::Declared,
        incident: None,
        guard: None,
        reading: None,
        deadline: None,
        component: request.component.map(str::to_string),
        from_version: from,
        to_version: to,
        migrations: Vec::new(),
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

async fn open_declared(
    store: &Store,
    name: &str,
    request: &RollbackRequest<'_>,
    from: Option<String>,
    to: Option<String>,
    now: chrono::DateTime<Utc>,
) -> Result<i64, Failure> {
    store
        .open_incident(&NewIncident {
            target: name.to_string(),
            kind: IncidentKind::Declared,
            tier: Tier::Immediate,
            rule: "manual-rollback".into(),
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
            step.stage.name(),
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
