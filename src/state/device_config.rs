//! Runs the device-config half of an iteration (docs/contract/device-config.md §1.3): reads what
//! the device has (config.json, the database, the VPN unit, the boot backends), asks
//! [`crate::planner::device_config::plan`] for steps and runs them. They run alone: app steps wait
//! for the next iteration.

use super::apply::StateEngine;
use super::step_error::{Failure, StepError};
use crate::boot_config::{self, Backend, BootKeys, Mounts};
use crate::compose::target::TargetState;
use crate::planner::device_config::{self as deviceconfig, ConfigStep, Current, Kind, Storage};
use log::{info, warn};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const OPENVPN: &str = "openvpn.service";
/// One VPN attempt an hour (docs/contract/device-config.md §6.1).
const VPN_RETRY: Duration = Duration::from_secs(3600);

fn step_error(step: &str, message: String) -> StepError {
    StepError::new(step, Failure::Host(message))
}

/// The reboot breadcrumb in the host's /tmp (gone after a reboot).
pub fn reboot_breadcrumb(root: &std::path::Path) -> std::path::PathBuf {
    root.join("tmp/balena-supervisor/reboot-after-apply")
}

/// Touches the reboot breadcrumb.
pub fn set_reboot_breadcrumb(root: &std::path::Path, reason: &str) -> std::io::Result<()> {
    let p = reboot_breadcrumb(root);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::write(&p, b"")?;
    crate::logs::event(
        format!("Reboot has been scheduled to apply changes: {reason}"),
        false,
    );
    Ok(())
}

impl StateEngine {
    fn backends(&self, device_type: &str) -> Vec<Box<dyn Backend>> {
        let release = crate::host::os_release(&self.settings.paths.host_os_version_path);
        boot_config::backends_for(
            device_type,
            release.get("META_BALENA_VERSION").map(String::as_str),
            &self.settings.paths.boot_mountpoint,
        )
    }

    fn mounts(&self) -> Mounts<'_> {
        Mounts {
            boot: self.settings.paths.boot_mountpoint.clone(),
            root: self.settings.paths.root_mountpoint.clone(),
            config_json: &self.settings.config_json,
        }
    }

    /// Current supervisor config values, as v19 stores them.
    fn current_config_vars(&self) -> std::collections::BTreeMap<&'static str, String> {
        let json = self.settings.config_json.snapshot();
        let db = self.db();
        deviceconfig::VARS
            .iter()
            .filter_map(|v| {
                let value = match v.storage {
                    Storage::ConfigJson => json.get(v.key).and_then(|x| match x {
                        Value::String(s) => Some(s.clone()),
                        Value::Null => None,
                        other => Some(other.to_string()),
                    }),
                    Storage::Db => db.config_get(v.key).ok().flatten(),
                };
                Some((v.env, value?))
            })
            .collect()
    }

    /// The firewall as the target, local mode and the API port ask for; installed when that
    /// differs from what was last tried (at start, and on a change of mode, local mode or
    /// host-networked services). `TINYVISOR_FIREWALL=off` leaves the host's tables alone (a
    /// development machine running tinyvisor on its own root).
    pub(super) fn apply_firewall(&mut self, target: Option<&TargetState>) {
        if std::env::var("TINYVISOR_FIREWALL").is_ok_and(|v| v == "off") {
            return;
        }
        let stored = || self.db().config_get("firewallMode").ok().flatten();
        let mode = target
            .and_then(|t| t.var("HOST_FIREWALL_MODE").map(str::to_string))
            .or_else(stored)
            .unwrap_or_default();
        let host_network_services = target.is_some_and(|t| {
            t.apps.values().any(|a| {
                a.release.iter().any(|r| {
                    r.services
                        .values()
                        .any(|s| s.composition.network_mode.as_deref() == Some("host"))
                })
            })
        });
        let wanted = crate::firewall::Settings {
            mode: crate::firewall::Mode::parse(&mode),
            local_mode: self.local_mode,
            api_port: self.settings.listen_port,
            host_network_services,
        };
        if self.firewall_tried == Some(wanted) {
            return;
        }
        // Tried once per setting: a host without iptables is told once, not every iteration.
        self.firewall_tried = Some(wanted);
        if let Err(e) = crate::firewall::apply(&wanted) {
            warn!("Firewall mode not applied: {e}");
        }
    }

    /// [`deviceconfig::current_as_target`] of what the device has now.
    pub(super) fn current_config_as_target(&self) -> serde_json::Map<String, Value> {
        let vpn_on = !self.settings.config_json.unmanaged()
            && self.host.unit_active(OPENVPN).unwrap_or(false);
        deviceconfig::current_as_target(&self.current_config_vars(), self.local_mode, vpn_on)
    }

    /// Plans and runs this iteration's device-config steps; `None` when there are none.
    pub(super) fn apply_device_config(
        &mut self,
        target: &TargetState,
    ) -> Result<Option<()>, StepError> {
        let managed = !self.settings.config_json.unmanaged();
        // The device type as resolved at start (device-type.json, else config.json).
        let device_type = self.settings.device_type.slug.clone();
        let backends = self.backends(&device_type);
        let mounts = self.mounts();
        let mut boot = Vec::new();
        for b in &backends {
            let now = b.read(&mounts).map_err(|e| {
                crate::logs::event(format!("Apply boot config error: {e}"), true);
                step_error("read boot config", e.0)
            })?;
            boot.push((b.as_ref() as &dyn BootKeys, now));
        }
        let recently = self.vpn_tried_at.is_some_and(|t| t.elapsed() < VPN_RETRY);
        let current = Current {
            vars: self.current_config_vars(),
            // Asked of systemd only when a VPN step could follow.
            vpn_active: if managed && !recently {
                self.host.unit_active(OPENVPN).ok()
            } else {
                None
            },
            boot,
        };
        let plan = deviceconfig::plan(&target.config, &current, &device_type, managed, recently)
            .map_err(|e| {
                crate::logs::event(format!("Apply boot config error: {e}"), true);
                StepError::new("device config", Failure::Refused(e))
            })?;
        for w in &plan.warnings {
            crate::logs::event(w.clone(), true);
        }
        if plan.steps.is_empty() {
            return Ok(None);
        }
        for step in &plan.steps {
            self.run_config_step(step, &backends, &current, &device_type)?;
        }
        Ok(Some(()))
    }

    fn run_config_step(
        &mut self,
        step: &ConfigStep,
        backends: &[Box<dyn Backend>],
        current: &Current,
        device_type: &str,
    ) -> Result<(), StepError> {
        match step {
            ConfigStep::ChangeConfig { changes } => {
                let shown = deviceconfig::human_readable(changes);
                info!("Applying step: changeConfig {shown}");
                crate::logs::event(format!("Applying configuration change {shown}"), false);
                let result = self.store_config(changes);
                match &result {
                    Ok(()) => {
                        crate::logs::event(format!("Applied configuration change {shown}"), false);
                        if let Some(c) = changes.iter().find(|c| c.var.key == "hostDiscoverability")
                        {
                            self.apply_discoverability(c.value == "true");
                        }
                    }
                    Err(e) => crate::logs::event(
                        format!("Error applying configuration change: {e}"),
                        true,
                    ),
                }
                result.map_err(|e| StepError::new("changeConfig", e))
            }
            ConfigStep::SetVpn { enable } => {
                info!("Applying step: setVPNEnabled {enable}");
                self.vpn_tried_at = Some(Instant::now());
                let result = if *enable {
                    self.host.start_unit(OPENVPN)
                } else {
                    self.host.stop_unit(OPENVPN)
                };
                match result {
                    Ok(()) => crate::logs::event(
                        format!("Applied configuration change {{\"SUPERVISOR_VPN_CONTROL\":\"{enable}\"}}"),
                        false,
                    ),
                    // The VPN must not hold app updates back: logged, tried again in an hour.
                    Err(e) => warn!("Could not {} the VPN: {e}", if *enable { "start" } else { "stop" }),
                }
                Ok(())
            }
            ConfigStep::SetBootConfig { target } => {
                info!("Applying step: setBootConfig");
                let mounts = self.mounts();
                // `current.boot` holds the same backends, in the same order, as keys only.
                for (backend, (keys, now)) in backends.iter().zip(&current.boot) {
                    let Some(wanted) =
                        deviceconfig::backend_target(*keys, target, device_type, now)
                    else {
                        continue;
                    };
                    let shown = serde_json::to_string(&boot_config::boot_to_env(*keys, &wanted))
                        .unwrap_or_default();
                    crate::logs::event(format!("Applying boot config: {shown}"), false);
                    if let Err(e) = backend.write(&mounts, &wanted) {
                        crate::logs::event(format!("Error setting boot config: {e}"), true);
                        return Err(step_error("setBootConfig", e.0));
                    }
                    crate::logs::event(format!("Applied boot config: {shown}"), false);
                }
                Ok(())
            }
            ConfigStep::RebootBreadcrumb { reason } => {
                info!("Applying step: setRebootBreadcrumb");
                set_reboot_breadcrumb(&self.settings.paths.root_mountpoint, reason)
                    .map_err(|e| StepError::new("setRebootBreadcrumb", e.into()))
            }
        }
    }

    /// `HOST_DISCOVERABILITY`: avahi's service and socket started or stopped (errors logged).
    pub(super) fn apply_discoverability(&self, on: bool) {
        for unit in ["avahi-daemon.service", "avahi-daemon.socket"] {
            let result = if on {
                self.host.start_unit(unit)
            } else {
                self.host.stop_unit(unit)
            };
            match result {
                Ok(()) => {}
                // No system bus (a development machine): nothing to switch.
                Err(crate::dbus::Error::Io(e)) => {
                    info!("{unit} left as it is: no system bus ({e})");
                    return;
                }
                Err(e) => warn!(
                    "Could not {} {unit}: {e}",
                    if on { "start" } else { "stop" }
                ),
            }
        }
    }

    /// Writes changed supervisor config values where v19 keeps them.
    fn store_config(&self, changes: &[deviceconfig::Change]) -> Result<(), Failure> {
        let mut json_changes: Vec<(&str, Option<Value>)> = Vec::new();
        for c in changes {
            match c.var.storage {
                Storage::ConfigJson => {
                    let value = match c.var.kind {
                        Kind::Bool => json!(c.value == "true"),
                        Kind::Int => c
                            .value
                            .parse::<i64>()
                            .map(|n| json!(n))
                            .unwrap_or(json!(c.value)),
                        Kind::Word(_) => json!(c.value),
                    };
                    json_changes.push((c.var.key, Some(value)));
                }
                Storage::Db => {
                    self.db().config_set(c.var.key, Some(&c.value))?;
                    if c.var.key == super::apply::API_REQUEST_TIMEOUT_KEY {
                        crate::balena_api::client::follow_api_request_timeout(&c.value);
                    }
                }
            }
        }
        if !json_changes.is_empty() {
            self.settings.config_json.update(&json_changes)?;
        }
        Ok(())
    }
}
