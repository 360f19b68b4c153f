//! The step runner: every procedure step runs under a small supervisor
//! process (the rollwatch binary re-executed as `rollwatch step-runner`) that
//! is not the run loop. It owns the step's process group, beats a heartbeat
//! into the store while the step runs, and records the step's end (exit
//! status, output tail) itself, so an end is never lost with the watchdog:
//! a `run` killed with `kill -9` (or a replica that lost its host's
//! watchdog process) leaves the runner going, and whoever takes the incident
//! up next waits for the recorded end while the heartbeat is fresh.
//!
//! Three sides:
//! - `run` (the procedure): spawns the runner for a stored step start,
//!   hands it the step on stdin (never on the command line, where `ps`
//!   shows it) and waits for its report;
//! - `serve` (the runner process): runs the step and records its end;
//! - `await_end` (a restarted rollwatch or a new owner): a step found
//!   `running` is waited for while its runner beats; only a step whose
//!   runner is gone without an end is `unknown`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::procedure::command::{self, CommandSpec, Ending};
use crate::store::{OpenOptions, StepEnd, StepOutcome, StepRecord, Store, StoreError};

/// How often a runner beats while its step runs.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// A heartbeat unchanged this long (as seen by the waiter's own clock) means
/// the runner is gone.
pub const STALE_AFTER: Duration = Duration::from_secs(5);
/// How long a runner keeps trying to record a step's end in a store that
/// does not answer.
const RECORD_FOR: Duration = Duration::from_secs(60);
/// Past the step's timeout, how long a waiter still allows for the runner to
/// kill the group and record the end.
const OVERDUE_GRACE: Duration = Duration::from_secs(15);
/// The largest report a runner prints (two 64 KiB output tails in JSON).
const REPORT_LIMIT: usize = 1024 * 1024;

/// What the procedure hands a runner on its stdin.
#[derive(Serialize, Deserialize)]
pub struct Request {
    /// The store's URL (with its credentials: on stdin only).
    pub db: String,
    pub step: i64,
    pub argv: Vec<String>,
    pub shell: bool,
    pub timeout_ms: u64,
    pub env: Vec<(String, String)>,
    pub pass_env: Vec<String>,
}

/// What a runner prints on stdout when the step has ended.
#[derive(Serialize, Deserialize, Debug)]
pub struct Report {
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub detail: String,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    pub ended_at: DateTime<Utc>,
    /// The end is in the store.
    pub recorded: bool,
    /// The step was never spawned (the runner could not reach the store, or
    /// the step was no longer `running` there).
    pub not_run: bool,
}

impl Report {
    fn end(&self) -> StepEnd {
        StepEnd {
            outcome: StepOutcome::parse(&self.outcome).unwrap_or(StepOutcome::Failed),
            exit_code: self.exit_code,
            detail: Some(self.detail.clone()),
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
            duration: Duration::from_millis(self.duration_ms),
            ended_at: self.ended_at,
        }
    }
}

/// The program a runner is started from: this very binary.
pub fn program() -> std::path::PathBuf {
    std::env::current_exe().unwrap_or_else(|_| "rollwatch".into())
}

/// `HOST:PID` of this process, as runners name themselves.
pub fn identity() -> String {
    format!("{}:{}", host(), std::process::id())
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// How a step run through a runner ended, for the procedure.
pub struct Ran {
    pub end: StepEnd,
    /// The runner stored the end itself.
    pub recorded: bool,
}

/// Runs stored step `step` under a runner process and returns its end. The
/// runner is started in a process group of its own and is not killed when
/// this future is dropped (a stopping rollwatch parks the procedure; the
/// runner finishes the step and records its end).
pub async fn run(store: &Store, step: i64, spec: &CommandSpec, program: &std::path::Path) -> Ran {
    let began = Instant::now();
    let request = Request {
        db: store.url().to_string(),
        step,
        argv: spec.argv.clone(),
        shell: spec.shell,
        timeout_ms: u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
        env: spec.env.clone(),
        pass_env: spec.pass_env.clone(),
    };
    let not_started = |why: String| Ran {
        end: StepEnd {
            outcome: StepOutcome::FailedToStart,
            exit_code: None,
            detail: Some(format!("the step runner could not be started: {why}")),
            stdout: String::new(),
            stderr: String::new(),
            duration: began.elapsed(),
            ended_at: Utc::now(),
        },
        recorded: false,
    };
    let mut child = match tokio::process::Command::new(program)
        .arg("step-runner")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0)
        .kill_on_drop(false)
        .spawn()
    {
        Ok(child) => child,
        Err(error) => return not_started(format!("{}: {error}", program.display())),
    };
    let Ok(request) = serde_json::to_vec(&request) else {
        return not_started("the request cannot be encoded".into());
    };
    if let Some(mut stdin) = child.stdin.take() {
        // The runner reads all of it before anything else; a failure here
        // leaves it with a short request, which it refuses without running.
        let _ = stdin.write_all(&request).await;
        let _ = stdin.shutdown().await;
    }
    let mut printed = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let _ = stdout
            .take(REPORT_LIMIT as u64)
            .read_to_end(&mut printed)
            .await;
    }
    let status = child.wait().await;
    match serde_json::from_slice::<Report>(&printed) {
        Ok(report) => Ran {
            end: report.end(),
            recorded: report.recorded,
        },
        Err(_) => {
            // The runner died without a report: the store may still have
            // its end (it records before it prints); otherwise the end is
            // unknown, and the waiter's rule applies.
            let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
            match store.step(step).await {
                Ok(Some(record)) if record.outcome != StepOutcome::Running => Ran {
                    end: end_of(&record),
                    recorded: true,
                },
                _ => Ran {
                    end: StepEnd {
                        outcome: StepOutcome::Unknown,
                        exit_code: None,
                        detail: Some(format!(
                            "the step runner ended ({status}) without reporting the step's end: it may or may not have run; it is not run again"
                        )),
                        stdout: String::new(),
                        stderr: String::new(),
                        duration: began.elapsed(),
                        ended_at: Utc::now(),
                    },
                    recorded: false,
                },
            }
        }
    }
}

fn end_of(record: &StepRecord) -> StepEnd {
    StepEnd {
        outcome: record.outcome,
        exit_code: record.exit_code,
        detail: record.detail.clone(),
        stdout: record.stdout.clone(),
        stderr: record.stderr.clone(),
        duration: record.duration.unwrap_or_default(),
        ended_at: record.ended_at.unwrap_or_else(Utc::now),
    }
}

/// `rollwatch step-runner`: reads a `Request` on stdin, runs the step,
/// records its end, prints a `Report`. Returns the process's exit code (0
/// once the end is recorded, 1 otherwise).
pub async fn serve() -> i32 {
    // A small request, written at once by the parent and closed: read before
    // anything else runs.
    let mut input = Vec::new();
    let read = std::io::Read::read_to_end(
        &mut std::io::Read::take(std::io::stdin(), REPORT_LIMIT as u64),
        &mut input,
    );
    let request = match read
        .map_err(|e| e.to_string())
        .and_then(|_| serde_json::from_slice::<Request>(&input).map_err(|e| e.to_string()))
    {
        Ok(request) => request,
        Err(error) => {
            eprintln!("rollwatch step-runner: unreadable request on stdin: {error}");
            return 2;
        }
    };
    // A SIGTERM meant for rollwatch's whole unit reaches the step too; the
    // runner stays to record how it ended. (Handlers, unlike an ignored
    // disposition, are not inherited by the step.)
    let _signals = ignore_termination();
    let report = supervise(&request).await;
    let code = i32::from(!report.recorded);
    if let Ok(mut line) = serde_json::to_vec(&report) {
        line.push(b'\n');
        let mut stdout = std::io::stdout().lock();
        // Nobody may be reading any more (rollwatch died): that is fine.
        let _ = std::io::Write::write_all(&mut stdout, &line);
        let _ = std::io::Write::flush(&mut stdout);
    }
    code
}

fn ignore_termination() -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    [
        SignalKind::terminate(),
        SignalKind::interrupt(),
        SignalKind::hangup(),
    ]
    .into_iter()
    .filter_map(|kind| signal(kind).ok())
    .map(|mut stream| tokio::spawn(async move { while stream.recv().await.is_some() {} }))
    .collect()
}

async fn supervise(request: &Request) -> Report {
    let began = Instant::now();
    let refuse = |detail: String| Report {
        outcome: StepOutcome::FailedToStart.as_str().to_string(),
        exit_code: None,
        detail,
        stdout: String::new(),
        stderr: String::new(),
        duration_ms: u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
        ended_at: Utc::now(),
        recorded: false,
        not_run: true,
    };
    let options = OpenOptions {
        max_connections: 2,
        ..OpenOptions::default()
    };
    let store = match Store::open_with(&request.db, &options).await {
        Ok(store) => store,
        Err(error) => {
            return refuse(format!(
                "the step runner cannot reach the database ({error}): the step was NOT run"
            ));
        }
    };
    let timeout = Duration::from_millis(request.timeout_ms);
    match store
        .step_runner_attached(request.step, &identity(), timeout, Utc::now())
        .await
    {
        Ok(()) => {}
        Err(StoreError::StepNotRunning(_)) => {
            return refuse(
                "the step is no longer running in the store (another rollwatch gave up on it): it was NOT run"
                    .to_string(),
            );
        }
        Err(error) => {
            return refuse(format!(
                "the step runner cannot record itself ({error}): the step was NOT run"
            ));
        }
    }
    let spec = CommandSpec {
        argv: request.argv.clone(),
        shell: request.shell,
        timeout,
        env: request.env.clone(),
        pass_env: request.pass_env.clone(),
        kill_group_on_exit: false,
    };
    let (pgid_tx, pgid_rx) = tokio::sync::watch::channel(None::<i32>);
    let beating = tokio::spawn(heartbeat(store.clone(), request.step, pgid_rx));
    let outcome = command::run_reporting(&spec, |pid| {
        let _ = pgid_tx.send(i32::try_from(pid).ok());
    })
    .await;
    beating.abort();
    let (result, exit_code) = match &outcome.ending {
        Ending::Exited(0) => (StepOutcome::Succeeded, Some(0)),
        Ending::Exited(code) => (StepOutcome::Failed, Some(*code)),
        Ending::Signalled(_) => (StepOutcome::Failed, None),
        Ending::TimedOut => (StepOutcome::TimedOut, None),
        Ending::FailedToStart(_) => (StepOutcome::FailedToStart, None),
    };
    let mut detail = outcome.describe(spec.timeout);
    if outcome.truncated_bytes > 0 {
        detail.push_str(&format!(
            "; output truncated: the first {} bytes were dropped",
            outcome.truncated_bytes
        ));
    }
    let end = StepEnd {
        outcome: result,
        exit_code,
        detail: Some(detail.clone()),
        stdout: outcome.stdout,
        stderr: outcome.stderr,
        duration: outcome.duration,
        ended_at: Utc::now(),
    };
    let recorded = record_end(&store, request.step, &end).await;
    store.close().await;
    Report {
        outcome: result.as_str().to_string(),
        exit_code,
        detail,
        stdout: end.stdout,
        stderr: end.stderr,
        duration_ms: u64::try_from(end.duration.as_millis()).unwrap_or(u64::MAX),
        ended_at: end.ended_at,
        recorded,
        not_run: false,
    }
}

async fn heartbeat(store: Store, step: i64, pgid: tokio::sync::watch::Receiver<Option<i32>>) {
    let mut ticks = tokio::time::interval(HEARTBEAT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let group = *pgid.borrow();
        if let Err(error) = store.step_heartbeat(step, Utc::now(), group).await {
            eprintln!("rollwatch step-runner: step {step}: cannot store the heartbeat: {error}");
        }
    }
}

/// A step's end is a fact: kept whoever started the step, retried while the
/// store does not answer.
async fn record_end(store: &Store, step: i64, end: &StepEnd) -> bool {
    let give_up = Instant::now() + RECORD_FOR;
    let mut pause = Duration::from_millis(200);
    loop {
        match store.step_finished(step, end).await {
            Ok(()) => return true,
            Err(StoreError::StepNotRunning(_)) => {
                // A waiter gave up on this runner and closed the step as
                // unknown: the real end is the better record.
                return store
                    .step_end_corrected(step, end)
                    .await
                    .inspect_err(|e| {
                        eprintln!("rollwatch step-runner: step {step}: cannot correct its end: {e}")
                    })
                    .is_ok();
            }
            Err(error) if Instant::now() < give_up => {
                eprintln!(
                    "rollwatch step-runner: step {step}: cannot record its end yet: {error}; retrying"
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(error) => {
                eprintln!(
                    "rollwatch step-runner: step {step}: its end ({}) could not be recorded: {error}",
                    end.outcome.as_str()
                );
                return false;
            }
        }
    }
}

/// How waiting for a step found running ended.
pub enum Awaited {
    /// Its end was recorded (by its runner, now or before).
    Ended(StepRecord),
    /// Its runner is gone without an end (or overran its timeout and was
    /// ended): the step is now stored `unknown`.
    Unknown(StepRecord),
}

/// A step found `running` by a restarted rollwatch or a new owner: waits
/// while its runner's heartbeat changes, bounded by the step's timeout; a
/// runner silent for `STALE_AFTER` is gone. A gone or overdue runner on this
/// host has its step's process group killed before the step is closed as
/// `unknown`, so nothing of it still runs when verification starts.
/// `progress` is told once what is being waited for.
pub async fn await_end(
    store: &Store,
    step: StepRecord,
    progress: impl Fn(&str),
) -> Result<Awaited, StoreError> {
    let mut current = step;
    let mut last_beat = (current.heartbeat_at, Instant::now());
    let mut told = false;
    loop {
        if current.outcome != StepOutcome::Running {
            return Ok(Awaited::Ended(current));
        }
        if current.heartbeat_at != last_beat.0 {
            last_beat = (current.heartbeat_at, Instant::now());
        }
        let silent = last_beat.1.elapsed() >= STALE_AFTER;
        let overdue = current.timeout.is_some_and(|timeout| {
            let bound = TimeDelta::from_std(timeout + OVERDUE_GRACE).unwrap_or(TimeDelta::MAX);
            Utc::now() - current.started_at > bound
        });
        if silent || overdue {
            let why = if overdue {
                "its runner did not record an end within the step's timeout"
            } else if current.runner.is_none() {
                "no runner ever took it up (rollwatch stopped right after storing its start)"
            } else {
                "its runner stopped beating without recording its end"
            };
            end_local_group(&current);
            let detail = format!(
                "{why}: it may or may not have run{}",
                current
                    .runner
                    .as_deref()
                    .map_or_else(String::new, |r| format!(" (runner {r})"))
            );
            return match store
                .mark_step_unknown(current.id, Utc::now(), &detail)
                .await
            {
                Ok(()) => Ok(Awaited::Unknown(
                    store.step(current.id).await?.unwrap_or(current),
                )),
                // Its end came in meanwhile.
                Err(StoreError::StepNotRunning(_)) => match store.step(current.id).await? {
                    Some(record) => Ok(Awaited::Ended(record)),
                    None => Ok(Awaited::Unknown(current)),
                },
                Err(error) => Err(error),
            };
        }
        if !told && current.runner.is_some() {
            told = true;
            progress(&format!(
                "step {} is still running under runner {}: waiting for its recorded end (verification never starts while a rollback step may run)",
                current.name,
                current.runner.as_deref().unwrap_or("?")
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        current = match store.step(current.id).await? {
            Some(record) => record,
            None => {
                return Err(StoreError::Invalid {
                    what: "step",
                    reason: format!("step {} vanished from the store", current.id),
                });
            }
        };
    }
}

/// On this host: ends what is left of a step whose runner is gone or overdue
/// (the runner first, so it cannot start anything more, then the group).
fn end_local_group(step: &StepRecord) {
    let Some(runner) = step.runner.as_deref() else {
        return;
    };
    let Some((runner_host, pid)) = runner.rsplit_once(':') else {
        return;
    };
    if runner_host != host() {
        return;
    }
    if let Ok(pid) = pid.parse::<i32>()
        && pid > 0
        && is_step_runner(pid)
    {
        // SAFETY: kill(2) only sends a signal to a pid we checked is a runner.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    if let Some(pgid) = step.step_pgid.filter(|p| *p > 1) {
        // SAFETY: killpg(2) only sends a signal; the group is the step's own.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// Whether `pid` is a live rollwatch step runner (pids are reused).
fn is_step_runner(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == b"step-runner"))
}
