use super::*;

fn one(line: &str) -> Sample {
    let parsed = parse(line, Format::Prometheus);
    assert!(parsed.errors.is_empty(), "{line}: {:?}", parsed.errors);
    assert_eq!(parsed.samples.len(), 1, "{line}");
    parsed.samples.into_iter().next().unwrap()
}

fn labels(sample: &Sample) -> Vec<(&str, &str)> {
    sample
        .labels
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect()
}

#[test]
fn recording_rule_names_with_colons() {
    let s = one("job:http_requests:rate5m{job=\"web\"} 12.5");
    assert_eq!(s.name, "job:http_requests:rate5m");
    assert_eq!(s.value, 12.5);
}

#[test]
fn braces_commas_and_equals_inside_label_values() {
    let s = one(r#"http_requests_total{path="/a,b}c=d",code="200"} 7"#);
    assert_eq!(labels(&s), [("path", "/a,b}c=d"), ("code", "200")]);
    assert_eq!(s.value, 7.0);
}

#[test]
fn empty_label_set() {
    let s = one("up{} 1");
    assert_eq!((s.name.as_str(), s.labels.len(), s.value), ("up", 0, 1.0));
}

#[test]
fn escaped_label_values_are_decoded() {
    let s = one(r#"m{a="say \"hi\"",b="back\\slash",c="two\nlines"} 1"#);
    assert_eq!(
        labels(&s),
        [
            ("a", "say \"hi\""),
            ("b", "back\\slash"),
            ("c", "two\nlines")
        ]
    );
}

#[test]
fn timestamps_in_milliseconds_and_float_seconds() {
    assert_eq!(
        one("m 1 1700000000123").timestamp_ms,
        Some(1_700_000_000_123)
    );
    let om = parse("m 1 1700000000.123\n# EOF\n", Format::OpenMetrics);
    assert_eq!(om.samples[0].timestamp_ms, Some(1_700_000_000_123));
    // A float timestamp in the Prometheus format is seconds too (only OpenMetrics writes them).
    assert_eq!(
        one("m 1 1700000000.5").timestamp_ms,
        Some(1_700_000_000_500)
    );
    assert_eq!(one("m 1").timestamp_ms, None);
}

#[test]
fn openmetrics_counter_and_histogram_suffixes_get_their_family_type() {
    let text = "# TYPE requests counter\nrequests_total 10\nrequests_created 1.7e9\n\
                # TYPE latency histogram\nlatency_bucket{le=\"0.1\"} 1\nlatency_bucket{le=\"+Inf\"} 2\nlatency_sum 0.3\nlatency_count 2\n\
                # TYPE plain gauge\nplain 3\nplain_total 4\n# EOF\n";
    let parsed = parse(text, Format::OpenMetrics);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert!(parsed.eof);
    let kinds: Vec<(&str, MetricType)> = parsed
        .samples
        .iter()
        .map(|s| (s.name.as_str(), s.metric_type))
        .collect();
    assert_eq!(
        kinds,
        [
            ("requests_total", MetricType::Counter),
            ("requests_created", MetricType::Counter),
            ("latency_bucket", MetricType::Histogram),
            ("latency_bucket", MetricType::Histogram),
            ("latency_sum", MetricType::Histogram),
            ("latency_count", MetricType::Histogram),
            ("plain", MetricType::Gauge),
            // A gauge has no _total sample: this is another, untyped metric.
            ("plain_total", MetricType::Untyped),
        ]
    );
}

#[test]
fn prometheus_format_counter_typed_by_full_name() {
    let parsed = parse(
        "# HELP http_requests_total All requests.\n# TYPE http_requests_total counter\nhttp_requests_total{code=\"200\"} 1027 1395066363000\n",
        Format::Prometheus,
    );
    assert_eq!(parsed.samples[0].metric_type, MetricType::Counter);
}

#[test]
fn nan_and_infinities() {
    assert!(one("m NaN").value.is_nan());
    assert_eq!(one("m +Inf").value, f64::INFINITY);
    assert_eq!(one("m -Inf").value, f64::NEG_INFINITY);
    assert_eq!(one("m{le=\"+Inf\"} 3").label("le"), Some("+Inf"));
}

#[test]
fn exemplars_are_read_past() {
    let parsed = parse(
        "# TYPE foo histogram\nfoo_bucket{le=\"0.01\"} 0\nfoo_bucket{le=\"0.1\"} 8 # {trace_id=\"KOO5S4vxi0o\"} 0.067 1520879607.789\nfoo_bucket{le=\"+Inf\"} 9 # {} 1\n# EOF\n",
        Format::OpenMetrics,
    );
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(
        parsed.samples.iter().map(|s| s.value).collect::<Vec<_>>(),
        [0.0, 8.0, 9.0]
    );
}

#[test]
fn eof_ends_the_exposition_and_content_after_it_is_an_error() {
    let parsed = parse("a 1\n# EOF\nb 2\n", Format::OpenMetrics);
    assert_eq!(parsed.samples.len(), 1);
    assert_eq!(
        parsed.errors,
        [LineError {
            line: 3,
            message: "content after # EOF".into()
        }]
    );
}

#[test]
fn whitespace_trailing_commas_and_crlf() {
    let s = one("m{a=\"1\",} \t 2 \r");
    assert_eq!((labels(&s), s.value), (vec![("a", "1")], 2.0));
    let s = one("m { a = \"1\" , b=\"2\" } 3");
    assert_eq!(labels(&s), [("a", "1"), ("b", "2")]);
}

#[test]
fn unreadable_lines_are_counted_with_their_number_and_never_guessed() {
    let text = "good 1\nbad{a=\"1\" 2\n9starts_with_digit 1\nm{a=1} 1\nm{a=\"x\"}\nm 1 2 3\nm abc\nm{a=\"1\",a=\"2\"} 1\nok 2\n";
    let parsed = parse(text, Format::Prometheus);
    assert_eq!(
        parsed
            .samples
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>(),
        ["good", "ok"]
    );
    let lines: Vec<usize> = parsed.errors.iter().map(|e| e.line).collect();
    assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8], "{:?}", parsed.errors);
    assert!(parsed.errors[6].message.contains("duplicate label"));
}

#[test]
fn garbage_never_panics() {
    for text in [
        "\u{0}\u{1}",
        "{{{{",
        "m{",
        "m{\"",
        "m{a=\"\\",
        "# TYPE",
        "# TYPE m",
        "# TYPE m bogus",
        "ü 1",
        "m{ü=\"1\"} 1",
    ] {
        let _ = parse(text, Format::Prometheus);
        let _ = parse(text, Format::OpenMetrics);
    }
    assert_eq!(
        parse("# TYPE m bogus\n", Format::Prometheus).errors.len(),
        1
    );
}

#[test]
fn format_detection() {
    assert_eq!(
        Format::detect(Some("application/openmetrics-text; version=1.0.0"), ""),
        Format::OpenMetrics
    );
    assert_eq!(
        Format::detect(Some("text/plain; version=0.0.4"), "a 1\n"),
        Format::Prometheus
    );
    assert_eq!(Format::detect(None, "a 1\n# EOF\n"), Format::OpenMetrics);
}
