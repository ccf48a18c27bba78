//! `tinyvit train --init` takes every model file `tinyvit infer` takes (issue 15, item 3): our
//! checkpoint, official-name safetensors without our metadata, timm-named safetensors and a
//! `.tvb`, each followed by a few training steps. A head of another class count is
//! re-initialised with a one-line notice, and `--init` picks the fine-tune recipe. (`.pth` in
//! both layouts goes through the same reader: `train::tests::finetune_init_reads_pth_timm_and_tvb`.)

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use safetensors::tensor::{SafeTensors, TensorView};
use support::{ok, tmpdir, BIN};

/// A short run of the M4 student on 64 synthetic grey 32 px images with `classes` classes.
fn train(out: &Path, classes: &str, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["train", "--arch", "tiny_vit_mcu_m4", "--synthetic", "64"])
        .args([
            "--num-classes",
            classes,
            "--in-chans",
            "1",
            "--img-size",
            "32",
        ])
        .args([
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--device",
            "cpu",
            "--quiet",
        ])
        .args(["--threads", "1", "--workers", "1", "--labels", "--out"])
        .arg(out)
        .args(extra);
    c
}

/// The timm name of an official one (the inverse of the importer's rename, written here
/// independently).
fn official_to_timm(name: &str) -> String {
    let mut n = name.to_string();
    if let Some(stem) = n.strip_suffix(".c.weight") {
        n = format!("{stem}.conv.weight");
    }
    for (from, to) in [
        ("patch_embed.seq.0.", "patch_embed.conv1."),
        ("patch_embed.seq.2.", "patch_embed.conv2."),
        ("norm_head.", "head.norm."),
        ("head.", "head.fc."),
    ] {
        if let Some(rest) = n.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    if let Some(rest) = n.strip_prefix("layers.") {
        let (idx, tail) = rest.split_once('.').unwrap();
        let i: usize = idx.parse().unwrap();
        if let Some(ds) = tail.strip_prefix("downsample.") {
            return format!("stages.{}.downsample.{ds}", i + 1);
        }
        return format!("stages.{i}.{tail}");
    }
    n
}

/// Rewrites a checkpoint's tensors (the model's only) under `rename`, without metadata.
fn rewrite(src: &Path, dst: &Path, rename: fn(&str) -> String) {
    let bytes = std::fs::read(src).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("optimizer."))
        .map(|(n, v)| (rename(&n), v))
        .collect();
    let out = safetensors::tensor::serialize(views, &None::<HashMap<String, String>>).unwrap();
    std::fs::write(dst, out).unwrap();
}

#[test]
fn init_from_every_model_file_then_train() {
    let dir = tmpdir("init-any", "formats");
    let src = dir.join("src");
    ok(train(&src, "10", &[]));
    let ours = src.join("model.safetensors");
    let official = dir.join("official.safetensors");
    rewrite(&ours, &official, |n| n.to_string());
    let timm = dir.join("timm.safetensors");
    rewrite(&ours, &timm, official_to_timm);
    let tvb = dir.join("m.tvb");
    let mut c = Command::new(BIN);
    c.args(["export", "--checkpoint"])
        .arg(&ours)
        .arg("--out")
        .arg(&tvb);
    ok(c);
    for (what, file) in [
        ("ours", &ours),
        ("official", &official),
        ("timm", &timm),
        ("tvb", &tvb),
    ] {
        let run = dir.join(format!("ft-{what}"));
        let mut c = train(&run, "5", &[]);
        c.arg("--init").arg(file);
        let o = ok(c);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("head of 10 classes re-initialised for 5 classes"),
            "{what}: {err}"
        );
        let recipe = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(recipe.contains("name = \"finetune\""), "{what}: {recipe}");
        let s = String::from_utf8_lossy(&o.stdout);
        let summary: serde_json::Value = serde_json::from_str(s.lines().last().unwrap()).unwrap();
        let steps = summary["steps"].as_u64().unwrap_or(0);
        assert!(steps >= 4, "{what}: {steps} steps: {summary}");
        assert!(
            summary["final_loss"].as_f64().unwrap().is_finite(),
            "{what}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
