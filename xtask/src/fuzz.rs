//! `cargo xtask fuzz [--seconds S] [--seeds] [TARGET...]`: the libFuzzer targets of `fuzz/`.
//!
//! Builds every target once with cargo-fuzz on the nightly toolchain (installing the toolchain
//! and cargo-fuzz when missing), then runs each target for `S` seconds over its committed
//! seeds (`fuzz/seeds/TARGET`, read only) and its working corpus (`fuzz/corpus/TARGET`,
//! ignored by git, where new inputs go), and prints the executions of each. A crash stops the
//! task with the reproducer's path (`fuzz/artifacts/TARGET/`); turn it into a regression test
//! next to the code it broke. `--seeds` rewrites the seed corpora from the core's own writers
//! (valid small files of every format) and copies the committed JPEG and `.pth` fixtures.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::store::{self, FooterCrc, RecordLayout, ShardFooter, ShardHeader, ValueEncoding};
use tinyvit_core::{aug, engine, int8, params, tvb, vectors};

use crate::util;

/// Every target, in the order they run.
pub const TARGETS: &[&str] = &[
    "config_sizes",
    "tvb_engines",
    "store_shard",
    "replay_vectors",
    "jpeg_region",
    "pth_import",
    "int8_engine",
    "npy_import",
    "idx_images",
    "safetensors_import",
];

/// Longest input libFuzzer makes for a target (its seeds fit).
fn max_len(target: &str) -> usize {
    match target {
        "config_sizes" => 128,
        "pth_import" => 128 << 10,
        // The golden int8 model (the small network) is 37 KB.
        "int8_engine" => 48 << 10,
        _ => 16 << 10,
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let mut seconds = 60u64;
    let mut seeds = false;
    let mut targets: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .context("--seconds needs a value")?
                    .parse()
                    .context("--seconds")?
            }
            "--seeds" => seeds = true,
            t if TARGETS.contains(&t) => targets.push(t.to_string()),
            other => bail!(
                "unknown argument `{other}`; usage: cargo xtask fuzz [--seconds S] [--seeds] \
                 [TARGET...], targets: {}",
                TARGETS.join(", ")
            ),
        }
    }
    if seeds {
        util::step("fuzz: writing the seed corpora");
        write_seeds(&util::root().join("fuzz/seeds"))?;
        if targets.is_empty() {
            return Ok(());
        }
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|t| t.to_string()).collect();
    }
    ensure_tools()?;
    util::step("fuzz: building every target (nightly, address sanitizer, debug assertions)");
    util::run(cargo_fuzz().args(["build", "-O", "-a"]))?;
    let mut total = 0u64;
    let mut rows = Vec::new();
    for t in &targets {
        util::step(&format!("fuzz: {t} for {seconds} s"));
        let runs = run_target(t, seconds)?;
        total += runs;
        rows.push((t.clone(), runs));
    }
    eprintln!("\n| target | executions | per second |\n|---|---:|---:|");
    for (t, runs) in &rows {
        eprintln!("| {t} | {runs} | {} |", runs / seconds.max(1));
    }
    eprintln!("| total | {total} | |\nno crash");
    Ok(())
}

/// `cargo +nightly fuzz` in `fuzz/`, free of the environment of the stable cargo that runs
/// this task.
fn cargo_fuzz() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(util::root().join("fuzz"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .args(["+nightly", "fuzz"]);
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        // Nightly artefacts next to the stable ones, never mixed with them.
        c.env("CARGO_TARGET_DIR", PathBuf::from(dir).join("fuzz"));
    }
    c
}

/// The nightly toolchain and cargo-fuzz, installed when missing.
fn ensure_tools() -> Result<()> {
    let nightly = util::output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|l| l.lines().any(|t| t.starts_with("nightly")));
    if !nightly {
        util::step("fuzz: installing the nightly toolchain (libFuzzer needs it)");
        util::run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if util::output(cargo_fuzz().arg("--version")).is_none() {
        util::step("fuzz: installing cargo-fuzz");
        util::run(Command::new("cargo").env_remove("RUSTUP_TOOLCHAIN").args([
            "install",
            "cargo-fuzz",
            "--locked",
        ]))?;
    }
    Ok(())
}

/// Runs one target for `seconds`; returns libFuzzer's execution count, or the crash.
fn run_target(target: &str, seconds: u64) -> Result<u64> {
    let root = util::root().join("fuzz");
    let corpus = root.join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let seeds = root.join("seeds").join(target);
    let log_path = util::target_dir()
        .join("fuzz-logs")
        .join(format!("{target}.log"));
    std::fs::create_dir_all(log_path.parent().context("log folder")?)?;
    let mut cmd = cargo_fuzz();
    cmd.args(["run", "-O", "-a", target])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={}", max_len(target)))
        .args(["-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    eprintln!(
        "    $ cargo +nightly fuzz run -O -a {target} ... (log: {})",
        log_path.display()
    );
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting cargo fuzz run")?;
    let mut log = String::new();
    let mut runs = None;
    for line in BufReader::new(child.stderr.take().context("fuzzer output")?).lines() {
        let line = line?;
        if let Some(n) = done_runs(&line) {
            runs = Some(n);
        }
        log.push_str(&line);
        log.push('\n');
    }
    let status = child.wait()?;
    std::fs::write(&log_path, &log).with_context(|| format!("writing {}", log_path.display()))?;
    if !status.success() {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        for l in tail.iter().rev() {
            eprintln!("    {l}");
        }
        bail!(
            "fuzz target {target} failed after {:.0} s ({status}); the reproducer is under \
             fuzz/artifacts/{target}/, the whole log in {}",
            start.elapsed().as_secs_f64(),
            log_path.display()
        );
    }
    let runs = runs.with_context(|| format!("{target}: no `Done N runs` line in the log"))?;
    eprintln!("    {runs} executions");
    Ok(runs)
}

/// The count of libFuzzer's closing line, `Done 123 runs in 10 second(s)`.
fn done_runs(line: &str) -> Option<u64> {
    let rest = line.strip_prefix("Done ")?;
    let (n, tail) = rest.split_once(' ')?;
    tail.starts_with("runs in").then(|| n.parse().ok())?
}

/// Writes valid small files of every format the targets read (see the module doc).
fn write_seeds(dir: &Path) -> Result<()> {
    let put = |target: &str, name: &str, bytes: &[u8]| -> Result<()> {
        let d = dir.join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(name), bytes).with_context(|| format!("{target}/{name}"))
    };
    for (name, cfg) in seed_configs() {
        let sd = params::synthetic_state_dict(&cfg, 16);
        let blob = engine::fold::fold_state_dict(&cfg, |n| {
            sd.iter().find(|t| t.name == n).map(|t| &t.values[..])
        })
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let file = tvb::write(&cfg, &blob).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        // The same network quantised, calibrated on two synthetic images.
        let n = engine::input_len(&cfg).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let images: Vec<f32> = (0..2 * n)
            .map(|i| ((i * 7) % 13) as f32 * 0.2 - 1.2)
            .collect();
        let q8 = int8::quantize::quantize_tvb(&file, &images, &Default::default())
            .map_err(|e| anyhow::anyhow!("{name}: quantising: {e}"))?;
        // Flag byte 1: the target repairs checksums; 0: it parses the bytes as they are.
        for flag in [0u8, 1] {
            put(
                "tvb_engines",
                &format!("{name}-{flag}.bin"),
                &[&[flag], &file[..]].concat(),
            )?;
            put(
                "int8_engine",
                &format!("{name}-{flag}.bin"),
                &[&[flag], &q8[..]].concat(),
            )?;
        }
        put("config_sizes", &format!("{name}.bin"), &config_bytes(&cfg))?;
    }
    for name in ["tiny_vit_mcu_m4", "tiny_vit_21m_512"] {
        let cfg = ModelConfig::preset(name).context("preset")?;
        put("config_sizes", &format!("{name}.bin"), &config_bytes(&cfg))?;
    }
    let f16 = RecordLayout::new(3, 10, ValueEncoding::F16).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wide =
        RecordLayout::new(2, 70_000, ValueEncoding::Sqrt8).map_err(|e| anyhow::anyhow!("{e}"))?;
    for (name, layout, parts, part) in [("f16", f16, 1, 0), ("sqrt8-part", wide, 2, 1)] {
        let shard = shard_bytes(layout, parts, part)?;
        put(
            "store_shard",
            &format!("{name}.bin"),
            &[&[1u8], &shard[..]].concat(),
        )?;
    }
    put("replay_vectors", "views.bin", &vector_bytes()?)?;
    let fixtures = util::root().join("jpeg/tests/fixtures");
    for f in [
        "grey_1x1",
        "420_17x9",
        "422_17x9",
        "444_17x9",
        "420_rst3",
        "422_dqt16_sof1",
    ] {
        let jpeg = std::fs::read(fixtures.join(format!("{f}.jpg")))?;
        // Eight bytes choose the rectangle; these ask for the whole image from (0, 0).
        let rect = [0u8, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
        put(
            "jpeg_region",
            &format!("{f}.bin"),
            &[&rect[..], &jpeg[..]].concat(),
        )?;
    }
    let pth = std::fs::read(util::root().join("tests/fixtures/parity/tiny_16.pth"))?;
    put("pth_import", "tiny_16.pth", &pth)?;
    let golden = std::fs::read(util::root().join("core/tests/fixtures/int8/small.q8.tvb"))?;
    put(
        "int8_engine",
        "golden-0.bin",
        &[&[0u8], &golden[..]].concat(),
    )?;
    for (name, dict, data) in npy_seeds() {
        put("npy_import", name, &npy_bytes(&dict, &data))?;
    }
    // IDX: the first byte is the label file's length (taken from the end).
    let mut images = [0x0803u32, 2, 3, 4]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect::<Vec<u8>>();
    images.extend((0..24u8).map(|i| i * 10));
    let mut labels = [0x0801u32, 2]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect::<Vec<u8>>();
    labels.extend([3u8, 7]);
    put("idx_images", "images.bin", &[&[0u8], &images[..]].concat())?;
    put(
        "idx_images",
        "images-labels.bin",
        &[&[labels.len() as u8], &images[..], &labels[..]].concat(),
    )?;
    put(
        "safetensors_import",
        "mixed.safetensors",
        &safetensors_seed(),
    )?;
    eprintln!("    wrote the seeds under {}", dir.display());
    Ok(())
}

/// `.npy` seeds: (file name, header dict, data bytes).
fn npy_seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let le: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    let be: Vec<u8> = (0..6)
        .flat_map(|i| (i as f32 * 0.5).to_be_bytes())
        .collect();
    vec![
        (
            "c-order.npy",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }".into(),
            le.clone(),
        ),
        (
            "fortran-order.npy",
            "{'descr': '<f4', 'fortran_order': True, 'shape': (3, 2), }".into(),
            le,
        ),
        (
            "big-endian.npy",
            "{'descr': '>f4', 'fortran_order': False, 'shape': (1, 1, 2, 3), }".into(),
            be,
        ),
    ]
}

/// A version 1.0 `.npy` file: magic, version, header length, the dict padded with spaces to
/// a multiple of 64 bytes (newline last), then the data.
fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(header.len() as u16).to_le_bytes());
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(data);
    b
}

/// A safetensors file with metadata and one tensor of each dtype the reader widens.
fn safetensors_seed() -> Vec<u8> {
    let mut data = Vec::new();
    let mut entries = Vec::new();
    let mut add = |name: &str, dtype: &str, shape: &str, bytes: Vec<u8>| {
        let start = data.len();
        data.extend_from_slice(&bytes);
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[{start},{}]}}",
            data.len()
        ));
    };
    add(
        "w",
        "F32",
        "[2,2]",
        (0..4).flat_map(|i| (i as f32).to_le_bytes()).collect(),
    );
    add("h", "F16", "[2]", vec![0x00, 0x3c, 0x00, 0xc0]);
    add("b", "BF16", "[2]", vec![0x80, 0x3f, 0x00, 0x40]);
    add("d", "F64", "[1]", 1.5f64.to_le_bytes().to_vec());
    add("n", "I64", "[1]", 7i64.to_le_bytes().to_vec());
    let mut header = format!(
        "{{\"__metadata__\":{{\"tinyvit.format\":\"tinyvit-checkpoint/1\"}},{}}}",
        entries.join(",")
    );
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut b = (header.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(header.as_bytes());
    b.extend_from_slice(&data);
    b
}

/// Small networks of the shapes the engines treat differently.
fn seed_configs() -> Vec<(&'static str, ModelConfig)> {
    let mut micro = ModelConfig::tiny_vit_mcu_m4()
        .with_img_size(8)
        .with_num_classes(3);
    micro.embed_dims = [2, 4, 4, 4];
    micro.num_heads = [1, 1, 2, 1];
    micro.depths = [1, 1, 1, 1];
    micro.mlp_ratio = 1;
    micro.mbconv_expand_ratio = 1;
    let mut padded = micro.with_img_size(13).with_in_chans(3);
    padded.window_sizes = [1, 2, 3, 2];
    padded.local_conv_size = 5;
    let mut whole = micro.with_img_size(16);
    whole.window_sizes = [1, 2, 1, 1];
    vec![("micro", micro), ("padded", padded), ("whole", whole)]
}

/// A config as `config_sizes` reads it: 19 little-endian u32 fields in declaration order.
fn config_bytes(c: &ModelConfig) -> Vec<u8> {
    let mut fields = vec![c.in_chans, c.img_size, c.num_classes];
    for a in [c.embed_dims, c.depths, c.num_heads, c.window_sizes] {
        fields.extend_from_slice(&a);
    }
    fields.extend_from_slice(&[c.mlp_ratio, c.mbconv_expand_ratio, c.local_conv_size]);
    fields.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A complete shard of 10 samples in blocks of 4, one record missing.
fn shard_bytes(layout: RecordLayout, parts: u32, part: u32) -> Result<Vec<u8>> {
    let e = |e: store::StoreError| anyhow::anyhow!("{e}");
    let h = ShardHeader::new(layout, 4, 2, part, parts, 10, 0x5EED).map_err(e)?;
    let mut file = h.encode().to_vec();
    let mut crcs = FooterCrc::new();
    let mut rec = vec![0u8; layout.record_len()];
    let mut missing = 0;
    let k = layout.topk();
    for b in 0..h.block_count() {
        let span = h.block(b).context("block")?;
        let start = file.len();
        for s in span.first_sample..span.first_sample + span.records {
            if s == h.first_sample + 1 {
                layout.encode_missing(s as u32, &mut rec).map_err(e)?;
                missing += 1;
            } else {
                let idx: Vec<u32> = (0..k as u32)
                    .map(|i| (s as u32 + i) % layout.num_classes())
                    .collect();
                let p: Vec<f32> = (0..k).map(|i| 0.5 / (i + 1) as f32).collect();
                layout.encode(s as u32 * 7, &idx, &p, &mut rec).map_err(e)?;
            }
            file.extend_from_slice(&rec);
        }
        let crc = store::block_checksum(h.store_key, h.epoch, span.first_sample, &file[start..]);
        file.extend_from_slice(&crc.to_le_bytes());
        crcs.push(crc);
    }
    let footer = ShardFooter {
        record_count: h.sample_count,
        missing_count: missing,
        blocks_crc: crcs.value(),
    };
    file.extend_from_slice(&footer.encode());
    let view = store::ShardView::open(&file).map_err(|e| anyhow::anyhow!("seed shard: {e}"))?;
    view.verify()
        .map_err(|e| anyhow::anyhow!("seed shard: {e}"))?;
    Ok(file)
}

/// Two replay vectors: an augmented view of the test pattern and an evaluation view of
/// stored pixels.
fn vector_bytes() -> Result<Vec<u8>> {
    let mut cfg = aug::preset::light();
    cfg.size = 8;
    let (w, h, c) = (12u32, 10u32, 3u32);
    let pixels: Vec<u8> = (0..w * h * c).map(|i| (i * 37 % 251) as u8).collect();
    let records = [
        vectors::Record {
            kind: vectors::Kind::View,
            seed: 3,
            width: w,
            height: h,
            channels: 1,
            cfg,
            pixels: Vec::new(),
            pattern: true,
            class: u32::MAX,
            image_hash: 0,
            logits_hash: 0,
        },
        vectors::Record {
            kind: vectors::Kind::EvalView,
            seed: 0,
            width: w,
            height: h,
            channels: c,
            cfg,
            pixels,
            pattern: false,
            class: 1,
            image_hash: 0,
            logits_hash: 0,
        },
    ];
    let bytes = vectors::write(&records).map_err(|e| anyhow::anyhow!("{e}"))?;
    vectors::Vectors::parse(&bytes).map_err(|e| anyhow::anyhow!("seed vectors: {e}"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_line_is_read() {
        assert_eq!(
            done_runs("Done 1234567 runs in 61 second(s)"),
            Some(1234567)
        );
        assert_eq!(done_runs("#1234 NEW cov: 12"), None);
        assert_eq!(done_runs("Done soon"), None);
    }
}
