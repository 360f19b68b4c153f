//! rollwatch: a watchdog that decides when to roll a deployment back.
pub mod engine;
pub mod policy;
pub mod backtest;
pub mod trace;
pub mod cli;
pub mod explain;
