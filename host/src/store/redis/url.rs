//! What a `--store` URL names: `redis://` (one server) or `redis+cluster://`
//! (the seed nodes of a cluster), with the options it may carry.

use std::time::Duration;

use crate::store::StoreError;

/// Settings of a [`RedisStore`] beyond the server's address.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The start of every key; several deployments can share one Redis
    /// under different prefixes. No braces.
    pub prefix: String,
    /// Limit on establishing the first connection (and each reconnection attempt).
    pub connect_timeout: Duration,
    /// Limit on each primitive, round trip included.
    pub call_timeout: Duration,
    /// Limit on the bulk operations: listing scopes, exporting or importing one,
    /// one page of a visit.
    pub bulk_timeout: Duration,
    /// How long after its expiry Redis keeps a counter or `once` marker.
    pub gc_margin: Duration,
    /// How often the primaries' eviction settings are read again (see
    /// `durability`).
    pub settings_check: Duration,
    /// Replicas that must hold a write before it is answered (`WAIT` after
    /// every write, on the same connection); 0: none waited for. Redis
    /// replicates after it answers, so without this a failover to a replica
    /// can lose charges gateways acknowledged.
    pub replicas: u32,
    /// How long a write waits for [`RedisConfig::replicas`]; past it, the write
    /// is refused (it stands on the primary: an over-count, never a sale).
    pub replica_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            prefix: "creditgate".to_owned(),
            connect_timeout: Duration::from_secs(1),
            call_timeout: Duration::from_millis(500),
            bulk_timeout: Duration::from_secs(30),
            gc_margin: Duration::from_secs(24 * 3600),
            settings_check: Duration::from_secs(5),
            replicas: 0,
            replica_timeout: Duration::from_millis(250),
        }
    }
}

/// What a `--store` URL names: one server, or the seed nodes of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    /// `redis://` URLs, credentials and database included; several for a cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    /// The servers without credentials, for messages.
    pub label: String,
}

/// True when `s` names a Redis store rather than a file: `redis://`,
/// `redis+cluster://`, and the TLS schemes this build refuses.
pub fn is_redis_url(s: &str) -> bool {
    [
        "redis://",
        "rediss://",
        "redis+cluster://",
        "rediss+cluster://",
    ]
    .iter()
    .any(|scheme| s.starts_with(scheme))
}

/// Parses `redis://[USER:PASS@]HOST:PORT[/DB][?OPTIONS]` or
/// `redis+cluster://[USER:PASS@]HOST:PORT,HOST:PORT,...[?OPTIONS]`. Options:
/// `prefix=NAME`, `connect_timeout_ms=N`, `call_timeout_ms=N`,
/// `settings_check_ms=N`, `replicas=N`, `replica_timeout_ms=N`.
pub fn parse_url(url: &str) -> Result<(RedisTarget, RedisConfig), StoreError> {
    let bad = |why: &str| StoreError::InvalidArgument(format!("redis URL {url:?}: {why}"));
    if url.starts_with("rediss://") || url.starts_with("rediss+cluster://") {
        return Err(bad(
            "this build of creditgate has no TLS support (the redis crate's TLS features are \
             off); use redis:// on a trusted network, or a TLS tunnel such as stunnel",
        ));
    }
    let (cluster, rest) = if let Some(rest) = url.strip_prefix("redis+cluster://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("redis://") {
        (false, rest)
    } else {
        return Err(bad("expected redis:// or redis+cluster://"));
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut config = RedisConfig::default();
    for option in query.split('&').filter(|o| !o.is_empty()) {
        let (name, value) = option.split_once('=').unwrap_or((option, ""));
        let millis = || {
            value
                .parse::<u64>()
                .ok()
                .filter(|&ms| ms > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| bad(&format!("{name} must be a positive number of ms")))
        };
        match name {
            "prefix" => {
                if value.is_empty() || value.contains(['{', '}']) {
                    return Err(bad("prefix must be non-empty and hold no braces"));
                }
                config.prefix = value.to_owned();
            }
            "connect_timeout_ms" => config.connect_timeout = millis()?,
            "call_timeout_ms" => config.call_timeout = millis()?,
            "settings_check_ms" => {
                config.settings_check = millis()?;
                if config.settings_check < Duration::from_millis(10) {
                    return Err(bad("settings_check_ms must be at least 10"));
                }
            }
            "replicas" => {
                config.replicas = value
                    .parse::<u32>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("replicas must be a positive number"))?;
            }
            "replica_timeout_ms" => config.replica_timeout = millis()?,
            _ => {
                return Err(bad(&format!(
                    "unknown option {name:?} (known: prefix, connect_timeout_ms, \
                     call_timeout_ms, settings_check_ms, replicas, replica_timeout_ms)"
                )));
            }
        }
    }
    if config.replicas > 0 && config.replica_timeout >= config.call_timeout {
        return Err(bad(&format!(
            "replica_timeout_ms ({} ms) must be below call_timeout_ms ({} ms): a write \
             waits for its replicas within its own time",
            config.replica_timeout.as_millis(),
            config.call_timeout.as_millis()
        )));
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (Some(userinfo), hosts),
        None => (None, authority),
    };
    if hosts.is_empty() || hosts.split(',').any(str::is_empty) {
        return Err(bad("no host"));
    }
    if !path.is_empty() && path.parse::<u16>().is_err() {
        return Err(bad("the database must be a number"));
    }
    if cluster && !path.is_empty() && path != "0" {
        return Err(bad("Redis Cluster has only database 0"));
    }
    if !cluster && hosts.contains(',') {
        return Err(bad("several hosts: use redis+cluster:// for a cluster"));
    }
    let user = userinfo.map_or(String::new(), |u| format!("{u}@"));
    let db = if path.is_empty() {
        String::new()
    } else {
        format!("/{path}")
    };
    let urls = hosts
        .split(',')
        .map(|host| format!("redis://{user}{host}{db}"))
        .collect();
    let label = if cluster {
        format!("cluster {hosts}")
    } else {
        format!("{hosts}{db}")
    };
    Ok((
        RedisTarget {
            urls,
            cluster,
            label,
        },
        config,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_refused(urls: &[&str]) {
        for bad in urls {
            assert!(
                matches!(parse_url(bad), Err(StoreError::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn urls() {
        let (t, c) = parse_url("redis://127.0.0.1:6379/2?prefix=cg&call_timeout_ms=50").unwrap();
        assert_eq!(t.urls, ["redis://127.0.0.1:6379/2"]);
        assert!(!t.cluster);
        assert_eq!(t.label, "127.0.0.1:6379/2");
        assert_eq!(c.prefix, "cg");
        assert_eq!(c.call_timeout, Duration::from_millis(50));

        let (t, _) = parse_url("redis+cluster://u:p@a:1,b:2").unwrap();
        assert_eq!(t.urls, ["redis://u:p@a:1", "redis://u:p@b:2"]);
        assert!(t.cluster);
        assert_eq!(t.label, "cluster a:1,b:2");

        assert_refused(&[
            "rediss://h:1",
            "rediss+cluster://h:1",
            "redis://",
            "redis://a:1,b:2",
            "redis+cluster://a:1/3",
            "redis://h:1/x",
            "redis://h:1?prefix=a{b}",
            "redis://h:1?nope=1",
            "redis://h:1?call_timeout_ms=0",
            "http://h:1",
        ]);
        let Err(StoreError::InvalidArgument(tls)) = parse_url("rediss://h:1") else {
            panic!("TLS refused");
        };
        assert!(tls.contains("no TLS"), "{tls}");
    }

    #[test]
    fn replicas_are_asked_for_within_the_call_timeout() {
        let (_, c) = parse_url("redis://h:1").unwrap();
        assert_eq!(c.replicas, 0, "none waited for unless asked");
        let (_, c) = parse_url("redis://h:1?replicas=2&replica_timeout_ms=100").unwrap();
        assert_eq!(
            (c.replicas, c.replica_timeout),
            (2, Duration::from_millis(100))
        );
        assert_refused(&[
            "redis://h:1?replicas=0",
            "redis://h:1?replicas=-1",
            "redis://h:1?replicas=1&replica_timeout_ms=0",
            "redis://h:1?replicas=1&replica_timeout_ms=500",
            "redis://h:1?replicas=1&call_timeout_ms=100",
        ]);
        let Err(StoreError::InvalidArgument(slow)) =
            parse_url("redis://h:1?replicas=1&replica_timeout_ms=900")
        else {
            panic!("a wait longer than the call refused");
        };
        assert!(slow.contains("must be below call_timeout_ms"), "{slow}");
    }

    #[test]
    fn urls_are_recognised() {
        assert!(is_redis_url("redis://h:1"));
        assert!(is_redis_url("redis+cluster://h:1"));
        assert!(is_redis_url("rediss://h:1"));
        assert!(!is_redis_url("state.redb"));
        assert!(!is_redis_url("memory"));
    }
}
