//! Endpoints that act on the host or the device record (device-api.md 3.6, 3.13, 3.14, 3.25,
//! 3.26): `/v1/reboot`, `/v1/shutdown`, `/v1/device/host-config`, `/v2/device/tags`.

use super::server::{Request, Response};
use super::{json_response, truthy, Api, ENGINE_TIMEOUT};
use crate::state::actions::ActionError;
use crate::state::apply::Command;
use crate::state::power::PowerAction;
use serde_json::json;

impl Api {
    /// `POST /v1/reboot`, `POST /v1/shutdown` with `{"force"}`: 202 once the state engine has
    /// the locks (the host is asked a second later), 423 while locked, 500 otherwise — all in
    /// v1's `{"Data","Error"}` shape.
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
        let doc: serde_json::Value = match serde_json::from_slice(&req.body) {
            Ok(d) => d,
            Err(e) => return super::failed(400, format!("invalid JSON: {e}")),
        };
        let tags = match crate::cloud::tags::parse_patch(&doc) {
            Ok(t) => t,
            Err(m) => return super::failed(400, m),
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        if self
            .engine
            .send_timeout(Command::SetTags { tags, reply: tx }, ENGINE_TIMEOUT)
            .is_err()
        {
            return super::failed(500, "state engine is not answering");
        }
        match rx.recv_timeout(ENGINE_TIMEOUT) {
            Ok(Ok(())) => json_response(202, json!({"status": "success"})),
            Ok(Err(e)) => super::failed(500, e),
            Err(_) => super::failed(500, "state engine is not answering"),
        }
    }

    /// `GET /v1/device/host-config`: hostname and proxy as the files say.
    pub(super) fn host_config(&self) -> Response {
        let paths = &self.settings.paths;
        match crate::hostconfig::read(&paths.root_mountpoint, &paths.boot_mountpoint) {
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
        let doc: serde_json::Value = match serde_json::from_slice(&req.body) {
            Ok(d) => d,
            Err(e) => return unparsable(format!("invalid JSON: {e}")),
        };
        let patch = match crate::hostconfig::parse_patch(&doc) {
            Ok(p) => p,
            Err(e) => return unparsable(e),
        };
        if patch == crate::hostconfig::Patch::default() {
            log::warn!("Host config PATCH without network settings: nothing to change");
            return Response::text(200, "OK");
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        let cmd = Command::HostConfig {
            patch,
            force: truthy(doc.get("force")),
            reply: tx,
        };
        if self.engine.send_timeout(cmd, ENGINE_TIMEOUT).is_err() {
            return Response::text(503, "state engine is not answering");
        }
        match rx.recv_timeout(ENGINE_TIMEOUT * 4) {
            Ok(Ok(())) => Response::text(200, "OK"),
            Ok(Err(ActionError::Locked(m))) => Response::text(423, m),
            Ok(Err(ActionError::Failed(m))) => Response::text(503, m),
            Ok(Err(ActionError::NotFound(m))) => Response::text(503, m),
            Err(_) => Response::text(503, "state engine is not answering"),
        }
    }

    pub(super) fn power(&self, action: PowerAction, req: &Request) -> Response {
        let refuse = |status: u16, message: String| {
            json_response(status, json!({"Data": "", "Error": message}))
        };
        let doc = match Self::read_json_body(req) {
            Ok(d) => d,
            Err(_) => return refuse(500, "could not parse the request body".into()),
        };
        let (tx, rx) = crossbeam_channel::bounded(1);
        let cmd = Command::Power {
            action,
            force: truthy(doc.get("force")),
            reply: tx,
        };
        if self.engine.send_timeout(cmd, ENGINE_TIMEOUT).is_err() {
            return refuse(500, "state engine is not answering".into());
        }
        // Locks wait for a running apply iteration to end: allow for a long one.
        match rx.recv_timeout(ENGINE_TIMEOUT * 4) {
            Ok(Ok(())) => json_response(202, json!({"Data": "OK", "Error": null})),
            Ok(Err(ActionError::Locked(m))) => refuse(423, m),
            Ok(Err(ActionError::Failed(m))) => refuse(500, m),
            Ok(Err(ActionError::NotFound(m))) => refuse(500, m.into()),
            Err(_) => refuse(500, "state engine is not answering".into()),
        }
    }
}
