//! The host's integration tests: one binary, one module per area.

mod harness;
mod rules;
mod store;
