//! The benchmark-only discard sink (`otelring serve --bench-discard`): a [`BatchWriter`] that
//! accepts every group and stores nothing, so a load test measures the receive path alone
//! (sockets, framing, decode, admission, lanes, the writers' pop and grouping) the way a
//! receive-and-discard collector does. Never a default: the server prints a warning at start
//! and counts what it discards as persisted, so the books still balance.

use super::writer::{BatchWriter, Group, WriteError};

/// Drops every group it is given (the rows are freed on the writer thread, as a real write
/// would free them after the commit).
#[derive(Debug, Default)]
pub struct DiscardWriter;

impl BatchWriter for DiscardWriter {
    fn write(&mut self, _group: &Group) -> Result<(), WriteError> {
        Ok(())
    }
}
