//! config.json: read with permissive types (numbers as strings, booleans as "on"/"1"),
//! validated field by field at load, written atomically after re-reading and merging what
//! is on disk, so keys written by the OS meanwhile are never lost. Unknown keys are kept.

use crate::fsutil::write_atomic;
use serde_json::{Map, Value};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// A problem with config.json, naming the file and (when known) the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(
                f,
                "{}: field `{field}`: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Port,
    Bool,
    Object,
    /// A list of Ed25519 public keys, each the base64 of its 32 bytes.
    KeyList,
}

/// The fields the supervisor reads, with the types it accepts (docs/contract/cloud-api.md §1.1).
const FIELDS: &[(&str, Kind)] = &[
    ("apiEndpoint", Kind::Str),
    ("uuid", Kind::Str),
    ("deviceApiKey", Kind::Str),
    ("apiKey", Kind::Str),
    ("applicationId", Kind::Int),
    ("deviceType", Kind::Str),
    ("deviceId", Kind::Int),
    ("registered_at", Kind::Int),
    ("userId", Kind::Int),
    ("appUpdatePollInterval", Kind::Int),
    ("listenPort", Kind::Port),
    ("deltaEndpoint", Kind::Str),
    ("logsEndpoint", Kind::Str),
    ("apiTimeout", Kind::Int),
    ("bootstrapRetryDelay", Kind::Int),
    ("hostname", Kind::Str),
    ("persistentLogging", Kind::Bool),
    ("initialDeviceName", Kind::Str),
    ("developmentMode", Kind::Bool),
    ("os", Kind::Object),
    // tinyvisor's own: who may sign offline bundles (docs/bundles.md).
    ("tinyvisorBundleKeys", Kind::KeyList),
];

/// Reads an integer given as a JSON number or a decimal string.
pub fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a boolean given as JSON bool, number 0/1, or "true/false/1/0/on/off".
pub fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => str_as_bool(s),
        _ => None,
    }
}

/// A boolean written as text: "true/1/on", "false/0/off" or empty; anything else is `None`.
pub fn str_as_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "on" => Some(true),
        "false" | "0" | "off" | "" => Some(false),
        _ => None,
    }
}

fn check(kind: Kind, v: &Value) -> Result<(), String> {
    if v.is_null() {
        return Ok(());
    }
    let ok = match kind {
        Kind::Str => v.is_string(),
        Kind::Int => as_int(v).is_some_and(|n| n >= 0),
        Kind::Port => as_int(v).is_some_and(|n| (1..=65535).contains(&n)),
        Kind::Bool => as_bool(v).is_some(),
        Kind::Object => v.is_object(),
        Kind::KeyList => v
            .as_array()
            .is_some_and(|keys| keys.len() <= 64 && keys.iter().all(|k| public_key(k).is_some())),
    };
    if ok {
        return Ok(());
    }
    let want = match kind {
        Kind::Str => "a string",
        Kind::Int => "a non-negative integer (number or numeric string)",
        Kind::Port => "a port number (1-65535)",
        Kind::Bool => "a boolean (true/false, \"true\"/\"false\", \"1\"/\"0\", \"on\"/\"off\")",
        Kind::Object => "an object",
        Kind::KeyList => "a list of at most 64 Ed25519 public keys (base64 of 32 bytes each)",
    };
    let mut shown = v.to_string();
    if shown.len() > 60 {
        shown.truncate(60);
        shown.push('…');
    }
    Err(format!("expected {want}, got {shown}"))
}

/// An Ed25519 public key written as the base64 of its 32 bytes.
fn public_key(v: &Value) -> Option<Vec<u8>> {
    crate::encoding::base64_decode(v.as_str()?.trim()).filter(|k| k.len() == 32)
}

/// Parses and validates config.json bytes.
pub fn parse(file: &Path, bytes: &[u8]) -> Result<Map<String, Value>, ConfigError> {
    let err = |field: Option<&str>, message: String| ConfigError {
        file: file.to_path_buf(),
        field: field.map(str::to_string),
        message,
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| err(None, format!("invalid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(err(None, "must hold a JSON object".to_string()));
    };
    for (name, kind) in FIELDS {
        if let Some(v) = map.get(*name) {
            check(*kind, v).map_err(|m| err(Some(name), m))?;
        }
    }
    Ok(map)
}

/// Reads config.json; a missing file is an empty config (an unmanaged device).
pub fn read(file: &Path) -> Result<Map<String, Value>, ConfigError> {
    match std::fs::read(file) {
        Ok(bytes) => parse(file, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(ConfigError {
            file: file.to_path_buf(),
            field: None,
            message: format!("cannot read: {e}"),
        }),
    }
}

/// config.json shared by all threads. Reads come from the cache; writes merge with disk.
#[derive(Debug)]
pub struct ConfigJson {
    path: PathBuf,
    cache: Mutex<Map<String, Value>>,
}

impl ConfigJson {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Ok(ConfigJson {
            path: path.to_path_buf(),
            cache: Mutex::new(read(path)?),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn with<T>(&self, f: impl FnOnce(&Map<String, Value>) -> T) -> T {
        let guard = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        f(&guard)
    }

    /// A copy of the whole object.
    pub fn snapshot(&self) -> Map<String, Value> {
        self.with(Clone::clone)
    }

    pub fn get_str(&self, key: &str) -> Option<String> {
        self.with(|m| m.get(key).and_then(Value::as_str).map(str::to_string))
    }

    pub fn get_int(&self, key: &str) -> Option<i64> {
        self.with(|m| m.get(key).and_then(as_int))
    }

    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.with(|m| m.get(key).and_then(as_bool))
    }

    /// The public keys whose signatures offline bundles may carry (`tinyvisorBundleKeys`,
    /// checked when the file is read).
    pub fn bundle_keys(&self) -> Vec<Vec<u8>> {
        self.with(|m| {
            m.get("tinyvisorBundleKeys")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(public_key).collect())
                .unwrap_or_default()
        })
    }

    /// Cloud API base URL without a trailing slash; empty means unmanaged.
    pub fn api_endpoint(&self) -> String {
        self.get_str("apiEndpoint")
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_string()
    }

    pub fn unmanaged(&self) -> bool {
        self.api_endpoint().is_empty()
    }

    pub fn listen_port(&self) -> u16 {
        self.get_int("listenPort")
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(super::DEFAULT_LISTEN_PORT)
    }

    pub fn poll_interval_ms(&self) -> u64 {
        self.get_int("appUpdatePollInterval")
            .and_then(|p| u64::try_from(p).ok())
            .unwrap_or(900_000)
    }

    /// Sets (or, with `None`, deletes) keys. Re-reads the file under the lock so changes the
    /// OS made meanwhile survive, and writes only if something changed. Returns whether it wrote.
    pub fn update(&self, changes: &[(&str, Option<Value>)]) -> Result<bool, ConfigError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // A file that became unreadable or invalid on disk is not merged; our cache wins.
        let mut merged = read(&self.path).unwrap_or_else(|_| cache.clone());
        let before = merged.clone();
        for (key, value) in changes {
            match value {
                Some(v) => {
                    if let Some((_, kind)) = FIELDS.iter().find(|(n, _)| n == key) {
                        check(*kind, v).map_err(|m| ConfigError {
                            file: self.path.clone(),
                            field: Some(key.to_string()),
                            message: m,
                        })?;
                    }
                    merged.insert(key.to_string(), v.clone());
                }
                None => {
                    merged.remove(*key);
                }
            }
        }
        let changed = merged != before;
        if changed {
            let bytes = serde_json::to_vec(&merged).map_err(|e| ConfigError {
                file: self.path.clone(),
                field: None,
                message: format!("cannot encode: {e}"),
            })?;
            write_atomic(&self.path, &bytes).map_err(|e| ConfigError {
                file: self.path.clone(),
                field: None,
                message: format!("cannot write: {e}"),
            })?;
        }
        *cache = merged;
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use serde_json::json;

    fn err_of(text: &str) -> ConfigError {
        parse(Path::new("/mnt/boot/config.json"), text.as_bytes()).unwrap_err()
    }

    #[test]
    fn permissive_types_are_accepted() {
        let m = parse(
            Path::new("c"),
            br#"{"listenPort":"48485","applicationId":"12","persistentLogging":"on","developmentMode":true,"uuid":null,"vpnPort":443,"extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(as_int(&m["listenPort"]), Some(48485));
        assert_eq!(as_bool(&m["persistentLogging"]), Some(true));
        assert_eq!(m["extra"], json!({"x":1}));
    }

    #[test]
    fn bundle_keys_are_checked_and_decoded() {
        let key = crate::encoding::base64(&[7u8; 32]);
        let text = format!(r#"{{"tinyvisorBundleKeys":["{key}"]}}"#);
        let m = parse(Path::new("c"), text.as_bytes()).unwrap();
        assert_eq!(m["tinyvisorBundleKeys"][0], json!(key));
        for bad in [
            r#""AAAA""#,
            r#"["AAAA"]"#,
            r#"["not base64!"]"#,
            r#"[7]"#,
            &format!(r#"["{}"]"#, crate::encoding::base64(&[1u8; 33])),
        ] {
            let e = err_of(&format!(r#"{{"tinyvisorBundleKeys":{bad}}}"#));
            assert_eq!(e.field.as_deref(), Some("tinyvisorBundleKeys"), "{bad}");
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let e = err_of(r#"{"listenPort":"abc"}"#);
        assert_eq!(e.field.as_deref(), Some("listenPort"));
        assert_eq!(
            e.to_string(),
            "/mnt/boot/config.json: field `listenPort`: expected a port number (1-65535), got \"abc\""
        );
        assert_eq!(
            err_of(r#"{"listenPort":70000}"#).field.as_deref(),
            Some("listenPort")
        );
        assert_eq!(err_of(r#"{"uuid":5}"#).field.as_deref(), Some("uuid"));
        assert_eq!(
            err_of(r#"{"appUpdatePollInterval":-1}"#).field.as_deref(),
            Some("appUpdatePollInterval")
        );
        assert_eq!(
            err_of(r#"{"persistentLogging":"maybe"}"#).field.as_deref(),
            Some("persistentLogging")
        );
        assert_eq!(err_of(r#"{"os":"x"}"#).field.as_deref(), Some("os"));
    }

    #[test]
    fn bad_json_is_reported_without_field() {
        let e = err_of("{\"uuid\": ");
        assert!(e.field.is_none());
        assert!(e.message.starts_with("invalid JSON"), "{e}");
        assert_eq!(err_of("[1]").message, "must hold a JSON object");
    }

    #[test]
    fn fixtures_parse() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/balena-supervisor-v19");
        for name in [
            "testconfig.json",
            "testconfig-apibinder.json",
            "testconfig-apibinder-offline.json",
            "testconfig-apibinder-offline2.json",
        ] {
            let p = dir.join(name);
            assert!(p.exists(), "fixture {} missing", p.display());
            let c = ConfigJson::load(&p).unwrap_or_else(|e| panic!("{e}"));
            assert!(c.listen_port() > 0);
        }
    }

    #[test]
    fn update_merges_with_disk_and_keeps_unknown_keys() {
        let dir = TempDir::new("cfg");
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            br#"{"apiEndpoint":"https://api.example","apiKey":"prov","os":{"network":{}}}"#,
        )
        .unwrap();
        let c = ConfigJson::load(&p).unwrap();
        // The OS adds a key behind our back.
        std::fs::write(&p, br#"{"apiEndpoint":"https://api.example","apiKey":"prov","os":{"network":{}},"sshKeys":["k"]}"#).unwrap();
        assert!(c
            .update(&[("deviceId", Some(json!(7))), ("apiKey", None)])
            .unwrap());
        let disk: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            disk,
            json!({"apiEndpoint":"https://api.example","os":{"network":{}},"sshKeys":["k"],"deviceId":7})
        );
        assert_eq!(c.get_int("deviceId"), Some(7));
        // Nothing changed: no write.
        let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!c.update(&[("deviceId", Some(json!(7)))]).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().modified().unwrap(), mtime);
    }

    #[test]
    fn update_rejects_bad_types_and_keeps_file() {
        let dir = TempDir::new("cfg");
        let p = dir.path().join("config.json");
        std::fs::write(&p, br#"{"uuid":"abc"}"#).unwrap();
        let c = ConfigJson::load(&p).unwrap();
        let e = c.update(&[("deviceId", Some(json!("seven")))]).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("deviceId"));
        assert_eq!(std::fs::read(&p).unwrap(), br#"{"uuid":"abc"}"#);
    }

    #[test]
    fn missing_file_is_empty_and_unmanaged() {
        let dir = TempDir::new("cfg");
        let c = ConfigJson::load(&dir.path().join("none.json")).unwrap();
        assert!(c.unmanaged());
        assert_eq!(c.listen_port(), 48484);
        assert_eq!(c.poll_interval_ms(), 900_000);
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = TempDir::new("cfg");
        let e = ConfigJson::load(dir.path()).unwrap_err();
        assert!(e.message.starts_with("cannot read"), "{e}");
    }
}
