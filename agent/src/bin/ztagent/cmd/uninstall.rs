//! `ztagent uninstall`: detach and unpin what the agent left under the pin directory.
use std::{path::Path, process::ExitCode};

use anyhow::anyhow;
use ztagent::kernel::datapath::{self, PinLayout};

pub fn uninstall(pin_path: &Path) -> anyhow::Result<ExitCode> {
    let removed = datapath::uninstall(&PinLayout::new(pin_path))
        .map_err(|e| anyhow!("cannot remove the pins under {}: {e}", pin_path.display()))?;
    println!("removed {} pins under {}; enforcement detached", removed.len(), pin_path.display());
    Ok(ExitCode::SUCCESS)
}
