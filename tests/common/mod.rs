//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod mail;
pub mod pg;
pub mod policy;
pub mod process;
pub mod prometheus;
pub mod service;

/// The real server a test needs (`what`, with how to get it) is missing.
/// Under CI (`CI` set; `.ci/run` sets it) that is a failure: this panics.
/// Elsewhere the caller skips its test, and this says so in a line that
/// shows in a plain `cargo test`: libtest captures `eprintln!` and would show
/// the skipped test as a silent `ok`, but not a write to the process's stderr.
pub fn server_missing(what: &str) {
    if std::env::var_os("CI").is_some() {
        panic!(
            "{what}, under CI: a real-component test must run (`bash .ci/servers` installs and starts its servers)"
        );
    }
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {what} (`bash .ci/servers` installs and starts it; under CI this fails)"
    );
}
