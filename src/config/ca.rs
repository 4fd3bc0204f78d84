//! The custom root CA of an openBalena or self-signed balena API (docs/contract/config.md §1,
//! "Custom root CAs"). balenaOS hands it over in one of several ways depending on its age; every one found
//! is collected at start, each with where it came from so a bad one can be named.

use std::path::Path;

/// The largest CA file we read: a custom CA is a few KiB, a system bundle some 200 KiB.
const MAX_CA_BYTES: u64 = 4 * 1024 * 1024;

/// Host file that balenaOS's `extract-balena-ca` writes from config.json's `balenaRootCA`.
pub const HOST_CA_FILE: &str = "usr/share/ca-certificates/balena/balenaRootCA.crt";

/// PEM text of one custom CA source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomCa {
    /// Where it came from (`BALENA_ROOT_CA`, a path, `config.json balenaRootCA`).
    pub source: String,
    pub pem: Vec<u8>,
}

/// PEM text given either as is or base64-encoded (config.json's `balenaRootCA` is base64;
/// `BALENA_ROOT_CA` has been seen both ways).
fn pem_or_base64(text: &str) -> Option<Vec<u8>> {
    let t = text.trim();
    if t.starts_with("-----BEGIN") {
        return Some(t.as_bytes().to_vec());
    }
    let compact: String = t.split_whitespace().collect();
    let decoded = String::from_utf8(crate::encoding::base64_decode(&compact)?).ok()?;
    let pem = decoded.trim();
    pem.starts_with("-----BEGIN")
        .then(|| pem.as_bytes().to_vec())
}

/// A CA file, at most [`MAX_CA_BYTES`] of it.
pub fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_CA_BYTES)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Every custom CA the device was given: `BALENA_ROOT_CA`, the file named by
/// `NODE_EXTRA_CA_CERTS`, the host's `balenaRootCA.crt` under `root`, and config.json's
/// `balenaRootCA`. Sources that cannot be read or decoded are logged and left out.
pub fn collect(
    env: &dyn Fn(&str) -> Option<String>,
    root: &Path,
    config_value: Option<String>,
) -> Vec<CustomCa> {
    let mut out: Vec<CustomCa> = Vec::new();
    let mut push = |source: String, pem: Option<Vec<u8>>| match pem {
        Some(pem) if !out.iter().any(|c| c.pem == pem) => out.push(CustomCa { source, pem }),
        Some(_) => {}
        None => log::error!("custom root CA from {source}: not PEM (or base64 of PEM); ignored"),
    };
    if let Some(v) = env("BALENA_ROOT_CA").filter(|v| !v.trim().is_empty()) {
        push("BALENA_ROOT_CA".into(), pem_or_base64(&v));
    }
    let mut files: Vec<std::path::PathBuf> = Vec::new();
    if let Some(p) = env("NODE_EXTRA_CA_CERTS").filter(|v| !v.is_empty()) {
        files.push(p.into());
    }
    files.push(root.join(HOST_CA_FILE));
    for path in files {
        match read_bounded(&path) {
            Ok(bytes) => push(
                path.display().to_string(),
                pem_or_base64(&String::from_utf8_lossy(&bytes)),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::error!("custom root CA {}: {e}; ignored", path.display()),
        }
    }
    if let Some(v) = config_value.filter(|v| !v.trim().is_empty()) {
        push("config.json balenaRootCA".into(), pem_or_base64(&v));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn every_source_is_collected_once_and_bad_ones_are_left_out() {
        let dir = TempDir::new("ca");
        let host = dir.path().join(HOST_CA_FILE);
        std::fs::create_dir_all(host.parent().unwrap()).unwrap();
        std::fs::write(&host, PEM).unwrap();
        let extra = dir.path().join("extra.pem");
        std::fs::write(
            &extra,
            "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let extra_s = extra.display().to_string();
        let env = move |k: &str| match k {
            "BALENA_ROOT_CA" => Some("not a certificate".to_string()),
            "NODE_EXTRA_CA_CERTS" => Some(extra_s.clone()),
            _ => None,
        };
        // config.json's copy is base64 of the same PEM as the host file: kept once.
        let got = collect(
            &env,
            dir.path(),
            Some(crate::encoding::base64(PEM.as_bytes())),
        );
        let sources: Vec<&str> = got.iter().map(|c| c.source.as_str()).collect();
        assert_eq!(sources.len(), 2, "{sources:?}");
        assert!(sources[0].ends_with("extra.pem"));
        assert!(sources[1].ends_with("balenaRootCA.crt"));
        assert!(collect(&|_| None, dir.path().join("none").as_path(), None).is_empty());
    }

    #[test]
    fn pem_may_come_base64_encoded() {
        assert_eq!(pem_or_base64(PEM).unwrap(), PEM.trim().as_bytes());
        let b64 = crate::encoding::base64(PEM.as_bytes());
        assert_eq!(pem_or_base64(&b64).unwrap(), PEM.trim().as_bytes());
        assert!(pem_or_base64("bm90IHBlbQ==").is_none());
    }
}
