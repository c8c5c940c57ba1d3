//! `otelring sql "SELECT ..."`: one read-only query over every shard.
//!
//! An in-memory connection ATTACHes each shard file read-only (`file:...?mode=ro`) as `s<i>` and
//! creates TEMP views `traces`, `spans`, `logs`, `metric_points`: the `UNION ALL` of that table in
//! every shard, plus a `shard` column. Then `PRAGMA query_only` is set and the query runs. Shards
//! are WAL databases: readers never block the writers (checkpoints that would wait on a reader
//! run with the busy handler off and simply try again later).

use super::schema::TABLES;
use super::{StoreError, recorded_shards, shard_file_name};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::io::Write;
use std::path::Path;

/// Errors of `otelring sql`.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("output: {0}")]
    Output(#[from] std::io::Error),
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

/// Opens every shard of `data_dir` read-only behind the TEMP views; the connection is
/// `query_only`.
pub fn open_read_only(data_dir: &Path) -> Result<Connection, SqlError> {
    let shards = match recorded_shards(data_dir)? {
        Some(n) => n,
        None => return Err(StoreError::NoShards { dir: data_dir.to_owned() }.into()),
    };
    let conn = Connection::open_in_memory_with_flags(
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_URI,
    )?;
    for i in 0..shards {
        let path = data_dir.join(shard_file_name(i));
        if !path.exists() {
            return Err(StoreError::NoShards { dir: data_dir.to_owned() }.into());
        }
        conn.execute(&format!("ATTACH DATABASE ?1 AS s{i}"), [file_uri(&path)])
            .map_err(|e| StoreError::sqlite(&path, e))?;
    }
    for t in TABLES {
        let union: Vec<String> =
            (0..shards).map(|i| format!("SELECT *, {i} AS shard FROM s{i}.{t}")).collect();
        conn.execute_batch(&format!("CREATE TEMP VIEW {t} AS {}", union.join(" UNION ALL ")))?;
    }
    conn.execute_batch("PRAGMA query_only = 1")?;
    Ok(conn)
}

/// Runs `query` over every shard of `data_dir` and prints a table, or a JSON array of objects
/// when `json` is set.
pub fn run(data_dir: &Path, query: &str, json: bool, out: &mut dyn Write) -> Result<(), SqlError> {
    let conn = open_read_only(data_dir)?;
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
