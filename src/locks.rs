//! Update locks (docs/contract/engine.md (e)): per-service lock files under
//! `<root>/tmp/balena-supervisor/services/<appId>/<serviceName>/` (`updates.lock` and legacy
//! `resin-updates.lock`), bind-mounted into the service at `/tmp/balena` and `/tmp/resin`.
//! A lock file owned by anyone but uid 65534 is the app's: it blocks updates. The supervisor
//! takes its own as uid 65534, so the app cannot take them meanwhile.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The uid (and gid) the supervisor's own lock files belong to ("nobody").
pub const SUPERVISOR_UID: u32 = 65534;
pub const LOCK_FILES: [&str; 2] = ["updates.lock", "resin-updates.lock"];

#[derive(Debug)]
pub enum LockError {
    /// An app holds a lock: the message is the real supervisor's.
    Held {
        app_id: i64,
        service: String,
    },
    Io {
        path: PathBuf,
        source: io::Error,
    },
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { app_id, service } => {
                write!(
                    f,
                    "Lockfile exists for {{ appId: {app_id}, service: {service} }}"
                )
            }
            LockError::Io { path, source } => write!(f, "lock file {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for LockError {}

/// The lock directories of one device root.
#[derive(Debug, Clone)]
pub struct Locks {
    base: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Locks {
    /// `root` is the host root as tinyvisor sees it (ROOT_MOUNTPOINT).
    pub fn new(root: &Path) -> Locks {
        Locks {
            base: root.join("tmp/balena-supervisor/services"),
        }
    }

    pub fn service_dir(&self, app_id: i64, service: &str) -> PathBuf {
        self.base.join(app_id.to_string()).join(service)
    }

    fn app_dir(&self, app_id: i64) -> PathBuf {
        self.base.join(app_id.to_string())
    }

    /// Lock files present for a service, with their owner uid.
    fn present(&self, app_id: i64, service: &str) -> Vec<(PathBuf, u32)> {
        LOCK_FILES
            .iter()
            .map(|f| self.service_dir(app_id, service).join(f))
            .filter_map(|p| fs::symlink_metadata(&p).ok().map(|m| (p, m.uid())))
            .collect()
    }

    /// Is any service of the app locked by the app itself?
    pub fn user_locked(&self, app_id: i64, services: &[String]) -> Option<String> {
        services
            .iter()
            .find(|s| {
                self.present(app_id, s)
                    .iter()
                    .any(|(_, uid)| *uid != SUPERVISOR_UID)
            })
            .cloned()
    }

    /// Takes the locks of `services` of an app. With `force` the app's own lock files are
    /// deleted and taken over. On failure, what was taken here is released again.
    pub fn take(&self, app_id: i64, services: &[String], force: bool) -> Result<(), LockError> {
        let mut created: Vec<PathBuf> = Vec::new();
        let result = (|| {
            for service in services {
                let dir = self.service_dir(app_id, service);
                fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                // Everyone may create lock files here (the app runs as any user).
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777));
                for name in LOCK_FILES {
                    let path = dir.join(name);
                    match fs::symlink_metadata(&path) {
                        Ok(m) if m.uid() == SUPERVISOR_UID => continue,
                        Ok(_) if force => remove_lock(&path).map_err(io_err(&path))?,
                        Ok(_) => {
                            return Err(LockError::Held {
                                app_id,
                                service: service.clone(),
                            })
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(LockError::Io { path, source: e }),
                    }
                    match create_lock(&path) {
                        Ok(()) => created.push(path),
                        // The app created it between our check and our create.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            return Err(LockError::Held {
                                app_id,
                                service: service.clone(),
                            })
                        }
                        Err(e) => return Err(LockError::Io { path, source: e }),
                    }
                }
            }
            Ok(())
        })();
        if result.is_err() {
            for p in created {
                let _ = fs::remove_file(p);
            }
        }
        result
    }

    /// Deletes the supervisor's lock files of an app; the app's own are left alone.
    pub fn release(&self, app_id: i64) -> Result<(), LockError> {
        for path in self.supervisor_lock_files(app_id) {
            remove_lock(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    fn supervisor_lock_files(&self, app_id: i64) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.app_dir(app_id)) else {
            return vec![];
        };
        entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .flat_map(|e| LOCK_FILES.iter().map(move |f| e.path().join(f)))
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.uid() == SUPERVISOR_UID))
            .collect()
    }

    /// Apps with supervisor lock files left over (from before a restart).
    pub fn leftover_apps(&self) -> Vec<i64> {
        let Ok(entries) = fs::read_dir(&self.base) else {
            return vec![];
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
            .filter(|id| !self.supervisor_lock_files(*id).is_empty())
            .collect()
    }
}

/// Creates a lock file as `lockfile` does: exclusively, mode 0444, content "0", owned by
/// uid/gid 65534 (needs root; without it the file stays ours and still counts as a lock).
fn create_lock(path: &Path) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(path)?;
    f.write_all(b"0")?;
    f.sync_all()?;
    if let Err(e) = std::os::unix::fs::fchown(&f, Some(SUPERVISOR_UID), Some(SUPERVISOR_UID)) {
        if e.kind() != io::ErrorKind::PermissionDenied {
            let _ = fs::remove_file(path);
            return Err(e);
        }
    }
    Ok(())
}

/// Unlocks: a file is unlinked, a directory (some tools lock with mkdir) removed.
fn remove_lock(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn user_lock(locks: &Locks, app: i64, svc: &str) -> PathBuf {
        let dir = locks.service_dir(app, svc);
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("updates.lock");
        fs::write(&p, b"").unwrap();
        // Owned by whoever runs the test; make sure it is not the supervisor's uid.
        std::os::unix::fs::chown(&p, Some(0), Some(0)).ok();
        p
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn e3_supervisor_locks_are_owned_by_nobody_read_only_and_hold_zero() {
        let dir = TempDir::new("locks");
        let locks = Locks::new(dir.path());
        locks.take(1, &names(&["main", "db"]), false).unwrap();
        for svc in ["main", "db"] {
            for f in LOCK_FILES {
                let p = locks.service_dir(1, svc).join(f);
                let m = fs::metadata(&p).unwrap();
                assert_eq!(m.permissions().mode() & 0o777, 0o444);
                assert_eq!(fs::read(&p).unwrap(), b"0");
                if nix_root() {
                    assert_eq!(m.uid(), SUPERVISOR_UID);
                }
            }
            let d = fs::metadata(locks.service_dir(1, svc)).unwrap();
            assert_eq!(d.permissions().mode() & 0o7777, 0o1777);
        }
        // Taking again is idempotent.
        locks.take(1, &names(&["main"]), false).unwrap();
        if nix_root() {
            assert_eq!(locks.leftover_apps(), vec![1]);
            locks.release(1).unwrap();
            assert!(!locks.service_dir(1, "main").join("updates.lock").exists());
            assert!(locks.leftover_apps().is_empty());
        }
    }

    fn nix_root() -> bool {
        fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false)
    }

    #[test]
    fn e3_an_app_lock_blocks_and_nothing_is_left_taken() {
        let dir = TempDir::new("locks");
        let locks = Locks::new(dir.path());
        user_lock(&locks, 2, "worker");
        let err = locks
            .take(2, &names(&["api", "worker"]), false)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Lockfile exists for { appId: 2, service: worker }"
        );
        assert!(
            !locks.service_dir(2, "api").join("updates.lock").exists(),
            "taken locks are rolled back"
        );
        assert_eq!(
            locks.user_locked(2, &names(&["api", "worker"])).as_deref(),
            Some("worker")
        );
    }

    #[test]
    fn e5_force_takes_over_app_locks() {
        let dir = TempDir::new("locks");
        let locks = Locks::new(dir.path());
        let p = user_lock(&locks, 3, "main");
        locks.take(3, &names(&["main"]), true).unwrap();
        assert_eq!(
            fs::read(&p).unwrap(),
            b"0",
            "replaced by the supervisor's lock"
        );
    }

    #[test]
    fn e6_release_keeps_the_apps_own_locks() {
        if !nix_root() {
            return;
        }
        let dir = TempDir::new("locks");
        let locks = Locks::new(dir.path());
        locks.take(4, &names(&["main"]), false).unwrap();
        let theirs = user_lock(&locks, 4, "other");
        locks.release(4).unwrap();
        assert!(theirs.exists());
        assert!(!locks.service_dir(4, "main").join("updates.lock").exists());
    }

    #[test]
    fn lock_directories_and_missing_files_unlock_cleanly() {
        let dir = TempDir::new("locks");
        let d = dir.path().join("x.lock");
        fs::create_dir_all(&d).unwrap();
        remove_lock(&d).unwrap();
        assert!(!d.exists());
        remove_lock(&d).unwrap();
    }
}
