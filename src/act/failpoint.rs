//! Crash injection for the crash-safety tests: `ROLLWATCH_FAILPOINT=NAME[,NAME]`
//! makes the process kill itself with SIGKILL (exactly `kill -9`: no
//! destructor, no flush) when it reaches a point of that name, such as
//! `after-step:create-backup` (the step's end is committed, the next step's
//! start is not). Read once; unset (always, in production) it costs one
//! atomic load per point.

use std::sync::OnceLock;

static ARMED: OnceLock<Vec<String>> = OnceLock::new();

/// Dies here, as with `kill -9`, when the point is armed.
pub fn hit(point: &str) {
    let armed = ARMED.get_or_init(|| {
        std::env::var("ROLLWATCH_FAILPOINT")
            .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
            .unwrap_or_default()
    });
    if armed.iter().any(|p| p == point) {
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
