//! The engine client: one short-lived HTTP/1.1 connection per call over the engine's Unix
//! socket, version-prefixed paths, typed answers and typed errors.

use super::error::{EngineError, Result};
use super::stream::{BodyReader, JsonStream, LogStream, PullStream};
use super::types::*;
use crate::http::{self, Body, ResponseHead};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::BufReader;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The API version we speak; Debian's docker.io 20.10 and balenaEngine 20.10 serve it.
pub const DEFAULT_API_VERSION: &str = "1.41";
/// Largest non-streamed answer we read (a container list of a busy engine is well under this).
const MAX_BODY: usize = 32 * 1024 * 1024;
/// Largest error body we read to extract the engine's message.
const MAX_ERROR_BODY: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
    api_version: String,
    /// Read/write timeout of ordinary calls; streams use their own.
    timeout: Duration,
}

/// Reads the answer to a request sent on `stream`. Non-2xx answers become typed errors.
fn read_answer(stream: UnixStream, to_head: bool, what: &str) -> Result<Response> {
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    let head = http::read_head(&mut reader).map_err(|e| EngineError::from_io(e, what))?;
    let framing = http::framing(&head, to_head).map_err(|e| EngineError::from_io(e, what))?;
    let mut body = Body::new(reader, framing);
    if head.status >= 300 && head.status != 304 {
        let raw = body.read_to_end_limited(MAX_ERROR_BODY).unwrap_or_default();
        return Err(EngineError::from_status(
            head.status,
            error_message(&head, &raw),
        ));
    }
    Ok(Response { head, body })
}

/// An image archive being sent to `POST /images/load`: [`ImageLoad::write`] its bytes, then
/// [`ImageLoad::finish`]. Dropped unfinished, the connection closes before the body's end,
/// the engine's read of the archive fails and nothing is loaded.
pub struct ImageLoad {
    stream: UnixStream,
    /// How long the engine may take to load what it was sent (it answers only when done).
    load_timeout: Duration,
}

impl ImageLoad {
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        http::write_chunk(&mut self.stream, data)
            .map_err(|e| EngineError::from_io(e, "POST /images/load"))
    }

    /// Ends the archive and waits for the engine: the references it loaded (`name:tag`, or
    /// the image id for an image saved without a name).
    pub fn finish(mut self) -> Result<Vec<String>> {
        let what = "POST /images/load";
        http::write_last_chunk(&mut self.stream).map_err(|e| EngineError::from_io(e, what))?;
        self.stream
            .set_read_timeout(Some(self.load_timeout))
            .map_err(EngineError::Io)?;
        let resp = read_answer(self.stream, false, what)?;
        let mut loaded = Vec::new();
        for line in JsonStream::<LoadProgress, _>::new(resp.body, "image load") {
            let line = line?;
            if let Some(error) = line.error {
                return Err(EngineError::Stream {
                    message: format!("image load failed: {error}"),
                });
            }
            let text = line.stream.trim();
            if let Some(name) = text
                .strip_prefix("Loaded image ID: ")
                .or_else(|| text.strip_prefix("Loaded image: "))
            {
                loaded.push(name.to_string());
            }
        }
        Ok(loaded)
    }
}

/// An answer whose body has not been read yet.
pub struct Response {
    pub head: ResponseHead,
    pub body: BodyReader,
}

/// Query string builder with percent-encoding of values.
#[derive(Default)]
pub struct Query(String);

impl Query {
    pub fn new() -> Self {
        Query(String::new())
    }

    pub fn add(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.0.push(if self.0.is_empty() { '?' } else { '&' });
        self.0.push_str(&percent_encode(key));
        self.0.push('=');
        self.0.push_str(&percent_encode(value.as_ref()));
        self
    }

    pub fn add_opt(self, key: &str, value: Option<impl AsRef<str>>) -> Self {
        match value {
            Some(v) => self.add(key, v),
            None => self,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Everything but RFC 3986 unreserved characters is percent-encoded.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// Base64url (RFC 4648 §5, with padding) as the engine expects in `X-Registry-Auth`.
pub use crate::encoding::base64url;

/// The `X-Registry-Auth` value for a username/password on `server`.
pub fn registry_auth(username: &str, password: &str, server: &str) -> String {
    let json =
        serde_json::json!({"username": username, "password": password, "serveraddress": server});
    base64url(json.to_string().as_bytes())
}

/// The `X-Registry-Auth` value for a registry token (delta pulls).
pub fn registry_token_auth(token: &str) -> String {
    base64url(
        serde_json::json!({ "registrytoken": token })
            .to_string()
            .as_bytes(),
    )
}

/// Encodes an object id or name for use as one path segment.
fn seg(s: &str) -> String {
    percent_encode(s)
}

/// `{"label":["k","k=v"]}` style filters, as the engine expects them.
pub fn label_filters(labels: &[&str]) -> String {
    serde_json::json!({ "label": labels }).to_string()
}

/// Options for `GET /containers/{id}/logs`.
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    pub follow: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub timestamps: bool,
    /// Unix seconds (may have a fractional part).
    pub since: Option<String>,
    pub tail: Option<String>,
}

impl Engine {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Engine {
            socket: socket.into(),
            api_version: DEFAULT_API_VERSION.to_string(),
            timeout: Duration::from_secs(120),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn with_api_version(mut self, version: &str) -> Self {
        self.api_version = version.to_string();
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn api_version(&self) -> &str {
        &self.api_version
    }

    fn connect(&self, timeout: Option<Duration>) -> Result<UnixStream> {
        // A Unix-socket connect does not wait for the peer (it fails at once when nobody
        // listens), so the read/write timeouts below bound every call.
        let stream = UnixStream::connect(&self.socket).map_err(|source| EngineError::Connect {
            socket: self.socket.display().to_string(),
            source,
        })?;
        stream.set_read_timeout(timeout).map_err(EngineError::Io)?;
        stream
            .set_write_timeout(Some(self.timeout))
            .map_err(EngineError::Io)?;
        Ok(stream)
    }

    /// Sends one request and reads the answer's head. Non-2xx answers become typed errors.
    /// `read_timeout` None means wait forever (streams that follow).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: Option<&[u8]>,
        read_timeout: Option<Duration>,
    ) -> Result<Response> {
        let full_path = format!("/v{}{}", self.api_version, path);
        let what = format!("{method} {path}");
        let mut stream = self.connect(read_timeout)?;
        http::write_request(&mut stream, method, &full_path, headers, body)
            .map_err(|e| EngineError::from_io(e, &what))?;
        read_answer(stream, method == "HEAD", &what)
    }

    fn call(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response> {
        self.send(method, path, &[], body, Some(self.timeout))
    }

    fn read_json<T: DeserializeOwned>(mut resp: Response, what: &str) -> Result<T> {
        let raw = resp
            .body
            .read_to_end_limited(MAX_BODY)
            .map_err(|e| EngineError::from_io(e, what))?;
        serde_json::from_slice(&raw)
            .map_err(|e| EngineError::Protocol(format!("{what}: unexpected JSON: {e}")))
    }

    fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.call("GET", path, None)?;
        Self::read_json(resp, path)
    }

    fn post_json<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let raw = serde_json::to_vec(body)
            .map_err(|e| EngineError::Protocol(format!("cannot encode request: {e}")))?;
        let resp = self.call("POST", path, Some(&raw))?;
        Self::read_json(resp, path)
    }

    /// Sends a call whose answer body we do not need, draining it so errors surface.
    fn call_empty(&self, method: &str, path: &str, timeout: Duration) -> Result<u16> {
        let mut resp = self.send(method, path, &[], None, Some(timeout))?;
        resp.body
            .read_to_end_limited(MAX_ERROR_BODY)
            .map_err(|e| EngineError::from_io(e, path))?;
        Ok(resp.head.status)
    }

    // ---- system ----

    pub fn ping(&self) -> Result<()> {
        let mut resp = self.call("GET", "/_ping", None)?;
        let body = resp
            .body
            .read_to_end_limited(1024)
            .map_err(|e| EngineError::from_io(e, "ping"))?;
        if body == b"OK" {
            Ok(())
        } else {
            Err(EngineError::Protocol(format!(
                "ping answered {:?}",
                String::from_utf8_lossy(&body)
            )))
        }
    }

    pub fn version(&self) -> Result<Version> {
        self.get_json("/version")
    }

    pub fn info(&self) -> Result<Info> {
        self.get_json("/info")
    }

    /// Lowers our API version to the engine's when the engine is older than us.
    pub fn negotiate(mut self) -> Result<Self> {
        let v = self.version()?;
        if version_less(&v.api_version, &self.api_version) {
            self.api_version = v.api_version;
        }
        Ok(self)
    }

    // ---- containers ----

    /// Lists containers (all states when `all`), keeping those with every label filter
    /// (`key` or `key=value`).
    pub fn list_containers(&self, all: bool, labels: &[&str]) -> Result<Vec<ContainerSummary>> {
        let mut q = Query::new().add("all", if all { "true" } else { "false" });
        if !labels.is_empty() {
            q = q.add("filters", label_filters(labels));
        }
        self.get_json(&format!("/containers/json{}", q.as_str()))
    }

    pub fn inspect_container(&self, id: &str) -> Result<ContainerInspect> {
        self.get_json(&format!("/containers/{}/json", seg(id)))
    }

    /// Creates a container from a create body (`Config` + `HostConfig` + `NetworkingConfig`).
    pub fn create_container<B: Serialize>(&self, name: &str, body: &B) -> Result<CreateResponse> {
        let q = Query::new().add("name", name);
        self.post_json(&format!("/containers/create{}", q.as_str()), body)
    }

    /// Starts a container; starting a running one is not an error (the engine answers 304).
    pub fn start_container(&self, id: &str) -> Result<()> {
        self.call_empty(
            "POST",
            &format!("/containers/{}/start", seg(id)),
            self.timeout,
        )
        .map(drop)
    }

    /// Stops with SIGTERM, then SIGKILL after `grace_secs`; stopping a stopped one is fine.
    pub fn stop_container(&self, id: &str, grace_secs: u32) -> Result<()> {
        let q = Query::new().add("t", grace_secs.to_string());
        self.call_empty(
            "POST",
            &format!("/containers/{}/stop{}", seg(id), q.as_str()),
            self.timeout + Duration::from_secs(grace_secs.into()),
        )
        .map(drop)
    }

    pub fn kill_container(&self, id: &str, signal: &str) -> Result<()> {
        let q = Query::new().add("signal", signal);
        self.call_empty(
            "POST",
            &format!("/containers/{}/kill{}", seg(id), q.as_str()),
            self.timeout,
        )
        .map(drop)
    }

    pub fn restart_container(&self, id: &str, grace_secs: u32) -> Result<()> {
        let q = Query::new().add("t", grace_secs.to_string());
        self.call_empty(
            "POST",
            &format!("/containers/{}/restart{}", seg(id), q.as_str()),
            self.timeout + Duration::from_secs(grace_secs.into()),
        )
        .map(drop)
    }

    /// Removes a container; `force` kills it first, `volumes` drops its anonymous volumes.
    pub fn remove_container(&self, id: &str, force: bool, volumes: bool) -> Result<()> {
        let q = Query::new()
            .add("force", force.to_string())
            .add("v", volumes.to_string());
        self.call_empty(
            "DELETE",
            &format!("/containers/{}{}", seg(id), q.as_str()),
            self.timeout,
        )
        .map(drop)
    }

    /// The files under `path` in a container (running or not), as the tar stream the engine
    /// sends (`GET /containers/<id>/archive`).
    pub fn container_archive(&self, id: &str, path: &str) -> Result<BodyReader> {
        let q = Query::new().add("path", path);
        let resp = self.call(
            "GET",
            &format!("/containers/{}/archive{}", seg(id), q.as_str()),
            None,
        )?;
        Ok(resp.body)
    }

    pub fn rename_container(&self, id: &str, new_name: &str) -> Result<()> {
        let q = Query::new().add("name", new_name);
        self.call_empty(
            "POST",
            &format!("/containers/{}/rename{}", seg(id), q.as_str()),
            self.timeout,
        )
        .map(drop)
    }

    /// Changes settings of an existing container (e.g. `{"RestartPolicy": {"Name": "no"}}`).
    pub fn update_container(&self, id: &str, body: &serde_json::Value) -> Result<()> {
        let raw = serde_json::to_vec(body)
            .map_err(|e| EngineError::Protocol(format!("cannot encode request: {e}")))?;
        let mut resp = self.call(
            "POST",
            &format!("/containers/{}/update", seg(id)),
            Some(&raw),
        )?;
        resp.body
            .read_to_end_limited(MAX_ERROR_BODY)
            .map_err(|e| EngineError::from_io(e, "container update"))?;
        Ok(())
    }

    /// Blocks until the container reaches `condition` (`not-running`, `next-exit`, `removed`)
    /// or `timeout` passes, and returns its exit code.
    pub fn wait_container(
        &self,
        id: &str,
        condition: &str,
        timeout: Option<Duration>,
    ) -> Result<i64> {
        let q = Query::new().add("condition", condition);
        let path = format!("/containers/{}/wait{}", seg(id), q.as_str());
        let resp = self.send("POST", &path, &[], None, timeout)?;
        let w: WaitResponse = Self::read_json(resp, &path)?;
        match w.error {
            Some(e) if !e.message.is_empty() => Err(EngineError::Stream { message: e.message }),
            _ => Ok(w.status_code),
        }
    }

    /// Streams a container's logs. `tty` must match the container's `Config.Tty`: TTY
    /// containers send raw bytes, others multiplexed frames.
    pub fn container_logs(&self, id: &str, tty: bool, opts: &LogsOptions) -> Result<LogStream> {
        let q = Query::new()
            .add("follow", opts.follow.to_string())
            .add("stdout", opts.stdout.to_string())
            .add("stderr", opts.stderr.to_string())
            .add("timestamps", opts.timestamps.to_string())
            .add_opt("since", opts.since.as_deref())
            .add_opt("tail", opts.tail.as_deref());
        let timeout = if opts.follow {
            None
        } else {
            Some(self.timeout)
        };
        let resp = self.send(
            "GET",
            &format!("/containers/{}/logs{}", seg(id), q.as_str()),
            &[],
            None,
            timeout,
        )?;
        // Newer engines say which one it is; trust that over the caller.
        let multiplexed = match resp.head.header("content-type") {
            Some(ct) if ct.contains("multiplexed-stream") => true,
            Some(ct) if ct.contains("raw-stream") => false,
            _ => !tty,
        };
        Ok(LogStream::new(resp.body, multiplexed))
    }

    // ---- images ----

    pub fn list_images(&self) -> Result<Vec<ImageSummary>> {
        self.get_json("/images/json?digests=true")
    }

    pub fn inspect_image(&self, name: &str) -> Result<ImageInspect> {
        self.get_json(&format!("/images/{}/json", image_path(name)))
    }

    /// Starts pulling `reference` (`repo:tag` or `repo@digest`, default tag `latest`);
    /// `registry_auth` is the base64url X-Registry-Auth header value. The returned stream
    /// yields progress lines and fails with [`EngineError::Stream`] on an in-band error.
    pub fn pull_image(&self, reference: &str, registry_auth: Option<&str>) -> Result<PullStream> {
        let (repo, tag) = split_reference(reference);
        let q = Query::new().add("fromImage", repo).add("tag", tag);
        let mut headers = Vec::new();
        if let Some(auth) = registry_auth {
            headers.push(("X-Registry-Auth", auth.to_string()));
        }
        // Registries can be slow; one read may wait this long between progress lines.
        let resp = self.send(
            "POST",
            &format!("/images/create{}", q.as_str()),
            &headers,
            None,
            Some(Duration::from_secs(600)),
        )?;
        Ok(PullStream::new(resp.body, reference))
    }

    /// The archive `docker save` writes for one image (`GET /images/get?names=<name>`),
    /// to be read as it comes.
    pub fn export_image(&self, name: &str) -> Result<BodyReader> {
        let q = Query::new().add("names", name);
        let resp = self.call("GET", &format!("/images/get{}", q.as_str()), None)?;
        Ok(resp.body)
    }

    /// Starts loading an image archive (`POST /images/load?quiet=1`), sent in chunks.
    pub fn load_images(&self) -> Result<ImageLoad> {
        let path = format!("/v{}/images/load?quiet=1", self.api_version);
        let mut stream = self.connect(Some(self.timeout))?;
        let headers = [("Content-Type", "application/x-tar".to_string())];
        http::write_chunked_request_head(&mut stream, "POST", &path, &headers)
            .map_err(|e| EngineError::from_io(e, "POST /images/load"))?;
        Ok(ImageLoad {
            stream,
            load_timeout: Duration::from_secs(1800),
        })
    }

    /// Tags `source` as `repo:tag`.
    pub fn tag_image(&self, source: &str, repo: &str, tag: &str) -> Result<()> {
        let q = Query::new().add("repo", repo).add("tag", tag);
        self.call_empty(
            "POST",
            &format!("/images/{}/tag{}", image_path(source), q.as_str()),
            self.timeout,
        )
        .map(drop)
    }

    pub fn remove_image(&self, name: &str, force: bool) -> Result<Vec<ImageDeleteItem>> {
        let q = Query::new().add("force", force.to_string());
        let resp = self.call(
            "DELETE",
            &format!("/images/{}{}", image_path(name), q.as_str()),
            None,
        )?;
        Self::read_json(resp, "remove image")
    }

    // ---- volumes ----

    pub fn list_volumes(&self, labels: &[&str]) -> Result<Vec<Volume>> {
        let q = if labels.is_empty() {
            Query::new()
        } else {
            Query::new().add("filters", label_filters(labels))
        };
        let list: VolumeList = self.get_json(&format!("/volumes{}", q.as_str()))?;
        Ok(list.volumes)
    }

    pub fn create_volume(&self, spec: &VolumeCreate) -> Result<Volume> {
        self.post_json("/volumes/create", spec)
    }

    pub fn inspect_volume(&self, name: &str) -> Result<Volume> {
        self.get_json(&format!("/volumes/{}", seg(name)))
    }

    pub fn remove_volume(&self, name: &str, force: bool) -> Result<()> {
        let q = Query::new().add("force", force.to_string());
        self.call_empty(
            "DELETE",
            &format!("/volumes/{}{}", seg(name), q.as_str()),
            self.timeout,
        )
        .map(drop)
    }

    // ---- networks ----

    pub fn list_networks(&self, labels: &[&str]) -> Result<Vec<Network>> {
        let q = if labels.is_empty() {
            Query::new()
        } else {
            Query::new().add("filters", label_filters(labels))
        };
        self.get_json(&format!("/networks{}", q.as_str()))
    }

    /// Creates a network and returns its id.
    pub fn create_network(&self, spec: &NetworkCreate) -> Result<String> {
        let r: NetworkCreateResponse = self.post_json("/networks/create", spec)?;
        Ok(r.id)
    }

    pub fn inspect_network(&self, id: &str) -> Result<Network> {
        self.get_json(&format!("/networks/{}", seg(id)))
    }

    pub fn remove_network(&self, id: &str) -> Result<()> {
        self.call_empty("DELETE", &format!("/networks/{}", seg(id)), self.timeout)
            .map(drop)
    }

    /// Connects a container; `endpoint_config` is the engine's EndpointSettings
    /// (aliases, IPAM config), or null.
    pub fn connect_network(
        &self,
        network: &str,
        container: &str,
        endpoint_config: &serde_json::Value,
    ) -> Result<()> {
        let body = serde_json::json!({ "Container": container, "EndpointConfig": endpoint_config });
        let raw = serde_json::to_vec(&body)
            .map_err(|e| EngineError::Protocol(format!("cannot encode request: {e}")))?;
        let mut resp = self.call(
            "POST",
            &format!("/networks/{}/connect", seg(network)),
            Some(&raw),
        )?;
        resp.body
            .read_to_end_limited(MAX_ERROR_BODY)
            .map_err(|e| EngineError::from_io(e, "network connect"))?;
        Ok(())
    }

    pub fn disconnect_network(&self, network: &str, container: &str, force: bool) -> Result<()> {
        let body = serde_json::json!({ "Container": container, "Force": force });
        let raw = serde_json::to_vec(&body)
            .map_err(|e| EngineError::Protocol(format!("cannot encode request: {e}")))?;
        let mut resp = self.call(
            "POST",
            &format!("/networks/{}/disconnect", seg(network)),
            Some(&raw),
        )?;
        resp.body
            .read_to_end_limited(MAX_ERROR_BODY)
            .map_err(|e| EngineError::from_io(e, "network disconnect"))?;
        Ok(())
    }

    // ---- events ----

    /// Follows the engine's event stream. `filters` is the engine's filter object, e.g.
    /// `{"type":["container"]}`; `since`/`until` are Unix seconds.
    pub fn events(
        &self,
        filters: Option<&serde_json::Value>,
        since: Option<i64>,
        until: Option<i64>,
    ) -> Result<JsonStream<Event>> {
        let q = Query::new()
            .add_opt("filters", filters.map(|f| f.to_string()))
            .add_opt("since", since.map(|s| s.to_string()))
            .add_opt("until", until.map(|s| s.to_string()));
        let resp = self.send("GET", &format!("/events{}", q.as_str()), &[], None, None)?;
        Ok(JsonStream::new(resp.body, "events"))
    }
}

/// The engine's `{"message": "..."}` error text, or the raw body, or the status reason.
fn error_message(head: &ResponseHead, raw: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Msg {
        message: String,
    }
    if let Ok(m) = serde_json::from_slice::<Msg>(raw) {
        return m.message;
    }
    let text = String::from_utf8_lossy(raw).trim().to_string();
    if text.is_empty() {
        head.reason.clone()
    } else {
        text
    }
}

/// Splits `repo[:tag]` / `repo@digest`; a colon in a registry host's port is not a tag.
pub fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((repo, digest)) = reference.split_once('@') {
        // The engine takes the digest in `tag`.
        return (repo, digest);
    }
    match reference.rfind(':') {
        Some(i) if !reference[i + 1..].contains('/') => (&reference[..i], &reference[i + 1..]),
        _ => (reference, "latest"),
    }
}

/// Image names keep their slashes in the path (`/images/127.0.0.1:5000/a/b:1/json`).
fn image_path(name: &str) -> String {
    name.split('/').map(seg).collect::<Vec<_>>().join("/")
}

/// Compares dotted API versions numerically ("1.9" < "1.41").
fn version_less(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> Vec<u32> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a) < parse(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_like_the_engine() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(split_reference("busybox:1"), ("busybox", "1"));
        assert_eq!(
            split_reference("127.0.0.1:5000/a/b"),
            ("127.0.0.1:5000/a/b", "latest")
        );
        assert_eq!(
            split_reference("127.0.0.1:5000/a/b:v2"),
            ("127.0.0.1:5000/a/b", "v2")
        );
        assert_eq!(
            split_reference("reg/x@sha256:abcd"),
            ("reg/x", "sha256:abcd")
        );
    }

    #[test]
    fn query_values_are_escaped() {
        let q = Query::new()
            .add("filters", label_filters(&["io.balena.supervised", "a=b c"]))
            .add("name", "x&y");
        assert_eq!(
            q.as_str(),
            "?filters=%7B%22label%22%3A%5B%22io.balena.supervised%22%2C%22a%3Db%20c%22%5D%7D&name=x%26y"
        );
        assert_eq!(
            image_path("127.0.0.1:5000/a/b:1"),
            "127.0.0.1%3A5000/a/b%3A1"
        );
        assert_eq!(seg("../x"), "..%2Fx");
    }

    #[test]
    fn api_versions_compare_numerically() {
        assert!(version_less("1.9", "1.41"));
        assert!(!version_less("1.43", "1.41"));
        assert!(!version_less("1.41", "1.41"));
    }
}
