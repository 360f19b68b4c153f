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
