//! `tinyvit contract` (progressive model contraction) end to end on a tiny task: a store written
//! by a teacher that reads the class from the image's brightness, a tiny TinyViT given as TOML,
//! one or two steps of two candidates trained for one epoch each. Checks the outputs, that
//! candidates over budget are listed and never trained, and that a search killed with SIGKILL
//! and rerun with `--resume` writes the same `best.toml` and results as an uninterrupted one.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{brightness_pass, ok, tmpdir, BIN, CPU_QUIET};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::params::param_count;

/// Labelled IDX files of `n` 28x28 images, class `i % 10` drawn as grey level `20 c + 10`.
fn brightness_idx(dir: &Path, name: &str, n: u32, offset: u32) -> String {
    let mut img = vec![0, 0, 8, 3];
    for v in [n, 28, 28] {
        img.extend(v.to_be_bytes());
    }
    let mut lab = vec![0, 0, 8, 1];
    lab.extend(n.to_be_bytes());
    for i in 0..n {
        let c = (i + offset) % 10;
        for y in 0..28u32 {
            for x in 0..28u32 {
                img.push((20 * c + 10 + (x * 3 + y + i) % 5) as u8);
            }
        }
        lab.push(c as u8);
    }
    let (ip, lp) = (
        dir.join(format!("{name}-img.idx")),
        dir.join(format!("{name}-lab.idx")),
    );
    std::fs::write(&ip, img).unwrap();
    std::fs::write(&lp, lab).unwrap();
    format!("idx:{},{}", ip.display(), lp.display())
}

/// The tiny task: training data, validation data, a one-epoch store and the starting config.
struct Task {
    dir: PathBuf,
    data: String,
    val: String,
    store: PathBuf,
    from: PathBuf,
    from_cfg: ModelConfig,
}

fn task(name: &str) -> Task {
    let dir = tmpdir("contract", name);
    let data = brightness_idx(&dir, "train", 40, 0);
    let val = brightness_idx(&dir, "val", 20, 3);
    let store = dir.join("store");
    brightness_pass(&data, &store, 1, 3);
    let from_cfg = ModelConfig {
        in_chans: 1,
        img_size: 28,
        num_classes: 10,
        embed_dims: [16, 32, 32, 32],
        depths: [1, 2, 1, 1],
        num_heads: [1, 2, 2, 2],
        window_sizes: [1, 4, 2, 1],
        mlp_ratio: 2,
        mbconv_expand_ratio: 2,
        local_conv_size: 3,
        drop_path_rate: 0.0,
    };
    let from = dir.join("from.toml");
    std::fs::write(&from, tinyvit_host::arch::to_toml(&from_cfg).unwrap()).unwrap();
    Task {
        dir,
        data,
        val,
        store,
        from,
        from_cfg,
    }
}

/// `tinyvit contract` over the task under `budget`: `steps` steps of `candidates` candidates,
/// 1 epoch each.
fn search(t: &Task, out: &Path, budget: &[&str], steps: u32, candidates: u32) -> Command {
    let mut c = Command::new(BIN);
    c.arg("contract")
        .arg("--from")
        .arg(&t.from)
        .arg("--logits")
        .arg(&t.store)
        .args(["--data", &t.data, "--val", &t.val])
        .args(budget)
        .args(["--steps", &steps.to_string()])
        .args(["--candidates", &candidates.to_string()])
        .args(["--epochs", "1", "--batch-size", "8", "--seed", "5"])
        .args(CPU_QUIET)
        .arg("--out")
        .arg(out);
    c
}

/// `tinyvit contract` over the task: `steps` steps of 2 candidates, 1 epoch, and a parameter
/// budget one below the starting config's (so that it is over budget and never trained).
fn contract(t: &Task, out: &Path, steps: u32) -> Command {
    let max = (param_count(&t.from_cfg) - 1).to_string();
    search(t, out, &["--max-params", &max], steps, 2)
}

fn state(out: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap()
}

#[test]
fn a_tiny_search_writes_best_report_and_pareto() {
    let t = task("tiny");
    let out = t.dir.join("search");
    let o = ok(contract(&t, &out, 1));
    let line: serde_json::Value = serde_json::from_slice(
        o.stdout
            .split(|b| *b == b'\n')
            .find(|l| !l.is_empty())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["trained"], 2, "{line}");
    let s = state(&out);
    assert_eq!(s["done"], true);
    let entries = s["entries"].as_array().unwrap();
    // The starting config is over the parameter budget: listed, never trained.
    assert_eq!(entries[0]["moves"], "from");
    assert_eq!(
        entries[0]["status"]["over_budget"]["limits"][0], "params",
        "{}",
        entries[0]
    );
    assert!(!t
        .dir
        .join("search/runs")
        .join(tinyvit_host::contraction::config_id(&t.from_cfg))
        .exists());
    let trained: Vec<_> = entries
        .iter()
        .filter(|e| e["status"]["trained"].is_object())
        .collect();
    assert_eq!(trained.len(), 2);
    for e in &trained {
        assert!(e["figures"]["params"].as_u64().unwrap() < param_count(&t.from_cfg));
        let v = e["status"]["trained"]["val_top1"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&v));
    }
    // best.toml is an --arch everywhere: here `tinyvit presets --arch`.
    let best = out.join("best.toml");
    let cfg = tinyvit_host::arch::resolve(best.to_str().unwrap()).unwrap();
    assert!(param_count(&cfg) < param_count(&t.from_cfg));
    let mut p = Command::new(BIN);
    p.args(["presets", "--arch", best.to_str().unwrap()]);
    let table = String::from_utf8(ok(p).stdout).unwrap();
    assert!(
        table.contains(&format!(
            "| {} | 1x28x28 | 10 | {} |",
            best.display(),
            param_count(&cfg)
        )),
        "{table}"
    );
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let rows = report
        .lines()
        .filter(|l| l.starts_with("| 0 ") || l.starts_with("| 1 "))
        .count();
    assert_eq!(rows, entries.len(), "{report}");
    assert!(
        report.contains("over budget (params), not trained"),
        "{report}"
    );
    assert!(report.contains("**best**"), "{report}");
    let png = std::fs::read(out.join("pareto.png")).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // A second search into the same folder without --resume is refused.
    let err = support::fails(contract(&t, &out, 1));
    assert!(err.contains("pass --resume"), "{err}");
}

#[test]
fn resume_after_sigkill_gives_the_same_best() {
    let t = task("resume");
    let whole = t.dir.join("whole");
    ok(contract(&t, &whole, 2));
    let killed = t.dir.join("killed");
    let mut child = contract(&t, &killed, 2)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the state holds the first trained candidate (the second is then in training).
    let start = Instant::now();
    let mut killed_mid = false;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        let n = std::fs::read_to_string(killed.join("state.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .map_or(0, |s| {
                s["entries"].as_array().map_or(0, |e| {
                    e.iter()
                        .filter(|e| e["status"]["trained"].is_object())
                        .count()
                })
            });
        if n >= 1 {
            child.kill().unwrap(); // SIGKILL
            killed_mid = true;
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no progress");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.wait();
    assert!(killed_mid, "the search ended before it could be killed");
    assert_eq!(state(&killed)["done"], false);
    let mut again = contract(&t, &killed, 2);
    again.arg("--resume");
    ok(again);
    assert_eq!(
        std::fs::read_to_string(killed.join("best.toml")).unwrap(),
        std::fs::read_to_string(whole.join("best.toml")).unwrap()
    );
    let (a, b) = (state(&killed), state(&whole));
    assert_eq!(a["entries"], b["entries"]);
    assert_eq!(
        std::fs::read_to_string(killed.join("report.md")).unwrap(),
        std::fs::read_to_string(whole.join("report.md"))
            .unwrap()
            .replace(whole.to_str().unwrap(), killed.to_str().unwrap())
    );
    // Two candidates at once, each in its own `tinyvit train` process: the same search.
    let par = t.dir.join("parallel");
    let mut p = contract(&t, &par, 2);
    p.args(["--jobs", "2"]);
    ok(p);
    assert_eq!(state(&par)["entries"], b["entries"]);
    assert_eq!(
        std::fs::read_to_string(par.join("best.toml")).unwrap(),
        std::fs::read_to_string(whole.join("best.toml")).unwrap()
    );
    assert!(par.join("logs").read_dir().unwrap().count() >= 2);
}

/// `tinyvit contract` over the task with only a host latency budget: one step, one candidate.
fn contract_latency(t: &Task, out: &Path, ms: &str) -> Command {
    search(
        t,
        out,
        &["--max-latency-ms", ms, "--latency-engine", "exact"],
        1,
        1,
    )
}

#[test]
fn a_latency_budget_is_measured_and_enforced() {
    let t = task("latency");
    // A budget no model meets: every config is measured, listed over it, never trained.
    let tight = t.dir.join("tight");
    let err = support::fails(contract_latency(&t, &tight, "0.001"));
    assert!(err.contains("no candidate within budget"), "{err}");
    let s = state(&tight);
    let entries = s["entries"].as_array().unwrap();
    assert!(entries.len() > 1, "{s}");
    for e in entries {
        assert_eq!(e["status"]["over_budget"]["limits"][0], "latency", "{e}");
        assert!(e["figures"]["latency_us"].as_u64().unwrap() > 1, "{e}");
    }
    assert!(!tight.join("runs").exists());
    // A budget every model meets: trained, with the measured latency in the report.
    let loose = t.dir.join("loose");
    ok(contract_latency(&t, &loose, "100000"));
    let s = state(&loose);
    let trained: Vec<_> = s["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["status"]["trained"].is_object())
        .collect();
    assert_eq!(trained.len(), 2, "{s}");
    for e in &trained {
        assert!(e["figures"]["latency_us"].as_u64().unwrap() > 1, "{e}");
    }
    let report = std::fs::read_to_string(loose.join("report.md")).unwrap();
    assert!(report.contains("latency us"), "{report}");
    assert!(
        report.contains("on the `exact` engine (measured)"),
        "{report}"
    );
    // A resume reuses the recorded measurements, so it decides exactly as the search did.
    let mut again = contract_latency(&t, &loose, "100000");
    again.arg("--resume");
    ok(again);
    assert_eq!(state(&loose)["entries"], s["entries"]);
}
