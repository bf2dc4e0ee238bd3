//! A policy directory laid out and updated as the kubelet does a ConfigMap volume.

use std::{fs, path::Path};

use crate::harness::util::TempDir;

/// A directory laid out as the kubelet lays out a ConfigMap volume with one key, policy.yaml.
pub struct ConfigMap {
    dir: TempDir,
    versions: u32,
}

impl ConfigMap {
    pub fn new(first: &str) -> ConfigMap {
        let mut cm = ConfigMap { dir: TempDir::new(), versions: 0 };
        cm.publish(first);
        std::os::unix::fs::symlink("..data/policy.yaml", cm.path().join("policy.yaml")).unwrap();
        cm
    }

    pub fn path(&self) -> &Path {
        &self.dir.0
    }

    /// The kubelet's update: a whole new timestamped directory, a temporary symlink to it
    /// renamed over `..data` (atomic), then the old directory removed.
    pub fn publish(&mut self, text: &str) {
        let old = fs::read_link(self.path().join("..data")).ok();
        self.versions += 1;
        let ts = format!("..2026_11_28_10_{:02}_00.{}", self.versions, std::process::id());
        fs::create_dir(self.path().join(&ts)).unwrap();
        fs::write(self.path().join(&ts).join("policy.yaml"), text).unwrap();
        std::os::unix::fs::symlink(&ts, self.path().join("..data_tmp")).unwrap();
        fs::rename(self.path().join("..data_tmp"), self.path().join("..data")).unwrap();
        if let Some(old) = old {
            fs::remove_dir_all(self.path().join(old)).unwrap();
        }
    }
}
