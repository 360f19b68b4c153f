//! Peak resident memory of `rollwatch drill` (the release binary) while a
//! rollback step prints 100 MB: the runner keeps only a capped tail of a
//! step's output, so memory must not follow the output. A drill on a
//! stand-in service, with a SQLite store, whose application step is
//! `head -c 100000000 /dev/zero | tr '\0' x; echo THE-LAST-LINE`. Reports the
//! wall time and the child's peak RSS (`getrusage(RUSAGE_CHILDREN)`, a fresh
//! measuring process small enough not to count: its own peak is printed
//! alongside). Target: under 64 MiB.
//!
//!     cargo bench --bench step_output
//!
//! `tests/manual.rs` checks that the step succeeds and its tail is kept; this
//! measures the memory. Run by `cargo test --benches` (no `--bench` flag) the
//! step prints 10 MB, without a verdict.

#[allow(dead_code)]
#[path = "../tests/common/policy.rs"]
mod policy;
#[path = "../tests/common/service.rs"]
mod service;

use std::process::{Command, Stdio};
use std::time::Instant;

const NAME: &str = "step_output";
const TARGET_RSS_KIB: i64 = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let bytes: u64 = if full { 100_000_000 } else { 10_000_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let service = runtime.block_on(service::TestService::start());
    let dir = tempfile::tempdir().expect("a temp dir");
    let policy = dir.path().join("staging.toml");
    std::fs::write(&policy, policy_text(&service.url(), bytes)).expect("writing the policy");
    let db = format!("sqlite://{}", dir.path().join("rollwatch.db").display());
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
        .args(["drill", "--policy"])
        .arg(&policy)
        .args(["--db", &db])
        .env("ROLLWATCH_OPERATOR", "bench")
        .stdin(Stdio::null())
        .output()
        .expect("running rollwatch drill");
    let wall = started.elapsed();
    assert!(
        output.status.success(),
        "the drill failed: {}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let peak = children_peak_rss_kib();
    println!(
        "{NAME}: rollwatch drill with a step printing {} MB: wall time {:.2} s, peak RSS {:.1} MiB ({peak} KiB){}",
        bytes / 1_000_000,
        wall.as_secs_f64(),
        peak as f64 / 1024.0,
        match (full, peak < TARGET_RSS_KIB) {
            (false, _) => "",
            (true, true) => ": meets the 64 MiB target",
            (true, false) => ": MISSES the 64 MiB target",
        }
    );
    if let Some(own) = own_peak_rss_kib() {
        let note = if own >= peak {
            "  WARNING: not below the child's figure, which may be this process's"
        } else {
            ""
        };
        println!(
            "  (this measuring process peaked at {:.1} MiB){note}",
            own as f64 / 1024.0
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let step = stdout
        .lines()
        .find(|l| l.contains("rollback-app"))
        .unwrap_or_else(|| panic!("the drill ran the loud step: {stdout}"));
    println!("  the drill's step: {}", step.trim());
    drop(service);
}

fn policy_text(url: &str, bytes: u64) -> String {
    let shell = "timeout = \"120s\"\nshell = true";
    policy::Policy::stand_in(url)
        .step(
            "rollback-app",
            "application",
            &[&format!(
                "head -c {bytes} /dev/zero | tr '\\0' x; echo THE-LAST-LINE"
            )],
            shell,
        )
        .step("smoke-tests", "verification", &["true"], shell)
        .text()
        .replace("[procedure]\n", "[procedure]\ndatabase_rollback = false\n")
}

/// The largest peak RSS among the waited-for children, in KiB.
fn children_peak_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a writable, zeroed `struct rusage`, all getrusage writes to.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    // SAFETY: zero-initialised plain integers are valid whatever getrusage did.
    let usage = unsafe { usage.assume_init() };
    usage.ru_maxrss
}

/// This process's own peak RSS (VmHWM), in KiB.
fn own_peak_rss_kib() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
