//! The Postfix side: one persistent policy-delegation connection, speaking the
//! protocol as Postfix 3.7's smtpd does (every attribute, empty when unknown),
//! and one message's worth of requests: a check per `RCPT`, then the charge at
//! `END-OF-MESSAGE` (sent twice when the mix retries it).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::mix::Message;
use crate::report::{Stage, Stats};

/// One policy connection, used for one request at a time, as Postfix does.
#[derive(Debug)]
pub struct PolicyClient {
    stream: TcpStream,
    buf: Vec<u8>,
    request: String,
    timeout: Duration,
}

impl PolicyClient {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<Self> {
        let stream = crate::connect(addr, timeout).await?;
        Ok(PolicyClient {
            stream,
            buf: Vec::with_capacity(512),
            request: String::with_capacity(2048),
            timeout,
        })
    }

    /// Sends the request in `self.request` and returns the reply's action.
    async fn ask(&mut self) -> anyhow::Result<&str> {
        tokio::time::timeout(self.timeout, async {
            self.stream.write_all(self.request.as_bytes()).await?;
            self.buf.clear();
            // One request in flight: the reply is everything up to the first
            // empty line.
            while !self.buf.ends_with(b"\n\n") {
                let mut chunk = [0u8; 512];
                let n = self.stream.read(&mut chunk).await?;
                if n == 0 {
                    bail!("the server closed the connection");
                }
                self.buf.extend_from_slice(&chunk[..n]);
            }
            Ok(())
        })
        .await
        .with_context(|| format!("no reply within {:?}", self.timeout))??;
        let reply = std::str::from_utf8(&self.buf).context("a reply that is not UTF-8")?;
        reply
            .strip_prefix("action=")
            .and_then(|r| r.strip_suffix("\n\n"))
            .filter(|action| !action.contains('\n'))
            .with_context(|| format!("not a policy reply: {reply:?}"))
    }

    /// Asks one question and records it; returns true when the reply was `DUNNO`
    /// (Postfix goes on).
    async fn decide(&mut self, stage: Stage, stats: &mut Stats) -> anyhow::Result<bool> {
        let start = Instant::now();
        let action = self.ask().await?;
        let elapsed = start.elapsed();
        let class = action.split(' ').next().unwrap_or(action);
        stats.record(stage, elapsed, class);
        Ok(class == "DUNNO")
    }

    /// Sends `message`'s requests as Postfix would, while `budget` allows: each
    /// `RCPT` (unless the message has no checks), then, if any recipient was
    /// accepted, the charge for those.
    pub async fn send(
        &mut self,
        message: &Message,
        mut budget: impl FnMut() -> bool,
        stats: &mut Stats,
    ) -> anyhow::Result<()> {
        let mut accepted = 0;
        if message.rcpt_checks {
            for recipient in &message.recipients {
                if !budget() {
                    return Ok(());
                }
                encode(&mut self.request, "RCPT", message, recipient, 0);
                if self.decide(Stage::Rcpt, stats).await? {
                    accepted += 1;
                }
            }
        } else {
            accepted = message.recipients.len();
        }
        if accepted == 0 {
            // Every recipient refused: Postfix never reaches DATA.
            return Ok(());
        }
        stats.messages += 1;
        for attempt in 0..message.attempts() {
            if !budget() {
                return Ok(());
            }
            // At END-OF-MESSAGE with several recipients, Postfix sends `recipient=`
            // empty and counts them.
            let recipient = if accepted == 1 {
                message.recipients[0].as_str()
            } else {
                ""
            };
            encode(
                &mut self.request,
                "END-OF-MESSAGE",
                message,
                recipient,
                accepted,
            );
            self.decide(Stage::EndOfMessage, stats).await?;
            stats.retries += u64::from(attempt > 0);
        }
        Ok(())
    }
}

/// One `RCPT` check for `account`, as Postfix sends it: the request `--spawn`
/// times serve's start-up with. A check charges nothing and is answered without
/// waiting for a commit.
pub fn rcpt_request(account: &str) -> String {
    let message = Message {
        rcpt_checks: true,
        account: account.to_owned(),
        recipients: vec!["probe@example.org".to_owned()],
        instance: "start-up.probe.0".to_owned(),
        retried: false,
        kind: "first",
    };
    let mut out = String::new();
    encode(&mut out, "RCPT", &message, &message.recipients[0], 0);
    out
}

/// Writes one request into `out`, with the attributes Postfix 3.7 sends.
fn encode(out: &mut String, state: &str, m: &Message, recipient: &str, count: usize) {
    use std::fmt::Write as _;
    out.clear();
    // The queue id exists only once the message does (after the first RCPT).
    let queue_id = if state == "RCPT" { "" } else { "4Xk2Bn0Zq1z9" };
    let size = if state == "RCPT" { 0 } else { 2048 };
    let _ = write!(
        out,
        "request=smtpd_access_policy\n\
         protocol_state={state}\n\
         protocol_name=ESMTP\n\
         helo_name=app01.sender.example\n\
         queue_id={queue_id}\n\
         sender=campaigns@{account}.example\n\
         recipient={recipient}\n\
         recipient_count={count}\n\
         client_address=127.0.0.1\n\
         client_name=localhost\n\
         reverse_client_name=localhost\n\
         instance={instance}\n\
         sasl_method=PLAIN\n\
         sasl_username={account}\n\
         sasl_sender=\n\
         size={size}\n\
         ccert_subject=\n\
         ccert_issuer=\n\
         ccert_fingerprint=\n\
         ccert_pubkey_fingerprint=\n\
         encryption_protocol=TLSv1.3\n\
         encryption_cipher=TLS_AES_256_GCM_SHA384\n\
         encryption_keysize=256\n\
         etrn_domain=\n\
         stress=\n\
         server_address=127.0.0.1\n\
         server_port=587\n\
         compatibility_level=3.6\n\
         mail_version=3.7.11\n\
         policy_context=\n\
         \n",
        account = m.account,
        instance = m.instance,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_carry_the_account_state_and_count() {
        let m = Message {
            rcpt_checks: true,
            account: "load-7".into(),
            recipients: vec!["a@b.org".into(), "c@d.org".into()],
            instance: "1.2.3.0".into(),
            retried: false,
            kind: "first",
        };
        let mut out = String::new();
        encode(&mut out, "END-OF-MESSAGE", &m, "", 2);
        assert!(out.ends_with("policy_context=\n\n"));
        assert_eq!(out.matches("\n\n").count(), 1);
        for line in [
            "protocol_state=END-OF-MESSAGE",
            "sasl_username=load-7",
            "recipient_count=2",
            "instance=1.2.3.0",
        ] {
            assert!(out.lines().any(|l| l == line), "{line}");
        }
    }
}
