//! Delivery through the outbox to real servers: aiosmtpd (SMTP), Alertmanager
//! 0.25 and a webhook receiver inside the test. The worker runs against a
//! SQLite store; outages are real (the server stopped, answering 500, not
//! answering), time between attempts is the worker's simulated clock where
//! the test says so.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use chrono::{DateTime, TimeDelta, Utc};
use common::mail::{Alertmanager, BlackHole, SmtpServer, header};
use rollwatch::notify::deliver::Worker;
use rollwatch::notify::message::Details;
use rollwatch::policy::notify::{Channel, ChannelKind, NotifyConfig, Routes, SmtpSecurity};
use rollwatch::store::{
    IncidentKind, NewIncident, NewNotification, NotificationKind, NotificationState, Store,
};

const TARGET: &str = "web/production";

async fn store(dir: &tempfile::TempDir) -> Store {
    Store::open(&format!(
        "sqlite://{}",
        dir.path().join("rollwatch.db").display()
    ))
    .await
    .unwrap()
}

fn config(channels: Vec<Channel>, page: &[&str], escalation: &[&str]) -> NotifyConfig {
    NotifyConfig {
        channels,
        routes: Routes {
            page: page.iter().map(|s| s.to_string()).collect(),
            notice: page.iter().map(|s| s.to_string()).collect(),
            escalation: escalation.iter().map(|s| s.to_string()).collect(),
        },
        escalate_after: Duration::from_secs(900),
    }
}

fn email(name: &str, port: u16, to: &[&str]) -> Channel {
    Channel {
        name: name.into(),
        kind: ChannelKind::Email {
            host: "127.0.0.1".into(),
            port,
            security: SmtpSecurity::Plain,
            from: "rollwatch@example.com".into(),
            to: to.iter().map(|s| s.to_string()).collect(),
            username_env: None,
            password_env: None,
        },
        timeout: Duration::from_secs(2),
        deadline: Duration::from_secs(3600),
    }
}

fn worker(store: &Store, notify: NotifyConfig) -> Worker {
    Worker::for_target(
        store.clone(),
        TARGET.into(),
        Some(notify),
        Arc::new(tokio::sync::Notify::new()),
    )
}

fn details(incident: i64, summary: &str) -> Details {
    Details {
        service: "web".into(),
        environment: "production".into(),
        target: TARGET.into(),
        rule: "error-rate".into(),
        tier: "consider".into(),
        action: "page-then-rollback".into(),
        incident: Some(incident),
        deadline: None,
        summary: summary.into(),
        recommendation: "roll back".into(),
        commands: vec![format!("rollwatch incidents ack {incident} --by YOUR-NAME")],
        explanation: "error-rate 8.1% (95% lower bound 7.4%) > 5% over 2m".into(),
        resolved: false,
    }
}

async fn enqueue(
    store: &Store,
    channel: &str,
    key: &str,
    kind: NotificationKind,
    details: &Details,
    at: DateTime<Utc>,
) -> i64 {
    store
        .enqueue_notification(&NewNotification {
            incident: details.incident,
            kind,
            channel: channel.into(),
            recipients: vec![],
            subject: details.summary.clone(),
            body: rollwatch::notify::message::text_body(details, at),
            dedupe_key: format!("{key}:{channel}"),
            created_at: at,
            target: TARGET.into(),
            details: serde_json::to_value(details).unwrap(),
        })
        .await
        .unwrap()
        .id()
}

async fn incident(store: &Store) -> i64 {
    store
        .open_incident(&NewIncident {
            target: TARGET.into(),
            kind: IncidentKind::Rule,
            tier: rollwatch::engine::policy::Tier::Consider,
            rule: "error-rate".into(),
            reason: String::new(),
            component: None,
            from_version: Some("v2".into()),
            to_version: Some("v1".into()),
            opened_at: Utc::now(),
            deadline: None,
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_outage_delays_five_messages_which_then_arrive_once_each_in_order() {
    let Some(mut smtp) = SmtpServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = incident(&store).await;
    let worker = worker(
        &store,
        config(
            vec![email("oncall", smtp.port, &["oncall@example.com"])],
            &["oncall"],
            &[],
        ),
    );
    smtp.stop();
    let start = Utc::now();
    for n in 1..=5 {
        let d = details(id, &format!("message {n} of 5"));
        enqueue(
            &store,
            "oncall",
            &format!("m{n}"),
            NotificationKind::Page,
            &d,
            start,
        )
        .await;
    }
    // Two minutes of simulated time with the server down: attempts fail, nothing is lost.
    let mut now = start;
    while now < start + TimeDelta::minutes(2) {
        worker.round(now).await;
        now += TimeDelta::seconds(10);
    }
    let stored = store.notifications(id).await.unwrap();
    assert!(
        stored.iter().all(|n| n.state == NotificationState::Pending),
        "{stored:#?}"
    );
    assert!(stored[0].attempts >= 3, "retried: {stored:#?}");
    assert_eq!(
        stored[1].attempts, 0,
        "a later message waits behind the first: {stored:#?}"
    );
    assert!(
        stored[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("SMTP 127.0.0.1"),
        "{stored:#?}"
    );
    smtp.resume();
    for _ in 0..40 {
        worker.round(now).await;
        now += TimeDelta::minutes(5);
        if smtp.messages().len() >= 5 {
            break;
        }
    }
    let mails = smtp.messages();
    assert_eq!(mails.len(), 5, "{mails:#?}");
    for (n, mail) in mails.iter().enumerate() {
        assert!(
            mail.contains(&format!("Subject: [rollwatch] message {} of 5", n + 1)),
            "in order: {mail}"
        );
    }
    let first = &mails[0];
    assert!(first.contains("From: rollwatch@example.com"), "{first}");
    assert!(first.contains("To: oncall@example.com"), "{first}");
    assert!(first.contains("multipart/alternative"), "{first}");
    assert!(
        first.contains("text/plain") && first.contains("text/html"),
        "{first}"
    );
    assert!(
        first.contains(&format!("rollwatch incidents ack {id} --by YOUR-NAME")),
        "{first}"
    );
    // One thread: the first message starts it, the others answer it.
    let first_id = header(first, "Message-ID").expect("a Message-ID");
    assert!(
        first_id.starts_with("<rollwatch.") && first_id.ends_with("@example.com>"),
        "{first_id}"
    );
    assert_eq!(header(first, "In-Reply-To"), None, "{first}");
    for mail in &mails[1..] {
        assert_eq!(
            header(mail, "In-Reply-To").as_ref(),
            Some(&first_id),
            "{mail}"
        );
        assert_eq!(
            header(mail, "References").as_ref(),
            Some(&first_id),
            "{mail}"
        );
    }
    let mut ids: Vec<String> = mails
        .iter()
        .map(|m| header(m, "Message-ID").unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5, "one Message-ID per message: {ids:#?}");
    let stored = store.notifications(id).await.unwrap();
    assert!(
        stored.iter().all(|n| n.state == NotificationState::Sent),
        "{stored:#?}"
    );
    // Nothing more is sent: once each.
    worker.round(now + TimeDelta::hours(1)).await;
    assert_eq!(smtp.messages().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_recipient_is_a_stored_failure_that_escalates_on_another_channel() {
    let Some(smtp) = SmtpServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = incident(&store).await;
    let notify = config(
        vec![
            email("oncall", smtp.port, &["reject-me@example.com"]),
            email("leads", smtp.port, &["leads@example.com"]),
        ],
        &["oncall"],
        &["leads"],
    );
    let worker = worker(&store, notify);
    let now = Utc::now();
    let failed = enqueue(
        &store,
        "oncall",
        "page",
        NotificationKind::Page,
        &details(id, "PAGE production web"),
        now,
    )
    .await;
    worker.round(now).await;
    worker.round(now).await;
    let stored = store.notifications(id).await.unwrap();
    let page = stored.iter().find(|n| n.id == failed).unwrap();
    assert_eq!(page.state, NotificationState::Failed, "{stored:#?}");
    assert!(
        page.last_error.as_deref().unwrap().contains("550"),
        "{page:#?}"
    );
    let escalation = stored
        .iter()
        .find(|n| n.kind == NotificationKind::Escalation)
        .expect("an escalation");
    assert_eq!(escalation.channel, "leads");
    assert_eq!(escalation.state, NotificationState::Sent, "{stored:#?}");
    let mails = smtp.messages();
    assert_eq!(mails.len(), 1, "{mails:#?}");
    assert!(mails[0].contains("could not deliver"), "{}", mails[0]);
    assert!(mails[0].contains("To: leads@example.com"), "{}", mails[0]);
    assert_eq!(store.failed_notifications(10).await.unwrap().len(), 1);
}

/// A webhook that answers 500, then does not answer, then 200.
#[derive(Default)]
struct Hook {
    calls: AtomicUsize,
    delivered: Mutex<Vec<serde_json::Value>>,
    /// The `Idempotency-Key` of every call.
    keys: Mutex<Vec<Option<String>>>,
}

async fn hook(
    State(hook): State<Arc<Hook>>,
    headers: axum::http::HeaderMap,
    body: String,
) -> StatusCode {
    hook.keys.lock().unwrap().push(
        headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
    );
    match hook.calls.fetch_add(1, Ordering::SeqCst) {
        0 => StatusCode::INTERNAL_SERVER_ERROR,
        1 => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }
        _ => {
            hook.delivered
                .lock()
                .unwrap()
                .push(serde_json::from_str(&body).unwrap());
            StatusCode::OK
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_answering_500_then_timing_out_then_200_gets_the_message_once() {
    let state = Arc::new(Hook::default());
    let app = Router::new()
        .route("/hook", post(hook))
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = incident(&store).await;
    let channel = Channel {
        name: "slack".into(),
        kind: ChannelKind::Webhook { url: url.into() },
        timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(3600),
    };
    let worker = worker(&store, config(vec![channel], &["slack"], &[]));
    let start = Utc::now();
    let sent = enqueue(
        &store,
        "slack",
        "page",
        NotificationKind::Page,
        &details(id, "PAGE production web"),
        start,
    )
    .await;
    let mut now = start;
    for _ in 0..10 {
        worker.round(now).await;
        now += TimeDelta::minutes(5);
    }
    assert_eq!(
        state.calls.load(Ordering::SeqCst),
        3,
        "500, timeout, 200 and no more"
    );
    let delivered = state.delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 1);
    assert!(
        delivered[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("*PAGE production web*"),
        "{delivered:#?}"
    );
    assert_eq!(delivered[0]["rollwatch"]["incident"], id);
    assert_eq!(delivered[0]["rollwatch"]["rule"], "error-rate");
    let stored = store.notifications(id).await.unwrap();
    let n = stored.iter().find(|n| n.id == sent).unwrap();
    assert_eq!(
        (n.state, n.attempts),
        (NotificationState::Sent, 3),
        "{n:#?}"
    );
    // Each attempt carries the row's key: a receiver that got the first
    // (its answer lost) can tell the others are the same message.
    let keys = state.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 3);
    let key = keys[0].clone().expect("an Idempotency-Key");
    assert!(key.starts_with(&format!("rollwatch.{sent}.")), "{key}");
    assert!(keys.iter().all(|k| k.as_ref() == Some(&key)), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_shows_the_incidents_alert_open_then_resolved() {
    let Some(am) = Alertmanager::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = incident(&store).await;
    let channel = Channel {
        name: "am".into(),
        kind: ChannelKind::Alertmanager {
            url: am.url.clone().into(),
        },
        timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(3600),
    };
    let worker = worker(&store, config(vec![channel], &["am"], &[]));
    let id_text = id.to_string();
    let page = details(id, "PAGE production web: error-rate");
    enqueue(
        &store,
        "am",
        "page",
        NotificationKind::Page,
        &page,
        Utc::now(),
    )
    .await;
    worker.round(Utc::now()).await;
    let client = rollwatch::sources::http::client().unwrap();
    let alerts: serde_json::Value = client
        .get(format!("{}/api/v2/alerts", am.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alert = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["incident"] == id_text.as_str())
        .unwrap_or_else(|| panic!("the alert is open: {alerts:#}"));
    assert_eq!(alert["labels"]["service"], "web");
    assert_eq!(alert["labels"]["environment"], "production");
    assert_eq!(alert["labels"]["rule"], "error-rate");
    assert_eq!(alert["labels"]["tier"], "consider");
    assert_eq!(alert["status"]["state"], "active");
    assert!(
        alert["annotations"]["answer"]
            .as_str()
            .unwrap()
            .contains("rollwatch incidents ack")
    );
    // While the incident is open the alert is posted again, so Alertmanager
    // does not time it out: its endsAt moves forward.
    let ends_at = |alerts: &serde_json::Value| {
        alerts
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["incident"] == id_text.as_str())
            .and_then(|a| a["endsAt"].as_str())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .unwrap()
    };
    let before = ends_at(&alerts);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    worker.refresh_alerts(Utc::now()).await;
    let refreshed: serde_json::Value = client
        .get(format!("{}/api/v2/alerts", am.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ends_at(&refreshed) > before, "{refreshed:#}");
    let mut resolved = details(id, "RESOLVED production web");
    resolved.resolved = true;
    enqueue(
        &store,
        "am",
        "resolved",
        NotificationKind::Resolved,
        &resolved,
        Utc::now(),
    )
    .await;
    worker.round(Utc::now()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let alerts: serde_json::Value = client
        .get(format!("{}/api/v2/alerts", am.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let still_open = alerts.as_array().unwrap().iter().any(|a| {
        a["labels"]["incident"] == id_text.as_str()
            && a["endsAt"]
                .as_str()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .is_none_or(|t| t > Utc::now() + TimeDelta::seconds(1))
    });
    assert!(!still_open, "the alert is resolved: {alerts:#}");
}

/// `rollwatch run` on a stand-in service with a policy that pages by email
/// and Alertmanager, escalates to another mailbox, and notifies a log.
struct Watch {
    dir: tempfile::TempDir,
    service: common::service::TestService,
    db: String,
    child: std::process::Child,
    output: common::process::Lines,
}

impl Watch {
    async fn start(smtp: &SmtpServer, am: &Alertmanager, consider: &str) -> Watch {
        let dir = tempfile::tempdir().unwrap();
        let service = common::service::TestService::start().await;
        let url = service.url();
        let policy = dir.path().join("production.toml");
        let script = dir.path().join("step.sh");
        common::process::write_script(
            &script,
            "#!/bin/sh\necho \"$1\" >> \"$(dirname \"$0\")/calls.log\"\n",
        );
        let port = smtp.port;
        let email = |name: &str| {
            format!(
                "[[notify.channel]]\nname = \"{name}\"\nkind = \"email\"\nserver = \"smtp://127.0.0.1:{port}\"\nfrom = \"rollwatch@example.com\"\nto = [\"{name}@example.com\"]\n"
            )
        };
        common::policy::Policy::stand_in(&url)
            .environment("production")
            .evaluation("resolve_after", "\"3s\"")
            .action("consider", &format!("\"{consider}\""))
            .action("page_timeout", "\"6s\"")
            .step(
                "rollback-app",
                "application",
                &[script.to_str().unwrap(), "rollback-app"],
                "",
            )
            .extra(
                "[notify]\npage = [\"oncall\", \"alertmanager\"]\nnotice = [\"oncall\"]\nescalation = [\"leads\"]\nescalate_after = \"5s\"\n",
            )
            .extra(&email("oncall"))
            .extra(&email("leads"))
            .extra(&format!(
                "[[notify.channel]]\nname = \"alertmanager\"\nkind = \"alertmanager\"\nurl = \"{}\"\n",
                am.url
            ))
            .write(&policy);
        let db = format!("sqlite://{}", dir.path().join("rollwatch.db").display());
        let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("rollwatch"))
            .args(["run", "--listen", "127.0.0.1:0", "--db", &db, "--policy"])
            .arg(&policy)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env("RUST_LOG", "rollwatch=info")
            .spawn()
            .unwrap();
        let output: common::process::Lines = Arc::default();
        common::process::capture(&mut child, &output);
        // Rollwatch sees the healthy v1 before the deployment.
        service.wait_for_scrapes(2).await;
        service.set(|k| {
            k.version = "v2.0.0".into();
            k.error_rate = 0.3;
        });
        Watch {
            dir,
            service,
            db,
            child,
            output,
        }
    }

    fn output(&self) -> String {
        common::process::text(&self.output)
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&Watch) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !done(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} within 60 s:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn rollbacks(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn alerts(am: &Alertmanager) -> Vec<serde_json::Value> {
    rollwatch::sources::http::client()
        .unwrap()
        .get(format!("{}/api/v2/alerts", am.url))
        .send()
        .await
        .unwrap()
        .json::<Vec<serde_json::Value>>()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reaches_smtp_and_alertmanager_and_an_ack_stops_the_automatic_rollback() {
    let (Some(smtp), Some(am)) = (SmtpServer::start(), Alertmanager::start()) else {
        return;
    };
    let watch = Watch::start(&smtp, &am, "page-then-rollback").await;
    watch
        .wait_for("page by email", |_| {
            smtp.messages()
                .iter()
                .any(|m| m.contains("Subject: [rollwatch] PAGE production web"))
        })
        .await;
    let page = smtp
        .messages()
        .into_iter()
        .find(|m| m.contains("Subject: [rollwatch] PAGE production web"))
        .unwrap();
    assert!(
        page.contains("error-rate 30% (95% lower bound"),
        "what fired, value vs threshold: {page}"
    );
    assert!(page.contains("> 5% over 3s"), "{page}");
    assert!(
        page.contains("rolls back automatically at"),
        "the deadline: {page}"
    );
    let ack = page
        .lines()
        .find(|l| l.trim_start().starts_with("rollwatch incidents ack"))
        .unwrap_or_else(|| panic!("the exact command to answer: {page}"))
        .trim()
        .to_string();
    assert!(ack.contains("--db"), "{ack}");
    let alert = alerts(&am).await;
    assert!(
        alert.iter().any(|a| a["labels"]["service"] == "web"
            && a["labels"]["rule"] == "error-rate"
            && a["status"]["state"] == "active"),
        "{alert:#?}"
    );
    // The on-call engineer answers with the command from the page.
    let store = Store::open(&watch.db).await.unwrap();
    let incident = store.list_incidents(1).await.unwrap()[0].id;
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("rollwatch"))
        .args([
            "incidents",
            "ack",
            &incident.to_string(),
            "--by",
            "alice",
            "--db",
            &watch.db,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    watch
        .wait_for("the ack applied", |w| {
            w.output().contains("acknowledged by alice")
        })
        .await;
    // Past the 6 s deadline (timed from the page's stored instant), with the
    // loop still polling after it: no automatic rollback, and no escalation
    // of an answered page (due at 5 s).
    let paged = store
        .notifications(incident)
        .await
        .unwrap()
        .iter()
        .filter(|n| n.kind == NotificationKind::Page)
        .map(|n| n.created_at)
        .min()
        .expect("the stored page");
    while Utc::now() < paged + TimeDelta::seconds(6) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let address =
        common::process::listen_address(&watch.output).expect("the sidecar says where it listens");
    common::process::wait_for_polls(&address, 3, Duration::from_secs(60)).await;
    assert_eq!(watch.rollbacks(), 0, "{}", watch.output());
    assert!(
        !smtp
            .messages()
            .iter()
            .any(|m| m.contains("To: leads@example.com")),
        "answered: no escalation"
    );
    let answers = store.answers(incident).await.unwrap();
    assert_eq!(answers[0].by, "alice");
    // The service recovers: the incident resolves and so does the alert.
    watch.service.set(|k| k.error_rate = 0.002);
    watch
        .wait_for("resolution by email", |_| {
            smtp.messages()
                .iter()
                .any(|m| m.contains("Subject: [rollwatch] RESOLVED production web"))
        })
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let open = alerts(&am).await.into_iter().any(|a| {
            a["labels"]["service"] == "web"
                && a["endsAt"]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .is_none_or(|t| t > Utc::now() + TimeDelta::seconds(1))
        });
        if !open {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the alert is resolved in Alertmanager"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_page_escalates_to_the_escalation_contacts_on_time() {
    let (Some(smtp), Some(am)) = (SmtpServer::start(), Alertmanager::start()) else {
        return;
    };
    let watch = Watch::start(&smtp, &am, "page").await;
    watch
        .wait_for("page", |_| {
            smtp.messages()
                .iter()
                .any(|m| m.contains("PAGE production web"))
        })
        .await;
    watch
        .wait_for("escalation", |_| {
            smtp.messages()
                .iter()
                .any(|m| m.contains("To: leads@example.com"))
        })
        .await;
    let arrived = Utc::now();
    // Timed from the page's stored instant (its decision's), to the
    // escalation's: not before `escalate_after` (5 s), allowing only for
    // the store's microseconds; and it is sent soon after it is due (a
    // bound that a loaded machine meets: the timer fires at the instant).
    let store = Store::open(&watch.db).await.unwrap();
    let incident = store.list_incidents(1).await.unwrap()[0].id;
    let rows = store.notifications(incident).await.unwrap();
    let stored = |kind: NotificationKind| {
        rows.iter()
            .filter(|r| r.kind == kind)
            .map(|r| r.created_at)
            .min()
            .unwrap_or_else(|| panic!("a stored {kind:?}: {rows:#?}"))
    };
    let (paged, escalated) = (
        stored(NotificationKind::Page),
        stored(NotificationKind::Escalation),
    );
    let after = escalated - paged;
    assert!(
        after >= TimeDelta::seconds(5) - TimeDelta::microseconds(1),
        "not before escalate_after (5s): escalated {after} after the page"
    );
    assert!(
        after < TimeDelta::seconds(5) + TimeDelta::seconds(3),
        "due at 5s, decided at {after}"
    );
    assert!(
        arrived - paged < TimeDelta::seconds(5) + TimeDelta::seconds(10),
        "the escalation arrived {} after the page",
        arrived - paged
    );
    let escalation = smtp
        .messages()
        .into_iter()
        .find(|m| m.contains("To: leads@example.com"))
        .unwrap();
    assert!(
        escalation.contains("page unanswered for 5s"),
        "{escalation}"
    );
    // Once: the loop goes on polling and escalates no more.
    let address =
        common::process::listen_address(&watch.output).expect("the sidecar says where it listens");
    common::process::wait_for_polls(&address, 3, Duration::from_secs(60)).await;
    let escalations = smtp
        .messages()
        .iter()
        .filter(|m| m.contains("To: leads@example.com"))
        .count();
    assert_eq!(escalations, 1);
    assert_eq!(watch.rollbacks(), 0, "a page never rolls back");
    // Delivery shows in the sidecar's metrics.
    let metrics = common::process::get_text(&format!("{address}/metrics")).await;
    assert!(
        metrics.contains(
            "rollwatch_notification_deliveries_total{channel=\"leads\",result=\"sent\"} 1"
        ),
        "{metrics}"
    );
    // A human approves the rollback the page recommended: it runs, once.
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("rollwatch"))
        .args([
            "incidents",
            "approve",
            &incident.to_string(),
            "--by",
            "bob",
            "--db",
            &watch.db,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    watch
        .wait_for("the approved rollback", |w| w.rollbacks() == 1)
        .await;
    assert!(
        watch.output().contains("rollback approved by bob"),
        "{}",
        watch.output()
    );
}

/// A loopback port nothing listens on: every connection is refused at once.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two channels, each the other's fallback: a page goes to both, the
/// escalation of a failed page to the other one.
fn two_channels(oncall: Channel, leads: Channel) -> NotifyConfig {
    config(vec![oncall, leads], &["oncall", "leads"], &["leads"])
}

/// One simulated hour of the worker's rounds with both channels dead and a
/// page every 10 minutes: the rows in the outbox afterwards, the number of
/// rounds that did not let any time pass, the messages status lists as
/// undelivered and the worker's metrics.
async fn an_hour_with_both_channels_dead(notify: NotifyConfig) -> DeadHour {
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = incident(&store).await;
    let telemetry = rollwatch::telemetry::Telemetry::new();
    let worker = worker(&store, notify).with_telemetry(Arc::clone(&telemetry));
    let start = Utc::now();
    let end = start + TimeDelta::hours(1);
    let (mut now, mut next_page, mut pages) = (start, start, 0);
    let (mut rounds, mut rounds_in_no_time) = (0, 0);
    while now < end {
        if now >= next_page {
            let rows = store.notifications(id).await.unwrap().len();
            assert!(
                rows <= 4 * pages,
                "{rows} rows after {pages} pages and {} of simulated time",
                now - start
            );
            pages += 1;
            let d = details(id, &format!("PAGE {pages} production web"));
            for channel in ["oncall", "leads"] {
                enqueue(
                    &store,
                    channel,
                    &format!("page-{pages}"),
                    NotificationKind::Page,
                    &d,
                    now,
                )
                .await;
            }
            next_page += TimeDelta::minutes(10);
        }
        let next = worker.round(now).await;
        rounds += 1;
        assert!(rounds < 5_000, "the worker goes round and round");
        let next = next.unwrap_or(now + TimeDelta::seconds(5)).min(next_page);
        if next <= now {
            rounds_in_no_time += 1;
            assert!(
                rounds_in_no_time <= 100,
                "the worker goes round without time passing"
            );
        }
        now = next.max(now);
    }
    let rows: Vec<NotifyRow> = store
        .notifications(id)
        .await
        .unwrap()
        .into_iter()
        .map(|n| NotifyRow {
            kind: n.kind,
            channel: n.channel,
            state: n.state,
        })
        .collect();
    let undelivered = store.failed_notifications(100).await.unwrap();
    eprintln!(
        "after one simulated hour: {} rows, {rounds} rounds, {rounds_in_no_time} of them without time passing",
        rows.len()
    );
    DeadHour {
        rows,
        rounds_in_no_time,
        undelivered_escalations: undelivered
            .iter()
            .filter(|n| n.kind == NotificationKind::Escalation)
            .count(),
        metrics: telemetry.encode(),
    }
}

struct DeadHour {
    rows: Vec<NotifyRow>,
    rounds_in_no_time: usize,
    /// Escalations among what status lists as undelivered.
    undelivered_escalations: usize,
    metrics: String,
}

#[derive(Debug, PartialEq)]
struct NotifyRow {
    kind: NotificationKind,
    channel: String,
    state: NotificationState,
}

/// What six pages to two dead channels imply: each page fails on both, and
/// each failure is escalated once on the other channel, where the
/// escalation fails too and goes no further: 6 x (2 + 2) rows, all failed,
/// the escalations among the undelivered messages of status and counted.
fn assert_six_pages_and_their_escalations_failed(hour: &DeadHour) {
    let DeadHour {
        rows,
        rounds_in_no_time,
        ..
    } = hour;
    let count = |kind| rows.iter().filter(|r| r.kind == kind).count();
    assert_eq!(rows.len(), 24, "{rows:#?}");
    assert_eq!(count(NotificationKind::Page), 12, "{rows:#?}");
    assert_eq!(count(NotificationKind::Escalation), 12, "{rows:#?}");
    assert!(
        rows.iter().all(|r| r.state == NotificationState::Failed),
        "{rows:#?}"
    );
    assert_eq!(hour.undelivered_escalations, 12);
    for channel in ["oncall", "leads"] {
        let line = format!("rollwatch_undelivered_escalations_total{{channel=\"{channel}\"}} 6");
        assert!(hour.metrics.contains(&line), "{line}\n{}", hour.metrics);
    }
    // A round comes back at once only after it settled a message, and
    // each row settles once: the worker never goes round without cause.
    assert!(
        *rounds_in_no_time <= rows.len(),
        "{rounds_in_no_time} rounds without time passing for {} rows",
        rows.len()
    );
}

fn dead_email(name: &str, port: u16, to: &str) -> Channel {
    Channel {
        timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(5),
        ..email(name, port, &[to])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_of_two_refusing_channels_adds_rows_per_message_not_per_minute() {
    // Connection refused on both: transient errors, retried to the 5 s deadline.
    let notify = two_channels(
        dead_email("oncall", closed_port(), "oncall@example.com"),
        dead_email("leads", closed_port(), "leads@example.com"),
    );
    let hour = an_hour_with_both_channels_dead(notify).await;
    assert_six_pages_and_their_escalations_failed(&hour);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hour_of_two_channels_refusing_for_good_adds_rows_per_message_and_never_spins() {
    // SMTP 550 for every recipient: permanent errors, which used to make
    // each round come back at once with a new escalation to send.
    let Some(smtp) = SmtpServer::start() else {
        return;
    };
    let notify = two_channels(
        dead_email("oncall", smtp.port, "reject-oncall@example.com"),
        dead_email("leads", smtp.port, "reject-leads@example.com"),
    );
    let hour = an_hour_with_both_channels_dead(notify).await;
    assert_six_pages_and_their_escalations_failed(&hour);
    assert!(smtp.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_upgraded_to_page_then_rollback_is_a_new_message_and_a_repeated_page_is_not() {
    use rollwatch::engine::decision::{Cause, Decision, Guard};
    use rollwatch::engine::policy::{Action, Tier};
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let target = rollwatch::policy::load_target(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/production.toml"),
    )
    .unwrap();
    let engine = rollwatch::engine::Engine::new(Arc::new(target.policy.clone()));
    let mut actor =
        rollwatch::act::actor::Actor::new(store.clone(), Arc::new(target), Arc::new(|_: &str| {}));
    let at = Utc::now();
    let page = Decision {
        at,
        action: Action::Page,
        tier: Tier::Consider,
        rule: "error-rate".into(),
        explanation: "error-rate 8.1% (95% lower bound 7.4%) > 5% over 2m".into(),
        cause: Cause::RuleFired,
        incident: Some(1),
        guard: Some(Guard::NoRecentDeploy),
        reading: None,
        deadline: None,
        component: None,
        from_version: None,
        to_version: None,
        migrations: vec![],
    };
    actor.handle(&page, &engine).await;
    let repeated = Decision {
        at: at + TimeDelta::minutes(1),
        ..page.clone()
    };
    actor.handle(&repeated, &engine).await;
    let deadline = at + TimeDelta::minutes(12);
    let upgraded = Decision {
        at: at + TimeDelta::minutes(2),
        action: Action::PageThenRollback,
        guard: None,
        deadline: Some(deadline),
        ..page.clone()
    };
    actor.handle(&upgraded, &engine).await;
    actor.handle(&upgraded, &engine).await;
    let incident = store.list_incidents(1).await.unwrap()[0].id;
    let rows = store.notifications(incident).await.unwrap();
    assert_eq!(rows.len(), 2, "the page, then the upgrade: {rows:#?}");
    assert!(
        rows[0].body.contains("does not roll back automatically"),
        "{}",
        rows[0].body
    );
    assert!(
        rows[1].body.contains("rolls back automatically at") && rows[1].body.contains("Deadline:"),
        "the human hears of the deadline: {}",
        rows[1].body
    );
}

/// A burst that ended by itself opens no incident and acts on nothing, but
/// the team is told, once: the notice goes to the outbox without an incident.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_that_ended_with_no_incident_is_told_to_the_team_once() {
    use rollwatch::engine::decision::{Cause, Decision, Guard};
    use rollwatch::engine::policy::{Action, Tier};
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let target = rollwatch::policy::load_target(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/production.toml"),
    )
    .unwrap();
    let engine = rollwatch::engine::Engine::new(Arc::new(target.policy.clone()));
    let mut actor =
        rollwatch::act::actor::Actor::new(store.clone(), Arc::new(target), Arc::new(|_: &str| {}));
    let told = Decision {
        at: Utc::now(),
        action: Action::Notify,
        tier: Tier::Consider,
        rule: "error-rate".into(),
        explanation: "v1.1.0: 100% errors for 45s after its deploy, recovered by itself; no action"
            .into(),
        cause: Cause::BurstEnded,
        incident: None,
        guard: Some(Guard::Recovered),
        reading: None,
        deadline: None,
        component: None,
        from_version: Some("v1.0.0".into()),
        to_version: None,
        migrations: vec![],
    };
    actor.handle(&told, &engine).await;
    actor.handle(&told, &engine).await;
    let rows = store.channel_heads().await.unwrap();
    let burst: Vec<_> = rows
        .iter()
        .filter(|r| r.dedupe_key.contains(":burst-ended:"))
        .collect();
    assert_eq!(burst.len(), 1, "told once: {rows:#?}");
    assert_eq!(burst[0].kind, NotificationKind::Notice, "{:#?}", burst[0]);
    assert!(burst[0].incident.is_none(), "{:#?}", burst[0]);
    assert!(
        store.list_incidents(5).await.unwrap().is_empty(),
        "no incident is opened for a burst that ended"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_sent_again_after_a_crash_before_it_was_recorded_has_the_same_message_id() {
    let Some(smtp) = SmtpServer::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = incident(&store).await;
    let oncall = email("oncall", smtp.port, &["oncall@example.com"]);
    let worker = worker(&store, config(vec![oncall.clone()], &["oncall"], &[]));
    let now = Utc::now();
    let page = enqueue(
        &store,
        "oncall",
        "page",
        NotificationKind::Page,
        &details(id, "PAGE production web"),
        now,
    )
    .await;
    let notice = enqueue(
        &store,
        "oncall",
        "notice",
        NotificationKind::Notice,
        &details(id, "Rolling back production web"),
        now,
    )
    .await;
    // A worker claims the page and sends it; the server says 250; the
    // worker dies before it records that.
    let claimed = store
        .claim_notification(page, "a-worker-that-dies", now, now + TimeDelta::minutes(1))
        .await
        .unwrap()
        .expect("claimed");
    rollwatch::notify::channels::send(&oncall, &claimed, None)
        .await
        .unwrap();
    // Its lease holds: nobody sends the page (nor the notice behind it).
    worker.round(now + TimeDelta::seconds(30)).await;
    assert_eq!(smtp.messages().len(), 1);
    // Once it has expired, another worker sends the page again, then the notice.
    let later = now + TimeDelta::minutes(2);
    assert_eq!(worker.round(later).await, Some(later), "settled the page");
    worker.round(later).await;
    let mails = smtp.messages();
    assert_eq!(mails.len(), 3, "{mails:#?}");
    let message_id = |mail: &String| header(mail, "Message-ID").expect("a Message-ID");
    assert_eq!(
        message_id(&mails[0]),
        message_id(&mails[1]),
        "the page sent again is recognisably the same message"
    );
    assert!(
        message_id(&mails[0]).starts_with(&format!("<rollwatch.{page}.")),
        "{}",
        mails[0]
    );
    assert_ne!(message_id(&mails[2]), message_id(&mails[0]));
    assert!(mails[2].contains("Rolling back production web"));
    assert_eq!(
        header(&mails[2], "In-Reply-To"),
        Some(message_id(&mails[0]))
    );
    assert_eq!(header(&mails[2], "References"), Some(message_id(&mails[0])));
    let stored = store.notifications(id).await.unwrap();
    for row in &stored {
        assert_eq!(row.state, NotificationState::Sent, "{row:#?}");
    }
    assert_eq!(stored.iter().find(|n| n.id == notice).unwrap().attempts, 1);
}

/// A worker whose routing says whether this replica owns the target.
fn replica(
    store: &Store,
    notify: NotifyConfig,
    owner: tokio::sync::watch::Receiver<bool>,
) -> Worker {
    let routing = rollwatch::notify::deliver::Routing::default();
    routing.add_owned(TARGET.into(), Some(notify), Some(owner));
    Worker::new(store.clone(), routing, Arc::new(tokio::sync::Notify::new()))
}

/// Puts a message in the outbox and records it sent, as the owner did.
async fn sent_by_the_owner(store: &Store, channel: &str, key: &str, details: &Details) -> i64 {
    let now = Utc::now();
    let id = enqueue(store, channel, key, NotificationKind::Page, details, now).await;
    store
        .claim_notification(id, "the-owner", now, now + TimeDelta::minutes(1))
        .await
        .unwrap()
        .expect("claimed");
    assert!(
        store
            .mark_notification_sent(id, "the-owner", now)
            .await
            .unwrap()
    );
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_replica_neither_sends_nor_refreshes_alerts_and_does_both_once_it_owns() {
    let Some(am) = Alertmanager::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = incident(&store).await;
    let channel = Channel {
        name: "am".into(),
        kind: ChannelKind::Alertmanager {
            url: am.url.clone().into(),
        },
        timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(3600),
    };
    let (owner, ownership) = tokio::sync::watch::channel(false);
    let worker = replica(&store, config(vec![channel], &["am"], &[]), ownership);
    // The owner paged (its alert since timed out in Alertmanager), and a
    // second page waits in the outbox.
    sent_by_the_owner(&store, "am", "page", &details(id, "PAGE production web")).await;
    let waiting = enqueue(
        &store,
        "am",
        "page-again",
        NotificationKind::Page,
        &details(id, "PAGE production web, again"),
        Utc::now(),
    )
    .await;
    let ours = |alerts: Vec<serde_json::Value>| {
        alerts
            .into_iter()
            .filter(|a| a["labels"]["incident"] == id.to_string().as_str())
            .count()
    };
    worker.refresh_alerts(Utc::now()).await;
    worker.round(Utc::now()).await;
    assert_eq!(
        ours(alerts(&am).await),
        0,
        "a passive replica posts nothing"
    );
    let stored = store.notifications(id).await.unwrap();
    let pending = stored.iter().find(|n| n.id == waiting).unwrap();
    assert_eq!(
        (pending.state, pending.attempts),
        (NotificationState::Pending, 0),
        "and sends nothing"
    );
    // Ownership comes to this replica: it refreshes the open incident's alert.
    owner.send(true).unwrap();
    worker.refresh_alerts(Utc::now()).await;
    assert_eq!(ours(alerts(&am).await), 1, "the owner refreshes");
    worker.round(Utc::now()).await;
    let stored = store.notifications(id).await.unwrap();
    assert_eq!(
        stored.iter().find(|n| n.id == waiting).unwrap().state,
        NotificationState::Sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_alertmanager_holds_no_email_up_while_its_alerts_are_refreshed() {
    let Some(smtp) = SmtpServer::start() else {
        return;
    };
    let silent = BlackHole::start();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let am = Channel {
        name: "am".into(),
        kind: ChannelKind::Alertmanager {
            url: silent.url().into(),
        },
        // Far longer than an email takes: the email must go out while the
        // refresh still waits.
        timeout: Duration::from_secs(60),
        deadline: Duration::from_secs(3600),
    };
    let oncall = email("oncall", smtp.port, &["oncall@example.com"]);
    let notify = config(vec![oncall, am], &["oncall", "am"], &[]);
    let routing = rollwatch::notify::deliver::Routing::default();
    // Three targets with an open incident each, whose alerts went to
    // Alertmanager before it fell silent.
    let mut incidents = Vec::new();
    for service in ["web", "api", "db"] {
        let target = format!("{service}/production");
        routing.add(target.clone(), Some(notify.clone()));
        let id = store
            .open_incident(&NewIncident {
                target: target.clone(),
                kind: IncidentKind::Rule,
                tier: rollwatch::engine::policy::Tier::Consider,
                rule: "error-rate".into(),
                reason: String::new(),
                component: None,
                from_version: None,
                to_version: None,
                opened_at: Utc::now(),
                deadline: None,
            })
            .await
            .unwrap();
        let mut alert = details(id, &format!("PAGE production {service}"));
        alert.service = service.into();
        alert.target = target.clone();
        let row = NewNotification {
            incident: Some(id),
            kind: NotificationKind::Page,
            channel: "am".into(),
            recipients: vec![],
            subject: alert.summary.clone(),
            body: String::new(),
            dedupe_key: format!("incident:{id}:page:am"),
            created_at: Utc::now(),
            target,
            details: serde_json::to_value(&alert).unwrap(),
        };
        let row = store.enqueue_notification(&row).await.unwrap().id();
        let now = Utc::now();
        store
            .claim_notification(row, "before", now, now + TimeDelta::minutes(1))
            .await
            .unwrap()
            .unwrap();
        store
            .mark_notification_sent(row, "before", now)
            .await
            .unwrap();
        incidents.push(id);
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    let worker = Worker::new(store.clone(), routing, Arc::clone(&wake));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    // The refresh is under way: Alertmanager has taken its posts and says nothing.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while silent.accepted() < 3 {
        assert!(std::time::Instant::now() < deadline, "no refresh started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An email comes along.
    let mut notice = details(incidents[0], "Rolling back production web");
    notice.action = "rollback".into();
    enqueue(
        &store,
        "oncall",
        "rollback-notice",
        NotificationKind::Notice,
        &notice,
        Utc::now(),
    )
    .await;
    wake.notify_one();
    let deadline = std::time::Instant::now() + Duration::from_secs(50);
    while smtp.messages().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no email while the refresh waits"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It went out while the refresh was still waiting for every answer.
    assert_eq!(
        silent.abandoned(),
        0,
        "the email waited for the refresh to give up"
    );
    assert!(smtp.messages()[0].contains("Rolling back production web"));
    shutdown.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_real_time_with_a_refusing_and_a_silent_channel_stops_adding_rows() {
    let silent = BlackHole::start();
    let dir = tempfile::tempdir().unwrap();
    let store = store(&dir).await;
    let id = incident(&store).await;
    let leads = Channel {
        name: "leads".into(),
        kind: ChannelKind::Webhook {
            url: silent.url().into(),
        },
        timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(5),
    };
    let notify = two_channels(
        dead_email("oncall", closed_port(), "oncall@example.com"),
        leads,
    );
    let worker = worker(&store, notify);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let d = details(id, "PAGE production web");
    for channel in ["oncall", "leads"] {
        enqueue(
            &store,
            channel,
            "page",
            NotificationKind::Page,
            &d,
            Utc::now(),
        )
        .await;
    }
    // Watch the outbox for a minute.
    let mut counts = Vec::new();
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        counts.push(store.notifications(id).await.unwrap().len());
    }
    let rows = store.notifications(id).await.unwrap();
    // Quiet because it gave up, not because it stalled: a new message is
    // still tried at once.
    let tried = silent.accepted();
    enqueue(
        &store,
        "leads",
        "page-again",
        NotificationKind::Page,
        &d,
        Utc::now(),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while silent.accepted() == tried {
        assert!(
            std::time::Instant::now() < deadline,
            "the outbox worker still delivers after its quiet minute"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    eprintln!("rows, second by second: {counts:?}");
    // The two pages failed, each escalated once on the other channel,
    // where the escalation failed and went no further.
    assert_eq!(rows.len(), 4, "{counts:?} {rows:#?}");
    assert!(
        rows.iter().all(|r| r.state == NotificationState::Failed),
        "{rows:#?}"
    );
    assert_eq!(
        counts[30..].iter().min(),
        counts[30..].iter().max(),
        "the second half-minute added no row: {counts:?}"
    );
    assert!(silent.accepted() >= 2, "the webhook was tried");
}
