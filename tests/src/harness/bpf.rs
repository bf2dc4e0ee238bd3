//! The datapath loaded in this process for BPF_PROG_TEST_RUN, and readers of what agents pinned.

use std::{
    fs::{self},
    path::{Path, PathBuf},
};

use crate::harness::util::{require_root, sh, unique};

/// The datapath loaded into the kernel in this process (not attached anywhere), with its pins
/// under a unique bpffs directory removed on drop: for `Program::test_run` with crafted frames.
pub struct Loaded {
    pub datapath: ztagent::kernel::datapath::Datapath,
    pub writer: ztagent::kernel::mapwriter::MapWriter,
}

impl Loaded {
    pub fn new(limits: &ztagent::kernel::datapath::Limits) -> Loaded {
        require_root();
        let pins = ztagent::kernel::datapath::PinLayout::new(PathBuf::from("/sys/fs/bpf").join(unique("zt-load-")));
        let mut datapath = match ztagent::kernel::datapath::Datapath::load(pins.clone(), limits) {
            Ok(d) => d,
            Err(e) => {
                // Maps pinned before the failure must not outlive the test.
                let _ = ztagent::kernel::datapath::uninstall(&pins);
                panic!("load the datapath: {e}");
            }
        };
        let writer = ztagent::kernel::mapwriter::MapWriter::new(&mut datapath.ebpf, limits).expect("policy maps");
        Loaded { datapath, writer }
    }

    /// Installs a policy given as YAML text.
    pub fn apply(&mut self, yaml: &str) {
        let p = ztagent::policy::parse(yaml, "test").unwrap_or_else(|d| panic!("bad test policy:\n{d}"));
        self.writer.apply(&ztagent::policy::compile(&p)).expect("apply policy");
    }

    /// Runs the program `name` (XDP or TC) once on `frame`; returns its return value.
    pub fn run(&mut self, name: &str, frame: &[u8]) -> u32 {
        self.try_run(name, frame).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {name}: {e}"))
    }

    /// As [`Loaded::run`], or the kernel's refusal to run the program on this frame.
    pub fn try_run(&mut self, name: &str, frame: &[u8]) -> Result<u32, String> {
        use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
        let opts = TestRunOptions { data_in: Some(frame), ..TestRunOptions::new() };
        let prog = self.datapath.ebpf.program_mut(name).expect("program");
        let r = match <&mut Xdp>::try_from(&mut *prog) {
            Ok(x) => x.test_run(opts),
            Err(_) => <&mut SchedClassifier>::try_from(prog).expect("XDP or TC program").test_run(opts),
        };
        r.map(|r| r.return_value).map_err(|e| ztagent::kernel::datapath::error_chain(&e))
    }

    pub fn counter(&self, name: &str) -> u64 {
        let all = self.datapath.counters().expect("counters");
        all.into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).unwrap_or_else(|| panic!("no counter {name}"))
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = ztagent::kernel::datapath::uninstall(&self.datapath.pins);
    }
}

/// The pinned links under `pins` (file names: `xdp@IFACE`, `tc-egress@IFACE`).
pub fn link_pins(pins: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(pins.join("links"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every entry of the pinned map `name` under `pins`, as (key bytes, value bytes), read by
/// bpftool (the kernel's view, not the agent's).
pub fn dump(pins: &Path, name: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let map = pins.join("maps").join(name);
    let out = sh(&["bpftool", "-j", "map", "dump", "pinned", map.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool: {e}: {out}"));
    let bytes = |b: &serde_json::Value| -> Vec<u8> {
        b.as_array()
            .unwrap_or_else(|| panic!("bpftool: no bytes in {b}"))
            .iter()
            .map(|x| u8::from_str_radix(x.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
            .collect()
    };
    v.as_array()
        .unwrap_or_else(|| panic!("bpftool: {out}"))
        .iter()
        .map(|e| (bytes(&e["key"]), bytes(&e["value"])))
        .collect()
}

/// The interface indexes that hold entries in the pinned `ZT_SOURCES` map under `pins`
/// (bpftool's dump; key bytes: prefix length (u32, host order), ifindex (big endian), address).
pub fn source_ifindexes(pins: &Path) -> Vec<u32> {
    let map = pins.join("maps").join("ZT_SOURCES");
    let out = sh(&["bpftool", "-j", "map", "dump", "pinned", map.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("bpftool: {e}: {out}"));
    let mut ids: Vec<u32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let key: Vec<u8> = e["key"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
                .collect();
            u32::from_be_bytes([key[4], key[5], key[6], key[7]])
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}
