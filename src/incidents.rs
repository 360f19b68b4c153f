//! `rollwatch incidents`: the stored record, for people.

use std::path::PathBuf;

use crate::cli::{Failure, IncidentsCommand, OutputFormat};
use crate::engine::time_text;
use crate::store::{IncidentRecord, IncidentState, Store, TimelineEntry};

fn runtime_error(error: impl std::fmt::Display) -> Failure {
    Failure::Runtime(anyhow::anyhow!("{error}"))
}

pub async fn run(command: IncidentsCommand, db: &str) -> Result<(), Failure> {
    let store = Store::open(db).await.map_err(runtime_error)?;
    match command {
        IncidentsCommand::List { limit, format } => list(&store, limit, format).await,
        IncidentsCommand::Show { id, format } => show(&store, id, format).await,
        IncidentsCommand::Report { id, chart } => report(&store, id, chart).await,
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
                d.guard
                    .as_deref()
                    .map_or_else(String::new, |g| format!(", guard {g}")),
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
