//! A bind mount for tests (needs root), undone on drop (`umount -l`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A bind mount undone on drop.
pub struct Bind(PathBuf);

impl Bind {
    pub fn new(src: &Path, dst: &Path) -> Bind {
        fs::create_dir_all(dst).unwrap();
        let st = Command::new("mount").arg("--bind").arg(src).arg(dst).status().unwrap();
        assert!(st.success(), "mount --bind {} {} (needs root)", src.display(), dst.display());
        Bind(dst.to_path_buf())
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
