//! Property test: random current/target pairs; apply the planned steps to an in-memory model
//! of the engine and re-plan until nothing is left. It must converge within a bounded number
//! of iterations, end where the target says, and never remove a volume of an app that is
//! still in the target.

use super::*;
use crate::planner::simulate::Simulation;
use crate::testutil::Rng;

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

fn random_target(rng: &mut Rng) -> Vec<DesiredApp> {
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
        apps.push(DesiredApp {
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

/// A device that runs some earlier random target, in assorted states.
fn random_device(rng: &mut Rng) -> Simulation {
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
            c.status = ServiceStatus::Running;
            match rng.below(10) {
                0 => c = with_status(c, ServiceStatus::Dead, false),
                1 => c = with_status(c, ServiceStatus::Installed, false),
                2 => c = with_status(c, ServiceStatus::Other("exited".into()), false),
                _ => {
                    if !s.config.running {
                        c = with_status(c, ServiceStatus::Other("exited".into()), false);
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
    Simulation::new(current, ctx)
}

fn check_converged(model: &Simulation, target: &[DesiredApp]) -> Result<(), String> {
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
                &std::collections::BTreeMap::<String, String>::new(),
            );
            if !diff.is_empty() {
                return Err(format!("{}: differs in {diff:?}", ts.service_name));
            }
            if ts.config.running
                && c.status != ServiceStatus::Running
                && c.status != ServiceStatus::Other("exited".into())
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
        let mut model = random_device(&mut rng);
        if rng.chance(20) {
            model.ctx.dangling_images = true;
        }
        let (iterations, converged) = model.run(&target, 40);
        iterations_max = iterations_max.max(iterations.len());
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
