//! The pure half of keeping targets in step with their policy files: what
//! was last seen of each file (`Ledger`), and what a look at the files calls
//! for (`Ledger::reconcile`: start, stop, reload, reject...). No IO: the
//! fleet lists and reads the files, compiles what this asks for, and carries
//! the actions out.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::policy::Compiled;

/// Checks in a row that must find a file gone before its target stops.
pub const GONE_AFTER: u32 = 2;

/// A file's size and modification time: unchanged, it is not read again.
pub type Stamp = (u64, SystemTime);

/// The name a policy's target goes by: `service/environment`.
pub fn target_name(target: &Compiled) -> String {
    format!("{}/{}", target.policy.service, target.policy.environment)
}

/// A target's loop, as the fleet runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loop {
    /// The file it runs from.
    pub path: PathBuf,
    /// Told to stop: ending.
    pub stopping: bool,
}

/// What a look found of one file.
#[derive(Debug)]
pub struct Look {
    pub stamp: Option<Stamp>,
    pub read: Read,
}

#[derive(Debug)]
pub enum Read {
    /// Its stamp is the one last read: not read again.
    Unchanged,
    /// Listed, but gone when read.
    Missing,
    /// It cannot be read (why).
    Unreadable(String),
    Bytes(Vec<u8>),
}

/// What a look at the policy files found.
#[derive(Debug, Default)]
pub struct Scanned {
    /// Every policy file listed.
    pub files: HashMap<PathBuf, Look>,
    /// Directories that could not be listed: their files are not gone.
    pub unlisted: Vec<PathBuf>,
    /// SIGHUP: every file is read and validated again.
    pub forced: bool,
}

/// Why a target's loop is told to stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// Its file is gone.
    Removed,
    /// Its file now names this other target.
    Renamed(String),
}

/// What the fleet must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Start watching the target of `path`.
    Start {
        path: PathBuf,
        target: Box<Compiled>,
    },
    /// Say why the target of `path` is no longer watched from it, and stop
    /// its loop if it runs from `path` and is not stopping already.
    Stop {
        name: String,
        path: PathBuf,
        why: Why,
    },
    /// Hand a valid edit to the running loop of `name`; then tell the ledger
    /// whether it was taken (`reloaded`) or not (`retry`).
    Reload {
        name: String,
        path: PathBuf,
        target: Box<Compiled>,
    },
    /// The file is back to the policy in force: no rejection to show, and
    /// the loop of `running` (if any) is told.
    Restored {
        path: PathBuf,
        running: Option<String>,
    },
    /// The file shows no rejection (it is valid, or gone).
    Clear { path: PathBuf },
    /// An edit or a new file that cannot be put in force. `target`: the
    /// target the file defines (counted under it); `running`: its loop runs
    /// from the file and keeps the last good policy.
    Reject {
        path: PathBuf,
        target: Option<String>,
        running: bool,
        reason: String,
    },
}

/// A policy file, as last looked at.
#[derive(Debug, Default)]
struct PolicyFile {
    /// The target it defines (running, stopping, or waiting to start).
    target: Option<String>,
    /// The hash of its policy in force.
    in_force: String,
    /// The hash of the file as last read (a rejected edit is reported once).
    last_seen: String,
    /// Size and modification time when last read.
    stamp: Option<Stamp>,
    /// Checks in a row that found it gone.
    missing: u32,
    /// Valid, waiting for the previous loop of its target to end.
    waiting: Option<Box<Compiled>>,
    /// Valid but refused: another file defines this target. Looked at again
    /// once that file lets the target go (a renamed file: the new name is
    /// seen while the old one is not yet counted gone).
    wants: Option<String>,
}

/// What was last seen of every policy file.
#[derive(Debug, Default)]
pub struct Ledger {
    files: BTreeMap<PathBuf, PolicyFile>,
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One reconciliation: the ledger, the loops as they will be once the
/// actions so far are carried out, and the actions.
struct Pass<'a, C> {
    files: &'a mut BTreeMap<PathBuf, PolicyFile>,
    loops: HashMap<String, Loop>,
    actions: Vec<Action>,
    compile: C,
}

impl Ledger {
    /// A file read and validated at start, whose target the fleet starts.
    pub fn started(&mut self, path: &Path, target: &Compiled, stamp: Option<Stamp>) {
        let file = self.files.entry(path.to_path_buf()).or_default();
        file.target = Some(target_name(target));
        file.in_force = target.policy.sha256.clone();
        file.last_seen = target.policy.sha256.clone();
        file.stamp = stamp;
    }

    /// Whether `path` was seen before.
    pub fn knows(&self, path: &Path) -> bool {
        self.files.contains_key(path)
    }

    /// Each file's stamp when last read (a scan reads the others).
    pub fn stamps(&self) -> HashMap<PathBuf, Option<Stamp>> {
        self.files
            .iter()
            .map(|(path, file)| (path.clone(), file.stamp))
            .collect()
    }

    /// The loop of `path`'s target took its edit: `sha256` is in force.
    pub fn reloaded(&mut self, path: &Path, sha256: &str) {
        if let Some(file) = self.files.get_mut(path) {
            file.in_force = sha256.to_string();
        }
    }

    /// The loop did not take the edit: read the file again at the next check.
    pub fn retry(&mut self, path: &Path) {
        if let Some(file) = self.files.get_mut(path) {
            file.stamp = None;
            file.last_seen.clear();
        }
    }

    /// The loop of `name` has ended after being told to stop: the file that
    /// now defines it and waits to start it, if any.
    pub fn handed_over(&mut self, name: &str) -> Option<(PathBuf, Box<Compiled>)> {
        self.files.iter_mut().find_map(|(path, file)| {
            (file.target.as_deref() == Some(name))
                .then(|| file.waiting.take().map(|t| (path.clone(), t)))
                .flatten()
        })
    }

    /// What `scanned` calls for, given the loops running now. `compile`
    /// validates a file's bytes (the only outside world it reaches: the
    /// environment of `${VAR}`s); it is called only for bytes that changed,
    /// or for every file read when `forced`.
    pub fn reconcile(
        &mut self,
        loops: &HashMap<String, Loop>,
        scanned: Scanned,
        compile: impl FnMut(&Path, &[u8]) -> Result<Compiled, String>,
    ) -> Vec<Action> {
        let Scanned {
            mut files,
            unlisted,
            forced,
        } = scanned;
        for path in files.keys() {
            self.files.entry(path.clone()).or_default();
        }
        let mut pass = Pass {
            files: &mut self.files,
            loops: loops.clone(),
            actions: Vec::new(),
            compile,
        };
        let known: Vec<PathBuf> = pass.files.keys().cloned().collect();
        for path in known {
            if let Some(look) = files.remove(&path) {
                pass.look_at(&path, forced, look);
            } else if !unlisted.iter().any(|dir| path.starts_with(dir)) {
                pass.gone(&path);
            }
        }
        pass.actions
    }
}

impl<C: FnMut(&Path, &[u8]) -> Result<Compiled, String>> Pass<'_, C> {
    /// Whether the loop of `name` runs from `path` and is not stopping.
    fn runs_from(&self, name: &str, path: &Path) -> bool {
        self.loops
            .get(name)
            .is_some_and(|l| l.path == path && !l.stopping)
    }

    fn look_at(&mut self, path: &Path, forced: bool, look: Look) {
        let Look { stamp, read } = look;
        let Some(file) = self.files.get_mut(path) else {
            return;
        };
        let bytes = match read {
            Read::Unchanged => {
                file.missing = 0;
                return;
            }
            Read::Missing => return self.gone(path),
            Read::Unreadable(error) => {
                file.missing = 0;
                file.stamp = stamp;
                let seen = format!("unreadable: {error}");
                if file.last_seen != seen || forced {
                    file.last_seen = seen;
                    let reason = format!("{}: cannot read the policy: {error}", path.display());
                    self.reject(path, reason);
                }
                return;
            }
            Read::Bytes(bytes) => bytes,
        };
        file.missing = 0;
        file.stamp = stamp;
        let hash = sha256_hex(&bytes);
        if !forced && hash == file.last_seen {
            return;
        }
        file.last_seen = hash.clone();
        if !forced && hash == file.in_force {
            // A rejected edit undone: the policy in force is the file again.
            let running = file
                .target
                .clone()
                .filter(|name| self.runs_from(name, path));
            self.actions.push(Action::Restored {
                path: path.to_path_buf(),
                running,
            });
            return;
        }
        match (self.compile)(path, &bytes) {
            Ok(compiled) => self.accept(path, compiled),
            Err(errors) => self.reject(path, errors),
        }
    }

    /// The file is not there: on the `GONE_AFTER`th check in a row, its
    /// target stops.
    fn gone(&mut self, path: &Path) {
        let Some(file) = self.files.get_mut(path) else {
            return;
        };
        file.missing += 1;
        if file.missing < GONE_AFTER {
            return;
        }
        let Some(file) = self.files.remove(path) else {
            return;
        };
        self.actions.push(Action::Clear {
            path: path.to_path_buf(),
        });
        if let Some(name) = file.target {
            self.released(&name);
            self.stop(name, path, Why::Removed);
        }
    }

    fn stop(&mut self, name: String, path: &Path, why: Why) {
        if let Some(running) = self.loops.get_mut(&name)
            && running.path == path
        {
            running.stopping = true;
        }
        self.actions.push(Action::Stop {
            name,
            path: path.to_path_buf(),
            why,
        });
    }

    /// No file defines `name` any more: a file refused because one did is
    /// read again at the next check, and may take the target over.
    fn released(&mut self, name: &str) {
        for file in self.files.values_mut() {
            if file.target.is_none() && file.wants.as_deref() == Some(name) {
                file.wants = None;
                file.stamp = None;
                file.last_seen.clear();
            }
        }
    }

    /// A valid policy read from `path`: an edit of its target, or a target
    /// to start.
    fn accept(&mut self, path: &Path, compiled: Compiled) {
        let name = target_name(&compiled);
        let defined = self.files.get(path).and_then(|f| f.target.clone());
        if let Some(current) = defined
            && current != name
        {
            self.stop(current.clone(), path, Why::Renamed(name.clone()));
            if let Some(file) = self.files.get_mut(path) {
                file.target = None;
                file.waiting = None;
                file.in_force.clear();
            }
            self.released(&current);
        }
        let Some(file) = self.files.get(path) else {
            return;
        };
        if file.target.is_none() {
            if let Some((other, _)) = self
                .files
                .iter()
                .find(|(p, f)| *p != path && f.target.as_deref() == Some(name.as_str()))
            {
                let reason = format!(
                    "{}: target {name} is already watched with {}; one policy file per target",
                    path.display(),
                    other.display()
                );
                if let Some(file) = self.files.get_mut(path) {
                    file.wants = Some(name);
                }
                return self.reject(path, reason);
            }
            self.actions.push(Action::Clear {
                path: path.to_path_buf(),
            });
            let running = self.loops.contains_key(&name);
            let Some(file) = self.files.get_mut(path) else {
                return;
            };
            file.wants = None;
            file.target = Some(name.clone());
            file.in_force = compiled.policy.sha256.clone();
            if running {
                // Its previous loop is still ending: start once it has.
                file.waiting = Some(Box::new(compiled));
            } else {
                self.loops.insert(
                    name,
                    Loop {
                        path: path.to_path_buf(),
                        stopping: false,
                    },
                );
                self.actions.push(Action::Start {
                    path: path.to_path_buf(),
                    target: Box::new(compiled),
                });
            }
            return;
        }
        if compiled.policy.sha256 == file.in_force {
            return;
        }
        if self.runs_from(&name, path) {
            self.actions.push(Action::Reload {
                name,
                path: path.to_path_buf(),
                target: Box::new(compiled),
            });
        } else if let Some(file) = self.files.get_mut(path) {
            // Waiting to start: the newest valid edit starts.
            file.in_force = compiled.policy.sha256.clone();
            file.waiting = Some(Box::new(compiled));
        }
    }

    /// An edit (or a new file) that cannot be put in force.
    fn reject(&mut self, path: &Path, reason: String) {
        let target = self.files.get(path).and_then(|f| f.target.clone());
        let running = target
            .as_deref()
            .is_some_and(|name| self.runs_from(name, path));
        self.actions.push(Action::Reject {
            path: path.to_path_buf(),
            target,
            running,
            reason,
        });
    }
}

#[cfg(test)]
mod tests;
