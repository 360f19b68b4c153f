use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::engine::decision::Guard;
use crate::engine::policy::Tier;
use crate::store::{
    AnswerKind, AnswerRecord, IncidentOutcome, IncidentPhase, IncidentRecord, NotificationKind,
    NotificationRecord, NotificationState, StepStage,
};

const POLICY: &str = "policies/checkout.toml";
const SHA: &str = "9f2c1e0b7a4d";

fn at(hour: u32, minute: u32, second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 4, hour, minute, second)
        .single()
        .expect("a valid instant")
}

fn decision(
    id: i64,
    at: DateTime<Utc>,
    action: &str,
    cause: &str,
    rule: &str,
    explanation: &str,
) -> DecisionRecord {
    DecisionRecord {
        id,
        incident: Some(17),
        target: "checkout/production".to_string(),
        at,
        action: action.parse().unwrap(),
        tier: Tier::Consider,
        rule: rule.to_string(),
        cause: cause.parse().unwrap(),
        guard: None,
        explanation: format!("{explanation} [{POLICY} sha256:{SHA}]"),
        reading: None,
        deadline: None,
        component: None,
        from_version: Some("v1.4.2".to_string()),
        to_version: Some("v1.4.1".to_string()),
        policy_path: POLICY.to_string(),
        policy_sha256: SHA.to_string(),
    }
}

#[allow(clippy::too_many_arguments)]
fn step(
    id: i64,
    stage: StepStage,
    name: &str,
    started: DateTime<Utc>,
    seconds: u64,
    outcome: StepOutcome,
    exit_code: Option<i32>,
    stdout: &str,
    stderr: &str,
) -> StepRecord {
    StepRecord {
        id,
        incident: 17,
        name: name.to_string(),
        stage,
        component: None,
        argv: vec![format!("./{name}.sh")],
        started_at: started,
        ended_at: Some(started + TimeDelta::seconds(seconds as i64)),
        outcome,
        exit_code,
        detail: None,
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
        duration: Some(Duration::from_secs(seconds)),
        runner: None,
        heartbeat_at: None,
        step_pgid: None,
        timeout: None,
    }
}

/// A rule incident of checkout/production: the error rate fired a
/// page-then-rollback, alice acknowledged and approved, the rollback ran
/// (the backup step failed, the rest succeeded) and the watch ended stable.
fn timeline() -> IncidentTimeline {
    let mut fired = decision(
        1,
        at(10, 0, 0),
        "page-then-rollback",
        "rule-fired",
        "error-rate-high",
        "error-rate-high (consider): error-rate 8.1% (95% lower bound 7.4%) > 5% over 2m of 1200 requests; \
         paging on-call, rolling back at 10:10:00 unless answered \
         (rollwatch incidents ack 17 | hold 17 | approve 17)",
    );
    fired.reading = Some(json!({
        "signal": "error-rate", "verdict": "unhealthy", "value": 0.0812, "bound": 0.074,
        "threshold": 0.05, "count": 1200.0, "window_seconds": 120
    }));
    fired.deadline = Some(at(10, 10, 0));
    let mut slow = decision(
        2,
        at(10, 1, 0),
        "notify",
        "watch-band",
        "latency-slow",
        "latency-slow (watch): latency 325ms is +30% against the pre-deploy baseline 250ms",
    );
    slow.tier = Tier::Watch;
    slow.reading = Some(json!({
        "signal": "latency-degradation", "verdict": "watch", "value": 0.3, "threshold": 0.5,
        "count": 20.0, "window_seconds": 300, "current_ms": 325.0,
        "baseline": {"ms": 250.0, "source": "pre-deploy"}
    }));
    let mut acked = decision(
        3,
        at(10, 3, 0),
        "none",
        "acknowledged",
        "error-rate-high",
        "acknowledged by alice; the automatic rollback due at 10:10:00 is cancelled",
    );
    acked.guard = Some(Guard::Acknowledged);
    let rollback = decision(
        4,
        at(10, 4, 0),
        "rollback",
        "approved",
        "error-rate-high",
        "approved by alice; rolling back v1.4.2 to v1.4.1",
    );
    let finished = decision(
        5,
        at(10, 6, 0),
        "none",
        "rollback-finished",
        "error-rate-high",
        "rollback finished; watching for 15m",
    );
    let stable = decision(
        6,
        at(10, 21, 0),
        "none",
        "stable",
        "error-rate-high",
        "stable for 15m after the rollback: incident resolved",
    );

    let backup_errors: String = (1..=30)
        .map(|i| format!("pg_dump: retry {i}: connection refused\n"))
        .collect();
    let steps = vec![
        step(
            1,
            StepStage::Notify,
            "announce",
            at(10, 4, 0),
            1,
            StepOutcome::Succeeded,
            Some(0),
            "",
            "",
        ),
        step(
            2,
            StepStage::Backup,
            "snapshot-db",
            at(10, 4, 1),
            30,
            StepOutcome::Failed,
            Some(2),
            "",
            &backup_errors,
        ),
        step(
            3,
            StepStage::Application,
            "rollback-app",
            at(10, 4, 31),
            89,
            StepOutcome::Succeeded,
            Some(0),
            "deployment.apps/checkout rolled back\n",
            "",
        ),
    ];
    let answers = vec![
        AnswerRecord {
            id: 1,
            incident: 17,
            kind: AnswerKind::Ack,
            by: "alice".to_string(),
            at: at(10, 3, 0),
            note: Some("looking | on it".to_string()),
        },
        AnswerRecord {
            id: 2,
            incident: 17,
            kind: AnswerKind::Approve,
            by: "alice".to_string(),
            at: at(10, 4, 0),
            note: None,
        },
    ];
    let notifications = vec![NotificationRecord {
        id: 1,
        incident: Some(17),
        kind: NotificationKind::Page,
        channel: "email".to_string(),
        recipients: vec!["oncall@example.com".to_string()],
        subject: "checkout/production: error-rate-high".to_string(),
        body: "...".to_string(),
        dedupe_key: "incident:17:page:email".to_string(),
        state: NotificationState::Sent,
        attempts: 1,
        next_attempt_at: at(10, 0, 0),
        last_error: None,
        created_at: at(10, 0, 0),
        sent_at: Some(at(10, 0, 2)),
        target: "checkout/production".into(),
        details: serde_json::json!({}),
    }];
    IncidentTimeline {
        incident: IncidentRecord {
            id: 17,
            target: "checkout/production".to_string(),
            kind: IncidentKind::Rule,
            tier: Tier::Consider,
            rule: "error-rate-high".to_string(),
            reason: String::new(),
            component: None,
            from_version: Some("v1.4.2".to_string()),
            to_version: Some("v1.4.1".to_string()),
            opened_at: at(10, 0, 0),
            state: IncidentState::Resolved {
                at: at(10, 21, 0),
                outcome: IncidentOutcome::Stable,
            },
            phase_at: at(10, 21, 0),
            deadline: Some(at(10, 10, 0)),
            watch_until: Some(at(10, 21, 0)),
            acknowledged: true,
            held: false,
            clear_since: None,
        },
        decisions: vec![fired, slow, acked, rollback, finished, stable],
        steps,
        answers,
        notifications,
    }
}

/// 48 polls 30 s apart from 09:58: errors spike from 10:00 to 10:06, latency
/// rises with them, and two polls in the middle returned nothing.
fn samples() -> Vec<SamplePoint> {
    (0..48)
        .map(|i| {
            let sample_at = at(9, 58, 0) + TimeDelta::seconds(30 * i);
            let spiking = (4..16).contains(&i);
            let missing = i == 9 || i == 10;
            SamplePoint {
                at: sample_at,
                up: Some(true),
                requests: (!missing).then_some(600.0),
                errors: (!missing).then_some(if spiking { 50.0 } else { 3.0 }),
                users: None,
                users_affected: None,
                latency_ms: (!missing).then_some(if spiking { 330.0 } else { 240.0 }),
            }
        })
        .collect()
}

fn input<'a>(timeline: &'a IncidentTimeline, samples: &'a [SamplePoint]) -> ReportInput<'a> {
    ReportInput {
        timeline,
        samples,
        chart_file: Some("incident-17.svg"),
    }
}

#[test]
fn markdown_has_every_section_in_order() {
    let timeline = timeline();
    let samples = samples();
    let report = markdown(&input(&timeline, &samples));
    let headings = [
        "# Incident 17: checkout/production — error-rate-high (consider)",
        "## What fired",
        "## Timeline",
        "## Actions",
        "## Stabilization watch",
        "## Chart",
        "## Policy",
    ];
    let mut from = 0;
    for heading in headings {
        let found = report[from..]
            .find(heading)
            .unwrap_or_else(|| panic!("{heading} missing or out of order in:\n{report}"));
        from += found + heading.len();
    }
    assert!(report.contains("| duration | 21m |"), "{report}");
    assert!(
        report.contains("| versions | v1.4.2 → v1.4.1 |"),
        "{report}"
    );
    assert!(report.contains("(stable)"), "{report}");
    assert!(report.contains("| acknowledged | yes |"), "{report}");
    assert!(report.contains("![error rate and latency](incident-17.svg)"));
    assert!(report.contains(&format!("`{POLICY}` sha256 `{SHA}`")));
    assert_eq!(
        report.matches(SHA).count() - report.matches("sha256:").count(),
        1,
        "{report}"
    );
}

#[test]
fn what_fired_states_values_against_thresholds() {
    let timeline = timeline();
    let report = markdown(&input(&timeline, &[]));
    assert!(
        report.contains(
            "error rate 8.1% (95% lower bound 7.4%) > 5% over 2m, 1,200 requests — unhealthy"
        ),
        "{report}"
    );
    assert!(
        report.contains(
            "latency 325 ms (+30%) against the pre-deploy baseline 250 ms ≤ +50% (bound 375 ms) over 5m, median of 20 samples"
        ),
        "{report}"
    );
}

#[test]
fn actions_list_every_step_with_duration_and_exit_status() {
    let timeline = timeline();
    let report = markdown(&input(&timeline, &[]));
    for row in [
        "| notify | announce | — | 10:04:00 | 1s | succeeded | 0 |",
        "| backup | snapshot-db | — | 10:04:01 | 30s | failed | 2 |",
        "| application | rollback-app | — | 10:04:31 | 1m29s | succeeded | 0 |",
    ] {
        assert!(report.contains(row), "{row} missing in:\n{report}");
    }
    // The failed step's stderr is shown by its tail only.
    assert!(report.contains("stderr (last 20 of 30 lines):"), "{report}");
    assert!(report.contains("pg_dump: retry 30: connection refused"));
    assert!(report.contains("pg_dump: retry 11: connection refused"));
    assert!(!report.contains("pg_dump: retry 10: connection refused"));
    assert!(report.contains("deployment.apps/checkout rolled back"));
    assert!(report.contains("step backup/snapshot-db failed after 30s, exit code 2"));
}

#[test]
fn the_watch_section_says_from_until_and_the_result() {
    let timeline = timeline();
    let report = markdown(&input(&timeline, &[]));
    assert!(
        report
            .contains("Watched from 2025-03-04 10:06:00 UTC until 2025-03-04 10:21:00 UTC (15m)."),
        "{report}"
    );
    assert!(report.contains("**Stable.** stable for 15m after the rollback"));
}

#[test]
fn table_cells_escape_pipes_and_newlines() {
    let timeline = timeline();
    let report = markdown(&input(&timeline, &[]));
    assert!(
        report.contains("ack 17 \\| hold 17 \\| approve 17"),
        "{report}"
    );
    assert!(
        report.contains("ack by alice: looking \\| on it"),
        "{report}"
    );
    assert_eq!(cell("a|b\nc\r\nd<e>"), "a\\|b<br>c<br>d&lt;e>");
    // Every table row still has its two columns.
    let timeline_rows = report
        .lines()
        .skip_while(|l| !l.starts_with("| time (UTC)"))
        .take_while(|l| l.starts_with('|'));
    for row in timeline_rows {
        assert_eq!(row.replace("\\|", "").matches('|').count(), 3, "{row}");
    }
}

#[test]
fn an_unresolved_incident_without_rollback_or_samples_still_renders() {
    let mut timeline = timeline();
    timeline.incident.state = IncidentState::Active {
        phase: IncidentPhase::Open,
    };
    timeline.incident.watch_until = None;
    timeline.decisions.truncate(1);
    timeline.steps.clear();
    timeline.decisions[0].reading = Some(json!({"signal": "error-rate", "value": "garbage"}));
    let input = ReportInput {
        timeline: &timeline,
        samples: &[],
        chart_file: None,
    };
    let report = markdown(&input);
    assert!(report.contains("| phase | open since"), "{report}");
    assert!(report.contains("No rollback ran, so there was no stabilization watch."));
    assert!(report.contains("No procedure step ran."));
    assert!(report.contains("reading not understood"));
    assert!(!report.contains("## Chart"));
    assert!(matches!(
        chart_svg(&input),
        Err(ReportError::NoSamples { incident: 17 })
    ));
}

#[test]
fn an_incident_over_midnight_shows_dates() {
    let mut timeline = timeline();
    let next_day = at(10, 21, 0) + TimeDelta::days(1);
    timeline.incident.state = IncidentState::Resolved {
        at: next_day,
        outcome: IncidentOutcome::Escalated,
    };
    let report = markdown(&input(&timeline, &[]));
    assert!(
        report.contains("| 2025-03-04 10:00:00 | incident opened"),
        "{report}"
    );
    assert!(report.contains("| 2025-03-05 10:21:00 | incident resolved: escalated |"));
    assert!(report.contains("| duration | 24h21m |"));
    assert!(!report.contains("All times on"));
}

/// How the SVG backend writes a color.
fn hex(color: plotters::style::RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", color.0, color.1, color.2)
}

#[test]
fn the_chart_is_an_svg_with_thresholds_and_decision_labels() {
    let timeline = timeline();
    let samples = samples();
    let svg = chart_svg(&input(&timeline, &samples)).expect("a chart");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
    assert!(svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(!svg.contains("NaN"));
    // Each text element holds its text on a line of its own.
    for label in [
        "threshold 5% (error-rate-high)",
        "bound 375 ms = baseline +50% (latency-slow)",
        "page-then-rollback",
        "rollback",
        "rollback-finished",
        "stable",
        "rollback-app starts",
        "watch ends",
        "10:00:00",
        "10:05:00",
    ] {
        assert!(svg.contains(&format!("\n{label}\n")), "{label} missing");
    }
    let threshold = format!("stroke=\"{}\"", hex(chart::THRESHOLD_COLOR));
    assert!(
        svg.lines()
            .any(|l| l.starts_with("<polyline") && l.contains(&threshold))
    );
    // The two polls that returned nothing break each line in two.
    for color in [chart::ERROR_RATE_COLOR, chart::LATENCY_COLOR] {
        let stroke = format!("stroke=\"{}\"", hex(color));
        let lines = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(&stroke))
            .count();
        assert_eq!(lines, 2, "{stroke}");
    }
}

#[test]
fn the_chart_survives_odd_data() {
    let timeline = timeline();
    let single = vec![samples()[0].clone()];
    let svg = chart_svg(&input(&timeline, &single)).expect("one sample is a chart");
    assert!(!svg.contains("NaN"));

    let mut odd = samples();
    for sample in &mut odd {
        sample.latency_ms = Some(f64::NAN);
        sample.requests = Some(0.0);
    }
    assert!(matches!(
        chart_svg(&input(&timeline, &odd)),
        Err(ReportError::NoValues { incident: 17, .. })
    ));
    odd[3].latency_ms = Some(200.0);
    let svg = chart_svg(&input(&timeline, &odd)).expect("one latency value is a chart");
    assert!(!svg.contains("NaN"));
    assert!(svg.contains("no data"));
}
