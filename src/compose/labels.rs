//! Names and bookkeeping labels exactly as balena-supervisor v19 makes them
//! (docs/contract/config.md §5, docs/contract/engine.md (d)).

use std::collections::BTreeMap;

pub const SUPERVISED: &str = "io.balena.supervised";
pub const LEGACY_SUPERVISED: &str = "io.resin.supervised";
pub const APP_ID: &str = "io.balena.app-id";
pub const APP_UUID: &str = "io.balena.app-uuid";
pub const SERVICE_ID: &str = "io.balena.service-id";
pub const SERVICE_NAME: &str = "io.balena.service-name";
pub const UPDATE_STRATEGY: &str = "io.balena.update.strategy";
pub const HANDOVER_TIMEOUT: &str = "io.balena.update.handover-timeout";
pub const REQUIRES_REBOOT: &str = "io.balena.update.requires-reboot";
pub const LEGACY_CONTAINER: &str = "io.balena.legacy-container";
pub const PRIVATE_IPAM: &str = "io.balena.private.ipam.config";
pub const FEATURE_PREFIX: &str = "io.balena.features.";

/// `<serviceName>_<imageId>_<releaseId>_<commit>`.
pub fn container_name(service: &str, image_id: i64, release_id: i64, commit: &str) -> String {
    format!("{service}_{image_id}_{release_id}_{commit}")
}

/// Parses a container name back into (imageId, releaseId, commit), like the real
/// supervisor's `/.*_(\d+)_(\d+)(?:_(.*?))?$/`: the last `_<digits>_<digits>` pair, optionally
/// followed by `_<commit>`.
pub fn parse_container_name(name: &str) -> Option<(i64, i64, Option<String>)> {
    let name = name.trim_start_matches('/');
    let parts: Vec<&str> = name.split('_').collect();
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    // Prefer the form with a commit: ..._img_rel_commit (commit may itself contain '_').
    for i in (1..parts.len().saturating_sub(1)).rev() {
        if numeric(parts[i]) && numeric(parts[i + 1]) {
            let commit = if i + 2 < parts.len() {
                Some(parts[i + 2..].join("_"))
            } else {
                None
            };
            return Some((parts[i].parse().ok()?, parts[i + 1].parse().ok()?, commit));
        }
    }
    None
}

/// Legacy `io.resin.*` labels read as `io.balena.*` (every "resin" in the key).
pub fn normalise_labels(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| {
            if k.starts_with("io.resin.") {
                (k.replace("resin", "balena"), v.clone())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect()
}

/// Truthy label values: `1`, `true`, `on` (case-insensitive).
pub fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "on"))
}

pub fn is_supervised(labels: &BTreeMap<String, String>) -> bool {
    labels.contains_key(SUPERVISED) || labels.contains_key(LEGACY_SUPERVISED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_names_round_trip() {
        let n = container_name("h4-one", 11, 1, "h4commit1");
        assert_eq!(n, "h4-one_11_1_h4commit1");
        assert_eq!(
            parse_container_name(&format!("/{n}")),
            Some((11, 1, Some("h4commit1".into())))
        );
        assert_eq!(
            parse_container_name("main_1234_5678"),
            Some((1234, 5678, None))
        );
        assert_eq!(
            parse_container_name("my_svc_2_3_abc"),
            Some((2, 3, Some("abc".into())))
        );
        assert_eq!(
            parse_container_name("old_main_1_2_deadbeef"),
            Some((1, 2, Some("deadbeef".into())))
        );
        assert_eq!(parse_container_name("random-container"), None);
    }

    #[test]
    fn legacy_labels_are_normalised() {
        let mut l = BTreeMap::new();
        l.insert("io.resin.app-id".to_string(), "1".to_string());
        l.insert("io.resin.features.resin-api".to_string(), "1".to_string());
        l.insert("other".to_string(), "x".to_string());
        let n = normalise_labels(&l);
        assert_eq!(n["io.balena.app-id"], "1");
        assert!(n.contains_key("io.balena.features.balena-api"));
        assert_eq!(n["other"], "x");
    }
}
