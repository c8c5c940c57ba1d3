//! otelring: an OpenTelemetry (OTLP) ingest engine that persists traces, logs and metrics into
//! sharded SQLite through an asynchronous pipeline with hybrid backpressure.
//!
//! The contract is `DESIGN.md` (shared with the team); this crate is laid out by pipeline stage:
//!
//! - [`config`]: every setting and its default (the only place defaults live);
//! - [`sync`]: the loom shim; the ring, admission and lane wake-up use nothing else;
//! - [`ring`]: the bounded lock-free MPMC ring (the only module with `unsafe`);
//! - [`pipeline`]: row and batch types, admission (packed atomic word per signal), lanes, routing,
//!   writer threads, commit-mode completion, the books;
//! - [`clickhouse`]: the ClickHouse cluster sink (`OTELRING_SINK=clickhouse`), a `BatchWriter`
//!   per shard behind the same pipeline.
//!
//! Without the default `server` feature the crate is the core alone (no tokio, hyper, h2 or
//! SQLite), which is what the loom models and fuzz targets build.

#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "server")]
pub mod bench_baseline;
#[cfg(feature = "server")]
pub mod clickhouse;
pub mod config;
#[cfg(feature = "loadgen")]
pub mod loadgen;
#[cfg(feature = "server")]
pub mod metrics;
pub mod otlp;
pub mod pipeline;
pub mod ring;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
pub mod sync;
