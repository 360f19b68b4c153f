//! The selector parser: no input panics, and a selector that parses prints as
//! text that parses to the same matchers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollwatch::sources::selector::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = Selector::parse(text) else {
        return;
    };
    let labels: Vec<(String, String)> = selector
        .matchers
        .iter()
        .map(|m| (m.label.clone(), m.value.clone()))
        .collect();
    let _ = selector.matches_labels(&labels);
    let printed = selector.to_string();
    let again = Selector::parse(&printed)
        .unwrap_or_else(|e| panic!("{printed:?} (printed from {text:?}) does not parse: {e}"));
    assert_eq!(again.metric, selector.metric);
});
