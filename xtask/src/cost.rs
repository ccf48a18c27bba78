//! `cargo xtask cost [--fit] [--measure]`: the instruction counts behind the core's cost model
//! (`tinyvit_core::cost`).
//!
//! `--measure` builds the firmware with each configuration of [`configs`] (seeded synthetic
//! weights, BN folded; the int8 file quantised from them with synthetic calibration images),
//! runs it under QEMU on the MPS2 Cortex-M4F and Cortex-M7 (`-icount shift=0`), reads the
//! instructions of its one `cost:` inference and writes the counts to [`FIXTURE`].
//! `--fit` (the default with no flag; both may be given) fits the per-op linear model to the
//! fixture by non-negative least squares on the relative error, prints the coefficient table
//! to paste into `core/src/cost.rs` (`COEFFICIENTS`) and every configuration's error, for the
//! fitted table and for the one in the core.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use tinyvit_core::config::ModelConfig;
use tinyvit_core::cost::{
    self, Coefficients, Cpu, DeviceEngine, Features, Measured, ALL_KINDS, KINDS,
};
use tinyvit_core::engine::fold::synthetic_blob;
use tinyvit_core::int8;
use tinyvit_core::params::splitmix64;

use crate::firmware::{self, Board, Payload};
use crate::util;

/// The committed counts, relative to the workspace root.
pub const FIXTURE: &str = "core/tests/fixtures/cost_counts.txt";

/// The configurations measured: the MCU presets and contracted variants of them that move one
/// or two factors at a time (depths, widths, windows, ratios, head dim, input, classes).
pub fn configs() -> Vec<(String, ModelConfig)> {
    let m4 = ModelConfig::tiny_vit_mcu_m4();
    let h7 = ModelConfig::tiny_vit_mcu_h7();
    let mut v: Vec<(String, ModelConfig)> = vec![
        ("tiny_vit_mcu_m4".into(), m4),
        ("tiny_vit_mcu_h7".into(), h7),
        (
            "tiny_vit_mcu_m4_q8".into(),
            ModelConfig::tiny_vit_mcu_m4_q8(),
        ),
        (
            "tiny_vit_mcu_h7_q8".into(),
            ModelConfig::tiny_vit_mcu_h7_q8(),
        ),
    ];
    let mut add = |name: &str, f: &dyn Fn(&mut ModelConfig)| {
        let mut c = m4;
        f(&mut c);
        v.push((name.to_string(), c));
    };
    add("m4_depth1111", &|c| c.depths = [1, 1, 1, 1]);
    add("m4_narrow", &|c| {
        c.embed_dims = [16, 32, 32, 48];
        c.num_heads = [1, 2, 2, 3];
    });
    add("m4_ws2", &|c| c.window_sizes = [4, 2, 2, 2]);
    add("m4_ratio2", &|c| {
        c.mlp_ratio = 2;
        c.mbconv_expand_ratio = 2;
    });
    add("m4_img32", &|c| c.img_size = 32);
    add("m4_hd8", &|c| c.num_heads = [1, 4, 6, 8]);
    add("m4_hd32", &|c| {
        c.embed_dims = [16, 32, 64, 64];
        c.num_heads = [1, 1, 2, 2];
    });
    add("m4_lc5", &|c| c.local_conv_size = 5);
    add("m4_depth2342", &|c| c.depths = [2, 3, 4, 2]);
    add("m4_wide0", &|c| {
        c.embed_dims = [32, 32, 48, 64];
        c.depths = [1, 2, 2, 1];
    });
    add("m4_ws7", &|c| c.window_sizes = [4, 7, 4, 2]);
    add("m4_ratio36", &|c| {
        c.mlp_ratio = 3;
        c.mbconv_expand_ratio = 6;
    });
    add("m4_img64_rgb", &|c| {
        c.img_size = 64;
        c.in_chans = 3;
    });
    add("m4_cls100", &|c| c.num_classes = 100);
    add("m4_img28", &|c| c.img_size = 28);
    add("m4_w0_8", &|c| c.embed_dims[0] = 8);
    add("m4_e", &|c| c.num_heads = [1, 1, 3, 2]);
    add("m4_d3_n3", &|c| {
        c.embed_dims = [16, 32, 32, 64];
        c.num_heads = [1, 2, 2, 4];
        c.depths = [2, 2, 2, 1];
    });
    add("m4_r3m3", &|c| {
        c.mlp_ratio = 3;
        c.mbconv_expand_ratio = 3;
    });
    add("m4_ws31", &|c| c.window_sizes = [4, 3, 4, 1]);
    add("m4_small28", &|c| {
        c.img_size = 28;
        c.embed_dims = [8, 16, 32, 48];
        c.num_heads = [1, 1, 2, 3];
        c.depths = [1, 1, 2, 1];
    });
    let mut add7 = |name: &str, f: &dyn Fn(&mut ModelConfig)| {
        let mut c = h7;
        f(&mut c);
        v.push((name.to_string(), c));
    };
    add7("h7_depth1221", &|c| c.depths = [1, 2, 2, 1]);
    add7("h7_narrow", &|c| {
        c.embed_dims = [16, 32, 48, 80];
        c.num_heads = [1, 2, 3, 5];
    });
    add7("h7_mlp2", &|c| c.mlp_ratio = 2);
    add7("h7_img28", &|c| c.img_size = 28);
    // The int8 presets at 28 px and the wide, shallow configs that an int8 contraction from
    // them reaches (few deep blocks, wide late stages, smaller windows): the region where the
    // int8 search of the main job decides, so that its instruction budget holds on the board.
    let q8 = ModelConfig::tiny_vit_mcu_h7_q8().with_img_size(28);
    let mut addq = |name: &str, f: &dyn Fn(&mut ModelConfig)| {
        let mut c = q8;
        f(&mut c);
        v.push((name.to_string(), c));
    };
    addq("h7q8_img28", &|_| {});
    addq("m4q8_img28", &|c| {
        *c = ModelConfig::tiny_vit_mcu_m4_q8().with_img_size(28)
    });
    addq("h7q8_28_n2121_m3_w2", &|c| {
        c.depths = [2, 1, 2, 1];
        c.mlp_ratio = 3;
        c.window_sizes = [4, 2, 4, 2];
    });
    addq("h7q8_28_d48_n2111", &|c| {
        c.embed_dims = [32, 48, 128, 160];
        c.num_heads = [1, 3, 8, 10];
        c.depths = [2, 1, 1, 1];
    });
    addq("h7q8_28_d48_n2111_w2", &|c| {
        c.embed_dims = [32, 48, 128, 160];
        c.num_heads = [1, 3, 8, 10];
        c.depths = [2, 1, 1, 1];
        c.window_sizes = [4, 2, 4, 2];
    });
    addq("h7q8_28_d96_n1111_r3", &|c| {
        c.embed_dims = [24, 48, 96, 160];
        c.num_heads = [1, 3, 6, 10];
        c.depths = [1, 1, 1, 1];
        c.mbconv_expand_ratio = 3;
    });
    addq("h7q8_28_n2211_m2_e32", &|c| {
        c.depths = [2, 2, 1, 1];
        c.mlp_ratio = 2;
        c.num_heads = [1, 2, 4, 5];
    });
    // The two winners of the main job's int8 contraction (README, seeds 0 and 1).
    addq("contracted_int8_seed0", &|c| {
        c.depths = [1, 1, 2, 1];
        c.window_sizes = [4, 4, 2, 2];
        c.mlp_ratio = 3;
    });
    addq("contracted_int8_seed1", &|c| {
        c.embed_dims = [24, 64, 128, 160];
        c.depths = [1, 1, 2, 1];
        c.window_sizes = [4, 4, 2, 1];
        c.mlp_ratio = 3;
    });
    v
}

pub fn run(args: &[String]) -> Result<()> {
    let (mut measure, mut fit, mut missing) = (false, false, false);
    for a in args {
        match a.as_str() {
            "--measure" => measure = true,
            "--missing" => {
                measure = true;
                missing = true;
            }
            "--fit" => fit = true,
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    if !measure && !fit {
        fit = true;
    }
    let path = util::root().join(FIXTURE);
    if measure {
        let keep = if missing && path.exists() {
            parse_fixture(&std::fs::read_to_string(&path)?)?
        } else {
            Vec::new()
        };
        measure_all(&path, &keep)?;
        eprintln!("wrote {}", path.display());
    }
    if fit {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        print!("{}", fit_report(&parse_fixture(&text)?)?);
    }
    Ok(())
}

pub const USAGE: &str = "usage: cargo xtask cost [--measure | --missing] [--fit]\n\n\
    --measure  build the firmware for every configuration of xtask/src/cost.rs, count the \
    instructions of one inference on QEMU's Cortex-M4F and M7, write core/tests/fixtures/cost_counts.txt\n\
    --missing  the same, measuring only the configurations the fixture lacks (keeps the others)\n\
    --fit      (default) fit the core's per-op instruction model to those counts and print the \
    COEFFICIENTS table for core/src/cost.rs with every configuration's error";

/// One measured count.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub engine: DeviceEngine,
    pub config: ModelConfig,
    /// Instructions of one inference, `[M4, M7]`.
    pub instr: [u64; 2],
}

fn engine_name(e: DeviceEngine) -> &'static str {
    match e {
        DeviceEngine::F32 => "f32",
        DeviceEngine::Int8 => "int8",
    }
}

/// The fixture line of `row` (the core's format, [`Measured`]).
pub fn line(row: &Row) -> String {
    let mut s = String::new();
    let m = Measured {
        name: &row.name,
        engine: row.engine,
        config: row.config,
        instr: row.instr,
    };
    m.write(&mut s).expect("writing to a String");
    s
}

/// Parses the fixture (comments start with `#`).
pub fn parse_fixture(text: &str) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for l in text.lines().map(str::trim) {
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let m = Measured::parse(l).with_context(|| format!("{FIXTURE}: bad line `{l}`"))?;
        rows.push(Row {
            name: m.name.to_string(),
            engine: m.engine,
            config: m.config,
            instr: m.instr,
        });
    }
    Ok(rows)
}

/// The seeded, folded f32 blob of `cfg`.
fn seeded_blob(cfg: &ModelConfig, seed: u64) -> Result<Vec<f32>> {
    synthetic_blob(cfg, seed).map_err(|e| anyhow::anyhow!("folding: {e}"))
}

/// Calibration images for the int8 file: deterministic values in [-2, 2).
fn calibration(cfg: &ModelConfig, count: usize) -> Vec<f32> {
    let n = (cfg.in_chans * cfg.img_size * cfg.img_size) as usize * count;
    let mut s = 0x5eed_u64;
    (0..n)
        .map(|_| (splitmix64(&mut s) >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0)
        .collect()
}

/// The instructions of the firmware's `cost:` inference of `model` on M4 and M7; `None` when
/// the model does not fit the emulated board.
fn count(name: &str, model: PathBuf) -> Result<Option<[u64; 2]>> {
    let payload = Payload {
        model: Some(model),
        vectors: None,
    };
    let elf = match firmware::build(Board::QemuM4, &payload) {
        Ok(e) => e,
        Err(e) if format!("{e:#}").contains(firmware::DOES_NOT_FIT) => {
            eprintln!("{name}: does not fit the emulated board, not measured");
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let mut instr = [0u64; 2];
    for (k, board) in Board::MPS2.into_iter().enumerate() {
        let out = firmware::run_qemu(board, &elf)?;
        if out.code != Some(0) {
            print!("{}", out.stdout);
            bail!("{name} failed on {}", board.name());
        }
        instr[k] = out
            .stdout
            .lines()
            .filter(|l| l.starts_with("cost: "))
            .find_map(|l| {
                l.split(' ')
                    .find_map(|w| w.strip_prefix("instr="))
                    .and_then(|v| v.parse().ok())
            })
            .with_context(|| format!("{name} printed no `cost: ... instr=` on {}", board.name()))?;
    }
    Ok(Some(instr))
}

/// Measures every configuration, rewriting `path` after each count (so that a long run that is
/// stopped keeps what it measured).
fn measure_all(path: &std::path::Path, keep: &[Row]) -> Result<()> {
    let dir = firmware::target_dir().join("cost");
    std::fs::create_dir_all(&dir)?;
    let mut text = String::from(
        "# Instructions of one inference (the firmware's `cost:` line, zero input) under QEMU \
         -icount shift=0\n# on mps2-an386 (Cortex-M4F, m4=) and mps2-an500 (Cortex-M7, m7=), \
         seeded synthetic weights.\n# Written by `cargo xtask cost --measure`; \
         core/tests/cost_model.rs checks tinyvit_core::cost against it.\n",
    );
    for (k, (name, cfg)) in configs().into_iter().enumerate() {
        cfg.validate().map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let blob = seeded_blob(&cfg, 100 + k as u64)?;
        let f32_tvb = tinyvit_core::tvb::write(&cfg, &blob).map_err(|e| anyhow::anyhow!("{e}"))?;
        let q8 = int8::quantize::quantize_tvb(
            &f32_tvb,
            &calibration(&cfg, 4),
            &int8::quantize::Options::default(),
        )
        .map_err(|e| anyhow::anyhow!("{name}: quantising: {e}"))?;
        for (engine, bytes) in [(DeviceEngine::F32, &f32_tvb), (DeviceEngine::Int8, &q8)] {
            if let Some(row) = keep
                .iter()
                .find(|r| r.name == name && r.engine == engine && r.config == cfg)
            {
                writeln!(text, "{}", line(row))?;
                continue;
            }
            let file = dir.join(format!("{name}-{}.tvb", engine_name(engine)));
            std::fs::write(&file, bytes)?;
            util::step(&format!("cost: {name} ({})", engine_name(engine)));
            if let Some(instr) = count(&name, file)? {
                let row = Row {
                    name: name.clone(),
                    engine,
                    config: cfg,
                    instr,
                };
                eprintln!("{}", line(&row));
                writeln!(text, "{}", line(&row))?;
                std::fs::write(path, &text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// Non-negative least squares `min |A x - b|` with `x >= 0`, by cyclic coordinate descent on
/// the normal equations (columns of `a` that are all zero keep `x = 0`).
pub fn nnls(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = a.first().map_or(0, Vec::len);
    let mut ata = vec![vec![0.0; n]; n];
    let mut atb = vec![0.0; n];
    for (row, &y) in a.iter().zip(b) {
        for i in 0..n {
            atb[i] += row[i] * y;
            for j in 0..n {
                ata[i][j] += row[i] * row[j];
            }
        }
    }
    let mut x = vec![0.0; n];
    for _ in 0..200_000 {
        let mut change = 0.0f64;
        for i in 0..n {
            if ata[i][i] <= 0.0 {
                continue;
            }
            let g: f64 = (0..n).map(|j| ata[i][j] * x[j]).sum::<f64>() - atb[i];
            let new = (x[i] - g / ata[i][i]).max(0.0);
            change = change.max((new - x[i]).abs() * ata[i][i].sqrt());
            x[i] = new;
        }
        if change < 1e-12 {
            break;
        }
    }
    x
}

/// Fits one (engine, core): each row scaled by its count, so that the fit minimises the
/// squared relative errors.
pub fn fit(rows: &[&Row], cpu: usize) -> Result<Coefficients> {
    let mut a = Vec::new();
    let mut b = Vec::new();
    for r in rows {
        let f = Features::of(&r.config).map_err(|e| anyhow::anyhow!("{}: {e}", r.name))?;
        let y = r.instr[cpu] as f64;
        a.push(f.as_row().iter().map(|v| v / y).collect::<Vec<f64>>());
        b.push(1.0);
    }
    let x = nnls(&a, &b);
    let mut row = [0.0; 3 * KINDS];
    row.copy_from_slice(&x);
    Ok(Coefficients::from_row(&row))
}

fn rel(model: f64, measured: u64) -> f64 {
    (model - measured as f64).abs() / measured as f64
}

/// The coefficient table and the errors, as printed by `--fit`.
pub fn fit_report(rows: &[Row]) -> Result<String> {
    let mut out = String::new();
    let mut table =
        String::from("pub const COEFFICIENTS: [(DeviceEngine, Cpu, Coefficients); 4] = [\n");
    for engine in [DeviceEngine::F32, DeviceEngine::Int8] {
        let set: Vec<&Row> = rows.iter().filter(|r| r.engine == engine).collect();
        if set.is_empty() {
            continue;
        }
        for (k, cpu) in [Cpu::M4, Cpu::M7].into_iter().enumerate() {
            let c = fit(&set, k)?;
            let fmt = |v: &[f64; KINDS]| {
                v.iter()
                    .map(|x| format!("{x:.6}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            writeln!(
                table,
                "    (\n        DeviceEngine::{engine:?},\n        Cpu::{cpu:?},\n        \
                 Coefficients {{\n            per_mac: [{}],\n            per_output: [{}],\n            \
                 per_op: [{}],\n        }},\n    ),",
                fmt(&c.per_mac),
                fmt(&c.per_output),
                fmt(&c.per_op)
            )?;
            let core = cost::coefficients(engine, cpu);
            writeln!(
                out,
                "\n{} on {cpu:?}: {} configurations (kinds: {})",
                engine_name(engine),
                set.len(),
                ALL_KINDS.map(|k| k.name()).join(", ")
            )?;
            writeln!(
                out,
                "| config | measured | fitted | error | core table | error |"
            )?;
            writeln!(out, "|---|---:|---:|---:|---:|---:|")?;
            let (mut worst, mut worst_core) = (0.0f64, 0.0f64);
            for r in &set {
                let f = Features::of(&r.config).map_err(|e| anyhow::anyhow!("{e}"))?;
                let (m, mc) = (c.instructions(&f), core.instructions(&f));
                let (e, ec) = (rel(m, r.instr[k]), rel(mc, r.instr[k]));
                worst = worst.max(e);
                worst_core = worst_core.max(ec);
                writeln!(
                    out,
                    "| {} | {} | {m:.0} | {:.2} % | {mc:.0} | {:.2} % |",
                    r.name,
                    r.instr[k],
                    100.0 * e,
                    100.0 * ec
                )?;
            }
            // Leave-one-out: how the fit does on a configuration it has not seen.
            let mut loo = 0.0f64;
            for i in 0..set.len() {
                let rest: Vec<&Row> = set
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, r)| *r)
                    .collect();
                let ci = fit(&rest, k)?;
                let f = Features::of(&set[i].config).map_err(|e| anyhow::anyhow!("{e}"))?;
                loo = loo.max(rel(ci.instructions(&f), set[i].instr[k]));
            }
            writeln!(
                out,
                "largest error: fitted {:.2} %, leave-one-out {:.2} %, core table {:.2} % \
                 (core bound {:.1} %)",
                100.0 * worst,
                100.0 * loo,
                100.0 * worst_core,
                100.0 * cost::bound(engine)
            )?;
        }
    }
    table.push_str("];\n");
    out.push_str("\ncoefficient table for core/src/cost.rs:\n\n");
    out.push_str(&table);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nnls_recovers_a_non_negative_solution() {
        let a = vec![
            vec![1.0, 0.0, 2.0],
            vec![0.0, 1.0, 1.0],
            vec![1.0, 1.0, 0.0],
            vec![2.0, 1.0, 1.0],
        ];
        let x = [0.5, 2.0, 1.5];
        let b: Vec<f64> = a
            .iter()
            .map(|r| r.iter().zip(&x).map(|(p, q)| p * q).sum())
            .collect();
        let got = nnls(&a, &b);
        for (g, w) in got.iter().zip(&x) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        // A negative least-squares solution is clamped at zero.
        let got = nnls(&[vec![1.0, 1.0], vec![1.0, 2.0]], &[2.0, 1.0]);
        assert!(got.iter().all(|v| *v >= 0.0), "{got:?}");
    }

    #[test]
    fn fixture_lines_round_trip_and_configs_validate() {
        for (name, cfg) in configs() {
            cfg.validate().unwrap();
            let row = Row {
                name: name.clone(),
                engine: DeviceEngine::Int8,
                config: cfg,
                instr: [7, 9],
            };
            let back = parse_fixture(&line(&row)).unwrap();
            assert_eq!(back.len(), 1);
            assert_eq!(back[0].config, cfg, "{name}");
            assert_eq!(back[0].instr, [7, 9]);
        }
    }
}
