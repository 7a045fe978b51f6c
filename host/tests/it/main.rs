//! The host's integration tests: one binary, one module per area.

// Tests decide without syncing where durability is not what they are about.
#![allow(clippy::disallowed_methods)]

mod alerts;
mod campaigns;
mod check;
mod cli_remote;
mod contract;
mod crash;
mod dashboard;
mod faults;
mod gateway;
mod hardening;
mod harness;
mod hostile;
mod http;
mod import;
mod listing;
mod model;
mod operator;
mod other_rules;
mod packaging;
mod postfix_e2e;
mod power;
mod properties;
mod redis;
mod replay;
mod rules;
mod serve;
mod shadow;
mod store;
mod store_files;
mod suites;
