use super::*;
use crate::compose::target::{parse_v2_local, TargetState};
use crate::engine::types::ContainerInspect;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn live(name: &str) -> Option<Value> {
    // shared/ sits beside the checkout for developers and CI alike; its absence is a failure.
    let p = fixtures().join("v19-live-answers").join(name);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()));
    Some(serde_json::from_slice(&bytes).unwrap())
}

fn h4_device() -> DeviceContext {
    DeviceContext {
        uuid: "h4c0ffee0123456789abcdef01234567".into(),
        device_type: "intel-nuc".into(),
        device_arch: "amd64".into(),
        os_version: "balenaOS 6.0.10".into(),
        device_name: "h4-device".into(),
        listen_port: 48484,
        docker_socket: "/var/run/balena-engine.sock".into(),
        ..Default::default()
    }
}

fn h4_image() -> ImageDefaults {
    ImageDefaults {
        id: "sha256:3eeed9ea4178c19339b2c9d8ed280890e4c23ccff1cc524c318d7468311a370c".into(),
        cmd: vec!["sh".into()],
        ..Default::default()
    }
}

fn targets_of(
    state: &TargetState,
    device: &DeviceContext,
    image: &ImageDefaults,
) -> BTreeMap<String, Service> {
    let mut out = BTreeMap::new();
    for app in state.apps.values() {
        let rel = app.release.as_ref().unwrap();
        for (name, t) in &rel.services {
            let origin = ServiceOrigin {
                app_id: app.id,
                app_uuid: app.uuid.clone(),
                app_name: app.name.clone(),
                release_id: rel.id,
                commit: rel.commit.clone(),
                service_name: name.clone(),
                api_key: None,
            };
            out.insert(
                name.clone(),
                Service::from_target(t, &origin, device, Some(image)),
            );
        }
    }
    out
}

/// Containers the real supervisor v19 created compare equal to our target services: a
/// device switching to tinyvisor keeps them (docs/contract/engine.md D.5).
#[test]
fn adopts_containers_made_by_the_real_supervisor() {
    let (Some(target), Some(containers)) = (
        live("target-v2-local-initial.json"),
        live("docker-inspect-containers-apply1.json"),
    ) else {
        return;
    };
    let state = parse_v2_local(&target).unwrap();
    let targets = targets_of(&state, &h4_device(), &h4_image());
    let containers: Vec<ContainerInspect> = serde_json::from_value(containers).unwrap();
    assert_eq!(containers.len(), 3);
    for ci in &containers {
        let current = Service::from_inspect(ci).expect("supervised container");
        let target = &targets[&current.service_name];
        assert_eq!(current.container_name(), target.container_name());
        assert_eq!(current.commit.as_deref(), Some("h4commit1"));
        let diff = config_differences(
            &current.config,
            &target.config,
            &BTreeMap::<String, String>::new(),
        );
        assert!(
            diff.is_empty(),
            "{}: differs in {diff:?}",
            current.service_name
        );
        assert_eq!(current.status, ServiceStatus::Running);
    }
}

/// The create body matches what the real supervisor sent for the same service.
#[test]
fn create_body_matches_the_real_supervisors_request() {
    let (Some(target), Ok(trace)) = (
        live("target-v2-local-initial.json"),
        std::fs::read_to_string(fixtures().join("v19-live-answers/engine-api-trace.txt"))
            .map_err(|e| panic!("trace fixture: {e}")),
    ) else {
        return;
    };
    let line = trace
        .lines()
        .find(|l| l.contains("POST /containers/create?name=h4-one_11_1_h4commit1"))
        .unwrap();
    let query = line.split_once('?').unwrap().1;
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap();
        params.entry(k.to_string()).or_default().push(url_decode(v));
    }
    let json_param = |k: &str| -> Value { serde_json::from_str(&params[k][0]).unwrap() };

    let state = parse_v2_local(&target).unwrap();
    let svc = &targets_of(&state, &h4_device(), &h4_image())["h4-one"];
    let body = svc.create_body("h4-device", &BTreeMap::new());

    assert_eq!(body["HostConfig"], json_param("HostConfig"));
    assert_eq!(body["Labels"], json_param("Labels"));
    assert_eq!(body["NetworkingConfig"], json_param("NetworkingConfig"));
    assert_eq!(body["Healthcheck"], json_param("Healthcheck"));
    assert_eq!(body["Image"], json!(params["Image"][0]));
    assert_eq!(body["Cmd"], json!(params["Cmd"]));
    assert_eq!(body["StopTimeout"], json!(10));
    assert_eq!(body["Entrypoint"], json!([]), "sent empty, as v19 sends it");
    let mut ours: Vec<String> = serde_json::from_value(body["Env"].clone()).unwrap();
    let mut theirs = params["Env"].clone();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    assert_eq!(svc.container_name(), "h4-one_11_1_h4commit1");
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() + 1 {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn service_with(composition: Value, labels: Value) -> Service {
    let t = crate::compose::target::parse_device_target(&json!({
        "name": "dev", "config": {},
        "apps": {"appuuid1": {"id": 7, "name": "app", "releases": {"c0ffee": {"id": 3,
            "services": {"main": {"id": 5, "image_id": 9, "image": "reg/img:1",
                "environment": {"A": "1"}, "labels": labels, "composition": composition}},
            "volumes": {"data": {}}, "networks": {"backend": {}}}}}}
    }))
    .unwrap();
    targets_of(&t, &h4_device(), &ImageDefaults::default())["main"].clone()
}

#[test]
fn defaults_follow_the_spec() {
    let s = service_with(json!({}), json!({}));
    let c = &s.config;
    assert_eq!(c.restart, "always");
    assert_eq!(c.network_mode, "appuuid1_default");
    assert_eq!(c.networks["appuuid1_default"].aliases, vec!["main"]);
    assert_eq!(c.shm_size, 64 * 1024 * 1024);
    assert_eq!(c.ipc, "shareable");
    assert_eq!(c.stop_grace_period, 10);
    assert_eq!(c.stop_signal, "SIGTERM");
    assert!(c.tty);
    assert_eq!(c.healthcheck.test, vec!["NONE"]);
    assert_eq!(
        c.image, "reg/img:1",
        "an image not on the engine compares by name"
    );
    assert_eq!(
        c.volumes,
        vec![
            "/tmp/balena-supervisor/services/7/main:/tmp/resin",
            "/tmp/balena-supervisor/services/7/main:/tmp/balena"
        ]
    );
    assert_eq!(c.environment["BALENA_APP_ID"], "7");
    assert_eq!(c.environment["RESIN_SERVICE_NAME"], "main");
    assert_eq!(c.environment["A"], "1");
    assert_eq!(c.labels["io.balena.service-id"], "5");
    assert_eq!(s.container_name(), "main_9_3_c0ffee");
}

#[test]
fn compose_fields_map_to_the_container() {
    let s = service_with(
        json!({
            "ports": ["8080", "127.0.0.1:9000-9001:90-91/udp"],
            "volumes": ["data:/data:ro", "/anon", "/host:/bind"],
            "networks": {"backend": {"aliases": ["be"]}},
            "cap_add": ["NET_ADMIN"], "devices": ["/dev/ttyUSB0"],
            "restart": "On-Failure", "extra_hosts": ["h=1.2.3.4"], "working_dir": "/app/",
            "mem_limit": "64m", "stop_grace_period": "1m30s", "init": true, "tmpfs": ["/run"],
            "security_opt": ["label=disable", "no-new-privileges"], "command": "sh -c 'echo hi'",
            "sysctls": ["net.core.somaxconn=1024"], "ulimits": {"nofile": {"soft": 10, "hard": 20}, "nproc": 5}
        }),
        json!({}),
    );
    let c = &s.config;
    assert_eq!(c.ports["8080/tcp"], vec![(String::new(), "8080".into())]);
    assert_eq!(c.ports["90/udp"], vec![("127.0.0.1".into(), "9000".into())]);
    assert_eq!(c.ports["91/udp"], vec![("127.0.0.1".into(), "9001".into())]);
    assert!(c.volumes.contains(&"7_data:/data:ro".to_string()));
    assert!(c.volumes.contains(&"/anon".to_string()));
    assert!(
        !c.volumes.iter().any(|v| v.starts_with("/host")),
        "bind mounts are dropped"
    );
    assert_eq!(c.network_mode, "appuuid1_backend");
    assert_eq!(c.networks["appuuid1_backend"].aliases, vec!["main", "be"]);
    assert_eq!(c.restart, "on-failure");
    assert_eq!(c.extra_hosts, vec!["h:1.2.3.4"]);
    assert_eq!(c.working_dir, "/app");
    assert_eq!(c.mem_limit, 64 * 1024 * 1024);
    assert_eq!(c.stop_grace_period, 90);
    assert_eq!(c.init, Some(true));
    assert_eq!(c.security_opt, vec!["no-new-privileges"]);
    assert_eq!(c.command, vec!["sh", "-c", "echo hi"]);
    assert_eq!(c.sysctls["net.core.somaxconn"], "1024");
    assert_eq!(c.ulimits["nofile"], (10, 20));
    assert_eq!(c.ulimits["nproc"], (5, 5));
    assert_eq!(c.devices[0].path_in_container, "/dev/ttyUSB0");
    assert_eq!(c.devices[0].cgroup_permissions, "rwm");
    assert_eq!(
        s.named_volumes().into_iter().collect::<Vec<_>>(),
        vec!["data"]
    );
}

#[test]
fn feature_labels_add_env_binds_and_networks() {
    let s = service_with(
        json!({}),
        json!({
            "io.balena.features.supervisor-api": "1", "io.balena.features.balena-api": "true",
            "io.balena.features.balena-socket": "1", "io.balena.features.dbus": "1",
            "io.balena.features.journal-logs": "1", "io.balena.features.sysfs": "on",
            "io.balena.features.kernel-modules": "1"
        }),
    );
    let c = &s.config;
    assert_eq!(c.environment["BALENA_SUPERVISOR_HOST"], "10.114.104.1");
    assert_eq!(
        c.environment["BALENA_SUPERVISOR_ADDRESS"],
        "http://10.114.104.1:48484"
    );
    assert_eq!(c.environment["RESIN_SUPERVISOR_PORT"], "48484");
    assert!(c.environment.contains_key("BALENA_API_KEY"));
    assert_eq!(
        c.environment["DOCKER_HOST"],
        "unix:///host/run/balena-engine.sock"
    );
    assert!(c.networks.contains_key("supervisor0"));
    for bind in [
        "/var/run/balena-engine.sock:/host/run/balena-engine.sock",
        "/run/dbus:/host/run/dbus",
        "/var/log/journal:/var/log/journal:ro",
        "/sys:/sys",
    ] {
        assert!(
            c.volumes.contains(&bind.to_string()),
            "{bind} missing in {:?}",
            c.volumes
        );
    }
    assert!(
        !c.volumes.iter().any(|v| v.starts_with("/lib/modules")),
        "host has no /lib/modules here"
    );

    let host = service_with(
        json!({"network_mode": "host"}),
        json!({"io.balena.features.supervisor-api": "1"}),
    );
    assert_eq!(
        host.config.environment["BALENA_SUPERVISOR_HOST"],
        "127.0.0.1"
    );
    assert!(host.config.networks.is_empty());
    assert_eq!(host.config.network_mode, "host");

    let plain = service_with(json!({"networks": ["supervisor0", "backend"]}), json!({}));
    assert!(
        !plain.config.networks.contains_key("supervisor0"),
        "stripped without the feature"
    );
}

#[test]
fn comparison_ignores_defaults_and_names_real_differences() {
    let a = service_with(json!({"restart": "always"}), json!({}));
    let b = service_with(json!({}), json!({}));
    assert!(
        config_differences(&a.config, &b.config, &BTreeMap::<String, String>::new()).is_empty()
    );

    let mut cur = a.config.clone();
    cur.volumes.reverse();
    cur.cap_add = vec!["B".into(), "A".into()];
    let mut tgt = a.config.clone();
    tgt.cap_add = vec!["A".into(), "B".into()];
    assert!(
        config_differences(&cur, &tgt, &BTreeMap::<String, String>::new()).is_empty(),
        "sets ignore order"
    );

    cur.dns = vec!["1.1.1.1".into(), "8.8.8.8".into()];
    tgt.dns = vec!["8.8.8.8".into(), "1.1.1.1".into()];
    assert_eq!(
        config_differences(&cur, &tgt, &BTreeMap::<String, String>::new()),
        vec!["dns"]
    );

    let mut env = a.config.clone();
    env.environment.insert("A".into(), "2".into());
    env.restart = "no".into();
    assert_eq!(
        config_differences(&a.config, &env, &BTreeMap::<String, String>::new()),
        vec!["environment", "restart"]
    );

    // Extra aliases on the engine side (the container's short id) are fine.
    let mut engine_side = a.config.clone();
    engine_side
        .networks
        .get_mut("appuuid1_default")
        .unwrap()
        .aliases
        .push("90d37c6438e2".into());
    assert!(
        config_differences(&engine_side, &a.config, &BTreeMap::<String, String>::new()).is_empty()
    );
    let mut missing = a.config.clone();
    missing.networks.clear();
    assert_eq!(
        config_differences(&missing, &a.config, &BTreeMap::<String, String>::new()),
        vec!["networks"]
    );

    // running and the cpus value are not part of the comparison.
    let mut stopped = a.config.clone();
    stopped.running = false;
    stopped.nano_cpus = 5;
    assert!(config_differences(&stopped, &a.config, &BTreeMap::<String, String>::new()).is_empty());
}

#[test]
fn service_network_mode_matches_the_container_id() {
    let t = crate::compose::target::parse_device_target(&json!({
        "name": "dev", "config": {},
        "apps": {"u1": {"id": 1, "name": "a", "releases": {"c1": {"id": 1, "services": {
            "vpn": {"id": 1, "image_id": 1, "image": "i"},
            "app": {"id": 2, "image_id": 2, "image": "i", "composition": {"network_mode": "service:vpn"}}
        }}}}}
    }))
    .unwrap();
    let svcs = targets_of(&t, &h4_device(), &ImageDefaults::default());
    let app = &svcs["app"];
    assert_eq!(app.depends_on, vec!["vpn"]);
    let mut ids = BTreeMap::new();
    ids.insert("vpn".to_string(), "abc123".to_string());
    let body = app.create_body("d", &ids);
    assert_eq!(body["HostConfig"]["NetworkMode"], "container:abc123");
    let mut current = app.config.clone();
    current.network_mode = "container:abc123".into();
    current.hostname = "something".into();
    assert!(config_differences(&current, &app.config, &ids).is_empty());
    ids.insert("vpn".to_string(), "def456".to_string());
    assert_eq!(
        config_differences(&current, &app.config, &ids),
        vec!["network_mode"]
    );
}

#[test]
fn restart_policy_empty_reads_as_no() {
    let mut ci: ContainerInspect = serde_json::from_value(json!({
        "Id": "0123456789abcdef", "Name": "/main_1_2_abc", "Image": "sha256:x",
        "State": {"Status": "exited"},
        "Config": {"Labels": {"io.resin.supervised": "true", "io.resin.app-id": "1", "io.resin.service-id": "2", "io.resin.service-name": "main"}, "Hostname": "0123456789ab"},
        "HostConfig": {"RestartPolicy": {"Name": ""}}
    }))
    .unwrap();
    let s = Service::from_inspect(&ci).unwrap();
    assert_eq!(s.config.restart, "no");
    assert_eq!(s.config.hostname, "", "short id hostname reads as unset");
    assert_eq!(s.status, ServiceStatus::Other("exited".into()));
    assert_eq!(
        (s.app_id, s.service_id, s.image_id, s.release_id),
        (1, 2, 1, 2)
    );
    ci.config.labels.clear();
    assert!(
        Service::from_inspect(&ci).is_none(),
        "unsupervised containers are never ours"
    );
}
