// Embeds libtorch's folder as an rpath so tests and examples run without LD_LIBRARY_PATH, and
// tells the code where libtorch lives so CUDA can be loaded on demand.
fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    if !lib.is_empty() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
    println!("cargo:rustc-env=HEADCLIP_LIBTORCH_LIB={lib}");
}
