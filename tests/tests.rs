//! otelring's integration tests: one test binary (fast to link), one module per area.
//! Shared helpers live in `util`.

mod pipeline;
mod util;
