//! App volumes: `<appId>_<name>` on the engine.

use super::labels::{self, APP_UUID, LEGACY_SUPERVISED, SUPERVISED};
use super::target::{join, obj, string, Result};
use crate::engine::types::{Volume as EngineVolume, VolumeCreate};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub name: String,
    pub app_id: i64,
    pub app_uuid: String,
    pub driver: String,
    pub driver_opts: BTreeMap<String, String>,
    /// User labels (the supervisor's own are added on create and ignored on compare).
    pub labels: BTreeMap<String, String>,
}

fn str_map(v: Option<&Value>, path: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(v) = v.filter(|v| !v.is_null()) {
        for (k, val) in obj(v, path)? {
            out.insert(k.clone(), string(val, &join(path, k))?);
        }
    }
    Ok(out)
}

pub fn validate_spec(spec: &Map<String, Value>, path: &str) -> Result<()> {
    Volume::from_target("x", spec, 0, "x", path).map(drop)
}

impl Volume {
    pub fn from_target(
        name: &str,
        spec: &Map<String, Value>,
        app_id: i64,
        app_uuid: &str,
        path: &str,
    ) -> Result<Volume> {
        let driver = match spec.get("driver") {
            None | Some(Value::Null) => "local".to_string(),
            Some(v) => string(v, &join(path, "driver"))?,
        };
        Ok(Volume {
            name: name.to_string(),
            app_id,
            app_uuid: app_uuid.to_string(),
            driver,
            driver_opts: str_map(spec.get("driver_opts"), &join(path, "driver_opts"))?,
            labels: labels::normalise_labels(&str_map(spec.get("labels"), &join(path, "labels"))?),
        })
    }

    pub fn engine_name(&self) -> String {
        format!("{}_{}", self.app_id, self.name)
    }

    /// Any engine volume named `<digits>_<name>` is an app volume (the real supervisor does
    /// not filter volumes by label).
    pub fn from_engine(v: &EngineVolume) -> Option<Volume> {
        let (prefix, name) = v.name.split_once('_')?;
        if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
            return None;
        }
        let all = labels::normalise_labels(&v.labels);
        let app_uuid = all.get(APP_UUID).cloned().unwrap_or_default();
        let labels = all
            .into_iter()
            .filter(|(k, _)| k != SUPERVISED && k != LEGACY_SUPERVISED && k != APP_UUID)
            .collect();
        Some(Volume {
            name: name.to_string(),
            app_id: prefix.parse().ok()?,
            app_uuid,
            driver: v.driver.clone(),
            driver_opts: v.options.clone(),
            labels,
        })
    }

    pub fn to_create(&self) -> VolumeCreate {
        let mut labels = self.labels.clone();
        labels.insert(SUPERVISED.into(), "true".into());
        labels.insert(APP_UUID.into(), self.app_uuid.clone());
        VolumeCreate {
            name: self.engine_name(),
            driver: self.driver.clone(),
            driver_opts: self.driver_opts.clone(),
            labels,
        }
    }

    /// Compares driver, driver options and user labels (docs/contract/engine.md D.3).
    pub fn is_equal_config(&self, other: &Volume) -> bool {
        self.driver == other.driver
            && self.driver_opts == other.driver_opts
            && self.labels == other.labels
    }
}
