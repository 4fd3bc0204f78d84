//! Offline bundles in the state engine (docs/bundles.md). An upload (`POST
//! /v2/local/bundle`) or a look into `$DATA_MOUNTPOINT/bundles/` (at start, on `POST
//! /v1/update`) starts one import at a time on the `bundle-import` thread
//! (`bundle_import.rs`); its result arrives on a channel the loop waits on beside its
//! commands. An imported bundle's images are recorded in the `image` table and its target is
//! stored as the device's target of the current mode, then the bundle is recorded as applied
//! so that a scan does not apply it again. On a managed device the cloud's next answer
//! decides: the same releases change nothing, others replace the bundle's.

use super::apply::StateEngine;
use super::bundle_import::{Imported, Importer};
use super::run_loop::LoopState;
use crate::bundle::Head;
use crate::compose::target::TargetState;
use crate::protocol::{BundleApplied, BundleError, TargetNotSet, Upload};
use crate::tar::Entries;
use crossbeam_channel::{Receiver, Sender};
use log::{info, warn};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Files a directory scan looks at, at most.
const MAX_FILES: usize = 64;
/// The extension of bundle files in the directory.
const EXTENSION: &str = "tvb";

type Reply = Sender<Result<BundleApplied, BundleError>>;

/// The state engine's side of bundle imports.
pub(super) struct Bundles {
    /// Finished imports and scans; the loop waits on it with its commands.
    pub done: Receiver<Finished>,
    done_tx: Sender<Finished>,
    /// An import or scan is running, with the uploader waiting for its answer (if any).
    running: Option<Option<Reply>>,
    /// The target was last set by this bundle (its digest): the cloud's next target decides.
    pub in_force: Option<String>,
}

impl Bundles {
    pub fn new() -> Bundles {
        let (done_tx, done) = crossbeam_channel::bounded(1);
        Bundles {
            done,
            done_tx,
            running: None,
            in_force: None,
        }
    }
}

/// What an import or scan thread hands back.
pub(super) struct Finished {
    /// "upload" or the bundle file.
    source: String,
    /// `None`: a scan found nothing new.
    result: Option<Result<Imported, BundleError>>,
    /// Digests of older bundles a scan checked and left for a newer one.
    superseded: Vec<String>,
}

impl StateEngine {
    fn importer(&self) -> Importer {
        let recorded = self
            .db()
            .images()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| Some((r.name, r.docker_image_id?)))
            .collect();
        Importer {
            engine: self.engine.clone(),
            trusted: self.settings.config_json.bundle_keys(),
            recorded,
            journal: journal_path(&self.settings.paths.database_path),
            root: self.settings.paths.root_mountpoint.clone(),
            data: self.settings.paths.data_mountpoint.clone(),
        }
    }

    /// Starts importing an uploaded bundle; the reply comes when it is applied or refused.
    pub(super) fn import_bundle(&mut self, body: Upload, reply: Reply) {
        if self.bundles.running.is_some() {
            let _ = reply.send(Err(BundleError::Busy));
            return;
        }
        let importer = self.importer();
        let job = move || Finished {
            source: "upload".into(),
            result: Some(importer.import(body)),
            superseded: Vec::new(),
        };
        self.start_bundle_job(job, Some(reply));
    }

    /// Looks for bundles not applied yet in `$DATA_MOUNTPOINT/bundles/` and imports the
    /// newest that checks out.
    pub(super) fn scan_bundles(&mut self) {
        if self.bundles.running.is_some() {
            return;
        }
        let files = bundle_files(&self.settings.paths.data_mountpoint.join("bundles"));
        if files.is_empty() {
            return;
        }
        // Without the record of what was applied, applying nothing is the safe choice: an
        // old bundle could undo the cloud's newer target.
        let done = match self.db().bundles_done() {
            Ok(done) => done,
            Err(e) => return warn!("Bundles not looked for: cannot read their record: {e}"),
        };
        let importer = self.importer();
        self.start_bundle_job(move || scan(&importer, files, &done), None);
    }

    fn start_bundle_job(
        &mut self,
        job: impl FnOnce() -> Finished + Send + 'static,
        reply: Option<Reply>,
    ) {
        let tx = self.bundles.done_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("bundle-import".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = tx.send(job());
            });
        match spawned {
            Ok(_) => self.bundles.running = Some(reply),
            Err(e) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(BundleError::Failed(format!(
                        "cannot start the import: {e}"
                    ))));
                }
            }
        }
    }

    /// An import or scan ended: apply what it imported, answer the uploader.
    pub(super) fn bundle_finished(&mut self, finished: Finished, l: &mut LoopState) {
        let reply = self.bundles.running.take().flatten();
        let now = crate::logs::now_ms();
        for digest in &finished.superseded {
            if let Err(e) = self
                .db()
                .record_bundle(digest, "superseded", &finished.source, now)
            {
                warn!("cannot record bundle {digest}: {e}");
            }
        }
        let Some(result) = finished.result else {
            return;
        };
        let outcome = result.and_then(|imported| self.apply_bundle(imported, &finished.source, l));
        match &outcome {
            Ok(applied) => crate::logs::event(
                format!(
                    "Applied bundle {} ({}): {}",
                    short(&applied.digest),
                    finished.source,
                    releases_text(applied)
                ),
                false,
            ),
            Err(e) => {
                crate::logs::event(format!("Bundle {} not applied: {e}", finished.source), true)
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(outcome);
        }
    }

    /// Records the imported images, stores the bundle's target as the device's and the
    /// bundle as applied.
    fn apply_bundle(
        &mut self,
        imported: Imported,
        source: &str,
        l: &mut LoopState,
    ) -> Result<BundleApplied, BundleError> {
        let Imported { head, loaded } = imported;
        self.record_bundle_images(&head)?;
        let releases = head
            .target
            .apps
            .iter()
            .filter_map(|(uuid, app)| Some((uuid.clone(), app.release.as_ref()?.commit.clone())))
            .collect();
        let mode_source = self.source();
        self.store_target(head.target, &mode_source, false, l)
            .map_err(|e| match e {
                TargetNotSet::Refused(m) => BundleError::Refused(m),
                TargetNotSet::Storage(m) => BundleError::Failed(m),
            })?;
        let recorded =
            self.db()
                .record_bundle(&head.digest, "applied", source, crate::logs::now_ms());
        if let Err(e) = recorded {
            // Applied all the same; a later scan would apply it again, which changes nothing.
            warn!("cannot record bundle {}: {e}", head.digest);
        }
        let _ = std::fs::remove_file(journal_path(&self.settings.paths.database_path));
        l.due = std::time::Instant::now();
        self.bundles.in_force = Some(head.digest.clone());
        self.set_status(|s| s.bundles_applied += 1);
        Ok(BundleApplied {
            digest: head.digest,
            releases,
            loaded: loaded.len(),
        })
    }

    /// An `image` row for each service of the bundle's target whose image the bundle
    /// carries, with the engine id from the manifest (a name with a digest is not restored by
    /// a load: the row is how the planner finds it).
    fn record_bundle_images(&self, head: &Head) -> Result<(), BundleError> {
        let ids: std::collections::BTreeMap<&str, &str> = head
            .manifest
            .images
            .iter()
            .map(|i| (i.name.as_str(), i.id.as_str()))
            .collect();
        let db = self.db();
        for app in head.target.apps.values() {
            let Some(rel) = &app.release else { continue };
            for (name, svc) in &rel.services {
                let Some(id) = ids.get(svc.image.as_str()) else {
                    continue;
                };
                let row = super::preload::image_row(app, rel, name, Some(id.to_string()));
                db.upsert_image(&row).map_err(|e| {
                    BundleError::Failed(format!("cannot record image {}: {e}", svc.image))
                })?;
            }
        }
        Ok(())
    }

    /// At start: images an import was loading when the device stopped, and that nothing
    /// records or uses since, are removed.
    pub(super) fn clean_interrupted_import(&self) {
        let journal = journal_path(&self.settings.paths.database_path);
        let Ok(raw) = std::fs::read(&journal) else {
            return;
        };
        let ids: Vec<String> = serde_json::from_slice::<serde_json::Value>(&raw)
            .ok()
            .and_then(|v| serde_json::from_value(v.get("ids")?.clone()).ok())
            .unwrap_or_default();
        info!("A bundle import was cut short: removing the images it was loading");
        self.importer()
            .remove_loaded(ids.iter().map(String::as_str));
        let _ = std::fs::remove_file(&journal);
    }
}

/// Where an import names the images it is loading: beside the database.
fn journal_path(database: &Path) -> PathBuf {
    database.with_file_name("tinyvisor-bundle-import.json")
}

/// The `*.tvb` files of `dir`, by name (at most [`MAX_FILES`]).
fn bundle_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == EXTENSION) && p.is_file())
        .take(MAX_FILES)
        .collect();
    files.sort();
    files
}

/// The scan on the import thread: checks the head of every file, imports the newest bundle
/// not applied yet (by its manifest's `created`) and names the older ones as superseded.
fn scan(importer: &Importer, files: Vec<PathBuf>, done: &BTreeSet<String>) -> Finished {
    let mut fresh: Vec<(PathBuf, Head)> = Vec::new();
    for path in files {
        let head = std::fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| {
                crate::bundle::read_head(
                    &mut Entries::new(std::io::BufReader::new(f)),
                    &importer.trusted,
                )
            });
        match head {
            Ok(head) if done.contains(&head.digest) => {}
            Ok(head) => fresh.push((path, head)),
            Err(e) => {
                crate::logs::event(format!("Bundle {} not applied: {e}", path.display()), true)
            }
        }
    }
    fresh.sort_by(|a, b| a.1.manifest.created.cmp(&b.1.manifest.created));
    let Some((newest, _)) = fresh.pop() else {
        return Finished {
            source: "scan".into(),
            result: None,
            superseded: Vec::new(),
        };
    };
    let result = std::fs::File::open(&newest)
        .map_err(|e| BundleError::Failed(format!("{}: {e}", newest.display())))
        .and_then(|f| importer.import(std::io::BufReader::with_capacity(64 * 1024, f)));
    Finished {
        source: newest.display().to_string(),
        result: Some(result),
        superseded: fresh.into_iter().map(|(_, h)| h.digest).collect(),
    }
}

/// Logs what the first target after a bundle does to it (the cloud decides).
pub(super) fn note_target_after_bundle(
    digest: &str,
    next: &TargetState,
    current: Option<&TargetState>,
) {
    let commits = |t: &TargetState| -> Vec<(String, Option<String>)> {
        t.apps
            .iter()
            .map(|(uuid, a)| (uuid.clone(), a.release.as_ref().map(|r| r.commit.clone())))
            .collect()
    };
    if current.is_some_and(|c| commits(c) == commits(next)) {
        info!(
            "The new target has the releases of bundle {}: nothing changes",
            short(digest)
        );
    } else {
        crate::logs::event(
            format!(
                "The new target replaces the releases of bundle {}",
                short(digest)
            ),
            false,
        );
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn releases_text(applied: &BundleApplied) -> String {
    let list: Vec<String> = applied
        .releases
        .iter()
        .map(|(app, commit)| format!("app {app} release {commit}"))
        .collect();
    format!("{}; {} image(s) loaded", list.join(", "), applied.loaded)
}
