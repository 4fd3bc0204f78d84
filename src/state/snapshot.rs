//! Reads the device's current state from the engine and groups it into apps, the way the
//! planner wants it (docs/contract/engine.md C.1, D.5).

use crate::compose::{labels, Network, Service, Volume};
use crate::engine::types::{ContainerInspect, Network as EngineNetwork, Volume as EngineVolume};
use crate::engine::{Engine, Result};
use crate::planner::{CurrentApp, EngineImage};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Everything read from the engine in one pass.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EngineSnapshot {
    pub containers: Vec<ContainerInspect>,
    pub networks: Vec<EngineNetwork>,
    pub volumes: Vec<EngineVolume>,
    #[serde(skip)]
    pub images: Vec<EngineImage>,
}

impl EngineSnapshot {
    /// Supervised containers (current and legacy label), their networks, all volumes, images.
    pub fn read(engine: &Engine) -> Result<EngineSnapshot> {
        let mut ids = Vec::new();
        for label in [labels::SUPERVISED, labels::LEGACY_SUPERVISED] {
            for c in engine.list_containers(true, &[label])? {
                if !ids.contains(&c.id) {
                    ids.push(c.id);
                }
            }
        }
        let mut containers = Vec::new();
        for id in ids {
            match engine.inspect_container(&id) {
                Ok(c) => containers.push(c),
                // Removed between list and inspect.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        let mut networks = Vec::new();
        for label in [labels::SUPERVISED, labels::LEGACY_SUPERVISED] {
            for n in engine.list_networks(&[label])? {
                if !networks.iter().any(|x: &EngineNetwork| x.id == n.id) {
                    networks.push(n);
                }
            }
        }
        let volumes = engine.list_volumes(&[])?;
        let images = engine
            .list_images()?
            .into_iter()
            .map(|i| EngineImage {
                id: i.id,
                references: i
                    .repo_tags
                    .into_iter()
                    .chain(i.repo_digests)
                    .filter(|r| r != "<none>:<none>" && r != "<none>@<none>")
                    .collect(),
            })
            .collect();
        Ok(EngineSnapshot {
            containers,
            networks,
            volumes,
            images,
        })
    }

    /// Groups services, networks and volumes into apps: by uuid when every object of the
    /// device has one, else by app id (docs/contract/engine.md D.5).
    pub fn current_apps(&self) -> Vec<CurrentApp> {
        let services: Vec<Service> = self
            .containers
            .iter()
            .filter_map(Service::from_inspect)
            .collect();
        let networks: Vec<Network> = self
            .networks
            .iter()
            .filter_map(Network::from_engine)
            .collect();
        let volumes: Vec<Volume> = self
            .volumes
            .iter()
            .filter_map(Volume::from_engine)
            .collect();
        let all_have_uuid = services.iter().all(|s| !s.app_uuid.is_empty())
            && networks.iter().all(|n| !n.app_uuid.is_empty())
            && volumes.iter().all(|v| !v.app_uuid.is_empty());
        let mut apps: BTreeMap<String, CurrentApp> = BTreeMap::new();
        let key = |uuid: &str, id: i64| {
            if all_have_uuid {
                uuid.to_string()
            } else {
                id.to_string()
            }
        };
        fn entry<'m>(
            apps: &'m mut BTreeMap<String, CurrentApp>,
            key: String,
            uuid: &str,
            id: i64,
        ) -> &'m mut CurrentApp {
            let app = apps.entry(key).or_insert_with(|| CurrentApp {
                app_id: id,
                ..Default::default()
            });
            if app.app_uuid.is_empty() {
                app.app_uuid = uuid.to_string();
            }
            app
        }
        for s in services {
            entry(
                &mut apps,
                key(&s.app_uuid, s.app_id),
                &s.app_uuid.clone(),
                s.app_id,
            )
            .services
            .push(s);
        }
        for n in networks {
            entry(
                &mut apps,
                key(&n.app_uuid, n.app_id),
                &n.app_uuid.clone(),
                n.app_id,
            )
            .networks
            .push(n);
        }
        for v in volumes {
            entry(
                &mut apps,
                key(&v.app_uuid, v.app_id),
                &v.app_uuid.clone(),
                v.app_id,
            )
            .volumes
            .push(v);
        }
        apps.into_values().collect()
    }
}
