//! Builds the eBPF object (netiso-ebpf, nightly, bpfel-unknown-none) into OUT_DIR.
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let ebpf = format!("{dir}/../netiso-ebpf");
    // The policy code the hooks call lives in netiso-common: rebuild when it changes too.
    println!("cargo:rerun-if-changed={dir}/../netiso-common");
    aya_build::build_ebpf(
        [Package {
            name: "netiso-ebpf",
            root_dir: &ebpf,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
