//! Host configuration (docs/contract/device-config.md §5, docs/contract/device-api.md 3.13/3.14):
//! the hostname and the redsocks proxy under `<boot>/system-proxy/` (`redsocks.conf`, `no_proxy`).
//!
//! Reading, validating and rendering are pure; [`apply`] writes the files atomically and
//! config.json's `hostname` through [`ConfigJson`]. The state engine runs it under every app's
//! update locks and restarts the host's proxy units afterwards.

use crate::config::ConfigJson;
use crate::systemd::HostControl;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

const PROXY_TYPES: &[&str] = &["socks4", "socks5", "http-connect", "http-relay"];
const PROXY_DIR: &str = "system-proxy";
/// The redsocks fields a user may set, in the order they are written.
const PROXY_FIELDS: &[&str] = &["type", "ip", "port", "login", "password"];

fn proxy_dir(boot: &Path) -> PathBuf {
    boot.join(PROXY_DIR)
}

/// One `name { key = value; ... }` block of redsocks.conf, keys in file order.
fn parse_block(text: &str, name: &str) -> Option<Vec<(String, String)>> {
    let mut lines = text.lines().map(str::trim);
    lines.find(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.trim_start().starts_with('{'))
    })?;
    let mut out = Vec::new();
    for line in lines {
        if line.starts_with('}') {
            return Some(out);
        }
        let Some((k, v)) = line.trim_end_matches(';').split_once('=') else {
            continue;
        };
        out.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
    }
    None
}

/// The `ip:port` of a valid `dnsu2t` block of redsocks.conf.
fn dns_of(text: &str) -> Option<String> {
    let dns = parse_block(text, "dnsu2t")?;
    let get = |k: &str| dns.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (ip, port) = (get("remote_ip")?, get("remote_port")?);
    (!ip.is_empty() && port.parse::<u16>().is_ok()).then(|| format!("{ip}:{port}"))
}

/// The proxy as `GET /v1/device/host-config` shows it; `None` without redsocks.conf.
fn read_proxy(boot: &Path) -> std::io::Result<Option<Map<String, Value>>> {
    let dir = proxy_dir(boot);
    let text = match std::fs::read_to_string(dir.join("redsocks.conf")) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut proxy = Map::new();
    if let Some(block) = parse_block(&text, "redsocks") {
        for (k, v) in block {
            match k.as_str() {
                "port" => {
                    if let Ok(p) = v.parse::<u16>() {
                        proxy.insert(k, json!(p));
                    }
                }
                "type" | "ip" | "login" | "password" => {
                    proxy.insert(k, json!(v));
                }
                _ => {}
            }
        }
        let valid = proxy
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| PROXY_TYPES.contains(&t))
            && proxy.contains_key("ip")
            && proxy.contains_key("port");
        if !valid {
            proxy.clear();
        }
    }
    if let Some(dns) = dns_of(&text) {
        proxy.insert("dns".into(), json!(dns));
    }
    let no_proxy = read_no_proxy(&dir)?;
    if !no_proxy.is_empty() {
        proxy.insert("noProxy".into(), json!(no_proxy));
    }
    Ok(Some(proxy))
}

fn read_no_proxy(dir: &Path) -> std::io::Result<Vec<String>> {
    match std::fs::read_to_string(dir.join("no_proxy")) {
        Ok(t) => Ok(t
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// `GET /v1/device/host-config`: `{"network": {"hostname", "proxy"?}}`.
pub fn read(root: &Path, boot: &Path) -> std::io::Result<Value> {
    let hostname = match std::fs::read_to_string(root.join("etc/hostname")) {
        Ok(h) => h.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut network = json!({ "hostname": hostname });
    if let Some(proxy) = read_proxy(boot)? {
        network["proxy"] = Value::Object(proxy);
    }
    Ok(json!({ "network": network }))
}

/// A validated `PATCH /v1/device/host-config` body.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Patch {
    pub hostname: Option<String>,
    pub proxy: Option<ProxyPatch>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProxyPatch {
    /// `"proxy": {}`: no proxy any more.
    Remove,
    Set {
        /// Fields merged over the current redsocks block (values already checked).
        fields: Vec<(String, String)>,
        /// `None`: keep; `Some(None)`: remove the DNS block; `Some(Some("ip:port"))`: set it.
        dns: Option<Option<String>>,
        /// `None`: keep the file; an empty list removes it.
        no_proxy: Option<Vec<String>>,
    },
}

/// A value that goes into redsocks.conf or no_proxy must not break its syntax.
fn plain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s
            .chars()
            // A backslash would escape the closing quote redsocks.conf puts around a login.
            .any(|c| {
                c.is_control() || c.is_whitespace() || matches!(c, '"' | ';' | '{' | '}' | '\\')
            })
}

/// RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
fn valid_hostname(h: &str) -> bool {
    h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Validates a PATCH body. The error is the text after v19's
/// `Could not parse host config input to a valid format: `.
pub fn parse_patch(body: &Value) -> Result<Patch, String> {
    let obj = body.as_object().ok_or("the body must be a JSON object")?;
    let Some(network) = obj.get("network") else {
        // v19 only warns and answers OK.
        return Ok(Patch::default());
    };
    let network = network.as_object().ok_or("network must be an object")?;
    let mut patch = Patch::default();
    if let Some(h) = network.get("hostname") {
        let h = h.as_str().ok_or("network.hostname must be a string")?;
        if !h.is_empty() && !valid_hostname(h) {
            return Err(format!("network.hostname '{h}' is not a valid host name"));
        }
        patch.hostname = Some(h.to_string());
    }
    if let Some(p) = network.get("proxy") {
        let p = p.as_object().ok_or("network.proxy must be an object")?;
        patch.proxy = Some(if p.is_empty() {
            ProxyPatch::Remove
        } else {
            parse_proxy(p)?
        });
    }
    Ok(patch)
}

fn parse_proxy(p: &Map<String, Value>) -> Result<ProxyPatch, String> {
    let mut fields = Vec::new();
    for (k, v) in p {
        match k.as_str() {
            "type" => {
                let t = v.as_str().filter(|t| PROXY_TYPES.contains(t)).ok_or(
                    "network.proxy.type must be one of socks4, socks5, http-connect, http-relay",
                )?;
                fields.push((k.clone(), t.to_string()));
            }
            "port" => {
                // Numbers, and (legacy shape) numeric strings.
                let port = match v {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                }
                .filter(|p| (1..=65535).contains(p))
                .ok_or("network.proxy.port must be a port number")?;
                fields.push((k.clone(), port.to_string()));
            }
            "ip" | "login" | "password" => {
                let s = v
                    .as_str()
                    .filter(|s| plain(s))
                    .ok_or(format!("network.proxy.{k} must be a non-empty string without spaces, quotes, backslashes or semicolons"))?;
                fields.push((k.clone(), s.to_string()));
            }
            // Ours to set; ignored when given, as v19 does.
            "local_ip" | "local_port" | "dns" | "noProxy" => {}
            other => return Err(format!("network.proxy.{other} is not a proxy setting")),
        }
    }
    let dns = match p.get("dns") {
        None => None,
        Some(Value::Bool(true)) => Some(Some("8.8.8.8:53".to_string())),
        Some(Value::Bool(false)) => Some(None),
        Some(Value::String(s)) => {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(ip, port)| plain(ip) && port.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err("network.proxy.dns must be ADDRESS:PORT or a boolean".into());
            }
            Some(Some(s.clone()))
        }
        Some(_) => return Err("network.proxy.dns must be ADDRESS:PORT or a boolean".into()),
    };
    let no_proxy = match p.get("noProxy") {
        None => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|i| i.as_str().filter(|s| plain(s)).map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or("network.proxy.noProxy must be a list of addresses")?,
        ),
        Some(_) => return Err("network.proxy.noProxy must be a list of addresses".into()),
    };
    Ok(ProxyPatch::Set {
        fields,
        dns,
        no_proxy,
    })
}

/// redsocks.conf as v19 writes it: `name {\n\tkey = value;\n...}\n` blocks joined by `\n`.
fn render_redsocks(fields: &[(String, String)], dns: Option<&str>) -> String {
    let block = |name: &str, entries: &[(String, String)]| {
        let mut s = format!("{name} {{\n");
        for (k, v) in entries {
            s.push_str(&format!("\t{k} = {v};\n"));
        }
        s + "}\n"
    };
    let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
    let base = [
        pair("log_debug", "off"),
        pair("log_info", "on"),
        pair("log", "stderr"),
        pair("daemon", "off"),
        pair("redirector", "iptables"),
    ];
    let mut redsocks: Vec<(String, String)> = PROXY_FIELDS
        .iter()
        .filter_map(|k| {
            let v = &fields.iter().find(|(n, _)| n == k)?.1;
            Some(match *k {
                "login" | "password" => pair(k, &format!("\"{v}\"")),
                _ => pair(k, v),
            })
        })
        .collect();
    redsocks.push(pair("local_ip", "127.0.0.1"));
    redsocks.push(pair("local_port", "12345"));
    let mut blocks = vec![block("base", &base), block("redsocks", &redsocks)];
    if let Some((ip, port)) = dns.and_then(|d| d.rsplit_once(':')) {
        blocks.push(block(
            "dnsu2t",
            &[
                pair("remote_ip", ip),
                pair("remote_port", port),
                pair("local_ip", "127.0.0.1"),
                pair("local_port", "53"),
            ],
        ));
    }
    blocks.join("\n")
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// What [`apply`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub hostname: Option<String>,
    pub proxy_changed: bool,
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> String {
    move |e| format!("cannot write {what}: {e}")
}

/// Writes a patch: config.json `hostname` (empty: the first 7 characters of the uuid) and the
/// proxy files, each atomically. Validation errors come before any write.
pub fn apply(patch: &Patch, boot: &Path, config_json: &ConfigJson) -> Result<Applied, String> {
    let mut applied = Applied::default();
    // The whole new proxy is worked out (and checked) before anything is written.
    let dir = proxy_dir(boot);
    let proxy_files: Option<(Option<String>, Option<Option<String>>)> = match &patch.proxy {
        None => None,
        Some(ProxyPatch::Remove) => Some((None, Some(None))),
        Some(ProxyPatch::Set {
            fields,
            dns,
            no_proxy,
        }) => {
            let current = std::fs::read_to_string(dir.join("redsocks.conf")).unwrap_or_default();
            let mut merged: Vec<(String, String)> = parse_block(&current, "redsocks")
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| PROXY_FIELDS.contains(&k.as_str()))
                .collect();
            for (k, v) in fields {
                merged.retain(|(n, _)| n != k);
                merged.push((k.clone(), v.clone()));
            }
            for required in ["type", "ip", "port"] {
                if !merged.iter().any(|(k, _)| k == required) {
                    return Err(format!("network.proxy.{required} is required"));
                }
            }
            let dns = dns.clone().unwrap_or_else(|| dns_of(&current));
            let no_proxy = no_proxy
                .as_ref()
                .map(|l| (!l.is_empty()).then(|| l.join("\n")));
            Some((Some(render_redsocks(&merged, dns.as_deref())), no_proxy))
        }
    };
    if let Some(h) = &patch.hostname {
        let name = if h.is_empty() {
            config_json
                .get_str("uuid")
                .map(|u| u.chars().take(7).collect())
                .unwrap_or_default()
        } else {
            h.clone()
        };
        config_json
            .update(&[("hostname", Some(json!(name)))])
            .map_err(|e| format!("cannot write config.json: {e}"))?;
        applied.hostname = Some(name);
    }
    if let Some((redsocks, no_proxy)) = proxy_files {
        std::fs::create_dir_all(&dir).map_err(io("system-proxy"))?;
        match redsocks {
            Some(text) => crate::fsutil::write_atomic(&dir.join("redsocks.conf"), text.as_bytes())
                .map_err(io("redsocks.conf"))?,
            None => remove_if_present(&dir.join("redsocks.conf")).map_err(io("redsocks.conf"))?,
        }
        match no_proxy {
            None => {}
            Some(Some(text)) => crate::fsutil::write_atomic(&dir.join("no_proxy"), text.as_bytes())
                .map_err(io("no_proxy"))?,
            Some(None) => remove_if_present(&dir.join("no_proxy")).map_err(io("no_proxy"))?,
        }
        applied.proxy_changed = true;
    }
    Ok(applied)
}

/// After a proxy change: restart the OS's proxy units, unless they are part of
/// `redsocks-conf.target` (newer balenaOS restarts them itself when the files change).
/// `balena-proxy-config` falls back to the legacy `resin-proxy-config`. Errors are logged.
pub fn restart_proxy_units(host: &dyn HostControl) {
    let managed_by_os = |unit: &str| {
        host.unit_part_of(unit)
            .is_ok_and(|p| p.iter().any(|t| t == "redsocks-conf.target"))
    };
    let restart = |unit: &str| -> Result<(), crate::dbus::Error> {
        if managed_by_os(unit) {
            return Ok(());
        }
        host.restart_unit(unit)
    };
    let proxy_config = match restart("balena-proxy-config.service") {
        Err(crate::dbus::Error::Remote { name, .. })
            if name == "org.freedesktop.systemd1.NoSuchUnit" =>
        {
            restart("resin-proxy-config.service")
        }
        other => other,
    };
    if let Err(e) = proxy_config.and_then(|()| restart("redsocks.service")) {
        log::warn!("Could not restart the proxy services: {e}");
    }
}

#[cfg(test)]
mod tests;
