//! rollwatch: a watchdog that decides when to roll a deployment back.
pub mod backtest;
pub mod cli;
pub mod drive;
pub mod engine;
pub mod explain;
pub mod live;
pub mod policy;
pub mod procedure;
pub mod runtime;
pub mod server;
pub mod sources;
pub mod store;
pub mod telemetry;
pub mod trace;
