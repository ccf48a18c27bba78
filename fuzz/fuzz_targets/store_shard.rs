//! Logit store shards: header, footer and record parsing, random access and `verify`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tinyvit_core::store::{ShardFooter, ShardHeader, ShardView, FOOTER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let file = if flags & 1 == 1 {
        tinyvit_fuzz::repair_shard(rest)
    } else {
        rest.to_vec()
    };
    let _ = ShardHeader::decode(&file);
    if file.len() >= FOOTER_LEN {
        let _ = ShardFooter::decode(&file[file.len() - FOOTER_LEN..]);
    }
    let Ok(view) = ShardView::open(&file) else {
        return;
    };
    let h = *view.header();
    let verified = view.verify();
    let mut indices = vec![0u32; view.header().layout.topk()];
    let mut probs = vec![0.0f32; indices.len()];
    // Samples around both ends of the part, and one past each.
    let first = h.first_sample;
    let end = first + h.sample_count;
    for s in (first.saturating_sub(1)..end.min(first + 8)).chain(end.saturating_sub(8)..=end) {
        // Every sample of the part has its bytes in an opened shard, and no other does.
        let inside = s >= first && s < end;
        assert_eq!(view.record_bytes(s).is_ok(), inside, "{h:?}: sample {s}");
        if let Ok(r) = view.record(s) {
            let _ = (r.seed(), r.is_missing());
            let _ = r.read_into(&mut indices, &mut probs);
        }
    }
    if verified.is_ok() {
        for b in 0..h.block_count().min(16) {
            view.check_block(b)
                .expect("a verified shard has good blocks");
        }
    }
});
