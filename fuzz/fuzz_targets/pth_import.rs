//! The host's `.pth` (torch.save zip + pickle) reader, compiled in from its source file. It
//! reads from a path, so each input goes through one temporary file.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_fuzz::pth;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("tinyvit-fuzz-{}.pth", std::process::id()));
    std::fs::write(&path, data).expect("temporary file");
    if let Ok(tensors) = pth::read(&path) {
        for t in tensors.values() {
            let n: usize = t.shape.iter().product();
            assert_eq!(n, t.values.len(), "a tensor's values fill its shape");
        }
    }
});
