//! The balena API as a client: the one HTTP client of every call to it (`client.rs` over
//! `transport.rs`: our HTTP codec over TCP or rustls, kept connections; the supervisor's
//! User-Agent, auth, gzip, status/ETag/Retry-After, custom root CAs, the live request timeout)
//! and the delta server's calls (`delta.rs`). A leaf: the cloud link (polling, reports, logs)
//! and the state engine (deltas, registry tokens) both use it, and it uses neither.

pub mod client;
pub mod delta;
pub mod transport;

use crate::config::Settings;
use std::time::Duration;

/// The OS version and variant the User-Agent and reports name.
pub fn os_of(settings: &Settings) -> (Option<String>, Option<String>) {
    crate::host::os_version_and_variant(
        &settings.paths.host_os_version_path,
        settings.config_json.get_bool("developmentMode"),
    )
}

/// A client of the device's API endpoint with the supervisor's User-Agent, whose calls follow
/// the live `SUPERVISOR_API_REQUEST_TIMEOUT`.
pub fn device_client(settings: &Settings) -> client::Cloud {
    client_with(
        settings,
        client::Timeout::Live(&client::API_REQUEST_TIMEOUT_MS),
    )
}

/// The same with a fixed request timeout (the API's calls to the cloud wait less).
pub fn device_client_with_timeout(settings: &Settings, timeout: Duration) -> client::Cloud {
    client_with(settings, client::Timeout::Fixed(timeout))
}

/// The host's CA bundle, read only when custom CAs are configured (it then replaces the
/// built-in roots, which cannot be combined with others).
fn host_ca_bundle(settings: &Settings) -> Vec<u8> {
    if settings.custom_ca.is_empty() {
        return Vec::new();
    }
    let read = crate::config::ca::read_bounded;
    read(&settings.paths.root_mountpoint.join(HOST_BUNDLE))
        .or_else(|_| read(&std::path::Path::new("/").join(HOST_BUNDLE)))
        .unwrap_or_default()
}

/// Debian's and balenaOS's CA bundle, relative to a root.
const HOST_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

fn client_with(settings: &Settings, timeout: client::Timeout) -> client::Cloud {
    let (os_version, os_variant) = os_of(settings);
    client::Cloud::new(
        &settings.config_json.api_endpoint(),
        timeout,
        &client::user_agent(os_version.as_deref(), os_variant.as_deref()),
        &settings.custom_ca,
        &host_ca_bundle(settings),
    )
}
