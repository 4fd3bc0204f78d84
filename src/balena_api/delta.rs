//! Image deltas (docs/contract/engine.md (h), docs/contract/cloud-api.md §7): a registry token from
//! the API, then the delta server says which delta image turns the source image into the target.
//! Only v3 (balenaEngine deltas) is spoken; everything else falls back to a regular pull, as v19
//! does for versions it does not handle.

use super::client::{Auth, Cloud, CloudError};
use serde_json::Value;

/// What the delta server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaAnswer {
    /// Pull `name` with the registry token; the engine builds the target from the source.
    Image { name: String, token: String },
    /// No delta: pull the target in full (reason for the log).
    Fallback(String),
    /// 502/504: the server is still computing it; try again later (not a failure).
    StillProcessing,
}

/// Where deltas come from.
#[derive(Debug, Clone)]
pub struct DeltaSettings {
    /// `deltaEndpoint` from config.json, without a trailing slash.
    pub endpoint: String,
    /// `SUPERVISOR_DELTA_VERSION` (v19 default 2; the cloud sends 3).
    pub version: u32,
}

/// Registry host and repository of an image reference (`host/repo[:tag|@digest]`).
pub fn registry_and_repo(image: &str) -> Option<(&str, &str)> {
    let (host, rest) = image.split_once('/')?;
    if !(host.contains('.') || host.contains(':') || host == "localhost") {
        return None;
    }
    let repo = match rest.split_once('@') {
        Some((r, _)) => r,
        None => match rest.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => rest,
        },
    };
    Some((host, repo))
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Asks for a delta from `source` to `target`; `uuid` and `key` authenticate the token request.
pub fn request(
    cloud: &Cloud,
    settings: &DeltaSettings,
    uuid: &str,
    key: &str,
    source: &str,
    target: &str,
) -> Result<DeltaAnswer, CloudError> {
    if settings.version != 3 {
        return Ok(DeltaAnswer::Fallback(format!(
            "delta version {} is not supported",
            settings.version
        )));
    }
    let (Some((dst_host, dst_repo)), Some((_, src_repo))) =
        (registry_and_repo(target), registry_and_repo(source))
    else {
        return Ok(DeltaAnswer::Fallback("image is not on a registry".into()));
    };
    let token_path = format!(
        "/auth/v1/token?service={}&scope={}&scope={}",
        encode(dst_host),
        encode(&format!("repository:{dst_repo}:pull")),
        encode(&format!("repository:{src_repo}:pull")),
    );
    let reply = cloud.call(
        "GET",
        &token_path,
        Auth::Basic(&format!("d_{uuid}"), key),
        &[],
        None,
    )?;
    if !reply.ok() {
        return Err(reply.error());
    }
    let token = reply
        .json()?
        .get("token")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| CloudError::Invalid("token answer has no `token`".into()))?;
    let url = format!(
        "{}/api/v3/delta?src={}&dest={}",
        settings.endpoint,
        encode(source),
        encode(target)
    );
    let reply = cloud.call("GET", &url, Auth::Bearer(&token), &[], None)?;
    match reply.status {
        200 => {
            let name = reply
                .json()?
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| CloudError::Invalid("delta answer has no `name`".into()))?;
            Ok(DeltaAnswer::Image { name, token })
        }
        502 | 504 => Ok(DeltaAnswer::StillProcessing),
        401 => Err(reply.error()),
        400..=499 => Ok(DeltaAnswer::Fallback(format!(
            "delta server answered {}",
            reply.status
        ))),
        _ => Err(reply.error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_split_into_registry_and_repository() {
        let cases = [
            (
                "registry2.balena-cloud.com/v2/abcd@sha256:0123",
                Some(("registry2.balena-cloud.com", "v2/abcd")),
            ),
            (
                "127.0.0.1:5858/tinyvisor/busybox:1",
                Some(("127.0.0.1:5858", "tinyvisor/busybox")),
            ),
            ("localhost/app", Some(("localhost", "app"))),
            ("localhost:5000/app", Some(("localhost:5000", "app"))),
            ("busybox:1", None),
            ("library/busybox", None),
        ];
        for (image, want) in cases {
            assert_eq!(registry_and_repo(image), want, "{image}");
        }
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(
            encode("repository:v2/abc:pull"),
            "repository%3Av2%2Fabc%3Apull"
        );
        assert_eq!(encode("a@sha256:0f"), "a%40sha256%3A0f");
    }
}
