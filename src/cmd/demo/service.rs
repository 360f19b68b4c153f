//! The demo's stand-in service: serves the example targets' metrics
//! (docs/policy.md#the-example-targets) and a health endpoint on a free
//! loopback port. Which version runs is read from a file (the demo's rollback
//! step writes it, as a deploy tool would), and each version has its own error
//! rate and latency: v1.5.0 is the bad deployment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 8] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0];
pub const GOOD: &str = "v1.4.2";
pub const BAD: &str = "v1.5.0";

#[derive(Default)]
struct Counters {
    ok: f64,
    errors: f64,
    buckets: [f64; BUCKETS.len()],
    count: f64,
    sum: f64,
    sessions: f64,
    sessions_with_errors: f64,
}

struct Shared {
    version_file: PathBuf,
    counters: Mutex<Counters>,
}

impl Shared {
    fn version(&self) -> String {
        std::fs::read_to_string(&self.version_file)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| GOOD.to_string())
    }
}

/// (error rate, latency in seconds) of a version.
fn behaviour(version: &str) -> (f64, f64) {
    if version == BAD {
        (0.12, 0.45)
    } else {
        (0.002, 0.12)
    }
}

pub struct StandIn {
    pub addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl StandIn {
    pub async fn start(version_file: PathBuf) -> std::io::Result<StandIn> {
        std::fs::write(&version_file, GOOD)?;
        let shared = Arc::new(Shared {
            version_file,
            counters: Mutex::new(Counters::default()),
        });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                let (error_rate, latency) = behaviour(&shared.version());
                let mut c = shared.counters.lock().unwrap_or_else(|e| e.into_inner());
                let requests = 40.0; // 400 requests a second
                c.errors += requests * error_rate;
                c.ok += requests * (1.0 - error_rate);
                for (i, bound) in BUCKETS.iter().enumerate() {
                    if latency <= *bound {
                        c.buckets[i] += requests;
                    }
                }
                c.count += requests;
                c.sum += requests * latency;
                c.sessions += 8.0;
                c.sessions_with_errors += 8.0 * error_rate * 3.0;
            }
        });
        Ok(StandIn {
            addr,
            tasks: vec![server, ticker],
        })
    }

    /// What the service is doing now: its version, error rate and latency.
    pub fn describe(version_file: &std::path::Path) -> String {
        let version = std::fs::read_to_string(version_file)
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|_| GOOD.to_string());
        let (error_rate, latency) = behaviour(&version);
        format!(
            "service: {version}, {:.1}% errors, p95 {:.0} ms",
            error_rate * 100.0,
            latency * 1000.0
        )
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let version = shared.version();
    let c = shared.counters.lock().unwrap_or_else(|e| e.into_inner());
    let mut out = String::from("# TYPE http_requests_total counter\n");
    out.push_str(&format!(
        "http_requests_total{{code=\"200\"}} {}\n",
        c.ok.floor()
    ));
    out.push_str(&format!(
        "http_requests_total{{code=\"500\"}} {}\n",
        c.errors.floor()
    ));
    out.push_str("# TYPE http_request_duration_seconds histogram\n");
    for (i, bound) in BUCKETS.iter().enumerate() {
        out.push_str(&format!(
            "http_request_duration_seconds_bucket{{le=\"{bound}\"}} {}\n",
            c.buckets[i].floor()
        ));
    }
    out.push_str(&format!(
        "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {}\n",
        c.count.floor()
    ));
    out.push_str(&format!("http_request_duration_seconds_sum {}\n", c.sum));
    out.push_str(&format!(
        "http_request_duration_seconds_count {}\n",
        c.count.floor()
    ));
    out.push_str("# TYPE app_sessions_total counter\n");
    out.push_str(&format!("app_sessions_total {}\n", c.sessions.floor()));
    out.push_str("# TYPE app_sessions_with_errors_total counter\n");
    out.push_str(&format!(
        "app_sessions_with_errors_total {}\n",
        c.sessions_with_errors.floor()
    ));
    out.push_str("# TYPE app_build_info gauge\n");
    out.push_str(&format!("app_build_info{{version=\"{version}\"}} 1\n"));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
