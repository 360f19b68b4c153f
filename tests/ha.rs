//! Two `rollwatch run` replicas on the machine's real PostgreSQL: one owns
//! the target and acts, the other stays passive; kill -9 the owner during a
//! rollback and the other takes over and finishes the incident, the rollback
//! script having run once in total. Never two owners at once: the database's
//! advisory locks and both replicas' status are sampled continuously, across
//! the kill. How fast the takeover is, `benches/takeover.rs` measures.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use common::pg::Schema;
use common::service::TestService;
use rollwatch::store::{IncidentPhase, IncidentState, Store};

struct Replica {
    child: Option<Child>,
    output: common::process::Lines,
    base: String,
}

impl Replica {
    fn start(policy: &std::path::Path, db: &str) -> Replica {
        let mut child = Command::new(cargo_bin("rollwatch"))
            .args(["run", "--listen", "127.0.0.1:0", "--db", db, "--policy"])
            .arg(policy)
            .env("RUST_LOG", "rollwatch=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output: common::process::Lines = Arc::default();
        common::process::capture(&mut child, &output);
        let base = common::process::wait_for_listen_address(&output);
        Replica {
            child: Some(child),
            output,
            base,
        }
    }

    fn sigterm(&self) {
        if let Some(child) = &self.child {
            // SAFETY: a signal to the child this test started.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
    }

    /// Whether the process is still running.
    fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn output(&self) -> String {
        common::process::text(&self.output)
    }

    /// Waits (`within`) until the replica's mode for the target is `want`.
    async fn wait_for_mode(&self, want: &str, within: Duration, what: &str) {
        let deadline = Instant::now() + within;
        while mode(&self.base).await.as_deref() != Some(want) {
            assert!(Instant::now() < deadline, "{what}: {}", self.output());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The replica's mode for the target: "acting", "passive", or None (dead).
async fn mode(base: &str) -> Option<String> {
    let client = rollwatch::sources::http::client().ok()?;
    let response = client
        .get(format!("{base}/api/v1/status"))
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .ok()?;
    let status: serde_json::Value = response.json().await.ok()?;
    status["targets"][0]["mode"].as_str().map(str::to_string)
}

/// One look at who owns the target, from outside both replicas: which
/// replicas' leadership sessions hold an advisory lock in the database
/// (looked at before and after their status is read), and which say they
/// act.
#[derive(Clone, Debug)]
struct Ownership {
    at: Instant,
    holding_before: [bool; 2],
    acting: [bool; 2],
    holding_after: [bool; 2],
}

impl Ownership {
    /// What is wrong with this look, if anything: two replicas acting, two
    /// sessions holding the lock, or a replica acting without holding the
    /// lock (an owner the database does not know of, so that the next one
    /// to take the lock makes two). A replica that acts held its lock
    /// before it said so, and in this test never loses it while alive, so
    /// it holds it in one of the two looks around its status.
    fn violation(&self) -> Option<String> {
        let both = |held: [bool; 2]| held[0] && held[1];
        if both(self.acting) {
            return Some("both replicas act".into());
        }
        if both(self.holding_before) || both(self.holding_after) {
            return Some("both replicas' sessions hold the lock".into());
        }
        (0..2)
            .find(|&i| self.acting[i] && !self.holding_before[i] && !self.holding_after[i])
            .map(|i| format!("replica {} acts without holding the lock", ["A", "B"][i]))
    }
}

/// Samples ownership every 20 ms until stopped, from the database and both
/// replicas' status, through a kill: a dead replica's status is silent,
/// but not its session's locks.
struct OwnershipSampler {
    samples: Arc<std::sync::Mutex<Vec<Ownership>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl OwnershipSampler {
    async fn start(db: &str, replicas: [&Replica; 2]) -> OwnershipSampler {
        let admin = sqlx::PgPool::connect(db).await.unwrap();
        let pids = replicas.map(|r| r.child.as_ref().unwrap().id());
        let bases = replicas.map(|r| r.base.clone());
        let samples: Arc<std::sync::Mutex<Vec<Ownership>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (samples, stop) = (Arc::clone(&samples), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let holding_before = lock_holders(&admin, pids).await;
                    let (ma, mb) = tokio::join!(mode(&bases[0]), mode(&bases[1]));
                    let holding_after = lock_holders(&admin, pids).await;
                    samples.lock().unwrap().push(Ownership {
                        at: Instant::now(),
                        holding_before,
                        acting: [ma, mb].map(|m| m.as_deref() == Some("acting")),
                        holding_after,
                    });
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                admin.close().await;
            })
        };
        OwnershipSampler {
            samples,
            stop,
            task,
        }
    }

    fn count(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    /// Waits until `n` more samples than now have been taken.
    async fn wait_for_samples(&self, n: usize) {
        let until = self.count() + n;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count() < until {
            assert!(Instant::now() < deadline, "the sampler is stuck");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn assert_one_owner_at_a_time(&self) {
        assert_one_owner_at_a_time(&self.samples.lock().unwrap());
    }

    fn samples_since(&self, from: Instant) -> Vec<Ownership> {
        let samples = self.samples.lock().unwrap();
        samples.iter().filter(|s| s.at >= from).cloned().collect()
    }

    async fn stop(self) -> Vec<Ownership> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        Arc::try_unwrap(self.samples).unwrap().into_inner().unwrap()
    }
}

/// Panics at the first look that shows two owners.
fn assert_one_owner_at_a_time(samples: &[Ownership]) {
    if let Some((i, why)) = samples
        .iter()
        .enumerate()
        .find_map(|(i, s)| s.violation().map(|why| (i, why)))
    {
        panic!(
            "two owners at once: {why} (sample {i} of {}: {:?})",
            samples.len(),
            samples[i]
        );
    }
}

/// Which of the replicas `pids` hold an advisory lock on their leadership
/// sessions (named `rollwatch leadership ...:PID`).
async fn lock_holders(admin: &sqlx::PgPool, pids: [u32; 2]) -> [bool; 2] {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE l.locktype = 'advisory' AND l.granted \
         AND a.application_name LIKE 'rollwatch leadership %'",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    pids.map(|pid| {
        names
            .iter()
            .any(|n| n.rsplit(':').next() == Some(pid.to_string().as_str()))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_dies_during_a_rollback_and_the_other_replica_finishes_it_once() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (dir, service, policy) = rollback_setup().await;
    let (mut a, b) = owner_and_standby(&policy, &schema.url).await;
    // Never two owners: sampled all along, across the kill too.
    let sampler = OwnershipSampler::start(&schema.url, [&a, &b]).await;
    bad_deploy_rolled_back_by(&service, dir.path(), &a).await;
    let calls = dir.path().join("calls.log");
    sampler.wait_for_samples(3).await;
    a.kill9();
    let killed = Instant::now();
    std::fs::remove_file(dir.path().join("hold-rollback-app")).unwrap();
    // A hang guard only: how fast the takeover is, benches/takeover measures.
    b.wait_for_mode("acting", Duration::from_secs(30), "B takes over")
        .await;
    // Looks from before the kill to well after the takeover: the window in
    // which a second owner would show.
    sampler.wait_for_samples(50).await;
    sampler.assert_one_owner_at_a_time();
    let since_the_kill = sampler.samples_since(killed);
    assert!(
        since_the_kill
            .iter()
            .any(|s| s.acting[1] && s.holding_after[1]),
        "the sampler saw B take over: {since_the_kill:?}"
    );
    // B finishes the incident without running the rollback again.
    let store = Store::open(&schema.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let incident = loop {
        let incidents = store.list_incidents(5).await.unwrap();
        if let Some(done) = incidents.into_iter().find(|i| {
            matches!(i.state, IncidentState::Resolved { .. })
                || i.state
                    == IncidentState::Active {
                        phase: IncidentPhase::Escalated,
                    }
        }) {
            break done;
        }
        assert!(Instant::now() < deadline, "{}", b.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let samples = sampler.stop().await;
    let log = std::fs::read_to_string(&calls).unwrap();
    assert_eq!(
        log.lines().filter(|l| *l == "rollback-app").count(),
        1,
        "the rollback script ran once in total: {log}\n{}",
        b.output()
    );
    assert!(log.lines().any(|l| l == "smoke-tests"), "B verified: {log}");
    assert!(
        matches!(incident.state, IncidentState::Resolved { .. }),
        "{incident:#?}\n{}",
        b.output()
    );
    assert_one_owner_at_a_time(&samples);
    assert!(b.output().contains("taking up incident"), "{}", b.output());
    // A's rollback step outlived A under its runner: its real end is
    // recorded, and B verified only after it.
    let steps = store.steps(incident.id).await.unwrap();
    let app = steps.iter().find(|s| s.name == "rollback-app").unwrap();
    assert_eq!(
        app.outcome,
        rollwatch::store::StepOutcome::Succeeded,
        "{steps:#?}"
    );
    let smoke = steps.iter().find(|s| s.name == "smoke-tests").unwrap();
    assert!(smoke.started_at >= app.ended_at.unwrap(), "{steps:#?}");
    store.close().await;
}

/// A target's lock follows its policy file: a replica that stops watching a
/// target (its file removed) releases it, and the other replica, contending
/// all along, takes it; while one holds it the other never does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_target_is_released_to_the_replica_contending_for_it() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let interval = Duration::from_millis(300);
    let leader = |store| rollwatch::ha::Leader::start(store, interval, shutdown.clone());
    let a = leader(Store::open(&schema.url).await.unwrap());
    let b = leader(Store::open(&schema.url).await.unwrap());
    // Advisory locks are database-wide: a name no other test uses.
    let target = format!("web-{:016x}/production", rand::random::<u64>());
    let wait_for = async |owner: &tokio::sync::watch::Receiver<bool>, what: &str| {
        wait_for_owner(owner, true, Duration::from_secs(10), what).await;
    };
    let in_a = a.add(&target, interval, rollwatch::store::Fence::new(&target));
    wait_for(&in_a, "replica A takes the new target").await;
    let in_b = b.add(&target, interval, rollwatch::store::Fence::new(&target));
    for _ in 0..10 {
        tokio::time::sleep(interval / 3).await;
        assert!(*in_a.borrow() && !*in_b.borrow(), "one owner at a time");
    }
    wait_for_rounds(&b, 3, Duration::from_secs(10), "B keeps trying").await;
    assert!(*in_a.borrow() && !*in_b.borrow(), "one owner at a time");
    a.remove(&target);
    wait_for(&in_b, "replica B takes the released target").await;
    let again = a.add(&target, interval, rollwatch::store::Fence::new(&target));
    for _ in 0..10 {
        tokio::time::sleep(interval / 3).await;
        assert!(*in_b.borrow() && !*again.borrow(), "one owner at a time");
    }
    wait_for_rounds(&a, 3, Duration::from_secs(10), "A keeps trying").await;
    assert!(*in_b.borrow() && !*again.borrow(), "one owner at a time");
    shutdown.cancel();
}

/// A database restart ends every session, the passive replica's too: it must
/// notice (it holds no lock to lose, so nothing else tells it), reconnect
/// and take over when the owner is gone. Here the owner stops while the
/// database is down, and the passive replica takes the target once the
/// database is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_database_restart_the_passive_replica_still_takes_over() {
    let Some(cluster) = common::pg::Cluster::create() else {
        return;
    };
    cluster.start();
    let interval = Duration::from_millis(300);
    let (stop_a, stop_b) = (
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let open = async || Store::open(&cluster.url()).await.unwrap();
    let a = rollwatch::ha::Leader::start(open().await, interval, stop_a.clone());
    let b = rollwatch::ha::Leader::start(open().await, interval, stop_b.clone());
    let target = "web/production";
    let in_a = a.add(target, interval, rollwatch::store::Fence::new(target));
    wait_for_owner(&in_a, true, Duration::from_secs(15), "A takes the target").await;
    let in_b = b.add(target, interval, rollwatch::store::Fence::new(target));
    wait_for_rounds(&b, 3, Duration::from_secs(15), "B tries for the target").await;
    assert!(!*in_b.borrow(), "B stays passive while A owns the target");
    cluster.stop();
    wait_for_owner(
        &in_a,
        false,
        Duration::from_secs(15),
        "A stops acting when its session dies",
    )
    .await;
    stop_a.cancel();
    tokio::time::sleep(interval * 3).await;
    cluster.start();
    wait_for_owner(
        &in_b,
        true,
        Duration::from_secs(15),
        "B reconnects after the restart and takes the target",
    )
    .await;
    stop_b.cancel();
}

/// Waits until `leader` has completed `n` more rounds (its session answered
/// and it tried for every target it does not own): what it did not take in
/// them, it was refused, not slow to ask for.
async fn wait_for_rounds(leader: &rollwatch::ha::Leader, n: u64, within: Duration, what: &str) {
    let want = leader.rounds() + n;
    let deadline = Instant::now() + within;
    while leader.rounds() < want {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} rounds",
            n - (want - leader.rounds())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_owner(
    owner: &tokio::sync::watch::Receiver<bool>,
    want: bool,
    within: Duration,
    what: &str,
) {
    let deadline = Instant::now() + within;
    while *owner.borrow() != want {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A staging target on a stand-in service whose error rate the test sets:
/// rolled back by `rollback-app` (held while the file `hold-rollback-app`
/// exists, so the test decides when it ends), verified by `smoke-tests`;
/// every step's name is appended to `calls.log`.
async fn rollback_setup() -> (tempfile::TempDir, TestService, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("step.sh");
    common::process::write_script(
        &script,
        "#!/bin/sh\ndir=\"$(dirname \"$0\")\"\necho \"$1\" >> \"$dir/calls.log\"\nwhile [ -e \"$dir/hold-$1\" ]; do sleep 0.05; done\n",
    );
    std::fs::write(dir.path().join("hold-rollback-app"), "").unwrap();
    let service = TestService::start().await;
    let policy = dir.path().join("staging.toml");
    let script = script.to_str().unwrap();
    common::policy::Policy::stand_in(&service.url())
        // Advisory locks are database-wide: a target no other test uses.
        .environment(&format!("staging-{:08x}", rand::random::<u32>()))
        .stabilization("3s")
        .step(
            "rollback-app",
            "application",
            &[script, "rollback-app"],
            "timeout = \"30s\"",
        )
        .step("smoke-tests", "verification", &[script, "smoke-tests"], "")
        .write(&policy);
    (dir, service, policy)
}

/// Starts replica A, waits for it to own the target, then B, passive.
async fn owner_and_standby(policy: &std::path::Path, db: &str) -> (Replica, Replica) {
    let a = Replica::start(policy, db);
    a.wait_for_mode("acting", Duration::from_secs(20), "A owns the target")
        .await;
    let b = Replica::start(policy, db);
    b.wait_for_mode("passive", Duration::from_secs(20), "B is passive")
        .await;
    (a, b)
}

/// The bad deployment; the owner rolls back and its `rollback-app` runs
/// (held); the rollback lands: the service is healthy at v1 again. Returns
/// once both replicas have seen it land, so that a stabilization watch's
/// data is the healed service's even when the stand-in service, starved on
/// a loaded machine, counts missed traffic late.
async fn bad_deploy_rolled_back_by(service: &TestService, dir: &std::path::Path, owner: &Replica) {
    service.wait_for_scrapes(4).await;
    service.set(|k| {
        k.version = "v2.0.0".into();
        k.error_rate = 0.3;
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while calls(dir, "rollback-app") == 0 {
        assert!(Instant::now() < deadline, "{}", owner.output());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    service.set(|k| {
        k.version = "v1.0.0".into();
        k.error_rate = 0.002;
    });
    service.wait_for_scrapes(2).await;
}

/// How many times the step `name` was started.
fn calls(dir: &std::path::Path, name: &str) -> usize {
    std::fs::read_to_string(dir.join("calls.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == name)
        .count()
}

/// SIGTERM to the owner during a rollback step (a rolling update of the
/// sidecars): it lets the procedure finish before it exits and keeps the
/// target's lock until then, so the other replica stays passive all that
/// time and takes over only once the owner is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_owner_keeps_its_lock_until_its_procedure_has_finished() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (dir, service, policy) = rollback_setup().await;
    let (mut a, b) = owner_and_standby(&policy, &schema.url).await;
    bad_deploy_rolled_back_by(&service, dir.path(), &a).await;
    a.sigterm();
    // Three of B's polls with A still inside its step: B must not act.
    let polls = async || common::process::polls(&b.base).await.unwrap_or(0);
    let until = polls().await + 3;
    let deadline = Instant::now() + Duration::from_secs(30);
    while polls().await < until {
        assert!(Instant::now() < deadline, "B polls: {}", b.output());
        assert!(a.alive(), "A waits for its step: {}", a.output());
        assert_ne!(
            mode(&b.base).await.as_deref(),
            Some("acting"),
            "B took the target while A's step still ran: {}",
            b.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::remove_file(dir.path().join("hold-rollback-app")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.alive() {
        assert!(Instant::now() < deadline, "A exits: {}", a.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.wait_for_mode("acting", Duration::from_secs(10), "B takes over")
        .await;
    assert_eq!(calls(dir.path(), "rollback-app"), 1);
    assert_eq!(
        calls(dir.path(), "smoke-tests"),
        1,
        "A verified before it left"
    );
}

/// The owner's leadership session ends under it mid-procedure (a database
/// failover, a DBA, an idle-session killer) while it lives on: once its
/// running step returns it starts no further step (the other replica, frozen
/// meanwhile so that it cannot take over yet, would be the one to), and the
/// other replica, let go, takes the target and carries the procedure on from
/// its stored steps. Every step ran once in total.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_that_loses_its_lock_mid_procedure_starts_no_further_step() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (dir, service, policy) = rollback_setup().await;
    let (a, b) = owner_and_standby(&policy, &schema.url).await;
    bad_deploy_rolled_back_by(&service, dir.path(), &a).await;
    let b_pid = b.child.as_ref().unwrap().id() as i32;
    // SAFETY: signals to the child this test started.
    unsafe { libc::kill(b_pid, libc::SIGSTOP) };
    // A's leadership sessions are ended as soon as they start, until the
    // end of the test.
    let admin = sqlx::PgPool::connect(&schema.url).await.unwrap();
    let a_pid = a.child.as_ref().unwrap().id();
    let ender = tokio::spawn(async move {
        loop {
            sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name LIKE 'rollwatch leadership %:' || $1",
            )
            .bind(a_pid.to_string())
            .execute(&admin)
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.output().contains("leadership LOST") {
        assert!(
            Instant::now() < deadline,
            "A loses its lock: {}",
            a.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A's step returns; A must not go on to verification.
    std::fs::remove_file(dir.path().join("hold-rollback-app")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.output().contains("no longer owns") {
        assert!(Instant::now() < deadline, "A says it stops: {}", a.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls(dir.path(), "smoke-tests"), 0, "{}", a.output());
    // B, let go, takes over and verifies.
    unsafe { libc::kill(b_pid, libc::SIGCONT) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while calls(dir.path(), "smoke-tests") == 0 {
        assert!(Instant::now() < deadline, "B verifies: {}", b.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Both loops go on polling: neither runs a step again.
    for replica in [&a, &b] {
        common::process::wait_for_polls(&replica.base, 2, Duration::from_secs(30)).await;
    }
    ender.abort();
    assert_eq!(calls(dir.path(), "rollback-app"), 1, "{}", b.output());
    assert_eq!(calls(dir.path(), "smoke-tests"), 1, "{}", b.output());
    assert!(
        b.output().contains("step smoke-tests started"),
        "{}",
        b.output()
    );
    assert!(
        !a.output().contains("step smoke-tests started"),
        "{}",
        a.output()
    );
}

/// The lock session is one a dead host cannot keep: the server probes a
/// silent client after one check interval and gives up after two probes a
/// second apart, so the locks of a replica whose host lost power go within
/// about two intervals (not after the kernel's two-hour default). It is
/// named after its replica, and keeps the database URL's own options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_session_is_probed_and_named() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let store = Store::open(&schema.url).await.unwrap();
    let mut session = store
        .dedicated_connection(Duration::from_secs(15))
        .await
        .expect("PostgreSQL has lock sessions")
        .unwrap();
    let setting = async |session: &mut sqlx::PgConnection, name: &str| -> String {
        sqlx::query_scalar("SELECT setting FROM pg_settings WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *session)
            .await
            .unwrap()
    };
    assert_eq!(setting(&mut session, "tcp_keepalives_idle").await, "15");
    assert_eq!(setting(&mut session, "tcp_keepalives_interval").await, "1");
    assert_eq!(setting(&mut session, "tcp_keepalives_count").await, "2");
    assert_eq!(setting(&mut session, "tcp_user_timeout").await, "17000");
    let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert!(
        name.starts_with("rollwatch leadership ")
            && name.ends_with(&format!(":{}", std::process::id())),
        "{name}"
    );
    let search_path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut session)
        .await
        .unwrap();
    assert!(search_path.contains("rw_test_"), "{search_path}");
    store.close().await;
}

/// A policy edit that shortens a target's interval shortens the ownership
/// checks with it: the standby, checking every 30 s, then every 300 ms,
/// takes the target within a second or so of the owner going, not half a
/// minute later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_interval_after_a_reload_shortens_the_takeover() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let slow = Duration::from_secs(30);
    let (stop_a, stop_b) = (
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let open = async || Store::open(&schema.url).await.unwrap();
    let a = rollwatch::ha::Leader::start(open().await, slow, stop_a.clone());
    let b = rollwatch::ha::Leader::start(open().await, slow, stop_b.clone());
    let target = format!("web-{:016x}/production", rand::random::<u64>());
    let in_a = a.add(&target, slow, rollwatch::store::Fence::new(&target));
    wait_for_owner(&in_a, true, Duration::from_secs(15), "A takes the target").await;
    let in_b = b.add(&target, slow, rollwatch::store::Fence::new(&target));
    // A new target is tried at once: one round, refused.
    wait_for_rounds(&b, 1, Duration::from_secs(15), "B tries for the target").await;
    assert!(!*in_b.borrow(), "B stays passive while A owns the target");
    b.set_interval(&target, Duration::from_millis(300));
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_a.cancel();
    let gone = Instant::now();
    let deadline = gone + Duration::from_secs(5);
    while !*in_b.borrow() {
        assert!(
            Instant::now() < deadline,
            "B takes over at its new 300 ms interval"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("takeover after {:.2}s", gone.elapsed().as_secs_f64());
    stop_b.cancel();
}

/// Fencing: the owner stalls (SIGSTOP) in the middle of its rollback step and
/// its leadership session is ended under it (a failover, the server's
/// keepalive); the other replica takes the target over (raising its epoch),
/// waits for the step's end that the step's runner records, verifies and
/// resolves. Then the stalled owner thaws (SIGCONT): it starts nothing and
/// writes nothing, whether its own check or the epoch stops it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_owner_that_thaws_starts_nothing_and_writes_nothing() {
    let Some(schema) = Schema::create().await else {
        return;
    };
    let (dir, service, policy) = rollback_setup().await;
    let (a, b) = owner_and_standby(&policy, &schema.url).await;
    bad_deploy_rolled_back_by(&service, dir.path(), &a).await;
    let a_pid = a.child.as_ref().unwrap().id() as i32;
    // SAFETY: signals to the child this test started.
    unsafe { libc::kill(a_pid, libc::SIGSTOP) };
    let admin = sqlx::PgPool::connect(&schema.url).await.unwrap();
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name LIKE 'rollwatch leadership %:' || $1",
    )
    .bind(a_pid.to_string())
    .execute(&admin)
    .await
    .unwrap();
    b.wait_for_mode("acting", Duration::from_secs(20), "B takes over")
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !b.output().contains("waiting for its recorded end") {
        assert!(
            Instant::now() < deadline,
            "B waits for the running step: {}",
            b.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(calls(dir.path(), "smoke-tests"), 0, "{}", b.output());
    std::fs::remove_file(dir.path().join("hold-rollback-app")).unwrap();
    let store = Store::open(&schema.url).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    let incident = loop {
        if let Some(done) = store
            .list_incidents(5)
            .await
            .unwrap()
            .into_iter()
            .find(|i| matches!(i.state, IncidentState::Resolved { .. }))
        {
            break done;
        }
        assert!(Instant::now() < deadline, "{}", b.output());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let snapshot = |timeline: rollwatch::store::IncidentTimeline| {
        (
            timeline.steps.len(),
            timeline.decisions.len(),
            timeline.notifications.len(),
            timeline.incident.state,
        )
    };
    let before = snapshot(store.incident(incident.id).await.unwrap().unwrap());
    let incidents_before = store.list_incidents(100).await.unwrap().len();
    unsafe { libc::kill(a_pid, libc::SIGCONT) };
    // A runs again: its leadership check finds the session gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.output().contains("leadership LOST") {
        assert!(Instant::now() < deadline, "A thaws: {}", a.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and its procedure, which was waiting on the step's runner, has
    // returned: stopped by the check or by the epoch.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(a.output().contains("no longer owns") || a.output().contains("FENCED")) {
        assert!(
            Instant::now() < deadline,
            "A's procedure stops: {}",
            a.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = snapshot(store.incident(incident.id).await.unwrap().unwrap());
    assert_eq!(before, after, "A wrote nothing: {}", a.output());
    assert_eq!(
        store.list_incidents(100).await.unwrap().len(),
        incidents_before
    );
    assert_eq!(calls(dir.path(), "rollback-app"), 1);
    assert_eq!(calls(dir.path(), "smoke-tests"), 1, "{}", a.output());
    assert!(
        !a.output().contains("step smoke-tests started"),
        "{}",
        a.output()
    );
    store.close().await;
    admin.close().await;
}
