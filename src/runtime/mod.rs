//! The live side: polling targets on the clock, feeding the engine, and
//! carrying out (or, in dry-run, printing) its decisions.
pub mod poll;
pub mod record;
pub mod status;
pub mod target;
pub mod target_loop;
