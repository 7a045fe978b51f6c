//! Credit alerts: what the policy reported crossed, kept and delivered.
//!
//! The guest decides when a threshold is crossed (exactly one request crosses
//! each, see WIT `alert`); the host keeps a log of them and tells people. A fired
//! alert is written to the store by the worker that made the decision, so it is
//! durable with the decision's own commit, and it is delivered (a log line, and a
//! POST to each configured webhook) only after that commit: an alert about a
//! charge that was never acknowledged is never sent. The recording is done by
//! [`crate::runtime::Worker`] itself, so every front end (the gateway, the CLI's
//! imports, deletions and plan changes, replay with a store) keeps the same log
//! without having to remember to; delivery is the [`Notifier`]'s: `serve` logs and
//! posts to webhooks, the command line prints on stderr, a dry run says nothing.
//!
//! The log lives in the store's alert log ([`Store::alert_insert`]), a namespace
//! of its own beside the component's scopes: no scope name reaches it and no
//! listing of scopes shows it. (Stores written before kept it in scopes
//! `"\u{1}alerts/<account>"`; each backend moves those when it opens a store.)
//!
//! Webhooks never hold up a decision: alerts go through a bounded queue to a
//! task that posts them, retrying with exponential backoff; a full queue drops
//! the delivery (the alert stays in the log) and says so in the logs.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::bindings::{Alert, Credit, Decision};
use crate::store::{Store, StoreError};
use crate::time::format_instant;

/// One alert that fired: the body of a webhook POST and of `alerts list --format json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FiredAlert {
    /// Always `credit_threshold_crossed`.
    pub event: String,
    pub account: String,
    /// `lead_credits` or `email_credits`.
    pub credit: String,
    /// Percent of the limit.
    pub threshold: u8,
    pub used: u64,
    pub limit: u64,
    /// When the request that crossed it was decided (RFC 3339, UTC).
    pub at: String,
    /// For email credits: when the cycle ends and usage restarts at 0.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resets_at: Option<String>,
}

impl FiredAlert {
    /// The alerts of `decision`, decided at `at`.
    pub fn of_decision(account: &str, decision: &Decision, at: i64) -> Vec<FiredAlert> {
        let resets_at = decision.usage.as_ref().map(|u| u.email_credits.resets_at);
        Self::of(account, &decision.alerts, at, resets_at)
    }

    pub fn of(account: &str, alerts: &[Alert], at: i64, resets_at: Option<i64>) -> Vec<FiredAlert> {
        alerts
            .iter()
            .map(|a| FiredAlert {
                event: "credit_threshold_crossed".to_owned(),
                account: account.to_owned(),
                credit: credit_name(a.credit).to_owned(),
                threshold: a.threshold,
                used: a.used,
                limit: a.limit,
                at: format_instant(at),
                resets_at: match a.credit {
                    Credit::Email => resets_at.map(format_instant),
                    Credit::Lead => None,
                },
            })
            .collect()
    }

    /// The log's key: ordered by time, then by the log's own sequence number
    /// (two alerts may carry one instant: a replayed trace, a clock step back).
    fn key(&self, at: i64, sequence: u64) -> String {
        format!(
            "{at:020}/{sequence:020}/{}/{:03}",
            self.credit, self.threshold
        )
    }
}

pub fn credit_name(credit: Credit) -> &'static str {
    match credit {
        Credit::Lead => "lead_credits",
        Credit::Email => "email_credits",
    }
}

/// Appends `alert`, fired at `at`, to its account's log. Applied, not yet
/// durable: the caller's next persist makes it so.
pub fn record(store: &dyn Store, alert: &FiredAlert, at: i64) -> Result<(), StoreError> {
    let value = serde_json::to_string(alert)
        .map_err(|e| StoreError::InvalidArgument(format!("cannot encode an alert: {e}")))?;
    let sequence = store.alert_sequence(&alert.account)?;
    store.alert_insert(&alert.account, &alert.key(at, sequence), &value)?;
    Ok(())
}

/// Every alert logged, for one account or all, oldest first per account.
pub fn list(store: &dyn Store, account: Option<&str>) -> Result<Vec<FiredAlert>, StoreError> {
    let mut alerts = Vec::new();
    let mut failed = None;
    let list = crate::store::Alerts {
        owner: account,
        after: None,
    };
    store.visit_alerts(list, &mut |owner, key, value| {
        match decode(owner, key, value) {
            Ok(alert) => alerts.push(alert),
            Err(e) => failed = Some(e),
        }
        failed.is_none()
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(alerts),
    }
}

/// The alert logged as `value` under `key` in `owner`'s log.
pub fn decode(owner: &str, key: &str, value: &str) -> Result<FiredAlert, StoreError> {
    serde_json::from_str(value).map_err(|e| {
        StoreError::Corrupt(format!("alert {key:?} of {owner:?} does not decode: {e}"))
    })
}

/// Where webhooks are posted, from the gateway config's `[[webhooks]]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://host[:port]/path`. Plain HTTP only: point it at a local relay (or a
    /// sidecar) to reach an HTTPS endpoint.
    pub url: String,
    /// Signs each body: `X-Creditgate-Signature: sha256=<hex HMAC-SHA256>`.
    pub secret: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The signature header's value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256>>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// How deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    /// Doubles after each failure.
    pub first_backoff: Duration,
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 8,
            first_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The sending end of the delivery queue: never blocks.
#[derive(Debug, Clone)]
pub struct Notifier {
    queue: Option<mpsc::Sender<FiredAlert>>,
    said: Said,
}

/// Where a notifier tells of an alert besides its webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Said {
    /// In the log (`tracing`), as `serve` does.
    Log,
    /// On stderr, for the command line, which has no log.
    Stderr,
    /// Nowhere: a dry run's alerts did not happen.
    Nowhere,
}

/// Alerts waiting for delivery at most; past it, deliveries are dropped (the log
/// keeps every alert).
pub const QUEUE: usize = 10_000;

impl Notifier {
    /// Logs only.
    pub fn log_only() -> Self {
        Notifier {
            queue: None,
            said: Said::Log,
        }
    }

    /// Prints each alert on stderr: the command line's delivery. The CLI has no
    /// webhooks (they are `serve`'s configuration); the alert is in the store's
    /// log either way, for `alerts list`.
    pub fn stderr() -> Self {
        Notifier {
            queue: None,
            said: Said::Stderr,
        }
    }

    /// Delivers nothing: for a dry run, whose alerts are only what would fire.
    pub fn none() -> Self {
        Notifier {
            queue: None,
            said: Said::Nowhere,
        }
    }

    /// Logs, and hands each alert to `deliver` running on a tokio runtime.
    pub fn with_webhooks(webhooks: Vec<Webhook>, retry: Retry) -> (Self, impl Future<Output = ()>) {
        let (queue, alerts) = mpsc::channel(QUEUE);
        (
            Notifier {
                queue: (!webhooks.is_empty()).then_some(queue),
                said: Said::Log,
            },
            deliver(alerts, Arc::new(webhooks), retry),
        )
    }

    /// Called once the alert's decision is durable.
    pub fn notify(&self, alert: FiredAlert) {
        match self.said {
            Said::Nowhere => return,
            Said::Stderr => eprintln!(
                "creditgate: alert: account {:?}: {} at {}% ({} of {})",
                alert.account, alert.credit, alert.threshold, alert.used, alert.limit
            ),
            Said::Log => {}
        }
        info!(
            target: "creditgate::alerts",
            account = %alert.account,
            credit = %alert.credit,
            threshold = alert.threshold,
            used = alert.used,
            limit = alert.limit,
            "alert: {} at {}% ({} of {})",
            alert.credit, alert.threshold, alert.used, alert.limit
        );
        if let Some(queue) = &self.queue
            && let Err(e) = queue.try_send(alert)
        {
            warn!(target: "creditgate::alerts", "webhook queue full, delivery dropped: {e}");
        }
    }
}

/// Posts every alert to every webhook, each delivery retried on its own task.
async fn deliver(
    mut alerts: mpsc::Receiver<FiredAlert>,
    webhooks: Arc<Vec<Webhook>>,
    retry: Retry,
) {
    while let Some(alert) = alerts.recv().await {
        let body = match serde_json::to_vec(&alert) {
            Ok(body) => Arc::new(body),
            Err(e) => {
                warn!(target: "creditgate::alerts", "cannot encode an alert: {e}");
                continue;
            }
        };
        for webhook in webhooks.iter().cloned() {
            let body = body.clone();
            tokio::spawn(async move {
                let mut backoff = retry.first_backoff;
                for attempt in 1..=retry.attempts {
                    match post(&webhook, &body, retry.timeout).await {
                        Ok(()) => return,
                        Err(e) => {
                            warn!(target: "creditgate::alerts", url = %webhook.url, attempt,
                                "webhook delivery failed: {e}");
                        }
                    }
                    if attempt < retry.attempts {
                        tokio::time::sleep(backoff).await;
                        backoff = backoff.saturating_mul(2);
                    }
                }
                warn!(target: "creditgate::alerts", url = %webhook.url,
                    "webhook delivery abandoned after {} attempts", retry.attempts);
            });
        }
    }
}

/// One POST; Ok on a 2xx answer.
async fn post(webhook: &Webhook, body: &[u8], timeout: Duration) -> Result<(), String> {
    let (host, path) = split_url(&webhook.url)?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nX-Creditgate-Signature: {}\r\nConnection: close\r\n\r\n",
        body.len(),
        signature(&webhook.secret, body)
    );
    let exchange = async {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let address = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:80")
        };
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .map_err(|e| format!("cannot connect to {host}: {e}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .and(stream.write_all(body).await)
            .map_err(|e| format!("cannot send: {e}"))?;
        let mut status = [0u8; 12];
        stream
            .read_exact(&mut status)
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        match &status {
            [b'H', b'T', b'T', b'P', b'/', _, _, _, b' ', b'2', _, _] => Ok(()),
            other => Err(format!(
                "answered {}",
                String::from_utf8_lossy(other.get(9..).unwrap_or_default())
            )),
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(&str, &str), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("webhook url {url:?}: only http:// is supported"))?;
    Ok(match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    })
}

/// Checks a webhook's settings at start-up.
pub fn validate(webhook: &Webhook) -> Result<(), String> {
    let (host, _) = split_url(&webhook.url)?;
    if host.is_empty() {
        return Err(format!("webhook url {:?} has no host", webhook.url));
    }
    if webhook.secret.len() < 16 {
        return Err(format!(
            "webhook {:?}: the secret must be at least 16 characters long",
            webhook.url
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_in_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:9/hook"),
            Ok(("127.0.0.1:9", "/hook"))
        );
        assert_eq!(split_url("http://h:80"), Ok(("h:80", "/")));
        assert!(split_url("https://h/x").is_err());
    }
}
