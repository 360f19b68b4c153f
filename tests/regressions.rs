//! Regression tests for the bugs an SRE review found: each test failed on the
//! code as reviewed, and its name says what must hold now. They drive only the
//! public API (policy::from_bytes, engine::Engine, the poller, the command runner).

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use rollwatch::engine::Engine;
use rollwatch::engine::decision::{Cause, Decision, Guard};
use rollwatch::engine::input::{Event, LatencyQuantiles, Observation};
use rollwatch::engine::policy::{Action, Tier};

const PRODUCTION: &str = include_str!("../policies/production.toml");
const STAGING: &str = include_str!("../policies/staging.toml");

fn start() -> DateTime<Utc> {
    "2026-11-24T10:00:00Z".parse().unwrap()
}

/// A simulated target on a simulated clock, driven in the engine's documented
/// calling order (the same helper as `src/engine/tests.rs`, on the public API).
struct Sim {
    engine: Engine,
    now: DateTime<Utc>,
    decisions: Vec<Decision>,
    /// Report rollbacks as finished at once (like backtest) unless false.
    finish_rollbacks: bool,
    version: String,
}

impl Sim {
    fn new(policy_text: &str) -> Sim {
        let policy =
            rollwatch::policy::from_bytes("policy.toml", policy_text.as_bytes(), |_| None).unwrap();
        Sim {
            engine: Engine::new(Arc::new(policy)),
            now: start(),
            decisions: Vec::new(),
            finish_rollbacks: true,
            version: "v1".into(),
        }
    }

    fn healthy_observation(&self) -> Observation {
        Observation {
            at: self.now,
            up: Some(true),
            requests: Some(1200.0),
            errors: Some(6.0),
            latency_ms: LatencyQuantiles {
                p50: Some(80.0),
                p90: Some(150.0),
                p95: Some(200.0),
                p99: Some(400.0),
            },
            users: Some(900.0),
            users_affected: Some(4.0),
            checks: vec![
                ("data_integrity".into(), true),
                ("critical_features".into(), true),
            ],
            version: Some(self.version.clone()),
        }
    }

    fn wake_until(&mut self, at: DateTime<Utc>) {
        while let Some(deadline) = self.engine.poll_timeout().filter(|d| *d <= at) {
            self.engine.handle_timeout(deadline).unwrap();
            self.drain();
        }
    }

    fn drain(&mut self) {
        while let Some(decision) = self.engine.poll_decision() {
            if decision.action == Action::Rollback && self.finish_rollbacks {
                self.engine
                    .handle_rollback_finished(decision.at, decision.incident.unwrap(), Ok(()))
                    .unwrap();
            }
            self.decisions.push(decision);
        }
    }

    /// One poll with `change` applied to a healthy observation, then 15 s pass.
    fn poll(&mut self, change: impl Fn(&mut Observation)) {
        self.wake_until(self.now);
        let mut observation = self.healthy_observation();
        change(&mut observation);
        self.engine.handle_observation(&observation).unwrap();
        self.drain();
        self.now += TimeDelta::seconds(15);
    }

    fn polls(&mut self, n: usize, change: impl Fn(&mut Observation)) {
        for _ in 0..n {
            self.poll(&change);
        }
    }

    fn healthy(&mut self, n: usize) {
        self.polls(n, |_| {});
    }

    fn event(&mut self, event: Event) {
        self.wake_until(self.now);
        if let Event::Deploy {
            version: Some(v), ..
        } = &event
        {
            self.version = v.clone();
        }
        self.engine.handle_event(self.now, event).unwrap();
        self.drain();
    }

    fn deploy(&mut self, version: &str) {
        let previous = Some(self.version.clone());
        self.event(Event::Deploy {
            version: Some(version.into()),
            previous,
            migrations: vec![],
        });
    }

    fn no_data(&mut self, n: usize) {
        for _ in 0..n {
            self.wake_until(self.now);
            self.engine
                .handle_no_data(self.now, "connection refused")
                .unwrap();
            self.drain();
            self.now += TimeDelta::seconds(15);
        }
    }

    /// (seconds from start, action, rule, guard) of every decision so far.
    fn log(&self) -> Vec<(i64, Action, String, Option<Guard>)> {
        self.decisions
            .iter()
            .map(|d| {
                (
                    (d.at - start()).num_seconds(),
                    d.action,
                    d.rule.clone(),
                    d.guard.clone(),
                )
            })
            .collect()
    }

    fn rollbacks(&self) -> Vec<&Decision> {
        self.decisions
            .iter()
            .filter(|d| d.action == Action::Rollback)
            .collect()
    }
}

fn errors(rate: f64) -> impl Fn(&mut Observation) {
    move |o| o.errors = Some(1200.0 * rate)
}

/// 30 min healthy, so the pre-deploy baseline exists, then a deploy of v2 at 1800 s.
fn deployed(policy: &str) -> Sim {
    let mut sim = Sim::new(policy);
    sim.healthy(120);
    sim.deploy("v2");
    sim
}

// ---------------------------------------------------------------------------
// 1. Wrong decisions
// ---------------------------------------------------------------------------

/// SPEC 3: "A known-issue suppression turns that rule's firing into a log line."
/// On-call is paged for error-rate, recognises a known issue and suppresses the
/// rule well before the page-then-rollback deadline. `deadline_passed` filters
/// on the `suppressed` flag, which is only set when a rule *fires* under an
/// active suppression, so the rollback goes ahead at the deadline anyway.
#[test]
fn regression_suppression_added_after_the_page_stops_the_rollback_at_the_deadline() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(10, errors(0.15)); // fires at 1935: page-then-rollback, deadline 2535
    assert_eq!(sim.decisions[0].action, Action::PageThenRollback);
    let until = sim.now + TimeDelta::hours(2);
    sim.event(Event::Suppress {
        rule: "error-rate".into(),
        until,
        reason: "known retry storm, fix in review".into(),
    });
    sim.polls(50, errors(0.15)); // well past the 2535 deadline
    assert!(
        sim.rollbacks().is_empty(),
        "a suppressed rule rolled back at the deadline: {:?}",
        sim.log()
    );
}

/// "One bad interval is a blip", but a single failed health probe 20 min before
/// a deploy marks `system-down` as preexisting for the whole epoch
/// (`last_breach_at` is set by any one unhealthy reading). When the new version
/// then takes the system completely down, the immediate tier pages instead of
/// rolling back.
#[test]
fn regression_one_failed_probe_before_the_deploy_does_not_block_the_rollback() {
    let mut sim = Sim::new(STAGING);
    sim.healthy(40);
    sim.poll(|o| o.up = Some(false)); // a blip at 600 s: never fired
    sim.healthy(79);
    sim.deploy("v2"); // 1800 s
    sim.polls(20, |o| o.up = Some(false)); // v2 is completely down
    assert_eq!(
        sim.rollbacks().len(),
        1,
        "system completely down after a deploy was not rolled back: {:?}",
        sim.log()
    );
}

/// SPEC 3: a rule must hold for its `for` time over consecutive observations.
/// An inconclusive reading keeps `breach_since`, and the time it covers counts
/// toward `for` without bound: one failed probe, an hour with no probe result,
/// then one more failed probe fires `system-down` (for = 1m) and rolls back.
#[test]
fn regression_two_failed_probes_an_hour_apart_do_not_make_one_minute_down() {
    let mut sim = deployed(STAGING);
    sim.healthy(4);
    sim.poll(|o| o.up = Some(false));
    sim.polls(240, |o| o.up = None); // an hour without a probe result
    sim.poll(|o| o.up = Some(false));
    assert!(
        sim.rollbacks().is_empty(),
        "two failed probes an hour apart fired a 1m rule: {:?}",
        sim.log()
    );
}

/// SPEC 3: a metrics outage after a deploy is no data and must page "watchdog
/// blind". With a `[health]` probe configured (as `policies/examples/scrape.toml`
/// does) the poller turns every failed scrape into an observation carrying only
/// `up` (poll.rs: `source_failed && !has_anything`), and `Sample::has_data`
/// counts `up` as data, so the blind page never comes while error rate, latency
/// and users are unjudgeable.
#[test]
fn regression_a_metrics_outage_with_a_healthy_probe_pages_blind() {
    let mut sim = deployed(PRODUCTION);
    // What poll.rs hands the engine when /metrics fails and /healthz answers 200.
    for _ in 0..40 {
        sim.wake_until(sim.now);
        let observation = Observation {
            up: Some(true),
            ..Observation::new(sim.now)
        };
        sim.engine.handle_observation(&observation).unwrap();
        sim.drain();
        sim.now += TimeDelta::seconds(15);
    }
    assert!(
        sim.decisions.iter().any(|d| d.cause == Cause::Blind),
        "10 min without metrics after a deploy and no blind page: {:?}",
        sim.log()
    );
}

/// SPEC 3: "never a rollback of a rollback". On-call rolls back by hand (the
/// runbook's script) while the page is open: the version goes back to v1, and
/// `deployed()` records that as an ordinary forward deployment (rollback: false).
/// When v1 then fails its data-integrity check against v2's migrated schema,
/// rollwatch "rolls back" v1 -> v2, to the version the human just removed.
#[test]
fn regression_a_manual_rollback_is_never_rolled_forward() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(10, errors(0.15)); // page-then-rollback at 1935
    sim.version = "v1".into(); // on-call ran rollback-production.sh
    sim.healthy(4);
    sim.polls(10, |o| {
        o.checks = vec![
            ("data_integrity".into(), false),
            ("critical_features".into(), true),
        ]
    });
    let forward: Vec<_> = sim
        .rollbacks()
        .into_iter()
        .filter(|d| d.to_version.as_deref() == Some("v2"))
        .map(|d| (d.from_version.clone(), d.to_version.clone(), d.rule.clone()))
        .collect();
    assert!(
        forward.is_empty(),
        "rolled a manual rollback forward to the bad version: {forward:?}"
    );
}

/// Live, a rollback procedure runs for minutes and the scraped build_info shows
/// the target version before `handle_rollback_finished` arrives. `deployed()`
/// treats that as a new forward deployment and recomputes the latency baseline
/// from the 30 min before it, which by then is mostly the bad version. The
/// stabilization watch then judges the unchanged +150 % latency against that
/// polluted baseline and reports "stable" instead of escalating.
#[test]
fn regression_our_rollback_landing_early_keeps_the_baseline_and_the_watch_escalates() {
    let slow = |o: &mut Observation| o.latency_ms.p95 = Some(500.0);
    let mut sim = deployed(PRODUCTION);
    sim.finish_rollbacks = false;
    sim.polls(66, slow); // fires at 2160, deadline 2760: rollback decided
    let rollback = sim.rollbacks()[0].clone();
    sim.version = "v1".into(); // the procedure has deployed v1; smoke tests still running
    sim.polls(4, slow);
    sim.engine
        .handle_rollback_finished(sim.now, rollback.incident.unwrap(), Ok(()))
        .unwrap();
    sim.drain();
    sim.polls(70, slow); // the rollback did not help: latency is still +150 %
    let after: Vec<_> = sim
        .decisions
        .iter()
        .filter(|d| matches!(d.cause, Cause::Stable | Cause::WatchFailed))
        .map(|d| d.cause)
        .collect();
    assert_eq!(
        after,
        [Cause::WatchFailed],
        "baseline after the early landing: {:?}; {:?}",
        sim.engine.baseline(),
        sim.log()
    );
}

/// A rolling deploy: v2 is announced at 1800 and serves errors at once, but the
/// scraped build_info still says v1 for the first polls. Each observed version
/// change is a new deployment, so v1 "is deployed" at 1800 and v2 again at
/// 1845; the errors seen in between count as a breach *before* v2, v2's
/// regression is marked preexisting, and staging pages instead of rolling back.
#[test]
fn regression_old_version_seen_during_a_rollout_is_not_a_deployment() {
    let mut sim = deployed(STAGING);
    sim.version = "v1".into(); // build_info not yet updated
    sim.polls(3, errors(0.15));
    sim.version = "v2".into();
    sim.polls(20, errors(0.15));
    assert_eq!(
        sim.rollbacks().len(),
        1,
        "v2's regression was not rolled back: {:?}",
        sim.log()
    );
}

/// A human declares a consider-tier incident in production (something the
/// metrics cannot see). The page says "rolling back at T unless acknowledged or
/// held", but `maintain_incident` only looks at metric rules: with every rule
/// clear it resolves the declared incident after `resolve_after` (5 min),
/// silently dropping the announced deadline. (Had it survived, `deadline_passed`
/// would also not roll back: it only looks for firing rules.)
#[test]
fn regression_a_declared_consider_incident_rolls_back_at_its_deadline() {
    let mut sim = deployed(PRODUCTION);
    sim.healthy(4);
    sim.event(Event::Declare {
        tier: Tier::Consider,
        reason: "checkout broken for EU customers".into(),
        component: None,
    });
    assert_eq!(sim.decisions[0].action, Action::PageThenRollback);
    let deadline = sim.decisions[0].deadline.expect("a deadline");
    sim.healthy(50); // nobody answers; metrics cannot see the problem
    assert!(
        sim.rollbacks().iter().any(|d| d.at == deadline),
        "the rollback announced for {deadline} did not happen: {:?}",
        sim.log()
    );
}

/// SPEC 3: "sustained no-data after a deploy pages a human but never rolls
/// back". After a page-then-rollback, the metrics source dies; `deadline_passed`
/// trusts the `firing` flag from readings up to 10 minutes old and rolls back
/// without any current evidence.
#[test]
fn regression_the_deadline_never_rolls_back_on_stale_evidence() {
    let mut sim = deployed(PRODUCTION);
    sim.polls(10, errors(0.15)); // page-then-rollback at 1935, deadline 2535
    sim.no_data(60); // Prometheus down from 1950 to 2850
    assert!(
        sim.rollbacks().is_empty(),
        "rolled back after 10 min without data: {:?}",
        sim.log()
    );
}

// ---------------------------------------------------------------------------
// 2. Panics and leaks on bad input
// ---------------------------------------------------------------------------

/// A scraped exposition with a backslash before a multi-byte character in a
/// label value panics the parser (`&text[i..i + 2]` splits the character).
/// In `run`, the panic kills that target's task; the JoinSet is not looked at
/// until shutdown, so the target silently stops being watched.
#[test]
fn regression_backslash_before_a_multibyte_character_does_not_panic_the_parser() {
    let body = "http_requests_total{code=\"200\",path=\"/caf\\é\"} 12\n";
    let result = std::panic::catch_unwind(|| {
        rollwatch::sources::exposition::parse(
            body,
            rollwatch::sources::exposition::Format::Prometheus,
        )
    });
    let exposition = result.expect("the exposition parser panicked on a garbage label value");
    assert_eq!(exposition.samples.len() + exposition.errors.len(), 1);
}

/// `MAX_CHECKS` (64) is documented but never enforced by the compiler; a policy
/// with 65 named checks compiles, and the 65th shifts `1u64 << 64`: a panic in
/// debug builds, and in release the bit wraps onto check 0, so check 64 failing
/// reads as check 0 failing.
#[test]
fn regression_more_than_64_checks_are_refused_by_the_compiler() {
    let mut text = String::from("[target]\nservice = \"web\"\nenvironment = \"production\"\n");
    for i in 0..65 {
        text.push_str(&format!(
            "[[rule]]\nname = \"c{i}\"\ntier = \"consider\"\nsignal = \"check\"\ncheck = \"c{i}\"\n"
        ));
    }
    let errors = rollwatch::policy::from_bytes("many.toml", text.as_bytes(), |_| None).unwrap_err();
    assert!(
        errors.to_string().contains("more than 64 named checks"),
        "{errors}"
    );
}

/// Durations are checked for being positive, never for an upper bound.
/// `for = "100000000d"` compiles and the first observation panics in
/// `DateTime - TimeDelta` (History::push / window).
#[test]
fn regression_an_absurd_duration_is_refused_by_the_compiler() {
    let text = r#"
[target]
service = "web"
environment = "production"
[[rule]]
name = "system-down"
tier = "immediate"
signal = "down"
for = "100000000d"
"#;
    let errors = rollwatch::policy::from_bytes("huge.toml", text.as_bytes(), |_| None).unwrap_err();
    assert!(
        errors
            .to_string()
            .contains("huge.toml:9:7: duration \"100000000d\" is longer than 366d"),
        "{errors}"
    );
}

// ---------------------------------------------------------------------------
// 3. Live path
// ---------------------------------------------------------------------------

/// Serves every connection on a loopback port with `response`, forever.
async fn serve_fixed(response: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let response = response.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let _ = socket.write_all(&response).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{address}")
}

fn health_only_target(url: &str) -> rollwatch::policy::Compiled {
    let text = format!(
        r#"[target]
service = "web"
environment = "production"
[health]
url = "{url}/healthz"
timeout = "2s"
[[rule]]
name = "system-down"
tier = "immediate"
signal = "down"
for = "1m"
"#
    );
    rollwatch::policy::compile_bytes("health.toml", text.as_bytes(), |_| None).unwrap()
}

async fn probe_up(body: &[u8]) -> Option<bool> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(body);
    let url = serve_fixed(response).await;
    let target = health_only_target(&url);
    let mut poller =
        rollwatch::runtime::poll::Poller::new(&target, std::time::Duration::from_secs(15)).unwrap();
    match poller.poll(Utc::now()).await.item {
        rollwatch::trace::TraceItem::Observation(o) => o.up,
        _ => None,
    }
}

/// The health endpoint answers 200 with a verbose body (> 64 KiB). The status
/// was fine, yet `probe_health` returns an error and `Poller::poll` maps every
/// health error to `up = false` (the comment above it says "say nothing"):
/// four polls later `system-down` rolls a healthy deployment back.
#[tokio::test]
async fn regression_a_200_health_answer_with_a_large_body_is_up() {
    let body = vec![b' '; 100 * 1024];
    assert_ne!(
        probe_up(&body).await,
        Some(false),
        "a 200 from /healthz was reported as down"
    );
}

/// Same for a 200 whose body is not UTF-8 (a binary or compressed health page).
#[tokio::test]
async fn regression_a_200_health_answer_with_a_binary_body_is_up() {
    assert_ne!(
        probe_up(&[0xff, 0xfe, 0x00, 0x80]).await,
        Some(false),
        "a 200 from /healthz was reported as down"
    );
}

/// A check that starts a background helper and exits 0: `run` returns after
/// the 500 ms drain timeout with the output lost, the helper survives (the
/// process group is killed only on timeout) and the reader task stays parked
/// on the pipe. Checks run every poll, so processes and tasks pile up.
#[tokio::test]
async fn regression_a_check_that_backgrounds_a_child_leaves_nothing_running_and_keeps_its_output() {
    use rollwatch::procedure::command::{CommandSpec, run};
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let spec = CommandSpec {
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!("sleep 300 & echo $! > {}; echo checked", pid_file.display()),
        ],
        shell: false,
        timeout: std::time::Duration::from_secs(10),
        env: Vec::new(),
        kill_group_on_exit: true,
    };
    let outcome = run(&spec).await;
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: signal 0 only checks that the process exists. A killed child
    // whose parent has gone may linger as a zombie until reaped: that is dead.
    let zombie = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let is_alive = || unsafe { libc::kill(pid, 0) } == 0 && !zombie();
    while is_alive() && std::time::Instant::now() < deadline {
        std::thread::yield_now();
    }
    let alive = is_alive();
    if alive {
        // Clean up the process this test started.
        // SAFETY: sends SIGKILL to the one pid written by the test's own command.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    assert!(outcome.succeeded());
    assert!(
        !alive && outcome.stdout.contains("checked"),
        "background child alive: {alive}; stdout: {:?}",
        outcome.stdout
    );
}

// ---------------------------------------------------------------------------
// Policy validation
// ---------------------------------------------------------------------------

/// A typo in a `[[check]]` name leaves the rule's check without a command: the
/// check result never arrives, the rule is inconclusive forever and
/// `data-corruption` silently never fires. The compiler accepts it.
#[test]
fn regression_a_rule_naming_a_check_without_a_command_is_refused() {
    let text = r#"
[target]
service = "web"
environment = "production"
[[check]]
name = "data_integirty"
command = ["./bin/check-data-integrity"]
[[rule]]
name = "data-corruption"
tier = "immediate"
signal = "check"
check = "data_integrity"
for = "30s"
"#;
    let result = rollwatch::policy::from_bytes("typo.toml", text.as_bytes(), |_| None);
    assert!(
        result.is_err(),
        "a rule whose check has no [[check]] command compiled"
    );
}
