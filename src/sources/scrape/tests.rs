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

/// The scan per bucket `bucket_deltas` did before it became linear, kept as
/// the reference its results must equal.
fn bucket_deltas_by_scanning(
    previous: &HashMap<String, Vec<(f64, f64)>>,
    current: &HashMap<String, Vec<(f64, f64)>>,
) -> Result<Vec<(f64, f64)>, String> {
    let mut summed: Vec<(f64, f64)> = Vec::new();
    for (key, now) in current {
        check_monotonic(now)?;
        let before = previous.get(key);
        let reset = match before {
            Some(before) => before.last().map(|b| b.1) > now.last().map(|n| n.1),
            None => false,
        };
        for &(le, count) in now {
            let old = if reset {
                None
            } else {
                before
                    .and_then(|b| b.iter().find(|(l, _)| *l == le))
                    .map(|(_, c)| *c)
            };
            let increase = match old {
                Some(old) if count >= old => count - old,
                Some(_) => count,
                None => count,
            };
            match summed.iter_mut().find(|(l, _)| *l == le) {
                Some(slot) => slot.1 += increase,
                None => summed.push((le, increase)),
            }
        }
    }
    summed.sort_by(|a, b| a.0.total_cmp(&b.0));
    check_monotonic(&summed)?;
    Ok(summed)
}

/// Series (without `le`) → its buckets, as `collect_buckets` returns them.
type Histograms = HashMap<String, Vec<(f64, f64)>>;

/// Histogram series as `collect_buckets` leaves them, from a seed: shared and
/// private bounds, duplicated bounds, series that appear, vanish or reset, and
/// counts that go down (which both versions must reject alike).
fn histogram_pair(seed: u64) -> (Histograms, Histograms) {
    let mut state = seed;
    let mut next = move |below: u64| {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % below
    };
    let bounds = [
        0.0,
        0.005,
        0.01,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        10.0,
        f64::INFINITY,
    ];
    let scrape = |next: &mut dyn FnMut(u64) -> u64| {
        let mut series = HashMap::new();
        for key in 0..next(5) {
            let mut buckets: Vec<(f64, f64)> = (0..next(12))
                .map(|_| (bounds[next(bounds.len() as u64) as usize], 0.0))
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut count = 0.0;
            for bucket in &mut buckets {
                // Mostly cumulative; now and then a count that goes down.
                count = if next(20) == 0 {
                    count / 2.0
                } else {
                    count + next(50) as f64
                };
                bucket.1 = count;
            }
            series.insert(format!("series-{key}"), buckets);
        }
        series
    };
    let previous = scrape(&mut next);
    let current = scrape(&mut next);
    (previous, current)
}

#[test]
fn bucket_deltas_equal_the_scan_per_bucket_they_replaced() {
    let mut compared = (0, 0);
    for seed in 0..2_000 {
        let (previous, current) = histogram_pair(seed);
        let expected = bucket_deltas_by_scanning(&previous, &current);
        assert_eq!(
            bucket_deltas(&previous, &current),
            expected,
            "seed {seed}: {previous:?} -> {current:?}"
        );
        match expected {
            Ok(_) => compared.0 += 1,
            Err(_) => compared.1 += 1,
        }
    }
    // Both outcomes were exercised, not only the rejections.
    assert!(compared.0 > 200 && compared.1 > 200, "{compared:?}");
}

#[test]
fn bucket_deltas_of_a_thousand_bounds_match_per_bound() {
    let bounds: Vec<f64> = (1..=1_000)
        .map(|i| i as f64 / 1_000.0)
        .chain([f64::INFINITY])
        .collect();
    let series = |scale: f64| -> HashMap<String, Vec<(f64, f64)>> {
        (0..3)
            .map(|s| {
                let buckets = bounds
                    .iter()
                    .enumerate()
                    .map(|(i, &le)| (le, (i as f64 + s as f64) * scale))
                    .collect();
                (format!("series-{s}"), buckets)
            })
            .collect()
    };
    let (previous, current) = (series(1.0), series(3.0));
    let deltas = bucket_deltas(&previous, &current).expect("cumulative buckets");
    assert_eq!(
        deltas,
        bucket_deltas_by_scanning(&previous, &current).unwrap()
    );
    assert_eq!(deltas.len(), bounds.len());
    // Per bound, the three series each grew by twice their previous count.
    for (i, &(le, increase)) in deltas.iter().enumerate() {
        assert_eq!(le, bounds[i]);
        assert_eq!(increase, 2.0 * (3.0 * i as f64 + 3.0));
    }
}

#[test]
fn a_negative_bucket_count_is_no_data_never_a_negative_delta() {
    let text = |inf: f64| {
        format!(
            "http_request_duration_seconds_bucket{{le=\"0.1\"}} -5\n\
             http_request_duration_seconds_bucket{{le=\"+Inf\"}} {inf}\n"
        )
    };
    let mut deriver = Deriver::new(metrics());
    deriver.derive(&parse(&text(10.0), Format::Prometheus));
    let derived = deriver.derive(&parse(&text(20.0), Format::Prometheus));
    assert_eq!(derived.latency_ms, LatencyQuantiles::default());
    assert!(
        derived.problems.iter().any(|p| p.contains("negative")),
        "{:?}",
        derived.problems
    );
}

mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Series of buckets as `collect_buckets` leaves them: sorted by `le`,
    /// counts of any sign, shared bounds so that series meet in the sums.
    fn series() -> impl Strategy<Value = HashMap<String, Vec<(f64, f64)>>> {
        let bound = prop::sample::select(vec![0.0, 0.1, 0.5, 1.0, 2.5, f64::INFINITY]);
        let buckets = prop::collection::vec((bound, -2i32..60), 0..8).prop_map(|mut buckets| {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            let mut cumulative = 0.0;
            buckets
                .into_iter()
                .map(|(le, step)| {
                    cumulative += f64::from(step);
                    (le, cumulative)
                })
                .collect::<Vec<_>>()
        });
        prop::collection::hash_map("[a-c]", buckets, 0..4)
    }

    proptest! {
        #[test]
        fn bucket_deltas_are_never_negative_and_equal_the_scan(
            previous in series(),
            current in series(),
        ) {
            let deltas = bucket_deltas(&previous, &current);
            prop_assert_eq!(&deltas, &bucket_deltas_by_scanning(&previous, &current));
            if let Ok(deltas) = deltas {
                for (le, increase) in deltas {
                    prop_assert!(increase >= 0.0, "le={} increased by {}", le, increase);
                }
            }
        }
    }
}
