//! The processes creditgate's tests and `creditgate-load --spawn` run, written
//! once: a spawned `creditgate serve` ([`serve::ServeProcess`]), `redis-server`
//! and a Redis Cluster ([`redis`]), and one HTTP client ([`http::Client`]).
//!
//! Ports: `serve` binds `127.0.0.1:0` itself and the harness reads the ports it
//! got from its log, so no port is ever probed, released and hoped for. Only
//! servers that cannot be handed a port (`redis-server`) get a probed one, and
//! are started again on another when it was taken in between.
//!
//! Failures panic with what the process logged: these are test fixtures.
//! [`serve::ServeBuilder::try_start`] returns an error instead, for a tool.

pub mod http;
pub mod process;
pub mod redis;
pub mod serve;

use std::time::Duration;

/// How long a process gets to start or stop before the harness gives up: a
/// cold start compiles the component, on a machine busy with parallel tests.
pub const WAIT: Duration = Duration::from_secs(90);
