//! The logit store through its host API, without a teacher: round trip, random access, sharded
//! == unsharded, crash + resume == uninterrupted, corruption and mismatch errors.

use std::path::{Path, PathBuf};

use tinyvit_core::aug;
use tinyvit_core::store::{RecordLayout, ValueEncoding, FORMAT_VERSION, HEADER_LEN};
use tinyvit_host::data::Fingerprint;
use tinyvit_host::store::{
    self, epoch_dir, part_file_name, LogitStore, Manifest, Opened, ShardWriter, TeacherInfo,
};

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tinyvit-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn manifest(len: u64, parts: u32, topk: u16, values: ValueEncoding) -> Manifest {
    Manifest {
        format_version: FORMAT_VERSION,
        key_version: tinyvit_host::store::manifest::KEY_VERSION,
        aug_version: aug::AUG_VERSION,
        aug_preset: "light".into(),
        aug: aug::preset("light").unwrap(),
        run_seed: 7,
        topk,
        num_classes: 100,
        values,
        records_per_block: 16,
        epochs: 2,
        parts,
        batch_size: 8,
        teacher: TeacherInfo {
            kind: "synthetic".into(),
            file: "none".into(),
            sha256: "0".repeat(64),
            input_size: 32,
            channels: 1,
            mean: [0.5; 3],
            std: [0.5; 3],
        },
        dataset: Fingerprint {
            len,
            sha256: "ab".repeat(32),
        },
        data_spec: "synthetic".into(),
    }
}

/// The synthetic teacher: record (epoch, i) is a pure function of its position.
fn record(epoch: u32, i: u64, k: usize) -> (u32, Vec<u32>, Vec<f32>) {
    let seed = aug::sample_seed(7, epoch, i);
    let idx = (0..k as u32)
        .map(|j| (i as u32 * 7 + j * 13 + epoch) % 100)
        .collect();
    let p = (0..k)
        .map(|j| 0.5 / (j as f32 + 1.0) * ((i % 5) as f32 + 1.0) / 5.0)
        .collect();
    (seed, idx, p)
}

/// Writes every epoch of part `part`, stopping (as if killed) after `stop_after` records of
/// epoch 0 when given; returns whether it finished.
fn write_part(dir: &Path, m: &Manifest, part: u32, resume: bool, stop_after: Option<u64>) -> bool {
    store::create_or_check(dir, m, part).unwrap();
    for e in 0..m.epochs {
        let mut w = match ShardWriter::open(dir, m, e, part, resume).unwrap() {
            Opened::Done(_) => continue,
            Opened::Writer(w) => w,
        };
        let mut written = 0;
        while w.next_sample() < w.end_sample() {
            let i = w.next_sample();
            if stop_after == Some(written) {
                return false; // dropped without finish: a kill
            }
            let (seed, idx, p) = record(e, i, usize::from(m.topk));
            if i % 11 == 3 {
                w.push_missing(seed).unwrap();
            } else {
                w.push(seed, &idx, &p).unwrap();
            }
            written += 1;
        }
        w.finish().unwrap();
    }
    true
}

fn part_path(dir: &Path, e: u32, p: u32, n: u32) -> PathBuf {
    epoch_dir(dir, e).join(part_file_name(p, n))
}

#[test]
fn round_trip_and_random_access() {
    for values in [ValueEncoding::F16, ValueEncoding::Sqrt8] {
        let dir = tmpdir(&format!("rt-{values:?}"));
        let m = manifest(100, 1, 10, values);
        assert!(write_part(&dir, &m, 0, false, None));
        let s = LogitStore::open(&dir).unwrap();
        assert_eq!(s.epochs(), vec![0, 1]);
        assert!(s.verify().is_empty(), "{:?}", s.verify());
        // Random order, both epochs.
        let mut x = 12345u64;
        for _ in 0..500 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (e, i) = ((x >> 40) as u32 % 2, (x >> 20) % 100);
            let r = s.record(e, i).unwrap();
            let (seed, idx, p) = record(e, i, 10);
            assert_eq!(r.seed(), seed);
            assert_eq!(r.is_missing(), i % 11 == 3);
            if !r.is_missing() {
                for k in 0..10 {
                    assert_eq!(r.index(k), idx[k]);
                    // f16: half an ulp (2^-11 relative); sqrt8: the documented bound.
                    let tol = match values {
                        ValueEncoding::F16 => p[k] / 2048.0,
                        _ => p[k].sqrt() / 255.0 + 4e-6,
                    };
                    assert!((r.prob(k) - p[k]).abs() <= tol, "{} vs {}", r.prob(k), p[k]);
                }
            }
        }
        assert!(s.record(0, 100).is_err());
        assert!(s.record(2, 0).is_err());
    }
}

#[test]
fn sharded_equals_unsharded_byte_for_byte() {
    let whole = tmpdir("whole");
    let parts = tmpdir("parts");
    let m1 = manifest(150, 1, 10, ValueEncoding::F16);
    let m3 = manifest(150, 3, 10, ValueEncoding::F16);
    assert!(write_part(&whole, &m1, 0, false, None));
    for p in [2, 0, 1] {
        assert!(write_part(&parts, &m3, p, false, None));
    }
    let (a, b) = (
        LogitStore::open(&whole).unwrap(),
        LogitStore::open(&parts).unwrap(),
    );
    for e in 0..2 {
        let w = std::fs::read(part_path(&whole, e, 0, 1)).unwrap();
        let mut joined = Vec::new();
        for p in 0..3 {
            let f = std::fs::read(part_path(&parts, e, p, 3)).unwrap();
            joined.extend_from_slice(&f[HEADER_LEN..f.len() - 32]);
        }
        assert!(
            joined == w[HEADER_LEN..w.len() - 32],
            "epoch {e}: record blocks differ"
        );
        for i in 0..150 {
            assert_eq!(
                a.record(e, i).unwrap().bytes(),
                b.record(e, i).unwrap().bytes()
            );
        }
    }
    assert!(b.verify().is_empty());
}

#[test]
fn crash_then_resume_equals_uninterrupted() {
    let clean = tmpdir("clean");
    let m = manifest(100, 1, 10, ValueEncoding::F16);
    assert!(write_part(&clean, &m, 0, false, None));
    for stop in [0u64, 5, 16, 37, 99] {
        let dir = tmpdir(&format!("crash-{stop}"));
        assert!(!write_part(&dir, &m, 0, false, Some(stop)));
        // A torn write: half a block of garbage after the last complete block.
        let tmp = part_path(&dir, 0, 0, 1).with_extension("tvl.tmp");
        let mut bytes = std::fs::read(&tmp).unwrap();
        bytes.extend(std::iter::repeat_n(0xA5, 300));
        std::fs::write(&tmp, &bytes).unwrap();
        // Without --resume nothing is overwritten.
        let e = ShardWriter::open(&dir, &m, 0, 0, false).err().unwrap();
        assert!(format!("{e:#}").contains("--resume"), "{e:#}");
        // The reader does not see the unfinished epoch.
        assert!(!Path::new(&part_path(&dir, 0, 0, 1)).exists());
        assert!(write_part(&dir, &m, 0, true, None));
        for e in 0..2 {
            assert_eq!(
                std::fs::read(part_path(&dir, e, 0, 1)).unwrap(),
                std::fs::read(part_path(&clean, e, 0, 1)).unwrap(),
                "stop {stop}, epoch {e}"
            );
        }
    }
}

#[test]
fn flipped_byte_is_located_by_verify_and_reader() {
    let dir = tmpdir("flip");
    let m = manifest(100, 1, 10, ValueEncoding::F16);
    assert!(write_part(&dir, &m, 0, false, None));
    let path = part_path(&dir, 1, 0, 1);
    let mut bytes = std::fs::read(&path).unwrap();
    let rec = RecordLayout::new(10, 100, ValueEncoding::F16)
        .unwrap()
        .record_len();
    // Sample 37 sits in block 2 (samples 32..48).
    let off = HEADER_LEN + 2 * (16 * rec + 4) + 5 * rec + 9;
    bytes[off] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let s = LogitStore::open(&dir).unwrap();
    let faults = s.verify();
    assert_eq!(faults.len(), 1, "{faults:?}");
    for needle in [
        "epoch-0001/part-0000-of-0001.tvl",
        "epoch 1",
        "samples 32..48",
        "block 2",
    ] {
        assert!(faults[0].contains(needle), "{needle} not in {}", faults[0]);
    }
    let err = format!("{:#}", s.record(1, 40).err().unwrap());
    assert!(
        err.contains("samples 32..48") && err.contains("epoch 1"),
        "{err}"
    );
    // Other blocks and epochs still read.
    s.record(1, 31).unwrap();
    s.record(0, 40).unwrap();
}

#[test]
fn truncated_and_missing_parts_are_clear_errors() {
    let dir = tmpdir("trunc");
    let m = manifest(100, 2, 10, ValueEncoding::F16);
    assert!(write_part(&dir, &m, 0, false, None));
    // Part 1 never written: epochs are incomplete, reading names the missing file.
    let s = LogitStore::open(&dir).unwrap();
    assert!(s.epochs().is_empty());
    let err = format!("{:#}", s.record(0, 5).err().unwrap());
    assert!(
        err.contains("part-0001-of-0002.tvl") && err.contains("incomplete"),
        "{err}"
    );
    assert!(!s.verify().is_empty());
    assert!(write_part(&dir, &m, 1, false, None));
    assert_eq!(LogitStore::open(&dir).unwrap().epochs(), vec![0, 1]);
    // A truncated closed part fails at open, naming the file.
    let path = part_path(&dir, 1, 1, 2);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
    let err = format!("{:#}", LogitStore::open(&dir).err().unwrap());
    assert!(
        err.contains("epoch-0001/part-0001-of-0002.tvl") && err.contains("bytes"),
        "{err}"
    );
}

#[test]
fn mismatched_settings_are_refused() {
    let dir = tmpdir("mismatch");
    let m = manifest(100, 1, 10, ValueEncoding::F16);
    assert!(write_part(&dir, &m, 0, false, None));
    // Another K or another dataset: the writer names the field and both values.
    let mut k5 = m.clone();
    k5.topk = 5;
    let err = format!("{:#}", store::create_or_check(&dir, &k5, 0).err().unwrap());
    assert!(err.contains("topk: store has 10, now 5"), "{err}");
    let mut other = m.clone();
    other.dataset.len = 99;
    let err = format!(
        "{:#}",
        store::create_or_check(&dir, &other, 0).err().unwrap()
    );
    assert!(err.contains("dataset.len: store has 100, now 99"), "{err}");
    // The reader checks dataset, K and classes on request.
    let fp = Fingerprint {
        len: 100,
        sha256: "cd".repeat(32),
    };
    let err = format!(
        "{:#}",
        LogitStore::open_for(&dir, &fp, None, None).err().unwrap()
    );
    assert!(err.contains("dataset mismatch"), "{err}");
    let err = format!(
        "{:#}",
        LogitStore::open_for(&dir, &m.dataset, Some(5), None)
            .err()
            .unwrap()
    );
    assert!(err.contains("top-10") && err.contains("top-5"), "{err}");
    let err = format!(
        "{:#}",
        LogitStore::open_for(&dir, &m.dataset, None, Some(10))
            .err()
            .unwrap()
    );
    assert!(err.contains("100 classes"), "{err}");
    LogitStore::open_for(&dir, &m.dataset, Some(10), Some(100)).unwrap();
    // A store from another AUG_VERSION cannot be replayed.
    let mpath = dir.join(store::MANIFEST_FILE);
    let text = std::fs::read_to_string(&mpath).unwrap();
    let bumped = text.replace(
        &format!("\"aug_version\": {}", aug::AUG_VERSION),
        &format!("\"aug_version\": {}", aug::AUG_VERSION + 1),
    );
    assert_ne!(text, bumped);
    std::fs::write(&mpath, bumped).unwrap();
    let err = format!("{:#}", LogitStore::open(&dir).err().unwrap());
    assert!(err.contains("AUG_VERSION"), "{err}");
    // A store of format version 1 (8-bit values rounded ties up) is refused, saying why.
    let old = text.replace(
        &format!("\"format_version\": {FORMAT_VERSION}"),
        "\"format_version\": 1",
    );
    assert_ne!(text, old);
    std::fs::write(&mpath, old).unwrap();
    let err = format!("{:#}", LogitStore::open(&dir).err().unwrap());
    assert!(
        err.contains("format version 1") && err.contains("write the store again"),
        "{err}"
    );
    // A shard copied from another store fails on its store key.
    std::fs::write(&mpath, &text).unwrap();
    let dir2 = tmpdir("mismatch2");
    let mut m2 = m.clone();
    m2.run_seed = 8;
    assert!(write_part(&dir2, &m2, 0, false, None));
    std::fs::copy(part_path(&dir2, 0, 0, 1), part_path(&dir, 0, 0, 1)).unwrap();
    let err = format!("{:#}", LogitStore::open(&dir).err().unwrap());
    assert!(err.contains("another store"), "{err}");
}

#[test]
fn overhead_is_below_one_percent_at_k10() {
    // Fashion-MNIST-sized epoch, default block size, K = 10: headers + checksums + footer.
    let layout = RecordLayout::new(10, 1000, ValueEncoding::F16).unwrap();
    let h = tinyvit_core::store::ShardHeader::new(layout, 1024, 0, 0, 1, 60_000, 1).unwrap();
    let bare = 60_000 * 44;
    let overhead = (h.file_len() - bare) as f64 / bare as f64;
    assert!(overhead < 0.01, "{overhead}");
    assert_eq!(h.file_len(), 80 + 60_000 * 44 + 59 * 4 + 32);
}

#[test]
fn verify_lists_every_damaged_part_and_exits_one() {
    let dir = tmpdir("verify-all");
    let m = manifest(100, 3, 10, ValueEncoding::F16);
    for p in 0..3 {
        assert!(write_part(&dir, &m, p, false, None));
    }
    let bin = env!("CARGO_BIN_EXE_tinyvit");
    let run = || {
        std::process::Command::new(bin)
            .args(["logits", "verify"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let clean = run();
    assert_eq!(clean.status.code(), Some(0), "{clean:?}");
    assert!(store::verify_dir(&dir).unwrap().is_empty());
    // Three damaged parts: a flipped record byte (epoch 0, part 1: samples 48..96, the
    // flip in its block 1 = samples 64..80), a truncated file (epoch 1, part 0) and a
    // damaged header (epoch 1, part 2).
    let rec = RecordLayout::new(10, 100, ValueEncoding::F16)
        .unwrap()
        .record_len();
    let flip = part_path(&dir, 0, 1, 3);
    let mut b = std::fs::read(&flip).unwrap();
    b[HEADER_LEN + (16 * rec + 4) + 3 * rec + 2] ^= 0x40;
    std::fs::write(&flip, b).unwrap();
    let cut = part_path(&dir, 1, 0, 3);
    let b = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &b[..b.len() - 9]).unwrap();
    let head = part_path(&dir, 1, 2, 3);
    let mut b = std::fs::read(&head).unwrap();
    b[17] ^= 0x01;
    std::fs::write(&head, b).unwrap();

    let faults = store::verify_dir(&dir).unwrap();
    assert_eq!(faults.len(), 3, "{faults:#?}");
    for (f, needles) in faults.iter().zip([
        [
            "epoch-0000/part-0001-of-0003.tvl",
            "epoch 0",
            "samples 64..80",
        ],
        [
            "epoch-0001/part-0000-of-0003.tvl",
            "epoch 1",
            "samples 0..48",
        ],
        [
            "epoch-0001/part-0002-of-0003.tvl",
            "epoch 1",
            "samples 96..100",
        ],
    ]) {
        for n in needles {
            assert!(f.contains(n), "`{n}` not in `{f}`");
        }
    }
    let out = run();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches("FAULT: ").count(), 3, "{stdout}");
    for f in &faults {
        assert!(stdout.contains(f.as_str()), "{f} not printed:\n{stdout}");
    }
    // A missing part is listed with its samples as well, next to the others.
    std::fs::remove_file(part_path(&dir, 0, 2, 3)).unwrap();
    let faults = store::verify_dir(&dir).unwrap();
    assert_eq!(faults.len(), 4, "{faults:#?}");
    assert!(
        faults
            .iter()
            .any(|f| f.contains("part-0002-of-0003.tvl") && f.contains("missing")),
        "{faults:#?}"
    );
}

#[test]
fn a_refused_manifest_writes_nothing() {
    let dir = tmpdir("refused");
    let out = dir.join("store");
    for rpb in [0, 2_000_000] {
        let mut m = manifest(100, 1, 10, ValueEncoding::F16);
        m.records_per_block = rpb;
        let err = format!("{:#}", store::create_or_check(&out, &m, 0).err().unwrap());
        assert!(err.contains("records per block"), "{err}");
        assert!(!out.exists(), "{} was created", out.display());
    }
    // An existing folder stays as it was, and a valid run then writes into it.
    std::fs::create_dir_all(&out).unwrap();
    let mut m = manifest(100, 1, 10, ValueEncoding::F16);
    m.records_per_block = 0;
    assert!(store::create_or_check(&out, &m, 0).is_err());
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    let m = manifest(100, 1, 10, ValueEncoding::F16);
    assert!(write_part(&out, &m, 0, true, None));
    assert!(store::verify_dir(&out).unwrap().is_empty());
}

/// A writer killed while writing the manifest leaves its temporary file; the resumed run of
/// that part replaces or removes it, whether or not another part wrote the manifest since
/// (found by `cargo xtask soak`).
#[test]
fn a_killed_manifest_write_leaves_nothing_after_the_resume() {
    let dir = tmpdir("manifest-tmp");
    let m = manifest(100, 2, 10, ValueEncoding::F16);
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Killed before the rename: no manifest yet, half a temporary one.
    std::fs::write(dir.join("manifest.json.part-0001.tmp"), b"{\"format_ver").unwrap();
    store::create_or_check(&dir, &m, 1).unwrap();
    assert_eq!(names(&dir), vec!["manifest.json"]);
    // Part 0 was killed the same way while part 1 wrote the manifest.
    std::fs::write(dir.join("manifest.json.part-0000.tmp"), b"{").unwrap();
    store::create_or_check(&dir, &m, 0).unwrap();
    assert_eq!(names(&dir), vec!["manifest.json"]);
    assert!(write_part(&dir, &m, 0, true, None) && write_part(&dir, &m, 1, true, None));
    assert!(store::verify_dir(&dir).unwrap().is_empty());
}

/// A store written by an earlier build (key version 1: its manifest has no `key_version` and
/// its shards' key covers the epoch count) still opens, reads, verifies and resumes; extending
/// it is refused in a sentence that says why and what to do.
#[test]
fn a_store_of_the_earlier_key_reads_and_resumes_but_is_not_extended() {
    use tinyvit_host::store::manifest::{open_for_writing, LEGACY_KEY_VERSION};
    let dir = tmpdir("legacy-key");
    let m = Manifest {
        key_version: LEGACY_KEY_VERSION,
        ..manifest(100, 1, 10, ValueEncoding::F16)
    };
    let current = manifest(100, 1, 10, ValueEncoding::F16);
    assert_ne!(m.store_key(), current.store_key());
    // The earlier key: the epoch count is part of it; the current one leaves it out.
    let more = |m: &Manifest| Manifest {
        epochs: m.epochs + 1,
        ..m.clone()
    };
    assert_ne!(more(&m).store_key(), m.store_key());
    assert_eq!(more(&current).store_key(), current.store_key());
    assert!(!write_part(&dir, &m, 0, false, Some(40)));
    let json = std::fs::read_to_string(dir.join(store::MANIFEST_FILE)).unwrap();
    assert!(!json.contains("key_version"), "{json}");
    // This build's writer resumes it with the store's own key.
    let used = open_for_writing(&dir, &current, 0, true).unwrap();
    assert_eq!(used, m);
    assert!(write_part(&dir, &used, 0, true, None));
    let s = LogitStore::open(&dir).unwrap();
    assert_eq!(s.epochs(), vec![0, 1]);
    let (seed, idx, _) = record(1, 57, 10);
    let r = s.record(1, 57).unwrap();
    assert_eq!((r.seed(), r.index(0)), (seed, idx[0]));
    assert!(store::verify_dir(&dir).unwrap().is_empty());
    let err = format!(
        "{:#}",
        open_for_writing(&dir, &more(&current), 0, true).unwrap_err()
    );
    assert!(
        err.contains("written by an earlier build")
            && err.contains("cannot be extended from 2 to 3 epochs"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join(store::MANIFEST_FILE)).unwrap(),
        json
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
