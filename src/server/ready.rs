//! Readiness (`GET /readyz`): ready once the policies are loaded, the store
//! is open, every target's loop has started and (with several replicas)
//! leadership has been contended for once; not ready again once shutting
//! down. Liveness (`/healthz`) is another matter: it only says the process
//! answers.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

/// Whether leadership has been contended for once (`crate::ha::Leader`).
pub type Contended = Arc<dyn Fn() -> bool + Send + Sync>;

/// Shared between `rollwatch run`, its target loops and the API.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<State>>);

#[derive(Default)]
struct State {
    policies: bool,
    store: bool,
    /// Set once the targets to wait for are known.
    loops_known: bool,
    /// Targets whose loop has not started yet.
    waiting: BTreeSet<String>,
    leadership: Option<Contended>,
    stopping: bool,
}

impl Readiness {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every policy is read and validated.
    pub fn policies_loaded(&self) {
        self.state().policies = true;
    }

    /// The store is open (or there is none: a dry run).
    pub fn store_open(&self) {
        self.state().store = true;
    }

    /// The targets whose loops must start before rollwatch is ready.
    pub fn expect_loops(&self, targets: impl IntoIterator<Item = String>) {
        let mut state = self.state();
        state.waiting.extend(targets);
        state.loops_known = true;
    }

    /// The loop of `target` has started.
    pub fn loop_started(&self, target: &str) {
        self.state().waiting.remove(target);
    }

    /// With several replicas: ready only once `contended` is true.
    pub fn leadership(&self, contended: Contended) {
        self.state().leadership = Some(contended);
    }

    /// Shutting down: not ready any more, for good.
    pub fn stopping(&self) {
        self.state().stopping = true;
    }

    pub fn is_stopping(&self) -> bool {
        self.state().stopping
    }

    /// Ready, or why not.
    pub fn check(&self) -> Result<(), &'static str> {
        let state = self.state();
        if state.stopping {
            Err("shutting down")
        } else if !state.policies {
            Err("loading the policies")
        } else if !state.store {
            Err("opening the store")
        } else if !state.loops_known || !state.waiting.is_empty() {
            Err("starting the target loops")
        } else if state
            .leadership
            .as_ref()
            .is_some_and(|contended| !contended())
        {
            Err("contending for leadership")
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_once_everything_has_started_and_not_once_stopping() {
        let ready = Readiness::default();
        assert_eq!(ready.check(), Err("loading the policies"));
        ready.policies_loaded();
        assert_eq!(ready.check(), Err("opening the store"));
        ready.store_open();
        assert_eq!(ready.check(), Err("starting the target loops"));
        ready.expect_loops(["web/a".to_string(), "web/b".to_string()]);
        ready.loop_started("web/a");
        assert_eq!(ready.check(), Err("starting the target loops"));
        ready.loop_started("web/b");
        assert_eq!(ready.check(), Ok(()));
        let contended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = Arc::clone(&contended);
        ready.leadership(Arc::new(move || {
            seen.load(std::sync::atomic::Ordering::Relaxed)
        }));
        assert_eq!(ready.check(), Err("contending for leadership"));
        contended.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(ready.check(), Ok(()));
        ready.stopping();
        assert_eq!(ready.check(), Err("shutting down"));
    }

    #[test]
    fn no_targets_yet_is_ready() {
        let ready = Readiness::default();
        ready.policies_loaded();
        ready.store_open();
        ready.expect_loops([]);
        assert_eq!(ready.check(), Ok(()));
    }
}
