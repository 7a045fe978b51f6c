//! One blocking HTTP client for every test: statuses are answers, not errors.

use std::time::Duration;

/// A client of one server (`http://HOST:PORT`).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    agent: ureq::Agent,
}

/// An answer: status, content type, headers and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    /// Every header, its name in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The first value of the header `name` (lower case), if any is valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        values.next().map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

impl Client {
    /// A client of `base` (`http://127.0.0.1:8080`, no trailing slash), with a
    /// 30 s bound on every request.
    pub fn new(base: impl Into<String>) -> Client {
        Client::with_timeout(base, Duration::from_secs(30))
    }

    /// A client of `base` with a bound of `timeout` on every request.
    pub fn with_timeout(base: impl Into<String>, timeout: Duration) -> Client {
        Client {
            base: base.into(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build()
                .into(),
        }
    }

    /// `http://HOST:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` with `headers` and, when given, a JSON `body`; the
    /// answer, or the transport's error (nothing listening, a timeout).
    pub fn try_send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Answer, ureq::Error> {
        let mut request = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let sent = match body {
            Some(body) => self.agent.run(
                request
                    .header("content-type", "application/json")
                    .body(body.to_owned())?,
            ),
            // As ureq's `send_empty`: an empty body (`content-length: 0`) where
            // the method takes one, none where it does not.
            None if matches!(method, "POST" | "PUT" | "PATCH") => {
                self.agent.run(request.body(&[][..])?)
            }
            None => self.agent.run(request.body(())?),
        };
        let mut response = sent?;
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let content_type = headers
            .iter()
            .find(|(n, _)| n == "content-type")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let body = response
            .body_mut()
            .with_config()
            .limit(256 * 1024 * 1024)
            .read_to_string()?;
        Ok(Answer {
            status,
            content_type,
            headers,
            body,
        })
    }

    /// [`Client::try_send`] without headers; panics when no answer comes.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> Answer {
        self.try_send(method, path, &[], body)
            .unwrap_or_else(|e| panic!("{method} {}{path}: no answer: {e}", self.base))
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &str) -> Answer {
        self.send("POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Answer {
        self.send("DELETE", path, None)
    }
}
