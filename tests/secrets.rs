//! No secret leaves (docs/operations.md#telling-people): a Slack-style webhook
//! whose URL path is its token fails for good, and its undeliverable notice
//! goes to another channel. Neither that message, nor the stored rows that
//! status and `incidents` read, nor the log, carries the token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use chrono::{TimeDelta, Utc};
use rollwatch::notify::deliver::Worker;
use rollwatch::notify::message::Details;
use rollwatch::policy::notify::{Channel, ChannelKind, NotifyConfig, Routes};
use rollwatch::store::{IncidentKind, NewIncident, NewNotification, NotificationKind, Store};

const TARGET: &str = "web/production";
const TOKEN: &str = "T0001/B0002/XXXXs3cr3tT0kenXXXX";

/// Everything the log says, as text.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Log {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn receive(State(seen): State<Arc<Mutex<Vec<String>>>>, body: String) {
    seen.lock().unwrap().push(body);
}

fn webhook(name: &str, url: String) -> Channel {
    Channel {
        name: name.into(),
        kind: ChannelKind::Webhook { url: url.into() },
        timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_token_is_in_no_message_no_stored_row_and_no_log_line() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // The team's webhook: nothing listens, so every attempt fails and
    // the client's error quotes the URL it tried.
    let refused = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let slack = format!("http://127.0.0.1:{refused}/services/{TOKEN}");
    // The leads' webhook receives the undeliverable notice.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/leads", post(receive))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leads = format!("http://{}/leads", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("rollwatch.db").display()
    ))
    .await
    .unwrap();
    let notify = NotifyConfig {
        channels: vec![webhook("slack", slack.clone()), webhook("leads", leads)],
        routes: Routes {
            page: vec!["slack".into()],
            notice: vec!["slack".into()],
            escalation: vec!["leads".into()],
        },
        escalate_after: Duration::from_secs(900),
    };
    let slack_channel = &notify.channels[0];
    assert!(
        !format!("{slack_channel:?}").contains("s3cr3t"),
        "{slack_channel:?}"
    );
    let recipients = slack_channel.kind.recipients();
    assert!(
        recipients.is_empty(),
        "a URL channel is named by its name, never its URL: {recipients:?}"
    );

    let incident = store
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
        .unwrap();
    let details = Details {
        service: "web".into(),
        environment: "production".into(),
        target: TARGET.into(),
        rule: "error-rate".into(),
        tier: "consider".into(),
        action: "page".into(),
        incident: Some(incident),
        summary: "PAGE production web".into(),
        ..Details::default()
    };
    let start = Utc::now();
    store
        .enqueue_notification(&NewNotification {
            incident: Some(incident),
            kind: NotificationKind::Page,
            channel: "slack".into(),
            recipients,
            subject: details.summary.clone(),
            body: rollwatch::notify::message::text_body(&details, start),
            dedupe_key: "page:slack".into(),
            created_at: start,
            target: TARGET.into(),
            details: serde_json::to_value(&details).unwrap(),
        })
        .await
        .unwrap();

    let worker = Worker::for_target(
        store.clone(),
        TARGET.into(),
        Some(notify),
        Arc::new(tokio::sync::Notify::new()),
    );
    let mut now = start;
    for _ in 0..20 {
        worker.round(now).await;
        now += TimeDelta::seconds(2);
    }

    let rows = store.notifications(incident).await.unwrap();
    let escalation = rows
        .iter()
        .find(|n| n.kind == NotificationKind::Escalation)
        .unwrap_or_else(|| panic!("the failed page escalates: {rows:#?}"));
    assert_eq!(escalation.channel, "leads");
    let failed = rows.iter().find(|n| n.channel == "slack").unwrap();
    let error = failed.last_error.clone().unwrap_or_default();
    assert!(
        error.contains(&format!("127.0.0.1:{refused}/services/…")),
        "the error still says which channel failed and where: {error}"
    );

    let received = seen.lock().unwrap().clone();
    assert_eq!(received.len(), 1, "the notice reaches the leads once");
    let logged = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(logged.contains("UNDELIVERABLE"), "{logged}");
    let stored = serde_json::to_string(
        &rows
            .iter()
            .map(|n| {
                (
                    &n.recipients,
                    &n.subject,
                    &n.body,
                    &n.last_error,
                    &n.details,
                )
            })
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let named = serde_json::to_string(
        &rows
            .iter()
            .map(|n| (&n.channel, &n.recipients))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    assert!(
        !named.contains(&format!(":{refused}")),
        "a stored row is addressed by its channel's name, never its URL: {named}"
    );
    for (what, text) in [
        ("the notice to the leads", received.join("\n")),
        ("the stored rows", stored),
        ("the log", logged),
    ] {
        assert!(
            !text.contains("s3cr3tT0ken"),
            "the webhook's token is in {what}:\n{text}"
        );
    }
}
