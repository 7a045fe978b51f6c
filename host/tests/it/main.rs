//! The host's integration tests: one binary, one module per area.

mod harness;
mod hostile;
mod model;
mod properties;
mod replay;
mod rules;
mod store;
