//! What the kernel enforces with no agent running (`status --offline`), read from the pins
//! alone, as `nft list ruleset` reads the kernel's tables: the revision in force (`ZT_ACTIVE`,
//! `ZT_SLOTS`), the pinned links of each interface, the packet counters and the state maps'
//! fill. Read-only: nothing is written, attached or unpinned.
use std::{fs, path::Path};

use agent_common::{SLOT_F_AUDIT, SlotConfig, counter, maps};
use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::links::{FdLink, PinnedLink},
};

use crate::{
    api::{MapStatus, OfflineStatus, PinnedInterface, PinnedLinkState},
    kernel::{counters::MapGauges, datapath::PinLayout},
};

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(
        "nothing of ztagent is pinned under {0}: no agent ran with this --pin-path, or it was uninstalled (the kernel enforces nothing from there)"
    )]
    NothingPinned(String),
    #[error("the pinned map {path} cannot be read: {message}")]
    Map { path: String, message: String },
}

/// The enforcement pinned under `pins`, as the kernel has it now.
pub fn read(pins: &PinLayout) -> Result<OfflineStatus, OfflineError> {
    let dir = pins.maps();
    if !dir.join(maps::ACTIVE_SLOT).exists() {
        return Err(OfflineError::NothingPinned(pins.root.display().to_string()));
    }
    let (revision, audit) = revision(&dir)?;
    let mut interfaces: Vec<PinnedInterface> = Vec::new();
    let mut links: Vec<_> = fs::read_dir(pins.links()).map(|d| d.flatten().collect()).unwrap_or_default();
    links.sort_by_key(fs::DirEntry::file_name);
    for entry in links {
        let Some((ingress, name)) = PinLayout::ingress_and_iface(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let state = link_state(&entry.path());
        let i = match interfaces.iter().position(|i| i.name == name) {
            Some(i) => i,
            None => {
                interfaces.push(PinnedInterface { name, ..PinnedInterface::default() });
                interfaces.len() - 1
            }
        };
        if ingress {
            interfaces[i].ingress = state;
        } else {
            interfaces[i].egress = state;
        }
    }
    let maps = MapGauges::open(&dir)
        .fill()
        .into_iter()
        .map(|m| MapStatus { map: m.map.to_owned(), entries: m.entries, capacity: m.capacity })
        .collect();
    Ok(OfflineStatus {
        pin_path: pins.root.display().to_string(),
        revision,
        mode: if audit { "audit" } else { "enforce" }.to_owned(),
        interfaces,
        counters: counters(&dir)?,
        maps,
    })
}

fn open(dir: &Path, name: &str) -> Result<MapData, OfflineError> {
    MapData::from_pin(dir.join(name)).map_err(|e| map_error(dir, name, &e))
}

fn map_error(dir: &Path, name: &str, e: &dyn std::error::Error) -> OfflineError {
    OfflineError::Map { path: dir.join(name).display().to_string(), message: crate::kernel::datapath::error_chain(e) }
}

/// The revision in force and whether its policy is in audit mode ((0, false) before any).
fn revision(dir: &Path) -> Result<(u32, bool), OfflineError> {
    let active: Array<MapData, u32> = Array::try_from(Map::Array(open(dir, maps::ACTIVE_SLOT)?))
        .map_err(|e| map_error(dir, maps::ACTIVE_SLOT, &e))?;
    let slot = match active.get(&0, 0) {
        Ok(v @ (1 | 2)) => v - 1,
        _ => return Ok((0, false)),
    };
    let slots: Array<MapData, SlotConfig> =
        Array::try_from(Map::Array(open(dir, maps::SLOTS)?)).map_err(|e| map_error(dir, maps::SLOTS, &e))?;
    let config = slots.get(&slot, 0).map_err(|e| map_error(dir, maps::SLOTS, &e))?;
    Ok((config.revision, config.flags & SLOT_F_AUDIT != 0))
}

/// The packet counters, summed over CPUs, by name.
fn counters(dir: &Path) -> Result<Vec<(String, u64)>, OfflineError> {
    let err = |e: &dyn std::error::Error| map_error(dir, maps::COUNTERS, e);
    let arr: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(open(dir, maps::COUNTERS)?)).map_err(|e| err(&e))?;
    (0..counter::COUNT)
        .map(|i| {
            let v = arr.get(&i, 0).map_err(|e| err(&e))?;
            Ok((counter::NAMES[i as usize].to_owned(), v.iter().sum()))
        })
        .collect()
}

/// A pinned link's ids and interface; None when the pin holds no link (it cannot be opened).
fn link_state(pin: &Path) -> Option<PinnedLinkState> {
    let link = FdLink::from(PinnedLink::from_pin(pin).ok()?);
    let info = link.info().ok()?;
    let ifindex = link_ifindex(info.id());
    // `link` stays open until here: its fdinfo is what `link_ifindex` reads.
    drop(link);
    Some(PinnedLinkState { link_id: info.id(), program_id: info.program_id(), ifindex })
}

/// The `ifindex` the kernel shows for link `id` in this process's fdinfo (XDP and TCX links
/// show it; 0 once the interface is gone). aya 0.14 exposes neither a link's fd nor its
/// ifindex, so the open descriptor is found by its link id.
fn link_ifindex(id: u32) -> Option<u32> {
    let id = id.to_string();
    for entry in fs::read_dir("/proc/self/fdinfo").ok()?.flatten() {
        let Ok(text) = fs::read_to_string(entry.path()) else { continue };
        let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).map(str::trim);
        if field("link_id:") == Some(id.as_str()) {
            return field("ifindex:")?.parse().ok();
        }
    }
    None
}
