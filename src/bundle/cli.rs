//! `tinyvisor bundle keygen|create|apply`: the command line's side of offline bundles.

use crate::local_api;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Writes a new key pair: `<base>.key` (the private key, mode 0600) and `<base>.pub`.
/// Returns the public key.
pub fn keygen(base: &Path) -> Result<String, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let (private, public) = super::generate_key()?;
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
    let private_path = with("key");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private_path)
        .map_err(|e| format!("{}: {e}", private_path.display()))?;
    file.write_all(format!("{private}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("{}: {e}", private_path.display()))?;
    let public_path = with("pub");
    crate::fsutil::write_atomic(&public_path, format!("{public}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", public_path.display()))?;
    Ok(public)
}

/// Sends a bundle file to the daemon on `port` (`POST /v2/local/bundle`, streamed) and
/// waits for its answer: the status and the answer's text.
pub fn apply(port: u16, bundle: &Path, api_key: Option<&str>) -> io::Result<(u16, String)> {
    let mut file = std::fs::File::open(bundle)?;
    let len = file.metadata()?.len();
    let body = local_api::Body::Stream {
        data: &mut file,
        len,
        content_type: "application/octet-stream",
    };
    // The answer comes once the bundle is imported: minutes for a large one on a slow card.
    let timeouts = (Duration::from_secs(60), Duration::from_secs(3600));
    let (status, raw) = local_api::call(port, "POST", "/v2/local/bundle", api_key, body, timeouts)?;
    Ok((status, String::from_utf8_lossy(&raw).into_owned()))
}
