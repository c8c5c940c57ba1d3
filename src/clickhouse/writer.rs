//! Writer thread i's [`BatchWriter`] into ClickHouse node (i mod nodes).
//!
//! - `write`: the group's rows, one RowBinary INSERT per table (spans, logs, then each metric
//!   kind) into the node's local tables. ClickHouse has no multi-table transaction: when a later
//!   table fails, the earlier ones are already stored, and the group goes to the DLQ (async) or
//!   its requests are answered UNAVAILABLE (commit mode) anyway. The replay or the client's
//!   retry inserts those rows again; the tables' ReplacingMergeTree identity keys make the
//!   duplicates invisible to `FINAL` queries (see [`super::schema`]).
//! - `linger`: `OTELRING_CLICKHOUSE_INSERT_LINGER`; the pipeline waits that long for a full
//!   group before it hands over a smaller one, because each INSERT makes a part on the node.
//! - `spill`: the shard's DLQ ([`ShardDlq`], the same files as the SQLite sink).
//! - `maintain`: replays the oldest DLQ file with backoff (bisecting a file that fails for a
//!   permanent reason down to its poison units, which go to `poison/` and count lost), creates the
//!   node's tables when they were missing, and pings a failed node while there is nothing to
//!   replay, so `/readyz` comes back without traffic. The replay is the routine both sinks
//!   share (`store::replay`); this writer supplies the inserts and the poison memory.
//!
//! There is no `dlq_applied` table here: a file is replayed whole again after a failure or a
//! crash mid-replay, and the identity keys absorb the repeats. Poison units found by an earlier
//! attempt at the same file are remembered, so they are written to `poison/` once.

use super::client::{Node, NodeError};
use super::rowbinary;
use super::schema;
use crate::pipeline::batch::Batch;
use crate::pipeline::{BatchWriter, Group, Stats, WriteError};
use crate::store::ShardGauges;
use crate::store::dlq::ShardDlq;
use crate::store::replay::{self, Backoff, Outcome};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// First delay before a DLQ replay or a probe after a failure; doubles up to
/// [`REPLAY_MAX_BACKOFF`] (the SQLite sink's values, so both sinks recover alike).
pub const REPLAY_MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between replay attempts while the node keeps failing.
pub const REPLAY_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// ClickHouse `UNKNOWN_TABLE` / `UNKNOWN_DATABASE`: the node lost its tables (a new node, or
/// dropped by hand); they are created again before the next insert.
const SCHEMA_GONE_CODES: [u32; 2] = [60, 81];

/// Where a writer's node tables come from: the database and the cluster the Distributed tables
/// span.
#[derive(Clone, Debug)]
pub struct Target {
    pub database: String,
    pub cluster: String,
}

/// Creates `target`'s database, version table, local tables and Distributed tables on `node`
/// (every statement `IF NOT EXISTS`, so any number of otelring instances may run it at once).
/// Refuses a node whose recorded schema version is newer than this build's.
pub fn ensure_schema(node: &Node, target: &Target) -> Result<(), SchemaError> {
    let db = &target.database;
    let run = |sql: &str| -> Result<String, SchemaError> {
        match node.query(sql) {
            Ok(s) => Ok(s),
            // TABLE_ALREADY_EXISTS / DATABASE_ALREADY_EXISTS: another instance won the race.
            Err(e) if matches!(e.code(), Some(57) | Some(82)) => Ok(String::new()),
            Err(e) => Err(SchemaError::Node(e)),
        }
    };
    run(&schema::create_database(db))?;
    run(&schema::create_version_table(db))?;
    let found: u32 = run(&schema::read_version(db))?.trim().parse().unwrap_or(0);
    if found > schema::SCHEMA_VERSION {
        return Err(SchemaError::Newer { node: node.url().to_owned(), found });
    }
    for t in schema::TABLES {
        run(&t.create_local(db))?;
    }
    for t in schema::TABLES {
        run(&t.create_distributed(db, &target.cluster))?;
    }
    if found < schema::SCHEMA_VERSION {
        run(&schema::record_version(db))?;
    }
    Ok(())
}

/// Why a node's tables could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(
        "{node}: the ClickHouse schema is version {found}, newer than this otelring's {}; upgrade otelring",
        schema::SCHEMA_VERSION
    )]
    Newer { node: String, found: u32 },
}

/// Shard i's ClickHouse writer.
pub struct ClickHouseWriter {
    shard: usize,
    node: Node,
    target: Target,
    stats: Arc<Stats>,
    gauges: Arc<ShardGauges>,
    dlq: ShardDlq,
    schema_ready: bool,
    /// `OTELRING_CLICKHOUSE_INSERT_LINGER`, handed to the pipeline by [`BatchWriter::linger`].
    linger: Duration,
    /// Keeps its buffers and each table's bytes per row from group to group.
    encoder: rowbinary::Encoder,
    /// When the next DLQ replay is due.
    replay: Backoff,
    /// When the next probe is due while a readiness flag is set ([`replay::probes_due`]).
    probe: Backoff,
    /// Poison units (first, last) of the file being replayed, by file id: found by an earlier
    /// attempt, already in `poison/`.
    poison_seen: Option<(String, Vec<(u64, u64)>)>,
}

impl std::fmt::Debug for ClickHouseWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseWriter").field("shard", &self.shard).field("node", &self.node).finish()
    }
}

impl ClickHouseWriter {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        shard: usize,
        node: Node,
        target: Target,
        schema_ready: bool,
        linger: Duration,
        dlq: ShardDlq,
        stats: Arc<Stats>,
        gauges: Arc<ShardGauges>,
    ) -> Self {
        let w = Self {
            shard,
            node,
            target,
            stats,
            gauges,
            dlq,
            schema_ready,
            linger,
            encoder: rowbinary::Encoder::default(),
            replay: Backoff::new(REPLAY_MIN_BACKOFF, REPLAY_MAX_BACKOFF),
            probe: Backoff::new(REPLAY_MIN_BACKOFF, REPLAY_MAX_BACKOFF),
            poison_seen: None,
        };
        w.dlq.publish(&w.gauges);
        w
    }

    pub fn shard(&self) -> usize {
        self.shard
    }

    /// Inserts every row of `batches` (creating the node's tables first when needed).
    fn insert(&mut self, batches: &[Batch]) -> Result<(), NodeError> {
        if !self.schema_ready {
            match ensure_schema(&self.node, &self.target) {
                Ok(()) => self.schema_ready = true,
                Err(SchemaError::Node(e)) => return Err(e),
                Err(e @ SchemaError::Newer { .. }) => {
                    return Err(NodeError::Status {
                        node: self.node.url().to_owned(),
                        status: 500,
                        code: None,
                        text: e.to_string(),
                    });
                }
            }
        }
        for body in self.encoder.encode(batches) {
            let statement = body.table.insert(&self.target.database);
            if let Err(e) = self.node.insert(&statement, body.bytes) {
                if e.code().is_some_and(|c| SCHEMA_GONE_CODES.contains(&c)) {
                    self.schema_ready = false;
                }
                return Err(e);
            }
        }
        self.gauges.commits.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// One maintenance tick: replay (when due), probe (when due). Returns how soon the next one
    /// is wanted.
    fn tick(&mut self) -> Option<Duration> {
        if !self.dlq.is_empty() && self.replay.is_due() {
            match self.replay_oldest() {
                Outcome::Finished => self.replay.succeeded(),
                Outcome::Failed => {
                    self.gauges.dlq_replay_failures.fetch_add(1, Ordering::Relaxed);
                    self.replay.failed();
                }
            }
            self.dlq.publish(&self.gauges);
        }
        let (shard, stats) = (self.shard, Arc::clone(&self.stats));
        replay::probe_when_due(self, shard, &stats);
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        if !self.dlq.is_empty() {
            next = Some(self.replay.next());
        }
        if replay::probes_due(&self.stats, self.shard, &self.dlq) {
            next = Some(next.map_or(self.probe.next(), |n| n.min(self.probe.next())));
        }
        next.map(|t| t.saturating_duration_since(now).max(Duration::from_millis(1)))
    }

    /// One attempt at the oldest DLQ file (see `crate::store::replay`; this writer's part is
    /// its `replay::Sink` impl).
    fn replay_oldest(&mut self) -> Outcome {
        let (shard, stats, gauges) = (self.shard, Arc::clone(&self.stats), Arc::clone(&self.gauges));
        replay::replay_oldest(self, shard, &stats, &gauges)
    }
}

/// The ClickHouse sink's part of a DLQ replay: nothing is recorded on the node (a file is
/// inserted whole again after a failure or a crash, and the identity keys absorb the repeats);
/// the poison units of the file being replayed are remembered in memory, so they are written to
/// `poison/` and counted once.
impl replay::Sink for ClickHouseWriter {
    fn dlq(&mut self) -> &mut ShardDlq {
        &mut self.dlq
    }

    fn probe_backoff(&mut self) -> &mut Backoff {
        &mut self.probe
    }

    /// Pings the node, and creates its tables when they were missing.
    fn probe_database(&mut self) -> Result<(), String> {
        self.node.ping().map_err(|e| e.to_string())?;
        if !self.schema_ready {
            ensure_schema(&self.node, &self.target).map_err(|e| e.to_string())?;
            self.schema_ready = true;
        }
        Ok(())
    }

    /// The poison units an earlier attempt found in `file`; nothing is ever stored for good.
    fn settled(&mut self, file: &str) -> Result<replay::Settled, String> {
        let poison = match &self.poison_seen {
            Some((seen, p)) if seen == file => p.clone(),
            _ => Vec::new(),
        };
        Ok(replay::Settled { poison, ..replay::Settled::default() })
    }

    fn insert_units(
        &mut self,
        _file: &str,
        _units: replay::Units,
        batches: &[Batch],
    ) -> Result<(), replay::Refused> {
        self.insert(batches).map_err(|e| replay::Refused { permanent: e.permanent(), message: e.to_string() })
    }

    fn poison_found(&mut self, file: &str, first: u64, last: u64) -> Result<(), String> {
        match &mut self.poison_seen {
            Some((seen, p)) if seen == file => p.push((first, last)),
            _ => self.poison_seen = Some((file.to_owned(), vec![(first, last)])),
        }
        Ok(())
    }

    fn finished(&mut self, _file: &str) {
        self.poison_seen = None;
    }
}

impl BatchWriter for ClickHouseWriter {
    fn write(&mut self, group: &Group) -> Result<(), WriteError> {
        match self.insert(group.batches()) {
            Ok(()) => Ok(()),
            Err(e) => {
                // The node is failing: give replay a rest before it tries again.
                self.replay.postpone();
                if e.permanent() {
                    Err(WriteError::Refused(e.to_string()))
                } else {
                    Err(WriteError::Database(e.to_string()))
                }
            }
        }
    }

    fn spill(&mut self, batches: &[Batch], cause: &WriteError) -> Result<(), WriteError> {
        self.dlq.spill_booked(batches, cause, self.shard, &self.stats, &self.gauges)
    }

    fn maintain(&mut self) -> Option<Duration> {
        self.tick()
    }

    fn linger(&self) -> Duration {
        self.linger
    }
}
