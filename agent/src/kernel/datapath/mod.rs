//! The kernel side as the agent sees it: mount bpffs, load the eBPF object with its maps pinned
//! under the pin directory, and attach the programs to interfaces, adopting links a previous
//! agent pinned (an atomic program replacement, so there is no instant without enforcement).
use std::{
    ffi::CString,
    fs, io,
    path::{Path, PathBuf},
};

use agent_common::{counter, maps, programs};
pub use aya::programs::xdp::XdpMode;

pub use crate::api::Attachment;
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, MapInfo, PerCpuArray},
    programs::{
        SchedClassifier, TcAttachType, Xdp,
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};

/// The compiled eBPF object, built by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztagent-ebpf"));
/// The benchmark's own object (reference programs, the comparative benchmark's forwarder):
/// never loaded by the agent, only by [`Datapath::load_bench`].
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ztbench-ebpf"));

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

mod pins;
use pins::{HOOK_EGRESS, HOOK_INGRESS, HOOKS};
pub use pins::{PinLayout, ensure_bpffs, uninstall};
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/ztagent";

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot mount bpffs at {path}: {source} (are you root?)")]
    Mount { path: PathBuf, source: io::Error },
    #[error("{path} is not on a bpffs file system; mount one there or pick another --pin-path")]
    NotBpffs { path: PathBuf },
    #[error("cannot create {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("this agent was built without its eBPF programs (AYA_BUILD_SKIP); rebuild it normally")]
    NoObject,
    #[error("cannot load the eBPF programs into the kernel: {0}")]
    Load(String),
    #[error("interface {iface} does not exist in this network namespace")]
    NoInterface { iface: String },
    #[error("cannot attach to {iface}: {message}")]
    Attach { iface: String, message: String },
    #[error("cannot read map {name}: {message}")]
    Map { name: &'static str, message: String },
    #[error("cannot replace the pinned map {path} (its layout changed in this build): {source}")]
    Replace { path: PathBuf, source: io::Error },
}

/// Map sizes, from the agent's configuration.
#[derive(Clone, Debug)]
pub struct Limits {
    pub hosts: u32,
    pub cidrs: u32,
    pub pairs: u32,
    pub ports: u32,
    pub conntrack: u32,
    pub frags: u32,
    pub denied: u32,
    /// Per-address rate-limit buckets (an LRU map: the oldest are evicted when full).
    pub addr_buckets: u32,
    /// The event ring buffer, in bytes (a power of two, at least a page).
    pub events_bytes: u32,
}

impl Limits {
    /// The size of each map the configuration sizes (for the ring buffer: bytes).
    fn sizes(&self) -> [(&'static str, u32); 9] {
        [
            (maps::HOSTS, self.hosts),
            (maps::CIDRS, self.cidrs),
            (maps::PAIRS, self.pairs),
            (maps::PORTS, self.ports),
            (maps::CONNTRACK, self.conntrack),
            (maps::FRAGS, self.frags),
            (maps::DENIED, self.denied),
            (maps::ADDR_BUCKETS, self.addr_buckets),
            (maps::EVENTS, self.events_bytes),
        ]
    }
}

impl Default for Limits {
    fn default() -> Self {
        // Each policy map holds two slots (the policy in force and the one being written).
        Limits {
            hosts: 262_144,
            cidrs: 262_144,
            pairs: 262_144,
            ports: 1_048_576,
            conntrack: 262_144,
            frags: 16_384,
            // A per-CPU LRU (`BPF_F_NO_COMMON_LRU`) gives each possible CPU an equal share of
            // its entries, and the packets of one interface queue are judged on one CPU: 65,536
            // per CPU (up to 4), so that a scan of 65,536 sources arriving on one CPU stays
            // cached (with half as many, every repeat of such a scan took the full policy path).
            denied: 65_536 * aya::util::nr_cpus().map_or(1, |n| n).clamp(1, 4) as u32,
            addr_buckets: 65_536,
            events_bytes: 4 << 20,
        }
    }
}

/// Attaches `$prog` through the link pinned at `$pin` by an earlier agent (updating it in place
/// to this program: no instant without enforcement), or else with `$attach` and pins the new
/// link. The two program types share no trait for this in aya, hence a macro.
macro_rules! attach_or_adopt {
    ($prog:ident, $link:ty, $pin:expr, $err:ident, $attach:expr) => {{
        let pin: PathBuf = $pin;
        let old = PinnedLink::from_pin(&pin).ok().and_then(|p| <$link>::try_from(FdLink::from(p)).ok());
        match old.map(|link| $prog.attach_to_link(link)) {
            Some(Ok(_)) => Attachment::Adopted,
            other => {
                if other.is_some() {
                    // The pinned link is stale (its interface went away): start afresh.
                    let _ = fs::remove_file(&pin);
                }
                let id = $attach.map_err(|e| $err(error_chain(&e)))?;
                let link: FdLink =
                    $prog.take_link(id).map_err(|e| $err(error_chain(&e)))?.try_into().map_err(|e: LinkError| {
                        $err(format!("the link cannot be pinned ({e}); XDP links need Linux 5.9 and TCX 6.6"))
                    })?;
                link.pin(&pin).map_err(|e| $err(error_chain(&e)))?;
                Attachment::Attached
            }
        }
    }};
}

/// The loaded programs and their maps.
pub struct Datapath {
    pub ebpf: Ebpf,
    pub pins: PinLayout,
    /// The links of the enforced interfaces, held open by their pins' paths: the pins keep
    /// enforcement after the agent is gone, these keep it while the agent runs even if the
    /// pins are removed under it, so that [`Datapath::repin`] can put them back.
    held: std::collections::HashMap<PathBuf, PinnedLink>,
    /// The maps pinned under `pins.maps()`, by name, each held through a handle of its own
    /// (the map writer and readers take theirs out of `ebpf`).
    pinned_maps: Vec<(String, MapData)>,
    changes: Changes,
    /// Committed: later attachments are not rolled back.
    started: bool,
}

/// What [`Datapath::repin`] did.
#[derive(Debug, Default)]
pub struct Repinned {
    pub restored: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, String)>,
}

/// What this start changed under the pin directory, until [`Datapath::commit`]: a start that
/// fails is rolled back ([`Datapath::rollback`]), so that it leaves the host as it found it.
#[derive(Debug, Default)]
struct Changes {
    /// Links this start created and pinned.
    links: Vec<PathBuf>,
    /// Maps this start created and pinned.
    maps: Vec<PathBuf>,
    /// Maps of an earlier agent whose layout this build changed: (set aside, original pin).
    replaced: Vec<(PathBuf, PathBuf)>,
    /// A link of an earlier agent was updated to this start's programs: from then on, this
    /// start's maps are the ones in force there, and are kept.
    adopted: bool,
    /// Directories this start created (the pin directory and its parts), innermost last.
    dirs: Vec<PathBuf>,
}

impl Changes {
    fn record(&mut self, how: Attachment, pin: PathBuf) {
        match how {
            Attachment::Attached => self.links.push(pin),
            Attachment::Adopted => self.adopted = true,
        }
    }

    fn rollback(&mut self) {
        for pin in self.links.drain(..) {
            // The pin holds the link: removing it detaches the program.
            remove_pin(&pin);
        }
        if self.adopted {
            self.commit();
            return;
        }
        for pin in self.maps.drain(..) {
            remove_pin(&pin);
        }
        for (aside, pin) in self.replaced.drain(..) {
            if let Err(e) = fs::rename(&aside, &pin) {
                tracing::error!("cannot put the pinned map {} back: {e}", pin.display());
            }
        }
        for dir in self.dirs.drain(..).rev() {
            let _ = fs::remove_dir(dir);
        }
    }

    fn commit(&mut self) {
        for (aside, _) in self.replaced.drain(..) {
            remove_pin(&aside);
        }
        *self = Changes::default();
    }
}

fn remove_pin(pin: &Path) {
    if let Err(e) = fs::remove_file(pin)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::error!("cannot remove the pin {}: {e}", pin.display());
    }
}

/// The names pinned in `dir`.
fn pinned(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// The maps that hold the policy in force: its two slots, the active index and the rate-limit
/// configs refer to each other, so they are kept or replaced together (a kept `ZT_ACTIVE`
/// pointing into a new, empty `ZT_HOSTS` would judge by half a policy).
const POLICY_MAPS: [&str; 9] = [
    maps::ACTIVE_SLOT,
    maps::SLOTS,
    maps::HOSTS,
    maps::CIDRS,
    maps::PAIRS,
    maps::PORTS,
    maps::LIMITS,
    maps::GRANT_SOURCES,
    maps::API_PORTS,
];

/// Moves aside the maps pinned by an earlier agent whose layout (type, key and value sizes,
/// capacity, flags) differs from what this build and configuration create, with the rest of
/// the policy maps if one of them differs: a new agent with a changed map starts that map
/// afresh (its state is lost; a replaced policy is installed again from the last-known-good
/// one) and keeps every other map's state. The earlier programs keep their maps until their
/// links are updated.
fn set_aside_changed_maps(
    pins: &PinLayout,
    limits: &Limits,
    moved: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), DatapathError> {
    // Left by a start that died before it committed: the maps it set aside are not in force.
    for leftover in pinned(&pins.replaced()) {
        remove_pin(&leftover);
    }
    let object = aya_obj::Object::parse(OBJECT).map_err(|e| DatapathError::Load(error_chain(&e)))?;
    let sizes = limits.sizes();
    let mut changed: Vec<&str> = Vec::new();
    for (name, def) in &object.maps {
        let Ok(info) = MapInfo::from_pin(pins.maps().join(name)) else { continue };
        let capacity = sizes.iter().find(|(n, _)| n == name).map_or(def.max_entries(), |&(_, n)| n);
        let want = (def.map_type(), def.key_size(), def.value_size(), capacity, def.map_flags());
        let kind = info.map_type().map_or(u32::MAX, |t| t as u32);
        let have = (kind, info.key_size(), info.value_size(), info.max_entries(), info.map_flags());
        if want != have {
            tracing::warn!(
                map = %name,
                "the pinned map's layout (type, key, value, capacity, flags) {have:?} differs from this agent's \
                 {want:?}: replaced by a new, empty one"
            );
            changed.push(name);
        }
    }
    if changed.iter().any(|n| POLICY_MAPS.contains(n)) {
        tracing::warn!("a policy map is replaced: all of them are, and the policy is installed again");
        let rest: Vec<&str> = POLICY_MAPS.into_iter().filter(|n| !changed.contains(n)).collect();
        changed.extend(rest);
    }
    for name in changed {
        let pin = pins.maps().join(name);
        if !pin.exists() {
            continue;
        }
        let aside = pins.replaced().join(name);
        let err = |source| DatapathError::Replace { path: pin.clone(), source };
        fs::create_dir_all(pins.replaced()).map_err(err)?;
        fs::rename(&pin, &aside).map_err(err)?;
        moved.push((aside, pin));
    }
    Ok(())
}

impl Datapath {
    /// Loads the programs; maps pinned by an earlier agent are reused, with their contents,
    /// unless their layout changed. On failure, nothing this call pinned remains.
    pub fn load(pins: PinLayout, limits: &Limits) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        let dirs = [pins.root.clone(), pins.maps(), pins.links()].into_iter().filter(|d| !d.exists()).collect();
        ensure_bpffs(&pins.root)?;
        let mut changes = Changes { dirs, ..Changes::default() };
        if let Err(e) = set_aside_changed_maps(&pins, limits, &mut changes.replaced) {
            changes.rollback();
            return Err(e);
        }
        let map_dir = pins.maps();
        let before = pinned(&map_dir);
        let loaded = Self::load_object(&map_dir, limits);
        changes.maps = pinned(&map_dir).into_iter().filter(|p| !before.contains(p)).collect();
        match loaded {
            Ok(ebpf) => {
                let pinned_maps = ebpf
                    .maps()
                    .filter_map(|(name, _)| Some((name.to_string(), MapData::from_pin(map_dir.join(name)).ok()?)))
                    .collect();
                Ok(Datapath { ebpf, pins, held: Default::default(), pinned_maps, changes, started: false })
            }
            Err(e) => {
                changes.rollback();
                Err(e)
            }
        }
    }

    fn load_object(map_dir: &Path, limits: &Limits) -> Result<Ebpf, DatapathError> {
        let mut ebpf = load_on_pins(OBJECT, map_dir, limits)?;
        let xdp: &mut Xdp = program(&mut ebpf, programs::INGRESS)?;
        xdp.load().map_err(|e| DatapathError::Load(error_chain(&e)))?;
        let guarded: &mut Xdp = program(&mut ebpf, programs::INGRESS_GUARDED)?;
        guarded.load().map_err(|e| DatapathError::Load(error_chain(&e)))?;
        let tc: &mut SchedClassifier = program(&mut ebpf, programs::EGRESS)?;
        tc.load().map_err(|e| DatapathError::Load(error_chain(&e)))?;
        // The HTTP parser: loaded, never attached; the datapath tail-calls it through these
        // arrays (pinned: enforcement without the agent keeps parsing).
        let load = |e: aya::programs::ProgramError| DatapathError::Load(error_chain(&e));
        let http: &mut Xdp = program(&mut ebpf, programs::HTTP_INGRESS)?;
        http.load().map_err(load)?;
        let xdp_fd = http.fd().map_err(load)?.try_clone().map_err(|e| DatapathError::Load(e.to_string()))?;
        let http: &mut SchedClassifier = program(&mut ebpf, programs::HTTP_EGRESS)?;
        http.load().map_err(load)?;
        let tc_fd = http.fd().map_err(load)?.try_clone().map_err(|e| DatapathError::Load(e.to_string()))?;
        for (name, fd) in [(maps::HTTP_XDP, &xdp_fd), (maps::HTTP_TC, &tc_fd)] {
            let map = ebpf.map_mut(name).ok_or_else(|| DatapathError::Map { name, message: "missing".into() })?;
            let mut array = aya::maps::ProgramArray::try_from(map)
                .map_err(|e| DatapathError::Map { name, message: e.to_string() })?;
            array.set(0, fd, 0).map_err(|e| DatapathError::Map { name, message: e.to_string() })?;
        }
        Ok(ebpf)
    }

    /// The benchmark's object, on this datapath's pinned maps (shared by name: its reference
    /// programs look up the entries the agent's programs use). Its programs are not loaded yet.
    pub fn load_bench(&self, limits: &Limits) -> Result<Ebpf, DatapathError> {
        if BENCH_OBJECT.is_empty() {
            return Err(DatapathError::NoObject);
        }
        load_on_pins(BENCH_OBJECT, &self.pins.maps(), limits)
    }

    /// The agent started: what this start pinned stays, and the maps it replaced are released.
    /// What is attached from now on (node mode) is no longer part of the start.
    pub fn commit(&mut self) {
        self.changes.commit();
        self.started = true;
    }

    /// The agent did not start: detaches and unpins what this start attached and pinned, and
    /// puts back the maps it replaced, unless an earlier agent's link already runs this start's
    /// programs (then their maps stay, as that interface's enforcement needs them).
    pub fn rollback(&mut self) {
        // Released first: removing a link's pin then detaches it.
        self.held.clear();
        self.changes.rollback();
    }

    /// Attaches ingress (XDP) and egress (TC) enforcement to `iface`, or takes over the links
    /// an earlier agent left pinned for it. `guarded`: ingress with anti-spoofing (node mode's
    /// pod interfaces).
    pub fn attach(&mut self, iface: &str, mode: XdpMode, guarded: bool) -> Result<[Attachment; 2], DatapathError> {
        let err = |message: String| DatapathError::Attach { iface: iface.into(), message };
        let c = CString::new(iface).map_err(|_| DatapathError::NoInterface { iface: iface.into() })?;
        // SAFETY: valid NUL-terminated string.
        if unsafe { libc::if_nametoindex(c.as_ptr()) } == 0 {
            return Err(DatapathError::NoInterface { iface: iface.into() });
        }

        let name = if guarded { programs::INGRESS_GUARDED } else { programs::INGRESS };
        let xdp: &mut Xdp = program(&mut self.ebpf, name)?;
        let pin = self.pins.link(iface, HOOK_INGRESS);
        let ingress = attach_or_adopt!(xdp, XdpLink, pin.clone(), err, xdp.attach(iface, mode));
        self.record(ingress, pin);
        let tc: &mut SchedClassifier = program(&mut self.ebpf, programs::EGRESS)?;
        let pin = self.pins.link(iface, HOOK_EGRESS);
        let egress =
            attach_or_adopt!(tc, SchedClassifierLink, pin.clone(), err, tc.attach(iface, TcAttachType::Egress));
        self.record(egress, pin);
        for hook in HOOKS {
            let pin = self.pins.link(iface, hook);
            match PinnedLink::from_pin(&pin) {
                Ok(link) => {
                    self.held.insert(pin, link);
                }
                Err(e) => tracing::warn!("cannot hold the link pinned at {}: {}", pin.display(), error_chain(&e)),
            }
        }
        Ok([ingress, egress])
    }

    fn record(&mut self, how: Attachment, pin: PathBuf) {
        if !self.started {
            self.changes.record(how, pin);
        }
    }

    /// Stops enforcing `iface`: its pinned links are removed (the pins hold the links, so the
    /// programs are detached; for an interface that is gone, the links are freed).
    pub fn detach(&mut self, iface: &str) {
        for hook in HOOKS {
            let pin = self.pins.link(iface, hook);
            self.held.remove(&pin);
            remove_pin(&pin);
        }
    }

    /// The pins of an interface that was renamed follow its new name (the links stay).
    pub fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        for hook in HOOKS {
            let (old, new) = (self.pins.link(from, hook), self.pins.link(to, hook));
            if old.exists() {
                fs::rename(&old, &new)?;
            }
            if let Some(link) = self.held.remove(&old) {
                self.held.insert(new, link);
            }
        }
        Ok(())
    }

    /// Removes the pinned links of interfaces that no longer exist in this network namespace
    /// (a link whose interface is gone enforces nothing): a restarted agent leaves no pins of
    /// vanished interfaces behind. `exists` tells whether an interface name is present.
    /// Returns the interfaces whose pins were removed.
    pub fn remove_vanished(&mut self, exists: impl Fn(&str) -> bool) -> Vec<String> {
        let mut gone = Vec::new();
        for pin in pinned(&self.pins.links()) {
            let Some(iface) = pin.file_name().and_then(|n| n.to_str()).and_then(PinLayout::iface_of) else { continue };
            if !exists(&iface) {
                self.held.remove(&pin);
                remove_pin(&pin);
                if !gone.contains(&iface) {
                    gone.push(iface);
                }
            }
        }
        gone
    }

    /// Pins again what vanished from the pin directory while the agent runs (removed by hand,
    /// or by `ztagent uninstall` against a running agent): the maps and links are still held
    /// by this process, so pinning them again restores what the pins promise, enforcement
    /// that outlives the agent. Returns the pins restored, and those that could not be.
    pub fn repin(&mut self) -> Repinned {
        let mut out = Repinned::default();
        let (maps_dir, links_dir) = (self.pins.maps(), self.pins.links());
        let missing_maps: Vec<&(String, MapData)> =
            self.pinned_maps.iter().filter(|(n, _)| !maps_dir.join(n).exists()).collect();
        let missing_links: Vec<PathBuf> = self.held.keys().filter(|p| !p.exists()).cloned().collect();
        if missing_maps.is_empty() && missing_links.is_empty() {
            return out;
        }
        for dir in [&self.pins.root, &maps_dir, &links_dir] {
            if let Err(e) = fs::create_dir_all(dir) {
                out.failed.push((dir.clone(), e.to_string()));
                return out;
            }
        }
        for (name, map) in missing_maps {
            let pin = maps_dir.join(name);
            match map.pin(&pin) {
                Ok(()) => out.restored.push(pin),
                Err(e) => out.failed.push((pin, error_chain(&e))),
            }
        }
        for pin in missing_links {
            let Some(link) = self.held.remove(&pin) else { continue };
            match FdLink::from(link).pin(&pin) {
                Ok(link) => {
                    self.held.insert(pin.clone(), link);
                    out.restored.push(pin);
                }
                Err(e) => out.failed.push((pin, error_chain(&e))),
            }
        }
        out
    }

    /// Packets by source segment (ids `0..segments`, world first), summed over CPUs:
    /// [passed, denied, rate limited] each.
    pub fn segment_counters(&self, segments: usize) -> Result<Vec<[u64; 3]>, DatapathError> {
        let err = |message: String| DatapathError::Map { name: maps::SEGMENT_COUNTERS, message };
        let map = self.ebpf.map(maps::SEGMENT_COUNTERS).ok_or_else(|| err("missing".into()))?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map).map_err(|e| err(e.to_string()))?;
        let read = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).map_err(|e| err(e.to_string()));
        (0..segments.min(agent_common::MAX_COUNTED_SEGMENTS as usize) as u32)
            .map(|seg| {
                let base = seg * agent_common::SEGMENT_OUTCOMES;
                Ok([
                    read(base + agent_common::SEGMENT_PASSED)?,
                    read(base + agent_common::SEGMENT_DENIED)?,
                    read(base + agent_common::SEGMENT_RATE_LIMITED)?,
                ])
            })
            .collect()
    }

    /// Packet counters by outcome, summed over CPUs, in `counter::NAMES` order.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, DatapathError> {
        let map = self
            .ebpf
            .map(maps::COUNTERS)
            .ok_or(DatapathError::Map { name: maps::COUNTERS, message: "missing".into() })?;
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)
            .map_err(|e| DatapathError::Map { name: maps::COUNTERS, message: e.to_string() })?;
        (0..counter::COUNT)
            .map(|i| {
                let v =
                    arr.get(&i, 0).map_err(|e| DatapathError::Map { name: maps::COUNTERS, message: e.to_string() })?;
                Ok((counter::NAMES[i as usize], v.iter().sum()))
            })
            .collect()
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, DatapathError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or_else(|| DatapathError::Load(format!("program {name} missing from the object")))
}

/// All the causes of an error in one line.
/// Loads `object` (its programs not yet into the kernel) with its maps sized by `limits` and
/// pinned under `map_dir`: maps pinned there already are reused.
fn load_on_pins(object: &[u8], map_dir: &Path, limits: &Limits) -> Result<Ebpf, DatapathError> {
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(map_dir);
    for (name, size) in limits.sizes() {
        loader.map_max_entries(name, size);
    }
    loader.load(object).map_err(|e| DatapathError::Load(error_chain(&e)))
}

pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
