//! Image bookkeeping steps: saveImage, removeImage, cleanup (engine.md C.8).

use super::{Context, CurrentApp, ImageRef, Step, TargetApp};
use crate::compose::labels::UPDATE_STRATEGY;
use crate::compose::Service;

/// Is the target service's image on the device (by engine id or by name)?
pub(super) fn available(s: &Service, ctx: &Context) -> bool {
    ctx.available_images.iter().any(|i| {
        i.docker_image_id.as_deref() == Some(s.config.image.as_str()) || i.name == s.image_name
    })
}

pub(super) fn save_and_remove(
    current: &[CurrentApp],
    target: &[TargetApp],
    ctx: &Context,
) -> Vec<Step> {
    let mut steps = Vec::new();
    let targets: Vec<&Service> = target
        .iter()
        .filter(|t| !t.rejected)
        .flat_map(|t| &t.services)
        .collect();
    let wanted: Vec<ImageRef> = targets.iter().map(|s| ImageRef::for_service(s)).collect();

    // saveImage: on the engine (by reference or id) but without our record.
    for (svc, want) in targets.iter().zip(&wanted) {
        if ctx.available_images.iter().any(|i| i.same_metadata(want)) {
            continue;
        }
        let on_engine = ctx.engine_images.iter().find(|e| {
            e.references.contains(&svc.image_name)
                || (svc.config.image.starts_with("sha256:") && e.id == svc.config.image)
        });
        if let Some(e) = on_engine {
            let mut image = want.clone();
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
        // Images still to download, and the strategy of their service.
        let pending: Vec<(&Service, &ImageRef)> = targets
            .iter()
            .zip(&wanted)
            .filter(|(s, _)| !available(s, ctx))
            .map(|(s, w)| (*s, w))
            .collect();
        for img in &ctx.available_images {
            // v19 matches id+commit+service first and falls back to the id alone, which
            // makes the id the deciding test.
            let used = current
                .iter()
                .flat_map(|a| &a.services)
                .any(|c| img.docker_image_id.as_deref() == Some(c.config.image.as_str()));
            let is_target = wanted.iter().any(|w| w.same_metadata(img));
            let delta_source = pending.iter().any(|(s, w)| {
                w.app_id == img.app_id
                    && w.service_name == img.service_name
                    && s.label(UPDATE_STRATEGY).map(String::as_str) != Some("delete-then-download")
            });
            if !used && !is_target && !delta_source {
                steps.push(Step::RemoveImage { image: img.clone() });
            }
        }
        if ctx.dangling_images {
            steps.push(Step::Cleanup);
        }
    }
    steps
}
