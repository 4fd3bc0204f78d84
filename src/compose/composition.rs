//! The `composition` object of a target service: docker-compose service keys, validated and
//! typed. Unknown keys are kept in `ignored` (the real supervisor warns and drops them).

use super::target::{boolean, err, error, int, join, kind, obj, short, string, Result};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Composition {
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub cgroup_parent: Option<String>,
    pub devices: Vec<String>,
    pub dns: Vec<String>,
    pub dns_opt: Vec<String>,
    pub dns_search: Vec<String>,
    pub tmpfs: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub extra_hosts: Vec<String>,
    pub group_add: Vec<String>,
    pub healthcheck: Option<HealthcheckSpec>,
    pub image: Option<String>,
    pub init: Option<bool>,
    pub labels: BTreeMap<String, String>,
    pub running: Option<bool>,
    pub network_mode: Option<String>,
    /// In the order listed: the first one is the default network_mode.
    pub networks: Vec<(String, NetworkAttach)>,
    pub pid: Option<String>,
    pub pids_limit: Option<i64>,
    pub ports: Vec<PortSpec>,
    pub security_opt: Vec<String>,
    /// Seconds.
    pub stop_grace_period: Option<i64>,
    pub stop_signal: Option<String>,
    pub storage_opt: BTreeMap<String, String>,
    pub sysctls: BTreeMap<String, String>,
    pub ulimits: BTreeMap<String, (i64, i64)>,
    pub userns_mode: Option<String>,
    pub volumes: Vec<VolumeSpec>,
    pub restart: Option<String>,
    pub cpu_shares: Option<i64>,
    pub cpu_quota: Option<i64>,
    pub cpus: Option<f64>,
    pub cpuset: Option<String>,
    pub domainname: Option<String>,
    pub hostname: Option<String>,
    pub ipc: Option<String>,
    pub mac_address: Option<String>,
    pub mem_limit: Option<i64>,
    pub mem_reservation: Option<i64>,
    pub oom_kill_disable: Option<bool>,
    pub oom_score_adj: Option<i64>,
    pub privileged: Option<bool>,
    pub read_only: Option<bool>,
    pub shm_size: Option<i64>,
    pub user: Option<String>,
    pub working_dir: Option<String>,
    pub tty: Option<bool>,
    pub depends_on: Vec<String>,
    /// The long syntax's conditions (helios's addition; docs/hostos.md §5), by dependency. A
    /// name listed in the short syntax waits for `service_started`, required.
    pub dependency_conditions: BTreeMap<String, Dependency>,
    /// Keys we do not support; logged as "Ignoring unsupported or unknown compose fields".
    pub ignored: Vec<String>,
}

/// What a dependent waits for before it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    ServiceStarted,
    ServiceHealthy,
    ServiceCompletedSuccessfully,
}

/// One long-syntax `depends_on` entry. `restart` is accepted and, as in helios, not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Dependency {
    pub condition: Condition,
    /// An optional dependency (`required: false`) never holds its dependent back.
    pub required: bool,
}

/// `depends_on` in either syntax: the names, and the conditions of the long one.
fn depends_on(v: &Value, path: &str) -> Result<(Vec<String>, BTreeMap<String, Dependency>)> {
    let Value::Object(m) = v else {
        return Ok((string_list(v, path)?, BTreeMap::new()));
    };
    let mut conditions = BTreeMap::new();
    for (name, spec) in m {
        let p = join(path, name);
        let spec = match spec {
            Value::Null => serde_json::Map::new(),
            other => obj(other, &p)?.clone(),
        };
        let condition = match spec.get("condition") {
            None | Some(Value::Null) => Condition::ServiceStarted,
            Some(c) => match string(c, &join(&p, "condition"))?.as_str() {
                "service_started" => Condition::ServiceStarted,
                "service_healthy" => Condition::ServiceHealthy,
                "service_completed_successfully" => Condition::ServiceCompletedSuccessfully,
                other => {
                    return err(
                        &join(&p, "condition"),
                        format!("expected service_started, service_healthy or service_completed_successfully, got {other:?}"),
                    )
                }
            },
        };
        let flag = |key: &str, default: bool| match spec.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(b) => boolean(b, &join(&p, key)),
        };
        flag("restart", false)?;
        let required = flag("required", true)?;
        conditions.insert(
            name.clone(),
            Dependency {
                condition,
                required,
            },
        );
    }
    Ok((m.keys().cloned().collect(), conditions))
}

impl Composition {
    /// depends_on plus the implicit dependency of `network_mode: service:<x>`.
    pub fn all_dependencies(&self) -> impl Iterator<Item = &str> {
        self.depends_on.iter().map(String::as_str).chain(
            self.network_mode
                .as_deref()
                .and_then(|m| m.strip_prefix("service:")),
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkAttach {
    pub aliases: Vec<String>,
    pub ipv4_address: Option<String>,
    pub ipv6_address: Option<String>,
    pub link_local_ips: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HealthcheckSpec {
    pub test: Vec<String>,
    /// Nanoseconds, as the engine stores them.
    pub interval: Option<i64>,
    pub timeout: Option<i64>,
    pub start_period: Option<i64>,
    pub retries: Option<i64>,
}

/// One `ports` entry: `[[host_ip:][ext[-ext_end]]:]int[-int_end][/proto]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortSpec {
    pub host_ip: String,
    pub external: (u16, u16),
    pub internal: (u16, u16),
    pub protocol: String,
}

impl PortSpec {
    /// (host ip, host port, protocol) of every binding.
    pub fn host_bindings(&self) -> Vec<(String, u16, String)> {
        (self.external.0..=self.external.1)
            .map(|p| (self.host_ip.clone(), p, self.protocol.clone()))
            .collect()
    }

    /// (container port, host port) pairs.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        (self.internal.0..=self.internal.1).zip(self.external.0..=self.external.1)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum VolumeSpec {
    /// `name:/path[:mode]`: an app volume, namespaced `<appId>_<name>` on the engine.
    Named {
        name: String,
        target: String,
        mode: Option<String>,
    },
    /// `/path`: an anonymous volume.
    Anonymous { target: String },
    /// `/host:/path`: bind mounts are not allowed in balena compose files; dropped.
    Bind { source: String, target: String },
    /// Long syntax `type: tmpfs`.
    Tmpfs { target: String },
}

impl VolumeSpec {
    pub fn named_source(&self) -> Option<&str> {
        match self {
            VolumeSpec::Named { name, .. } => Some(name),
            _ => None,
        }
    }
}

const SUPPORTED: &[&str] = &[
    "cap_add",
    "cap_drop",
    "command",
    "cgroup_parent",
    "devices",
    "dns",
    "dns_opt",
    "dns_search",
    "tmpfs",
    "entrypoint",
    "environment",
    "extra_hosts",
    "group_add",
    "healthcheck",
    "image",
    "init",
    "labels",
    "running",
    "network_mode",
    "networks",
    "pid",
    "pids_limit",
    "ports",
    "security_opt",
    "stop_grace_period",
    "stop_signal",
    "storage_opt",
    "sysctls",
    "ulimits",
    "userns_mode",
    "volumes",
    "restart",
    "cpu_shares",
    "cpu_quota",
    "cpus",
    "cpuset",
    "domainname",
    "hostname",
    "ipc",
    "mac_address",
    "mem_limit",
    "mem_reservation",
    "oom_kill_disable",
    "oom_score_adj",
    "privileged",
    "read_only",
    "shm_size",
    "user",
    "working_dir",
    "tty",
    "depends_on",
];

/// Accepts snake_case keys (as in compose files) and their camelCase forms.
fn snake(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn string_list(v: &Value, path: &str) -> Result<Vec<String>> {
    match v {
        Value::Null => Ok(vec![]),
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                other => err(
                    &format!("{path}[{i}]"),
                    format!("expected a string, got {}", kind(other)),
                ),
            })
            .collect(),
        other => err(
            path,
            format!("expected a list of strings, got {}", kind(other)),
        ),
    }
}

/// Two port mappings that bind the same host port (same protocol and address): `(later,
/// earlier)` by position, the later one as small as the sweep finds. Sorting by range start and
/// sweeping keeps this O(n log n): a quadratic check took 30 s on 20 000 ports.
fn first_overlap(ports: &[PortSpec]) -> Option<(usize, usize)> {
    let mut order: Vec<usize> = (0..ports.len()).collect();
    order.sort_by(|&a, &b| {
        let (pa, pb) = (&ports[a], &ports[b]);
        (&pa.protocol, &pa.host_ip, pa.external.0, a).cmp(&(
            &pb.protocol,
            &pb.host_ip,
            pb.external.0,
            b,
        ))
    });
    let mut found: Option<(usize, usize)> = None;
    // The range reaching furthest so far in the current (protocol, address) group.
    let mut reach: Option<usize> = None;
    for &i in &order {
        let p = &ports[i];
        if let Some(r) = reach {
            let q = &ports[r];
            let same_group = q.protocol == p.protocol && q.host_ip == p.host_ip;
            if same_group && p.external.0 <= q.external.1 {
                let pair = (i.max(r), i.min(r));
                if found.is_none_or(|f| pair.0 < f.0) {
                    found = Some(pair);
                }
            }
            if same_group && q.external.1 >= p.external.1 {
                continue;
            }
        }
        reach = Some(i);
    }
    found
}

/// `{K: V}` or `["K=V", ...]` (environment, labels, sysctls, storage_opt).
fn kv_map(v: &Value, path: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, val) in m {
                let s = match val {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    Value::Null => String::new(),
                    other => {
                        return err(
                            &join(path, k),
                            format!("expected a string, got {}", kind(other)),
                        )
                    }
                };
                out.insert(k.clone(), s);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let Value::String(s) = item else {
                    return err(
                        &format!("{path}[{i}]"),
                        format!("expected \"KEY=value\", got {}", kind(item)),
                    );
                };
                let (k, val) = s.split_once('=').unwrap_or((s.as_str(), ""));
                if k.is_empty() {
                    return err(&format!("{path}[{i}]"), "expected \"KEY=value\"");
                }
                out.insert(k.to_string(), val.to_string());
            }
        }
        other => {
            return err(
                path,
                format!("expected an object or a list, got {}", kind(other)),
            )
        }
    }
    Ok(out)
}

/// Splits a command string like a POSIX shell would (quotes and backslashes, no expansion).
pub fn shell_split(s: &str, path: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return err(path, "unterminated single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return err(path, "unterminated double quote"),
                        },
                        Some(c) => cur.push(c),
                        None => return err(path, "unterminated double quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    cur.push(c);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

fn command(v: &Value, path: &str) -> Result<Option<Vec<String>>> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(shell_split(s, path)?)),
        Value::Array(_) => Ok(Some(string_list(v, path)?)),
        other => err(
            path,
            format!(
                "expected a string or a list of strings, got {}",
                kind(other)
            ),
        ),
    }
}

/// Compose durations: `1m30s`, `10s`, `500ms`, `1h`; a bare number is seconds. Nanoseconds.
pub fn duration_ns(v: &Value, path: &str) -> Result<i64> {
    let bad = || {
        error(
            path,
            format!(
                "expected a duration like \"10s\" or \"1m30s\", got {}",
                short(v)
            ),
        )
    };
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if (0.0..1e9).contains(&f) => Ok((f * 1e9) as i64),
            _ => Err(bad()),
        },
        Value::String(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Err(bad());
            }
            if let Some(secs) = crate::encoding::parse_decimal(s) {
                return if (0.0..1e9).contains(&secs) {
                    Ok((secs * 1e9) as i64)
                } else {
                    Err(bad())
                };
            }
            let mut total: f64 = 0.0;
            let mut rest = s;
            while !rest.is_empty() {
                let num_end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                    .unwrap_or(rest.len());
                if num_end == 0 {
                    return Err(bad());
                }
                let num = crate::encoding::parse_decimal(&rest[..num_end]).ok_or_else(bad)?;
                rest = &rest[num_end..];
                let unit_end = rest
                    .find(|c: char| c.is_ascii_digit() || c == '.')
                    .unwrap_or(rest.len());
                let factor = match &rest[..unit_end] {
                    "h" => 3.6e12,
                    "m" => 6e10,
                    "s" => 1e9,
                    "ms" => 1e6,
                    "us" | "µs" => 1e3,
                    "ns" => 1.0,
                    _ => return Err(bad()),
                };
                total += num * factor;
                rest = &rest[unit_end..];
            }
            if total > 9.0e18 {
                return Err(bad());
            }
            Ok(total as i64)
        }
        _ => Err(bad()),
    }
}

/// Memory sizes: a number is bytes; strings take b/k/m/g suffixes (optionally followed by b).
pub fn memory_bytes(v: &Value, path: &str) -> Result<i64> {
    let bad = || {
        error(
            path,
            format!(
                "expected a size like \"64m\" or a number of bytes, got {}",
                short(v)
            ),
        )
    };
    match v {
        Value::Number(n) => n.as_i64().filter(|n| *n >= 0).ok_or_else(bad),
        Value::String(s) => {
            let s = s.trim().to_ascii_lowercase();
            let digits_end = s
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(s.len());
            let num = crate::encoding::parse_decimal(&s[..digits_end]).ok_or_else(bad)?;
            let factor: f64 = match s[digits_end..].trim_end_matches('b') {
                "" => 1.0,
                "k" => 1024.0,
                "m" => 1024.0 * 1024.0,
                "g" => 1024.0 * 1024.0 * 1024.0,
                _ => {
                    if &s[digits_end..] == "b" {
                        1.0
                    } else {
                        return Err(bad());
                    }
                }
            };
            let bytes = num * factor;
            if !(0.0..9.0e18).contains(&bytes) {
                return Err(bad());
            }
            Ok(bytes as i64)
        }
        _ => Err(bad()),
    }
}

fn parse_port_range(s: &str) -> Option<(u16, u16)> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let a: u16 = a.parse().ok()?;
    let b: u16 = b.parse().ok()?;
    (a > 0 && a <= b).then_some((a, b))
}

pub fn parse_port(s: &str, path: &str) -> Result<PortSpec> {
    let bad = |why: &str| error(path, format!("invalid port {s:?}: {why}"));
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((spec, proto)) => (spec, proto.to_ascii_lowercase()),
        None => (s, "tcp".to_string()),
    };
    if !matches!(protocol.as_str(), "tcp" | "udp" | "sctp") {
        return Err(bad("protocol must be tcp, udp or sctp"));
    }
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let (host_ip, external, internal) = match parts.as_slice() {
        [int] => ("", None, *int),
        [int, ext] => ("", Some(*ext), *int),
        [int, ext, ip] => (*ip, if ext.is_empty() { None } else { Some(*ext) }, *int),
        _ => return Err(bad("too many parts")),
    };
    let internal = parse_port_range(internal).ok_or_else(|| bad("bad container port"))?;
    let external = match external {
        Some(e) => parse_port_range(e).ok_or_else(|| bad("bad host port"))?,
        // A bare port binds the same host port (the supervisor's rule, not compose's).
        None => internal,
    };
    if external.1 - external.0 != internal.1 - internal.0 {
        return Err(bad("host and container ranges differ in length"));
    }
    if !host_ip.is_empty() && host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(bad("bad host IP"));
    }
    Ok(PortSpec {
        host_ip: host_ip.to_string(),
        external,
        internal,
        protocol,
    })
}

fn parse_volume(v: &Value, path: &str) -> Result<VolumeSpec> {
    match v {
        Value::String(s) => {
            let parts: Vec<&str> = s.split(':').map(str::trim).collect();
            let check_target = |t: &str| {
                if t.starts_with('/') {
                    Ok(t.to_string())
                } else {
                    err(
                        path,
                        format!("volume target {t:?} must be an absolute path"),
                    )
                }
            };
            match parts.as_slice() {
                [target] => Ok(VolumeSpec::Anonymous {
                    target: check_target(target)?,
                }),
                [source, target] | [source, target, _] => {
                    let mode = parts.get(2).map(|m| m.to_string());
                    if let Some(m) = &mode {
                        if !m.split(',').all(|o| {
                            matches!(
                                o,
                                "ro" | "rw"
                                    | "z"
                                    | "Z"
                                    | "nocopy"
                                    | "rprivate"
                                    | "private"
                                    | "rshared"
                                    | "shared"
                                    | "rslave"
                                    | "slave"
                            )
                        }) {
                            return err(path, format!("invalid volume mode {m:?}"));
                        }
                    }
                    let target = check_target(target)?;
                    if source.starts_with('/') || source.starts_with('.') || source.starts_with('~')
                    {
                        Ok(VolumeSpec::Bind {
                            source: source.to_string(),
                            target,
                        })
                    } else if super::target::valid_name(source) {
                        Ok(VolumeSpec::Named {
                            name: source.to_string(),
                            target,
                            mode,
                        })
                    } else {
                        err(path, format!("invalid volume name {source:?}"))
                    }
                }
                _ => err(path, format!("invalid volume {s:?}")),
            }
        }
        Value::Object(m) => {
            let ty = m
                .get("type")
                .map(|t| string(t, &join(path, "type")))
                .transpose()?;
            let target = string(
                m.get("target").unwrap_or(&Value::Null),
                &join(path, "target"),
            )?;
            if !target.starts_with('/') {
                return err(&join(path, "target"), "must be an absolute path");
            }
            let read_only = match m.get("read_only") {
                Some(v) => boolean(v, &join(path, "read_only"))?,
                None => false,
            };
            match ty.as_deref().unwrap_or("volume") {
                "volume" => match m.get("source") {
                    None | Some(Value::Null) => Ok(VolumeSpec::Anonymous { target }),
                    Some(s) => {
                        let name = string(s, &join(path, "source"))?;
                        if !super::target::valid_name(&name) {
                            return err(&join(path, "source"), "invalid volume name");
                        }
                        Ok(VolumeSpec::Named {
                            name,
                            target,
                            mode: read_only.then(|| "ro".to_string()),
                        })
                    }
                },
                "bind" => Ok(VolumeSpec::Bind {
                    source: string(
                        m.get("source").unwrap_or(&Value::Null),
                        &join(path, "source"),
                    )?,
                    target,
                }),
                "tmpfs" => Ok(VolumeSpec::Tmpfs { target }),
                other => err(
                    &join(path, "type"),
                    format!("unsupported volume type {other:?}"),
                ),
            }
        }
        other => err(
            path,
            format!("expected a string or an object, got {}", kind(other)),
        ),
    }
}

fn parse_networks(v: &Value, path: &str) -> Result<Vec<(String, NetworkAttach)>> {
    let mut out: Vec<(String, NetworkAttach)> = Vec::new();
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let name = string(item, &format!("{path}[{i}]"))?;
                out.push((name, NetworkAttach::default()));
            }
        }
        Value::Object(m) => {
            for (name, spec) in m {
                let p = join(path, name);
                let mut attach = NetworkAttach::default();
                if let Value::Object(s) = spec {
                    if let Some(a) = s.get("aliases") {
                        attach.aliases = string_list(a, &join(&p, "aliases"))?;
                    }
                    if let Some(a) = s.get("ipv4_address") {
                        attach.ipv4_address = Some(string(a, &join(&p, "ipv4_address"))?);
                    }
                    if let Some(a) = s.get("ipv6_address") {
                        attach.ipv6_address = Some(string(a, &join(&p, "ipv6_address"))?);
                    }
                    if let Some(a) = s.get("link_local_ips") {
                        attach.link_local_ips = string_list(a, &join(&p, "link_local_ips"))?;
                    }
                } else if !spec.is_null() {
                    return err(
                        &p,
                        format!("expected an object or null, got {}", kind(spec)),
                    );
                }
                out.push((name.clone(), attach));
            }
        }
        other => {
            return err(
                path,
                format!("expected a list or an object, got {}", kind(other)),
            )
        }
    }
    Ok(out)
}

fn parse_healthcheck(v: &Value, path: &str) -> Result<HealthcheckSpec> {
    let m = obj(v, path)?;
    let mut h = HealthcheckSpec::default();
    if let Some(d) = m.get("disable") {
        if boolean(d, &join(path, "disable"))? {
            h.test = vec!["NONE".into()];
            return Ok(h);
        }
    }
    if let Some(t) = m.get("test") {
        h.test = match t {
            Value::String(s) => vec!["CMD-SHELL".into(), s.clone()],
            _ => string_list(t, &join(path, "test"))?,
        };
    }
    for (key, slot) in [
        ("interval", &mut h.interval),
        ("timeout", &mut h.timeout),
        ("start_period", &mut h.start_period),
    ] {
        if let Some(d) = m.get(key) {
            *slot = Some(duration_ns(d, &join(path, key))?);
        }
    }
    if let Some(r) = m.get("retries") {
        h.retries = Some(int(r, &join(path, "retries"))?);
    }
    Ok(h)
}

fn parse_ulimits(v: &Value, path: &str) -> Result<BTreeMap<String, (i64, i64)>> {
    let mut out = BTreeMap::new();
    for (name, spec) in obj(v, path)? {
        let p = join(path, name);
        let pair = match spec {
            Value::Object(m) => (
                int(m.get("soft").unwrap_or(&Value::Null), &join(&p, "soft"))?,
                int(m.get("hard").unwrap_or(&Value::Null), &join(&p, "hard"))?,
            ),
            other => {
                let n = int(other, &p)?;
                (n, n)
            }
        };
        out.insert(name.clone(), pair);
    }
    Ok(out)
}

fn opt_string(v: &Value, path: &str) -> Result<Option<String>> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(Some(n.to_string())),
        _ => string(v, path).map(Some),
    }
}

fn signed(v: &Value, path: &str) -> Result<i64> {
    match v {
        Value::Number(n) if n.as_i64().is_some() => Ok(n.as_i64().unwrap_or_default()),
        Value::String(s) if s.trim().parse::<i64>().is_ok() => {
            Ok(s.trim().parse().unwrap_or_default())
        }
        _ => err(path, format!("expected an integer, got {}", short(v))),
    }
}

/// Parses and validates a composition object.
pub fn parse(v: &Value, path: &str) -> Result<Composition> {
    let mut c = Composition::default();
    for (raw_key, val) in obj(v, path)? {
        let key = snake(raw_key);
        let p = join(path, raw_key);
        if !SUPPORTED.contains(&key.as_str()) {
            c.ignored.push(raw_key.clone());
            continue;
        }
        match key.as_str() {
            "cap_add" => c.cap_add = string_list(val, &p)?,
            "cap_drop" => c.cap_drop = string_list(val, &p)?,
            "command" => c.command = command(val, &p)?,
            "entrypoint" => c.entrypoint = command(val, &p)?,
            "cgroup_parent" => c.cgroup_parent = opt_string(val, &p)?,
            "devices" => {
                c.devices = string_list(val, &p)?;
                for (i, d) in c.devices.iter().enumerate() {
                    if !d.starts_with('/') {
                        return err(
                            &format!("{p}[{i}]"),
                            "device must be host[:container[:permissions]] with absolute paths",
                        );
                    }
                }
            }
            "dns" => c.dns = string_list(val, &p)?,
            "dns_opt" => c.dns_opt = string_list(val, &p)?,
            "dns_search" => c.dns_search = string_list(val, &p)?,
            "tmpfs" => c.tmpfs = string_list(val, &p)?,
            "environment" => c.environment = kv_map(val, &p)?,
            "extra_hosts" => {
                c.extra_hosts = match val {
                    Value::Object(_) => kv_map(val, &p)?
                        .into_iter()
                        .map(|(h, ip)| format!("{h}:{ip}"))
                        .collect(),
                    _ => string_list(val, &p)?,
                }
            }
            "group_add" => c.group_add = string_list(val, &p)?,
            "healthcheck" => c.healthcheck = Some(parse_healthcheck(val, &p)?),
            "image" => c.image = opt_string(val, &p)?,
            // `init` is kept only when it is a boolean (the real supervisor's rule).
            "init" => c.init = val.as_bool(),
            "labels" => c.labels = kv_map(val, &p)?,
            "running" => c.running = Some(boolean(val, &p)?),
            "network_mode" => c.network_mode = opt_string(val, &p)?,
            "networks" => c.networks = parse_networks(val, &p)?,
            "pid" => c.pid = opt_string(val, &p)?,
            "pids_limit" => c.pids_limit = Some(signed(val, &p)?),
            "ports" => {
                let Value::Array(items) = val else {
                    return err(&p, format!("expected a list, got {}", kind(val)));
                };
                super::target::at_most(Some(val), &p, super::target::MAX_PORTS, "ports")?;
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    let s = match item {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        other => {
                            return err(&ip, format!("expected a string, got {}", kind(other)))
                        }
                    };
                    c.ports.push(parse_port(&s, &ip)?);
                }
                if let Some((i, j)) = first_overlap(&c.ports) {
                    return err(
                        &format!("{p}[{i}]"),
                        format!("duplicate host port: overlaps ports[{j}]"),
                    );
                }
            }
            "security_opt" => c.security_opt = string_list(val, &p)?,
            "stop_grace_period" => {
                c.stop_grace_period = Some(duration_ns(val, &p)? / 1_000_000_000)
            }
            "stop_signal" => c.stop_signal = opt_string(val, &p)?,
            "storage_opt" => c.storage_opt = kv_map(val, &p)?,
            "sysctls" => c.sysctls = kv_map(val, &p)?,
            "ulimits" => c.ulimits = parse_ulimits(val, &p)?,
            "userns_mode" => c.userns_mode = opt_string(val, &p)?,
            "volumes" => {
                let Value::Array(items) = val else {
                    return err(&p, format!("expected a list, got {}", kind(val)));
                };
                for (i, item) in items.iter().enumerate() {
                    c.volumes.push(parse_volume(item, &format!("{p}[{i}]"))?);
                }
            }
            "restart" => c.restart = opt_string(val, &p)?,
            "cpu_shares" => c.cpu_shares = Some(signed(val, &p)?),
            "cpu_quota" => c.cpu_quota = Some(signed(val, &p)?),
            "cpus" => {
                let f = match val {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => crate::encoding::parse_decimal(s.trim()),
                    _ => None,
                };
                match f {
                    Some(f) if (0.0..=1024.0).contains(&f) => c.cpus = Some(f),
                    _ => return err(&p, format!("expected a number of CPUs, got {}", short(val))),
                }
            }
            "cpuset" => c.cpuset = opt_string(val, &p)?,
            "domainname" => c.domainname = opt_string(val, &p)?,
            "hostname" => c.hostname = opt_string(val, &p)?,
            "ipc" => c.ipc = opt_string(val, &p)?,
            "mac_address" => c.mac_address = opt_string(val, &p)?,
            "mem_limit" => c.mem_limit = Some(memory_bytes(val, &p)?),
            "mem_reservation" => c.mem_reservation = Some(memory_bytes(val, &p)?),
            "oom_kill_disable" => c.oom_kill_disable = Some(boolean(val, &p)?),
            "oom_score_adj" => c.oom_score_adj = Some(signed(val, &p)?),
            "privileged" => c.privileged = Some(boolean(val, &p)?),
            "read_only" => c.read_only = Some(boolean(val, &p)?),
            "shm_size" => c.shm_size = Some(memory_bytes(val, &p)?),
            "user" => c.user = opt_string(val, &p)?,
            "working_dir" => c.working_dir = opt_string(val, &p)?,
            "tty" => c.tty = Some(boolean(val, &p)?),
            "depends_on" => (c.depends_on, c.dependency_conditions) = depends_on(val, &p)?,
            _ => c.ignored.push(raw_key.clone()),
        }
    }
    Ok(c)
}
