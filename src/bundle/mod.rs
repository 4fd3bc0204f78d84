//! Signed offline bundles (docs/bundles.md): one tar file holding a manifest (the target
//! and the SHA-256 of every image archive), an Ed25519 signature over the manifest, then
//! the image archives as the engine's `GET /images/get` writes them. The manifest and its
//! signature come first, so a bundle read as a stream is checked before any image is
//! loaded. This module is the format (keys, signing, checking the signed head); `create.rs`
//! writes a bundle from an engine; the state engine imports them (`state/bundle.rs`).
//!
//! Ed25519 and SHA-256 are ring's, already in the binary for TLS.

use crate::compose::target::{self, TargetState};
use crate::encoding::{base64, base64_decode};
use crate::tar::Entries;
use ring::signature::{self, Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Read;

pub mod cli;
pub mod create;

/// The entries every bundle starts with, in this order.
pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.sig";
/// The manifest's `format`.
pub const FORMAT: &str = "tinyvisor-bundle/1";
/// A manifest holds a target (≤ 10 MiB) and one line per image.
const MAX_MANIFEST: u64 = target::MAX_TARGET_BYTES as u64 + (1 << 20);
const MAX_SIGNATURE: u64 = 4096;
/// As many images as a target may have services.
pub const MAX_IMAGES: usize = 256;

/// What a bundle holds, signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// When it was made (RFC 3339): the newest of several bundles in the directory wins.
    pub created: String,
    /// A v3 device object or the v2 local-mode format, as `tinyvisor apply` takes.
    pub target: Value,
    pub images: Vec<ImageEntry>,
}

/// One image archive of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The name the target's services use.
    pub name: String,
    /// The engine's image id (`sha256:…`): present after loading, or the bundle is refused.
    pub id: String,
    /// Its entry in the bundle: `images/<n>.tar`, in manifest order.
    pub file: String,
    pub size: u64,
    /// SHA-256 of the archive, lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureDoc {
    algorithm: String,
    /// The signer's public key (base64), one of config.json's `tinyvisorBundleKeys`.
    key: String,
    signature: String,
}

/// The checked head of a bundle: its manifest, the manifest's digest (which names the
/// bundle) and the target parsed and validated.
#[derive(Debug)]
pub struct Head {
    pub manifest: Manifest,
    pub digest: String,
    pub target: TargetState,
}

/// A new key pair: (private key as base64 PKCS#8, public key as base64).
pub fn generate_key() -> Result<(String, String), String> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| "cannot generate a key: no random source".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| "cannot read back the generated key".to_string())?;
    Ok((base64(pkcs8.as_ref()), base64(pair.public_key().as_ref())))
}

/// The signature entry for `manifest`, made with a private key as `generate_key` writes it.
pub fn sign(private_key: &str, manifest: &[u8]) -> Result<Vec<u8>, String> {
    let pkcs8 = base64_decode(private_key.trim())
        .ok_or_else(|| "the signing key is not base64".to_string())?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8)
        .map_err(|e| format!("not an Ed25519 private key (PKCS#8): {e}"))?;
    let doc = SignatureDoc {
        algorithm: "ed25519".into(),
        key: base64(pair.public_key().as_ref()),
        signature: base64(pair.sign(manifest).as_ref()),
    };
    serde_json::to_vec(&doc).map_err(|e| e.to_string())
}

/// Checks that `sig` (a signature entry) signs `manifest` with one of the `trusted` keys.
pub fn verify(manifest: &[u8], sig: &[u8], trusted: &[Vec<u8>]) -> Result<(), String> {
    if trusted.is_empty() {
        return Err("no key to check bundles with: config.json has no tinyvisorBundleKeys".into());
    }
    let doc: SignatureDoc = serde_json::from_slice(sig)
        .map_err(|e| format!("{SIGNATURE} is not a signature entry: {e}"))?;
    if doc.algorithm != "ed25519" {
        return Err(format!(
            "{SIGNATURE}: unknown algorithm {:?} (ed25519 expected)",
            doc.algorithm
        ));
    }
    let key = base64_decode(&doc.key).unwrap_or_default();
    if !trusted.contains(&key) {
        return Err(format!(
            "bundle signed by an unknown key ({}): not in tinyvisorBundleKeys",
            doc.key
        ));
    }
    let raw = base64_decode(&doc.signature)
        .ok_or_else(|| format!("{SIGNATURE}: the signature is not base64"))?;
    signature::UnparsedPublicKey::new(&signature::ED25519, &key)
        .verify(manifest, &raw)
        .map_err(|_| "the bundle's signature does not match its manifest".to_string())
}

/// SHA-256 of a stream of bytes.
pub struct Digest(ring::digest::Context);

impl Digest {
    pub fn new() -> Digest {
        Digest(ring::digest::Context::new(&ring::digest::SHA256))
    }

    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// Lowercase hex.
    pub fn hex(self) -> String {
        hex(self.0.finish().as_ref())
    }
}

impl Default for Digest {
    fn default() -> Self {
        Digest::new()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads and checks a bundle's head: the manifest and its signature (against `trusted`),
/// then the manifest's fields and its target. Nothing else of the stream is read.
pub fn read_head<R: Read>(entries: &mut Entries<R>, trusted: &[Vec<u8>]) -> Result<Head, String> {
    let manifest_raw = entry(entries, MANIFEST, MAX_MANIFEST)?;
    let sig = entry(entries, SIGNATURE, MAX_SIGNATURE)?;
    verify(&manifest_raw, &sig, trusted)?;
    let manifest: Manifest = serde_json::from_slice(&manifest_raw)
        .map_err(|e| format!("{MANIFEST} is not a bundle manifest: {e}"))?;
    check_manifest(&manifest)?;
    let target = target::parse_local_or_device(&manifest.target)
        .map_err(|e| format!("the bundle's target is invalid: {e}"))?;
    let mut digest = Digest::new();
    digest.update(&manifest_raw);
    Ok(Head {
        manifest,
        digest: digest.hex(),
        target,
    })
}

/// The next entry, which must be `name`, read whole (at most `limit` bytes).
fn entry<R: Read>(entries: &mut Entries<R>, name: &str, limit: u64) -> Result<Vec<u8>, String> {
    let not_bundle = |e: String| format!("not a bundle: {e}");
    match entries
        .next_entry()
        .map_err(|e| not_bundle(e.to_string()))?
    {
        Some(found) if found.name == name => entries
            .read_data(limit)
            .map_err(|e| not_bundle(format!("{name}: {e}"))),
        Some(found) => Err(not_bundle(format!(
            "{name} expected, found {:?}",
            found.name
        ))),
        None => Err(not_bundle(format!("{name} missing"))),
    }
}

fn check_manifest(m: &Manifest) -> Result<(), String> {
    if m.format != FORMAT {
        return Err(format!(
            "unknown bundle format {:?} ({FORMAT} expected)",
            m.format
        ));
    }
    if m.images.len() > MAX_IMAGES {
        return Err(format!("a bundle holds at most {MAX_IMAGES} images"));
    }
    let mut names = BTreeSet::new();
    for (i, image) in m.images.iter().enumerate() {
        let at = format!("images[{i}]");
        if image.file != format!("images/{i}.tar") {
            return Err(format!("{at}.file must be images/{i}.tar"));
        }
        if !is_hex(&image.sha256, 64) {
            return Err(format!("{at}.sha256 must be 64 lowercase hex digits"));
        }
        if !image
            .id
            .strip_prefix("sha256:")
            .is_some_and(|h| is_hex(h, 64))
        {
            return Err(format!("{at}.id must be an image id (sha256:<64 hex>)"));
        }
        if image.name.is_empty() || image.name.len() > 512 || !names.insert(&image.name) {
            return Err(format!("{at}.name must be a unique image name"));
        }
    }
    Ok(())
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The image names a target's services use, in target order, each once.
pub fn target_images(target: &TargetState) -> Vec<String> {
    let mut seen = BTreeSet::new();
    // Host OS releases are not carried: their images are the OS, installed by its updater.
    target
        .apps
        .values()
        .filter(|app| !app.is_host)
        .filter_map(|app| app.release.as_ref())
        .flat_map(|rel| rel.services.values())
        .filter(|svc| seen.insert(svc.image.clone()))
        .map(|svc| svc.image.clone())
        .collect()
}

#[cfg(test)]
mod tests;
