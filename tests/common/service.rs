//! A stand-in service for tests: serves the example targets' metrics
//! (docs/policy.md#the-example-targets) on `/metrics` and a health endpoint on
//! `/healthz`, on a free loopback port, with error rate, latency, health,
//! version and misbehaviour set by the test. Traffic is simulated on the wall
//! clock (100 ms ticks), so several scrapers (rollwatch and a real Prometheus)
//! see the same counters.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Upper bounds of the latency histogram, in seconds.
pub const BUCKETS: [f64; 9] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0];

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Health {
    Ok,
    /// `/healthz` answers 503.
    Failing,
    /// `/healthz` never answers.
    Hanging,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricsMode {
    Normal,
    /// `/metrics` answers after this long.
    Slow(Duration),
    /// `/metrics` answers 500.
    Status500,
    /// `/metrics` sends this many bytes of valid-looking comment lines first.
    Huge(usize),
    /// `/metrics` streams this many bytes of padding then a normal
    /// exposition, in 64 KiB chunks with no `Content-Length`: only the
    /// reader's running count can stop it.
    HugeStreamed(usize),
    /// `/metrics` answers with bytes that are not an exposition.
    Garbage,
    /// The latency histogram's buckets go down.
    NonMonotonic,
    /// A normal exposition with one line that cannot be read.
    OneBadLine,
}

#[derive(Debug)]
pub struct Knobs {
    pub requests_per_second: f64,
    pub error_rate: f64,
    /// Every request takes this long (it lands in one bucket).
    pub latency_seconds: f64,
    pub sessions_per_second: f64,
    pub session_error_rate: f64,
    pub health: Health,
    pub metrics: MetricsMode,
    pub version: String,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            requests_per_second: 200.0,
            error_rate: 0.002,
            latency_seconds: 0.15,
            sessions_per_second: 40.0,
            session_error_rate: 0.0,
            health: Health::Ok,
            metrics: MetricsMode::Normal,
            version: "v1.0.0".into(),
        }
    }
}

#[derive(Debug, Default)]
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
    knobs: Mutex<Knobs>,
    counters: Mutex<Counters>,
    /// Normal expositions served so far.
    scrapes: AtomicU64,
}

/// Changes a running service's knobs (see `TestService::knobs`).
#[derive(Clone)]
pub struct KnobHandle(Arc<Shared>);

impl KnobHandle {
    pub fn set(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut self.0.knobs.lock().unwrap());
    }
}

pub struct TestService {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
}

impl TestService {
    pub async fn start() -> TestService {
        let shared = Arc::new(Shared {
            knobs: Mutex::new(Knobs::default()),
            counters: Mutex::new(Counters::default()),
            scrapes: AtomicU64::new(0),
        });
        let app = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(healthz))
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let ticking = Arc::clone(&shared);
        let ticker = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tick.tick().await;
                advance(&ticking, 0.1);
            }
        });
        TestService {
            addr,
            shared,
            server,
            ticker,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, change: impl FnOnce(&mut Knobs)) {
        change(&mut self.shared.knobs.lock().unwrap());
    }

    /// A handle that changes the knobs from another task.
    pub fn knobs(&self) -> KnobHandle {
        KnobHandle(Arc::clone(&self.shared))
    }

    /// Waits until `/metrics` has served `n` more expositions (30 s at most):
    /// a scraper started before this call has then seen the service as it is
    /// now, so a change made next is one it sees happen (a baseline, then a
    /// deployment) rather than its first view.
    pub async fn wait_for_scrapes(&self, n: u64) {
        let until = self.shared.scrapes.load(Ordering::SeqCst) + n;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.shared.scrapes.load(Ordering::SeqCst) < until {
            assert!(
                std::time::Instant::now() < deadline,
                "the service was not scraped {n} times within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process "restarts": every counter goes back to zero.
    pub fn reset_counters(&self) {
        *self.shared.counters.lock().unwrap() = Counters::default();
    }

    /// Stops answering: connections are refused from now on.
    pub fn stop(&self) {
        self.server.abort();
        self.ticker.abort();
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.stop();
    }
}

fn advance(shared: &Shared, seconds: f64) {
    let knobs = shared.knobs.lock().unwrap();
    let mut c = shared.counters.lock().unwrap();
    let requests = knobs.requests_per_second * seconds;
    c.errors += requests * knobs.error_rate;
    c.ok += requests * (1.0 - knobs.error_rate);
    for (i, bound) in BUCKETS.iter().enumerate() {
        if knobs.latency_seconds <= *bound {
            c.buckets[i] += requests;
        }
    }
    c.count += requests;
    c.sum += requests * knobs.latency_seconds;
    let sessions = knobs.sessions_per_second * seconds;
    c.sessions += sessions;
    c.sessions_with_errors += sessions * knobs.session_error_rate;
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let health = shared.knobs.lock().unwrap().health;
    match health {
        Health::Ok => (StatusCode::OK, "ok\n").into_response(),
        Health::Failing => (StatusCode::SERVICE_UNAVAILABLE, "failing\n").into_response(),
        Health::Hanging => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::OK.into_response()
        }
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let mode = shared.knobs.lock().unwrap().metrics;
    match mode {
        MetricsMode::Status500 => {
            return (StatusCode::INTERNAL_SERVER_ERROR, "oops\n").into_response();
        }
        MetricsMode::Garbage => {
            return (StatusCode::OK, "\u{0}\u{1}<html>not metrics</html>\n{{{{\n").into_response();
        }
        MetricsMode::Slow(delay) => tokio::time::sleep(delay).await,
        _ => {}
    }
    let body = exposition(&shared, mode);
    shared.scrapes.fetch_add(1, Ordering::SeqCst);
    let body = match mode {
        MetricsMode::Huge(bytes) => {
            let line = "# padding padding padding padding padding padding padding padding\n";
            let mut huge = line.repeat(bytes / line.len() + 1);
            huge.push_str(&body);
            huge
        }
        MetricsMode::HugeStreamed(bytes) => {
            let line = "# padding padding padding padding padding padding padding padding\n";
            let chunk = axum::body::Bytes::from(line.repeat(65536 / line.len()));
            let chunks = bytes.div_ceil(chunk.len());
            let padding = std::iter::repeat_n(chunk, chunks);
            let stream = futures_util::stream::iter(
                padding
                    .chain(std::iter::once(axum::body::Bytes::from(body)))
                    .map(Ok::<_, std::convert::Infallible>),
            );
            return (
                [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                axum::body::Body::from_stream(stream),
            )
                .into_response();
        }
        _ => body,
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn exposition(shared: &Shared, mode: MetricsMode) -> String {
    let knobs = shared.knobs.lock().unwrap();
    let c = shared.counters.lock().unwrap();
    let mut out = String::new();
    out.push_str(
        "# HELP http_requests_total Requests by status code.\n# TYPE http_requests_total counter\n",
    );
    out.push_str(&format!(
        "http_requests_total{{code=\"200\",method=\"GET\"}} {}\n",
        c.ok.floor()
    ));
    out.push_str(&format!(
        "http_requests_total{{code=\"500\",method=\"GET\"}} {}\n",
        c.errors.floor()
    ));
    out.push_str("# HELP http_request_duration_seconds Request latency.\n# TYPE http_request_duration_seconds histogram\n");
    for (i, bound) in BUCKETS.iter().enumerate() {
        let mut value = c.buckets[i].floor();
        if mode == MetricsMode::NonMonotonic && i == 3 {
            value = (value / 2.0).floor();
        }
        out.push_str(&format!(
            "http_request_duration_seconds_bucket{{le=\"{bound}\"}} {value}\n"
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
    out.push_str(&format!(
        "app_build_info{{version=\"{}\"}} 1\n",
        knobs.version
    ));
    if mode == MetricsMode::OneBadLine {
        out.push_str("broken_metric{label=\"unterminated} 1\n");
    }
    out
}
