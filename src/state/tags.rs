//! Device tags set through the local API (`PATCH /v2/device/tags`): kept in the database
//! (v19's `targetTags`) and published for the report thread, which sends them to the cloud.

use super::apply::StateEngine;
use super::step_error::Failure;
use std::collections::BTreeMap;
use std::sync::Arc;

impl StateEngine {
    pub(super) fn stored_tags(&self) -> BTreeMap<String, String> {
        self.db()
            .config_get("targetTags")
            .ok()
            .flatten()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Merges tags into the stored ones and publishes them for the report thread.
    pub(super) fn set_tags(&self, tags: BTreeMap<String, String>) -> Result<(), Failure> {
        let mut all = self.stored_tags();
        all.extend(tags);
        // A map of strings always serialises.
        let text = serde_json::to_string(&all).unwrap_or_default();
        self.db().config_set("targetTags", Some(&text))?;
        self.set_status(|s| s.target_tags = Arc::new(all));
        Ok(())
    }
}
