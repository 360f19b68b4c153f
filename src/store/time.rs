//! How an instant is stored: `TIMESTAMPTZ` in PostgreSQL, and in SQLite TEXT in
//! one fixed UTC format (`2026-05-01T12:00:00.123456Z`, always 27 characters) so
//! that text order is time order and `ORDER BY` / `<=` work on the column. Both
//! keep microseconds: an instant is truncated to the microsecond on the way in,
//! so what comes back equals what went in on either backend.

use chrono::{DateTime, SubsecRound, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

/// The SQLite text form; `%.6f` always prints six digits.
const SQLITE_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.6fZ";

/// An instant as bound to and read from either backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoredTime(pub DateTime<Utc>);

impl StoredTime {
    fn truncated(self) -> DateTime<Utc> {
        self.0.trunc_subsecs(6)
    }
}

/// Truncates an instant to what the database keeps (microseconds).
pub fn to_stored_precision(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

impl Type<Sqlite> for StoredTime {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <String as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for StoredTime {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        let text = self.truncated().format(SQLITE_FORMAT).to_string();
        Encode::<Sqlite>::encode(text, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for StoredTime {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        let at = DateTime::parse_from_rfc3339(text)
            .map_err(|e| format!("stored instant {text:?} is not RFC 3339: {e}"))?;
        Ok(StoredTime(at.with_timezone(&Utc)))
    }
}

impl Type<Postgres> for StoredTime {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl Encode<'_, Postgres> for StoredTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        Encode::<Postgres>::encode(self.truncated(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for StoredTime {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(StoredTime(<DateTime<Utc> as Decode<Postgres>>::decode(
            value,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn the_sqlite_text_form_has_a_fixed_width_so_text_order_is_time_order() {
        let whole = Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0).unwrap();
        let later = whole + chrono::TimeDelta::microseconds(1);
        let a = StoredTime(whole)
            .truncated()
            .format(SQLITE_FORMAT)
            .to_string();
        let b = StoredTime(later)
            .truncated()
            .format(SQLITE_FORMAT)
            .to_string();
        assert_eq!(a, "2026-05-01T12:00:00.000000Z");
        assert_eq!(b.len(), 27);
        assert!(a < b);
    }
}
