//! Configuration: the only place defaults live (DESIGN 1.6).
//!
//! [`PipelineConfig`] is the core's configuration (no CLI dependency, so loom and fuzz builds
//! compile it). With the `server` feature, [`Cli`] maps every setting to a clap flag with an
//! environment variable of the same meaning; `--help` lists each with its default. Invalid values
//! stop the program at start with a [`ConfigError`] naming the variable; nothing falls back
//! silently. Sizes accept bytes or KiB/MiB/GiB, durations `ms`, `s`, `m`, `h`, `d`.

use crate::pipeline::admission::{MAX_QUEUE_BYTES, MAX_QUEUE_SIZE};
use std::time::Duration;

/// Most shards (writer threads, each with its own SQLite segments). The shard count is part of a
/// data directory's format (it decides which files a trace lives in); 10 keeps the shard record
/// and `otelring sql`'s attachment budget (125 segments at once) meaningful.
pub const MAX_SHARDS: usize = 10;
/// Default writer count when the data directory records none: min(cores, 4). Beyond 4 writers
/// the WAL and disk, not the CPU, bound a shard set on the machines we measured.
pub const DEFAULT_MAX_WORKERS: usize = 4;
pub const DEFAULT_QUEUE_SIZE: u64 = 4096;
pub const DEFAULT_MAX_BYTES: u64 = 128 * 1024 * 1024;
pub const DEFAULT_SOFT_THRESHOLD: f64 = 0.9;
pub const DEFAULT_WRITER_MAX_ROWS: usize = 20_000;
pub const DEFAULT_WRITER_MAX_DELAY: Duration = Duration::from_millis(50);
/// Niceness of the writer threads (`INGEST_WRITER_NICE`). 0 by default: at 10 a decode or an
/// answer preempts a commit, which cut Export p50 by a third on a dedicated 2-core machine, but
/// the writers then also yield to every other process, and beside one CPU-bound neighbour they
/// fell behind and shed 6–61% of healthy data at 200k spans/s where niceness 0 shed none
/// (docs/PERFORMANCE.md). For dedicated hosts only.
pub const DEFAULT_WRITER_NICE: i32 = 0;
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// A setting that failed validation; the message names the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {name}: {message}")]
pub struct ConfigError {
    /// The environment variable (and flag) at fault, e.g. `INGEST_PIPELINE_QUEUE_SIZE`.
    pub name: &'static str,
    pub message: String,
}

impl ConfigError {
    pub fn new(name: &'static str, message: impl Into<String>) -> Self {
        Self { name, message: message.into() }
    }
}

/// Writer pinning (`INGEST_PIPELINE_PIN`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum PinPolicy {
    /// Pin writers to the last cores only when cores ≥ writers + 2 (leaving two for network
    /// and decoding); otherwise do not pin.
    #[default]
    Auto,
    Off,
    /// Writer i is pinned to `cores[i % len]`.
    Cores(Vec<usize>),
}

impl std::str::FromStr for PinPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(Self::Auto),
            "off" => Ok(Self::Off),
            list => {
                let cores = list
                    .split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .map_err(|_| format!("expected auto, off or a core list like 2,3; got {s:?}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if cores.is_empty() {
                    return Err("empty core list".into());
                }
                Ok(Self::Cores(cores))
            }
        }
    }
}

/// The core pipeline's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineConfig {
    /// Writer threads = shards (`INGEST_PIPELINE_WORKERS`), 1..=[`MAX_SHARDS`].
    pub shards: usize,
    /// Batches queued per signal (`INGEST_PIPELINE_QUEUE_SIZE`), shards..=[`MAX_QUEUE_SIZE`].
    pub queue_size: u64,
    /// Estimated bytes queued per signal (`INGEST_PIPELINE_MAX_BYTES`).
    pub max_bytes: u64,
    /// Start of the shedding zone (`INGEST_PIPELINE_SOFT_THRESHOLD`), in (0, 1].
    pub soft_threshold: f64,
    /// `INGEST_PIPELINE_PIN`.
    pub pin: PinPolicy,
    /// Rows per coalesced transaction (`INGEST_WRITER_MAX_ROWS`).
    pub writer_max_rows: usize,
    /// Longest a writer keeps adding to one group (`INGEST_WRITER_MAX_DELAY_MS`).
    pub writer_max_delay: Duration,
    /// Drain deadline on stop before the DLQ spill (`OTELRING_SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: Duration,
    /// `INGEST_ASYNC_ENABLED=false`: answer after commit (DESIGN 1.3).
    pub commit_mode: bool,
    /// Niceness of the writer threads (`INGEST_WRITER_NICE`, 0..=19; 0 leaves them as started).
    pub writer_nice: i32,
}

/// min(available cores, [`DEFAULT_MAX_WORKERS`]).
pub fn default_shards() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, DEFAULT_MAX_WORKERS)
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            shards: default_shards(),
            queue_size: DEFAULT_QUEUE_SIZE,
            max_bytes: DEFAULT_MAX_BYTES,
            soft_threshold: DEFAULT_SOFT_THRESHOLD,
            pin: PinPolicy::Auto,
            writer_max_rows: DEFAULT_WRITER_MAX_ROWS,
            writer_max_delay: DEFAULT_WRITER_MAX_DELAY,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            commit_mode: false,
            writer_nice: DEFAULT_WRITER_NICE,
        }
    }
}

impl PipelineConfig {
    /// Checks every limit; the error names the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.shards == 0 || self.shards > MAX_SHARDS {
            return Err(ConfigError::new(
                "INGEST_PIPELINE_WORKERS",
                format!(
                    "{} is outside 1..={MAX_SHARDS} (SQLite attaches at most {MAX_SHARDS} shards)",
                    self.shards
                ),
            ));
        }
        if self.queue_size < self.shards as u64 {
            return Err(ConfigError::new(
                "INGEST_PIPELINE_QUEUE_SIZE",
                format!(
                    "{} is below the shard count {} (a request may need one slot per shard)",
                    self.queue_size, self.shards
                ),
            ));
        }
        if self.queue_size > MAX_QUEUE_SIZE {
            return Err(ConfigError::new(
                "INGEST_PIPELINE_QUEUE_SIZE",
                format!("{} is above the maximum {MAX_QUEUE_SIZE}", self.queue_size),
            ));
        }
        if self.max_bytes == 0 || self.max_bytes > MAX_QUEUE_BYTES {
            return Err(ConfigError::new(
                "INGEST_PIPELINE_MAX_BYTES",
                format!("{} is outside 1..={MAX_QUEUE_BYTES}", self.max_bytes),
            ));
        }
        if !(self.soft_threshold > 0.0 && self.soft_threshold <= 1.0) {
            return Err(ConfigError::new(
                "INGEST_PIPELINE_SOFT_THRESHOLD",
                format!("{} is outside (0, 1]", self.soft_threshold),
            ));
        }
        if self.writer_max_rows == 0 {
            return Err(ConfigError::new("INGEST_WRITER_MAX_ROWS", "must be at least 1"));
        }
        if !(0..=19).contains(&self.writer_nice) {
            return Err(ConfigError::new(
                "INGEST_WRITER_NICE",
                format!(
                    "{} is outside 0..=19 (writers may only run below the request path)",
                    self.writer_nice
                ),
            ));
        }
        if let PinPolicy::Cores(c) = &self.pin {
            let n = core_affinity::get_core_ids().map_or(0, |v| v.len());
            if let Some(bad) = c.iter().find(|&&i| n > 0 && i >= n) {
                return Err(ConfigError::new(
                    "INGEST_PIPELINE_PIN",
                    format!("core {bad} does not exist (this machine has {n})"),
                ));
            }
        }
        Ok(())
    }

    /// Ring slots per lane: `next_power_of_two(QUEUE_SIZE)`, so a push after a reservation
    /// cannot fail (a lane never holds more than the signal's reserved batches).
    pub fn ring_slots(&self) -> usize {
        usize::try_from(self.queue_size).unwrap_or(usize::MAX).max(1).next_power_of_two()
    }
}

/// Default `DLQ_MAX_FILES` (DESIGN 1.6): dead-letter files kept over all shards; each shard gets
/// an equal share, so one shard's writer never touches another shard's files.
pub const DEFAULT_DLQ_MAX_FILES: u64 = 1000;
/// Default `DLQ_MAX_BYTES` (DESIGN 1.6): 512 MiB over all shards, shared like the file count.
pub const DEFAULT_DLQ_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Default `OTELRING_RETENTION` (DESIGN 1.6): rows older than 7 days (by `ingested_at`) go.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 86_400);
/// Default `OTELRING_SEGMENT_MAX_BYTES`: a shard's active segment is sealed and a new one started
/// once its file reaches this size. It bounds every random-keyed index of the active segment
/// (span keys, trace rows, logs by trace), so an insert costs the same in the hundredth segment
/// as in the first (measured in docs/PERFORMANCE.md, "Steady state").
pub const DEFAULT_SEGMENT_MAX_BYTES: u64 = 256 * 1024 * 1024;
/// Default `OTELRING_SEGMENT_MAX_AGE`: a segment that has been active this long is sealed too,
/// so a slow shard still gets time-bounded segments that retention can drop whole.
pub const DEFAULT_SEGMENT_MAX_AGE: Duration = Duration::from_secs(15 * 60);
/// `DLQ_PATH` defaults to this directory inside the data directory.
pub const DEFAULT_DLQ_DIR_NAME: &str = "dlq";
/// Default `OTELRING_DATA_DIR`.
pub const DEFAULT_DATA_DIR: &str = "./data";

/// Smallest `OTELRING_SEGMENT_MAX_BYTES`: below this a segment holds less than one group.
pub const MIN_SEGMENT_BYTES: u64 = 1024 * 1024;
/// Smallest `OTELRING_SEGMENT_MAX_AGE`.
pub const MIN_SEGMENT_AGE: Duration = Duration::from_secs(1);

/// The SQLite store's settings (DESIGN 1.3, 1.4, 1.6).
#[derive(Clone, Debug, PartialEq)]
pub struct StoreConfig {
    /// `OTELRING_DATA_DIR`: the shards' segment files (`otelring-<i>.db`, `otelring-<i>.<n>.db`),
    /// the segment catalog and the shard-count record.
    pub data_dir: std::path::PathBuf,
    /// `DLQ_PATH`: dead-letter files (default `<data dir>/dlq`).
    pub dlq_path: std::path::PathBuf,
    /// `DLQ_MAX_FILES`, over all shards (each shard keeps at most its share, at least 1).
    pub dlq_max_files: u64,
    /// `DLQ_MAX_BYTES`, over all shards (each shard keeps at most its share).
    pub dlq_max_bytes: u64,
    /// `OTELRING_RETENTION`: age limit by `ingested_at`; zero keeps everything.
    pub retention: Duration,
    /// `OTELRING_RETENTION_BYTES`: size limit of the data directory's segments over all shards
    /// (each shard keeps at most its share); the oldest sealed segments go first. 0: no limit.
    pub retention_bytes: u64,
    /// `OTELRING_SEGMENT_MAX_BYTES`: the active segment is sealed at this file size.
    pub segment_max_bytes: u64,
    /// `OTELRING_SEGMENT_MAX_AGE`: ... or after being active this long.
    pub segment_max_age: Duration,
    /// `synchronous=FULL` instead of `NORMAL`: every commit is fsynced before it is reported, so
    /// a power loss cannot take back what a commit-mode client was told is stored. Set from
    /// commit mode (`INGEST_ASYNC_ENABLED=false`); async mode keeps DESIGN 1.4's `NORMAL`.
    pub durable_commits: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self::for_data_dir(DEFAULT_DATA_DIR)
    }
}

impl StoreConfig {
    /// The defaults for a data directory (`DLQ_PATH` = `<dir>/dlq`).
    pub fn for_data_dir(dir: impl Into<std::path::PathBuf>) -> Self {
        let data_dir = dir.into();
        Self {
            dlq_path: data_dir.join(DEFAULT_DLQ_DIR_NAME),
            data_dir,
            dlq_max_files: DEFAULT_DLQ_MAX_FILES,
            dlq_max_bytes: DEFAULT_DLQ_MAX_BYTES,
            retention: DEFAULT_RETENTION,
            retention_bytes: 0,
            segment_max_bytes: DEFAULT_SEGMENT_MAX_BYTES,
            segment_max_age: DEFAULT_SEGMENT_MAX_AGE,
            durable_commits: false,
        }
    }

    /// Checks every limit; the error names the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("OTELRING_DATA_DIR", "must not be empty"));
        }
        if self.dlq_path.as_os_str().is_empty() {
            return Err(ConfigError::new("DLQ_PATH", "must not be empty"));
        }
        if self.dlq_max_files == 0 {
            return Err(ConfigError::new("DLQ_MAX_FILES", "must be at least 1"));
        }
        if self.dlq_max_bytes == 0 {
            return Err(ConfigError::new("DLQ_MAX_BYTES", "must be at least 1"));
        }
        if self.segment_max_bytes < MIN_SEGMENT_BYTES {
            return Err(ConfigError::new("OTELRING_SEGMENT_MAX_BYTES", "must be at least 1MiB"));
        }
        if self.segment_max_age < MIN_SEGMENT_AGE {
            return Err(ConfigError::new("OTELRING_SEGMENT_MAX_AGE", "must be at least 1s"));
        }
        Ok(())
    }
}

/// `OTELRING_SINK`: where the shard writers put rows (DESIGN 1.6, 1.8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sink {
    /// Embedded SQLite shards in the data directory (the default).
    #[default]
    Sqlite,
    /// A ClickHouse cluster (`OTELRING_CLICKHOUSE_*`).
    ClickHouse,
}

impl std::str::FromStr for Sink {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sqlite" => Ok(Self::Sqlite),
            "clickhouse" => Ok(Self::ClickHouse),
            other => Err(format!("{other:?} is not a sink (sqlite or clickhouse)")),
        }
    }
}

/// Default `OTELRING_CLICKHOUSE_DATABASE` (DESIGN 1.8).
pub const DEFAULT_CLICKHOUSE_DATABASE: &str = "otel";
/// Default `OTELRING_CLICKHOUSE_INSERT_TIMEOUT`: longest wait for one INSERT's answer before the
/// node counts as failing. Well under clients' 10 s export timeout is not needed (async mode
/// answers at admission), but commit-mode clients wait on it: 10 s keeps them within theirs.
pub const DEFAULT_CLICKHOUSE_INSERT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `OTELRING_CLICKHOUSE_INSERT_LINGER`: how long a writer waits for a full group
/// (`INGEST_WRITER_MAX_ROWS` rows) of async-mode batches before it inserts a smaller one. Every
/// INSERT makes a part on the node (a file per column, then merges): at most about one insert
/// per second per shard at low load, full 20,000-row inserts under load, as ClickHouse asks of
/// its clients. Commit-mode groups never linger (their clients wait).
pub const DEFAULT_CLICKHOUSE_INSERT_LINGER: Duration = Duration::from_secs(1);
/// Longest `OTELRING_CLICKHOUSE_INSERT_LINGER` accepted: commit-mode clients wait on it.
pub const MAX_CLICKHOUSE_INSERT_LINGER: Duration = Duration::from_secs(60);

/// The ClickHouse sink's settings (`OTELRING_CLICKHOUSE_*`, DESIGN 1.8).
#[derive(Clone, PartialEq)]
pub struct ClickHouseConfig {
    /// `OTELRING_CLICKHOUSE_URLS`: node HTTP URLs; shard i writes to node i mod len.
    pub urls: Vec<String>,
    /// `OTELRING_CLICKHOUSE_DATABASE`.
    pub database: String,
    /// `OTELRING_CLICKHOUSE_CLUSTER`: the `<remote_servers>` cluster over the nodes; when unset,
    /// the only cluster the first node defines.
    pub cluster: Option<String>,
    /// `OTELRING_CLICKHOUSE_USER` (ClickHouse's `default` when unset).
    pub user: Option<String>,
    /// `OTELRING_CLICKHOUSE_PASSWORD`, or the first line of `OTELRING_CLICKHOUSE_PASSWORD_FILE`.
    pub password: Option<String>,
    /// `OTELRING_CLICKHOUSE_INSERT_TIMEOUT`.
    pub insert_timeout: Duration,
    /// `OTELRING_CLICKHOUSE_INSERT_LINGER`: a writer's wait for a full group (0: insert what the
    /// lanes hold, as the SQLite sink does).
    pub insert_linger: Duration,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("urls", &self.urls)
            .field("database", &self.database)
            .field("cluster", &self.cluster)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("insert_timeout", &self.insert_timeout)
            .field("insert_linger", &self.insert_linger)
            .finish()
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            database: DEFAULT_CLICKHOUSE_DATABASE.to_owned(),
            cluster: None,
            user: None,
            password: None,
            insert_timeout: DEFAULT_CLICKHOUSE_INSERT_TIMEOUT,
            insert_linger: DEFAULT_CLICKHOUSE_INSERT_LINGER,
        }
    }
}

impl ClickHouseConfig {
    /// Checks every setting; the error names the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.urls.is_empty() {
            return Err(ConfigError::new(
                "OTELRING_CLICKHOUSE_URLS",
                "set at least one node URL (http://host:8123)",
            ));
        }
        for u in &self.urls {
            if !u.starts_with("http://") || u.len() <= "http://".len() {
                return Err(ConfigError::new(
                    "OTELRING_CLICKHOUSE_URLS",
                    format!("{u:?} is not an http:// URL"),
                ));
            }
        }
        let ident_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ident_ok(&self.database) {
            return Err(ConfigError::new("OTELRING_CLICKHOUSE_DATABASE", "letters, digits and _ only"));
        }
        if self.cluster.as_deref().is_some_and(|c| !ident_ok(c)) {
            return Err(ConfigError::new("OTELRING_CLICKHOUSE_CLUSTER", "letters, digits and _ only"));
        }
        if self.insert_timeout.is_zero() {
            return Err(ConfigError::new("OTELRING_CLICKHOUSE_INSERT_TIMEOUT", "must be above 0"));
        }
        if self.insert_linger > MAX_CLICKHOUSE_INSERT_LINGER {
            return Err(ConfigError::new(
                "OTELRING_CLICKHOUSE_INSERT_LINGER",
                format!("at most {MAX_CLICKHOUSE_INSERT_LINGER:?} (commit-mode clients wait on it)"),
            ));
        }
        Ok(())
    }
}

/// Parses a size: bytes, or with a `KiB`/`MiB`/`GiB` (also `K`/`M`/`G`, `KB`/`MB`/`GB` as
/// binary units) suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("expected a size like 134217728 or 128MiB, got {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown size unit in {s:?} (use bytes, KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} overflows"))
}

/// Parses a duration: `250ms`, `30s`, `5m`, `2h`, `7d` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("expected a duration like 30s or 7d, got {s:?}"))?;
    let ms: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("unknown duration unit in {s:?} (use ms, s, m, h or d)")),
    };
    n.checked_mul(ms).map(Duration::from_millis).ok_or_else(|| format!("duration {s:?} overflows"))
}

/// Parses a boolean setting: true/false, 1/0, yes/no, on/off.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, got {s:?}")),
    }
}

/// Default tenant when a request names none (`DEFAULT_TENANT`).
pub const DEFAULT_TENANT: &str = "default";
/// Longest tenant id in bytes (DESIGN 1.4: over 64 bytes is invalid).
pub const MAX_TENANT_BYTES: usize = 64;
/// `SAMPLING_LATENCY_THRESHOLD_MS`: a span at or over this duration makes its trace priority
/// (DESIGN 1.2); ≤ 0 disables slow priority.
pub const DEFAULT_SLOW_THRESHOLD_MS: i64 = 500;
/// Deepest `AnyValue` nesting (arrays / kvlists inside values) accepted. 32 is far beyond any
/// SDK's output (attribute values are flat in practice) and keeps the decoder's explicit stack
/// tiny; pb-rs generated code without such a limit overflowed a 2 MiB stack on a 154 KB value.
pub const DEFAULT_MAX_ANY_VALUE_DEPTH: usize = 32;
/// Hard ceiling for the depth setting. The protobuf decoder's value stack is on the heap, but the
/// OTLP/JSON parser (serde_json) stops at 128 nested JSON containers and each AnyValue level takes
/// 3 (arrays) to 4 (kvlists) of them, so deeper settings would only differ between encodings.
pub const MAX_ANY_VALUE_DEPTH_LIMIT: usize = 32;
/// Attributes per item (span, event, log record, data point, resource). The SDKs' default
/// attribute count limit is 128 (OTEL_ATTRIBUTE_COUNT_LIMIT); 8× that leaves room for
/// collectors that merge attributes while bounding the work per item.
pub const DEFAULT_MAX_ATTRIBUTES: usize = 1024;
/// Events per span: the SDKs' default OTEL_SPAN_EVENT_COUNT_LIMIT is 128; 8× that.
pub const DEFAULT_MAX_EVENTS_PER_SPAN: usize = 1024;
/// Items (spans, log records, data points) per request. A minimal real span is about 64 bytes on
/// the wire, so 1,000,000 items is what a 64 MiB body (`OTELRING_MAX_BODY_BYTES`) can carry.
pub const DEFAULT_MAX_ITEMS_PER_REQUEST: usize = 1_000_000;

/// What the OTLP decoder needs to know (DESIGN 1.2, 1.4, 1.6): tenant default, slow threshold,
/// filters, and the limits that keep a hostile request from costing more than its size.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeConfig {
    /// `DEFAULT_TENANT`: the tenant of a request that names none.
    pub default_tenant: String,
    /// `SAMPLING_LATENCY_THRESHOLD_MS`; ≤ 0 disables slow priority.
    pub slow_threshold_ms: i64,
    /// `INGEST_MIN_SEVERITY`: log records below this SeverityNumber (1..=24) are filtered.
    /// Records with SeverityNumber 0 are judged by their severity text when it names a level,
    /// and kept otherwise (unknown severity is never dropped).
    pub min_severity: Option<i32>,
    /// `INGEST_ALLOWED_SERVICES`: when set, only these services are kept.
    pub allowed_services: Option<Vec<String>>,
    /// `INGEST_EXCLUDED_SERVICES`: these services are filtered.
    pub excluded_services: Vec<String>,
    /// Deepest `AnyValue` nesting accepted ([`DEFAULT_MAX_ANY_VALUE_DEPTH`]).
    pub max_any_value_depth: usize,
    /// Attributes per item ([`DEFAULT_MAX_ATTRIBUTES`]).
    pub max_attributes: usize,
    /// Events per span ([`DEFAULT_MAX_EVENTS_PER_SPAN`]).
    pub max_events_per_span: usize,
    /// Items per request ([`DEFAULT_MAX_ITEMS_PER_REQUEST`]).
    pub max_items_per_request: usize,
    /// Cap on the running row-byte estimate of one request (`INGEST_PIPELINE_MAX_BYTES`): a
    /// request whose rows pass it can never be admitted, so decoding stops with "too large".
    pub max_bytes: u64,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            default_tenant: DEFAULT_TENANT.to_owned(),
            slow_threshold_ms: DEFAULT_SLOW_THRESHOLD_MS,
            min_severity: None,
            allowed_services: None,
            excluded_services: Vec::new(),
            max_any_value_depth: DEFAULT_MAX_ANY_VALUE_DEPTH,
            max_attributes: DEFAULT_MAX_ATTRIBUTES,
            max_events_per_span: DEFAULT_MAX_EVENTS_PER_SPAN,
            max_items_per_request: DEFAULT_MAX_ITEMS_PER_REQUEST,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }
}

impl DecodeConfig {
    /// Checks every setting; the error names the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_tenant(&self.default_tenant).map_err(|m| ConfigError::new("DEFAULT_TENANT", m))?;
        if let Some(s) = self.min_severity.filter(|s| !(1..=24).contains(s)) {
            return Err(ConfigError::new("INGEST_MIN_SEVERITY", format!("{s} is outside 1..=24")));
        }
        if self.max_any_value_depth == 0 || self.max_any_value_depth > MAX_ANY_VALUE_DEPTH_LIMIT {
            return Err(ConfigError::new(
                "OTELRING_MAX_ANY_VALUE_DEPTH",
                format!("{} is outside 1..={MAX_ANY_VALUE_DEPTH_LIMIT}", self.max_any_value_depth),
            ));
        }
        if self.max_attributes == 0 {
            return Err(ConfigError::new("OTELRING_MAX_ATTRIBUTES", "must be at least 1"));
        }
        if self.max_events_per_span == 0 {
            return Err(ConfigError::new("OTELRING_MAX_EVENTS_PER_SPAN", "must be at least 1"));
        }
        if self.max_items_per_request == 0 {
            return Err(ConfigError::new("OTELRING_MAX_ITEMS_PER_REQUEST", "must be at least 1"));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new("INGEST_PIPELINE_MAX_BYTES", "must be at least 1"));
        }
        Ok(())
    }

    /// The slow-span threshold in nanoseconds, `None` when slow priority is disabled.
    pub fn slow_threshold_nanos(&self) -> Option<u64> {
        u64::try_from(self.slow_threshold_ms).ok().filter(|&ms| ms > 0).map(|ms| ms.saturating_mul(1_000_000))
    }
}

/// Checks a tenant id (DESIGN 1.4): not empty, at most [`MAX_TENANT_BYTES`], no control
/// characters.
pub fn validate_tenant(t: &str) -> Result<(), String> {
    if t.is_empty() {
        return Err("tenant id is empty".to_owned());
    }
    if t.len() > MAX_TENANT_BYTES {
        return Err(format!("tenant id is {} bytes, over {MAX_TENANT_BYTES}", t.len()));
    }
    if t.chars().any(char::is_control) {
        return Err("tenant id contains control characters".to_owned());
    }
    Ok(())
}

/// Parses `INGEST_MIN_SEVERITY`: a SeverityNumber 1..=24 or a level name (TRACE, DEBUG, INFO,
/// WARN, ERROR, FATAL, any case; WARNING is WARN).
pub fn parse_severity(s: &str) -> Result<i32, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return if (1..=24).contains(&n) { Ok(n) } else { Err(format!("severity {n} is outside 1..=24")) };
    }
    severity_from_name(t)
        .ok_or_else(|| format!("expected 1..=24 or TRACE|DEBUG|INFO|WARN|ERROR|FATAL, got {s:?}"))
}

/// The SeverityNumber of a level name (the lowest number of its range), any case.
pub fn severity_from_name(t: &str) -> Option<i32> {
    const NAMES: [(&str, i32); 7] = [
        ("TRACE", 1),
        ("DEBUG", 5),
        ("INFO", 9),
        ("WARNING", 13),
        ("WARN", 13),
        ("ERROR", 17),
        ("FATAL", 21),
    ];
    NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(t)).map(|&(_, v)| v)
}

/// Parses a comma-separated service list (`INGEST_ALLOWED_SERVICES`, `INGEST_EXCLUDED_SERVICES`);
/// blanks are ignored.
pub fn parse_service_list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty()).map(str::to_owned).collect()
}

/// Default gRPC listener (DESIGN 1.5).
pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:4317";
/// Default HTTP listener (DESIGN 1.5).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:4318";
/// `OTELRING_MAX_BODY_BYTES`: HTTP body and gRPC message, wire and inflated (64 MiB: gRPC's own
/// common server limit class, and far above the SDKs' batches of 512 spans).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 64 * 1024 * 1024;
/// `OTELRING_MAX_INFLIGHT_BYTES`: bodies being read, inflated and decoded at once.
pub const DEFAULT_MAX_INFLIGHT_BYTES: u64 = 256 * 1024 * 1024;
/// `OTELRING_RETRY_AFTER_SECS`: the delay sent with every throttle; well under clients' 10 s
/// export timeout, so they retry instead of giving up.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
/// `OTELRING_MAX_CONNECTIONS` over both listeners (DESIGN 1.5).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// `OTELRING_HEADER_READ_TIMEOUT` (DESIGN 1.5: 10 s; stops slowloris headers).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// `OTELRING_BODY_READ_TIMEOUT` (DESIGN 1.5: 30 s).
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// `OTELRING_KEEPALIVE_IDLE` (DESIGN 1.5: 90 s).
pub const DEFAULT_KEEPALIVE_IDLE: Duration = Duration::from_secs(90);
/// `OTELRING_MAX_CONCURRENT_STREAMS` per h2 connection (DESIGN 1.5: 256).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;

/// Network settings of `otelring serve` (DESIGN 1.5, 1.6).
#[derive(Clone, Debug, PartialEq)]
pub struct ServerConfig {
    pub grpc_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    pub max_body_bytes: u64,
    pub max_inflight_bytes: u64,
    pub retry_after: Duration,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub body_read_timeout: Duration,
    pub keepalive_idle: Duration,
    pub max_concurrent_streams: u32,
    /// `OTELRING_API_KEYS_FILE`: lines `key tenant`; `None` = no auth.
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Allow a non-loopback bind without API keys.
    pub allow_unauthenticated: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 4317)),
            http_addr: std::net::SocketAddr::from(([127, 0, 0, 1], 4318)),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_inflight_bytes: DEFAULT_MAX_INFLIGHT_BYTES,
            retry_after: DEFAULT_RETRY_AFTER,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            keepalive_idle: DEFAULT_KEEPALIVE_IDLE,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            api_keys_file: None,
            allow_unauthenticated: false,
        }
    }
}

impl ServerConfig {
    /// Checks the limits against each other and the pipeline's byte cap (DESIGN 1.2: start-up
    /// refuses `INGEST_PIPELINE_MAX_BYTES` < `OTELRING_MAX_BODY_BYTES`).
    pub fn validate(&self, pipeline: &PipelineConfig) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new("OTELRING_MAX_BODY_BYTES", "must be at least 1"));
        }
        if pipeline.max_bytes < self.max_body_bytes {
            return Err(ConfigError::new(
                "INGEST_PIPELINE_MAX_BYTES",
                format!(
                    "{} is below OTELRING_MAX_BODY_BYTES ({}): a body the server accepts could never be queued",
                    pipeline.max_bytes, self.max_body_bytes
                ),
            ));
        }
        if self.max_inflight_bytes < self.max_body_bytes {
            return Err(ConfigError::new(
                "OTELRING_MAX_INFLIGHT_BYTES",
                format!(
                    "{} is below OTELRING_MAX_BODY_BYTES ({})",
                    self.max_inflight_bytes, self.max_body_bytes
                ),
            ));
        }
        if self.retry_after.is_zero() || self.retry_after >= Duration::from_secs(10) {
            return Err(ConfigError::new(
                "OTELRING_RETRY_AFTER_SECS",
                "must be 1 to 9 seconds (clients give up past their 10 s export timeout)",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new("OTELRING_MAX_CONNECTIONS", "must be at least 1"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(ConfigError::new("OTELRING_MAX_CONCURRENT_STREAMS", "must be at least 1"));
        }
        let public = !self.grpc_addr.ip().is_loopback() || !self.http_addr.ip().is_loopback();
        if public && self.api_keys_file.is_none() && !self.allow_unauthenticated {
            return Err(ConfigError::new(
                "OTELRING_API_KEYS_FILE",
                "binding a non-loopback address needs API keys (or --allow-unauthenticated)",
            ));
        }
        Ok(())
    }

    /// Reads `OTELRING_API_KEYS_FILE`: one `key tenant` pair per line, `#` comments.
    pub fn api_keys(&self) -> Result<std::collections::HashMap<String, String>, ConfigError> {
        let mut keys = std::collections::HashMap::new();
        let Some(path) = &self.api_keys_file else { return Ok(keys) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("OTELRING_API_KEYS_FILE", format!("{}: {e}", path.display())))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some(k), Some(t), None) if t.len() <= 64 => {
                    keys.insert(k.to_owned(), t.to_owned());
                }
                _ => {
                    return Err(ConfigError::new(
                        "OTELRING_API_KEYS_FILE",
                        format!("line {}: expected `<key> <tenant>`", n + 1),
                    ));
                }
            }
        }
        if keys.is_empty() {
            return Err(ConfigError::new("OTELRING_API_KEYS_FILE", "no keys in the file"));
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod decode_config_tests {
    use super::*;

    #[test]
    fn decode_defaults_and_validation() {
        let c = DecodeConfig::default();
        assert_eq!(c.default_tenant, "default");
        assert_eq!(c.slow_threshold_ms, 500);
        assert_eq!(c.slow_threshold_nanos(), Some(500_000_000));
        assert_eq!(c.max_any_value_depth, 32);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(DecodeConfig { slow_threshold_ms: 0, ..c.clone() }.slow_threshold_nanos(), None);
        assert_eq!(DecodeConfig { slow_threshold_ms: -5, ..c.clone() }.slow_threshold_nanos(), None);
        let bad = |f: fn(&mut DecodeConfig)| {
            let mut d = DecodeConfig::default();
            f(&mut d);
            d.validate().unwrap_err().name
        };
        assert_eq!(bad(|d| d.default_tenant = String::new()), "DEFAULT_TENANT");
        assert_eq!(bad(|d| d.default_tenant = "x".repeat(65)), "DEFAULT_TENANT");
        assert_eq!(bad(|d| d.default_tenant = "a\nb".into()), "DEFAULT_TENANT");
        assert_eq!(bad(|d| d.min_severity = Some(25)), "INGEST_MIN_SEVERITY");
        assert_eq!(bad(|d| d.max_any_value_depth = 0), "OTELRING_MAX_ANY_VALUE_DEPTH");
        assert_eq!(bad(|d| d.max_bytes = 0), "INGEST_PIPELINE_MAX_BYTES");
    }

    #[test]
    fn clickhouse_defaults_and_validation() {
        let ok =
            ClickHouseConfig { urls: vec!["http://127.0.0.1:8123".into()], ..ClickHouseConfig::default() };
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(ok.database, "otel");
        assert_eq!(ok.insert_timeout, Duration::from_secs(10));
        assert_eq!(ok.insert_linger, Duration::from_secs(1));
        assert_eq!(ClickHouseConfig { insert_linger: Duration::ZERO, ..ok.clone() }.validate(), Ok(()));
        let bad = |f: fn(&mut ClickHouseConfig)| {
            let mut c = ClickHouseConfig { urls: vec!["http://127.0.0.1:8123".into()], ..Default::default() };
            f(&mut c);
            c.validate().unwrap_err().name
        };
        assert_eq!(bad(|c| c.urls.clear()), "OTELRING_CLICKHOUSE_URLS");
        assert_eq!(bad(|c| c.urls = vec!["127.0.0.1:8123".into()]), "OTELRING_CLICKHOUSE_URLS");
        assert_eq!(bad(|c| c.database = "a-b".into()), "OTELRING_CLICKHOUSE_DATABASE");
        assert_eq!(bad(|c| c.cluster = Some("x y".into())), "OTELRING_CLICKHOUSE_CLUSTER");
        assert_eq!(bad(|c| c.insert_timeout = Duration::ZERO), "OTELRING_CLICKHOUSE_INSERT_TIMEOUT");
        assert_eq!(bad(|c| c.insert_linger = Duration::from_secs(61)), "OTELRING_CLICKHOUSE_INSERT_LINGER");
    }

    #[test]
    fn severities_and_service_lists_parse() {
        assert_eq!(parse_severity("warn"), Ok(13));
        assert_eq!(parse_severity("ERROR"), Ok(17));
        assert_eq!(parse_severity(" 21 "), Ok(21));
        assert!(parse_severity("0").is_err());
        assert!(parse_severity("loud").is_err());
        assert_eq!(parse_service_list(" a, b ,,c "), vec!["a", "b", "c"]);
        assert!(parse_service_list("").is_empty());
    }
}

#[cfg(feature = "server")]
pub use cli::*;

#[cfg(feature = "server")]
mod cli {
    use super::*;
    use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
    use std::path::PathBuf;

    /// The parsed command line: the subcommand, and the settings of the server commands.
    ///
    /// The settings (pipeline, store, server) belong to `serve`, `config` and the default command
    /// (no subcommand) only: `otelring --data-dir X`, `otelring serve --data-dir X` and
    /// `otelring config --workers 2` take them, `otelring sql` takes only `--data-dir`, and
    /// `otelring loadgen` none (its `--help` lists its own options). Top-level flags and a
    /// subcommand do not mix (`otelring --data-dir X serve` is refused rather than silently
    /// ignoring the flag). Parsing goes through the private `RawCli`; for `sql` and `loadgen`
    /// the settings hold their defaults and environment values (and `sql`'s `--data-dir`).
    #[derive(Debug)]
    pub struct Cli {
        pub command: Option<Command>,
        pub pipeline: PipelineArgs,
        pub store: StoreArgs,
        pub server: ServerArgs,
        pub sink: SinkArgs,
    }

    /// What to run.
    #[derive(Debug)]
    pub enum Command {
        /// Serve OTLP/gRPC and OTLP/HTTP into SQLite (the default command).
        Serve,
        /// Validate the settings (flags and environment) and print the effective configuration.
        Config,
        /// Run one read-only SQL query over every shard.
        Sql(SqlArgs),
        /// Drive a running server with pre-encoded OTLP load (built with `--features loadgen`).
        #[cfg(feature = "loadgen")]
        Loadgen(Box<crate::loadgen::LoadgenArgs>),
    }

    /// Every setting of the server commands (`serve`, `config`, the default command).
    #[derive(Debug, Clone, Args)]
    pub struct Settings {
        #[command(flatten)]
        pub pipeline: PipelineArgs,
        #[command(flatten)]
        pub store: StoreArgs,
        #[command(flatten)]
        pub server: ServerArgs,
        #[command(flatten)]
        pub sink: SinkArgs,
    }

    /// otelring: OpenTelemetry ingest into sharded SQLite.
    #[derive(Debug, Parser)]
    #[command(
        name = "otelring",
        version,
        about,
        propagate_version = true,
        args_conflicts_with_subcommands = true
    )]
    struct RawCli {
        #[command(subcommand)]
        command: Option<RawCommand>,
        #[command(flatten)]
        settings: Settings,
    }

    #[derive(Debug, Subcommand)]
    enum RawCommand {
        /// Serve OTLP/gRPC and OTLP/HTTP into SQLite (the default command).
        Serve(Box<Settings>),
        /// Validate the settings (flags and environment) and print the effective configuration.
        Config(Box<Settings>),
        /// Run one read-only SQL query over every shard (TEMP views `traces`, `spans`, `logs`,
        /// `metric_points` over the ATTACHed shard files; see docs/STORAGE.md).
        Sql(SqlArgs),
        /// Drive a running server with pre-encoded OTLP load and report throughput and latency
        /// (built with `--features loadgen`).
        #[cfg(feature = "loadgen")]
        Loadgen(Box<crate::loadgen::LoadgenArgs>),
    }

    impl From<RawCli> for Cli {
        fn from(raw: RawCli) -> Self {
            let (command, s) = match raw.command {
                None => (None, raw.settings),
                Some(RawCommand::Serve(s)) => (Some(Command::Serve), *s),
                Some(RawCommand::Config(s)) => (Some(Command::Config), *s),
                Some(RawCommand::Sql(a)) => {
                    let mut s = raw.settings;
                    s.pipeline.data_dir = a.data_dir.clone();
                    (Some(Command::Sql(a)), s)
                }
                #[cfg(feature = "loadgen")]
                Some(RawCommand::Loadgen(a)) => (Some(Command::Loadgen(a)), raw.settings),
            };
            Cli { command, pipeline: s.pipeline, store: s.store, server: s.server, sink: s.sink }
        }
    }

    impl CommandFactory for Cli {
        fn command() -> clap::Command {
            RawCli::command()
        }
        fn command_for_update() -> clap::Command {
            RawCli::command_for_update()
        }
    }

    impl FromArgMatches for Cli {
        fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
            RawCli::from_arg_matches(m).map(Cli::from)
        }
        fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
            *self = Self::from_arg_matches(m)?;
            Ok(())
        }
    }

    impl Parser for Cli {}

    /// `otelring sql` arguments.
    #[derive(Debug, Clone, Args)]
    pub struct SqlArgs {
        /// The query, e.g. "SELECT service_name, count(*) FROM spans GROUP BY 1".
        pub query: String,
        /// Print a JSON array of objects instead of a table.
        #[arg(long)]
        pub json: bool,
        /// Directory of the shard files.
        #[arg(long, env = "OTELRING_DATA_DIR", default_value = "./data")]
        pub data_dir: PathBuf,
        /// Only rows ingested at or after this: a duration ago (`30m`, `2h`, `7d`) or unix
        /// nanoseconds. Segments entirely before it are not opened.
        #[arg(long, value_parser = parse_instant)]
        pub since: Option<i64>,
        /// Only rows ingested at or before this (same forms as --since).
        #[arg(long, value_parser = parse_instant)]
        pub until: Option<i64>,
    }

    /// `--since` / `--until`: unix nanoseconds, or a duration before now.
    pub fn parse_instant(s: &str) -> Result<i64, String> {
        if let Ok(ns) = s.trim().parse::<i64>() {
            return Ok(ns);
        }
        let ago = parse_duration(s)
            .map_err(|_| format!("expected unix nanoseconds or a duration like 30m, got {s:?}"))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Ok(now.saturating_sub(i64::try_from(ago.as_nanos()).unwrap_or(i64::MAX)))
    }

    /// Network and decoding settings of `otelring serve` (DESIGN 1.5, 1.6).
    #[derive(Debug, Clone, Args)]
    pub struct ServerArgs {
        /// OTLP/gRPC listen address.
        #[arg(long, env = "OTELRING_GRPC_ADDR", default_value = DEFAULT_GRPC_ADDR)]
        pub grpc_addr: std::net::SocketAddr,
        /// OTLP/HTTP listen address (also /metrics, /healthz, /readyz).
        #[arg(long, env = "OTELRING_HTTP_ADDR", default_value = DEFAULT_HTTP_ADDR)]
        pub http_addr: std::net::SocketAddr,
        /// Largest HTTP body or gRPC message, on the wire and inflated (bytes or KiB/MiB/GiB).
        #[arg(long, env = "OTELRING_MAX_BODY_BYTES", default_value = "64MiB", value_parser = parse_size)]
        pub max_body_bytes: u64,
        /// Bytes of request bodies being read and decoded at once.
        #[arg(long, env = "OTELRING_MAX_INFLIGHT_BYTES", default_value = "256MiB", value_parser = parse_size)]
        pub max_inflight_bytes: u64,
        /// Retry delay sent with every throttle (RetryInfo / Retry-After), in seconds.
        #[arg(long, env = "OTELRING_RETRY_AFTER_SECS", default_value_t = 1)]
        pub retry_after_secs: u64,
        /// Open connections over both listeners.
        #[arg(long, env = "OTELRING_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
        pub max_connections: usize,
        /// Time to receive a request's headers.
        #[arg(long, env = "OTELRING_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
        pub header_read_timeout: Duration,
        /// Time to receive a request's body.
        #[arg(long, env = "OTELRING_BODY_READ_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
        pub body_read_timeout: Duration,
        /// Keep-alive ping interval of idle h2 connections.
        #[arg(long, env = "OTELRING_KEEPALIVE_IDLE", default_value = "90s", value_parser = parse_duration)]
        pub keepalive_idle: Duration,
        /// Concurrent streams per HTTP/2 connection.
        #[arg(long, env = "OTELRING_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
        pub max_concurrent_streams: u32,
        /// File of bearer API keys, one `<key> <tenant>` per line. Unset: no auth.
        #[arg(long, env = "OTELRING_API_KEYS_FILE")]
        pub api_keys_file: Option<PathBuf>,
        /// Allow binding a non-loopback address without API keys.
        #[arg(long, env = "OTELRING_ALLOW_UNAUTHENTICATED")]
        pub allow_unauthenticated: bool,
        /// Tenant of requests without x-tenant-id.
        #[arg(long, env = "DEFAULT_TENANT", default_value = DEFAULT_TENANT)]
        pub default_tenant: String,
        /// A span at or over this duration makes its trace priority; 0 or less disables it.
        #[arg(long, env = "SAMPLING_LATENCY_THRESHOLD_MS", default_value_t = DEFAULT_SLOW_THRESHOLD_MS, allow_negative_numbers = true)]
        pub slow_threshold_ms: i64,
        /// Log records below this SeverityNumber (1..=24) are filtered.
        #[arg(long, env = "INGEST_MIN_SEVERITY")]
        pub min_severity: Option<i32>,
        /// Only these services are kept (comma-separated).
        #[arg(long, env = "INGEST_ALLOWED_SERVICES", value_delimiter = ',')]
        pub allowed_services: Option<Vec<String>>,
        /// These services are filtered (comma-separated).
        #[arg(long, env = "INGEST_EXCLUDED_SERVICES", value_delimiter = ',')]
        pub excluded_services: Vec<String>,
        /// BENCHMARK ONLY: discard every admitted batch instead of writing SQLite (measures the
        /// receive path: network, decode, admission, lanes). Nothing is stored. Never a default.
        #[arg(long, env = "OTELRING_BENCH_DISCARD")]
        pub bench_discard: bool,
    }

    impl ServerArgs {
        /// The validated server configuration (checked against the pipeline's byte cap).
        pub fn server_config(&self, pipeline: &PipelineConfig) -> Result<ServerConfig, ConfigError> {
            let cfg = ServerConfig {
                grpc_addr: self.grpc_addr,
                http_addr: self.http_addr,
                max_body_bytes: self.max_body_bytes,
                max_inflight_bytes: self.max_inflight_bytes,
                retry_after: Duration::from_secs(self.retry_after_secs),
                max_connections: self.max_connections,
                header_read_timeout: self.header_read_timeout,
                body_read_timeout: self.body_read_timeout,
                keepalive_idle: self.keepalive_idle,
                max_concurrent_streams: self.max_concurrent_streams,
                api_keys_file: self.api_keys_file.clone(),
                allow_unauthenticated: self.allow_unauthenticated,
            };
            cfg.validate(pipeline)?;
            Ok(cfg)
        }

        /// The decoder's configuration (tenant default, priority threshold, filters, byte cap).
        pub fn decode_config(&self, pipeline: &PipelineConfig) -> Result<DecodeConfig, ConfigError> {
            let cfg = DecodeConfig {
                default_tenant: self.default_tenant.clone(),
                slow_threshold_ms: self.slow_threshold_ms,
                min_severity: self.min_severity,
                allowed_services: self.allowed_services.clone(),
                excluded_services: self.excluded_services.clone(),
                max_bytes: pipeline.max_bytes,
                ..DecodeConfig::default()
            };
            cfg.validate()?;
            Ok(cfg)
        }
    }

    /// Store settings (DESIGN 1.3, 1.4, 1.6); every flag has an environment variable.
    #[derive(Debug, Clone, Args)]
    pub struct StoreArgs {
        /// Dead-letter directory (default: the data directory's dlq/ subdirectory).
        #[arg(long, env = "DLQ_PATH")]
        pub dlq_path: Option<PathBuf>,
        /// Dead-letter files kept over all shards; the oldest are evicted (and counted lost).
        #[arg(long, env = "DLQ_MAX_FILES", default_value_t = DEFAULT_DLQ_MAX_FILES)]
        pub dlq_max_files: u64,
        /// Dead-letter bytes kept over all shards (bytes or KiB/MiB/GiB).
        #[arg(long, env = "DLQ_MAX_BYTES", default_value = "512MiB", value_parser = parse_size)]
        pub dlq_max_bytes: u64,
        /// Age limit of stored rows by ingest time (e.g. 7d, 12h); 0 keeps everything.
        #[arg(long, env = "OTELRING_RETENTION", default_value = "7d", value_parser = parse_duration)]
        pub retention: Duration,
        /// Size limit of the data directory's segments (bytes or KiB/MiB/GiB); the oldest sealed
        /// segments are dropped first. 0: no limit.
        #[arg(long, env = "OTELRING_RETENTION_BYTES", default_value = "0", value_parser = parse_size)]
        pub retention_bytes: u64,
        /// A shard's active segment is sealed and a new one started at this file size.
        #[arg(long, env = "OTELRING_SEGMENT_MAX_BYTES", default_value = "256MiB", value_parser = parse_size)]
        pub segment_max_bytes: u64,
        /// ... or after it has been active this long (e.g. 15m).
        #[arg(long, env = "OTELRING_SEGMENT_MAX_AGE", default_value = "15m", value_parser = parse_duration)]
        pub segment_max_age: Duration,
    }

    impl StoreArgs {
        /// The validated store configuration for `data_dir` (`--data-dir` / `OTELRING_DATA_DIR`).
        pub fn store_config(&self, data_dir: &std::path::Path) -> Result<StoreConfig, ConfigError> {
            let mut cfg = StoreConfig::for_data_dir(data_dir);
            if let Some(p) = &self.dlq_path {
                cfg.dlq_path = p.clone();
            }
            cfg.dlq_max_files = self.dlq_max_files;
            cfg.dlq_max_bytes = self.dlq_max_bytes;
            cfg.retention = self.retention;
            cfg.retention_bytes = self.retention_bytes;
            cfg.segment_max_bytes = self.segment_max_bytes;
            cfg.segment_max_age = self.segment_max_age;
            cfg.validate()?;
            Ok(cfg)
        }
    }

    /// Sink settings (DESIGN 1.8): SQLite (default) or a ClickHouse cluster.
    #[derive(Debug, Clone, Args)]
    pub struct SinkArgs {
        /// Where rows go: sqlite (shards in the data directory) or clickhouse.
        #[arg(long, env = "OTELRING_SINK", default_value = "sqlite")]
        pub sink: Sink,
        /// ClickHouse node HTTP URLs, comma-separated; shard i writes to node i mod count.
        #[arg(long, env = "OTELRING_CLICKHOUSE_URLS", value_delimiter = ',')]
        pub clickhouse_urls: Vec<String>,
        /// ClickHouse database of the otel_* tables.
        #[arg(long, env = "OTELRING_CLICKHOUSE_DATABASE", default_value = DEFAULT_CLICKHOUSE_DATABASE)]
        pub clickhouse_database: String,
        /// The <remote_servers> cluster the Distributed tables span (default: the only one defined).
        #[arg(long, env = "OTELRING_CLICKHOUSE_CLUSTER")]
        pub clickhouse_cluster: Option<String>,
        /// ClickHouse user (default: ClickHouse's `default`).
        #[arg(long, env = "OTELRING_CLICKHOUSE_USER")]
        pub clickhouse_user: Option<String>,
        /// ClickHouse password (prefer the _FILE variant).
        #[arg(long, env = "OTELRING_CLICKHOUSE_PASSWORD", hide_env_values = true)]
        pub clickhouse_password: Option<String>,
        /// File whose first line is the ClickHouse password.
        #[arg(long, env = "OTELRING_CLICKHOUSE_PASSWORD_FILE")]
        pub clickhouse_password_file: Option<PathBuf>,
        /// Longest wait for one INSERT (e.g. 10s) before the node counts as failing.
        #[arg(long, env = "OTELRING_CLICKHOUSE_INSERT_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
        pub clickhouse_insert_timeout: Duration,
        /// How long a writer waits for a full group (INGEST_WRITER_MAX_ROWS rows) before it
        /// inserts a smaller one (e.g. 1s; 0 inserts whatever is queued).
        #[arg(long, env = "OTELRING_CLICKHOUSE_INSERT_LINGER", default_value = "1s", value_parser = parse_duration)]
        pub clickhouse_insert_linger: Duration,
    }

    impl SinkArgs {
        /// The validated ClickHouse configuration (`None` for the SQLite sink).
        pub fn clickhouse_config(&self) -> Result<Option<ClickHouseConfig>, ConfigError> {
            if self.sink != Sink::ClickHouse {
                return Ok(None);
            }
            let password = match (&self.clickhouse_password, &self.clickhouse_password_file) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        "OTELRING_CLICKHOUSE_PASSWORD_FILE",
                        "set either OTELRING_CLICKHOUSE_PASSWORD or OTELRING_CLICKHOUSE_PASSWORD_FILE, not both",
                    ));
                }
                (Some(p), None) => Some(p.clone()),
                (None, Some(f)) => {
                    let text = std::fs::read_to_string(f).map_err(|e| {
                        ConfigError::new("OTELRING_CLICKHOUSE_PASSWORD_FILE", format!("{}: {e}", f.display()))
                    })?;
                    Some(text.lines().next().unwrap_or("").to_owned())
                }
                (None, None) => None,
            };
            let cfg = ClickHouseConfig {
                urls: self
                    .clickhouse_urls
                    .iter()
                    .map(|u| u.trim().to_owned())
                    .filter(|u| !u.is_empty())
                    .collect(),
                database: self.clickhouse_database.clone(),
                cluster: self.clickhouse_cluster.clone().filter(|c| !c.is_empty()),
                user: self.clickhouse_user.clone().filter(|u| !u.is_empty()),
                password,
                insert_timeout: self.clickhouse_insert_timeout,
                insert_linger: self.clickhouse_insert_linger,
            };
            cfg.validate()?;
            Ok(Some(cfg))
        }
    }

    /// Pipeline settings (DESIGN 1.6); every flag has an environment variable of the same meaning.
    #[derive(Debug, Clone, Args)]
    pub struct PipelineArgs {
        /// Directory of the shard files.
        #[arg(long, env = "OTELRING_DATA_DIR", default_value = "./data")]
        pub data_dir: PathBuf,
        /// Writer threads = SQLite shards (1..=10). Default: the count recorded in the data
        /// directory, else min(cores, 4).
        #[arg(long = "workers", env = "INGEST_PIPELINE_WORKERS")]
        pub workers: Option<usize>,
        /// Batches queued per signal (≥ workers).
        #[arg(long, env = "INGEST_PIPELINE_QUEUE_SIZE", default_value_t = DEFAULT_QUEUE_SIZE)]
        pub queue_size: u64,
        /// Estimated bytes queued per signal (bytes or KiB/MiB/GiB).
        #[arg(long, env = "INGEST_PIPELINE_MAX_BYTES", default_value = "128MiB", value_parser = parse_size)]
        pub max_bytes: u64,
        /// Fullness at which healthy data starts being dropped (0 < t ≤ 1).
        #[arg(long, env = "INGEST_PIPELINE_SOFT_THRESHOLD", default_value_t = DEFAULT_SOFT_THRESHOLD)]
        pub soft_threshold: f64,
        /// Writer pinning: auto (only when cores ≥ writers + 2), off, or a core list like 2,3.
        #[arg(long, env = "INGEST_PIPELINE_PIN", default_value = "auto")]
        pub pin: PinPolicy,
        /// Rows per coalesced transaction.
        #[arg(long, env = "INGEST_WRITER_MAX_ROWS", default_value_t = DEFAULT_WRITER_MAX_ROWS)]
        pub writer_max_rows: usize,
        /// Longest a writer keeps adding batches to one transaction, in milliseconds.
        #[arg(long = "writer-max-delay-ms", env = "INGEST_WRITER_MAX_DELAY_MS", default_value_t = 50)]
        pub writer_max_delay_ms: u64,
        /// Drain deadline on stop, before what is left is spilled to the DLQ (e.g. 30s).
        #[arg(long, env = "OTELRING_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
        pub shutdown_timeout: Duration,
        /// false = commit mode: answer each request only after its rows are committed.
        #[arg(long = "async-enabled", env = "INGEST_ASYNC_ENABLED", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
        pub async_enabled: bool,
        /// Niceness of the writer threads, 0..=19 (0: as started). Above 0 a decode or an answer
        /// preempts a commit (lower latency on a dedicated host; writers starve beside other
        /// CPU-bound processes).
        #[arg(long, env = "INGEST_WRITER_NICE", default_value_t = DEFAULT_WRITER_NICE)]
        pub writer_nice: i32,
    }

    impl PipelineArgs {
        /// The validated pipeline configuration. `recorded_shards` is the count recorded in the
        /// data directory, if any: used when `INGEST_PIPELINE_WORKERS` is unset, and an explicit
        /// different value is refused.
        pub fn pipeline_config(&self, recorded_shards: Option<usize>) -> Result<PipelineConfig, ConfigError> {
            let shards = match (self.workers, recorded_shards) {
                (Some(w), Some(r)) if w != r => {
                    return Err(ConfigError::new(
                        "INGEST_PIPELINE_WORKERS",
                        format!(
                            "{w} differs from the {r} shards recorded in {}; shards decide which file a trace \
                             lives in, so the count cannot change for an existing data directory (unset it \
                             to use {r})",
                            self.data_dir.display()
                        ),
                    ));
                }
                (Some(w), _) => w,
                (None, Some(r)) => r,
                (None, None) => default_shards(),
            };
            let cfg = PipelineConfig {
                shards,
                queue_size: self.queue_size,
                max_bytes: self.max_bytes,
                soft_threshold: self.soft_threshold,
                pin: self.pin.clone(),
                writer_max_rows: self.writer_max_rows,
                writer_max_delay: Duration::from_millis(self.writer_max_delay_ms),
                shutdown_timeout: self.shutdown_timeout,
                commit_mode: !self.async_enabled,
                writer_nice: self.writer_nice,
            };
            cfg.validate()?;
            Ok(cfg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_config_gets_the_documented_defaults() {
        let c = PipelineConfig::default();
        assert!(c.shards >= 1 && c.shards <= DEFAULT_MAX_WORKERS);
        assert_eq!(c.queue_size, 4096);
        assert_eq!(c.max_bytes, 128 << 20);
        assert_eq!(c.soft_threshold, 0.9);
        assert_eq!(c.pin, PinPolicy::Auto);
        assert_eq!(c.writer_max_rows, 20_000);
        assert_eq!(c.writer_max_delay, Duration::from_millis(50));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(30));
        assert!(!c.commit_mode);
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.ring_slots(), 4096);
    }

    #[cfg(feature = "server")]
    #[test]
    fn server_settings_belong_to_the_server_commands_only() {
        use clap::{CommandFactory, Parser};
        let dir = |c: &Cli| c.pipeline.data_dir.to_string_lossy().into_owned();
        // The default command and `serve` / `config` take every setting.
        let c = Cli::try_parse_from(["otelring", "--data-dir", "/x", "--workers", "2"]).unwrap();
        assert!(c.command.is_none());
        assert_eq!((dir(&c), c.pipeline.workers), ("/x".into(), Some(2)));
        let c = Cli::try_parse_from(["otelring", "serve", "--data-dir", "/y", "--grpc-addr", "127.0.0.1:0"])
            .unwrap();
        assert!(matches!(c.command, Some(Command::Serve)));
        assert_eq!((dir(&c), c.server.grpc_addr.port()), ("/y".into(), 0));
        let c = Cli::try_parse_from(["otelring", "config", "--max-bytes", "64MiB"]).unwrap();
        assert!(matches!(c.command, Some(Command::Config)));
        assert_eq!(c.pipeline.max_bytes, 64 << 20);
        // `sql` takes only its own flags and --data-dir.
        let c = Cli::try_parse_from(["otelring", "sql", "--data-dir", "/z", "SELECT 1"]).unwrap();
        assert!(matches!(&c.command, Some(Command::Sql(a)) if a.query == "SELECT 1"));
        assert_eq!(dir(&c), "/z");
        assert!(Cli::try_parse_from(["otelring", "sql", "--workers", "2", "SELECT 1"]).is_err());
        // A top-level flag before a subcommand is refused, not silently ignored.
        assert!(Cli::try_parse_from(["otelring", "--data-dir", "/x", "serve"]).is_err());
        // Subcommand help lists only the subcommand's options.
        let mut cmd = Cli::command();
        let sql = cmd.find_subcommand_mut("sql").unwrap().render_long_help().to_string();
        assert!(
            sql.contains("--data-dir") && !sql.contains("--workers") && !sql.contains("--grpc-addr"),
            "{sql}"
        );
        #[cfg(feature = "loadgen")]
        {
            let lg = cmd.find_subcommand_mut("loadgen").unwrap().render_long_help().to_string();
            assert!(lg.contains("--target-grpc"), "{lg}");
            for server_only in
                ["--workers", "--queue-size", "--max-bytes", "--dlq-", "--retention", "--grpc-addr"]
            {
                assert!(!lg.contains(server_only), "loadgen --help lists {server_only}");
            }
        }
    }

    #[cfg(feature = "server")]
    #[test]
    fn cli_without_flags_gives_the_defaults_and_refuses_a_shard_count_change() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["otelring"]).expect("no flags parse");
        let cfg = cli.pipeline.pipeline_config(None).expect("defaults are valid");
        assert_eq!(cfg, PipelineConfig::default());
        // Unset workers reuse the recorded count; an explicit different value is refused.
        assert_eq!(cli.pipeline.pipeline_config(Some(3)).map(|c| c.shards), Ok(3));
        let cli = Cli::try_parse_from(["otelring", "--workers", "2"]).expect("parse");
        assert_eq!(cli.pipeline.pipeline_config(Some(3)).unwrap_err().name, "INGEST_PIPELINE_WORKERS");
        let cli =
            Cli::try_parse_from(["otelring", "--max-bytes", "64MiB", "--async-enabled", "false"]).unwrap();
        let cfg = cli.pipeline.pipeline_config(None).unwrap();
        assert_eq!((cfg.max_bytes, cfg.commit_mode), (64 << 20, true));
        assert!(Cli::try_parse_from(["otelring", "--max-bytes", "lots"]).is_err());
    }

    #[test]
    fn server_limits_are_checked_and_public_binds_need_keys() {
        let p = PipelineConfig::default();
        let ok = ServerConfig::default();
        assert_eq!(ok.validate(&p), Ok(()));
        let name = |c: ServerConfig, p: &PipelineConfig| c.validate(p).unwrap_err().name;
        let small = PipelineConfig { max_bytes: 1 << 20, ..PipelineConfig::default() };
        assert_eq!(name(ok.clone(), &small), "INGEST_PIPELINE_MAX_BYTES");
        assert_eq!(
            name(ServerConfig { max_inflight_bytes: 1, ..ok.clone() }, &p),
            "OTELRING_MAX_INFLIGHT_BYTES"
        );
        assert_eq!(
            name(ServerConfig { retry_after: Duration::ZERO, ..ok.clone() }, &p),
            "OTELRING_RETRY_AFTER_SECS"
        );
        assert_eq!(
            name(ServerConfig { retry_after: Duration::from_secs(10), ..ok.clone() }, &p),
            "OTELRING_RETRY_AFTER_SECS"
        );
        let public = ServerConfig { http_addr: "0.0.0.0:4318".parse().unwrap(), ..ok.clone() };
        assert_eq!(name(public.clone(), &p), "OTELRING_API_KEYS_FILE");
        assert_eq!(ServerConfig { allow_unauthenticated: true, ..public }.validate(&p), Ok(()));
    }

    #[test]
    fn invalid_values_name_their_variable() {
        let bad = |f: fn(&mut PipelineConfig)| {
            let mut c = PipelineConfig { shards: 2, ..PipelineConfig::default() };
            f(&mut c);
            c.validate().unwrap_err().name
        };
        assert_eq!(bad(|c| c.shards = 0), "INGEST_PIPELINE_WORKERS");
        assert_eq!(bad(|c| c.shards = 11), "INGEST_PIPELINE_WORKERS");
        assert_eq!(bad(|c| c.queue_size = 1), "INGEST_PIPELINE_QUEUE_SIZE");
        assert_eq!(bad(|c| c.queue_size = MAX_QUEUE_SIZE + 1), "INGEST_PIPELINE_QUEUE_SIZE");
        assert_eq!(bad(|c| c.max_bytes = 0), "INGEST_PIPELINE_MAX_BYTES");
        assert_eq!(bad(|c| c.soft_threshold = 0.0), "INGEST_PIPELINE_SOFT_THRESHOLD");
        assert_eq!(bad(|c| c.soft_threshold = 1.5), "INGEST_PIPELINE_SOFT_THRESHOLD");
        assert_eq!(bad(|c| c.writer_max_rows = 0), "INGEST_WRITER_MAX_ROWS");
        assert_eq!(bad(|c| c.pin = PinPolicy::Cores(vec![100_000])), "INGEST_PIPELINE_PIN");
    }

    #[test]
    fn sizes_durations_and_pins_parse() {
        assert_eq!(parse_size("128MiB"), Ok(128 << 20));
        assert_eq!(parse_size("64 MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5w").is_err());
        assert_eq!(parse_bool("FALSE"), Ok(false));
        assert!(parse_bool("maybe").is_err());
        assert_eq!("auto".parse::<PinPolicy>(), Ok(PinPolicy::Auto));
        assert_eq!("off".parse::<PinPolicy>(), Ok(PinPolicy::Off));
        assert_eq!("2, 3".parse::<PinPolicy>(), Ok(PinPolicy::Cores(vec![2, 3])));
        assert!("two".parse::<PinPolicy>().is_err());
    }
}
