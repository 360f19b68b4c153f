//! Running the rollback procedure's steps and named checks as child processes.
pub mod command;
