//! `otelring sql "SELECT ..."`: one read-only query over every segment of every shard.
//!
//! An in-memory connection ATTACHes each segment the catalog lists (`file:...?mode=ro`) as `s<k>`
//! and creates TEMP views under the documented names: `spans`, `logs`, `metric_points` are the
//! `UNION ALL` of that view (a legacy segment: table) in every segment, plus `shard` and
//! `segment` columns; `traces` presents ONE row per (tenant, trace) however many segments hold a
//! part of it, merged by the trace rule (min start, max end, ERROR wins, the root span's service
//! wins, else the earliest segment's); `trace_segments` keeps the per-segment rows. Then
//! `PRAGMA query_only` is set and the query runs. Segments are WAL databases: readers never block
//! the writers.
//!
//! A [`Window`] (`--since` / `--until`) attaches only the segments whose ingest-time range meets
//! it (the catalog knows each sealed segment's range without opening it) and keeps only the rows
//! ingested inside it, so a query about the last hour reads the last hour's files.
//! At most [`MAX_ATTACHED`] segments are attached at once (SQLite's compile-time limit, raised
//! from 10 in `.cargo/config.toml`); a query that would need more asks for a window.

use super::catalog::{Catalog, SegmentInfo};
use super::schema::{TABLES, columns};
use super::segment::parse_segment_file_name;
use super::{StoreError, recorded_shards};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::path::Path;

/// Most segments one query attaches (`SQLITE_MAX_ATTACHED`, set to its maximum of 125 by
/// `LIBSQLITE3_FLAGS` in `.cargo/config.toml`).
pub const MAX_ATTACHED: usize = 125;

/// An ingest-time window (unix ns, inclusive); `None` ends are open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    pub since: Option<i64>,
    pub until: Option<i64>,
}

/// Errors of `otelring sql`.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
    #[error(
        "{count} segments match; one query attaches at most {MAX_ATTACHED}: narrow it with --since / --until"
    )]
    TooManySegments { count: usize },
}

/// `file:` URI of a path, percent-escaping what URIs reserve.
fn file_uri(path: &Path) -> String {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut out = String::from("file:");
    for c in abs.to_string_lossy().chars() {
        match c {
            '%' | '?' | '#' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str("?mode=ro");
    out
}

/// Opens every segment of `data_dir` read-only behind the TEMP views; the connection is
/// `query_only`.
pub fn open_read_only(data_dir: &Path) -> Result<Connection, SqlError> {
    open_read_only_window(data_dir, Window::default())
}

/// The segments to query: the catalog's, or, for a directory no segment-aware otelring has
/// opened yet, the shard files themselves.
fn listed_segments(data_dir: &Path, shards: usize) -> Result<Vec<SegmentInfo>, SqlError> {
    if let Some(cat) = Catalog::open_read_only(data_dir)? {
        let segs = cat.segments(None).map_err(|e| StoreError::sqlite(cat.path(), e))?;
        if !segs.is_empty() {
            return Ok(segs);
        }
    }
    let mut segs = Vec::new();
    let entries =
        std::fs::read_dir(data_dir).map_err(|e| StoreError::Io { path: data_dir.to_owned(), source: e })?;
    for ent in entries.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some((shard, seq)) = parse_segment_file_name(&name)
            && shard < shards
        {
            segs.push(SegmentInfo {
                shard,
                seq,
                file: name,
                sealed: false,
                created_at: 0,
                min_ingested_at: None,
                max_ingested_at: None,
                rows: 0,
                bytes: 0,
            });
        }
    }
    segs.sort_by_key(|s| (s.shard, s.seq));
    Ok(segs)
}

/// Like [`open_read_only`], but attaches only the segments that may hold rows ingested inside
/// `window`, and the views keep only those rows.
pub fn open_read_only_window(data_dir: &Path, window: Window) -> Result<Connection, SqlError> {
    let shards = match recorded_shards(data_dir)? {
        Some(n) => n,
        None => return Err(StoreError::NoShards { dir: data_dir.to_owned() }.into()),
    };
    let segs: Vec<SegmentInfo> = listed_segments(data_dir, shards)?
        .into_iter()
        .filter(|s| s.overlaps(window.since, window.until))
        .collect();
    if segs.len() > MAX_ATTACHED {
        return Err(SqlError::TooManySegments { count: segs.len() });
    }
    let conn = Connection::open_in_memory_with_flags(
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_URI,
    )?;
    let mut parts: Vec<(usize, &SegmentInfo)> = Vec::with_capacity(segs.len());
    for (k, seg) in segs.iter().enumerate() {
        let path = data_dir.join(&seg.file);
        conn.execute(&format!("ATTACH DATABASE ?1 AS s{k}"), [file_uri(&path)])
            .map_err(|e| StoreError::sqlite(&path, e))?;
        parts.push((k, seg));
    }
    let filter = match (window.since, window.until) {
        (None, None) => String::new(),
        (s, u) => format!(
            " WHERE ingested_at >= {} AND ingested_at <= {}",
            s.unwrap_or(i64::MIN),
            u.unwrap_or(i64::MAX)
        ),
    };
    for t in TABLES {
        let view = if t == "traces" { "trace_segments" } else { t };
        let cols = columns(t);
        let mut union: Vec<String> = parts
            .iter()
            .map(|&(k, seg)| {
                format!(
                    "SELECT {}, {} AS shard, {} AS segment FROM s{k}.{t}{filter}",
                    cols.join(", "),
                    seg.shard,
                    seg.seq
                )
            })
            .collect();
        if union.is_empty() {
            // No segment in the window: an empty view with the same columns.
            let list: Vec<String> = cols.iter().map(|c| format!("NULL AS {c}")).collect();
            union.push(format!("SELECT {}, NULL AS shard, NULL AS segment WHERE 0", list.join(", ")));
        }
        conn.execute_batch(&format!("CREATE TEMP VIEW {view} AS {}", union.join(" UNION ALL ")))?;
    }
    // One logical row per trace (DESIGN 1.4): the trace rule over the per-segment rows. Window
    // functions partitioned by (tenant_id, trace_id), not GROUP BY: SQLite pushes a WHERE on the
    // partition columns down into every segment's branch, so a trace by id is one primary-key
    // search per segment (a GROUP BY over the union would aggregate every row first). The
    // service is the first by (has a root, earliest segment).
    conn.execute_batch(
        "CREATE TEMP VIEW traces AS SELECT tenant_id, trace_id, service_name, start_time_unix_nano,
            end_time_unix_nano, max(0, end_time_unix_nano - start_time_unix_nano) / 1000 AS duration_us,
            status, has_root, ingested_at, shard
         FROM (SELECT tenant_id, trace_id,
                first_value(service_name) OVER (PARTITION BY tenant_id, trace_id
                                                ORDER BY has_root DESC, segment) AS service_name,
                min(start_time_unix_nano) OVER p AS start_time_unix_nano,
                max(end_time_unix_nano) OVER p AS end_time_unix_nano,
                CASE max(CASE status WHEN 'STATUS_CODE_ERROR' THEN 2 WHEN 'STATUS_CODE_OK' THEN 1 ELSE 0 END)
                     OVER p
                    WHEN 2 THEN 'STATUS_CODE_ERROR' WHEN 1 THEN 'STATUS_CODE_OK' ELSE 'STATUS_CODE_UNSET' END
                    AS status,
                max(has_root) OVER p AS has_root, max(ingested_at) OVER p AS ingested_at, shard,
                row_number() OVER (PARTITION BY tenant_id, trace_id ORDER BY segment) AS part
               FROM trace_segments WINDOW p AS (PARTITION BY tenant_id, trace_id))
         WHERE part = 1",
    )?;
    conn.execute_batch("PRAGMA query_only = 1")?;
    Ok(conn)
}

/// Runs `query` over every segment of `data_dir` and prints a table, or a JSON array of objects
/// when `json` is set.
pub fn run(data_dir: &Path, query: &str, json: bool, out: &mut dyn Write) -> Result<(), SqlError> {
    run_window(data_dir, Window::default(), query, json, out)
}

/// [`run`] over the segments and rows of an ingest-time window.
pub fn run_window(
    data_dir: &Path,
    window: Window,
    query: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), SqlError> {
    let conn = open_read_only_window(data_dir, window)?;
    let mut stmt = conn.prepare(query)?;
    let names: Vec<String> = stmt.column_names().map(str::to_owned).collect();
    let mut rows = stmt.query([])?;
    if json {
        write!(out, "[")?;
        let mut first = true;
        while let Some(row) = rows.next()? {
            write!(out, "{}\n  {{", if first { "" } else { "," })?;
            first = false;
            for (i, name) in names.iter().enumerate() {
                let v = match row.get_ref(i)? {
                    ValueRef::Null => serde_json::Value::Null,
                    ValueRef::Integer(n) => n.into(),
                    ValueRef::Real(f) => {
                        serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)
                    }
                    ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                    ValueRef::Blob(b) => {
                        use base64::Engine;
                        base64::engine::general_purpose::STANDARD.encode(b).into()
                    }
                };
                let key = serde_json::Value::String(name.clone());
                write!(out, "{}{key}: {v}", if i == 0 { "" } else { ", " })?;
            }
            write!(out, "}}")?;
        }
        writeln!(out, "{}]", if first { "" } else { "\n" })?;
        return Ok(());
    }
    let mut table: Vec<Vec<String>> = Vec::new();
    while let Some(row) = rows.next()? {
        let mut cells = Vec::with_capacity(names.len());
        for i in 0..names.len() {
            cells.push(match row.get_ref(i)? {
                ValueRef::Null => "NULL".to_owned(),
                ValueRef::Integer(n) => n.to_string(),
                ValueRef::Real(f) => f.to_string(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).replace('\n', "\\n"),
                ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
            });
        }
        table.push(cells);
    }
    let mut widths: Vec<usize> = names.iter().map(|n| n.chars().count()).collect();
    for r in &table {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |out: &mut dyn Write, cells: &[String]| -> std::io::Result<()> {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, &w)| format!("{c:<w$}")).collect();
        writeln!(out, "{}", parts.join(" | ").trim_end())
    };
    line(out, &names)?;
    let rule: Vec<String> = widths.iter().map(|&w| "-".repeat(w)).collect();
    writeln!(out, "{}", rule.join("-+-"))?;
    for r in &table {
        line(out, r)?;
    }
    writeln!(out, "({} row{})", table.len(), if table.len() == 1 { "" } else { "s" })?;
    Ok(())
}
