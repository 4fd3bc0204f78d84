//! `tinyvisor bundle keygen|create|apply`: the command line's side of offline bundles.

use crate::http;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
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
    let size = file.metadata()?.len();
    let mut stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    // The answer comes once the bundle is imported: minutes for a large one on a slow card.
    stream.set_read_timeout(Some(Duration::from_secs(3600)))?;
    let mut headers = vec![
        ("Connection", "close".to_string()),
        ("Content-Type", "application/octet-stream".to_string()),
        ("Content-Length", size.to_string()),
    ];
    if let Some(key) = api_key {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    http::write_request_head(&mut stream, "POST", "/v2/local/bundle", &headers)?;
    let sent = io::copy(&mut file, &mut stream);
    // A refusal can come before the whole file is sent (a bad signature): read the answer
    // whatever the copy did.
    let mut reader = io::BufReader::new(stream);
    let head = match http::read_head(&mut reader) {
        Ok(head) => head,
        Err(e) => return Err(sent.err().unwrap_or(e)),
    };
    let framing = http::framing(&head, false)?;
    let raw = http::Body::new(reader, framing).read_to_end_limited(1 << 20)?;
    Ok((head.status, String::from_utf8_lossy(&raw).into_owned()))
}
