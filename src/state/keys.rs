//! The API keys the state engine keeps (docs/contract/device-api.md §1): the global key, the scoped
//! keys of services with the supervisor-api feature (made on first use), their publication for the
//! API, and their replacement (`/v1/regenerate-api-key`).

use super::apply::StateEngine;
use super::step_error::Failure;
use crate::protocol::KeyScope;
use log::warn;
use std::collections::BTreeMap;
use std::sync::Arc;

impl StateEngine {
    /// The scoped key of a service with the supervisor-api feature, made on first use.
    pub(super) fn service_api_key(&self, app_id: i64, service: &str) -> Option<String> {
        let made = self
            .db()
            .service_api_key(app_id, service, crate::encoding::random_hex_key);
        match made {
            Ok((key, created)) => {
                if created {
                    self.publish_api_keys();
                }
                Some(key)
            }
            Err(e) => {
                warn!("cannot read or create the API key of {service}: {e}");
                None
            }
        }
    }

    /// Publishes the keys the API accepts.
    pub(super) fn publish_api_keys(&self) {
        let keys = match self.db().api_keys() {
            Ok(k) => k,
            Err(e) => {
                warn!("cannot read the API keys: {e}");
                return;
            }
        };
        let keys: BTreeMap<String, KeyScope> = keys
            .into_iter()
            .map(|(k, scopes)| (k, KeyScope::from_json(&scopes)))
            .collect();
        self.set_status(|s| s.api_keys = Arc::new(keys));
    }

    /// Replaces `old` (the global key when `None`) with a new random key.
    pub(super) fn regenerate_api_key(&self, old: Option<String>) -> Result<String, Failure> {
        let current = self
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .api_secret
            .clone();
        let refused = |why: &str| Failure::Refused(why.into());
        let old = old
            .or(current)
            .ok_or_else(|| refused("no API key to replace"))?;
        let new = crate::encoding::random_hex_key()?;
        let global = self
            .db()
            .replace_api_key(&old, &new)?
            .ok_or_else(|| refused("unknown API key"))?;
        if global {
            // The report thread sends the new one to the cloud as `api_secret`.
            let key = new.clone();
            self.set_status(|s| s.api_secret = Some(key));
        }
        // The old key stops working at once.
        self.publish_api_keys();
        Ok(new)
    }
}
