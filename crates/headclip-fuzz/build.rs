// Embeds libtorch's folder as an rpath so the harness and its tests run without LD_LIBRARY_PATH.
fn main() {
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").unwrap_or_default();
    if !lib.is_empty() {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    }
}
