//! Builds `fake_nvml.c` into the shared library `$OUT_DIR/libnvidia-ml.so.1`,
//! with the C compiler the `cc` crate finds (`CC`, cross-compilation settings).
//! Writes only under `$OUT_DIR`.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=fake_nvml.c");
    println!("cargo:rerun-if-changed=include/nvml.h");
    println!("cargo:rerun-if-changed=build.rs");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir = PathBuf::from(
        std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    );
    let target = out_dir.join("libnvidia-ml.so.1");
    let compiler = cc::Build::new()
        .cargo_metadata(false)
        .opt_level(2)
        .get_compiler();
    let mut command: Command = compiler.to_command();
    command
        .arg("-shared")
        .arg("-fPIC")
        .arg("-O2")
        .arg("-Wall")
        .arg("-Wextra")
        .arg("-std=gnu11")
        .arg("-I")
        .arg(manifest_dir.join("include"))
        .arg("-o")
        .arg(&target)
        .arg(manifest_dir.join("fake_nvml.c"))
        .arg("-lpthread");
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {command:?}: {e}"));
    assert!(
        status.success(),
        "building the fake NVML library failed: {command:?} exited with {status}"
    );
}
