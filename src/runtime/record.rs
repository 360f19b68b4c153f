//! `--record FILE`: what was observed, written in the trace format
//! (docs/trace-format.md) as it happens, so a live incident can be replayed
//! with `backtest` later.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::trace::{TraceItem, to_line};

/// Shared by every target of one process; each line is written and flushed whole.
#[derive(Clone)]
pub struct Recorder {
    out: Arc<Mutex<BufWriter<File>>>,
}

impl Recorder {
    pub fn create(path: &Path) -> std::io::Result<Recorder> {
        let file = File::create(path)?;
        Ok(Recorder {
            out: Arc::new(Mutex::new(BufWriter::new(file))),
        })
    }

    pub fn record(&self, item: &TraceItem) {
        let line = to_line(item);
        // A poisoned lock only means another writer panicked mid-line; keep going.
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Err(error) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            tracing::error!(%error, "writing the recording failed");
        }
    }
}
