//! High availability (SPEC 8): several `rollwatch run` replicas share one
//! PostgreSQL; each target is owned by the replica holding its session-level
//! advisory lock on a connection of its own. The owner acts; the others
//! evaluate and stay passive. The lock goes with the connection: a replica
//! that dies loses it at once (its connection closes), and one that can no
//! longer reach the database stops acting after one failed check and loses
//! the lock when the server drops its session. A passive replica tries for
//! the lock every interval, so ownership moves within two intervals.

use std::collections::HashMap;
use std::time::Duration;

use sha2::Digest;
use sqlx::Connection;
use sqlx::postgres::PgConnection;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The advisory lock key of a target: the first 8 bytes of a hash of its name.
pub fn lock_key(target: &str) -> i64 {
    let digest = sha2::Sha256::digest(format!("rollwatch:{target}").as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(bytes)
}

/// Publishes, per target, whether this replica owns it, checking every
/// `interval` until `shutdown` (then the locks go with the connection). One
/// connection holds all of this replica's locks. With SQLite there is one
/// replica: it owns every target.
pub fn lead(
    store: Store,
    targets: &[String],
    interval: Duration,
    shutdown: CancellationToken,
) -> HashMap<String, watch::Receiver<bool>> {
    let mut owners = Vec::new();
    let mut receivers = HashMap::new();
    for target in targets {
        let (owner, leadership) = watch::channel(false);
        owners.push((target.clone(), lock_key(target), owner));
        receivers.insert(target.clone(), leadership);
    }
    tokio::spawn(async move {
        let mut connection: Option<PgConnection> = None;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if connection.is_none() {
                match store.dedicated_connection(interval).await {
                    None => {
                        // SQLite: a single replica owns everything.
                        for (_, _, owner) in &owners {
                            owner.send_if_modified(|held| !std::mem::replace(held, true));
                        }
                        continue;
                    }
                    Some(Ok(conn)) => connection = Some(conn),
                    Some(Err(error)) => {
                        tracing::error!(%error, "DATABASE UNREACHABLE: no leadership, so this replica is passive: NOT ACTING on any target until the database answers");
                    }
                }
            }
            let held: usize = owners.iter().filter(|(_, _, o)| *o.borrow()).count();
            let healthy = match connection.as_mut() {
                Some(conn) => held == 0 || held_count(conn, interval).await == Some(held),
                None => false,
            };
            if !healthy {
                // The session is suspect: stop acting now, drop the connection
                // (the server frees its locks with it), start again.
                for (target, _, owner) in &owners {
                    if owner.send_if_modified(|held| std::mem::replace(held, false)) {
                        tracing::error!(target_name = %target, "leadership LOST (its database session does not answer): NOT ACTING on this target");
                    }
                }
                connection = None;
                continue;
            }
            let Some(conn) = connection.as_mut() else {
                continue;
            };
            for (target, key, owner) in &owners {
                if *owner.borrow() {
                    continue;
                }
                if try_lock(conn, *key, interval).await {
                    tracing::warn!(target_name = %target, "leadership taken: this replica acts on the target");
                    owner.send_replace(true);
                }
            }
        }
        if let Some(conn) = connection {
            let _ = conn.close().await;
        }
    });
    receivers
}

async fn try_lock(conn: &mut PgConnection, key: i64, timeout: Duration) -> bool {
    let query = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
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
