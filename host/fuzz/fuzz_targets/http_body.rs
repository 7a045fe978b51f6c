//! HTTP requests through the real API, `creditgate::http::router`, driven in
//! process with `tower::ServiceExt::oneshot` (axum's `Router` is a tower
//! `Service`) over a gateway of one worker on a fresh `MemoryStore`. That covers
//! the JSON body types, which are private to `host/src/http.rs`, along with the
//! path parameters, the admin token check and the error rendering, exactly as a
//! client reaches them.
//!
//! The API faces sending platforms' clients. Whatever the request: no panic; no
//! 5xx (on a healthy in-memory gateway, a 500 is a bug: a trapped guest, a
//! contract broken, an error not mapped); every error under `/v1/` is the
//! documented `{"error": {"code", "message"}}` JSON; and an accepted lead batch
//! accounts for every address in exactly one outcome.
//!
//! Input layout, a small HTTP/1.1 request: `METHOD PATH` on the first line,
//! optional `Name: value` header lines, an empty line, then the body. The gateway
//! requires the admin token `fuzz` (send `Authorization: Bearer fuzz`), and takes
//! bodies of at most 1 KiB so that the size limit is within the fuzzer's reach.
//! Each input starts from the same state: `acme` on a large plan with one lead in
//! campaign `q1`, and `tiny` on a small plan with its lead credits used up.
//!
//! `FUZZ_DEBUG=1` prints each status and body, to see what an input reaches.

#![no_main]

use std::sync::{Arc, LazyLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use creditgate::gateway::Gateway;
use creditgate::http::{HttpOptions, Reloaded, Reloader, router};
use creditgate::request::Request as Decide;
use creditgate::store::MemoryStore;
use creditgate_fuzz::{POLICY, runtime};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tower::ServiceExt;

static TOKIO: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
});

fuzz_target!(|data: &[u8]| {
    let Some(request) = parse(data) else {
        return;
    };
    let path = request.uri().path().to_owned();
    let (gateway, _) = Gateway::start(runtime(), Arc::new(MemoryStore::new()), POLICY, 1)
        .expect("the gateway starts");
    let gateway = Arc::new(gateway);
    for request in setup() {
        let decision = gateway
            .decide_blocking(request.clone(), 0)
            .unwrap_or_else(|e| panic!("no decision for {request:?}: {e}"));
        assert!(
            decision.denied.is_none(),
            "{request:?} denied: {decision:?}"
        );
    }
    let reload: Reloader = Arc::new(|_force| {
        Ok(Reloaded {
            version: 0,
            warnings: Vec::new(),
        })
    });
    let options = HttpOptions {
        max_body_bytes: 1024,
        admin_token: Some(Arc::from("fuzz")),
        ..HttpOptions::default()
    };
    let app = router(gateway.clone(), reload, &options);
    let (status, body) = TOKIO.block_on(async {
        let response = app.oneshot(request).await.expect("a router never fails");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a response body is readable")
            .to_bytes();
        (status, body)
    });
    let text = String::from_utf8_lossy(&body);
    if std::env::var_os("FUZZ_DEBUG").is_some() {
        eprintln!("{status} {path} {text}");
    }
    assert!(!status.is_server_error(), "{status} for {path}: {text}");
    if path.starts_with("/v1/") && (status.is_client_error() || status.is_server_error()) {
        let error: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{status} for {path} is not JSON ({e}): {text}"));
        assert!(
            error["error"]["code"].is_string() && error["error"]["message"].is_string(),
            "{status} for {path} is not an error object: {text}"
        );
    }
    if status == StatusCode::OK && path.ends_with("/leads") {
        if let Ok(report) = serde_json::from_slice::<Value>(&body) {
            check_leads(&report, &text);
        }
    }
    gateway.shutdown();
});

/// The state every input starts from.
fn setup() -> Vec<Decide> {
    let lead = |account: &str, email: &str| Decide::AddLead {
        account: account.into(),
        campaign: "q1".into(),
        email: email.into(),
    };
    vec![
        Decide::Subscribe {
            account: "acme".into(),
            plan: "base".into(),
            anchor: None,
        },
        Decide::Subscribe {
            account: "tiny".into(),
            plan: "tiny".into(),
            anchor: None,
        },
        lead("acme", "ann@example.com"),
        lead("tiny", "a@x.io"),
        lead("tiny", "b@x.io"),
    ]
}

/// An accepted lead batch counts every address once.
fn check_leads(report: &Value, text: &str) {
    let Some(total) = report["total"].as_u64() else {
        return;
    };
    let counted: u64 = [
        "uploaded",
        "already_in_campaign",
        "in_other_campaign",
        "duplicates_in_request",
        "invalid",
        "credits_exhausted",
    ]
    .iter()
    .map(|k| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("a lead report without its {k} count: {text}"))
    })
    .sum();
    assert_eq!(
        counted, total,
        "a lead report's counts do not add up: {text}"
    );
    assert_eq!(
        report["results"].as_array().map(Vec::len),
        usize::try_from(total).ok(),
        "a lead report without one result per address: {text}"
    );
}

/// The request an input spells, or `None` when it is not one the HTTP server
/// could have parsed off the wire (hyper refuses those before any handler).
fn parse(data: &[u8]) -> Option<Request<Body>> {
    let (head, body) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (data, &[][..]),
    };
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split('\n');
    let (method, uri) = lines.next()?.split_once(' ')?;
    let mut builder = Request::builder().method(method).uri(uri);
    for line in lines {
        let (name, value) = line.split_once(':')?;
        builder = builder.header(name.trim(), value.trim());
    }
    builder.body(Body::from(body.to_vec())).ok()
}
