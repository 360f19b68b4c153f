//! `rollwatch incidents`: the stored record, for people.

use std::path::PathBuf;

use super::Answer;
use super::{Failure, IncidentsCommand, OutputFormat, runtime_error};
use crate::engine::time_text;
use crate::store::{AnswerKind, IncidentRecord, IncidentState, NewAnswer, Store, TimelineEntry};

pub async fn run(command: IncidentsCommand, db: &str) -> Result<(), Failure> {
    let store = Store::open(db).await.map_err(runtime_error)?;
    match command {
        IncidentsCommand::List { limit, format } => list(&store, limit, format).await,
        IncidentsCommand::Show { id, format } => show(&store, id, format).await,
        IncidentsCommand::Report { id, chart } => report(&store, id, chart).await,
        IncidentsCommand::Ack(answer) => answer_incident(&store, AnswerKind::Ack, answer).await,
        IncidentsCommand::Hold(answer) => answer_incident(&store, AnswerKind::Hold, answer).await,
        IncidentsCommand::Approve(answer) => {
            answer_incident(&store, AnswerKind::Approve, answer).await
        }
    }
}

fn state_text(incident: &IncidentRecord) -> String {
    match incident.state {
        IncidentState::Active { phase } => phase.as_str().to_string(),
        IncidentState::Resolved { outcome, .. } => format!("resolved ({})", outcome.as_str()),
    }
}

async fn list(store: &Store, limit: i64, format: OutputFormat) -> Result<(), Failure> {
    let incidents = store.list_incidents(limit).await.map_err(runtime_error)?;
    if format == OutputFormat::Json {
        let json = serde_json::to_string(&incidents).map_err(runtime_error)?;
        println!("{json}");
        return Ok(());
    }
    if incidents.is_empty() {
        println!("no incidents in {}", store.database());
        return Ok(());
    }
    println!(
        "{:>5}  {:<20}  {:<24}  {:<8}  {:<10}  {:<20}  state",
        "id", "opened", "target", "kind", "tier", "rule"
    );
    for incident in &incidents {
        println!(
            "{:>5}  {:<20}  {:<24}  {:<8}  {:<10}  {:<20}  {}",
            incident.id,
            time_text(incident.opened_at),
            incident.target,
            incident.kind.as_str(),
            incident.tier,
            incident.rule,
            state_text(incident)
        );
    }
    Ok(())
}

async fn show(store: &Store, id: i64, format: OutputFormat) -> Result<(), Failure> {
    let Some(timeline) = store.incident(id).await.map_err(runtime_error)? else {
        return Err(runtime_error(format!(
            "no incident {id} in {}",
            store.database()
        )));
    };
    if format == OutputFormat::Json {
        let json = serde_json::to_string(&timeline).map_err(runtime_error)?;
        println!("{json}");
        return Ok(());
    }
    let incident = &timeline.incident;
    println!(
        "incident {} on {}: {} {} ({}), {}",
        incident.id,
        incident.target,
        incident.tier,
        incident.rule,
        incident.kind.as_str(),
        state_text(incident)
    );
    if !incident.reason.is_empty() {
        println!("reason: {}", incident.reason);
    }
    for entry in timeline.entries() {
        let at = time_text(entry.at());
        match entry {
            TimelineEntry::Opened(_) => println!("{at}  opened"),
            TimelineEntry::Decision(d) => println!(
                "{at}  decision {} ({}{}): {}",
                d.action,
                d.cause,
                d.guard.map_or_else(String::new, |g| format!(", guard {g}")),
                d.explanation
            ),
            TimelineEntry::Step(s) => println!(
                "{at}  step {} {} {}: {}{}",
                s.stage.as_str(),
                s.name,
                s.outcome.as_str(),
                s.duration.map_or_else(
                    || "still running".to_string(),
                    |d| format!("{:.1}s", d.as_secs_f64())
                ),
                s.detail
                    .as_deref()
                    .map_or_else(String::new, |d| format!(", {d}"))
            ),
            TimelineEntry::Answer(a) => println!("{at}  {} by {}", a.kind.as_str(), a.by),
            TimelineEntry::Notification(n) => println!(
                "{at}  {} via {} ({}): {}",
                n.kind.as_str(),
                n.channel,
                n.state.as_str(),
                n.subject
            ),
            TimelineEntry::Resolved(i) => println!("{at}  {}", state_text(i)),
        }
    }
    Ok(())
}

async fn report(store: &Store, id: i64, chart: Option<PathBuf>) -> Result<(), Failure> {
    let Some(timeline) = store.incident(id).await.map_err(runtime_error)? else {
        return Err(runtime_error(format!(
            "no incident {id} in {}",
            store.database()
        )));
    };
    let samples = store.samples(id).await.map_err(runtime_error)?;
    let chart_path = chart.unwrap_or_else(|| PathBuf::from(format!("incident-{id}.svg")));
    let mut input = crate::report::ReportInput {
        timeline: &timeline,
        samples: &samples,
        chart_file: None,
    };
    // The Markdown links the chart only when it was written.
    let chart_name = chart_path.display().to_string();
    match crate::report::chart_svg(&input) {
        Ok(svg) => match std::fs::write(&chart_path, svg) {
            Ok(()) => {
                eprintln!("chart written to {chart_name}");
                input.chart_file = Some(&chart_name);
            }
            Err(error) => eprintln!("warning: cannot write the chart to {chart_name}: {error}"),
        },
        Err(error) => eprintln!("no chart: {error}"),
    }
    print!("{}", crate::report::markdown(&input));
    Ok(())
}

/// Records a human's answer; the `run` watching the target applies it at its
/// next poll (docs/decisions.md).
async fn answer_incident(store: &Store, kind: AnswerKind, answer: Answer) -> Result<(), Failure> {
    let Some(timeline) = store.incident(answer.id).await.map_err(runtime_error)? else {
        return Err(runtime_error(format!(
            "no incident {} in {}",
            answer.id,
            store.database()
        )));
    };
    if let IncidentState::Resolved { outcome, .. } = timeline.incident.state {
        return Err(runtime_error(format!(
            "incident {} is already resolved ({}): nothing to answer",
            answer.id,
            outcome.as_str()
        )));
    }
    let by = answer.by.unwrap_or_else(crate::cmd::rollback::operator);
    if by.trim().is_empty() {
        return Err(Failure::Usage("--by must name who answers".into()));
    }
    store
        .record_answer(&NewAnswer {
            incident: answer.id,
            kind,
            by: by.clone(),
            at: chrono::Utc::now(),
            note: answer.note,
        })
        .await
        .map_err(runtime_error)?;
    let effect = match kind {
        AnswerKind::Ack => {
            "you own it: escalation stops and no automatic rollback follows; approve or hold to decide"
        }
        AnswerKind::Hold => "no rollback for this incident unless approved",
        AnswerKind::Approve => "the rollback starts at the watching rollwatch's next poll",
    };
    println!(
        "incident {} on {}: {} by {by} recorded; {effect}",
        answer.id,
        timeline.incident.target,
        kind.as_str()
    );
    Ok(())
}
