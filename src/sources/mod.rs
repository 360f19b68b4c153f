//! Sources: fetch what a target looks like and turn it into observations.
pub mod config;
pub mod exposition;
pub mod history;
pub mod http;
pub mod prometheus;
pub mod scrape;
pub mod selector;
