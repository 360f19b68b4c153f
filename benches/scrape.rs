//! Scrape-and-derive of a 10,000-series exposition (criterion).
//!
//!     cargo bench --bench scrape
//!
//! The exposition is generated once, deterministically: request counters with
//! four labels, a latency histogram family (12 buckets per series), a response
//! size histogram, a summary, RPC and cache counters, consumer-lag gauges,
//! process gauges, the session counters, a `app_build_info` and per-tenant
//! counters filling it up to exactly 10,000 series (about 1 MB of text).
//!
//! * `scrape/parse/10k`: `rollwatch::sources::exposition::parse` alone.
//! * `scrape/prometheus_parse/10k`: `prometheus_parse::Scrape::parse` on the
//!   same text, for comparison (its API takes owned lines, so that is counted).
//! * `scrape/parse_derive/10k`: parse then `Deriver::derive` with the selectors
//!   of `policies/examples/scrape.toml`.
//! * `scrape/poll/10k`: `Poller::poll` through a real HTTP GET on loopback: an
//!   axum server inside the bench serves the text, the poller fetches, parses
//!   and derives (a policy with only a `[source] kind = "scrape"`).
//! * `scrape/poll_with_health/10k`: the same plus the `[health]` probe of the
//!   example policy, polled concurrently as `run` and `evaluate` do.
//!
//! * `scrape/derive_histogram/1000_le`: `Deriver::derive` alone on a scrape
//!   whose latency histogram has 1,000 `le` values in each of 4 series, the
//!   each iteration a pair of scrapes from a fresh start (bucket deltas were
//!   quadratic in the `le` values).
//!
//! Target (the live sampling issue): scrape-and-derive median under 10 ms, and
//! our parser at least as fast as prometheus-parse. After criterion, a short
//! summary times 50 single iterations of each case and prints the median
//! against the target (only with `--bench`, not under `cargo test --benches`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use chrono::Utc;
use criterion::{Criterion, Throughput};
use rollwatch::policy::Compiled;
use rollwatch::runtime::poll::Poller;
use rollwatch::sources::config::SourceKind;
use rollwatch::sources::exposition::{self, Format};
use rollwatch::sources::scrape::Deriver;
use rollwatch::trace::TraceItem;

const SERIES: usize = 10_000;
const TARGET: Duration = Duration::from_millis(10);
const SUMMARY_RUNS: usize = 50;

/// The source of `policies/examples/scrape.toml`, pointed at the bench's server.
const SOURCE: &str = r#"
[source]
kind = "scrape"
url = "${TARGET_URL}/metrics"
timeout = "5s"

[source.metrics]
requests = "http_requests_total"
errors = 'http_requests_total{code=~"5.."}'
latency = "http_request_duration_seconds"
users = "app_sessions_total"
users_affected = "app_sessions_with_errors_total"
version = "app_build_info"
"#;

const HEALTH: &str = r#"
[health]
url = "${TARGET_URL}/healthz"
expect_status = 200
timeout = "2s"
"#;

const REST: &str = r#"
[target]
service = "bench"
environment = "production"

[evaluation]
interval = "15s"

[[rule]]
name = "error-rate"
tier = "consider"
signal = "error-rate"
threshold = "5%"
window = "2m"
for = "2m"
"#;

/// SplitMix64: deterministic values without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Appends families to the text and counts the sample lines.
struct Writer {
    out: String,
    series: usize,
}

impl Writer {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        self.out
            .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(&format!("{label}=\"{text}\""));
            }
            self.out.push('}');
        }
        self.out.push_str(&format!(" {value}\n"));
        self.series += 1;
    }
}

const HANDLERS: [&str; 40] = [
    "/",
    "/login",
    "/logout",
    "/signup",
    "/healthz",
    "/metrics",
    "/api/v1/users",
    "/api/v1/users/:id",
    "/api/v1/users/:id/avatar",
    "/api/v1/orders",
    "/api/v1/orders/:id",
    "/api/v1/orders/:id/items",
    "/api/v1/orders/:id/cancel",
    "/api/v1/carts",
    "/api/v1/carts/:id",
    "/api/v1/carts/:id/checkout",
    "/api/v1/products",
    "/api/v1/products/:id",
    "/api/v1/products/:id/reviews",
    "/api/v1/search",
    "/api/v1/search/suggest",
    "/api/v1/payments",
    "/api/v1/payments/:id",
    "/api/v1/payments/:id/refund",
    "/api/v1/invoices",
    "/api/v1/invoices/:id",
    "/api/v1/invoices/:id/pdf",
    "/api/v1/shipments",
    "/api/v1/shipments/:id",
    "/api/v1/addresses",
    "/api/v1/addresses/:id",
    "/api/v1/notifications",
    "/api/v1/settings",
    "/api/v1/sessions",
    "/api/v2/graphql",
    "/api/v2/batch",
    "/static/*path",
    "/webhooks/stripe",
    "/webhooks/github",
    "/admin/*path",
];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];
const CODES: [&str; 10] = [
    "200", "201", "204", "301", "400", "401", "404", "429", "500", "503",
];
const LATENCY_BUCKETS: [&str; 11] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
];
const SIZE_BUCKETS: [&str; 7] = ["100", "1000", "10000", "100000", "1e+06", "1e+07", "1e+08"];

/// A realistic exposition of exactly `SERIES` series. `tick` advances every
/// counter, so two ticks give the deriver deltas to compute.
fn exposition_text(tick: u64) -> String {
    let mut rng = Rng(0x5C2A_9E10_0000 + tick);
    let grow = |base: f64| (base * (1.0 + 0.01 * tick as f64)).floor();
    let mut w = Writer {
        out: String::with_capacity(1 << 20),
        series: 0,
    };

    w.family(
        "http_requests_total",
        "counter",
        "Requests handled, by handler, method and status code.",
    );
    for handler in HANDLERS {
        for method in METHODS {
            for code in CODES {
                let base = match code {
                    "200" => 1_000_000.0,
                    "500" | "503" => 900.0,
                    _ => 20_000.0,
                } * (0.5 + rng.unit());
                w.sample(
                    "http_requests_total",
                    &[
                        ("handler", handler),
                        ("method", method),
                        ("code", code),
                        ("instance", "web-7f9c4d-x2kq:8080"),
                    ],
                    grow(base),
                );
            }
        }
    }

    w.family(
        "http_request_duration_seconds",
        "histogram",
        "Request latency in seconds.",
    );
    for handler in HANDLERS {
        for method in METHODS {
            let total = grow(1_000_000.0 * (0.5 + rng.unit()));
            let mut cumulative = 0.0;
            for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
                let share = [
                    0.05, 0.1, 0.2, 0.2, 0.2, 0.15, 0.05, 0.03, 0.01, 0.005, 0.004,
                ][i];
                cumulative += (total * share).floor();
                w.sample(
                    "http_request_duration_seconds_bucket",
                    &[("handler", handler), ("method", method), ("le", bound)],
                    cumulative,
                );
            }
            let labels = [("handler", handler), ("method", method)];
            w.sample(
                "http_request_duration_seconds_bucket",
                &[("handler", handler), ("method", method), ("le", "+Inf")],
                total,
            );
            w.sample(
                "http_request_duration_seconds_sum",
                &labels,
                total * 0.087_3,
            );
            w.sample("http_request_duration_seconds_count", &labels, total);
        }
    }

    w.family(
        "http_response_size_bytes",
        "histogram",
        "Response body size in bytes.",
    );
    for handler in HANDLERS {
        let total = grow(500_000.0 * (0.5 + rng.unit()));
        let mut cumulative = 0.0;
        for bound in SIZE_BUCKETS {
            cumulative += (total / 8.0).floor();
            w.sample(
                "http_response_size_bytes_bucket",
                &[("handler", handler), ("le", bound)],
                cumulative,
            );
        }
        w.sample(
            "http_response_size_bytes_bucket",
            &[("handler", handler), ("le", "+Inf")],
            total,
        );
        w.sample(
            "http_response_size_bytes_sum",
            &[("handler", handler)],
            total * 5_312.5,
        );
        w.sample(
            "http_response_size_bytes_count",
            &[("handler", handler)],
            total,
        );
    }

    w.family(
        "rpc_client_requests_total",
        "counter",
        "Outgoing RPCs by service, method and gRPC status.",
    );
    for service in 0..10 {
        let service = format!("svc-{service:02}.internal");
        for method in 0..8 {
            let method = format!("/pkg.Service{}/Method{method}", service.len());
            for code in [
                "OK",
                "CANCELLED",
                "DEADLINE_EXCEEDED",
                "UNAVAILABLE",
                "INTERNAL",
            ] {
                w.sample(
                    "rpc_client_requests_total",
                    &[("service", &service), ("method", &method), ("code", code)],
                    grow(rng.below(5_000_000) as f64),
                );
            }
        }
    }

    w.family(
        "db_query_duration_seconds",
        "summary",
        "Database query latency.",
    );
    for query in 0..40 {
        let query = format!("query_{query:02}");
        for q in ["0.5", "0.9", "0.99"] {
            w.sample(
                "db_query_duration_seconds",
                &[("query", &query), ("quantile", q)],
                rng.unit() * 0.05,
            );
        }
        let count = grow(rng.below(10_000_000) as f64);
        w.sample(
            "db_query_duration_seconds_sum",
            &[("query", &query)],
            count * 0.004,
        );
        w.sample(
            "db_query_duration_seconds_count",
            &[("query", &query)],
            count,
        );
    }

    w.family(
        "cache_operations_total",
        "counter",
        "Cache operations by cache, operation and result.",
    );
    for cache in 0..20 {
        let cache = format!("cache-{cache}");
        for op in ["get", "set", "delete"] {
            for result in ["hit", "miss"] {
                w.sample(
                    "cache_operations_total",
                    &[("cache", &cache), ("op", op), ("result", result)],
                    grow(rng.below(100_000_000) as f64),
                );
            }
        }
    }

    w.family(
        "kafka_consumer_lag",
        "gauge",
        "Messages behind the head, by topic and partition.",
    );
    for topic in 0..20 {
        let topic = format!("events.topic-{topic}");
        for partition in 0..24 {
            w.sample(
                "kafka_consumer_lag",
                &[("topic", &topic), ("partition", &partition.to_string())],
                rng.below(1_000),
            );
        }
    }

    for (name, kind, value) in [
        ("process_cpu_seconds_total", "counter", 81_234.56),
        ("process_open_fds", "gauge", 312.0),
        ("process_max_fds", "gauge", 1_048_576.0),
        ("process_resident_memory_bytes", "gauge", 412_876_800.0),
        ("process_virtual_memory_bytes", "gauge", 2_512_846_848.0),
        ("process_start_time_seconds", "gauge", 1_790_000_000.25),
        ("process_threads", "gauge", 24.0),
        ("tokio_workers", "gauge", 8.0),
        ("tokio_alive_tasks", "gauge", 1_337.0),
        ("tokio_blocking_threads", "gauge", 3.0),
    ] {
        w.family(name, kind, "Process figure.");
        w.sample(name, &[], value);
    }

    w.family("app_sessions_total", "counter", "User sessions started.");
    w.sample("app_sessions_total", &[], grow(4_000_000.0));
    w.family(
        "app_sessions_with_errors_total",
        "counter",
        "Sessions that saw an error.",
    );
    w.sample("app_sessions_with_errors_total", &[], grow(3_100.0));
    w.family("app_build_info", "gauge", "The running build.");
    w.sample(
        "app_build_info",
        &[
            ("version", "v2.14.3"),
            ("revision", "9f2c1e7a"),
            ("rustc", "1.89.0"),
        ],
        1,
    );

    // Per-tenant counters fill the exposition up to exactly SERIES series.
    w.family(
        "app_tenant_requests_total",
        "counter",
        "Requests by tenant, plan and region.",
    );
    let plans = ["free", "team", "business", "enterprise"];
    let regions = [
        "eu-west-1",
        "eu-central-1",
        "us-east-1",
        "us-west-2",
        "ap-south-1",
    ];
    let mut tenant = 0;
    while w.series < SERIES {
        w.sample(
            "app_tenant_requests_total",
            &[
                ("tenant", &format!("t-{tenant:05}")),
                ("plan", plans[tenant % plans.len()]),
                ("region", regions[tenant % regions.len()]),
            ],
            grow(rng.below(1_000_000) as f64),
        );
        tenant += 1;
    }
    assert_eq!(w.series, SERIES);
    w.out
}

fn compile(policy: &str, url: &str) -> Compiled {
    rollwatch::policy::compile_bytes("bench.toml", policy.as_bytes(), |name| {
        (name == "TARGET_URL").then(|| url.to_string())
    })
    .unwrap_or_else(|e| panic!("the bench policy compiles: {e}"))
}

fn deriver(compiled: &Compiled) -> Deriver {
    match compiled.source.as_ref().map(|s| &s.kind) {
        Some(SourceKind::Scrape { metrics, .. }) => Deriver::new(metrics.clone()),
        other => panic!("expected a scrape source, found {other:?}"),
    }
}

fn prometheus_parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("prometheus-parse reads the text")
}

/// Serves `text` on `/metrics` and "ok" on `/healthz`, on a free loopback port.
fn serve(rt: &tokio::runtime::Runtime, text: String) -> String {
    use axum::Router;
    use axum::http::header;
    use axum::routing::get;
    let body = axum::body::Bytes::from(text);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = body.clone();
                async move { ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

struct Cases {
    text: String,
    rt: tokio::runtime::Runtime,
    deriver: Deriver,
    poller: Poller,
    poller_with_health: Poller,
}

impl Cases {
    fn new() -> Cases {
        let text = exposition_text(1);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let url = serve(&rt, text.clone());
        let scrape_only = compile(&format!("{SOURCE}{REST}"), &url);
        let with_health = compile(&format!("{SOURCE}{HEALTH}{REST}"), &url);
        let every = Duration::from_secs(15);
        let mut cases = Cases {
            deriver: deriver(&scrape_only),
            poller: Poller::new(&scrape_only, every).expect("a poller"),
            poller_with_health: Poller::new(&with_health, every).expect("a poller"),
            text,
            rt,
        };
        cases.check();
        cases
    }

    /// Both parsers read the whole text, the selectors find their series, and
    /// the poller derives the same from the server as from memory.
    fn check(&mut self) {
        let ours = exposition::parse(&self.text, Format::Prometheus);
        assert_eq!(ours.samples.len(), SERIES, "rollwatch reads every series");
        assert!(ours.errors.is_empty(), "{:?}", &ours.errors[..1]);
        let theirs = prometheus_parse(&self.text);
        let grouped: usize = theirs
            .samples
            .iter()
            .map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => h.len(),
                prometheus_parse::Value::Summary(s) => s.len(),
                _ => 1,
            })
            .sum();
        eprintln!(
            "exposition: {SERIES} series, {} lines, {:.2} MB; prometheus-parse: {} samples \
             ({} series once histogram buckets and summary quantiles are counted)",
            self.text.lines().count(),
            self.text.len() as f64 / 1e6,
            theirs.samples.len(),
            grouped
        );
        // Two scrapes a tick apart: the second yields deltas and quantiles.
        let before = exposition::parse(&exposition_text(0), Format::Prometheus);
        let _ = self.deriver.derive(&before);
        let derived = self.deriver.derive(&ours);
        assert!(derived.requests.is_some_and(|r| r > 0.0), "{derived:?}");
        assert!(derived.errors.is_some_and(|e| e > 0.0), "{derived:?}");
        assert!(derived.latency_ms.p95.is_some(), "{derived:?}");
        assert!(derived.users.is_some(), "{derived:?}");
        assert_eq!(derived.version.as_deref(), Some("v2.14.3"));
        assert!(derived.problems.is_empty(), "{:?}", derived.problems);
        eprintln!(
            "derived (tick 0 -> 1): requests {:?}, errors {:?}, p95 {:?} ms, users {:?}, version {:?}",
            derived.requests,
            derived.errors,
            derived.latency_ms.p95,
            derived.users,
            derived.version
        );
        for poller in [&mut self.poller, &mut self.poller_with_health] {
            let outcome = self.rt.block_on(poller.poll(Utc::now()));
            assert!(!outcome.source_failed, "{:?}", outcome.problems);
            assert_eq!(outcome.unreadable_lines, 0);
            match outcome.item {
                TraceItem::Observation(o) => assert_eq!(o.version.as_deref(), Some("v2.14.3")),
                other => panic!("expected an observation, got {other:?}"),
            }
        }
    }

    fn parse(&self) -> exposition::Exposition {
        exposition::parse(black_box(&self.text), Format::Prometheus)
    }

    fn prometheus_parse(&self) -> prometheus_parse::Scrape {
        prometheus_parse(black_box(&self.text))
    }

    fn parse_derive(&mut self) -> rollwatch::sources::scrape::Derived {
        let parsed = exposition::parse(black_box(&self.text), Format::Prometheus);
        self.deriver.derive(&parsed)
    }

    fn poll(&mut self) -> rollwatch::runtime::poll::PollOutcome {
        self.rt.block_on(self.poller.poll(Utc::now()))
    }

    fn poll_with_health(&mut self) -> rollwatch::runtime::poll::PollOutcome {
        self.rt.block_on(self.poller_with_health.poll(Utc::now()))
    }
}

fn benches(c: &mut Criterion, cases: &mut Cases) {
    let mut group = c.benchmark_group("scrape");
    group.throughput(Throughput::Elements(SERIES as u64));
    group.bench_function("parse/10k", |b| b.iter_with_large_drop(|| cases.parse()));
    group.bench_function("prometheus_parse/10k", |b| {
        b.iter_with_large_drop(|| cases.prometheus_parse())
    });
    group.bench_function("parse_derive/10k", |b| b.iter(|| cases.parse_derive()));
    group.bench_function("poll/10k", |b| b.iter(|| cases.poll()));
    group.bench_function("poll_with_health/10k", |b| {
        b.iter(|| cases.poll_with_health())
    });
    group.finish();
}

const WIDE_BOUNDS: usize = 1_000;

/// Two parsed scrapes of a latency histogram with `WIDE_BOUNDS` `le` values
/// (plus `+Inf`) in each of 4 handler series, a tick apart.
fn wide_histogram(tick: u64) -> exposition::Exposition {
    let mut w = Writer {
        out: String::new(),
        series: 0,
    };
    w.family(
        "http_request_duration_seconds",
        "histogram",
        "Latency with fine buckets.",
    );
    for handler in &HANDLERS[..4] {
        let mut cumulative = 0u64;
        for i in 1..=WIDE_BOUNDS {
            cumulative += 1 + tick * (i as u64 % 7);
            let le = format!("{}", i as f64 / 1_000.0);
            w.sample(
                "http_request_duration_seconds_bucket",
                &[("handler", handler), ("le", &le)],
                cumulative,
            );
        }
        w.sample(
            "http_request_duration_seconds_bucket",
            &[("handler", handler), ("le", "+Inf")],
            cumulative + tick,
        );
    }
    exposition::parse(&w.out, Format::Prometheus)
}

fn histogram_benches(c: &mut Criterion) {
    let metrics = rollwatch::sources::scrape::ScrapeMetrics {
        requests: None,
        errors: None,
        latency: Some(
            rollwatch::sources::selector::Selector::parse("http_request_duration_seconds")
                .expect("a selector"),
        ),
        users: None,
        users_affected: None,
        version: None,
        version_label: "version".into(),
    };
    let (before, after) = (wide_histogram(0), wide_histogram(1));
    let mut deriver = Deriver::new(metrics);
    let _ = deriver.derive(&before);
    let derived = deriver.derive(&after);
    assert!(derived.latency_ms.p95.is_some(), "{derived:?}");
    let mut group = c.benchmark_group("scrape");
    group.throughput(Throughput::Elements(4 * (WIDE_BOUNDS as u64 + 1)));
    // Each iteration starts afresh and derives a pair of scrapes: the first
    // only collects, the second also takes the bucket deltas.
    group.bench_function("derive_histogram/1000_le", |b| {
        b.iter(|| {
            deriver.reset();
            let _ = deriver.derive(black_box(&before));
            deriver.derive(black_box(&after))
        })
    });
    group.finish();
}

/// Times `SUMMARY_RUNS` single iterations; returns (median, max).
fn timed<T>(mut f: impl FnMut() -> T) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..SUMMARY_RUNS)
        .map(|_| {
            let started = Instant::now();
            let result = f();
            let elapsed = started.elapsed();
            drop(black_box(result));
            elapsed
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

fn summary(cases: &mut Cases) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("\nscrape summary: {SUMMARY_RUNS} single iterations each, 10,000 series");
    let parse = timed(|| cases.parse());
    let theirs = timed(|| cases.prometheus_parse());
    let rows = [
        ("parse (rollwatch)", parse, false),
        ("parse (prometheus-parse 0.2)", theirs, false),
        ("parse + derive", timed(|| cases.parse_derive()), true),
        ("poll: GET + parse + derive", timed(|| cases.poll()), true),
        (
            "poll with health probe",
            timed(|| cases.poll_with_health()),
            true,
        ),
    ];
    for (name, (median, max), judged) in rows {
        let verdict = match (judged, median < TARGET) {
            (false, _) => String::new(),
            (true, true) => ": meets the 10 ms target".into(),
            (true, false) => ": MISSES the 10 ms target".into(),
        };
        println!(
            "  {name:<30} median {:>7.3} ms, max {:>7.3} ms{verdict}",
            ms(median),
            ms(max)
        );
    }
    println!(
        "  rollwatch's parser vs prometheus-parse: {:.2}x the speed (median){}",
        ms(theirs.0) / ms(parse.0),
        if parse.0 <= theirs.0 {
            ": at least as fast, as required"
        } else {
            ": SLOWER than prometheus-parse"
        }
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut cases = Cases::new();
    // Each iteration takes milliseconds: 30 samples over 7 s keep the run short on 2 cores.
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(7))
        .configure_from_args();
    benches(&mut c, &mut cases);
    histogram_benches(&mut c);
    c.final_summary();
    if full && (filters.is_empty() || filters.iter().any(|f| "scrape".contains(f.as_str()))) {
        summary(&mut cases);
    }
}
