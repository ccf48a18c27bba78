//! `tinyvit train --init` takes every model file `tinyvit infer` takes (issue 15, item 3): our
//! checkpoint, official-name safetensors without our metadata, timm-named safetensors and a
//! `.tvb`, and `torch.save` `.pth` files in both layouts (official: `{"model": state_dict}` with
//! official names; a bare state_dict with timm names), each followed by a few training steps
//! whose loss is finite and which move the weights away from the file's (and keep them near
//! it: the file's weights were the start). A head of another class count is re-initialised
//! with a one-line notice, and `--init` picks the fine-tune recipe.

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

/// The f32 tensors of a safetensors file (the model's only): name, shape, values.
fn f32_tensors(path: &Path) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .filter(|(n, v)| !n.starts_with("optimizer.") && v.dtype() == safetensors::Dtype::F32)
        .map(|(n, v)| {
            let values = v
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, v.shape().to_vec(), values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Writes `tensors` as `torch.save` writes a state_dict (zip archive of stored entries:
/// `archive/data.pkl`, a protocol-2 pickle whose tensors are `_rebuild_tensor_v2` of
/// persistent `FloatStorage`s, `archive/data/<key>` the storages' bytes, `archive/byteorder`),
/// with the state_dict under `"model"` (the official checkpoints' layout) or at the top.
fn write_pth(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], under_model: bool) {
    fn text(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    }
    fn tuple(p: &mut Vec<u8>, vs: &[usize]) {
        p.push(b'(');
        for &v in vs {
            int(p, v);
        }
        p.push(b't');
    }
    let mut p = vec![0x80, 2, b'}'];
    if under_model {
        text(&mut p, "model");
        p.push(b'}');
    }
    p.push(b'(');
    for (key, (name, shape, values)) in tensors.iter().enumerate() {
        text(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        // persistent id: ('storage', torch.FloatStorage, key, 'cpu', numel)
        p.push(b'(');
        text(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        text(&mut p, &key.to_string());
        text(&mut p, "cpu");
        int(&mut p, values.len());
        p.extend(b"tQ");
        int(&mut p, 0);
        tuple(&mut p, shape);
        let mut stride = vec![1usize; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            stride[d] = stride[d + 1] * shape[d + 1];
        }
        tuple(&mut p, &stride);
        p.push(0x89); // requires_grad False
        p.extend(b"ccollections\nOrderedDict\n)R"); // backward hooks
        p.extend(b"tR");
    }
    p.push(b'u');
    if under_model {
        p.push(b's');
    }
    p.push(b'.');
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opt = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opt).unwrap();
    std::io::Write::write_all(&mut z, &p).unwrap();
    z.start_file("archive/byteorder", opt).unwrap();
    std::io::Write::write_all(&mut z, b"little").unwrap();
    for (key, (_, _, values)) in tensors.iter().enumerate() {
        z.start_file(format!("archive/data/{key}"), opt).unwrap();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::io::Write::write_all(&mut z, &bytes).unwrap();
    }
    z.finish().unwrap();
}

/// Cosine similarity of two equally long vectors.
fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let n = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
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
    // Both .pth layouts, from the same preset-shaped (tiny_vit_mcu_m4) weights.
    let src_tensors = f32_tensors(&ours);
    let pth_official = dir.join("official.pth");
    write_pth(&pth_official, &src_tensors, true);
    let timm_named: Vec<_> = src_tensors
        .iter()
        .map(|(n, s, v)| (official_to_timm(n), s.clone(), v.clone()))
        .collect();
    let pth_timm = dir.join("timm.pth");
    write_pth(&pth_timm, &timm_named, false);
    // The fixtures read back as written (the importer's own reader).
    for pth in [&pth_official, &pth_timm] {
        let sd = tinyvit_host::import::read_state_dict(pth).unwrap();
        assert_eq!(sd.len(), src_tensors.len(), "{}", pth.display());
    }
    let sd = tinyvit_host::import::read_state_dict(&pth_official).unwrap();
    for (n, shape, v) in &src_tensors {
        assert_eq!((&sd[n].shape, &sd[n].values), (shape, v), "{n}");
    }
    for (what, file) in [
        ("ours", &ours),
        ("official", &official),
        ("timm", &timm),
        ("tvb", &tvb),
        ("pth-official", &pth_official),
        ("pth-timm", &pth_timm),
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
        // The steps moved the weights, from the file's: a stage-2 attention weight differs
        // from the file's and still points its way (a fresh init would be unrelated to it).
        let name = "layers.2.blocks.0.attn.qkv.weight";
        let after = f32_tensors(&run.join("model.safetensors"));
        let a = &after.iter().find(|t| t.0 == name).unwrap().2;
        let b = &src_tensors.iter().find(|t| t.0 == name).unwrap().2;
        let moved = a.iter().zip(b).filter(|(x, y)| x != y).count();
        let cos = cosine(a, b);
        eprintln!(
            "{what}: {moved} of {} values of {name} moved, cosine {cos:.4}",
            a.len()
        );
        assert!(
            moved > a.len() / 2,
            "{what}: only {moved} of {} moved",
            a.len()
        );
        if what != "tvb" {
            assert!(cos > 0.9, "{what}: cosine {cos} to the file's weights");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
