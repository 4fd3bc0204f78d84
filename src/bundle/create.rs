//! Writing a bundle (`tinyvisor bundle create`) from the images an engine has. The manifest
//! comes first in the file but needs every archive's size and digest, so the archives are
//! spooled to a file beside the output while they are hashed, then copied behind the
//! manifest and its signature. Nothing is held whole in memory.

use super::{Digest, ImageEntry, Manifest, FORMAT, MANIFEST, SIGNATURE};
use crate::engine::Engine;
use crate::tar;
use serde_json::Value;
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What `create` wrote.
#[derive(Debug)]
pub struct Created {
    pub images: usize,
    pub bytes: u64,
    /// The manifest's digest: the bundle's name in logs and in the device's records.
    pub digest: String,
}

/// The device object of a target file: a whole v3 document `{<uuid>: {...}}` is unwrapped;
/// a device object or a v2 local-mode target is taken as it is.
pub fn device_object(doc: Value) -> Value {
    let Value::Object(map) = &doc else {
        return doc;
    };
    let plain = ["local", "apps", "name", "config"]
        .iter()
        .any(|k| map.contains_key(*k));
    match map.values().next() {
        Some(inner) if !plain && map.len() == 1 && inner.get("apps").is_some() => inner.clone(),
        _ => doc,
    }
}

/// Writes the bundle of `target` (with every image its services use, read from `engine`)
/// to `out`, signed with `private_key`. `created` is the manifest's RFC 3339 time.
pub fn create(
    engine: &Engine,
    target: Value,
    private_key: &str,
    out: &Path,
    created: &str,
) -> Result<Created, String> {
    let target = device_object(target);
    let parsed = crate::compose::target::parse_local_or_device(&target)
        .map_err(|e| format!("the target is invalid: {e}"))?;
    let spool_path = with_suffix(out, ".spool");
    let part_path = with_suffix(out, ".part");
    let result = (|| {
        let mut spool = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&spool_path)
            .map_err(|e| format!("{}: {e}", spool_path.display()))?;
        let mut images = Vec::new();
        for (i, name) in super::target_images(&parsed).into_iter().enumerate() {
            images.push(spool_image(engine, &name, i, &mut spool)?);
        }
        let manifest = Manifest {
            format: FORMAT.into(),
            created: created.into(),
            target,
            images,
        };
        let manifest_raw = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
        let sig = super::sign(private_key, &manifest_raw)?;
        let bytes = assemble(
            &part_path,
            &manifest_raw,
            &sig,
            &manifest.images,
            &mut spool,
        )
        .map_err(|e| format!("{}: {e}", part_path.display()))?;
        std::fs::rename(&part_path, out).map_err(|e| format!("{}: {e}", out.display()))?;
        let mut digest = Digest::new();
        digest.update(&manifest_raw);
        Ok(Created {
            images: manifest.images.len(),
            bytes,
            digest: digest.hex(),
        })
    })();
    let _ = std::fs::remove_file(&spool_path);
    if result.is_err() {
        let _ = std::fs::remove_file(&part_path);
    }
    result
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Appends one image's archive to the spool, hashing it on the way.
fn spool_image(
    engine: &Engine,
    name: &str,
    index: usize,
    spool: &mut File,
) -> Result<ImageEntry, String> {
    let id = engine
        .inspect_image(name)
        .map_err(|e| format!("image {name}: not on this engine ({e}); pull or build it first"))?
        .id;
    let mut archive = engine
        .export_image(name)
        .map_err(|e| format!("image {name}: {e}"))?;
    let mut digest = Digest::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = archive
            .read(&mut buf)
            .map_err(|e| format!("image {name}: reading it from the engine: {e}"))?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
        spool
            .write_all(&buf[..n])
            .map_err(|e| format!("writing the spool file: {e}"))?;
        size += n as u64;
    }
    Ok(ImageEntry {
        name: name.into(),
        id,
        file: format!("images/{index}.tar"),
        size,
        sha256: digest.hex(),
    })
}

/// Writes the bundle: manifest, signature, then each archive copied from the spool (in the
/// order they were spooled). Synced before it is renamed into place. Returns its size.
fn assemble(
    path: &Path,
    manifest: &[u8],
    sig: &[u8],
    images: &[ImageEntry],
    spool: &mut File,
) -> io::Result<u64> {
    let file = File::create(path)?;
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut written = 0u64;
    for (name, data) in [(MANIFEST, manifest), (SIGNATURE, sig)] {
        tar::write_header(&mut out, name, data.len() as u64)?;
        out.write_all(data)?;
        tar::write_padding(&mut out, data.len() as u64)?;
        written += 512 + data.len().next_multiple_of(512) as u64;
    }
    spool.seek(SeekFrom::Start(0))?;
    for image in images {
        tar::write_header(&mut out, &image.file, image.size)?;
        let copied = io::copy(&mut (&mut *spool).take(image.size), &mut out)?;
        if copied != image.size {
            return Err(io::Error::other("the spool file is shorter than written"));
        }
        tar::write_padding(&mut out, image.size)?;
        written += 512 + image.size.next_multiple_of(512);
    }
    tar::write_end(&mut out)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(written + 1024)
}
