//! Image bookkeeping steps: saveImage, removeImage, cleanup (docs/contract/engine.md C.8).

use super::fast_hash::{set_of, FastSet};
use super::{Context, CurrentApp, DesiredApp, ImageRef, Step};
use crate::compose::labels::UPDATE_STRATEGY;
use crate::compose::Service;

/// Lookups over the available images, built once per plan so that planning stays linear in
/// the number of services.
pub(super) struct Index<'a> {
    names: FastSet<&'a str>,
    ids: FastSet<&'a str>,
}

impl<'a> Index<'a> {
    pub(super) fn new(ctx: &'a Context) -> Index<'a> {
        Index {
            names: ctx
                .available_images
                .iter()
                .map(|i| i.name.as_str())
                .collect(),
            ids: set_of(
                ctx.available_images.len(),
                ctx.available_images
                    .iter()
                    .filter_map(|i| i.docker_image_id.as_deref()),
            ),
        }
    }

    /// Is the target service's image on the device (by engine id or by name)?
    pub(super) fn available(&self, s: &Service) -> bool {
        self.ids.contains(s.config.image.as_str()) || self.names.contains(s.image_name.as_str())
    }
}

pub(super) fn save_and_remove(
    current: &[CurrentApp],
    target: &[DesiredApp],
    ctx: &Context,
    index: &Index,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let targets: Vec<&Service> = target
        .iter()
        .filter(|t| !t.rejected)
        .flat_map(|t| &t.services)
        .collect();
    // The target's image records, as keys (records are made only for images to save); each
    // available record is looked up once (several records may have the same metadata: each
    // is marked).
    let wanted: Vec<MetaKey> = targets.iter().map(|s| service_key(s)).collect();
    let wanted_keys: FastSet<MetaKey> = wanted.iter().copied().collect();
    let is_target: Vec<bool> = ctx
        .available_images
        .iter()
        .map(|img| wanted_keys.contains(&meta_key(img)))
        .collect();
    let target_records = || {
        ctx.available_images
            .iter()
            .zip(&is_target)
            .filter(|(_, target)| **target)
            .map(|(img, _)| img)
    };
    let recorded = set_of(ctx.available_images.len(), target_records().map(meta_key));
    // saveImage: on the engine (by reference or id) but without our record.
    for (svc, want) in targets.iter().zip(&wanted) {
        if recorded.contains(want) {
            continue;
        }
        let on_engine = ctx.engine_images.iter().find(|e| {
            e.references.contains(&svc.image_name)
                || (svc.config.image.starts_with("sha256:") && e.id == svc.config.image)
        });
        if let Some(e) = on_engine {
            let mut image = ImageRef::for_service(svc);
            image.docker_image_id = Some(e.id.clone());
            if !steps
                .iter()
                .any(|s| matches!(s, Step::SaveImage { image: i } if i.same_metadata(&image)))
            {
                steps.push(Step::SaveImage { image });
            }
        }
    }

    if !ctx.keep_images {
        // A record is kept while it describes the target or a running container of its own
        // release, or while its image runs and no record of the target covers that image yet.
        // So once the new release runs, the previous release's records go even when both
        // releases share the image (v19 removes them too: left behind, v19 would report the
        // old release as downloaded).
        let current_services = || current.iter().flat_map(|a| &a.services);
        let count = current_services().count();
        let in_use = set_of(count, current_services().map(|c| c.config.image.as_str()));
        let running = set_of(
            count,
            current_services().map(|c| {
                (
                    c.app_id,
                    c.service_name.as_str(),
                    c.commit.as_deref().unwrap_or_default(),
                    c.config.image.as_str(),
                )
            }),
        );
        let covered = set_of(
            ctx.available_images.len(),
            target_records().filter_map(|img| img.docker_image_id.as_deref()),
        );
        // Images still to download keep their service's previous image as a delta source.
        let delta_sources = set_of(
            targets.len(),
            targets
                .iter()
                .filter(|s| !index.available(s))
                .filter(|s| {
                    s.label(UPDATE_STRATEGY).map(String::as_str) != Some("delete-then-download")
                })
                .map(|s| (s.app_id, s.service_name.as_str())),
        );
        for (img, &is_target) in ctx.available_images.iter().zip(&is_target) {
            let id = img.docker_image_id.as_deref();
            let only_record_of_a_running_image =
                id.is_some_and(|id| in_use.contains(id) && !covered.contains(id));
            let runs = running.contains(&(
                img.app_id,
                img.service_name.as_str(),
                img.commit.as_str(),
                id.unwrap_or_default(),
            ));
            let delta_source = delta_sources.contains(&(img.app_id, img.service_name.as_str()));
            let retained = ctx.retained_images.contains(&img.name);
            if !only_record_of_a_running_image && !runs && !is_target && !delta_source && !retained
            {
                steps.push(Step::RemoveImage { image: img.clone() });
            }
        }
        if ctx.dangling_images {
            steps.push(Step::Cleanup);
        }
    }
    steps
}

/// The metadata `ImageRef::same_metadata` compares, as a hashable key.
type MetaKey<'a> = (&'a str, i64, &'a str, i64, i64, &'a str);

/// The key of the record a target service's image has (or should have).
fn service_key(s: &Service) -> MetaKey<'_> {
    (
        &s.image_name,
        s.app_id,
        &s.service_name,
        s.image_id,
        s.release_id,
        s.commit.as_deref().unwrap_or_default(),
    )
}

fn meta_key(i: &ImageRef) -> MetaKey<'_> {
    (
        &i.name,
        i.app_id,
        &i.service_name,
        i.image_id,
        i.release_id,
        &i.commit,
    )
}
