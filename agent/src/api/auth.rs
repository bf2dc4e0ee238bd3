//! Who may use the control socket. The socket file is created mode 0600 (root only), or 0660
//! owned by `--socket-group` so that the group's members can connect; and whatever the file's
//! permissions, the daemon checks each connection's peer credentials (SO_PEERCRED): only root
//! and members of that group are served. Anyone else gets a one-sentence refusal, and the
//! refusal is logged.
use std::{ffi::CString, fs, io, os::unix::fs::PermissionsExt, path::Path};

use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("there is no group named {0}")]
    NoSuchGroup(String),
    #[error("cannot set the owner or mode of {path}: {source}")]
    Permissions { path: String, source: io::Error },
    #[error("cannot read the caller's credentials: {0}")]
    Credentials(io::Error),
    #[error("permission denied: uid {uid} may not use this agent (only {who} may)")]
    Refused { uid: u32, who: String },
}

/// Who may connect: root, and the members of `group` if given.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub group: Option<(String, u32)>,
}

impl Access {
    /// Resolves `--socket-group NAME`.
    pub fn new(group: Option<&str>) -> Result<Access, AuthError> {
        let group = match group {
            None => None,
            Some(name) => {
                let c = CString::new(name).map_err(|_| AuthError::NoSuchGroup(name.into()))?;
                // SAFETY: getgrnam with a valid C string; the result is read at once.
                let gr = unsafe { libc::getgrnam(c.as_ptr()) };
                if gr.is_null() {
                    return Err(AuthError::NoSuchGroup(name.into()));
                }
                // SAFETY: non-null result of getgrnam.
                Some((name.to_string(), unsafe { (*gr).gr_gid }))
            }
        };
        Ok(Access { group })
    }

    /// Sets the socket file's owner and mode: 0600, or 0660 with the group.
    pub fn secure(&self, socket: &Path) -> Result<(), AuthError> {
        let err = |source| AuthError::Permissions { path: socket.display().to_string(), source };
        let mode = if let Some((_, gid)) = &self.group {
            std::os::unix::fs::chown(socket, Some(0), Some(*gid)).map_err(err)?;
            0o660
        } else {
            0o600
        };
        fs::set_permissions(socket, fs::Permissions::from_mode(mode)).map_err(err)
    }

    /// Ok, or why the peer is refused (its sentence is the reply).
    pub fn check(&self, stream: &UnixStream) -> Result<(), AuthError> {
        let cred = stream.peer_cred().map_err(AuthError::Credentials)?;
        if cred.uid() == 0 {
            return Ok(());
        }
        if let Some((_, gid)) = &self.group
            && (cred.gid() == *gid || cred.pid().is_some_and(|pid| in_group(pid, *gid)))
        {
            return Ok(());
        }
        let who = match &self.group {
            Some((name, _)) => format!("root or members of group {name}"),
            None => "root".to_string(),
        };
        Err(AuthError::Refused { uid: cred.uid(), who })
    }
}

/// Whether process `pid` has `gid` among its supplementary groups.
fn in_group(pid: i32, gid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
    })
}
