//! Regression tests for the bugs an SRE review found: each test failed on the
//! code as reviewed, and its name says what must hold now. They drive only the
//! public API (policy::from_bytes, the exposition parser, the poller, the command
//! runner). The engine's regressions live beside its simulated clock, in
//! `src/engine/tests.rs`.

use chrono::Utc;

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

/// `MAX_CHECKS` (32, one bit each in a sample) is enforced by the compiler:
/// a policy with more named checks is refused rather than having its 33rd
/// check's bit wrap onto check 0 (then a failing check 32 would read as check
/// 0 failing). Found when it was 64 and unenforced.
#[test]
fn regression_more_named_checks_than_a_sample_has_bits_are_refused_by_the_compiler() {
    let mut text = String::from("[target]\nservice = \"web\"\nenvironment = \"production\"\n");
    for i in 0..=rollwatch::engine::signals::MAX_CHECKS {
        text.push_str(&format!(
            "[[rule]]\nname = \"c{i}\"\ntier = \"consider\"\nsignal = \"check\"\ncheck = \"c{i}\"\n"
        ));
    }
    let errors = rollwatch::policy::from_bytes("many.toml", text.as_bytes(), |_| None).unwrap_err();
    assert!(
        errors.to_string().contains("more than 32 named checks"),
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
        pass_env: Vec::new(),
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
