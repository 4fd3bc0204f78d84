use super::boot_keys::BootValue;
use super::*;
use crate::boot_config::{Backend, Mounts};

fn target(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn current(vars: &[(&'static str, &str)]) -> Current<'static> {
    Current {
        vars: vars.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        vpn_active: None,
        boot: Vec::new(),
    }
}

fn change(env: &str, value: &str) -> Change {
    Change {
        var: *VARS.iter().find(|v| v.env == env).unwrap(),
        value: value.into(),
    }
}

fn config_txt() -> Box<dyn Backend> {
    crate::boot_config::backends_for("raspberrypi3", None, std::path::Path::new("/nonexistent"))
        .into_iter()
        .next()
        .unwrap()
}

/// Name, target, current, expected steps.
type Case = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    Vec<(&'static str, &'static str)>,
    Vec<ConfigStep>,
);

#[test]
fn supervisor_variables_compare_by_kind_and_change_in_one_step() {
    let cases: Vec<Case> = vec![
        ("defaults everywhere", vec![], vec![], vec![]),
        (
            "same value in another spelling",
            vec![
                ("SUPERVISOR_POLL_INTERVAL", "600000.0"),
                ("SUPERVISOR_DELTA", "1"),
            ],
            vec![
                ("SUPERVISOR_POLL_INTERVAL", "600000"),
                ("SUPERVISOR_DELTA", "on"),
            ],
            vec![],
        ),
        (
            "two changes, one step, canonical values",
            vec![
                ("SUPERVISOR_POLL_INTERVAL", "600000"),
                ("SUPERVISOR_DELTA", "True"),
            ],
            vec![],
            vec![ConfigStep::ChangeConfig {
                changes: vec![
                    change("SUPERVISOR_POLL_INTERVAL", "600000"),
                    change("SUPERVISOR_DELTA", "true"),
                ],
            }],
        ),
        (
            "a variable gone from the target goes back to its default",
            vec![],
            vec![("SUPERVISOR_DELTA_VERSION", "3")],
            vec![ConfigStep::ChangeConfig {
                changes: vec![change("SUPERVISOR_DELTA_VERSION", "2")],
            }],
        ),
        (
            "persistent logging needs a reboot: breadcrumb first",
            vec![("SUPERVISOR_PERSISTENT_LOGGING", "1")],
            vec![],
            vec![
                ConfigStep::RebootBreadcrumb {
                    reason: r#"{"persistentLogging":"true"}"#.into(),
                },
                ConfigStep::ChangeConfig {
                    changes: vec![change("SUPERVISOR_PERSISTENT_LOGGING", "true")],
                },
            ],
        ),
        (
            "invalid values fall back to the default when the current is not it",
            vec![
                ("HOST_FIREWALL_MODE", "sometimes"),
                ("SUPERVISOR_DELTA", "maybe"),
            ],
            vec![("HOST_FIREWALL_MODE", "on")],
            vec![ConfigStep::ChangeConfig {
                changes: vec![change("HOST_FIREWALL_MODE", "off")],
            }],
        ),
        (
            "parseInt semantics: a leading integer is valid",
            vec![("SUPERVISOR_API_REQUEST_TIMEOUT", "123abc")],
            vec![],
            vec![ConfigStep::ChangeConfig {
                changes: vec![change("SUPERVISOR_API_REQUEST_TIMEOUT", "123")],
            }],
        ),
    ];
    for (name, t, c, want) in cases {
        let p = plan(&target(&t), &current(&c), "generic-amd64", true, false).unwrap();
        assert_eq!(p.steps, want, "{name}");
    }
    // Invalid but the current value is the default: only the warning.
    let p = plan(
        &target(&[("HOST_FIREWALL_MODE", "sometimes")]),
        &current(&[]),
        "generic-amd64",
        true,
        false,
    )
    .unwrap();
    assert!(p.steps.is_empty());
    assert_eq!(
        p.warnings,
        ["Warning: Ignoring invalid device configuration value for HOST_FIREWALL_MODE, value: sometimes. Falling back to default (off)"]
    );
    // An unset firewall mode, as GET /v2/local/target-state shows it and balena-cli sends it
    // back with every push, is no warning.
    let p = plan(
        &target(&[("HOST_FIREWALL_MODE", "")]),
        &current(&[("HOST_FIREWALL_MODE", "")]),
        "generic-amd64",
        true,
        false,
    )
    .unwrap();
    assert!(p.warnings.is_empty() && p.steps.is_empty(), "{p:?}");
}

#[test]
fn the_vpn_follows_the_target_on_managed_devices_once_an_hour() {
    let mut c = current(&[]);
    c.vpn_active = Some(false);
    let on = vec![ConfigStep::SetVpn { enable: true }];
    // Missing or empty means on.
    for t in [target(&[]), target(&[("SUPERVISOR_VPN_CONTROL", "")])] {
        assert_eq!(plan(&t, &c, "x", true, false).unwrap().steps, on);
    }
    let off = target(&[("SUPERVISOR_VPN_CONTROL", "false")]);
    assert!(plan(&off, &c, "x", true, false).unwrap().steps.is_empty());
    c.vpn_active = Some(true);
    assert_eq!(
        plan(&off, &c, "x", true, false).unwrap().steps,
        vec![ConfigStep::SetVpn { enable: false }]
    );
    // Unmanaged, tried within the hour, or no bus to ask: nothing.
    assert!(plan(&off, &c, "x", false, false).unwrap().steps.is_empty());
    assert!(plan(&off, &c, "x", true, true).unwrap().steps.is_empty());
    c.vpn_active = None;
    assert!(plan(&off, &c, "x", true, false).unwrap().steps.is_empty());
}

#[test]
fn boot_config_waits_for_supervisor_variables_and_needs_a_reboot() {
    let backend = config_txt();
    let now: BootConfig = [("gpu_mem".to_string(), BootValue::Str("16".into()))].into();
    let mut c = current(&[]);
    c.boot = vec![(backend.as_ref() as &dyn BootKeys, now.clone())];
    let t = target(&[("HOST_CONFIG_gpu_mem", "64"), ("SUPERVISOR_DELTA", "1")]);
    // Variables first, boot config in a later iteration.
    let p = plan(&t, &c, "raspberrypi3", true, false).unwrap();
    assert!(matches!(
        p.steps.as_slice(),
        [ConfigStep::ChangeConfig { .. }]
    ));
    c.vars.insert("SUPERVISOR_DELTA", "true".into());
    let p = plan(&t, &c, "raspberrypi3", true, false).unwrap();
    assert_eq!(
        p.steps,
        vec![
            ConfigStep::RebootBreadcrumb {
                reason: "{}".into()
            },
            ConfigStep::SetBootConfig {
                target: target(&[("HOST_CONFIG_gpu_mem", "64")])
            }
        ]
    );
    // Equal: nothing.
    let same = target(&[("HOST_CONFIG_gpu_mem", "16"), ("SUPERVISOR_DELTA", "1")]);
    assert!(plan(&same, &c, "raspberrypi3", true, false)
        .unwrap()
        .steps
        .is_empty());
    // A target without any config.txt variable leaves config.txt alone.
    let silent = target(&[("SUPERVISOR_DELTA", "1")]);
    assert!(plan(&silent, &c, "raspberrypi3", true, false)
        .unwrap()
        .steps
        .is_empty());
    // A forbidden key fails the whole computation with v19's message.
    let bad = target(&[
        ("HOST_CONFIG_kernel", "evil.img"),
        ("SUPERVISOR_DELTA", "1"),
    ]);
    assert_eq!(
        plan(&bad, &c, "raspberrypi3", true, false).unwrap_err(),
        "Attempt to change blacklisted config value kernel"
    );
}

#[test]
fn a_fan_change_alone_writes_config_json_without_a_reboot() {
    let dir = crate::testutil::TempDir::new("devcfg-fan");
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"os":{"fan":{"profile":"quiet"}}}"#,
    )
    .unwrap();
    let cfg = crate::config::ConfigJson::load(&dir.path().join("config.json")).unwrap();
    let backends =
        crate::boot_config::backends_for("jetson-orin-nx-xavier-nx-devkit", None, dir.path());
    let m = Mounts {
        boot: dir.path().to_path_buf(),
        root: dir.path().to_path_buf(),
        config_json: &cfg,
    };
    let mut c = current(&[]);
    c.boot = backends
        .iter()
        .map(|b| (b.as_ref() as &dyn BootKeys, b.read(&m).unwrap()))
        .collect();
    let p = plan(
        &target(&[("HOST_CONFIG_fan_profile", "cool")]),
        &c,
        "jetson-orin-nx-xavier-nx-devkit",
        true,
        false,
    )
    .unwrap();
    assert_eq!(
        p.steps,
        vec![ConfigStep::SetBootConfig {
            target: target(&[("HOST_CONFIG_fan_profile", "cool")])
        }]
    );
}

#[test]
fn a_fresh_devices_config_reads_like_v19s_local_target() {
    // v19.0.5's GET /v2/local/target-state on a fresh unmanaged device (recorded).
    let v19: serde_json::Value = serde_json::from_str(
        r#"{"SUPERVISOR_POLL_INTERVAL":"900000","SUPERVISOR_INSTANT_UPDATE_TRIGGER":"true","SUPERVISOR_LOCAL_MODE":"true","SUPERVISOR_CONNECTIVITY_CHECK":"true","SUPERVISOR_LOG_CONTROL":"true","SUPERVISOR_API_REQUEST_TIMEOUT":"59000","SUPERVISOR_DELTA":"false","SUPERVISOR_DELTA_REQUEST_TIMEOUT":"59000","SUPERVISOR_DELTA_APPLY_TIMEOUT":"0","SUPERVISOR_DELTA_RETRY_COUNT":"30","SUPERVISOR_DELTA_RETRY_INTERVAL":"10000","SUPERVISOR_DELTA_VERSION":"2","SUPERVISOR_OVERRIDE_LOCK":"false","SUPERVISOR_PERSISTENT_LOGGING":"false","HOST_FIREWALL_MODE":"","HOST_DISCOVERABILITY":"true","SUPERVISOR_HARDWARE_METRICS":"true","SUPERVISOR_VPN_CONTROL":"false"}"#,
    )
    .unwrap();
    let got = current_as_target(&BTreeMap::new(), true, false);
    assert_eq!(
        serde_json::to_string(&got).unwrap(),
        serde_json::to_string(&v19).unwrap(),
        "same keys, values and order"
    );
    let mut stored = BTreeMap::new();
    stored.insert("SUPERVISOR_POLL_INTERVAL", "60000".to_string());
    stored.insert("HOST_FIREWALL_MODE", "on".to_string());
    let got = current_as_target(&stored, false, true);
    assert_eq!(got["SUPERVISOR_POLL_INTERVAL"], "60000");
    assert_eq!(got["HOST_FIREWALL_MODE"], "on");
    assert_eq!(got["SUPERVISOR_LOCAL_MODE"], "false");
    assert_eq!(got["SUPERVISOR_VPN_CONTROL"], "true");
}
