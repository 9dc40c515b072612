//! Builds the eBPF object (crate netiso-ebpf, nightly, bpfel-unknown-none) into OUT_DIR.
//!
//! The same build aya-build runs, without its habit of forwarding every line of the nested
//! cargo as a warning: nothing is printed on success, the compiler's own output on failure.
use std::{
    env, fs,
    path::PathBuf,
    process::{exit, Command},
};

fn main() {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("../netiso-ebpf");
    // The policy code the programs call lives in netiso-common: rebuild when it changes too.
    for dir in [&ebpf, &manifest.join("../netiso-common")] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let target_dir = out.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--quiet", "--release"])
        .args(["--package", "netiso-ebpf", "--bins"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf)
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        );
    // The outer (stable) build's settings must not leak into the nested nightly one.
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(key);
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => fail(&format!(
            "running `rustup run nightly cargo` failed ({e}); run `cargo xtask bootstrap` first"
        )),
    };
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        fail("building the eBPF programs (netiso-ebpf) failed, see the compiler output above; `cargo xtask bootstrap` installs the nightly toolchain and bpf-linker it needs");
    }
    let object = target_dir.join("bpfel-unknown-none/release/netiso");
    if let Err(e) = fs::copy(&object, out.join("netiso")) {
        fail(&format!("copying {}: {e}", object.display()));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1)
}
