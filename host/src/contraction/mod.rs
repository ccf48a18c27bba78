//! `tinyvit contract`: progressive model contraction under a device budget, every candidate
//! trained from one logit store.
//!
//! Each step takes the current config, lists its neighbours one or two factor moves smaller
//! (`tinyvit_core::contraction`), prices each with the core's cost model
//! (`tinyvit_core::cost`), lists those over budget without training them, and trains up to
//! `--candidates` of the others with `tinyvit train`'s own code, from the same store with the
//! same recipe, seed and epochs: one after another in this process, or `--jobs` at once, each a
//! child `tinyvit train` on its own device of `--devices`. The candidate with the best val
//! top-1 seeds the next step (when none fits the budget, the one nearest to it does,
//! untrained). The `--from` config is trained too when it fits, as the reference. A host
//! latency limit (`--max-latency-ms`) is measured once per config on `--latency-engine` and
//! recorded with the config's figures.
//!
//! `DIR/state.json` is rewritten atomically after every candidate; `--resume` replays the same
//! deterministic search and trains only what the state does not hold (a candidate whose
//! training was cut off is trained again from the start, with the same seed). Outputs:
//! `DIR/best.toml` (the best trained config within budget: highest val top-1, then fewest
//! instructions), `DIR/report.md`, `DIR/pareto.png`.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Parser;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tinyvit_core::config::{mcu_budget, ModelConfig};
use tinyvit_core::contraction::{for_each_candidate, Candidate};
use tinyvit_core::cost::{self, Cost, Cpu, DeviceEngine};

use crate::draw::{self, Axes, Canvas, Series};
use crate::store::write_file;
use crate::train::TrainArgs;

/// `tinyvit contract`'s flags.
#[derive(clap::Args, Clone, Debug)]
pub struct ContractArgs {
    /// The starting architecture: a preset or a FILE.toml.
    #[arg(long)]
    pub from: String,
    /// The logit store every candidate trains from.
    #[arg(long)]
    pub logits: PathBuf,
    /// Training data SPEC (optional when the store records it).
    #[arg(long)]
    pub data: Option<String>,
    /// Validation data SPEC: the accuracy candidates are ranked by.
    #[arg(long)]
    pub val: String,
    /// A board budget: an MCU preset or board (`m4`, `h7`, `tiny_vit_mcu_m4`, ...): its flash
    /// for the model, its RAM for the arena, and instructions per inference no more than its
    /// hand-picked preset's at the same input size and classes (modelled).
    #[arg(long)]
    pub mcu: Option<String>,
    /// Most learnable parameters.
    #[arg(long)]
    pub max_params: Option<u64>,
    /// Most multiply-accumulates per inference.
    #[arg(long)]
    pub max_macs: Option<u64>,
    /// Most instructions per inference (the core's model, on --cpu with --engine).
    #[arg(long)]
    pub max_instructions: Option<u64>,
    /// Most model bytes (with --engine's weights); overrides --mcu's flash.
    #[arg(long)]
    pub max_model_bytes: Option<u64>,
    /// Most arena bytes (of --engine); overrides --mcu's RAM.
    #[arg(long)]
    pub max_arena_bytes: Option<u64>,
    /// Most milliseconds per single-image inference on the host engine --latency-engine
    /// (median of 5 timed runs after a warm-up, synthetic weights); measured once per config
    /// and recorded, so a resumed search decides as the first did.
    #[arg(long)]
    pub max_latency_ms: Option<f64>,
    /// The host engine --max-latency-ms is measured on: `fast` (GEMM) or `exact` (the scalar
    /// engine the device runs).
    #[arg(long, default_value = "fast")]
    pub latency_engine: String,
    /// The device engine the budget is for: `f32` (exact) or `int8`.
    #[arg(long, default_value = "f32")]
    pub engine: String,
    /// The core whose instructions count: `m4` or `m7` (default: the --mcu board's, else m4).
    #[arg(long)]
    pub cpu: Option<String>,
    /// Contraction steps.
    #[arg(long, default_value_t = 2)]
    pub steps: u32,
    /// Candidates trained per step (those over budget are listed, not counted).
    #[arg(long, default_value_t = 4)]
    pub candidates: u32,
    /// Epochs of every training run.
    #[arg(long)]
    pub epochs: u64,
    /// Seed of every training run and of the candidate order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the search recorded in `--out`.
    #[arg(long)]
    pub resume: bool,
    /// Input side of every model (default: --from's).
    #[arg(long)]
    pub img_size: Option<u32>,
    /// Classes of every model (default: --from's).
    #[arg(long)]
    pub num_classes: Option<u32>,
    /// Input channels of every model (default: --from's).
    #[arg(long)]
    pub in_chans: Option<u32>,
    /// Passed to every `tinyvit train` run.
    #[arg(long)]
    pub batch_size: Option<u64>,
    /// Passed to every `tinyvit train` run.
    #[arg(long)]
    pub recipe: Option<String>,
    /// Passed to every `tinyvit train` run.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Passed to every `tinyvit train` run (`auto`, `cpu`, `cuda`, `cuda:N`).
    #[arg(long, conflicts_with = "devices")]
    pub device: Option<String>,
    /// Train a step's candidates in parallel, one `tinyvit train` process per device of this
    /// comma-separated list (`cuda:0,cuda:1`); sets --jobs to the list's length unless given.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Candidates trained at once, each in its own `tinyvit train` process (1: one after
    /// another, in this process). The results do not depend on it: every run has its own seed
    /// and the state lists candidates in the search's order. On a CPU, give --threads so the
    /// jobs share the cores.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Passed to every `tinyvit train` run.
    #[arg(long)]
    pub threads: Option<i32>,
    /// Passed to every `tinyvit train` run.
    #[arg(long)]
    pub workers: Option<usize>,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// The budget a candidate must fit; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub params: Option<u64>,
    pub macs: Option<u64>,
    pub model_bytes: Option<u64>,
    pub arena_bytes: Option<u64>,
    pub instructions: Option<u64>,
    /// Microseconds per inference on the host latency engine.
    #[serde(default)]
    pub latency_us: Option<u64>,
}

/// The figures of one config the budget and the report use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    pub params: u64,
    pub macs: u64,
    /// Model bytes of the budget's engine.
    pub model_bytes: u64,
    /// Arena bytes of the budget's engine.
    pub arena_bytes: u64,
    /// Modelled instructions of the budget's engine on the budget's core.
    pub instructions: u64,
    /// Measured microseconds per inference on the host latency engine (only when the budget
    /// has a latency limit).
    #[serde(default)]
    pub latency_us: Option<u64>,
}

/// What the search prices configs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pricing {
    pub engine: Engine,
    pub cpu: CpuName,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Engine {
    F32,
    Int8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CpuName {
    M4,
    M7,
}

impl Pricing {
    /// The figures of `cfg`.
    pub fn figures(&self, cfg: &ModelConfig) -> Result<Figures> {
        let c: Cost = cost::cost(cfg).map_err(|e| anyhow!("{e}"))?;
        let k = match self.cpu {
            CpuName::M4 => 0,
            CpuName::M7 => 1,
        };
        Ok(match self.engine {
            Engine::F32 => Figures {
                params: c.params,
                macs: c.macs,
                model_bytes: c.f32_bytes,
                arena_bytes: c.f32_arena_bytes,
                instructions: c.f32_instructions[k],
                latency_us: None,
            },
            Engine::Int8 => Figures {
                params: c.params,
                macs: c.macs,
                model_bytes: c.int8_bytes,
                arena_bytes: c.int8_arena_bytes,
                instructions: c.int8_instructions[k],
                latency_us: None,
            },
        })
    }

    fn device_engine(&self) -> DeviceEngine {
        match self.engine {
            Engine::F32 => DeviceEngine::F32,
            Engine::Int8 => DeviceEngine::Int8,
        }
    }

    fn core_cpu(&self) -> Cpu {
        match self.cpu {
            CpuName::M4 => Cpu::M4,
            CpuName::M7 => Cpu::M7,
        }
    }
}

impl Budget {
    /// The limits `f` exceeds, by name (empty when it fits).
    pub fn over(&self, f: &Figures) -> Vec<&'static str> {
        let mut v = Vec::new();
        let checks = [
            ("params", self.params, f.params),
            ("MACs", self.macs, f.macs),
            ("flash", self.model_bytes, f.model_bytes),
            ("arena", self.arena_bytes, f.arena_bytes),
            ("instructions", self.instructions, f.instructions),
        ];
        for (name, limit, value) in checks {
            if limit.is_some_and(|l| value > l) {
                v.push(name);
            }
        }
        if let (Some(l), Some(us)) = (self.latency_us, f.latency_us) {
            if us > l {
                v.push("latency");
            }
        }
        v
    }

    /// The largest ratio of a figure to its limit (how far over budget; <= 1 fits).
    pub fn ratio(&self, f: &Figures) -> f64 {
        [
            (self.params, f.params),
            (self.macs, f.macs),
            (self.model_bytes, f.model_bytes),
            (self.arena_bytes, f.arena_bytes),
            (self.instructions, f.instructions),
            (self.latency_us, f.latency_us.unwrap_or(0)),
        ]
        .iter()
        .filter_map(|(l, v)| l.map(|l| *v as f64 / l.max(1) as f64))
        .fold(0.0, f64::max)
    }

    fn is_empty(&self) -> bool {
        *self == Budget::default()
    }
}

/// The budget and pricing the flags give; `from` fixes the task (input size, channels and
/// classes) the board's hand-picked preset is priced at.
pub fn budget_of(args: &ContractArgs, from: &ModelConfig) -> Result<(Budget, Pricing)> {
    let engine = match args.engine.as_str() {
        "f32" => Engine::F32,
        "int8" => Engine::Int8,
        e => bail!("--engine `{e}`: use f32 or int8"),
    };
    let board = args.mcu.as_deref().map(|m| {
        let base = m.trim_end_matches("_q8");
        (m, base)
    });
    let cpu = match (args.cpu.as_deref(), board) {
        (Some("m4"), _) => CpuName::M4,
        (Some("m7"), _) => CpuName::M7,
        (Some(c), _) => bail!("--cpu `{c}`: use m4 or m7"),
        (None, Some((_, b))) if b.ends_with("h7") => CpuName::M7,
        (None, _) => CpuName::M4,
    };
    let pricing = Pricing { engine, cpu };
    let mut b = Budget::default();
    if let Some((name, base)) = board {
        let mb = mcu_budget(name).with_context(|| {
            format!("--mcu `{name}`: not a board (m4, h7) or MCU preset (tiny_vit_mcu_m4, ...)")
        })?;
        b.model_bytes = Some(mb.model_bytes);
        b.arena_bytes = Some(mb.arena_bytes);
        // Instructions: no more than the board's hand-picked preset for the budget's engine,
        // on the same task (input size, channels, classes).
        let preset = match base {
            "m4" | "tiny_vit_mcu_m4" => ModelConfig::tiny_vit_mcu_m4(),
            _ => ModelConfig::tiny_vit_mcu_h7(),
        };
        let preset = match engine {
            Engine::F32 => preset,
            Engine::Int8 => ModelConfig::preset(&format!(
                "tiny_vit_mcu_{}_q8",
                if preset == ModelConfig::tiny_vit_mcu_m4() {
                    "m4"
                } else {
                    "h7"
                }
            ))
            .unwrap_or(preset),
        }
        .with_img_size(from.img_size)
        .with_in_chans(from.in_chans)
        .with_num_classes(from.num_classes);
        b.instructions = Some(
            cost::instructions(&preset, pricing.device_engine(), pricing.core_cpu())
                .map_err(|e| anyhow!("{e}"))?,
        );
    }
    for (v, slot) in [
        (args.max_params, &mut b.params),
        (args.max_macs, &mut b.macs),
        (args.max_model_bytes, &mut b.model_bytes),
        (args.max_arena_bytes, &mut b.arena_bytes),
        (args.max_instructions, &mut b.instructions),
    ] {
        if v.is_some() {
            *slot = v;
        }
    }
    if let Some(ms) = args.max_latency_ms {
        ensure!(
            ms.is_finite() && ms > 0.0,
            "--max-latency-ms {ms}: give a positive number of milliseconds"
        );
        latency_engine(&args.latency_engine)?;
        b.latency_us = Some((ms * 1000.0).round() as u64);
    }
    ensure!(
        !b.is_empty(),
        "give a budget: --mcu BOARD and/or --max-params, --max-macs, --max-instructions, \
         --max-model-bytes, --max-arena-bytes, --max-latency-ms"
    );
    Ok((b, pricing))
}

/// What became of a candidate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Trained; its val top-1.
    Trained { val_top1: f64 },
    /// Over budget (the limits named): never trained.
    OverBudget { limits: Vec<String> },
}

/// One row of the search: a candidate of a step (step 0: the `--from` config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub step: u32,
    /// The factor moves, e.g. `D3- N2-` (`from` for step 0).
    pub moves: String,
    pub config: ModelConfig,
    pub figures: Figures,
    pub status: Status,
    /// Whether this row seeded the next step.
    pub chosen: bool,
}

impl Entry {
    fn val(&self) -> Option<f64> {
        match self.status {
            Status::Trained { val_top1 } => Some(val_top1),
            Status::OverBudget { .. } => None,
        }
    }
}

/// `DIR/state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// The settings that fix the search (a resume must agree).
    pub key: String,
    pub budget: Budget,
    pub pricing: Pricing,
    pub entries: Vec<Entry>,
    pub done: bool,
}

/// The string that fixes a search: everything but the output folder, resume and verbosity.
fn key_of(args: &ContractArgs, from: &ModelConfig, budget: &Budget, pricing: &Pricing) -> String {
    format!(
        "from {:?} | logits {} | data {:?} | val {} | budget {budget:?} | pricing {pricing:?} | \
         steps {} | candidates {} | epochs {} | seed {} | batch {:?} | recipe {:?} | lr {:?} | \
         threads {:?}{}",
        from,
        args.logits.display(),
        args.data,
        args.val,
        args.steps,
        args.candidates,
        args.epochs,
        args.seed,
        args.batch_size,
        args.recipe,
        args.lr,
        args.threads,
        if budget.latency_us.is_some() {
            format!(" | latency engine {}", args.latency_engine)
        } else {
            String::new()
        }
    )
}

/// A short stable name of a config (run folders, config files).
pub fn config_id(cfg: &ModelConfig) -> String {
    let text = crate::arch::to_toml(cfg).unwrap_or_default();
    let h = Sha256::digest(text.as_bytes());
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The starting config with the task's overrides.
fn from_config(args: &ContractArgs) -> Result<ModelConfig> {
    let mut c = crate::arch::resolve(&args.from)?;
    if let Some(s) = args.img_size {
        c.img_size = s;
    }
    if let Some(n) = args.num_classes {
        c.num_classes = n;
    }
    if let Some(n) = args.in_chans {
        c.in_chans = n;
    }
    c.validate()
        .map_err(|e| anyhow!("--from {}: {e}", args.from))?;
    Ok(c)
}

/// The order of a step's candidates when its config is over budget, by their ratio to the
/// budget ([`Budget::ratio`]): those that fit first, the largest first; then the rest, the
/// nearest to the budget first.
fn over_budget_order(a: f64, b: f64) -> std::cmp::Ordering {
    match (a <= 1.0, b <= 1.0) {
        (true, true) => b.total_cmp(&a),
        (false, false) => a.total_cmp(&b),
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
    }
}

/// SplitMix64-driven Fisher-Yates shuffle (the candidate order of a step).
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut s = seed;
    for i in (1..v.len()).rev() {
        let j = (tinyvit_core::params::splitmix64(&mut s) % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// Writes `DIR/state.json` atomically.
fn save(dir: &Path, state: &State) -> Result<()> {
    write_file(
        &dir.join("state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )
}

/// The `tinyvit train` arguments (after `train`) that train `cfg` with the search's recipe on
/// `device`, after writing `DIR/configs/ID.toml` and removing any earlier, cut-off run of it;
/// returns them with that config file and the run folder.
fn train_args(
    args: &ContractArgs,
    cfg: &ModelConfig,
    device: Option<&str>,
) -> Result<(Vec<String>, PathBuf, PathBuf)> {
    let id = config_id(cfg);
    let cfg_dir = args.out.join("configs");
    std::fs::create_dir_all(&cfg_dir)?;
    let toml = cfg_dir.join(format!("{id}.toml"));
    write_file(&toml, crate::arch::to_toml(cfg)?.as_bytes())?;
    let run = args.out.join("runs").join(&id);
    // A run cut off before its summary is trained again from the start (same seed, same bits).
    if run.exists() {
        std::fs::remove_dir_all(&run).with_context(|| format!("removing {}", run.display()))?;
    }
    let mut a: Vec<String> = vec![
        "train".into(),
        "--arch".into(),
        toml.display().to_string(),
        "--logits".into(),
        args.logits.display().to_string(),
        "--val".into(),
        args.val.clone(),
        "--epochs".into(),
        args.epochs.to_string(),
        "--seed".into(),
        args.seed.to_string(),
        "--out".into(),
        run.display().to_string(),
    ];
    let opt = |a: &mut Vec<String>, flag: &str, v: Option<String>| {
        if let Some(v) = v {
            a.extend([flag.to_string(), v]);
        }
    };
    opt(&mut a, "--data", args.data.clone());
    opt(
        &mut a,
        "--batch-size",
        args.batch_size.map(|v| v.to_string()),
    );
    opt(&mut a, "--recipe", args.recipe.clone());
    opt(&mut a, "--lr", args.lr.map(|v| v.to_string()));
    opt(
        &mut a,
        "--device",
        device.map(str::to_string).or_else(|| args.device.clone()),
    );
    opt(&mut a, "--threads", args.threads.map(|v| v.to_string()));
    opt(&mut a, "--workers", args.workers.map(|v| v.to_string()));
    if args.quiet {
        a.push("--quiet".into());
    }
    Ok((a, toml, run))
}

/// Trains `cfg` in this process with the search's recipe; returns val top-1.
fn train(args: &ContractArgs, cfg: &ModelConfig) -> Result<f64> {
    let (a, toml, _) = train_args(args, cfg, None)?;
    let toml = toml.display();
    #[derive(Parser)]
    struct One {
        #[command(subcommand)]
        cmd: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        Train(Box<TrainArgs>),
    }
    let One {
        cmd: Sub::Train(targs),
    } = One::try_parse_from(std::iter::once("tinyvit".to_string()).chain(a.iter().cloned()))
        .map_err(|e| anyhow!("the training flags: {e}"))?;
    eprintln!("contract: training {toml} ({})", config_id(cfg));
    let s = crate::train::run(&targs).with_context(|| format!("training {toml}"))?;
    s.val_top1
        .with_context(|| format!("training {toml} reported no val top-1"))
}

/// Trains `cfg` in a child `tinyvit train` process on `device` (its output in
/// `DIR/logs/ID.log`); returns val top-1 from the run's `summary.json`.
fn train_child(args: &ContractArgs, cfg: &ModelConfig, device: Option<&str>) -> Result<f64> {
    let (a, toml, run) = train_args(args, cfg, device)?;
    let id = config_id(cfg);
    let logs = args.out.join("logs");
    std::fs::create_dir_all(&logs)?;
    let log_path = logs.join(format!("{id}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let exe = std::env::current_exe().context("finding the tinyvit binary")?;
    eprintln!(
        "contract: training {} ({id}) on {}, log {}",
        toml.display(),
        device.unwrap_or("the default device"),
        log_path.display()
    );
    let status = std::process::Command::new(&exe)
        .args(&a)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("starting {} {}", exe.display(), a.join(" ")))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(12).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "training {} failed ({status}); the end of {}:\n{}",
            toml.display(),
            log_path.display(),
            tail.join("\n")
        );
    }
    let summary = run.join("summary.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&summary)
            .with_context(|| format!("reading {}", summary.display()))?,
    )
    .with_context(|| format!("parsing {}", summary.display()))?;
    v["val_top1"]
        .as_f64()
        .with_context(|| format!("{}: no `val_top1`", summary.display()))
}

/// The host engine a latency budget is measured on.
fn latency_engine(name: &str) -> Result<crate::infer::Engine> {
    match name {
        "fast" => Ok(crate::infer::Engine::Fast),
        "exact" => Ok(crate::infer::Engine::Exact),
        e => bail!("--latency-engine `{e}`: use fast or exact"),
    }
}

/// Median microseconds of one single-image inference of `cfg` on the host `engine`: synthetic
/// weights, one warm-up run, then 5 timed runs (the weights packed before timing).
pub fn measure_latency_us(cfg: &ModelConfig, engine: crate::infer::Engine) -> Result<u64> {
    use tinyvit_core::engine::{exact, fast::FastModel, input_len, Weights};
    let blob = tinyvit_core::engine::fold::synthetic_blob(cfg, 1)
        .map_err(|e| anyhow!("folding synthetic weights: {e}"))?;
    let w = Weights::new(cfg, &blob).map_err(|e| anyhow!("{e}"))?;
    let input = vec![0.1f32; input_len(cfg).map_err(|e| anyhow!("{e}"))?];
    let mut logits = vec![0f32; cfg.num_classes as usize];
    let mut times = Vec::with_capacity(6);
    match engine {
        crate::infer::Engine::Fast => {
            let m = FastModel::new(&w).map_err(|e| anyhow!("{e}"))?;
            for _ in 0..6 {
                let t = std::time::Instant::now();
                m.forward(&input, &mut logits).map_err(|e| anyhow!("{e}"))?;
                times.push(t.elapsed());
            }
        }
        crate::infer::Engine::Exact => {
            let plan = w.limits().check_exact(cfg).map_err(|e| anyhow!("{e}"))?;
            let mut arena = vec![0f32; plan.total()];
            for _ in 0..6 {
                let t = std::time::Instant::now();
                exact::forward(&w, &input, &mut arena, &mut logits).map_err(|e| anyhow!("{e}"))?;
                times.push(t.elapsed());
            }
        }
        crate::infer::Engine::Tch => bail!("latency is measured on the fast or exact engine"),
    }
    let mut timed: Vec<u128> = times[1..].iter().map(|d| d.as_micros()).collect();
    timed.sort_unstable();
    Ok(u64::try_from(timed[timed.len() / 2])
        .unwrap_or(u64::MAX)
        .max(1))
}

/// A candidate of the current step: priced, trained or not yet.
struct Row {
    step: u32,
    moves: String,
    config: ModelConfig,
    figures: Figures,
    /// `None` until trained.
    status: Option<Status>,
}

impl Row {
    fn entry(&self) -> Option<Entry> {
        Some(Entry {
            step: self.step,
            moves: self.moves.clone(),
            config: self.config,
            figures: self.figures,
            status: self.status.clone()?,
            chosen: false,
        })
    }
}

/// Trains the rows not yet trained (one after another in this process, or `--jobs` child
/// processes at once over `--devices`), writes `state.json` after each, and appends the rows
/// to `state` in their order.
fn settle(args: &ContractArgs, state: &mut State, mut rows: Vec<Row>) -> Result<()> {
    let snapshot = |state: &State, rows: &[Row]| -> Result<()> {
        let mut s = state.clone();
        s.entries.extend(rows.iter().filter_map(Row::entry));
        save(&args.out, &s)
    };
    let pending: Vec<usize> = (0..rows.len())
        .filter(|&i| rows[i].status.is_none())
        .collect();
    let jobs = args
        .jobs
        .unwrap_or_else(|| u32::try_from(args.devices.len()).unwrap_or(1).max(1))
        as usize;
    if jobs == 1 && args.devices.len() <= 1 {
        for &i in &pending {
            let val_top1 = if args.devices.is_empty() {
                train(args, &rows[i].config)?
            } else {
                train_child(args, &rows[i].config, Some(&args.devices[0]))?
            };
            rows[i].status = Some(Status::Trained { val_top1 });
            snapshot(state, &rows)?;
        }
    } else if !pending.is_empty() {
        let cfgs: Vec<ModelConfig> = rows.iter().map(|r| r.config).collect();
        let queue = std::sync::Mutex::new(
            pending
                .iter()
                .copied()
                .collect::<std::collections::VecDeque<_>>(),
        );
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<f64>)>();
        let mut failed: Option<anyhow::Error> = None;
        std::thread::scope(|sc| {
            for slot in 0..jobs.min(pending.len()) {
                let (tx, queue, cfgs) = (tx.clone(), &queue, &cfgs);
                let device = (!args.devices.is_empty())
                    .then(|| args.devices[slot % args.devices.len()].as_str());
                sc.spawn(move || loop {
                    let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
                    let Some(i) = next else { break };
                    if tx.send((i, train_child(args, &cfgs[i], device))).is_err() {
                        break;
                    }
                });
            }
            drop(tx);
            for (i, r) in rx {
                let saved = r.and_then(|val_top1| {
                    rows[i].status = Some(Status::Trained { val_top1 });
                    snapshot(state, &rows)
                });
                if let Err(e) = saved {
                    // No new candidate starts; those running finish and are recorded.
                    queue.lock().unwrap_or_else(|p| p.into_inner()).clear();
                    failed.get_or_insert(e);
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
    }
    state.entries.extend(rows.iter().filter_map(Row::entry));
    save(&args.out, state)
}

/// Runs `tinyvit contract`.
pub fn main(args: ContractArgs) -> Result<()> {
    let state = run(&args)?;
    let best = best(&state.entries);
    match best {
        Some(b) => println!(
            "{}",
            serde_json::json!({
                "best": args.out.join("best.toml"),
                "val_top1": b.val(),
                "figures": b.figures,
                "trained": state.entries.iter().filter(|e| e.val().is_some()).count(),
            })
        ),
        None => bail!("no candidate within budget was trained"),
    }
    Ok(())
}

/// The best trained entry within budget: highest val top-1, then fewest instructions, then
/// the earliest.
pub fn best(entries: &[Entry]) -> Option<&Entry> {
    let mut best: Option<&Entry> = None;
    for e in entries {
        let Some(v) = e.val() else { continue };
        let better = match best {
            None => true,
            Some(b) => {
                let bv = b.val().unwrap_or(f64::MIN);
                v > bv || (v == bv && e.figures.instructions < b.figures.instructions)
            }
        };
        if better {
            best = Some(e);
        }
    }
    best
}

/// The search; returns the final state (also in `DIR/state.json`), after writing the outputs.
pub fn run(args: &ContractArgs) -> Result<State> {
    let from = from_config(args)?;
    let (budget, pricing) = budget_of(args, &from)?;
    let key = key_of(args, &from, &budget, &pricing);
    let state_path = args.out.join("state.json");
    let old: Option<State> = if args.resume {
        let text = std::fs::read_to_string(&state_path)
            .with_context(|| format!("--resume: reading {}", state_path.display()))?;
        let s: State = serde_json::from_str(&text)
            .with_context(|| format!("--resume: parsing {}", state_path.display()))?;
        ensure!(
            s.key == key,
            "--resume: {} was written by a search with other settings:\n  recorded: {}\n  now:      {key}",
            state_path.display(),
            s.key
        );
        Some(s)
    } else {
        ensure!(
            !state_path.exists(),
            "{} exists: pass --resume to continue that search, or choose another --out",
            state_path.display()
        );
        None
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut state = State {
        key,
        budget,
        pricing,
        entries: Vec::new(),
        done: false,
    };
    // What the recorded state already knows: trained results by (step, config).
    let known = |step: u32, cfg: &ModelConfig| -> Option<Status> {
        old.as_ref()?
            .entries
            .iter()
            .find(|e| e.step == step && e.config == *cfg)
            .map(|e| e.status.clone())
    };
    let lat_engine = match budget.latency_us {
        Some(_) => Some(latency_engine(&args.latency_engine)?),
        None => None,
    };
    // The figures of `cfg`; with a latency limit, its host latency too when the modelled
    // figures fit (measured once per config: a recorded measurement is reused).
    let price = |state: &State, cfg: &ModelConfig| -> Result<Figures> {
        let mut f = pricing.figures(cfg)?;
        if let Some(engine) = lat_engine {
            if budget.over(&f).is_empty() {
                let recorded = state
                    .entries
                    .iter()
                    .chain(old.iter().flat_map(|o| o.entries.iter()))
                    .find(|e| e.config == *cfg)
                    .and_then(|e| e.figures.latency_us);
                f.latency_us = Some(match recorded {
                    Some(us) => us,
                    None => measure_latency_us(cfg, engine)?,
                });
            }
        }
        Ok(f)
    };
    // A row of the current step: a candidate priced, its status once known.
    let row = |state: &State, step: u32, moves: String, cfg: ModelConfig| -> Result<Row> {
        let figures = price(state, &cfg)?;
        let over = budget.over(&figures);
        let status = if !over.is_empty() {
            Some(Status::OverBudget {
                limits: over.iter().map(|s| s.to_string()).collect(),
            })
        } else {
            known(step, &cfg).filter(|s| matches!(s, Status::Trained { .. }))
        };
        Ok(Row {
            step,
            moves,
            config: cfg,
            figures,
            status,
        })
    };
    let from_row = row(&state, 0, "from".into(), from)?;
    settle(args, &mut state, vec![from_row])?;
    let mut current = from;
    for step in 1..=args.steps {
        let mut cands: Vec<Candidate> = Vec::new();
        let mut seen: Vec<ModelConfig> = Vec::new();
        for_each_candidate(&current, |c| {
            if !seen.contains(&c.config) {
                seen.push(c.config);
                cands.push(c);
            }
        });
        if cands.is_empty() {
            eprintln!("contract: step {step}: the config cannot shrink further");
            break;
        }
        let cur_fig = pricing.figures(&current)?;
        if budget.over(&cur_fig).is_empty() {
            // Within budget: one-factor moves first, each group in a seeded order.
            let split = cands
                .iter()
                .position(|c| c.moves[1].is_some())
                .unwrap_or(cands.len());
            let (ones, twos) = cands.split_at_mut(split);
            shuffle(ones, args.seed ^ u64::from(step));
            shuffle(twos, args.seed ^ u64::from(step) ^ 0x9e37_79b9);
        } else {
            // Over budget: first the candidates that fit, the largest (nearest the budget from
            // below) first; then the others, nearest the budget first.
            let mut keyed: Vec<(f64, Candidate)> = cands
                .into_iter()
                .map(|c| Ok((budget.ratio(&pricing.figures(&c.config)?), c)))
                .collect::<Result<_>>()?;
            keyed.sort_by(|a, b| over_budget_order(a.0, b.0));
            cands = keyed.into_iter().map(|(_, c)| c).collect();
        }
        // The step's rows: candidates in order, those over budget listed, until `candidates`
        // within budget are taken; then the untrained ones are trained.
        let first = state.entries.len();
        let mut rows = Vec::new();
        let mut taken = 0;
        for c in &cands {
            if taken >= args.candidates {
                break;
            }
            let mut label = String::new();
            c.label(&mut label)
                .map_err(|_| anyhow!("formatting a label"))?;
            let r = row(&state, step, label, c.config)?;
            if !matches!(r.status, Some(Status::OverBudget { .. })) {
                taken += 1;
            }
            rows.push(r);
        }
        settle(args, &mut state, rows)?;
        // The step's choice: the best trained, else the one nearest to the budget.
        let rows = &state.entries[first..];
        let pick = best(rows)
            .map(|b| first + rows.iter().position(|e| std::ptr::eq(e, b)).unwrap_or(0))
            .or_else(|| {
                rows.iter()
                    .enumerate()
                    .min_by(|a, b| {
                        budget
                            .ratio(&a.1.figures)
                            .total_cmp(&budget.ratio(&b.1.figures))
                    })
                    .map(|(i, _)| first + i)
            });
        let Some(pick) = pick else { break };
        state.entries[pick].chosen = true;
        current = state.entries[pick].config;
        save(&args.out, &state)?;
    }
    state.done = true;
    save(&args.out, &state)?;
    if let Some(b) = best(&state.entries) {
        write_file(
            &args.out.join("best.toml"),
            crate::arch::to_toml(&b.config)?.as_bytes(),
        )?;
    }
    write_file(&args.out.join("report.md"), report(args, &state).as_bytes())?;
    pareto(&state, &args.out.join("pareto.png"))?;
    Ok(state)
}

fn list(v: &[u32]) -> String {
    v.iter().map(u32::to_string).collect::<Vec<_>>().join("/")
}

/// `DIR/report.md`.
pub fn report(args: &ContractArgs, state: &State) -> String {
    let b = &state.budget;
    let show = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut s = format!(
        "# Progressive contraction from `{}`\n\nBudget ({:?} engine, instructions on {:?}, \
         modelled by `tinyvit_core::cost`): params {}, MACs {}, model bytes {}, arena bytes {}, \
         instructions {}{}.\nEvery candidate trained from `{}` for {} epochs with seed {}; val \
         top-1 on `{}`.\n\n",
        args.from,
        state.pricing.engine,
        state.pricing.cpu,
        show(b.params),
        show(b.macs),
        show(b.model_bytes),
        show(b.arena_bytes),
        show(b.instructions),
        match b.latency_us {
            Some(us) => format!(
                ", host latency {us} us per image on the `{}` engine (measured)",
                args.latency_engine
            ),
            None => String::new(),
        },
        args.logits.display(),
        args.epochs,
        args.seed,
        args.val
    );
    let lat = b.latency_us.is_some();
    s.push_str(
        "| step | moves | D1-D4 | N1-N4 | heads | W2-W4 | R | M | params | MACs | model bytes \
         | arena bytes | instructions |",
    );
    s.push_str(if lat { " latency us |" } else { "" });
    s.push_str(" val top-1 | status |\n");
    s.push_str("|---:|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|");
    s.push_str(if lat { "---:|" } else { "" });
    s.push_str("---:|---|\n");
    let best_cfg = best(&state.entries).map(|e| e.config);
    for e in &state.entries {
        let c = &e.config;
        let f = &e.figures;
        let (val, mut status) = match &e.status {
            Status::Trained { val_top1 } => (format!("{val_top1:.2}"), "trained".to_string()),
            Status::OverBudget { limits } => (
                "-".to_string(),
                format!("over budget ({}), not trained", limits.join(", ")),
            ),
        };
        if e.chosen {
            status.push_str(", seeds the next step");
        }
        if Some(e.config) == best_cfg && e.val().is_some() {
            status.push_str(", **best**");
        }
        let latency = match (lat, f.latency_us) {
            (false, _) => String::new(),
            (true, Some(us)) => format!(" {us} |"),
            (true, None) => " - |".to_string(),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |{latency} {val} | {status} |\n",
            e.step,
            e.moves,
            list(&c.embed_dims),
            list(&c.depths),
            list(&c.num_heads[1..]),
            list(&c.window_sizes[1..]),
            c.mbconv_expand_ratio,
            c.mlp_ratio,
            f.params,
            f.macs,
            f.model_bytes,
            f.arena_bytes,
            f.instructions,
        ));
    }
    if let Some(b) = best(&state.entries) {
        s.push_str(&format!(
            "\nBest within budget: step {} `{}`, val top-1 {:.2} %, {} instructions: \
             `best.toml`.\n",
            b.step,
            b.moves,
            b.val().unwrap_or(f64::NAN),
            b.figures.instructions
        ));
    }
    s
}

/// `DIR/pareto.png`: val top-1 against modelled instructions, every trained candidate a dot,
/// the path of each step's choice a line.
pub fn pareto(state: &State, path: &Path) -> Result<()> {
    let pts: Vec<(f64, f64)> = state
        .entries
        .iter()
        .filter_map(|e| Some((e.figures.instructions as f64 / 1e6, e.val()?)))
        .collect();
    let path_pts: Vec<(f64, f64)> = state
        .entries
        .iter()
        .filter(|e| e.step == 0 || e.chosen)
        .filter_map(|e| Some((e.figures.instructions as f64 / 1e6, e.val()?)))
        .collect();
    let best_pt: Vec<(f64, f64)> = best(&state.entries)
        .and_then(|e| Some((e.figures.instructions as f64 / 1e6, e.val()?)))
        .into_iter()
        .collect();
    let mut c = Canvas::new(720, 480, [255, 255, 255]);
    draw::chart(
        &mut c,
        0,
        0,
        720,
        480,
        &Axes {
            title: "progressive contraction: val top-1 against instructions per inference",
            x_label: "modelled instructions per inference (millions)",
            y_label: "val top-1 (%)",
        },
        &[
            Series {
                name: "candidates",
                color: [120, 120, 120],
                points: &pts,
                dots: true,
            },
            Series {
                name: "step choices",
                color: [30, 90, 200],
                points: &path_pts,
                dots: false,
            },
            Series {
                name: "best",
                color: [220, 40, 40],
                points: &best_pt,
                dots: true,
            },
        ],
    );
    c.save_png(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(instr: u64) -> Figures {
        Figures {
            params: 10,
            macs: 100,
            model_bytes: 1000,
            arena_bytes: 500,
            instructions: instr,
            latency_us: None,
        }
    }

    #[test]
    fn budget_names_every_limit_exceeded() {
        let b = Budget {
            params: Some(10),
            model_bytes: Some(999),
            instructions: Some(50),
            ..Budget::default()
        };
        assert_eq!(b.over(&figures(40)), vec!["flash"]);
        assert_eq!(b.over(&figures(60)), vec!["flash", "instructions"]);
        assert!((b.ratio(&figures(100)) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn over_budget_steps_try_the_largest_fitting_candidates_first() {
        let mut r = vec![0.6, 1.2, 0.95, 1.05, 1.0, 3.0];
        r.sort_by(|a, b| over_budget_order(*a, *b));
        assert_eq!(r, vec![1.0, 0.95, 0.6, 1.05, 1.2, 3.0]);
    }

    #[test]
    fn a_latency_limit_is_checked_only_when_measured() {
        let b = Budget {
            latency_us: Some(500),
            ..Budget::default()
        };
        let mut f = figures(1);
        assert!(b.over(&f).is_empty());
        f.latency_us = Some(501);
        assert_eq!(b.over(&f), vec!["latency"]);
        assert!((b.ratio(&f) - 501.0 / 500.0).abs() < 1e-12);
        f.latency_us = Some(500);
        assert!(b.over(&f).is_empty());
    }

    #[test]
    fn best_is_top1_then_fewer_instructions() {
        let e = |v: Option<f64>, instr| Entry {
            step: 1,
            moves: "x".into(),
            config: ModelConfig::tiny_vit_mcu_m4(),
            figures: figures(instr),
            status: match v {
                Some(v) => Status::Trained { val_top1: v },
                None => Status::OverBudget {
                    limits: vec!["flash".into()],
                },
            },
            chosen: false,
        };
        let rows = [
            e(Some(50.0), 9),
            e(None, 1),
            e(Some(60.0), 8),
            e(Some(60.0), 7),
        ];
        assert_eq!(best(&rows).unwrap().figures.instructions, 7);
        assert!(best(&rows[1..2]).is_none());
    }
}
