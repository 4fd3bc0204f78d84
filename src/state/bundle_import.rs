//! Importing one offline bundle (docs/bundles.md), on the `bundle-import` thread: the head is
//! checked (signature, manifest, target), then that every image the target needs is in the
//! bundle or on the engine and that the engine has room for the new ones, then each new image
//! is streamed into `POST /images/load` while its digest is computed. The last bytes of each
//! archive are held back until the digest matches the manifest: without them the engine's
//! read of the archive fails, so a tampered image is never loaded. What a refused import did
//! load is removed; a journal file names the images being loaded, so that a start after a
//! cut removes them too (`state/bundle.rs`).

use crate::bundle::{self, Digest, Head, ImageEntry};
use crate::engine::{Engine, EngineError};
use crate::protocol::BundleError;
use crate::tar::Entries;
use log::{info, warn};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::PathBuf;

/// Bytes of each archive held back until its digest is known: the end-of-archive blocks of
/// the engine's archive, at least, so the engine cannot finish reading it before then.
const HELD_BACK: u64 = 1024;

/// What an import needs, gathered by the state engine before the thread starts.
pub(super) struct Importer {
    pub engine: Engine,
    /// The public keys of config.json `tinyvisorBundleKeys`.
    pub trusted: Vec<Vec<u8>>,
    /// Image names the `image` table records, with their engine ids.
    pub recorded: BTreeMap<String, String>,
    /// The file naming the images an import is loading (removed when it ends).
    pub journal: PathBuf,
    /// The host's root (the engine's data root is measured under it) and the data partition
    /// (measured instead when the data root is not visible there).
    pub root: PathBuf,
    pub data: PathBuf,
}

/// An imported bundle, ready to be applied.
pub(super) struct Imported {
    pub head: Head,
    /// Ids of the images this import loaded.
    pub loaded: Vec<String>,
}

/// The engine's images: ids and every reference.
struct OnEngine {
    ids: BTreeSet<String>,
    references: BTreeSet<String>,
}

fn failed(e: impl std::fmt::Display) -> BundleError {
    BundleError::Failed(e.to_string())
}

/// An engine error while loading: the engine gone is ours; an archive it cannot load is
/// the bundle's.
fn load_error(name: &str, e: EngineError) -> BundleError {
    match e {
        EngineError::Connect { .. } | EngineError::Timeout { .. } | EngineError::Io(_) => {
            BundleError::Failed(format!("image {name}: {e}"))
        }
        _ => BundleError::Refused(format!("image {name}: the engine could not load it: {e}")),
    }
}

fn cut(e: std::io::Error) -> BundleError {
    BundleError::Refused(format!("the bundle is cut short or damaged: {e}"))
}

/// Reads an archive the engine has already, checking its digest.
fn check_only<R: Read>(image: &ImageEntry, entries: &mut Entries<R>) -> Result<(), BundleError> {
    let mut digest = Digest::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = entries.read(&mut buf).map_err(cut)?;
        if n == 0 {
            return digest_matches(image, digest);
        }
        digest.update(&buf[..n]);
    }
}

fn digest_matches(image: &ImageEntry, digest: Digest) -> Result<(), BundleError> {
    let got = digest.hex();
    if got == image.sha256 {
        return Ok(());
    }
    Err(BundleError::Refused(format!(
        "image {}: its archive's SHA-256 is {got}, the signed manifest says {}",
        image.name, image.sha256
    )))
}

impl Importer {
    /// Reads, checks and loads a whole bundle from `input`.
    pub fn import(&self, input: impl Read) -> Result<Imported, BundleError> {
        let mut entries = Entries::new(input);
        let head = bundle::read_head(&mut entries, &self.trusted).map_err(BundleError::Refused)?;
        self.import_rest(head, &mut entries)
    }

    /// Loads the images of a bundle whose head has been read and checked.
    pub fn import_rest<R: Read>(
        &self,
        head: Head,
        entries: &mut Entries<R>,
    ) -> Result<Imported, BundleError> {
        let on_engine = self.engine_images()?;
        self.check_images_present(&head, &on_engine)?;
        let new: Vec<&ImageEntry> = head
            .manifest
            .images
            .iter()
            .filter(|i| !on_engine.ids.contains(&i.id))
            .collect();
        self.check_space(&new)?;
        let ids: Vec<&str> = new.iter().map(|i| i.id.as_str()).collect();
        let journal = serde_json::json!({ "digest": head.digest, "ids": ids });
        crate::fsutil::write_atomic(&self.journal, journal.to_string().as_bytes())
            .map_err(|e| failed(format!("{}: {e}", self.journal.display())))?;
        match self.load_all(&head, entries, &on_engine) {
            Ok(loaded) => Ok(Imported { head, loaded }),
            Err(e) => {
                self.remove_loaded(new.iter().map(|i| i.id.as_str()));
                let _ = std::fs::remove_file(&self.journal);
                Err(e)
            }
        }
    }

    fn engine_images(&self) -> Result<OnEngine, BundleError> {
        let images = self.engine.list_images().map_err(failed)?;
        let mut on = OnEngine {
            ids: BTreeSet::new(),
            references: BTreeSet::new(),
        };
        for image in images {
            on.references.extend(image.repo_tags);
            on.references.extend(image.repo_digests);
            on.ids.insert(image.id);
        }
        Ok(on)
    }

    /// Every image of the target is in the bundle, or on the engine already.
    fn check_images_present(&self, head: &Head, on: &OnEngine) -> Result<(), BundleError> {
        let carried: BTreeSet<&str> = head
            .manifest
            .images
            .iter()
            .map(|i| i.name.as_str())
            .collect();
        for name in bundle::target_images(&head.target) {
            let present = carried.contains(name.as_str())
                || on.references.contains(&name)
                || on.references.contains(&format!("{name}:latest"))
                || on.ids.contains(&name)
                || self
                    .recorded
                    .get(&super::preload::normalise_image_name(&name))
                    .is_some_and(|id| on.ids.contains(id));
            if !present {
                return Err(BundleError::Refused(format!(
                    "image {name} is neither in the bundle nor on the engine"
                )));
            }
        }
        Ok(())
    }

    /// Loading an archive takes about twice its size on the engine's data root at the
    /// peak (the engine unpacks it into a temporary directory, then into its layers).
    fn check_space(&self, new: &[&ImageEntry]) -> Result<(), BundleError> {
        let needed = new
            .iter()
            .fold(0u64, |sum, i| sum.saturating_add(i.size.saturating_mul(2)));
        if needed == 0 {
            return Ok(());
        }
        let root_dir = self
            .engine
            .info()
            .map(|i| i.docker_root_dir)
            .unwrap_or_default();
        let under_root = self.root.join(root_dir.trim_start_matches('/'));
        let measured = if !root_dir.is_empty() && under_root.exists() {
            under_root
        } else {
            self.data.clone()
        };
        let Some(free) = crate::host::available_bytes(&measured) else {
            warn!("cannot measure the free space of {}", measured.display());
            return Ok(());
        };
        if needed > free {
            return Err(BundleError::Refused(format!(
                "the bundle's images need {} MB free on the engine's data root ({}); {} MB are free",
                needed.div_ceil(1 << 20),
                measured.display(),
                free >> 20
            )));
        }
        Ok(())
    }

    /// Loads each new image in manifest order (images on the engine already are skipped);
    /// the archive must end after the last. Returns the ids loaded.
    fn load_all<R: Read>(
        &self,
        head: &Head,
        entries: &mut Entries<R>,
        on: &OnEngine,
    ) -> Result<Vec<String>, BundleError> {
        let mut loaded = Vec::new();
        for image in &head.manifest.images {
            match entries.next_entry().map_err(cut)? {
                Some(e) if e.name == image.file && e.size == image.size => {}
                Some(e) => {
                    return Err(BundleError::Refused(format!(
                        "{} ({} bytes) expected in the bundle, found {} ({} bytes)",
                        image.file, image.size, e.name, e.size
                    )))
                }
                None => {
                    return Err(BundleError::Refused(format!(
                        "the bundle ends before {}",
                        image.file
                    )))
                }
            }
            if on.ids.contains(&image.id) {
                // On the engine already: not loaded, but checked all the same, so that a
                // damaged bundle is refused whatever the device has.
                check_only(image, entries)?;
                continue;
            }
            self.load_one(image, entries)?;
            loaded.push(image.id.clone());
        }
        if let Some(extra) = entries.next_entry().map_err(cut)? {
            return Err(BundleError::Refused(format!(
                "unexpected entry {} after the images",
                extra.name
            )));
        }
        Ok(loaded)
    }

    /// Streams one archive into the engine, its digest checked before its last bytes go.
    fn load_one<R: Read>(
        &self,
        image: &ImageEntry,
        entries: &mut Entries<R>,
    ) -> Result<(), BundleError> {
        let name = &image.name;
        let mut load = self.engine.load_images().map_err(|e| load_error(name, e))?;
        let mut digest = Digest::new();
        let mut buf = vec![0u8; 64 * 1024];
        let held = HELD_BACK.min(image.size);
        let mut left = image.size;
        while left > held {
            let n = buf.len().min((left - held) as usize);
            entries.read_exact(&mut buf[..n]).map_err(cut)?;
            digest.update(&buf[..n]);
            load.write(&buf[..n]).map_err(|e| load_error(name, e))?;
            left -= n as u64;
        }
        let tail = &mut buf[..held as usize];
        entries.read_exact(tail).map_err(cut)?;
        digest.update(tail);
        // Dropping `load` on a mismatch closes the connection before the archive's end.
        digest_matches(image, digest)?;
        load.write(tail).map_err(|e| load_error(name, e))?;
        let references = load.finish().map_err(|e| load_error(name, e))?;
        if let Err(e) = self.engine.inspect_image(&image.id) {
            return Err(BundleError::Refused(format!(
                "image {name}: the engine loaded {references:?}, not {} ({e})",
                image.id
            )));
        }
        info!("Loaded image {name} ({}) from a bundle", image.id);
        Ok(())
    }

    /// Removes the images of `ids` that are on the engine now and that no container uses
    /// and no row of the `image` table records.
    pub fn remove_loaded<'a>(&self, ids: impl Iterator<Item = &'a str>) {
        let mut kept: BTreeSet<String> = self.recorded.values().cloned().collect();
        match self.engine.list_containers(true, &[]) {
            Ok(containers) => kept.extend(containers.into_iter().map(|c| c.image_id)),
            Err(e) => return warn!("Cannot list containers to remove a bundle's images: {e}"),
        }
        for id in ids {
            if kept.contains(id) || self.engine.inspect_image(id).is_err() {
                continue;
            }
            match self.engine.remove_image(id, true) {
                Ok(_) => info!("Removed image {id} of a bundle that was not applied"),
                // In use by a container (409): it stays.
                Err(e) => warn!("Cannot remove image {id} of a refused bundle: {e}"),
            }
        }
    }
}
