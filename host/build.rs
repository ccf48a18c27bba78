//! Bakes libtorch's folder into the run path of every binary, test and bench of this package,
//! so that `tinyvit` runs from any folder without `LD_LIBRARY_PATH`. With the `dist` feature,
//! also compiles the collective-engine shim `csrc/dist.cpp` against libtorch's c10d headers.
fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB").ok();
    if let Some(dir) = &lib {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
    #[cfg(feature = "dist")]
    dist::build(lib.as_deref());
}

#[cfg(feature = "dist")]
mod dist {
    use std::path::{Path, PathBuf};

    /// Where gloo's headers are looked for when `$GLOO_INCLUDE` is not set.
    const GLOO_INCLUDE: &str = "/usr/include";

    pub fn build(lib: Option<&str>) {
        println!("cargo:rerun-if-changed=csrc/dist.cpp");
        println!("cargo:rerun-if-env-changed=GLOO_INCLUDE");
        let lib = lib.expect("torch-sys did not pass libtorch's folder (DEP_TCH_LIBTORCH_LIB)");
        let root = Path::new(lib)
            .parent()
            .expect("libtorch's lib folder has a parent");
        let include = root.join("include");
        let custom = std::env::var_os("GLOO_INCLUDE").map(PathBuf::from);
        let gloo = custom
            .clone()
            .unwrap_or_else(|| PathBuf::from(GLOO_INCLUDE));
        if !gloo.join("gloo").join("algorithm.h").is_file() {
            panic!(
                "the `dist` feature needs gloo's C++ headers (c10d's ProcessGroupGloo.hpp \
                 includes them) and {} has none: install them with \
                 `sudo apt-get install libgloo-dev` (or `cargo xtask setup`), or set \
                 $GLOO_INCLUDE to the folder holding gloo/",
                gloo.display()
            );
        }
        // The ABI torch-sys compiles its own C++ with.
        println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
        let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
        let mut b = cc::Build::new();
        b.cpp(true)
            .file("csrc/dist.cpp")
            .include(&include)
            .include(include.join("torch/csrc/api/include"));
        if let Some(dir) = &custom {
            // The system folder is searched anyway; naming it with -I would reorder it.
            b.include(dir);
        }
        b.flag("-std=c++17")
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .define("USE_C10D_GLOO", None)
            .warnings(false)
            .compile("tinyvit_dist");
    }
}
