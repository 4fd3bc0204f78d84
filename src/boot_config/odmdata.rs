//! Jetson TX2 ODMDATA (docs/contract/device-config.md §2.5): `HOST_ODMDATA_configuration` (1..6) as
//! one byte repeated at three offsets of `<root>/dev/mmcblk0boot0`, written with the partition's
//! `force_ro` switched off around the write.

use super::{err, Backend, BootConfig, BootError, BootKeys, BootValue, Mounts};
use std::io::{Read, Seek, SeekFrom, Write};

pub struct Odmdata;

const PREFIX: &str = "HOST_ODMDATA_";
const OFFSETS: [u64; 3] = [1659, 5243, 18043];
/// The byte of each mode, mode N at index N-1.
const MODE_BYTES: [u8; 6] = [0x0, 0x1, 0x6, 0x7, 0x2, 0x3];

fn device(m: &Mounts) -> std::path::PathBuf {
    m.root.join("dev/mmcblk0boot0")
}

fn force_ro(m: &Mounts) -> std::path::PathBuf {
    m.root.join("sys/block/mmcblk0boot0/force_ro")
}

fn io(what: &str, e: std::io::Error) -> BootError {
    err(format!("ODMDataError: cannot {what}: {e}"))
}

impl BootKeys for Odmdata {
    fn name(&self) -> &'static str {
        "odmdata"
    }
    fn prefix(&self) -> &'static str {
        PREFIX
    }
    fn is_supported(&self, key: &str) -> bool {
        key == "configuration"
    }
    fn kept_when_absent(&self, key: &str) -> bool {
        key == "configuration"
    }
    fn validate(&self, target: &BootConfig) -> Result<(), BootError> {
        match target.get("configuration") {
            None => Ok(()),
            Some(BootValue::Str(v)) if matches!(v.trim().parse::<usize>(), Ok(1..=6)) => Ok(()),
            Some(v) => Err(err(format!(
                "Invalid ODMDATA configuration {:?}: must be 1 to 6",
                v.to_env()
            ))),
        }
    }
}

impl Backend for Odmdata {
    fn read(&self, m: &Mounts) -> Result<BootConfig, BootError> {
        let mut f = std::fs::File::open(device(m)).map_err(|e| io("open the boot partition", e))?;
        let mut bytes = [0u8; 3];
        for (i, off) in OFFSETS.iter().enumerate() {
            f.seek(SeekFrom::Start(*off)).map_err(|e| io("seek", e))?;
            let mut b = [0u8; 1];
            f.read_exact(&mut b).map_err(|e| io("read", e))?;
            bytes[i] = b[0];
        }
        if bytes[0] != bytes[1] || bytes[1] != bytes[2] {
            return Err(err("ODMDataError: the three ODMDATA copies differ"));
        }
        let mode = MODE_BYTES
            .iter()
            .position(|b| *b == bytes[0])
            .ok_or_else(|| {
                err(format!(
                    "ODMDataError: unknown ODMDATA byte {:#x}",
                    bytes[0]
                ))
            })?;
        let mut cfg = BootConfig::new();
        cfg.insert(
            "configuration".into(),
            BootValue::Str((mode + 1).to_string()),
        );
        Ok(cfg)
    }
    fn write(&self, m: &Mounts, target: &BootConfig) -> Result<(), BootError> {
        self.validate(target)?;
        let Some(BootValue::Str(v)) = target.get("configuration") else {
            return Ok(());
        };
        let mode: usize = v.trim().parse().map_err(|_| err("bad mode"))?;
        let byte = MODE_BYTES[mode - 1];
        std::fs::write(force_ro(m), "0").map_err(|e| io("unlock the boot partition", e))?;
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .open(device(m))
                .map_err(|e| io("open the boot partition", e))?;
            for off in OFFSETS {
                f.seek(SeekFrom::Start(off)).map_err(|e| io("seek", e))?;
                f.write_all(&[byte]).map_err(|e| io("write", e))?;
            }
            f.sync_all().map_err(|e| io("sync", e))
        })();
        let relock = std::fs::write(force_ro(m), "1").map_err(|e| io("lock the boot partition", e));
        result.and(relock)
    }
}
