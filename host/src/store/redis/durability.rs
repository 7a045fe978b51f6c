//! Whether the Redis server keeps what it acknowledged. A gateway answers
//! "allowed" once Redis has answered the charge; whether that answer survives a
//! crash of Redis or its host is Redis's own setting, which creditgate cannot
//! change but can read, so that `serve` says so at start when it is weaker than
//! the promise (and `serve --check` reports it).

use std::collections::HashMap;

use super::RedisStore;
use crate::store::StoreError;

/// What a Redis server says of how it keeps writes (`CONFIG GET`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisDurability {
    /// `appendonly`: `yes` keeps an append-only file.
    pub appendonly: String,
    /// `appendfsync`: `always` syncs it before each answer.
    pub appendfsync: String,
}

impl RedisDurability {
    /// What a crash could take back, when it could take anything; None when
    /// every acknowledged write survives a crash of Redis or its host.
    pub fn risk(&self) -> Option<&'static str> {
        if self.appendonly != "yes" {
            Some("every charge since the last snapshot")
        } else if self.appendfsync != "always" {
            Some("about the last second of charges")
        } else {
            None
        }
    }
}

impl std::fmt::Display for RedisDurability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "appendonly {}, appendfsync {}",
            self.appendonly, self.appendfsync
        )
    }
}

impl RedisStore {
    /// The server's `appendonly` and `appendfsync` (on a cluster, those of the
    /// node asked). A server that refuses `CONFIG` (managed services often
    /// rename it) answers an error: durability is then the operator's to check.
    pub fn durability(&self) -> Result<RedisDurability, StoreError> {
        let what = "reading appendonly and appendfsync";
        let config: HashMap<String, String> =
            self.call(what, self.config.call_timeout, |mut c| async move {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("append*")
                    .query_async(&mut c)
                    .await
            })?;
        let setting = |name: &str| {
            config.get(name).cloned().ok_or_else(|| {
                StoreError::Unavailable(format!(
                    "redis {}: {what}: CONFIG GET gave no {name}",
                    self.label()
                ))
            })
        };
        Ok(RedisDurability {
            appendonly: setting("appendonly")?,
            appendfsync: setting("appendfsync")?,
        })
    }
}
