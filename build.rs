//! Link-time settings the `torch-sys` build script cannot pass on to our binaries:
//! an rpath to libtorch (so `host` runs without LD_LIBRARY_PATH) and `torch_cuda` linked with
//! `--no-as-needed` (so CUDA kernels register even though no symbol of it is referenced).
//! Also records the libtorch version for `host --version`.
use std::path::PathBuf;
use std::process::Command;

fn torch_location() -> Option<(PathBuf, String)> {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        let dir = PathBuf::from(dir);
        let version = std::fs::read_to_string(dir.join("build-version"))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        return Some((dir.join("lib"), version));
    }
    // LIBTORCH_USE_PYTORCH: ask the Python that torch-sys also asks (the active environment).
    let python = std::env::var("PYTHON_SYS_EXECUTABLE").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .args([
            "-c",
            "import os, torch; print(torch.__version__); print(os.path.join(os.path.dirname(torch.__file__), 'lib'))",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut lines = text.lines();
    let version = lines.next()?.trim().to_string();
    let lib = PathBuf::from(lines.next()?.trim());
    Some((lib, version))
}

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_USE_PYTORCH");
    println!("cargo:rerun-if-env-changed=VIRTUAL_ENV");
    println!("cargo:rerun-if-changed=build.rs");
    let Some((lib, version)) = torch_location() else {
        println!("cargo:warning=could not locate libtorch for the rpath; set LIBTORCH or LIBTORCH_USE_PYTORCH=1 with torch installed");
        println!("cargo:rustc-env=DUALIGN_LIBTORCH_VERSION=unknown");
        return;
    };
    println!("cargo:rustc-env=DUALIGN_LIBTORCH_VERSION={version}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
