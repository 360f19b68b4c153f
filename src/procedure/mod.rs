//! The rollback procedure: its steps as the policy describes them (`config`)
//! and running them, and named checks, as child processes (`command`).
pub mod command;
pub mod config;
