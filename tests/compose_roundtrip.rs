//! Compose → create body → real engine → inspect → service: equal to the original, so a
//! restart never recreates what it created (and `tinyvisor plan` sees nothing to do).
#![recursion_limit = "256"]

mod common;

use common::*;
use serde_json::json;
use std::collections::BTreeMap;
use tinyvisor::compose::service::{
    config_differences, DeviceContext, ImageDefaults, ServiceOrigin,
};
use tinyvisor::compose::target::parse_device_target;
use tinyvisor::compose::{Network, Service, Volume};
use tinyvisor::config::{Overrides, Settings};
use tinyvisor::dry_run::{dry_run, CurrentSource};

#[test]
fn created_containers_read_back_as_the_same_service() {
    let e = engine();
    let mut cleanup = Cleanup::new(&e);
    // A unique app so parallel runs never meet; ids must be numeric.
    let app_id: i64 = 900_000 + (std::process::id() as i64 % 99_999);
    let uuid = unique("app").replace('-', "");
    let commit = "c0ffee1";
    let target_doc = json!({"name": "roundtrip-device", "config": {}, "apps": {uuid.clone(): {"id": app_id, "name": "rt", "releases": {commit: {"id": 5,
        "services": {
            "main": {"id": 1, "image_id": 11, "image": BUSYBOX, "environment": {"GREETING": "hi there"}, "labels": {"com.example.role": "web"},
                "composition": {
                    "command": ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"],
                    "ports": ["127.0.0.1:18080:80", "9000-9001:90-91/udp"],
                    "volumes": ["data:/data", "/scratch"],
                    "networks": {"backend": {"aliases": ["api"]}, "frontend": null},
                    "cap_add": ["NET_ADMIN"], "cap_drop": ["MKNOD"], "tmpfs": ["/run/tmp"],
                    "ulimits": {"nofile": {"soft": 1024, "hard": 2048}},
                    "sysctls": {"net.core.somaxconn": "512"},
                    "extra_hosts": ["printer:10.1.2.3"], "dns": ["1.1.1.1"], "dns_search": ["example.com"],
                    "working_dir": "/data/", "user": "1000", "restart": "unless-stopped",
                    "healthcheck": {"test": ["CMD", "true"], "interval": "30s", "retries": 2},
                    "stop_signal": "SIGINT", "stop_grace_period": "3s", "init": true,
                    "mem_limit": "64m", "shm_size": "32m", "hostname": "rt-main", "labels": {"io.balena.update.strategy": "hand-over"}
                }},
            "side": {"id": 2, "image_id": 12, "image": BUSYBOX, "composition": {"command": "sleep 100", "network_mode": "service:main", "running": false}}
        },
        "volumes": {"data": {"labels": {"com.example.keep": "yes"}}},
        "networks": {"backend": {}, "frontend": {"internal": true}}}}}}});
    let state = parse_device_target(&target_doc).unwrap();
    let app = &state.apps[&uuid];
    let rel = app.release.as_ref().unwrap();
    let image = ImageDefaults::from_inspect(&e.inspect_image(BUSYBOX).unwrap());
    let device = DeviceContext {
        uuid: "device-uuid".into(),
        device_type: "generic-amd64".into(),
        device_arch: "amd64".into(),
        os_version: "Debian".into(),
        device_name: "roundtrip-device".into(),
        listen_port: 48484,
        docker_socket: socket(),
        ..Default::default()
    };
    let service = |name: &str| {
        let origin = ServiceOrigin {
            app_id,
            app_uuid: uuid.clone(),
            app_name: "rt".into(),
            release_id: rel.id,
            commit: commit.into(),
            service_name: name.into(),
            api_key: None,
        };
        Service::from_target(&rel.services[name], &origin, &device, Some(&image))
    };
    let main = service("main");
    let side = service("side");

    // Networks and the volume first, as the planner orders them.
    let mut networks: Vec<Network> = rel
        .networks
        .iter()
        .map(|(n, spec)| Network::from_target(n, spec, app_id, &uuid).unwrap())
        .collect();
    networks.push(Network::default_for(app_id, &uuid, false));
    for n in &networks {
        cleanup.networks.push(n.engine_name());
        e.create_network(&n.to_create()).unwrap();
    }
    let vol = Volume::from_target("data", &rel.volumes["data"], app_id, &uuid, "data").unwrap();
    cleanup.volumes.push(vol.engine_name());
    e.create_volume(&vol.to_create()).unwrap();

    let main_name = main.container_name();
    cleanup.containers.push(main_name.clone());
    let main_id = e
        .create_container(
            &main_name,
            &main.create_body("roundtrip-device", &BTreeMap::new()),
        )
        .unwrap()
        .id;
    for (net, endpoint) in main.extra_networks() {
        e.connect_network(&net, &main_id, &endpoint).unwrap();
    }
    let mut ids = BTreeMap::new();
    ids.insert("main".to_string(), main_id.clone());
    let side_name = side.container_name();
    cleanup.containers.push(side_name.clone());
    e.create_container(&side_name, &side.create_body("roundtrip-device", &ids))
        .unwrap();

    for (name, original) in [(&main_name, &main), (&side_name, &side)] {
        let read = Service::from_inspect(&e.inspect_container(name).unwrap()).expect("ours");
        assert_eq!(read.container_name(), original.container_name());
        assert_eq!(
            (read.app_id, read.service_id, read.app_uuid.as_str()),
            (app_id, original.service_id, uuid.as_str())
        );
        let mut expected = original.config.clone();
        // Created, not started: only the running flag differs, and it is not compared.
        expected.running = false;
        let diff = config_differences(&read.config, &expected, &ids);
        assert!(
            diff.is_empty(),
            "{name} differs after a round trip in {diff:?}"
        );
    }
    let v = e.inspect_volume(&vol.engine_name()).unwrap();
    assert!(Volume::from_engine(&v).unwrap().is_equal_config(&vol));
    for n in &networks {
        let read = Network::from_engine(&e.inspect_network(&n.engine_name()).unwrap()).unwrap();
        assert!(read.is_equal_config(n), "{} differs: {read:?}", n.name);
    }

    // The dry run on the live engine sees only the starts it would still do (containers
    // are created but not started) and never a recreate.
    let dir = std::env::temp_dir().join(unique("cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), br#"{"uuid":"device-uuid"}"#).unwrap();
    std::fs::write(
        dir.join("device-type.json"),
        br#"{"slug":"generic-amd64","arch":"amd64"}"#,
    )
    .unwrap();
    let overrides = Overrides {
        docker_socket: Some(socket().into()),
        boot_mountpoint: Some(dir.clone()),
        root_mountpoint: Some(dir.join("root")),
        ..Default::default()
    };
    std::fs::create_dir_all(dir.join("root/etc")).unwrap();
    std::fs::write(dir.join("root/etc/os-release"), "PRETTY_NAME=\"Debian\"\n").unwrap();
    let settings = Settings::load(&|_| None, &overrides).unwrap();
    let run = dry_run(
        &settings,
        &json!({"device-uuid": target_doc}),
        CurrentSource::Engine(&e),
    )
    .unwrap();
    assert!(run.converged);
    let all: Vec<String> = run
        .iterations
        .iter()
        .flatten()
        .map(|s| s.action().to_string())
        .collect();
    assert!(
        !all.iter()
            .any(|a| a == "kill" || a == "fetch" || a.starts_with("create")),
        "{}",
        run.human()
    );
    assert!(all.iter().any(|a| a == "start"), "{}", run.human());
    let _ = std::fs::remove_dir_all(dir);
}
