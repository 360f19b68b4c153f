//! Two dead channels for two minutes of real time: what the outbox and the
//! delivery worker cost while nothing can be delivered.
//!
//! One channel refuses every connection (an SMTP port nothing listens on),
//! the other accepts and never answers (a black-holed webhook). A page goes
//! to both at the start; each fails, is escalated once on the other channel,
//! where the escalation fails too and goes no further. The figures: the
//! outbox's rows second by second and the CPU the whole process spent
//! (user + system, from getrusage) over the wall time.
//!
//! `cargo bench --bench outbox` (`ROLLWATCH_BENCH_SECS` shortens the run).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rollwatch::notify::deliver::Worker;
use rollwatch::notify::message::Details;
use rollwatch::policy::notify::{Channel, ChannelKind, NotifyConfig, Routes, SmtpSecurity};
use rollwatch::store::{IncidentKind, NewIncident, NewNotification, NotificationKind, Store};

const TARGET: &str = "web/production";

/// User plus system CPU time this process has used.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// A webhook that accepts connections and never answers.
async fn black_hole() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    url
}

fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn channels(webhook: String) -> NotifyConfig {
    let oncall = Channel {
        name: "oncall".into(),
        kind: ChannelKind::Email {
            host: "127.0.0.1".into(),
            port: closed_port(),
            security: SmtpSecurity::Plain,
            from: "rollwatch@example.com".into(),
            to: vec!["oncall@example.com".into()],
            username_env: None,
            password_env: None,
        },
        timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(5),
    };
    let leads = Channel {
        name: "leads".into(),
        kind: ChannelKind::Webhook {
            url: webhook.into(),
        },
        timeout: Duration::from_secs(1),
        deadline: Duration::from_secs(5),
    };
    let names = |names: &[&str]| names.iter().map(|s| s.to_string()).collect();
    NotifyConfig {
        channels: vec![oncall, leads],
        routes: Routes {
            page: names(&["oncall", "leads"]),
            notice: names(&["oncall", "leads"]),
            escalation: names(&["leads"]),
        },
        escalate_after: Duration::from_secs(900),
    }
}

fn details(incident: i64) -> Details {
    Details {
        service: "web".into(),
        environment: "production".into(),
        target: TARGET.into(),
        rule: "error-rate".into(),
        tier: "consider".into(),
        action: "page".into(),
        incident: Some(incident),
        deadline: None,
        summary: "PAGE production web".into(),
        recommendation: "roll back".into(),
        commands: vec![],
        explanation: "error-rate 8.1% > 5% over 2m".into(),
        resolved: false,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs: u64 = std::env::var("ROLLWATCH_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("rollwatch.db").display());
    let store = Store::open(&db).await.unwrap();
    let id = store
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
    let worker = Worker::for_target(
        store.clone(),
        TARGET.into(),
        Some(channels(black_hole().await)),
        Arc::new(tokio::sync::Notify::new()),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let details = details(id);
    for channel in ["oncall", "leads"] {
        store
            .enqueue_notification(&NewNotification {
                incident: Some(id),
                kind: NotificationKind::Page,
                channel: channel.into(),
                recipients: vec![],
                subject: details.summary.clone(),
                body: rollwatch::notify::message::text_body(&details, Utc::now()),
                dedupe_key: format!("page:{channel}"),
                created_at: Utc::now(),
                target: TARGET.into(),
                details: serde_json::to_value(&details).unwrap(),
            })
            .await
            .unwrap();
    }
    let (wall, cpu) = (Instant::now(), cpu_time());
    let mut rows = Vec::new();
    let mut settled_cpu = None;
    for second in 1..=secs {
        tokio::time::sleep_until((wall + Duration::from_secs(second)).into()).await;
        rows.push(store.notifications(id).await.unwrap().len());
        if second == 30 {
            settled_cpu = Some((Instant::now(), cpu_time()));
        }
    }
    let (wall, cpu) = (wall.elapsed(), cpu_time() - cpu);
    shutdown.cancel();
    running.await.unwrap();
    println!("outbox rows, second by second: {rows:?}");
    println!(
        "two dead channels for {:.0} s: {} rows; CPU {:.3} s ({:.2} % of one core)",
        wall.as_secs_f64(),
        rows.last().unwrap(),
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
    );
    if let Some((at, before)) = settled_cpu {
        let (wall, cpu) = (at.elapsed(), cpu_time() - before);
        println!(
            "after the first 30 s (all settled): CPU {:.3} s over {:.0} s ({:.2} % of one core)",
            cpu.as_secs_f64(),
            wall.as_secs_f64(),
            100.0 * cpu.as_secs_f64() / wall.as_secs_f64()
        );
    }
}
