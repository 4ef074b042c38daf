// torch-sys links libtorch but its rpath does not reach our final binaries, so they would
// need LD_LIBRARY_PATH to start. torch-sys declares `links = "tch"` and exports the library
// directory as DEP_TCH_LIBTORCH_LIB; bake it into every binary and test of this crate.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
}
