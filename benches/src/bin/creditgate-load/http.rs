//! The HTTP side: one persistent HTTP/1.1 connection per task, each message one
//! `POST /v1/decide/email` (sent twice when the mix retries it, with the same
//! `message_id`). Also the timed `POST /v1/admin/reload`s of `--reloads`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, header};
use hyper_util::rt::TokioIo;

use crate::mix::Message;
use crate::report::{Stage, Stats};

#[derive(Debug)]
pub struct ApiClient {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    timeout: Duration,
}

impl ApiClient {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        let stream = crate::connect(addr, timeout).await?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("HTTP handshake with {addr}"))?;
        // The connection's I/O runs on its own task; it ends when `sender` drops
        // or the server closes.
        tokio::spawn(connection);
        Ok(ApiClient {
            sender,
            host: addr.to_string(),
            timeout,
        })
    }

    /// Sends `message` as one decision (two when retried) while `budget` allows.
    pub async fn send(
        &mut self,
        message: &Message,
        mut budget: impl FnMut() -> bool,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let body = serde_json::json!({
            "account": message.account,
            "to": message.recipients,
            "kind": message.kind,
            "message_id": message.instance,
        })
        .to_string();
        let body = Bytes::from(body);
        for attempt in 0..message.attempts() {
            if !budget() {
                return Ok(());
            }
            let start = Instant::now();
            let class = tokio::time::timeout(self.timeout, self.decide(body.clone()))
                .await
                .with_context(|| format!("no reply within {:?}", self.timeout))??;
            stats.record(Stage::Decide, start.elapsed(), &class);
            if attempt == 0 {
                stats.messages += 1;
            } else {
                stats.retries += 1;
            }
        }
        Ok(())
    }

    /// `POST /v1/admin/reload` (no admin token: the spawned serve has none); the
    /// policy version now in force. A refused reload is an error.
    pub async fn reload(&mut self) -> anyhow::Result<u64> {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/admin/reload")
            .header(header::HOST, &self.host)
            .body(Full::new(Bytes::new()))?;
        let answer = async {
            self.sender.ready().await.context("the connection closed")?;
            let response = self.sender.send_request(request).await?;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, answer)
            .await
            .with_context(|| format!("no reply within {:?}", self.timeout))??;
        let body = String::from_utf8_lossy(&bytes);
        anyhow::ensure!(status.is_success(), "reload answered {status}: {body}");
        let json: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("a reload reply that is not JSON: {body}"))?;
        json["version"]
            .as_u64()
            .with_context(|| format!("a reload reply without a version: {body}"))
    }

    /// One request; the class of its answer: `allowed`, `denied:<reason>`, or
    /// `http:<status>` for an error status.
    async fn decide(&mut self, body: Bytes) -> anyhow::Result<String> {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/v1/decide/email")
            .header(header::HOST, &self.host)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))?;
        self.sender.ready().await.context("the connection closed")?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Ok(format!("http:{}", status.as_u16()));
        }
        let json: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "a reply that is not JSON: {}",
                String::from_utf8_lossy(&bytes)
            )
        })?;
        Ok(classify(&json))
    }
}

/// `count` reloads of the serve at `addr`, one after the other on one
/// connection, each timed from sending to the whole answer. Each must put a new
/// version in force: a reload refused or skipped is an error.
pub async fn reloads(
    addr: SocketAddr,
    count: u32,
    timeout: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let mut client = ApiClient::connect(addr, timeout).await?;
    let mut times = Vec::with_capacity(count as usize);
    let mut last = None;
    for _ in 0..count {
        let start = Instant::now();
        let version = client.reload().await?;
        times.push(start.elapsed());
        if let Some(last) = last {
            anyhow::ensure!(
                version == last + 1,
                "a reload put version {version} in force after {last}"
            );
        }
        last = Some(version);
    }
    Ok(times)
}

/// `allowed`, or `denied:<reason>`. Takes the API's `{"allowed": bool}` and also
/// replay's `{"decision": "allow"}` shape.
fn classify(json: &serde_json::Value) -> String {
    let allowed = json["allowed"]
        .as_bool()
        .or_else(|| json["decision"].as_str().map(|d| d == "allow"));
    match allowed {
        Some(true) => "allowed".to_owned(),
        Some(false) => {
            let reason = json["reason"]
                .as_str()
                .or_else(|| json["reason"]["code"].as_str())
                .unwrap_or("unknown");
            format!("denied:{reason}")
        }
        None => "unrecognised".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_are_classified_by_outcome_and_reason() {
        let cases = [
            (r#"{"allowed": true, "charged": 2}"#, "allowed"),
            (
                r#"{"allowed": false, "reason": "email_credits_exhausted"}"#,
                "denied:email_credits_exhausted",
            ),
            (r#"{"decision": "allow", "reason": null}"#, "allowed"),
            (r#"{"ok": 1}"#, "unrecognised"),
        ];
        for (text, class) in cases {
            let json: serde_json::Value = serde_json::from_str(text).expect("JSON");
            assert_eq!(classify(&json), class, "{text}");
        }
    }
}
