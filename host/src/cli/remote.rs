//! `--server`: the operator commands asked of a running gateway through its HTTP
//! API instead of opened on its store. A redb file is one process's at a time, so
//! while `serve` runs this is the only way to see or change its accounts; it is
//! also how an operator reaches a gateway on another host.
//!
//! A blocking client (`ureq`): a command makes its requests one after another and
//! has nothing else to do meanwhile, so an async runtime would buy nothing. Plain
//! HTTP only, like the gateway's API: put a gateway on another host behind a tunnel.

use std::time::Duration;

use anyhow::Context as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Denied;

/// The environment variable that names the gateway when `--server` is not given.
pub const SERVER_ENV: &str = "CREDITGATE_SERVER";
/// The environment variable holding the admin token, as `serve` reads it.
pub const TOKEN_ENV: &str = "CREDITGATE_ADMIN_TOKEN";

/// Most items a listing asks for per page (the routes' maximum).
pub const PAGE: usize = 1_000;

/// `--server`, for every command that reads or changes accounts.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerArgs {
    /// Ask the running gateway at URL (its HTTP API, e.g. http://127.0.0.1:8080)
    /// instead of opening a store: the way to work while `creditgate serve` holds
    /// the store. Default: $CREDITGATE_SERVER, unless --store is given. Routes that
    /// need the admin token get $CREDITGATE_ADMIN_TOKEN.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

impl ServerArgs {
    /// The gateway to ask, if any: `--server`, else `$CREDITGATE_SERVER` unless the
    /// command line names a store (an explicit `--store` wins over the
    /// environment).
    pub fn client(&self, store_given: bool) -> anyhow::Result<Option<Server>> {
        let url = match &self.server {
            Some(_) if store_given => {
                anyhow::bail!("--server and --store name two different places to work on: pass one")
            }
            Some(url) => Some(url.clone()),
            None if store_given => None,
            None => std::env::var(SERVER_ENV).ok().filter(|u| !u.is_empty()),
        };
        url.map(|url| Server::new(&url)).transpose()
    }
}

/// A gateway's HTTP API.
pub struct Server {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

/// The error envelope every route answers with: `{"error": {"code", "message",
/// "diagnostics"?}}`.
#[derive(Debug, Deserialize)]
struct Envelope {
    error: ApiError,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    code: String,
    message: String,
    #[serde(default)]
    diagnostics: Vec<String>,
}

/// The denial codes of the policy: an answer about the account, not a failure to
/// ask (exit status 1, like a denial decided locally).
const DENIALS: &[&str] = &[
    "unknown_account",
    "unknown_plan",
    "already_subscribed",
    "invalid_email",
    "no_recipients",
    "lead_credits_exhausted",
    "email_credits_exhausted",
];

/// Characters kept as they are in a path segment or query value: RFC 3986's
/// unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// One path segment or query value, escaped.
pub fn escape(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// Whether `host_port` (`HOST:PORT`) names this machine: `localhost` or a
/// loopback address.
fn is_loopback(host_port: &str) -> bool {
    if let Ok(addr) = host_port.parse::<std::net::SocketAddr>() {
        return addr.ip().is_loopback();
    }
    let host = host_port
        .rsplit_once(':')
        .map_or(host_port, |(host, _)| host);
    host.eq_ignore_ascii_case("localhost")
}

impl Server {
    /// A client for the gateway at `url` (`http://HOST:PORT`, with or without a
    /// trailing slash).
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let base = url.trim_end_matches('/');
        let rest = base.strip_prefix("http://").ok_or_else(|| {
            anyhow::anyhow!(
                "--server {url:?}: expected http://HOST:PORT (the gateway's API is plain HTTP; \
                 reach a remote one through a tunnel)"
            )
        })?;
        anyhow::ensure!(
            !rest.is_empty() && !rest.contains('/'),
            "--server {url:?}: expected http://HOST:PORT, without a path"
        );
        let token = std::env::var(TOKEN_ENV).ok().filter(|t| !t.is_empty());
        if token.is_some() && !is_loopback(rest) {
            eprintln!(
                "creditgate: warning: --server {base} is not a loopback address, and the admin \
                 token goes to it in clear text (plain HTTP): reach a remote gateway through a \
                 tunnel (ssh -L) instead"
            );
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect would turn a POST into a GET elsewhere, whose answer
            // would be reported as the command's: the gateway never redirects.
            .max_redirects(0)
            // Generous: a large lead batch on a busy gateway takes a while; a
            // gateway that does not answer at all is still reported.
            .timeout_global(Some(Duration::from_secs(120)))
            .timeout_connect(Some(Duration::from_secs(10)))
            .build()
            .into();
        Ok(Server {
            base: base.to_owned(),
            agent,
            token,
        })
    }

    /// The gateway's address, for messages.
    pub fn url(&self) -> &str {
        &self.base
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("GET", path, None)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        self.call("POST", path, Some(body))
    }

    pub fn put<T: DeserializeOwned>(&self, path: &str, body: &Value) -> anyhow::Result<T> {
        self.call("PUT", path, Some(body))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.call("DELETE", path, None)
    }

    /// Every item of a paged listing (`?limit=&after=`, answered with
    /// `{"<field>": [...], "next": CURSOR|null}`), calling `each` per page.
    /// `query` is the route's own query (escaped), without the paging.
    pub fn pages<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &str,
        field: &str,
        each: &mut dyn FnMut(Vec<T>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{path}?limit={PAGE}");
            if !query.is_empty() {
                url = format!("{url}&{query}");
            }
            if let Some(cursor) = &after {
                url = format!("{url}&after={}", escape(cursor));
            }
            let mut page: serde_json::Map<String, Value> = self.get(&url)?;
            let items = page.remove(field).unwrap_or(Value::Null);
            let items: Vec<T> = serde_json::from_value(items).with_context(|| {
                format!(
                    "the gateway at {} answered GET {path} with no {field:?} list",
                    self.base
                )
            })?;
            each(items)?;
            match page.remove("next") {
                Some(Value::String(next)) if Some(&next) != after.as_ref() => {
                    after = Some(next);
                }
                // A cursor that does not move would loop forever.
                Some(Value::String(_)) => anyhow::bail!(
                    "the gateway at {} answered GET {path} with the same cursor twice",
                    self.base
                ),
                _ => return Ok(()),
            }
        }
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let mut builder = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("accept", "application/json");
        // Only where it may be needed: reads never are admin routes.
        if let Some(token) = self.token.as_ref().filter(|_| method != "GET") {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        let sent = match body {
            Some(body) => builder
                .header("content-type", "application/json")
                .body(serde_json::to_vec(body)?)
                .map(|request| self.agent.run(request)),
            None => builder.body(()).map(|request| self.agent.run(request)),
        }
        .with_context(|| format!("cannot make a request for {url}"))?;
        let mut response =
            sent.with_context(|| format!("cannot reach the gateway at {}", self.base))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_string()
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        // The path without its query, for messages.
        let route = path.split('?').next().unwrap_or(path);
        if (200..300).contains(&status) {
            return serde_json::from_str(&text).with_context(|| {
                format!(
                    "the gateway at {} answered {method} {route} with unexpected JSON",
                    self.base
                )
            });
        }
        let Ok(Envelope { error }) = serde_json::from_str::<Envelope>(&text) else {
            let message = format!(
                "the gateway at {} answered {method} {route} with status {status}",
                self.base
            );
            return Err(if status == 503 {
                super::Unavailable(message).into()
            } else {
                anyhow::anyhow!(message)
            });
        };
        if let Some(account) = account_of(route)
            && DENIALS.contains(&error.code.as_str())
        {
            return Err(Denied::new(&account, &error.code).into());
        }
        let mut message = match (status, error.code.as_str()) {
            (401, _) => format!(
                "the gateway at {} refused {method} {route}: it needs the admin token; set \
                 ${TOKEN_ENV}",
                self.base
            ),
            (404, "not_found") => format!(
                "the gateway at {} has no route {method} {route} (a gateway older than this \
                 command?)",
                self.base
            ),
            _ => format!(
                "the gateway at {} refused {method} {route}: {} ({})",
                self.base, error.message, error.code
            ),
        };
        for line in &error.diagnostics {
            message += &format!("\n{line}");
        }
        // 503: the gateway runs but cannot decide now (its store is unavailable, a
        // commit failed, it is draining): the same request may succeed later.
        Err(if status == 503 {
            super::Unavailable(message).into()
        } else {
            anyhow::anyhow!(message)
        })
    }
}

/// The account a route is about (`/v1/accounts/{account}/...`), unescaped.
fn account_of(route: &str) -> Option<String> {
    let rest = route.strip_prefix("/v1/accounts/")?;
    let segment = rest.split('/').next()?;
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}
