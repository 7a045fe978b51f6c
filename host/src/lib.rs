//! creditgate's host: loads the policy component and answers decisions.

pub mod bindings;
pub mod metrics;
pub mod replay;
pub mod request;
pub mod runtime;
pub mod store;
