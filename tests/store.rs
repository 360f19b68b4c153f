//! The store against both backends: every case runs on SQLite (a temporary
//! file, always) and on PostgreSQL (`ROLLWATCH_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`), each PostgreSQL test in a fresh
//! schema dropped at its end. Without a reachable PostgreSQL the PostgreSQL
//! half is skipped, except under CI (`CI` set), where it fails.

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use rollwatch::engine::decision::{Cause, Decision, Guard};
use rollwatch::engine::policy::{Action, Policy, Tier};
use rollwatch::engine::signals::{Reading, Verdict};
use rollwatch::store::*;

const TARGET: &str = "web/production";

/// Where one test's database lives; `open` may be called again (a restart).
struct TestDb {
    url: String,
}

impl TestDb {
    async fn open(&self) -> Store {
        Store::open(&self.url)
            .await
            .unwrap_or_else(|e| panic!("open {}: {e}", self.url))
    }
}

type Case = fn(TestDb) -> Pin<Box<dyn Future<Output = ()> + Send>>;

async fn run_on_sqlite(case: Case) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollwatch.db");
    let url = format!("sqlite://{}", path.display());
    case(TestDb { url }).await;
}

async fn run_on_postgres(case: Case) {
    let Some(schema) = common::pg::Schema::create().await else {
        return;
    };
    let url = schema.url.clone();
    // A panicking case still drops its schema: the panic is caught here.
    let outcome = tokio::spawn(case(TestDb { url })).await;
    drop(schema);
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

/// Each named case becomes `NAME::sqlite` and `NAME::postgres`.
macro_rules! on_both_backends {
    ($($case:ident),+ $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::run_on_sqlite(|db| Box::pin(super::$case(db))).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::run_on_postgres(|db| Box::pin(super::$case(db))).await
            }
        }
    )+};
}

on_both_backends!(
    migrations_apply_again_when_reopened,
    a_started_step_without_an_end_is_reported_as_unfinished,
    the_dedupe_key_suppresses_a_second_page,
    due_notifications_come_in_order_and_not_after_being_sent,
    answers_round_trip_and_set_the_incident_flags,
    suppressions_round_trip_and_expire,
    the_timeline_is_in_time_order,
    times_round_trip_to_the_microsecond,
    a_target_has_one_unresolved_incident,
    a_decision_round_trips_with_its_policy_hash,
    an_incidents_samples_round_trip_once_each,
    each_channel_delivers_in_order_from_its_head,
    answers_are_recorded_while_another_process_writes,
    of_two_workers_claiming_a_notification_at_once_one_wins,
    a_claim_whose_lease_expired_can_be_taken_over_and_only_the_claimant_records,
);

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap()
}

fn secs(s: i64) -> DateTime<Utc> {
    t0() + TimeDelta::seconds(s)
}

fn new_incident(target: &str, kind: IncidentKind, at: DateTime<Utc>) -> NewIncident {
    NewIncident {
        target: target.to_string(),
        kind,
        tier: Tier::Immediate,
        rule: "error-rate".to_string(),
        reason: String::new(),
        component: Some("backend".to_string()),
        from_version: Some("v2".to_string()),
        to_version: Some("v1".to_string()),
        opened_at: at,
        deadline: None,
    }
}

fn step(name: &str, stage: StepStage) -> NewStep {
    NewStep {
        name: name.to_string(),
        stage,
        component: None,
        argv: vec![
            "./rollback.sh".to_string(),
            "--to".to_string(),
            "v1".to_string(),
        ],
    }
}

fn page(incident: Option<i64>, key: &str, at: DateTime<Utc>) -> NewNotification {
    NewNotification {
        incident,
        kind: NotificationKind::Page,
        channel: "email".to_string(),
        recipients: vec!["oncall@example.com".to_string()],
        subject: format!("page {key}"),
        body: "error rate 12% > 5%".to_string(),
        dedupe_key: key.to_string(),
        created_at: at,
        target: TARGET.to_string(),
        details: serde_json::json!({"rule": "error-rate"}),
    }
}

/// The claimant of the outbox tests that play one worker.
const WORKER: &str = "worker-a";

/// Claims a due notification for `WORKER` for a minute from `now`.
async fn claim(store: &Store, id: i64, now: DateTime<Utc>) -> NotificationRecord {
    store
        .claim_notification(id, WORKER, now, now + TimeDelta::minutes(1))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("notification {id} could not be claimed at {now}"))
}

fn staging_policy() -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/staging.toml");
    rollwatch::policy::load(&path).expect("the shipped staging policy loads")
}

async fn migrations_apply_again_when_reopened(db: TestDb) {
    let store = db.open().await;
    let id = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    store.close().await;

    let reopened = db.open().await;
    let again = db.open().await;
    let listed = again.list_incidents(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);
    assert_eq!(
        reopened.incident(id).await.unwrap().unwrap().incident.id,
        id
    );
}

async fn a_started_step_without_an_end_is_reported_as_unfinished(db: TestDb) {
    let store = db.open().await;
    let incident = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    let other = store
        .open_incident(&new_incident("api/production", IncidentKind::Rule, t0()))
        .await
        .unwrap();
    store
        .set_incident_phase(incident, IncidentPhase::RollingBack, secs(1), None)
        .await
        .unwrap();
    let backup = store
        .step_started(incident, &step("backup", StepStage::Backup), secs(2))
        .await
        .unwrap();
    store
        .step_finished(
            backup,
            &StepEnd {
                outcome: StepOutcome::Succeeded,
                exit_code: Some(0),
                detail: None,
                stdout: "backup written\n".to_string(),
                stderr: String::new(),
                duration: Duration::from_millis(1500),
                ended_at: secs(3),
            },
        )
        .await
        .unwrap();
    let rollback = store
        .step_started(incident, &step("rollback", StepStage::Application), secs(4))
        .await
        .unwrap();
    store.close().await;

    // A restart: a new store on the same database.
    let store = db.open().await;
    let unfinished = store.unfinished_incidents(TARGET).await.unwrap();
    assert_eq!(unfinished.len(), 1, "only this target's incident");
    let found = &unfinished[0];
    assert_eq!(found.incident.id, incident);
    assert_eq!(
        found.incident.state,
        IncidentState::Active {
            phase: IncidentPhase::RollingBack
        }
    );
    assert_eq!(found.steps.len(), 2);
    assert_eq!(found.steps[0].outcome, StepOutcome::Succeeded);
    assert_eq!(found.steps[0].duration, Some(Duration::from_millis(1500)));
    assert_eq!(found.steps[0].stdout, "backup written\n");
    let interrupted: Vec<i64> = found.interrupted_steps().map(|s| s.id).collect();
    assert_eq!(interrupted, vec![rollback]);
    assert_eq!(found.steps[1].ended_at, None);
    assert_eq!(
        found.steps[1].argv,
        step("rollback", StepStage::Application).argv
    );

    store
        .mark_step_unknown(rollback, secs(60), "rollwatch restarted while it ran")
        .await
        .unwrap();
    let late_end = StepEnd {
        outcome: StepOutcome::Failed,
        exit_code: Some(1),
        detail: None,
        stdout: String::new(),
        stderr: String::new(),
        duration: Duration::ZERO,
        ended_at: secs(61),
    };
    assert!(matches!(
        store.step_finished(rollback, &late_end).await,
        Err(StoreError::StepNotRunning(id)) if id == rollback
    ));
    assert!(matches!(
        store
            .step_started(9999, &step("x", StepStage::Notify), secs(1))
            .await,
        Err(StoreError::NoSuchIncident(9999))
    ));
    store
        .resolve_incident(incident, IncidentOutcome::Escalated, secs(70))
        .await
        .unwrap();
    assert!(store.unfinished_incidents(TARGET).await.unwrap().is_empty());
    assert_eq!(
        store.unfinished_incidents("api/production").await.unwrap()[0]
            .incident
            .id,
        other
    );
}

async fn the_dedupe_key_suppresses_a_second_page(db: TestDb) {
    let store = db.open().await;
    let incident = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    let key = format!("incident:{incident}:page:email");
    let first = store
        .enqueue_notification(&page(Some(incident), &key, secs(1)))
        .await
        .unwrap();
    let second = store
        .enqueue_notification(&page(Some(incident), &key, secs(2)))
        .await
        .unwrap();
    assert!(matches!(first, Enqueued::New(_)));
    assert_eq!(second, Enqueued::Duplicate(first.id()));

    // Still one after it was sent: a page is never repeated.
    claim(&store, first.id(), secs(3)).await;
    assert!(
        store
            .mark_notification_sent(first.id(), WORKER, secs(3))
            .await
            .unwrap()
    );
    let third = store
        .enqueue_notification(&page(Some(incident), &key, secs(4)))
        .await
        .unwrap();
    assert_eq!(third, Enqueued::Duplicate(first.id()));
    let stored = store.notifications(incident).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].subject, format!("page {key}"));
}

async fn due_notifications_come_in_order_and_not_after_being_sent(db: TestDb) {
    let store = db.open().await;
    let late = store
        .enqueue_notification(&page(None, "c", secs(20)))
        .await
        .unwrap()
        .id();
    let early = store
        .enqueue_notification(&page(None, "a", secs(0)))
        .await
        .unwrap()
        .id();
    let middle = store
        .enqueue_notification(&page(None, "b", secs(10)))
        .await
        .unwrap()
        .id();
    let future = store
        .enqueue_notification(&page(None, "d", secs(100)))
        .await
        .unwrap()
        .id();

    let ids = |list: Vec<NotificationRecord>| list.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.due_notifications(secs(30), 10).await.unwrap()),
        vec![early, middle, late]
    );
    assert_eq!(
        ids(store.due_notifications(secs(30), 2).await.unwrap()),
        vec![early, middle]
    );
    assert_eq!(
        ids(store.due_notifications(secs(10), 10).await.unwrap()),
        vec![early, middle]
    );

    for id in [early, middle, late] {
        claim(&store, id, secs(31)).await;
    }
    store
        .mark_notification_sent(early, WORKER, secs(31))
        .await
        .unwrap();
    store
        .mark_notification_failed(middle, WORKER, "smtp: connection refused", Some(secs(90)))
        .await
        .unwrap();
    store
        .mark_notification_failed(late, WORKER, "550 no such user", None)
        .await
        .unwrap();
    assert!(
        store
            .due_notifications(secs(60), 10)
            .await
            .unwrap()
            .is_empty()
    );

    let due = store.due_notifications(secs(120), 10).await.unwrap();
    assert_eq!(ids(due.clone()), vec![middle, future]);
    assert_eq!(due[0].attempts, 1);
    assert_eq!(
        due[0].last_error.as_deref(),
        Some("smtp: connection refused")
    );
    assert_eq!(due[0].next_attempt_at, secs(90));
    assert_eq!(due[0].state, NotificationState::Pending);

    // Settled ones stay settled (and cannot be claimed); unknown ids are an error.
    assert!(
        !store
            .mark_notification_sent(late, WORKER, secs(121))
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .claim_notification(late, WORKER, secs(121), secs(181))
            .await
            .unwrap(),
        None
    );
    assert!(!ids(store.due_notifications(secs(999), 10).await.unwrap()).contains(&late));
    assert!(matches!(
        store.mark_notification_sent(424242, WORKER, secs(1)).await,
        Err(StoreError::NoSuchNotification(424242))
    ));
}

async fn answers_round_trip_and_set_the_incident_flags(db: TestDb) {
    let store = db.open().await;
    let incident = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    let ack = NewAnswer {
        incident,
        kind: AnswerKind::Ack,
        by: "alice".to_string(),
        at: secs(5),
        note: None,
    };
    let hold = NewAnswer {
        incident,
        kind: AnswerKind::Hold,
        by: "bob".to_string(),
        at: secs(7),
        note: Some("investigating the cache".to_string()),
    };
    // Stored out of order; read back in time order.
    let hold_id = store.record_answer(&hold).await.unwrap();
    let ack_id = store.record_answer(&ack).await.unwrap();
    let answers = store.answers(incident).await.unwrap();
    assert_eq!(
        answers,
        vec![
            AnswerRecord {
                id: ack_id,
                incident,
                kind: AnswerKind::Ack,
                by: "alice".into(),
                at: secs(5),
                note: None
            },
            AnswerRecord {
                id: hold_id,
                incident,
                kind: AnswerKind::Hold,
                by: "bob".into(),
                at: secs(7),
                note: Some("investigating the cache".into()),
            },
        ]
    );
    let record = store.incident(incident).await.unwrap().unwrap().incident;
    assert!(record.acknowledged && record.held);
    assert!(matches!(
        store
            .record_answer(&NewAnswer {
                incident: 777,
                ..ack
            })
            .await,
        Err(StoreError::NoSuchIncident(777))
    ));
}

/// `rollwatch incidents ack|hold|approve` beside a running `run`, which
/// writes all the time: every answer is stored. On SQLite an answer's
/// transaction (read the incident, then write) failed at once with "database
/// is locked" whenever `run` wrote in between (a stale WAL snapshot).
async fn answers_are_recorded_while_another_process_writes(db: TestDb) {
    let run = db.open().await;
    let cli = db.open().await;
    let incident = run
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut written = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let key = format!("busy-{written}");
                run.enqueue_notification(&page(Some(incident), &key, secs(written)))
                    .await
                    .unwrap();
                written += 1;
            }
            written
        })
    };
    for n in 0..60 {
        let answer = NewAnswer {
            incident,
            kind: AnswerKind::Ack,
            by: format!("oncall-{n}"),
            at: secs(n),
            note: None,
        };
        if let Err(error) = cli.record_answer(&answer).await {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            panic!("answer {n} was not stored: {error}");
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let written = writer.await.unwrap();
    assert!(written > 0, "the other process wrote meanwhile");
    assert_eq!(cli.answers(incident).await.unwrap().len(), 60);
}

async fn suppressions_round_trip_and_expire(db: TestDb) {
    let store = db.open().await;
    let suppression = |rule: Option<&str>, until: DateTime<Utc>| NewSuppression {
        target: TARGET.to_string(),
        rule: rule.map(str::to_string),
        until,
        reason: "known issue JIRA-42".to_string(),
        created_by: "carol".to_string(),
        created_at: t0(),
    };
    let later = store
        .add_suppression(&suppression(None, secs(7200)))
        .await
        .unwrap();
    let sooner = store
        .add_suppression(&suppression(Some("latency-p95"), secs(3600)))
        .await
        .unwrap();
    store
        .add_suppression(&suppression(Some("old"), secs(60)))
        .await
        .unwrap();
    let mut elsewhere = suppression(None, secs(7200));
    elsewhere.target = "api/production".to_string();
    store.add_suppression(&elsewhere).await.unwrap();

    let active = store.active_suppressions(TARGET, secs(60)).await.unwrap();
    assert_eq!(
        active.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![sooner, later]
    );
    assert_eq!(
        active[0],
        SuppressionRecord {
            id: sooner,
            target: TARGET.to_string(),
            rule: Some("latency-p95".to_string()),
            until: secs(3600),
            reason: "known issue JIRA-42".to_string(),
            created_by: "carol".to_string(),
            created_at: t0(),
        }
    );
    assert_eq!(
        store
            .active_suppressions(TARGET, secs(3600))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        store
            .active_suppressions(TARGET, secs(7200))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.add_suppression(&suppression(None, t0())).await,
        Err(StoreError::Invalid { .. })
    ));
}

fn decision(at: DateTime<Utc>, incident: Option<u64>) -> Decision {
    Decision {
        at,
        action: Action::Rollback,
        tier: Tier::Immediate,
        rule: "error-rate".to_string(),
        explanation: "error rate 12% (bound 10.4%) > 5% over 5m".to_string(),
        cause: Cause::RuleFired,
        incident,
        guard: Some(Guard::Cooldown),
        reading: Some(Reading {
            signal: "error_rate",
            verdict: Verdict::Unhealthy,
            value: Some(0.12),
            bound: Some(0.104),
            threshold: Some(0.05),
            count: Some(2500.0),
            window_seconds: Some(300),
            current_ms: None,
            baseline: None,
            reason: None,
        }),
        deadline: Some(at + TimeDelta::minutes(10)),
        component: Some("backend".to_string()),
        from_version: Some("v2".to_string()),
        to_version: Some("v1".to_string()),
        migrations: vec![],
    }
}

async fn a_decision_round_trips_with_its_policy_hash(db: TestDb) {
    let store = db.open().await;
    let policy = staging_policy();
    let incident = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    let id = store
        .record_decision(TARGET, Some(incident), &decision(secs(1), Some(1)), &policy)
        .await
        .unwrap();
    store
        .record_decision(TARGET, None, &decision(secs(2), None), &policy)
        .await
        .unwrap();
    let stored = store.decisions(incident).await.unwrap();
    assert_eq!(
        stored.len(),
        1,
        "the decision without an incident is not in its timeline"
    );
    let d = &stored[0];
    assert_eq!(d.id, id);
    assert_eq!(
        (d.action.as_str(), d.tier.as_str(), d.cause.as_str()),
        ("rollback", "immediate", "rule-fired")
    );
    assert_eq!(d.guard.map(|g| g.as_str()), Some("cooldown"));
    assert_eq!(d.policy_sha256, policy.sha256);
    assert_eq!(d.policy_path, policy.path);
    assert_eq!(d.deadline, Some(secs(601)));
    let reading = d.reading.as_ref().unwrap();
    assert_eq!(reading["threshold"], serde_json::json!(0.05));
    assert_eq!(reading["verdict"], serde_json::json!("unhealthy"));
    assert!(matches!(
        store
            .record_decision(TARGET, Some(5555), &decision(secs(3), None), &policy)
            .await,
        Err(StoreError::NoSuchIncident(5555))
    ));
}

async fn the_timeline_is_in_time_order(db: TestDb) {
    let store = db.open().await;
    let policy = staging_policy();
    let incident = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    // Written out of time order on purpose.
    let verify = store
        .step_started(
            incident,
            &step("smoke-test", StepStage::Verification),
            secs(40),
        )
        .await
        .unwrap();
    let rollback = store
        .step_started(
            incident,
            &step("rollback", StepStage::Application),
            secs(20),
        )
        .await
        .unwrap();
    store
        .record_answer(&NewAnswer {
            incident,
            kind: AnswerKind::Approve,
            by: "alice".to_string(),
            at: secs(15),
            note: None,
        })
        .await
        .unwrap();
    store
        .record_decision(
            TARGET,
            Some(incident),
            &decision(secs(10), Some(1)),
            &policy,
        )
        .await
        .unwrap();
    store
        .enqueue_notification(&page(Some(incident), "incident:page", secs(11)))
        .await
        .unwrap();
    store
        .resolve_incident(incident, IncidentOutcome::Stable, secs(1000))
        .await
        .unwrap();

    let timeline = store.incident(incident).await.unwrap().unwrap();
    assert_eq!(
        timeline.steps.iter().map(|s| s.id).collect::<Vec<_>>(),
        vec![rollback, verify]
    );
    let entries = timeline.entries();
    let kinds: Vec<&str> = entries
        .iter()
        .map(|e| match e {
            TimelineEntry::Opened(_) => "opened",
            TimelineEntry::Decision(_) => "decision",
            TimelineEntry::Step(_) => "step",
            TimelineEntry::Answer(_) => "answer",
            TimelineEntry::Notification(_) => "notification",
            TimelineEntry::Resolved(_) => "resolved",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "opened",
            "decision",
            "notification",
            "answer",
            "step",
            "step",
            "resolved"
        ]
    );
    assert!(entries.windows(2).all(|w| w[0].at() <= w[1].at()));
    assert_eq!(
        timeline.incident.state,
        IncidentState::Resolved {
            at: secs(1000),
            outcome: IncidentOutcome::Stable
        }
    );
    assert!(store.incident(123456).await.unwrap().is_none());
}

async fn times_round_trip_to_the_microsecond(db: TestDb) {
    let store = db.open().await;
    let precise = t0() + TimeDelta::microseconds(123_456);
    let with_nanos = precise + TimeDelta::nanoseconds(789);
    let deployment = NewDeployment {
        target: TARGET.to_string(),
        version: Some("v2".to_string()),
        previous: Some("v1".to_string()),
        migrations: vec!["0042_add_index".to_string()],
        at: with_nanos,
        rollback: false,
        source: DeploymentSource::Announced,
    };
    let id = store.record_deployment(&deployment).await.unwrap();
    let earlier = NewDeployment {
        at: precise - TimeDelta::microseconds(1),
        version: Some("v1".into()),
        ..deployment.clone()
    };
    store.record_deployment(&earlier).await.unwrap();
    let stored = store.deployments(TARGET, 10).await.unwrap();
    assert_eq!(stored.len(), 2);
    assert_eq!(
        stored[0],
        DeploymentRecord {
            id,
            target: TARGET.to_string(),
            version: Some("v2".to_string()),
            previous: Some("v1".to_string()),
            migrations: vec!["0042_add_index".to_string()],
            at: precise,
            rollback: false,
            source: DeploymentSource::Announced,
        },
        "nanoseconds are truncated, microseconds kept, newest first"
    );
    assert_eq!(to_stored_precision(with_nanos), precise);
    assert_eq!(stored[1].at, precise - TimeDelta::microseconds(1));

    let mut new = new_incident(TARGET, IncidentKind::Declared, precise);
    new.deadline = Some(precise + TimeDelta::microseconds(1));
    let incident = store.open_incident(&new).await.unwrap();
    let watch_until = precise + TimeDelta::minutes(15) + TimeDelta::microseconds(7);
    store
        .set_incident_phase(
            incident,
            IncidentPhase::Watching,
            precise,
            Some(watch_until),
        )
        .await
        .unwrap();
    let record = store.incident(incident).await.unwrap().unwrap().incident;
    assert_eq!(record.opened_at, precise);
    assert_eq!(record.deadline, Some(precise + TimeDelta::microseconds(1)));
    assert_eq!(record.watch_until, Some(watch_until));
    assert_eq!(record.kind, IncidentKind::Declared);
    assert_eq!(record.component.as_deref(), Some("backend"));
}

async fn a_target_has_one_unresolved_incident(db: TestDb) {
    let store = db.open().await;
    let first = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    match store
        .open_incident(&new_incident(TARGET, IncidentKind::Declared, secs(1)))
        .await
    {
        Err(StoreError::IncidentAlreadyOpen { target, existing }) => {
            assert_eq!((target.as_str(), existing), (TARGET, first));
        }
        other => panic!("expected IncidentAlreadyOpen, got {other:?}"),
    }
    // A drill runs beside it.
    store
        .open_incident(&new_incident(TARGET, IncidentKind::Drill, secs(2)))
        .await
        .unwrap();
    store
        .set_incident_phase(first, IncidentPhase::Escalated, secs(3), None)
        .await
        .unwrap();
    store
        .resolve_incident(first, IncidentOutcome::Escalated, secs(4))
        .await
        .unwrap();
    assert!(matches!(
        store.set_incident_phase(first, IncidentPhase::Open, secs(5), None).await,
        Err(StoreError::IncidentResolved(id)) if id == first
    ));
    assert!(matches!(
        store
            .resolve_incident(31337, IncidentOutcome::Stable, secs(5))
            .await,
        Err(StoreError::NoSuchIncident(31337))
    ));
    let second = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, secs(6)))
        .await
        .unwrap();
    let listed: Vec<i64> = store
        .list_incidents(10)
        .await
        .unwrap()
        .iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(listed.len(), 3);
    assert_eq!((listed[0], listed[2]), (second, first), "newest first");
}

/// An unreachable database is a clear `Open` error after the connect
/// timeout, never a hang (the outer timeout only catches a hang).
#[tokio::test]
async fn an_unreachable_postgres_is_an_open_error() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("postgres://rollwatch:s3cret@127.0.0.1:{port}/rollwatch");
    let options = OpenOptions {
        connect_timeout: Duration::from_secs(2),
        ..OpenOptions::default()
    };
    let opened = tokio::time::timeout(Duration::from_secs(60), Store::open_with(&url, &options))
        .await
        .expect("opening an unreachable database must not hang");
    let error = opened.expect_err("nothing listens there");
    assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "cannot open database postgres://rollwatch:***@127.0.0.1:{port}/rollwatch"
        )),
        "{message}"
    );
    assert!(message.contains("refused"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

#[tokio::test]
async fn an_unwritable_sqlite_path_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a directory").unwrap();
    let path = file.join("rollwatch.db");
    let error = Store::open(path.to_str().unwrap())
        .await
        .expect_err("a file is not a directory");
    assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
    assert!(
        error.to_string().starts_with("cannot open database "),
        "{error}"
    );
}

#[tokio::test]
async fn a_bare_path_is_a_sqlite_file_created_on_first_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DEFAULT_DATABASE);
    let store = Store::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(store.backend(), Backend::Sqlite);
    assert!(path.exists());
    assert!(matches!(
        Store::open("mysql://localhost/x").await,
        Err(StoreError::BadUrl { .. })
    ));
}

async fn an_incidents_samples_round_trip_once_each(db: TestDb) {
    let store = db.open().await;
    let id = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    let point = |s: i64, errors: Option<f64>| SamplePoint {
        at: secs(s),
        up: Some(true),
        requests: Some(100.0),
        errors,
        users: None,
        users_affected: None,
        latency_ms: Some(212.5),
    };
    store
        .record_samples(id, &[point(0, Some(1.0)), point(15, None)])
        .await
        .unwrap();
    // A restart writes the history again: the instants already stored are kept once.
    store
        .record_samples(id, &[point(15, Some(9.0)), point(30, Some(12.0))])
        .await
        .unwrap();
    let samples = store.samples(id).await.unwrap();
    assert_eq!(
        samples,
        vec![point(0, Some(1.0)), point(15, None), point(30, Some(12.0))]
    );
    assert_eq!(samples[2].error_rate(), Some(0.12));
    assert_eq!(samples[1].error_rate(), None);
}

async fn each_channel_delivers_in_order_from_its_head(db: TestDb) {
    let store = db.open().await;
    let mut ids = Vec::new();
    for (key, channel) in [
        ("a1", "email"),
        ("b1", "webhook"),
        ("a2", "email"),
        ("a3", "email"),
    ] {
        let mut n = page(None, key, secs(ids.len() as i64));
        n.channel = channel.to_string();
        ids.push(store.enqueue_notification(&n).await.unwrap().id());
    }
    let heads = |store: Store| async move {
        let mut heads: Vec<String> = store
            .channel_heads()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.dedupe_key)
            .collect();
        heads.sort();
        heads
    };
    assert_eq!(heads(store.clone()).await, ["a1", "b1"]);
    // a1 waits for a retry: a2 does not overtake it.
    claim(&store, ids[0], secs(5)).await;
    store
        .mark_notification_failed(ids[0], WORKER, "421 try later", Some(secs(600)))
        .await
        .unwrap();
    assert_eq!(heads(store.clone()).await, ["a1", "b1"]);
    claim(&store, ids[0], secs(601)).await;
    store
        .mark_notification_sent(ids[0], WORKER, secs(601))
        .await
        .unwrap();
    assert_eq!(heads(store.clone()).await, ["a2", "b1"]);
    let stored = store.channel_heads().await.unwrap();
    assert_eq!(stored[0].target, TARGET);
    assert_eq!(stored[0].details["rule"], "error-rate");
    claim(&store, ids[1], secs(602)).await;
    store
        .mark_notification_failed(ids[1], WORKER, "550 no such user", None)
        .await
        .unwrap();
    let failed = store.failed_notifications(10).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].last_error.as_deref(), Some("550 no such user"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_opens_of_one_new_sqlite_file_at_once_migrate_it_once() {
    // `run` and an `incidents` command starting together on a new file.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rollwatch.db").display());
    let opens = (0..8).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { Store::open(&url).await })
    });
    for open in futures_util::future::join_all(opens).await {
        let store = open.unwrap().unwrap_or_else(|e| panic!("{e}"));
        store.close().await;
    }
}

async fn of_two_workers_claiming_a_notification_at_once_one_wins(db: TestDb) {
    // Two replicas: two pools on one database, asking for the same rows at once.
    let (first, second) = (db.open().await, db.open().await);
    let incident = first
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..20 {
        let page = page(Some(incident), &format!("contended-{n}"), secs(0));
        ids.push(first.enqueue_notification(&page).await.unwrap().id());
    }
    let claims = ids.iter().flat_map(|&id| {
        [(first.clone(), "worker-a"), (second.clone(), "worker-b")].map(|(store, who)| async move {
            let claimed = store
                .claim_notification(id, who, secs(1), secs(61))
                .await
                .unwrap();
            (id, who, claimed.is_some())
        })
    });
    let claims = futures_util::future::join_all(claims).await;
    for id in &ids {
        let winners: Vec<&str> = claims
            .iter()
            .filter(|(claimed, _, won)| claimed == id && *won)
            .map(|(_, who, _)| *who)
            .collect();
        assert_eq!(winners.len(), 1, "notification {id}: {winners:?}");
        // The loser cannot record an outcome; the winner can.
        let loser = if winners[0] == "worker-a" {
            "worker-b"
        } else {
            "worker-a"
        };
        assert!(
            !first
                .mark_notification_sent(*id, loser, secs(2))
                .await
                .unwrap()
        );
        assert!(
            first
                .mark_notification_sent(*id, winners[0], secs(2))
                .await
                .unwrap()
        );
    }
    let stored = first.notifications(incident).await.unwrap();
    assert_eq!(stored.len(), 20);
    assert!(
        stored
            .iter()
            .all(|n| (n.state, n.attempts) == (NotificationState::Sent, 1)),
        "{stored:#?}"
    );
}

async fn a_claim_whose_lease_expired_can_be_taken_over_and_only_the_claimant_records(db: TestDb) {
    let store = db.open().await;
    let incident = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    let id = store
        .enqueue_notification(&page(Some(incident), "leased", secs(0)))
        .await
        .unwrap()
        .id();
    let claimed = store
        .claim_notification(id, "worker-a", secs(1), secs(61))
        .await
        .unwrap()
        .expect("a pending, due, unclaimed row is claimed");
    assert_eq!((claimed.id, claimed.attempts), (id, 0));
    // Within the lease nobody else (nor the same worker) takes it.
    for (who, at) in [("worker-b", 30), ("worker-a", 60)] {
        assert_eq!(
            store
                .claim_notification(id, who, secs(at), secs(at + 60))
                .await
                .unwrap(),
            None,
            "{who} at {at}s"
        );
    }
    // worker-a died after the server took the message and before it
    // recorded that: once the lease has expired another worker takes over.
    let taken_over = store
        .claim_notification(id, "worker-b", secs(61), secs(121))
        .await
        .unwrap()
        .expect("an expired lease can be claimed again");
    assert_eq!(taken_over.id, id);
    // worker-a's late word changes nothing; worker-b's counts.
    assert!(
        !store
            .mark_notification_failed(id, "worker-a", "timed out", Some(secs(70)))
            .await
            .unwrap()
    );
    assert!(
        store
            .mark_notification_failed(id, "worker-b", "421 try later", Some(secs(300)))
            .await
            .unwrap()
    );
    // A failed attempt lets the claim go; the row waits for its retry.
    assert_eq!(
        store
            .claim_notification(id, "worker-a", secs(299), secs(359))
            .await
            .unwrap(),
        None,
        "not before its next attempt is due"
    );
    let retried = store
        .claim_notification(id, "worker-a", secs(300), secs(360))
        .await
        .unwrap()
        .expect("due again, unclaimed");
    assert_eq!(retried.attempts, 1);
    assert!(
        store
            .mark_notification_sent(id, "worker-a", secs(301))
            .await
            .unwrap()
    );
    let stored = &store.notifications(incident).await.unwrap()[0];
    assert_eq!(
        (stored.state, stored.attempts, stored.sent_at),
        (NotificationState::Sent, 2, Some(secs(301)))
    );
}

/// A word the store does not know (a newer rollwatch or a hand edit wrote
/// it) is an error naming the table, column, row and value: never read as
/// some default tier.
#[tokio::test]
async fn an_unknown_tier_in_a_stored_row_is_an_error_naming_the_row() {
    use sqlx::Connection;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rollwatch.db");
    let store = Store::open(path.to_str().unwrap()).await.unwrap();
    let id = store
        .open_incident(&new_incident(TARGET, IncidentKind::Rule, t0()))
        .await
        .unwrap();
    store.close().await;

    let url = format!("sqlite://{}", path.display());
    let mut raw = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("PRAGMA ignore_check_constraints = ON")
        .execute(&mut raw)
        .await
        .unwrap();
    sqlx::query("UPDATE incidents SET tier = 'catastrophic' WHERE id = $1")
        .bind(id)
        .execute(&mut raw)
        .await
        .unwrap();
    raw.close().await.unwrap();

    let store = Store::open(path.to_str().unwrap()).await.unwrap();
    for error in [
        store.incident(id).await.expect_err("the tier is unknown"),
        store
            .list_incidents(10)
            .await
            .expect_err("the tier is unknown"),
    ] {
        match &error {
            StoreError::UnknownWord {
                table,
                column,
                row,
                value,
                what,
                ..
            } => assert_eq!(
                (*table, *column, *row, value.as_str(), *what),
                ("incidents", "tier", id, "catastrophic", "tier")
            ),
            other => panic!("expected UnknownWord, got {other:?}"),
        }
        let message = error.to_string();
        assert!(
            message.contains(&format!("incidents.tier of row {id}"))
                && message.contains("\"catastrophic\""),
            "{message}"
        );
    }
}
