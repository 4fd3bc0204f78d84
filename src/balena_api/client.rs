//! The one place that speaks HTTP to the balena API (`transport.rs`: our codec over rustls).
//! Every call sends the real supervisor's User-Agent, accepts gzip, and returns status, ETag,
//! Retry-After and the body, whatever the status: callers decide what a status means
//! (docs/contract/cloud-api.md).

use super::transport::{self, Roots, Transport, Url};
use serde_json::Value;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The live `apiRequestTimeout` in ms (`SUPERVISOR_API_REQUEST_TIMEOUT`, default 59 s): set by
/// the state engine when the target changes it, read by every call that follows it.
pub static API_REQUEST_TIMEOUT_MS: AtomicU64 = AtomicU64::new(59_000);

/// Sets the live API request timeout from its stored text (ms); text that is not a number is
/// ignored (the device-config plan has already replaced it by the default).
pub fn follow_api_request_timeout(ms: &str) {
    if let Ok(ms) = ms.trim().parse::<u64>() {
        API_REQUEST_TIMEOUT_MS.store(ms.max(1), Ordering::Relaxed);
    }
}

/// How long each call of a client may take.
#[derive(Clone, Copy, Debug)]
pub enum Timeout {
    /// The same for every call (the local API's calls to the cloud wait less).
    Fixed(Duration),
    /// Read from this value (ms) at every call, so a changed setting applies at once.
    Live(&'static AtomicU64),
}

impl Timeout {
    fn now(self) -> Duration {
        match self {
            Timeout::Fixed(d) => d,
            Timeout::Live(ms) => Duration::from_millis(ms.load(Ordering::Relaxed).max(1)),
        }
    }
}

/// Largest answer we read (the target state is the big one).
pub const MAX_ANSWER_BYTES: usize = crate::compose::target::MAX_TARGET_BYTES;

/// How a call authenticates.
#[derive(Clone, Copy)]
pub enum Auth<'a> {
    Bearer(&'a str),
    /// HTTP Basic (the delta token endpoint).
    Basic(&'a str, &'a str),
}

/// An answer from the API, any status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub etag: Option<String>,
    /// `Retry-After` in seconds, as the header means it (v19 mistook it for ms).
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Result<Value, CloudError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| CloudError::Invalid(format!("invalid JSON from the API: {e}")))
    }

    /// The answer as an error, for statuses the caller does not accept.
    pub fn error(&self) -> CloudError {
        CloudError::Status {
            code: self.status,
            body: String::from_utf8_lossy(&self.body[..self.body.len().min(200)]).into_owned(),
            retry_after: self.retry_after,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudError {
    /// No answer: DNS, connect, TLS, timeout, a cut connection.
    Transport(String),
    /// An answer with a status the caller does not accept.
    Status {
        code: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    /// An answer we cannot use (bad JSON, an invalid target, ...).
    Invalid(String),
}

impl std::fmt::Display for CloudError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloudError::Transport(e) => write!(f, "{e}"),
            CloudError::Status { code, body, .. } if body.is_empty() => {
                write!(f, "Error from the API: {code}")
            }
            CloudError::Status { code, body, .. } => {
                write!(f, "Error from the API: {code} ({body})")
            }
            CloudError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CloudError {}

/// `Supervisor/<ver> (Linux; <osVersion>; <osVariant>)`, parts left out when unknown.
pub fn user_agent(os_version: Option<&str>, os_variant: Option<&str>) -> String {
    let ver = crate::SUPERVISOR_VERSION;
    match (os_version, os_variant) {
        (Some(v), Some(var)) => format!("Supervisor/{ver} (Linux; {v}; {var})"),
        (Some(v), None) => format!("Supervisor/{ver} (Linux; {v})"),
        _ => format!("Supervisor/{ver}"),
    }
}

/// The TLS roots of a client: the built-in web PKI roots, or, when the device was given custom
/// root CAs (openBalena, a self-signed API), those CAs plus the host's CA bundle.
fn root_certs(custom: &[crate::config::ca::CustomCa], host_bundle: &[u8]) -> Roots {
    if custom.is_empty() {
        return Roots::WebPki;
    }
    let mut certs = Vec::new();
    for ca in custom {
        let found = transport::pem_certificates(&ca.pem);
        if found.is_empty() {
            log::error!(
                "custom root CA from {}: no certificate in it; ignored",
                ca.source
            );
        }
        certs.extend(found);
    }
    certs.extend(transport::pem_certificates(host_bundle));
    Roots::These(certs)
}

/// A client for one API endpoint. Cheap to clone (clones share their kept connections).
#[derive(Clone)]
pub struct Cloud {
    transport: Arc<Transport>,
    endpoint: String,
    timeout: Timeout,
}

impl Cloud {
    /// `endpoint` without a trailing slash; `timeout` bounds each whole call (apiRequestTimeout);
    /// `custom_ca` are extra trusted roots, `host_bundle` the host's CA bundle (PEM) that then
    /// stands in for the built-in roots.
    pub fn new(
        endpoint: &str,
        timeout: Timeout,
        user_agent: &str,
        custom_ca: &[crate::config::ca::CustomCa],
        host_bundle: &[u8],
    ) -> Cloud {
        let roots = root_certs(custom_ca, host_bundle);
        Cloud {
            transport: Arc::new(Transport::new(user_agent, roots)),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            timeout,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// `{endpoint}{path}`, or `path` itself when it is a full URL.
    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{}", self.endpoint, path)
        }
    }

    /// One call to [`Cloud::url`] of `path`. The API never redirects device calls; the
    /// delta server's redirects are answers, so none is followed.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, CloudError> {
        let url = Url::parse(&self.url(path)).map_err(CloudError::Transport)?;
        let mut all = with_auth(auth, headers);
        let body = body.map(|b| {
            all.push(("Content-Type", "application/json".to_string()));
            b.to_string().into_bytes()
        });
        // Every call: this moment's timeout.
        let deadline = Instant::now() + self.timeout.now();
        let answer = self
            .transport
            .exchange(
                &url,
                method,
                &all,
                body.as_deref(),
                deadline,
                MAX_ANSWER_BYTES,
            )
            .map_err(|e| CloudError::Transport(e.to_string()))?;
        let header = |name: &str| answer.head.header(name).map(str::to_string);
        Ok(Reply {
            status: answer.head.status,
            etag: header("etag"),
            retry_after: header("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs),
            body: answer.body,
        })
    }

    /// A streamed POST (the log stream): chunked body from `reader`, no overall timeout
    /// (each read and write waits at most the request timeout).
    pub fn post_stream(
        &self,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        reader: impl std::io::Read,
    ) -> Result<u16, CloudError> {
        let url = Url::parse(&self.url(path)).map_err(CloudError::Transport)?;
        let all = with_auth(Auth::Bearer(key), headers);
        self.transport
            .stream(&url, &all, reader, self.timeout.now())
            .map_err(|e| CloudError::Transport(e.to_string()))
    }
}

/// The `Authorization` header, then the caller's.
fn with_auth<'a>(auth: Auth<'_>, headers: &[(&'a str, &str)]) -> Vec<(&'a str, String)> {
    let authorization = match auth {
        Auth::Bearer(key) => format!("Bearer {key}"),
        Auth::Basic(user, pass) => format!(
            "Basic {}",
            crate::encoding::base64(format!("{user}:{pass}").as_bytes())
        ),
    };
    let mut all = vec![("Authorization", authorization)];
    all.extend(headers.iter().map(|(k, v)| (*k, v.to_string())));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agent_leaves_out_unknown_parts() {
        let v = crate::SUPERVISOR_VERSION;
        assert_eq!(
            user_agent(Some("balenaOS 6.0.10"), Some("prod")),
            format!("Supervisor/{v} (Linux; balenaOS 6.0.10; prod)")
        );
        assert_eq!(
            user_agent(Some("balenaOS 6.0.10"), None),
            format!("Supervisor/{v} (Linux; balenaOS 6.0.10)")
        );
        assert_eq!(user_agent(None, Some("dev")), format!("Supervisor/{v}"));
    }

    #[test]
    fn a_live_timeout_cuts_a_stalled_call_when_it_changes() {
        use std::net::TcpListener;
        static LIVE: AtomicU64 = AtomicU64::new(60_000);
        // A server that accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let held = std::thread::spawn(move || {
            let conns: Vec<_> = listener.incoming().take(1).collect();
            std::thread::sleep(Duration::from_secs(5));
            drop(conns);
        });
        let cloud = Cloud::new(&url, Timeout::Live(&LIVE), "t", &[], &[]);
        LIVE.store(300, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let r = cloud.call("GET", "/x", Auth::Bearer("k"), &[], None);
        assert!(matches!(r, Err(CloudError::Transport(_))), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        drop(held);
    }

    #[test]
    fn status_errors_read_like_v19() {
        let r = Reply {
            status: 503,
            etag: None,
            retry_after: None,
            body: vec![],
        };
        assert_eq!(r.error().to_string(), "Error from the API: 503");
    }
}
