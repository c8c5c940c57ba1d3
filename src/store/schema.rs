//! The SQLite schema of a segment (DESIGN 1.4) and its migrations.
//!
//! A shard is a sequence of segment files (see [`super::segment`]); every segment written by
//! this version holds the tables of [`V2`]: compact row tables (`span_rows`, `trace_rows`,
//! `log_rows`, `metric_point_rows`), each distinct resource once (`resources`, keyed by a hash of
//! its JSON), and the documented tables as **views** with the documented columns (`spans`,
//! `traces`, `logs`, `metric_points`), so the stock `sqlite3` CLI reads a segment as before.
//! A `schema_version` table holds the version; [`migrate`] creates a new file at
//! [`SCHEMA_VERSION`] and refuses a file from a newer otelring. A file at version 1 (the layout
//! before segments: one ever-growing file per shard with plain tables) is a **legacy segment**:
//! it is opened as its shard's first segment, sealed, read and dropped by retention like any
//! other, never written again (so it needs no conversion).
//!
//! What each row and index entry costs, and why (random W3C ids scatter every insert into a
//! random-keyed index over the whole index; docs/PERFORMANCE.md "Steady state"):
//! - trace ids stay lowercase hex TEXT in the row tables, so the views pass them through and
//!   `WHERE trace_id = '<32 hex digits>'` (every documented query, every user's habit) is an
//!   index search; span ids (and parent ids) are 8-byte BLOBs, shown as hex by the views;
//! - a span's kind and status are small integers (the views map them to their `SPAN_KIND_*` /
//!   `STATUS_CODE_*` names); a trace row keeps its status as text (one row per trace; the partial
//!   index `trace_rows_errors` serves "recent errors" through the view); `duration_us` is
//!   computed by the views;
//! - a resource (0.5–1.5 KB of JSON from real SDKs and detectors) is stored once per segment in
//!   `resources` and referenced by its 64-bit FNV-1a hash; the views join it back as
//!   `resource_attributes`;
//! - `span_rows` is a rowid table (ingest order: rows append) with ONE random-keyed unique index,
//!   `span_rows_key` (trace_id, span_id, tenant_id): idempotency (`INSERT OR IGNORE`) and a trace
//!   by id (key prefix); `span_rows_service_start` appends per service;
//! - `trace_rows` is `WITHOUT ROWID` keyed by (trace_id, tenant_id): the per-group upsert;
//!   `trace_rows_errors` (partial, ERROR only) serves "recent errors";
//! - `log_rows_trace` indexes every log (logs without a trace hold '', which all append at one
//!   key): a partial index `WHERE trace_id <> ''` would not serve `trace_id = ?`, since SQLite
//!   infers only `IS NOT NULL` from a comparison;
//! - retention drops whole segments, so no index on `ingested_at` is needed.
//!
//! Every segment's random-keyed structures are bounded by the segment size
//! (`OTELRING_SEGMENT_MAX_BYTES`), which is what keeps the insert cost flat as the data grows.

use rusqlite::Connection;

/// The version this build writes. Bump it and append a step to [`MIGRATIONS`] to change the
/// schema; never edit a released step.
pub const SCHEMA_VERSION: i64 = 2;

/// The version of the layout before segments (plain tables, hex TEXT ids): opened read-only as a
/// shard's first, sealed segment.
pub const LEGACY_VERSION: i64 = 1;

/// Step `i` migrates a file from version `i` to `i + 1`. A new segment goes straight to
/// [`SCHEMA_VERSION`] through [`V2`]; version 1 files are never migrated (legacy segments).
pub const MIGRATIONS: &[&str] = &[V1, V2];

/// The layout before segments, kept so that tests can write a legacy data directory.
pub const V1: &str = r#"
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

CREATE TABLE dlq_applied (
    id         TEXT    NOT NULL PRIMARY KEY,
    applied_at INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The segment layout. Applied to a new (version 0) file only: it first drops nothing and
/// creates everything, so a version-0 file gets V2 without the V1 tables (see [`migrate`]).
pub const V2: &str = r#"
CREATE TABLE resources (
    id         INTEGER PRIMARY KEY,
    attributes TEXT NOT NULL
);

CREATE TABLE trace_rows (
    trace_id             TEXT    NOT NULL,
    tenant_id            TEXT    NOT NULL,
    service_name         TEXT    NOT NULL,
    start_time_unix_nano INTEGER NOT NULL,
    end_time_unix_nano   INTEGER NOT NULL,
    status               TEXT    NOT NULL,
    has_root             INTEGER NOT NULL,
    ingested_at          INTEGER NOT NULL,
    PRIMARY KEY (trace_id, tenant_id)
) WITHOUT ROWID;
CREATE INDEX trace_rows_errors ON trace_rows (tenant_id, start_time_unix_nano)
    WHERE status = 'STATUS_CODE_ERROR';

CREATE TABLE span_rows (
    tenant_id            TEXT    NOT NULL,
    trace_id             TEXT    NOT NULL,
    span_id              BLOB    NOT NULL,
    parent_span_id       BLOB,
    name                 TEXT    NOT NULL,
    kind                 INTEGER NOT NULL,
    service_name         TEXT    NOT NULL,
    start_time_unix_nano INTEGER NOT NULL,
    end_time_unix_nano   INTEGER NOT NULL,
    status_code          INTEGER NOT NULL,
    status_message       TEXT    NOT NULL,
    attributes           TEXT    NOT NULL,
    resource_id          INTEGER NOT NULL,
    scope_name           TEXT    NOT NULL,
    ingested_at          INTEGER NOT NULL
);
CREATE UNIQUE INDEX span_rows_key ON span_rows (trace_id, span_id, tenant_id);
CREATE INDEX span_rows_service_start ON span_rows (tenant_id, service_name, start_time_unix_nano);

CREATE TABLE log_rows (
    tenant_id               TEXT    NOT NULL,
    time_unix_nano          INTEGER NOT NULL,
    observed_time_unix_nano INTEGER NOT NULL,
    severity_number         INTEGER NOT NULL,
    severity_text           TEXT    NOT NULL,
    body                    TEXT,
    trace_id                TEXT    NOT NULL,
    span_id                 BLOB,
    service_name            TEXT    NOT NULL,
    attributes              TEXT    NOT NULL,
    resource_id             INTEGER NOT NULL,
    scope_name              TEXT    NOT NULL,
    ingested_at             INTEGER NOT NULL
);
CREATE INDEX log_rows_service_time ON log_rows (tenant_id, service_name, time_unix_nano);
CREATE INDEX log_rows_trace ON log_rows (trace_id);

CREATE TABLE metric_point_rows (
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
    resource_id            INTEGER NOT NULL,
    scope_name             TEXT    NOT NULL,
    ingested_at            INTEGER NOT NULL
);
CREATE INDEX metric_point_rows_name_time ON metric_point_rows (tenant_id, name, time_unix_nano);

-- DLQ replay bookkeeping (DESIGN 1.3): a file id, or '<id>:<first>-<last>' for each committed
-- part of a bisected file, written in the replay's own transaction. The records of DLQ files
-- still pending are carried into each new segment at rotation.
CREATE TABLE dlq_applied (
    id         TEXT    NOT NULL PRIMARY KEY,
    applied_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Planner hints (a fixed sqlite_stat1, as SQLite documents for applications that know their
-- data): without statistics the planner may pick the service index for
-- `tenant_id = ? AND trace_id = ?` (one equality column each); these say a trace id selects
-- a few rows and a tenant or service very many, as in every real deployment.
ANALYZE sqlite_schema;
INSERT INTO sqlite_stat1 (tbl, idx, stat) VALUES
    ('span_rows', 'span_rows_key', '10000000 5 1 1'),
    ('span_rows', 'span_rows_service_start', '10000000 5000000 500000 2'),
    ('log_rows', 'log_rows_trace', '10000000 20'),
    ('log_rows', 'log_rows_service_time', '10000000 5000000 500000 2'),
    ('trace_rows', 'trace_rows_errors', '100000 50000 2'),
    ('metric_point_rows', 'metric_point_rows_name_time', '10000000 5000000 100000 2');

CREATE VIEW traces AS SELECT
    tenant_id, trace_id, service_name, start_time_unix_nano,
    end_time_unix_nano, max(0, end_time_unix_nano - start_time_unix_nano) / 1000 AS duration_us,
    status, has_root, ingested_at
FROM trace_rows;

CREATE VIEW spans AS SELECT
    s.tenant_id, s.trace_id, lower(hex(s.span_id)) AS span_id,
    coalesce(lower(hex(s.parent_span_id)), '') AS parent_span_id, s.name,
    CASE s.kind WHEN 1 THEN 'SPAN_KIND_INTERNAL' WHEN 2 THEN 'SPAN_KIND_SERVER'
                WHEN 3 THEN 'SPAN_KIND_CLIENT' WHEN 4 THEN 'SPAN_KIND_PRODUCER'
                WHEN 5 THEN 'SPAN_KIND_CONSUMER' ELSE 'SPAN_KIND_UNSPECIFIED' END AS kind,
    s.service_name, s.start_time_unix_nano, s.end_time_unix_nano,
    max(0, s.end_time_unix_nano - s.start_time_unix_nano) / 1000 AS duration_us,
    CASE s.status_code WHEN 2 THEN 'STATUS_CODE_ERROR' WHEN 1 THEN 'STATUS_CODE_OK'
                       ELSE 'STATUS_CODE_UNSET' END AS status_code,
    s.status_message, s.attributes, coalesce(r.attributes, '{}') AS resource_attributes,
    s.scope_name, s.ingested_at
FROM span_rows s LEFT JOIN resources r ON r.id = s.resource_id;

CREATE VIEW logs AS SELECT
    l.tenant_id, l.time_unix_nano, l.observed_time_unix_nano, l.severity_number,
    l.severity_text, l.body, l.trace_id,
    coalesce(lower(hex(l.span_id)), '') AS span_id, l.service_name, l.attributes,
    coalesce(r.attributes, '{}') AS resource_attributes, l.scope_name, l.ingested_at
FROM log_rows l LEFT JOIN resources r ON r.id = l.resource_id;

CREATE VIEW metric_points AS SELECT
    m.tenant_id, m.service_name, m.name, m.description, m.unit, m.kind, m.temporality,
    m.is_monotonic, m.time_unix_nano, m.start_time_unix_nano, m.value, m.count, m.sum, m.min,
    m.max, m.bucket_counts, m.explicit_bounds, m.scale, m.zero_count, m.positive_offset,
    m.positive_bucket_counts, m.negative_offset, m.negative_bucket_counts, m.quantiles,
    m.attributes, coalesce(r.attributes, '{}') AS resource_attributes, m.scope_name,
    m.ingested_at
FROM metric_point_rows m LEFT JOIN resources r ON r.id = m.resource_id;
"#;

/// The user-facing tables (views in a segment), in FK order (what `otelring sql` exposes).
pub const TABLES: [&str; 4] = ["traces", "spans", "logs", "metric_points"];

/// The columns each user-facing view presents, in order, identical in a legacy segment's
/// tables and a segment's views (`otelring sql` unions them by these lists).
pub fn columns(table: &str) -> &'static [&'static str] {
    match table {
        "traces" => &[
            "tenant_id",
            "trace_id",
            "service_name",
            "start_time_unix_nano",
            "end_time_unix_nano",
            "duration_us",
            "status",
            "has_root",
            "ingested_at",
        ],
        "spans" => &[
            "tenant_id",
            "trace_id",
            "span_id",
            "parent_span_id",
            "name",
            "kind",
            "service_name",
            "start_time_unix_nano",
            "end_time_unix_nano",
            "duration_us",
            "status_code",
            "status_message",
            "attributes",
            "resource_attributes",
            "scope_name",
            "ingested_at",
        ],
        "logs" => &[
            "tenant_id",
            "time_unix_nano",
            "observed_time_unix_nano",
            "severity_number",
            "severity_text",
            "body",
            "trace_id",
            "span_id",
            "service_name",
            "attributes",
            "resource_attributes",
            "scope_name",
            "ingested_at",
        ],
        _ => &[
            "tenant_id",
            "service_name",
            "name",
            "description",
            "unit",
            "kind",
            "temporality",
            "is_monotonic",
            "time_unix_nano",
            "start_time_unix_nano",
            "value",
            "count",
            "sum",
            "min",
            "max",
            "bucket_counts",
            "explicit_bounds",
            "scale",
            "zero_count",
            "positive_offset",
            "positive_bucket_counts",
            "negative_offset",
            "negative_bucket_counts",
            "quantiles",
            "attributes",
            "resource_attributes",
            "scope_name",
            "ingested_at",
        ],
    }
}

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

/// Brings a new file (version 0) to [`SCHEMA_VERSION`] in one transaction; leaves a legacy
/// ([`LEGACY_VERSION`]) or current file as it is and returns its version; refuses a newer one.
pub fn migrate(conn: &mut Connection) -> Result<i64, MigrateError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let found = version(&tx)?;
    if found > SCHEMA_VERSION {
        return Err(MigrateError::Newer { found });
    }
    if found != 0 {
        return Ok(found);
    }
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    tx.execute_batch(V2)?;
    tx.execute("DELETE FROM schema_version", [])?;
    tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [SCHEMA_VERSION])?;
    tx.commit()?;
    Ok(SCHEMA_VERSION)
}

/// Writes a legacy (version 1) file: the layout before segments. For tests of the migration.
pub fn create_legacy(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    tx.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")?;
    tx.execute_batch(V1)?;
    tx.execute("INSERT INTO schema_version (version) VALUES (?1)", [LEGACY_VERSION])?;
    tx.commit()
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

    #[test]
    fn views_and_legacy_tables_present_the_same_columns() {
        let mut new = Connection::open_in_memory().unwrap();
        migrate(&mut new).unwrap();
        let mut old = Connection::open_in_memory().unwrap();
        create_legacy(&mut old).unwrap();
        assert_eq!(migrate(&mut old).unwrap(), LEGACY_VERSION);
        for t in TABLES {
            let cols = |c: &Connection| -> Vec<String> {
                c.prepare(&format!("SELECT * FROM {t}"))
                    .unwrap()
                    .column_names()
                    .map(|s| s.to_string())
                    .collect()
            };
            let want: Vec<String> = columns(t).iter().map(|s| s.to_string()).collect();
            assert_eq!(cols(&new), want, "{t}");
            assert_eq!(cols(&old), want, "{t}");
        }
    }
}
