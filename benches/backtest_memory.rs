//! Whole-process figures for the 30-day backtest: wall time and peak resident
//! memory of the release binary, run as a user would run it:
//!
//!     rollwatch backtest --policy policies/production.toml --trace FILE --format json
//!
//!     cargo bench --bench backtest_memory
//!
//! Writes the generated 30-day trace (172,800 observations at 15 s) to a temp
//! file, runs the binary `RUNS` times and reports the wall times and the peak
//! RSS of the runs (`getrusage(RUSAGE_CHILDREN).ru_maxrss`). Targets: under
//! 1 s and under 50 MB. Run by `cargo test --benches` (no `--bench` flag), it
//! only checks a one-day trace once.
//!
//! Linux counts the parent's own peak into a spawned child's `ru_maxrss` (the
//! exec replaces the parent's address space, whose high-water mark is kept),
//! so this program streams the trace to disk and never holds it: its own peak
//! is printed alongside, and must stay below the child's for the figure to be
//! the child's.

mod common;

use std::io::{BufWriter, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "backtest_memory/30d";
const RUNS: usize = 5;
const TARGET_TIME: Duration = Duration::from_secs(1);
const TARGET_RSS_KIB: u64 = 50 * 1000 * 1000 / 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // Like criterion: positional arguments are name filters.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let (observations, runs) = if full {
        (common::THIRTY_DAYS, RUNS)
    } else {
        (common::ONE_DAY, 1)
    };

    let dir = tempfile::tempdir().expect("a temp dir");
    let trace = dir.path().join("trace.jsonl");
    let file = std::fs::File::create(&trace).expect("a temp file");
    let mut out = BufWriter::new(file);
    common::write_trace(observations, &mut out).expect("writing the trace");
    out.flush().expect("writing the trace");
    drop(out);
    let bytes = std::fs::metadata(&trace).map_or(0, |m| m.len());

    let binary = env!("CARGO_BIN_EXE_rollwatch");
    let policy = common::policy_path();
    let mut times = Vec::with_capacity(runs);
    let mut summary = String::new();
    for _ in 0..runs {
        let started = Instant::now();
        let output = Command::new(binary)
            .args(["backtest", "--format", "json", "--policy"])
            .arg(&policy)
            .arg("--trace")
            .arg(&trace)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {binary}: {e}"));
        times.push(started.elapsed());
        assert!(
            output.status.success(),
            "{binary} backtest failed: {}",
            output.status
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        summary = stdout.lines().last().unwrap_or_default().to_string();
    }
    let parsed: serde_json::Value = serde_json::from_str(&summary).expect("a JSON summary line");
    assert_eq!(
        parsed["summary"]["observations"], observations as u64,
        "{summary}"
    );

    times.sort();
    let median = times[times.len() / 2];
    let peak = children_peak_rss_kib();
    let own = own_peak_rss_kib();

    println!(
        "{NAME}: {observations} observations, trace {:.1} MB, {runs} run(s) of",
        bytes as f64 / 1e6
    );
    println!(
        "  {binary} backtest --format json --policy {} --trace FILE",
        policy.display()
    );
    println!("  {summary}");
    println!(
        "  wall time: median {:.3} s, min {:.3} s, max {:.3} s ({:.0} observations/s at the median){}",
        median.as_secs_f64(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        observations as f64 / median.as_secs_f64(),
        verdict(full, median < TARGET_TIME, "1 s")
    );
    match peak {
        Some(kib) => println!(
            "  peak RSS: {:.1} MB ({kib} KiB){}",
            kib as f64 * 1024.0 / 1e6,
            verdict(full, kib < TARGET_RSS_KIB, "50 MB")
        ),
        None => println!("  peak RSS: not measured on this platform"),
    }
    if let Some(own) = own {
        let note = match peak {
            Some(kib) if own >= kib => {
                "  WARNING: not below the child's figure, which may be this process's"
            }
            _ => "",
        };
        println!(
            "  (this measuring process peaked at {:.1} MB){note}",
            own as f64 * 1024.0 / 1e6
        );
    }
}

fn verdict(full: bool, met: bool, target: &str) -> String {
    match (full, met) {
        (false, _) => String::new(),
        (true, true) => format!(": meets the {target} target"),
        (true, false) => format!(": MISSES the {target} target"),
    }
}

/// The largest peak RSS among the waited-for children, in KiB.
#[cfg(target_os = "linux")]
fn children_peak_rss_kib() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a writable, zeroed `struct rusage`, all getrusage writes to.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    // SAFETY: zero-initialised plain integers are valid whatever getrusage did.
    let usage = unsafe { usage.assume_init() };
    (rc == 0).then(|| u64::try_from(usage.ru_maxrss).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
fn children_peak_rss_kib() -> Option<u64> {
    None
}

/// This process's own peak RSS (VmHWM), in KiB.
fn own_peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
