//! The pin directory: where the agent pins its maps and links, bpffs under it, and removing
//! everything pinned there (`ztagent uninstall`).
use super::*;

/// Where the agent keeps its pins: `DIR/maps/<MAP>` and `DIR/links/<hook>@<iface>`.
#[derive(Clone, Debug)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PinLayout { root: root.into() }
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    /// Maps of an earlier agent that this build replaces, until the new ones are in force.
    pub(super) fn replaced(&self) -> PathBuf {
        self.root.join("replaced")
    }
    /// bpffs refuses dots in names; interface names may hold dots but never colons.
    pub(super) fn link(&self, iface: &str, hook: &str) -> PathBuf {
        self.links().join(format!("{hook}@{}", iface.replace('.', ":")))
    }
    /// The interface a link pin's file name is for (the inverse of [`PinLayout::link`]).
    pub(super) fn iface_of(file: &str) -> Option<String> {
        Self::hook_and_iface(file).map(|(_, iface)| iface)
    }
    /// Whether a link pin's file name is an ingress (XDP) link, and its interface.
    pub(crate) fn ingress_and_iface(file: &str) -> Option<(bool, String)> {
        Self::hook_and_iface(file).map(|(hook, iface)| (hook == HOOK_INGRESS, iface))
    }
    pub(super) fn hook_and_iface(file: &str) -> Option<(&str, String)> {
        let (hook, iface) = file.split_once('@')?;
        (HOOKS.contains(&hook) && !iface.is_empty()).then(|| (hook, iface.replace(':', ".")))
    }
}

/// The hooks of an enforced interface, as its link pins name them.
pub(super) const HOOK_INGRESS: &str = "xdp";
pub(super) const HOOK_EGRESS: &str = "tc-egress";
pub(super) const HOOKS: [&str; 2] = [HOOK_INGRESS, HOOK_EGRESS];

/// Mounts bpffs at /sys/fs/bpf when the pin directory lives there and nothing is mounted yet,
/// as production agents do; otherwise checks that the pin directory is on bpffs.
pub fn ensure_bpffs(pin_root: &Path) -> Result<(), DatapathError> {
    let default_mount = Path::new("/sys/fs/bpf");
    if pin_root.starts_with(default_mount) && !is_bpffs(default_mount) {
        let target = CString::new("/sys/fs/bpf").expect("no NUL");
        let fstype = CString::new("bpf").expect("no NUL");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(DatapathError::Mount { path: default_mount.into(), source: io::Error::last_os_error() });
        }
        tracing::info!("mounted bpffs at /sys/fs/bpf");
    }
    for dir in [pin_root.to_path_buf(), pin_root.join("maps"), pin_root.join("links")] {
        fs::create_dir_all(&dir).map_err(|source| DatapathError::CreateDir { path: dir.clone(), source })?;
    }
    if !is_bpffs(pin_root) {
        return Err(DatapathError::NotBpffs { path: pin_root.into() });
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else { return false };
    // SAFETY: statfs into a zeroed struct with a valid path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type as i64 == BPF_FS_MAGIC
}

/// Detaches everything the agent pinned under `pins` and removes the pins.
pub fn uninstall(pins: &PinLayout) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for dir in [pins.links(), pins.maps(), pins.replaced()] {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
        fs::remove_dir(&dir)?;
    }
    if pins.root.exists() {
        fs::remove_dir(&pins.root)?;
    }
    Ok(removed)
}
