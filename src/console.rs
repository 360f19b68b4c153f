//! Console output for people: `say` writes one line on stdout. The one place
//! the sidecar writes to stdout (commands print their own results), and a
//! leaf: what a line says is made where its subject lives
//! (`Decision::line`, `notify::message::dry_run_lines`); a closed stdout
//! never stops the watchdog.

/// One line on stdout. A closed stdout (the reader went away) must not take
/// the watchdog down with it: the line goes to the log instead.
pub fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush()) {
        tracing::warn!(%error, "stdout is closed; the line follows here: {line}");
    }
}
