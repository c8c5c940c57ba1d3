//! loom models live in `tests/`; this library is empty on purpose (see the README).
