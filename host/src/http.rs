//! The HTTP JSON API: the decisions the Postfix front end and the CLI make, for
//! sending platforms and for gateways that speak HTTP rather than Postfix's
//! policy protocol.
//!
//! A thin adapter, like [`crate::serve`]: each handler turns a request into a
//! [`Request`], asks the [`Gateway`] (whose answer is durable when it arrives) and
//! renders the decision in the JSON shapes replay and the CLI print. Every error
//! is a JSON object with a stable `code` and the matching status. [`routes`] lists
//! the routes; `host/openapi.json` documents them, and a test keeps the two equal.
//!
//! Every request, the dashboard's included, passes [`guard`] first: a `Host` that
//! is not this server's (DNS rebinding), a state change from another origin
//! (cross-site requests from a browser), and a body that is not JSON are refused
//! before any handler runs. [`serve_http`] bounds connections as the Postfix
//! listener does ([`crate::slots`]): in number, per client, in idle time and in
//! the time one request may take.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::bindings::{
    AccountUsage, Decision, EmailKind, GuestError, LeadBatch, Reason, StateError,
};
use crate::gateway::{Gateway, GatewayError};
use crate::names::{Escaped, NameError, NameRules, escape, quote};
use crate::request::{Origin, Request};
use crate::runtime::DecideError;
use crate::serve::{DEFAULT_MAX_CONNECTIONS_PER_CLIENT, DEFAULT_REQUEST_TIMEOUT};
use crate::slots::{Conn, Slot, SlotLimits, Slots, accept_retrying};
use crate::store::{Preview, Store};
use crate::time::{format_instant, now, parse_instant, whole_second};
use crate::wire::{
    CreditsJson, LeadClass, LeadClassifier, Outcome, ShadowJson, UsageJson, reason_code,
};

/// Most addresses one `POST .../leads` takes: Smartlead's own limit per request,
/// and small enough that one batch holds the store's writer for milliseconds.
pub const MAX_LEADS_PER_REQUEST: usize = 1_000;

/// Largest request body by default. 1,000 addresses of up to 254 bytes fit with
/// room to spare; anything larger is refused before it is parsed.
pub const DEFAULT_MAX_BODY_BYTES: usize = 512 * 1024;

/// What a reload did: the version now in force and the new policy's warnings.
#[derive(Debug, Clone, Serialize)]
pub struct Reloaded {
    pub version: u64,
    pub warnings: Vec<String>,
}

/// Why a reload was refused; the version in force keeps serving.
#[derive(Debug, Clone)]
pub struct ReloadRefused {
    pub message: String,
    /// One line per problem, each naming its place (`file:line:column: ...`).
    pub diagnostics: Vec<String>,
}

/// Re-reads the policy (and component) and hands them to the gateway, forcing it
/// in when told to even if it lacks plans that accounts are on (see
/// [`crate::gateway::ReloadError::StrandsAccounts`]). Supplied by whoever knows
/// where they come from; runs on a blocking thread.
pub type Reloader = Arc<dyn Fn(bool) -> std::result::Result<Reloaded, ReloadRefused> + Send + Sync>;

/// The query of `POST /v1/admin/reload`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadQuery {
    /// Load a policy that lacks plans accounts are on; they stay visible, denied
    /// `unknown_plan`, until moved.
    #[serde(default)]
    force: bool,
}

/// Settings of the HTTP front end.
#[derive(Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// Largest request body; a larger one is refused (413) unread.
    pub max_body_bytes: usize,
    /// Most connections open at once; past it, a new connection closes the one
    /// that has gone longest without an answer ([`crate::slots`]).
    pub max_connections: usize,
    /// Most connections open at once from one client address.
    pub max_connections_per_client: usize,
    /// A connection that sends or takes nothing for this long is closed, and a
    /// request's head must arrive within it (hyper's header timeout).
    pub idle_timeout: Duration,
    /// How long one request (head and body) may take from its first byte to its
    /// last: a client that trickles bytes never trips the idle timeout.
    pub request_timeout: Duration,
    /// Names besides IP literals and `localhost` that requests may carry in
    /// `Host`, and whose origins may change state: the server's public names.
    pub allowed_hosts: Vec<String>,
    /// When set, the routes that change an account's terms or take leads away
    /// (subscription, plan, lead deletion) and the reload ([`ADMIN_ROUTES`])
    /// require `Authorization: Bearer <token>`. An empty token admits nobody.
    pub admin_token: Option<Arc<str>>,
    /// How account and campaign names are normalised (see [`crate::names`]).
    pub names: NameRules,
}

impl std::fmt::Debug for HttpOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpOptions")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_client",
                &self.max_connections_per_client,
            )
            .field("idle_timeout", &self.idle_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "(set)"))
            .field("names", &self.names)
            .finish()
    }
}

/// Most HTTP connections open at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1_024;

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            idle_timeout: Duration::from_secs(60),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            allowed_hosts: Vec::new(),
            admin_token: None,
            names: NameRules::default(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct App {
    gateway: Arc<Gateway>,
    reload: Reloader,
    admin_token: Option<Arc<str>>,
    names: NameRules,
}

impl App {
    /// An account name from a path or a body, normalised, or a 422 naming it.
    fn account(&self, raw: &str) -> Result<String> {
        self.names.account(raw).map_err(ApiError::name)
    }

    /// A campaign name from a path, normalised, or a 422 naming it.
    fn campaign(&self, raw: &str) -> Result<String> {
        self.names.campaign(raw).map_err(ApiError::name)
    }
}

/// Every route the API serves, with its handler.
fn table() -> [(&'static str, &'static str, MethodRouter<App>); 10] {
    [
        (
            "post",
            "/v1/accounts/{account}/subscription",
            post(subscribe),
        ),
        ("put", "/v1/accounts/{account}/plan", put(change_plan)),
        ("get", "/v1/accounts/{account}/usage", get(usage)),
        (
            "post",
            "/v1/accounts/{account}/campaigns/{campaign}/leads",
            post(add_leads),
        ),
        (
            "delete",
            "/v1/accounts/{account}/campaigns/{campaign}/leads",
            delete(delete_campaign_leads),
        ),
        (
            "delete",
            "/v1/accounts/{account}/campaigns/{campaign}/leads/{email}",
            delete(delete_lead),
        ),
        ("post", "/v1/decide/email", post(decide_email)),
        ("get", "/healthz", get(healthz)),
        ("post", "/v1/admin/reload", post(reload)),
        ("get", "/metrics", get(metrics)),
    ]
}

/// The routes that need the admin token when one is configured, as
/// `(method, path)`: those whose handler takes the [`Admin`] extractor.
pub const ADMIN_ROUTES: [(&str, &str); 5] = [
    ("post", "/v1/accounts/{account}/subscription"),
    ("put", "/v1/accounts/{account}/plan"),
    (
        "delete",
        "/v1/accounts/{account}/campaigns/{campaign}/leads",
    ),
    (
        "delete",
        "/v1/accounts/{account}/campaigns/{campaign}/leads/{email}",
    ),
    ("post", "/v1/admin/reload"),
];

/// Every route the API serves, as `(method, path)`; `host/openapi.json` documents
/// exactly these.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    table()
        .into_iter()
        .map(|(m, p, _)| (m, p))
        .chain(crate::api_read::routes())
        .collect()
}

/// The API's routes over `gateway`.
pub fn router(gateway: Arc<Gateway>, reload: Reloader, options: &HttpOptions) -> Router {
    let mut router = Router::new();
    // Two methods on one path merge into one route.
    for (_, path, handler) in table() {
        router = router.route(path, handler);
    }
    // Pages and listings share one cap on bulk reads (see `api_read::Bulk`).
    let bulk = crate::api_read::Bulk::new(gateway.clone()).with_names(options.names);
    router
        .merge(crate::dashboard::router(bulk.clone()))
        .merge(crate::api_read::router(bulk))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(options.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(Guard::new(&options.allowed_hosts)),
            guard,
        ))
        .with_state(App {
            gateway,
            reload,
            admin_token: options.admin_token.clone(),
            names: options.names,
        })
}

/// Serves `router` on `listener` until `shutdown` completes, then finishes the
/// requests in flight. Connections are bounded in number (per listener and per
/// client address, making room as [`crate::slots`] says), in idle time, and in
/// the time one request may take.
pub async fn serve_http(
    listener: TcpListener,
    router: Router,
    options: &HttpOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Slots::new(
        SlotLimits {
            max_connections: options.max_connections,
            max_per_client: options.max_connections_per_client,
        },
        "http",
    );
    // hyper's own server rather than `axum::serve`, for its header timeout (which
    // counts from when a connection is ready for a head, idle time included) and
    // for a say in which connection is closed when.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.idle_timeout);
    let service = TowerToHyperService::new(router);
    let timeouts = Timeouts {
        idle: options.idle_timeout,
        request: options.request_timeout,
    };
    let (stop, stopped) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = accept_retrying(|| listener.accept(), "an http connection") => accepted,
            // Reap finished connections so that the set does not grow forever.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = slots.admit(Some(peer.ip())) => slot,
        };
        let Some(slot) = slot else {
            debug!(%peer, "refused: every connection of this client is being answered");
            continue;
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            slot,
            builder.clone(),
            service.clone(),
            stopped.clone(),
            timeouts,
            options.max_body_bytes,
        ));
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

#[derive(Debug, Clone, Copy)]
struct Timeouts {
    idle: Duration,
    request: Duration,
}

/// Serves one connection until it closes, times out, is closed to make room, or
/// the server stops (after the request in flight, if any).
async fn connection(
    stream: TcpStream,
    slot: Slot,
    builder: hyper::server::conn::http1::Builder,
    service: TowerToHyperService<Router>,
    mut stopped: watch::Receiver<bool>,
    timeouts: Timeouts,
    body_limit: usize,
) {
    let conn = slot.conn().clone();
    let io = TokioIo::new(Watched::new(stream, timeouts, conn.clone()));
    let served = builder.serve_connection(
        io,
        Tracked {
            service,
            conn: conn.clone(),
            body_limit,
        },
    );
    tokio::pin!(served);
    let (mut stopping, mut evicted) = (false, false);
    loop {
        tokio::select! {
            result = served.as_mut() => {
                if let Err(e) = result {
                    debug!(error = %e, "http connection closed");
                }
                break;
            }
            _ = stopped.wait_for(|s| *s), if !stopping => {
                stopping = true;
                served.as_mut().graceful_shutdown();
            }
            () = conn.evicted(), if !evicted => {
                evicted = true;
                // A request being answered is finished first; any other
                // connection is closed at once.
                if !conn.is_answering() {
                    debug!("http connection closed to make room for a new one");
                    break;
                }
                served.as_mut().graceful_shutdown();
            }
        }
    }
    drop(slot);
}

/// The router as hyper calls it, telling the connection's slot when a request
/// has been read whole and when it has been answered.
///
/// It also reads what the handler left of the request's body (up to the body
/// limit) before the answer goes out. A refusal decided from the head alone (no
/// admin token, a cross-site write, a path naming nothing valid) would
/// otherwise be sent while the client is still sending the body, and hyper,
/// finding the body unread, closes the connection: the rest of the body then
/// meets a closed socket, the kernel resets the connection, and the client
/// loses the answer (and the connection it would have reused). Reading it costs
/// no more than accepting the body would have; a client that sends more than
/// the limit, or too slowly (the request timeout), is still cut off.
#[derive(Clone)]
struct Tracked {
    service: TowerToHyperService<Router>,
    conn: Arc<Conn>,
    body_limit: usize,
}

impl hyper::service::Service<axum::http::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = std::result::Result<Response, Self::Error>> + Send>>;

    fn call(&self, request: axum::http::Request<Incoming>) -> Self::Future {
        let (conn, body_limit) = (self.conn.clone(), self.body_limit);
        let (parts, body) = request.into_parts();
        if body.is_end_stream() {
            conn.answering();
        }
        let body = Arc::new(Mutex::new(body));
        let request = axum::http::Request::from_parts(
            parts,
            axum::body::Body::new(BodyEnd {
                body: body.clone(),
                conn: conn.clone(),
            }),
        );
        let answer = self.service.call(request);
        Box::pin(async move {
            let response = answer.await;
            read_rest(&body, body_limit).await;
            conn.answered();
            response
        })
    }
}

/// Reads and drops what is left of `body`, until its end or `limit` bytes.
async fn read_rest(body: &Mutex<Incoming>, limit: usize) {
    let mut left = limit;
    std::future::poll_fn(|cx| {
        let mut body = body.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if body.is_end_stream() {
                return Poll::Ready(());
            }
            match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let read = frame.data_ref().map_or(0, Bytes::len);
                    if read >= left {
                        return Poll::Ready(());
                    }
                    left -= read;
                }
                Poll::Ready(_) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
}

/// A request body that marks its connection as answering once read to its end.
/// The body itself is shared with [`Tracked`], which reads what the handler left.
struct BodyEnd {
    body: Arc<Mutex<Incoming>>,
    conn: Arc<Conn>,
}

impl hyper::body::Body for BodyEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, hyper::Error>>> {
        let mut body = self.body.lock().unwrap_or_else(PoisonError::into_inner);
        let polled = Pin::new(&mut *body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || body.is_end_stream() {
            self.conn.answering();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .size_hint()
    }
}

/// A connection whose reads fail with `TimedOut` once nothing has moved either
/// way for the idle timeout, or once a request begun has not been read whole
/// within the request timeout (hyper then closes it).
struct Watched {
    stream: TcpStream,
    timeouts: Timeouts,
    conn: Arc<Conn>,
    /// When bytes last moved either way.
    moved: tokio::time::Instant,
    /// When the request being read began; `None` between requests.
    request_began: Option<tokio::time::Instant>,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl Watched {
    fn new(stream: TcpStream, timeouts: Timeouts, conn: Arc<Conn>) -> Self {
        let now = tokio::time::Instant::now();
        Watched {
            stream,
            timeouts,
            conn,
            moved: now,
            request_began: None,
            deadline: Box::pin(tokio::time::sleep_until(now + timeouts.idle)),
        }
    }

    /// When the connection times out, and whether for the request timeout.
    fn until(&self) -> (tokio::time::Instant, bool) {
        let idle = self.moved + self.timeouts.idle;
        match self.request_began {
            Some(began) if began + self.timeouts.request < idle => {
                (began + self.timeouts.request, true)
            }
            _ => (idle, false),
        }
    }

    fn moved(&mut self) {
        self.moved = tokio::time::Instant::now();
        let (until, _) = self.until();
        self.deadline.as_mut().reset(until);
    }

    /// A write finished (`written` is ready): the connection moved.
    fn wrote<T>(&mut self, written: Poll<T>) -> Poll<T> {
        if written.is_ready() {
            self.moved();
        }
        written
    }

    /// Bytes arrived: a request has begun unless one is already being read or
    /// answered.
    fn read_some(&mut self) {
        if self.conn.is_answering() {
            self.request_began = None;
        } else if self.request_began.is_none() {
            self.request_began = Some(tokio::time::Instant::now());
            self.conn.begin();
        }
        self.moved();
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        // A request answered since the last read ends the one that began.
        if this.request_began.is_some() && !this.conn.is_reading() {
            this.request_began = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.read_some();
                } else {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let (until, request) = this.until();
                if this.deadline.deadline() != until {
                    this.deadline.as_mut().reset(until);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        if request {
                            "request not whole within the request timeout"
                        } else {
                            "idle connection"
                        },
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.wrote(written)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.wrote(written)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

// ---- the guard every request passes ------------------------------------------

/// What [`guard`] checks requests against.
#[derive(Debug)]
struct Guard {
    /// The configured public names, lowercase, without a trailing dot.
    allowed_hosts: HashSet<String>,
}

impl Guard {
    fn new(allowed_hosts: &[String]) -> Self {
        Guard {
            allowed_hosts: allowed_hosts.iter().map(|h| normal_host(h)).collect(),
        }
    }

    /// Whether `host` (no port) names this server. An IP literal always does: a
    /// page cannot rebind an address it did not name, and an operator may reach
    /// the API by any of the machine's addresses. Names must be `localhost` or
    /// configured: any other name may be one an attacker resolves to us.
    fn names_us(&self, host: &str) -> bool {
        let host = normal_host(host);
        let literal = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
        literal.unwrap_or(&host).parse::<std::net::IpAddr>().is_ok()
            || host == "localhost"
            || self.allowed_hosts.contains(&host)
    }
}

fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Refuses, before any handler runs: a `Host` that does not name this server
/// (DNS rebinding: a page on a name its owner resolves to 127.0.0.1 would be
/// same-origin with the API); a state change (any method but GET and HEAD) from
/// another origin, as a browser marks it with `Origin` or `Sec-Fetch-Site`; and
/// a body that is not `application/json`, which no HTML form can send and no
/// cross-origin page can without a preflight this server never grants.
async fn guard(
    State(guard): State<Arc<Guard>>,
    request: axum::extract::Request,
    next: Next,
) -> Response {
    match check(&guard, request.method(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

fn check(guard: &Guard, method: &Method, headers: &HeaderMap) -> Result<()> {
    let text = |name| headers.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    // A request without `Host` (HTTP/1.0, a test calling the router) cannot be a
    // browser's: browsers always send one.
    let host = text(header::HOST);
    if let Some(host) = host {
        let name = host
            .parse::<axum::http::uri::Authority>()
            .ok()
            .map(|a| a.host().to_owned());
        if !name.is_some_and(|name| guard.names_us(&name)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                format!(
                    "Host {host:?} does not name this server: use an IP address or \
                     localhost, or add the name to allowed_hosts"
                ),
            ));
        }
    }
    if method == Method::GET || method == Method::HEAD {
        return Ok(());
    }
    let cross = |why: String| {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            format!("{why}: state changes are taken only from this server's own origin"),
        ))
    };
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
        && site != "none"
    {
        return cross(format!("Sec-Fetch-Site: {site:?}"));
    }
    if let Some(origin) = text(header::ORIGIN) {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same = authority.is_some_and(|a| {
            host.is_some_and(|h| h.eq_ignore_ascii_case(a))
                || a.parse::<axum::http::uri::Authority>()
                    .is_ok_and(|a| guard.allowed_hosts.contains(&normal_host(a.host())))
        });
        if !same {
            return cross(format!("Origin {origin:?}"));
        }
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || text(header::CONTENT_LENGTH).is_some_and(|n| n.trim() != "0");
    let content_type = text(header::CONTENT_TYPE);
    if has_body || content_type.is_some() {
        let json = content_type.is_some_and(|t| {
            t.split(';')
                .next()
                .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
        });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, with Content-Type: application/json",
            ));
        }
    }
    Ok(())
}

// ---- requests ----------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubscribeBody {
    plan: String,
    /// RFC 3339; default now.
    anchor: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanBody {
    plan: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LeadsBody {
    emails: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailBody {
    account: String,
    to: Recipients,
    #[serde(default)]
    kind: Kind,
    message_id: Option<String>,
}

/// One address or a list of them.
#[derive(Debug)]
enum Recipients {
    One(String),
    Many(Vec<String>),
}

// By hand rather than `#[serde(untagged)]`, whose only error is "data did not
// match any variant": this one names what was found and what is accepted.
impl<'de> Deserialize<'de> for Recipients {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Recipients;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an email address (a string) or a list of email addresses")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Recipients, E> {
                Ok(Recipients::One(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(
                self,
                v: String,
            ) -> std::result::Result<Recipients, E> {
                Ok(Recipients::One(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Recipients, A::Error> {
                let mut all = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(address) = seq.next_element::<Address>()? {
                    if all.len() == MAX_RECIPIENTS {
                        return Err(serde::de::Error::custom(format_args!(
                            "more than {MAX_RECIPIENTS} recipients: one email decision is \
                             for one message (Postfix's smtpd_recipient_limit is 1000 too)"
                        )));
                    }
                    all.push(address.0);
                }
                Ok(Recipients::Many(all))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Most recipients one email decision takes: a message's, as Postfix bounds
/// them (`smtpd_recipient_limit`). A list of thousands would hold the write
/// lane that every gateway's charges go through for tens of milliseconds.
pub const MAX_RECIPIENTS: usize = 1000;

/// One address of a list: a string, or an error that says so.
struct Address(String);

impl<'de> Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Address;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an email address (a string)")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Address, E> {
                Ok(Address(v.to_owned()))
            }
        }
        d.deserialize_str(Visitor)
    }
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    #[default]
    First,
    FollowUp,
    Reply,
}

impl From<Kind> for EmailKind {
    fn from(kind: Kind) -> Self {
        match kind {
            Kind::First => EmailKind::First,
            Kind::FollowUp => EmailKind::FollowUp,
            Kind::Reply => EmailKind::Reply,
        }
    }
}

// ---- responses ---------------------------------------------------------------

/// An account's plan, anchor and usage: the body of the account routes.
#[derive(Debug, Serialize)]
pub(crate) struct AccountJson<'a> {
    account: &'a str,
    plan: &'a str,
    /// Present (true) only when the policy in force lacks the account's plan: it
    /// is denied `unknown_plan` until moved, and its limits read 0.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    plan_missing: bool,
    anchor: String,
    lead_credits: CreditsJson,
    email_credits: EmailCreditsJson,
}

/// Email credits as an account's views show them: as decisions report them,
/// and when they run out at this cycle's pace (`null`: not before the reset,
/// nothing sent, or unlimited; the component computes it).
#[derive(Debug, Serialize)]
struct EmailCreditsJson {
    #[serde(flatten)]
    credits: CreditsJson,
    projected_exhaustion: Option<String>,
}

impl<'a> AccountJson<'a> {
    pub(crate) fn new(account: &'a str, usage: &'a AccountUsage) -> Self {
        let credits = UsageJson::from(usage);
        AccountJson {
            account,
            plan: &usage.plan,
            plan_missing: false,
            anchor: format_instant(usage.anchor),
            lead_credits: credits.lead_credits,
            email_credits: EmailCreditsJson {
                credits: credits.email_credits,
                projected_exhaustion: (usage.email_credits.projected_exhaustion)
                    .map(format_instant),
            },
        }
    }

    /// A listed account, flagged when the policy in force lacks its plan.
    pub(crate) fn listed(account: &'a str, usage: &'a AccountUsage, plan_missing: bool) -> Self {
        AccountJson {
            plan_missing,
            ..AccountJson::new(account, usage)
        }
    }

    /// The account of a usage decision, stranded or not (see [`AccountJson::plan_missing`]).
    fn of_usage(app: &App, account: &'a str, decision: &'a Decision) -> Result<Self> {
        match (decision.denied, &decision.usage) {
            (Some(Reason::UnknownPlan), Some(usage)) => Ok(AccountJson {
                plan_missing: true,
                ..AccountJson::new(account, usage)
            }),
            _ => Ok(AccountJson::new(
                account,
                allowed(app, account, None, decision)?,
            )),
        }
    }
}

/// A lead batch's report: every address counted in exactly one of `uploaded`,
/// `already_in_campaign`, `in_other_campaign`, `duplicates_in_request`, `invalid`
/// and `credits_exhausted`, as an import's report counts rows.
#[derive(Debug, Default, Serialize)]
struct LeadsReport<'a> {
    account: &'a str,
    campaign: &'a str,
    total: u64,
    uploaded: u64,
    already_in_campaign: u64,
    in_other_campaign: u64,
    duplicates_in_request: u64,
    invalid: u64,
    credits_exhausted: u64,
    /// One per address, in the order given.
    results: Vec<LeadJson<'a>>,
    lead_credits: Option<CreditsJson>,
    /// When addresses were refused for lead credits: the plan that would have
    /// taken them all, or null when none would.
    #[serde(skip_serializing_if = "Option::is_none")]
    upgrade_to: Option<Option<String>>,
    /// When the account's plan is in shadow mode and enforcement would have
    /// refused addresses that were taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<ShadowJson>,
}

#[derive(Debug, Serialize)]
struct LeadJson<'a> {
    email: &'a str,
    outcome: &'static str,
}

impl<'a> LeadsReport<'a> {
    fn new(account: &'a str, campaign: &'a str, emails: &'a [String], batch: &LeadBatch) -> Self {
        let mut report = LeadsReport {
            account,
            campaign,
            total: emails.len() as u64,
            lead_credits: batch
                .usage
                .as_ref()
                .map(|u| UsageJson::from(u).lead_credits),
            shadow: batch.shadow.as_ref().map(ShadowJson::from),
            ..LeadsReport::default()
        };
        let mut classifier = LeadClassifier::default();
        for (email, result) in emails.iter().zip(&batch.results) {
            let (counter, outcome) = match classifier.classify(result) {
                LeadClass::Uploaded => (&mut report.uploaded, "uploaded"),
                LeadClass::InvalidEmail => (&mut report.invalid, "invalid_email"),
                LeadClass::Repeat => (&mut report.duplicates_in_request, "duplicate_in_request"),
                LeadClass::AlreadyInCampaign => {
                    (&mut report.already_in_campaign, "already_in_campaign")
                }
                LeadClass::InOtherCampaign => (&mut report.in_other_campaign, "in_other_campaign"),
                LeadClass::CreditsExhausted => {
                    (&mut report.credits_exhausted, "lead_credits_exhausted")
                }
            };
            *counter += 1;
            report.results.push(LeadJson { email, outcome });
        }
        if report.credits_exhausted > 0 {
            report.upgrade_to = Some(batch.upgrade_to.clone());
        }
        report
    }
}

// ---- handlers ----------------------------------------------------------------

type Result<T> = std::result::Result<T, ApiError>;

async fn subscribe(
    State(app): State<App>,
    _: Admin,
    Path(account): Path<String>,
    Body(body): Body<SubscribeBody>,
) -> Result<Response> {
    let account = app.account(&account)?;
    let anchor = match &body.anchor {
        Some(text) => parse_instant(text)
            .map_err(|e| ApiError::unprocessable("invalid_anchor", format!("anchor: {e}")))?,
        None => whole_second(now()),
    };
    let request = Request::Subscribe {
        account: account.clone(),
        plan: body.plan.clone(),
        anchor: Some(anchor),
    };
    let decision = decide(&app, request, now()).await?;
    let usage = allowed(&app, &account, Some(&body.plan), &decision)?;
    info!(%account, plan = %Escaped(&usage.plan), "subscribed");
    Ok((
        StatusCode::CREATED,
        json(&AccountJson::new(&account, usage)),
    )
        .into_response())
}

async fn change_plan(
    State(app): State<App>,
    _: Admin,
    Path(account): Path<String>,
    Body(body): Body<PlanBody>,
) -> Result<Response> {
    let account = app.account(&account)?;
    let request = Request::ChangePlan {
        account: account.clone(),
        plan: body.plan.clone(),
    };
    let decision = decide(&app, request, now()).await?;
    let usage = allowed(&app, &account, Some(&body.plan), &decision)?;
    info!(%account, plan = %Escaped(&usage.plan), "plan changed");
    Ok(json(&AccountJson::new(&account, usage)))
}

async fn usage(State(app): State<App>, Path(account): Path<String>) -> Result<Response> {
    let account = app.account(&account)?;
    let request = Request::Usage {
        account: account.clone(),
    };
    let decision = decide(&app, request, now()).await?;
    Ok(json(&AccountJson::of_usage(&app, &account, &decision)?))
}

async fn add_leads(
    State(app): State<App>,
    Path((account, campaign)): Path<(String, String)>,
    Body(body): Body<LeadsBody>,
) -> Result<Response> {
    let account = app.account(&account)?;
    let campaign = app.campaign(&campaign)?;
    if body.emails.len() > MAX_LEADS_PER_REQUEST {
        return Err(ApiError::unprocessable(
            "too_many_emails",
            format!(
                "emails: {} addresses; at most {MAX_LEADS_PER_REQUEST} per request",
                body.emails.len()
            ),
        ));
    }
    let batch = app
        .gateway
        .add_leads(
            account.clone(),
            campaign.clone(),
            body.emails.clone(),
            now(),
        )
        .await
        .map_err(|e| ApiError::gateway(&account, e))?;
    if let Some(reason) = batch.denied {
        return Err(ApiError::denied(&app, &account, None, reason));
    }
    if batch.results.len() != body.emails.len() {
        return Err(ApiError::internal(format!(
            "the policy answered {} results for {} addresses",
            batch.results.len(),
            body.emails.len()
        )));
    }
    Ok(json(&LeadsReport::new(
        &account,
        &campaign,
        &body.emails,
        &batch,
    )))
}

async fn delete_lead(
    State(app): State<App>,
    _: Admin,
    Path((account, campaign, email)): Path<(String, String, String)>,
    query: std::result::Result<axum::extract::Query<DeleteQuery>, QueryRejection>,
) -> Result<Response> {
    let query = DeleteQuery::of(query)?;
    let account = app.account(&account)?;
    let request = Request::DeleteLead {
        account: account.clone(),
        campaign: app.campaign(&campaign)?,
        email: email.clone(),
    };
    let decision = query.decide(&app, request).await?;
    if decision.denied == Some(Reason::InvalidEmail) {
        let why = invalid_email(&app, std::slice::from_ref(&email)).await;
        return Err(ApiError::unprocessable(
            "invalid_email",
            format!("email{why}"),
        ));
    }
    allowed(&app, &account, None, &decision)?;
    Ok(json(&Deleted::of(&decision, query.dry_run)))
}

async fn delete_campaign_leads(
    State(app): State<App>,
    _: Admin,
    Path((account, campaign)): Path<(String, String)>,
    query: std::result::Result<axum::extract::Query<DeleteQuery>, QueryRejection>,
) -> Result<Response> {
    let query = DeleteQuery::of(query)?;
    let account = app.account(&account)?;
    let request = Request::DeleteCampaignLeads {
        account: account.clone(),
        campaign: app.campaign(&campaign)?,
    };
    let decision = query.decide(&app, request).await?;
    allowed(&app, &account, None, &decision)?;
    Ok(json(&Deleted::of(&decision, query.dry_run)))
}

/// The query the deletion routes take: `?dry_run=true` answers what the
/// deletion would do, `freed` included, and changes nothing.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    dry_run: bool,
}

impl DeleteQuery {
    fn of(
        query: std::result::Result<axum::extract::Query<DeleteQuery>, QueryRejection>,
    ) -> Result<Self> {
        query.map(|axum::extract::Query(q)| q).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "{}; a deletion takes `dry_run=true` or `dry_run=false`",
                    e.body_text()
                ),
            )
        })
    }

    /// Decides `request` for real, or as a dry run: the component decides it
    /// as usual, on a [`Preview`] of the store that answers removals without
    /// applying them, so that it reports exactly what the deletion would.
    async fn decide(&self, app: &App, request: Request) -> Result<Decision> {
        if !self.dry_run {
            return decide(app, request, now()).await;
        }
        let gateway = app.gateway.clone();
        let account = request.account().to_owned();
        let at = now();
        let decided = tokio::task::spawn_blocking(move || {
            let preview: Arc<dyn Store> = Arc::new(Preview::new(gateway.store().clone()));
            let decided = gateway
                .with_worker_over(Some(&preview), |worker, _| worker.decide(&request, at))
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        format!("cannot start a dry run: {e}"),
                    )
                })?;
            decided.map_err(|e| ApiError::gateway(&account, GatewayError::Decide(e)))
        })
        .await;
        decided.map_err(|e| ApiError::internal(format!("the dry run failed: {e}")))?
    }
}

/// A deletion's answer; a dry run's says so.
#[derive(Debug, Serialize)]
struct Deleted {
    #[serde(flatten)]
    outcome: Outcome,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    dry_run: bool,
}

impl Deleted {
    fn of(decision: &Decision, dry_run: bool) -> Self {
        Deleted {
            outcome: Outcome::from(decision),
            dry_run,
        }
    }
}

/// A decision, allowed or denied, is a 200: the denial is the answer asked for.
/// An `invalid_email` denial also says which recipient, and why, in `message`.
async fn decide_email(State(app): State<App>, Body(body): Body<EmailBody>) -> Result<Response> {
    let to = match body.to {
        Recipients::One(address) => vec![address],
        Recipients::Many(addresses) => addresses,
    };
    let account = app.account(&body.account)?;
    // In the API's own namespace of ids: a client cannot name a Postfix message.
    let message_id = (body.message_id.as_deref())
        .map(|id| Origin::Http.message_id(id))
        .transpose()
        .map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("message_id: {e}"),
            )
        })?;
    let request = Request::SendEmail {
        account: account.clone(),
        to: to.clone(),
        kind: body.kind.into(),
        message_id,
    };
    let decision = decide(&app, request, now()).await?;
    let mut message = None;
    if let Some(reason) = decision.denied {
        info!(%account, reason = reason_code(reason), "email refused");
        if reason == Reason::InvalidEmail {
            message = Some(format!("to{}", invalid_email(&app, &to).await));
        }
    }
    #[derive(Serialize)]
    struct Answer {
        #[serde(flatten)]
        outcome: Outcome,
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    }
    Ok(json(&Answer {
        outcome: Outcome::from(&decision),
        message,
    }))
}

/// Which of `emails` the policy refuses and why, as the end of a message:
/// `[1] "a@@b.co" is not a valid email address: ...` (`[i]` only for a list of
/// more than one). The policy's rule, asked of the policy.
async fn invalid_email(app: &App, emails: &[String]) -> String {
    let many = emails.len() > 1;
    let (gateway, list) = (app.gateway.clone(), emails.to_vec());
    match tokio::task::spawn_blocking(move || gateway.find_invalid_email(&list)).await {
        Ok(Some(problem)) => {
            let index = usize::try_from(problem.index).unwrap_or(usize::MAX);
            let address = emails.get(index).map_or("", String::as_str);
            let at = if many {
                format!("[{index}] ")
            } else {
                " ".to_owned()
            };
            format!(
                "{at}{} is not a valid email address: {}",
                quote(address),
                escape(&problem.problem)
            )
        }
        // The policy refused an address but will not say which: the message
        // still says what was refused.
        _ => ": not a valid email address".to_owned(),
    }
}

/// 200 while the store can serve decisions; 503 with the reason while it cannot
/// (on redb: after a failed commit, until the file reopens, which this tries).
async fn healthz(State(app): State<App>) -> Response {
    let store = app.gateway.store().clone();
    let health = tokio::task::spawn_blocking(move || store.health())
        .await
        .unwrap_or_else(|e| Err(crate::store::StoreError::Unavailable(e.to_string())));
    let policy_version = app.gateway.version();
    match health {
        Ok(()) => json(&serde_json::json!({
            "status": "ok",
            "policy_version": policy_version,
        })),
        Err(e) => {
            let body = json(&serde_json::json!({
                "status": "unhealthy",
                "reason": e.to_string(),
                "policy_version": policy_version,
            }));
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
    }
}

async fn reload(
    State(app): State<App>,
    _: Admin,
    query: std::result::Result<axum::extract::Query<ReloadQuery>, QueryRejection>,
) -> Result<Response> {
    let axum::extract::Query(ReloadQuery { force }) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!(
                "{}; the reload takes `force=true` or `force=false`",
                e.body_text()
            ),
        )
    })?;
    let reload = app.reload.clone();
    let outcome = tokio::task::spawn_blocking(move || reload(force))
        .await
        .map_err(|e| ApiError::internal(format!("the reload task failed: {e}")))?;
    match outcome {
        Ok(reloaded) => Ok(json(&reloaded)),
        Err(refused) => Err(ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "reload_refused",
            message: refused.message,
            diagnostics: refused.diagnostics,
        }),
    }
}

async fn metrics(State(app): State<App>) -> Response {
    let mut text = app.gateway.snapshot().prometheus();
    app.gateway.postfix_states().prometheus(&mut text);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn decide(app: &App, request: Request, at: i64) -> Result<Decision> {
    let account = request.account().to_owned();
    app.gateway
        .decide(request, at)
        .await
        .map_err(|e| ApiError::gateway(&account, e))
}

/// The usage of an allowed decision; a denial becomes its error. `plan` is the
/// plan the request named, if it named one.
fn allowed<'d>(
    app: &App,
    account: &str,
    plan: Option<&str>,
    decision: &'d Decision,
) -> Result<&'d AccountUsage> {
    if let Some(reason) = decision.denied {
        return Err(ApiError::denied(app, account, plan, reason));
    }
    decision.usage.as_ref().ok_or_else(|| {
        ApiError::internal(format!("the policy allowed {account:?} but gave no usage"))
    })
}

pub(crate) fn json<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => ApiError::internal(format!("cannot render the answer: {e}")).into_response(),
    }
}

// ---- extractors --------------------------------------------------------------

/// `axum::Json` with its rejections rendered as [`ApiError`]s.
struct Body<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &S,
    ) -> std::result::Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

/// `axum::extract::Path` with its rejections rendered as [`ApiError`]s.
pub(crate) struct Path<T>(pub(crate) T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> std::result::Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

/// Proof that the request carries the admin token, when one is configured.
struct Admin;

impl FromRequestParts<App> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &App,
    ) -> std::result::Result<Self, ApiError> {
        let Some(token) = &app.admin_token else {
            return Ok(Admin);
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            // An empty token would admit `Bearer ` with nothing after it: fail closed
            // (serve refuses to start with one).
            Some(given) if !token.is_empty() && same_secret(given.as_bytes(), token.as_bytes()) => {
                Ok(Admin)
            }
            _ => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this route needs the admin token: Authorization: Bearer <token>",
            )),
        }
    }
}

/// Compares two secrets in time that depends on their lengths only, so that a
/// client cannot find the token byte by byte by timing refusals.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

// ---- errors ------------------------------------------------------------------

/// An error answer: `{"error": {"code", "message", "diagnostics"?}}` with its
/// status. Codes are stable; messages are for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    diagnostics: Vec<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            diagnostics: Vec::new(),
        }
    }

    fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The denial of a request about an account that does not exist.
    pub(crate) fn unknown_account(account: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            reason_code(Reason::UnknownAccount),
            format!("no account {account:?}: subscribe it to a plan first"),
        )
    }

    /// A name refused by the naming rule.
    pub(crate) fn name(e: NameError) -> Self {
        Self::unprocessable("invalid_name", e.to_string())
    }

    /// A denial of a request that changes or reads one account; `plan` is the
    /// plan the request named, if any.
    pub(crate) fn denied(app: &App, account: &str, plan: Option<&str>, reason: Reason) -> Self {
        let code = reason_code(reason);
        let (status, message) = match reason {
            Reason::UnknownAccount => (
                StatusCode::NOT_FOUND,
                format!("no account {account:?}: subscribe it to a plan first"),
            ),
            Reason::UnknownPlan => {
                let plans = app.gateway.plans();
                let known = if plans.is_empty() {
                    "the policy in force defines no plan".to_owned()
                } else {
                    format!(
                        "the policy in force has: {}",
                        plans
                            .iter()
                            .map(|p| quote(p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                let what = match plan {
                    Some(plan) => format!("no plan {}", quote(plan)),
                    None => format!("the plan of {account:?} is gone from the policy"),
                };
                (StatusCode::UNPROCESSABLE_ENTITY, format!("{what}; {known}"))
            }
            Reason::AlreadySubscribed => (
                StatusCode::CONFLICT,
                format!("{account:?} is already subscribed; change its plan instead"),
            ),
            // The routes that can meet it say which address, before this.
            Reason::InvalidEmail => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "not a valid email address".to_owned(),
            ),
            Reason::NoRecipients => (StatusCode::UNPROCESSABLE_ENTITY, "no recipients".to_owned()),
            Reason::LeadCreditsExhausted => (
                StatusCode::CONFLICT,
                format!("{account:?} has no lead credits left"),
            ),
            Reason::EmailCreditsExhausted => (
                StatusCode::CONFLICT,
                format!("{account:?} has no email credits left"),
            ),
            Reason::IdempotencyKeyReused => (
                StatusCode::CONFLICT,
                "this message id was already charged for another message".to_owned(),
            ),
        };
        Self::new(status, code, message)
    }

    /// No decision was answered. Nothing was charged, except that a Redis call
    /// with no answer may have been applied all the same: its message says so,
    /// and a retry with the same message id settles it (charged once).
    pub(crate) fn gateway(account: &str, e: GatewayError) -> Self {
        let unavailable = |code, message: String| {
            warn!(%account, error = %Escaped(&message), "no decision");
            Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        };
        match e {
            GatewayError::Decide(DecideError::Policy(GuestError::State(
                StateError::InvalidArgument(m),
            ))) => Self::unprocessable("invalid_argument", m),
            GatewayError::Decide(DecideError::Policy(GuestError::InvalidRequest(m))) => {
                Self::unprocessable("invalid_request", m)
            }
            GatewayError::Decide(DecideError::Policy(GuestError::State(
                StateError::Unavailable(m),
            ))) => unavailable("store_unavailable", m),
            GatewayError::Decide(DecideError::Timeout { budget }) => unavailable(
                "policy_timeout",
                format!("the policy ran past its {budget:?} budget"),
            ),
            GatewayError::Persist(m) => unavailable("not_durable", m),
            GatewayError::Behind(m) => unavailable("policy_unavailable", m),
            GatewayError::Stopped => {
                unavailable("shutting_down", "the gateway is shutting down".into())
            }
            e => {
                warn!(%account, error = %e, "no decision");
                Self::internal(e.to_string())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => Self::unprocessable("invalid_body", message),
            JsonRejection::JsonSyntaxError(_) => {
                Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
            }
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "the body must be JSON, with Content-Type: application/json",
            ),
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is over the size limit",
            ),
            other => Self::new(other.status(), "invalid_body", message),
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Error<'a> {
            code: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            diagnostics: &'a [String],
        }
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: Error<'a>,
        }
        let body = Envelope {
            error: Error {
                code: self.code,
                message: &self.message,
                diagnostics: &self.diagnostics,
            },
        };
        let mut response = json(&body);
        *response.status_mut() = self.status;
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}
