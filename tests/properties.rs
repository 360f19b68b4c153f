//! Property tests (proptest) over the public API: the parsers never panic,
//! counts derived from scrapes are never negative (counter resets included),
//! and `explain` never misstates a compiled policy's thresholds. Kept to the
//! default number of cases or fewer so the file runs in seconds.

use proptest::prelude::*;
use rollwatch::sources::exposition::{Format, parse};
use rollwatch::sources::scrape::{Deriver, ScrapeMetrics};
use rollwatch::sources::selector::Selector;

/// Text made of the characters that matter to the exposition format, so that
/// random input reaches past the first check more often than arbitrary text.
const EXPOSITION_TEXT: &str = r#"([a-z_]{0,12}(\{([a-z_]{0,5}(=|!=|=~)"[^"\n]{0,6}\\?"?,?){0,3}\}?)? ?[-+0-9.eEInfNa]{0,8}( [0-9]{0,4})?(#.{0,10})?\n?){0,8}"#;

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

/// One scrape: per-code request counters, a histogram per handler with the
/// given cumulative counts per bound, and the session counters.
fn scrape_text(requests: &[(u16, f64)], histograms: &[Vec<f64>], sessions: (f64, f64)) -> String {
    let mut text = String::from("# TYPE http_requests_total counter\n");
    for (code, value) in requests {
        text.push_str(&format!("http_requests_total{{code=\"{code}\"}} {value}\n"));
    }
    text.push_str("# TYPE http_request_duration_seconds histogram\n");
    let bounds = ["0.05", "0.1", "0.5", "1", "+Inf"];
    for (handler, counts) in histograms.iter().enumerate() {
        let mut cumulative = 0.0;
        for (bound, count) in bounds.iter().zip(counts) {
            cumulative += count;
            text.push_str(&format!(
                "http_request_duration_seconds_bucket{{handler=\"h{handler}\",le=\"{bound}\"}} {cumulative}\n"
            ));
        }
    }
    text.push_str(&format!(
        "app_sessions_total {}\napp_sessions_with_errors_total {}\n",
        sessions.0, sessions.1
    ));
    text
}

/// A counter's value over a few scrapes, resets (drops to a lower value) included.
fn counter_values() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        prop_oneof![
            3 => (0u32..1_000_000).prop_map(f64::from),
            1 => Just(0.0),
            1 => (0u32..1_000).prop_map(|v| f64::from(v) / 8.0),
        ],
        2..5,
    )
}

fn scrape_sequence() -> impl Strategy<Value = Vec<String>> {
    let one = (
        prop::collection::vec(
            (
                prop::sample::select(vec![200u16, 404, 500, 503]),
                0u32..100_000,
            ),
            0..4,
        ),
        prop::collection::vec(prop::collection::vec(0u32..500, 5), 0..3),
        (0u32..10_000, 0u32..10_000),
    );
    prop::collection::vec(one, 2..5).prop_map(|scrapes| {
        scrapes
            .into_iter()
            .map(|(requests, histograms, (users, affected))| {
                let requests: Vec<(u16, f64)> = requests
                    .into_iter()
                    .map(|(c, v)| (c, f64::from(v)))
                    .collect();
                let histograms: Vec<Vec<f64>> = histograms
                    .into_iter()
                    .map(|h| h.into_iter().map(f64::from).collect())
                    .collect();
                scrape_text(
                    &requests,
                    &histograms,
                    (f64::from(users), f64::from(affected)),
                )
            })
            .collect()
    })
}

fn assert_never_negative(derived: &rollwatch::sources::scrape::Derived) {
    for (what, count) in [
        ("requests", derived.requests),
        ("errors", derived.errors),
        ("users", derived.users),
        ("users_affected", derived.users_affected),
    ] {
        if let Some(count) = count {
            assert!(count >= 0.0, "{what} is {count}: {derived:?}");
        }
    }
}

/// Quantiles of histograms whose bounds are all positive are never negative.
fn assert_quantiles_never_negative(derived: &rollwatch::sources::scrape::Derived) {
    let latency = &derived.latency_ms;
    for quantile in [latency.p50, latency.p90, latency.p95, latency.p99]
        .into_iter()
        .flatten()
    {
        assert!(
            quantile >= 0.0,
            "a latency quantile is {quantile}: {derived:?}"
        );
    }
}

proptest! {
    #[test]
    fn the_exposition_parser_never_panics(text in any::<String>()) {
        let _ = parse(&text, Format::Prometheus);
        let _ = parse(&text, Format::OpenMetrics);
    }

    #[test]
    fn the_exposition_parser_never_panics_on_near_expositions(text in EXPOSITION_TEXT) {
        for format in [Format::Prometheus, Format::OpenMetrics] {
            let exposition = parse(&text, format);
            // Two scrapes of it through the deriver, as a poll would.
            let mut deriver = Deriver::new(metrics());
            let _ = deriver.derive(&exposition);
            assert_never_negative(&deriver.derive(&exposition));
        }
    }

    #[test]
    fn the_selector_parser_never_panics(text in any::<String>()) {
        let _ = Selector::parse(&text);
    }

    #[test]
    fn the_selector_parser_never_panics_on_near_selectors(
        text in r#"[a-z_:]{0,8} ?\{?( ?[a-z_]{0,4} ?(=|!=|=~|!~)? ?"?([^"\\]|\\.){0,6}"?,?){0,3}\}? ?"#
    ) {
        if let Ok(selector) = Selector::parse(&text) {
            // What parsed prints as a selector that parses again.
            let again = Selector::parse(&selector.to_string());
            prop_assert!(again.is_ok(), "{text:?} printed as {:?}: {again:?}", selector.to_string());
        }
    }

    #[test]
    fn counter_deltas_are_never_negative_across_resets(
        requests in counter_values(),
        errors in counter_values(),
        sessions in counter_values(),
    ) {
        let mut deriver = Deriver::new(metrics());
        for i in 0..requests.len() {
            let text = scrape_text(
                &[(200, requests[i]), (500, errors[i % errors.len()])],
                &[],
                (sessions[i % sessions.len()], errors[i % errors.len()]),
            );
            let derived = deriver.derive(&parse(&text, Format::Prometheus));
            assert_never_negative(&derived);
            if i > 0 {
                // A counter that went down was reset: it counts from zero, whole.
                let (before, now) = (errors[(i - 1) % errors.len()], errors[i % errors.len()]);
                let expected = if now >= before { now - before } else { now };
                prop_assert_eq!(derived.errors, Some(expected));
            }
        }
    }

    #[test]
    fn derived_counts_and_quantiles_are_never_negative(scrapes in scrape_sequence()) {
        let mut deriver = Deriver::new(metrics());
        for text in &scrapes {
            let exposition = parse(text, Format::Prometheus);
            prop_assert!(exposition.errors.is_empty(), "{:?}", exposition.errors);
            let derived = deriver.derive(&exposition);
            assert_never_negative(&derived);
            assert_quantiles_never_negative(&derived);
        }
    }
}

// ---------------------------------------------------------------------------
// explain never misstates a compiled policy's thresholds
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct GeneratedRule {
    tier: &'static str,
    signal: &'static str,
    /// Hundredths of a percent: 1234 is "12.34%".
    threshold: u32,
    /// Polls (of 15 s) the rule must hold, and of its window.
    hold_polls: u32,
    window_polls: u32,
    minimum: u32,
}

fn generated_rule() -> impl Strategy<Value = GeneratedRule> {
    (
        prop::sample::select(vec!["immediate", "consider"]),
        prop::sample::select(vec!["error-rate", "users-affected", "latency-degradation"]),
        1u32..=10_000,
        1u32..=40,
        any::<prop::sample::Index>(),
        1u32..=5_000,
    )
        .prop_map(
            |(tier, signal, threshold, hold_polls, window, minimum)| GeneratedRule {
                tier,
                signal,
                threshold,
                hold_polls,
                window_polls: 1 + window.index(hold_polls as usize) as u32,
                minimum,
            },
        )
}

fn percent_text(hundredths: u32) -> String {
    format!("{}.{:02}%", hundredths / 100, hundredths % 100)
}

fn policy_text(rules: &[GeneratedRule]) -> String {
    let mut text = String::from(
        "[target]\nservice = \"web\"\nenvironment = \"production\"\n\n[evaluation]\ninterval = \"15s\"\n",
    );
    for (i, rule) in rules.iter().enumerate() {
        let minimum_key = match rule.signal {
            "error-rate" => "min_requests",
            "users-affected" => "min_users",
            _ => "min_samples",
        };
        text.push_str(&format!(
            "\n[[rule]]\nname = \"rule-{i}\"\ntier = \"{}\"\nsignal = \"{}\"\nthreshold = \"{}\"\n\
             for = \"{}s\"\nwindow = \"{}s\"\n{minimum_key} = {}\n",
            rule.tier,
            rule.signal,
            percent_text(rule.threshold),
            rule.hold_polls * 15,
            rule.window_polls * 15,
            rule.minimum,
        ));
    }
    text
}

/// The percentage written just before `after` in `line`, as a fraction.
fn shown_percent(line: &str, after: &str) -> Option<f64> {
    let start = line.find(after)? + after.len();
    let text = &line[start..];
    let end = text.find('%')?;
    text[..end].parse::<f64>().ok().map(|p| p / 100.0)
}

fn duration_text(seconds: u32) -> String {
    let (m, s) = (seconds / 60, seconds % 60);
    match (m, s) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn explain_shows_every_rules_threshold_window_and_hold(
        rules in prop::collection::vec(generated_rule(), 1..4)
    ) {
        let text = policy_text(&rules);
        let compiled = match rollwatch::policy::compile_bytes("p.toml", text.as_bytes(), |_| None) {
            Ok(compiled) => compiled,
            // The generator only writes valid rules, except tiers out of order.
            Err(errors) if errors.to_string().contains("is stricter than") => return Ok(()),
            Err(errors) => return Err(TestCaseError::fail(format!("{errors}\n{text}"))),
        };
        let explanation = rollwatch::cmd::explain::explain(&compiled.policy);
        let mut heading = "";
        let mut seen = 0;
        let mut lines = explanation.lines();
        while let Some(line) = lines.next() {
            if !line.starts_with(' ') && line.ends_with("):") {
                heading = line;
                continue;
            }
            let Some(rest) = line.strip_prefix("  - rule-") else { continue };
            let index: usize = rest[..rest.find(':').unwrap()].parse().unwrap();
            let rule = &rules[index];
            seen += 1;
            prop_assert!(heading.ends_with(&format!("({}):", rule.tier)), "{heading} for {line}");
            // The threshold, as written to within the shown precision (0.1 point,
            // 0.01 below 1%), never another rule's or a rounded-off neighbour's.
            let written = f64::from(rule.threshold) / 10_000.0;
            let shown = shown_percent(line, "above ")
                .or_else(|| shown_percent(line, "more than "))
                .ok_or_else(|| TestCaseError::fail(format!("no threshold in {line}")))?;
            let precision = if written >= 0.01 { 0.0005 } else { 0.00005 };
            prop_assert!(
                (shown - written).abs() <= precision + 1e-12,
                "threshold {} shown as {shown}: {line}", percent_text(rule.threshold)
            );
            let hold = duration_text(rule.hold_polls * 15);
            prop_assert!(line.contains(&format!("for {hold}")), "hold {hold}: {line}");
            prop_assert!(
                line.contains(&format!("over {}", duration_text(rule.window_polls * 15))),
                "window: {line}"
            );
            prop_assert!(line.contains(&format!("at least {}", rule.minimum)), "minimum: {line}");
            let timing = lines.next().unwrap_or_default();
            prop_assert!(timing.contains(&format!("must hold {hold}")), "{timing}");
        }
        prop_assert_eq!(seen, rules.len(), "{}", explanation);
    }
}
