//! `tinyvit analyze` through the binary: a model's class correlation scores 1 against itself
//! and less against another model; the hard-sample list of a store written by a teacher that
//! knows the true classes finds exactly the labels planted wrong; the exclusion list it writes
//! is what `train --exclude` reads; the pictures decode.

mod support;

use std::path::Path;
use std::process::Command;

use support::{brightness_pass, fails, ok, tmpdir, BIN};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::engine::fold::synthetic_blob;

/// Writes a `.tvb` of the `tiny_vit_mcu_m4` preset with synthetic weights from `seed`.
fn synthetic_tvb(path: &Path, seed: u64) {
    let cfg = ModelConfig::preset("tiny_vit_mcu_m4").unwrap();
    let blob = synthetic_blob(&cfg, seed).unwrap();
    std::fs::write(path, tinyvit_core::tvb::write(&cfg, &blob).unwrap()).unwrap();
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn correlation_scores_a_model_against_itself_as_one() {
    let d = tmpdir("analyze", "corr");
    let data = support::fashion_mnist_subset(&d, "t10k", 300);
    let (a, b) = (d.join("a.tvb"), d.join("b.tvb"));
    synthetic_tvb(&a, 7);
    synthetic_tvb(&b, 8);
    let png = d.join("corr.png");
    let js = d.join("corr.json");
    let mut c = Command::new(BIN);
    c.args(["analyze", "correlation", "--model"])
        .arg(&a)
        .arg("--model")
        .arg(&a)
        .arg("--model")
        .arg(&b)
        .args([
            "--data",
            &data,
            "--per-class",
            "4",
            "--mean",
            "0.5,0.5,0.5",
            "--std",
            "0.5,0.5,0.5",
        ])
        .arg("--out")
        .arg(&png)
        .arg("--json")
        .arg(&js);
    let out = String::from_utf8(ok(c).stdout).unwrap();
    let v = json(&js);
    let models = v["models"].as_array().unwrap();
    assert_eq!(models.len(), 3);
    assert_eq!(v["images"], 40, "4 images of each of 10 classes");
    // Fashion-MNIST names come from the dataset when it is opened by name; here by IDX files.
    assert_eq!(v["classes"][0], "0");
    let self_score = models[1]["score"].as_f64().unwrap();
    assert!((self_score - 1.0).abs() < 1e-12, "{self_score}\n{out}");
    let other = models[2]["score"].as_f64().unwrap();
    assert!(other < 0.999, "another model scored {other}");
    let m = models[0]["matrix"].as_array().unwrap();
    assert_eq!(m.len(), 100);
    for i in 0..10 {
        assert_eq!(m[i * 10 + i].as_f64(), Some(1.0));
    }
    let img = image::open(&png).unwrap();
    assert!(
        img.width() > 3 * 100 && img.height() > 100,
        "{}x{}",
        img.width(),
        img.height()
    );
    assert!(out.contains("(reference)"), "{out}");
}

#[test]
fn correlation_refuses_a_model_with_other_classes() {
    let d = tmpdir("analyze", "corr-bad");
    let data = support::fashion_mnist_subset(&d, "t10k", 100);
    let a = d.join("a.tvb");
    let mut cfg = ModelConfig::preset("tiny_vit_mcu_m4").unwrap();
    cfg.num_classes = 7;
    let blob = synthetic_blob(&cfg, 1).unwrap();
    std::fs::write(&a, tinyvit_core::tvb::write(&cfg, &blob).unwrap()).unwrap();
    let mut c = Command::new(BIN);
    c.args(["analyze", "correlation", "--model"])
        .arg(&a)
        .args(["--data", &data, "--per-class", "2"])
        .arg("--out")
        .arg(d.join("x.png"));
    let err = fails(c);
    assert!(
        err.contains("7 classes") && err.contains("10 classes"),
        "{err}"
    );
}

/// IDX files of `n` 28x28 images, class `i % 10` drawn as grey level `20 c + 10` with a faint
/// texture, labelled `i % 10` except for `planted`, whose labels are moved 5 classes away.
fn planted_idx(dir: &Path, n: u32, planted: &[u32]) -> String {
    let mut img = vec![0, 0, 8, 3];
    for v in [n, 28, 28] {
        img.extend(v.to_be_bytes());
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend(n.to_be_bytes());
    for i in 0..n {
        let c = i % 10;
        for y in 0..28u32 {
            for x in 0..28u32 {
                img.push((20 * c + 10 + (x + y + i) % 3) as u8);
            }
        }
        let l = if planted.contains(&i) {
            (c + 5) % 10
        } else {
            c
        };
        lab.push(l as u8);
    }
    let (ip, lp) = (dir.join("img.idx"), dir.join("lab.idx"));
    std::fs::write(&ip, img).unwrap();
    std::fs::write(&lp, lab).unwrap();
    format!("idx:{},{}", ip.display(), lp.display())
}

#[test]
fn hard_samples_are_the_planted_label_errors() {
    let d = tmpdir("analyze", "hard");
    let planted = [3u32, 17, 42, 58, 99, 111];
    let data = planted_idx(&d, 120, &planted);
    let store = d.join("store");
    brightness_pass(&data, &store, 2, 5);

    let out = d.join("hard");
    let mut c = Command::new(BIN);
    c.args(["analyze", "hard", "--data", &data, "--logits"])
        .arg(&store)
        .args(["--topk", "5", "--out"])
        .arg(&out);
    let text = String::from_utf8(ok(c).stdout).unwrap();
    assert!(
        text.starts_with("6 of 120 samples (5.00 %) have their label outside the teacher's top-5"),
        "{text}"
    );
    let list = std::fs::read_to_string(out.join("hard.tsv")).unwrap();
    let mut found: Vec<u32> = list
        .lines()
        .skip(1)
        .map(|l| l.split('\t').nth(1).unwrap().parse().unwrap())
        .collect();
    found.sort_unstable();
    assert_eq!(found, planted);
    // Per class: the planted labels name classes (c + 5) % 10.
    for c in 0..10u32 {
        let hard = planted.iter().filter(|&&i| (i % 10 + 5) % 10 == c).count();
        let row = text
            .lines()
            .find(|l| l.starts_with(&format!("{c}\t")))
            .unwrap_or_else(|| panic!("no row for class {c}:\n{text}"));
        let cols: Vec<&str> = row.split('\t').collect();
        assert_eq!(cols[2], hard.to_string(), "class {c}: {row}");
    }
    let sheet = image::open(out.join("contact.png")).unwrap();
    assert!(sheet.width() >= 8 * 96, "{}", sheet.width());

    // The exclusion list: the planted samples, pinned to this dataset.
    let excl = out.join("exclude.txt");
    let text = std::fs::read_to_string(&excl).unwrap();
    let listed: Vec<u32> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split('\t').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(listed, planted);
    let ds = tinyvit_host::data::open(&data).unwrap();
    let read = tinyvit_host::exclusions::read(&excl, ds.as_ref()).unwrap();
    assert_eq!(
        read,
        planted.iter().map(|&i| i as usize).collect::<Vec<_>>()
    );
    // Against another dataset the list is refused, naming the file.
    let other = planted_idx(&tmpdir("analyze", "hard-other"), 121, &[]);
    let ds2 = tinyvit_host::data::open(&other).unwrap();
    let err = format!(
        "{:#}",
        tinyvit_host::exclusions::read(&excl, ds2.as_ref()).unwrap_err()
    );
    assert!(
        err.contains("exclude.txt") && err.contains("the list is for dataset"),
        "{err}"
    );
}

#[test]
fn train_exclude_leaves_the_listed_samples_out() {
    let d = tmpdir("analyze", "exclude");
    let data = planted_idx(&d, 60, &[]);
    let ds = tinyvit_host::data::open(&data).unwrap();
    let excl = d.join("ex.txt");
    tinyvit_host::exclusions::write(&excl, ds.as_ref(), &[1, 5, 9], &["test".into()]).unwrap();
    let mut c = support::train_m4(&data);
    c.args([
        "--labels",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--img-size",
        "28",
        "--device",
        "cpu",
        "--exclude",
    ])
    .arg(&excl)
    .arg("--out")
    .arg(d.join("run"));
    let o = ok(c);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("3 of 60 training samples left out"), "{err}");
    // A malformed line is an error naming the file and the line.
    std::fs::write(&excl, "# x\n4\nseven\n").unwrap();
    let mut c = support::train_m4(&data);
    c.args(["--labels", "--epochs", "1", "--device", "cpu", "--exclude"])
        .arg(&excl)
        .arg("--out")
        .arg(d.join("run2"));
    let err = fails(c);
    assert!(
        err.contains("ex.txt, line 3") && err.contains("`seven`"),
        "{err}"
    );
}
