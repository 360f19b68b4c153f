//! Fencing against both backends: each acquisition of a target raises its
//! ownership epoch, and a store fenced with an older epoch (a stalled owner
//! that thawed) has every acting write refused: step starts, phase changes,
//! incident and decision writes, closing a step as unknown. A step's
//! recorded end is a fact and is kept whoever started the step. SQLite runs
//! always; PostgreSQL when it answers (under CI it must).

mod common;

use std::path::Path;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use rollwatch::engine::decision::{Cause, Decision};
use rollwatch::engine::policy::{Action, Tier};
use rollwatch::store::*;

const TARGET: &str = "web/production";

fn t(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap() + TimeDelta::seconds(seconds)
}

fn incident(at: DateTime<Utc>) -> NewIncident {
    NewIncident {
        target: TARGET.to_string(),
        kind: IncidentKind::Rule,
        tier: rollwatch::engine::policy::Tier::Consider,
        rule: "error-rate".to_string(),
        reason: String::new(),
        component: None,
        from_version: Some("v2".to_string()),
        to_version: Some("v1".to_string()),
        opened_at: at,
        deadline: None,
    }
}

fn step(name: &str) -> NewStep {
    NewStep {
        name: name.to_string(),
        stage: StepStage::Application,
        component: None,
        argv: vec![format!("./{name}.sh")],
    }
}

fn decision(at: DateTime<Utc>) -> Decision {
    Decision {
        at,
        action: Action::Rollback,
        tier: Tier::Consider,
        rule: "error-rate".to_string(),
        explanation: "error rate 12% > 5%".to_string(),
        cause: Cause::RuleFired,
        incident: Some(1),
        guard: None,
        reading: None,
        deadline: None,
        component: None,
        from_version: Some("v2".to_string()),
        to_version: Some("v1".to_string()),
        migrations: Vec::new(),
    }
}

fn page(incident: i64, key: &str) -> NewNotification {
    NewNotification {
        incident: Some(incident),
        kind: NotificationKind::Page,
        channel: "log".to_string(),
        recipients: Vec::new(),
        subject: "PAGE".to_string(),
        body: "paging".to_string(),
        dedupe_key: format!("incident:{incident}:page:{key}"),
        created_at: t(5),
        target: TARGET.to_string(),
        details: serde_json::json!({}),
    }
}

fn fenced(result: Result<impl std::fmt::Debug, StoreError>, what: &str) {
    match result {
        Err(StoreError::Fenced { epoch, newer, .. }) => {
            assert_eq!((epoch, newer), (1, 2), "{what}");
        }
        other => panic!("{what}: expected Fenced, got {other:?}"),
    }
}

async fn a_stale_owner_writes_nothing_and_its_steps_end_is_kept(url: &str) {
    let store = Store::open(url).await.unwrap();
    let policy = rollwatch::policy::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/staging.toml"),
    )
    .unwrap();
    let (fence_a, fence_b) = (Fence::new(TARGET), Fence::new(TARGET));
    let (a, b) = (store.fenced(fence_a.clone()), store.fenced(fence_b.clone()));
    fence_a.set(store.take_ownership(TARGET, "a:1", t(0)).await.unwrap());
    assert_eq!(fence_a.epoch(), 1);
    // A, the owner, acts.
    let id = a.open_incident(&incident(t(1))).await.unwrap();
    a.record_decision(TARGET, Some(id), &decision(t(1)), &policy)
        .await
        .unwrap();
    a.set_incident_phase(id, IncidentPhase::RollingBack, t(2), None)
        .await
        .unwrap();
    let running = a
        .step_started(id, &step("rollback-app"), t(3))
        .await
        .unwrap();
    // B takes over while A is stalled.
    fence_b.set(store.take_ownership(TARGET, "b:2", t(4)).await.unwrap());
    assert_eq!(fence_b.epoch(), 2);
    // A thaws: every acting write is refused.
    fenced(
        a.step_started(id, &step("smoke-tests"), t(5)).await,
        "step start",
    );
    fenced(
        a.set_incident_phase(id, IncidentPhase::Verifying, t(5), None)
            .await,
        "phase",
    );
    fenced(
        a.record_decision(TARGET, Some(id), &decision(t(5)), &policy)
            .await,
        "decision",
    );
    fenced(
        a.resolve_incident(id, IncidentOutcome::Stable, t(5)).await,
        "resolution",
    );
    fenced(a.set_incident_deadline(id, Some(t(60))).await, "deadline");
    fenced(a.mark_step_unknown(running, t(5), "gone").await, "unknown");
    fenced(a.enqueue_notification(&page(id, "late")).await, "message");
    // Counted (rollwatch_fenced_writes_total).
    assert!(FENCED_WRITES.load(std::sync::atomic::Ordering::Relaxed) >= 7);
    // A message B put in the outbox: A's worker (epoch 1) cannot claim it,
    // B's (epoch 2) can.
    let Enqueued::New(message) = b.enqueue_notification(&page(id, "b")).await.unwrap() else {
        panic!("a new message");
    };
    let lease = t(5) + TimeDelta::minutes(1);
    assert!(
        store
            .claim_notification_fenced(message, "a-worker", t(5), lease, Some(1))
            .await
            .unwrap()
            .is_none(),
        "a stale owner's worker sends nothing"
    );
    assert!(
        store
            .claim_notification_fenced(message, "b-worker", t(5), lease, Some(2))
            .await
            .unwrap()
            .is_some()
    );
    // Nothing of it reached the store.
    let timeline = store.incident(id).await.unwrap().unwrap();
    assert_eq!(timeline.steps.len(), 1, "{:#?}", timeline.steps);
    assert_eq!(timeline.decisions.len(), 1);
    assert!(
        timeline
            .notifications
            .iter()
            .all(|n| !n.dedupe_key.ends_with("late"))
    );
    assert_eq!(
        timeline.incident.state,
        IncidentState::Active {
            phase: IncidentPhase::RollingBack
        }
    );
    // The step's end, recorded by its runner, is a fact: kept.
    let end = StepEnd {
        outcome: StepOutcome::Succeeded,
        exit_code: Some(0),
        detail: Some("exit 0".to_string()),
        stdout: String::new(),
        stderr: String::new(),
        duration: std::time::Duration::from_secs(2),
        ended_at: t(5),
    };
    a.step_finished(running, &end).await.unwrap();
    // B, the owner now, acts.
    b.set_incident_phase(id, IncidentPhase::Verifying, t(6), None)
        .await
        .unwrap();
    b.step_started(id, &step("smoke-tests"), t(6))
        .await
        .unwrap();
    // A store without a fence (a lone rollwatch) and other targets are not
    // concerned.
    store
        .set_incident_phase(id, IncidentPhase::Watching, t(7), Some(t(60)))
        .await
        .unwrap();
    let other = store.fenced(Fence::new("api/production"));
    let mut elsewhere = incident(t(8));
    elsewhere.target = "api/production".to_string();
    other.open_incident(&elsewhere).await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn sqlite_a_stale_owner_writes_nothing_and_its_steps_end_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rollwatch.db").display());
    a_stale_owner_writes_nothing_and_its_steps_end_is_kept(&url).await;
}

#[tokio::test]
async fn postgres_a_stale_owner_writes_nothing_and_its_steps_end_is_kept() {
    let Some(schema) = common::pg::Schema::create().await else {
        return;
    };
    a_stale_owner_writes_nothing_and_its_steps_end_is_kept(&schema.url).await;
}
