//! One ClickHouse node over its HTTP interface: statements, RowBinary inserts and `/ping`, on
//! hyper's client driven by a small current-thread runtime owned by the caller (a writer thread
//! is not a tokio thread; each writer owns its client and runtime).
//!
//! Errors are classified once, here: [`NodeError::permanent`] is true only for answers that the
//! same rows will get again (HTTP 4xx other than 408/429, or a ClickHouse exception code that
//! names the data or the schema). Connection failures, timeouts, 5xx for the server's state
//! (memory, too many parts, shutting down) and unknown codes are transient: the rows wait in the
//! DLQ and are retried with backoff.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// How long a TCP connect to a node may take: a node that is down refuses at once; one that is
/// unreachable must not hold a writer for the whole insert timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle keep-alive connections are closed after this (ClickHouse 18.16 closes them after 10 s;
/// staying under it avoids reusing a connection the server is closing).
pub const POOL_IDLE: Duration = Duration::from_secs(5);
/// Longest error body kept in a message.
const ERROR_TEXT_MAX: usize = 600;

/// ClickHouse exception codes caused by the statement or the rows themselves: the same insert
/// fails the same way every time (a DLQ replay bisects to the poison rows).
/// 6 CANNOT_PARSE_TEXT, 8 THERE_IS_NO_COLUMN, 10 NOT_FOUND_COLUMN_IN_BLOCK, 16
/// NO_SUCH_COLUMN_IN_TABLE, 26 CANNOT_PARSE_QUOTED_STRING, 27 CANNOT_PARSE_INPUT_ASSERTION_FAILED,
/// 32 ATTEMPT_TO_READ_AFTER_EOF, 33 CANNOT_READ_ALL_DATA, 38 CANNOT_PARSE_DATE, 41
/// CANNOT_PARSE_DATETIME, 43 ILLEGAL_TYPE_OF_ARGUMENT, 53 TYPE_MISMATCH, 62 SYNTAX_ERROR, 69
/// ARGUMENT_OUT_OF_BOUND, 70 CANNOT_CONVERT_TYPE, 72 CANNOT_PARSE_NUMBER, 117 INCORRECT_DATA,
/// 131 TOO_LARGE_STRING_SIZE, 190 SIZES_OF_ARRAYS_DOESNT_MATCH.
pub const PERMANENT_CODES: &[u32] =
    &[6, 8, 10, 16, 26, 27, 32, 33, 38, 41, 43, 53, 62, 69, 70, 72, 117, 131, 190];

/// A failed call to a node.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    /// Connect, send or receive failed (node down, reset, DNS...).
    #[error("{node}: connection failed: {message}")]
    Connect { node: String, message: String },
    /// No answer within the insert timeout.
    #[error("{node}: no answer within {timeout:?}")]
    Timeout { node: String, timeout: Duration },
    /// The node answered with an error status.
    #[error("{node}: HTTP {status}: {text}")]
    Status { node: String, status: u16, code: Option<u32>, text: String },
    /// The URL or a header could not be built (a configuration error).
    #[error("{node}: bad request: {message}")]
    Request { node: String, message: String },
}

impl NodeError {
    /// True when retrying the same statement with the same rows cannot succeed.
    pub fn permanent(&self) -> bool {
        match self {
            NodeError::Status { status, code, .. } => {
                code.is_some_and(|c| PERMANENT_CODES.contains(&c))
                    || ((400..500).contains(status) && *status != 408 && *status != 429 && code.is_none())
            }
            NodeError::Request { .. } => true,
            _ => false,
        }
    }
    /// The ClickHouse exception code, when the node sent one.
    pub fn code(&self) -> Option<u32> {
        match self {
            NodeError::Status { code, .. } => *code,
            _ => None,
        }
    }
}

/// Parses `Code: 33, e.displayText() = ...` (18.16) or `Code: 33. DB::Exception: ...` (current).
pub fn exception_code(text: &str) -> Option<u32> {
    let rest = text.trim_start().strip_prefix("Code: ")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Credentials sent with every call (HTTP basic auth, which every release accepts).
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Auth {
    fn header(&self) -> Option<String> {
        use base64::Engine as _;
        if self.user.is_none() && self.password.is_none() {
            return None;
        }
        let creds = format!(
            "{}:{}",
            self.user.as_deref().unwrap_or("default"),
            self.password.as_deref().unwrap_or("")
        );
        Some(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(creds)))
    }
}

/// One node's HTTP endpoint.
pub struct Node {
    /// Base URL without a trailing slash, e.g. `http://127.0.0.1:8123`.
    url: String,
    auth: Option<String>,
    timeout: Duration,
    client: Client<HttpConnector, Full<Bytes>>,
    rt: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("url", &self.url).finish()
    }
}

/// Percent-encodes a query for the `query=` URL parameter.
fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

impl Node {
    /// A client for the node at `url` (`http://host:port`). Builds its own runtime.
    pub fn new(url: &str, auth: &Auth, timeout: Duration) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(CONNECT_TIMEOUT));
        conn.set_nodelay(true);
        let client = {
            let _g = rt.enter();
            Client::builder(TokioExecutor::new()).pool_idle_timeout(POOL_IDLE).build(conn)
        };
        Ok(Self { url: url.trim_end_matches('/').to_owned(), auth: auth.header(), timeout, client, rt })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs one statement (the query in the body) and returns the answer's text.
    pub fn query(&self, sql: &str) -> Result<String, NodeError> {
        self.call(format!("{}/", self.url), Bytes::from(sql.to_owned()))
    }

    /// `INSERT ... FORMAT RowBinary` with `rows` as the body.
    ///
    /// A connection failure is retried once at once: a pooled keep-alive connection the node
    /// closed while idle fails the first request sent on it, and that alone should not send a
    /// group to the DLQ. (A repeated insert is harmless: the tables' identity keys absorb it.)
    pub fn insert(&self, statement: &str, rows: Vec<u8>) -> Result<(), NodeError> {
        let uri = format!("{}/?query={}", self.url, url_encode(statement));
        let body = Bytes::from(rows);
        match self.call(uri.clone(), body.clone()) {
            Err(NodeError::Connect { .. }) => self.call(uri, body).map(drop),
            other => other.map(drop),
        }
    }

    /// `GET /ping`.
    pub fn ping(&self) -> Result<(), NodeError> {
        let req = hyper::Request::get(format!("{}/ping", self.url))
            .body(Full::new(Bytes::new()))
            .map_err(|e| NodeError::Request { node: self.url.clone(), message: e.to_string() })?;
        self.send(req).map(drop)
    }

    fn call(&self, uri: String, body: Bytes) -> Result<String, NodeError> {
        let mut b = hyper::Request::post(uri).header("content-type", "application/octet-stream");
        if let Some(a) = &self.auth {
            b = b.header("authorization", a);
        }
        let req = b
            .body(Full::new(body))
            .map_err(|e| NodeError::Request { node: self.url.clone(), message: e.to_string() })?;
        self.send(req)
    }

    fn send(&self, req: hyper::Request<Full<Bytes>>) -> Result<String, NodeError> {
        let node = &self.url;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| NodeError::Connect { node: node.clone(), message: error_chain(&e) })?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| NodeError::Connect { node: node.clone(), message: e.to_string() })?
                .to_bytes();
            let text = String::from_utf8_lossy(&body).into_owned();
            if (200..300).contains(&status) {
                Ok(text)
            } else {
                let code = exception_code(&text);
                let mut text = text.trim().to_owned();
                if text.len() > ERROR_TEXT_MAX {
                    let mut cut = ERROR_TEXT_MAX;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                Err(NodeError::Status { node: node.clone(), status, code, text })
            }
        };
        self.rt.block_on(async {
            match tokio::time::timeout(self.timeout, fut).await {
                Ok(r) => r,
                Err(_) => Err(NodeError::Timeout { node: node.clone(), timeout: self.timeout }),
            }
        })
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_codes_of_both_formats() {
        assert_eq!(exception_code("Code: 33, e.displayText() = DB::Exception: Cannot read"), Some(33));
        assert_eq!(exception_code("Code: 241. DB::Exception: Memory limit"), Some(241));
        assert_eq!(exception_code("oops"), None);
    }

    #[test]
    fn permanence_follows_the_code_then_the_status() {
        let e = |status, code| NodeError::Status { node: "n".into(), status, code, text: String::new() };
        assert!(e(500, Some(33)).permanent());
        assert!(e(400, Some(62)).permanent());
        assert!(!e(500, Some(241)).permanent(), "memory limit is the server's state");
        assert!(!e(503, None).permanent());
        assert!(e(413, None).permanent());
        assert!(!e(429, None).permanent());
        assert!(!NodeError::Timeout { node: "n".into(), timeout: Duration::from_secs(1) }.permanent());
    }

    #[test]
    fn url_encoding_escapes_everything_but_unreserved() {
        assert_eq!(url_encode("INSERT INTO `a`.`b` (x)"), "INSERT%20INTO%20%60a%60.%60b%60%20%28x%29");
    }
}
