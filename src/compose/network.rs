//! App networks: `<appUuid>_<name>` on the engine (legacy `<appId>_<name>` still recognised).

use super::labels::{self, APP_ID, PRIVATE_IPAM, SUPERVISED};
use super::target::{boolean, err, join, obj, string, Result};
use crate::engine::types::{Ipam, IpamConfig, Network as EngineNetwork, NetworkCreate};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NetworkConfig {
    pub driver: String,
    pub ipam: Ipam,
    pub enable_ipv6: bool,
    pub internal: bool,
    pub config_only: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Network {
    /// The name in the compose file (`default`, `backend`, ...).
    pub name: String,
    pub app_id: i64,
    pub app_uuid: String,
    pub config: NetworkConfig,
}

fn str_map(v: Option<&Value>, path: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(v) = v {
        if v.is_null() {
            return Ok(out);
        }
        for (k, val) in obj(v, path)? {
            out.insert(k.clone(), string(val, &join(path, k))?);
        }
    }
    Ok(out)
}

/// Validates a compose network object (driver, driver_opts, labels, ipam, enable_ipv6,
/// internal, config_only).
pub fn validate_spec(spec: &Map<String, Value>, path: &str) -> Result<()> {
    from_spec("x", spec, 0, "x", path).map(drop)
}

fn from_spec(
    name: &str,
    spec: &Map<String, Value>,
    app_id: i64,
    app_uuid: &str,
    path: &str,
) -> Result<Network> {
    let driver = match spec.get("driver") {
        None | Some(Value::Null) => "bridge".to_string(),
        Some(v) => string(v, &join(path, "driver"))?,
    };
    let mut ipam = Ipam {
        driver: "default".into(),
        ..Default::default()
    };
    if let Some(v) = spec.get("ipam").filter(|v| !v.is_null()) {
        let ip = join(path, "ipam");
        let m = obj(v, &ip)?;
        if let Some(d) = m.get("driver") {
            ipam.driver = string(d, &join(&ip, "driver"))?;
        }
        ipam.options = str_map(m.get("options"), &join(&ip, "options"))?;
        if let Some(Value::Array(items)) = m.get("config") {
            for (i, item) in items.iter().enumerate() {
                let cp = format!("{ip}.config[{i}]");
                let c = obj(item, &cp)?;
                let field = |k: &str| -> Result<Option<String>> {
                    c.get(k).map(|v| string(v, &join(&cp, k))).transpose()
                };
                let aux = str_map(c.get("aux_addresses"), &join(&cp, "aux_addresses"))?;
                ipam.config.push(IpamConfig {
                    subnet: field("subnet")?,
                    ip_range: field("ip_range")?,
                    gateway: field("gateway")?,
                    auxiliary_addresses: (!aux.is_empty()).then_some(aux),
                });
            }
        } else if let Some(other) = m.get("config").filter(|v| !v.is_null()) {
            return err(
                &join(&ip, "config"),
                format!("expected a list, got {}", super::target::kind(other)),
            );
        }
    }
    let flag = |k: &str| -> Result<bool> {
        match spec.get(k) {
            None | Some(Value::Null) => Ok(false),
            Some(v) => boolean(v, &join(path, k)),
        }
    };
    let mut labels = str_map(spec.get("labels"), &join(path, "labels"))?;
    labels = labels::normalise_labels(&labels);
    // The marker travels with the labels (as in v19), so that removing a custom IPAM config
    // from a network shows as a label difference and the network is recreated.
    labels.remove(PRIVATE_IPAM);
    if !ipam.config.is_empty() {
        labels.insert(PRIVATE_IPAM.into(), "true".into());
    }
    Ok(Network {
        name: name.to_string(),
        app_id,
        app_uuid: app_uuid.to_string(),
        config: NetworkConfig {
            driver,
            ipam,
            enable_ipv6: flag("enable_ipv6")?,
            internal: flag("internal")?,
            config_only: flag("config_only")?,
            labels,
            options: str_map(spec.get("driver_opts"), &join(path, "driver_opts"))?,
        },
    })
}

impl Network {
    /// From the target release's compose network object (already validated).
    pub fn from_target(
        name: &str,
        spec: &Map<String, Value>,
        app_id: i64,
        app_uuid: &str,
    ) -> Result<Network> {
        from_spec(name, spec, app_id, app_uuid, name)
    }

    /// The `default` network every app gets; config-only when no service needs it.
    pub fn default_for(app_id: i64, app_uuid: &str, config_only: bool) -> Network {
        let mut n = from_spec("default", &Map::new(), app_id, app_uuid, "default")
            .expect("an empty spec is valid");
        n.config.config_only = config_only;
        n
    }

    pub fn engine_name(&self) -> String {
        format!("{}_{}", self.app_uuid, self.name)
    }

    /// Reads a supervised engine network back; None if it is not one of ours.
    pub fn from_engine(n: &EngineNetwork) -> Option<Network> {
        let labels = labels::normalise_labels(&n.labels);
        if !labels::is_supervised(&labels) {
            return None;
        }
        let (prefix, name) = n.name.split_once('_')?;
        let label_app_id = labels.get(APP_ID).and_then(|v| v.parse::<i64>().ok());
        let numeric = prefix.bytes().all(|b| b.is_ascii_digit());
        let app_id = if numeric {
            prefix.parse().ok()?
        } else {
            label_app_id?
        };
        // Legacy numeric names carry no uuid; they are matched to their app by id.
        let app_uuid = if numeric {
            String::new()
        } else {
            prefix.to_string()
        };
        let user_labels = labels
            .into_iter()
            .filter(|(k, _)| k != SUPERVISED && k != APP_ID)
            .collect();
        Some(Network {
            name: name.to_string(),
            app_id,
            app_uuid,
            config: NetworkConfig {
                driver: n.driver.clone(),
                ipam: Ipam {
                    driver: if n.ipam.driver.is_empty() {
                        "default".into()
                    } else {
                        n.ipam.driver.clone()
                    },
                    config: n.ipam.config.clone(),
                    options: n.ipam.options.clone(),
                },
                enable_ipv6: n.enable_ipv6,
                internal: n.internal,
                config_only: n.config_only,
                labels: user_labels,
                options: n.options.clone(),
            },
        })
    }

    /// The engine create body, with the supervisor's labels.
    pub fn to_create(&self) -> NetworkCreate {
        let mut labels = self.config.labels.clone();
        labels.insert(SUPERVISED.into(), "true".into());
        labels.insert(APP_ID.into(), self.app_id.to_string());
        NetworkCreate {
            name: self.engine_name(),
            check_duplicate: true,
            driver: self.config.driver.clone(),
            internal: self.config.internal,
            attachable: false,
            enable_ipv6: self.config.enable_ipv6,
            ipam: self.config.ipam.clone(),
            options: self.config.options.clone(),
            labels,
            config_only: self.config.config_only,
        }
    }

    /// Equal per docs/contract/engine.md D.2: an unset target IPAM config ignores the
    /// engine-assigned one; a config-only target ignores the driver.
    pub fn is_equal_config(&self, target: &Network) -> bool {
        let (c, t) = (&self.config, &target.config);
        let ipam_equal = if t.ipam.config.is_empty() {
            c.ipam.driver == t.ipam.driver && c.ipam.options == t.ipam.options
        } else {
            c.ipam == t.ipam
        };
        ipam_equal
            && (t.config_only || c.driver == t.driver)
            && c.enable_ipv6 == t.enable_ipv6
            && c.internal == t.internal
            && c.config_only == t.config_only
            && c.labels == t.labels
            && c.options == t.options
    }
}
