//! An in-memory engine: applies steps to a current state the way the executor would, with
//! every step finishing at once. Used by `tinyvisor plan` to show the whole sequence of
//! iterations a target causes, and by the planner's convergence property test.

use super::{plan, Context, CurrentApp, DesiredApp, Step};
use crate::compose::{Service, ServiceStatus};

pub struct Simulation {
    pub current: Vec<CurrentApp>,
    pub ctx: Context,
    next_id: u32,
    /// Engine names of volumes removed while their app was still in the target.
    pub removed_volumes_of_target_apps: Vec<String>,
}

impl Simulation {
    pub fn new(current: Vec<CurrentApp>, ctx: Context) -> Simulation {
        Simulation {
            current,
            ctx,
            next_id: 0,
            removed_volumes_of_target_apps: vec![],
        }
    }

    /// Plans and applies until the plan is empty or `max_iterations` pass. Returns the steps
    /// of each iteration; `converged` tells whether it ended with an empty plan.
    pub fn run(&mut self, target: &[DesiredApp], max_iterations: usize) -> (Vec<Vec<Step>>, bool) {
        let mut iterations = Vec::new();
        for _ in 0..max_iterations {
            let steps = plan(&self.current, target, &self.ctx);
            if steps.is_empty() {
                return (iterations, true);
            }
            self.apply(&steps, target);
            iterations.push(steps);
        }
        (iterations, false)
    }

    fn app_mut(&mut self, app_id: i64, uuid: &str) -> &mut CurrentApp {
        if let Some(i) = self.current.iter().position(|a| a.app_id == app_id) {
            return &mut self.current[i];
        }
        self.current.push(CurrentApp {
            app_id,
            app_uuid: uuid.into(),
            ..Default::default()
        });
        let last = self.current.len() - 1;
        &mut self.current[last]
    }

    fn remove_container(&mut self, s: &Service) {
        for a in &mut self.current {
            a.services.retain(|x| x.container_id != s.container_id);
        }
    }

    fn services_mut<'a>(
        &'a mut self,
        s: &'a Service,
    ) -> impl Iterator<Item = &'a mut Service> + 'a {
        self.current
            .iter_mut()
            .flat_map(|a| a.services.iter_mut())
            .filter(move |x| x.container_id == s.container_id)
    }

    pub fn apply(&mut self, steps: &[Step], target: &[DesiredApp]) {
        for step in steps {
            match step {
                Step::Fetch { image, .. } => {
                    let mut i = image.clone();
                    if i.docker_image_id.is_none() {
                        i.docker_image_id = Some(format!("sha256:{}", i.name));
                    }
                    self.ctx.available_images.push(i);
                }
                Step::Kill { current, .. } | Step::Remove { current } => {
                    self.remove_container(current)
                }
                Step::Stop { current } => {
                    for s in self.services_mut(current) {
                        s.status = ServiceStatus::Other("exited".into());
                        s.config.running = false;
                    }
                }
                Step::Start { target: t } => {
                    let existing = self
                        .current
                        .iter_mut()
                        .flat_map(|a| a.services.iter_mut())
                        .find(|s| {
                            s.app_id == t.app_id
                                && s.service_name == t.service_name
                                && s.commit == t.commit
                        });
                    if let Some(s) = existing {
                        s.status = ServiceStatus::Running;
                        s.config.running = true;
                    } else {
                        self.next_id += 1;
                        let mut s = (**t).clone();
                        s.container_id = Some(format!("simulated-{}", self.next_id));
                        s.created_at = Some(format!(
                            "2100-01-01T{:02}:{:02}:{:02}Z",
                            self.next_id / 3600 % 24,
                            self.next_id / 60 % 60,
                            self.next_id % 60
                        ));
                        s.status = if t.config.running {
                            ServiceStatus::Running
                        } else {
                            ServiceStatus::Installed
                        };
                        self.app_mut(t.app_id, &t.app_uuid).services.push(s);
                    }
                }
                Step::UpdateMetadata { current, target: t }
                | Step::Handover {
                    current, target: t, ..
                } => {
                    for s in self.services_mut(current) {
                        let (id, created) = (s.container_id.clone(), s.created_at.clone());
                        *s = (**t).clone();
                        s.container_id = id;
                        s.created_at = created;
                        s.status = ServiceStatus::Running;
                    }
                }
                Step::UpdateCommit { app_id, commit } => {
                    for a in self.current.iter_mut().filter(|a| a.app_id == *app_id) {
                        a.commit = Some(commit.clone());
                    }
                }
                Step::RemoveImage { image } => self
                    .ctx
                    .available_images
                    .retain(|i| !i.same_metadata(image)),
                Step::SaveImage { image } => self.ctx.available_images.push(image.clone()),
                Step::Cleanup => self.ctx.dangling_images = false,
                Step::CreateNetwork { target: n } => {
                    self.app_mut(n.app_id, &n.app_uuid).networks.push(n.clone())
                }
                Step::RemoveNetwork { current: n } => {
                    for a in &mut self.current {
                        a.networks.retain(|x| {
                            !(x.name == n.name && x.app_id == n.app_id && x.app_uuid == n.app_uuid)
                        });
                    }
                }
                Step::CreateVolume { target: v } => {
                    self.app_mut(v.app_id, &v.app_uuid).volumes.push(v.clone())
                }
                Step::RemoveVolume { current: v } => {
                    if target.iter().any(|t| t.app_id == v.app_id) {
                        self.removed_volumes_of_target_apps.push(v.engine_name());
                    }
                    for a in &mut self.current {
                        a.volumes
                            .retain(|x| !(x.name == v.name && x.app_id == v.app_id));
                    }
                }
                Step::TakeLock { app_id, .. } => {
                    self.ctx.locks_held.insert(*app_id);
                }
                Step::ReleaseLock { app_id } => {
                    self.ctx.locks_held.remove(app_id);
                    self.ctx.leftover_locks.remove(app_id);
                }
                Step::RequireReboot { .. } => self.ctx.reboot_breadcrumb = true,
                Step::EnsureSupervisorNetwork => self.ctx.supervisor_network_ready = true,
                Step::EnsureExtraFirmwareVolume => self.ctx.extra_firmware_ready = true,
                // A blocked start stays blocked: the dry run shows it and does not converge.
                Step::Noop | Step::Blocked { .. } => {}
                // The device reboots: the breadcrumb is gone with the host's /tmp.
                Step::Reboot => self.ctx.reboot_breadcrumb = false,
            }
        }
        // The engine shows nothing of an app that has no objects left.
        self.current
            .retain(|a| !(a.services.is_empty() && a.networks.is_empty() && a.volumes.is_empty()));
    }
}
