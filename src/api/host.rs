//! Endpoints that act on the host or the device record (docs/contract/device-api.md 3.6,
//! 3.13, 3.14, 3.25, 3.26): `/v1/reboot`, `/v1/shutdown`, `/v1/device/host-config`,
//! `/v2/device/tags`.

use super::server::{Request, Response};
use super::{json_response, truthy, Api, ENGINE_TIMEOUT, NOT_ANSWERING};
use crate::protocol::{ActionError, Command, PowerAction};
use serde_json::json;

impl Api {
    /// `GET /v2/device/tags`: asks the cloud (500 when it cannot be asked).
    pub(super) fn get_tags(&self) -> Response {
        let Some(cloud) = &self.cloud else {
            return super::failed(500, "The device is not managed by a balena API");
        };
        match crate::cloud::tags::fetch(&cloud.client, &self.settings) {
            Ok(tags) => json_response(200, json!({"status": "success", "tags": tags})),
            Err(e) => super::failed(500, e),
        }
    }

    /// `PATCH /v2/device/tags`: stored now, sent to the cloud by the report thread.
    pub(super) fn patch_tags(&self, req: &Request) -> Response {
        let doc = match super::parse_json(&req.body) {
            Ok(d) => d,
            Err(r) => return r,
        };
        let tags = match crate::cloud::tags::parse_patch(&doc) {
            Ok(t) => t,
            Err(m) => return super::failed(400, m),
        };
        match self.ask(|reply| Command::SetTags { tags, reply }, ENGINE_TIMEOUT) {
            Some(Ok(())) => json_response(202, json!({"status": "success"})),
            Some(Err(e)) => super::failed(500, e),
            None => super::failed(500, NOT_ANSWERING),
        }
    }

    /// `GET /v1/device/host-config`: hostname and proxy as the files say.
    pub(super) fn host_config(&self) -> Response {
        let paths = &self.settings.paths;
        match crate::host_config::read(&paths.root_mountpoint, &paths.boot_mountpoint) {
            Ok(v) => json_response(200, v),
            Err(e) => super::failed(503, e.to_string()),
        }
    }

    /// `PATCH /v1/device/host-config`: plain-text answers, as v19's.
    pub(super) fn patch_host_config(&self, req: &Request) -> Response {
        let unparsable = |e: String| {
            Response::text(
                400,
                format!("Could not parse host config input to a valid format: {e}"),
            )
        };
        let doc = match super::json_of(&req.body) {
            Ok(d) => d,
            Err(e) => return unparsable(e),
        };
        let patch = match crate::host_config::parse_patch(&doc) {
            Ok(p) => p,
            Err(e) => return unparsable(e),
        };
        if patch == crate::host_config::Patch::default() {
            log::warn!("Host config PATCH without network settings: nothing to change");
            return Response::text(200, "OK");
        }
        let cmd = |reply| Command::HostConfig {
            patch,
            force: truthy(doc.get("force")),
            reply,
        };
        match self.ask(cmd, ENGINE_TIMEOUT * 4) {
            Some(Ok(())) => Response::text(200, "OK"),
            Some(Err(ActionError::Locked(m))) => Response::text(423, m),
            Some(Err(ActionError::Failed(m))) => Response::text(503, m),
            Some(Err(ActionError::NotFound(m))) => Response::text(503, m),
            None => Response::text(503, NOT_ANSWERING),
        }
    }

    /// `POST /v1/reboot`, `POST /v1/shutdown` with `{"force"}`: 202 once the state engine has
    /// the locks (the host is asked a second later), 423 while locked, 500 otherwise — all in
    /// v1's `{"Data","Error"}` shape.
    pub(super) fn power(&self, action: PowerAction, req: &Request) -> Response {
        let refuse = |status: u16, message: String| {
            json_response(status, json!({"Data": "", "Error": message}))
        };
        let doc = match Self::read_json_body(req) {
            Ok(d) => d,
            Err(_) => return refuse(500, "could not parse the request body".into()),
        };
        let cmd = |reply| Command::Power {
            action,
            force: truthy(doc.get("force")),
            reply,
        };
        // Locks wait for a running apply iteration to end: allow for a long one.
        match self.ask(cmd, ENGINE_TIMEOUT * 4) {
            Some(Ok(())) => json_response(202, json!({"Data": "OK", "Error": null})),
            Some(Err(ActionError::Locked(m))) => refuse(423, m),
            Some(Err(ActionError::Failed(m))) => refuse(500, m),
            Some(Err(ActionError::NotFound(m))) => refuse(500, m.into()),
            None => refuse(500, NOT_ANSWERING.into()),
        }
    }
}
