//! `cargo xtask setup | test | demo | bench | soak`: the project's own bootstrap and the
//! commands the README promises. Every step is idempotent and quick when its work is already
//! done.
use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing need (Debian packages, nightly rust-src, bpf-linker,
    /// kubernetes-validate) and mount bpffs.
    Setup,
    /// Set up, build, and run every test, the privileged kernel tests included.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the demo: namespaces, the agent, real traffic, verdicts and rate
    /// limits, a revocation.
    Demo,
    /// Set up, build, and measure the per-packet cost of the programs (BPF_PROG_TEST_RUN).
    Bench {
        /// Arguments for ztbench (`--compare`, `--quick`, `--check`, ...; see `ztbench --help`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, build, and run the soak: mixed allowed, denied and rate-limited traffic with a
    /// policy push every second (60 s by default), then check memory, map entries and events.
    Soak {
        /// Arguments for ztsoak (e.g. `--seconds 300`; `--help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Debian packages the tests and the demo use: ip/nsenter for namespaces, ping for ICMP,
/// scapy to craft fragments, malformed and hostile frames, nmap for port scans, nftables,
/// bpftool to inspect what is loaded, xdp-tools (xdp-filter, the comparative benchmark's XDP peer),
/// ethtool (GRO on a veth and its per-queue XDP counters, for the threaded-NAPI scan test).
const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "util-linux",
    "python3-scapy",
    "nftables",
    "bpftool",
    "nmap",
    "xdp-tools",
    "ethtool",
    // Fleet distribution (issue 10): the etcd server the fleet tests start, and protoc with its
    // well-known types (google/protobuf/*.proto, in libprotobuf-dev) for etcd-client.
    // curl writes straight to etcd (its JSON gateway), past `fleet push`'s validation; openssl
    // makes the TLS test's certificates.
    "etcd-server",
    "protobuf-compiler",
    "libprotobuf-dev",
    "curl",
    "openssl",
    // Kubernetes (issue 9): the virtualenv that PyPI's kubernetes-validate is installed into.
    "python3-venv",
    // Metrics (issue 23): promtool checks a live scrape, a real prometheus server scrapes the
    // agent (each test starts its own; the package's service is kept stopped: see
    // `no_system_service`).
    "prometheus",
    // HTTP (issue 20): the server (its system service kept stopped, as prometheus's) and the
    // load generator of the request benchmark.
    "nginx",
    "wrk",
];

/// PyPI kubernetes-validate, pinned: it bundles the Kubernetes schemas of its version, so the
/// manifests' schema validation (tests deploy, k8s_netpol) runs offline.
const KUBERNETES_VALIDATE: &str = "1.37.0";

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    env::set_current_dir(&root)?;
    match cli.command {
        Cmd::Setup => setup(),
        Cmd::Test { args } => {
            setup()?;
            lint()?;
            build_release()?;
            // Unit tests, the unprivileged tests (tests/cli), then the kernel tests
            // (tests/kernel: built only with integration-tests' `privileged` feature, so that a
            // plain `cargo test` leaves them out); the kernel tests share one machine's network
            // namespaces and BPF, each test isolating itself by unique names.
            let mut cmd = Command::new(cargo());
            cmd.args(["test", "--release", "--features", "integration-tests/privileged"]).args(&args);
            cmd.env("ZTAGENT_KUBERNETES_VALIDATE", kubernetes_validate_bin());
            run(&mut cmd)
        }
        Cmd::Demo => {
            setup()?;
            build_release()?;
            run(Command::new(root.join("target/release/ztdemo")).arg(root.join("examples/policy.yaml")))
        }
        Cmd::Bench { args } => {
            setup()?;
            build_release()?;
            run(Command::new(root.join("target/release/ztbench")).args(&args))
        }
        Cmd::Soak { args } => {
            setup()?;
            build_release()?;
            run(Command::new(root.join("target/release/ztsoak")).args(&args))
        }
    }
}

/// The project's style and lints, as CI enforces them: `cargo fmt --check` (rustfmt.toml) and
/// clippy on every target of the default members, the kernel tests included, with
/// `-D warnings` (the workspace's `[workspace.lints]`).
fn lint() -> Result<()> {
    run(Command::new(cargo()).args(["fmt", "--all", "--check"]))
        .context("the code is not formatted: run `cargo fmt --all`")?;
    run(Command::new(cargo()).args([
        "clippy",
        "--release",
        "--all-targets",
        "--features",
        "integration-tests/privileged",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems (above)")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

fn cargo() -> String {
    env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn build_release() -> Result<()> {
    run(Command::new(cargo()).args(["build", "--release", "--bins"]))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn step(msg: &str) {
    eprintln!("setup: {msg}");
}

fn setup() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc_geteuid() } != 0 {
        bail!("ztagent's tests and demo load BPF programs and create network namespaces: run as root");
    }
    apt_packages()?;
    no_system_service("prometheus")?;
    no_system_service("nginx")?;
    rust_components()?;
    nightly()?;
    bpf_linker()?;
    bpffs()?;
    kubernetes_validate()?;
    Ok(())
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!("installing Debian packages {missing:?}"));
    run(Command::new("apt-get").arg("update").arg("-q"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Debian's `prometheus` and `nginx` bring services that listen (:9090, :80) once started. The
/// tests start their own servers on ports they choose and need none: the system's are stopped
/// and disabled, idempotently (nothing is done when one is neither running nor enabled). With
/// systemd as init, `systemctl disable --now`; without it (containers), the package's SysV
/// script, which stops only the pid in its own pid file, and `update-rc.d disable`.
fn no_system_service(service: &str) -> Result<()> {
    let script = Path::new("/etc/init.d").join(service);
    if Path::new("/run/systemd/system").exists() {
        let says = |verb: &str, word: &str| {
            output(Command::new("systemctl").args([verb, service])).is_some_and(|s| s.trim() == word)
        };
        if says("is-active", "active") || says("is-enabled", "enabled") {
            step(&format!("stopping and disabling the system's {service} service (the tests run their own)"));
            run(Command::new("systemctl").args(["disable", "--now", service]))?;
        }
        return Ok(());
    }
    if !script.exists() {
        return Ok(());
    }
    if Command::new(&script).arg("status").stdout(Stdio::null()).stderr(Stdio::null()).status()?.success() {
        step(&format!("stopping the system's {service} service (the tests run their own)"));
        run(Command::new(&script).arg("stop"))?;
    }
    let enabled = (1..=5).any(|level| {
        std::fs::read_dir(format!("/etc/rc{level}.d")).is_ok_and(|d| {
            d.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with('S') && name.get(3..) == Some(service)
            })
        })
    });
    if enabled {
        step(&format!("disabling the system's {service} service at boot"));
        run(Command::new("update-rc.d").args([service, "disable"]))?;
    }
    Ok(())
}

/// rustfmt and clippy for the stable toolchain (`cargo xtask test` runs both).
fn rust_components() -> Result<()> {
    let has = |tool: &str| output(Command::new(cargo()).args([tool, "--version"])).is_some();
    if !has("fmt") || !has("clippy") {
        step("adding rustfmt and clippy to the stable toolchain");
        run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    }
    Ok(())
}

/// The eBPF crate is built with nightly (`-Z build-std=core`), which needs rust-src. An
/// existing nightly is kept as it is: bpf-linker must match its LLVM.
fn nightly() -> Result<()> {
    let has_nightly = output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|l| l.lines().any(|t| t.starts_with("nightly")));
    if !has_nightly {
        step("installing a nightly toolchain with rust-src");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))?;
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly does not run")?;
    if !Path::new(&sysroot).join("lib/rustlib/src/rust/library/core").exists() {
        step("adding rust-src to nightly");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// bpf-linker built against the LLVM shared library inside the nightly toolchain (there is no
/// prebuilt one for this LLVM here). An installed bpf-linker is kept when it runs and links
/// exactly nightly's libLLVM.
fn bpf_linker() -> Result<()> {
    let vv = output(Command::new("rustc").args(["+nightly", "-vV"])).context("rustc +nightly -vV failed")?;
    let llvm = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("rustc +nightly does not say its LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default().to_string();
    let sysroot =
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context("no nightly sysroot")?;
    let libdir = Path::new(&sysroot).join("lib");
    let lib = std::fs::read_dir(&libdir)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with(&format!("libLLVM.so.{major}")))
        .with_context(|| format!("no libLLVM.so.{major}* in {}", libdir.display()))?;

    let installed = output(Command::new("sh").args(["-c", "command -v bpf-linker"]));
    if let Some(path) = installed
        && output(Command::new(&path).arg("--version")).is_some()
        && output(Command::new("readelf").args(["-d", &path])).is_some_and(|d| d.contains(&format!("[{lib}]")))
    {
        return Ok(());
    }
    // A stable directory (not /tmp): the binary records it as its runpath.
    let prefix = share_dir().join(format!("llvm-{major}"));
    let d = prefix.join("lib");
    std::fs::create_dir_all(&d)?;
    for link in ["libLLVM.so", lib.as_str()] {
        let p = d.join(link);
        let _ = std::fs::remove_file(&p);
        std::os::unix::fs::symlink(libdir.join(&lib), &p)?;
    }
    step(&format!("building bpf-linker against nightly's LLVM {llvm} (a few minutes, once)"));
    run(Command::new(cargo())
        .args(["install", "bpf-linker", "--locked", "--force", "--no-default-features", "--features"])
        .arg(format!("llvm-{major}"))
        .env("LLVM_PREFIX", &prefix))
}

fn bpffs() -> Result<()> {
    let mounted = std::fs::read_to_string("/proc/mounts")?
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.split_whitespace().nth(2) == Some("bpf"));
    if !mounted {
        step("mounting bpffs at /sys/fs/bpf");
        run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    Ok(())
}

/// Where the bootstrap keeps what it builds or installs outside the system's package manager.
fn share_dir() -> PathBuf {
    PathBuf::from(env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".local/share/ztagent")
}

/// The kubernetes-validate the tests run (tests/src/harness/k8s/cases.rs finds it here, or through
/// `ZTAGENT_KUBERNETES_VALIDATE`, which `cargo xtask test` sets).
fn kubernetes_validate_bin() -> PathBuf {
    share_dir().join("kubernetes-validate/bin/kubernetes-validate")
}

/// PyPI kubernetes-validate in a virtualenv of its own (not the system's Python, which Debian
/// keeps for its packages), reinstalled only when it is missing or another version.
fn kubernetes_validate() -> Result<()> {
    if output(Command::new(kubernetes_validate_bin()).arg("--version")).as_deref() == Some(KUBERNETES_VALIDATE) {
        return Ok(());
    }
    let venv = share_dir().join("kubernetes-validate");
    step(&format!("installing kubernetes-validate {KUBERNETES_VALIDATE} (PyPI) into {}", venv.display()));
    run(Command::new("python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .arg(format!("kubernetes-validate=={KUBERNETES_VALIDATE}")))
}
