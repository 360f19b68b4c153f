//! Acting on decisions: the rollback procedure, crash-safe through the store
//! (SPEC 6), and the incident record around it.

pub mod actor;
pub mod drill;
pub mod failpoint;
pub mod plan;
pub mod procedure;
pub mod runner;
