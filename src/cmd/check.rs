//! `rollwatch check`: compile each policy file and say what it holds, or
//! every error with its place (exit 2).

use std::path::PathBuf;

use super::Failure;
use crate::policy;

pub fn check(paths: &[PathBuf]) -> Result<(), Failure> {
    let mut failed = Vec::new();
    for path in paths {
        match policy::load(path) {
            Ok(policy) => println!(
                "ok: {} ({} in {}, {} rules, sha256:{})",
                path.display(),
                policy.service,
                policy.environment,
                policy.rules.len(),
                policy.short_hash()
            ),
            Err(errors) => failed.push(errors.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::Usage(failed.join("\n")))
    }
}
