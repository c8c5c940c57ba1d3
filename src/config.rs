//! Configuration: the only place defaults live (DESIGN 1.6).
//!
//! [`PipelineConfig`] is the core's configuration (no CLI dependency, so loom and fuzz builds
//! compile it). With the `server` feature, [`Cli`] maps every setting to a clap flag with an
//! environment variable of the same meaning; `--help` lists each with its default. Invalid values
//! stop the program at start with a [`ConfigError`] naming the variable; nothing falls back
//! silently. Sizes accept bytes or KiB/MiB/GiB, durations `ms`, `s`, `m`, `h`, `d`.

use crate::pipeline::admission::{MAX_QUEUE_BYTES, MAX_QUEUE_SIZE};
use std::time::Duration;

/// Most shards (writer threads, SQLite files): SQLite attaches at most 10 databases by default,
/// and `otelring sql` attaches every shard.
pub const MAX_SHARDS: usize = 10;
/// Default writer count when the data directory records none: min(cores, 4). Beyond 4 writers
/// the WAL and disk, not the CPU, bound a shard set on the machines we measured.
pub const DEFAULT_MAX_WORKERS: usize = 4;
pub const DEFAULT_QUEUE_SIZE: u64 = 4096;
pub const DEFAULT_MAX_BYTES: u64 = 128 * 1024 * 1024;
pub const DEFAULT_SOFT_THRESHOLD: f64 = 0.9;
pub const DEFAULT_WRITER_MAX_ROWS: usize = 20_000;
pub const DEFAULT_WRITER_MAX_DELAY: Duration = Duration::from_millis(50);
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

#[cfg(feature = "server")]
pub use cli::*;

#[cfg(feature = "server")]
mod cli {
    use super::*;
    use clap::{Args, Parser, Subcommand};
    use std::path::PathBuf;

    /// otelring: OpenTelemetry ingest into sharded SQLite.
    #[derive(Debug, Parser)]
    #[command(name = "otelring", version, about, propagate_version = true)]
    pub struct Cli {
        #[command(subcommand)]
        pub command: Option<Command>,
        #[command(flatten)]
        pub pipeline: PipelineArgs,
    }

    #[derive(Debug, Subcommand)]
    pub enum Command {
        /// Validate the settings (flags and environment) and print the effective configuration.
        Config,
    }

    /// Pipeline settings (DESIGN 1.6); every flag has an environment variable of the same meaning.
    #[derive(Debug, Clone, Args)]
    pub struct PipelineArgs {
        /// Directory of the shard files.
        #[arg(long, env = "OTELRING_DATA_DIR", default_value = "./data", global = true)]
        pub data_dir: PathBuf,
        /// Writer threads = SQLite shards (1..=10). Default: the count recorded in the data
        /// directory, else min(cores, 4).
        #[arg(long = "workers", env = "INGEST_PIPELINE_WORKERS", global = true)]
        pub workers: Option<usize>,
        /// Batches queued per signal (≥ workers).
        #[arg(long, env = "INGEST_PIPELINE_QUEUE_SIZE", default_value_t = DEFAULT_QUEUE_SIZE, global = true)]
        pub queue_size: u64,
        /// Estimated bytes queued per signal (bytes or KiB/MiB/GiB).
        #[arg(long, env = "INGEST_PIPELINE_MAX_BYTES", default_value = "128MiB", value_parser = parse_size, global = true)]
        pub max_bytes: u64,
        /// Fullness at which healthy data starts being dropped (0 < t ≤ 1).
        #[arg(long, env = "INGEST_PIPELINE_SOFT_THRESHOLD", default_value_t = DEFAULT_SOFT_THRESHOLD, global = true)]
        pub soft_threshold: f64,
        /// Writer pinning: auto (only when cores ≥ writers + 2), off, or a core list like 2,3.
        #[arg(long, env = "INGEST_PIPELINE_PIN", default_value = "auto", global = true)]
        pub pin: PinPolicy,
        /// Rows per coalesced transaction.
        #[arg(long, env = "INGEST_WRITER_MAX_ROWS", default_value_t = DEFAULT_WRITER_MAX_ROWS, global = true)]
        pub writer_max_rows: usize,
        /// Longest a writer keeps adding batches to one transaction, in milliseconds.
        #[arg(
            long = "writer-max-delay-ms",
            env = "INGEST_WRITER_MAX_DELAY_MS",
            default_value_t = 50,
            global = true
        )]
        pub writer_max_delay_ms: u64,
        /// Drain deadline on stop, before what is left is spilled to the DLQ (e.g. 30s).
        #[arg(long, env = "OTELRING_SHUTDOWN_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
        pub shutdown_timeout: Duration,
        /// false = commit mode: answer each request only after its rows are committed.
        #[arg(long = "async-enabled", env = "INGEST_ASYNC_ENABLED", default_value = "true", value_parser = parse_bool, global = true)]
        pub async_enabled: bool,
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
