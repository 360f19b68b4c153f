//! Whole-process figures for the live path: `rollwatch run --dry-run` as a
//! user runs it, against stand-in services on loopback.
//!
//!     cargo bench --bench live
//!
//! (`cargo bench` builds the release binary first: the bench names it through
//! `CARGO_BIN_EXE_rollwatch`, as `backtest_memory` does.)
//!
//! 1. **1,000 targets at 1 s.** Starts 1,000 stand-in services in this process,
//!    each on its own loopback port (its own scrape URL) serving the example
//!    targets' metrics (docs/policy.md) and a health endpoint, writes 1,000
//!    policy files (the shipped
//!    `policies/examples/scrape.toml` with `interval = "1s"` and its own URL
//!    and service name), runs `rollwatch run --dry-run --policy <1,000 files>`,
//!    waits until every target has been scraped twice, then samples the child's
//!    CPU time (`/proc/PID/stat` utime + stime) and RSS (`/proc/PID/status`)
//!    for 30 s. Targets: under 25 % of one core, under 100 MB resident.
//! 2. **One target**, the same at 1 s (for comparison) and idle at 15 s.
//!    Target for the idle case: under 20 MB resident.
//! 3. **Steady state.** A 30 s run holds 30 s of history; an engine keeps full
//!    samples over the widest rule window (5 min in the example policy) and a
//!    thinned latency trail over the 30 min baseline window. A subprocess of
//!    this bench builds 100 pollers (and, for comparison, 100 bare
//!    `sources::http::client()`s) and 100 engines with the same policies, and
//!    feeds each engine 1,900 polls' worth of observations on a simulated
//!    clock; what filling adds per engine, times 1,000, added to the measured
//!    figure, is the projection for a process that has run 30 min. With
//!    `ROLLWATCH_BENCH_FLEET_SECS=330` the fleet is measured past the rule
//!    window, where only the trail (at most 2 KiB per engine) is left to grow.
//! 4. **Detection latency.** One target at 1 s with a `system-down` rule
//!    (`signal = "down"`, `for = "2s"`, immediate, rollback). Per trial: a fresh
//!    child; once it has seen v1.0.0 then v1.0.1 (a deployment), `/healthz`
//!    starts answering 503 at a recorded instant, 0.05 s, 0.15 s, ... 0.95 s
//!    after a poll started (the trials cover the whole poll cycle); the latency
//!    runs until the `DRY-RUN WOULD ROLL BACK` line is read from the child's
//!    stdout. 10 trials; target: under 3.5 s (checked on the maximum).
//!
//! The child runs with `--listen 127.0.0.1:0`, so its own /metrics endpoint
//! takes a free port.
//!
//! Every wait is bounded; everything binds 127.0.0.1 only. About 2.5 minutes.
//! Run by `cargo test --benches` (no `--bench` flag), it only checks 20 targets
//! for a few seconds and one latency trial, without verdicts.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const NAME: &str = "live";
const EXAMPLE: &str = include_str!("../policies/examples/scrape.toml");

const TARGET_CPU_PERCENT: f64 = 25.0;
const TARGET_FLEET_RSS_KIB: u64 = 100 * 1000 * 1000 / 1024;
const TARGET_IDLE_RSS_KIB: u64 = 20 * 1000 * 1000 / 1024;
const TARGET_LATENCY: Duration = Duration::from_millis(3500);

/// Observations fed to each engine for the steady state: more than the
/// example's 30 min baseline window holds at 1 s (1,801).
const STEADY_POLLS: usize = 1_900;
/// Pollers and engines built by the steady-state subprocess.
const STEADY_TARGETS: usize = 100;
const STEADY_FLAG: &str = "--steady-state-subprocess";

// ---------------------------------------------------------------------------
// The stand-in services: the example targets' metrics (docs/policy.md) and a
// health endpoint, with traffic
// computed from the wall clock (no ticker task per service).

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 9] = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0];

struct Service {
    started: Instant,
    requests_per_second: f64,
    scrapes: AtomicU64,
    healthy: AtomicBool,
    version: Mutex<String>,
}

impl Service {
    fn new(requests_per_second: f64) -> Service {
        Service {
            started: Instant::now(),
            requests_per_second,
            scrapes: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            version: Mutex::new("v1.0.0".into()),
        }
    }

    fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::SeqCst)
    }

    fn set_version(&self, version: &str) {
        *self.version.lock().expect("the version lock") = version.to_string();
    }

    /// The exposition of tests/common/service.rs: 0.2 % errors, 150 ms
    /// latency, 40 sessions/s, counters growing with the time since start.
    fn exposition(&self) -> String {
        let seconds = self.started.elapsed().as_secs_f64() + 3_600.0;
        let requests = (self.requests_per_second * seconds).floor();
        let errors = (requests * 0.002).floor();
        let sessions = (40.0 * seconds).floor();
        let version = self.version.lock().expect("the version lock").clone();
        let mut out = String::with_capacity(1_500);
        out.push_str(
            "# HELP http_requests_total Requests by status code.\n# TYPE http_requests_total counter\n",
        );
        out.push_str(&format!(
            "http_requests_total{{code=\"200\",method=\"GET\"}} {}\n",
            requests - errors
        ));
        out.push_str(&format!(
            "http_requests_total{{code=\"500\",method=\"GET\"}} {errors}\n"
        ));
        out.push_str("# HELP http_request_duration_seconds Request latency.\n# TYPE http_request_duration_seconds histogram\n");
        for bound in BUCKETS {
            let value = if 0.15 <= bound { requests } else { 0.0 };
            out.push_str(&format!(
                "http_request_duration_seconds_bucket{{le=\"{bound}\"}} {value}\n"
            ));
        }
        out.push_str(&format!(
            "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {requests}\n"
        ));
        out.push_str(&format!(
            "http_request_duration_seconds_sum {}\n",
            requests * 0.15
        ));
        out.push_str(&format!("http_request_duration_seconds_count {requests}\n"));
        out.push_str("# TYPE app_sessions_total counter\n");
        out.push_str(&format!("app_sessions_total {sessions}\n"));
        out.push_str("# TYPE app_sessions_with_errors_total counter\n");
        out.push_str("app_sessions_with_errors_total 0\n");
        out.push_str("# TYPE app_build_info gauge\n");
        out.push_str(&format!("app_build_info{{version=\"{version}\"}} 1\n"));
        out
    }
}

async fn metrics(State(service): State<Arc<Service>>) -> Response {
    service.scrapes.fetch_add(1, Ordering::SeqCst);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        service.exposition(),
    )
        .into_response()
}

async fn healthz(State(service): State<Arc<Service>>) -> Response {
    if service.healthy.load(Ordering::SeqCst) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "failing\n").into_response()
    }
}

/// Serves `service` on its own loopback port; returns its base URL.
fn serve(rt: &tokio::runtime::Runtime, service: Arc<Service>) -> String {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .with_state(service);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------
// Policies.

/// The shipped scrape example, for one target, polled every `interval`.
fn example_policy(url: &str, service: &str, interval: &str) -> String {
    let text = EXAMPLE
        .replace("${TARGET_URL}", url)
        .replace("${TARGET_SERVICE:-web}", service)
        .replace("interval = \"15s\"", &format!("interval = \"{interval}\""));
    assert!(
        text.contains(&format!("interval = \"{interval}\"")) && !text.contains("${"),
        "policies/examples/scrape.toml changed: the bench's substitutions no longer apply"
    );
    text
}

/// One target at 1 s that rolls back once its health probe fails for 2 s.
fn down_policy(url: &str) -> String {
    format!(
        r#"[source]
kind = "scrape"
url = "{url}/metrics"
timeout = "900ms"

[source.metrics]
requests = "http_requests_total"
errors = 'http_requests_total{{code=~"5.."}}'
latency = "http_request_duration_seconds"
version = "app_build_info"

[health]
url = "{url}/healthz"
timeout = "900ms"

[target]
service = "latency"
environment = "bench"

[evaluation]
interval = "1s"

[actions]
immediate = "rollback"

[[rule]]
name = "system-down"
tier = "immediate"
signal = "down"
for = "2s"
"#
    )
}

fn write_policies(dir: &Path, texts: impl IntoIterator<Item = String>) -> Vec<PathBuf> {
    texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let path = dir.join(format!("target-{i:04}.toml"));
            std::fs::write(&path, text).expect("writing a policy");
            path
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The child process and /proc.

struct Watcher {
    child: Child,
    /// Every stdout line, stamped when it was read.
    stdout: mpsc::Receiver<(Instant, String)>,
    /// Every stderr line (warnings and errors), for diagnostics.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Watcher {
    /// `db`: act (store, outbox worker, API) on this database instead of a dry run.
    fn start(policies: &[PathBuf], db: Option<&str>) -> Watcher {
        // ROLLWATCH_BENCH_BINARY compares another build (an older commit's).
        let binary = std::env::var("ROLLWATCH_BENCH_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_rollwatch").to_string());
        let mode: Vec<&str> = match db {
            Some(db) => vec!["--db", db],
            None => vec!["--dry-run"],
        };
        let mut child = Command::new(&binary)
            .arg("run")
            .args(mode)
            .args(["--listen", "127.0.0.1:0", "--policy"])
            .args(policies)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {binary}: {e}"));
        let (send, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("a piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if send.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().expect("a piped stderr");
        let kept = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                kept.lock().expect("the stderr lock").push(line);
            }
        });
        Watcher {
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "rollwatch exited early ({status}):\n{}",
                self.stderr_tail(20)
            );
        }
    }

    fn stderr_tail(&self, lines: usize) -> String {
        let all = self.stderr.lock().expect("the stderr lock");
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stderr_count(&self, needle: &str) -> usize {
        let all = self.stderr.lock().expect("the stderr lock");
        all.iter().filter(|l| l.contains(needle)).count()
    }

    /// SIGTERM, as a service manager stops it; SIGKILL after 5 s.
    fn stop(mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's pid, which we have not waited for yet.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, Debug)]
struct ProcSample {
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
}

fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime 15, num_threads 20.
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let cpu_ticks = number(11)? + number(12)?;
    let threads = number(17)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(ProcSample {
        cpu_ticks,
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
        threads,
    })
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

fn own_rss_kib() -> u64 {
    proc_sample(std::process::id()).map_or(0, |s| s.rss_kib)
}

/// What the child did over the measured window.
struct Usage {
    wall: Duration,
    cpu_percent: f64,
    rss_peak_kib: u64,
    rss_avg_kib: u64,
    rss_start_kib: u64,
    rss_end_kib: u64,
    /// The kernel's high-water mark since the child started (start-up included).
    hwm_kib: u64,
    threads: u64,
}

fn measure(watcher: &mut Watcher, duration: Duration) -> Usage {
    let pid = watcher.pid();
    let first = proc_sample(pid).expect("the child's /proc entries");
    let started = Instant::now();
    let mut rss = vec![first.rss_kib];
    let mut last = first;
    while started.elapsed() < duration {
        std::thread::sleep(Duration::from_millis(250));
        watcher.assert_running();
        if let Some(sample) = proc_sample(pid) {
            rss.push(sample.rss_kib);
            last = sample;
        }
    }
    let wall = started.elapsed();
    let cpu_seconds = (last.cpu_ticks - first.cpu_ticks) as f64 / clock_ticks_per_second();
    Usage {
        wall,
        cpu_percent: 100.0 * cpu_seconds / wall.as_secs_f64(),
        rss_peak_kib: rss.iter().copied().max().unwrap_or(0),
        rss_avg_kib: rss.iter().sum::<u64>() / rss.len() as u64,
        rss_start_kib: first.rss_kib,
        rss_end_kib: last.rss_kib,
        hwm_kib: last.hwm_kib,
        threads: last.threads,
    }
}

fn mb(kib: u64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

fn verdict(judged: bool, met: bool, target: &str) -> String {
    match (judged, met) {
        (false, _) => String::new(),
        (true, true) => format!(": meets the {target} target"),
        (true, false) => format!(": MISSES the {target} target"),
    }
}

// ---------------------------------------------------------------------------
// The measurements.

struct Watch {
    targets: usize,
    interval: &'static str,
    interval_secs: f64,
    /// Every target scraped this often before measuring.
    warm_scrapes: u64,
    measure_for: Duration,
    /// The acting sidecar (SQLite store, outbox worker, API) rather than a dry run.
    acting: bool,
}

struct WatchResult {
    usage: Usage,
    startup: Duration,
    polls_per_second: f64,
    /// "polling is behind" warnings before the measured window (start-up).
    startup_behind_warnings: usize,
    /// ... and within it.
    behind_warnings: usize,
    warnings: usize,
}

fn watch(rt: &tokio::runtime::Runtime, spec: &Watch) -> WatchResult {
    let services: Vec<Arc<Service>> = (0..spec.targets)
        .map(|i| Arc::new(Service::new(150.0 + (i % 10) as f64 * 10.0)))
        .collect();
    let urls: Vec<String> = services
        .iter()
        .map(|service| serve(rt, Arc::clone(service)))
        .collect();
    let dir = tempfile::tempdir().expect("a temp dir");
    let policies = write_policies(
        dir.path(),
        urls.iter()
            .enumerate()
            .map(|(i, url)| example_policy(url, &format!("web-{i:04}"), spec.interval)),
    );

    let db = format!("sqlite://{}", dir.path().join("rollwatch.db").display());
    let launched = Instant::now();
    let mut watcher = Watcher::start(&policies, spec.acting.then_some(db.as_str()));
    // Warm-up: every target scraped `warm_scrapes` times (bounded).
    let warm_deadline = launched
        + Duration::from_secs_f64(10.0 + spec.interval_secs * (spec.warm_scrapes as f64 + 1.0));
    loop {
        watcher.assert_running();
        let cold = services
            .iter()
            .filter(|s| s.scrapes() < spec.warm_scrapes)
            .count();
        if cold == 0 {
            break;
        }
        assert!(
            Instant::now() < warm_deadline,
            "{cold} of {} targets not scraped {} times within {:?}:\n{}",
            spec.targets,
            spec.warm_scrapes,
            warm_deadline - launched,
            watcher.stderr_tail(10)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let startup = launched.elapsed();
    let total_scrapes = || services.iter().map(|s| s.scrapes()).sum::<u64>();
    let scrapes_before = total_scrapes();
    let behind_before = watcher.stderr_count("polling is behind");
    let warnings_before = watcher.stderr_count("WARN");
    let usage = measure(&mut watcher, spec.measure_for);
    let polls = total_scrapes() - scrapes_before;
    let behind = watcher.stderr_count("polling is behind");
    let result = WatchResult {
        polls_per_second: polls as f64 / usage.wall.as_secs_f64(),
        startup_behind_warnings: behind_before,
        behind_warnings: behind - behind_before,
        warnings: watcher.stderr_count("WARN") - warnings_before,
        usage,
        startup,
    };
    watcher.stop();
    result
}

fn report_watch(
    spec: &Watch,
    result: &WatchResult,
    cpu_target: bool,
    rss_target: Option<(u64, &str)>,
    full: bool,
) {
    let u = &result.usage;
    println!(
        "{NAME}/{}x{}: rollwatch run {} --policy <{} files>, interval {}",
        spec.targets,
        spec.interval,
        if spec.acting {
            "--db <SQLite>"
        } else {
            "--dry-run"
        },
        spec.targets,
        spec.interval
    );
    println!(
        "  start-up: every target scraped {} times after {:.1} s; measured for {:.1} s",
        spec.warm_scrapes,
        result.startup.as_secs_f64(),
        u.wall.as_secs_f64()
    );
    println!(
        "  start-up: {} \"polling is behind\" warnings before the window",
        result.startup_behind_warnings
    );
    // Each poll waits interval + up to 5 % jitter: 2.5 % fewer polls than ticks on average.
    println!(
        "  polls in the window: {:.1}/s achieved, {:.1}/s expected (1/(interval x 1.025) per target); \
         {} \"polling is behind\" warnings, {} warnings in all",
        result.polls_per_second,
        spec.targets as f64 / (spec.interval_secs * 1.025),
        result.behind_warnings,
        result.warnings
    );
    println!(
        "  CPU: {:.1} % of one core{}",
        u.cpu_percent,
        verdict(
            full && cpu_target,
            u.cpu_percent < TARGET_CPU_PERCENT,
            "25 %"
        )
    );
    let (rss_met, rss_label) = match rss_target {
        Some((limit, label)) => (u.rss_peak_kib < limit, label),
        None => (true, ""),
    };
    println!(
        "  RSS: peak {:.1} MB, average {:.1} MB (start {:.1}, end {:.1}); high-water mark {:.1} MB; {} threads{}",
        mb(u.rss_peak_kib),
        mb(u.rss_avg_kib),
        mb(u.rss_start_kib),
        mb(u.rss_end_kib),
        mb(u.hwm_kib),
        u.threads,
        verdict(full && rss_target.is_some(), rss_met, rss_label)
    );
}

/// Runs in a subprocess of this bench: builds `STEADY_TARGETS` pollers and
/// engines with the fleet's policy at 1 s and fills the engines' history;
/// prints the RSS growth of each step in KiB.
fn steady_state_subprocess() {
    use chrono::{TimeDelta, TimeZone, Utc};
    use rollwatch::engine::Engine;
    use rollwatch::engine::input::{LatencyQuantiles, Observation};
    use rollwatch::runtime::poll::Poller;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let _entered = rt.enter();
    let compiled: Vec<_> = (0..STEADY_TARGETS)
        .map(|i| {
            let url = format!("http://127.0.0.1:{}", 20_000 + i);
            let text = example_policy(&url, &format!("web-{i:04}"), "1s");
            rollwatch::policy::compile_bytes("steady.toml", text.as_bytes(), |_| None)
                .expect("the fleet policy compiles")
        })
        .collect();
    let start = own_rss_kib();
    let pollers: Vec<Poller> = compiled
        .iter()
        .map(|c| Poller::new(c, Duration::from_secs(1)).expect("a poller"))
        .collect();
    let after_pollers = own_rss_kib();
    // Bare clients, built while the pollers are held (so that freed memory
    // does not hide them): what each poller's own client costs.
    let clients: Vec<reqwest::Client> = (0..STEADY_TARGETS)
        .map(|_| rollwatch::sources::http::client().expect("a client"))
        .collect();
    let clients_kib = own_rss_kib() - after_pollers;
    let before_engines = own_rss_kib();
    let mut engines: Vec<Engine> = compiled
        .iter()
        .map(|c| Engine::new(Arc::new(c.policy.clone())))
        .collect();
    let after_new = own_rss_kib();
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("a valid instant");
    let started = Instant::now();
    for poll in 0..STEADY_POLLS {
        let at = t0 + TimeDelta::seconds(poll as i64);
        let observation = Observation {
            at,
            up: Some(true),
            requests: Some(200.0),
            errors: Some(1.0),
            latency_ms: LatencyQuantiles {
                p50: Some(120.0),
                p90: Some(180.0),
                p95: Some(190.0),
                p99: Some(200.0),
            },
            users: Some(40.0),
            users_affected: Some(0.0),
            checks: Vec::new(),
            version: Some("v1.0.0".into()),
        };
        for engine in &mut engines {
            engine
                .handle_observation(&observation)
                .expect("time goes forward");
            while engine.poll_decision().is_some() {}
        }
    }
    let after_fill = own_rss_kib();
    println!(
        "{} {} {} {} {} {clients_kib}",
        after_pollers - start,
        after_new - before_engines,
        after_fill - after_new,
        started.elapsed().as_millis(),
        std::mem::size_of::<rollwatch::engine::signals::Sample>()
    );
    drop((pollers, clients, engines));
}

struct Steady {
    poller_kib: f64,
    engine_kib: f64,
    /// What filling an engine's history adds, per engine (part of `engine_kib`).
    engine_fill_kib: f64,
    fill_ms: u64,
    sample_bytes: usize,
    /// RSS of one `sources::http::client()` alone (part of `poller_kib`).
    client_kib: f64,
}

fn steady_state() -> Steady {
    let output = Command::new(std::env::current_exe().expect("this bench's path"))
        .arg(STEADY_FLAG)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("running the steady-state subprocess");
    assert!(output.status.success(), "steady-state subprocess failed");
    let text = String::from_utf8_lossy(&output.stdout);
    let numbers: Vec<u64> = text
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect();
    let per = |kib: u64| kib as f64 / STEADY_TARGETS as f64;
    Steady {
        poller_kib: per(numbers[0]),
        engine_kib: per(numbers[1] + numbers[2]),
        engine_fill_kib: per(numbers[2]),
        fill_ms: numbers[3],
        sample_bytes: numbers[4] as usize,
        client_kib: per(numbers[5]),
    }
}

/// One detection-latency trial: from /healthz failing to the rollback line.
/// The failure comes `phase` (a fraction of the 1 s interval) after a poll
/// started, so that the trials cover every moment of the poll cycle.
fn latency_trial(service: &Service, policy: &Path, phase: f64) -> Duration {
    service.set_version("v1.0.0");
    service.healthy.store(true, Ordering::SeqCst);
    let mut watcher = Watcher::start(&[policy.to_path_buf()], None);
    let bounded_wait = |watcher: &mut Watcher, scrapes: u64, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while service.scrapes() < scrapes {
            watcher.assert_running();
            assert!(Instant::now() < deadline, "no scrape {what} within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // A scrape of poll N+1 means poll N was fed to the engine.
    let base = service.scrapes();
    bounded_wait(&mut watcher, base + 2, "of v1.0.0");
    service.set_version("v1.0.1");
    let deployed = service.scrapes();
    bounded_wait(&mut watcher, deployed + 2, "of v1.0.1");
    std::thread::sleep(Duration::from_secs_f64(phase));
    let down_at = Instant::now();
    service.healthy.store(false, Ordering::SeqCst);
    let deadline = down_at + Duration::from_secs(15);
    let latency = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match watcher.stdout.recv_timeout(left) {
            Ok((at, line)) if line.contains("DRY-RUN WOULD ROLL BACK") => {
                break at.duration_since(down_at);
            }
            Ok((_, line)) if line.contains("DRY-RUN") => {
                panic!("unexpected decision: {line}")
            }
            Ok(_) => {}
            Err(_) => panic!(
                "no rollback within 15 s of /healthz failing:\n{}",
                watcher.stderr_tail(10)
            ),
        }
    };
    watcher.stop();
    latency
}

fn detection_latency(rt: &tokio::runtime::Runtime, trials: usize, full: bool) {
    let service = Arc::new(Service::new(200.0));
    let url = serve(rt, Arc::clone(&service));
    let dir = tempfile::tempdir().expect("a temp dir");
    let policy = write_policies(dir.path(), [down_policy(&url)]).remove(0);
    let phase = |i: usize| (i as f64 + 0.5) / trials as f64;
    let mut latencies: Vec<Duration> = (0..trials)
        .map(|i| latency_trial(&service, &policy, phase(i)))
        .collect();
    let shown: Vec<String> = latencies
        .iter()
        .map(|l| format!("{:.2}", l.as_secs_f64()))
        .collect();
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    println!("{NAME}/detection-latency: interval 1s, system-down for = 2s, {trials} trial(s)");
    println!(
        "  trials (s), /healthz failing {:.2} s to {:.2} s after a poll started: {}",
        phase(0),
        phase(trials - 1),
        shown.join(", ")
    );
    println!(
        "  median {:.2} s, min {:.2} s, max {:.2} s{}",
        median.as_secs_f64(),
        latencies[0].as_secs_f64(),
        max.as_secs_f64(),
        verdict(full, max < TARGET_LATENCY, "3.5 s (max)")
    );
}

/// Many sockets: 1,000 targets hold about 3,000 on each side.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write to and read from a valid `struct rlimit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == STEADY_FLAG) {
        steady_state_subprocess();
        return;
    }
    // Like criterion: positional arguments are name filters.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    raise_open_files_limit();
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let fleet = Watch {
        targets: if full { 1_000 } else { 20 },
        interval: "1s",
        interval_secs: 1.0,
        warm_scrapes: 2,
        // ROLLWATCH_BENCH_FLEET_SECS=330 measures past the 5 min rule window,
        // where every engine's history is full: the steady state, measured.
        measure_for: Duration::from_secs(match std::env::var("ROLLWATCH_BENCH_FLEET_SECS") {
            Ok(secs) => secs.parse().unwrap_or(30),
            Err(_) if full => 30,
            Err(_) => 3,
        }),
        acting: false,
    };
    let fleet_result = watch(&rt, &fleet);
    report_watch(
        &fleet,
        &fleet_result,
        true,
        Some((TARGET_FLEET_RSS_KIB, "100 MB")),
        full,
    );
    if full {
        let steady = steady_state();
        // The measured run already holds its engines and `measure_for` of
        // history: what is left to grow is the rest of the history. Full
        // samples go back over the widest rule window (5 min); after that only
        // the thinned 30 min latency trail grows (at most 122 points of 16 bytes).
        let rule_window = Duration::from_secs(5 * 60);
        let remaining_kib_per_engine = if fleet.measure_for > rule_window {
            122.0 * 16.0 / 1024.0
        } else {
            steady.engine_fill_kib
        };
        let projected = mb(fleet_result.usage.rss_end_kib)
            + remaining_kib_per_engine * 1024.0 / 1e6 * fleet.targets as f64;
        println!(
            "  steady state (subprocess, {STEADY_TARGETS} targets, {STEADY_POLLS} polls each in {} ms): \
             {:.0} KiB per poller (of which {:.0} KiB its own reqwest client), {:.0} KiB per engine \
             with a full history ({:.0} KiB of it filled by the polls; samples of {} bytes)",
            steady.fill_ms,
            steady.poller_kib,
            steady.client_kib,
            steady.engine_kib,
            steady.engine_fill_kib,
            steady.sample_bytes
        );
        println!(
            "  projected RSS after 30 min: about {:.0} MB (measured end {:.1} MB + {:.1} KiB still to grow per engine){}",
            projected,
            mb(fleet_result.usage.rss_end_kib),
            remaining_kib_per_engine,
            verdict(true, projected < 100.0, "100 MB")
        );

        let one = Watch {
            targets: 1,
            interval: "1s",
            interval_secs: 1.0,
            warm_scrapes: 2,
            measure_for: Duration::from_secs(10),
            acting: false,
        };
        let result = watch(&rt, &one);
        report_watch(&one, &result, false, None, full);

        let idle = Watch {
            targets: 1,
            interval: "15s",
            interval_secs: 15.0,
            warm_scrapes: 1,
            measure_for: Duration::from_secs(20),
            acting: false,
        };
        let result = watch(&rt, &idle);
        report_watch(
            &idle,
            &result,
            false,
            Some((TARGET_IDLE_RSS_KIB, "20 MB")),
            full,
        );

        // The sidecar as deployed: acting, with its SQLite store, outbox
        // worker and HTTP API, one target at 15 s (ROLLWATCH_BENCH_IDLE_SECS).
        let sidecar = Watch {
            targets: 1,
            interval: "15s",
            interval_secs: 15.0,
            warm_scrapes: 1,
            measure_for: Duration::from_secs(
                std::env::var("ROLLWATCH_BENCH_IDLE_SECS")
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(60),
            ),
            acting: true,
        };
        let result = watch(&rt, &sidecar);
        println!("{NAME}/acting sidecar (store, outbox worker, API):");
        report_watch(
            &sidecar,
            &result,
            false,
            Some((TARGET_IDLE_RSS_KIB, "20 MB")),
            full,
        );
        println!(
            "  acting idle CPU {:.3} % of one core{}",
            result.usage.cpu_percent,
            verdict(true, result.usage.cpu_percent < 1.0, "1 %")
        );
    }
    detection_latency(&rt, if full { 10 } else { 1 }, full);
    println!(
        "{NAME}: done in {:.0} s (this measuring process: {:.1} MB resident)",
        started.elapsed().as_secs_f64(),
        mb(own_rss_kib())
    );
}
