//! Training step time on the CPU, the same student and batch for three targets, side by side:
//! `--labels` (the baseline), `--logits` (fast distillation from a store written by the
//! teacher pass) and `--teacher` (online distillation, a teacher forward every step).
//!
//! Whole `tinyvit train` runs through the library (data workers, augmentation replay, store
//! reads, forward, loss, backward, AdamW), on the first 1024 Fashion-MNIST training images at
//! 56 px: student `tiny_vit_mcu_m4`, teacher `tiny_vit_mcu_h7` (random weights: only the time
//! matters), batch 64, one epoch (16 steps) per run, each target run 3 times interleaved and the
//! fastest kept. The claim under test: reading the store costs no more than labels (within 5%);
//! online distillation pays the teacher forward.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;

use clap::Parser;
use tch::{nn, Device};
use tinyvit_core::config::ModelConfig;
use tinyvit_host::checkpoint;
use tinyvit_host::model::TinyVit;
use tinyvit_host::teacher::TinyVitTeacher;
use tinyvit_host::train::{self, TrainArgs};

#[derive(Parser)]
struct W {
    #[command(flatten)]
    a: TrainArgs,
}

fn run(data: &str, out: &Path, target: &[&str]) -> train::Summary {
    let _ = std::fs::remove_dir_all(out);
    let mut argv: Vec<String> = [
        "train",
        "--arch",
        "tiny_vit_mcu_m4",
        "--data",
        data,
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--img-size",
        "56",
        "--device",
        "cpu",
        "--recipe",
        "small",
        "--quiet",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push(out.display().to_string());
    argv.extend(target.iter().map(|s| s.to_string()));
    let w = W::parse_from(argv);
    train::run(&w.a).unwrap()
}

fn main() {
    let dir = support::tmpdir("bench", "train");
    let data = support::fashion_mnist_subset(&dir, "train", 1024);

    // Teacher: tiny_vit_mcu_h7 at 56 px, random init.
    let tcfg = ModelConfig::tiny_vit_mcu_h7().with_img_size(56);
    let vs = nn::VarStore::new(Device::Cpu);
    let _t = TinyVit::new(&vs.root(), &tcfg).unwrap();
    let teacher = dir.join("teacher.safetensors");
    let input = checkpoint::Contract {
        mean: [0.5; 3],
        std: [0.5; 3],
        ..Default::default()
    };
    checkpoint::save(&teacher, &vs, &tcfg, Some(&input), None).unwrap();

    // Store: one epoch, top-5, the light augmentation at 56 px.
    let store = dir.join("store");
    let st = TinyVitTeacher::load(&teacher, Device::Cpu).unwrap();
    let pc = support::light_pass(&data, &store, 1, 5, 56);
    tinyvit_host::save_logits::run(&pc, &st).unwrap();

    let store_s = store.display().to_string();
    let teacher_s = teacher.display().to_string();
    let targets: [(&str, Vec<&str>); 3] = [
        ("labels", vec!["--labels"]),
        ("logits", vec!["--logits", &store_s]),
        ("teacher", vec!["--teacher", &teacher_s]),
    ];
    let mut best = [f64::INFINITY; 3];
    for _round in 0..3 {
        for (k, (name, t)) in targets.iter().enumerate() {
            let s = run(&data, &dir.join(name), t);
            let per_step = s.train_seconds / s.steps as f64;
            if per_step < best[k] {
                best[k] = per_step;
            }
        }
    }
    println!(
        "train step, CPU ({} libtorch threads), tiny_vit_mcu_m4 at 56 px, batch 64 (mean over an epoch of 16 steps, best of 3):",
        tch::get_num_threads()
    );
    for (k, (name, _)) in targets.iter().enumerate() {
        println!(
            "  {name:<8} {:8.1} ms/step  {:7.1} images/s  ratio to labels {:.3}",
            best[k] * 1e3,
            64.0 / best[k],
            best[k] / best[0]
        );
    }
    println!(
        "  --logits vs --labels: {:+.1}% (target: within 5%); online teacher vs --labels: {:+.1}%",
        (best[1] / best[0] - 1.0) * 100.0,
        (best[2] / best[0] - 1.0) * 100.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}
