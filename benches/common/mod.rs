//! The synthetic trace shared by the benchmarks: 30 days of a web service
//! sampled every 15 s (172,800 observations), with a dozen deployments of
//! which three are bad (error spike, latency regression, failing data check)
//! and one is slightly slower (latency in the watch band), so the engine opens
//! incidents, pages, rolls back and watches, as it would in production.
//!
//! Deterministic: a fixed-seed SplitMix64, no `rand` dependency. Streams (an
//! `Iterator`), so a caller can write 40+ MB of trace without holding it: the
//! memory benchmark relies on this to keep its own peak RSS small.

// Each bench target compiles this module and uses a different part of it.
#![allow(dead_code)]

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use rollwatch::engine::input::{Event, LatencyQuantiles, Observation};
use rollwatch::engine::policy::Policy;
use rollwatch::trace::{TraceItem, to_line};

/// Seconds between observations.
pub const INTERVAL_SECS: i64 = 15;
/// Observations in one day at 15 s.
pub const ONE_DAY: usize = 86_400 / INTERVAL_SECS as usize;
/// Observations in 30 days at 15 s: 172,800.
pub const THIRTY_DAYS: usize = 30 * ONE_DAY;

/// The policy every benchmark runs: `policies/production.toml`.
pub fn policy_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("policies/production.toml")
}

pub fn load_policy() -> Arc<Policy> {
    let path = policy_path();
    let policy =
        rollwatch::policy::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Arc::new(policy)
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Good,
    /// Latency x1.4 (+27 % to +40 % against a baseline taken at peak load):
    /// inside the 20-50 % watch band, never paged.
    Slower,
    /// 12 % errors until the rollback lands.
    BadErrors,
    /// p95 latency x2 until the rollback lands.
    BadLatency,
    /// `data_integrity` fails until the rollback lands.
    BadCheck,
}

struct Deploy {
    /// Seconds from the start of the trace; 5 s after an observation.
    at: i64,
    version: &'static str,
    kind: Kind,
    /// Announced with a `deploy` event; otherwise only seen as a version change.
    announced: bool,
    migrations: &'static [&'static str],
    /// For bad deploys: how long after `at` the previous version is back
    /// (the engine's rollback, which this static trace cannot react to, is
    /// timed from `production.toml`: see `SCHEDULE`).
    bad_for: i64,
}

const fn at(day: i64, hour: i64, minute: i64) -> i64 {
    day * 86_400 + hour * 3_600 + minute * 60 + 5
}

const fn deploy(at: i64, version: &'static str, kind: Kind, announced: bool) -> Deploy {
    Deploy {
        at,
        version,
        kind,
        announced,
        migrations: &[],
        bad_for: 0,
    }
}

const FIRST_VERSION: &str = "v1.0.0";

/// The deployments, in time order. Rollback instants under production.toml
/// (error-rate for 2m then a 10m page timeout; latency needs 4 samples then
/// 5m then 10m; data-corruption 30s) are T+12m15s, T+16m and T+45s, so the
/// previous version is back right after each.
const SCHEDULE: &[Deploy] = &[
    deploy(at(1, 10, 0), "v1.1.0", Kind::Good, true),
    deploy(at(3, 14, 0), "v1.2.0", Kind::Good, false),
    Deploy {
        migrations: &["0042_add_index"],
        bad_for: 12 * 60 + 20,
        ..deploy(at(6, 11, 0), "v1.3.0", Kind::BadErrors, true)
    },
    deploy(at(7, 10, 0), "v1.3.1", Kind::Good, true),
    deploy(at(10, 15, 30), "v1.4.0", Kind::Slower, true),
    deploy(at(13, 9, 0), "v1.5.0", Kind::Good, true),
    Deploy {
        bad_for: 16 * 60 + 10,
        ..deploy(at(16, 16, 0), "v1.6.0", Kind::BadLatency, true)
    },
    deploy(at(17, 10, 0), "v1.6.1", Kind::Good, true),
    Deploy {
        migrations: &["0051_backfill"],
        bad_for: 50,
        ..deploy(at(20, 13, 0), "v1.7.0", Kind::BadCheck, true)
    },
    deploy(at(21, 11, 0), "v1.7.1", Kind::Good, true),
    deploy(at(24, 10, 0), "v1.8.0", Kind::Good, false),
    deploy(at(27, 14, 0), "v1.9.0", Kind::Good, true),
];

/// The version running at `offset` (seconds from the start) and how it behaves.
fn running(offset: i64) -> (&'static str, Kind) {
    let Some(i) = SCHEDULE.iter().rposition(|d| d.at < offset) else {
        return (FIRST_VERSION, Kind::Good);
    };
    let d = &SCHEDULE[i];
    let bad = matches!(d.kind, Kind::BadErrors | Kind::BadLatency | Kind::BadCheck);
    if bad && offset - d.at >= d.bad_for {
        // Rolled back: what ran before it runs again.
        running(d.at)
    } else {
        (d.version, d.kind)
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): small, fast, good enough for noise.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit(), self.unit());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// The trace, item by item, in time order: every observation, and each
/// announced deploy 5 s after the observation before it.
pub struct Trace {
    start: DateTime<Utc>,
    total: usize,
    index: usize,
    rng: Rng,
    pending: Option<TraceItem>,
}

impl Trace {
    /// A trace of `observations` observations (`THIRTY_DAYS` for the benchmark).
    pub fn new(observations: usize) -> Trace {
        Trace {
            start: Utc
                .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
                .single()
                .expect("a valid start time"),
            total: observations,
            index: 0,
            rng: Rng(0x5EED_2026_1101),
            pending: None,
        }
    }

    fn observation(&mut self, offset: i64) -> Observation {
        let (version, kind) = running(offset);
        let rng = &mut self.rng;
        // Diurnal load in [0, 1]: lowest at 03:00, highest at 15:00.
        let hour = (offset % 86_400) as f64 / 3_600.0;
        let load = 0.5 - 0.5 * (std::f64::consts::TAU * (hour - 3.0) / 24.0).cos();

        let requests = ((1_000.0 + 500.0 * load) * (1.0 + 0.03 * rng.normal()))
            .clamp(950.0, 1_550.0)
            .round();
        let error_rate = if kind == Kind::BadErrors { 0.12 } else { 0.003 };
        let expected = requests * error_rate;
        let errors = (expected + expected.sqrt() * rng.normal())
            .round()
            .clamp(0.0, requests);

        let slow = match kind {
            Kind::Slower => 1.4,
            Kind::BadLatency => 2.0,
            _ => 1.0,
        };
        let base = 80.0 * (1.0 + 0.1 * load) * slow;
        let mut noisy =
            |scale: f64, spread: f64| (base * scale * (1.0 + spread * rng.normal())).max(1.0);
        let p50 = noisy(1.0, 0.05);
        let p90 = noisy(1.9, 0.06).max(p50);
        let p95 = noisy(2.6, 0.08).max(p90);
        let p99 = noisy(5.0, 0.12).max(p95);
        let ms = |v: f64| Some((v * 10.0).round() / 10.0);

        let users = (requests * 0.75 * (1.0 + 0.03 * rng.normal())).round();
        let users_affected = (users * 0.002 + rng.normal()).round().clamp(0.0, users);

        Observation {
            at: self.start + TimeDelta::seconds(offset),
            up: Some(true),
            requests: Some(requests),
            errors: Some(errors),
            latency_ms: LatencyQuantiles {
                p50: ms(p50),
                p90: ms(p90),
                p95: ms(p95),
                p99: ms(p99),
            },
            users: Some(users),
            users_affected: Some(users_affected),
            checks: vec![
                ("data_integrity".to_string(), kind != Kind::BadCheck),
                ("critical_features".to_string(), true),
            ],
            version: Some(version.to_string()),
        }
    }

    /// The announced deploy between the observation at `offset` and the next.
    fn deploy_after(&self, offset: i64) -> Option<TraceItem> {
        let d = SCHEDULE
            .iter()
            .find(|d| d.announced && d.at > offset && d.at < offset + INTERVAL_SECS)?;
        Some(TraceItem::Event {
            at: self.start + TimeDelta::seconds(d.at),
            event: Event::Deploy {
                version: Some(d.version.to_string()),
                // What is running, not the schedule's previous entry (which may have been rolled back).
                previous: Some(running(d.at).0.to_string()),
                migrations: d.migrations.iter().map(|m| m.to_string()).collect(),
            },
        })
    }
}

impl Iterator for Trace {
    type Item = TraceItem;

    fn next(&mut self) -> Option<TraceItem> {
        if let Some(event) = self.pending.take() {
            return Some(event);
        }
        if self.index == self.total {
            return None;
        }
        let offset = self.index as i64 * INTERVAL_SECS;
        self.index += 1;
        let observation = self.observation(offset);
        self.pending = self.deploy_after(offset);
        Some(TraceItem::Observation(observation))
    }
}

/// Writes the trace as JSON Lines.
pub fn write_trace(observations: usize, out: &mut impl Write) -> io::Result<()> {
    for item in Trace::new(observations) {
        out.write_all(to_line(&item).as_bytes())?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// The trace as one JSON Lines text.
pub fn trace_text(observations: usize) -> String {
    let mut text = Vec::with_capacity(observations * 300);
    write_trace(observations, &mut text).expect("writing to memory cannot fail");
    String::from_utf8(text).expect("trace lines are UTF-8")
}

/// The trace's observations only (announced deploys are then seen as version changes).
pub fn observations(observations: usize) -> Vec<Observation> {
    Trace::new(observations)
        .filter_map(|item| match item {
            TraceItem::Observation(o) => Some(o),
            _ => None,
        })
        .collect()
}
