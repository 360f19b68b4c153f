//! Runs one command the way vector's exec source does: an argv list (a shell
//! only when asked), its own process group, a timeout after which the whole
//! group is terminated (SIGTERM, then SIGKILL after a grace period), and
//! stdout/stderr captured with a cap that keeps the last bytes, so a command
//! that prints 100 MB costs a few kilobytes of memory.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

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
    pub env: Vec<(String, String)>,
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
    let stdout = tokio::spawn(read_capped(child.stdout.take()));
    let stderr = tokio::spawn(read_capped(child.stderr.take()));
    let ending = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(Ok(status)) => ending_of(status),
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
    let (out, out_dropped) = drain(stdout).await;
    let (err, err_dropped) = drain(stderr).await;
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

async fn drain(task: tokio::task::JoinHandle<(Vec<u8>, u64)>) -> (String, u64) {
    match tokio::time::timeout(DRAIN_AFTER_EXIT, task).await {
        Ok(Ok((bytes, dropped))) => (String::from_utf8_lossy(&bytes).into_owned(), dropped),
        // Still held open by a backgrounded grandchild, or the reader panicked.
        _ => (String::new(), 0),
    }
}

/// Reads a stream to its end, keeping only the last `OUTPUT_CAP` bytes.
async fn read_capped(stream: Option<impl AsyncRead + Unpin>) -> (Vec<u8>, u64) {
    let Some(mut stream) = stream else {
        return (Vec::new(), 0);
    };
    let mut kept: Vec<u8> = Vec::with_capacity(8 * 1024);
    let mut dropped = 0u64;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&chunk[..n]);
                if kept.len() > 2 * OUTPUT_CAP {
                    let excess = kept.len() - OUTPUT_CAP;
                    kept.drain(..excess);
                    dropped += excess as u64;
                }
            }
        }
    }
    if kept.len() > OUTPUT_CAP {
        let excess = kept.len() - OUTPUT_CAP;
        kept.drain(..excess);
        dropped += excess as u64;
    }
    (kept, dropped)
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
