//! Provisioning (docs/contract/cloud-api.md §2): a provisioning key in config.json becomes a
//! registered device with its own API key. The decision is a pure function of what config.json
//! holds; the calls and the config.json writes follow it.

use crate::balena_api::client::{Auth, Cloud, CloudError};
use crate::config::ConfigJson;
use log::{info, warn};
use serde_json::{json, Value};

/// What provisioning has left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Nothing,
    Register,
    /// Make the device key valid for the already registered device; `regenerate` starts over
    /// with a new uuid and key when the device cannot be found.
    Exchange {
        regenerate: bool,
    },
}

/// The decision table of §2.2: `registered_at`, `deviceId`, provisioning `apiKey` present.
pub fn decide(registered: bool, device_id: bool, provisioning_key: bool) -> Plan {
    match (registered, device_id, provisioning_key) {
        (false, _, _) => Plan::Register,
        (true, false, _) => Plan::Exchange { regenerate: true },
        (true, true, true) => Plan::Exchange { regenerate: false },
        (true, true, false) => Plan::Nothing,
    }
}

/// Facts the register call reports.
#[derive(Debug, Clone, Default)]
pub struct RegisterFacts {
    pub device_type: String,
    pub os_version: Option<String>,
    pub os_variant: Option<String>,
    pub mac_address: Option<String>,
}

/// What config.json says about provisioning, read once per attempt.
struct Keys {
    uuid: String,
    device_api_key: String,
    provisioning_key: Option<String>,
    application_id: Option<i64>,
    registered: bool,
    device_id: Option<i64>,
}

fn keys(cfg: &ConfigJson) -> Keys {
    let nonempty = |k: &str| cfg.get_str(k).filter(|v| !v.is_empty());
    Keys {
        uuid: nonempty("uuid").unwrap_or_default(),
        device_api_key: nonempty("deviceApiKey").unwrap_or_default(),
        provisioning_key: nonempty("apiKey"),
        application_id: cfg.get_int("applicationId"),
        registered: cfg.get_int("registered_at").is_some(),
        device_id: cfg.get_int("deviceId"),
    }
}

/// Whether provisioning has anything to do (§2.1.3).
pub fn needed(cfg: &ConfigJson) -> bool {
    let k = keys(cfg);
    decide(
        k.registered,
        k.device_id.is_some(),
        k.provisioning_key.is_some(),
    ) != Plan::Nothing
        || k.uuid.is_empty()
}

fn config_error(e: crate::config::ConfigError) -> CloudError {
    CloudError::Invalid(e.to_string())
}

/// One provisioning attempt. `Ok` means the device is provisioned (or was already); an error
/// is retried by the caller after `bootstrapRetryDelay`.
pub fn provision(cloud: &Cloud, cfg: &ConfigJson, facts: &RegisterFacts) -> Result<(), CloudError> {
    let k = keys(cfg);
    let plan = decide(
        k.registered,
        k.device_id.is_some(),
        k.provisioning_key.is_some(),
    );
    let device_id = match plan {
        Plan::Nothing => return Ok(()),
        Plan::Register => match register(cloud, &k, facts)? {
            Registered::Id(id) => id,
            Registered::Conflict => {
                info!("Device uuid already registered; exchanging keys");
                exchange(cloud, cfg, &k, true)?
            }
        },
        Plan::Exchange { regenerate } => exchange(cloud, cfg, &k, regenerate)?,
    };
    let registered_at = cfg
        .get_int("registered_at")
        .unwrap_or_else(crate::logs::now_ms);
    cfg.update(&[
        ("registered_at", Some(json!(registered_at))),
        ("deviceId", Some(json!(device_id))),
        ("apiKey", None),
    ])
    .map_err(config_error)?;
    info!("Device provisioned (device id {device_id})");
    Ok(())
}

enum Registered {
    Id(i64),
    Conflict,
}

fn register(cloud: &Cloud, k: &Keys, facts: &RegisterFacts) -> Result<Registered, CloudError> {
    let missing: Vec<&str> = [
        ("a provisioning key", k.provisioning_key.is_none()),
        ("an application id", k.application_id.is_none()),
        ("a uuid", k.uuid.is_empty()),
    ]
    .iter()
    .filter(|(_, m)| *m)
    .map(|(what, _)| *what)
    .collect();
    if !missing.is_empty() {
        return Err(CloudError::Invalid(format!(
            "Cannot provision without {}",
            missing.join(", ")
        )));
    }
    let key = k.provisioning_key.as_deref().unwrap_or_default();
    let body = json!({
        "application": k.application_id,
        "uuid": k.uuid,
        "device_type": facts.device_type,
        "api_key": k.device_api_key,
        "supervisor_version": crate::SUPERVISOR_VERSION,
        "os_version": facts.os_version,
        "os_variant": facts.os_variant,
        "mac_address": facts.mac_address,
    });
    let reply = cloud.call(
        "POST",
        "/device/register",
        Auth::Bearer(key),
        &[],
        Some(&body),
    )?;
    match reply.status {
        201 => {
            let id = reply
                .json()?
                .get("id")
                .and_then(Value::as_i64)
                .ok_or_else(|| CloudError::Invalid("register answer has no numeric `id`".into()))?;
            Ok(Registered::Id(id))
        }
        409 => Ok(Registered::Conflict),
        _ => Err(reply.error()),
    }
}

/// `/v7/device?$select=id&$filter=uuid eq '<uuid>'`, URL-encoded as pinejs does.
pub fn device_lookup_path(uuid: &str) -> String {
    format!("/v7/device?$select=id&$filter=uuid%20eq%20'{uuid}'")
}

fn lookup(cloud: &Cloud, uuid: &str, key: &str) -> Result<Option<i64>, CloudError> {
    let reply = cloud.call(
        "GET",
        &device_lookup_path(uuid),
        Auth::Bearer(key),
        &[],
        None,
    )?;
    if !reply.ok() {
        return Err(reply.error());
    }
    Ok(reply
        .json()?
        .get("d")
        .and_then(Value::as_array)
        .and_then(|d| d.first())
        .and_then(|d| d.get("id"))
        .and_then(Value::as_i64))
}

/// Key exchange (§2.4). With `regenerate`, a device that cannot be found gets a new uuid and
/// key so that the next attempt registers afresh.
fn exchange(
    cloud: &Cloud,
    cfg: &ConfigJson,
    k: &Keys,
    regenerate: bool,
) -> Result<i64, CloudError> {
    let result = try_exchange(cloud, k);
    if result.is_err() && regenerate {
        warn!("Key exchange failed; generating a new uuid and device key to register afresh");
        let new_key = |what: &str| {
            crate::encoding::random_hex_key()
                .map_err(|e| CloudError::Invalid(format!("cannot generate a {what}: {e}")))
        };
        let (uuid, key) = (new_key("uuid")?, new_key("device key")?);
        cfg.update(&[
            ("uuid", Some(json!(uuid))),
            ("deviceApiKey", Some(json!(key))),
            ("registered_at", None),
            ("deviceId", None),
        ])
        .map_err(config_error)?;
    }
    result
}

fn try_exchange(cloud: &Cloud, k: &Keys) -> Result<i64, CloudError> {
    if !k.device_api_key.is_empty() {
        if let Ok(Some(id)) = lookup(cloud, &k.uuid, &k.device_api_key) {
            return Ok(id);
        }
    }
    let exchange_error = |why: String| {
        CloudError::Invalid(format!(
            "Couldn't fetch device with provisioning key: {why}"
        ))
    };
    let Some(pkey) = k.provisioning_key.as_deref() else {
        return Err(exchange_error("no provisioning key".into()));
    };
    let id = match lookup(cloud, &k.uuid, pkey) {
        Ok(Some(id)) => id,
        Ok(None) => return Err(exchange_error("device not found".into())),
        Err(e) => return Err(exchange_error(e.to_string())),
    };
    let reply = cloud.call(
        "POST",
        &format!("/api-key/device/{id}/device-key"),
        Auth::Bearer(pkey),
        &[],
        Some(&json!({"apiKey": k.device_api_key})),
    )?;
    if reply.status != 200 {
        return Err(exchange_error(format!(
            "key exchange answered {}",
            reply.status
        )));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_table_of_section_2_2() {
        let cases = [
            ((false, false, false), Plan::Register),
            ((false, true, true), Plan::Register),
            ((true, false, false), Plan::Exchange { regenerate: true }),
            ((true, false, true), Plan::Exchange { regenerate: true }),
            ((true, true, true), Plan::Exchange { regenerate: false }),
            ((true, true, false), Plan::Nothing),
        ];
        for ((r, d, k), want) in cases {
            assert_eq!(
                decide(r, d, k),
                want,
                "registered={r} deviceId={d} apiKey={k}"
            );
        }
    }

    #[test]
    fn lookup_path_is_pine_encoded() {
        assert_eq!(
            device_lookup_path("abc"),
            "/v7/device?$select=id&$filter=uuid%20eq%20'abc'"
        );
    }
}
