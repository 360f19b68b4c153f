//! The policy compiler, from bytes through `${VAR}` substitution, TOML and
//! validation, then the explanation of what compiled: no input panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// A fixed environment, with values that try to escape their strings.
fn lookup(name: &str) -> Option<String> {
    match name {
        "TARGET_URL" => Some("http://127.0.0.1:8080".into()),
        "PROMETHEUS_URL" => Some("http://127.0.0.1:9090".into()),
        "TARGET_JOB" => Some("web\"} or vector(1) #".into()),
        "TARGET_SERVICE" => Some("web\"\n[notify]".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    match rollwatch::policy::compile_bytes("fuzz.toml", data, lookup) {
        Ok(compiled) => {
            let _ = rollwatch::cmd::explain::explain(&compiled.policy);
            let _ = rollwatch::cmd::explain::explain_procedure(compiled.procedure.as_ref());
        }
        Err(errors) => {
            let _ = errors.to_string();
        }
    }
});
