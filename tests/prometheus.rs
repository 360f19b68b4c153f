//! Against a real Prometheus (2.42) scraping the stand-in service every second:
//! the PromQL path of `evaluate` (0 healthy; 3 on 15 % errors or +150 % latency;
//! 4 when the target is dead), API errors as no data, and `backtest --from --to`
//! over the history Prometheus stored. `.ci/run` installs Prometheus; without
//! it these tests fail under CI and are skipped elsewhere.

mod common;

use std::process::Command;
use std::time::Duration;

use assert_cmd::cargo::cargo_bin;
use chrono::Utc;
use common::prometheus::{self, PrometheusServer};
use common::service::TestService;

const JOB: &str = "web";

/// The service and a Prometheus that has scraped it a few times.
async fn setup(configure: impl FnOnce(&TestService)) -> Option<(TestService, PrometheusServer)> {
    let service = TestService::start().await;
    configure(&service);
    let server = prometheus::start(service.addr, JOB).await?;
    // Enough scrapes for rate(...[1m]) to have a value.
    server
        .wait_for(
            &format!("count_over_time(up{{job=\"{JOB}\"}}[1m])"),
            |n| n >= 4.0,
            Duration::from_secs(30),
        )
        .await;
    Some((service, server))
}

async fn evaluate(server: &PrometheusServer, seconds: u32) -> std::process::Output {
    let mut command = Command::new(cargo_bin("rollwatch"));
    command
        .args([
            "evaluate",
            "--policy",
            "policies/examples/prometheus.toml",
            "--for",
            &format!("{seconds}s"),
            "--format",
            "json",
        ])
        .env("PROMETHEUS_URL", &server.url)
        .env("TARGET_JOB", JOB);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn report(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn promql_evaluate_of_a_healthy_service_exits_0() {
    let Some((_service, server)) = setup(|_| {}).await else {
        return;
    };
    let out = evaluate(&server, 8).await;
    let report = report(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    let rules = report["rules"].as_array().unwrap();
    let error_rate = rules.iter().find(|r| r["rule"] == "error-rate").unwrap();
    assert_eq!(error_rate["reading"]["verdict"], "healthy", "{error_rate}");
    let latency = rules
        .iter()
        .find(|r| r["rule"] == "latency-degradation")
        .unwrap();
    assert_eq!(
        latency["reading"]["baseline"]["source"], "fixed",
        "{latency}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn promql_evaluate_of_fifteen_percent_errors_exits_3() {
    let Some((_service, server)) = setup(|s| s.set(|k| k.error_rate = 0.15)).await else {
        return;
    };
    let out = evaluate(&server, 8).await;
    let report = report(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert_eq!(report["decisions"][0]["rule"], "error-rate", "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn promql_evaluate_of_latency_up_150_percent_exits_3() {
    let Some((_service, server)) = setup(|s| s.set(|k| k.latency_seconds = 0.375)).await else {
        return;
    };
    let out = evaluate(&server, 10).await;
    let report = report(&out);
    assert_eq!(out.status.code(), Some(3), "{report}");
    assert_eq!(
        report["decisions"][0]["rule"], "latency-degradation",
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn promql_evaluate_of_a_dead_target_exits_4() {
    let Some((service, server)) = setup(|_| {}).await else {
        return;
    };
    service.stop();
    server
        .wait_for(
            &format!("up{{job=\"{JOB}\"}}"),
            |up| up == 0.0,
            Duration::from_secs(15),
        )
        .await;
    let out = evaluate(&server, 6).await;
    let report = report(&out);
    assert_eq!(out.status.code(), Some(4), "{report}");
    assert_eq!(report["decisions"][0]["rule"], "system-down", "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn api_errors_and_empty_results_are_no_data_with_the_reason() {
    let Some((_service, server)) = setup(|_| {}).await else {
        return;
    };
    let client = rollwatch::sources::http::client().unwrap();
    let timeout = Duration::from_secs(5);
    let bad = rollwatch::sources::prometheus::instant(
        &client,
        &server.url,
        "sum(rate(x[1m]",
        None,
        timeout,
        1 << 20,
    )
    .await;
    let error = bad.unwrap_err();
    assert!(error.contains("bad_data"), "{error}");
    let empty = rollwatch::sources::prometheus::instant(
        &client,
        &server.url,
        "no_such_metric",
        None,
        timeout,
        1 << 20,
    )
    .await
    .unwrap();
    let reason = rollwatch::sources::prometheus::single_value(&empty).unwrap_err();
    assert!(reason.contains("empty result"), "{reason}");
    let nan = rollwatch::sources::prometheus::instant(
        &client,
        &server.url,
        "0/0",
        None,
        timeout,
        1 << 20,
    )
    .await
    .unwrap();
    assert!(
        rollwatch::sources::prometheus::single_value(&nan)
            .unwrap_err()
            .contains("NaN")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn backtest_over_prometheus_history_finds_the_bad_deploy() {
    let Some((service, server)) = setup(|_| {}).await else {
        return;
    };
    // Prometheus has scraped for a while: every step of the range has data.
    let from = Utc::now();
    // v1 healthy, then v2 with 40 % errors.
    tokio::time::sleep(Duration::from_secs(6)).await;
    service.set(|k| {
        k.version = "v2.0.0".into();
        k.error_rate = 0.4;
    });
    server
        .wait_for(
            &format!("app_build_info{{job=\"{JOB}\",version=\"v2.0.0\"}}"),
            |v| v == 1.0,
            Duration::from_secs(10),
        )
        .await;
    // Let the 1m error rate climb past 5 % and stay there.
    server
        .wait_for(
            &format!("sum(rate(http_requests_total{{job=\"{JOB}\",code=\"500\"}}[1m])) / sum(rate(http_requests_total{{job=\"{JOB}\"}}[1m]))"),
            |ratio| ratio > 0.15,
            Duration::from_secs(40),
        )
        .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let to = Utc::now();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("history.toml");
    std::fs::write(
        &policy,
        format!(
            r#"[target]
service = "web"
environment = "staging"
[evaluation]
interval = "2s"
[actions]
consider = "rollback"
[source]
kind = "prometheus"
url = "{url}"
[source.queries]
requests = 'sum(rate(http_requests_total{{job="{JOB}"}}[1m])) * $interval_seconds'
errors = 'sum(rate(http_requests_total{{job="{JOB}",code=~"5.."}}[1m])) * $interval_seconds or vector(0)'
version = 'app_build_info{{job="{JOB}"}}'
[[rule]]
name = "error-rate"
tier = "consider"
signal = "error-rate"
threshold = "5%"
min_requests = 100
for = "4s"
"#,
            url = server.url
        ),
    )
    .unwrap();
    let mut command = Command::new(cargo_bin("rollwatch"));
    command.args([
        "backtest",
        "--policy",
        policy.to_str().unwrap(),
        "--from",
        &from.to_rfc3339(),
        "--to",
        &to.to_rfc3339(),
        "--format",
        "json",
    ]);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let rollback = lines
        .iter()
        .find(|d| d["action"] == "rollback")
        .unwrap_or_else(|| panic!("no rollback in {stdout}"));
    assert_eq!(rollback["rule"], "error-rate");
    assert_eq!(rollback["from_version"], "v2.0.0", "{rollback}");
    assert_eq!(rollback["to_version"], "v1.0.0", "{rollback}");
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["rollbacks"], 1, "{stdout}");
    // One item per 2 s step of the range: an observation, or no data where
    // Prometheus has no sample yet (a scrape late under load), never more.
    // The range starts at `from`'s whole second and includes both ends.
    let steps = (to.timestamp() - from.timestamp()) / 2 + 1;
    let observations = summary["observations"].as_i64().unwrap();
    assert!(
        (steps * 3 / 4..=steps).contains(&observations),
        "{observations} observations for {steps} steps"
    );
}
