//! Crash injection for the crash-safety tests:
//! `ROLLWATCH_FAILPOINT=NAME[,NAME]` makes the process kill itself with SIGKILL
//! (exactly `kill -9`: no destructor, no flush) when it reaches a point of that
//! name, such as `after-step:create-backup` (the step's end is committed, the
//! next step's start is not). `fail:NAME` instead makes the operation of that
//! name fail as if the database had refused it (`fail:enqueue-notification`).
//! Read once; unset (always, in production) it costs one atomic load per point.
//! Compiled into debug builds only (the ones `cargo test` runs): a release
//! binary has no way to be told to kill itself.

#[cfg(debug_assertions)]
use std::sync::OnceLock;

#[cfg(debug_assertions)]
static ARMED: OnceLock<Vec<String>> = OnceLock::new();

/// Whether this build honours `ROLLWATCH_FAILPOINT` at all.
pub const COMPILED_IN: bool = cfg!(debug_assertions);

/// Dies here, as with `kill -9`, when the point is armed (debug builds).
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_point: &str) {}

/// Whether the operation `name` is to fail here (debug builds).
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn fails(_name: &str) -> bool {
    false
}

#[cfg(debug_assertions)]
fn armed() -> &'static [String] {
    ARMED.get_or_init(|| {
        std::env::var("ROLLWATCH_FAILPOINT")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    })
}

/// Whether the operation `name` is to fail here: armed as `fail:NAME`.
#[cfg(debug_assertions)]
pub fn fails(name: &str) -> bool {
    let fails = armed()
        .iter()
        .any(|p| p.strip_prefix("fail:") == Some(name));
    if fails {
        tracing::error!(
            name,
            "failpoint armed by ROLLWATCH_FAILPOINT: failing this operation"
        );
    }
    fails
}

/// Dies here, as with `kill -9`, when the point is armed.
#[cfg(debug_assertions)]
pub fn hit(point: &str) {
    if armed().iter().any(|p| p == point) {
        tracing::error!(
            point,
            "failpoint armed by ROLLWATCH_FAILPOINT: killing this process"
        );
        // SAFETY: kill(2) with our own pid and a valid signal has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
