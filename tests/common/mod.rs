//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod mail;
pub mod pg;
pub mod process;
pub mod prometheus;
pub mod service;
