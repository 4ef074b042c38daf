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
    let root = libtorch_root(lib.map(PathBuf::from));
    libtorch_version(&root);
    fused_convolutions(&root);
}

/// $LIBTORCH, or the folder above the library folder torch-sys found.
fn libtorch_root(lib: Option<PathBuf>) -> PathBuf {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .or_else(|| lib.and_then(|l| l.parent().map(PathBuf::from)))
        .expect("LIBTORCH is not set and torch-sys did not say where libtorch is")
}

/// The version of the libtorch we link and the newest TorchScript file format it reads,
/// from its own headers, for the messages that refuse a file it cannot read
/// (`GRADCAM_LIBTORCH_VERSION`, `GRADCAM_LIBTORCH_MAX_FILE_FORMAT`).
fn libtorch_version(root: &std::path::Path) {
    let include = root.join("include");
    let read = |path: PathBuf| {
        println!("cargo:rerun-if-changed={}", path.display());
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    };
    let header = read(include.join("torch/headeronly/version.h"));
    let number = |name: &str| -> u64 {
        header
            .lines()
            .find_map(|l| l.strip_prefix(&format!("#define {name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} not found in torch/headeronly/version.h"))
    };
    let version = format!(
        "{}.{}.{}",
        number("TORCH_VERSION_MAJOR"),
        number("TORCH_VERSION_MINOR"),
        number("TORCH_VERSION_PATCH")
    );
    println!("cargo:rustc-env=GRADCAM_LIBTORCH_VERSION={version}");
    let versions = read(include.join("caffe2/serialize/versions.h"));
    let max = versions
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("constexpr uint64_t kMaxSupportedFileFormatVersion =")
        })
        .map(|v| v.trim().trim_end_matches(';').trim_end_matches('L'))
        .and_then(|v| u64::from_str_radix(v.trim_start_matches("0x"), 16).ok())
        .expect("kMaxSupportedFileFormatVersion not found in caffe2/serialize/versions.h");
    println!("cargo:rustc-env=GRADCAM_LIBTORCH_MAX_FILE_FORMAT={max}");
}

/// Compiles the C++ shims, csrc/fused_conv.cpp (libtorch's fused oneDNN convolutions, see
/// src/fused.rs) and csrc/guided_relu.cpp (a custom autograd function, see
/// src/model/resnet/guided.rs), against the same libtorch headers that torch-sys compiles
/// with.
fn fused_convolutions(root: &std::path::Path) {
    println!("cargo:rerun-if-changed=csrc/fused_conv.cpp");
    println!("cargo:rerun-if-changed=csrc/guided_relu.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let include = root.join("include");
    // torch-sys's default too: the PyPI wheels since PyTorch 2.7 use the C++11 ABI.
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/fused_conv.cpp")
        .file("csrc/guided_relu.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("gradcam_fused_conv");
}
