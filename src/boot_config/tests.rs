use super::*;
use crate::testutil::TempDir;
use std::collections::BTreeMap;

struct Fixture {
    _dir: TempDir,
    boot: PathBuf,
    root: PathBuf,
    cfg: ConfigJson,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = TempDir::new("boot_config");
        let boot = dir.path().join("boot");
        let root = dir.path().join("root");
        std::fs::create_dir_all(&boot).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(
            boot.join("config.json"),
            r#"{"uuid":"u1","os":{"sshKeys":["k"],"power":{"mode":"low"}},"keep":true}"#,
        )
        .unwrap();
        let cfg = ConfigJson::load(&boot.join("config.json")).unwrap();
        Fixture {
            _dir: dir,
            boot,
            root,
            cfg,
        }
    }
    fn mounts(&self) -> Mounts<'_> {
        Mounts {
            boot: self.boot.clone(),
            root: self.root.clone(),
            config_json: &self.cfg,
        }
    }
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn s(v: &str) -> BootValue {
    BootValue::Str(v.into())
}

fn l(v: &[&str]) -> BootValue {
    BootValue::List(v.iter().map(|x| x.to_string()).collect())
}

fn names(device_type: &str, meta: Option<&str>, boot: &Path) -> Vec<&'static str> {
    backends_for(device_type, meta, boot)
        .iter()
        .map(|b| b.name())
        .collect()
}

#[test]
fn backends_are_chosen_by_device_type() {
    let f = Fixture::new();
    assert_eq!(
        names("raspberrypi0-2w-64", None, &f.boot),
        ["config.txt", "splash"]
    );
    assert_eq!(names("fincm3", None, &f.boot), ["config.txt", "splash"]);
    assert_eq!(names("generic-amd64", None, &f.boot), ["splash"]);
    assert_eq!(names("up-board", None, &f.boot), ["configfs", "splash"]);
    // Old Jetson OS: extlinux; 2.47.0 and later: not.
    assert_eq!(
        names("jetson-tx1", Some("2.45.1+rev2"), &f.boot),
        ["extlinux", "splash"]
    );
    assert_eq!(names("jetson-tx1", Some("2.47.0"), &f.boot), ["splash"]);
    assert_eq!(names("jetson-tx1", None, &f.boot), ["splash"]);
    // extra_uEnv only when its file exists.
    assert_eq!(names("jetson-nano", None, &f.boot), ["splash"]);
    std::fs::write(f.boot.join("extra_uEnv.txt"), "").unwrap();
    assert_eq!(
        names("jetson-nano", None, &f.boot),
        ["extra_uEnv", "splash"]
    );
    assert_eq!(
        names("jetson-tx2", None, &f.boot),
        ["extra_uEnv", "odmdata", "splash"]
    );
    assert_eq!(
        names("jetson-agx-orin-devkit", None, &f.boot),
        ["extra_uEnv", "splash", "power-fan"]
    );
    assert!(is_boot_config_var("HOST_CONFIG_gpu_mem"));
    assert!(is_boot_config_var("HOST_EXTLINUX_isolcpus"));
    assert!(!is_boot_config_var("SUPERVISOR_POLL_INTERVAL"));
    assert!(!is_boot_config_var("HOST_CONFIG_"));
}

const PI_CONFIG: &str = "# Enable UART\nenable_uart=1\ndtparam=i2c_arm=on\ndtparam=spi=on\n\
disable_splash=1\n[pi4]\navoid_warnings=1\ndtparam=audio=on\ndtoverlay=vc4-kms-v3d\n\
dtoverlay=lirc-rpi,gpio_out_pin=17\ndtparam=gpio_in_pin=18\ngpu_mem=16\ninitramfs initramf.gz 0x00800000\n";

#[test]
fn config_txt_is_parsed_as_v19_parses_it() {
    let cfg = config_txt::parse(PI_CONFIG);
    let want: BootConfig = [
        ("enable_uart", s("1")),
        ("disable_splash", s("1")),
        ("avoid_warnings", s("1")),
        ("gpu_mem", s("16")),
        ("initramfs", s("initramf.gz 0x00800000")),
        ("dtparam", l(&["i2c_arm=on", "spi=on", "audio=on"])),
        (
            "dtoverlay",
            l(&["vc4-kms-v3d", "lirc-rpi,gpio_out_pin=17,gpio_in_pin=18"]),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(cfg, want);
    // As config variables: lists quoted, names prefixed.
    let e = boot_to_env(&config_txt::ConfigTxt, &cfg);
    assert_eq!(
        e["HOST_CONFIG_dtparam"],
        r#""i2c_arm=on","spi=on","audio=on""#
    );
    assert_eq!(e["HOST_CONFIG_gpu_mem"], "16");
    // Back again: the same settings.
    assert_eq!(env_to_boot(&config_txt::ConfigTxt, &e), cfg);
}

#[test]
fn config_txt_edits_keep_comments_and_unknown_lines_and_are_idempotent() {
    let f = Fixture::new();
    let m = f.mounts();
    let b = config_txt::ConfigTxt;
    std::fs::write(f.boot.join("config.txt"), PI_CONFIG).unwrap();
    let mut target = b.read(&m).unwrap();
    target.insert("gpu_mem".into(), s("64"));
    target.remove("avoid_warnings");
    target.insert("hdmi_group".into(), s("2"));
    assert!(change_required(&b, &b.read(&m).unwrap(), &target).unwrap());
    b.write(&m, &target).unwrap();
    let text = std::fs::read_to_string(f.boot.join("config.txt")).unwrap();
    assert_eq!(
        text,
        "# Enable UART\nenable_uart=1\ndtparam=i2c_arm=on\ndtparam=spi=on\ndisable_splash=1\n[pi4]\n\
dtparam=audio=on\ndtoverlay=vc4-kms-v3d\ndtoverlay=lirc-rpi,gpio_out_pin=17\ndtparam=gpio_in_pin=18\n\
gpu_mem=64\ninitramfs initramf.gz 0x00800000\nhdmi_group=2\n"
    );
    assert_eq!(b.read(&m).unwrap(), target);
    assert!(!change_required(&b, &b.read(&m).unwrap(), &target).unwrap());
    // Writing the same target again changes nothing.
    b.write(&m, &target).unwrap();
    assert_eq!(
        std::fs::read_to_string(f.boot.join("config.txt")).unwrap(),
        text
    );
    // Device-tree changes rewrite those lines as one block in v19's layout, in place.
    target.insert(
        "dtoverlay".into(),
        l(&["pi3-disable-bt", "w1-gpio,gpiopin=4"]),
    );
    target.insert("dtparam".into(), l(&["i2c_arm=on", "audio=off"]));
    b.write(&m, &target).unwrap();
    let text = std::fs::read_to_string(f.boot.join("config.txt")).unwrap();
    assert_eq!(
        text,
        "# Enable UART\nenable_uart=1\ndtparam=i2c_arm=on\ndtparam=audio=off\n\
dtoverlay=pi3-disable-bt\ndtoverlay=w1-gpio\ndtparam=gpiopin=4\ndisable_splash=1\n[pi4]\n\
gpu_mem=64\ninitramfs initramf.gz 0x00800000\nhdmi_group=2\n"
    );
    assert_eq!(b.read(&m).unwrap(), target);
}

#[test]
fn config_txt_quoted_lists_normalise_and_equal_targets_need_no_change() {
    let b = config_txt::ConfigTxt;
    let current = config_txt::parse("dtoverlay=a\ndtoverlay=b\ngpu_mem=16\n");
    for value in [r#""a","b""#, r#" "a" , "b" "#] {
        let target = env_to_boot(
            &b,
            &env(&[
                ("HOST_CONFIG_dtoverlay", value),
                ("HOST_CONFIG_gpu_mem", "16"),
            ]),
        );
        assert!(!change_required(&b, &current, &target).unwrap(), "{value}");
    }
    // A single unquoted value is a one-element list.
    assert_eq!(b.value_of("gpio", " 4=op,dh "), l(&["4=op,dh"]));
    // Keys only in the file are removed (the target is authoritative).
    let target = env_to_boot(&b, &env(&[("HOST_CONFIG_dtoverlay", r#""a","b""#)]));
    assert!(change_required(&b, &current, &target).unwrap());
}

#[test]
fn config_txt_refuses_forbidden_keys_and_values_that_would_break_the_file() {
    let b = config_txt::ConfigTxt;
    let current = config_txt::parse("initramfs initramf.gz 0x00800000\n");
    let target = env_to_boot(&b, &env(&[("HOST_CONFIG_initramfs", "other.gz")]));
    assert_eq!(
        change_required(&b, &current, &target).unwrap_err().0,
        "Attempt to change blacklisted config value initramfs"
    );
    // Unchanged forbidden keys are fine.
    assert!(!change_required(&b, &current, &current).unwrap());
    for (k, v) in [
        ("HOST_CONFIG_gpu_mem", "16\nkernel=evil.img"),
        ("HOST_CONFIG_a b", "1"),
        ("HOST_CONFIG_x=y", "1"),
    ] {
        let target = env_to_boot(&b, &env(&[(k, v)]));
        assert!(
            change_required(&b, &BootConfig::new(), &target).is_err(),
            "{k}"
        );
    }
    // power_mode and fan_profile are not config.txt's.
    assert!(!b.is_boot_config_var("HOST_CONFIG_power_mode"));
}

#[test]
fn fincm3_always_has_the_balena_fin_overlay() {
    let b = config_txt::ConfigTxt;
    let current = config_txt::parse("dtoverlay=balena-fin\ngpu_mem=16\n");
    let mut target = env_to_boot(&b, &env(&[("HOST_CONFIG_gpu_mem", "16")]));
    b.ensure_required("fincm3", &mut target);
    assert!(!change_required(&b, &current, &target).unwrap());
    let mut target = env_to_boot(&b, &env(&[("HOST_CONFIG_dtoverlay", r#""x","""#)]));
    b.ensure_required("fincm3", &mut target);
    assert_eq!(target["dtoverlay"], l(&["x", "balena-fin"]));
}

#[test]
fn a_missing_config_txt_reads_empty_and_is_created() {
    let f = Fixture::new();
    let b = config_txt::ConfigTxt;
    assert!(b.read(&f.mounts()).unwrap().is_empty());
    let target = env_to_boot(&b, &env(&[("HOST_CONFIG_gpu_mem", "16")]));
    b.write(&f.mounts(), &target).unwrap();
    assert_eq!(
        std::fs::read_to_string(f.boot.join("config.txt")).unwrap(),
        "gpu_mem=16\n"
    );
}

const EXTLINUX: &str = "DEFAULT primary\nTIMEOUT 30\nMENU TITLE Boot Options\nLABEL primary\n      MENU LABEL primary Image\n      LINUX /Image\n      APPEND ${cbootargs} ${resin_kernel_root} ro rootwait\n";

#[test]
fn extlinux_edits_only_append_and_fdt() {
    let f = Fixture::new();
    let m = f.mounts();
    let b = extlinux::Extlinux;
    assert_eq!(
        b.read(&m).unwrap_err().0,
        "Could not find extlinux file. Device is possibly bricked"
    );
    std::fs::create_dir_all(f.boot.join("extlinux")).unwrap();
    std::fs::write(f.boot.join("extlinux/extlinux.conf"), EXTLINUX).unwrap();
    assert!(b.read(&m).unwrap().is_empty());
    let target = env_to_boot(
        &b,
        &env(&[
            ("HOST_EXTLINUX_isolcpus", "2,3"),
            ("HOST_EXTLINUX_fdt", "/boot/x.dtb"),
        ]),
    );
    b.write(&m, &target).unwrap();
    let text = std::fs::read_to_string(f.boot.join("extlinux/extlinux.conf")).unwrap();
    assert_eq!(
        text,
        "DEFAULT primary\nTIMEOUT 30\nMENU TITLE Boot Options\nLABEL primary\n      MENU LABEL primary Image\n      LINUX /Image\n      FDT /boot/x.dtb\n      APPEND ${cbootargs} ${resin_kernel_root} ro rootwait isolcpus=2,3\n"
    );
    assert_eq!(b.read(&m).unwrap(), target);
    b.write(&m, &target).unwrap();
    assert_eq!(
        std::fs::read_to_string(f.boot.join("extlinux/extlinux.conf")).unwrap(),
        text
    );
    // Unset: both go.
    b.write(&m, &BootConfig::new()).unwrap();
    assert_eq!(
        std::fs::read_to_string(f.boot.join("extlinux/extlinux.conf")).unwrap(),
        EXTLINUX
    );
    // Other keys are refused; values with '=' or spaces too.
    let bad = env_to_boot(&b, &env(&[("HOST_EXTLINUX_foo", "1")]));
    assert!(change_required(&b, &BootConfig::new(), &bad).is_err());
    let bad = env_to_boot(&b, &env(&[("HOST_EXTLINUX_isolcpus", "1 init=/bin/sh")]));
    assert!(change_required(&b, &BootConfig::new(), &bad).is_err());
}

#[test]
fn malformed_extlinux_files_are_errors() {
    let f = Fixture::new();
    std::fs::create_dir_all(f.boot.join("extlinux")).unwrap();
    for (text, want) in [
        ("LABEL primary\nAPPEND x\n", "no DEFAULT"),
        (
            "DEFAULT other\nLABEL primary\nAPPEND x\n",
            "no label named other",
        ),
        (
            "DEFAULT primary\nLABEL primary\nLINUX /Image\n",
            "has no APPEND",
        ),
        (
            "DEFAULT primary\nLABEL primary\nAPPEND a=b=c\n",
            "unable to parse",
        ),
    ] {
        std::fs::write(f.boot.join("extlinux/extlinux.conf"), text).unwrap();
        let e = extlinux::Extlinux.read(&f.mounts()).unwrap_err().0;
        assert!(e.contains(want), "{text:?}: {e}");
        // A write is refused too, and the file stays.
        assert!(extlinux::Extlinux
            .write(&f.mounts(), &BootConfig::new())
            .is_err());
        assert_eq!(
            std::fs::read_to_string(f.boot.join("extlinux/extlinux.conf")).unwrap(),
            text
        );
    }
}

#[test]
fn extra_uenv_keeps_other_entries_and_rebuilds_the_managed_ones() {
    let f = Fixture::new();
    let m = f.mounts();
    let b = extra_uenv::ExtraUEnv;
    std::fs::write(
        f.boot.join("extra_uEnv.txt"),
        "custom_fdt_file=old.dtb\nextra_os_cmdline=isolcpus=1 quiet\nother=keep\n",
    )
    .unwrap();
    assert_eq!(
        b.read(&m).unwrap(),
        [
            ("fdt".to_string(), s("old.dtb")),
            ("isolcpus".to_string(), s("1"))
        ]
        .into()
    );
    let target = env_to_boot(&b, &env(&[("HOST_EXTLINUX_isolcpus", "2")]));
    b.write(&m, &target).unwrap();
    assert_eq!(
        std::fs::read_to_string(f.boot.join("extra_uEnv.txt")).unwrap(),
        "other=keep\nextra_os_cmdline=isolcpus=2\n"
    );
    assert_eq!(b.read(&m).unwrap(), target);
    std::fs::remove_file(f.boot.join("extra_uEnv.txt")).unwrap();
    assert!(b.read(&m).is_err());
}

#[test]
fn configfs_lists_go_to_configfs_json() {
    let f = Fixture::new();
    let m = f.mounts();
    let b = configfs::ConfigFs;
    assert!(b.read(&m).unwrap().is_empty());
    let target = env_to_boot(
        &b,
        &env(&[("HOST_CONFIGFS_ssdt", r#""spidev1.0","spidev1.1""#)]),
    );
    b.write(&m, &target).unwrap();
    assert_eq!(
        std::fs::read_to_string(f.boot.join("configfs.json")).unwrap(),
        r#"{"ssdt":["spidev1.0","spidev1.1"]}"#
    );
    assert!(!change_required(&b, &b.read(&m).unwrap(), &target).unwrap());
    let bad = env_to_boot(&b, &env(&[("HOST_CONFIGFS_ssdt", "../../etc/passwd")]));
    assert!(change_required(&b, &BootConfig::new(), &bad).is_err());
}

#[test]
fn odmdata_reads_and_writes_the_three_copies() {
    let f = Fixture::new();
    let m = f.mounts();
    let b = odmdata::Odmdata;
    std::fs::create_dir_all(f.root.join("dev")).unwrap();
    std::fs::create_dir_all(f.root.join("sys/block/mmcblk0boot0")).unwrap();
    let mut disk = vec![0xAAu8; 20_000];
    for off in [1659, 5243, 18043] {
        disk[off] = 0x6; // mode 3
    }
    std::fs::write(f.root.join("dev/mmcblk0boot0"), &disk).unwrap();
    assert_eq!(b.read(&m).unwrap()["configuration"], s("3"));
    // No value in the target: no change (the special case of v19).
    assert!(!change_required(&b, &b.read(&m).unwrap(), &BootConfig::new()).unwrap());
    let target = env_to_boot(&b, &env(&[("HOST_ODMDATA_configuration", "5")]));
    assert!(change_required(&b, &b.read(&m).unwrap(), &target).unwrap());
    b.write(&m, &target).unwrap();
    assert_eq!(b.read(&m).unwrap()["configuration"], s("5"));
    assert_eq!(
        std::fs::read_to_string(f.root.join("sys/block/mmcblk0boot0/force_ro")).unwrap(),
        "1"
    );
    let written = std::fs::read(f.root.join("dev/mmcblk0boot0")).unwrap();
    assert_eq!(written.len(), disk.len());
    assert_eq!(written.iter().filter(|b| **b == 0x2).count(), 3);
    for bad in ["0", "7", "x"] {
        let t = env_to_boot(&b, &env(&[("HOST_ODMDATA_configuration", bad)]));
        assert!(
            change_required(&b, &b.read(&m).unwrap(), &t).is_err(),
            "{bad}"
        );
    }
    // Copies that disagree.
    let mut disk = written;
    disk[5243] = 0x1;
    std::fs::write(f.root.join("dev/mmcblk0boot0"), &disk).unwrap();
    assert!(b.read(&m).is_err());
}

/// A small valid PNG (signature and a few bytes are all that is checked).
fn png(tag: u8) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend_from_slice(&[0, 0, 0, 13, tag]);
    v
}

#[test]
fn the_splash_logo_is_set_normalised_and_restored() {
    let f = Fixture::new();
    let m = f.mounts();
    let b = splash::SplashImage;
    std::fs::create_dir_all(f.boot.join("splash")).unwrap();
    std::fs::write(f.boot.join("splash/resin-logo.png"), png(1)).unwrap();
    // The shipped logo is the default: nothing is set.
    assert!(b.read(&m).unwrap().is_empty());
    assert_eq!(
        std::fs::read(f.boot.join("splash/balena-logo-default.png")).unwrap(),
        png(1)
    );
    let b64 = crate::encoding::base64(&png(2));
    for value in [
        b64.clone(),
        format!("data:image/png;base64,{b64}"),
        format!("data:image/png;name=x.png;base64,{b64}"),
    ] {
        let target = env_to_boot(&b, &env(&[("HOST_SPLASH_image", &value)]));
        assert_eq!(target["image"], s(&format!("data:image/png;base64,{b64}")));
    }
    let target = env_to_boot(&b, &env(&[("HOST_SPLASH_IMAGE", &b64)]));
    b.write(&m, &target).unwrap();
    // Written to the legacy file, which is the one that exists.
    assert_eq!(
        std::fs::read(f.boot.join("splash/resin-logo.png")).unwrap(),
        png(2)
    );
    assert_eq!(b.read(&m).unwrap(), target);
    // Empty means the default again.
    let mut empty = env_to_boot(&b, &env(&[("HOST_SPLASH_image", "")]));
    b.ensure_required("raspberrypi3", &mut empty);
    assert!(empty.is_empty());
    assert!(change_required(&b, &b.read(&m).unwrap(), &empty).unwrap());
    b.write(&m, &empty).unwrap();
    assert!(b.read(&m).unwrap().is_empty());
    // Not a PNG, not base64: refused, logo untouched.
    for bad in [crate::encoding::base64(b"GIF89a...."), "%%%".to_string()] {
        let t = env_to_boot(&b, &env(&[("HOST_SPLASH_image", &bad)]));
        assert!(change_required(&b, &BootConfig::new(), &t).is_err());
        assert!(b.write(&m, &t).is_err());
    }
    assert_eq!(
        std::fs::read(f.boot.join("splash/resin-logo.png")).unwrap(),
        png(1)
    );
}

#[test]
fn power_and_fan_modes_live_in_config_json_and_only_power_needs_a_reboot() {
    let f = Fixture::new();
    let m = f.mounts();
    let b = power_fan::PowerFan;
    let current = b.read(&m).unwrap();
    assert_eq!(current, [("power_mode".to_string(), s("low"))].into());
    let fan_only = env_to_boot(
        &b,
        &env(&[
            ("HOST_CONFIG_power_mode", "low"),
            ("HOST_CONFIG_FAN_PROFILE", "quiet"),
        ]),
    );
    assert!(change_required(&b, &current, &fan_only).unwrap());
    assert!(!b.reboot_required(&current, &fan_only));
    b.write(&m, &fan_only).unwrap();
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(f.boot.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        doc["os"],
        serde_json::json!({"sshKeys": ["k"], "power": {"mode": "low"}, "fan": {"profile": "quiet"}})
    );
    assert_eq!(doc["keep"], true);
    let high = env_to_boot(&b, &env(&[("HOST_CONFIG_power_mode", "high")]));
    assert!(b.reboot_required(&b.read(&m).unwrap(), &high));
    b.write(&m, &high).unwrap();
    assert_eq!(b.read(&m).unwrap(), high);
}

/// Random and malformed inputs: no panic, and an error leaves the file as it was.
#[test]
fn fuzzed_targets_and_files_never_panic_and_errors_change_nothing() {
    let f = Fixture::new();
    let m = f.mounts();
    let mut rng = crate::testutil::Rng(0x9e37_79b9_u64);
    let mut next = move || rng.next();
    let alphabet: Vec<char> =
        "ab=,\"\n\r #[]{}_-./\u{0}\u{e9}0123456789 isolcpusdtoverlayLABELDEFAULTAPPEND"
            .chars()
            .collect();
    let text = |n: usize, next: &mut dyn FnMut() -> u64| -> String {
        (0..n)
            .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
            .collect()
    };
    std::fs::create_dir_all(f.boot.join("extlinux")).unwrap();
    std::fs::create_dir_all(f.boot.join("splash")).unwrap();
    let all: Vec<Box<dyn Backend>> = vec![
        Box::new(config_txt::ConfigTxt),
        Box::new(extlinux::Extlinux),
        Box::new(extra_uenv::ExtraUEnv),
        Box::new(configfs::ConfigFs),
        Box::new(splash::SplashImage),
        Box::new(power_fan::PowerFan),
    ];
    let files = [
        "config.txt",
        "extlinux/extlinux.conf",
        "extra_uEnv.txt",
        "configfs.json",
        "splash/balena-logo.png",
    ];
    for round in 0..300 {
        for file in files {
            let len = (next() % 200) as usize;
            std::fs::write(f.boot.join(file), text(len, &mut next)).unwrap();
        }
        let names = [
            "HOST_CONFIG_gpu_mem",
            "HOST_CONFIG_dtoverlay",
            "HOST_CONFIG_kernel",
            "HOST_EXTLINUX_isolcpus",
            "HOST_EXTLINUX_fdt",
            "HOST_CONFIGFS_ssdt",
            "HOST_SPLASH_image",
            "HOST_CONFIG_power_mode",
        ];
        let mut target_env = BTreeMap::new();
        for name in names {
            if next() % 2 == 0 {
                let len = (next() % 30) as usize;
                target_env.insert(name.to_string(), text(len, &mut next));
            }
        }
        for b in &all {
            let file_before: Vec<Vec<u8>> = files
                .iter()
                .map(|p| std::fs::read(f.boot.join(p)).unwrap_or_default())
                .collect();
            let config_before = std::fs::read(f.boot.join("config.json")).unwrap();
            let mut target = env_to_boot(b.as_ref(), &target_env);
            b.ensure_required("fincm3", &mut target);
            let current = b.read(&m);
            let _ = current
                .as_ref()
                .map(|c| change_required(b.as_ref(), c, &target));
            let _ = b.reboot_required(&current.clone().unwrap_or_default(), &target);
            if b.write(&m, &target).is_err() {
                let file_after: Vec<Vec<u8>> = files
                    .iter()
                    .map(|p| std::fs::read(f.boot.join(p)).unwrap_or_default())
                    .collect();
                assert_eq!(
                    file_before,
                    file_after,
                    "round {round}: {} changed a file",
                    b.name()
                );
                assert_eq!(
                    config_before,
                    std::fs::read(f.boot.join("config.json")).unwrap()
                );
            } else if b.name() == "config.txt" {
                // A successful write reads back as the target.
                assert_eq!(b.read(&m).unwrap(), target, "round {round}");
            }
        }
    }
}
