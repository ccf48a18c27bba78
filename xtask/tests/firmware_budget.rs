//! `cargo xtask firmware build --board NAME --model M.tvb` holds the model to the board's
//! budget before anything is built (issue 15, item 6): over it, the command fails at once with
//! a sentence naming the model's bytes, its engine arena and the budget's numbers.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tinyvit_core::config::{mcu_budget, ModelConfig};

fn write_tvb(name: &str, cfg: &ModelConfig) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-fw-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let blob = vec![0f32; tinyvit_core::params::folded_blob_len(cfg)];
    let p = dir.join(name);
    std::fs::write(&p, tinyvit_core::tvb::write(cfg, &blob).unwrap()).unwrap();
    p
}

#[test]
fn a_model_over_the_boards_budget_stops_the_build_with_the_numbers() {
    // The M4 preset grown to 1000 classes and 384 px: past the M4 and the H7 budgets.
    let cfg = ModelConfig {
        img_size: 384,
        num_classes: 1000,
        ..ModelConfig::tiny_vit_mcu_m4()
    };
    let model = write_tvb("grown.tvb", &cfg);
    let bytes = std::fs::metadata(&model).unwrap().len();
    let arena = 4 * tinyvit_core::engine::arena_len(&cfg).unwrap() as u64;
    let m4 = mcu_budget("m4").unwrap();
    let h7 = mcu_budget("h7").unwrap();
    assert!(bytes > m4.model_bytes && arena > m4.arena_bytes && arena > h7.arena_bytes);
    for (args, whose, budget) in [
        (vec!["--board", "feather-f405"], "feather-f405 (m4)", m4),
        (vec!["--board", "nucleo-h743"], "nucleo-h743 (h7)", h7),
        (vec!["--mcu", "h7"], "--mcu h7", h7),
    ] {
        let start = Instant::now();
        let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(["firmware", "build"])
            .args(&args)
            .arg("--model")
            .arg(&model)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {err}");
        assert!(
            err.contains(&format!("exceeds the budget of {whose}"))
                && err.contains(&format!(
                    "arena {arena} B > {} B of RAM",
                    budget.arena_bytes
                )),
            "{args:?}: {err}"
        );
        if bytes > budget.model_bytes {
            assert!(
                err.contains(&format!(
                    "model {bytes} B > {} B of flash",
                    budget.model_bytes
                )),
                "{args:?}: {err}"
            );
        }
        // Refused before any cargo build of the firmware started.
        assert!(!err.contains("$ "), "{args:?}: {err}");
        assert!(start.elapsed() < Duration::from_secs(20));
    }
    // An unknown --mcu is refused, naming the presets.
    let o = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["firmware", "build", "--mcu", "m9", "--model"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--mcu m9: not a microcontroller preset"));
    std::fs::remove_dir_all(model.parent().unwrap()).unwrap();
}
