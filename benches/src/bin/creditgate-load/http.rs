//! The HTTP side: one persistent HTTP/1.1 connection per task, each message one
//! `POST /v1/decide/email` (sent twice when the mix retries it, with the same
//! `message_id`).

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
