//! Policy files for tests and benches, built instead of pasted: most tests
//! watch the stand-in service (`common::service`) with one error-rate rule,
//! and differ in a few settings. `Policy::stand_in(url)` is that policy; the
//! methods change what a test is about, and `text()` gives the TOML.

use std::fmt::Write;
use std::path::Path;

/// A policy file for the stand-in service at `url`.
#[derive(Clone, Debug)]
pub struct Policy {
    service: String,
    environment: String,
    url: String,
    evaluation: Vec<(String, String)>,
    baseline_fixed: Option<String>,
    actions: Vec<(String, String)>,
    stabilization: Option<String>,
    version: bool,
    health: bool,
    rule_for: String,
    procedure: Option<Vec<String>>,
    extra: String,
}

impl Policy {
    /// `web` in staging on the stand-in service's `/metrics`, polled every
    /// second (900 ms timeout), its version from `app_build_info`; one rule,
    /// `error-rate` (consider tier) over 5 % with at least 50 requests for
    /// 3 s; the consider tier rolls back. No procedure.
    pub fn stand_in(url: &str) -> Policy {
        Policy {
            service: "web".into(),
            environment: "staging".into(),
            url: url.into(),
            evaluation: vec![("interval".into(), "\"1s\"".into())],
            baseline_fixed: None,
            actions: vec![("consider".into(), "\"rollback\"".into())],
            stabilization: None,
            version: true,
            health: false,
            rule_for: "3s".into(),
            procedure: None,
            extra: String::new(),
        }
    }

    pub fn service(mut self, service: &str) -> Policy {
        self.service = service.into();
        self
    }

    pub fn environment(mut self, environment: &str) -> Policy {
        self.environment = environment.into();
        self
    }

    /// An `[evaluation]` setting, `value` as TOML (`"\"3s\""`).
    pub fn evaluation(mut self, key: &str, value: &str) -> Policy {
        set(&mut self.evaluation, key, value);
        self
    }

    pub fn baseline_fixed(mut self, latency: &str) -> Policy {
        self.baseline_fixed = Some(latency.into());
        self
    }

    /// An `[actions]` setting, `value` as TOML (`"\"page\""`).
    pub fn action(mut self, key: &str, value: &str) -> Policy {
        set(&mut self.actions, key, value);
        self
    }

    /// The stabilization watch's length (`"3s"`).
    pub fn stabilization(mut self, duration: &str) -> Policy {
        self.stabilization = Some(duration.into());
        self
    }

    /// No `version` metric: deployments are not seen.
    pub fn without_version(mut self) -> Policy {
        self.version = false;
        self
    }

    /// A health probe on the stand-in service's `/healthz`.
    pub fn with_health(mut self) -> Policy {
        self.health = true;
        self
    }

    /// The rule's `for` (`"2s"`).
    pub fn rule_for(mut self, duration: &str) -> Policy {
        self.rule_for = duration.into();
        self
    }

    /// A `[procedure]` section, with no step yet.
    pub fn procedure(mut self) -> Policy {
        self.procedure.get_or_insert_with(Vec::new);
        self
    }

    /// A procedure step running `argv`, with `more` TOML lines of its own
    /// (`timeout = "20s"`, `idempotent = true`); adds `[procedure]`.
    pub fn step(mut self, name: &str, stage: &str, argv: &[&str], more: &str) -> Policy {
        let argv: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
        let mut step = format!(
            "[[procedure.step]]\nname = \"{name}\"\nstage = \"{stage}\"\ncommand = [{}]\n",
            argv.join(", ")
        );
        if !more.is_empty() {
            step.push_str(more.trim_end());
            step.push('\n');
        }
        self.procedure.get_or_insert_with(Vec::new).push(step);
        self
    }

    /// TOML appended as it is (a `[notify]` section, more rules).
    pub fn extra(mut self, toml: &str) -> Policy {
        self.extra.push_str(toml);
        if !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    pub fn text(&self) -> String {
        let mut t = String::new();
        let url = &self.url;
        let _ = writeln!(
            t,
            "[target]\nservice = \"{}\"\nenvironment = \"{}\"",
            self.service, self.environment
        );
        t.push_str("[evaluation]\n");
        for (key, value) in &self.evaluation {
            let _ = writeln!(t, "{key} = {value}");
        }
        if let Some(fixed) = &self.baseline_fixed {
            let _ = writeln!(t, "[baseline]\nfixed = \"{fixed}\"");
        }
        t.push_str("[actions]\n");
        for (key, value) in &self.actions {
            let _ = writeln!(t, "{key} = {value}");
        }
        if let Some(duration) = &self.stabilization {
            let _ = writeln!(t, "[stabilization]\nduration = \"{duration}\"");
        }
        let _ = writeln!(
            t,
            "[source]\nkind = \"scrape\"\nurl = \"{url}/metrics\"\ntimeout = \"900ms\"\n\
             [source.metrics]\nrequests = \"http_requests_total\"\n\
             errors = 'http_requests_total{{code=~\"5..\"}}'"
        );
        if self.version {
            t.push_str("version = \"app_build_info\"\n");
        }
        if self.health {
            let _ = writeln!(t, "[health]\nurl = \"{url}/healthz\"\ntimeout = \"900ms\"");
        }
        let _ = writeln!(
            t,
            "[[rule]]\nname = \"error-rate\"\ntier = \"consider\"\nsignal = \"error-rate\"\n\
             threshold = \"5%\"\nmin_requests = 50\nfor = \"{}\"",
            self.rule_for
        );
        if let Some(steps) = &self.procedure {
            t.push_str("[procedure]\n");
            for step in steps {
                t.push_str(step);
            }
        }
        t.push_str(&self.extra);
        t
    }

    /// Writes the policy to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.text())
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

fn set(settings: &mut Vec<(String, String)>, key: &str, value: &str) {
    match settings.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = value.into(),
        None => settings.push((key.into(), value.into())),
    }
}
