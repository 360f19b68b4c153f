//! A real Prometheus server for tests (Debian's `prometheus` 2.42): a temporary
//! storage dir, `scrape_interval: 1s`, loopback only, killed on drop. Missing
//! binary: the test fails under CI (`.ci/run` installs it) and is skipped,
//! saying so, elsewhere.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct PrometheusServer {
    pub url: String,
    child: Child,
    _storage: tempfile::TempDir,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<&'static str> {
    let found = Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if found {
        return Some("prometheus");
    }
    super::server_missing("prometheus is not installed (apt-get install -y prometheus)");
    None
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Starts Prometheus scraping `target` as job `job` every second; None when
/// Prometheus is not installed outside CI.
pub async fn start(target: SocketAddr, job: &str) -> Option<PrometheusServer> {
    let binary = binary()?;
    let storage = tempfile::tempdir().unwrap();
    let config = storage.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            storage.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus");
    let server = PrometheusServer {
        url: format!("http://127.0.0.1:{port}"),
        child,
        _storage: storage,
    };
    let client = rollwatch::sources::http::client().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = client.get(format!("{}/-/ready", server.url)).send().await
            && response.status().is_success()
        {
            return Some(server);
        }
        assert!(
            Instant::now() < deadline,
            "prometheus did not become ready within 20s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl PrometheusServer {
    /// Waits until `query` returns a value satisfying `ready` (bounded).
    pub async fn wait_for(&self, query: &str, ready: impl Fn(f64) -> bool, within: Duration) {
        let client = rollwatch::sources::http::client().unwrap();
        let deadline = Instant::now() + within;
        loop {
            let value = async {
                let body: serde_json::Value = client
                    .get(format!("{}/api/v1/query", self.url))
                    .query(&[("query", query)])
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                body["data"]["result"][0]["value"][1]
                    .as_str()?
                    .parse::<f64>()
                    .ok()
            }
            .await;
            if value.is_some_and(&ready) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{query} did not become ready within {within:?} (last {value:?})"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}
