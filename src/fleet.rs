//! The targets `rollwatch run` watches, kept in step with the policy files.
//! `run` is given policy files and directories of them (each
//! `*.toml` in a directory is a target). Every `POLICY_CHECK`, and at once on
//! SIGHUP, the files are looked at:
//!
//! - an edited file is validated: valid → its target puts it in force between
//!   polls; invalid → rejected, the last good policy stays, and the error is
//!   logged, counted and shown in status;
//! - a new file starts a target (once valid);
//! - a file gone on two checks in a row (an editor's save is not a removal)
//!   stops its target as SIGTERM would: a running procedure step finishes
//!   first, and an open incident stays stored, taken up again if the file
//!   comes back. A file that now names another target is both.
//!
//! What a look at the files calls for is decided without IO by
//! `reconcile::Ledger::reconcile`; this file lists and reads the files and
//! carries its actions out (spawning and stopping loops, telling them).
//!
//! Only what a target's loop has ended gives up: its inbox, its status, its
//! lock (another replica may act only once this one no longer can) and its
//! gauges.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod reconcile;

pub use reconcile::target_name;
use reconcile::{Action, Ledger, Look, Loop, Read, Scanned, Why};

use crate::console::say;
use crate::engine::time_text;
use crate::ha::Leader;
use crate::notify::deliver::Routing;
use crate::policy::Compiled;
use crate::runtime::record::Recorder;
use crate::runtime::status::StatusBoard;
use crate::runtime::target::{self, Input, Reload};
use crate::server::Inboxes;
use crate::server::ready::Readiness;
use crate::store::Fence;
use crate::store::Store;
use crate::telemetry::{ReloadLabels, Telemetry};

/// How often policy files are looked at for edits.
pub const POLICY_CHECK: Duration = Duration::from_secs(2);

/// How long a policy edit may wait for room in a busy target's inbox.
const HAND_OVER: Duration = Duration::from_secs(5);

/// How long a look at the policy files (listing, `stat`, reading what
/// changed: off the async runtime) may hold the run loop up. A look that
/// hangs (a dead network mount) is left running: the targets stay as they
/// are, and later checks do nothing until it ends.
const SCAN_TIMEOUT: Duration = Duration::from_secs(5);

/// What every target loop is wired to.
pub struct Shared {
    pub dry_run: bool,
    pub store: Option<Store>,
    pub telemetry: Arc<Telemetry>,
    pub status: StatusBoard,
    pub inboxes: Inboxes,
    /// With several replicas (PostgreSQL): who owns which target.
    pub leader: Option<Leader>,
    /// The outbox worker's channels per target (none in a dry run).
    pub routing: Option<Routing>,
    /// Wakes the outbox worker when a decision stores a message.
    pub delivery: Arc<Notify>,
    pub recorder: Option<Recorder>,
    /// Cancelled on SIGTERM: every target stops.
    pub shutdown: CancellationToken,
    /// Told when each target's loop has started.
    pub readiness: Readiness,
    /// The process's tasks: the loops, their procedures and drills.
    pub tasks: TaskTracker,
}

/// A target loop that has ended, and how.
pub struct Ended {
    name: String,
    id: u64,
    result: anyhow::Result<()>,
}

pub struct Fleet {
    shared: Shared,
    /// The paths `run` was given: policy files and directories of them.
    given: Vec<PathBuf>,
    /// Those of them that are directories.
    directories: BTreeSet<PathBuf>,
    /// Directories that could not be listed at the last check (logged once).
    unlisted: BTreeSet<PathBuf>,
    ledger: Ledger,
    running: HashMap<String, Running>,
    tasks: JoinSet<Ended>,
    next_id: u64,
    /// A look at the files that outlasted `SCAN_TIMEOUT`.
    scanning: Option<tokio::task::JoinHandle<Scan>>,
}

/// What a look at the policy files found.
struct Scan {
    unlisted: Vec<(PathBuf, std::io::Error)>,
    /// Every policy file listed: its stamp, and its bytes when it must be
    /// read (its stamp changed, or every file must be: SIGHUP).
    seen: HashMap<PathBuf, Seen>,
    forced: bool,
}

struct Seen {
    stamp: Option<(u64, SystemTime)>,
    read: Option<std::io::Result<Vec<u8>>>,
}

/// Lists the policy files and reads those whose stamp is not in `known`
/// (blocking: run it on the blocking pool).
fn scan(
    given: &[PathBuf],
    directories: &BTreeSet<PathBuf>,
    known: &HashMap<PathBuf, Option<(u64, SystemTime)>>,
    forced: bool,
) -> Scan {
    let (listed, unlisted) = policy_files(given, directories);
    let seen = listed
        .into_iter()
        .map(|path| {
            let stamp = file_stamp(&path);
            // Most files end here: 1,000 files every 2 s must not be 1,000 reads.
            let unchanged = !forced && stamp.is_some() && known.get(&path) == Some(&stamp);
            let read = (!unchanged).then(|| std::fs::read(&path));
            (path, Seen { stamp, read })
        })
        .collect();
    Scan {
        unlisted,
        seen,
        forced,
    }
}

struct Running {
    path: PathBuf,
    id: u64,
    stop: CancellationToken,
    inbox: mpsc::Sender<Input>,
    /// Its file is gone or names another target: the loop is ending.
    stopping: bool,
    rules: Vec<String>,
}

/// The policy files of `given`: each file named, and each `*.toml` of each
/// directory (not hidden ones: editors' swap and backup files), sorted. The
/// second list names the directories that cannot be listed, with why; one of
/// `directories` (seen as a directory before) that is gone is among them: an
/// unmounted volume is not the removal of every target.
pub fn policy_files(
    given: &[PathBuf],
    directories: &BTreeSet<PathBuf>,
) -> (BTreeSet<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
    let mut files = BTreeSet::new();
    let mut unlisted = Vec::new();
    for path in given {
        if !path.is_dir() {
            if directories.contains(path) {
                let error = std::fs::metadata(path)
                    .err()
                    .unwrap_or_else(|| std::io::Error::other("no longer a directory"));
                unlisted.push((path.clone(), error));
            } else {
                files.insert(path.clone());
            }
            continue;
        }
        match std::fs::read_dir(path) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let file = entry.path();
                    let visible = !entry.file_name().to_string_lossy().starts_with('.');
                    if visible && file.extension().is_some_and(|e| e == "toml") && file.is_file() {
                        files.insert(file);
                    }
                }
            }
            Err(error) => unlisted.push((path.clone(), error)),
        }
    }
    (files, unlisted)
}

/// A file's size and modification time (`None` when it cannot be read).
fn file_stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.len(), metadata.modified().ok()?))
}

impl Fleet {
    pub fn new(shared: Shared, given: Vec<PathBuf>) -> Fleet {
        let directories = given.iter().filter(|p| p.is_dir()).cloned().collect();
        Fleet {
            shared,
            given,
            directories,
            unlisted: BTreeSet::new(),
            ledger: Ledger::default(),
            running: HashMap::new(),
            tasks: JoinSet::new(),
            next_id: 0,
            scanning: None,
        }
    }

    /// How many targets are watched (not counting those stopping).
    pub fn watched(&self) -> usize {
        self.running.values().filter(|r| !r.stopping).count()
    }

    /// Watches a target from a policy file read and validated at start.
    pub fn start(&mut self, path: &Path, target: Compiled) {
        self.ledger.started(path, &target, file_stamp(path));
        self.spawn(path, target);
    }

    fn spawn(&mut self, path: &Path, target: Compiled) {
        let shared = &self.shared;
        let name = target_name(&target);
        let id = self.next_id;
        self.next_id += 1;
        let (inbox, receiver) = mpsc::channel(64);
        shared.inboxes.insert(name.clone(), inbox.clone());
        let interval = target
            .policy
            .evaluation
            .interval
            .to_std()
            .unwrap_or(Duration::from_secs(15));
        // With several replicas, acting writes carry the target's ownership
        // epoch: a stalled owner that thaws writes nothing.
        let fence = shared.leader.as_ref().map(|_| Fence::new(&name));
        let leadership = shared
            .leader
            .as_ref()
            .zip(fence.clone())
            .map(|(leader, fence)| leader.add(&name, interval, fence));
        if let Some(routing) = &shared.routing {
            routing.add_owned(name.clone(), target.notify.clone(), leadership.clone());
            if let Some(fence) = &fence {
                routing.set_fence(&name, fence.clone());
            }
        }
        let mode = if shared.dry_run {
            "dry run: nothing is executed or sent"
        } else {
            "acting: rollbacks run the policy's procedure"
        };
        say(&format!(
            "{} watching {name} with {} ({}); {mode}",
            time_text(chrono::Utc::now()),
            path.display(),
            describe_sources(&target)
        ));
        let actor = shared.store.as_ref().map(|store| {
            let store = match &fence {
                Some(fence) => store.fenced(fence.clone()),
                None => store.clone(),
            };
            crate::act::actor::Actor::new(store, Arc::new(target.clone()), Arc::new(say))
                .with_delivery(Arc::clone(&shared.delivery))
                .with_telemetry(Arc::clone(&shared.telemetry))
                .with_owner(leadership.clone())
                .with_tasks(shared.tasks.clone())
        });
        let readiness = shared.readiness.clone();
        let started = name.clone();
        let wiring = target::Wiring {
            status: Some(shared.status.clone()),
            inbox: Some(receiver),
            leadership,
            exit: Some(shared.shutdown.clone()),
            started: Some(Box::new(move || readiness.loop_started(&started))),
        };
        let stop = shared.shutdown.child_token();
        self.running.insert(
            name.clone(),
            Running {
                path: path.to_path_buf(),
                id,
                stop: stop.clone(),
                inbox,
                stopping: false,
                rules: target.policy.rules.iter().map(|r| r.name.clone()).collect(),
            },
        );
        let dry_run = shared.dry_run;
        let (policy, notify) = (target.policy.clone(), target.notify.clone());
        let recorder = shared.recorder.clone();
        let telemetry = Arc::clone(&shared.telemetry);
        let tracked = shared.tasks.track_future(async move {
            let result = target::run_target(
                target,
                recorder,
                telemetry,
                stop,
                |decision| {
                    say(&decision.line(&name, dry_run));
                    if dry_run {
                        for line in crate::notify::message::dry_run_lines(
                            &policy,
                            notify.as_ref(),
                            decision,
                        ) {
                            say(&line);
                        }
                    }
                },
                actor,
                wiring,
            )
            .await
            .map(|_| ());
            Ended { name, id, result }
        });
        self.tasks.spawn(tracked);
    }

    /// The next target loop to end (`None`: there are none).
    pub async fn next_end(&mut self) -> Option<Result<Ended, tokio::task::JoinError>> {
        self.tasks.join_next().await
    }

    /// A loop has ended. One that was told to stop hands its target over (to
    /// the file that now defines it, if any); any other end is an error: a
    /// target nobody watches.
    pub fn ended(&mut self, ended: Ended) -> anyhow::Result<()> {
        let Ended { name, id, result } = ended;
        let stopping = self
            .running
            .get(&name)
            .is_some_and(|r| r.id == id && r.stopping);
        if !stopping {
            return Err(match result {
                Ok(()) => anyhow::anyhow!("the loop of {name} ended unexpectedly"),
                Err(error) => error.context(format!("the loop of {name} failed")),
            });
        }
        if let Err(error) = result {
            tracing::error!(target_name = %name, error = %format!("{error:#}"), "the loop of a removed target failed as it stopped");
        }
        let Some(gone) = self.running.remove(&name) else {
            return Ok(());
        };
        self.shared.status.remove(&name);
        if let Some(leader) = &self.shared.leader {
            leader.remove(&name);
        }
        self.shared.telemetry.forget(&name, &gone.rules);
        say(&format!(
            "{} {name} is no longer watched",
            time_text(chrono::Utc::now())
        ));
        if let Some((path, target)) = self.ledger.handed_over(&name) {
            self.spawn(&path, *target);
        }
        Ok(())
    }

    /// Stops every target (after `shutdown` is cancelled) and waits for the
    /// loops. The first failure, if any.
    pub async fn stop_all(&mut self) -> Option<anyhow::Error> {
        let mut failure = None;
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok(Ended {
                    result: Err(error),
                    name,
                    ..
                }) => {
                    failure.get_or_insert(error.context(format!("the loop of {name} failed")));
                }
                Err(join) if join.is_panic() => {
                    failure.get_or_insert(anyhow::anyhow!("a target loop crashed: {join}"));
                }
                _ => {}
            }
        }
        failure
    }

    /// Looks at every policy file: edits, new files, files gone. `forced`
    /// (SIGHUP): every file is read and validated again.
    pub async fn check(&mut self, forced: bool) {
        if forced {
            tracing::info!("SIGHUP: re-reading every policy");
        }
        let mut handle = match self.scanning.take() {
            Some(hung) if !hung.is_finished() => {
                self.scanning = Some(hung);
                return;
            }
            Some(ended) => ended,
            None => {
                let (given, directories) = (self.given.clone(), self.directories.clone());
                let known = self.ledger.stamps();
                tokio::task::spawn_blocking(move || scan(&given, &directories, &known, forced))
            }
        };
        let Scan {
            unlisted,
            seen,
            forced,
        } = match tokio::time::timeout(SCAN_TIMEOUT, &mut handle).await {
            Ok(Ok(scan)) => scan,
            Ok(Err(join)) => {
                tracing::error!(error = %join, "looking at the policy files failed; the targets stay as they are");
                return;
            }
            Err(_) => {
                tracing::error!(
                    timeout_s = SCAN_TIMEOUT.as_secs(),
                    "looking at the policy files hangs (a dead mount?): the targets stay as they are, and no file is looked at again until it ends"
                );
                self.scanning = Some(handle);
                return;
            }
        };
        for (dir, error) in &unlisted {
            // Not a removal: its files keep their targets until it can be read.
            if self.unlisted.insert(dir.clone()) {
                tracing::error!(directory = %dir.display(), %error, "cannot list the policy directory; its targets stay as they are until it can be");
            }
        }
        self.unlisted.retain(|dir| {
            let back = !unlisted.iter().any(|(d, _)| d == dir);
            if back {
                tracing::warn!(directory = %dir.display(), "the policy directory can be listed again");
            }
            !back
        });
        let files = seen
            .into_iter()
            .map(|(path, Seen { stamp, read })| {
                if !self.ledger.knows(&path) {
                    tracing::info!(policy = %path.display(), "new policy file");
                }
                let read = match read {
                    None => Read::Unchanged,
                    Some(Ok(bytes)) => Read::Bytes(bytes),
                    Some(Err(error)) if error.kind() == std::io::ErrorKind::NotFound => {
                        Read::Missing
                    }
                    Some(Err(error)) => Read::Unreadable(error.to_string()),
                };
                (path, Look { stamp, read })
            })
            .collect();
        let scanned = Scanned {
            files,
            unlisted: unlisted.into_iter().map(|(dir, _)| dir).collect(),
            forced,
        };
        let loops = self
            .running
            .iter()
            .map(|(name, r)| {
                let (path, stopping) = (r.path.clone(), r.stopping);
                (name.clone(), Loop { path, stopping })
            })
            .collect();
        let actions = self.ledger.reconcile(&loops, scanned, |path, bytes| {
            let file = path.display().to_string();
            crate::policy::compile_bytes(&file, bytes, |name| std::env::var(name).ok())
                .map_err(|errors| errors.to_string())
        });
        for action in actions {
            self.carry_out(action).await;
        }
    }

    /// Carries out one action of a reconciliation.
    async fn carry_out(&mut self, action: Action) {
        match action {
            Action::Start { path, target } => self.spawn(&path, *target),
            Action::Stop { name, path, why } => {
                let now = time_text(chrono::Utc::now());
                let shown = path.display();
                match why {
                    Why::Removed => {
                        let acting = if self.shared.dry_run {
                            ""
                        } else {
                            " (a running step finishes first; an open incident stays stored)"
                        };
                        say(&format!(
                            "{now} {name}: policy file {shown} REMOVED: the target is no longer watched{acting}"
                        ));
                    }
                    Why::Renamed(to) => say(&format!(
                        "{now} {name}: policy file {shown} now names {to}: {name} is no longer watched from it"
                    )),
                }
                self.stop(&name, &path);
            }
            Action::Reload { name, path, target } => self.reload(name, &path, *target).await,
            Action::Restored { path, running } => {
                self.shared
                    .status
                    .set_rejected(&path.display().to_string(), None);
                if let Some(name) = running
                    && let Some(running) = self.running.get(&name)
                {
                    let restored = Input::Reload(Reload::Restored);
                    let _ = tokio::time::timeout(HAND_OVER, running.inbox.send(restored)).await;
                    tracing::info!(target_name = %name, "the policy file is back to the policy in force");
                }
            }
            Action::Clear { path } => self
                .shared
                .status
                .set_rejected(&path.display().to_string(), None),
            Action::Reject {
                path,
                target,
                running,
                reason,
            } => {
                let shown = path.display().to_string();
                self.count(target.as_deref().unwrap_or(&shown), "failed");
                let inbox = target
                    .as_ref()
                    .filter(|_| running)
                    .and_then(|name| self.running.get(name))
                    .map(|r| r.inbox.clone());
                match (target, inbox) {
                    (Some(name), Some(inbox)) => {
                        say(&format!(
                            "{} {name} POLICY EDIT REJECTED, the last good policy stays in force: {reason}",
                            time_text(chrono::Utc::now()),
                        ));
                        let rejected = Input::Reload(Reload::Rejected(reason));
                        let _ = tokio::time::timeout(HAND_OVER, inbox.send(rejected)).await;
                    }
                    _ => {
                        say(&format!(
                            "{} POLICY FILE REJECTED, it is not watched until it is valid: {reason}",
                            time_text(chrono::Utc::now()),
                        ));
                        self.shared.status.set_rejected(&shown, Some(reason));
                    }
                }
            }
        }
    }

    /// Tells the loop of `name` (if it runs from `path`) to stop.
    fn stop(&mut self, name: &str, path: &Path) {
        if let Some(running) = self.running.get_mut(name)
            && running.path == path
            && !running.stopping
        {
            running.stopping = true;
            running.stop.cancel();
            self.shared.inboxes.remove(name);
        }
    }

    /// Hands a valid edit to the loop of its target.
    async fn reload(&mut self, name: String, path: &Path, compiled: Compiled) {
        let Some(running) = self.running.get(&name) else {
            return;
        };
        let inbox = running.inbox.clone();
        let sha256 = compiled.policy.sha256.clone();
        let short = compiled.policy.short_hash().to_string();
        let notify = compiled.notify.clone();
        let interval = compiled.policy.evaluation.interval.to_std().ok();
        let handed = tokio::time::timeout(
            HAND_OVER,
            inbox.send(Input::Reload(Reload::Apply(Box::new(compiled)))),
        )
        .await;
        if !matches!(handed, Ok(Ok(()))) {
            // Not taken: read it again at the next check.
            tracing::error!(target_name = %name, "the target did not take the policy edit; trying again at the next check");
            self.ledger.retry(path);
            return;
        }
        self.ledger.reloaded(path, &sha256);
        if let Some(routing) = &self.shared.routing {
            routing.update(&name, notify);
        }
        if let Some(leader) = &self.shared.leader
            && let Some(interval) = interval
        {
            leader.set_interval(&name, interval);
        }
        self.count(&name, "ok");
        say(&format!(
            "{} {name} policy {} reloaded: sha256:{short} is in force",
            time_text(chrono::Utc::now()),
            path.display()
        ));
    }

    fn count(&self, target: &str, result: &str) {
        self.shared
            .telemetry
            .reloads
            .get_or_create(&ReloadLabels {
                target: target.to_string(),
                result: result.to_string(),
            })
            .inc();
    }
}

fn describe_sources(target: &Compiled) -> String {
    use crate::sources::config::SourceKind;
    let mut parts = Vec::new();
    match target.source.as_ref().map(|s| &s.kind) {
        Some(SourceKind::Scrape { url, .. }) => parts.push(format!("scrape {url}")),
        Some(SourceKind::Prometheus { url, .. }) => parts.push(format!("prometheus {url}")),
        None => {}
    }
    if let Some(health) = &target.health {
        parts.push(format!("health {}", health.url));
    }
    if !target.checks.is_empty() {
        parts.push(format!("{} checks", target.checks.len()));
    }
    if parts.is_empty() {
        "no sources configured".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::policy_files;

    /// A Kubernetes ConfigMap volume: each key a symlink into `..data`, itself
    /// a symlink to a hidden timestamped directory swapped on each update.
    #[cfg(unix)]
    #[test]
    fn a_configmap_directory_lists_its_keys_and_not_its_hidden_entries() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let version = root.join("..2026_11_25_10_00_00.1");
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("production.toml"), "x").unwrap();
        std::fs::write(version.join("notes.txt"), "x").unwrap();
        symlink("..2026_11_25_10_00_00.1", root.join("..data")).unwrap();
        symlink("..data/production.toml", root.join("production.toml")).unwrap();
        symlink("..data/notes.txt", root.join("notes.txt")).unwrap();
        std::fs::write(root.join(".production.toml.swp"), "x").unwrap();
        std::fs::create_dir(root.join("nested.toml")).unwrap();
        let explicit = root.join("elsewhere.toml");
        let given = [root.to_path_buf(), explicit.clone()];
        let (files, unlisted) = policy_files(&given, &Default::default());
        assert!(unlisted.is_empty());
        let files: Vec<_> = files.into_iter().collect();
        assert_eq!(files, [explicit, root.join("production.toml")]);
    }

    /// A file named on the command line stays watched while it is gone, so
    /// that its target comes back with it.
    #[test]
    fn a_named_file_is_listed_whether_or_not_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.toml");
        let (files, unlisted) = policy_files(std::slice::from_ref(&file), &Default::default());
        assert_eq!(files.into_iter().collect::<Vec<_>>(), [file]);
        assert!(unlisted.is_empty());
    }

    /// A policy directory that disappears (an unmounted volume) is reported,
    /// and its targets stay: deleting its files is how targets are removed.
    #[test]
    fn a_vanished_policy_directory_is_unlisted_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        let known: std::collections::BTreeSet<_> = [policies.clone()].into();
        std::fs::remove_dir(&policies).unwrap();
        let (files, unlisted) = policy_files(std::slice::from_ref(&policies), &known);
        assert!(files.is_empty());
        assert_eq!(unlisted.len(), 1);
        assert_eq!(unlisted[0].0, policies);
    }
}
