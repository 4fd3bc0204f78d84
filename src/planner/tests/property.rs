//! Property test: random current/target pairs; apply the planned steps to an in-memory model
//! of the engine and re-plan until nothing is left. It must converge within a bounded number
//! of iterations, end where the target says, and never remove a volume of an app that is
//! still in the target.

use super::*;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const APPS: &[(&str, i64)] = &[("uuid-a", 1), ("uuid-b", 2), ("uuid-c", 3)];
const NAMES: &[&str] = &["main", "web", "db", "cache"];
const IMAGES: &[&str] = &["img1", "img2", "img3"];
const STRATEGIES: &[&str] = &[
    "download-then-kill",
    "kill-then-download",
    "delete-then-download",
    "hand-over",
];

fn random_service(
    rng: &mut Rng,
    uuid: &str,
    app_id: i64,
    name: &str,
    commit: &str,
    volumes: &[&str],
) -> Service {
    let mut composition = serde_json::Map::new();
    if rng.chance(40) {
        composition.insert("environment".into(), json!({"V": rng.below(3).to_string()}));
    }
    if !volumes.is_empty() && rng.chance(40) {
        composition.insert(
            "volumes".into(),
            json!([format!("{}:/data", rng.pick(volumes))]),
        );
    }
    if rng.chance(20) {
        composition.insert("running".into(), json!(false));
    }
    if rng.chance(20) {
        composition.insert("networks".into(), json!(["backend"]));
    }
    let labels = json!({"io.balena.update.strategy": *rng.pick(STRATEGIES)});
    let image = *rng.pick(IMAGES);
    target_svc_in(
        uuid,
        app_id,
        name,
        image,
        commit,
        Value::Object(composition),
        labels,
    )
}

fn volume(app_id: i64, uuid: &str, name: &str) -> Volume {
    Volume {
        name: name.into(),
        app_id,
        app_uuid: uuid.into(),
        driver: "local".into(),
        driver_opts: Default::default(),
        labels: Default::default(),
    }
}

fn backend(app_id: i64, uuid: &str) -> Network {
    Network::from_target("backend", &Default::default(), app_id, uuid).unwrap()
}

fn random_target(rng: &mut Rng) -> Vec<TargetApp> {
    let mut apps = Vec::new();
    for (uuid, id) in APPS {
        if !rng.chance(60) {
            continue;
        }
        let commit = format!("c{}", rng.below(3));
        let volume_names: Vec<&str> = ["data", "other"]
            .into_iter()
            .filter(|_| rng.chance(60))
            .collect();
        let mut services = Vec::new();
        for name in NAMES {
            if rng.chance(50) {
                services.push(random_service(rng, uuid, *id, name, &commit, &volume_names));
            }
        }
        apps.push(TargetApp {
            app_id: *id,
            app_uuid: uuid.to_string(),
            name: "app".into(),
            commit: Some(commit),
            services,
            networks: vec![default_net(uuid, *id), backend(*id, uuid)],
            volumes: volume_names.iter().map(|v| volume(*id, uuid, v)).collect(),
            rejected: false,
        });
    }
    apps
}

struct Model {
    current: Vec<CurrentApp>,
    ctx: Context,
    next_id: u32,
    removed_volumes_of_target_apps: Vec<String>,
}

impl Model {
    fn from_random(rng: &mut Rng) -> Model {
        // The device runs some earlier random target, in assorted states.
        let earlier = random_target(rng);
        let mut next_id = 0;
        let mut ctx = ctx();
        let mut current = Vec::new();
        for t in earlier {
            let mut services = Vec::new();
            for s in &t.services {
                next_id += 1;
                let mut c = s.clone();
                c.container_id = Some(format!("ctr{next_id}"));
                c.created_at = Some(format!("2026-11-25T10:00:{:02}Z", next_id % 60));
                c.status = Status::Running;
                match rng.below(10) {
                    0 => c = with_status(c, Status::Dead, false),
                    1 => c = with_status(c, Status::Installed, false),
                    2 => c = with_status(c, Status::Other("exited".into()), false),
                    _ => {
                        if !s.config.running {
                            c = with_status(c, Status::Other("exited".into()), false);
                        }
                    }
                }
                ctx.available_images.push(avail(s));
                services.push(c);
            }
            current.push(CurrentApp {
                app_id: t.app_id,
                app_uuid: t.app_uuid.clone(),
                commit: t.commit.clone(),
                services,
                networks: t
                    .networks
                    .iter()
                    .filter(|_| rng.chance(80))
                    .cloned()
                    .collect(),
                volumes: t.volumes.clone(),
            });
        }
        Model {
            current,
            ctx,
            next_id,
            removed_volumes_of_target_apps: vec![],
        }
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
        self.current.last_mut().unwrap()
    }

    fn remove_container(&mut self, s: &Service) {
        for a in &mut self.current {
            a.services.retain(|x| x.container_id != s.container_id);
        }
    }

    fn apply(&mut self, steps: &[Step], target: &[TargetApp]) {
        for step in steps {
            match step {
                Step::Fetch { image, .. } => {
                    let mut i = image.clone();
                    i.docker_image_id = Some(format!("sha256:{}", i.name));
                    self.ctx.available_images.push(i);
                }
                Step::Kill { current, .. } | Step::Remove { current } => {
                    self.remove_container(current)
                }
                Step::Stop { current } => {
                    for a in &mut self.current {
                        for s in a
                            .services
                            .iter_mut()
                            .filter(|s| s.container_id == current.container_id)
                        {
                            s.status = Status::Other("exited".into());
                            s.config.running = false;
                        }
                    }
                }
                Step::Start { target: t } => {
                    let app = self.app_mut(t.app_id, &t.app_uuid);
                    if let Some(s) = app
                        .services
                        .iter_mut()
                        .find(|s| s.service_name == t.service_name && s.commit == t.commit)
                    {
                        s.status = Status::Running;
                        s.config.running = true;
                    } else {
                        self.next_id += 1;
                        let mut s = (**t).clone();
                        s.container_id = Some(format!("ctr{}", self.next_id));
                        s.created_at = Some(format!(
                            "2026-11-25T11:{:02}:{:02}Z",
                            self.next_id / 60 % 60,
                            self.next_id % 60
                        ));
                        s.status = if t.config.running {
                            Status::Running
                        } else {
                            Status::Installed
                        };
                        let id = self.next_id;
                        let app = self.app_mut(t.app_id, &t.app_uuid);
                        app.services.push(s);
                        let _ = id;
                    }
                }
                Step::UpdateMetadata { current, target: t }
                | Step::Handover {
                    current, target: t, ..
                } => {
                    for a in &mut self.current {
                        for s in a
                            .services
                            .iter_mut()
                            .filter(|s| s.container_id == current.container_id)
                        {
                            let id = s.container_id.clone();
                            let created = s.created_at.clone();
                            *s = (**t).clone();
                            s.container_id = id;
                            s.created_at = created;
                            s.status = Status::Running;
                        }
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
                Step::Noop => {}
            }
        }
        // The engine reports nothing for an app that has no objects left.
        self.current
            .retain(|a| !(a.services.is_empty() && a.networks.is_empty() && a.volumes.is_empty()));
    }
}

fn check_converged(model: &Model, target: &[TargetApp]) -> Result<(), String> {
    for t in target {
        let Some(cur) = model.current.iter().find(|c| c.app_uuid == t.app_uuid) else {
            if t.services.is_empty() {
                continue;
            }
            return Err(format!("app {} missing", t.app_uuid));
        };
        if cur.commit != t.commit {
            return Err(format!(
                "app {} commit {:?} != {:?}",
                t.app_uuid, cur.commit, t.commit
            ));
        }
        for ts in &t.services {
            let matching: Vec<&Service> = cur
                .services
                .iter()
                .filter(|c| c.service_name == ts.service_name)
                .collect();
            let [c] = matching[..] else {
                return Err(format!(
                    "{}: {} containers",
                    ts.service_name,
                    matching.len()
                ));
            };
            let diff = crate::compose::service::config_differences(
                &c.config,
                &ts.config,
                &Default::default(),
            );
            if !diff.is_empty() {
                return Err(format!("{}: differs in {diff:?}", ts.service_name));
            }
            if ts.config.running
                && c.status != Status::Running
                && c.status != Status::Other("exited".into())
            {
                return Err(format!("{}: status {:?}", ts.service_name, c.status));
            }
        }
        if cur.services.len() != t.services.len() {
            return Err(format!(
                "app {}: {} containers for {} services",
                t.app_uuid,
                cur.services.len(),
                t.services.len()
            ));
        }
    }
    for c in &model.current {
        if !target.iter().any(|t| t.app_uuid == c.app_uuid) && !c.services.is_empty() {
            return Err(format!("removed app {} still has containers", c.app_uuid));
        }
    }
    Ok(())
}

#[test]
fn random_updates_converge_and_keep_volumes_of_present_apps() {
    let cases: u64 = std::env::var("TV_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut iterations_max = 0;
    for case in 0..cases {
        let target = random_target(&mut rng);
        let mut model = Model::from_random(&mut rng);
        if rng.chance(20) {
            model.ctx.dangling_images = true;
        }
        let mut converged = false;
        for iteration in 0..40 {
            let steps = plan(&model.current, &target, &model.ctx);
            if steps.is_empty() {
                converged = true;
                iterations_max = iterations_max.max(iteration);
                break;
            }
            model.apply(&steps, &target);
        }
        assert!(converged, "case {case} did not converge in 40 iterations");
        if let Err(e) = check_converged(&model, &target) {
            panic!("case {case} stopped short of the target: {e}");
        }
        assert!(
            model.removed_volumes_of_target_apps.is_empty(),
            "case {case} removed volumes of apps still in the target: {:?}",
            model.removed_volumes_of_target_apps
        );
    }
    assert!(
        iterations_max > 3,
        "the generator should produce multi-step updates"
    );
}
