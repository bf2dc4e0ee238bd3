//! The control socket lets no one in who doesn't belong: a user who is neither root nor in the
//! agent's --socket-group cannot push, read the policy or stream events, and is told so in one
//! sentence; where the socket's file permissions are loosened by mistake, the agent's own
//! peer-credential check still refuses, and logs it. A member of the group is served.
use std::process::{Command, Output};

use integration_tests::{Agent, Lan, TempDir, bin};

const POLICY: &str = "version: 1\nsegments:\n  web: { cidrs: [10.20.1.0/24] }\nrules: []\n";

/// `ztagent --socket S ARGS` as `nobody`, optionally with one more supplementary group.
fn as_nobody(agent: &Agent, extra_group: Option<&str>, args: &[&str]) -> Output {
    let groups = match extra_group {
        Some(g) => format!("--groups={g}"),
        None => "--clear-groups".into(),
    };
    Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", &groups, "--"])
        .arg(bin("ztagent"))
        .arg("--socket")
        .arg(&agent.socket)
        .args(args)
        .output()
        .expect("setpriv")
}

fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "nobody was served: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("permission denied"), "unclear refusal: {err}");
    assert!(err.lines().count() == 1 && !err.contains("panicked"), "not one sentence: {err}");
    err
}

#[test]
fn only_root_and_the_socket_group_are_served() {
    let lan = Lan::new(&[("10.20.2.10", "fd20:2::10")]);
    let h = &lan.hosts[0];
    let dir = TempDir::new();
    let p = dir.file("p.yaml", POLICY);
    let policy = p.to_str().unwrap();
    // A fresh group for this test; its gid is what --socket-group resolves.
    let group = integration_tests::unique("ztg");
    assert!(Command::new("groupadd").arg(&group).status().unwrap().success());
    struct Group(String);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = Command::new("groupdel").arg(&self.0).status();
        }
    }
    let _group = Group(group.clone());
    let agent = Agent::start_with(&h.ns, &[&h.iface], Some(&p), &["--socket-group", &group]);
    // The socket's temporary directory must let nobody reach the socket file itself.
    let dir_of = agent.socket.parent().unwrap();
    std::fs::set_permissions(dir_of, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // Not root, not in the group: refused by the file's permissions (0660 root:group).
    for args in [&["policy", "push", policy][..], &["policy", "get"], &["events"], &["status"]] {
        refused(&as_nobody(&agent, None, args));
    }
    // A member of the group is served.
    let out = as_nobody(&agent, Some(&group), &["policy", "get", "-o", "json"]);
    assert!(out.status.success(), "a group member was refused: {}", String::from_utf8_lossy(&out.stderr));

    // Loosened by mistake: the agent's own check still refuses, and logs it.
    std::fs::set_permissions(&agent.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let err = refused(&as_nobody(&agent, None, &["policy", "push", policy]));
    assert!(err.contains("uid 65534"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(agent.log().contains("refused a control connection"), "the refusal was not logged");
    // Nothing changed.
    let got = agent.cli(&["policy", "get", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(v["revision"], 1);
}
