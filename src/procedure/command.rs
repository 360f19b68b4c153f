//! Runs one command the way vector's exec source does: an argv list (a shell
//! only when asked), its own process group, a timeout after which the whole
//! group is terminated (SIGTERM, then SIGKILL after a grace period), and
//! stdout/stderr captured with a cap that keeps the last bytes, so a command
//! that prints 100 MB costs a few kilobytes of memory.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// What every command gets of rollwatch's environment, when set.
pub const BASE_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// How much of each stream is kept: the last 64 KiB.
pub const OUTPUT_CAP: usize = 64 * 1024;
/// Between SIGTERM and SIGKILL to the process group on timeout.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long output is still read after the command exits (a backgrounded
/// grandchild may hold the pipe open).
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    /// Run `argv` joined as one `sh -c` string.
    pub shell: bool,
    pub timeout: Duration,
    /// Variables the command gets besides `BASE_ENV`: nothing else of
    /// rollwatch's own environment (its API token, SMTP password, database
    /// URL) reaches it.
    pub env: Vec<(String, String)>,
    /// Names of rollwatch's variables passed through as they are (the
    /// policy's `env = [...]`), looked up when the command starts.
    pub pass_env: Vec<String>,
    /// Once the command exits, end whatever it left running in its process
    /// group (checks: yes; a step that starts services: no).
    pub kill_group_on_exit: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal (not by rollwatch).
    Signalled(i32),
    /// Ran past its timeout; the process group was killed.
    TimedOut,
    /// Could not be started (missing executable, permissions).
    FailedToStart(String),
}

#[derive(Clone, Debug)]
pub struct CommandOutcome {
    pub ending: Ending,
    /// The last `OUTPUT_CAP` bytes of stdout, lossily decoded.
    pub stdout: String,
    pub stderr: String,
    /// Bytes dropped from the front of stdout and stderr.
    pub truncated_bytes: u64,
    pub duration: Duration,
}

impl CommandOutcome {
    pub fn succeeded(&self) -> bool {
        self.ending == Ending::Exited(0)
    }

    /// "exit 0", "exit 3", "killed by signal 9", "timed out after 30s", ...
    pub fn describe(&self, timeout: Duration) -> String {
        match &self.ending {
            Ending::Exited(code) => format!("exit {code}"),
            Ending::Signalled(signal) => format!("killed by signal {signal}"),
            Ending::TimedOut => format!(
                "timed out after {}s; its process group was killed",
                timeout.as_secs_f64()
            ),
            Ending::FailedToStart(why) => format!("could not start: {why}"),
        }
    }
}

pub async fn run(spec: &CommandSpec) -> CommandOutcome {
    run_reporting(spec, |_| {}).await
}

/// `run`, telling `spawned` the child's pid (its process group's id) as soon
/// as it is running: the step runner records it so that a rollwatch that finds
/// the runner gone can end the group.
pub async fn run_reporting(spec: &CommandSpec, spawned: impl FnOnce(u32)) -> CommandOutcome {
    let started = Instant::now();
    let mut command = if spec.shell {
        let mut c = Command::new("sh");
        c.arg("-c").arg(spec.argv.join(" "));
        c
    } else {
        let Some((program, args)) = spec.argv.split_first() else {
            return failed_to_start("empty command".into(), started);
        };
        let mut c = Command::new(program);
        c.args(args);
        c
    };
    command.env_clear();
    for name in BASE_ENV
        .iter()
        .copied()
        .chain(spec.pass_env.iter().map(String::as_str))
    {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let program = if spec.shell {
                "sh"
            } else {
                spec.argv[0].as_str()
            };
            return failed_to_start(format!("{program}: {error}"), started);
        }
    };
    let pid = child.id();
    if let Some(pid) = pid {
        spawned(pid);
    }
    let stdout = Capture::spawn(child.stdout.take());
    let stderr = Capture::spawn(child.stderr.take());
    let ending = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(Ok(status)) => {
            if spec.kill_group_on_exit {
                kill_group(pid, libc::SIGKILL);
            }
            ending_of(status)
        }
        Ok(Err(error)) => Ending::FailedToStart(format!("waiting for the command failed: {error}")),
        Err(_) => {
            kill_group(pid, libc::SIGTERM);
            if tokio::time::timeout(KILL_GRACE, child.wait())
                .await
                .is_err()
            {
                kill_group(pid, libc::SIGKILL);
                let _ = child.wait().await;
            }
            // Children that ignored SIGTERM go too.
            kill_group(pid, libc::SIGKILL);
            Ending::TimedOut
        }
    };
    let (out, out_dropped) = stdout.finish().await;
    let (err, err_dropped) = stderr.finish().await;
    CommandOutcome {
        ending,
        stdout: out,
        stderr: err,
        truncated_bytes: out_dropped + err_dropped,
        duration: started.elapsed(),
    }
}

fn failed_to_start(why: String, started: Instant) -> CommandOutcome {
    CommandOutcome {
        ending: Ending::FailedToStart(why),
        stdout: String::new(),
        stderr: String::new(),
        truncated_bytes: 0,
        duration: started.elapsed(),
    }
}

fn ending_of(status: std::process::ExitStatus) -> Ending {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(signal)) => Ending::Signalled(signal),
        (None, None) => Ending::Exited(-1),
    }
}

fn kill_group(pid: Option<u32>, signal: i32) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: killpg only sends a signal; the group id is the child's pid
        // because it was spawned with process_group(0).
        unsafe {
            libc::killpg(pid, signal);
        }
    }
}

/// One output stream being read in the background into a capped buffer that
/// stays readable even when the stream never closes.
struct Capture {
    buffer: Arc<Mutex<Captured>>,
    reader: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    dropped: u64,
}

impl Captured {
    /// Appends, keeping only the last `OUTPUT_CAP` bytes.
    fn push(&mut self, bytes: &[u8]) {
        self.kept.extend_from_slice(bytes);
        if self.kept.len() > OUTPUT_CAP {
            let excess = self.kept.len() - OUTPUT_CAP;
            self.kept.drain(..excess);
            self.dropped += excess as u64;
        }
    }
}

impl Capture {
    fn spawn(stream: Option<impl AsyncRead + Unpin + Send + 'static>) -> Capture {
        let buffer = Arc::new(Mutex::new(Captured::default()));
        let sink = Arc::clone(&buffer);
        let reader = tokio::spawn(async move {
            let Some(mut stream) = stream else { return };
            let mut chunk = vec![0u8; 16 * 1024];
            while let Ok(n) = stream.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .push(&chunk[..n]);
            }
        });
        Capture { buffer, reader }
    }

    /// Waits briefly for the end of the stream (a backgrounded grandchild may
    /// hold it open), stops reading, and returns what was kept.
    async fn finish(mut self) -> (String, u64) {
        if tokio::time::timeout(DRAIN_AFTER_EXIT, &mut self.reader)
            .await
            .is_err()
        {
            self.reader.abort();
        }
        let captured = self
            .buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        (
            String::from_utf8_lossy(&captured.kept).into_owned(),
            captured.dropped,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(argv: &[&str], timeout_ms: u64) -> CommandSpec {
        CommandSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            shell: false,
            timeout: Duration::from_millis(timeout_ms),
            env: vec![("ROLLWATCH_TEST".into(), "yes".into())],
            pass_env: Vec::new(),
            kill_group_on_exit: true,
        }
    }

    #[tokio::test]
    async fn exit_status_output_and_environment() {
        let outcome = run(&spec(
            &[
                "sh",
                "-c",
                "echo out; echo err >&2; echo $ROLLWATCH_TEST; exit 3",
            ],
            10_000,
        ))
        .await;
        assert_eq!(outcome.ending, Ending::Exited(3));
        assert_eq!(outcome.stdout, "out\nyes\n");
        assert_eq!(outcome.stderr, "err\n");
        assert!(!outcome.succeeded());
    }

    #[tokio::test]
    async fn argv_is_not_a_shell_string_unless_asked() {
        let outcome = run(&spec(&["echo", "$HOME; rm -rf /"], 10_000)).await;
        assert_eq!(outcome.stdout, "$HOME; rm -rf /\n");
        let mut shell = spec(&["echo", "a;", "echo", "b"], 10_000);
        shell.shell = true;
        assert_eq!(run(&shell).await.stdout, "a\nb\n");
    }

    #[tokio::test]
    async fn a_missing_executable_is_a_clear_failure() {
        let outcome = run(&spec(&["/nonexistent/rollback.sh"], 10_000)).await;
        match &outcome.ending {
            Ending::FailedToStart(why) => {
                assert!(why.contains("/nonexistent/rollback.sh"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_hung_command_is_killed_with_its_children_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
        let outcome = run(&spec(&["sh", "-c", &script], 300)).await;
        assert_eq!(outcome.ending, Ending::TimedOut);
        let child: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // The backgrounded grandchild got the signal too: it is gone (or a zombie)
        // as soon as the kernel has delivered it.
        let alive = || unsafe { libc::kill(child, 0) } == 0 && !is_zombie(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert!(!alive(), "grandchild {child} survived the timeout");
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    }

    #[tokio::test]
    async fn huge_output_keeps_only_the_last_64_kib() {
        let outcome = run(&spec(
            &[
                "sh",
                "-c",
                "head -c 10000000 /dev/zero | tr '\\0' a; echo END",
            ],
            30_000,
        ))
        .await;
        assert!(outcome.succeeded());
        assert_eq!(outcome.stdout.len(), OUTPUT_CAP);
        assert!(outcome.stdout.ends_with("aEND\n"));
        assert_eq!(outcome.truncated_bytes, 10_000_004 - OUTPUT_CAP as u64);
    }
}
