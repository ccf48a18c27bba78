//! A failed command leaves no half-written outputs: `train` whose inputs fail after the run
//! folder was prepared, `convert` and `export` of weights that are not finite (refused with
//! the tensor's name), all through the `tinyvit` binary.

mod support;

use std::path::Path;
use std::process::Command;

use support::{fails, synthetic_idx, tmpdir, train_m4, BIN};
use tch::{nn, Device};
use tinyvit_core::config::ModelConfig;
use tinyvit_host::checkpoint;
use tinyvit_host::model::TinyVit;

/// Every file under `dir`, relative and sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn failing_train(data: &str, out: &Path, init: &Path) -> Command {
    let mut c = train_m4(data);
    c.args([
        "--labels",
        "--epochs",
        "1",
        "--img-size",
        "28",
        "--in-chans",
        "1",
    ])
    .args(support::CPU_QUIET)
    .arg("--init")
    .arg(init)
    .arg("--out")
    .arg(out);
    c
}

#[test]
fn a_failed_train_leaves_no_run_files() {
    let d = tmpdir("failures", "train");
    let images = synthetic_idx(&d, 40).unwrap();
    let mut labels = [0x0801u32, 40]
        .iter()
        .flat_map(|v| v.to_be_bytes())
        .collect::<Vec<u8>>();
    labels.extend((0..40u8).map(|i| i % 10));
    std::fs::write(d.join("labels.idx"), labels).unwrap();
    let data = format!("{images},{}", d.join("labels.idx").display());
    let missing = d.join("no-such-init.safetensors");
    // A new folder: gone again after the failure.
    let out = d.join("run");
    let msg = fails(failing_train(&data, &out, &missing));
    assert!(msg.contains("no-such-init"), "{msg}");
    assert!(!out.exists(), "left {:?}", files(&out));
    // An existing folder keeps what it held before, and nothing else.
    let kept = d.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    std::fs::write(kept.join("notes.txt"), "mine").unwrap();
    fails(failing_train(&data, &kept, &missing));
    assert_eq!(files(&kept), vec!["notes.txt".to_string()]);
}

/// A checkpoint of a small network with one NaN weight (`head.weight`, element 5) and, in a
/// second file, one infinite BatchNorm variance.
fn poisoned(d: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let cfg = ModelConfig::tiny_vit_mcu_m4()
        .with_img_size(32)
        .with_num_classes(4);
    let mut out = Vec::new();
    for (name, var, value) in [
        ("nan", "head.weight", f64::NAN),
        ("inf", "layers.1.blocks.0.attn.qkv.weight", f64::INFINITY),
    ] {
        let vs = nn::VarStore::new(Device::Cpu);
        let _m = TinyVit::new(&vs.root(), &cfg).unwrap();
        tch::no_grad(|| {
            let t = &vs.variables()[var];
            let _ = t.view([-1]).get(5).fill_(value);
        });
        let p = d.join(format!("{name}.safetensors"));
        checkpoint::save(&p, &vs, &cfg, None, None).unwrap();
        out.push(p);
    }
    (out[0].clone(), out[1].clone())
}

#[test]
fn convert_and_export_refuse_weights_that_are_not_finite() {
    let d = tmpdir("failures", "nan");
    let (nan, inf) = poisoned(&d);
    for (ck, tensor, what) in [
        (&nan, "head.weight", "NaN"),
        (&inf, "layers.1.blocks.0.attn.qkv.weight", "inf"),
    ] {
        let out = d.join("model.tvb");
        let mut c = Command::new(BIN);
        c.args(["convert", "--model"])
            .arg(ck)
            .arg("--out")
            .arg(&out);
        let msg = fails(c);
        assert!(
            msg.contains(&format!("`{tensor}`")) && msg.contains("element 5") && msg.contains(what),
            "{msg}"
        );
        let mut c = Command::new(BIN);
        c.args(["export", "--checkpoint"])
            .arg(ck)
            .arg("--out")
            .arg(&out);
        let msg = fails(c);
        assert!(msg.contains(&format!("`{tensor}`")), "{msg}");
        assert_eq!(
            files(&d),
            vec!["inf.safetensors".to_string(), "nan.safetensors".to_string()],
            "a refused conversion left files"
        );
    }
}

/// Unlabelled `--val` data with no online teacher has nothing to measure: the run is refused
/// before its first step, naming the flag and the data, and leaves no model behind.
#[test]
fn unlabelled_validation_without_a_teacher_is_refused_before_training() {
    let d = tmpdir("failures", "unlabelled-val");
    let train = support::fashion_mnist_subset(&d, "train", 64);
    let vdir = d.join("val");
    std::fs::create_dir_all(&vdir).unwrap();
    let val = synthetic_idx(&vdir, 12).unwrap();
    let out = d.join("run");
    let mut c = train_m4(&train);
    c.args([
        "--labels",
        "--img-size",
        "28",
        "--epochs",
        "1",
        "--batch-size",
        "32",
    ])
    .args(["--val", &val, "--num-classes", "10"])
    .args(support::CPU_QUIET)
    .arg("--out")
    .arg(&out);
    let err = fails(c);
    assert!(
        err.contains("--val") && err.contains("no labels") && err.contains("nothing to measure"),
        "{err}"
    );
    assert!(!out.join("model.safetensors").exists());
    assert!(!out.join("metrics.jsonl").exists(), "no epoch ran");
}

/// A `.tvb` model file given where a training checkpoint is needed (`export`, a teacher) is
/// refused in one sentence that says what the file is and what takes it, not as a damaged
/// safetensors header; nothing is written.
#[test]
fn a_model_file_where_a_checkpoint_is_needed_is_named_as_such() {
    let d = tmpdir("failures", "tvb-as-checkpoint");
    let cfg = ModelConfig::tiny_vit_mcu_m4().with_img_size(28);
    let blob = tinyvit_core::engine::fold::synthetic_blob(&cfg, 3).unwrap();
    let f32_tvb = tinyvit_core::tvb::write(&cfg, &blob).unwrap();
    let calib = vec![0.25f32; 28 * 28 * 2];
    let q8 = tinyvit_core::int8::quantize::quantize_tvb(
        &f32_tvb,
        &calib,
        &tinyvit_core::int8::quantize::Options::default(),
    )
    .unwrap();
    let (m32, m8) = (d.join("m.tvb"), d.join("m.q8.tvb"));
    std::fs::write(&m32, &f32_tvb).unwrap();
    std::fs::write(&m8, &q8).unwrap();
    for (file, what) in [(&m32, "an exported f32 model"), (&m8, "an int8 model")] {
        let out = d.join("out.tvb");
        let mut c = Command::new(BIN);
        c.args(["export", "--checkpoint"])
            .arg(file)
            .arg("--out")
            .arg(&out);
        let msg = fails(c);
        assert!(
            msg.contains(&file.display().to_string())
                && msg.contains(what)
                && msg.contains("not a training checkpoint")
                && !msg.contains("HeaderTooLarge"),
            "{msg}"
        );
        assert!(!out.exists());
    }
}
