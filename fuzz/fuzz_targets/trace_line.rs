//! Trace lines: no input panics, and a line that parses is written back as a
//! line that parses to the same item.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::trace::{parse_line, to_line};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(item) = parse_line(text) else {
        return;
    };
    let line = to_line(&item);
    let again = parse_line(&line)
        .unwrap_or_else(|e| panic!("{line:?} (written from {text:?}) does not parse: {e}"));
    assert_eq!(to_line(&again), line);
});
