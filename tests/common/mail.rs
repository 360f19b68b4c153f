//! Real notification servers for tests: Debian's aiosmtpd (one file per
//! message in a Maildir) and Alertmanager 0.25, each on a free loopback port,
//! stopped when dropped. `None` outside CI when not installed (under CI a
//! missing server is a failure). And a black hole: a port that takes
//! connections and never answers.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn missing(what: &str) -> bool {
    super::server_missing(&format!("{what} is not installed"));
    false
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Rejects recipients whose address starts with `reject`, stores the rest.
const HANDLER: &str = r#"
from aiosmtpd.handlers import Mailbox

class Rejecting(Mailbox):
    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("reject"):
            return "550 5.1.1 <%s>: no such user here" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"
"#;

pub struct SmtpServer {
    pub port: u16,
    pub maildir: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl SmtpServer {
    pub fn start() -> Option<SmtpServer> {
        if !Path::new("/usr/bin/aiosmtpd").exists() && !missing("aiosmtpd (python3-aiosmtpd)") {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rejecting.py"), HANDLER).unwrap();
        let mut server = SmtpServer {
            port: free_port(),
            maildir: dir.path().join("mail"),
            dir,
            child: None,
        };
        server.resume();
        Some(server)
    }

    /// Starts (again) on the same port.
    pub fn resume(&mut self) {
        // Debian's own python has the module; the pyenv python first on PATH does not.
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{}", self.port))
            .args(["-c", "rejecting.Rejecting"])
            .arg(&self.maildir)
            .env("PYTHONPATH", self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for_port(self.port, "aiosmtpd");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every delivered message, oldest first.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) {
                for entry in entries.flatten() {
                    let modified = entry.metadata().and_then(|m| m.modified()).unwrap();
                    files.push((
                        modified,
                        entry.file_name().to_string_lossy().into(),
                        entry.path(),
                    ));
                }
            }
        }
        files.sort();
        files
            .into_iter()
            .map(|(_, _, path)| std::fs::read_to_string(path).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Alertmanager {
    pub url: String,
    _dir: tempfile::TempDir,
    child: Child,
}

impl Alertmanager {
    pub fn start() -> Option<Alertmanager> {
        if !Path::new("/usr/bin/prometheus-alertmanager").exists()
            && !missing("prometheus-alertmanager")
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            "route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n  - name: none\n",
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("/usr/bin/prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "alertmanager");
        Some(Alertmanager {
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            child,
        })
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a mail's header `name` (continuation lines unfolded), if any.
pub fn header(mail: &str, name: &str) -> Option<String> {
    let head = mail.split("\n\n").next().unwrap_or_default();
    let mut value: Option<String> = None;
    for line in head.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with([' ', '\t']) {
            if let Some(value) = value.as_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some((key, rest)) = line.split_once(':')
            && key.eq_ignore_ascii_case(name)
        {
            value = Some(rest.trim().to_string());
        }
    }
    value
}

/// A loopback port that accepts connections and never says a word, like a
/// host whose traffic is dropped once connected: a client waits for its
/// timeout. Counts the connections taken and those the client gave up on.
pub struct BlackHole {
    pub port: u16,
    accepted: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
}

impl BlackHole {
    pub fn start() -> BlackHole {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (accepted, closed) = (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
        let (taken, given_up) = (Arc::clone(&accepted), Arc::clone(&closed));
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                taken.fetch_add(1, Ordering::SeqCst);
                let given_up = Arc::clone(&given_up);
                std::thread::spawn(move || {
                    use std::io::Read;
                    let mut stream = stream;
                    let mut buffer = [0u8; 4096];
                    // Reads what the client sends, answers nothing, and
                    // notes when the client hangs up.
                    while matches!(stream.read(&mut buffer), Ok(n) if n > 0) {}
                    given_up.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        BlackHole {
            port,
            accepted,
            closed,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Connections taken so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections whose client gave up waiting.
    pub fn abandoned(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }
}
