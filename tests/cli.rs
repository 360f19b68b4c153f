//! The command line's contract for `check` and `explain` (docs/policy.md, README.md#commands):
//! exit codes and `FILE:LINE:COL` errors that name what is wrong.

use assert_cmd::Command;

fn rollwatch() -> Command {
    Command::cargo_bin("rollwatch").unwrap()
}

/// Writes `text` as a policy and runs `check` on it: (exit code, stderr).
fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, text).unwrap();
    let out = rollwatch()
        .current_dir(dir.path())
        .args(["check", "p.toml"])
        .env_remove("NOT_SET_ANYWHERE")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const VALID: &str = "[target]\nservice = \"web\"\nenvironment = \"production\"\n\n[[rule]]\nname = \"error-rate\"\ntier = \"consider\"\nsignal = \"error-rate\"\nthreshold = \"5%\"\n";

#[test]
fn every_shipped_policy_passes_check() {
    let out = rollwatch()
        .args([
            "check",
            "policies/production.toml",
            "policies/staging.toml",
            "policies/dev.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).matches("ok: ").count(),
        3
    );
}

#[test]
fn a_syntax_error_exits_2_with_its_position() {
    let (code, stderr) = check(&VALID.replace("threshold = \"5%\"", "threshold = \"5%"));
    assert_eq!(code, 2);
    assert!(stderr.starts_with("p.toml:9:16: "), "{stderr}");
}

#[test]
fn an_unknown_key_exits_2_naming_it() {
    let (code, stderr) = check(&VALID.replace("threshold", "treshold"));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("p.toml:9:1: unknown key \"treshold\""),
        "{stderr}"
    );
    assert!(stderr.contains("did you mean \"threshold\"?"), "{stderr}");
}

#[test]
fn a_wrong_type_exits_2_naming_the_key() {
    let (code, stderr) = check(&format!("{VALID}min_requests = \"lots\"\n"));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("p.toml:10:16: wrong type for \"min_requests\""),
        "{stderr}"
    );
}

#[test]
fn a_missing_variable_exits_2_naming_it() {
    let (code, stderr) = check(&VALID.replace("\"web\"", "\"${NOT_SET_ANYWHERE}\""));
    assert_eq!(code, 2);
    assert!(
        stderr.starts_with("p.toml:2:12: environment variable \"NOT_SET_ANYWHERE\" is not set"),
        "{stderr}"
    );
}

#[test]
fn check_reports_every_bad_file_and_still_lists_the_good_ones() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("good.toml"), VALID).unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        VALID.replace("\"5%\"", "\"-1%\""),
    )
    .unwrap();
    let out = rollwatch()
        .current_dir(dir.path())
        .args(["check", "good.toml", "bad.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: good.toml"));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml:9:13: threshold -1% is impossible")
    );
}

#[test]
fn explain_gives_each_rule_its_time_from_fault_to_decision() {
    let out = rollwatch()
        .args(["explain", "policies/production.toml"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for (rule, timing) in [
        (
            "system-down",
            "at most about 1m15s (15s polls, must hold 1m)",
        ),
        (
            "data-corruption",
            "at most about 45s (15s polls, must hold 30s)",
        ),
        (
            "error-rate",
            "at most about 2m15s (15s polls, must hold 2m)",
        ),
        (
            "latency-degradation",
            "at most about 6m (15s polls, 4 samples first, must hold 5m)",
        ),
    ] {
        let at = text
            .find(&format!("- {rule}:"))
            .unwrap_or_else(|| panic!("{rule} missing:\n{text}"));
        let next_line = text[at..].lines().nth(1).unwrap();
        assert!(next_line.contains(timing), "{rule}: {next_line}");
    }
    assert!(
        text.contains(
            "Pages on-call, then rolls back if nobody acknowledges or holds within 10m (consider)"
        ),
        "{text}"
    );
    assert!(
        text.contains("the rollback starts about 12m15s after the fault"),
        "{text}"
    );
    assert!(
        text.contains("latency-degradation between 20% and 50%"),
        "{text}"
    );
    // Issue 18: each windowed rule's short window, and the longest burst told
    // rather than paged; instant signals have none.
    for (rule, recent) in [
        (
            "error-rate",
            "short window 15s: pages or rolls back only if the last 15s is not confidently healthy",
        ),
        (
            "error-rate",
            "a burst of up to about 2m that has ended by then is told (notify), not paged",
        ),
        (
            "latency-degradation",
            "short window 25s: pages or rolls back only if the last 25s",
        ),
        (
            "latency-degradation",
            "a burst of up to about 5m30s that has ended",
        ),
    ] {
        let at = text.find(&format!("- {rule}:")).unwrap();
        let third_line = text[at..].lines().nth(2).unwrap();
        assert!(third_line.contains(recent), "{rule}: {third_line}");
    }
    let at = text.find("- system-down:").unwrap();
    assert!(!text[at..].lines().nth(2).unwrap().contains("short window"));
}

#[test]
fn usage_errors_exit_2() {
    let out = rollwatch()
        .args(["backtest", "--policy", "policies/production.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = rollwatch().args(["nonsense"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// The README's main command: the whole story, with nothing installed.
/// (How long it takes, `benches/demo.rs` measures.)
#[test]
fn demo_tells_the_whole_story_and_prints_the_report() {
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("rollwatch"))
        .arg("demo")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let story = [
        "[demo] checkout v1.4.2 is serving",
        "service: v1.4.2, 0.2% errors",
        "[demo] deploying v1.5.0",
        "service: v1.5.0, 12.0% errors",
        "ROLL BACK v1.5.0 -> v1.4.2 [consider",
        "backup step create-backup succeeded",
        "application step rollback-application succeeded",
        "verification step smoke-tests succeeded",
        "watching error rate and latency for 12s",
        "stable for 12s after the rollback: incident resolved",
        "# Incident 1: checkout/demo",
        "## Stabilization watch",
    ];
    let mut rest: &str = &stdout;
    for line in story {
        let at = rest
            .find(line)
            .unwrap_or_else(|| panic!("the story lacks (or misorders) {line:?}:\n{stdout}"));
        rest = &rest[at..];
    }
}
