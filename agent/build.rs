//! Builds the eBPF programs (crate `agent-ebpf`) for the BPF target with the nightly toolchain
//! and bpf-linker (`cargo xtask setup` installs both). With `AYA_BUILD_SKIP=1` the eBPF build is
//! skipped and an empty object stands in, so the pure userspace code can be built and unit-tested
//! anywhere; loading then fails with a clear message.
use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        // The agent's object and the benchmark's (see agent-ebpf's two binaries).
        for name in ["ztagent-ebpf", "ztbench-ebpf"] {
            let object = out_dir.join(name);
            if !object.exists() {
                fs::write(&object, [])?;
            }
        }
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        return Ok(());
    }
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../agent-ebpf");
    let root = root.to_str().expect("utf-8 path");
    aya_build::build_ebpf(
        [aya_build::Package { name: "agent-ebpf", root_dir: root, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}
