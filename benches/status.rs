//! `GET /api/v1/status` with 1,000 targets, over real HTTP on loopback: each
//! target's snapshot is what a target loop publishes (every rule with its
//! reading, the deployment, the last decision, the source's health), made by
//! an engine on the production policy fed a day of observations.
//!
//!     cargo bench --bench status
//!
//! 20 warm-up requests, then 200 timed ones, one at a time; prints the median,
//! p99 and maximum and the body's size. Target: median under 20 ms.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rollwatch::engine::Engine;
use rollwatch::runtime::status::{SourceHealth, StatusBoard, TargetStatus};
use rollwatch::server::{Api, app};
use rollwatch::telemetry::Telemetry;

const TARGETS: usize = 1_000;
const WARM_UP: usize = 20;
const TIMED: usize = 200;
const TARGET_MEDIAN: Duration = Duration::from_millis(20);

fn snapshot() -> TargetStatus {
    let policy = common::load_policy();
    let mut engine = Engine::new(Arc::clone(&policy));
    let mut last_decision = None;
    for observation in common::observations(common::ONE_DAY) {
        engine
            .handle_observation(&observation)
            .expect("the trace is in time order");
        while let Some(decision) = engine.poll_decision() {
            last_decision = Some(decision);
        }
    }
    TargetStatus {
        target: String::new(),
        policy: policy.path.clone(),
        sha256: policy.sha256.clone(),
        mode: rollwatch::runtime::status::Mode::Acting,
        rules: engine.rule_status(),
        deployment: engine.deployment().cloned(),
        incident: engine.incident().cloned(),
        incident_id: None,
        last_decision,
        source: SourceHealth {
            last_poll_at: Some(chrono::Utc::now()),
            ok: true,
            problems: Vec::new(),
            polls: 5_760,
        },
        reload_error: None,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "status".contains(f.as_str())) {
        return;
    }
    let board = StatusBoard::default();
    let one = snapshot();
    for i in 0..TARGETS {
        let mut status = one.clone();
        status.target = format!("web-{i:04}/production");
        board.publish(status);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let api = Api {
            telemetry: Telemetry::new(),
            status: board,
            store: None,
            inputs: Default::default(),
            token: None,
            reads_need_token: false,
            readiness: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}/api/v1/status", listener.local_addr().expect("an address"));
        tokio::spawn(async move { axum::serve(listener, app(api)).await });
        let client = rollwatch::sources::http::client().expect("an HTTP client");
        let mut times = Vec::with_capacity(TIMED);
        let mut size = 0;
        for i in 0..WARM_UP + TIMED {
            let started = Instant::now();
            let body = client
                .get(&url)
                .send()
                .await
                .expect("a response")
                .bytes()
                .await
                .expect("a body");
            let took = started.elapsed();
            size = body.len();
            if i >= WARM_UP {
                times.push(took);
            }
        }
        times.sort();
        let median = times[times.len() / 2];
        let p99 = times[times.len() * 99 / 100];
        println!(
            "status/{TARGETS} targets: GET /api/v1/status over loopback, {TIMED} requests: median {:.2} ms, p99 {:.2} ms, max {:.2} ms, body {:.1} MB{}",
            median.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            times[times.len() - 1].as_secs_f64() * 1e3,
            size as f64 / 1e6,
            if median < TARGET_MEDIAN { " (target: median under 20 ms: met)" } else { " (target: median under 20 ms: MISSED)" }
        );
    });
}
