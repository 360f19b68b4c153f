//! The API's bearer token (issue 13): compared trimmed, its scheme in any
//! case; reads open on loopback and behind the token beyond it, decided
//! from the address rollwatch is bound to; the Kubernetes example, which
//! listens beyond loopback, sets the token.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;

use assert_cmd::cargo::cargo_bin;
use rollwatch::server::listen::{Limits, serve};
use rollwatch::server::{Api, app};
use rollwatch::telemetry::Telemetry;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "s3cret-token-for-tests";

struct Server {
    base: String,
    _shutdown: tokio_util::sync::DropGuard,
}

async fn start(token: Option<&str>, reads_need_token: bool) -> Server {
    let telemetry = Telemetry::new();
    let api = Api {
        telemetry: Arc::clone(&telemetry),
        status: Default::default(),
        store: None,
        inputs: Default::default(),
        token: token.map(str::to_string),
        reads_need_token,
        readiness: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let limits = Limits::default();
    tokio::spawn(serve(
        listener,
        app(api),
        limits,
        telemetry,
        shutdown.clone(),
    ));
    Server {
        base,
        _shutdown: shutdown.drop_guard(),
    }
}

/// The status of `METHOD base/path` with `Authorization: authorization`.
async fn call(method: &str, url: &str, authorization: Option<&str>) -> u16 {
    let client = rollwatch::sources::http::client().unwrap();
    let mut request = match method {
        "GET" => client.get(url),
        _ => client
            .post(url)
            .header("content-type", "application/json")
            .body(r#"{"tier": "immediate", "reason": "a test"}"#),
    };
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn a_token_ending_in_a_newline_is_accepted_and_the_bearer_scheme_in_any_case() {
    // As read from a secret file: the newline is not part of the token.
    let server = start(Some(&format!("{TOKEN}\n")), false).await;
    let declare = format!("{}/api/v1/declare", server.base);
    // Past the token: no target is watched here.
    for accepted in [
        format!("Bearer {TOKEN}"),
        format!("bearer {TOKEN}"),
        format!("BEARER  {TOKEN} "),
        format!("Bearer {TOKEN}\t"),
    ] {
        assert_eq!(
            call("POST", &declare, Some(&accepted)).await,
            404,
            "{accepted:?}"
        );
    }
    for refused in [
        None,
        Some(format!("Bearer {TOKEN}x")),
        Some(format!("Bearer {}", &TOKEN[1..])),
        Some(format!("Basic {TOKEN}")),
        Some(format!("Bearer{TOKEN}")),
        Some("Bearer ".to_string()),
    ] {
        assert_eq!(
            call("POST", &declare, refused.as_deref()).await,
            401,
            "{refused:?}"
        );
    }
}

#[tokio::test]
async fn beyond_loopback_reads_need_the_token_and_probes_and_metrics_do_not() {
    let server = start(Some(TOKEN), true).await;
    let bearer = format!("Bearer {TOKEN}");
    for path in ["/api/v1/status", "/api/v1/incidents", "/api/v1/incidents/1"] {
        let url = format!("{}{path}", server.base);
        assert_eq!(call("GET", &url, None).await, 401, "{path}");
        assert_eq!(call("GET", &url, Some("Bearer wrong")).await, 401, "{path}");
        // Past the token: a run without a store has no incidents (404).
        assert_ne!(call("GET", &url, Some(&bearer)).await, 401, "{path}");
    }
    for path in ["/healthz", "/metrics"] {
        let url = format!("{}{path}", server.base);
        assert_eq!(call("GET", &url, None).await, 200, "{path}");
    }
}

#[tokio::test]
async fn beyond_loopback_without_a_token_the_reads_are_off() {
    let server = start(None, true).await;
    let url = format!("{}/api/v1/status", server.base);
    assert_eq!(call("GET", &url, None).await, 403);
    assert_eq!(call("GET", &url, Some("Bearer anything")).await, 403);
    let url = format!("{}/healthz", server.base);
    assert_eq!(call("GET", &url, None).await, 200);
}

#[tokio::test]
async fn on_loopback_reads_are_open() {
    let server = start(Some(TOKEN), false).await;
    let url = format!("{}/api/v1/status", server.base);
    assert_eq!(call("GET", &url, None).await, 200);
}

#[test]
fn reads_need_the_token_on_every_address_but_loopback() {
    use rollwatch::server::reads_need_token;
    for open in [
        "127.0.0.1:9797",
        "127.0.0.2:1",
        "[::1]:9797",
        "[::ffff:127.0.0.1]:1",
    ] {
        assert!(!reads_need_token(open.parse().unwrap()), "{open}");
    }
    for closed in [
        "0.0.0.0:9797",
        "[::]:9797",
        "10.1.2.3:9797",
        "[::ffff:10.0.0.1]:1",
    ] {
        assert!(reads_need_token(closed.parse().unwrap()), "{closed}");
    }
}

/// `rollwatch run --dry-run` on `listen`, with `ROLLWATCH_API_TOKEN` as a
/// secret file holds it; its base URL.
fn run_sidecar(listen: &str, dir: &tempfile::TempDir) -> (std::process::Child, String) {
    let mut child = Command::new(cargo_bin("rollwatch"))
        .args(["run", "--dry-run", "--listen", listen, "--policy"])
        .arg(dir.path())
        .env("ROLLWATCH_API_TOKEN", format!("{TOKEN}\n"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let output: common::process::Lines = Arc::default();
    common::process::capture(&mut child, &output);
    let base = common::process::wait_for_listen_address(&output);
    (child, base.replace("0.0.0.0", "127.0.0.1"))
}

#[tokio::test]
async fn the_sidecar_decides_from_its_bound_address_whether_reads_need_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let (mut everywhere, base) = run_sidecar("0.0.0.0:0", &dir);
    let url = format!("{base}/api/v1/status");
    let without = call("GET", &url, None).await;
    let with = call("GET", &url, Some(&format!("Bearer {TOKEN}"))).await;
    let _ = everywhere.kill();
    let _ = everywhere.wait();
    assert_eq!((without, with), (401, 200));

    let (mut local, base) = run_sidecar("127.0.0.1:0", &dir);
    let without = call("GET", &format!("{base}/api/v1/status"), None).await;
    let _ = local.kill();
    let _ = local.wait();
    assert_eq!(without, 200);
}

#[test]
fn the_kubernetes_example_listens_on_loopback_or_sets_the_token() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/kubernetes-sidecar.yaml"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let listen = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("- --listen="))
        .expect("the example passes --listen");
    let address: std::net::SocketAddr = listen.parse().unwrap();
    if !rollwatch::server::reads_need_token(address) {
        return;
    }
    // The token comes from a secret, not from the file.
    let lines: Vec<&str> = text
        .lines()
        .map(|line| line.split(" #").next().unwrap_or_default().trim())
        .collect();
    let token = lines
        .iter()
        .position(|l| *l == "- name: ROLLWATCH_API_TOKEN")
        .unwrap_or_else(|| panic!("{listen} is not loopback: set ROLLWATCH_API_TOKEN"));
    assert!(
        lines[token + 1..]
            .iter()
            .take(3)
            .any(|l| l.contains("secretKeyRef")),
        "ROLLWATCH_API_TOKEN comes from a secret"
    );
}
