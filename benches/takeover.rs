//! How fast a standby replica takes a target over when its owner dies: two
//! `rollwatch run` replicas (the release binary) on the machine's PostgreSQL
//! (`ROLLWATCH_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`, a fresh schema), watching one
//! stand-in service at `interval = "1s"`. Per run: A owns the target, B is
//! passive; A is killed with SIGKILL, and the takeover runs from the kill to
//! the first status of B's that says `acting` (polled every 10 ms). Prints
//! every run's figure, the median and the maximum. Target: under 3 s (two
//! 1 s checks, plus scheduling), checked on the maximum.
//!
//!     cargo bench --bench takeover
//!
//! `tests/ha.rs` checks that the takeover happens, and that there are never
//! two owners; this measures it. Run by `cargo test --benches` (no
//! `--bench` flag) it makes one run, without a verdict; without PostgreSQL
//! it says so and measures nothing.

#[allow(dead_code)]
#[path = "../tests/common/policy.rs"]
mod policy;
#[allow(dead_code)]
#[path = "../tests/common/process.rs"]
mod process;
#[path = "../tests/common/service.rs"]
mod service;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "takeover";
const RUNS: usize = 10;
const TARGET: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        return;
    }
    let full = args.iter().any(|a| a == "--bench");
    let runs = if full { RUNS } else { 1 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(measure(runs, full));
}

async fn measure(runs: usize, full: bool) {
    let base = std::env::var("ROLLWATCH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let admin = match sqlx::PgPool::connect(&base).await {
        Ok(admin) => admin,
        Err(error) => {
            println!("{NAME}: PostgreSQL unreachable at {base} ({error}), nothing measured");
            return;
        }
    };
    // A schema of its own, dropped at the end.
    let schema = format!("rw_bench_{:016x}", rand::random::<u64>());
    let create = format!("CREATE SCHEMA {schema}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(create))
        .execute(&admin)
        .await
        .expect("creating a schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    let db = format!("{base}{separator}options=-c%20search_path%3D{schema}");
    let takeovers = takeovers(&db, runs).await;
    let drop = format!("DROP SCHEMA {schema} CASCADE");
    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
        .execute(&admin)
        .await;
    admin.close().await;
    report(takeovers, full);
}

async fn takeovers(db: &str, runs: usize) -> Vec<Duration> {
    let service = service::TestService::start().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut takeovers = Vec::with_capacity(runs);
    for run in 0..runs {
        // Advisory locks are database-wide: a target of this run's own.
        let policy = dir.path().join(format!("run-{run}.toml"));
        write_policy(&policy, &service.url());
        let mut a = Replica::start(&policy, db);
        a.wait_for_mode("acting").await;
        let b = Replica::start(&policy, db);
        b.wait_for_mode("passive").await;
        a.kill9();
        let killed = Instant::now();
        b.wait_for_mode("acting").await;
        let takeover = killed.elapsed();
        println!(
            "  run {}: takeover {:.3} s",
            run + 1,
            takeover.as_secs_f64()
        );
        takeovers.push(takeover);
    }
    takeovers
}

fn report(mut takeovers: Vec<Duration>, full: bool) {
    let runs = takeovers.len();
    takeovers.sort();
    let median = takeovers[takeovers.len() / 2];
    let max = takeovers[takeovers.len() - 1];
    println!(
        "{NAME}: {runs} run(s), SIGKILL of the owner to `acting` on the standby (1 s checks): \
         median {:.3} s, min {:.3} s, max {:.3} s{}",
        median.as_secs_f64(),
        takeovers[0].as_secs_f64(),
        max.as_secs_f64(),
        match (full, max < TARGET) {
            (false, _) => String::new(),
            (true, true) => ": meets the 3 s target".to_string(),
            (true, false) => ": MISSES the 3 s target".to_string(),
        }
    );
}

fn write_policy(path: &Path, url: &str) {
    policy::Policy::stand_in(url)
        // Advisory locks are database-wide: a target nothing else uses.
        .environment(&format!("bench-{:08x}", rand::random::<u32>()))
        .step("rollback-app", "application", &["true"], "")
        .write(path);
}

struct Replica {
    child: Option<Child>,
    output: process::Lines,
    base: String,
}

impl Replica {
    fn start(policy: &Path, db: &str) -> Replica {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rollwatch"))
            .args(["run", "--listen", "127.0.0.1:0", "--db", db, "--policy"])
            .arg(policy)
            .env("RUST_LOG", "rollwatch=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting rollwatch run");
        let output: process::Lines = Arc::default();
        process::capture(&mut child, &output);
        let base = process::wait_for_listen_address(&output);
        Replica {
            child: Some(child),
            output,
            base,
        }
    }

    /// Waits (up to 60 s) until the replica's status says `want`.
    async fn wait_for_mode(&self, want: &str) {
        let client = rollwatch::sources::http::client().expect("an HTTP client");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mode = async {
                let status: serde_json::Value = client
                    .get(format!("{}/api/v1/status", self.base))
                    .timeout(Duration::from_millis(500))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                status["targets"][0]["mode"].as_str().map(str::to_string)
            };
            if mode.await.as_deref() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no `{want}` within 60 s:\n{}",
                process::text(&self.output)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}
