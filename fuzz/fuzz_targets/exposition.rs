//! The exposition parser, then two scrapes derived from what it read: no input
//! panics, and the derived counts are never negative.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::sources::exposition::{Format, parse};
use rollwatch::sources::scrape::{Deriver, ScrapeMetrics};
use rollwatch::sources::selector::Selector;

fn metrics() -> ScrapeMetrics {
    let selector = |text: &str| Some(Selector::parse(text).expect("a fixed selector"));
    ScrapeMetrics {
        requests: selector("http_requests_total"),
        errors: selector(r#"http_requests_total{code=~"5.."}"#),
        latency: selector("http_request_duration_seconds"),
        users: selector("app_sessions_total"),
        users_affected: selector("app_sessions_with_errors_total"),
        version: selector("app_build_info"),
        version_label: "version".into(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The input holds two scrapes separated by a form feed (the seeds are one).
    let (first, second) = text.split_once('\u{c}').unwrap_or((text, text));
    let format = Format::detect(None, first);
    let mut deriver = Deriver::new(metrics());
    let _ = parse(first, Format::OpenMetrics);
    let _ = deriver.derive(&parse(first, format));
    let derived = deriver.derive(&parse(second, Format::detect(None, second)));
    for (what, count) in [
        ("requests", derived.requests),
        ("errors", derived.errors),
        ("users", derived.users),
        ("users_affected", derived.users_affected),
    ] {
        if let Some(count) = count {
            assert!(!(count < 0.0), "{what} is negative: {count}");
        }
    }
    let latency = derived.latency_ms;
    for quantile in [latency.p50, latency.p90, latency.p95, latency.p99]
        .into_iter()
        .flatten()
    {
        assert!(!quantile.is_nan(), "a latency quantile is NaN");
    }
});
