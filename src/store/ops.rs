//! Reading columns, the ownership fence and deployments: what the other
//! store files build on.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Row, Type};

use super::time::StoredTime;
use super::{DeploymentRecord, NewDeployment, Store, StoreError, on_backend, query_failed};
use crate::text_enum::TextEnum;

/// One column of a row, or a `Corrupt` error naming what was being read.
pub(super) fn get<'r, R, T>(row: &'r R, what: &'static str, column: &str) -> Result<T, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(column).map_err(|e| StoreError::Corrupt {
        what,
        reason: format!("column {column}: {e}"),
    })
}

pub(super) fn time<'r, R>(
    row: &'r R,
    what: &'static str,
    column: &str,
) -> Result<DateTime<Utc>, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    StoredTime: Decode<'r, R::Database> + Type<R::Database>,
{
    get::<R, StoredTime>(row, what, column).map(|t| t.0)
}

pub(super) fn optional_time<'r, R>(
    row: &'r R,
    what: &'static str,
    column: &str,
) -> Result<Option<DateTime<Utc>>, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    Option<StoredTime>: Decode<'r, R::Database> + Type<R::Database>,
{
    get::<R, Option<StoredTime>>(row, what, column).map(|t| t.map(|t| t.0))
}

/// A stored word read back into its enum. A word outside the enum's set is
/// `UnknownWord` naming the table, column, row and value: a corrupt row,
/// never a default.
pub(super) fn word<'r, R, T>(
    row: &'r R,
    table: &'static str,
    column: &'static str,
) -> Result<T, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: TextEnum,
    String: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let text: String = get(row, table, column)?;
    parse_word(row, table, column, text)
}

/// `word` for a column that may be NULL.
pub(super) fn optional_word<'r, R, T>(
    row: &'r R,
    table: &'static str,
    column: &'static str,
) -> Result<Option<T>, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: TextEnum,
    Option<String>: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    let text: Option<String> = get(row, table, column)?;
    text.map(|text| parse_word(row, table, column, text))
        .transpose()
}

fn parse_word<'r, R, T>(
    row: &'r R,
    table: &'static str,
    column: &'static str,
    text: String,
) -> Result<T, StoreError>
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    T: TextEnum,
    i64: Decode<'r, R::Database> + Type<R::Database>,
{
    T::parse(&text).ok_or_else(|| StoreError::UnknownWord {
        table,
        column,
        row: row.try_get("id").unwrap_or(-1),
        value: text,
        what: T::WHAT,
        expected: T::all()
            .iter()
            .map(|v| v.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

pub(super) fn at(at: DateTime<Utc>) -> StoredTime {
    StoredTime(at)
}

pub(super) fn optional(at: Option<DateTime<Utc>>) -> Option<StoredTime> {
    at.map(StoredTime)
}

macro_rules! deployment_from_row {
    ($row:expr) => {{
        let row = $row;
        let what = "deployment";
        let migrations: Json<Vec<String>> = get(row, what, "migrations")?;
        DeploymentRecord {
            id: get(row, what, "id")?,
            target: get(row, what, "target")?,
            version: get(row, what, "version")?,
            previous: get(row, what, "previous")?,
            migrations: migrations.0,
            at: time(row, what, "at")?,
            rollback: get(row, what, "is_rollback")?,
            source: word(row, "deployments", "source")?,
        }
    }};
}

/// SQL that holds while no owner of the fence's target newer than this
/// replica exists; binds `$first` (the target) and `$first + 1` (the epoch).
pub(super) fn unfenced(first: usize) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM ownership WHERE target = ${first} AND epoch > ${})",
        first + 1
    )
}

/// Is this a violation of a UNIQUE or a FOREIGN KEY constraint?
pub(super) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

pub(super) fn is_foreign_key_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_foreign_key_violation())
}

impl Store {
    /// The fence's binds: without a fence nothing is refused.
    pub(super) fn fence_target(&self) -> String {
        self.fence
            .as_ref()
            .map_or_else(String::new, |f| f.target().to_string())
    }

    pub(super) fn fence_epoch(&self) -> i64 {
        self.fence.as_ref().map_or(i64::MAX, super::Fence::epoch)
    }

    /// After a fenced write changed nothing: `Fenced` when a newer owner
    /// exists (logged loudly), else `None` (another reason).
    pub(super) async fn fenced_out(&self) -> Option<StoreError> {
        let fence = self.fence.as_ref()?;
        let newer = on_backend!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT epoch FROM ownership WHERE target = $1")
                .bind(fence.target().to_string())
                .fetch_optional(pool)
                .await
        })
        .ok()
        .flatten()?;
        (newer > fence.epoch()).then(|| {
            let error = StoreError::Fenced {
                target: fence.target().to_string(),
                epoch: fence.epoch(),
                newer,
            };
            tracing::error!(target_name = %fence.target(), "FENCED: {error}");
            super::FENCED_WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            error
        })
    }

    /// Takes `target` over: raises its ownership epoch (the first owner gets
    /// epoch one) and returns it. Every acting write of the previous owner is
    /// refused from now on (`Fence`).
    pub async fn take_ownership(
        &self,
        target: &str,
        owner: &str,
        at_: DateTime<Utc>,
    ) -> Result<i64, StoreError> {
        on_backend!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO ownership (target, epoch, owner, acquired_at) VALUES ($1, 1, $2, $3) \
                 ON CONFLICT (target) DO UPDATE SET epoch = ownership.epoch + 1, \
                 owner = excluded.owner, acquired_at = excluded.acquired_at RETURNING epoch",
            )
            .bind(target.to_string())
            .bind(owner.to_string())
            .bind(at(at_))
            .fetch_one(pool)
            .await
            .map_err(query_failed("take ownership"))
        })
    }

    /// Records a deployment; returns its id.
    pub async fn record_deployment(&self, deployment: &NewDeployment) -> Result<i64, StoreError> {
        on_backend!(self, pool => {
            sqlx::query(
                "INSERT INTO deployments (target, version, previous, migrations, at, is_rollback, source) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
            )
            .bind(deployment.target.clone())
            .bind(deployment.version.clone())
            .bind(deployment.previous.clone())
            .bind(Json(deployment.migrations.clone()))
            .bind(at(deployment.at))
            .bind(deployment.rollback)
            .bind(deployment.source.as_str())
            .fetch_one(pool)
            .await
            .map_err(query_failed("record deployment"))?
            .try_get::<i64, _>(0)
            .map_err(query_failed("record deployment"))
        })
    }

    /// The target's deployments, newest first.
    pub async fn deployments(
        &self,
        target: &str,
        limit: i64,
    ) -> Result<Vec<DeploymentRecord>, StoreError> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT * FROM deployments WHERE target = $1 ORDER BY at DESC, id DESC LIMIT $2",
            )
            .bind(target.to_string())
            .bind(limit)
            .fetch_all(pool)
            .await
            .map_err(query_failed("list deployments"))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(deployment_from_row!(row));
            }
            Ok(out)
        })
    }
}
