//! The host's IDX parser (`host/src/data/idx.rs`, compiled in). The first byte splits the
//! input: the image file, then (when the split leaves bytes) a label file for its count.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_fuzz::idx;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let cut = rest.len().saturating_sub(usize::from(split));
    let (images, labels) = rest.split_at(cut);
    let Ok(p) = idx::parse_images(images) else {
        return;
    };
    let per = u64::from(p.height) * u64::from(p.width);
    assert!(per > 0 && per <= idx::MAX_PIXELS);
    assert_eq!(u64::from(p.count) * per, p.pixels.len() as u64);
    if let Ok(l) = idx::parse_labels(labels, p.count) {
        assert_eq!(l.len() as u64, u64::from(p.count));
    }
});
