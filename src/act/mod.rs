//! Acting on decisions: the rollback procedure, crash-safe through the store
//! (docs/operations.md#acting-the-rollback-procedure), and the incident record around it.

pub mod actor;
pub mod drill;
pub mod failpoint;
pub mod plan;
pub mod procedure;
pub mod runner;
