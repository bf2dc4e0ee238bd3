//! `ztagent uninstall`: detach and unpin what the agent left under the pin directory; with
//! `--stop-agent`, stop the agent running on it first.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail};
use ztagent::{
    api::{self as control, Reply, Request},
    kernel::datapath::{self, PinLayout},
};

/// How long `--stop-agent` waits for the agent to exit (it saves its state and flushes its
/// events file first).
const STOP_WAIT: Duration = Duration::from_secs(30);

pub async fn uninstall(socket: &Path, pin_path: &Path, stop_agent: bool) -> anyhow::Result<ExitCode> {
    // A running agent holds these pins' maps and links and would pin them again: the pins are
    // only removed once no agent answers for them.
    if let Some((running, pid)) = agent_using(socket, pin_path).await {
        if !stop_agent {
            bail!(
                "an agent is running with the pin path {} (its control socket {} answers): stop it first, or give \
                 --stop-agent; removing the pins under a running agent would not end its enforcement",
                running.display(),
                socket.display()
            );
        }
        stop(pid, socket).await?;
        println!("stopped the agent (pid {pid}) answering on {}", socket.display());
    }
    let removed = datapath::uninstall(&PinLayout::new(pin_path))
        .map_err(|e| anyhow!("cannot remove the pins under {}: {e}", pin_path.display()))?;
    println!("removed {} pins under {}; enforcement detached", removed.len(), pin_path.display());
    Ok(ExitCode::SUCCESS)
}

/// The pin path of the agent answering on `socket`, when it is `pin_path`, and the agent's pid
/// (the socket's peer).
async fn agent_using(socket: &Path, pin_path: &Path) -> Option<(PathBuf, i32)> {
    let reply = tokio::time::timeout(Duration::from_secs(5), control::call(socket, &Request::Status));
    let Ok(Ok(Reply::Status(status))) = reply.await else { return None };
    let theirs = PathBuf::from(&status.pin_path);
    let same = |a: &Path, b: &Path| a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if !same(&theirs, pin_path) {
        return None;
    }
    let peer = tokio::net::UnixStream::connect(socket).await.ok()?.peer_cred().ok()?;
    Some((theirs, peer.pid()?))
}

/// Stops the agent `pid` (SIGTERM: it saves what it keeps and leaves its socket) and waits
/// for it to exit.
async fn stop(pid: i32, socket: &Path) -> anyhow::Result<()> {
    // SAFETY: kill(2) with a pid the agent's socket reported as its peer; no memory involved.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!("cannot stop the agent (pid {pid}) on {}: {}", socket.display(), std::io::Error::last_os_error());
    }
    let deadline = Instant::now() + STOP_WAIT;
    while !exited(pid) {
        if Instant::now() > deadline {
            bail!(
                "the agent (pid {pid}) on {} did not exit within {} s of SIGTERM; nothing was removed",
                socket.display(),
                STOP_WAIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Whether process `pid` is gone (or a zombie: it exited, its parent has not reaped it yet).
fn exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name in parentheses: `pid (comm) S ...`.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}
