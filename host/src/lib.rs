//! creditgate's host: loads the policy component and answers decisions.
//!
//! A tour, in the order a decision travels:
//!
//! - [`request`]: what a front end asks (one variant per WIT function it calls),
//!   the one type a request travels in to the worker that answers it;
//! - [`runtime`]: the wasmtime engine, the compiled (and cached) component, and
//!   [`runtime::Worker`]s that each own a sandboxed instance and time every call;
//! - [`bindings`]: the only place bindings are generated from `wit/`;
//! - [`store`]: the durable state behind the WIT `state` imports: generic atomic
//!   primitives, in memory, in redb, or on Redis (Cluster) for several gateway
//!   hosts, with group commit;
//! - [`metrics`]: latency histograms of decisions (guest, store, commit wait) and
//!   the gateway's counters, with their Prometheus rendering;
//! - [`time`]: the clock the host hands the guest;
//! - [`names`]: the one rule for account and campaign names, and the escaping
//!   of every outside value written to a log or a table;
//! - [`in_force`]: the policy and names rule a gateway decides under, recorded
//!   in its store for every other command that decides there;
//! - [`gateway`]: a pool of workers over one store, with group commit and
//!   versioned reloads, for long-running front ends;
//! - [`alerts`]: the credit alerts the policy reports, logged in the store and
//!   delivered to webhooks once their decision is durable;
//! - [`wire`]: what every front end tells its clients: reason codes, decisions
//!   and credits as JSON, what each address of a lead batch came to;
//! - front ends: [`replay`] (event traces), [`import`] (CSV lead uploads),
//!   [`postfix`] (the sans-I/O core of Postfix policy delegation);
//! - [`serve`]: the Postfix policy server, sockets around [`postfix`] and a [`gateway`];
//! - [`slots`]: how both servers bound their connections, and whom they close to
//!   make room when full;
//! - [`http`]: the HTTP JSON API over the same [`gateway`], with `/metrics`;
//!   [`api_read`] adds its paged listings (accounts, plans, campaigns, leads,
//!   alerts) and keeps bulk reads to a fixed share of the gateway.
//! - [`inspect`]: what the views ask the component (accounts, campaigns, leads,
//!   history length, warning levels), so that the host knows no layout or rule;
//! - [`dashboard`]: the web dashboard `serve` adds to the API: HTML pages of every account's usage.
//!
//! The binary (`src/main.rs`, `src/cli/`) is a thin shell over these.

// The workspace's clippy.toml keeps the binary's commands off `Worker::decide`;
// the library's gateway syncs by group and may call it.
#![allow(clippy::disallowed_methods)]

pub mod alerts;
pub mod api_read;
pub mod bindings;
pub mod dashboard;
pub mod gateway;
pub mod http;
pub mod import;
pub mod in_force;
pub mod inspect;
pub mod metrics;
pub mod names;
pub mod policy_suite;
pub mod postfix;
pub mod replay;
pub mod request;
pub mod runtime;
pub mod serve;
pub mod slots;
pub mod store;
pub mod time;
pub mod wire;
