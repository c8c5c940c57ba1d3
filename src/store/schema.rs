//! The SQLite schema (DESIGN 1.4) and its migrations.
//!
//! Every shard file holds the same tables. A `schema_version` table holds one row with the
//! version the file was migrated to; [`migrate`] applies the missing steps of [`MIGRATIONS`] in
//! one transaction at open and refuses a file written by a newer otelring.
//!
//! Index budget. Each index is justified by a query users run and by its insert cost, measured
//! with `cargo bench --bench store` (docs/PERFORMANCE.md, "## Store"); the spans table carries the
//! bulk of the rows, so it gets one secondary index only:
//! - `spans` is a rowid table (ingest order: rows append densely) with the unique index
//!   `spans_key` (tenant_id, trace_id, span_id): span idempotency (`INSERT OR IGNORE`) and "a
//!   trace by id" (a key-prefix range). DESIGN 3 recommends `WITHOUT ROWID` keyed by the same
//!   columns; measured here it was slower: with ~600-byte rows a leaf page holds ~6 spans, so
//!   random trace ids dirty one full page per trace per transaction (and again at checkpoint),
//!   where the rowid table appends and only the ~70-byte index entries land at random. Bench
//!   (`cargo bench --bench store`, 500,000 spans, 20,000-span groups, same run): WITHOUT ROWID
//!   56.7k spans/s, rowid + `spans_key` 138.1k, baseline 85.1k. `spans_key` costs 2.9 µs per
//!   span (229.5k spans/s without it) and is the idempotency contract;
//! - `spans_service_start` (tenant_id, service_name, start_time_unix_nano): "spans of a service in a
//!   time range"; 0.5 µs per span (148.8k spans/s without it, 138.1k with);
//! - `traces` is `WITHOUT ROWID` keyed by (tenant_id, trace_id): the per-transaction trace upsert;
//! - `traces_errors`, partial on status = ERROR, (tenant_id, start_time_unix_nano): "recent
//!   errors"; only error traces enter it, so healthy traffic pays nothing;
//! - `traces_ingested` (ingested_at): span retention walks old traces and deletes their spans by
//!   key prefix; one entry per trace (not per span). With `traces_errors`: below the bench's noise
//!   (132.4k spans/s without both, 138.1k with);
//! - `logs` and `metric_points` are rowid tables in ingest order: retention deletes rowid ranges;
//!   `logs_service_time` serves "logs of a service in a time range", `logs_trace` (partial: rows with
//!   a trace id) "logs of a trace", `metric_points_name_time` "a metric series by name and time".

use rusqlite::Connection;

/// The version this build writes. Bump it and append a step to [`MIGRATIONS`] to change the
/// schema; never edit a released step.
pub const SCHEMA_VERSION: i64 = 1;

/// Step `i` migrates a file from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[V1];

const V1: &str = r#"
CREATE TABLE traces (
    tenant_id            TEXT    NOT NULL,
    trace_id             TEXT    NOT NULL,
    service_name         TEXT    NOT NULL,
    start_time_unix_nano INTEGER NOT NULL,
    end_time_unix_nano   INTEGER NOT NULL,
    duration_us          INTEGER NOT NULL,
    status               TEXT    NOT NULL,
    has_root             INTEGER NOT NULL,
    ingested_at          INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, trace_id)
) WITHOUT ROWID;
CREATE INDEX traces_errors ON traces (tenant_id, start_time_unix_nano)
    WHERE status = 'STATUS_CODE_ERROR';
CREATE INDEX traces_ingested ON traces (ingested_at);

CREATE TABLE spans (
    tenant_id            TEXT    NOT NULL,
    trace_id             TEXT    NOT NULL,
    span_id              TEXT    NOT NULL,
    parent_span_id       TEXT    NOT NULL,
    name                 TEXT    NOT NULL,
    kind                 TEXT    NOT NULL,
    service_name         TEXT    NOT NULL,
    start_time_unix_nano INTEGER NOT NULL,
    end_time_unix_nano   INTEGER NOT NULL,
    duration_us          INTEGER NOT NULL,
    status_code          TEXT    NOT NULL,
    status_message       TEXT    NOT NULL,
    attributes           TEXT    NOT NULL,
    resource_attributes  TEXT    NOT NULL,
    scope_name           TEXT    NOT NULL,
    ingested_at          INTEGER NOT NULL
);
CREATE UNIQUE INDEX spans_key ON spans (tenant_id, trace_id, span_id);
CREATE INDEX spans_service_start ON spans (tenant_id, service_name, start_time_unix_nano);

CREATE TABLE logs (
    tenant_id               TEXT    NOT NULL,
    time_unix_nano          INTEGER NOT NULL,
    observed_time_unix_nano INTEGER NOT NULL,
    severity_number         INTEGER NOT NULL,
    severity_text           TEXT    NOT NULL,
    body                    TEXT,
    trace_id                TEXT    NOT NULL,
    span_id                 TEXT    NOT NULL,
    service_name            TEXT    NOT NULL,
    attributes              TEXT    NOT NULL,
    resource_attributes     TEXT    NOT NULL,
    scope_name              TEXT    NOT NULL,
    ingested_at             INTEGER NOT NULL
);
CREATE INDEX logs_service_time ON logs (tenant_id, service_name, time_unix_nano);
CREATE INDEX logs_trace ON logs (trace_id) WHERE trace_id <> '';

CREATE TABLE metric_points (
    tenant_id              TEXT    NOT NULL,
    service_name           TEXT    NOT NULL,
    name                   TEXT    NOT NULL,
    description            TEXT    NOT NULL,
    unit                   TEXT    NOT NULL,
    kind                   TEXT    NOT NULL,
    temporality            TEXT,
    is_monotonic           INTEGER,
    time_unix_nano         INTEGER NOT NULL,
    start_time_unix_nano   INTEGER NOT NULL,
    value                  NUMERIC,
    count                  INTEGER,
    sum                    REAL,
    min                    REAL,
    max                    REAL,
    bucket_counts          TEXT,
    explicit_bounds        TEXT,
    scale                  INTEGER,
    zero_count             INTEGER,
    positive_offset        INTEGER,
    positive_bucket_counts TEXT,
    negative_offset        INTEGER,
    negative_bucket_counts TEXT,
    quantiles              TEXT,
    attributes             TEXT    NOT NULL,
    resource_attributes    TEXT    NOT NULL,
    scope_name             TEXT    NOT NULL,
    ingested_at            INTEGER NOT NULL
);
CREATE INDEX metric_points_name_time ON metric_points (tenant_id, name, time_unix_nano);

-- DLQ replay bookkeeping (DESIGN 1.3): a file id, or '<id>:<first>-<last>' for each committed
-- part of a bisected file, written in the replay's own transaction.
CREATE TABLE dlq_applied (
    id         TEXT    NOT NULL PRIMARY KEY,
    applied_at INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The user-facing tables, in FK order (what `otelring sql` exposes as views).
pub const TABLES: [&str; 4] = ["traces", "spans", "logs", "metric_points"];

/// The version a file was migrated to (0 for a new file).
pub fn version(conn: &Connection) -> rusqlite::Result<i64> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    conn.query_row("SELECT coalesce(max(version), 0) FROM schema_version", [], |r| r.get(0))
}

/// Errors of [`migrate`].
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("schema version {found} is newer than this build's {SCHEMA_VERSION}; upgrade otelring")]
    Newer { found: i64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Brings the file to [`SCHEMA_VERSION`] in one transaction.
pub fn migrate(conn: &mut Connection) -> Result<i64, MigrateError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found = version(&tx)?;
    if found > SCHEMA_VERSION {
        return Err(MigrateError::Newer { found });
    }
    if found == SCHEMA_VERSION {
        return Ok(found);
    }
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    for step in MIGRATIONS.iter().skip(usize::try_from(found).unwrap_or(0)) {
        tx.execute_batch(step)?;
    }
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [SCHEMA_VERSION])?;
    tx.commit()?;
    Ok(SCHEMA_VERSION)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer() {
        let mut c = Connection::open_in_memory().unwrap();
        assert_eq!(version(&c).unwrap(), 0);
        assert_eq!(migrate(&mut c).unwrap(), SCHEMA_VERSION);
        assert_eq!(migrate(&mut c).unwrap(), SCHEMA_VERSION);
        for t in TABLES {
            let n: i64 = c.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0)).unwrap();
            assert_eq!(n, 0);
        }
        c.execute("UPDATE schema_version SET version = 99", []).unwrap();
        assert!(matches!(migrate(&mut c), Err(MigrateError::Newer { found: 99 })));
    }

    #[test]
    fn step_count_matches_version() {
        assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    }
}
