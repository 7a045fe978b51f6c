//! The host's integration tests: one binary, one module per area.

mod alerts;
mod check;
mod crash;
mod dashboard;
mod gateway;
mod hardening;
mod harness;
mod hostile;
mod http;
mod import;
mod model;
mod operator;
mod postfix_e2e;
mod properties;
mod redis;
mod replay;
mod rules;
mod serve;
mod store;
mod suites;
