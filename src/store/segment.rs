//! Segments (DESIGN 1.4, revised): shard i is a sequence of SQLite files, each bounded in size
//! and age, so every random-keyed index stays as small as one segment's data.
//!
//! - File names: segment 0 of shard i is `otelring-<i>.db` (the name the layout before segments
//!   used for the whole shard, which therefore opens as its first segment), segment n > 0 is
//!   `otelring-<i>.<n:06>.db`. The catalog ([`super::catalog`]) lists them; seq only grows.
//! - A shard has exactly one **active** segment (written by its writer thread) and any number of
//!   **sealed** ones (read-only from then on; dropped whole by retention).
//! - [`reconcile`] makes the catalog and the files agree at start-up (see the catalog's crash
//!   argument) and adopts a legacy (version 1) file as a sealed segment.
//! - [`SpanKeys`]: the in-memory filter of one segment's span keys that makes idempotency cross
//!   one rotation (a retried span whose first copy is in the previous segment).

use super::catalog::{Catalog, SegmentInfo};
use super::schema::{self, LEGACY_VERSION};
use super::{StoreError, shard};
use crate::pipeline::batch::{SpanId, TraceId};
use rusqlite::{Connection, OpenFlags};
use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::path::Path;

/// File name of segment `seq` of shard `shard`.
pub fn segment_file_name(shard: usize, seq: u64) -> String {
    if seq == 0 { format!("otelring-{shard}.db") } else { format!("otelring-{shard}.{seq:06}.db") }
}

/// The (shard, seq) a segment file name encodes.
pub fn parse_segment_file_name(name: &str) -> Option<(usize, u64)> {
    let rest = name.strip_prefix("otelring-")?.strip_suffix(".db")?;
    match rest.split_once('.') {
        None => Some((rest.parse().ok()?, 0)),
        Some((s, n)) if n.len() >= 6 && n.bytes().all(|b| b.is_ascii_digit()) => {
            Some((s.parse().ok()?, n.parse().ok().filter(|&n: &u64| n > 0)?))
        }
        Some(_) => None,
    }
}

/// Bytes a segment takes on disk (file + WAL).
pub fn segment_bytes(data_dir: &Path, file: &str) -> u64 {
    let main = data_dir.join(file);
    let mut wal = main.clone().into_os_string();
    wal.push("-wal");
    std::fs::metadata(&main).map_or(0, |m| m.len()) + std::fs::metadata(wal).map_or(0, |m| m.len())
}

/// Removes a segment's file and its WAL / shared-memory files (missing ones are fine).
pub fn remove_segment_files(data_dir: &Path, file: &str) -> std::io::Result<()> {
    let main = data_dir.join(file);
    for suffix in ["-wal", "-shm"] {
        let mut p = main.clone().into_os_string();
        p.push(suffix);
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_file(&main) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What a segment holds: rows over the user tables, and the range of their `ingested_at`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extent {
    pub rows: u64,
    pub min_ingested_at: Option<i64>,
    pub max_ingested_at: Option<i64>,
}

impl Extent {
    /// Widens the range by rows ingested between `lo` and `hi` (a transaction's batches: a DLQ
    /// replay brings old receive times, so both ends count).
    pub fn add(&mut self, rows: u64, lo: i64, hi: i64) {
        self.rows += rows;
        self.min_ingested_at = Some(self.min_ingested_at.map_or(lo, |m| m.min(lo)));
        self.max_ingested_at = Some(self.max_ingested_at.map_or(hi, |m| m.max(hi)));
    }
}

/// Counts the rows of an open segment and the range of their `ingested_at` (a scan; start-up and
/// adoption only).
pub fn extent(conn: &Connection, version: i64) -> rusqlite::Result<Extent> {
    let tables: &[&str] = if version == LEGACY_VERSION {
        &["spans", "logs", "metric_points"]
    } else {
        &["span_rows", "log_rows", "metric_point_rows"]
    };
    let mut e = Extent::default();
    for t in tables {
        let (n, lo, hi): (i64, Option<i64>, Option<i64>) = conn.query_row(
            &format!("SELECT count(*), min(ingested_at), max(ingested_at) FROM {t}"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        e.rows += n as u64;
        if let Some(lo) = lo {
            e.min_ingested_at = Some(e.min_ingested_at.map_or(lo, |m| m.min(lo)));
        }
        if let Some(hi) = hi {
            e.max_ingested_at = Some(e.max_ingested_at.map_or(hi, |m| m.max(hi)));
        }
    }
    Ok(e)
}

/// Opens a segment read-only (the previous segment's exact look-ups, adoption of a legacy file).
pub fn open_read_only(path: &Path) -> rusqlite::Result<(Connection, i64)> {
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(shard::BUSY_TIMEOUT)?;
    let v = schema::version(&c)?;
    Ok((c, v))
}

/// Identity hasher for [`SpanKeys`]: its keys are already keyed SipHash values.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// The span keys (tenant, trace id, span id) of one segment as 64-bit keyed hashes: a filter
/// with no false negatives. A hit is confirmed by an exact look-up in that segment's
/// `span_rows_key` index, so a hash collision costs one look-up, never a lost span. About 9–18
/// bytes per span (hashbrown at 7/8 maximum load); the keys are hashed with a per-process
/// random SipHash key, so crafted ids cannot flood one bucket.
pub struct SpanKeys {
    set: HashSet<u64, BuildHasherDefault<IdentityHasher>>,
    hasher: RandomState,
}

impl std::fmt::Debug for SpanKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanKeys").field("len", &self.set.len()).finish()
    }
}

impl SpanKeys {
    /// An empty filter whose hashes agree with `like`'s (the same SipHash key), so a filter can
    /// be rebuilt and compared across rotations.
    pub fn new(hasher: RandomState) -> Self {
        Self { set: HashSet::default(), hasher }
    }

    pub fn key(&self, tenant: &str, trace: &TraceId, span: &SpanId) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(&trace.0);
        h.write(&span.0);
        h.write(tenant.as_bytes());
        h.finish()
    }

    pub fn insert(&mut self, key: u64) {
        self.set.insert(key);
    }

    pub fn contains(&self, key: u64) -> bool {
        self.set.contains(&key)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Loads every span key of an open segment (start-up: the active and the previous one).
    pub fn load(&mut self, conn: &Connection, version: i64) -> rusqlite::Result<()> {
        if version == LEGACY_VERSION {
            let mut stmt = conn.prepare("SELECT tenant_id, trace_id, span_id FROM spans")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let tenant: String = r.get(0)?;
                let (Some(t), Some(s)) =
                    (parse_hex::<16>(&r.get::<_, String>(1)?), parse_hex::<8>(&r.get::<_, String>(2)?))
                else {
                    continue;
                };
                self.insert(self.key(&tenant, &TraceId(t), &SpanId(s)));
            }
        } else {
            let mut stmt = conn.prepare("SELECT tenant_id, trace_id, span_id FROM span_rows")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let tenant: String = r.get(0)?;
                let (Some(t), Ok(s)) =
                    (parse_hex::<16>(r.get_ref(1)?.as_str()?), <[u8; 8]>::try_from(r.get_ref(2)?.as_blob()?))
                else {
                    continue;
                };
                self.insert(self.key(&tenant, &TraceId(t), &SpanId(s)));
            }
        }
        Ok(())
    }
}

fn parse_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(out)
}

fn unix_nano_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Makes the catalog and the files of shard `shard` agree (start-up; see the catalog's crash
/// argument) and returns its segments in seq order:
/// - a listed segment whose file is gone is unlisted (removed by hand);
/// - an unlisted file with rows is adopted as sealed (a legacy file, or a retention unlink cut
///   short); an unlisted empty file is removed (a spare, or a rotation cut short before the
///   catalog named it);
/// - at most one segment stays active: the newest; an older `active` row (impossible through
///   [`Catalog::rotate`], but cheap to mend) is sealed with its scanned extent.
pub fn reconcile(
    data_dir: &Path,
    catalog: &mut Catalog,
    shard: usize,
) -> Result<Vec<SegmentInfo>, StoreError> {
    let sqlite = |e: rusqlite::Error| StoreError::sqlite(catalog_path(data_dir).as_path(), e);
    let listed = catalog.segments(Some(shard)).map_err(sqlite)?;
    for s in &listed {
        if !data_dir.join(&s.file).exists() {
            tracing::warn!(shard, file = %s.file, "a cataloged segment file is missing; unlisted");
            catalog.remove(shard, s.seq).map_err(sqlite)?;
        }
    }
    let mut on_disk: Vec<(u64, String)> = Vec::new();
    let entries =
        std::fs::read_dir(data_dir).map_err(|e| StoreError::Io { path: data_dir.to_owned(), source: e })?;
    for ent in entries.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if let Some((s, seq)) = parse_segment_file_name(&name)
            && s == shard
        {
            on_disk.push((seq, name));
        }
    }
    on_disk.sort();
    let known: HashSet<u64> = listed.iter().map(|s| s.seq).collect();
    for (seq, name) in on_disk {
        if known.contains(&seq) {
            continue;
        }
        let path = data_dir.join(&name);
        let (conn, version) = open_read_only(&path).map_err(|e| StoreError::sqlite(&path, e))?;
        let ext = if version == 0 {
            Extent::default()
        } else {
            extent(&conn, version).map_err(|e| StoreError::sqlite(&path, e))?
        };
        drop(conn);
        if ext.rows == 0 && version != LEGACY_VERSION {
            tracing::info!(shard, file = %name, "removing an empty segment file the catalog does not list");
            remove_segment_files(data_dir, &name)
                .map_err(|e| StoreError::Io { path: path.clone(), source: e })?;
            continue;
        }
        tracing::info!(shard, file = %name, rows = ext.rows, legacy = version == LEGACY_VERSION,
            "adopting a segment file the catalog does not list (sealed)");
        catalog
            .insert(&SegmentInfo {
                shard,
                seq,
                file: name.clone(),
                sealed: true,
                created_at: unix_nano_now(),
                min_ingested_at: ext.min_ingested_at,
                max_ingested_at: ext.max_ingested_at,
                rows: ext.rows,
                bytes: segment_bytes(data_dir, &name),
            })
            .map_err(sqlite)?;
    }
    let mut segs = catalog.segments(Some(shard)).map_err(sqlite)?;
    let newest = segs.iter().map(|s| s.seq).max();
    for s in segs.iter_mut().filter(|s| !s.sealed && Some(s.seq) != newest) {
        let path = data_dir.join(&s.file);
        let (conn, version) = open_read_only(&path).map_err(|e| StoreError::sqlite(&path, e))?;
        let ext = extent(&conn, version).map_err(|e| StoreError::sqlite(&path, e))?;
        let sealed = SegmentInfo {
            sealed: true,
            min_ingested_at: ext.min_ingested_at,
            max_ingested_at: ext.max_ingested_at,
            rows: ext.rows,
            bytes: segment_bytes(data_dir, &s.file),
            ..s.clone()
        };
        catalog.remove(shard, s.seq).map_err(sqlite)?;
        catalog.insert(&sealed).map_err(sqlite)?;
        *s = sealed;
    }
    Ok(segs)
}

fn catalog_path(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join(super::catalog::CATALOG_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        assert_eq!(segment_file_name(3, 0), "otelring-3.db");
        assert_eq!(segment_file_name(3, 17), "otelring-3.000017.db");
        assert_eq!(parse_segment_file_name("otelring-3.db"), Some((3, 0)));
        assert_eq!(parse_segment_file_name("otelring-3.000017.db"), Some((3, 17)));
        assert_eq!(parse_segment_file_name("otelring-3.1234567.db"), Some((3, 1_234_567)));
        assert_eq!(parse_segment_file_name("otelring-3.000000.db"), None);
        assert_eq!(parse_segment_file_name("otelring-3.db-wal"), None);
        assert_eq!(parse_segment_file_name("otelring.catalog"), None);
        assert_eq!(parse_segment_file_name("otelring-x.db"), None);
    }

    #[test]
    fn span_keys_filter() {
        let mut k = SpanKeys::new(RandomState::new());
        let (t, s) = (TraceId([7; 16]), SpanId([9; 8]));
        let key = k.key("default", &t, &s);
        assert!(!k.contains(key));
        k.insert(key);
        assert!(k.contains(k.key("default", &t, &s)));
        assert!(!k.contains(k.key("other", &t, &s)));
        assert_eq!(parse_hex::<2>("0aFf"), Some([10, 255]));
        assert_eq!(parse_hex::<2>("0aF"), None);
    }
}
