//! The one place that speaks HTTP to the balena API (ureq over rustls). Every call sends the
//! real supervisor's User-Agent, accepts gzip, and returns status, ETag, Retry-After and the
//! body, whatever the status: callers decide what a status means (cloud-api.md).

use serde_json::Value;
use std::time::Duration;

/// Largest answer we read (the target state is the big one).
pub const MAX_ANSWER_BYTES: u64 = crate::compose::target::MAX_TARGET_BYTES as u64;

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

/// A client for one API endpoint. Cheap to clone (ureq agents share their pool).
#[derive(Clone)]
pub struct Cloud {
    agent: ureq::Agent,
    endpoint: String,
}

impl Cloud {
    /// `endpoint` without a trailing slash; `timeout` bounds each whole call (apiRequestTimeout).
    pub fn new(endpoint: &str, timeout: Duration, user_agent: &str) -> Cloud {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .user_agent(user_agent)
            // The API never redirects device calls; the delta server's redirects are answers.
            .max_redirects(0)
            .max_idle_connections(2)
            .max_idle_connections_per_host(2)
            .build()
            .new_agent();
        Cloud {
            agent,
            endpoint: endpoint.trim_end_matches('/').to_string(),
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

    /// One call to [`Cloud::url`] of `path`.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, CloudError> {
        let url = self.url(path);
        let authorization = match auth {
            Auth::Bearer(key) => format!("Bearer {key}"),
            Auth::Basic(user, pass) => {
                format!(
                    "Basic {}",
                    crate::encoding::base64(format!("{user}:{pass}").as_bytes())
                )
            }
        };
        let result = match method {
            "GET" | "DELETE" => {
                let mut rb = if method == "GET" {
                    self.agent.get(&url)
                } else {
                    self.agent.delete(&url)
                };
                rb = rb.header("Authorization", &authorization);
                for (k, v) in headers {
                    rb = rb.header(*k, *v);
                }
                rb.call()
            }
            _ => {
                let mut rb = match method {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.patch(&url),
                };
                rb = rb.header("Authorization", &authorization);
                for (k, v) in headers {
                    rb = rb.header(*k, *v);
                }
                match body {
                    Some(b) => rb
                        .header("Content-Type", "application/json")
                        .send(b.to_string().as_bytes()),
                    None => rb.send_empty(),
                }
            }
        };
        let mut response = result.map_err(|e| CloudError::Transport(e.to_string()))?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let status = response.status().as_u16();
        let etag = header("etag");
        let retry_after = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_vec()
            .map_err(|e| CloudError::Transport(format!("reading the answer: {e}")))?;
        Ok(Reply {
            status,
            etag,
            retry_after,
            body,
        })
    }

    /// A streamed POST (the log stream): chunked body from `reader`, no overall timeout.
    pub fn post_stream(
        &self,
        path: &str,
        key: &str,
        headers: &[(&str, &str)],
        reader: impl std::io::Read + Send + 'static,
    ) -> Result<u16, CloudError> {
        let url = self.url(path);
        let mut rb = self
            .agent
            .post(&url)
            .config()
            .timeout_global(None)
            .build()
            .header("Authorization", format!("Bearer {key}"));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let response = rb
            .send(ureq::SendBody::from_owned_reader(reader))
            .map_err(|e| CloudError::Transport(e.to_string()))?;
        Ok(response.status().as_u16())
    }
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
