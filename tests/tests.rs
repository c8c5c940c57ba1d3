//! otelring's integration tests: one test binary (fast to link), one module per area.
//! Shared helpers live in `util`.

mod chcluster;
mod clickhouse;
mod decode;
mod e2e;
mod faults;
mod floods;
mod pipeline;
mod prometheus;
mod reliability;
mod segments;
mod store;
mod util;
