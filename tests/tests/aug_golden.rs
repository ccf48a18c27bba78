//! The augmentation against its known-answer vectors (`tests/fixtures/aug/golden.txt`), and
//! determinism across runs and threads.

use std::sync::Arc;

use tinyvit_core::aug::fnv1a64;
use tinyvit_tests::aug_golden::{fixture_dir, golden_lines, load_image, render_view};

#[test]
fn known_answers_hold() {
    let path = fixture_dir().join("golden.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let want: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let got = golden_lines();
    assert_eq!(
        want.len(),
        got.len(),
        "vector count; re-bless only after a deliberate change"
    );
    let mut bad = 0;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        if *w != g.as_str() {
            bad += 1;
            if bad <= 5 {
                eprintln!("line {i}:\n  want {w}\n  got  {g}");
            }
        }
    }
    assert_eq!(bad, 0, "{bad} vectors differ (cargo run -p tinyvit-tests --example bless_aug rewrites them, with an AUG_VERSION bump)");
}

/// The same seed renders byte-identical views in any thread, in any order, concurrently.
#[test]
fn views_are_identical_across_threads() {
    let img = Arc::new(load_image("photo:astronaut"));
    let seeds: Vec<u32> = (0..64u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    let serial: Vec<u64> = seeds
        .iter()
        .map(|&s| fnv1a64(&render_view("in1k-scratch", 40, &img, s).0))
        .collect();
    for threads in [2usize, 3, 8] {
        let mut handles = Vec::new();
        for t in 0..threads {
            let img = Arc::clone(&img);
            // Each thread takes every `threads`-th seed, walking backwards.
            let mine: Vec<(usize, u32)> = seeds
                .iter()
                .copied()
                .enumerate()
                .filter(|(i, _)| i % threads == t)
                .rev()
                .collect();
            handles.push(std::thread::spawn(move || {
                mine.into_iter()
                    .map(|(i, s)| (i, fnv1a64(&render_view("in1k-scratch", 40, &img, s).0)))
                    .collect::<Vec<_>>()
            }));
        }
        let mut parallel = vec![0u64; seeds.len()];
        for h in handles {
            for (i, hash) in h.join().expect("worker") {
                parallel[i] = hash;
            }
        }
        assert_eq!(parallel, serial, "{threads} threads");
    }
    // And distinct seeds give distinct views.
    let mut uniq = serial.clone();
    uniq.sort_unstable();
    uniq.dedup();
    assert!(uniq.len() > 60, "only {} distinct views of 64", uniq.len());
}
