use std::path::PathBuf;

fn main() {
    // torch-sys links libtorch but its rpath does not reach our final binaries, so they
    // would need LD_LIBRARY_PATH to start. torch-sys declares `links = "tch"` and exports
    // the library directory as DEP_TCH_LIBTORCH_LIB; bake it into every binary and test of
    // this crate.
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").ok();
    if let Some(dir) = &lib {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    fused_convolutions(lib.map(PathBuf::from));
}

/// Compiles csrc/fused_conv.cpp, the C++ shim to libtorch's fused oneDNN convolutions
/// (see src/fused.rs), against the same libtorch headers that torch-sys compiles with:
/// $LIBTORCH/include, or the include folder beside the library folder torch-sys found.
fn fused_convolutions(lib: Option<PathBuf>) {
    println!("cargo:rerun-if-changed=csrc/fused_conv.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let root = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .or_else(|| lib.and_then(|l| l.parent().map(PathBuf::from)))
        .expect("LIBTORCH is not set and torch-sys did not say where libtorch is");
    let include = root.join("include");
    // torch-sys's default too: the PyPI wheels since PyTorch 2.7 use the C++11 ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/fused_conv.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("gradcam_fused_conv");
}
