//! The poller against a misbehaving target on loopback: every kind of bad
//! answer ends in a clear problem and a correct observation (no data for the
//! metrics, health from the probe), never a panic, a hang or a false "down".

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::service::{Health, MetricsMode, TestService};
use rollwatch::runtime::poll::{PollOutcome, Poller};
use rollwatch::trace::TraceItem;

fn policy(url: &str, with_health: bool) -> rollwatch::policy::Compiled {
    let health = if with_health {
        format!("[health]\nurl = \"{url}/healthz\"\ntimeout = \"1s\"\n")
    } else {
        String::new()
    };
    let text = format!(
        r#"[target]
service = "web"
environment = "production"
[source]
kind = "scrape"
url = "{url}/metrics"
timeout = "1s"
max_bytes = 1048576
[source.metrics]
requests = "http_requests_total"
errors = 'http_requests_total{{code=~"5.."}}'
latency = "http_request_duration_seconds"
users = "app_sessions_total"
users_affected = "app_sessions_with_errors_total"
version = "app_build_info"
{health}
[[rule]]
name = "error-rate"
tier = "consider"
signal = "error-rate"
threshold = "5%"
"#
    );
    rollwatch::policy::compile_bytes("test.toml", text.as_bytes(), |_| None).unwrap()
}

async fn poll_twice(poller: &mut Poller) -> PollOutcome {
    poller.poll(Utc::now()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    poller.poll(Utc::now()).await
}

fn observation(outcome: &PollOutcome) -> &rollwatch::engine::input::Observation {
    match &outcome.item {
        TraceItem::Observation(o) => o,
        other => panic!("expected an observation, got {other:?}"),
    }
}

#[tokio::test]
async fn a_healthy_target_gives_counts_latency_users_and_version() {
    let service = TestService::start().await;
    let mut poller = Poller::new(&policy(&service.url(), true), Duration::from_secs(1)).unwrap();
    let first = poller.poll(Utc::now()).await;
    let first = observation(&first);
    assert_eq!(
        (first.up, first.version.as_deref(), first.requests),
        (Some(true), Some("v1.0.0"), None)
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = poller.poll(Utc::now()).await;
    let o = observation(&second);
    assert!(o.requests.unwrap() > 0.0, "{o:?}");
    assert!(o.errors.is_some());
    // Every request takes 150 ms: p95 interpolates in the (0.1, 0.2] bucket.
    assert!((o.latency_ms.p95.unwrap() - 195.0).abs() < 1e-6, "{o:?}");
    assert!(o.users.is_some() && o.users_affected.is_some());
    assert!(second.problems.is_empty(), "{:?}", second.problems);
}

#[tokio::test]
async fn a_slow_target_times_out_into_no_data_not_down() {
    let service = TestService::start().await;
    service.set(|k| k.metrics = MetricsMode::Slow(Duration::from_secs(30)));
    let mut poller = Poller::new(&policy(&service.url(), true), Duration::from_secs(1)).unwrap();
    let started = Instant::now();
    let outcome = poller.poll(Utc::now()).await;
    assert!(started.elapsed() < Duration::from_secs(5), "the poll hung");
    let o = observation(&outcome);
    assert_eq!(o.up, Some(true), "the health probe still answers: not down");
    assert_eq!(o.requests, None);
    assert!(outcome.source_failed);
    assert!(
        outcome.problems.iter().any(|p| p.contains("timed out")),
        "{:?}",
        outcome.problems
    );
}

#[tokio::test]
async fn a_500_is_no_data_with_the_status() {
    let service = TestService::start().await;
    service.set(|k| k.metrics = MetricsMode::Status500);
    let mut poller = Poller::new(&policy(&service.url(), true), Duration::from_secs(1)).unwrap();
    let outcome = poll_twice(&mut poller).await;
    let o = observation(&outcome);
    assert_eq!((o.up, o.requests, o.errors), (Some(true), None, None));
    assert!(
        outcome.problems.iter().any(|p| p.contains("HTTP 500")),
        "{:?}",
        outcome.problems
    );
}

/// A poll of a service serving `metrics` gives no observation and says the
/// body passed the policy's 1 MiB limit.
async fn refused_at_the_size_limit(metrics: MetricsMode) {
    let service = TestService::start().await;
    service.set(|k| k.metrics = metrics);
    let mut poller = Poller::new(&policy(&service.url(), true), Duration::from_secs(1)).unwrap();
    let outcome = poller.poll(Utc::now()).await;
    assert_eq!(observation(&outcome).requests, None);
    assert!(
        outcome
            .problems
            .iter()
            .any(|p| p.contains("larger than 1048576 bytes")),
        "{:?}",
        outcome.problems
    );
}

#[tokio::test]
async fn fifty_megabytes_are_refused_at_the_size_limit() {
    refused_at_the_size_limit(MetricsMode::Huge(50 * 1024 * 1024)).await;
}

/// The same limit on a body that does not say its length: 50 MB streamed
/// in chunks are cut off by the running count, at the limit.
#[tokio::test]
async fn fifty_megabytes_streamed_without_a_length_are_cut_off_at_the_size_limit() {
    refused_at_the_size_limit(MetricsMode::HugeStreamed(50 * 1024 * 1024)).await;
}

#[tokio::test]
async fn garbage_is_no_data_with_the_unreadable_lines_counted() {
    let service = TestService::start().await;
    service.set(|k| k.metrics = MetricsMode::Garbage);
    let mut poller = Poller::new(&policy(&service.url(), true), Duration::from_secs(1)).unwrap();
    let outcome = poll_twice(&mut poller).await;
    assert_eq!(observation(&outcome).requests, None);
    assert!(outcome.source_failed);
    assert!(
        outcome
            .problems
            .iter()
            .any(|p| p.contains("no readable samples")),
        "{:?}",
        outcome.problems
    );
}

#[tokio::test]
async fn buckets_that_go_down_leave_latency_out_and_keep_the_counts() {
    let service = TestService::start().await;
    let mut poller = Poller::new(&policy(&service.url(), true), Duration::from_secs(1)).unwrap();
    poller.poll(Utc::now()).await;
    service.set(|k| k.metrics = MetricsMode::NonMonotonic);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = poller.poll(Utc::now()).await;
    let o = observation(&outcome);
    assert_eq!(o.latency_ms.p95, None);
    assert!(o.requests.is_some());
    assert!(
        outcome
            .problems
            .iter()
            .any(|p| p.contains("buckets go down")),
        "{:?}",
        outcome.problems
    );
}

#[tokio::test]
async fn a_counter_reset_counts_from_zero_not_negative() {
    let service = TestService::start().await;
    let mut poller = Poller::new(&policy(&service.url(), true), Duration::from_secs(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    poller.poll(Utc::now()).await;
    service.reset_counters();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let outcome = poller.poll(Utc::now()).await;
    let requests = observation(&outcome).requests.unwrap();
    assert!(
        (0.0..150.0).contains(&requests),
        "after a reset the delta is what was counted since: {requests}"
    );
}

#[tokio::test]
async fn a_refusing_target_without_a_health_probe_is_down_and_with_one_follows_the_probe() {
    let service = TestService::start().await;
    let url = service.url();
    service.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut without = Poller::new(&policy(&url, false), Duration::from_secs(1)).unwrap();
    let outcome = without.poll(Utc::now()).await;
    assert_eq!(observation(&outcome).up, Some(false));
    let mut with = Poller::new(&policy(&url, true), Duration::from_secs(1)).unwrap();
    let outcome = with.poll(Utc::now()).await;
    assert_eq!(
        observation(&outcome).up,
        Some(false),
        "the probe is refused too: down"
    );
}

#[tokio::test]
async fn a_hanging_health_probe_is_down_after_its_timeout() {
    let service = TestService::start().await;
    service.set(|k| k.health = Health::Hanging);
    let mut poller = Poller::new(&policy(&service.url(), true), Duration::from_secs(1)).unwrap();
    let started = Instant::now();
    let outcome = poller.poll(Utc::now()).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(observation(&outcome).up, Some(false));
}
