//! The ClickHouse sink (DESIGN 1.8): with `OTELRING_SINK=clickhouse` every shard's writer is a
//! [`ClickHouseWriter`] instead of the SQLite shard writer, behind the same pipeline (admission,
//! lanes, coalescing, books, DLQ, commit mode: nothing here replaces them).
//!
//! - [`schema`]: the tables (local `ReplacingMergeTree` per node, `Distributed` over them), their
//!   identity keys (the dedup of replays and retries) and version record;
//! - [`rowbinary`]: rows → RowBinary bodies, one per table;
//! - [`client`]: one node over HTTP (hyper), error classification (permanent vs transient);
//! - [`writer`]: the `BatchWriter`: inserts, DLQ spill and replay with bisection to poison units,
//!   readiness probes.
//!
//! Routing: shard i writes to node `i mod nodes` of `OTELRING_CLICKHOUSE_URLS`. A trace's shard
//! is a stable hash (DESIGN 1.1), so all of a trace's spans, and every retry or replay of them,
//! land on one node: the duplicates meet in one table, where the identity key collapses them.
//! That holds across otelring instances that share the same worker count and URL list (each
//! instance records its shard count in its data directory).
//!
//! ```no_run
//! use otelring::clickhouse::ClickHouseSink;
//! use otelring::config::{ClickHouseConfig, StoreConfig};
//! use otelring::pipeline::Stats;
//! use std::sync::Arc;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ch = ClickHouseConfig { urls: vec!["http://127.0.0.1:8123".into()], ..ClickHouseConfig::default() };
//! let stats = Arc::new(Stats::new());
//! let sink = ClickHouseSink::open(&ch, &StoreConfig::for_data_dir("./data"), 2, stats)?;
//! let gauges = sink.gauges(); // DLQ files/bytes per shard, for /metrics
//! let writers = sink.into_writers(); // for Pipeline::start
//! # Ok(()) }
//! ```

pub mod client;
pub mod rowbinary;
pub mod schema;
pub mod writer;

pub use writer::{ClickHouseWriter, Target};

use crate::config::{ClickHouseConfig, StoreConfig};
use crate::pipeline::{BatchWriter, Stats};
use crate::store::dlq::ShardDlq;
use crate::store::{self, ShardGauges, StoreError};
use client::{Auth, Node, NodeError};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Errors opening the sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("OTELRING_CLICKHOUSE_URLS: {0}")]
    Client(std::io::Error),
    #[error("{0}")]
    Schema(#[from] writer::SchemaError),
    #[error("OTELRING_CLICKHOUSE_CLUSTER: {0}")]
    Cluster(String),
}

/// The opened sink: one writer per shard.
#[derive(Debug)]
pub struct ClickHouseSink {
    writers: Vec<ClickHouseWriter>,
    gauges: Vec<Arc<ShardGauges>>,
}

/// The cluster the Distributed tables span: `configured` when set (it must exist on the node),
/// else the only one in `system.clusters`.
pub fn resolve_cluster(node: &Node, configured: Option<&str>) -> Result<String, SinkError> {
    let names = node
        .query("SELECT DISTINCT cluster FROM system.clusters ORDER BY cluster")
        .map_err(|e| SinkError::Cluster(format!("cannot list system.clusters: {e}")))?;
    let names: Vec<&str> = names.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match configured {
        Some(c) if names.contains(&c) => Ok(c.to_owned()),
        Some(c) => Err(SinkError::Cluster(format!(
            "cluster {c:?} is not defined on {} (its <remote_servers> has: {})",
            node.url(),
            names.join(", ")
        ))),
        None => match names.as_slice() {
            [one] => Ok((*one).to_owned()),
            [] => Err(SinkError::Cluster(format!(
                "{} defines no cluster in <remote_servers>; define one over the nodes",
                node.url()
            ))),
            many => Err(SinkError::Cluster(format!(
                "{} defines {} clusters ({}); name the one over otelring's nodes",
                node.url(),
                many.len(),
                many.join(", ")
            ))),
        },
    }
}

impl ClickHouseSink {
    /// Opens the sink for `shards` shards: records the shard count in the data directory (it
    /// decides which node a trace lives on), resolves the cluster, creates the schema on every
    /// node that answers (a node that does not is set up by its writers before their first
    /// insert), and scans each shard's DLQ (what it holds joins `dlq_recovered` / `dlq_pending`
    /// in `stats`, exactly as the SQLite store does).
    pub fn open(
        cfg: &ClickHouseConfig,
        store_cfg: &StoreConfig,
        shards: usize,
        stats: Arc<Stats>,
    ) -> Result<Self, SinkError> {
        cfg.validate()?;
        store_cfg.validate()?;
        store::check_and_record_shards(&store_cfg.data_dir, shards)?;
        let auth = Auth { user: cfg.user.clone(), password: cfg.password.clone() };
        let node = |url: &str| Node::new(url, &auth, cfg.insert_timeout).map_err(SinkError::Client);
        // The cluster from the first node that answers.
        let mut cluster = None;
        let mut last_err: Option<NodeError> = None;
        for url in &cfg.urls {
            let n = node(url)?;
            match n.ping() {
                Ok(()) => {
                    cluster = Some(resolve_cluster(&n, cfg.cluster.as_deref())?);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let cluster = match (cluster, &cfg.cluster) {
            (Some(c), _) => c,
            (None, Some(c)) => c.clone(),
            (None, None) => {
                return Err(SinkError::Cluster(format!(
                    "no node answers ({}), so the cluster cannot be looked up; set the variable to start anyway",
                    last_err.map_or_else(String::new, |e| e.to_string())
                )));
            }
        };
        let target = Target { database: cfg.database.clone(), cluster };
        let mut ready = Vec::with_capacity(cfg.urls.len());
        for url in &cfg.urls {
            let n = node(url)?;
            match writer::ensure_schema(&n, &target) {
                Ok(()) => ready.push(true),
                Err(e @ writer::SchemaError::Newer { .. }) => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(node = %url, error = %e, "clickhouse node not set up at start; its writers retry");
                    ready.push(false);
                }
            }
        }
        let n = shards.max(1) as u64;
        let (max_files, max_bytes) =
            ((store_cfg.dlq_max_files / n).max(1), (store_cfg.dlq_max_bytes / n).max(1));
        let mut writers = Vec::with_capacity(shards);
        let mut gauges = Vec::with_capacity(shards);
        for i in 0..shards {
            let k = i % cfg.urls.len();
            let url = cfg.urls.get(k).ok_or_else(|| SinkError::Cluster("no node URL".into()))?;
            let node_ready = ready.get(k).copied().unwrap_or(false);
            let (q, rec) = ShardDlq::open(&store_cfg.dlq_path, i, max_files, max_bytes)
                .map_err(|e| StoreError::Io { path: store_cfg.dlq_path.clone(), source: e })?;
            rec.book(&stats, i);
            let g = Arc::new(ShardGauges::default());
            g.dlq_corrupt_files.fetch_add(rec.corrupt_files, Ordering::Relaxed);
            gauges.push(g.clone());
            writers.push(ClickHouseWriter::new(
                i,
                node(url)?,
                target.clone(),
                node_ready,
                cfg.insert_linger,
                q,
                stats.clone(),
                g,
            ));
        }
        Ok(Self { writers, gauges })
    }

    /// Per-shard gauges (DLQ files and bytes, replay counters), read at scrape time.
    pub fn gauges(&self) -> Vec<Arc<ShardGauges>> {
        self.gauges.clone()
    }

    /// The writers, writer i for shard i, for [`crate::pipeline::Pipeline::start`].
    pub fn into_writers(self) -> Vec<Box<dyn BatchWriter>> {
        self.writers.into_iter().map(|w| Box::new(w) as Box<dyn BatchWriter>).collect()
    }
}
