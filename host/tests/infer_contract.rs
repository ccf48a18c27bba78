//! A model carries its input contract (issue 15, items 1 and 2): a Fashion-MNIST student
//! trained here (labels, 640 training images, 8 epochs, 32 px, grey, mean/std 0.5 as the `small` recipe
//! normalises) is run by `tinyvit infer` on 200 Fashion-MNIST test PNGs given as a folder. Its
//! top-1 equals, image for image, that of the same images given as a normalised `.npy` (the
//! trainer's evaluation views) and that of the exported `.tvb`; the output names the classes;
//! the `.tvb` carries the same contract as the checkpoint.

mod support;

use std::path::Path;
use std::process::Command;

use support::{fails, fashion_mnist_subset, ok, tmpdir, train_m4, BIN, FASHION_MNIST};
use tinyvit_host::data::{read_maybe_gz, FASHION_MNIST_CLASSES};
use tinyvit_host::{checkpoint, import, infer};

const N: usize = 200;

/// The top-1 class of each output line of `tinyvit infer`, with the line's first entry.
fn top1(stdout: &[u8]) -> Vec<(usize, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let first = l.split('\t').nth(1).expect("a top-k entry");
            let class = first.split(' ').next().unwrap().parse().unwrap();
            (class, first.to_string())
        })
        .collect()
}

fn infer_cmd(model: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("infer").arg("--model").arg(model);
    c
}

#[test]
fn infer_on_pngs_agrees_with_npy_and_tvb_image_for_image() {
    let dir = tmpdir("infer-contract", "fm");
    let train = fashion_mnist_subset(&dir, "train", 640);
    let test = fashion_mnist_subset(&dir, "t10k", N);
    let run = dir.join("run");
    let mut c = train_m4(&train);
    c.args([
        "--labels",
        "--epochs",
        "8",
        "--img-size",
        "32",
        "--batch-size",
        "32",
    ])
    .args(support::CPU_QUIET)
    .arg("--out")
    .arg(&run);
    ok(c);
    let ckpt = run.join("model.safetensors");

    // The checkpoint records the whole contract; the labels come from the data, so the IDX
    // subset (not `fashion-mnist:`) names no classes: pass Fashion-MNIST's with --class-names.
    let ck = checkpoint::load(&ckpt, None).unwrap();
    let contract = ck
        .input
        .clone()
        .expect("the checkpoint records its contract");
    assert_eq!((contract.size, contract.channels), (32, 1));
    assert_eq!((contract.mean[0], contract.std[0]), (0.5, 0.5));
    let names = dir.join("classes.txt");
    std::fs::write(&names, FASHION_MNIST_CLASSES.join("\n")).unwrap();

    // 200 test images as PNG files in a folder, in order.
    let pngs = dir.join("png");
    std::fs::create_dir_all(&pngs).unwrap();
    let fm = Path::new(FASHION_MNIST);
    let img = read_maybe_gz(&fm.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let lab = read_maybe_gz(&fm.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    for i in 0..N {
        let px = img[16 + i * 784..16 + (i + 1) * 784].to_vec();
        image::GrayImage::from_raw(28, 28, px)
            .unwrap()
            .save(pngs.join(format!("test{i:03}.png")))
            .unwrap();
    }

    // The same images as the trainer's evaluation views, normalised, in one .npy.
    let src = tinyvit_host::train::validation_source(&test, None, None, 1, 32, &contract).unwrap();
    let per = 32 * 32;
    let mut x = vec![0f32; N * per];
    for (j, chunk) in x.chunks_exact_mut(per).enumerate() {
        src.sample(0, j, chunk).unwrap();
    }
    let npy = dir.join("views.npy");
    infer::write_npy(&npy, &[N, 1, 32, 32], &x).unwrap();

    let mut c = infer_cmd(&ckpt);
    c.arg("--class-names").arg(&names).arg(&pngs);
    let o = ok(c);
    let from_png = top1(&o.stdout);
    assert_eq!(from_png.len(), N);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("softmax probabilities"),
        "the output says what its values are"
    );
    let mut c = infer_cmd(&ckpt);
    c.arg("--npy").arg(&npy);
    let from_npy = top1(&ok(c).stdout);

    // Export (with the class names), then infer from the .tvb with no flags at all.
    let tvb = dir.join("student.tvb");
    let mut c = Command::new(BIN);
    c.args(["export", "--checkpoint"])
        .arg(&ckpt)
        .arg("--out")
        .arg(&tvb)
        .arg("--class-names")
        .arg(&names);
    let o = ok(c);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["checked"], false, "{r}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not checked"));
    // Checked on the unlabelled PNG folder: top-1 agreement with libtorch, said as such.
    let mut c = Command::new(BIN);
    c.args(["export", "--checkpoint"])
        .arg(&ckpt)
        .arg("--out")
        .arg(dir.join("checked.tvb"))
        .arg("--val")
        .arg(format!("folder:{}", pngs.display()));
    let o = ok(c);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (r["checked"].as_bool(), r["images"].as_u64()),
        (Some(true), Some(N as u64))
    );
    assert!(
        r["tch_top1"].is_null() && r["agreement"].as_f64().unwrap() >= 99.0,
        "{r}"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no labels"));
    let loaded = import::load(&tvb, None, None, None).unwrap();
    let recorded = loaded.contract.expect("the .tvb carries the contract");
    assert_eq!(recorded.input(), contract.input());
    assert_eq!(recorded.class_names, FASHION_MNIST_CLASSES);
    let mut c = infer_cmd(&tvb);
    c.arg(&pngs);
    let from_tvb = top1(&ok(c).stdout);

    let mut right = 0;
    for i in 0..N {
        let (p, n, t) = (&from_png[i], &from_npy[i], &from_tvb[i]);
        assert_eq!(p.0, n.0, "image {i}: png {} vs npy {}", p.1, n.1);
        assert_eq!(p.0, t.0, "image {i}: checkpoint {} vs .tvb {}", p.1, t.1);
        // Named: "3 Dress 0.912".
        assert_eq!(
            t.1.split(' ').nth(1),
            FASHION_MNIST_CLASSES[p.0].split(' ').next(),
            "image {i}: {}",
            t.1
        );
        right += (p.0 == lab[8 + i] as usize) as usize;
    }
    eprintln!(
        "{N} test PNGs: png, npy and .tvb top-1 agree on every image; {right} right ({:.1}%)",
        100.0 * right as f64 / N as f64
    );
    assert!(right > N / 4, "{right} of {N}: well above chance (10%)");

    // Inputs that contradict the model, and empty requests, are errors naming both sides.
    let mut c = infer_cmd(&tvb);
    c.args(["--img-size", "56"]).arg(&pngs);
    let e = fails(c);
    assert!(e.contains("56") && e.contains("32"), "{e}");
    let mut c = infer_cmd(&tvb);
    c.args(["--topk", "0"]).arg(&pngs);
    assert!(fails(c).contains("--topk"));
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let mut c = infer_cmd(&tvb);
    c.arg(&empty);
    let e = fails(c);
    assert!(e.contains("holds no image files"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
