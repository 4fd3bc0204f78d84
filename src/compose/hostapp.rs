//! The host OS release in a target (docs/hostos.md §1): the app with `is_host: true`, its one
//! release, and in it the service whose composition labels say `io.balena.image.class:
//! hostapp`. What the installer needs is read from its labels and its `image`.
//!
//! Two kinds of failure, as helios words and splits them: a target with more than one host
//! app, or a host app without a release, is refused whole (checked while parsing, in
//! `target.rs`); a host app whose service or labels are wrong is *rejected* alone — it is
//! dropped and the device keeps its OS, while the user apps of the same target are applied.

use super::target::{TargetApp, TargetState};

pub const CLASS_LABEL: &str = "io.balena.image.class";
pub const UPDATER_LABEL: &str = "io.balena.private.updater";
pub const BOARD_REV_LABEL: &str = "io.balena.private.hostapp.board-rev";
/// The name of the one pseudo-service a host app is reported with.
pub const SERVICE_NAME: &str = "hostapp";

/// A host OS release the device should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostApp {
    pub app_uuid: String,
    pub release_uuid: String,
    /// The registry URI of the host OS image, handed to the updater (`--target-image-uri`).
    pub image: String,
    /// The OS build this release is (`io.balena.private.hostapp.board-rev`), compared with the
    /// running OS's `BALENA_BOARD_REV`.
    pub build: String,
    /// The updater image (balenahup) whose `/app/entry.sh` installs the release.
    pub updater: String,
}

/// What the device keeps of a host release it has seen (a `tv_hostapp` row): the target as it
/// was, and the install attempts counted before each try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRecord {
    pub release: HostApp,
    pub install_attempts: u32,
    /// Unix seconds of the last attempt (or of the first sight): attempts older than a day no
    /// longer count.
    pub attempted_at: i64,
}

/// The host app of a target: none, one, or one rejected with helios's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostTarget {
    None,
    Install(HostApp),
    Rejected { app_uuid: String, reason: String },
}

/// Finds and reads the host app of a parsed target.
pub fn host_target(target: &TargetState) -> HostTarget {
    let Some(app) = target.apps.values().find(|a| a.is_host) else {
        return HostTarget::None;
    };
    match host_app(app) {
        Ok(h) => HostTarget::Install(h),
        Err(reason) => HostTarget::Rejected {
            app_uuid: app.uuid.clone(),
            reason,
        },
    }
}

fn host_app(app: &TargetApp) -> Result<HostApp, String> {
    let release = app
        .release
        .as_ref()
        .ok_or("hostapp should have at least one target release")?;
    // Several matching services: helios takes whichever its map yields; the first by name
    // here, so the choice is at least stable.
    let (_, svc) = release
        .services
        .iter()
        .find(|(_, s)| s.composition.labels.get(CLASS_LABEL).map(String::as_str) == Some("hostapp"))
        .ok_or("hostapp should have a service with `io.balena.image.class=hostapp` label")?;
    // Composition labels, then the service's own: the service's win.
    let label = |key: &str| {
        svc.labels
            .get(key)
            .or_else(|| svc.composition.labels.get(key))
            .cloned()
    };
    let updater = label(UPDATER_LABEL).ok_or("hostapp missing `updater` label")?;
    if !valid_reference(&updater) {
        return Err(format!("invalid hostapp updater: {updater:?}"));
    }
    let build = label(BOARD_REV_LABEL).ok_or("hostapp missing `board_rev` label")?;
    Ok(HostApp {
        app_uuid: app.uuid.clone(),
        release_uuid: release.commit.clone(),
        image: svc.image.clone(),
        build,
        updater,
    })
}

/// An image reference the engine can be asked to pull: `[registry/]repo[:tag][@digest]`,
/// printable, no spaces, not an option, no scheme.
fn valid_reference(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 512
        && !s.starts_with(['-', '/', ':', '@'])
        && !s.contains("://")
        && s.bytes().all(|b| b.is_ascii_graphic())
}

/// The repository of an image URI, without tag or digest (what helios reports as `image`).
pub fn repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    let name_start = no_digest.rfind('/').map_or(0, |i| i + 1);
    match no_digest[name_start..].find(':') {
        Some(colon) => &no_digest[..name_start + colon],
        None => no_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::target::parse_device_target;
    use serde_json::{json, Value};

    const UPDATER: &str = "registry2.balena-cloud.com/v2/updater@sha256:0011";
    const IMAGE: &str = "registry2.balena-cloud.com/v2/hostos@sha256:aabb";

    /// The spec's example target: a host app and a user app.
    fn target(host_service: Value) -> Value {
        json!({"name": "my-device", "config": {}, "apps": {
            "ea8013b1a82540b59bc8b109b45739ab": {"id": 3, "name": "generic-aarch64", "is_host": true,
                "class": "app", "releases": {"c8b48659434e80a8b3adc0c5ad1e347a": {"id": 7,
                    "services": {"hostapp": host_service}}}},
            "userapp": {"id": 1, "name": "myfleet", "releases": {"c1": {"id": 2, "services": {
                "main": {"id": 1, "image_id": 1, "image": "busybox"}}}}}}})
    }

    fn hostapp_service() -> Value {
        json!({"id": 3, "image_id": 4, "image": IMAGE, "environment": {},
            "labels": {"io.balena.image.store": "root", UPDATER_LABEL: UPDATER},
            "composition": {"image": "sha256:0123", "labels": {CLASS_LABEL: "hostapp",
                "io.balena.image.store": "root", "io.balena.update.requires-reboot": "1",
                BOARD_REV_LABEL: "7de0f0f"}}})
    }

    fn read(doc: Value) -> HostTarget {
        host_target(&parse_device_target(&doc).unwrap())
    }

    fn rejected(doc: Value) -> String {
        match read(doc) {
            HostTarget::Rejected { reason, app_uuid } => {
                assert_eq!(app_uuid, "ea8013b1a82540b59bc8b109b45739ab");
                reason
            }
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[test]
    fn accepts_the_hostapp_target() {
        assert_eq!(
            read(target(hostapp_service())),
            HostTarget::Install(HostApp {
                app_uuid: "ea8013b1a82540b59bc8b109b45739ab".into(),
                release_uuid: "c8b48659434e80a8b3adc0c5ad1e347a".into(),
                image: IMAGE.into(),
                build: "7de0f0f".into(),
                updater: UPDATER.into(),
            })
        );
    }

    #[test]
    fn no_host_app_is_none() {
        let mut doc = target(hostapp_service());
        doc["apps"]
            .as_object_mut()
            .unwrap()
            .remove("ea8013b1a82540b59bc8b109b45739ab");
        assert_eq!(read(doc), HostTarget::None);
    }

    #[test]
    fn service_labels_win_over_composition_labels() {
        let mut svc = hostapp_service();
        svc["labels"][BOARD_REV_LABEL] = json!("fromservice");
        svc["composition"]["labels"][UPDATER_LABEL] = json!("ignored/updater");
        let HostTarget::Install(h) = read(target(svc)) else {
            panic!()
        };
        assert_eq!(
            (h.build.as_str(), h.updater.as_str()),
            ("fromservice", UPDATER)
        );
    }

    #[test]
    fn the_class_is_read_from_composition_labels_only() {
        let mut svc = hostapp_service();
        svc["composition"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove(CLASS_LABEL);
        svc["labels"][CLASS_LABEL] = json!("hostapp");
        assert_eq!(
            rejected(target(svc)),
            "hostapp should have a service with `io.balena.image.class=hostapp` label"
        );
    }

    #[test]
    fn missing_or_bad_labels_reject_the_host_app_only() {
        let without = |key: &str| {
            let mut svc = hostapp_service();
            svc["labels"].as_object_mut().unwrap().remove(key);
            svc["composition"]["labels"]
                .as_object_mut()
                .unwrap()
                .remove(key);
            target(svc)
        };
        assert_eq!(
            rejected(without(UPDATER_LABEL)),
            "hostapp missing `updater` label"
        );
        assert_eq!(
            rejected(without(BOARD_REV_LABEL)),
            "hostapp missing `board_rev` label"
        );
        let mut svc = hostapp_service();
        svc["labels"][UPDATER_LABEL] = json!("has space");
        assert_eq!(
            rejected(target(svc)),
            "invalid hostapp updater: \"has space\""
        );
        // The user app is still in the target, to be applied.
        let parsed = parse_device_target(&without(UPDATER_LABEL)).unwrap();
        assert!(parsed.apps["userapp"].release.is_some());
    }

    #[test]
    fn repository_drops_tag_and_digest() {
        for (uri, repo) in [
            (IMAGE, "registry2.balena-cloud.com/v2/hostos"),
            ("127.0.0.1:5858/x/updater:1", "127.0.0.1:5858/x/updater"),
            ("127.0.0.1:5858/x/updater", "127.0.0.1:5858/x/updater"),
            ("busybox:1@sha256:ab", "busybox"),
        ] {
            assert_eq!(repository(uri), repo, "{uri}");
        }
    }
}
