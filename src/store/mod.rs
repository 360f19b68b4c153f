//! Persistence for incidents and everything around them: deployments, engine
//! decisions, procedure steps, the notification outbox, human answers and
//! known-issue suppressions. One `Store` over SQLite (a file created on first
//! run, the default) or PostgreSQL, chosen by the URL given to [`Store::open`].
//! The schema lives in `migrations/sqlite/` and `migrations/postgres/` (same
//! tables, each backend's types) and is embedded in the binary and applied at
//! open.
//!
//! Every write is its own transaction, committed when the method returns: a
//! caller that awaits [`Store::step_started`] before spawning a step knows the
//! start is on disk, so a restarted rollwatch can tell which step may have run
//! ([`Store::unfinished_incidents`]).
//!
//! Both backends run the same SQL text (`$1` placeholders, `RETURNING`,
//! `ON CONFLICT`, partial indexes: SQLite and PostgreSQL both have them); the
//! `on_backend!` macro expands a query once per pool type. Instants are stored
//! to the microsecond (`time.rs`).

mod answers;
mod decisions;
mod incidents;
mod model;
mod ops;
mod outbox;
mod samples;
mod steps;
mod time;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use model::*;
pub use samples::SamplePoint;
pub use time::to_stored_precision;

/// The database used when none is given: a SQLite file in the working directory.
pub const DEFAULT_DATABASE: &str = "rollwatch.db";

/// Longest stdout or stderr kept per step: the last 64 KiB.
pub const STEP_OUTPUT_LIMIT: usize = 64 * 1024;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// What went wrong, and with which database or operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid database {database}: {reason}")]
    BadUrl { database: String, reason: String },
    #[error("cannot open database {database}: {source}")]
    Open {
        database: String,
        #[source]
        source: sqlx::Error,
    },
    #[error(
        "cannot open database {database}: no connection within {}s (is the server running and reachable?)",
        after.as_secs_f64()
    )]
    OpenTimedOut { database: String, after: Duration },
    #[error("cannot apply the schema migrations to {database}: {source}")]
    Migrate {
        database: String,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database query failed: {operation}: {source}")]
    Query {
        operation: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("a stored {what} is unreadable: {reason}")]
    Corrupt { what: &'static str, reason: String },
    #[error(
        "corrupt database: {table}.{column} of row {row} holds {value:?}, which is no {what} (expected one of {expected})"
    )]
    UnknownWord {
        table: &'static str,
        column: &'static str,
        row: i64,
        value: String,
        /// The enum it should be (`tier`, `step outcome`).
        what: &'static str,
        expected: String,
    },
    #[error("no incident {0}")]
    NoSuchIncident(i64),
    #[error("incident {0} is resolved and cannot change")]
    IncidentResolved(i64),
    #[error("target {target} already has the unresolved incident {existing}")]
    IncidentAlreadyOpen { target: String, existing: i64 },
    #[error("no step {0} is running (unknown id, or its end is already stored)")]
    StepNotRunning(i64),
    #[error(
        "refused: replica epoch {epoch} of {target} is stale (the target is now owned at epoch {newer}); this replica writes nothing more for it"
    )]
    Fenced {
        target: String,
        epoch: i64,
        newer: i64,
    },
    #[error("no notification {0}")]
    NoSuchNotification(i64),
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// Acting writes refused because a newer owner exists (`Fence`), since start.
pub static FENCED_WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How `Store::open_with` connects.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    /// Longest wait for a connection (also bounds opening): an unreachable
    /// server is an error after this, never a hang.
    pub connect_timeout: Duration,
    /// How long SQLite waits for another writer's lock.
    pub busy_timeout: Duration,
    pub max_connections: u32,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            connect_timeout: Duration::from_secs(5),
            busy_timeout: Duration::from_secs(5),
            max_connections: 4,
        }
    }
}

/// Which database a store talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// The database. Cheap to clone (a connection pool); safe to share.
#[derive(Clone)]
pub struct Store {
    pool: std::sync::Arc<Pool>,
    /// The URL without its password, for messages.
    database: String,
    /// The URL as given (with its credentials): only for a step runner,
    /// which opens the same store; never displayed.
    url: std::sync::Arc<str>,
    /// PostgreSQL: how to open a connection of one's own (leadership locks).
    postgres: Option<std::sync::Arc<PgConnectOptions>>,
    /// Writes that act on a target carry its ownership epoch (`fenced`).
    fence: Option<Fence>,
}

/// A target's ownership epoch as this replica holds it: raised in the
/// database at each acquisition (`Store::take_ownership`). A store `fenced`
/// with it refuses step starts, phase changes, incident and decision writes
/// once a newer owner exists, so a stalled owner that thaws (SIGSTOP, swap,
/// a long pause) can start nothing and write nothing. Epoch 0: never
/// acquired (refused as soon as anyone owns the target).
#[derive(Clone, Debug)]
pub struct Fence {
    target: std::sync::Arc<str>,
    epoch: std::sync::Arc<std::sync::atomic::AtomicI64>,
}

impl Fence {
    pub fn new(target: &str) -> Fence {
        Fence {
            target: target.into(),
            epoch: std::sync::Arc::default(),
        }
    }

    pub fn target(&self) -> &str {
        &self.target
    }

    pub fn epoch(&self) -> i64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set(&self, epoch: i64) {
        self.epoch.store(epoch, std::sync::atomic::Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.database)
            .finish()
    }
}

/// Runs `$body` with `$pool` bound to whichever pool the store has: the same
/// SQL and binds, type-checked once per backend.
macro_rules! on_backend {
    ($store:expr, $pool:ident => $body:expr) => {
        match &*$store.pool {
            $crate::store::Pool::Sqlite($pool) => $body,
            $crate::store::Pool::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_backend;

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the database.
    /// `postgres://` or `postgresql://` is PostgreSQL; `sqlite://PATH`,
    /// `sqlite:PATH` or a bare path is SQLite.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_with(url, &OpenOptions::default()).await
    }

    pub async fn open_with(url: &str, options: &OpenOptions) -> Result<Store, StoreError> {
        let database = redact(url);
        // sqlx locks PostgreSQL while it migrates, not SQLite: two processes
        // opening one new file at once (`run` and an `incidents` command)
        // would race to create it and to apply a migration. `_lock` holds a
        // file lock from before the first connection to after the migrations.
        let (pool, _lock) = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (
                Pool::Postgres(open_postgres(url, &database, options).await?),
                None,
            )
        } else {
            let (pool, lock) = open_sqlite(url, &database, options).await?;
            (Pool::Sqlite(pool), lock)
        };
        let migrated = match &pool {
            Pool::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
            Pool::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
        };
        migrated.map_err(|source| StoreError::Migrate {
            database: database.clone(),
            source,
        })?;
        let postgres = match &pool {
            Pool::Postgres(_) => PgConnectOptions::from_str(url)
                .ok()
                .map(std::sync::Arc::new),
            Pool::Sqlite(_) => None,
        };
        Ok(Store {
            pool: std::sync::Arc::new(pool),
            database,
            url: url.into(),
            postgres,
            fence: None,
        })
    }

    pub fn backend(&self) -> Backend {
        match &*self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// How a transaction that reads and then writes begins. SQLite (WAL): a
    /// deferred transaction that read first cannot take the write lock once
    /// another connection has written since (`SQLITE_BUSY_SNAPSHOT`, "database
    /// is locked" at once, the busy timeout not applied): an `incidents
    /// approve` beside a running `run` failed so. `BEGIN IMMEDIATE` takes the
    /// write lock first, waiting the busy timeout.
    pub(crate) fn begin_statement(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        }
    }

    /// PostgreSQL: a connection outside the pool, for a session-level
    /// advisory lock held as long as the connection lives. `None` for SQLite.
    /// `timeout` bounds the connect and is the owner's check interval: the
    /// server probes a silent client after that long (TCP keepalive, 1 s
    /// apart, 2 probes) and gives up unacknowledged data as late, so that a
    /// replica whose host dies without closing its connection (power loss,
    /// a partition) loses its locks within about two intervals, not after
    /// the two hours of the operating system's default keepalive.
    pub async fn dedicated_connection(
        &self,
        timeout: Duration,
    ) -> Option<Result<PgConnection, StoreError>> {
        // Named so that a DBA (and `pg_stat_activity`) can tell which
        // replica holds which lock: host and process id.
        let host = host_name();
        let idle = timeout.as_secs().max(1);
        let options = PgConnectOptions::clone(self.postgres.as_ref()?)
            .application_name(&format!(
                "rollwatch leadership {host}:{}",
                std::process::id()
            ))
            .options([
                ("tcp_keepalives_idle", idle.to_string()),
                ("tcp_keepalives_interval", "1".to_string()),
                ("tcp_keepalives_count", "2".to_string()),
            ]);
        Some(
            match tokio::time::timeout(timeout, PgConnection::connect_with(&options)).await {
                Ok(Ok(mut connection)) => {
                    // Not in the start-up options: a server whose system
                    // lacks TCP_USER_TIMEOUT refuses a non-zero value, and
                    // the keepalives suffice there.
                    let user_timeout = ((idle + 2) * 1000).to_string();
                    let set = sqlx::query("SELECT set_config('tcp_user_timeout', $1, false)")
                        .bind(user_timeout)
                        .execute(&mut connection);
                    if let Ok(Err(error)) = tokio::time::timeout(timeout, set).await {
                        tracing::debug!(%error, "tcp_user_timeout not set on the lock session");
                    }
                    Ok(connection)
                }
                Ok(Err(source)) => Err(StoreError::Open {
                    database: self.database.clone(),
                    source,
                }),
                Err(_) => Err(StoreError::OpenTimedOut {
                    database: self.database.clone(),
                    after: timeout,
                }),
            },
        )
    }

    /// This store, its acting writes carrying `fence` (see `Fence`).
    pub fn fenced(&self, fence: Fence) -> Store {
        Store {
            fence: Some(fence),
            ..self.clone()
        }
    }

    /// The URL the store was opened with, credentials included: for a step
    /// runner (handed over stdin), never for display (`database` is).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's URL or path, without a password.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Waits for queries in flight and closes every connection.
    pub async fn close(&self) {
        match &*self.pool {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// An exclusive `flock` on `DB-migrate.lock` beside a SQLite file, held while
/// migrations run; released when dropped (the file closes).
struct MigrationLock {
    _file: std::fs::File,
}

impl MigrationLock {
    async fn acquire(database: &Path) -> std::io::Result<MigrationLock> {
        let mut name = database.as_os_str().to_owned();
        name.push("-migrate.lock");
        let path = std::path::PathBuf::from(name);
        tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)?;
            // SAFETY: flock on a file descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(MigrationLock { _file: file })
        })
        .await
        .map_err(std::io::Error::other)?
    }
}

async fn open_sqlite(
    url: &str,
    database: &str,
    options: &OpenOptions,
) -> Result<(SqlitePool, Option<MigrationLock>), StoreError> {
    let connect = if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
            database: database.to_string(),
            reason: e.to_string(),
        })?
    } else if url.contains("://") {
        return Err(StoreError::BadUrl {
            database: database.to_string(),
            reason: "expected postgres://..., sqlite://PATH or a file path".to_string(),
        });
    } else {
        SqliteConnectOptions::new().filename(url)
    };
    // WAL lets readers (the HTTP API) run beside the writer; FULL makes each
    // commit durable across a power loss, not only a crash of rollwatch.
    let connect = connect
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(options.busy_timeout)
        .foreign_keys(true);
    let lock = match connect.get_filename() {
        path if path.as_os_str().is_empty() || path == Path::new(":memory:") => None,
        path => Some(
            MigrationLock::acquire(path)
                .await
                .map_err(|e| StoreError::Open {
                    database: database.to_string(),
                    source: sqlx::Error::Io(e),
                })?,
        ),
    };
    let pool = SqlitePoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.connect_timeout)
        .connect_with(connect)
        .await
        .map_err(|source| StoreError::Open {
            database: database.to_string(),
            source,
        })?;
    Ok((pool, lock))
}

async fn open_postgres(
    url: &str,
    database: &str,
    options: &OpenOptions,
) -> Result<PgPool, StoreError> {
    let connect = PgConnectOptions::from_str(url).map_err(|e| StoreError::BadUrl {
        database: database.to_string(),
        reason: e.to_string(),
    })?;
    // One direct connection first: the pool retries a refused connection
    // until its timeout and then reports only "pool timed out", while this
    // says what was wrong (refused, bad password, no such database).
    match tokio::time::timeout(
        options.connect_timeout,
        PgConnection::connect_with(&connect),
    )
    .await
    {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
        }
        Ok(Err(source)) => {
            return Err(StoreError::Open {
                database: database.to_string(),
                source,
            });
        }
        Err(_) => {
            return Err(StoreError::OpenTimedOut {
                database: database.to_string(),
                after: options.connect_timeout,
            });
        }
    }
    PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.connect_timeout)
        .connect_with(connect)
        .await
        .map_err(|source| StoreError::Open {
            database: database.to_string(),
            source,
        })
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn redact(url: &str) -> String {
    crate::secret::redact_url(url)
}

/// Maps a sqlx error to a `Query` error naming the operation.
fn query_failed(operation: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { operation, source }
}

/// The last `STEP_OUTPUT_LIMIT` bytes of `text`, cut at a character boundary.
fn keep_tail(text: &str) -> &str {
    if text.len() <= STEP_OUTPUT_LIMIT {
        return text;
    }
    let mut start = text.len() - STEP_OUTPUT_LIMIT;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// This machine's name (empty when unknown): it names a replica's database
/// sessions and outbox claims, so that a DBA can tell who holds what.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each enum the store keeps as a word reads back as itself, and
    /// serializes (API, `--format json`) as the same word.
    #[test]
    fn every_stored_word_round_trips() {
        use crate::text_enum::assert_round_trips;
        assert_round_trips::<crate::engine::policy::Tier>();
        assert_round_trips::<crate::engine::policy::Action>();
        assert_round_trips::<crate::engine::policy::Quantile>();
        assert_round_trips::<crate::engine::policy::BaselineMode>();
        assert_round_trips::<crate::engine::decision::Cause>();
        assert_round_trips::<crate::engine::decision::Guard>();
        assert_round_trips::<DeploymentSource>();
        assert_round_trips::<IncidentKind>();
        assert_round_trips::<IncidentPhase>();
        assert_round_trips::<IncidentOutcome>();
        assert_round_trips::<StepStage>();
        assert_round_trips::<StepOutcome>();
        assert_round_trips::<NotificationKind>();
        assert_round_trips::<NotificationState>();
        assert_round_trips::<AnswerKind>();
    }

    /// The words are the ones existing databases and the JSON contract hold.
    #[test]
    fn the_stored_words_are_unchanged() {
        use crate::engine::decision::{Cause, Guard};
        use crate::engine::policy::{Action, Tier};
        let words = |all: &[&'static str]| all.join(" ");
        assert_eq!(
            words(&Tier::ALL.iter().map(|t| t.as_str()).collect::<Vec<_>>()),
            "ignore watch consider immediate"
        );
        assert_eq!(
            words(&Action::ALL.iter().map(|a| a.as_str()).collect::<Vec<_>>()),
            "none notify page page-then-rollback rollback"
        );
        assert_eq!(
            words(&Cause::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>()),
            "rule-fired burst-ended watch-band declared approved acknowledged held deadline-passed \
             rollback-finished rollback-failed watch-failed stable recovered blind unanswered"
        );
        assert_eq!(
            words(&Guard::ALL.iter().map(|g| g.as_str()).collect::<Vec<_>>()),
            "no-recent-deploy preexisting in-progress cooldown rollback-of-rollback \
             known-issue held acknowledged recovered no-data"
        );
    }

    #[test]
    fn a_password_never_appears_in_messages() {
        assert_eq!(
            redact("postgres://rw:s3cret@db:5432/rollwatch?sslmode=require"),
            "postgres://rw:***@db:5432/rollwatch?…"
        );
        assert_eq!(
            redact("postgres://rw@db:5432/rollwatch?password=s3cret"),
            "postgres://rw@db:5432/rollwatch?…"
        );
        assert_eq!(
            redact("postgres://rw@db/rollwatch"),
            "postgres://rw@db/rollwatch"
        );
        assert_eq!(redact("rollwatch.db"), "rollwatch.db");
    }

    #[test]
    fn step_output_keeps_the_last_64_kib_on_a_character_boundary() {
        let text = format!("{}{}", "é".repeat(40_000), "end");
        let kept = keep_tail(&text);
        assert!(kept.len() <= STEP_OUTPUT_LIMIT);
        assert!(kept.ends_with("end"));
        assert_eq!(keep_tail("short"), "short");
    }
}
