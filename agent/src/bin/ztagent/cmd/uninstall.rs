//! `ztagent uninstall`: detach and unpin what the agent left under the pin directory.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::anyhow;
use ztagent::{
    api::{self as control, Reply, Request},
    kernel::datapath::{self, PinLayout},
};

pub async fn uninstall(socket: &Path, pin_path: &Path) -> anyhow::Result<ExitCode> {
    // A running agent holds these pins' maps and links and would pin them again: the pins are
    // only removed once no agent answers for them.
    if let Some(running) = agent_using(socket, pin_path).await {
        return Err(anyhow!(
            "an agent is running with the pin path {} (its control socket {} answers): stop it first, then \
             uninstall; removing the pins under a running agent would not end its enforcement",
            running.display(),
            socket.display()
        ));
    }
    let removed = datapath::uninstall(&PinLayout::new(pin_path))
        .map_err(|e| anyhow!("cannot remove the pins under {}: {e}", pin_path.display()))?;
    println!("removed {} pins under {}; enforcement detached", removed.len(), pin_path.display());
    Ok(ExitCode::SUCCESS)
}

/// The pin path of the agent answering on `socket`, when it is `pin_path`.
async fn agent_using(socket: &Path, pin_path: &Path) -> Option<PathBuf> {
    let reply = tokio::time::timeout(std::time::Duration::from_secs(5), control::call(socket, &Request::Status));
    let Ok(Ok(Reply::Status(status))) = reply.await else { return None };
    let theirs = PathBuf::from(&status.pin_path);
    let same = |a: &Path, b: &Path| a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    same(&theirs, pin_path).then_some(theirs)
}
