//! The one implementation of the engine's calling order, used by every driver
//! (`backtest`, `run --dry-run`, `evaluate`): wake the engine at each deadline
//! up to an input's instant, hand the input in, and hand out each decision.
//! Pure: whoever calls it owns the clock and the IO.

use chrono::{DateTime, Utc};

use crate::engine::decision::Decision;
use crate::engine::policy::Action;
use crate::engine::{Engine, InputError};
use crate::trace::TraceItem;

/// What becomes of a rollback decision once it is handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollbacks {
    /// Nothing runs; it counts as succeeded at the instant it is decided
    /// (backtest, dry-run: docs/trace-format.md).
    SucceedAtOnce,
    /// The caller runs the procedure and reports its end.
    Reported,
}

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("writing a decision: {0}")]
    Output(#[from] std::io::Error),
}

/// Wakes the engine at every deadline it asked for up to `now`.
pub fn wake(
    engine: &mut Engine,
    now: DateTime<Utc>,
    rollbacks: Rollbacks,
    on_decision: &mut dyn FnMut(&Decision) -> std::io::Result<()>,
) -> Result<(), DriveError> {
    while let Some(deadline) = engine.poll_timeout().filter(|d| *d <= now) {
        engine.handle_timeout(deadline)?;
        drain(engine, rollbacks, on_decision)?;
    }
    Ok(())
}

/// Hands one input to the engine in the documented order.
pub fn feed(
    engine: &mut Engine,
    item: TraceItem,
    rollbacks: Rollbacks,
    on_decision: &mut dyn FnMut(&Decision) -> std::io::Result<()>,
) -> Result<(), DriveError> {
    wake(engine, item.at(), rollbacks, on_decision)?;
    match item {
        TraceItem::Observation(observation) => engine.handle_observation(&observation),
        TraceItem::Event { at, event } => engine.handle_event(at, event),
        TraceItem::NoData { at, reason } => engine.handle_no_data(at, &reason),
    }?;
    drain(engine, rollbacks, on_decision)
}

/// Hands out every pending decision.
pub fn drain(
    engine: &mut Engine,
    rollbacks: Rollbacks,
    on_decision: &mut dyn FnMut(&Decision) -> std::io::Result<()>,
) -> Result<(), DriveError> {
    while let Some(decision) = engine.poll_decision() {
        on_decision(&decision)?;
        if rollbacks == Rollbacks::SucceedAtOnce
            && decision.action == Action::Rollback
            && let Some(incident) = decision.incident
        {
            engine.handle_rollback_finished(decision.at, incident, Ok(()))?;
        }
    }
    Ok(())
}
