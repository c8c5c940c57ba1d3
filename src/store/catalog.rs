//! The segment catalog (DESIGN 1.4, revised): `<data dir>/otelring.catalog`, a small SQLite file
//! that lists every shard's segments with their ingest-time ranges.
//!
//! One row per segment: (shard, seq) → file name, `active` or `sealed`, creation time, the
//! smallest and largest `ingested_at` of its rows (NULL while unknown: an active segment's range
//! is open at the top), rows, bytes at sealing. Writer thread i writes only shard i's rows, at
//! rotation and retention (rare: minutes apart), each change in ONE transaction with
//! `synchronous=FULL`, so a crash leaves either the old list or the new one.
//!
//! Crash safety comes from the order of file and catalog operations, and from
//! [`super::segment::reconcile`] at start-up, which makes the catalog and the files agree:
//! - rotation creates the next file (schema committed) **before** the catalog names it; a file
//!   the catalog does not name is adopted as sealed when it holds rows, removed when empty (a
//!   spare prepared ahead, or a rotation cut short);
//! - retention removes the catalog row **before** it unlinks the file; a file whose unlink was
//!   cut short is adopted again at start and dropped again by retention.
//!
//! Readers (`otelring sql`) open it read-only and never block the writers (WAL).

use super::StoreError;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};

/// File name of the catalog in the data directory.
pub const CATALOG_FILE: &str = "otelring.catalog";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS segments (
    shard           INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    file            TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('active', 'sealed')),
    created_at      INTEGER NOT NULL,
    min_ingested_at INTEGER,
    max_ingested_at INTEGER,
    rows            INTEGER NOT NULL DEFAULT 0,
    bytes           INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (shard, seq)
) WITHOUT ROWID";

/// One segment as the catalog lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    pub shard: usize,
    pub seq: u64,
    /// File name inside the data directory.
    pub file: String,
    pub sealed: bool,
    /// Unix ns when the segment was started (or adopted).
    pub created_at: i64,
    /// Range of `ingested_at` over its rows; `None` when it holds none (or, for the active
    /// segment, until it is sealed).
    pub min_ingested_at: Option<i64>,
    pub max_ingested_at: Option<i64>,
    pub rows: u64,
    pub bytes: u64,
}

impl SegmentInfo {
    /// A new, empty active segment started at `created_at` (unix ns).
    pub fn new_active(shard: usize, seq: u64, file: String, created_at: i64) -> Self {
        Self {
            shard,
            seq,
            file,
            sealed: false,
            created_at,
            min_ingested_at: None,
            max_ingested_at: None,
            rows: 0,
            bytes: 0,
        }
    }

    /// True when the segment may hold rows ingested in `[since, until]` (unix ns, inclusive).
    /// An active segment's range is open at the top; an empty sealed one holds nothing.
    pub fn overlaps(&self, since: Option<i64>, until: Option<i64>) -> bool {
        if self.sealed && self.rows == 0 {
            return false;
        }
        let lo = self.min_ingested_at;
        let hi = if self.sealed { self.max_ingested_at } else { None };
        let after_since = match (since, hi) {
            (Some(s), Some(h)) => h >= s,
            _ => true,
        };
        let before_until = match (until, lo) {
            (Some(u), Some(l)) => l <= u,
            _ => true,
        };
        after_since && before_until
    }
}

/// An open catalog connection (one per writer thread, one at start-up, one per `otelring sql`).
pub struct Catalog {
    conn: Connection,
    path: PathBuf,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").field("path", &self.path).finish()
    }
}

impl Catalog {
    /// Opens (creating if needed) the catalog of `data_dir` for writing.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(CATALOG_FILE);
        let open = || -> rusqlite::Result<Connection> {
            let c = Connection::open_with_flags(
                &path,
                OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_CREATE
                    | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            c.busy_timeout(super::shard::BUSY_TIMEOUT)?;
            c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
            c.execute_batch("PRAGMA synchronous = FULL;")?;
            c.execute_batch(SCHEMA)?;
            Ok(c)
        };
        let conn = open().map_err(|e| StoreError::sqlite(&path, e))?;
        Ok(Self { conn, path })
    }

    /// Opens the catalog of `data_dir` read-only; `None` when there is none (a directory
    /// written before segments, or not a data directory).
    pub fn open_read_only(data_dir: &Path) -> Result<Option<Self>, StoreError> {
        let path = data_dir.join(CATALOG_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| StoreError::sqlite(&path, e))?;
        Ok(Some(Self { conn, path }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Segments of `shard` (or of every shard), by shard then seq.
    pub fn segments(&self, shard: Option<usize>) -> rusqlite::Result<Vec<SegmentInfo>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT shard, seq, file, state, created_at, min_ingested_at, max_ingested_at, rows, bytes \
             FROM segments WHERE ?1 IS NULL OR shard = ?1 ORDER BY shard, seq",
        )?;
        let shard = shard.map(|s| s as i64);
        let rows = stmt.query_map([shard], |r| {
            Ok(SegmentInfo {
                shard: r.get::<_, i64>(0)? as usize,
                seq: r.get::<_, i64>(1)? as u64,
                file: r.get(2)?,
                sealed: r.get::<_, String>(3)? == "sealed",
                created_at: r.get(4)?,
                min_ingested_at: r.get(5)?,
                max_ingested_at: r.get(6)?,
                rows: r.get::<_, i64>(7)? as u64,
                bytes: r.get::<_, i64>(8)? as u64,
            })
        })?;
        rows.collect()
    }

    /// Adds `seg` (a new active segment, or an adopted file).
    pub fn insert(&mut self, seg: &SegmentInfo) -> rusqlite::Result<()> {
        insert(&self.conn, seg)
    }

    /// Seals `old` (with its final range, rows and bytes) and adds `new` as the shard's active
    /// segment, in one transaction.
    pub fn rotate(&mut self, old: &SegmentInfo, new: &SegmentInfo) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "UPDATE segments SET state = 'sealed', min_ingested_at = ?3, max_ingested_at = ?4, rows = ?5, \
             bytes = ?6 WHERE shard = ?1 AND seq = ?2",
            (
                old.shard as i64,
                old.seq as i64,
                old.min_ingested_at,
                old.max_ingested_at,
                old.rows as i64,
                old.bytes as i64,
            ),
        )?;
        insert(&tx, new)?;
        tx.commit()
    }

    /// Removes a segment's row (retention: before its file is unlinked).
    pub fn remove(&mut self, shard: usize, seq: u64) -> rusqlite::Result<()> {
        self.conn
            .execute("DELETE FROM segments WHERE shard = ?1 AND seq = ?2", (shard as i64, seq as i64))
            .map(drop)
    }

    /// The largest seq ever listed for `shard` (`None` for a new shard).
    pub fn max_seq(&self, shard: usize) -> rusqlite::Result<Option<u64>> {
        self.conn
            .query_row("SELECT max(seq) FROM segments WHERE shard = ?1", [shard as i64], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()
            .map(|v| v.flatten().map(|s| s as u64))
    }
}

fn insert(conn: &Connection, seg: &SegmentInfo) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO segments (shard, seq, file, state, created_at, min_ingested_at, max_ingested_at, rows, bytes) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        (
            seg.shard as i64,
            seg.seq as i64,
            &seg.file,
            if seg.sealed { "sealed" } else { "active" },
            seg.created_at,
            seg.min_ingested_at,
            seg.max_ingested_at,
            seg.rows as i64,
            seg.bytes as i64,
        ),
    )
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u64, sealed: bool, min: Option<i64>, max: Option<i64>, rows: u64) -> SegmentInfo {
        SegmentInfo {
            shard: 0,
            seq,
            file: format!("f{seq}"),
            sealed,
            created_at: 0,
            min_ingested_at: min,
            max_ingested_at: max,
            rows,
            bytes: 0,
        }
    }

    #[test]
    fn overlap_rules() {
        let s = seg(0, true, Some(10), Some(20), 5);
        assert!(s.overlaps(None, None));
        assert!(s.overlaps(Some(20), None));
        assert!(!s.overlaps(Some(21), None));
        assert!(s.overlaps(None, Some(10)));
        assert!(!s.overlaps(None, Some(9)));
        assert!(!seg(1, true, None, None, 0).overlaps(None, None));
        let active = seg(2, false, Some(30), None, 0);
        assert!(active.overlaps(Some(1_000), None));
        assert!(!active.overlaps(None, Some(29)));
    }

    #[test]
    fn rotate_is_one_transaction_and_lists_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(dir.path()).unwrap();
        c.insert(&seg(0, false, None, None, 0)).unwrap();
        let mut old = seg(0, true, Some(1), Some(9), 7);
        old.bytes = 4096;
        c.rotate(&old, &seg(1, false, None, None, 0)).unwrap();
        let all = c.segments(Some(0)).unwrap();
        assert_eq!(all, vec![old, seg(1, false, None, None, 0)]);
        assert_eq!(c.max_seq(0).unwrap(), Some(1));
        assert_eq!(c.max_seq(3).unwrap(), None);
        // A second insert of the same (shard, seq) fails and changes nothing.
        assert!(c.rotate(&seg(1, true, None, None, 0), &seg(0, false, None, None, 0)).is_err());
        assert_eq!(c.segments(None).unwrap().len(), 2);
        c.remove(0, 0).unwrap();
        assert_eq!(c.segments(None).unwrap().len(), 1);
        let ro = Catalog::open_read_only(dir.path()).unwrap().unwrap();
        assert_eq!(ro.segments(None).unwrap().len(), 1);
    }
}
