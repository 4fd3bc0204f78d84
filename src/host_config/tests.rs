use super::*;
use crate::testutil::TempDir;

fn setup() -> (TempDir, PathBuf, ConfigJson) {
    let dir = TempDir::new("host_config");
    let boot = dir.path().join("boot");
    std::fs::create_dir_all(dir.path().join("root/etc")).unwrap();
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(
        boot.join("config.json"),
        r#"{"uuid":"abcdef0123456789","deviceType":"raspberrypi0-2w-64","unknownKey":1}"#,
    )
    .unwrap();
    let cfg = ConfigJson::load(&boot.join("config.json")).unwrap();
    (dir, boot, cfg)
}

fn patch(body: Value) -> Patch {
    parse_patch(&body).unwrap()
}

#[test]
fn hostname_goes_to_config_json_and_empty_means_the_short_uuid() {
    let (dir, boot, cfg) = setup();
    std::fs::write(dir.path().join("root/etc/hostname"), "oldname\n").unwrap();
    let a = apply(
        &patch(json!({"network": {"hostname": "kiosk-3"}})),
        &boot,
        &cfg,
    )
    .unwrap();
    assert_eq!(a.hostname.as_deref(), Some("kiosk-3"));
    assert!(!a.proxy_changed);
    let doc: Value =
        serde_json::from_slice(&std::fs::read(boot.join("config.json")).unwrap()).unwrap();
    assert_eq!(doc["hostname"], "kiosk-3");
    assert_eq!(doc["unknownKey"], 1);
    apply(&patch(json!({"network": {"hostname": ""}})), &boot, &cfg).unwrap();
    assert_eq!(cfg.get_str("hostname").as_deref(), Some("abcdef0"));
    // GET shows the host's own /etc/hostname (balenaOS applies config.json at its pace).
    assert_eq!(
        read(&dir.path().join("root"), &boot).unwrap(),
        json!({"network": {"hostname": "oldname"}})
    );
}

#[test]
fn proxy_files_are_written_as_v19_writes_them_and_read_back() {
    let (dir, boot, cfg) = setup();
    let body = json!({"network": {"proxy": {"type": "socks5", "ip": "10.0.0.1", "port": 8123,
        "login": "u", "password": "p", "dns": "1.1.1.1:53", "noProxy": ["152.10.30.4", "10.0.0.0/8"]}}});
    let a = apply(&patch(body), &boot, &cfg).unwrap();
    assert!(a.proxy_changed);
    let conf = std::fs::read_to_string(boot.join("system-proxy/redsocks.conf")).unwrap();
    assert_eq!(
        conf,
        "base {\n\tlog_debug = off;\n\tlog_info = on;\n\tlog = stderr;\n\tdaemon = off;\n\tredirector = iptables;\n}\n\n\
         redsocks {\n\ttype = socks5;\n\tip = 10.0.0.1;\n\tport = 8123;\n\tlogin = \"u\";\n\tpassword = \"p\";\n\tlocal_ip = 127.0.0.1;\n\tlocal_port = 12345;\n}\n\n\
         dnsu2t {\n\tremote_ip = 1.1.1.1;\n\tremote_port = 53;\n\tlocal_ip = 127.0.0.1;\n\tlocal_port = 53;\n}\n"
    );
    assert_eq!(
        std::fs::read_to_string(boot.join("system-proxy/no_proxy")).unwrap(),
        "152.10.30.4\n10.0.0.0/8"
    );
    assert_eq!(
        read(&dir.path().join("root"), &boot).unwrap()["network"]["proxy"],
        json!({"type": "socks5", "ip": "10.0.0.1", "port": 8123, "login": "u", "password": "p",
               "dns": "1.1.1.1:53", "noProxy": ["152.10.30.4", "10.0.0.0/8"]})
    );
    // Fields merge over the current ones; dns and noProxy are kept unless given.
    apply(
        &patch(json!({"network": {"proxy": {"port": "3128", "type": "http-connect"}}})),
        &boot,
        &cfg,
    )
    .unwrap();
    let p = read(&dir.path().join("root"), &boot).unwrap()["network"]["proxy"].clone();
    assert_eq!(p["type"], "http-connect");
    assert_eq!(p["port"], 3128);
    assert_eq!(p["ip"], "10.0.0.1");
    assert_eq!(p["login"], "u");
    assert_eq!(p["dns"], "1.1.1.1:53");
    assert_eq!(p["noProxy"], json!(["152.10.30.4", "10.0.0.0/8"]));
    // dns false drops its block; an empty noProxy drops the file; twice is the same.
    for _ in 0..2 {
        apply(
            &patch(json!({"network": {"proxy": {"dns": false, "noProxy": []}}})),
            &boot,
            &cfg,
        )
        .unwrap();
        let p = read(&dir.path().join("root"), &boot).unwrap()["network"]["proxy"].clone();
        assert!(p.get("dns").is_none() && p.get("noProxy").is_none(), "{p}");
    }
    // dns true means Google's resolver.
    apply(
        &patch(json!({"network": {"proxy": {"dns": true}}})),
        &boot,
        &cfg,
    )
    .unwrap();
    assert_eq!(
        read(&dir.path().join("root"), &boot).unwrap()["network"]["proxy"]["dns"],
        "8.8.8.8:53"
    );
    // {} removes the proxy.
    apply(&patch(json!({"network": {"proxy": {}}})), &boot, &cfg).unwrap();
    assert!(!boot.join("system-proxy/redsocks.conf").exists());
    assert!(read(&dir.path().join("root"), &boot).unwrap()["network"]
        .get("proxy")
        .is_none());
}

#[test]
fn a_proxy_without_type_ip_and_port_is_refused_and_nothing_is_written() {
    let (_dir, boot, cfg) = setup();
    let err = apply(
        &patch(json!({"network": {"hostname": "x1", "proxy": {"ip": "10.0.0.1"}}})),
        &boot,
        &cfg,
    )
    .unwrap_err();
    assert_eq!(err, "network.proxy.type is required");
    assert!(!boot.join("system-proxy").exists());
    assert_eq!(cfg.get_str("hostname"), None);
}

#[test]
fn bad_bodies_are_refused_with_the_field_named() {
    for (body, want) in [
        (json!([]), "the body must be a JSON object"),
        (json!({"network": 1}), "network must be an object"),
        (
            json!({"network": {"hostname": 5}}),
            "network.hostname must be a string",
        ),
        (
            json!({"network": {"hostname": "a b"}}),
            "not a valid host name",
        ),
        (
            json!({"network": {"hostname": "../../etc"}}),
            "not a valid host name",
        ),
        (
            json!({"network": {"proxy": {"type": "ftp"}}}),
            "network.proxy.type must be one of",
        ),
        (
            json!({"network": {"proxy": {"port": 70000}}}),
            "network.proxy.port must be a port number",
        ),
        (
            json!({"network": {"proxy": {"port": "x"}}}),
            "network.proxy.port must be a port number",
        ),
        (
            json!({"network": {"proxy": {"ip": "1.2.3.4;\n}"}}}),
            "network.proxy.ip must be",
        ),
        (
            json!({"network": {"proxy": {"password": "a\"b"}}}),
            "network.proxy.password must be",
        ),
        (
            json!({"network": {"proxy": {"login": "dom\\user"}}}),
            "network.proxy.login must be",
        ),
        (
            json!({"network": {"proxy": {"password": "end\\"}}}),
            "network.proxy.password must be",
        ),
        (
            json!({"network": {"proxy": {"dns": "nope"}}}),
            "network.proxy.dns must be",
        ),
        (
            json!({"network": {"proxy": {"dns": 53}}}),
            "network.proxy.dns must be",
        ),
        (
            json!({"network": {"proxy": {"noProxy": "10.0.0.1"}}}),
            "noProxy must be a list",
        ),
        (
            json!({"network": {"proxy": {"noProxy": ["a\nb"]}}}),
            "noProxy must be a list",
        ),
        (
            json!({"network": {"proxy": {"color": "red"}}}),
            "network.proxy.color is not a proxy setting",
        ),
    ] {
        let err = parse_patch(&body).unwrap_err();
        assert!(err.contains(want), "{body}: {err}");
    }
    // No network: nothing to do (v19 answers OK).
    assert_eq!(
        parse_patch(&json!({"force": true})).unwrap(),
        Patch::default()
    );
    // User local_ip/local_port are ignored.
    let p = parse_patch(
        &json!({"network": {"proxy": {"type": "socks4", "ip": "h", "port": 1, "local_port": 9}}}),
    )
    .unwrap();
    let Some(ProxyPatch::Set { fields, .. }) = p.proxy else {
        panic!()
    };
    assert_eq!(fields.len(), 3);
}

#[test]
fn malformed_redsocks_files_read_as_an_empty_proxy() {
    let (dir, boot, _cfg) = setup();
    std::fs::create_dir_all(boot.join("system-proxy")).unwrap();
    for text in [
        "",
        "redsocks {\n type = nope;\n ip = x;\n port = 1;\n}\n",
        "redsocks {\n\ttype = socks5;\n",
        "\u{0}\u{1}garbage{{;;==",
    ] {
        std::fs::write(boot.join("system-proxy/redsocks.conf"), text).unwrap();
        assert_eq!(
            read(&dir.path().join("root"), &boot).unwrap()["network"]["proxy"],
            json!({}),
            "{text:?}"
        );
    }
}
