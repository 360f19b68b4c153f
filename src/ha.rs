//! High availability (docs/operations.md#several-replicas-high-availability):
//! several `rollwatch run` replicas share one PostgreSQL; each target is owned
//! by the replica holding its session-level advisory lock on a connection of
//! its own. The owner acts; the others evaluate and stay passive. The lock goes
//! with the connection: a replica that dies loses it at once (its connection
//! closes), and one that can no longer reach the database stops acting after
//! one failed check and loses the lock when the server drops its session. A
//! passive replica tries for the lock every interval, so ownership moves within
//! two intervals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::Digest;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::store::{Fence, Store};

/// The advisory lock key of a target: the first 8 bytes of a hash of its name.
pub fn lock_key(target: &str) -> i64 {
    let digest = sha2::Sha256::digest(format!("rollwatch:{target}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// This replica's claim on its targets: one task with one database
/// connection holding the locks, told of targets as they come and go.
#[derive(Clone)]
pub struct Leader {
    commands: mpsc::UnboundedSender<Command>,
    /// Rounds with targets in which the session answered and every unowned
    /// target was tried: a sign of life, so that "stayed passive" can be told
    /// from "never tried".
    rounds: Arc<AtomicU64>,
}

enum Command {
    /// Contend for a target; check at least every `interval`.
    Add {
        target: String,
        interval: Duration,
        owner: watch::Sender<bool>,
        fence: Fence,
    },
    /// Give a target up (its loop has ended): unlock it.
    Remove { target: String },
    /// The target's interval changed (an edited policy).
    Interval { target: String, interval: Duration },
}

struct Owned {
    target: String,
    key: i64,
    owner: watch::Sender<bool>,
    /// The ownership epoch raised at each acquisition.
    fence: Fence,
    /// The target's poll interval: checks run at the shortest.
    every: Duration,
}

/// Checks every `interval`, a late one not made up for.
fn checks(interval: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

impl Leader {
    /// Starts contending, checking every `interval` (or a target's shorter
    /// one) until `shutdown`; then the locks go with the connection. With
    /// SQLite there is one replica: it owns every target.
    pub fn start(store: Store, interval: Duration, shutdown: CancellationToken) -> Leader {
        let (commands, receiver) = mpsc::unbounded_channel();
        let rounds = Arc::new(AtomicU64::new(0));
        tokio::spawn(contend(
            store,
            interval,
            receiver,
            shutdown,
            Arc::clone(&rounds),
        ));
        Leader { commands, rounds }
    }

    /// How many rounds with targets have completed: the session answered
    /// and every target not owned was tried.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Whether this replica owns `target`, as it changes. Owned once the lock
    /// is taken (at the next check) and the target's ownership epoch raised
    /// in the database; `fence` then holds that epoch.
    pub fn add(&self, target: &str, interval: Duration, fence: Fence) -> watch::Receiver<bool> {
        let (owner, leadership) = watch::channel(false);
        let _ = self.commands.send(Command::Add {
            target: target.to_string(),
            interval,
            owner,
            fence,
        });
        leadership
    }

    /// The target's poll interval is now `interval` (a reloaded policy):
    /// ownership is checked at the shortest of the targets' intervals.
    pub fn set_interval(&self, target: &str, interval: Duration) {
        let _ = self.commands.send(Command::Interval {
            target: target.to_string(),
            interval,
        });
    }

    /// Releases `target` (call once its loop has ended, so that another
    /// replica can never act while this one still does).
    pub fn remove(&self, target: &str) {
        let _ = self.commands.send(Command::Remove {
            target: target.to_string(),
        });
    }
}

async fn contend(
    store: Store,
    mut interval: Duration,
    mut commands: mpsc::UnboundedReceiver<Command>,
    shutdown: CancellationToken,
    rounds: Arc<AtomicU64>,
) {
    let mut owned: Vec<Owned> = Vec::new();
    let mut connection: Option<PgConnection> = None;
    let mut tick = checks(interval);
    // SQLite: a single replica owns everything.
    let mut alone = false;
    loop {
        tokio::select! {
            // Targets added before a check are contended for in that check.
            biased;
            _ = shutdown.cancelled() => break,
            command = commands.recv() => match command {
                Some(Command::Add { target, interval: every, owner, fence }) => {
                    if alone {
                        owner.send_replace(true);
                    }
                    owned.retain(|o| o.target != target);
                    owned.push(Owned { key: lock_key(&target), target, owner, fence, every });
                    retime(&owned, &mut interval, &mut tick);
                    // A new target is contended for at once (after the
                    // commands already queued), not an interval later.
                    tick.reset_immediately();
                    continue;
                }
                Some(Command::Interval { target, interval: every }) => {
                    if let Some(o) = owned.iter_mut().find(|o| o.target == target) {
                        o.every = every;
                    }
                    retime(&owned, &mut interval, &mut tick);
                    continue;
                }
                Some(Command::Remove { target }) => {
                    if let Some(at) = owned.iter().position(|o| o.target == target) {
                        let gone = owned.remove(at);
                        if *gone.owner.borrow()
                            && let Some(conn) = connection.as_mut()
                            && !unlock(conn, gone.key, interval).await
                        {
                            // The lock may still be held: start a new session.
                            tracing::warn!(target_name = %target, "cannot release the advisory lock of a removed target; reconnecting");
                            drop_leadership(&owned, &mut connection);
                        }
                        retime(&owned, &mut interval, &mut tick);
                    }
                    continue;
                }
                None => break,
            },
            _ = tick.tick() => {}
        }
        if connection.is_none() {
            match store.dedicated_connection(interval).await {
                None => {
                    alone = true;
                    for o in &owned {
                        o.owner
                            .send_if_modified(|held| !std::mem::replace(held, true));
                    }
                    continue;
                }
                Some(Ok(conn)) => connection = Some(conn),
                Some(Err(error)) => {
                    tracing::error!(%error, "DATABASE UNREACHABLE: no leadership, so this replica is passive: NOT ACTING on any target until the database answers");
                }
            }
        }
        // The session is checked every round, holding locks or not: a
        // passive replica whose session died with a database restart must
        // notice, reconnect and be ready to take over.
        let held: usize = owned.iter().filter(|o| *o.owner.borrow()).count();
        let Some(conn) = connection.as_mut() else {
            continue;
        };
        if held_count(conn, interval).await != Some(held) {
            session_lost(&owned, &mut connection);
            continue;
        }
        for o in &owned {
            if *o.owner.borrow() {
                continue;
            }
            match try_lock(conn, o.key, interval).await {
                Some(true) => {
                    // The epoch goes up before this replica acts: from now on
                    // the previous owner's acting writes are refused.
                    match store
                        .take_ownership(
                            &o.target,
                            &crate::act::runner::identity(),
                            chrono::Utc::now(),
                        )
                        .await
                    {
                        Ok(epoch) => {
                            o.fence.set(epoch);
                            tracing::warn!(target_name = %o.target, epoch, "leadership taken: this replica acts on the target");
                            o.owner.send_replace(true);
                        }
                        Err(error) => {
                            tracing::error!(target_name = %o.target, %error, "lock taken but the ownership epoch cannot be raised: NOT ACTING; letting the lock go");
                            if !unlock(conn, o.key, interval).await {
                                session_lost(&owned, &mut connection);
                                break;
                            }
                        }
                    }
                }
                Some(false) => {}
                None => {
                    session_lost(&owned, &mut connection);
                    break;
                }
            }
        }
        if connection.is_some() && !owned.is_empty() {
            rounds.fetch_add(1, Ordering::Relaxed);
        }
    }
    if let Some(conn) = connection {
        let _ = conn.close().await;
    }
}

/// Checks at the shortest interval of the targets (unchanged when there
/// are none).
fn retime(owned: &[Owned], interval: &mut Duration, tick: &mut tokio::time::Interval) {
    if let Some(shortest) = owned.iter().map(|o| o.every).min()
        && shortest != *interval
    {
        *interval = shortest;
        *tick = checks(shortest);
    }
}

/// The session is suspect: stop acting now, drop the connection (the server
/// frees its locks with it); the next check starts again.
fn drop_leadership(owned: &[Owned], connection: &mut Option<PgConnection>) {
    for o in owned {
        if o.owner
            .send_if_modified(|held| std::mem::replace(held, false))
        {
            tracing::error!(target_name = %o.target, "leadership LOST (its database session does not answer): NOT ACTING on this target");
        }
    }
    *connection = None;
}

/// The session stopped answering: leadership dropped as above, and said
/// loudly even when this replica held nothing.
fn session_lost(owned: &[Owned], connection: &mut Option<PgConnection>) {
    if owned.iter().all(|o| !*o.owner.borrow()) {
        tracing::error!(
            "DATABASE UNREACHABLE: the leadership session does not answer; this replica is passive and reconnects"
        );
    }
    drop_leadership(owned, connection);
}

/// `None`: the session did not answer.
async fn try_lock(conn: &mut PgConnection, key: i64, timeout: Duration) -> Option<bool> {
    let query = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut *conn);
    match tokio::time::timeout(timeout, query).await {
        Ok(Ok(taken)) => Some(taken),
        _ => None,
    }
}

async fn unlock(conn: &mut PgConnection, key: i64, timeout: Duration) -> bool {
    let query = sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1)")
        .bind(key)
        .fetch_one(&mut *conn);
    matches!(tokio::time::timeout(timeout, query).await, Ok(Ok(true)))
}

/// How many advisory locks this session holds (`None`: it does not answer).
async fn held_count(conn: &mut PgConnection, timeout: Duration) -> Option<usize> {
    let query = sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted",
    )
    .fetch_one(&mut *conn);
    match tokio::time::timeout(timeout, query).await {
        Ok(Ok(n)) => usize::try_from(n).ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_target_has_its_own_stable_key() {
        assert_eq!(
            super::lock_key("web/production"),
            super::lock_key("web/production")
        );
        assert_ne!(
            super::lock_key("web/production"),
            super::lock_key("web/staging")
        );
    }
}
