//! The host's stable storage for [`PersistedState`]: a 32-byte file replaced atomically
//! (write, fsync, rename, fsync directory) and locked while a node uses it.

use std::borrow::ToOwned;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::string::ToString;
use std::{format, io};

use super::Error;
use crate::{Boot, NodeId, PersistedState};

/// A claimed state file. The claim (an exclusive lock on `<path>.lock`) lasts as long as this value.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    _lock: File,
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

impl StateFile {
    /// Claims `path`, reads the previous state, starts a boot and stores its lease durably before
    /// returning, so no packet number of the new boot can ever have been used before.
    pub fn open_boot(path: &Path, fresh_id: NodeId, lease_block: u64) -> Result<(StateFile, Boot), Error> {
        let fail = |problem: std::string::String| Error::StateFile { path: path.to_path_buf(), problem };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| fail(format!("cannot create directory {}: {e}", dir.display())))?;
        }
        let lock_path = with_suffix(path, ".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| fail(format!("cannot open lock file {}: {e}", lock_path.display())))?;
        lock.try_lock().map_err(|_| {
            fail("is in use by another running node; give each node its own state file (or node name)".to_string())
        })?;
        let prev = match fs::read(path) {
            Ok(bytes) => Some(
                PersistedState::decode(&bytes).map_err(|source| Error::State { path: path.to_path_buf(), source })?,
            ),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(fail(format!("cannot read: {e}"))),
        };
        let (boot, state) = Boot::resume(prev, fresh_id, lease_block)
            .map_err(|source| Error::State { path: path.to_path_buf(), source })?;
        let file = StateFile { path: path.to_path_buf(), _lock: lock };
        file.store(&state).map_err(|e| fail(format!("cannot write: {e}")))?;
        Ok((file, boot))
    }

    /// Replaces the stored state atomically and durably.
    pub fn store(&self, state: &PersistedState) -> io::Result<()> {
        let tmp = with_suffix(&self.path, ".tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&state.encode())?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
