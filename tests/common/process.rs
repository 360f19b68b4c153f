//! Running `rollwatch` (and the scripts its procedures call) in tests: a
//! child's stdout and stderr collected line by line into one list, the
//! address its HTTP server says it listens on, executable step scripts.

use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every line a child printed, stdout and stderr interleaved as they came
/// (several children may share one, e.g. across a restart).
pub type Lines = Arc<Mutex<Vec<String>>>;

/// Collects the piped stdout and stderr of `child` into `into`.
pub fn capture(child: &mut Child, into: &Lines) {
    for stream in [
        Box::new(child.stdout.take().expect("a piped stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("a piped stderr")),
    ] {
        let output = Arc::clone(into);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stream)
                .lines()
                .map_while(Result::ok)
            {
                output.lock().unwrap().push(line);
            }
        });
    }
}

/// All the lines so far, as one text.
pub fn text(lines: &Lines) -> String {
    lines.lock().unwrap().join("\n")
}

/// `http://ADDR` from the line `serving ... on http://ADDR`, if printed yet.
pub fn listen_address(lines: &Lines) -> Option<String> {
    lines.lock().unwrap().iter().find_map(|l| {
        l.split_once(" on http://")
            .map(|(_, a)| format!("http://{a}"))
    })
}

/// Waits (up to 30 s) for the child to say where it listens.
pub fn wait_for_listen_address(lines: &Lines) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(address) = listen_address(lines) {
            return address;
        }
        assert!(
            Instant::now() < deadline,
            "no listen address:\n{}",
            text(lines)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body of a GET of `url` (a sidecar's `/metrics`, say); panics when
/// it cannot be fetched.
pub async fn get_text(url: &str) -> String {
    rollwatch::sources::http::client()
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Writes an executable script.
pub fn write_script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

/// How many polls the sidecar at `base` has made, all targets together
/// (`rollwatch_polls_total` in its `/metrics`): the progress marker of its
/// loops. `None` when it does not answer within 2 s.
pub async fn polls(base: &str) -> Option<u64> {
    let text = rollwatch::sources::http::client()
        .ok()?
        .get(format!("{base}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let total: f64 = text
        .lines()
        .filter(|l| l.starts_with("rollwatch_polls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(total as u64)
}

/// Waits until the sidecar at `base` has polled `n` more times than now:
/// its loops ran past this point, so whatever they were due to do by then
/// has been done. Panics after `within` (a hang guard) saying so: "nothing
/// happened" proves nothing of a stalled loop.
pub async fn wait_for_polls(base: &str, n: u64, within: Duration) {
    let deadline = Instant::now() + within;
    let mut start = None;
    loop {
        let now = polls(base).await;
        if let Some(now) = now {
            let from = *start.get_or_insert(now);
            if now >= from + n {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar's loop stalled: {now:?} polls, waited for {n} more than {start:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
