//! The v3 target state (docs/contract/cloud-api.md §4) parsed by hand from JSON so that every error
//! names the path of the offending field, e.g.
//! `apps.<uuid>.releases.<commit>.services.main.composition.ports[2]: ...`. A target with any error
//! is rejected whole.

use super::composition::{self, Composition};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Largest target body we accept (the real supervisor allows 10 MB on its API).
pub const MAX_TARGET_BYTES: usize = 10 * 1024 * 1024;

/// Counts a target may hold, far above real fleets (docs/security.md, "Targets"): a
/// target past one is refused naming the limit, before it costs memory or time.
pub const MAX_APPS: usize = 64;
pub const MAX_SERVICES: usize = 256;
pub const MAX_VOLUMES: usize = 256;
pub const MAX_NETWORKS: usize = 64;
pub const MAX_PORTS: usize = 4096;
pub const MAX_VARIABLES: usize = 4096;

/// Refuses an object or list at `path` with more than `max` entries.
pub(crate) fn at_most(v: Option<&Value>, path: &str, max: usize, what: &str) -> Result<()> {
    let n = match v {
        Some(Value::Object(m)) => m.len(),
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    if n > max {
        return err(path, format!("too many {what}: {n} (at most {max})"));
    }
    Ok(())
}

/// A validation error: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for TargetError {}

pub type Result<T> = std::result::Result<T, TargetError>;

pub(crate) fn err<T>(path: &str, message: impl Into<String>) -> Result<T> {
    Err(error(path, message))
}

pub(crate) fn error(path: &str, message: impl Into<String>) -> TargetError {
    TargetError {
        path: path.to_string(),
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AppClass {
    Fleet,
    App,
    Block,
}

/// The device part of a target: `{name, config, apps}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetState {
    pub name: String,
    pub config: BTreeMap<String, String>,
    pub apps: BTreeMap<String, TargetApp>,
}

impl TargetState {
    /// The same state with config variable names stripped of `BALENA_`/`RESIN_` (the
    /// `BALENA_` form wins when both are given), as the database stores them
    /// (docs/contract/config.md §3.1).
    pub fn normalised(&self) -> TargetState {
        let mut config = BTreeMap::new();
        for (k, v) in &self.config {
            if let Some(bare) = k.strip_prefix("RESIN_") {
                config.entry(bare.to_string()).or_insert_with(|| v.clone());
            }
        }
        for (k, v) in &self.config {
            if k.starts_with("RESIN_") {
                continue;
            }
            let bare = k.strip_prefix("BALENA_").unwrap_or(k);
            config.insert(bare.to_string(), v.clone());
        }
        TargetState {
            config,
            ..self.clone()
        }
    }

    /// A config variable (names without their `BALENA_`/`RESIN_` prefix once normalised).
    pub fn var(&self, name: &str) -> Option<&str> {
        self.config.get(name).map(String::as_str)
    }

    /// A boolean config variable; `None` when unset or not a boolean.
    pub fn flag(&self, name: &str) -> Option<bool> {
        self.var(name)
            .and_then(crate::config::config_json::str_as_bool)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetApp {
    pub uuid: String,
    pub id: i64,
    pub name: String,
    pub class: AppClass,
    pub is_host: bool,
    pub parent_app: Option<String>,
    /// At most one release; None = the app should run nothing.
    pub release: Option<TargetRelease>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetRelease {
    pub commit: String,
    pub id: i64,
    pub services: BTreeMap<String, TargetService>,
    pub volumes: BTreeMap<String, Map<String, Value>>,
    pub networks: BTreeMap<String, Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetService {
    pub id: i64,
    pub image_id: i64,
    pub image: String,
    pub environment: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    pub contract: Option<Value>,
    pub composition: Composition,
    /// The composition as received, kept for the database.
    #[serde(skip)]
    pub composition_raw: Value,
}

/// Names of services, volumes and networks: they end up in container/volume names and paths.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

fn valid_env_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn valid_config_key(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 255
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b':')
}

fn valid_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|c| c.is_ascii_graphic() && !matches!(c, b'"' | b'\'' | b'`'))
}

/// App uuids and commits become DB keys, names and paths: keep them to safe characters.
fn valid_id_string(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

pub(crate) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

pub(crate) fn obj<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    v.as_object()
        .ok_or(())
        .or_else(|_| err(path, format!("expected an object, got {}", kind(v))))
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Integer given as number or numeric string (the API is permissive there).
pub(crate) fn int(v: &Value, path: &str) -> Result<i64> {
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if n >= 0 => Ok(n),
        _ => err(
            path,
            format!("expected a non-negative integer, got {}", short(v)),
        ),
    }
}

pub(crate) fn string(v: &Value, path: &str) -> Result<String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => err(path, format!("expected a string, got {}", kind(v))),
    }
}

pub(crate) fn boolean(v: &Value, path: &str) -> Result<bool> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_i64() == Some(1) => Ok(true),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "on" => Ok(true),
            "false" | "0" | "off" => Ok(false),
            _ => err(path, format!("expected a boolean, got {}", short(v))),
        },
        _ => err(path, format!("expected a boolean, got {}", kind(v))),
    }
}

pub(crate) fn short(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > 60 {
        let mut cut = 60;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn required<'a>(m: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value> {
    m.get(key)
        .ok_or(())
        .or_else(|_| err(&join(path, key), "required field is missing"))
}

/// String→string map whose keys pass `valid`; numbers and booleans are taken as strings.
fn string_map(
    v: &Value,
    path: &str,
    valid: fn(&str) -> bool,
    what: &str,
) -> Result<BTreeMap<String, String>> {
    at_most(Some(v), path, MAX_VARIABLES, &format!("{what}s"))?;
    let mut out = BTreeMap::new();
    for (k, val) in obj(v, path)? {
        let p = join(path, k);
        if !valid(k) {
            return err(&p, format!("invalid {what} name"));
        }
        // Strings only, as v19's target type (a record of string to string): a number or a
        // boolean rejects the whole target rather than being applied in some spelling.
        out.insert(k.clone(), string(val, &p)?);
    }
    Ok(out)
}

/// The real supervisor's own app uuids (per architecture) and service names.
const SUPERVISOR_APP_UUIDS: &[&str] = &[
    "52e35121417640b1b28a680504e4039b",
    "900de4f3cbac4b9bbd232885a35e407b",
    "2e66a95795c149959c69472a8c2f92b8",
    "531b357e155c480cbec0fdd33041a1f5",
    "6822565f766e413e96d9bebe2227cdcc",
];

/// Is this service part of the supervisor itself? v19 leaves out only its own `core` (or
/// `main`, `balena-supervisor`) service; tinyvisor is the whole v19 composition — `core`, helios
/// as `core-next` and `service-relay` — so it installs no service of the supervisor's app (and
/// reports them running, as v19 reports its own). helios would also try to take over by
/// running `node` inside the supervisor container, which has none.
pub fn is_supervisor(app_uuid: &str, _service_name: &str) -> bool {
    SUPERVISOR_APP_UUIDS.contains(&app_uuid)
}

/// Parses the device part of a v3 target (the object under the device uuid).
pub fn parse_device_target(v: &Value) -> Result<TargetState> {
    let m = obj(v, "")?;
    let name = string(required(m, "name", "")?, "name")?;
    if name.len() > 255 || name.contains('\n') {
        return err(
            "name",
            "device name must be at most 255 characters, without newlines",
        );
    }
    let config = string_map(
        required(m, "config", "")?,
        "config",
        valid_config_key,
        "config variable",
    )?;
    let mut apps = BTreeMap::new();
    at_most(m.get("apps"), "apps", MAX_APPS, "apps")?;
    for (uuid, app) in obj(required(m, "apps", "")?, "apps")? {
        let path = format!("apps.{uuid}");
        if !valid_id_string(uuid) {
            return err(&path, "invalid app uuid");
        }
        let app = parse_app(uuid, app, &path)?;
        apps.insert(uuid.clone(), app);
    }
    // helios's device-level errors for host apps (docs/hostos.md §1.1): the whole target is
    // refused; a host app that is only malformed inside is rejected alone (compose/hostapp.rs).
    if apps.values().filter(|a| a.is_host).count() > 1 {
        return err("apps", "only one target hostapp is allowed");
    }
    if let Some(host) = apps.values().find(|a| a.is_host && a.release.is_none()) {
        return err(
            &format!("apps.{}.releases", host.uuid),
            "hostapp should have at least one target release",
        );
    }
    Ok(TargetState { name, config, apps })
}

/// A target handed to the device directly (the local API, offline bundles): the v2
/// local-mode format (`{"local": ...}`) or a v3 device object.
pub fn parse_local_or_device(doc: &Value) -> Result<TargetState> {
    if doc.get("local").is_some() {
        parse_v2_local(doc)
    } else {
        parse_device_target(doc)
    }
}

/// Parses a whole v3 target document `{<uuid>: {...}}`, checking it is for `uuid`.
pub fn parse_v3(doc: &Value, uuid: &str) -> Result<TargetState> {
    let m = obj(doc, "")?;
    let device = m.get(uuid).ok_or(()).or_else(|_| {
        err(
            "",
            format!("target state has no entry for this device ({uuid})"),
        )
    })?;
    parse_device_target(device).map_err(|e| TargetError {
        path: join(uuid, &e.path),
        message: e.message,
    })
}

/// An app back in the v3 format it was parsed from (`parse_app_v3` reads it again): kept
/// aside for a rollback to the release it describes.
pub fn app_to_v3(app: &TargetApp) -> Value {
    let releases = match &app.release {
        None => Value::Object(Map::new()),
        Some(rel) => {
            let services: Map<String, Value> = rel
                .services
                .iter()
                .map(|(name, s)| {
                    let svc = serde_json::json!({"id": s.id, "image_id": s.image_id, "image": s.image,
                        "environment": s.environment, "labels": s.labels, "running": s.running,
                        "contract": s.contract, "composition": s.composition_raw});
                    (name.clone(), svc)
                })
                .collect();
            serde_json::json!({&rel.commit: {"id": rel.id, "services": services,
                "volumes": rel.volumes, "networks": rel.networks}})
        }
    };
    serde_json::json!({"id": app.id, "name": app.name, "class": app.class, "is_host": app.is_host,
        "parent_app": app.parent_app, "releases": releases})
}

/// Reads an app written by `app_to_v3` (or received in a v3 target).
pub fn parse_app_v3(uuid: &str, v: &Value) -> Result<TargetApp> {
    parse_app(uuid, v, &format!("apps.{uuid}"))
}

fn parse_app(uuid: &str, v: &Value, path: &str) -> Result<TargetApp> {
    let m = obj(v, path)?;
    let id = int(required(m, "id", path)?, &join(path, "id"))?;
    let name = string(required(m, "name", path)?, &join(path, "name"))?;
    if name.len() > 255 {
        return err(&join(path, "name"), "must be at most 255 characters");
    }
    let class = match m.get("class") {
        None | Some(Value::Null) => AppClass::Fleet,
        Some(Value::String(s)) if s == "fleet" => AppClass::Fleet,
        Some(Value::String(s)) if s == "app" => AppClass::App,
        Some(Value::String(s)) if s == "block" => AppClass::Block,
        Some(other) => {
            return err(
                &join(path, "class"),
                format!(
                    "expected \"fleet\", \"app\" or \"block\", got {}",
                    short(other)
                ),
            )
        }
    };
    let is_host = match m.get("is_host") {
        None | Some(Value::Null) => false,
        Some(v) => boolean(v, &join(path, "is_host"))?,
    };
    let parent_app = match m.get("parent_app") {
        None | Some(Value::Null) => None,
        Some(v) => Some(string(v, &join(path, "parent_app"))?),
    };
    let mut release = None;
    if let Some(releases) = m.get("releases") {
        let rp = join(path, "releases");
        let rels = obj(releases, &rp)?;
        if rels.len() > 1 {
            return err(
                &rp,
                format!("at most one release per app, got {}", rels.len()),
            );
        }
        if let Some((commit, rel)) = rels.iter().next() {
            let p = join(&rp, commit);
            if !valid_id_string(commit) {
                return err(&p, "invalid release commit");
            }
            release = Some(parse_release(commit, rel, &p)?);
        }
    }
    Ok(TargetApp {
        uuid: uuid.to_string(),
        id,
        name,
        class,
        is_host,
        parent_app,
        release,
    })
}

fn object_map(
    v: Option<&Value>,
    path: &str,
    what: &str,
) -> Result<BTreeMap<String, Map<String, Value>>> {
    let mut out = BTreeMap::new();
    let Some(v) = v else { return Ok(out) };
    for (name, spec) in obj(v, path)? {
        let p = join(path, name);
        if !valid_name(name) {
            return err(&p, format!("invalid {what} name"));
        }
        let spec = match spec {
            Value::Null => Map::new(),
            other => obj(other, &p)?.clone(),
        };
        out.insert(name.clone(), spec);
    }
    Ok(out)
}

fn parse_release(commit: &str, v: &Value, path: &str) -> Result<TargetRelease> {
    let m = obj(v, path)?;
    let id = int(required(m, "id", path)?, &join(path, "id"))?;
    at_most(
        m.get("volumes"),
        &join(path, "volumes"),
        MAX_VOLUMES,
        "volumes",
    )?;
    at_most(
        m.get("networks"),
        &join(path, "networks"),
        MAX_NETWORKS,
        "networks",
    )?;
    at_most(
        m.get("services"),
        &join(path, "services"),
        MAX_SERVICES,
        "services",
    )?;
    let volumes = object_map(m.get("volumes"), &join(path, "volumes"), "volume")?;
    let networks = object_map(m.get("networks"), &join(path, "networks"), "network")?;
    for (name, spec) in &networks {
        super::network::validate_spec(spec, &join(&join(path, "networks"), name))?;
    }
    for (name, spec) in &volumes {
        super::volume::validate_spec(spec, &join(&join(path, "volumes"), name))?;
    }
    let mut services = BTreeMap::new();
    if let Some(s) = m.get("services") {
        let sp = join(path, "services");
        for (name, svc) in obj(s, &sp)? {
            let p = join(&sp, name);
            if !valid_name(name) {
                return err(&p, "invalid service name");
            }
            let parsed = parse_service(svc, &p)?;
            super::policy::validate(&parsed.labels, &join(&p, "labels"))?;
            super::policy::validate(
                &parsed.composition.labels,
                &join(&join(&p, "composition"), "labels"),
            )?;
            services.insert(name.clone(), parsed);
        }
    }
    // Cross-references: networks, volumes, depends_on, network_mode service:, host ports.
    let mut host_ports: BTreeMap<(String, u16, String), String> = BTreeMap::new();
    for (name, svc) in &services {
        let cp = join(&join(&join(path, "services"), name), "composition");
        let c = &svc.composition;
        for (i, (net, _)) in c.networks.iter().enumerate() {
            if !networks.contains_key(net)
                && net != "default"
                && net != super::service::SUPERVISOR_NETWORK
            {
                return err(
                    &format!("{cp}.networks[{i}]"),
                    format!("network {net:?} is not defined in the release"),
                );
            }
        }
        for (i, vol) in c.volumes.iter().enumerate() {
            if let Some(named) = vol.named_source() {
                if !volumes.contains_key(named) {
                    return err(
                        &format!("{cp}.volumes[{i}]"),
                        format!("volume {named:?} is not defined in the release"),
                    );
                }
            }
        }
        for (i, dep) in c.depends_on.iter().enumerate() {
            if !services.contains_key(dep) {
                return err(
                    &format!("{cp}.depends_on[{i}]"),
                    format!("service {dep:?} is not in the release"),
                );
            }
        }
        if let Some(other) = c
            .network_mode
            .as_deref()
            .and_then(|m| m.strip_prefix("service:"))
        {
            if !services.contains_key(other) || other == name {
                return err(
                    &format!("{cp}.network_mode"),
                    format!("service {other:?} is not another service of the release"),
                );
            }
        } else if let Some(mode) = c.network_mode.as_deref() {
            if !matches!(mode, "host" | "bridge" | "none")
                && !mode.starts_with("container:")
                && !networks.contains_key(mode)
                && mode != "default"
            {
                return err(
                    &format!("{cp}.network_mode"),
                    format!("network {mode:?} is not defined in the release"),
                );
            }
        }
        for (i, port) in c.ports.iter().enumerate() {
            for (host_ip, host_port, proto) in port.host_bindings() {
                let key = (host_ip.clone(), host_port, proto.clone());
                if let Some(other) = host_ports.insert(key, name.clone()) {
                    return err(
                        &format!("{cp}.ports[{i}]"),
                        format!(
                            "host port {host_port}/{proto} is already bound by service {other:?}"
                        ),
                    );
                }
            }
        }
    }
    detect_dependency_cycle(&services, path)?;
    Ok(TargetRelease {
        commit: commit.to_string(),
        id,
        services,
        volumes,
        networks,
    })
}

fn detect_dependency_cycle(services: &BTreeMap<String, TargetService>, path: &str) -> Result<()> {
    // Depth-first search with colours; a grey node reached again closes a cycle.
    fn visit<'a>(
        name: &'a str,
        services: &'a BTreeMap<String, TargetService>,
        colour: &mut BTreeMap<&'a str, u8>,
    ) -> std::result::Result<(), String> {
        match colour.get(name) {
            Some(1) => return Err(name.to_string()),
            Some(2) => return Ok(()),
            _ => {}
        }
        colour.insert(name, 1);
        if let Some(s) = services.get(name) {
            for dep in s.composition.all_dependencies() {
                visit(dep, services, colour)?;
            }
        }
        colour.insert(name, 2);
        Ok(())
    }
    let mut colour = BTreeMap::new();
    for name in services.keys() {
        if let Err(at) = visit(name, services, &mut colour) {
            return err(
                &join(&join(path, "services"), &at),
                "depends_on / network_mode form a cycle",
            );
        }
    }
    Ok(())
}

fn parse_service(v: &Value, path: &str) -> Result<TargetService> {
    let m = obj(v, path)?;
    let id = int(required(m, "id", path)?, &join(path, "id"))?;
    let image_id = int(required(m, "image_id", path)?, &join(path, "image_id"))?;
    let image = string(required(m, "image", path)?, &join(path, "image"))?;
    if image.is_empty() || image.len() > 255 || image.bytes().any(|b| b.is_ascii_whitespace()) {
        return err(
            &join(path, "image"),
            "expected an image reference (at most 255 characters, no spaces)",
        );
    }
    let environment = match m.get("environment") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => string_map(
            v,
            &join(path, "environment"),
            valid_env_name,
            "environment variable",
        )?,
    };
    let labels = match m.get("labels") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(v) => string_map(v, &join(path, "labels"), valid_label_name, "label")?,
    };
    let running = match m.get("running") {
        None | Some(Value::Null) => true,
        Some(v) => boolean(v, &join(path, "running"))?,
    };
    let contract = match m.get("contract") {
        None | Some(Value::Null) => None,
        Some(v) => {
            super::contracts::validate(v, &join(path, "contract"))?;
            Some(v.clone())
        }
    };
    let composition_raw = m.get("composition").cloned().unwrap_or(Value::Null);
    let composition = match &composition_raw {
        Value::Null => Composition::default(),
        v => composition::parse(v, &join(path, "composition"))?,
    };
    Ok(TargetService {
        id,
        image_id,
        image,
        environment,
        labels,
        running,
        contract,
        composition,
        composition_raw,
    })
}

/// Converts the v2 local-mode format (`POST /v2/local/target-state`, as balena-cli sends it)
/// into the v3 model: apps keyed by numeric id get the id as their uuid (docs/contract/engine.md
/// A.8.10), services keyed by service id carry compose keys next to their own.
pub fn parse_v2_local(doc: &Value) -> Result<TargetState> {
    let top = obj(doc, "")?;
    let local = obj(required(top, "local", "")?, "local")?;
    let mut v3 = Map::new();
    v3.insert(
        "name".into(),
        local
            .get("name")
            .cloned()
            .unwrap_or(Value::String("local".into())),
    );
    v3.insert(
        "config".into(),
        local
            .get("config")
            .cloned()
            .unwrap_or(Value::Object(Map::new())),
    );
    let mut apps = Map::new();
    if let Some(a) = local.get("apps") {
        for (app_id, app) in obj(a, "local.apps")? {
            let path = format!("local.apps.{app_id}");
            let id = int(&Value::String(app_id.clone()), &path)?;
            let app = obj(app, &path)?;
            let mut services = Map::new();
            if let Some(s) = app.get("services") {
                for (sid, svc) in obj(s, &join(&path, "services"))? {
                    let sp = format!("{path}.services.{sid}");
                    let svc = obj(svc, &sp)?;
                    let name = string(
                        required(svc, "serviceName", &sp)?,
                        &join(&sp, "serviceName"),
                    )?;
                    let mut composition = Map::new();
                    for (k, v) in svc {
                        if !matches!(
                            k.as_str(),
                            "serviceName"
                                | "serviceId"
                                | "imageId"
                                | "image"
                                | "environment"
                                | "labels"
                                | "running"
                                | "contract"
                        ) {
                            composition.insert(k.clone(), v.clone());
                        }
                    }
                    let mut out = Map::new();
                    out.insert(
                        "id".into(),
                        svc.get("serviceId")
                            .cloned()
                            .unwrap_or(Value::String(sid.clone())),
                    );
                    out.insert("image_id".into(), required(svc, "imageId", &sp)?.clone());
                    out.insert("image".into(), required(svc, "image", &sp)?.clone());
                    for k in ["environment", "labels", "running", "contract"] {
                        if let Some(v) = svc.get(k) {
                            out.insert(k.into(), v.clone());
                        }
                    }
                    out.insert("composition".into(), Value::Object(composition));
                    services.insert(name, Value::Object(out));
                }
            }
            let mut release = Map::new();
            release.insert(
                "id".into(),
                app.get("releaseId").cloned().unwrap_or(Value::from(1)),
            );
            release.insert("services".into(), Value::Object(services));
            release.insert(
                "volumes".into(),
                app.get("volumes")
                    .cloned()
                    .unwrap_or(Value::Object(Map::new())),
            );
            release.insert(
                "networks".into(),
                app.get("networks")
                    .cloned()
                    .unwrap_or(Value::Object(Map::new())),
            );
            let mut releases = Map::new();
            if let Some(commit) = app.get("commit").and_then(Value::as_str) {
                releases.insert(commit.to_string(), Value::Object(release));
            } else if app
                .get("services")
                .is_some_and(|s| s.as_object().is_some_and(|m| !m.is_empty()))
            {
                return err(&join(&path, "commit"), "required field is missing");
            }
            let mut v3app = Map::new();
            v3app.insert("id".into(), Value::from(id));
            v3app.insert(
                "name".into(),
                app.get("name")
                    .cloned()
                    .unwrap_or(Value::String(String::new())),
            );
            v3app.insert("class".into(), Value::String("fleet".into()));
            v3app.insert("releases".into(), Value::Object(releases));
            apps.insert(app_id.clone(), Value::Object(v3app));
        }
    }
    v3.insert("apps".into(), Value::Object(apps));
    parse_device_target(&Value::Object(v3)).map_err(|e| TargetError {
        path: join("local", &e.path),
        message: e.message,
    })
}
