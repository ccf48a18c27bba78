//! Picks the board's memory map and passes the linker scripts.
use std::path::PathBuf;
use std::{env, fs};

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let boards: Vec<&str> = ["qemu", "nucleo-h743"]
        .into_iter()
        .filter(|b| {
            env::var_os(format!(
                "CARGO_FEATURE_{}",
                b.to_uppercase().replace('-', "_")
            ))
            .is_some()
        })
        .collect();
    let board = match boards.as_slice() {
        [one] => *one,
        _ => panic!("enable exactly one board feature: `qemu` or `nucleo-h743` (got {boards:?})"),
    };
    let script = format!("boards/{board}.x");
    fs::copy(&script, out.join("memory.x")).unwrap();
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rustc-link-arg=-Tlink.x");
    if board == "nucleo-h743" {
        println!("cargo:rustc-link-arg=-Tdefmt.x");
    }
}
