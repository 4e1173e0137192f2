//! A small disk: a tmpfs of a given size for the agent's state or the aggregator's database,
//! filled by a scenario and grown again to give the space back.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs of a given size mounted on a directory (root only), grown on demand, unmounted when
/// dropped.
pub struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    pub fn mount(path: &Path, bytes: u64) -> Result<Self, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        super::succeed(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(path),
            &format!("cannot mount a {bytes}-byte tmpfs (root and CAP_SYS_ADMIN needed)"),
        )?;
        Ok(SmallDisk {
            path: path.to_owned(),
        })
    }

    pub fn resize(&self, bytes: u64) -> Result<(), String> {
        super::succeed(
            Command::new("mount")
                .args(["-o", &format!("remount,size={bytes}")])
                .arg(&self.path),
            "cannot grow the tmpfs",
        )
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
