//! `/v2/cleanup-volumes`: the volumes nothing uses any more.

use super::apply::StateEngine;
use super::executor::EXTRA_FIRMWARE_VOLUME;
use super::step_error::Failure;
use crate::compose::target::TargetState;
use log::info;
use std::collections::BTreeSet;

impl StateEngine {
    /// Removes every engine volume that no container (of any kind) mounts and that is not a
    /// volume of a target app (docs/contract/device-api.md §3.28). The `extra-firmware` volume is
    /// kept: it is the OS's, recreated by the next apply anyway (v19 removed it here).
    pub(super) fn cleanup_volumes(&self, target: Option<&TargetState>) -> Result<usize, Failure> {
        let referenced: BTreeSet<String> = target
            .iter()
            .flat_map(|t| t.apps.values())
            .flat_map(|a| {
                a.release
                    .iter()
                    .flat_map(move |r| r.volumes.keys().map(move |v| format!("{}_{v}", a.id)))
            })
            .collect();
        let mut mounted = BTreeSet::new();
        for c in self.engine.list_containers(true, &[])? {
            let inspect = match self.engine.inspect_container(&c.id) {
                Ok(i) => i,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            let volumes = inspect.mounts.into_iter().filter(|m| !m.name.is_empty());
            mounted.extend(volumes.map(|m| m.name));
        }
        let mut removed = 0;
        for v in self.engine.list_volumes(&[])? {
            if referenced.contains(&v.name)
                || mounted.contains(&v.name)
                || v.name == EXTRA_FIRMWARE_VOLUME
            {
                continue;
            }
            match self.engine.remove_volume(&v.name, false) {
                Ok(()) => removed += 1,
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        info!("Removed {removed} unused volumes");
        Ok(removed)
    }
}
