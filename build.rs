//! Link-time settings the `torch-sys` build script cannot pass on to our binaries:
//! an rpath to libtorch (so `host` runs without LD_LIBRARY_PATH) and `torch_cuda` linked with
//! `--no-as-needed` (so CUDA kernels register even though no symbol of it is referenced).
//! Also records the libtorch version for `host --version`, and compiles `csrc/c10d_shim.cpp` (the C
//! ABI over torch's c10d process groups that `src/dist.rs` calls) and `csrc/ops_shim.cpp` (ATen's
//! fused AdamW kernel for `src/train/optim.rs`, oneDNN's linear for `src/model/layers.rs`) against
//! the wheel's headers; if either fails, the build goes on without it (distributed runs
//! unavailable; AdamW as separate tensor operations, linear layers on torch's own linear).
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
    println!("cargo:rustc-check-cfg=cfg(dualign_c10d)");
    println!("cargo:rustc-check-cfg=cfg(dualign_nccl)");
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=DUALIGN_NO_C10D");
    let shim = if std::env::var_os("DUALIGN_NO_C10D").is_some() { Err("DUALIGN_NO_C10D is set".to_string()) } else { compile_c10d_shim(&lib) };
    match shim {
        Ok(nccl) => {
            println!("cargo:rustc-cfg=dualign_c10d");
            if nccl {
                println!("cargo:rustc-cfg=dualign_nccl");
            }
        }
        Err(e) => println!("cargo:warning=distributed runs unavailable: the c10d shim did not compile: {e}"),
    }
    println!("cargo:rustc-check-cfg=cfg(dualign_ops_shim)");
    match compile_ops_shim(&lib) {
        Ok(()) => println!("cargo:rustc-cfg=dualign_ops_shim"),
        Err(e) => println!("cargo:warning=the ops shim did not compile ({e}): AdamW runs as separate tensor operations, linear layers on torch's own linear"),
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// Builds csrc/ops_shim.cpp (ATen's fused AdamW kernel and oneDNN's linear behind a C ABI) with
/// the wheel's flags.
fn compile_ops_shim(lib: &std::path::Path) -> Result<(), String> {
    let include = lib.parent().ok_or("no torch folder above lib")?.join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(1)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .warnings(false)
        .cargo_warnings(false)
        .file("csrc/ops_shim.cpp")
        .try_compile("dualign_ops")
        .map_err(|e| e.to_string())?;
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    Ok(())
}

/// Builds csrc/c10d_shim.cpp with the flags the torch wheel was built with (C++17, the new
/// libstdc++ ABI, Gloo on) and links it after libtorch_cpu, which holds c10d. With the CUDA and
/// NCCL headers beside the wheel (`nccl_headers`), the NCCL part is built too; if that does not
/// compile, the shim is built for Gloo alone. Returns whether NCCL is in.
fn compile_c10d_shim(lib: &std::path::Path) -> Result<bool, String> {
    let include = lib.parent().ok_or("no torch folder above lib")?.join("include");
    if !include.join("torch/csrc/distributed/c10d/ProcessGroupGloo.hpp").exists() {
        return Err(format!("{} has no c10d headers", include.display()));
    }
    let build = |nccl: Option<&[PathBuf]>| -> Result<(), String> {
        let mut b = cc::Build::new();
        b.cpp(true)
            .std("c++17")
            .opt_level(1)
            .define("_GLIBCXX_USE_CXX11_ABI", "1")
            .define("USE_C10D_GLOO", None)
            .define("GLOG_USE_GLOG_EXPORT", None)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .include("csrc/gloo_include")
            .flag_if_supported("-Wno-unused-parameter")
            .warnings(false)
            .cargo_warnings(false)
            .file("csrc/c10d_shim.cpp");
        if let Some(dirs) = nccl {
            b.define("USE_C10D_NCCL", None).define("USE_CUDA", None).define("DUALIGN_NCCL", None);
            for d in dirs {
                b.include(d);
            }
        }
        b.try_compile("dualign_c10d").map_err(|e| e.to_string())
    };
    println!("cargo:rerun-if-env-changed=DUALIGN_NO_NCCL");
    let nccl = match nccl_headers(lib) {
        Some(dirs) if lib.join("libtorch_cuda.so").exists() && std::env::var_os("DUALIGN_NO_NCCL").is_none() => match build(Some(&dirs)) {
            Ok(()) => true,
            Err(e) => {
                println!("cargo:warning=NCCL unavailable: the c10d shim's NCCL part did not compile ({}); building it for Gloo alone", e.lines().next().unwrap_or(""));
                false
            }
        },
        _ => false,
    };
    if !nccl {
        build(None)?;
    }
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    if nccl {
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    Ok(nccl)
}

/// The include folders the NCCL part of the shim needs, from the NVIDIA wheels beside torch:
/// the CUDA runtime headers with `crt/` and `nv/target` (PyPI `nvidia-cuda-crt`,
/// `nvidia-cuda-cccl`, which torch's own dependencies lack) and `nccl.h`; None if any is missing.
fn nccl_headers(lib: &std::path::Path) -> Option<Vec<PathBuf>> {
    let nvidia = lib.parent()?.parent()?.join("nvidia");
    let cuda = ["cu13", "cu12"].iter().map(|v| nvidia.join(v).join("include")).find(|d| d.join("cuda_runtime_api.h").exists())?;
    let nccl = nvidia.join("nccl/include");
    // The folders (which exist), so that installing the headers later rebuilds the shim.
    println!("cargo:rerun-if-changed={}", cuda.display());
    if nccl.exists() {
        println!("cargo:rerun-if-changed={}", nccl.display());
    }
    for (dir, file) in [(&cuda, "crt/host_defines.h"), (&cuda, "nv/target"), (&nccl, "nccl.h")] {
        if !dir.join(file).exists() {
            return None;
        }
    }
    Some(vec![cuda.clone(), cuda.join("cccl"), nccl])
}
