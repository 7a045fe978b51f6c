//! The Postfix policy server: sockets around the sans-I/O [`crate::postfix`] core,
//! deciding through a [`Gateway`].
//!
//! One task per connection reads bytes into a [`RequestReader`], maps each request
//! with [`PostfixConfig::map`], asks the gateway (whose answer is durable when it
//! arrives) and writes one reply per request, in order. A peer that breaks the
//! protocol or stays silent past the idle timeout loses its own connection and no
//! other: Postfix reconnects, and applies its `default_action` meanwhile. A request
//! must arrive whole within the request timeout of its first byte, however steadily
//! it trickles, and a full listener makes room as [`crate::slots`] says, so slow
//! clients cannot keep Postfix out.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::bindings::{Decision, Reason};
use crate::gateway::Gateway;
use crate::names::Escaped;
use crate::postfix::{
    Actions, Mapped, MappingError, Path, PolicyRequest, PostfixConfig, ProtocolState, Reply,
    RequestReader, Uncharged,
};
use crate::request::{Origin, Request};
use crate::slots::{SlotLimits, Slots, accept_retrying};
use crate::time::{format_instant, now};
use crate::wire::reason_code;

/// Settings of the server itself (the protocol's are in [`PostfixConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// How long one read may wait for bytes before the connection is closed.
    /// Default 60 s: Postfix keeps an idle policy connection for
    /// `smtpd_policy_service_max_idle` (300 s) and reconnects at no cost, while an
    /// abandoned socket would hold a task and a descriptor forever.
    pub idle_timeout: Duration,
    /// How long one request may take from its first byte to its last. Default
    /// 10 s: Postfix writes a request (about 1 KiB) at once, while a client that
    /// trickles bytes never trips the idle timeout.
    pub request_timeout: Duration,
    /// Most connections served at once. Past it, a new connection closes the one
    /// that has gone longest without an answer ([`crate::slots`]). Default 1,024:
    /// each Postfix smtpd process holds one connection, and `default_process_limit`
    /// is 100.
    pub max_connections: usize,
    /// Most connections from one client address (unix-socket peers are exempt).
    /// Default 256: above the smtpd processes of one Postfix host, and it keeps one
    /// address from closing everyone else's connections.
    pub max_connections_per_client: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            idle_timeout: Duration::from_secs(60),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_connections: 1_024,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        }
    }
}

/// How long a request may take from its first byte to its last, by default (both
/// listeners).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Most connections from one client address, by default (both listeners).
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 256;

/// Bytes asked of the socket per read; Postfix's requests are about 1 KiB.
const READ_CHUNK: usize = 8 * 1024;

/// Connections the kernel queues for a listener before `accept` (it caps this at
/// `net.core.somaxconn`, 4,096 on current kernels). A flood of slow clients closed
/// to make room comes back in bursts; a short queue would drop a newcomer's SYN
/// among them, and the client's retry waits a second.
pub const LISTEN_BACKLOG: u32 = 4_096;

/// A TCP listener on `addr` with [`LISTEN_BACKLOG`], for either server.
pub fn bind_tcp(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As std and tokio do: a restarted server can bind while old connections of
    // the last one linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Where Postfix connects: `inet:host:port`, or `unix:path` for a smtpd on the
/// same machine (no TCP handshake, and file permissions decide who may ask).
#[derive(Debug)]
pub enum PolicyListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl From<TcpListener> for PolicyListener {
    fn from(listener: TcpListener) -> Self {
        PolicyListener::Tcp(listener)
    }
}

impl From<UnixListener> for PolicyListener {
    fn from(listener: UnixListener) -> Self {
        PolicyListener::Unix(listener)
    }
}

impl PolicyListener {
    /// Accepts one connection; the peer is named for the logs (a unix socket's
    /// peers have no useful name) and by address for the per-client cap.
    async fn accept(&self) -> std::io::Result<(Stream, String, Option<IpAddr>)> {
        match self {
            PolicyListener::Tcp(listener) => {
                let (stream, peer) = listener.accept().await?;
                // Replies are small and must leave at once.
                let _ = stream.set_nodelay(true);
                Ok((Stream::Tcp(stream), peer.to_string(), Some(peer.ip())))
            }
            PolicyListener::Unix(listener) => {
                let (stream, _) = listener.accept().await?;
                Ok((Stream::Unix(stream), "unix".to_owned(), None))
            }
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Accepts connections on `listener` until `shutdown` completes, then stops
/// accepting, lets every open connection finish the request it is answering, and
/// returns when all of them are closed.
pub async fn serve_postfix(
    listener: impl Into<PolicyListener>,
    gateway: Arc<Gateway>,
    config: Arc<PostfixConfig>,
    options: ServeOptions,
    shutdown: impl Future,
) {
    // A watch rather than a oneshot: every connection sees the one value, including
    // those that look at it long after it was set.
    let listener = listener.into();
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    let slots = Slots::new(
        SlotLimits {
            max_connections: options.max_connections,
            max_per_client: options.max_connections_per_client,
        },
        "postfix",
    );
    tokio::pin!(shutdown);
    loop {
        // Accept first, then find a slot: a full listener makes room for the
        // newcomer rather than leaving it in the backlog behind slow clients.
        let (stream, peer, client) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = accept_retrying(|| listener.accept(), "a connection") => accepted,
            // Reap finished connections so that the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            slot = slots.admit(client) => slot,
        };
        let Some(slot) = slot else {
            debug!(%peer, "refused: every connection of this client is being answered");
            continue;
        };
        debug!(%peer, "connection accepted");
        let connection = Connection {
            peer,
            gateway: gateway.clone(),
            config: config.clone(),
            options,
            stopped: stopped.clone(),
            slot,
        };
        match stream {
            Stream::Tcp(stream) => connections.spawn(connection.run(stream)),
            Stream::Unix(stream) => connections.spawn(connection.run(stream)),
        };
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
}

/// One peer's connection, before its socket is known.
struct Connection {
    peer: String,
    gateway: Arc<Gateway>,
    config: Arc<PostfixConfig>,
    options: ServeOptions,
    stopped: watch::Receiver<bool>,
    /// Held while the connection lives.
    slot: crate::slots::Slot,
}

impl Connection {
    /// Serves one peer until it closes, breaks the protocol, idles out, takes too
    /// long over a request, is closed to make room, or the server stops between two
    /// requests.
    async fn run(self, mut stream: impl AsyncRead + AsyncWrite + Unpin) {
        let Connection {
            peer,
            gateway,
            config,
            options,
            stopped,
            slot,
        } = self;
        let conn = slot.conn();
        let mut reader = RequestReader::new(config.limits);
        let mut buf = vec![0u8; READ_CHUNK];
        let mut reply_bytes = Vec::with_capacity(64);
        // When the request being read must be whole; none between requests.
        let mut deadline: Option<Instant> = None;
        // One timer and one waiter on each of the two notifiers for the
        // connection's whole life, rather than new ones at every request: each
        // of those is a lock taken twice on a structure every connection shares
        // (the timer wheel's shard, the stop and eviction notifiers' lists).
        // Pushing a registered timer later takes no lock: the wheel sees the
        // new deadline when the old one comes.
        let timer = tokio::time::sleep_until(Instant::now() + options.idle_timeout);
        let mut watching = stopped.clone();
        let stop = async move {
            let _ = watching.wait_for(|s| *s).await;
        };
        let evicted = conn.evicted();
        tokio::pin!(timer, stop, evicted);
        loop {
            // Stop only between requests; a request begun is read to its end (or
            // until a timeout), then answered.
            let idle = reader.is_idle();
            if idle && *stopped.borrow() {
                return;
            }
            let idle_until = Instant::now() + options.idle_timeout;
            let until = deadline.map_or(idle_until, |d| d.min(idle_until));
            timer.as_mut().reset(until);
            // Biased: the read first, as the select without timers polled it,
            // and no random draw per request.
            let read = tokio::select! {
                biased;
                read = stream.read(&mut buf) => Ok(read),
                () = &mut timer => Err(()),
                () = &mut stop, if idle => return,
                () = &mut evicted => {
                    debug!(%peer, "closed to make room for a new connection");
                    return;
                }
            };
            let n = match read {
                Ok(Ok(0)) => {
                    if !reader.is_idle() {
                        debug!(%peer, "peer closed in the middle of a request");
                    }
                    return;
                }
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "read failed; closing");
                    return;
                }
                Err(()) if deadline.is_some_and(|d| d <= until) => {
                    debug!(%peer, timeout = ?options.request_timeout,
                        "request not whole within the request timeout; closing");
                    return;
                }
                Err(()) => {
                    debug!(%peer, timeout = ?options.idle_timeout, "idle timeout; closing");
                    return;
                }
            };
            let mut input = buf.get(..n).unwrap_or_default();
            loop {
                match reader.decode(&mut input) {
                    Ok(Some(request)) => {
                        conn.answering();
                        deadline = None;
                        let reply = answer(&gateway, &config, &request, &peer).await;
                        reply_bytes.clear();
                        reply.encode_into(&mut reply_bytes);
                        let written = tokio::time::timeout(
                            options.idle_timeout,
                            stream.write_all(&reply_bytes),
                        )
                        .await;
                        if !matches!(written, Ok(Ok(()))) {
                            debug!(%peer, "cannot write the reply; closing");
                            return;
                        }
                        conn.answered();
                        if *stopped.borrow() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(%peer, error = %e, "protocol error; closing the connection");
                        return;
                    }
                }
            }
            if !reader.is_idle() && deadline.is_none() {
                deadline = Some(Instant::now() + options.request_timeout);
                conn.begin();
            }
        }
    }
}

/// Used for `resets_at` when a decision carries no usage: [`Actions::reply_for_exhausted`]
/// leaves out a reset time that cannot be written on the reply line.
///
/// [`Actions::reply_for_exhausted`]: crate::postfix::Actions::reply_for_exhausted
const NO_RESET_TIME: &str = "\n";

/// The reply to one request. Never fails: every failure has a configured reply.
async fn answer(
    gateway: &Gateway,
    config: &PostfixConfig,
    request: &PolicyRequest,
    peer: &str,
) -> Reply {
    let actions = &config.actions;
    // A `&str` field is logged with `Debug`, quoted and escaped; a `%` one is
    // written as is, so every `%` field from outside goes through `Escaped`.
    let state = request.protocol_state().unwrap_or("");
    let parsed = ProtocolState::parse(state);
    let path = Path {
        server_port: request.get("server_port").and_then(|p| p.parse().ok()),
        authenticated: request
            .sasl_username()
            .is_some_and(|u| !u.trim().is_empty()),
    };
    if let Some(never) = gateway.postfix_states().count(parsed, path) {
        let asked = never.requests;
        error!(
            requests = asked,
            "Postfix has asked about mail {asked} times (MAIL, RCPT, DATA, BDAT) {path} and \
             never at END-OF-MESSAGE, where creditgate charges: none of that mail was charged. \
             Add check_policy_service to smtpd_end_of_data_restrictions, ahead of any permit, \
             for every smtpd service that relays (README, \"Postfix\")"
        );
    }
    // A reply that an action set to let mail through gives: at the end of a
    // message, a `DUNNO` sends it uncharged, which is counted and said.
    let at_the_end = parsed == Some(ProtocolState::EndOfMessage);
    let let_through = |why: Uncharged, reply: Reply| -> Reply {
        if at_the_end && reply.action() == "DUNNO" {
            let recipients = request.recipient_count().ok();
            if let Some(messages) = gateway.postfix_states().uncharged(why, recipients) {
                warn!(
                    messages,
                    reason = why.name(),
                    "{}",
                    uncharged_warning(why, messages)
                );
            }
        }
        reply
    };
    let internal_error =
        || let_through(Uncharged::InternalError, actions.reply_for_internal_error());
    let decide = match config.map_at(request, parsed) {
        Ok(Mapped::Ignore) => return Reply::dunno(),
        Ok(Mapped::Check { account, cost }) => Request::CheckEmail { account, cost },
        Ok(Mapped::Charge {
            account,
            recipients,
            instance,
        }) => match Origin::Postfix.message_id(&instance) {
            Ok(message_id) => Request::ChargeEmail {
                account,
                cost: recipients,
                message_id: Some(message_id),
            },
            Err(e) => {
                warn!(%peer, state, error = %e, "cannot map the request; answering as an internal error");
                return internal_error();
            }
        },
        Err(MappingError::NoAccount { from }) => {
            let reply = actions.reply_for_no_account();
            info!(%peer, from, state, reason = "no_account", action = reply.action(),
                "no account named");
            return let_through(Uncharged::NoAccount, reply);
        }
        Err(MappingError::UnknownName { from, value, why }) => {
            let reply = actions.reply_for_unknown_account();
            info!(%peer, account = %Escaped(&value), from, state, reason = "unknown_account",
                why = %Escaped(&why), action = reply.action(), "refused");
            return let_through(Uncharged::UnknownAccount, reply);
        }
        Err(e) => {
            warn!(%peer, state, error = %Escaped(&e.to_string()),
                "cannot map the request; answering as an internal error");
            return internal_error();
        }
    };
    let account = decide.account().to_owned();
    let decision = match gateway.decide(decide, now()).await {
        Ok(decision) => decision,
        Err(e) => {
            warn!(%peer, %account, state, error = %e,
                "no decision; answering as an internal error");
            return internal_error();
        }
    };
    let Some(reason) = decision.denied else {
        // Shadow refusals are logged and counted by the gateway; the answer is
        // the allowed one.
        return Reply::dunno();
    };
    let reply = refusal(actions, &decision, reason);
    match reason {
        Reason::IdempotencyKeyReused => {
            warn!(%peer, %account, state, reason = reason_code(reason), action = reply.action(),
                "an instance already charged came with another recipient count");
        }
        Reason::EmailCreditsExhausted | Reason::UnknownAccount | Reason::NoRecipients => {}
        other => {
            warn!(%peer, %account, state, reason = reason_code(other), action = reply.action(),
                "refused for a reason with no action of its own");
        }
    }
    info!(%peer, %account, state, reason = reason_code(reason),
        action = reply.action(), "refused");
    match reason {
        Reason::UnknownAccount => let_through(Uncharged::UnknownAccount, reply),
        Reason::IdempotencyKeyReused => let_through(Uncharged::IdempotencyKeyReused, reply),
        _ => reply,
    }
}

/// What to tell the operator when `messages` messages have been let through
/// uncharged for `why`.
fn uncharged_warning(why: Uncharged, messages: u64) -> String {
    let (named, setting) = match why {
        Uncharged::NoAccount => (
            "naming no account (no SMTP AUTH, or the null sender)",
            "no_account = \"fail_open\"",
        ),
        Uncharged::UnknownAccount => (
            "naming an account the ledger does not know",
            "unknown_account = \"fail_open\"",
        ),
        Uncharged::InternalError => (
            "while the policy could not decide",
            "internal_error = \"fail_open\"",
        ),
        Uncharged::IdempotencyKeyReused => (
            "reusing an instance charged for another recipient count",
            "idempotency_key_reused = \"dunno\"",
        ),
    };
    let hint = match why {
        Uncharged::NoAccount => {
            ": a client that relays without authenticating (permit_mynetworks) sends unmetered; \
             set it to \"fail_closed\" if every sender authenticates"
        }
        _ => "",
    };
    format!(
        "{messages} message(s) left uncharged at END-OF-MESSAGE {named}, as [postfix.actions] \
         {setting} lets them{hint} (creditgate_postfix_uncharged_messages_total counts them)"
    )
}

/// The reply to the policy's refusal of `decision` for `reason`.
///
/// A refusal is a decision, not an outage: one without an action of its own
/// (an account on a plan the policy no longer has, after a forced reload) is
/// deferred, never given `internal_error`'s action, which an operator may set
/// to let mail through when the policy cannot decide.
fn refusal(actions: &Actions, decision: &Decision, reason: Reason) -> Reply {
    match reason {
        Reason::EmailCreditsExhausted => {
            let resets_at = decision
                .usage
                .as_ref()
                .map(|u| format_instant(u.email_credits.resets_at));
            actions.reply_for_exhausted(
                resets_at.as_deref().unwrap_or(NO_RESET_TIME),
                decision.upgrade_to.as_deref(),
            )
        }
        Reason::UnknownAccount => actions.reply_for_unknown_account(),
        Reason::NoRecipients => actions.reply_for_no_recipients(),
        Reason::IdempotencyKeyReused => actions.reply_for_idempotency_key_reused(),
        other => actions.reply_for_refusal(reason_code(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postfix::FailureAction;

    /// Trust audit: an account stranded on a plan the policy no longer has was
    /// answered with `internal_error`'s action, `DUNNO` where an operator lets
    /// mail through during outages, and sent uncharged. A refusal is deferred
    /// whatever the failure actions say.
    #[test]
    fn a_refusal_without_an_action_of_its_own_defers_even_when_failures_fail_open() {
        let open = Actions {
            unknown_account: FailureAction::FailOpen,
            no_account: FailureAction::FailOpen,
            internal_error: FailureAction::FailOpen,
            ..Actions::default()
        };
        let stranded = Decision {
            denied: Some(Reason::UnknownPlan),
            charged: 0,
            freed: 0,
            usage: None,
            alerts: Vec::new(),
            upgrade_to: None,
            shadow: None,
        };
        for actions in [Actions::default(), open] {
            assert_eq!(
                refusal(&actions, &stranded, Reason::UnknownPlan).action(),
                "DEFER 4.7.1 Refused by the credit policy: unknown_plan"
            );
            assert_eq!(
                refusal(&actions, &stranded, Reason::InvalidEmail).action(),
                "DEFER 4.7.1 Refused by the credit policy: invalid_email"
            );
        }
    }
}
