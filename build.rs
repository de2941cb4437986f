//! Makes binaries and tests find libtorch without LD_LIBRARY_PATH, and keeps libtorch_cuda linked.
//!
//! torch-sys (`links = "tch"`) exports the directory it linked against as `DEP_TCH_LIBTORCH_LIB`.
//! We embed it as an rpath; and because nothing references libtorch_cuda's symbols directly, the
//! linker's `--as-needed` would drop it and CUDA would silently be unavailable, so it is forced in.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
