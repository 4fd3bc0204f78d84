//! Table-driven tests, one per rule of docs/contract/engine.md (c)/(e)/(j); names cite the rule.

// Cloning into slices keeps each table row readable.
#![allow(clippy::cloned_ref_to_slice_refs)]

use super::*;
use crate::compose::composition::{Condition, Dependency};
use crate::compose::service::{DeviceContext, ImageDefaults, ServiceOrigin};
use crate::compose::target::parse_device_target;
use crate::compose::ServiceStatus;
use crate::encoding::rfc3339_seconds;
use serde_json::{json, Value};

const UUID: &str = "appuuid1";
const APP: i64 = 1;

/// A target service built through the real compose mapping.
fn target_svc(name: &str, image: &str, commit: &str, composition: Value, labels: Value) -> Service {
    target_svc_in(UUID, APP, name, image, commit, composition, labels)
}

fn target_svc_in(
    uuid: &str,
    app_id: i64,
    name: &str,
    image: &str,
    commit: &str,
    composition: Value,
    labels: Value,
) -> Service {
    let doc = json!({"name": "d", "config": {}, "apps": {uuid: {"id": app_id, "name": "app", "releases": {commit: {"id": 1,
        "services": {name: {"id": 10, "image_id": image_id_of(image), "image": image, "labels": labels, "composition": composition}},
        "volumes": {"data": {}, "other": {}}, "networks": {"backend": {}}}}}}});
    let t = parse_device_target(&doc).unwrap();
    let rel = t.apps[uuid].release.as_ref().unwrap();
    let origin = ServiceOrigin {
        app_id,
        app_uuid: uuid.into(),
        app_name: "app".into(),
        release_id: rel.id,
        commit: commit.into(),
        service_name: name.into(),
        api_key: None,
    };
    let img = ImageDefaults {
        id: format!("sha256:{image}"),
        ..Default::default()
    };
    Service::from_target(
        &rel.services[name],
        &origin,
        &DeviceContext::default(),
        Some(&img),
    )
}

fn image_id_of(image: &str) -> i64 {
    image.bytes().map(i64::from).sum()
}

fn svc(name: &str, image: &str, commit: &str) -> Service {
    target_svc(name, image, commit, json!({}), json!({}))
}

/// The same service as a running container.
fn running(mut s: Service) -> Service {
    s.status = ServiceStatus::Running;
    s.container_id = Some(format!("id-{}", s.service_name));
    s.created_at = Some("2026-11-25T10:00:00Z".into());
    s
}

fn with_status(mut s: Service, status: ServiceStatus, running: bool) -> Service {
    s.status = status;
    s.config.running = running;
    s
}

fn avail(s: &Service) -> ImageRef {
    ImageRef::for_service(s)
}

fn default_net(uuid: &str, app_id: i64) -> Network {
    Network::default_for(app_id, uuid, false)
}

fn tapp(commit: &str, services: Vec<Service>) -> DesiredApp {
    DesiredApp {
        app_id: APP,
        app_uuid: UUID.into(),
        name: "app".into(),
        commit: Some(commit.into()),
        services,
        networks: vec![default_net(UUID, APP)],
        volumes: vec![],
        rejected: false,
    }
}

/// The target of a second app, `uuid2` / id 2, with its default network.
fn tapp2(commit: &str, services: Vec<Service>) -> DesiredApp {
    DesiredApp {
        app_id: 2,
        app_uuid: "uuid2".into(),
        name: "b".into(),
        commit: Some(commit.into()),
        services,
        networks: vec![default_net("uuid2", 2)],
        volumes: vec![],
        rejected: false,
    }
}

fn capp(commit: &str, services: Vec<Service>) -> CurrentApp {
    CurrentApp {
        app_id: APP,
        app_uuid: UUID.into(),
        commit: Some(commit.into()),
        services,
        networks: vec![default_net(UUID, APP)],
        volumes: vec![],
    }
}

fn ctx() -> Context {
    Context {
        supervisor_network_ready: true,
        extra_firmware_ready: true,
        boot_time: 1_000,
        ..Default::default()
    }
}

fn locked(mut c: Context) -> Context {
    c.locks_held.insert(APP);
    c
}

fn with_images(mut c: Context, services: &[&Service]) -> Context {
    c.available_images.extend(services.iter().map(|s| avail(s)));
    c
}

/// A short form of each step: `action:subject`.
fn brief(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match s {
            Step::Fetch { service_name, .. } => format!("fetch:{service_name}"),
            Step::Kill { current, .. } => format!("kill:{}", current.service_name),
            Step::Stop { current } => format!("stop:{}", current.service_name),
            Step::Remove { current } => format!("remove:{}", current.service_name),
            Step::Start { target } => format!("start:{}", target.service_name),
            Step::UpdateMetadata { current, .. } => {
                format!("updateMetadata:{}", current.service_name)
            }
            Step::Handover { current, .. } => format!("handover:{}", current.service_name),
            Step::UpdateCommit { commit, .. } => format!("updateCommit:{commit}"),
            Step::TakeLock { services, .. } => format!("takeLock:{}", services.join(",")),
            Step::ReleaseLock { app_id } => format!("releaseLock:{app_id}"),
            Step::RemoveImage { image } => format!("removeImage:{}", image.name),
            Step::SaveImage { image } => format!("saveImage:{}", image.name),
            Step::CreateNetwork { target } => format!("createNetwork:{}", target.name),
            Step::RemoveNetwork { current } => format!("removeNetwork:{}", current.name),
            Step::CreateVolume { target } => format!("createVolume:{}", target.name),
            Step::RemoveVolume { current } => format!("removeVolume:{}", current.name),
            Step::RequireReboot { service_name } => format!("requireReboot:{service_name}"),
            Step::Blocked {
                service_name,
                reason,
            } => format!("blocked:{service_name}:{reason}"),
            other => other.action().to_string(),
        })
        .collect()
}

fn plan_brief(current: &[CurrentApp], target: &[DesiredApp], c: &Context) -> Vec<String> {
    brief(&plan(current, target, c))
}

// ---- C.2 global ordering ----

#[test]
fn c2_1_missing_supervisor_network_is_ensured_first() {
    let mut c = ctx();
    c.supervisor_network_ready = false;
    let t = tapp("c1", vec![svc("main", "img1", "c1")]);
    assert_eq!(plan_brief(&[], &[t], &c), ["ensureSupervisorNetwork"]);
}

#[test]
fn c2_1_services_using_the_supervisor_api_are_killed_before_the_network_is_fixed() {
    let mut c = ctx();
    c.supervisor_network_ready = false;
    let api = running(target_svc(
        "api",
        "img1",
        "c1",
        json!({}),
        json!({"io.balena.features.supervisor-api": "1"}),
    ));
    let cur = capp("c1", vec![api.clone()]);
    assert_eq!(plan_brief(&[cur], &[], &c), ["kill:api"]);
    let stopping = with_status(api, ServiceStatus::Stopping, true);
    assert_eq!(plan_brief(&[capp("c1", vec![stopping])], &[], &c), ["noop"]);
}

#[test]
fn c2_2_missing_extra_firmware_volume_is_ensured() {
    let mut c = ctx();
    c.extra_firmware_ready = false;
    assert_eq!(plan_brief(&[], &[], &c), ["ensureExtraFirmwareVolume"]);
}

#[test]
fn c2_3_image_steps_come_alone_before_app_steps() {
    let old = svc("main", "img-old", "c0");
    let new = svc("main", "img-new", "c1");
    let c = with_images(ctx(), &[&old]);
    // The old image is unused (no container) and not in the target: remove it first.
    assert_eq!(
        plan_brief(&[], &[tapp("c1", vec![new.clone()])], &c),
        ["fetch:main", "createNetwork:default"],
        "old image is a delta source while the new one downloads"
    );
    let c = with_images(ctx(), &[&old, &new]);
    assert_eq!(
        plan_brief(&[], &[tapp("c1", vec![new])], &c),
        ["removeImage:img-old"]
    );
}

#[test]
fn c8_two_records_of_the_same_target_image_are_both_kept() {
    // The image table has no unique key: a record written twice must not lose its copy.
    let new = svc("main", "img-new", "c1");
    let c = with_images(ctx(), &[&new, &new]);
    let steps = plan_brief(&[], &[tapp("c1", vec![new])], &c);
    assert!(
        !steps.iter().any(|s| s.starts_with("removeImage")),
        "{steps:?}"
    );
}

#[test]
fn c2_3_no_image_steps_while_downloading() {
    let old = svc("main", "img-old", "c0");
    let new = svc("main", "img-new", "c1");
    let mut c = with_images(ctx(), &[&old]);
    c.downloading.insert("img-new".into());
    c.dangling_images = true;
    let steps = plan_brief(&[], &[tapp("c1", vec![new])], &c);
    assert!(
        !steps
            .iter()
            .any(|s| s.starts_with("removeImage") || s == "cleanup"),
        "{steps:?}"
    );
}

#[test]
fn c2_6_empty_plan_while_downloading_is_a_noop() {
    let mut c = ctx();
    c.downloading.insert("leftover".into());
    assert_eq!(plan_brief(&[], &[], &c), ["noop"]);
}

#[test]
fn c2_5_delta_throttles_fetches_for_apps_with_images() {
    let a = svc("a", "img-a2", "c1");
    let b = svc("b", "img-b2", "c1");
    let mut c = with_images(ctx(), &[&svc("a", "img-a1", "c0")]);
    c.delta = true;
    c.downloading.insert("x".into());
    c.downloading.insert("y".into());
    let cur = capp(
        "c0",
        vec![
            running(svc("a", "img-a1", "c0")),
            running(svc("b", "img-b1", "c0")),
        ],
    );
    let steps = plan_brief(
        &[cur.clone()],
        &[tapp("c1", vec![a.clone(), b.clone()])],
        &c,
    );
    assert_eq!(
        steps.iter().filter(|s| s.starts_with("fetch")).count(),
        1,
        "{steps:?}"
    );
    // A first install (no image of the app on the device) is not throttled.
    let mut c2 = ctx();
    c2.delta = true;
    c2.downloading
        .extend(["x".to_string(), "y".to_string(), "z".to_string()]);
    let steps = plan_brief(&[], &[tapp("c1", vec![a, b])], &c2);
    assert_eq!(
        steps.iter().filter(|s| s.starts_with("fetch")).count(),
        2,
        "{steps:?}"
    );
}

// ---- C.15 worked sequences / fresh install ----

#[test]
fn c15_1_fresh_install_fetches_creates_network_then_locks_then_starts() {
    let one = svc("one", "img1", "c1");
    let two = svc("two", "img2", "c1");
    let t = tapp("c1", vec![one.clone(), two.clone()]);
    let empty = CurrentApp {
        app_id: APP,
        app_uuid: UUID.into(),
        ..Default::default()
    };
    assert_eq!(
        plan_brief(&[], &[t.clone()], &ctx()),
        ["fetch:one", "fetch:two", "createNetwork:default"]
    );
    let with_net = CurrentApp {
        networks: vec![default_net(UUID, APP)],
        ..empty
    };
    let c = with_images(ctx(), &[&one, &two]);
    assert_eq!(
        plan_brief(&[with_net.clone()], &[t.clone()], &c),
        ["takeLock:one,two"]
    );
    assert_eq!(
        plan_brief(&[with_net], &[t.clone()], &locked(c.clone())),
        ["start:one", "start:two"]
    );
    let done = CurrentApp {
        commit: None,
        ..capp("c1", vec![running(one.clone()), running(two.clone())])
    };
    assert_eq!(
        plan_brief(&[done], &[t.clone()], &locked(c.clone())),
        ["updateCommit:c1", "releaseLock:1"]
    );
    let converged = capp("c1", vec![running(one), running(two)]);
    assert!(plan(&[converged], &[t], &c).is_empty());
}

#[test]
fn c15_2_default_strategy_downloads_before_taking_the_lock_and_killing() {
    let old = running(svc("main", "img1", "c0"));
    let new = svc("main", "img2", "c1");
    let cur = capp("c0", vec![old.clone()]);
    let t = tapp("c1", vec![new.clone()]);
    let c = with_images(ctx(), &[&old]);
    assert_eq!(
        plan_brief(&[cur.clone()], &[t.clone()], &c),
        ["fetch:main"],
        "no lock before the download (j.4)"
    );
    let c = with_images(ctx(), &[&old, &new]);
    assert_eq!(
        plan_brief(&[cur.clone()], &[t.clone()], &c),
        ["takeLock:main"]
    );
    assert_eq!(
        plan_brief(&[cur], &[t.clone()], &locked(c.clone())),
        ["kill:main"]
    );
    let stopping = capp(
        "c0",
        vec![with_status(old.clone(), ServiceStatus::Stopping, true)],
    );
    assert_eq!(
        plan_brief(&[stopping], &[t.clone()], &locked(c.clone())),
        ["noop"]
    );
    let gone = capp("c0", vec![]);
    assert_eq!(
        plan_brief(&[gone.clone()], &[t.clone()], &locked(c)),
        ["removeImage:img1"]
    );
    let c = locked(with_images(ctx(), &[&new]));
    assert_eq!(plan_brief(&[gone], &[t], &c), ["start:main"]);
}

#[test]
fn c15_3_kill_then_download_kills_first() {
    let labels = json!({"io.balena.update.strategy": "kill-then-download"});
    let old = running(target_svc("main", "img1", "c0", json!({}), labels.clone()));
    let new = target_svc("main", "img2", "c1", json!({}), labels);
    let c = with_images(ctx(), &[&old]);
    let cur = capp("c0", vec![old]);
    let t = tapp("c1", vec![new]);
    assert_eq!(
        plan_brief(&[cur.clone()], &[t.clone()], &c),
        ["takeLock:main"]
    );
    assert_eq!(
        plan_brief(&[cur], &[t.clone()], &locked(c.clone())),
        ["kill:main"]
    );
    // Once gone: fetch, the old image kept as the delta source.
    assert_eq!(
        plan_brief(&[capp("c0", vec![])], &[t], &locked(c)),
        ["fetch:main"]
    );
}

#[test]
fn c15_4_delete_then_download_removes_the_old_image_before_fetching() {
    let labels = json!({"io.balena.update.strategy": "delete-then-download"});
    let old = target_svc("main", "img1", "c0", json!({}), labels.clone());
    let new = target_svc("main", "img2", "c1", json!({}), labels);
    let c = with_images(ctx(), &[&old]);
    assert_eq!(
        plan_brief(&[capp("c0", vec![])], &[tapp("c1", vec![new])], &c),
        ["removeImage:img1"],
        "(j.7)"
    );
}

#[test]
fn c15_5_hand_over_fetches_then_hands_over() {
    let labels = json!({"io.balena.update.strategy": "hand-over", "io.balena.update.handover-timeout": "5000"});
    let old = running(target_svc("main", "img1", "c0", json!({}), labels.clone()));
    let new = target_svc("main", "img2", "c1", json!({}), labels);
    let cur = capp("c0", vec![old.clone()]);
    let t = tapp("c1", vec![new.clone()]);
    assert_eq!(
        plan_brief(&[cur.clone()], &[t.clone()], &with_images(ctx(), &[&old])),
        ["fetch:main"]
    );
    let c = locked(with_images(ctx(), &[&old, &new]));
    let steps = plan(&[cur], &[t], &c);
    assert_eq!(brief(&steps), ["handover:main"]);
    assert!(matches!(
        steps[0],
        Step::Handover {
            timeout_ms: 5000,
            ..
        }
    ));
}

#[test]
fn c15_6_env_change_recreates_and_says_why() {
    let old = running(svc("main", "img1", "c1"));
    let new = target_svc(
        "main",
        "img1",
        "c1",
        json!({"environment": {"X": "2"}}),
        json!({}),
    );
    let c = locked(with_images(ctx(), &[&old]));
    let steps = plan(&[capp("c1", vec![old])], &[tapp("c1", vec![new])], &c);
    match &steps[..] {
        [Step::Kill { reason, .. }] => assert_eq!(reason, &vec!["environment".to_string()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn c15_7_new_release_with_identical_service_only_renames() {
    let old = running(svc("main", "img1", "c0"));
    let mut new = svc("main", "img1", "c1");
    new.release_id = 2;
    let c = with_images(ctx(), &[&old, &new]);
    let cur = capp("c0", vec![old]);
    let t = tapp("c1", vec![new]);
    assert_eq!(
        plan_brief(&[cur.clone()], &[t.clone()], &c),
        ["takeLock:main"],
        "(j.32)"
    );
    assert_eq!(
        plan_brief(&[cur], &[t], &locked(c)),
        ["updateMetadata:main"]
    );
}

#[test]
fn c15_7_image_on_engine_without_record_is_saved() {
    let new = svc("main", "img1", "c1");
    let mut c = ctx();
    c.engine_images.push(EngineImage {
        id: "sha256:img1".into(),
        references: vec!["img1".into()],
    });
    assert_eq!(
        plan_brief(&[], &[tapp("c1", vec![new])], &c),
        ["saveImage:img1"],
        "(j.18)"
    );
}

#[test]
fn c15_8_running_false_stops_and_keeps_the_container() {
    let cur = running(svc("main", "img1", "c1"));
    let t = target_svc("main", "img1", "c1", json!({"running": false}), json!({}));
    let c = with_images(ctx(), &[&cur]);
    assert_eq!(
        plan_brief(
            &[capp("c1", vec![cur.clone()])],
            &[tapp("c1", vec![t.clone()])],
            &c
        ),
        ["takeLock:main"]
    );
    assert_eq!(
        plan_brief(
            &[capp("c1", vec![cur.clone()])],
            &[tapp("c1", vec![t.clone()])],
            &locked(c.clone())
        ),
        ["stop:main"],
        "(j.33)"
    );
    let stopped = with_status(cur, ServiceStatus::Other("exited".into()), false);
    assert_eq!(
        plan_brief(
            &[capp("c1", vec![stopped])],
            &[tapp("c1", vec![t])],
            &locked(c)
        ),
        ["releaseLock:1"]
    );
}

#[test]
fn c15_9_app_removal_locks_kills_then_removes_networks_then_volumes() {
    let s = running(svc("main", "img1", "c1"));
    let vol = Volume {
        name: "data".into(),
        app_id: APP,
        app_uuid: UUID.into(),
        driver: "local".into(),
        driver_opts: Default::default(),
        labels: Default::default(),
    };
    let mut cur = capp("c1", vec![s.clone()]);
    cur.volumes.push(vol.clone());
    let c = with_images(ctx(), &[&s]);
    assert_eq!(plan_brief(&[cur.clone()], &[], &c), ["takeLock:main"]);
    assert_eq!(
        plan_brief(&[cur.clone()], &[], &locked(c.clone())),
        ["kill:main"]
    );
    cur.services[0].status = ServiceStatus::Stopping;
    assert_eq!(
        plan_brief(&[cur.clone()], &[], &locked(c.clone())),
        ["noop"],
        "(j.25)"
    );
    cur.services.clear();
    assert_eq!(
        plan_brief(&[cur.clone()], &[], &locked(c.clone())),
        ["removeImage:img1"]
    );
    let c = locked(ctx());
    assert_eq!(
        plan_brief(&[cur.clone()], &[], &c),
        ["removeNetwork:default"]
    );
    cur.networks.clear();
    assert_eq!(
        plan_brief(&[cur.clone()], &[], &c),
        ["removeVolume:data"],
        "(j.14) volumes of removed apps go"
    );
    cur.volumes.clear();
    assert_eq!(plan_brief(&[cur], &[], &c), ["releaseLock:1"]);
    // Fix over v19: once the app is gone entirely, its lock is still released.
    assert_eq!(plan_brief(&[], &[], &c), ["releaseLock:1"]);
}

#[test]
fn c10_3_volumes_are_kept_in_local_mode() {
    let vol = Volume {
        name: "data".into(),
        app_id: APP,
        app_uuid: UUID.into(),
        driver: "local".into(),
        driver_opts: Default::default(),
        labels: Default::default(),
    };
    let cur = CurrentApp {
        app_id: APP,
        app_uuid: UUID.into(),
        volumes: vec![vol],
        ..Default::default()
    };
    let mut c = ctx();
    c.keep_volumes = true;
    assert!(plan(&[cur], &[], &c).is_empty());
}

#[test]
fn c15_10_network_config_change_kills_dependents_then_recreates() {
    let s = running(svc("main", "img1", "c1"));
    let mut t = tapp("c1", vec![svc("main", "img1", "c1")]);
    let spec =
        serde_json::from_value(json!({"ipam": {"config": [{"subnet": "10.99.0.0/16"}]}})).unwrap();
    t.networks = vec![Network::from_target("default", &spec, APP, UUID).unwrap()];
    let c = locked(with_images(ctx(), &[&s]));
    let cur = capp("c1", vec![s]);
    assert_eq!(
        plan_brief(&[cur.clone()], &[t.clone()], &c),
        ["kill:main"],
        "(j.22, j.48)"
    );
    let no_svc = capp("c1", vec![]);
    assert_eq!(
        plan_brief(&[no_svc.clone()], &[t.clone()], &c),
        ["removeNetwork:default"]
    );
    let no_net = CurrentApp {
        networks: vec![],
        ..no_svc
    };
    assert_eq!(
        plan_brief(&[no_net], &[t.clone()], &c),
        ["createNetwork:default"],
        "(j.35) not started before its network"
    );
}

// ---- (j) edge cases ----

#[test]
fn j1_exited_container_with_same_config_is_left_to_the_restart_policy() {
    let cur = with_status(
        running(svc("main", "img1", "c1")),
        ServiceStatus::Other("exited".into()),
        false,
    );
    let c = with_images(ctx(), &[&cur]);
    assert!(plan(
        &[capp("c1", vec![cur])],
        &[tapp("c1", vec![svc("main", "img1", "c1")])],
        &c
    )
    .is_empty());
}

#[test]
fn j2_userland_proxy_race_is_started_again() {
    let mut cur = with_status(
        running(svc("main", "img1", "c1")),
        ServiceStatus::Other("exited".into()),
        false,
    );
    cur.exit_error = "driver failed programming external connectivity: Error starting userland proxy: listen tcp 192.168.88.1:3000: bind: cannot assign requested address".into();
    let c = with_images(ctx(), &[&cur]);
    assert_eq!(
        plan_brief(
            &[capp("c1", vec![cur])],
            &[tapp("c1", vec![svc("main", "img1", "c1")])],
            &c
        ),
        ["start:main"]
    );
}

#[test]
fn j3_service_not_in_target_is_locked_then_killed() {
    let keep = running(svc("main", "img1", "c1"));
    let gone = running(svc("old", "img2", "c1"));
    let c = with_images(ctx(), &[&keep, &gone]);
    let cur = capp("c1", vec![keep.clone(), gone]);
    let t = tapp("c1", vec![keep]);
    assert_eq!(
        plan_brief(&[cur.clone()], &[t.clone()], &c),
        ["takeLock:main,old"]
    );
    assert_eq!(plan_brief(&[cur], &[t], &locked(c)), ["kill:old"]);
}

#[test]
fn j5_image_already_downloading_is_not_fetched_again() {
    let old = running(svc("main", "img1", "c0"));
    let mut c = with_images(ctx(), &[&old]);
    c.downloading.insert("img2".into());
    assert_eq!(
        plan_brief(
            &[capp("c0", vec![old])],
            &[tapp("c1", vec![svc("main", "img2", "c1")])],
            &c
        ),
        ["noop"]
    );
}

#[test]
fn j8_download_then_kill_waits_for_all_images_of_the_app() {
    let a = running(svc("a", "img-a1", "c0"));
    let b = running(svc("b", "img-b", "c0"));
    let a2 = svc("a", "img-a2", "c1");
    let b2 = svc("b", "img-b", "c1");
    let c2 = svc("c", "img-c", "c1");
    let cur = capp("c0", vec![a.clone(), b.clone()]);
    let t = tapp("c1", vec![a2.clone(), b2.clone(), c2.clone()]);
    let c = locked(with_images(ctx(), &[&a, &b, &a2]));
    // c's image is missing: nothing is killed yet, only fetched; b is renamed? no: waits too.
    let steps = plan_brief(&[cur.clone()], &[t.clone()], &c);
    assert!(steps.contains(&"fetch:c".to_string()), "{steps:?}");
    assert!(!steps.iter().any(|s| s.starts_with("kill")), "{steps:?}");
    let c = locked(with_images(ctx(), &[&a, &b, &a2, &c2]));
    let steps = plan_brief(&[cur], &[t], &c);
    assert!(
        steps.contains(&"kill:a".to_string()) && steps.contains(&"updateMetadata:b".to_string()),
        "{steps:?}"
    );
}

#[test]
fn j9_kill_then_download_fetches_new_services_alongside_kills() {
    let labels = json!({"io.balena.update.strategy": "kill-then-download"});
    let a = running(target_svc("a", "img-a1", "c0", json!({}), labels.clone()));
    let a2 = target_svc("a", "img-a2", "c1", json!({}), labels.clone());
    let b = target_svc("b", "img-b", "c1", json!({}), labels);
    let c = locked(with_images(ctx(), &[&a]));
    let steps = plan_brief(&[capp("c0", vec![a])], &[tapp("c1", vec![a2, b])], &c);
    assert_eq!(steps, ["kill:a", "fetch:b"]);
}

#[test]
fn j10_nothing_starts_before_all_downloads_finish() {
    let a = svc("a", "img-a", "c1");
    let b = svc("b", "img-b", "c1");
    let c = locked(with_images(ctx(), &[&a]));
    let cur = capp("c1", vec![]);
    assert_eq!(
        plan_brief(&[cur], &[tapp("c1", vec![a, b])], &c),
        ["fetch:b"]
    );
}

#[test]
fn j12_depends_on_starts_the_dependency_first() {
    let db = svc("db", "img-db", "c1");
    let mut web = svc("web", "img-web", "c1");
    web.depends_on = vec!["db".into()];
    let c = locked(with_images(ctx(), &[&db, &web]));
    let t = tapp("c1", vec![db.clone(), web.clone()]);
    assert_eq!(
        plan_brief(&[capp("c1", vec![])], &[t.clone()], &c),
        ["start:db"]
    );
    let installed = with_status(running(db.clone()), ServiceStatus::Installed, false);
    let steps = plan_brief(&[capp("c1", vec![installed])], &[t.clone()], &c);
    assert_eq!(steps, ["start:db"], "created but not started: web waits");
    assert_eq!(
        plan_brief(&[capp("c1", vec![running(db)])], &[t], &c),
        ["start:web"]
    );
}

/// `web` depends on `db` with `condition`; `db` is current as `db_state` made it.
fn condition_plan(
    condition: Condition,
    required: bool,
    db_state: impl Fn(Service) -> Service,
) -> Vec<String> {
    let db = svc("db", "img-db", "c1");
    let mut web = svc("web", "img-web", "c1");
    web.depends_on = vec!["db".into()];
    web.dependency_conditions.insert(
        "db".into(),
        Dependency {
            condition,
            required,
        },
    );
    let c = locked(with_images(ctx(), &[&db, &web]));
    let t = tapp("c1", vec![db.clone(), web]);
    plan_brief(&[capp("c1", vec![db_state(running(db))])], &[t], &c)
}

fn health(h: Option<&str>) -> impl Fn(Service) -> Service + '_ {
    move |mut s| {
        s.health = h.map(String::from);
        s
    }
}

fn exited(code: i64) -> impl Fn(Service) -> Service {
    move |mut s| {
        s.status = ServiceStatus::Other("exited".into());
        s.config.running = false;
        s.exit_code = Some(code);
        s
    }
}

#[test]
fn j12_service_healthy_waits_for_a_healthy_dependency_and_fails_fast() {
    let healthy = Condition::ServiceHealthy;
    assert_eq!(
        condition_plan(healthy, true, health(Some("starting"))),
        ["noop"]
    );
    assert_eq!(
        condition_plan(healthy, true, health(Some("healthy"))),
        ["start:web"]
    );
    assert_eq!(
        condition_plan(healthy, true, health(Some("unhealthy"))),
        ["blocked:web:dependency 'db' is unhealthy"]
    );
    assert_eq!(
        condition_plan(healthy, true, health(None)),
        ["blocked:web:dependency 'db' has no healthcheck, so it can never be healthy"]
    );
    // Optional: never holds the start back.
    assert_eq!(
        condition_plan(healthy, false, health(Some("unhealthy"))),
        ["start:web"]
    );
    // service_started: running is enough.
    assert_eq!(
        condition_plan(Condition::ServiceStarted, true, health(Some("starting"))),
        ["start:web"]
    );
}

#[test]
fn j12_service_completed_successfully_waits_for_exit_0_and_fails_on_an_error() {
    let done = Condition::ServiceCompletedSuccessfully;
    assert_eq!(
        condition_plan(done, true, health(None)),
        ["noop"],
        "still running"
    );
    assert_eq!(condition_plan(done, true, exited(0)), ["start:web"]);
    assert_eq!(
        condition_plan(done, true, exited(2)),
        ["blocked:web:dependency 'db' exited with code 2"]
    );
    assert_eq!(condition_plan(done, false, exited(2)), ["start:web"]);
}

#[test]
fn j13_spurious_containers_are_killed_while_new_services_start() {
    let stray = running(svc("stray", "img-s", "c1"));
    let new = svc("main", "img1", "c1");
    let c = locked(with_images(ctx(), &[&stray, &new]));
    let steps = plan_brief(&[capp("c1", vec![stray])], &[tapp("c1", vec![new])], &c);
    assert_eq!(steps, ["kill:stray", "start:main"]);
}

#[test]
fn j14_volumes_dropped_from_a_present_app_are_kept() {
    let s = running(svc("main", "img1", "c1"));
    let mut cur = capp("c1", vec![s.clone()]);
    cur.volumes.push(Volume {
        name: "old".into(),
        app_id: APP,
        app_uuid: UUID.into(),
        driver: "local".into(),
        driver_opts: Default::default(),
        labels: Default::default(),
    });
    let c = with_images(ctx(), &[&s]);
    assert!(plan(&[cur], &[tapp("c1", vec![svc("main", "img1", "c1")])], &c).is_empty());
}

#[test]
fn j17_unused_images_are_removed_unless_kept() {
    let s = running(svc("main", "img1", "c1"));
    let stale = svc("main", "img0", "c0");
    let c = with_images(ctx(), &[&s, &stale]);
    let cur = capp("c1", vec![s.clone()]);
    let t = tapp("c1", vec![svc("main", "img1", "c1")]);
    assert_eq!(
        plan_brief(&[cur.clone()], &[t.clone()], &c),
        ["removeImage:img0"]
    );
    let mut keep = c.clone();
    keep.keep_images = true;
    assert!(plan(&[cur.clone()], &[t.clone()], &keep).is_empty());
    // The previous release of a release on trial keeps its images until the trial is over.
    let mut trial = c.clone();
    trial.retained_images.insert("img0".into());
    assert!(plan(&[cur], &[t], &trial).is_empty());
}

#[test]
fn j16_dangling_images_are_cleaned_up() {
    let mut c = ctx();
    c.dangling_images = true;
    assert_eq!(plan_brief(&[], &[], &c), ["cleanup"]);
}

#[test]
fn j19_rejected_apps_get_no_steps() {
    let mut t = tapp("c1", vec![svc("main", "img1", "c1")]);
    t.rejected = true;
    let cur = capp("c0", vec![running(svc("main", "img0", "c0"))]);
    let c = with_images(ctx(), &[&cur.services[0]]);
    assert!(
        plan(&[cur], &[t], &c).is_empty(),
        "neither updated nor removed"
    );
}

#[test]
fn j20_apps_are_planned_independently() {
    let a = svc("main", "img1", "c1");
    let b = target_svc_in("uuid2", 2, "other", "img2", "c9", json!({}), json!({}));
    let t2 = tapp2("c9", vec![b]);
    let steps = plan_brief(&[], &[tapp("c1", vec![a]), t2], &ctx());
    assert_eq!(
        steps,
        [
            "fetch:main",
            "createNetwork:default",
            "fetch:other",
            "createNetwork:default"
        ]
    );
}

#[test]
fn j21_takelock_lists_all_current_and_target_services_sorted() {
    let cur = capp(
        "c0",
        vec![
            running(svc("zeta", "img-z", "c0")),
            running(svc("alpha", "img-a", "c0")),
        ],
    );
    let t = tapp(
        "c1",
        vec![svc("alpha", "img-a2", "c1"), svc("mid", "img-m", "c1")],
    );
    let c = with_images(
        ctx(),
        &[
            &cur.services[0],
            &cur.services[1],
            &t.services[0],
            &t.services[1],
        ],
    );
    let steps = plan(&[cur], &[t], &c);
    match &steps[0] {
        Step::TakeLock {
            app_id,
            services,
            force,
        } => {
            assert_eq!(
                (*app_id, services.clone(), *force),
                (
                    APP,
                    vec!["alpha".into(), "mid".into(), "zeta".into()],
                    false
                )
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(steps.len(), 1, "lock-needing steps wait for the lock");
}

#[test]
fn e5_force_is_carried_by_takelock() {
    let cur = capp("c1", vec![running(svc("main", "img1", "c1"))]);
    let mut c = with_images(ctx(), &[&cur.services[0]]);
    c.force = true;
    let steps = plan(&[cur], &[tapp("c1", vec![])], &c);
    assert!(
        matches!(&steps[0], Step::TakeLock { force: true, .. }),
        "{steps:?}"
    );
}

#[test]
fn e7_leftover_locks_count_as_held_and_are_released() {
    let s = running(svc("main", "img1", "c1"));
    let mut c = with_images(ctx(), &[&s]);
    c.leftover_locks.insert(APP);
    let t = tapp("c1", vec![svc("main", "img1", "c1")]);
    assert_eq!(
        plan_brief(&[capp("c1", vec![s])], &[t], &c),
        ["releaseLock:1"]
    );
}

#[test]
fn j23_locks_released_only_when_nothing_else_remains() {
    let old = running(svc("main", "img1", "c0"));
    let new = svc("main", "img2", "c1");
    let c = locked(with_images(ctx(), &[&old, &new]));
    let steps = plan_brief(&[capp("c0", vec![old])], &[tapp("c1", vec![new])], &c);
    assert!(
        !steps.iter().any(|s| s.starts_with("releaseLock")),
        "{steps:?}"
    );
}

#[test]
fn j24_volume_config_change_kills_dependents_removes_and_recreates() {
    let s = running(target_svc(
        "main",
        "img1",
        "c1",
        json!({"volumes": ["data:/data"]}),
        json!({}),
    ));
    let cur_vol = Volume {
        name: "data".into(),
        app_id: APP,
        app_uuid: UUID.into(),
        driver: "local".into(),
        driver_opts: Default::default(),
        labels: Default::default(),
    };
    let mut tgt_vol = cur_vol.clone();
    tgt_vol.driver_opts.insert("type".into(), "tmpfs".into());
    let mut cur = capp("c1", vec![s.clone()]);
    cur.volumes.push(cur_vol);
    let mut t = tapp(
        "c1",
        vec![target_svc(
            "main",
            "img1",
            "c1",
            json!({"volumes": ["data:/data"]}),
            json!({}),
        )],
    );
    t.volumes.push(tgt_vol);
    let c = locked(with_images(ctx(), &[&s]));
    assert_eq!(plan_brief(&[cur.clone()], &[t.clone()], &c), ["kill:main"]);
    cur.services.clear();
    assert_eq!(
        plan_brief(&[cur.clone()], &[t.clone()], &c),
        ["removeVolume:data"]
    );
    cur.volumes.clear();
    assert_eq!(plan_brief(&[cur], &[t], &c), ["createVolume:data"]);
}

#[test]
fn j27_default_network_created_when_missing_not_recreated_when_present() {
    let s = running(svc("main", "img1", "c1"));
    let c = with_images(ctx(), &[&s]);
    let t = tapp("c1", vec![svc("main", "img1", "c1")]);
    assert!(plan(&[capp("c1", vec![s])], &[t.clone()], &c).is_empty());
    let bare = CurrentApp {
        networks: vec![],
        ..capp("c1", vec![])
    };
    assert!(plan_brief(&[bare], &[t], &c).contains(&"createNetwork:default".to_string()));
}

#[test]
fn j28_duplicate_networks_are_removed() {
    let mut legacy = default_net(UUID, APP);
    legacy.app_uuid = String::new();
    let mut cur = capp("c1", vec![]);
    cur.networks.push(legacy);
    let t = DesiredApp {
        services: vec![],
        ..tapp("c1", vec![])
    };
    assert_eq!(plan_brief(&[cur], &[t], &ctx()), ["removeNetwork:default"]);
}

#[test]
fn j30_interrupted_handover_keeps_the_newest_container() {
    let mut older = running(svc("main", "img1", "c1"));
    older.created_at = Some("2026-11-25T09:00:00Z".into());
    older.container_id = Some("old-id".into());
    let newer = running(svc("main", "img1", "c1"));
    let c = locked(with_images(ctx(), &[&newer]));
    let steps = plan(
        &[capp("c1", vec![older, newer])],
        &[tapp("c1", vec![svc("main", "img1", "c1")])],
        &c,
    );
    match &steps[..] {
        [Step::Kill { current, .. }] => assert_eq!(current.container_id.as_deref(), Some("old-id")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn j31_dead_containers_are_removed_without_a_lock() {
    let dead = with_status(
        running(svc("main", "img1", "c1")),
        ServiceStatus::Dead,
        false,
    );
    let c = with_images(ctx(), &[&dead]);
    assert_eq!(
        plan_brief(
            &[capp("c1", vec![dead])],
            &[tapp("c1", vec![svc("main", "img1", "c1")])],
            &c
        ),
        ["remove:main"]
    );
}

#[test]
fn j36_requires_reboot_service_is_not_started_until_reboot() {
    let labels = json!({"io.balena.update.requires-reboot": "1"});
    let t = target_svc("main", "img1", "c1", json!({}), labels);
    let mut created = with_status(running(t.clone()), ServiceStatus::Installed, false);
    created.created_at = Some("2026-11-25T10:00:00Z".into());
    let mut c = with_images(ctx(), &[&t]);
    c.boot_time = rfc3339_seconds("2026-11-25T09:00:00Z").unwrap();
    let ta = tapp("c1", vec![t.clone()]);
    assert_eq!(
        plan_brief(&[capp("c1", vec![created.clone()])], &[ta.clone()], &c),
        ["requireReboot:main"]
    );
    c.reboot_breadcrumb = true;
    // Nothing else to do: the pending reboot is the only step (A.3 rule 4).
    assert_eq!(
        plan_brief(&[capp("c1", vec![created.clone()])], &[ta.clone()], &c),
        ["reboot"]
    );
    // After the reboot the container predates the boot: start it.
    c.boot_time = rfc3339_seconds("2026-11-25T11:00:00Z").unwrap();
    c.reboot_breadcrumb = false;
    assert_eq!(
        plan_brief(&[capp("c1", vec![created])], &[ta], &c),
        ["start:main"]
    );
}

#[test]
fn a3_4_a_pending_reboot_waits_until_only_noops_are_left() {
    let t = svc("main", "img1", "c1");
    let ta = tapp("c1", vec![t.clone()]);
    let mut c = with_images(ctx(), &[&t]);
    c.reboot_breadcrumb = true;
    // Converged: reboot.
    assert_eq!(
        plan_brief(&[capp("c1", vec![running(t.clone())])], &[ta.clone()], &c),
        ["reboot"]
    );
    // Only waiting left (a container still stopping): reboot after the noop.
    let mut old = running(svc("main", "img0", "c0"));
    old.status = ServiceStatus::Stopping;
    let stopping = plan_brief(&[capp("c0", vec![old])], &[ta.clone()], &c);
    assert_eq!(
        stopping.last().map(String::as_str),
        Some("reboot"),
        "{stopping:?}"
    );
    assert!(
        stopping[..stopping.len() - 1].iter().all(|s| s == "noop"),
        "{stopping:?}"
    );
    // Real work left: no reboot yet.
    let steps = plan_brief(&[], &[ta.clone()], &c);
    assert!(
        !steps.is_empty() && !steps.contains(&"reboot".to_string()),
        "{steps:?}"
    );
    // No breadcrumb (or one from before this boot, which the context reports as unset): none.
    c.reboot_breadcrumb = false;
    assert!(plan_brief(&[capp("c1", vec![running(t)])], &[ta], &c).is_empty());
}

#[test]
fn c3_1_legacy_container_keeps_its_service_id() {
    let mut cur = running(target_svc(
        "main",
        "img1",
        "c1",
        json!({}),
        json!({"io.balena.legacy-container": "1"}),
    ));
    cur.service_id = 77;
    cur.config
        .labels
        .insert("io.balena.service-id".into(), "77".into());
    let t = target_svc(
        "main",
        "img1",
        "c1",
        json!({}),
        json!({"io.balena.legacy-container": "1"}),
    );
    let c = with_images(ctx(), &[&cur]);
    assert!(plan(&[capp("c1", vec![cur])], &[tapp("c1", vec![t])], &c).is_empty());
}

#[test]
fn c4_1_services_match_by_name_not_id() {
    let cur = running(svc("main", "img1", "c1"));
    let mut t = svc("main", "img1", "c1");
    t.image_id = 999;
    let c = with_images(ctx(), &[&cur]);
    assert!(plan(&[capp("c1", vec![cur])], &[tapp("c1", vec![t])], &c).is_empty());
}

#[test]
fn c9_unknown_strategy_falls_back_to_download_then_kill() {
    let labels = json!({"io.balena.update.strategy": "yolo"});
    let old = running(target_svc("main", "img1", "c0", json!({}), labels.clone()));
    let new = target_svc("main", "img2", "c1", json!({}), labels);
    let c = with_images(ctx(), &[&old]);
    assert_eq!(
        plan_brief(&[capp("c0", vec![old])], &[tapp("c1", vec![new])], &c),
        ["fetch:main"]
    );
}

#[test]
fn c11_target_running_false_on_install_creates_without_lock_wait() {
    let t = target_svc("main", "img1", "c1", json!({"running": false}), json!({}));
    let c = locked(with_images(ctx(), &[&t]));
    assert_eq!(
        plan_brief(&[capp("c1", vec![])], &[tapp("c1", vec![t])], &c),
        ["start:main"],
        "start creates, the executor skips the start"
    );
}

#[test]
fn c7_2_start_for_running_state_needs_no_lock() {
    let t = svc("main", "img1", "c1");
    let installed = with_status(running(t.clone()), ServiceStatus::Installed, false);
    let c = with_images(ctx(), &[&t]);
    assert_eq!(
        plan_brief(&[capp("c1", vec![installed])], &[tapp("c1", vec![t])], &c),
        ["start:main"]
    );
}

#[test]
fn rfc3339_parses_engine_timestamps() {
    assert_eq!(rfc3339_seconds("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(
        rfc3339_seconds("2026-11-25T14:52:13.123456789Z"),
        Some(1_795_618_333)
    );
    assert_eq!(
        rfc3339_seconds("2026-11-25T15:52:13+01:00"),
        Some(1_795_618_333)
    );
    assert_eq!(rfc3339_seconds("garbage"), None);
}

#[test]
fn steps_serialise_with_the_real_action_names() {
    let s = Step::TakeLock {
        app_id: 1,
        services: vec!["main".into()],
        force: false,
    };
    let v = serde_json::to_value(&s).unwrap();
    assert_eq!(v["action"], "takeLock");
    assert_eq!(s.to_string(), "takeLock app 1 [main]");
}

#[test]
fn c14_local_mode_keeps_images() {
    let s = running(svc("main", "img1", "c1"));
    let stale = svc("old", "img-old", "c0");
    let mut c = with_images(ctx(), &[&s, &stale]);
    c.keep_images = true;
    c.dangling_images = true;
    assert!(plan(
        &[capp("c1", vec![s])],
        &[tapp("c1", vec![svc("main", "img1", "c1")])],
        &c
    )
    .is_empty());
}

#[test]
fn c9_handover_timeout_defaults_to_a_minute() {
    let labels = json!({"io.balena.update.strategy": "hand-over"});
    let old = running(target_svc("main", "img1", "c0", json!({}), labels.clone()));
    let new = target_svc("main", "img2", "c1", json!({}), labels);
    let c = locked(with_images(ctx(), &[&old, &new]));
    let steps = plan(&[capp("c0", vec![old])], &[tapp("c1", vec![new])], &c);
    assert!(
        matches!(
            steps[..],
            [Step::Handover {
                timeout_ms: 60_000,
                ..
            }]
        ),
        "{steps:?}"
    );
}

#[test]
fn c9_handover_kills_instead_when_its_network_changes() {
    let labels = json!({"io.balena.update.strategy": "hand-over"});
    let old = running(target_svc("main", "img1", "c0", json!({}), labels.clone()));
    let new = target_svc("main", "img2", "c1", json!({}), labels);
    let mut t = tapp("c1", vec![new.clone()]);
    let spec = serde_json::from_value(json!({"internal": true})).unwrap();
    t.networks = vec![Network::from_target("default", &spec, APP, UUID).unwrap()];
    let c = locked(with_images(ctx(), &[&old, &new]));
    assert_eq!(
        plan_brief(&[capp("c0", vec![old])], &[t], &c),
        ["kill:main"]
    );
}

#[test]
fn c10_removal_with_download_then_kill_waits_for_the_new_images() {
    let gone = running(svc("gone", "img-g", "c0"));
    let keep = running(svc("main", "img1", "c0"));
    let new = svc("main", "img2", "c1");
    let c = locked(with_images(ctx(), &[&gone, &keep]));
    let steps = plan_brief(
        &[capp("c0", vec![gone, keep])],
        &[tapp("c1", vec![new])],
        &c,
    );
    assert_eq!(
        steps,
        ["noop", "fetch:main"],
        "the removed service waits until the download is done"
    );
}

#[test]
fn c5_stopping_container_during_update_is_a_noop() {
    let old = with_status(
        running(svc("main", "img1", "c0")),
        ServiceStatus::Stopping,
        true,
    );
    let new = svc("main", "img2", "c1");
    let c = locked(with_images(ctx(), &[&old, &new]));
    assert_eq!(
        plan_brief(&[capp("c0", vec![old])], &[tapp("c1", vec![new])], &c),
        ["noop"]
    );
}

#[test]
fn c6_network_mode_service_waits_for_its_service() {
    let vpn = svc("vpn", "img-v", "c1");
    let mut app = target_svc("app", "img-a", "c1", json!({}), json!({}));
    app.depends_on = vec!["vpn".into()];
    app.config.network_mode = "service:vpn".into();
    let c = locked(with_images(ctx(), &[&vpn, &app]));
    let t = tapp("c1", vec![vpn.clone(), app]);
    assert_eq!(
        plan_brief(&[capp("c1", vec![])], &[t.clone()], &c),
        ["start:vpn"]
    );
    assert_eq!(
        plan_brief(&[capp("c1", vec![running(vpn)])], &[t], &c),
        ["start:app"]
    );
}

#[test]
fn c6_service_waits_for_its_volume() {
    let s = target_svc(
        "main",
        "img1",
        "c1",
        json!({"volumes": ["data:/data"]}),
        json!({}),
    );
    let mut t = tapp("c1", vec![s.clone()]);
    t.volumes.push(Volume {
        name: "data".into(),
        app_id: APP,
        app_uuid: UUID.into(),
        driver: "local".into(),
        driver_opts: Default::default(),
        labels: Default::default(),
    });
    let c = locked(with_images(ctx(), &[&s]));
    assert_eq!(
        plan_brief(&[capp("c1", vec![])], &[t], &c),
        ["createVolume:data"]
    );
}

#[test]
fn c12_images_used_by_another_app_are_kept() {
    let a = running(svc("main", "img-shared", "c1"));
    let b = running(target_svc_in(
        "uuid2",
        2,
        "other",
        "img-shared",
        "c9",
        json!({}),
        json!({}),
    ));
    let mut rec = avail(&b);
    rec.app_id = 2;
    let mut c = with_images(ctx(), &[&a]);
    c.available_images.push(rec);
    let t2 = tapp2(
        "c9",
        vec![target_svc_in(
            "uuid2",
            2,
            "other",
            "img-shared",
            "c9",
            json!({}),
            json!({}),
        )],
    );
    let cur2 = CurrentApp {
        app_id: 2,
        app_uuid: "uuid2".into(),
        commit: Some("c9".into()),
        services: vec![b],
        networks: vec![default_net("uuid2", 2)],
        volumes: vec![],
    };
    assert!(plan(
        &[capp("c1", vec![a]), cur2],
        &[tapp("c1", vec![svc("main", "img-shared", "c1")]), t2],
        &c
    )
    .is_empty());
}

#[test]
fn j11_several_kills_in_one_iteration_once_all_images_are_ready() {
    let a = running(svc("a", "img-a1", "c0"));
    let b = running(svc("b", "img-b1", "c0"));
    let a2 = svc("a", "img-a2", "c1");
    let b2 = svc("b", "img-b2", "c1");
    let c = locked(with_images(ctx(), &[&a, &b, &a2, &b2]));
    assert_eq!(
        plan_brief(&[capp("c0", vec![a, b])], &[tapp("c1", vec![a2, b2])], &c),
        ["kill:a", "kill:b"]
    );
}

#[test]
fn j29_fetches_still_come_first_when_a_network_is_deleted() {
    let s = running(target_svc(
        "main",
        "img1",
        "c0",
        json!({"networks": ["backend"]}),
        json!({}),
    ));
    let mut cur = capp("c0", vec![s.clone()]);
    cur.networks
        .push(Network::from_target("backend", &Default::default(), APP, UUID).unwrap());
    let new = svc("main", "img2", "c1");
    let c = locked(with_images(ctx(), &[&s]));
    let steps = plan_brief(&[cur], &[tapp("c1", vec![new])], &c);
    assert_eq!(steps[0], "fetch:main", "{steps:?}");
}

#[test]
fn j37_locks_of_another_app_are_not_released_by_this_one() {
    let s = running(svc("main", "img1", "c1"));
    let mut c = with_images(ctx(), &[&s]);
    c.leftover_locks.insert(2);
    let other = CurrentApp {
        app_id: 2,
        app_uuid: "uuid2".into(),
        services: vec![running(target_svc_in(
            "uuid2",
            2,
            "x",
            "img-x",
            "c5",
            json!({}),
            json!({}),
        ))],
        ..Default::default()
    };
    let t2 = DesiredApp {
        networks: vec![],
        ..tapp2("c5", other.services.clone())
    };
    let mut c2 = c.clone();
    c2.available_images.push(avail(&other.services[0]));
    let steps = plan_brief(
        &[capp("c1", vec![s]), other],
        &[tapp("c1", vec![svc("main", "img1", "c1")]), t2],
        &c2,
    );
    assert_eq!(
        steps,
        ["updateCommit:c5", "releaseLock:2"],
        "only app 2 releases, after recording its release"
    );
}

#[test]
fn c11_target_running_false_on_a_running_container_never_restarts_it() {
    let stopped = with_status(
        running(svc("main", "img1", "c1")),
        ServiceStatus::Other("exited".into()),
        false,
    );
    let t = target_svc("main", "img1", "c1", json!({"running": false}), json!({}));
    let c = with_images(ctx(), &[&t]);
    assert!(plan(&[capp("c1", vec![stopped])], &[tapp("c1", vec![t])], &c).is_empty());
}

#[test]
fn c4_5_restart_policy_change_recreates() {
    let cur = running(svc("main", "img1", "c1"));
    let t = target_svc("main", "img1", "c1", json!({"restart": "no"}), json!({}));
    let c = locked(with_images(ctx(), &[&cur]));
    let steps = plan(&[capp("c1", vec![cur])], &[tapp("c1", vec![t])], &c);
    assert!(
        matches!(&steps[..], [Step::Kill { reason, .. }] if reason == &vec!["restart".to_string()]),
        "{steps:?}"
    );
}

#[test]
fn c4_5_image_change_with_same_name_recreates() {
    let cur = running(svc("main", "img1", "c1"));
    let mut t = svc("main", "img1", "c1");
    t.config.image = "sha256:rebuilt".into();
    let c = locked(with_images(ctx(), &[&cur, &t]));
    let steps = plan(&[capp("c1", vec![cur])], &[tapp("c1", vec![t])], &c);
    assert!(
        matches!(&steps[..], [Step::Kill { reason, .. }] if reason.contains(&"image".to_string())),
        "{steps:?}"
    );
}

#[test]
fn c2_4_app_only_in_current_with_nothing_left_but_a_lock_releases_it() {
    let mut c = ctx();
    c.locks_held.insert(7);
    assert_eq!(
        plan_brief(&[], &[tapp("c1", vec![])], &c),
        ["createNetwork:default", "releaseLock:7"]
    );
}

mod property;

#[test]
fn c8_previous_release_records_go_once_the_new_release_has_its_own_even_with_the_same_image() {
    let old = running(svc("main", "img1", "c0"));
    let mut new = svc("main", "img1", "c1");
    new.release_id = 2;
    new.config.image = old.config.image.clone();
    // The new release runs (same image, renamed), and only the old release's record exists:
    // it stays, the image would otherwise have no record.
    let mut now = running(new.clone());
    now.commit = Some("c1".into());
    let c = with_images(ctx(), &[&old]);
    let steps = plan_brief(
        &[capp("c1", vec![now.clone()])],
        &[tapp("c1", vec![new.clone()])],
        &c,
    );
    assert!(
        !steps.iter().any(|s| s.starts_with("removeImage")),
        "{steps:?}"
    );
    // Both records: the old one goes (its image stays: the new record names it).
    let c = with_images(ctx(), &[&old, &new]);
    assert_eq!(
        plan_brief(&[capp("c1", vec![now])], &[tapp("c1", vec![new])], &c),
        ["removeImage:img1"]
    );
}
