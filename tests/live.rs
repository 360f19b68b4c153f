//! `evaluate` and `run --dry-run` against a stand-in service on loopback,
//! through the real binary: verdicts and exit codes (README.md#commands), JSON output,
//! recordings that replay, and a clean stop on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use common::service::{Health, MetricsMode, TestService};

/// Runs `rollwatch evaluate` on the shipped scrape example for `seconds`,
/// off the async runtime so the service keeps serving.
async fn evaluate(service: &TestService, seconds: u32, extra: &[&str]) -> std::process::Output {
    let mut command = Command::new(cargo_bin("rollwatch"));
    command
        .args([
            "evaluate",
            "--policy",
            "policies/examples/scrape.toml",
            "--for",
            &format!("{seconds}s"),
        ])
        .args(extra)
        .env("TARGET_URL", service.url());
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn evaluate_a_healthy_service_exits_0() {
    let service = TestService::start().await;
    let out = evaluate(&service, 8, &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("verdict: healthy"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn evaluate_fifteen_percent_errors_recommends_a_page_then_rollback() {
    let service = TestService::start().await;
    service.set(|k| k.error_rate = 0.15);
    let out = evaluate(&service, 8, &["--format", "json"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "page");
    assert_eq!(report["exit_code"], 3);
    let decision = &report["decisions"][0];
    assert_eq!(decision["rule"], "error-rate");
    assert_eq!(decision["action"], "page-then-rollback");
    assert!(
        decision["explanation"]
            .as_str()
            .unwrap()
            .contains("error-rate 15%"),
        "{decision}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn evaluate_latency_up_150_percent_recommends_a_page() {
    let service = TestService::start().await;
    // 150 ms -> 375 ms: p95 lands in the (0.3, 0.5] bucket, 490 ms against the
    // fixed 300 ms baseline.
    service.set(|k| k.latency_seconds = 0.375);
    let out = evaluate(&service, 10, &["--format", "json"]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let decision = &report["decisions"][0];
    assert_eq!(decision["rule"], "latency-degradation");
    assert_eq!(decision["reading"]["baseline"]["source"], "fixed");
    assert_eq!(decision["reading"]["baseline"]["ms"], 300.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn evaluate_a_dead_health_endpoint_recommends_a_rollback() {
    let service = TestService::start().await;
    service.set(|k| k.health = Health::Failing);
    let out = evaluate(&service, 6, &[]).await;
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("rollback [immediate system-down]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("verdict: rollback recommended (exit 4)"),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn evaluate_with_no_data_says_so_and_exits_1() {
    // Nothing listens on this Prometheus: every query fails, which is no data, never down.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let mut command = Command::new(cargo_bin("rollwatch"));
    command
        .args([
            "evaluate",
            "--policy",
            "policies/examples/prometheus.toml",
            "--for",
            "2s",
        ])
        .env("PROMETHEUS_URL", &url)
        .env("TARGET_JOB", "web");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no data"), "{stderr}");
    assert!(stderr.contains("prometheus unreachable"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recording_of_an_evaluation_is_a_trace_that_backtest_replays() {
    let service = TestService::start().await;
    service.set(|k| k.error_rate = 0.2);
    let dir = tempfile::tempdir().unwrap();
    let recording = dir.path().join("incident.jsonl");
    let out = evaluate(&service, 8, &["--record", recording.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let lines = std::fs::read_to_string(&recording).unwrap();
    assert!(
        lines
            .lines()
            .next()
            .unwrap()
            .contains("\"event\":\"deploy\""),
        "{lines}"
    );
    assert!(lines.lines().count() >= 5, "{lines}");
    // Replayed with the evaluation's own 2 s polls the rule holds, but for the
    // production policy's full 2 m `for` the recording is too short: it pages nothing.
    let replay = Command::new(cargo_bin("rollwatch"))
        .args([
            "backtest",
            "--policy",
            "policies/production.toml",
            "--trace",
            recording.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(replay.status.success(), "{}", text(&replay.stderr));
    let summary = text(&replay.stdout).lines().last().unwrap().to_string();
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(
        summary["summary"]["observations"].as_u64().unwrap(),
        lines.lines().count() as u64 - 1
    );
}

/// Kills the child process if the test fails before stopping it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: sends SIGKILL to the child this test started.
        unsafe {
            libc::kill(self.0 as i32, libc::SIGKILL);
        }
    }
}

/// A policy for the dry-run: 1 s polls, errors confirmed after 2 s.
fn fast_policy(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    let path = dir.join("fast.toml");
    common::policy::Policy::stand_in(url)
        .with_health()
        .rule_for("2s")
        .write(&path);
    path
}

/// Reads `stdout` line by line until a line satisfies `done` (`Ok`: the
/// lines read) or `within` passes (`Err`: the lines read so far). Never
/// blocks past the deadline waiting for a line that does not come.
fn read_lines_until(
    stdout: std::process::ChildStdout,
    within: Duration,
    done: impl Fn(&str) -> bool,
) -> Result<Vec<String>, Vec<String>> {
    use std::os::fd::AsRawFd;
    let deadline = Instant::now() + within;
    let fd = stdout.as_raw_fd();
    let mut reader = BufReader::new(stdout);
    let mut seen = Vec::new();
    loop {
        if reader.buffer().is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut ready = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for a descriptor `reader` keeps open.
            let n = unsafe { libc::poll(&mut ready, 1, left.as_millis() as libc::c_int) };
            match n {
                0 => return Err(seen),
                // Interrupted: poll again.
                n if n < 0 => continue,
                _ => {}
            }
        }
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return Err(seen),
            Ok(_) => {}
        }
        let line = line.trim_end().to_string();
        let found = done(&line);
        seen.push(line);
        if found {
            return Ok(seen);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dry_run_prints_the_recommendation_counts_in_its_metrics_and_stops_cleanly_on_sigterm() {
    let service = TestService::start().await;
    service.set(|k| k.metrics = MetricsMode::OneBadLine);
    let dir = tempfile::tempdir().unwrap();
    let policy = fast_policy(dir.path(), &service.url());
    let mut child = Command::new(cargo_bin("rollwatch"))
        .args([
            "run",
            "--dry-run",
            "--listen",
            "127.0.0.1:0",
            "--policy",
            policy.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let guard = KillOnDrop(child.id());
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log_sink = std::sync::Arc::clone(&logs);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.split("on http://").nth(1) {
                let _ = address_tx.send(url.trim().to_string());
            }
            log_sink.lock().unwrap().push(line);
        }
    });
    let address = address_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the sidecar says where it listens");
    // Healthy first: the sidecar has scraped v1 (twice) before the deploy,
    // so the version change is a deployment it sees, then errors start.
    service.wait_for_scrapes(2).await;
    service.set(|k| {
        k.version = "v1.1.0".into();
        k.error_rate = 0.3;
    });
    // The decision, then the message it would send (the log channel: the
    // policy has no [notify]). Then stdout is closed (the reader is gone).
    let found = tokio::task::spawn_blocking(move || {
        read_lines_until(stdout, Duration::from_secs(60), |line| {
            line.contains("WOULD SEND notice via log: Rolling back staging web due to error-rate")
        })
    })
    .await
    .unwrap();
    let seen = found.unwrap_or_else(|seen| {
        panic!("no \"WOULD SEND notice via log\" line within 60 s; stdout:\n{seen:#?}")
    });
    let line = seen
        .iter()
        .find(|l| l.contains("DRY-RUN WOULD ROLL BACK"))
        .cloned()
        .unwrap_or_default();
    assert!(
        line.contains("WOULD ROLL BACK v1.1.0 -> v1.0.0"),
        "{seen:#?}"
    );
    assert!(line.contains("[consider error-rate]"), "{line}");
    let client = rollwatch::sources::http::client().unwrap();
    // Regression: stdout is closed now (the reader above is gone). The errors go
    // on, so the stabilization watch fails and a page line is printed into the
    // closed pipe; that must not take the watchdog down.
    let page_line =
        "rollwatch_decisions_total{target=\"web/staging\",action=\"page\",tier=\"consider\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = match client.get(format!("http://{address}/metrics")).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(e) => panic!("the sidecar died: {e}: {:#?}", logs.lock().unwrap()),
        };
        if text.lines().any(|l| l.starts_with(page_line)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no escalation page within 20s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = client
        .get(format!("http://{address}/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}: {:#?}", logs.lock().unwrap()))
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
    };
    assert!(value("rollwatch_polls_total{target=\"web/staging\"}") >= 5.0);
    assert!(
        value("rollwatch_exposition_unreadable_lines_total{target=\"web/staging\"}") >= 5.0,
        "{metrics}"
    );
    assert!(
        value(
            "rollwatch_decisions_total{target=\"web/staging\",action=\"rollback\",tier=\"consider\"}"
        ) >= 1.0
    );
    let health = client
        .get(format!("http://{address}/healthz"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}: {:#?}", logs.lock().unwrap()));
    assert_eq!(health.status().as_u16(), 200);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    std::mem::forget(guard);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "{:#?}", logs.lock().unwrap());
}

#[test]
fn run_acting_with_an_unreachable_database_refuses_to_start_and_says_why() {
    let out = Command::new(cargo_bin("rollwatch"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--db",
            "postgres://postgres@127.0.0.1:1/nowhere",
            "--policy",
            "policies/production.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot open database postgres://postgres@127.0.0.1:1/nowhere"),
        "{stderr}"
    );
}
#[test]
/// The policy builder the tests share writes what it is told, and it compiles.
fn the_stand_in_policy_compiles_with_every_option() {
    let text = common::policy::Policy::stand_in("http://127.0.0.1:9")
        .environment("production")
        .evaluation("resolve_after", "\"3s\"")
        .baseline_fixed("300ms")
        .action("consider", "\"page\"")
        .action("page_timeout", "\"6s\"")
        .stabilization("3s")
        .with_health()
        .rule_for("2s")
        .step(
            "rollback-app",
            "application",
            &["/bin/true", "x y"],
            "timeout = \"20s\"",
        )
        .text();
    let compiled = rollwatch::policy::compile_bytes("test.toml", text.as_bytes(), |_| None)
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(compiled.policy.environment, "production");
    assert_eq!(compiled.procedure.unwrap().steps[0].command.argv[1], "x y");
}
