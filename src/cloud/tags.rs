//! Device tags (docs/contract/cloud-api.md §5.4, docs/contract/device-api.md 3.25/3.26): read from
//! the API's `/v7` resource for `GET /v2/device/tags`; changes set through `PATCH /v2/device/tags`
//! are kept by the state engine (DB `targetTags`) and sent by the report thread as `PATCH
//! /device/v3/tags`.

use crate::balena_api::client::{Auth, Cloud, CloudError};
use crate::config::Settings;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The device's tags as the cloud has them: `[{"id", "name", "value"}]`.
pub fn fetch(cloud: &Cloud, settings: &Settings) -> Result<Vec<Value>, String> {
    let cfg = &settings.config_json;
    let id = cfg
        .get_int("deviceId")
        .ok_or("The device is not provisioned")?;
    let key = cfg.get_str("deviceApiKey").unwrap_or_default();
    let path = format!("/v7/device_tag?$select=id,tag_key,value&$filter=device%20eq%20{id}");
    let reply = cloud
        .call("GET", &path, Auth::Bearer(&key), &[], None)
        .map_err(|e| e.to_string())?;
    if !reply.ok() {
        return Err(reply.error().to_string());
    }
    let doc = reply.json().map_err(|e| e.to_string())?;
    let rows = doc
        .get("d")
        .and_then(Value::as_array)
        .ok_or("the API answered no tag list")?;
    Ok(rows
        .iter()
        .map(|r| json!({"id": r["id"], "name": r["tag_key"], "value": r["value"]}))
        .collect())
}

/// Checks a `PATCH /v2/device/tags` body; the error is the answer's message.
pub fn parse_patch(body: &Value) -> Result<BTreeMap<String, String>, &'static str> {
    const INVALID: &str = "Invalid tags body, must be an object like `{[tagKey: string]: string}`";
    let obj = body.as_object().ok_or(INVALID)?;
    let mut tags = BTreeMap::new();
    for (k, v) in obj {
        let v = v.as_str().ok_or(INVALID)?;
        if k.chars().any(char::is_whitespace) {
            return Err("Tag keys cannot contain whitespace");
        }
        if k.is_empty() {
            return Err(INVALID);
        }
        tags.insert(k.clone(), v.to_string());
    }
    Ok(tags)
}

/// Tags wanted but not yet acknowledged by the cloud.
pub fn unreported(
    wanted: &BTreeMap<String, String>,
    reported: &Map<String, Value>,
) -> Map<String, Value> {
    wanted
        .iter()
        .filter(|(k, v)| reported.get(*k).and_then(Value::as_str) != Some(v.as_str()))
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect()
}

/// `PATCH /device/v3/tags` with `{uuid: {tag: value}}`.
pub fn send(
    cloud: &Cloud,
    settings: &Settings,
    tags: &Map<String, Value>,
) -> Result<(), CloudError> {
    super::patch_as_device(cloud, settings, "/device/v3/tags", tags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_bodies_are_checked_as_v19_checks_them() {
        let invalid = "Invalid tags body, must be an object like `{[tagKey: string]: string}`";
        assert_eq!(parse_patch(&json!([])), Err(invalid));
        assert_eq!(parse_patch(&json!({"a": 1})), Err(invalid));
        assert_eq!(
            parse_patch(&json!({"a b": "x"})),
            Err("Tag keys cannot contain whitespace")
        );
        assert_eq!(
            parse_patch(&json!({"a": "x", "b": ""})).unwrap(),
            BTreeMap::from([("a".into(), "x".into()), ("b".into(), "".into())])
        );
    }

    #[test]
    fn only_tags_the_cloud_does_not_have_are_sent() {
        let wanted = BTreeMap::from([("a".to_string(), "1".to_string()), ("b".into(), "2".into())]);
        let reported: Map<String, Value> = [("a".to_string(), json!("1"))].into_iter().collect();
        assert_eq!(
            unreported(&wanted, &reported),
            [("b".to_string(), json!("2"))].into_iter().collect()
        );
    }
}
