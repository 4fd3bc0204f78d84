//! Target-state validation: every bad input is rejected with the path of the bad field.

use super::composition::{duration_ns, memory_bytes, parse_port, shell_split};
use super::target::{parse_device_target, parse_v2_local, parse_v3};
use serde_json::{json, Value};

fn base() -> Value {
    json!({
        "name": "dev",
        "config": {"RESIN_SUPERVISOR_POLL_INTERVAL": "600000"},
        "apps": {"app1": {"id": 1, "name": "a", "class": "fleet", "releases": {"c1": {"id": 2,
            "services": {"main": {"id": 3, "image_id": 4, "image": "reg/img@sha256:abc",
                "environment": {"A": "1"}, "labels": {"x.y": "z"},
                "composition": {"ports": ["80"], "volumes": ["data:/data"], "networks": ["net"]}},
                "other": {"id": 5, "image_id": 6, "image": "reg/other"}},
            "volumes": {"data": {}}, "networks": {"net": {"ipam": {"config": [{"subnet": "10.9.0.0/16"}]}}}}}}}
    })
}

fn with(path: &[&str], value: Value) -> Value {
    let mut v = base();
    let mut cur = &mut v;
    for p in &path[..path.len() - 1] {
        cur = match p.parse::<usize>() {
            Ok(i) => &mut cur[i],
            Err(_) => &mut cur[*p],
        };
    }
    let last = path[path.len() - 1];
    match last.parse::<usize>() {
        Ok(i) if cur.as_array().is_some_and(|a| a.len() == i) => {
            cur.as_array_mut().unwrap().push(value)
        }
        Ok(i) => cur[i] = value,
        Err(_) => {
            if value.is_null() {
                cur.as_object_mut().unwrap().remove(last);
            } else {
                cur[last] = value
            }
        }
    }
    v
}

const SVC: &[&str] = &["apps", "app1", "releases", "c1", "services", "main"];

fn svc(extra: &[&str]) -> Vec<&'static str> {
    let mut v: Vec<&'static str> = SVC.to_vec();
    for e in extra {
        v.push(Box::leak(e.to_string().into_boxed_str()));
    }
    v
}

#[test]
fn valid_target_parses() {
    let t = parse_device_target(&base()).unwrap();
    let app = &t.apps["app1"];
    let rel = app.release.as_ref().unwrap();
    assert_eq!(rel.commit, "c1");
    assert_eq!(rel.services["main"].composition.ports.len(), 1);
    assert!(rel.services["main"].running);
}

#[test]
fn bad_targets_name_the_field() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (with(&["name"], json!(5)), "name", "expected a string"),
        (with(&["name"], json!("a\nb")), "name", "newlines"),
        (
            with(&["config"], Value::Null),
            "config",
            "required field is missing",
        ),
        (
            with(&["config", "bad key"], json!("1")),
            "config.bad key",
            "invalid config variable name",
        ),
        (
            with(&["config", "A"], json!([1])),
            "config.A",
            "expected a string",
        ),
        (with(&["apps"], json!([])), "apps", "expected an object"),
        (
            with(&["apps", "app1", "id"], json!("x")),
            "apps.app1.id",
            "non-negative integer",
        ),
        (
            with(&["apps", "app1", "id"], Value::Null),
            "apps.app1.id",
            "required field is missing",
        ),
        (
            with(&["apps", "app1", "class"], json!("other")),
            "apps.app1.class",
            "expected \"fleet\"",
        ),
        (
            with(&["apps", "app1", "releases", "c2"], json!({"id": 1})),
            "apps.app1.releases",
            "at most one release",
        ),
        (
            {
                let mut v = with(&["apps", "app1", "is_host"], json!(true));
                v["apps"]["app2"] = json!({"id": 9, "name": "os2", "is_host": true,
                    "releases": {"r": {"id": 1}}});
                v
            },
            "apps",
            "only one target hostapp is allowed",
        ),
        (
            {
                let mut v = with(&["apps", "app1", "is_host"], json!(true));
                v["apps"]["app1"]["releases"] = json!({});
                v
            },
            "apps.app1.releases",
            "hostapp should have at least one target release",
        ),
        (
            with(&["apps", "app1", "releases", "c1", "id"], json!(-1)),
            "apps.app1.releases.c1.id",
            "non-negative",
        ),
        (
            with(&svc(&["image"]), json!(7)),
            "apps.app1.releases.c1.services.main.image",
            "expected a string",
        ),
        (
            with(&svc(&["image"]), json!("has space")),
            "apps.app1.releases.c1.services.main.image",
            "image reference",
        ),
        (
            with(&svc(&["image_id"]), Value::Null),
            "apps.app1.releases.c1.services.main.image_id",
            "required",
        ),
        (
            with(&svc(&["environment", "1BAD"]), json!("x")),
            "apps.app1.releases.c1.services.main.environment.1BAD",
            "invalid environment variable name",
        ),
        (
            with(&svc(&["environment", "FOO"]), json!(1)),
            "apps.app1.releases.c1.services.main.environment.FOO",
            "expected a string, got a number",
        ),
        (
            with(&svc(&["labels", "x.y"]), json!(true)),
            "apps.app1.releases.c1.services.main.labels.x.y",
            "expected a string, got a boolean",
        ),
        (
            with(&svc(&["environment"]), json!({"A": null})),
            "apps.app1.releases.c1.services.main.environment.A",
            "expected a string",
        ),
        (
            with(&svc(&["labels", "bad label"]), json!("x")),
            "apps.app1.releases.c1.services.main.labels.bad label",
            "invalid label name",
        ),
        (
            with(&svc(&["running"]), json!("maybe")),
            "apps.app1.releases.c1.services.main.running",
            "expected a boolean",
        ),
        (
            with(&svc(&["composition", "ports", "1"]), json!("80")),
            "apps.app1.releases.c1.services.main.composition.ports[1]",
            "duplicate host port",
        ),
        (
            with(&svc(&["composition", "ports", "0"]), json!("99999")),
            "apps.app1.releases.c1.services.main.composition.ports[0]",
            "invalid port",
        ),
        (
            with(&svc(&["composition", "ports", "0"]), json!({})),
            "apps.app1.releases.c1.services.main.composition.ports[0]",
            "expected a string",
        ),
        (
            with(&svc(&["composition", "volumes", "0"]), json!("nope:/x")),
            "apps.app1.releases.c1.services.main.composition.volumes[0]",
            "volume \"nope\" is not defined",
        ),
        (
            with(&svc(&["composition", "volumes", "0"]), json!("da$ta:/x")),
            "apps.app1.releases.c1.services.main.composition.volumes[0]",
            "invalid volume name",
        ),
        (
            with(
                &svc(&["composition", "volumes", "0"]),
                json!("data:relative"),
            ),
            "apps.app1.releases.c1.services.main.composition.volumes[0]",
            "absolute path",
        ),
        (
            with(&svc(&["composition", "networks", "0"]), json!("ghost")),
            "apps.app1.releases.c1.services.main.composition.networks[0]",
            "network \"ghost\" is not defined",
        ),
        (
            with(
                &svc(&["labels", "io.tinyvisor.rollback.window"]),
                json!("soon"),
            ),
            "apps.app1.releases.c1.services.main.labels.io.tinyvisor.rollback.window",
            "expected a duration",
        ),
        (
            with(
                &svc(&["composition", "labels"]),
                json!({"io.tinyvisor.update.window": "25:00-26:00"}),
            ),
            "apps.app1.releases.c1.services.main.composition.labels.io.tinyvisor.update.window",
            "expected windows like",
        ),
        (
            with(&svc(&["labels", "io.tinyvisor.update.at"]), json!("noon")),
            "apps.app1.releases.c1.services.main.labels.io.tinyvisor.update.at",
            "expected \"reboot\"",
        ),
        (
            with(&svc(&["composition", "depends_on"]), json!(["ghost"])),
            "apps.app1.releases.c1.services.main.composition.depends_on[0]",
            "not in the release",
        ),
        (
            with(
                &svc(&["composition", "depends_on"]),
                json!({"other": {"condition": "service_ready"}}),
            ),
            "apps.app1.releases.c1.services.main.composition.depends_on.other.condition",
            "expected service_started, service_healthy or service_completed_successfully",
        ),
        (
            with(
                &svc(&["composition", "depends_on"]),
                json!({"other": {"condition": "service_healthy", "required": "yes"}}),
            ),
            "apps.app1.releases.c1.services.main.composition.depends_on.other.required",
            "expected a boolean",
        ),
        (
            with(
                &svc(&["composition", "depends_on"]),
                json!({"ghost": {"condition": "service_healthy"}}),
            ),
            "apps.app1.releases.c1.services.main.composition.depends_on[0]",
            "not in the release",
        ),
        (
            with(
                &svc(&["composition", "network_mode"]),
                json!("service:main"),
            ),
            "apps.app1.releases.c1.services.main.composition.network_mode",
            "not another service",
        ),
        (
            with(&svc(&["composition", "network_mode"]), json!("ghostnet")),
            "apps.app1.releases.c1.services.main.composition.network_mode",
            "not defined",
        ),
        (
            with(&svc(&["composition", "mem_limit"]), json!("lots")),
            "apps.app1.releases.c1.services.main.composition.mem_limit",
            "size",
        ),
        (
            with(&svc(&["composition", "stop_grace_period"]), json!("soon")),
            "apps.app1.releases.c1.services.main.composition.stop_grace_period",
            "duration",
        ),
        (
            with(&svc(&["composition", "command"]), json!({"a": 1})),
            "apps.app1.releases.c1.services.main.composition.command",
            "expected a string or a list",
        ),
        (
            with(
                &svc(&["composition", "command"]),
                json!("echo 'unterminated"),
            ),
            "apps.app1.releases.c1.services.main.composition.command",
            "unterminated",
        ),
        (
            with(&svc(&["composition", "privileged"]), json!("sure")),
            "apps.app1.releases.c1.services.main.composition.privileged",
            "boolean",
        ),
        (
            with(&svc(&["composition", "devices"]), json!(["ttyUSB0"])),
            "apps.app1.releases.c1.services.main.composition.devices[0]",
            "absolute",
        ),
        (
            with(&svc(&["composition"]), json!("x")),
            "apps.app1.releases.c1.services.main.composition",
            "expected an object",
        ),
        (
            with(
                &["apps", "app1", "releases", "c1", "services", "../evil"],
                json!({"id": 1, "image_id": 1, "image": "i"}),
            ),
            "apps.app1.releases.c1.services.../evil",
            "invalid service name",
        ),
        (
            with(
                &["apps", "app1", "releases", "c1", "volumes", "a/b"],
                json!({}),
            ),
            "apps.app1.releases.c1.volumes.a/b",
            "invalid volume name",
        ),
        (
            with(
                &["apps", "app1", "releases", "c1", "networks", "n n"],
                json!({}),
            ),
            "apps.app1.releases.c1.networks.n n",
            "invalid network name",
        ),
        (
            with(
                &[
                    "apps", "app1", "releases", "c1", "networks", "net", "internal",
                ],
                json!("x"),
            ),
            "apps.app1.releases.c1.networks.net.internal",
            "boolean",
        ),
        (
            with(
                &[
                    "apps",
                    "app1",
                    "releases",
                    "c1",
                    "volumes",
                    "data",
                    "driver_opts",
                ],
                json!([1]),
            ),
            "apps.app1.releases.c1.volumes.data.driver_opts",
            "expected an object",
        ),
        (
            with(&["apps", "bad/uuid"], json!({"id": 1, "name": "x"})),
            "apps.bad/uuid",
            "invalid app uuid",
        ),
        (
            with(
                &[
                    "apps",
                    "app1",
                    "releases",
                    "c1",
                    "services",
                    "other",
                    "composition",
                ],
                json!({"depends_on": ["main"]}),
            )
            .pipe(|mut v| {
                v["apps"]["app1"]["releases"]["c1"]["services"]["main"]["composition"]
                    ["depends_on"] = json!(["other"]);
                v
            }),
            "apps.app1.releases.c1.services.main",
            "cycle",
        ),
    ];
    for (doc, path, msg) in cases {
        let e = parse_device_target(&doc).expect_err(&format!("accepted a bad target for {path}"));
        assert_eq!(e.path, path, "{e}");
        assert!(
            e.message.contains(msg),
            "{path}: message {:?} lacks {msg:?}",
            e.message
        );
    }
}

trait Pipe: Sized {
    fn pipe(self, f: impl FnOnce(Self) -> Self) -> Self {
        f(self)
    }
}
impl Pipe for Value {}

#[test]
fn unknown_composition_keys_are_kept_aside() {
    let t = parse_device_target(&with(&svc(&["composition", "build"]), json!("."))).unwrap();
    let c = &t.apps["app1"].release.as_ref().unwrap().services["main"].composition;
    assert_eq!(c.ignored, vec!["build"]);
}

#[test]
fn v3_document_must_be_for_this_device() {
    let doc = json!({ "uuid1": base() });
    assert!(parse_v3(&doc, "uuid1").is_ok());
    let e = parse_v3(&doc, "other").unwrap_err();
    assert!(e.message.contains("no entry for this device"));
    let bad = json!({ "uuid1": with(&["name"], json!(1)) });
    assert_eq!(parse_v3(&bad, "uuid1").unwrap_err().path, "uuid1.name");
}

#[test]
fn v2_local_target_converts() {
    let doc = json!({"local": {"name": "d", "config": {}, "apps": {"1": {"name": "localapp", "commit": "abc", "releaseId": "1",
        "services": {"1": {"serviceName": "main", "serviceId": 1, "imageId": 1, "image": "local_main", "running": true,
            "environment": {"A": "1"}, "command": ["sleep", "1"], "network_mode": "host"}}, "volumes": {}, "networks": {}}}}});
    let t = parse_v2_local(&doc).unwrap();
    let app = &t.apps["1"];
    assert_eq!(app.id, 1);
    let s = &app.release.as_ref().unwrap().services["main"];
    assert_eq!(s.image, "local_main");
    assert_eq!(
        s.composition.command.as_deref(),
        Some(&["sleep".to_string(), "1".to_string()][..])
    );
    assert_eq!(s.composition.network_mode.as_deref(), Some("host"));
    let bad = json!({"local": {"name": "d", "config": {}, "apps": {"x": {}}}});
    assert_eq!(parse_v2_local(&bad).unwrap_err().path, "local.apps.x");
}

#[test]
fn ports_durations_sizes_and_commands() {
    let p = parse_port("127.0.0.1:8000-8001:80-81/UDP", "p").unwrap();
    assert_eq!(
        (p.external, p.internal, p.protocol.as_str()),
        ((8000, 8001), (80, 81), "udp")
    );
    let p = parse_port("8080", "p").unwrap();
    assert_eq!(
        p.external,
        (8080, 8080),
        "a bare port binds the same host port"
    );
    assert_eq!(parse_port("9000:80", "p").unwrap().external, (9000, 9000));
    assert_eq!(
        parse_port("1-65535", "p").unwrap().host_bindings().len(),
        65535
    );
    for bad in [
        "0",
        "80-70",
        "8000-8002:80-81",
        "a:80",
        "80/icmp",
        "300.1.1.1:80:80",
    ] {
        assert!(parse_port(bad, "p").is_err(), "{bad}");
    }
    assert_eq!(duration_ns(&json!("1m30s"), "d").unwrap(), 90_000_000_000);
    assert_eq!(duration_ns(&json!("500ms"), "d").unwrap(), 500_000_000);
    assert_eq!(duration_ns(&json!(3), "d").unwrap(), 3_000_000_000);
    assert!(duration_ns(&json!("1x"), "d").is_err());
    assert_eq!(memory_bytes(&json!("64m"), "m").unwrap(), 64 << 20);
    assert_eq!(memory_bytes(&json!("1g"), "m").unwrap(), 1 << 30);
    assert_eq!(memory_bytes(&json!("2kb"), "m").unwrap(), 2048);
    assert_eq!(memory_bytes(&json!(1000), "m").unwrap(), 1000);
    assert_eq!(memory_bytes(&json!("100b"), "m").unwrap(), 100);
    assert!(memory_bytes(&json!("1t"), "m").is_err());
    assert_eq!(
        shell_split(r#"sh -c "echo \"a b\"" 'x y' z\ w"#, "c").unwrap(),
        vec!["sh", "-c", "echo \"a b\"", "x y", "z w"]
    );
}

#[test]
fn random_targets_never_panic() {
    // Mutate a valid target at random paths with random values; every result must be an
    // Ok or a path-named error, never a panic.
    let mut rng = crate::testutil::Rng(42);
    let mut next = move || rng.next();
    let values = [
        json!(null),
        json!(-1),
        json!(1.5),
        json!("x"),
        json!(""),
        json!([]),
        json!({}),
        json!([1, "a"]),
        json!(true),
        json!("1-2:3"),
    ];
    let keys = [
        "ports",
        "volumes",
        "networks",
        "command",
        "environment",
        "labels",
        "devices",
        "ulimits",
        "healthcheck",
        "depends_on",
        "network_mode",
        "mem_limit",
        "restart",
        "cpus",
        "sysctls",
        "extra_hosts",
        "tmpfs",
        "init",
    ];
    for _ in 0..2000 {
        let key = keys[(next() % keys.len() as u64) as usize];
        let value = values[(next() % values.len() as u64) as usize].clone();
        let doc = with(&svc(&["composition", key]), value);
        match parse_device_target(&doc) {
            Ok(_) => {}
            Err(e) => assert!(e.path.starts_with("apps.app1"), "{e}"),
        }
    }
}

#[test]
fn network_losing_its_custom_ipam_config_differs() {
    use super::network::Network;
    use crate::engine::types::Network as EngineNetwork;
    let uuid = "a".repeat(32);
    let custom: serde_json::Map<String, Value> =
        serde_json::from_value(json!({"ipam": {"config": [{"subnet": "10.99.0.0/16"}]}})).unwrap();
    let with_ipam = Network::from_target("default", &custom, 7, &uuid).unwrap();
    let plain = Network::from_target("default", &Default::default(), 7, &uuid).unwrap();
    // What the engine gives back for the network created with the custom config.
    let create = serde_json::to_value(with_ipam.to_create()).unwrap();
    let engine: EngineNetwork = serde_json::from_value(json!({
        "Name": create["Name"], "Driver": "bridge", "IPAM": create["IPAM"],
        "Labels": create["Labels"], "Options": {}, "Containers": {}
    }))
    .unwrap();
    let current = Network::from_engine(&engine).unwrap();
    assert!(current.is_equal_config(&with_ipam), "unchanged target");
    assert!(
        !current.is_equal_config(&plain),
        "ipam config removed: the network must be recreated (v19 compares the private label)"
    );
    // A network created without IPAM config carries no marker and matches the plain target.
    let engine_plain: EngineNetwork = serde_json::from_value(json!({
        "Name": create["Name"], "Driver": "bridge",
        "IPAM": {"Driver": "default", "Config": [{"Subnet": "172.20.0.0/16"}]},
        "Labels": serde_json::to_value(plain.to_create()).unwrap()["Labels"],
        "Options": {}, "Containers": {}
    }))
    .unwrap();
    assert!(Network::from_engine(&engine_plain)
        .unwrap()
        .is_equal_config(&plain));
}

#[test]
fn counts_past_the_limits_are_refused_naming_the_limit() {
    use super::target::{MAX_APPS, MAX_PORTS, MAX_SERVICES};
    let services: serde_json::Map<String, Value> = (0..=MAX_SERVICES)
        .map(|i| {
            (
                format!("s{i}"),
                json!({"id": i, "image_id": i, "image": "busybox", "environment": {}, "labels": {}}),
            )
        })
        .collect();
    let doc = with(
        &["apps", "app1", "releases", "c1", "services"],
        Value::Object(services),
    );
    let e = parse_device_target(&doc).unwrap_err();
    assert_eq!(e.path, "apps.app1.releases.c1.services");
    assert!(
        e.message.contains(&format!("at most {MAX_SERVICES}")),
        "{e}"
    );

    let apps: serde_json::Map<String, Value> = (0..=MAX_APPS)
        .map(|i| {
            (
                format!("app{i}"),
                json!({"id": i, "name": "a", "releases": {}}),
            )
        })
        .collect();
    let e = parse_device_target(&with(&["apps"], Value::Object(apps))).unwrap_err();
    assert!(e.message.contains(&format!("at most {MAX_APPS}")), "{e}");

    let ports: Vec<Value> = (0..=MAX_PORTS)
        .map(|i| json!(format!("{}:80", 1000 + i)))
        .collect();
    let e = parse_device_target(&with(&svc(&["composition", "ports"]), json!(ports))).unwrap_err();
    assert!(e.message.contains(&format!("at most {MAX_PORTS}")), "{e}");
}

#[test]
fn port_overlaps_are_found_in_n_log_n() {
    use super::target::MAX_PORTS;
    // As many ports as allowed, all distinct: accepted quickly.
    let mut ports: Vec<Value> = (0..MAX_PORTS)
        .map(|i| json!(format!("{}:80", 10_000 + i)))
        .collect();
    let started = std::time::Instant::now();
    parse_device_target(&with(&svc(&["composition", "ports"]), json!(ports.clone()))).unwrap();
    // A range at the end covering one of the first ports clashes with it.
    ports[MAX_PORTS - 1] = json!("9990-10005:9990-10005");
    let e = parse_device_target(&with(&svc(&["composition", "ports"]), json!(ports))).unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert_eq!(
        e.path,
        format!(
            "apps.app1.releases.c1.services.main.composition.ports[{}]",
            MAX_PORTS - 1
        )
    );
    assert_eq!(e.message, "duplicate host port: overlaps ports[0]");
    // Other protocols and addresses do not clash.
    let ok = json!([
        "80:80",
        "80:80/udp",
        "127.0.0.1:80:80",
        "81-90:81-90",
        "91:91"
    ]);
    parse_device_target(&with(&svc(&["composition", "ports"]), ok)).unwrap();
    let bad = json!(["80:80", "70-85:70-85"]);
    let e = parse_device_target(&with(&svc(&["composition", "ports"]), bad)).unwrap_err();
    assert!(
        e.path.ends_with("ports[1]") && e.message.ends_with("ports[0]"),
        "{e}"
    );
}

#[test]
fn depends_on_long_syntax_keeps_conditions() {
    use super::composition::{Condition, Dependency};
    let doc = with(
        &[
            "apps",
            "app1",
            "releases",
            "c1",
            "services",
            "main",
            "composition",
            "depends_on",
        ],
        json!({"other": {"condition": "service_completed_successfully", "required": false, "restart": true}}),
    );
    let t = parse_device_target(&doc).unwrap();
    let c = &t.apps["app1"].release.as_ref().unwrap().services["main"].composition;
    assert_eq!(c.depends_on, ["other"]);
    assert_eq!(
        c.dependency_conditions["other"],
        Dependency {
            condition: Condition::ServiceCompletedSuccessfully,
            required: false
        }
    );
    let doc = with(
        &[
            "apps",
            "app1",
            "releases",
            "c1",
            "services",
            "main",
            "composition",
            "depends_on",
        ],
        json!({"other": null}),
    );
    let t = parse_device_target(&doc).unwrap();
    let c = &t.apps["app1"].release.as_ref().unwrap().services["main"].composition;
    assert_eq!(
        c.dependency_conditions["other"].condition,
        Condition::ServiceStarted
    );
    assert!(c.dependency_conditions["other"].required);
}

#[test]
fn an_app_round_trips_through_the_v3_format() {
    use super::target::{app_to_v3, parse_app_v3};
    let t = parse_device_target(&base()).unwrap();
    let app = &t.apps["app1"];
    let back = parse_app_v3("app1", &app_to_v3(app)).unwrap();
    assert_eq!(&back, app);
}
