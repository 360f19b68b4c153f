//! Table-driven: each case is a list of checks (what the files look like,
//! what the loops do in between) and the actions each check calls for.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{Action, Ledger, Look, Loop, Read, Scanned, Why, target_name};

/// A valid policy for `web/ENV`; `threshold` tells two edits apart.
fn policy(env: &str, threshold: &str) -> String {
    format!(
        "[target]\nservice = \"web\"\nenvironment = \"{env}\"\n\n[[rule]]\nname = \"error-rate\"\ntier = \"consider\"\nsignal = \"error-rate\"\nthreshold = \"{threshold}\"\n"
    )
}

const BROKEN: &str = "[target]\nservice = \"web\"\nenvironment = \"x\"\ntreshold = 1\n";

/// What one file looks like at a check.
#[derive(Clone, Copy)]
enum F {
    /// Written (again): its text.
    Text(&'static str, &'static str),
    /// As at the last check.
    Same,
    /// Not listed.
    Gone,
    /// Listed, gone when read.
    Vanished,
    Unreadable,
}

/// One step of a case.
enum Step {
    /// A look at the files (`forced`: SIGHUP), and the actions expected.
    Check(bool, &'static [(&'static str, F)], &'static [&'static str]),
    /// The directory `dir` cannot be listed, and these files are seen.
    Unlisted(&'static [(&'static str, F)], &'static [&'static str]),
    /// The loop of a target ends (it was told to stop): what is started.
    Ends(&'static str, Option<&'static str>),
    /// The reloads of the next check are not taken by the loop.
    Refusing,
}

use F::*;
use Step::*;

const STAGING: F = Text("staging", "5%");
const STAGING_EDIT: F = Text("staging", "50%");
const QA: F = Text("qa", "5%");

fn text(f: F) -> Option<String> {
    match f {
        Text(env, "broken") => Some(BROKEN.replace("\"x\"", &format!("\"{env}\""))),
        Text(env, threshold) => Some(policy(env, threshold)),
        _ => None,
    }
}

/// An action, as one line.
fn line(action: &Action) -> String {
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    match action {
        Action::Start { path, target } => format!("start {} {}", target_name(target), name(path)),
        Action::Stop { name: t, path, why } => match why {
            Why::Removed => format!("stop {t} {} removed", name(path)),
            Why::Renamed(to) => format!("stop {t} {} renamed {to}", name(path)),
        },
        Action::Reload { name: t, path, .. } => format!("reload {t} {}", name(path)),
        Action::Restored { path, running } => {
            format!(
                "restored {} {}",
                name(path),
                running.as_deref().unwrap_or("-")
            )
        }
        Action::Clear { path } => format!("clear {}", name(path)),
        Action::Reject {
            path,
            target,
            running,
            reason,
        } => {
            let why = if reason.contains("already watched") {
                "duplicate"
            } else if reason.contains("cannot read") {
                "unreadable"
            } else {
                "invalid"
            };
            let running = if *running { " running" } else { "" };
            let target = target.as_deref().unwrap_or("-");
            format!("reject {} {target}{running} {why}", name(path))
        }
    }
}

/// Plays a case: the ledger, the loops (as the fleet would run them) and
/// each file's stamp.
fn play(case: &str, steps: &[Step]) {
    let dir = PathBuf::from("/policies");
    let mut ledger = Ledger::default();
    let mut loops: HashMap<String, Loop> = HashMap::new();
    let mut texts: HashMap<&str, String> = HashMap::new();
    let mut clock = 0u64;
    let mut refusing = false;
    for (n, step) in steps.iter().enumerate() {
        let (forced, files, unlisted, expected) = match step {
            Check(forced, files, expected) => (*forced, *files, vec![], *expected),
            Unlisted(files, expected) => (false, *files, vec![dir.clone()], *expected),
            Ends(name, started) => {
                let ended = loops.remove(*name).expect("the loop runs");
                assert!(ended.stopping, "{case} step {n}: {name} ends unasked");
                let next = ledger.handed_over(name);
                let got = next.as_ref().map(|(path, target)| {
                    loops.insert(
                        target_name(target),
                        Loop {
                            path: path.clone(),
                            stopping: false,
                        },
                    );
                    path.file_name().unwrap().to_string_lossy().into_owned()
                });
                assert_eq!(got.as_deref(), *started, "{case} step {n}");
                continue;
            }
            Refusing => {
                refusing = true;
                continue;
            }
        };
        let stamps = ledger.stamps();
        let mut scanned = Scanned {
            forced,
            unlisted,
            ..Scanned::default()
        };
        for (file, f) in files {
            let path = dir.join(file);
            let read = match f {
                Gone => continue,
                Vanished => Read::Missing,
                Unreadable => Read::Unreadable("permission denied".into()),
                Same => {
                    let text = texts[file].clone();
                    // As `scan` does: unchanged stamps are not read.
                    let stamp = stamps.get(&path).copied().flatten();
                    if stamp.is_some() && !forced {
                        scanned.files.insert(
                            path,
                            Look {
                                stamp,
                                read: Read::Unchanged,
                            },
                        );
                        continue;
                    }
                    Read::Bytes(text.into_bytes())
                }
                Text(..) => {
                    let text = text(*f).unwrap();
                    texts.insert(file, text.clone());
                    clock += 1;
                    Read::Bytes(text.into_bytes())
                }
            };
            let stamp = match &read {
                Read::Bytes(bytes) => Some((
                    bytes.len() as u64,
                    SystemTime::UNIX_EPOCH + Duration::from_secs(clock),
                )),
                _ => None,
            };
            // A file written again with a known text keeps a new stamp.
            let stamp = stamp.map(|(len, _)| {
                let known = stamps.get(&path).copied().flatten();
                match (f, known) {
                    (Same, Some(known)) => known,
                    _ => (len, SystemTime::UNIX_EPOCH + Duration::from_secs(clock)),
                }
            });
            scanned.files.insert(path, Look { stamp, read });
        }
        let actions = ledger.reconcile(&loops, scanned, |path, bytes| {
            crate::policy::compile_bytes(&path.display().to_string(), bytes, |_| None)
                .map_err(|e| e.to_string())
        });
        // The fleet carries the actions out.
        for action in &actions {
            match action {
                Action::Start { path, target } => {
                    let name = target_name(target);
                    assert!(!loops.contains_key(&name), "{case} step {n}: two loops");
                    loops.insert(
                        name,
                        Loop {
                            path: path.clone(),
                            stopping: false,
                        },
                    );
                }
                Action::Stop { name, path, .. } => {
                    if let Some(l) = loops.get_mut(name)
                        && &l.path == path
                    {
                        l.stopping = true;
                    }
                }
                Action::Reload { path, .. } if refusing => ledger.retry(path),
                Action::Reload { path, target, .. } => {
                    ledger.reloaded(path, &target.policy.sha256);
                }
                _ => {}
            }
        }
        refusing = false;
        let got: Vec<String> = actions.iter().map(line).collect();
        assert_eq!(got, *expected, "{case}: step {n}");
    }
}

#[test]
fn reconciliation_calls_for_these_actions() {
    let cases: &[(&str, &[Step])] = &[
        (
            "a new valid file starts its target; unchanged, nothing",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(false, &[("a.toml", Same)], &[]),
            ],
        ),
        (
            "a new invalid file is rejected once, and starts once fixed",
            &[
                Check(
                    false,
                    &[("a.toml", Text("staging", "broken"))],
                    &["reject a.toml - invalid"],
                ),
                Check(false, &[("a.toml", Same)], &[]),
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
            ],
        ),
        (
            "a valid edit reloads the running target",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(
                    false,
                    &[("a.toml", STAGING_EDIT)],
                    &["reload web/staging a.toml"],
                ),
                Check(false, &[("a.toml", Same)], &[]),
            ],
        ),
        (
            "an edit written again with the same text is nothing",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(false, &[("a.toml", STAGING)], &[]),
            ],
        ),
        (
            "a reload the loop did not take is tried again at the next check",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Refusing,
                Check(
                    false,
                    &[("a.toml", STAGING_EDIT)],
                    &["reload web/staging a.toml"],
                ),
                Check(false, &[("a.toml", Same)], &["reload web/staging a.toml"]),
                Check(false, &[("a.toml", Same)], &[]),
            ],
        ),
        (
            "a broken edit is rejected, the old target keeps running; undone, restored",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(
                    false,
                    &[("a.toml", Text("staging", "broken"))],
                    &["reject a.toml web/staging running invalid"],
                ),
                Check(false, &[("a.toml", Same)], &[]),
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["restored a.toml web/staging"],
                ),
            ],
        ),
        (
            "SIGHUP reads every file again: a broken one is reported again",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING), ("b.toml", Text("qa", "broken"))],
                    &[
                        "clear a.toml",
                        "start web/staging a.toml",
                        "reject b.toml - invalid",
                    ],
                ),
                Check(
                    true,
                    &[("a.toml", Same), ("b.toml", Same)],
                    &["reject b.toml - invalid"],
                ),
            ],
        ),
        (
            "an unreadable file is rejected once (again on SIGHUP)",
            &[
                Check(
                    false,
                    &[("a.toml", Unreadable)],
                    &["reject a.toml - unreadable"],
                ),
                Check(false, &[("a.toml", Unreadable)], &[]),
                Check(
                    true,
                    &[("a.toml", Unreadable)],
                    &["reject a.toml - unreadable"],
                ),
            ],
        ),
        (
            "an unreadable file of a running target keeps the target",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(
                    false,
                    &[("a.toml", Unreadable)],
                    &["reject a.toml web/staging running unreadable"],
                ),
            ],
        ),
        (
            "a file gone on two checks in a row stops its target",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(false, &[("a.toml", Gone)], &[]),
                Check(
                    false,
                    &[("a.toml", Gone)],
                    &["clear a.toml", "stop web/staging a.toml removed"],
                ),
                Ends("web/staging", None),
            ],
        ),
        (
            "a file gone once (an editor's save) is not a removal",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(false, &[("a.toml", Gone)], &[]),
                Check(false, &[("a.toml", Same)], &[]),
                Check(false, &[("a.toml", Gone)], &[]),
            ],
        ),
        (
            "a file listed but gone when read counts as gone",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(false, &[("a.toml", Vanished)], &[]),
                Check(
                    false,
                    &[("a.toml", Vanished)],
                    &["clear a.toml", "stop web/staging a.toml removed"],
                ),
            ],
        ),
        (
            "the files of a directory that cannot be listed are not gone",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Unlisted(&[], &[]),
                Unlisted(&[], &[]),
                Check(false, &[("a.toml", Same)], &[]),
            ],
        ),
        (
            "a second file for a watched target is refused",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(
                    false,
                    &[("a.toml", Same), ("b.toml", STAGING_EDIT)],
                    &["reject b.toml - duplicate"],
                ),
                Check(false, &[("a.toml", Same), ("b.toml", Same)], &[]),
            ],
        ),
        (
            "two new files for one target: the first (in path order) wins",
            &[Check(
                false,
                &[("a.toml", STAGING), ("b.toml", STAGING_EDIT)],
                &[
                    "clear a.toml",
                    "start web/staging a.toml",
                    "reject b.toml - duplicate",
                ],
            )],
        ),
        (
            "a file that now names another target stops the old and starts the new",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(
                    false,
                    &[("a.toml", QA)],
                    &[
                        "stop web/staging a.toml renamed web/qa",
                        "clear a.toml",
                        "start web/qa a.toml",
                    ],
                ),
                Ends("web/staging", None),
            ],
        ),
        (
            "a file renamed back to a target still stopping waits for its loop to end",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(
                    false,
                    &[("a.toml", QA)],
                    &[
                        "stop web/staging a.toml renamed web/qa",
                        "clear a.toml",
                        "start web/qa a.toml",
                    ],
                ),
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["stop web/qa a.toml renamed web/staging", "clear a.toml"],
                ),
                Ends("web/qa", None),
                Ends("web/staging", Some("a.toml")),
            ],
        ),
        (
            "an edit while waiting to start: the newest starts",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(
                    false,
                    &[("a.toml", QA)],
                    &[
                        "stop web/staging a.toml renamed web/qa",
                        "clear a.toml",
                        "start web/qa a.toml",
                    ],
                ),
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["stop web/qa a.toml renamed web/staging", "clear a.toml"],
                ),
                Check(false, &[("a.toml", STAGING_EDIT)], &[]),
                Ends("web/staging", Some("a.toml")),
                Check(false, &[("a.toml", Same)], &[]),
            ],
        ),
        (
            "a renamed file (mv) is refused, then takes the target once the old name is gone",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(
                    false,
                    &[("b.toml", STAGING)],
                    &["reject b.toml - duplicate"],
                ),
                Check(
                    false,
                    &[("b.toml", Same)],
                    &["clear a.toml", "stop web/staging a.toml removed"],
                ),
                Check(false, &[("b.toml", Same)], &["clear b.toml"]),
                Ends("web/staging", Some("b.toml")),
                Check(false, &[("b.toml", Same)], &[]),
            ],
        ),
        (
            "a file taking a removed file's target over waits for its loop to end",
            &[
                Check(
                    false,
                    &[("a.toml", STAGING)],
                    &["clear a.toml", "start web/staging a.toml"],
                ),
                Check(
                    false,
                    &[("a.toml", Gone), ("b.toml", QA)],
                    &["clear b.toml", "start web/qa b.toml"],
                ),
                Check(
                    false,
                    &[("a.toml", Gone), ("b.toml", STAGING)],
                    &[
                        "clear a.toml",
                        "stop web/staging a.toml removed",
                        "stop web/qa b.toml renamed web/staging",
                        "clear b.toml",
                    ],
                ),
                Ends("web/qa", None),
                Ends("web/staging", Some("b.toml")),
            ],
        ),
    ];
    for (case, steps) in cases {
        play(case, steps);
    }
}

#[test]
fn a_target_read_at_start_is_known_and_not_read_again() {
    let mut ledger = Ledger::default();
    let path = Path::new("/p/a.toml");
    let target =
        crate::policy::compile_bytes("a.toml", policy("staging", "5%").as_bytes(), |_| None)
            .unwrap();
    let stamp = Some((1, SystemTime::UNIX_EPOCH));
    ledger.started(path, &target, stamp);
    assert!(ledger.knows(path));
    assert_eq!(ledger.stamps()[path], stamp);
    let loops = HashMap::from([(
        target_name(&target),
        Loop {
            path: path.to_path_buf(),
            stopping: false,
        },
    )]);
    let scanned = Scanned {
        files: HashMap::from([(
            path.to_path_buf(),
            Look {
                stamp,
                read: Read::Bytes(policy("staging", "5%").into_bytes()),
            },
        )]),
        ..Scanned::default()
    };
    let actions = ledger.reconcile(&loops, scanned, |_, _| panic!("not compiled again"));
    assert!(actions.is_empty(), "{actions:?}");
}
