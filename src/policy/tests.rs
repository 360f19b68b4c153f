use super::*;
use crate::engine::policy::{Action, Signal, Tier};

const PRODUCTION: &str = include_str!("../../policies/production.toml");
const STAGING: &str = include_str!("../../policies/staging.toml");
const DEV: &str = include_str!("../../policies/dev.toml");

fn no_env(_: &str) -> Option<String> {
    None
}

fn compile(text: &str) -> Result<Policy, PolicyErrors> {
    from_bytes("p.toml", text.as_bytes(), no_env)
}

/// A minimal valid policy; tests append or replace lines.
const MINIMAL: &str = r#"[target]
service = "web"
environment = "production"

[[rule]]
name = "error-rate"
tier = "consider"
signal = "error-rate"
threshold = "5%"
"#;

/// Compiles `text` and asserts it fails with exactly these `LINE:COL: message-fragment` errors.
#[track_caller]
fn check_errors(text: &str, expected: &[(usize, usize, &str)]) {
    let errors = compile(text).expect_err("the policy should be rejected").0;
    let got: Vec<(usize, usize, String)> = errors
        .iter()
        .map(|e| (e.line, e.column, e.message.clone()))
        .collect();
    assert_eq!(got.len(), expected.len(), "errors: {got:#?}");
    for ((line, column, message), (want_line, want_column, fragment)) in got.iter().zip(expected) {
        assert_eq!(
            (line, column),
            (want_line, want_column),
            "position of {message:?}"
        );
        assert!(
            message.contains(fragment),
            "{message:?} should contain {fragment:?}"
        );
    }
    for error in &errors {
        assert!(
            error
                .to_string()
                .starts_with(&format!("p.toml:{}:{}: ", error.line, error.column))
        );
    }
}

#[test]
fn shipped_policies_compile_with_the_contract_rule_and_check_names() {
    for (text, environment, consider) in [
        (PRODUCTION, "production", Action::PageThenRollback),
        (STAGING, "staging", Action::Rollback),
        (DEV, "dev", Action::Notify),
    ] {
        let policy = compile(text).unwrap_or_else(|e| panic!("{environment}: {e}"));
        assert_eq!(policy.environment, environment);
        assert_eq!(policy.service, "web");
        let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "system-down",
                "data-corruption",
                "feature-broken",
                "error-rate",
                "latency-degradation",
                "users-affected"
            ]
        );
        assert_eq!(policy.checks, ["data_integrity", "critical_features"]);
        assert_eq!(policy.actions.immediate, Action::Rollback);
        assert_eq!(policy.actions.consider, consider);
        let rule = |name: &str| policy.rule(name).unwrap();
        assert_eq!(rule("error-rate").signal.threshold(), Some(0.05));
        assert_eq!(rule("latency-degradation").signal.threshold(), Some(0.5));
        assert_eq!(rule("latency-degradation").watch_above, Some(0.2));
        assert_eq!(rule("users-affected").signal.threshold(), Some(0.10));
        assert_eq!(rule("system-down").tier, Tier::Immediate);
        assert!(
            matches!(&rule("data-corruption").signal, Signal::Check { name, .. } if name == "data_integrity")
        );
        assert!(
            matches!(&rule("feature-broken").signal, Signal::Check { name, .. } if name == "critical_features")
        );
        assert_eq!(policy.stabilization.num_minutes(), 15);
        assert_eq!(policy.evaluation.recent_deploy_window.num_hours(), 24);
        assert_eq!(policy.baseline.fixed_ms, Some(300.0));
    }
    assert_eq!(
        compile(PRODUCTION)
            .unwrap()
            .actions
            .page_timeout
            .num_minutes(),
        10
    );
}

#[test]
fn defaults_fill_what_a_minimal_policy_leaves_out() {
    let policy = compile(MINIMAL).unwrap();
    assert_eq!(policy.evaluation.interval.num_seconds(), 15);
    assert!((policy.evaluation.z - 1.6449).abs() < 1e-3);
    assert_eq!(policy.rules[0].hold_for, policy.evaluation.interval);
    assert_eq!(policy.actions.immediate, Action::Rollback);
    assert_eq!(policy.actions.consider, Action::Page);
    assert_eq!(policy.actions.escalate_after.num_minutes(), 15);
}

#[test]
fn the_engine_escalates_after_the_notify_sections_escalate_after() {
    let text = format!("{MINIMAL}\n[notify]\nescalate_after = \"90s\"\n");
    let policy = compile(&text).unwrap();
    assert_eq!(policy.actions.escalate_after.num_seconds(), 90);
    // Still validated where it is written.
    check_errors(
        &text.replace("\"90s\"", "\"0s\""),
        &[(12, 18, "escalate_after must be longer than 0s")],
    );
}

#[test]
fn the_content_hash_is_the_sha256_of_the_file_as_written() {
    let policy = compile(MINIMAL).unwrap();
    assert_eq!(policy.sha256, hex(&Sha256::digest(MINIMAL.as_bytes())));
    assert_eq!(policy.sha256.len(), 64);
}

#[test]
fn syntax_error_points_at_line_and_column() {
    check_errors(
        &MINIMAL.replace("threshold = \"5%\"", "threshold = \"5%"),
        &[(9, 16, "invalid basic string")],
    );
}

#[test]
fn unknown_key_is_named_with_a_suggestion() {
    check_errors(
        &MINIMAL.replace("threshold", "treshold"),
        &[(
            9,
            1,
            "unknown key \"treshold\", expected one of name, tier, signal, for, threshold",
        )],
    );
    let message = &compile(&MINIMAL.replace("threshold", "treshold"))
        .unwrap_err()
        .0[0]
        .message;
    assert!(
        message.ends_with("did you mean \"threshold\"?"),
        "{message}"
    );
    check_errors(
        &MINIMAL.replace("[target]", "[targett]"),
        &[(1, 2, "unknown key \"targett\"")],
    );
}

#[test]
fn wrong_type_names_the_key() {
    check_errors(
        &format!("{MINIMAL}min_requests = \"many\"\n"),
        &[(
            10,
            16,
            "wrong type for \"min_requests\": string \"many\", expected a whole number",
        )],
    );
}

#[test]
fn missing_variable_is_named() {
    check_errors(
        &MINIMAL.replace("\"web\"", "\"${SERVICE_NAME}\""),
        &[(2, 12, "environment variable \"SERVICE_NAME\" is not set")],
    );
}

#[test]
fn variables_and_defaults_are_substituted_and_positions_still_match_the_file() {
    let text = MINIMAL
        .replace("\"web\"", "\"${SERVICE_NAME}\"")
        .replace("\"5%\"", "\"${ERR:-5%}\"");
    let lookup =
        |name: &str| (name == "SERVICE_NAME").then(|| "checkout-with-a-long-name".to_string());
    let policy = from_bytes("p.toml", text.as_bytes(), lookup).unwrap();
    assert_eq!(policy.service, "checkout-with-a-long-name");
    assert_eq!(policy.rules[0].signal.threshold(), Some(0.05));
    // An error after a substitution on the same line still points into the file as written.
    let broken = "[target]\nservice = \"${SERVICE_NAME}\"\nenvironment = \"x\"\n[[rule]]\nname = \"${SERVICE_NAME}\" tier = 1\n";
    let errors = from_bytes("p.toml", broken.as_bytes(), lookup)
        .unwrap_err()
        .0;
    assert_eq!((errors[0].line, errors[0].column), (5, 26), "{errors:?}");
}

#[test]
fn impossible_values_are_rejected_with_what_is_expected() {
    check_errors(
        &MINIMAL.replace("\"5%\"", "\"-5%\""),
        &[(9, 13, "threshold -5% is impossible, expected more than 0%")],
    );
    check_errors(
        &MINIMAL.replace("\"5%\"", "\"150%\""),
        &[(9, 13, "at most 100%")],
    );
    check_errors(
        &format!("{MINIMAL}for = \"10s\"\n"),
        &[(
            10,
            7,
            "for = \"10s\" is shorter than the poll interval, expected at least 15s",
        )],
    );
    check_errors(
        &format!("{MINIMAL}window = \"5s\"\n"),
        &[(10, 10, "window \"5s\" is shorter than the poll interval")],
    );
    check_errors(
        &format!("{MINIMAL}for = \"1m\"\nwindow = \"5m\"\n"),
        &[(
            11,
            10,
            "window \"5m\" is longer than for = \"1m\": one bad interval would stay in the window",
        )],
    );
    check_errors(
        &format!("{MINIMAL}watch_above = \"8%\"\n"),
        &[(10, 15, "watch_above 8% must lie below the threshold 5%")],
    );
    check_errors(
        &format!("{MINIMAL}[evaluation]\nconfidence = \"40%\"\n"),
        &[(11, 14, "confidence 40% is impossible")],
    );
    check_errors(
        &format!("{MINIMAL}[evaluation]\ninterval = \"0s\"\n"),
        &[(11, 12, "interval must be longer than 0s")],
    );
    check_errors(
        &format!("{MINIMAL}[evaluation]\ncooldown = \"soon\"\n"),
        &[(11, 12, "invalid duration \"soon\"")],
    );
}

#[test]
fn consider_stricter_than_immediate_on_the_same_signal_is_rejected() {
    let text = format!(
        "{MINIMAL}\n[[rule]]\nname = \"error-storm\"\ntier = \"immediate\"\nsignal = \"error-rate\"\nthreshold = \"3%\"\n"
    );
    check_errors(
        &text,
        &[(
            5,
            1,
            "consider rule \"error-rate\" threshold 5% is stricter than immediate rule \"error-storm\" threshold 3%",
        )],
    );
}

#[test]
fn keys_that_make_no_sense_for_the_signal_are_rejected() {
    let text = "[target]\nservice = \"web\"\nenvironment = \"p\"\n[[rule]]\nname = \"down\"\ntier = \"immediate\"\nsignal = \"down\"\nthreshold = \"5%\"\ncheck = \"x\"\n";
    check_errors(
        text,
        &[
            (8, 13, "threshold has no meaning for signal \"down\""),
            (9, 9, "check has no meaning for signal \"down\""),
        ],
    );
    let text = "[target]\nservice = \"web\"\nenvironment = \"p\"\n[[rule]]\nname = \"c\"\ntier = \"immediate\"\nsignal = \"check\"\n";
    check_errors(
        text,
        &[(7, 10, "signal \"check\" needs the name of a check")],
    );
    check_errors(
        &MINIMAL.replace("threshold = \"5%\"\n", ""),
        &[(8, 10, "signal \"error-rate\" needs a threshold")],
    );
    check_errors(
        &MINIMAL.replace("\"error-rate\"\nthreshold", "\"errors\"\nthreshold"),
        &[(8, 10, "unknown signal \"errors\"")],
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = MINIMAL
        .replace("\"consider\"", "\"consder\"")
        .replace("\"5%\"", "\"0%\"");
    check_errors(
        &text,
        &[
            (7, 8, "unknown tier \"consder\""),
            (9, 13, "threshold 0% is impossible"),
        ],
    );
}

#[test]
fn duplicate_rule_names_are_rejected() {
    let text = format!(
        "{MINIMAL}\n[[rule]]\nname = \"error-rate\"\ntier = \"consider\"\nsignal = \"error-rate\"\nthreshold = \"6%\"\n"
    );
    check_errors(&text, &[(12, 8, "duplicate rule name \"error-rate\"")]);
}

#[test]
fn known_issues_must_name_a_rule_and_spare_immediate_rules() {
    let issue = |rule: &str| {
        format!(
            "\n[[known_issue]]\nrule = \"{rule}\"\nuntil = 2026-12-01T00:00:00Z\nreason = \"fix in review\"\n"
        )
    };
    let with_down = format!(
        "{MINIMAL}\n[[rule]]\nname = \"system-down\"\ntier = \"immediate\"\nsignal = \"down\"\n"
    );
    let policy = compile(&format!("{with_down}{}", issue("error-rate"))).unwrap();
    assert_eq!(policy.known_issues[0].rule, "error-rate");
    assert_eq!(policy.known_issues[0].reason, "fix in review");
    check_errors(
        &format!("{with_down}{}", issue("eror-rate")),
        &[(17, 8, "unknown rule \"eror-rate\"")],
    );
    check_errors(
        &format!("{with_down}{}", issue("system-down")),
        &[(
            17,
            8,
            "rule \"system-down\" is immediate and cannot be suppressed",
        )],
    );
    let allowed = format!(
        "{with_down}\n[evaluation]\nallow_immediate_suppression = true\n{}",
        issue("system-down")
    );
    assert!(compile(&allowed).is_ok());
}

#[test]
fn a_policy_without_rules_is_rejected() {
    check_errors(
        "[target]\nservice = \"web\"\nenvironment = \"p\"\n",
        &[(1, 1, "the policy has no [[rule]]")],
    );
}

#[test]
fn unreadable_and_non_utf8_files_are_clear_errors() {
    let errors = load(Path::new("/nonexistent/policy.toml")).unwrap_err();
    assert!(
        errors
            .to_string()
            .starts_with("/nonexistent/policy.toml:1:1: cannot read policy file")
    );
    let errors = from_bytes("p.toml", b"[target]\nservice = \"\xff\"\n", no_env).unwrap_err();
    assert_eq!((errors.0[0].line, errors.0[0].column), (2, 12));
}

/// The keys a table accepts, read from the parser's own "unknown key" error.
fn accepted_keys(table: &str) -> Vec<String> {
    let text = match table {
        "target" => "[target]\nzzz = 1\n".to_string(),
        "rule" => format!("{MINIMAL}zzz = 1\n"),
        "known_issue" => format!("{MINIMAL}[[known_issue]]\nzzz = 1\n"),
        "check" => format!("{MINIMAL}[[check]]\nzzz = 1\n"),
        "procedure" => format!("{MINIMAL}[procedure]\nzzz = 1\n"),
        "procedure.step" => format!("{MINIMAL}[[procedure.step]]\nzzz = 1\n"),
        "notify.channel" => format!("{MINIMAL}[[notify.channel]]\nzzz = 1\n"),
        "source.metrics" | "source.queries" => format!(
            "{MINIMAL}[source]\nkind = \"scrape\"\nurl = \"http://x\"\n[{table}]\nzzz = 1\n"
        ),
        other => format!("{MINIMAL}[{other}]\nzzz = 1\n"),
    };
    let message = compile(&text).unwrap_err().0[0].message.clone();
    let list = message
        .split("expected one of ")
        .nth(1)
        .unwrap_or_else(|| panic!("{message}"));
    let list = list.split(';').next().unwrap();
    list.split(", ").map(str::to_string).collect()
}

#[test]
fn the_readme_policy_reference_lists_every_key_the_parser_accepts() {
    let readme = include_str!("../../docs/policy.md");
    let reference = readme
        .split("## Policy reference")
        .nth(1)
        .expect("docs/policy.md has a policy reference");
    let tables = [
        ("target", "### `[target]`"),
        ("evaluation", "### `[evaluation]`"),
        ("baseline", "### `[baseline]`"),
        ("actions", "### `[actions]`"),
        ("stabilization", "### `[stabilization]`"),
        ("rule", "### `[[rule]]`"),
        ("known_issue", "### `[[known_issue]]`"),
        ("source", "### `[source]`"),
        ("source.metrics", "`[source.metrics]` holds"),
        ("source.queries", "`[source.queries]` holds"),
        ("health", "### `[health]`"),
        ("check", "### `[[check]]`"),
        ("procedure", "### `[procedure]`"),
        ("procedure.step", "`[[procedure.step]]`, in the order"),
        ("notify", "### `[notify]`"),
        ("notify.channel", "`[[notify.channel]]`, one per"),
    ];
    for (table, marker) in tables {
        let after = reference
            .split(marker)
            .nth(1)
            .unwrap_or_else(|| panic!("docs/policy.md lacks {marker}"));
        // The first Markdown table after the marker documents the keys.
        let documented: Vec<&str> = after
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .filter_map(|line| line.strip_prefix("| `")?.split('`').next())
            .collect();
        assert_eq!(
            documented,
            accepted_keys(table),
            "docs/policy.md {marker} and the parser disagree"
        );
    }
}

#[test]
fn procedures_are_validated_against_the_rules_and_actions() {
    let step = |stage: &str, extra: &str| {
        format!(
            "[[procedure.step]]\nname = \"{stage}-step\"\nstage = \"{stage}\"\ncommand = [\"./{stage}.sh\"]\n{extra}"
        )
    };
    let with_rollback =
        MINIMAL.replace("[[rule]]", "[actions]\nconsider = \"rollback\"\n\n[[rule]]");
    // Rolling back needs an application step.
    let text = format!("{with_rollback}[procedure]\n{}", step("verification", ""));
    let errors = compile(&text).unwrap_err().to_string();
    assert!(
        errors.contains("has no step with stage = \"application\""),
        "{errors}"
    );
    // A rule's component must be one a step names.
    let text = format!(
        "{with_rollback}component = \"frontend\"\n[procedure]\n{}",
        step("application", "component = \"backend\"\n")
    );
    let errors = compile(&text).unwrap_err().to_string();
    assert!(
        errors.contains("unknown component \"frontend\""),
        "{errors}"
    );
    // Unknown stages and empty commands are named.
    let text = format!(
        "{with_rollback}[procedure]\n{}{}",
        step("application", ""),
        step("rollback", "")
    );
    let errors = compile(&text).unwrap_err().to_string();
    assert!(errors.contains("unknown stage \"rollback\""), "{errors}");
    // The shipped policies carry the runbook's procedure.
    let compiled = compile_bytes("production.toml", PRODUCTION.as_bytes(), no_env).unwrap();
    let procedure = compiled.procedure.expect("a procedure");
    let names: Vec<&str> = procedure
        .steps_for(crate::procedure::config::Stage::Application, None)
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(names, ["rollback-application"]);
    assert!(procedure.database_rollback);
    assert_eq!(procedure.components(), ["backend", "database", "frontend"]);
}

#[test]
fn the_readme_example_policy_with_a_procedure_compiles() {
    let readme = include_str!("../../docs/policy.md");
    let example = readme
        .split("A complete policy with a procedure")
        .nth(1)
        .and_then(|rest| rest.split("```toml\n").nth(1))
        .and_then(|rest| rest.split("```").next())
        .expect("docs/policy.md has the complete example policy");
    let compiled = compile_bytes("docs/policy.md", example.as_bytes(), no_env)
        .unwrap_or_else(|errors| panic!("the example policy in docs/policy.md: {errors}"));
    let procedure = compiled.procedure.expect("a procedure");
    for &stage in crate::procedure::config::Stage::ALL {
        assert!(
            procedure.steps_for(stage, None).next().is_some(),
            "the example shows a {} step",
            stage.as_str()
        );
    }
    assert_eq!(procedure.components(), ["frontend"]);
    assert!(procedure.drill_every.is_some());
}

const NOTIFY: &str = r#"
[notify]
page = ["oncall", "alertmanager"]
notice = ["team"]
escalation = ["leads"]
escalate_after = "10m"

[[notify.channel]]
name = "oncall"
kind = "email"
server = "smtp+starttls://smtp.example.com:587"
from = "rollwatch@example.com"
to = ["oncall@example.com"]
username_env = "ROLLWATCH_SMTP_USER"
password_env = "ROLLWATCH_SMTP_PASSWORD"

[[notify.channel]]
name = "leads"
kind = "email"
server = "smtp://127.0.0.1"
from = "Rollwatch <rollwatch@example.com>"
to = ["leads@example.com", "cto@example.com"]

[[notify.channel]]
name = "alertmanager"
kind = "alertmanager"
url = "http://alertmanager:9093/"

[[notify.channel]]
name = "team"
kind = "webhook"
url = "https://hooks.example.com/T000"
timeout = "5s"
deadline = "2h"
"#;

#[test]
fn notification_channels_and_routes_compile() {
    use crate::policy::notify::{ChannelKind, SmtpSecurity};
    let compiled =
        compile_bytes("p.toml", format!("{MINIMAL}{NOTIFY}").as_bytes(), no_env).unwrap();
    let notify = compiled.notify.expect("a [notify]");
    assert_eq!(notify.routes.page, ["oncall", "alertmanager"]);
    assert_eq!(notify.routes.escalation, ["leads"]);
    assert_eq!(notify.escalate_after, std::time::Duration::from_secs(600));
    match &notify.channel("oncall").unwrap().kind {
        ChannelKind::Email {
            host,
            port,
            security,
            password_env,
            ..
        } => {
            assert_eq!(
                (host.as_str(), *port, *security),
                ("smtp.example.com", 587, SmtpSecurity::StartTls)
            );
            assert_eq!(password_env.as_deref(), Some("ROLLWATCH_SMTP_PASSWORD"));
        }
        other => panic!("{other:?}"),
    }
    match &notify.channel("leads").unwrap().kind {
        ChannelKind::Email { port, security, .. } => {
            assert_eq!((*port, *security), (25, SmtpSecurity::Plain))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        notify.channel("alertmanager").unwrap().kind,
        ChannelKind::Alertmanager {
            url: "http://alertmanager:9093".into()
        }
    );
    let team = notify.channel("team").unwrap();
    assert_eq!(team.timeout, std::time::Duration::from_secs(5));
    assert_eq!(team.deadline, std::time::Duration::from_secs(7200));
}

#[test]
fn broken_channels_are_errors_that_say_where_and_what() {
    let broken = NOTIFY
        .replace(
            "page = [\"oncall\", \"alertmanager\"]",
            "page = [\"oncal\"]",
        )
        .replace(
            "smtp+starttls://smtp.example.com:587",
            "http://smtp.example.com",
        )
        .replace("to = [\"oncall@example.com\"]", "to = [\"not an address\"]")
        .replace("kind = \"webhook\"", "kind = \"slack\"");
    let errors = compile(&format!("{MINIMAL}{broken}"))
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("unknown channel \"oncal\", expected one of oncall, leads, alertmanager"),
        "{errors}"
    );
    assert!(
        errors.contains("is not an SMTP URL, expected smtp://host:25"),
        "{errors}"
    );
    assert!(
        errors.contains("\"not an address\" is not an email address"),
        "{errors}"
    );
    assert!(
        errors.contains("unknown channel kind \"slack\""),
        "{errors}"
    );
    // Positions point into the file.
    assert!(errors.contains("p.toml:"), "{errors}");
    let missing = format!("{MINIMAL}[[notify.channel]]\nname = \"x\"\nkind = \"email\"\n");
    let errors = compile(&missing).unwrap_err().to_string();
    assert!(
        errors.contains("a channel of kind email needs `server`"),
        "{errors}"
    );
    assert!(errors.contains("needs `to`"), "{errors}");
}

#[test]
fn an_smtp_user_name_without_a_password_is_an_error_not_a_silent_anonymous_send() {
    let without_password = NOTIFY.replace("password_env = \"ROLLWATCH_SMTP_PASSWORD\"\n", "");
    let errors = compile(&format!("{MINIMAL}{without_password}"))
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("username_env is set but password_env is not"),
        "{errors}"
    );
    assert!(errors.contains("p.toml:"), "{errors}");
    let without_user = NOTIFY.replace("username_env = \"ROLLWATCH_SMTP_USER\"\n", "");
    let errors = compile(&format!("{MINIMAL}{without_user}"))
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("password_env is set but username_env is not"),
        "{errors}"
    );
}

#[test]
fn a_steps_env_names_variables_and_never_rollwatchs_own() {
    let text = format!(
        "{MINIMAL}[procedure]\n[[procedure.step]]\nname = \"app\"\nstage = \"application\"\ncommand = [\"./app.sh\"]\nenv = [\"KUBECONFIG\", \"BAD-NAME\", \"ROLLWATCH_API_TOKEN\"]\n"
    );
    let errors = compile(&text).unwrap_err().to_string();
    assert!(
        errors.contains("\"BAD-NAME\" is not a variable name"),
        "{errors}"
    );
    assert!(
        errors.contains("\"ROLLWATCH_API_TOKEN\" is rollwatch's own"),
        "{errors}"
    );
    assert!(
        errors.contains("p.toml:15:7"),
        "located at the list: {errors}"
    );
    let text = format!(
        "{MINIMAL}[procedure]\n[[procedure.step]]\nname = \"app\"\nstage = \"application\"\ncommand = [\"./app.sh\"]\nidempotent = true\nenv = [\"KUBECONFIG\"]\n"
    );
    let compiled = compile_bytes("p.toml", text.as_bytes(), no_env).unwrap();
    let step = &compiled.procedure.unwrap().steps[0];
    assert!(step.idempotent);
    assert_eq!(step.command.pass_env, ["KUBECONFIG"]);
}

/// The prometheus example policy with `lookup` for its variables.
fn compile_prometheus_example(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Compiled, PolicyErrors> {
    let text = include_str!("../../policies/examples/prometheus.toml");
    compile_bytes("prometheus.toml", text.as_bytes(), lookup)
}

fn queries(compiled: &Compiled) -> &crate::sources::config::Queries {
    match compiled.source.as_ref().map(|s| &s.kind) {
        Some(crate::sources::config::SourceKind::Prometheus { queries, .. }) => queries,
        other => panic!("expected a prometheus source, found {other:?}"),
    }
}

/// An environment whose `TARGET_JOB` (and `TARGET_SERVICE`) is `value`.
fn hostile_env(value: &'static str) -> impl Fn(&str) -> Option<String> {
    move |name: &str| match name {
        "PROMETHEUS_URL" => Some("http://127.0.0.1:9090".into()),
        "TARGET_JOB" | "TARGET_SERVICE" => Some(value.into()),
        _ => None,
    }
}

#[test]
fn a_quote_in_a_variable_cannot_add_keys_to_the_toml() {
    // Pasted raw, this value closed the string and started a [notify] table.
    let value = "web\"\n[notify]\nx = \"1";
    let text = MINIMAL.replace("\"web\"", "\"${SERVICE_NAME}\"");
    let lookup = |name: &str| (name == "SERVICE_NAME").then(|| value.to_string());
    let policy = from_bytes("p.toml", text.as_bytes(), lookup).expect("the value is escaped");
    assert_eq!(policy.service, value);
    // Backslashes and control characters come through unchanged too.
    let value = "a\\b\tc\u{1}\r";
    let lookup = |name: &str| (name == "SERVICE_NAME").then(|| value.to_string());
    let policy = from_bytes("p.toml", text.as_bytes(), lookup).expect("the value is escaped");
    assert_eq!(policy.service, value);
}

#[test]
fn a_variable_in_a_literal_string_that_would_end_it_is_refused_by_name() {
    let text = MINIMAL.replace("\"web\"", "'${SERVICE_NAME}'");
    let secret = "hunter2'\nx = 'y";
    let lookup = |name: &str| (name == "SERVICE_NAME").then(|| secret.to_string());
    let errors = from_bytes("p.toml", text.as_bytes(), lookup).unwrap_err();
    let message = errors.to_string();
    assert!(
        message.contains("p.toml:2:12: the value of environment variable \"SERVICE_NAME\""),
        "{message}"
    );
    assert!(
        !message.contains("hunter2"),
        "the value is never printed: {message}"
    );
    // A plain value still goes into a literal string as it is.
    let lookup = |name: &str| (name == "SERVICE_NAME").then(|| "we\"b".to_string());
    let policy = from_bytes("p.toml", text.as_bytes(), lookup).unwrap();
    assert_eq!(policy.service, "we\"b");
}

#[test]
fn a_variable_outside_a_string_must_be_a_plain_token() {
    let text = MINIMAL.replace("\"5%\"", "\"5%\"\nmin_requests = ${MIN}");
    let lookup = |value: &'static str| move |name: &str| (name == "MIN").then(|| value.into());
    let policy = from_bytes("p.toml", text.as_bytes(), lookup("20")).unwrap();
    assert_eq!(policy.rules.len(), 1);
    let errors = from_bytes("p.toml", text.as_bytes(), lookup("20\n[notify]"))
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains("environment variable \"MIN\" is used outside a string"),
        "{errors}"
    );
    assert!(!errors.contains("[notify]"), "{errors}");
}

#[test]
fn a_quote_in_a_variable_cannot_rewrite_a_query() {
    // Pasted raw, this value ended job="..." and or-ed a constant into the query.
    let compiled = compile_prometheus_example(hostile_env("web\"} or vector(1e9) #\\"))
        .expect("the value is escaped");
    assert_eq!(
        queries(&compiled).requests.as_deref(),
        Some(
            r#"sum(rate(http_requests_total{job="web\"} or vector(1e9) #\\"}[1m])) * $interval_seconds"#
        )
    );
    // The service name outside the query is the value itself.
    assert_eq!(compiled.policy.service, "web\"} or vector(1e9) #\\");
}

#[test]
fn a_newline_in_a_query_variable_is_refused_by_name() {
    let errors = compile_prometheus_example(hostile_env("web\nsecret"))
        .expect_err("the value is refused")
        .to_string();
    assert!(
        errors.contains(
            "prometheus.toml:20:47: the value of environment variable \"TARGET_JOB\" holds a control character"
        ),
        "{errors}"
    );
    assert!(!errors.contains("secret"), "{errors}");
}

#[test]
fn a_variable_outside_a_quoted_label_value_must_be_a_plain_name() {
    let text = "[source]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:9090\"\n\
                [source.queries]\nrequests = \"sum(rate(${METRIC}[1m]))\"\n"
        .to_string()
        + MINIMAL;
    let lookup = |value: &'static str| move |name: &str| (name == "METRIC").then(|| value.into());
    let compiled = compile_bytes("p.toml", text.as_bytes(), lookup("http_requests_total")).unwrap();
    assert_eq!(
        queries(&compiled).requests.as_deref(),
        Some("sum(rate(http_requests_total[1m]))")
    );
    let errors = compile_bytes("p.toml", text.as_bytes(), lookup("up) or vector(1"))
        .expect_err("the value is refused")
        .to_string();
    assert!(
        errors.contains("environment variable \"METRIC\" is used outside a quoted label value"),
        "{errors}"
    );
}

#[test]
fn a_quote_in_a_selector_variable_stays_in_its_label_value() {
    let text = "[source]\nkind = \"scrape\"\nurl = \"http://127.0.0.1:8080/metrics\"\n\
                [source.metrics]\nrequests = 'http_requests_total{job=\"${JOB}\"}'\n"
        .to_string()
        + MINIMAL;
    let lookup = |name: &str| (name == "JOB").then(|| "a\",code=\"500".to_string());
    let compiled = compile_bytes("p.toml", text.as_bytes(), lookup).expect("the value is escaped");
    let Some(crate::sources::config::SourceKind::Scrape { metrics, .. }) =
        compiled.source.as_ref().map(|s| &s.kind)
    else {
        panic!("expected a scrape source");
    };
    let selector = metrics.requests.as_ref().expect("a requests selector");
    assert_eq!(selector.matchers.len(), 1, "{selector:?}");
    assert_eq!(selector.matchers[0].value, "a\",code=\"500");
}

#[test]
fn short_window_defaults_to_a_twelfth_of_the_window_or_one_interval() {
    let production = compile(PRODUCTION).unwrap();
    let short = |name: &str| production.rule(name).unwrap().short_window.num_seconds();
    // 2m / 12 = 10s < the 15s interval; 5m / 12 = 25s.
    assert_eq!(short("error-rate"), 15);
    assert_eq!(short("latency-degradation"), 25);
    assert_eq!(short("users-affected"), 15);
    let text = format!("{MINIMAL}window = \"1h\"\nfor = \"1h\"\n");
    let policy = compile(&text).unwrap();
    assert_eq!(policy.rules[0].short_window.num_seconds(), 300);
    let text = format!("{MINIMAL}for = \"2m\"\nshort_window = \"45s\"\n");
    let policy = compile(&text).unwrap();
    assert_eq!(policy.rules[0].short_window.num_seconds(), 45);
}

#[test]
fn a_short_window_must_fit_between_the_interval_and_the_window() {
    check_errors(
        &format!("{MINIMAL}for = \"2m\"\nshort_window = \"3m\"\n"),
        &[(11, 16, "short_window \"3m\" is longer than window = \"2m\"")],
    );
    check_errors(
        &format!("{MINIMAL}for = \"2m\"\nshort_window = \"5s\"\n"),
        &[(
            11,
            16,
            "short_window \"5s\" is shorter than the poll interval",
        )],
    );
    check_errors(
        "[target]\nservice = \"web\"\nenvironment = \"p\"\n[[rule]]\nname = \"down\"\ntier = \"immediate\"\nsignal = \"down\"\nshort_window = \"15s\"\n",
        &[(8, 16, "short_window has no meaning for signal \"down\"")],
    );
}
