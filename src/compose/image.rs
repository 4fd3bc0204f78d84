//! The record of an image the supervisor manages: a row of v19's `image` table, shared by the
//! planner (which images a target needs) and the database (which it stores).

use super::Service;
use serde::Serialize;

/// An image the supervisor manages (a row of the `image` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRef {
    pub name: String,
    pub app_id: i64,
    pub app_uuid: String,
    pub service_id: i64,
    pub service_name: String,
    pub image_id: i64,
    pub release_id: i64,
    pub commit: String,
    pub docker_image_id: Option<String>,
}

impl ImageRef {
    /// The image record a target service needs.
    pub fn for_service(s: &Service) -> ImageRef {
        ImageRef {
            name: s.image_name.clone(),
            app_id: s.app_id,
            app_uuid: s.app_uuid.clone(),
            service_id: s.service_id,
            service_name: s.service_name.clone(),
            image_id: s.image_id,
            release_id: s.release_id,
            commit: s.commit.clone().unwrap_or_default(),
            docker_image_id: s
                .config
                .image
                .starts_with("sha256:")
                .then(|| s.config.image.clone()),
        }
    }

    /// Same metadata, ignoring the engine id (docs/contract/engine.md C.8.2).
    pub fn same_metadata(&self, other: &ImageRef) -> bool {
        self.name == other.name
            && self.app_id == other.app_id
            && self.service_name == other.service_name
            && self.image_id == other.image_id
            && self.release_id == other.release_id
            && self.commit == other.commit
    }
}
