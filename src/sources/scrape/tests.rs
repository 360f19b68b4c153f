use super::*;
use crate::sources::exposition::{Format, parse};

fn metrics() -> ScrapeMetrics {
    let s = |t: &str| Some(Selector::parse(t).unwrap());
    ScrapeMetrics {
        requests: s("http_requests_total"),
        errors: s(r#"http_requests_total{code=~"5.."}"#),
        latency: s("http_request_duration_seconds"),
        users: s("app_sessions_total"),
        users_affected: s("app_sessions_with_errors_total"),
        version: s("app_build_info"),
        version_label: "version".into(),
    }
}

/// An exposition with `ok` 200s, `bad` 500s and a latency histogram with
/// `fast` observations <= 0.1 s, `slow` in (0.1, 0.5], none above.
fn exposition(ok: f64, bad: f64, fast: f64, slow: f64, version: &str) -> Exposition {
    let text = format!(
        "# TYPE http_requests_total counter\n\
         http_requests_total{{code=\"200\"}} {ok}\n\
         http_requests_total{{code=\"500\"}} {bad}\n\
         # TYPE http_request_duration_seconds histogram\n\
         http_request_duration_seconds_bucket{{le=\"0.1\"}} {fast}\n\
         http_request_duration_seconds_bucket{{le=\"0.5\"}} {total}\n\
         http_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}\n\
         http_request_duration_seconds_sum 1\n\
         http_request_duration_seconds_count {total}\n\
         app_sessions_total 100\n\
         app_sessions_with_errors_total 5\n\
         app_build_info{{version=\"{version}\"}} 1\n",
        total = fast + slow
    );
    parse(&text, Format::Prometheus)
}

#[test]
fn the_first_scrape_knows_the_version_but_no_counts() {
    let mut deriver = Deriver::new(metrics());
    let first = deriver.derive(&exposition(100.0, 1.0, 90.0, 10.0, "v1"));
    assert_eq!(first.version.as_deref(), Some("v1"));
    assert_eq!(
        (first.requests, first.errors, first.latency_ms.p95),
        (None, None, None)
    );
}

#[test]
fn counters_become_per_interval_deltas() {
    let mut deriver = Deriver::new(metrics());
    deriver.derive(&exposition(100.0, 1.0, 90.0, 10.0, "v1"));
    let second = deriver.derive(&exposition(1100.0, 51.0, 990.0, 110.0, "v1"));
    assert_eq!(second.requests, Some(1050.0));
    assert_eq!(second.errors, Some(50.0));
    assert_eq!(
        (second.users, second.users_affected),
        (Some(0.0), Some(0.0))
    );
    assert!(second.problems.is_empty(), "{:?}", second.problems);
}

#[test]
fn a_counter_that_goes_down_was_reset_and_counts_from_zero() {
    let mut deriver = Deriver::new(metrics());
    deriver.derive(&exposition(5000.0, 100.0, 900.0, 100.0, "v1"));
    let after_restart = deriver.derive(&exposition(300.0, 30.0, 20.0, 10.0, "v2"));
    assert_eq!(after_restart.requests, Some(330.0));
    assert_eq!(after_restart.errors, Some(30.0));
    assert_eq!(after_restart.version.as_deref(), Some("v2"));
    // The histogram was reset too: its buckets count from zero (p50: rank 15 of 30,
    // in the first bucket: 0.1 s * 15/20).
    assert_eq!(
        after_restart.latency_ms.p50.map(|ms| ms.round()),
        Some(75.0)
    );
}

#[test]
fn a_new_error_series_counts_whole() {
    let mut deriver = Deriver::new(metrics());
    let mut m = metrics();
    m.errors = Some(Selector::parse(r#"http_requests_total{code="503"}"#).unwrap());
    let mut deriver2 = Deriver::new(m);
    for d in [&mut deriver, &mut deriver2] {
        d.derive(&parse(
            "http_requests_total{code=\"200\"} 10\n",
            Format::Prometheus,
        ));
    }
    let next = parse(
        "http_requests_total{code=\"200\"} 20\nhttp_requests_total{code=\"503\"} 4\n",
        Format::Prometheus,
    );
    assert_eq!(deriver2.derive(&next).errors, Some(4.0));
    assert_eq!(deriver.derive(&next).errors, Some(4.0));
}

#[test]
fn no_error_series_means_zero_errors_once_requests_are_known() {
    let mut deriver = Deriver::new(metrics());
    deriver.derive(&parse(
        "http_requests_total{code=\"200\"} 10\n",
        Format::Prometheus,
    ));
    let next = deriver.derive(&parse(
        "http_requests_total{code=\"200\"} 20\n",
        Format::Prometheus,
    ));
    assert_eq!((next.requests, next.errors), (Some(10.0), Some(0.0)));
}

#[test]
fn quantiles_interpolate_within_the_bucket_like_histogram_quantile() {
    // 900 fast (<=0.1 s) and 100 slow (0.1-0.5 s) in the interval.
    let mut deriver = Deriver::new(metrics());
    deriver.derive(&exposition(0.0, 0.0, 0.0, 0.0, "v1"));
    let d = deriver.derive(&exposition(1000.0, 0.0, 900.0, 100.0, "v1"));
    let q = d.latency_ms;
    // p50: rank 500 in the first bucket: 0 + 0.1 * 500/900 s.
    assert!((q.p50.unwrap() - 55.555).abs() < 0.01, "{q:?}");
    // p95: rank 950: 0.1 + 0.4 * (950-900)/100 s = 0.3 s.
    assert!((q.p95.unwrap() - 300.0).abs() < 1e-9, "{q:?}");
    // p99: rank 990: 0.1 + 0.4 * 90/100 = 0.46 s.
    assert!((q.p99.unwrap() - 460.0).abs() < 1e-9, "{q:?}");
}

#[test]
fn the_inf_bucket_answers_with_the_highest_finite_bound() {
    let buckets = [(0.1, 10.0), (0.5, 20.0), (f64::INFINITY, 100.0)];
    assert_eq!(histogram_quantile(0.95, &buckets), Some(0.5));
    assert_eq!(
        histogram_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
        None
    );
}

#[test]
fn buckets_that_go_down_are_no_data_with_the_reason() {
    let mut deriver = Deriver::new(metrics());
    deriver.derive(&exposition(0.0, 0.0, 0.0, 0.0, "v1"));
    let broken = parse(
        "http_requests_total{code=\"200\"} 10\nhttp_request_duration_seconds_bucket{le=\"0.1\"} 9\nhttp_request_duration_seconds_bucket{le=\"0.5\"} 4\nhttp_request_duration_seconds_bucket{le=\"+Inf\"} 10\n",
        Format::Prometheus,
    );
    let d = deriver.derive(&broken);
    assert_eq!(d.latency_ms, LatencyQuantiles::default());
    assert!(
        d.problems.iter().any(|p| p.contains("buckets go down")),
        "{:?}",
        d.problems
    );
    assert_eq!(d.requests, Some(10.0));
}

#[test]
fn a_nan_counter_is_no_data_never_zero() {
    let mut deriver = Deriver::new(metrics());
    deriver.derive(&parse(
        "http_requests_total{code=\"200\"} 10\nhttp_requests_total{code=\"500\"} 1\n",
        Format::Prometheus,
    ));
    let d = deriver.derive(&parse(
        "http_requests_total{code=\"200\"} 20\nhttp_requests_total{code=\"500\"} NaN\n",
        Format::Prometheus,
    ));
    assert_eq!(d.errors, None);
    assert_eq!(d.requests, None);
    assert!(
        d.problems
            .iter()
            .any(|p| p.contains("impossible counter value NaN")),
        "{:?}",
        d.problems
    );
}

#[test]
fn openmetrics_family_names_select_their_total_series() {
    let mut m = metrics();
    m.requests = Some(Selector::parse("http_requests").unwrap());
    let mut deriver = Deriver::new(m);
    let text = |n: u32| {
        format!("# TYPE http_requests counter\nhttp_requests_total{{code=\"200\"}} {n}\n# EOF\n")
    };
    deriver.derive(&parse(&text(5), Format::OpenMetrics));
    assert_eq!(
        deriver
            .derive(&parse(&text(12), Format::OpenMetrics))
            .requests,
        Some(7.0)
    );
}

#[test]
fn a_missing_series_is_reported() {
    let mut deriver = Deriver::new(metrics());
    let d = deriver.derive(&parse("something_else 1\n", Format::Prometheus));
    assert!(
        d.problems
            .iter()
            .any(|p| p.contains("no series matches http_requests_total")),
        "{:?}",
        d.problems
    );
}
