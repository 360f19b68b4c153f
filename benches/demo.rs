//! Wall time of `rollwatch demo` (the release binary), the README's main
//! command: the whole story with nothing installed. Runs it `RUNS` times and
//! prints each run's time, the median and the maximum. Target: under 90 s.
//!
//!     cargo bench --bench demo
//!
//! `tests/cli.rs` checks the story; this measures how long it takes. Run by
//! `cargo test --benches` (no `--bench` flag) it runs once, without a verdict.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const NAME: &str = "demo";
const RUNS: usize = 3;
const TARGET: Duration = Duration::from_secs(90);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let runs = if full { RUNS } else { 1 };
    let mut times = Vec::with_capacity(runs);
    for run in 0..runs {
        let started = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
            .arg("demo")
            .stdin(Stdio::null())
            .output()
            .expect("running rollwatch demo");
        let took = started.elapsed();
        assert!(
            output.status.success(),
            "the demo failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        println!("  run {}: {:.2} s", run + 1, took.as_secs_f64());
        times.push(took);
    }
    times.sort();
    let max = times[times.len() - 1];
    println!(
        "{NAME}: {runs} run(s) of rollwatch demo: median {:.2} s, min {:.2} s, max {:.2} s{}",
        times[times.len() / 2].as_secs_f64(),
        times[0].as_secs_f64(),
        max.as_secs_f64(),
        match (full, max < TARGET) {
            (false, _) => "",
            (true, true) => ": meets the 90 s target",
            (true, false) => ": MISSES the 90 s target",
        }
    );
}
