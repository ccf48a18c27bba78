//! The replay vector file and the logits hash, host writer against the firmware's own parser and
//! hasher (compiled here from `firmware/src/`, which is plain `core` code): round trip, every
//! truncation and every flipped byte of a file give errors or other values, never a panic.

#[allow(dead_code, reason = "the firmware's module; this test uses part of it")]
#[path = "../../firmware/src/hash.rs"]
mod fw_hash;
#[allow(dead_code, reason = "the firmware's module; this test uses part of it")]
#[path = "../../firmware/src/vectors.rs"]
mod fw_vectors;

use tinyvit_core::aug;
use tinyvit_core::params::splitmix64;
use tinyvit_tests::replay::{self, Kind, Record};

fn records() -> Vec<Record> {
    let mut light = aug::preset("light").unwrap();
    light.size = 24;
    vec![
        Record {
            kind: Kind::View,
            seed: 7,
            width: 5,
            height: 3,
            channels: 3,
            cfg: light,
            pixels: (0..45).map(|v| v as u8).collect(),
            pattern: false,
            class: u32::MAX,
            image_hash: 0x0123_4567_89ab_cdef,
            logits_hash: 0,
        },
        Record {
            kind: Kind::Infer,
            seed: u32::MAX,
            width: 61,
            height: 47,
            channels: 3,
            cfg: aug::preset("in22k-distill").unwrap(),
            pixels: Vec::new(),
            pattern: true,
            class: 9,
            image_hash: 1,
            logits_hash: u64::MAX,
        },
        Record {
            kind: Kind::EvalView,
            seed: 0,
            width: 3,
            height: 1,
            channels: 1,
            cfg: light,
            pixels: vec![1, 2, 3],
            pattern: false,
            class: 4,
            image_hash: 2,
            logits_hash: 3,
        },
    ]
}

#[test]
fn round_trip_through_the_firmware_parser() {
    let recs = records();
    let bytes = replay::write(&recs);
    let parsed = fw_vectors::Vectors::parse(&bytes).unwrap();
    assert_eq!(parsed.len(), 3);
    let got: Vec<_> = parsed.iter().map(|r| r.unwrap()).collect();
    assert_eq!(got.len(), 3);
    for (r, g) in recs.iter().zip(&got) {
        let kind = match r.kind {
            Kind::View => fw_vectors::Kind::View,
            Kind::Infer => fw_vectors::Kind::Infer,
            Kind::Eval => fw_vectors::Kind::Eval,
            Kind::EvalView => fw_vectors::Kind::EvalView,
        };
        assert_eq!(g.kind, kind);
        assert_eq!(
            (g.seed, g.width, g.height, g.channels),
            (r.seed, r.width, r.height, r.channels)
        );
        assert_eq!(
            (g.class, g.image_hash, g.logits_hash),
            (r.class, r.image_hash, r.logits_hash)
        );
        assert_eq!(g.pattern, r.pattern);
        assert_eq!(g.pixels, if r.pattern { &[][..] } else { &r.pixels[..] });
        let cfg: aug::AugConfig = postcard::from_bytes(g.cfg).unwrap();
        assert_eq!(cfg, r.cfg);
    }
    assert_eq!(fw_vectors::EVAL_CROP_PCT, replay::EVAL_CROP_PCT);
    assert_eq!(fw_vectors::PATTERN, replay::PATTERN);
}

/// Parses and walks every record; returns how many parsed before the first error.
fn walk(bytes: &[u8]) -> Result<usize, fw_vectors::VectorError> {
    let v = fw_vectors::Vectors::parse(bytes)?;
    let mut n = 0;
    for r in v.iter() {
        r?;
        n += 1;
    }
    Ok(n)
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = replay::write(&records());
    assert_eq!(walk(&bytes), Ok(3));
    for len in 0..bytes.len() {
        assert!(
            walk(&bytes[..len]).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4]);
    assert_eq!(walk(&longer), Err(fw_vectors::VectorError::Trailing));
}

#[test]
fn flipped_bytes_never_panic() {
    let bytes = replay::write(&records());
    for i in 0..bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut b = bytes.clone();
            b[i] ^= bit;
            let _ = walk(&b);
        }
    }
    let mut b = bytes.clone();
    b[4] = 2;
    assert_eq!(walk(&b), Err(fw_vectors::VectorError::Version(2)));
    b = bytes.clone();
    b[0] = b'X';
    assert_eq!(walk(&b), Err(fw_vectors::VectorError::Magic));
}

#[test]
fn random_bytes_never_panic() {
    let mut s = 5u64;
    for len in [0usize, 3, 16, 17, 64, 65, 500] {
        for _ in 0..200 {
            let mut b: Vec<u8> = (0..len).map(|_| splitmix64(&mut s) as u8).collect();
            if b.len() >= 16 {
                b[..4].copy_from_slice(b"TVRV");
                b[4..8].copy_from_slice(&1u32.to_le_bytes());
            }
            let _ = walk(&b);
        }
    }
}

#[test]
fn device_and_host_hash_the_same_bits() {
    let mut s = 9u64;
    let mut v: Vec<f32> = (0..257)
        .map(|_| f32::from_bits(splitmix64(&mut s) as u32))
        .collect();
    v.extend([f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001), 0.0, -0.0]);
    assert_eq!(
        fw_hash::Fnv::new().f32s(&v).finish(),
        replay::logits_hash(&v)
    );
    assert_eq!(
        fw_hash::Fnv::new().bytes(b"tinyvit").finish(),
        fw_hash::TINYVIT_FNV
    );
    assert_eq!(aug::fnv1a64(b"tinyvit"), fw_hash::TINYVIT_FNV);
}
