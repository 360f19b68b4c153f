//! The sidecar's HTTP API over real HTTP: `rollwatch run` on a stand-in
//! service, with and without `ROLLWATCH_API_TOKEN`.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin;
use common::service::TestService;
use serde_json::{Value, json};

const TOKEN: &str = "s3cret-token-for-tests";

struct Sidecar {
    child: Child,
    output: common::process::Lines,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A policy for `web/ENVIRONMENT` on the stand-in at `url`. No `version`
/// metric: the API's deployment is the only one rollwatch knows. Its
/// rollback step runs `script` with the step's name.
fn policy_text(url: &str, environment: &str, script: &std::path::Path) -> String {
    common::policy::Policy::stand_in(url)
        .environment(environment)
        .stabilization("3s")
        .without_version()
        .step(
            "rollback-app",
            "application",
            &[script.to_str().unwrap(), "rollback-app"],
            "",
        )
        .text()
}

impl Sidecar {
    /// Watches `web/staging` from `staging.toml` in its directory.
    fn start(url: &str, token: Option<&str>) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("staging.toml");
        Sidecar::start_in(dir, &policy, url, token)
    }

    /// Watches a directory of policies (`policies/`), `web/staging` in it.
    fn start_with_directory(url: &str, token: Option<&str>) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        let policy = policies.join("staging.toml");
        Sidecar::start_in(dir, &policy, url, token)
    }

    /// Writes `web/staging` at `policy` and runs with `--policy` the file,
    /// or its directory if it is not the sidecar's own.
    fn start_in(
        dir: tempfile::TempDir,
        policy: &std::path::Path,
        url: &str,
        token: Option<&str>,
    ) -> Sidecar {
        let script = dir.path().join("step.sh");
        common::process::write_script(
            &script,
            "#!/bin/sh\necho \"$1\" >> \"$(dirname \"$0\")/calls.log\"\n",
        );
        std::fs::write(policy, policy_text(url, "staging", &script)).unwrap();
        let watched = if policy.parent() == Some(dir.path()) {
            policy.to_path_buf()
        } else {
            policy.parent().unwrap().to_path_buf()
        };
        let db = format!("sqlite://{}", dir.path().join("rollwatch.db").display());
        let mut command = Command::new(cargo_bin("rollwatch"));
        command
            .args(["run", "--listen", "127.0.0.1:0", "--db", &db, "--policy"])
            .arg(&watched)
            .env("RUST_LOG", "rollwatch=info")
            .env_remove("ROLLWATCH_API_TOKEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(token) = token {
            command.env("ROLLWATCH_API_TOKEN", token);
        }
        let mut child = command.spawn().unwrap();
        let output: common::process::Lines = Arc::default();
        common::process::capture(&mut child, &output);
        let base = common::process::wait_for_listen_address(&output);
        Sidecar {
            child,
            output,
            base,
            dir,
        }
    }

    fn output(&self) -> String {
        common::process::text(&self.output)
    }

    /// The status once `done` holds of it (panics after `secs`, with the
    /// last status and the sidecar's output).
    async fn wait_for_status(&self, what: &str, secs: u64, done: &dyn Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (_, status) = self.get("/api/v1/status").await;
            if done(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {status:#}\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = rollwatch::sources::http::client()
            .unwrap()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: String) -> (u16, Value) {
        let mut request = rollwatch::sources::http::client()
            .unwrap()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_what_it_must_and_a_deployment_it_accepts_starts_the_window() {
    let service = TestService::start().await;
    let sidecar = Sidecar::start(&service.url(), Some(TOKEN));
    // Status: every target with its rules, its policy and hash, its source.
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (code, status) = sidecar.get("/api/v1/status").await;
        assert_eq!(code, 200);
        // The first scrape only primes the counters: data from the second on.
        if status["targets"][0]["source"]["ok"] == true {
            break status;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let target = &status["targets"][0];
    assert_eq!(target["target"], "web/staging");
    assert_eq!(target["mode"], "acting");
    assert_eq!(target["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(target["rules"][0]["rule"], "error-rate");
    assert!(target["source"]["polls"].as_u64().unwrap() >= 2);
    assert!(target["deployment"].is_null());

    let deploy =
        json!({"version": "v2.0.0", "previous": "v1.0.0", "migrations": ["0042_add_index"]})
            .to_string();
    // No token, a wrong token: 401, and the token presented is never logged.
    assert_eq!(
        sidecar
            .post("/api/v1/deployments", None, deploy.clone())
            .await
            .0,
        401
    );
    let (code, body) = sidecar
        .post(
            "/api/v1/deployments",
            Some("wrong-token-xyz"),
            deploy.clone(),
        )
        .await;
    assert_eq!(code, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("bearer token"));
    assert!(
        !sidecar.output().contains("wrong-token-xyz"),
        "{}",
        sidecar.output()
    );
    // Bad bodies: 400 saying what is wrong; an oversized one: 413.
    let (code, body) = sidecar
        .post("/api/v1/deployments", Some(TOKEN), "{not json".into())
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("invalid JSON body"),
        "{body}"
    );
    let (code, body) = sidecar
        .post(
            "/api/v1/deployments",
            Some(TOKEN),
            json!({"version": "v2", "verison": 1}).to_string(),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown field `verison`"),
        "{body}"
    );
    let huge = json!({"version": "x".repeat(200_000)}).to_string();
    let refused = rollwatch::sources::http::client()
        .unwrap()
        .post(format!("{}/api/v1/deployments", sidecar.base))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 413);
    // The rest of the body was not read: the connection is not reused (the
    // next request on it failed with an incomplete message).
    assert_eq!(
        refused.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let (code, body) = sidecar
        .post(
            "/api/v1/declare",
            Some(TOKEN),
            json!({"tier": "urgent", "reason": "x"}).to_string(),
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown tier \"urgent\""),
        "{body}"
    );
    // `watch` and `ignore` are tiers of rules, not of a declaration: an
    // incident declared at them would never be acted on nor end.
    for tier in ["watch", "ignore"] {
        let (code, body) = sidecar
            .post(
                "/api/v1/declare",
                Some(TOKEN),
                json!({"tier": tier, "reason": "x"}).to_string(),
            )
            .await;
        assert_eq!(code, 400, "{tier}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("expected immediate or consider"),
            "{body}"
        );
    }
    // Unknown incidents.
    let (code, body) = sidecar.get("/api/v1/incidents/999").await;
    assert_eq!(
        (code, body["error"].as_str()),
        (404, Some("no incident 999"))
    );
    assert_eq!(sidecar.get("/api/v1/incidents/abc").await.0, 400);
    let (code, _) = sidecar
        .post(
            "/api/v1/incidents/999/ack",
            Some(TOKEN),
            json!({"by": "alice"}).to_string(),
        )
        .await;
    assert_eq!(code, 404);

    // The deployment, announced: the recent-deploy window starts.
    let (code, body) = sidecar
        .post("/api/v1/deployments", Some(TOKEN), deploy)
        .await;
    assert_eq!(code, 202, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, status) = sidecar.get("/api/v1/status").await;
        if status["targets"][0]["deployment"]["version"] == "v2.0.0" {
            assert_eq!(
                status["targets"][0]["deployment"]["migrations"][0],
                "0042_add_index"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // So errors now roll back (without the announcement they would only page:
    // no recent deployment).
    service.set(|k| k.error_rate = 0.3);
    let calls = sidecar.dir.path().join("calls.log");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !calls.exists() {
        assert!(Instant::now() < deadline, "{}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, list) = sidecar.get("/api/v1/incidents").await;
    assert_eq!(code, 200);
    let id = list["incidents"][0]["id"].as_i64().unwrap();
    let (code, timeline) = sidecar.get(&format!("/api/v1/incidents/{id}")).await;
    assert_eq!(code, 200);
    assert_eq!(
        timeline["decisions"][0]["action"], "rollback",
        "{timeline:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_write_endpoints_are_off() {
    let service = TestService::start().await;
    let sidecar = Sidecar::start(&service.url(), None);
    let (code, body) = sidecar
        .post(
            "/api/v1/deployments",
            Some("anything"),
            json!({"version": "v2"}).to_string(),
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("set ROLLWATCH_API_TOKEN"),
        "{body}"
    );
    assert_eq!(sidecar.get("/api/v1/status").await.0, 200, "reads stay on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_edit_is_applied_and_a_broken_one_rejected_with_the_last_good_policy_acting() {
    let service = TestService::start().await;
    let sidecar = Sidecar::start(&service.url(), Some(TOKEN));
    let policy = sidecar.dir.path().join("staging.toml");
    let original = std::fs::read_to_string(&policy).unwrap();
    let sha = |status: &Value| {
        status["targets"][0]["sha256"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let wait = async |what: &str, done: &dyn Fn(&Value) -> bool| -> Value {
        sidecar.wait_for_status(what, 15, done).await
    };
    let first = wait("a first status", &|s| !sha(s).is_empty()).await;
    let original_sha = sha(&first);
    // A valid edit: errors must pass 50 % now.
    std::fs::write(
        &policy,
        original.replace("threshold = \"5%\"", "threshold = \"50%\""),
    )
    .unwrap();
    let edited = wait("the edit in force", &|s| {
        !sha(s).is_empty() && sha(s) != original_sha && s["targets"][0]["reload_error"].is_null()
    })
    .await;
    let edited_sha = sha(&edited);
    // A broken edit: rejected, shown with where and what, the 50 % policy stays.
    std::fs::write(
        &policy,
        original.replace("threshold = \"5%\"", "treshold = \"5%\""),
    )
    .unwrap();
    let rejected = wait("the rejection", &|s| {
        s["targets"][0]["reload_error"].is_string()
    })
    .await;
    let reason = rejected["targets"][0]["reload_error"].as_str().unwrap();
    assert!(
        reason.contains("staging.toml:") && reason.contains("unknown key \"treshold\""),
        "{reason}"
    );
    assert_eq!(sha(&rejected), edited_sha, "the last good policy stays");
    let metrics = common::process::get_text(&format!("{}/metrics", sidecar.base)).await;
    assert!(
        metrics.contains("rollwatch_policy_reloads_total{target=\"web/staging\",result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("rollwatch_policy_reloads_total{target=\"web/staging\",result=\"failed\"} 1"),
        "{metrics}"
    );
    // SIGHUP re-reads at once: the broken file is reported again.
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(sidecar.child.id() as i32, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = common::process::get_text(&format!("{}/metrics", sidecar.base)).await;
        if metrics
            .contains("rollwatch_policy_reloads_total{target=\"web/staging\",result=\"failed\"} 2")
        {
            break;
        }
        assert!(Instant::now() < deadline, "SIGHUP: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It still acts, on the 50 % policy: 30 % errors after a deployment do
    // not roll back; 80 % do.
    let deploy = json!({"version": "v2.0.0", "previous": "v1.0.0"}).to_string();
    assert_eq!(
        sidecar
            .post("/api/v1/deployments", Some(TOKEN), deploy)
            .await
            .0,
        202
    );
    service.set(|k| k.error_rate = 0.3);
    // Six polls of 30 % errors, twice the rule's `for`, judged by a loop
    // that went on polling (a stalled one would prove nothing).
    common::process::wait_for_polls(&sidecar.base, 6, Duration::from_secs(60)).await;
    let calls = sidecar.dir.path().join("calls.log");
    assert!(!calls.exists(), "30 % < 50 %: {}", sidecar.output());
    service.set(|k| k.error_rate = 0.8);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !calls.exists() {
        assert!(Instant::now() < deadline, "{}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_messages_that_could_not_be_delivered() {
    let service = TestService::start().await;
    let sidecar = Sidecar::start(&service.url(), Some(TOKEN));
    let url = format!(
        "sqlite://{}",
        sidecar.dir.path().join("rollwatch.db").display()
    );
    let store = rollwatch::store::Store::open(&url).await.unwrap();
    let now = chrono::Utc::now();
    let id = store
        .enqueue_notification(&rollwatch::store::NewNotification {
            incident: None,
            kind: rollwatch::store::NotificationKind::Page,
            channel: "oncall".into(),
            recipients: vec!["oncall@example.com".into()],
            subject: "PAGE staging web".into(),
            body: "...".into(),
            dedupe_key: "failed-page".into(),
            created_at: now,
            target: "web/staging".into(),
            details: json!({}),
        })
        .await
        .unwrap()
        .id();
    store
        .claim_notification(id, "test", now, now + chrono::TimeDelta::minutes(1))
        .await
        .unwrap()
        .expect("the page can be claimed");
    store
        .mark_notification_failed(
            id,
            "test",
            "SMTP 127.0.0.1:25 refused it: 550 no such user",
            None,
        )
        .await
        .unwrap();
    let (code, status) = sidecar.get("/api/v1/status").await;
    assert_eq!(code, 200);
    assert_eq!(
        status["undelivered"][0]["subject"], "PAGE staging web",
        "{status:#}"
    );
    assert!(
        status["undelivered"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("550 no such user")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_file_added_to_the_directory_adds_a_target_and_a_removed_one_removes_it() {
    let staging = TestService::start().await;
    let canary_service = TestService::start().await;
    let sidecar = Sidecar::start_with_directory(&staging.url(), Some(TOKEN));
    let policies = sidecar.dir.path().join("policies");
    let names = |status: &Value| -> Vec<String> {
        status["targets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .filter_map(|t| t["target"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let wait = async |what: &str, secs: u64, done: &dyn Fn(&Value) -> bool| -> Value {
        sidecar.wait_for_status(what, secs, done).await
    };
    wait("web/staging watched", 15, &|s| names(s) == ["web/staging"]).await;

    // A new file that is not valid: rejected, shown in status, not watched.
    let slow = sidecar.dir.path().join("slow.sh");
    common::process::write_script(
        &slow,
        "#!/bin/sh\nlog=\"$(dirname \"$0\")/canary.log\"\necho started >> \"$log\"\nsleep 8\necho finished >> \"$log\"\n",
    );
    let canary = policies.join("canary.toml");
    let text = policy_text(&canary_service.url(), "canary", &slow);
    std::fs::write(
        &canary,
        text.replace("threshold = \"5%\"", "treshold = \"5%\""),
    )
    .unwrap();
    let rejected = wait("the broken new file shown", 15, &|s| {
        s["rejected_policies"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("canary.toml:") && e.contains("unknown key \"treshold\""))
    })
    .await;
    assert_eq!(names(&rejected), ["web/staging"], "{rejected:#}");

    // Fixed: a new target, watched and taking events.
    std::fs::write(&canary, &text).unwrap();
    let both = wait("web/canary watched", 15, &|s| {
        names(s) == ["web/canary", "web/staging"]
    })
    .await;
    assert_eq!(both["rejected_policies"], json!([]), "{both:#}");

    // A second file for a watched target is refused; editors' hidden files
    // are not policies.
    let script = sidecar.dir.path().join("step.sh");
    std::fs::write(
        policies.join("copy.toml"),
        policy_text(&staging.url(), "staging", &script),
    )
    .unwrap();
    std::fs::write(policies.join(".canary.toml.swp"), "not toml at all").unwrap();
    let refused = wait("the second file for web/staging refused", 15, &|s| {
        s["rejected_policies"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("copy.toml: target web/staging is already watched"))
    })
    .await;
    assert_eq!(
        refused["rejected_policies"].as_array().unwrap().len(),
        1,
        "{refused:#}"
    );

    // Fixed to name a target of its own, it starts one; renamed again, the
    // old target goes and the new one comes.
    std::fs::write(
        policies.join("copy.toml"),
        policy_text(&staging.url(), "qa", &script),
    )
    .unwrap();
    let fixed = wait("web/qa watched", 15, &|s| {
        names(s) == ["web/canary", "web/qa", "web/staging"]
    })
    .await;
    assert_eq!(fixed["rejected_policies"], json!([]), "{fixed:#}");
    std::fs::write(
        policies.join("copy.toml"),
        policy_text(&staging.url(), "qa2", &script),
    )
    .unwrap();
    wait("web/qa renamed web/qa2", 15, &|s| {
        names(s) == ["web/canary", "web/qa2", "web/staging"]
    })
    .await;

    // The file renamed (`mv`): the new name is seen before the old one is
    // counted gone, so it is refused at first; once the old name lets the
    // target go, the new file takes it (it used to be lost for good).
    let renamed = policies.join("qa2.toml");
    std::fs::rename(policies.join("copy.toml"), &renamed).unwrap();
    let moved = wait("web/qa2 watched from qa2.toml", 20, &|s| {
        s["targets"].as_array().is_some_and(|targets| {
            targets.iter().any(|t| {
                t["target"] == "web/qa2"
                    && t["policy"]
                        .as_str()
                        .is_some_and(|p| p.ends_with("qa2.toml"))
            })
        })
    })
    .await;
    assert_eq!(moved["rejected_policies"], json!([]), "{moved:#}");
    assert_eq!(
        names(&moved),
        ["web/canary", "web/qa2", "web/staging"],
        "{moved:#}"
    );

    // The new target acts: a deployment, errors, its rollback starts.
    let deploy = json!({"target": "web/canary", "version": "v2.0.0", "previous": "v1.0.0"});
    assert_eq!(
        sidecar
            .post("/api/v1/deployments", Some(TOKEN), deploy.to_string())
            .await
            .0,
        202
    );
    canary_service.set(|k| k.error_rate = 0.8);
    let log = sidecar.dir.path().join("canary.log");
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !read_log().contains("started") {
        assert!(Instant::now() < deadline, "{}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Its file removed mid-step: the step finishes (and is recorded) before
    // the target goes.
    std::fs::remove_file(&canary).unwrap();
    wait("web/canary removed", 30, &|s| {
        names(s) == ["web/qa2", "web/staging"]
    })
    .await;
    assert!(
        read_log().contains("finished"),
        "the target went before its step ended: {}",
        sidecar.output()
    );
    let db = format!(
        "sqlite://{}",
        sidecar.dir.path().join("rollwatch.db").display()
    );
    let store = rollwatch::store::Store::open(&db).await.unwrap();
    let incidents = store.list_incidents(10).await.unwrap();
    let incident = incidents
        .iter()
        .find(|i| i.target == "web/canary")
        .expect("the canary's incident is stored");
    let timeline = store.incident(incident.id).await.unwrap().unwrap();
    let step = timeline
        .steps
        .iter()
        .find(|s| s.name == "rollback-app")
        .expect("the rollback step is stored");
    assert!(
        step.ended_at.is_some() && step.exit_code == Some(0),
        "{step:?}"
    );

    // Gone from the API and the gauges; web/staging untouched.
    let (code, body) = sidecar
        .post("/api/v1/deployments", Some(TOKEN), deploy.to_string())
        .await;
    assert_eq!(code, 404, "{body}");
    let metrics = common::process::get_text(&format!("{}/metrics", sidecar.base)).await;
    assert!(
        !metrics.contains("rollwatch_signal_threshold{target=\"web/canary\"")
            && !metrics.contains("rollwatch_incident_open{target=\"web/canary\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("rollwatch_signal_threshold{target=\"web/staging\""),
        "{metrics}"
    );
    assert!(
        !sidecar.dir.path().join("calls.log").exists(),
        "web/staging and web/qa2 never rolled back: {}",
        sidecar.output()
    );
}

/// A policy file whose read hangs (a dead network mount; here a FIFO nobody
/// writes to, put in its place): the check gives up after a few seconds and
/// says so, the target keeps its last good policy and status still answers,
/// and SIGTERM still stops the sidecar (the run loop never waits on the
/// file system for long).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_read_that_hangs_holds_nothing_up() {
    let service = TestService::start().await;
    let mut sidecar = Sidecar::start(&service.url(), None);
    sidecar
        .wait_for_status("web/staging watched", 15, &|s| {
            s["targets"][0]["target"] == "web/staging"
        })
        .await;
    let policy = sidecar.dir.path().join("staging.toml");
    std::fs::remove_file(&policy).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&policy)
        .status()
        .unwrap();
    assert!(status.success(), "mkfifo");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !sidecar
        .output()
        .contains("looking at the policy files hangs")
    {
        assert!(Instant::now() < deadline, "{}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, status) = sidecar.get("/api/v1/status").await;
    assert_eq!(code, 200);
    assert_eq!(status["targets"][0]["target"], "web/staging", "{status:#}");
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(sidecar.child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = sidecar.child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "SIGTERM stops the sidecar: {}",
            sidecar.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "{exit:?}\n{}", sidecar.output());
}

/// `/readyz`: 503 with a reason until the policy is loaded, the store open
/// and the target's loop started, then 200; `/healthz` stays the liveness
/// probe. (503 while shutting down: tests/acting.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_ready_once_the_target_loop_has_started() {
    let service = TestService::start().await;
    let sidecar = Sidecar::start(&service.url(), None);
    let deadline = Instant::now() + Duration::from_secs(15);
    let ready = loop {
        let (code, body) = sidecar.get("/readyz").await;
        if code == 200 {
            break body;
        }
        assert_eq!(code, 503, "{body}");
        assert_eq!(body["ready"], false, "{body}");
        assert!(body["reason"].is_string(), "{body}");
        assert!(Instant::now() < deadline, "{body} {}", sidecar.output());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ready, json!({"ready": true}));
    // Ready it stays, polling.
    common::process::wait_for_polls(&sidecar.base, 2, Duration::from_secs(30)).await;
    assert_eq!(sidecar.get("/readyz").await, (200, json!({"ready": true})));
    let healthz = common::process::get_text(&format!("{}/healthz", sidecar.base)).await;
    assert_eq!(healthz, "ok\n");
}
