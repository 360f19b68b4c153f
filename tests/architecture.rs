//! Architecture invariants that a grep can check (ARCHITECTURE.md).

use std::path::Path;

/// The engine does no IO, reads no clock and no environment, and is not async.
#[test]
fn the_engine_imports_no_io_clock_or_runtime() {
    let forbidden = [
        "tokio",
        "reqwest",
        "sqlx",
        "lettre",
        "SystemTime",
        "Instant",
        "Utc::now",
        "Local::now",
        "std::fs",
        "std::net",
        "std::env",
        "std::process",
        "std::thread",
        "async ",
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/engine");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in forbidden {
                assert!(
                    !code.contains(word),
                    "{}:{}: the engine must not use {word}: {line}",
                    path.display(),
                    number + 1
                );
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "expected the engine's modules in {}",
        dir.display()
    );
}
