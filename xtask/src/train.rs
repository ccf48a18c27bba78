//! `cargo xtask train`: the main job. Runs the whole TinyViT method end to end and writes a
//! report that says, with numbers, what the distillation bought.
//!
//! Default (no flags): Fashion-MNIST on the CPU.
//! 1. data: all 55,000 training images at 28 px (validation held out of the training file);
//! 2. teacher: the committed `assets/teacher` TinyViT, measured by `tinyvit eval`
//!    (`--train-teacher`, other data or sizes: one trained here on the labels, cached);
//! 3. teacher pass: `tinyvit save-logits` over the student's epochs, sparse K < classes;
//! 4. students (an MCU preset): distilled from the store, and the same student on labels only;
//! 5. evaluation on the test split, export of the distilled student to `.tvb`, the firmware
//!    built with it and run under QEMU, its predictions compared with the host's;
//! 6. `report.md` with the table, the curves, the checkpoints and the `.tvb` in the run folder.
//!
//! Every stage is skipped when its folder holds the output of a run with the same arguments
//! (`--force` redoes everything). With `--data` the same stages run on the user's data and
//! teacher (`--teacher`), for GPU hosts and real datasets.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::Value;

use crate::splits::{self, SplitSizes};
use crate::stage::{self, Done};
use crate::{firmware, setup, util};

/// Options of `cargo xtask train`.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "cargo xtask train",
    about = "The main job: teacher, teacher pass, distilled student, baseline, MCU, report"
)]
pub struct Opts {
    /// Smoke run in under 3 minutes: fewer images, epochs and test inputs.
    #[arg(long)]
    pub quick: bool,
    /// Redo every stage even when its output exists and matches.
    #[arg(long)]
    pub force: bool,
    /// Run folder (default: runs/fashion-mnist, runs/quick with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also train students from stores truncated to K = 1, 3, 5 (and the default K) and report
    /// accuracy against K.
    #[arg(long)]
    pub sweep_k: bool,
    /// Also store the teacher's probabilities in 8 bits and train a student from that store.
    #[arg(long)]
    pub compare_8bit: bool,
    /// Training data SPEC for your own data (default: Fashion-MNIST splits made here).
    #[arg(long)]
    pub data: Option<String>,
    /// Validation data SPEC (with --data).
    #[arg(long)]
    pub val: Option<String>,
    /// Test data SPEC (with --data; default: none, the validation split is reported).
    #[arg(long)]
    pub test: Option<String>,
    /// Folder holding the Fashion-MNIST IDX files (default: the Debian package's).
    #[arg(long)]
    pub fashion_mnist: Option<PathBuf>,
    /// Teacher to use instead of training one: TorchScript `.pt` or TinyViT checkpoint.
    #[arg(long)]
    pub teacher: Option<PathBuf>,
    /// Input normalisation of a `--teacher` file for the teacher pass (`imagenet`, `clip`,
    /// `half`); default: what a TinyViT checkpoint records, else the augmentation preset's.
    #[arg(long)]
    pub teacher_norm: Option<String>,
    /// The teacher's normalisation mean, `r,g,b` on the 0..1 scale (over `--teacher-norm`).
    #[arg(long)]
    pub teacher_mean: Option<String>,
    /// The teacher's normalisation std, `r,g,b` on the 0..1 scale (over `--teacher-norm`).
    #[arg(long)]
    pub teacher_std: Option<String>,
    /// Student architecture preset.
    #[arg(long, default_value = "tiny_vit_mcu_m4")]
    pub arch: String,
    /// Input side of the teacher and the students, in pixels (default: 28, Fashion-MNIST's own
    /// resolution; with --data, the student preset's side).
    #[arg(long, value_parser = clap::value_parser!(u32).range(8..=1024))]
    pub img_size: Option<u32>,
    /// Train the teacher here with the recipe recorded next to the committed one
    /// (`assets/teacher/fashion-mnist.json`) instead of using the committed file.
    #[arg(long)]
    pub train_teacher: bool,
    /// Teacher architecture preset (when the teacher is trained here).
    #[arg(long, default_value = "tiny_vit_mcu_h7")]
    pub teacher_arch: String,
    /// Training recipe of the students (default: the trainer's choice for the input size).
    #[arg(long)]
    pub recipe: Option<String>,
    /// Augmentation preset of the teacher pass and of both students.
    #[arg(long, default_value = "light")]
    pub aug: String,
    /// Augmentation preset the teacher trains with (when it is trained here): crop and flip
    /// only, so that it converges in a few epochs.
    #[arg(long, default_value = "plain")]
    pub teacher_aug: String,
    /// Compute device of every stage.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Student epochs (and epochs of stored teacher logits).
    #[arg(long)]
    pub epochs: Option<u32>,
    /// Teacher epochs (when the teacher is trained here).
    #[arg(long)]
    pub teacher_epochs: Option<u32>,
    /// Top-K kept per sample in the store.
    #[arg(long)]
    pub topk: Option<u32>,
    /// Batch size of every training stage.
    #[arg(long)]
    pub batch_size: Option<u32>,
    /// Peak learning rate of the students (at batch 512).
    #[arg(long)]
    pub lr: Option<f64>,
    /// Run seed (augmentation seeds, initialisation).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Skip the firmware stage.
    #[arg(long)]
    pub no_firmware: bool,
    /// Test images run on the emulated board.
    #[arg(long)]
    pub device_images: Option<u32>,
    /// Also train the labels baseline without the hard samples (labels outside the teacher's
    /// top-5): the paper's "cleaned labels" row next to labels and distillation.
    #[arg(long)]
    pub clean_baseline: bool,
    /// Also run a small progressive contraction (`tinyvit contract`) from --contract-from
    /// under the student preset's board budget, every candidate trained from the run's store
    /// with the students' recipe and epochs, and report the winner against the hand-picked
    /// student. Not part of the default run.
    #[arg(long)]
    pub contract: bool,
    /// Starting architecture of --contract (larger than the board allows: the search shrinks
    /// it into the budget).
    #[arg(long, default_value = "tiny_vit_mcu_h7")]
    pub contract_from: String,
    /// Steps of --contract.
    #[arg(long, default_value_t = 3)]
    pub contract_steps: u32,
    /// Candidates trained per step of --contract.
    #[arg(long, default_value_t = 3)]
    pub contract_candidates: u32,
    /// The device engine --contract prices candidates for (`f32` or `int8`): the board budget
    /// then holds the engine's model bytes and arena, and the instructions stay at most the
    /// f32 student's (the board's time). int8 writes `contraction-int8/`, so both searches can
    /// sit in one run, and trains the board's hand-picked int8 preset as its reference.
    #[arg(long, default_value = "f32", value_parser = ["f32", "int8"])]
    pub contract_engine: String,
    /// Train every model with N local processes (data-parallel; torchrun's variables, the
    /// rendezvous on 127.0.0.1); the binary is built with the `dist` feature.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub nproc: u32,
    /// `default`: the CPU run described in the README. `full`: the same pipeline made for one
    /// GPU (`--device cuda`): a `tiny_vit_5m_224` teacher trained here for 60 epochs, the larger
    /// f32 MCU student `tiny_vit_mcu_h7`, 40 student epochs, batch 256, in
    /// `runs/fashion-mnist-full`. Flags given explicitly win over the profile.
    #[arg(long, value_enum, default_value_t = Profile::Default)]
    pub profile: Profile,
}

/// Sizes of the main job (`--profile`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Default,
    Full,
}

impl Opts {
    /// Parses the arguments and applies `--profile full` to every knob the user left at its
    /// default.
    fn parse(args: &[String]) -> Result<Opts, clap::Error> {
        use clap::parser::ValueSource;
        use clap::{CommandFactory, FromArgMatches};
        let m = Opts::command().try_get_matches_from(
            std::iter::once("cargo xtask train".to_string()).chain(args.iter().cloned()),
        )?;
        let mut o = Opts::from_arg_matches(&m)?;
        if o.profile == Profile::Full {
            refuse_quick(&o)?;
            let defaulted = |id: &str| m.value_source(id) != Some(ValueSource::CommandLine);
            if defaulted("arch") {
                o.arch = "tiny_vit_mcu_h7".into();
            }
            if defaulted("teacher_arch") {
                o.teacher_arch = "tiny_vit_5m_224".into();
            }
            o.train_teacher = true;
        }
        Ok(o)
    }
}

/// `--profile full` is a different run than `--quick`: both cannot be asked for.
fn refuse_quick(o: &Opts) -> Result<(), clap::Error> {
    if o.quick {
        return Err(clap::Error::raw(
            clap::error::ErrorKind::ArgumentConflict,
            "--profile full and --quick ask for different runs; pass one of them\n",
        ));
    }
    Ok(())
}

/// The committed Fashion-MNIST teacher and its record (recipe, command, hash, figures).
const TEACHER_FILE: &str = "assets/teacher/fashion-mnist.safetensors";
const TEACHER_RECORD: &str = "assets/teacher/fashion-mnist.json";

/// What `assets/teacher/fashion-mnist.json` records about the committed teacher.
#[derive(Debug)]
struct CommittedTeacher {
    path: PathBuf,
    arch: String,
    img_size: u32,
    epochs: u32,
    params: u64,
    sha256: String,
}

impl CommittedTeacher {
    fn read(root: &Path) -> Result<CommittedTeacher> {
        let rec = root.join(TEACHER_RECORD);
        let v = read_json(&rec)?;
        let field = |k: &str| {
            v.get(k)
                .with_context(|| format!("{}: field `{k}` is missing", rec.display()))
        };
        let num = |k: &str| -> Result<u64> {
            field(k)?
                .as_u64()
                .with_context(|| format!("{}: field `{k}` is not a whole number", rec.display()))
        };
        let text = |k: &str| -> Result<String> {
            Ok(field(k)?
                .as_str()
                .with_context(|| format!("{}: field `{k}` is not a string", rec.display()))?
                .to_string())
        };
        Ok(CommittedTeacher {
            path: root.join(TEACHER_FILE),
            arch: text("arch")?,
            img_size: u32::try_from(num("img_size")?)?,
            epochs: u32::try_from(num("epochs")?)?,
            params: num("params")?,
            sha256: text("sha256")?,
        })
    }
}

/// Fashion-MNIST's own image side: the default input of teacher and students.
const FASHION_MNIST_SIDE: u32 = 28;

/// The sizes the defaults and `--quick` use.
struct Plan {
    sizes: SplitSizes,
    /// Input side of teacher and students.
    img_size: u32,
    epochs: u32,
    teacher_epochs: u32,
    topk: u32,
    batch_size: u32,
    device_images: u32,
    /// Training images the int8 quantisation calibrates on.
    calib_images: u32,
}

impl Plan {
    fn new(o: &Opts) -> Result<Plan> {
        // Fashion-MNIST at its own 28 px; the user's data at the student preset's side.
        let img_size = match (o.img_size, &o.data) {
            (Some(s), _) => s,
            (None, None) => FASHION_MNIST_SIDE,
            (None, Some(_)) => student_size(&o.arch)?,
        };
        let base = if o.quick {
            Plan {
                img_size,
                sizes: SplitSizes {
                    train: 2_000,
                    val: 1_000,
                    test: 1_000,
                },
                epochs: 2,
                teacher_epochs: 2,
                topk: 3,
                batch_size: 64,
                device_images: 4,
                calib_images: 64,
            }
        } else if o.profile == Profile::Full {
            Plan {
                img_size,
                sizes: SplitSizes {
                    train: 55_000,
                    val: 5_000,
                    test: 10_000,
                },
                epochs: 40,
                teacher_epochs: 60,
                topk: 3,
                batch_size: 256,
                device_images: 32,
                calib_images: 512,
            }
        } else {
            Plan {
                img_size,
                sizes: SplitSizes {
                    train: 55_000,
                    val: 5_000,
                    test: 10_000,
                },
                epochs: 5,
                // The committed teacher's recipe (`--train-teacher`).
                teacher_epochs: 12,
                topk: 3,
                batch_size: 128,
                device_images: 32,
                calib_images: 256,
            }
        };
        Ok(Plan {
            epochs: o.epochs.unwrap_or(base.epochs),
            teacher_epochs: o.teacher_epochs.unwrap_or(base.teacher_epochs),
            topk: o.topk.unwrap_or(base.topk),
            batch_size: o.batch_size.unwrap_or(base.batch_size),
            device_images: o.device_images.unwrap_or(base.device_images),
            ..base
        })
    }
}

/// One row of the report's main table.
struct Row {
    what: String,
    val_top1: Option<f64>,
    test_top1: Option<f64>,
    seconds: f64,
    /// Whether the stage was reused from an earlier run (its wall time is that run's).
    cached: bool,
    note: String,
}

impl Row {
    /// The row of a trained model: the figures of its `summary.json` and its stage's time.
    fn trained(what: String, summary: &Value, stage: &Done, note: String) -> Row {
        Row {
            what,
            val_top1: f(summary, "val_top1"),
            test_top1: f(summary, "test_top1"),
            seconds: stage.seconds,
            cached: stage.cached,
            note,
        }
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let o = Opts::parse(args).map_err(|e| {
        let _ = e.print();
        anyhow::anyhow!("bad arguments")
    })?;
    setup::rust_target(crate::test::DEVICE_TARGET)?;
    let plan = Plan::new(&o)?;
    let out = o.out.clone().unwrap_or_else(|| {
        util::root().join("runs").join(match (o.quick, o.profile) {
            (true, _) => "quick",
            (false, Profile::Default) => "fashion-mnist",
            (false, Profile::Full) => "fashion-mnist-full",
        })
    });
    std::fs::create_dir_all(&out)?;
    let built = Instant::now();
    let tinyvit = build_tinyvit(o.nproc > 1)?;
    let build_seconds = built.elapsed().as_secs_f64();
    // The run's time starts after the build of the command, which the report gives apart.
    let start = Instant::now();
    let p = Pipeline {
        o: &o,
        plan: &plan,
        out: out.clone(),
        tinyvit,
        build_seconds,
        times: Default::default(),
    };
    p.run(start)
}

struct Pipeline<'a> {
    o: &'a Opts,
    plan: &'a Plan,
    out: PathBuf,
    tinyvit: PathBuf,
    /// Wall time of every stage run or reused so far: (title, seconds, reused).
    times: std::cell::RefCell<Vec<(String, f64, bool)>>,
    /// Wall time of the release build of `tinyvit` before the run (not in its total).
    build_seconds: f64,
}

/// Data SPECs of the run.
struct Data {
    train: String,
    val: String,
    test: Option<String>,
    key: String,
}

impl Pipeline<'_> {
    fn run(&self, start: Instant) -> Result<()> {
        let o = self.o;
        let plan = self.plan;
        let mut rows = Vec::new();
        let mut notes = Vec::new();

        let data = self.data()?;

        // Teacher.
        let (teacher, teacher_key, teacher_row) = self.teacher(&data)?;
        rows.extend(teacher_row);

        // Teacher pass.
        let store = self.store_stage("store", &teacher, &teacher_key, &data, plan.topk, 16)?;
        let stats = self.store_stats(&store.dir)?;

        // Students.
        let kd = self.distill_stage("student-distilled", &store, &data)?;
        let base = self.train_stage(
            "student-labels",
            &o.arch,
            &["--labels", "--aug", &o.aug],
            plan.epochs,
            &data,
            None,
        )?;

        let kd_s = summary(&kd.dir)?;
        let base_s = summary(&base.dir)?;
        let kd_row = rows.len();
        rows.push(Row::trained(
            format!("student `{}` distilled from the store", o.arch),
            &kd_s,
            &kd,
            format!(
                "K={}, {} epochs, {} px, {} params, {:.0} img/s",
                plan.topk,
                plan.epochs,
                plan.img_size,
                kd_s["params"],
                f(&kd_s, "images_per_s").unwrap_or(0.0)
            ),
        ));
        rows.push(Row::trained(
            format!("student `{}` on labels (baseline)", o.arch),
            &base_s,
            &base,
            format!(
                "{} epochs, {:.0} img/s",
                plan.epochs,
                f(&base_s, "images_per_s").unwrap_or(0.0)
            ),
        ));

        // What distillation transfers: hard samples from the store, class correlations.
        let analysis = self.analysis_stage(&store, &data, &teacher, &kd, &base)?;
        if o.clean_baseline {
            let excl = analysis.dir.join("hard").join("exclude.txt");
            let excl = excl.display().to_string();
            let clean = self.train_stage(
                "student-labels-clean",
                &o.arch,
                &["--labels", "--aug", &o.aug, "--exclude", &excl],
                plan.epochs,
                &data,
                Some(&analysis.key),
            )?;
            let s = summary(&clean.dir)?;
            rows.push(Row::trained(
                format!("student `{}` on labels without the hard samples", o.arch),
                &s,
                &clean,
                format!("{} epochs, hard samples excluded", plan.epochs),
            ));
        }

        // Optional studies.
        let mut k_table = Vec::new();
        if o.sweep_k {
            for k in [1u32, 3, 5, 10] {
                if k == plan.topk {
                    k_table.push((k, f(&kd_s, "val_top1"), f(&kd_s, "test_top1")));
                    continue;
                }
                let st =
                    self.store_stage(&format!("store-k{k}"), &teacher, &teacher_key, &data, k, 16)?;
                let d = self.distill_stage(&format!("student-k{k}"), &st, &data)?;
                let s = summary(&d.dir)?;
                k_table.push((k, f(&s, "val_top1"), f(&s, "test_top1")));
            }
            self.k_sweep_png(&k_table)?;
        }
        let mut bits_row = None;
        if o.compare_8bit {
            let st = self.store_stage("store-8bit", &teacher, &teacher_key, &data, plan.topk, 8)?;
            let st_stats = self.store_stats(&st.dir)?;
            let d = self.distill_stage("student-8bit", &st, &data)?;
            let s = summary(&d.dir)?;
            bits_row = Some((
                st_stats.bytes_per_sample,
                f(&s, "val_top1"),
                f(&s, "test_top1"),
            ));
        }

        // Export and the device.
        let eval_split = data.test.clone().unwrap_or_else(|| data.val.clone());
        let tvb = self.out.join("student.tvb");
        let export = self.export_stage(&kd, &data, &tvb)?;
        let tvb_bytes = std::fs::metadata(&tvb)
            .with_context(|| format!("reading {}", tvb.display()))?
            .len();
        rows[kd_row]
            .note
            .push_str(&format!(", `student.tvb` {tvb_bytes} bytes (f32)"));
        let firmware = !o.no_firmware && o.arch.starts_with("tiny_vit_mcu");
        let device = if firmware {
            Some(self.firmware_stage("device", &export, &tvb, &eval_split)?)
        } else {
            notes.push("firmware stage skipped (not an MCU preset, or --no-firmware)".to_string());
            None
        };

        let contraction = if o.contract {
            Some(self.contract_stage(&store, &data, &kd_s, device.as_ref())?)
        } else {
            None
        };

        // Int8: post-training quantisation of the distilled student and its device run.
        let q8 = self.out.join("student.q8.tvb");
        let quant = self.quantize_stage(&kd, &data, &eval_split, &q8)?;
        let device_q8 = if firmware {
            match self.firmware_stage("device-int8", &quant, &q8, &eval_split) {
                Ok(d) => Some(d),
                Err(e) => {
                    eprintln!("warning: the int8 firmware stage failed: {e:#}");
                    notes.push(format!(
                        "the int8 firmware stage failed, no int8 device figures: {}",
                        format!("{e:#}").lines().next().unwrap_or("")
                    ));
                    None
                }
            }
        } else {
            None
        };
        let int8 = Int8Figures {
            quant: read_json(&quant.dir.join("quantize.json"))?,
            f32_tvb: tvb.clone(),
            device: device.as_ref(),
            device_q8: device_q8.as_ref(),
        };

        let mut report = self.report(
            &rows,
            &stats,
            &store,
            &k_table,
            bits_row,
            device.as_ref(),
            &int8.section(test_name(o))?,
            &notes,
            start,
        )?;
        report.push_str(&analysis_section(&analysis.dir)?);
        if let Some(c) = &contraction {
            report.push_str(c);
        }
        let path = self.out.join("report.md");
        std::fs::write(&path, &report).with_context(|| format!("writing {}", path.display()))?;
        println!("\n{report}");
        eprintln!("report: {}", path.display());
        if let (Some(a), Some(b)) = (f(&kd_s, "test_top1"), f(&base_s, "test_top1")) {
            if a <= b {
                eprintln!(
                    "note: the distilled student ({a:.2}%) did not beat the baseline ({b:.2}%) in this run"
                );
            }
        }
        Ok(())
    }

    /// `tinyvit contract` from `--contract-from` under the student preset's board budget, from
    /// the run's store with the students' recipe, epochs and seed; returns the report section
    /// comparing the winner with the hand-picked student (`kd`, trained from the same store).
    /// `device` is the f32 student's device run, whose measured instructions the winner's are
    /// set against.
    fn contract_stage(
        &self,
        store: &Done,
        data: &Data,
        kd: &serde_json::Value,
        device: Option<&firmware::DeviceRun>,
    ) -> Result<String> {
        let (o, plan) = (self.o, self.plan);
        if tinyvit_core::config::mcu_budget(&o.arch).is_none() {
            bail!(
                "--contract needs an MCU student preset (its board budget), not `{}`",
                o.arch
            );
        }
        let mut args: Vec<String> = vec![
            "contract".into(),
            "--from".into(),
            o.contract_from.clone(),
            "--logits".into(),
            store.dir.display().to_string(),
            "--data".into(),
            data.train.clone(),
            "--val".into(),
            data.val.clone(),
        ];
        let int8 = o.contract_engine == "int8";
        let (budget, sc) = contract_budget(&o.arch, plan.img_size, int8)?;
        args.extend(budget);
        args.extend([
            "--img-size".into(),
            plan.img_size.to_string(),
            "--epochs".into(),
            plan.epochs.to_string(),
            "--batch-size".into(),
            plan.batch_size.to_string(),
            "--seed".into(),
            o.seed.to_string(),
            "--steps".into(),
            o.contract_steps.to_string(),
            "--candidates".into(),
            o.contract_candidates.to_string(),
            "--engine".into(),
            o.contract_engine.clone(),
            "--quiet".into(),
        ]);
        if o.data.is_none() {
            args.extend(["--num-classes".into(), "10".into()]);
        }
        if let Some(r) = &o.recipe {
            args.extend(["--recipe".into(), r.clone()]);
        }
        if let Some(lr) = o.lr {
            args.extend(["--lr".into(), lr.to_string()]);
        }
        args.extend(self.common());
        let key = format!("{} | {} | {}", data.key, args.join(" "), store.key);
        let dir_name = if int8 {
            "contraction-int8"
        } else {
            "contraction"
        };
        let dir = self.out.join(dir_name);
        let done = self.stage("progressive contraction", &dir, &key, |d| {
            let mut a = args.clone();
            a.extend(["--out".into(), d.display().to_string()]);
            self.tinyvit(&a)
        })?;
        let state = read_json(&done.dir.join("state.json"))?;
        let entries = state["entries"]
            .as_array()
            .with_context(|| format!("{dir_name}/state.json has no entries"))?;
        let val = |e: &serde_json::Value| e["status"]["trained"]["val_top1"].as_f64();
        let best = entries
            .iter()
            .filter(|e| val(e).is_some())
            .fold(None::<&serde_json::Value>, |b, e| match b {
                Some(b)
                    if val(b) > val(e)
                        || (val(b) == val(e)
                            && b["figures"]["instructions"].as_u64()
                                <= e["figures"]["instructions"].as_u64()) =>
                {
                    Some(b)
                }
                _ => Some(e),
            })
            .context("the contraction trained no candidate within budget")?;
        let val_pct = |v: &Value| f(v, "val_top1").map_or("-".to_string(), |v| format!("{v:.2}"));
        let mut s = String::new();
        let budget = if int8 {
            "the board's flash and RAM for the int8 file and, as the board's time, at most the \
             f32 student's modelled Cortex-M4 instructions"
        } else {
            "its model bytes, arena and Cortex-M4 instructions"
        };
        writeln!(
            s,
            "\n## Progressive contraction (`tinyvit contract`, {} engine)\n\nFrom `{}` under the \
             `{}` board budget ({} device engine: {budget}, modelled by `tinyvit_core::cost`), \
             {} steps of up to {} candidates, each trained from the store for {} epochs with \
             seed {}: `{dir_name}/report.md`, `{dir_name}/best.toml`, `{dir_name}/pareto.png`. \
             Each row's bytes, arena and instructions are those of its own engine.\n",
            o.contract_engine,
            o.contract_from,
            o.arch,
            o.contract_engine,
            o.contract_steps,
            o.contract_candidates,
            plan.epochs,
            o.seed,
        )?;
        writeln!(
            s,
            "| model | engine | val top-1 % | params | model bytes | arena bytes | instructions (M4, modelled) |"
        )?;
        writeln!(s, "|---|---|---|---|---|---|---|")?;
        writeln!(
            s,
            "| hand-picked `{}` (student-distilled) | f32 | {} | {} | {} | {} | {} |",
            o.arch,
            val_pct(kd),
            sc.params,
            sc.f32_bytes,
            sc.f32_arena_bytes,
            sc.f32_instructions[0]
        )?;
        let q8_arch = format!("{}_q8", o.arch);
        if let (true, Some(q8)) = (int8, tinyvit_core::config::ModelConfig::preset(&q8_arch)) {
            // The board's hand-picked int8 preset, trained from the same store, recipe, epochs
            // and seed: the int8 search's like-for-like reference.
            let q8 = q8.with_img_size(plan.img_size);
            let qc = tinyvit_core::cost::cost(&q8).map_err(|e| anyhow::anyhow!("{e}"))?;
            let d = self.distill_arch_stage("student-q8-preset", &q8_arch, store, data)?;
            let q8s = summary(&d.dir)?;
            writeln!(
                s,
                "| hand-picked `{q8_arch}` (student-q8-preset) | int8 | {} | {} | {} | {} | {} |",
                val_pct(&q8s),
                qc.params,
                qc.int8_bytes,
                qc.int8_arena_bytes,
                qc.int8_instructions[0]
            )?;
        }
        let fg = &best["figures"];
        writeln!(
            s,
            "| contracted winner (step {}, `{}`) | {} | {:.2} | {} | {} | {} | {} |",
            best["step"],
            best["moves"].as_str().unwrap_or(""),
            o.contract_engine,
            val(best).unwrap_or(f64::NAN),
            fg["params"],
            fg["model_bytes"],
            fg["arena_bytes"],
            fg["instructions"]
        )?;
        if !o.no_firmware {
            let run = self.contract_winner_on_device(&done, data, int8)?;
            let modelled = fg["instructions"].as_u64().unwrap_or(0);
            let measured = run.instructions_per_image;
            writeln!(
                s,
                "\nOn QEMU (`{}`) the winner's {} file took {measured} instructions per image \
                 (modelled {modelled}: the cost model is {:+.1} % off), {} of {} test images \
                 bit for bit with the host; model {} bytes, arena {} bytes.",
                run.board,
                o.contract_engine,
                (modelled as f64 / measured.max(1) as f64 - 1.0) * 100.0,
                run.agree,
                run.images,
                run.model_bytes,
                run.arena_bytes
            )?;
            if let Some(d) = device {
                let ours = d.instructions_per_image;
                writeln!(
                    s,
                    "The hand-picked f32 student took {ours} instructions per image on the same \
                     board: the winner takes {:+.1} %.",
                    (measured as f64 / ours.max(1) as f64 - 1.0) * 100.0
                )?;
            }
        }
        Ok(s)
    }

    /// The contraction winner (`DIR/best.toml`, trained in `DIR/runs/ID`) written as the
    /// search's engine runs it (`export` for f32, `quantize` for int8) and run on QEMU: the
    /// measured instructions next to the cost model's.
    fn contract_winner_on_device(
        &self,
        search: &Done,
        data: &Data,
        int8: bool,
    ) -> Result<firmware::DeviceRun> {
        let best = std::fs::read_to_string(search.dir.join("best.toml"))
            .with_context(|| format!("reading {}/best.toml", search.dir.display()))?;
        let configs = search.dir.join("configs");
        let mut id = None;
        for e in
            std::fs::read_dir(&configs).with_context(|| format!("listing {}", configs.display()))?
        {
            let path = e?.path();
            if std::fs::read_to_string(&path).ok().as_deref() == Some(best.as_str()) {
                id = path.file_stem().map(|s| s.to_string_lossy().into_owned());
            }
        }
        let id = id.with_context(|| {
            format!("no file in {} holds best.toml's config", configs.display())
        })?;
        let model = search.dir.join("runs").join(&id).join("model.safetensors");
        let name = format!(
            "{}-winner",
            search.dir.file_name().unwrap_or_default().to_string_lossy()
        );
        let dir = self.out.join(&name);
        let split = data.test.clone().unwrap_or_else(|| data.val.clone());
        let key = format!("{} | {id}", search.key);
        let file = dir.join(if int8 { "winner.q8.tvb" } else { "winner.tvb" });
        let written = self.stage(
            &format!("contraction winner as a device file ({name})"),
            &dir,
            &key,
            |_| {
                let mut a: Vec<String> = if int8 {
                    vec![
                        "quantize".into(),
                        "--model".into(),
                        model.display().to_string(),
                        "--calib".into(),
                        data.train.clone(),
                        "--calib-images".into(),
                        self.plan.calib_images.to_string(),
                    ]
                } else {
                    vec![
                        "export".into(),
                        "--checkpoint".into(),
                        model.display().to_string(),
                    ]
                };
                a.extend(["--out".into(), file.display().to_string()]);
                self.tinyvit_output(&a).map(drop)
            },
        )?;
        self.firmware_stage(&format!("{name}-device"), &written, &file, &split)
    }

    fn data(&self) -> Result<Data> {
        let o = self.o;
        if let Some(train) = &o.data {
            let val = o
                .val
                .clone()
                .context("--data needs --val SPEC (a held-out split for every choice)")?;
            return Ok(Data {
                key: format!("data {train} val {val} test {:?}", o.test),
                train: train.clone(),
                val,
                test: o.test.clone(),
            });
        }
        let src = splits::locate(o.fashion_mnist.as_deref())?;
        let sizes = self.plan.sizes;
        let key = format!("fashion-mnist {} {:?}", src.display(), sizes);
        let dir = self.out.join("data");
        let mut specs = None;
        let done = self.stage("data splits", &dir, &key, |d| {
            specs = Some(splits::write(&src, sizes, d)?);
            Ok(())
        })?;
        let s = match specs {
            Some(s) => s,
            None => splits::specs_in(&done.dir),
        };
        Ok(Data {
            train: s.train,
            val: s.val,
            test: Some(s.test),
            key,
        })
    }

    /// Runs a cached stage and records its wall time for the report.
    fn stage(
        &self,
        title: &str,
        dir: &Path,
        key: &str,
        body: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Done> {
        let d = stage::run(title, dir, key, self.o.force, body)?;
        self.times
            .borrow_mut()
            .push((title.to_string(), d.seconds, d.cached));
        Ok(d)
    }

    fn common(&self) -> Vec<String> {
        vec!["--device".into(), self.o.device.clone()]
    }

    fn train_stage(
        &self,
        name: &str,
        arch: &str,
        target: &[&str],
        epochs: u32,
        data: &Data,
        upstream: Option<&str>,
    ) -> Result<Done> {
        let dir = self.out.join(name);
        let mut args: Vec<String> = vec![
            "train".into(),
            "--arch".into(),
            arch.into(),
            "--data".into(),
            data.train.clone(),
            "--val".into(),
            data.val.clone(),
            "--epochs".into(),
            epochs.to_string(),
            "--batch-size".into(),
            self.plan.batch_size.to_string(),
            "--seed".into(),
            self.o.seed.to_string(),
            "--img-size".into(),
            self.plan.img_size.to_string(),
            "--num-classes".into(),
            "10".into(),
        ];
        if self.o.data.is_some() {
            // The user's data fixes its own class count.
            args.truncate(args.len() - 2);
        }
        if let Some(t) = &data.test {
            args.extend(["--test".into(), t.clone()]);
        }
        args.extend(target.iter().map(|s| s.to_string()));
        if let Some(r) = &self.o.recipe {
            args.extend(["--recipe".into(), r.clone()]);
        }
        if let Some(lr) = self.o.lr {
            args.extend(["--lr".into(), lr.to_string()]);
        }
        args.extend(self.common());
        let mut key = format!("{} | {} | {:?}", data.key, args.join(" "), upstream);
        if self.o.nproc > 1 {
            // Per-rank BatchNorm statistics make an N-rank run differ from a one-rank run.
            key.push_str(&format!(" | nproc {}", self.o.nproc));
        }
        self.stage(&format!("train {name}"), &dir, &key, |d| {
            let mut a = args.clone();
            a.extend(["--out".into(), d.display().to_string()]);
            self.tinyvit_ranks(&a)
        })
    }

    /// The teacher file, its cache key and its report row: `--teacher`, else the committed
    /// teacher when the run is the default one it was trained for, else one trained here on the
    /// labels (at the run's input size, so that the store's views fit teacher and students).
    fn teacher(&self, data: &Data) -> Result<(PathBuf, String, Option<Row>)> {
        let o = self.o;
        if let Some(t) = &o.teacher {
            return Ok((t.clone(), format!("teacher file {}", t.display()), None));
        }
        if let Some(c) = self.committed_teacher()? {
            let dir = self.out.join("teacher-eval");
            let key = format!("{} | {} | {}", data.key, c.sha256, c.path.display());
            let test = data.test.clone();
            let done = self.stage("teacher evaluation", &dir, &key, |d| {
                let mut splits = vec![("val", data.val.clone())];
                splits.extend(test.clone().map(|t| ("test", t)));
                for (name, spec) in splits {
                    let json = d.join(format!("{name}.json"));
                    self.tinyvit(&[
                        "eval".into(),
                        "--model".into(),
                        c.path.display().to_string(),
                        "--data".into(),
                        spec,
                        "--json".into(),
                        json.display().to_string(),
                    ])?;
                }
                Ok(())
            })?;
            let top1 = |name: &str| -> Option<f64> {
                read_json(&done.dir.join(format!("{name}.json")))
                    .ok()
                    .and_then(|v| f(&v, "top1"))
            };
            let row = Row {
                what: format!("teacher `{}` (labels)", c.arch),
                val_top1: top1("val"),
                test_top1: top1("test"),
                seconds: done.seconds,
                cached: done.cached,
                note: format!(
                    "{} params, {} epochs; the committed `{}` (sha256 {}…), evaluated here; \
                     `--train-teacher` trains it again",
                    c.params,
                    c.epochs,
                    TEACHER_FILE,
                    &c.sha256[..12]
                ),
            };
            return Ok((c.path, key, Some(row)));
        }
        let d = self.train_stage(
            "teacher",
            &o.teacher_arch,
            &["--labels", "--aug", &o.teacher_aug],
            self.plan.teacher_epochs,
            data,
            None,
        )?;
        let s = summary(&d.dir)?;
        let row = Row::trained(
            format!("teacher `{}` (labels)", o.teacher_arch),
            &s,
            &d,
            format!(
                "{} params, {} epochs, trained here",
                s["params"], self.plan.teacher_epochs
            ),
        );
        Ok((d.dir.join("model.safetensors"), d.key.clone(), Some(row)))
    }

    /// The committed teacher, when this run is the one it was trained for: the default
    /// Fashion-MNIST splits, full size, its architecture and input side, and no
    /// `--train-teacher`. Its SHA-256 is checked against the record.
    fn committed_teacher(&self) -> Result<Option<CommittedTeacher>> {
        let o = self.o;
        if o.train_teacher || o.quick || o.data.is_some() {
            return Ok(None);
        }
        let c = CommittedTeacher::read(&util::root())?;
        if c.arch != o.teacher_arch || c.img_size != self.plan.img_size {
            return Ok(None);
        }
        let got = util::sha256_file(&c.path)?;
        anyhow::ensure!(
            got == c.sha256,
            "{}: SHA-256 {got} differs from the {} recorded in {} (pass --train-teacher to \
             train one here)",
            c.path.display(),
            c.sha256,
            TEACHER_RECORD
        );
        Ok(Some(c))
    }

    /// The student trained from the store in `store`.
    fn distill_stage(&self, name: &str, store: &Done, data: &Data) -> Result<Done> {
        self.distill_arch_stage(name, &self.o.arch, store, data)
    }

    /// A student of `arch` distilled from `store` with the run's recipe and epochs.
    fn distill_arch_stage(
        &self,
        name: &str,
        arch: &str,
        store: &Done,
        data: &Data,
    ) -> Result<Done> {
        let dir = store.dir.display().to_string();
        self.train_stage(
            name,
            arch,
            &["--logits", &dir],
            self.plan.epochs,
            data,
            Some(&store.key),
        )
    }

    fn store_stage(
        &self,
        name: &str,
        teacher: &Path,
        teacher_key: &str,
        data: &Data,
        topk: u32,
        bits: u32,
    ) -> Result<Done> {
        let dir = self.out.join(name);
        let mut args: Vec<String> = vec![
            "save-logits".into(),
            "--teacher".into(),
            teacher.display().to_string(),
            "--data".into(),
            data.train.clone(),
            "--epochs".into(),
            self.plan.epochs.to_string(),
            "--topk".into(),
            topk.to_string(),
            "--preset".into(),
            self.o.aug.clone(),
            "--seed".into(),
            self.o.seed.to_string(),
            "--value-bits".into(),
            bits.to_string(),
        ];
        if let Some(n) = &self.o.teacher_norm {
            args.extend(["--norm".into(), n.clone()]);
        }
        if let Some(m) = &self.o.teacher_mean {
            args.extend(["--teacher-mean".into(), m.clone()]);
        }
        if let Some(v) = &self.o.teacher_std {
            args.extend(["--teacher-std".into(), v.clone()]);
        }
        args.extend(self.common());
        let key = format!("{} | {} | {teacher_key}", data.key, args.join(" "));
        self.stage(&format!("teacher pass {name}"), &dir, &key, |d| {
            let mut a = args.clone();
            a.extend(["--out".into(), d.display().to_string()]);
            self.tinyvit(&a)?;
            self.tinyvit(&["logits".into(), "verify".into(), d.display().to_string()])
        })
    }

    fn store_stats(&self, dir: &Path) -> Result<StoreStats> {
        let out = self.tinyvit_output(&[
            "logits".into(),
            "stats".into(),
            dir.display().to_string(),
            "--json".into(),
        ])?;
        let v: Value =
            serde_json::from_str(out.trim().lines().last().unwrap_or("")).with_context(|| {
                format!("parsing `tinyvit logits stats --json` of {}", dir.display())
            })?;
        Ok(StoreStats {
            bytes_per_sample: f(&v, "bytes_per_sample").unwrap_or(0.0),
            total_bytes: f(&v, "total_bytes").unwrap_or(0.0),
            samples: f(&v, "samples").unwrap_or(0.0),
            epochs: f(&v, "epochs").unwrap_or(0.0),
            mean_top1: f(&v, "mean_top1_prob"),
            mass_kept: f(&v, "mean_mass_kept"),
        })
    }

    fn export_stage(&self, kd: &Done, data: &Data, tvb: &Path) -> Result<Done> {
        let dir = self.out.join("export");
        let args: Vec<String> = vec![
            "export".into(),
            "--checkpoint".into(),
            kd.dir.join("model.safetensors").display().to_string(),
            "--val".into(),
            data.val.clone(),
        ];
        let key = format!("{} | {}", args.join(" "), kd.key);
        let done = self.stage("export .tvb", &dir, &key, |d| {
            let mut a = args.clone();
            let file = d.join("student.tvb");
            a.extend(["--out".into(), file.display().to_string()]);
            let out = self.tinyvit_output(&a)?;
            std::fs::write(d.join("export.log"), &out)?;
            Ok(())
        })?;
        std::fs::copy(dir.join("student.tvb"), tvb)
            .with_context(|| format!("copying the exported model to {}", tvb.display()))?;
        Ok(done)
    }

    /// The post-training int8 quantisation of the distilled student (`tinyvit quantize`):
    /// calibration on training images, f32 and int8 compared on `split`.
    fn quantize_stage(&self, kd: &Done, data: &Data, split: &str, q8: &Path) -> Result<Done> {
        let dir = self.out.join("quantize");
        let args: Vec<String> = vec![
            "quantize".into(),
            "--model".into(),
            kd.dir.join("model.safetensors").display().to_string(),
            "--calib".into(),
            data.train.clone(),
            "--calib-images".into(),
            self.plan.calib_images.to_string(),
            "--val".into(),
            split.to_string(),
        ];
        let key = format!("{} | {}", args.join(" "), kd.key);
        let done = self.stage("quantize int8", &dir, &key, |d| {
            let mut a = args.clone();
            a.extend([
                "--out".into(),
                d.join("student.q8.tvb").display().to_string(),
            ]);
            let out = self.tinyvit_output(&a)?;
            std::fs::write(d.join("quantize.json"), out.trim())?;
            Ok(())
        })?;
        std::fs::copy(dir.join("student.q8.tvb"), q8)
            .with_context(|| format!("copying the int8 model to {}", q8.display()))?;
        Ok(done)
    }

    /// The firmware built with `tvb` and run under QEMU on `split`, in the folder `name`.
    fn firmware_stage(
        &self,
        name: &str,
        upstream: &Done,
        tvb: &Path,
        split: &str,
    ) -> Result<firmware::DeviceRun> {
        let dir = self.out.join(name);
        let n = self.plan.device_images;
        let key = format!("{} | {split} | {n}", upstream.key);
        let tinyvit = self.tinyvit.clone();
        self.stage(&format!("firmware under QEMU ({name})"), &dir, &key, |d| {
            let run = firmware::run_eval(&tinyvit, tvb, split, n, d)?;
            std::fs::write(
                d.join("device.json"),
                serde_json::to_string_pretty(&run.to_json())?,
            )?;
            Ok(())
        })?;
        firmware::DeviceRun::from_json(&serde_json::from_str(&std::fs::read_to_string(
            dir.join("device.json"),
        )?)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        rows: &[Row],
        stats: &StoreStats,
        store: &Done,
        k_table: &[(u32, Option<f64>, Option<f64>)],
        bits_row: Option<(f64, Option<f64>, Option<f64>)>,
        device: Option<&firmware::DeviceRun>,
        int8: &str,
        notes: &[String],
        start: Instant,
    ) -> Result<String> {
        let o = self.o;
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let mut r = String::new();
        let test_name = test_name(o);
        writeln!(r, "# tinyvit run report\n")?;
        writeln!(
            r,
            "Data: {}. Student `{}`, {} epochs of stored teacher logits, K = {}, seed {}.\n",
            o.data
                .as_deref()
                .unwrap_or("Fashion-MNIST (train / held-out val / test)"),
            o.arch,
            self.plan.epochs,
            self.plan.topk,
            o.seed
        )?;
        writeln!(
            r,
            "| model | val top-1 % | {test_name} top-1 % | wall s | notes |"
        )?;
        writeln!(r, "|---|---|---|---|---|")?;
        for row in rows {
            writeln!(
                r,
                "| {} | {} | {} | {:.0}{} | {} |",
                row.what,
                pct(row.val_top1),
                pct(row.test_top1),
                row.seconds,
                if row.cached { " (earlier run)" } else { "" },
                row.note
            )?;
        }
        writeln!(r)?;
        if o.data.is_none() {
            writeln!(
                r,
                "For scale, published Fashion-MNIST test top-1 from the benchmark table of the \
                 dataset's own README (github.com/zalandoresearch/fashion-mnist): 2 conv layers \
                 under 100k parameters 92.5 %, ResNet18 94.9 %, WRN-28-10 with random erasing \
                 96.3 %; a small ViT trained from scratch (200k-800k parameters) 92.3 % \
                 (README of s-chh/PyTorch-Scratch-Vision-Transformer-ViT).\n"
            )?;
        }
        writeln!(
            r,
            "Store: {:.0} samples x {:.0} epochs, {:.1} bytes per sample, {:.2} MB in all; \
             teacher pass {:.0} s; mean top-1 probability {}, mass kept by top-{} {}.",
            stats.samples,
            stats.epochs,
            stats.bytes_per_sample,
            stats.total_bytes / 1e6,
            store.seconds,
            stats.mean_top1.map_or("-".into(), |v| format!("{v:.3}")),
            self.plan.topk,
            stats.mass_kept.map_or("-".into(), |v| format!("{v:.3}"))
        )?;
        if let Ok(text) = std::fs::read_to_string(self.out.join("export").join("export.log")) {
            if let Ok(v) = serde_json::from_str::<Value>(text.trim()) {
                writeln!(
                    r,
                    "\nExport: `student.tvb`, {} bytes, BatchNorm folded; on {} validation images \
                     libtorch top-1 {} % and core `{}` engine top-1 {} % ({} disagreements, max \
                     relative logit difference {:.1e}).",
                    v["bytes"],
                    v["images"],
                    v["tch_top1"],
                    v["engine"].as_str().unwrap_or("?"),
                    v["core_top1"],
                    v["disagreements"],
                    f(&v, "max_rel_logit_diff").unwrap_or(f64::NAN)
                )?;
            }
        }
        if let Some(d) = device {
            writeln!(r)?;
            writeln!(
                r,
                "Device (QEMU {}): {} test images, {} agree with the host bit for bit \
                 (class and logits hash); {} instructions per image on the M4F, {} on the M7; \
                 model {} bytes, arena {} bytes.",
                d.board,
                d.images,
                d.agree,
                d.instructions_per_image,
                d.instructions_per_image_m7
                    .map_or("-".to_string(), |v| v.to_string()),
                d.model_bytes,
                d.arena_bytes
            )?;
        }
        r.push_str(int8);
        if !k_table.is_empty() {
            writeln!(
                r,
                "\n| K | val top-1 % | {test_name} top-1 % |\n|---|---|---|"
            )?;
            for (k, v, t) in k_table {
                writeln!(r, "| {k} | {} | {} |", pct(*v), pct(*t))?;
            }
            writeln!(r, "\nAccuracy against K: `k_sweep.png`.")?;
        }
        if let Some((bps, v, t)) = bits_row {
            writeln!(
                r,
                "\n8-bit probabilities: {bps:.1} bytes per sample (f16: {:.1}); student val {} %, {test_name} {} %.",
                stats.bytes_per_sample,
                pct(v),
                pct(t)
            )?;
        }
        writeln!(r, "\n| stage | wall s |\n|---|---|")?;
        for (title, secs, reused) in self.times.borrow().iter() {
            let how = if *reused {
                " (earlier run, reused)"
            } else {
                ""
            };
            writeln!(r, "| {title} | {secs:.1}{how} |")?;
        }
        for n in notes {
            writeln!(r, "\nNote: {n}")?;
        }
        let reused: Vec<String> = self
            .times
            .borrow()
            .iter()
            .filter(|t| t.2)
            .map(|t| t.0.clone())
            .collect();
        let reused = if reused.is_empty() {
            "every stage ran in this run".to_string()
        } else {
            format!(
                "reused from earlier runs, so not timed here: {}",
                reused.join(", ")
            )
        };
        writeln!(
            r,
            "\nTotal wall time {:.0} s ({reused}); the release build of `tinyvit` before it took \
             {:.0} s and is not counted. Curves: `*/curves.png`; metrics: `*/metrics.jsonl`; \
             student model: `student.tvb`.",
            start.elapsed().as_secs_f64(),
            self.build_seconds
        )?;
        Ok(r)
    }

    /// `tinyvit analyze hard` over the training split from the store (no teacher forward) and
    /// `tinyvit analyze correlation` of teacher and both students on the validation split.
    fn analysis_stage(
        &self,
        store: &Done,
        data: &Data,
        teacher: &Path,
        kd: &Done,
        base: &Done,
    ) -> Result<Done> {
        let dir = self.out.join("analysis");
        let key = format!(
            "{} | {} | {} | {}",
            store.key,
            kd.key,
            base.key,
            teacher.display()
        );
        let fashion = self.o.data.is_none();
        let teacher_ckpt = teacher.extension().is_some_and(|e| e == "safetensors");
        self.stage("analysis", &dir, &key, |d| {
            // The splits are IDX files, which carry no class names: name the dataset's.
            let names: Vec<String> = if fashion {
                vec!["--class-names".into(), "fashion-mnist".into()]
            } else {
                Vec::new()
            };
            let mut hard: Vec<String> = vec![
                "analyze".into(),
                "hard".into(),
                "--data".into(),
                data.train.clone(),
                "--logits".into(),
                store.dir.display().to_string(),
                "--topk".into(),
                "5".into(),
                "--out".into(),
                d.join("hard").display().to_string(),
            ];
            hard.extend(names.iter().cloned());
            let out = self.tinyvit_output(&hard)?;
            std::fs::write(d.join("hard.txt"), out)?;
            let mut corr: Vec<String> = vec!["analyze".into(), "correlation".into()];
            // The teacher is the reference when it is a TinyViT checkpoint the core engines run.
            if teacher_ckpt {
                corr.extend(["--model".into(), teacher.display().to_string()]);
            }
            for s in [kd, base] {
                corr.extend([
                    "--model".into(),
                    s.dir.join("model.safetensors").display().to_string(),
                ]);
            }
            corr.extend([
                "--data".into(),
                data.val.clone(),
                "--per-class".into(),
                "8".into(),
                "--out".into(),
                d.join("correlation.png").display().to_string(),
                "--json".into(),
                d.join("correlation.json").display().to_string(),
            ]);
            corr.extend(names);
            let out = self.tinyvit_output(&corr)?;
            std::fs::write(d.join("correlation.txt"), out)?;
            Ok(())
        })
    }

    /// `k_sweep.png`: the students' top-1 against K, validation and test, drawn by
    /// `tinyvit plot` from `k_sweep.json` (both in the run folder).
    fn k_sweep_png(&self, k_table: &[(u32, Option<f64>, Option<f64>)]) -> Result<()> {
        let json = self.out.join("k_sweep.json");
        let spec = k_sweep_spec(k_table, test_name(self.o));
        std::fs::write(&json, serde_json::to_string_pretty(&spec)?)
            .with_context(|| format!("writing {}", json.display()))?;
        let png = self.out.join("k_sweep.png");
        self.tinyvit(&[
            "plot".into(),
            json.display().to_string(),
            "--out".into(),
            png.display().to_string(),
        ])
    }

    fn tinyvit(&self, args: &[String]) -> Result<()> {
        util::run(Command::new(&self.tinyvit).args(args))
    }

    /// `tinyvit ARGS` as `--nproc` local ranks, with torchrun's variables and the rendezvous on
    /// a free port of 127.0.0.1; fails when any rank fails (a lost rank makes the others exit
    /// within their timeout).
    fn tinyvit_ranks(&self, args: &[String]) -> Result<()> {
        let n = self.o.nproc;
        if n <= 1 {
            return self.tinyvit(args);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut ranks = Vec::new();
        for r in 0..n {
            let child = Command::new(&self.tinyvit)
                .args(args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", n.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("LOCAL_WORLD_SIZE", n.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .spawn()
                .with_context(|| format!("starting rank {r}: {}", self.tinyvit.display()))?;
            ranks.push(child);
        }
        let mut failed = Vec::new();
        for (r, mut child) in ranks.into_iter().enumerate() {
            let status = child.wait()?;
            if !status.success() {
                failed.push(format!("rank {r} ({status})"));
            }
        }
        if !failed.is_empty() {
            bail!(
                "`tinyvit {}` failed on {}",
                args.join(" "),
                failed.join(", ")
            );
        }
        Ok(())
    }

    fn tinyvit_output(&self, args: &[String]) -> Result<String> {
        let mut cmd = Command::new(&self.tinyvit);
        cmd.args(args).stderr(std::process::Stdio::inherit());
        let out = cmd
            .output()
            .with_context(|| format!("running {}", self.tinyvit.display()))?;
        if !out.status.success() {
            bail!("`tinyvit {}` failed ({})", args.join(" "), out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// One row of the K sweep: K, validation and test top-1.
type KRow = (u32, Option<f64>, Option<f64>);

/// The chart description `tinyvit plot` draws as `k_sweep.png`: one series per split, a point
/// per K with a measured top-1.
fn k_sweep_spec(k_table: &[KRow], test_name: &str) -> Value {
    let series = |name: &str, pick: fn(&KRow) -> Option<f64>| {
        let points: Vec<Value> = k_table
            .iter()
            .filter_map(|row| pick(row).map(|v| serde_json::json!([row.0, v])))
            .collect();
        serde_json::json!({ "name": name, "points": points })
    };
    serde_json::json!({
        "title": "distilled student top-1 against K (top-K probabilities stored per sample)",
        "x_label": "K",
        "y_label": "top-1 %",
        "series": [series("val", |r| r.1), series(test_name, |r| r.2)],
    })
}

/// Which split the report's second accuracy column is.
fn test_name(o: &Opts) -> &'static str {
    if o.data.is_some() && o.test.is_none() {
        "val"
    } else {
        "test"
    }
}

/// The f32 and int8 students side by side: what `tinyvit quantize` measured and what the
/// device runs reported.
struct Int8Figures<'a> {
    /// `quantize/quantize.json` (`tinyvit quantize`'s report).
    quant: Value,
    f32_tvb: PathBuf,
    device: Option<&'a firmware::DeviceRun>,
    device_q8: Option<&'a firmware::DeviceRun>,
}

impl Int8Figures<'_> {
    /// The report's int8 section: a table of both students and one sentence on the method.
    fn section(&self, test_name: &str) -> Result<String> {
        let q = &self.quant;
        let bytes = std::fs::read(&self.f32_tvb)
            .with_context(|| format!("reading {}", self.f32_tvb.display()))?;
        let t = tinyvit_core::tvb::parse(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.f32_tvb.display()))?;
        let cfg = *t.config();
        let macs = tinyvit_core::engine::macs(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
        let f32_arena =
            tinyvit_core::engine::arena_len(&cfg).map_err(|e| anyhow::anyhow!("{e}"))? as u64 * 4;
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        let per_mac = |n: u64| format!("{n} ({:.2} / MAC)", n as f64 / macs as f64);
        let instr = |d: Option<&firmware::DeviceRun>| {
            d.map_or("-".to_string(), |d| {
                let m7 = d.instructions_per_image_m7.map_or("-".to_string(), per_mac);
                format!("{} / {m7}", per_mac(d.instructions_per_image))
            })
        };
        let agree = |d: Option<&firmware::DeviceRun>| {
            d.map_or("-".to_string(), |d| format!("{} / {}", d.agree, d.images))
        };
        let mut r = String::new();
        writeln!(
            r,
            "\nInt8 student (post-training quantisation, `quantize/`):\n"
        )?;
        writeln!(
            r,
            "| student | {test_name} top-1 % | top-1 agreement with f32 % | model bytes | RAM \
             (engine arena) bytes | instructions / inference (QEMU M4F / M7) | \
             device = host |"
        )?;
        writeln!(r, "|---|---|---|---|---|---|---|")?;
        writeln!(
            r,
            "| f32 `student.tvb` | {} | 100 | {} | {f32_arena} | {} | {} |",
            pct(f(q, "f32_top1")),
            q["f32_bytes"],
            instr(self.device),
            agree(self.device)
        )?;
        writeln!(
            r,
            "| int8 `student.q8.tvb` | {} | {} | {} | {} | {} | {} |",
            pct(f(q, "int8_top1")),
            pct(f(q, "agreement")),
            q["int8_bytes"],
            q["int8_arena_bytes"],
            instr(self.device_q8),
            agree(self.device_q8)
        )?;
        let drop = match (f(q, "f32_top1"), f(q, "int8_top1")) {
            (Some(a), Some(b)) => format!("; top-1 change {:+.2} points", b - a),
            _ => String::new(),
        };
        writeln!(
            r,
            "\n`tinyvit quantize` (post-training, integer-only engine of the core): activation \
             ranges `{}` over {} evaluation views of training images; both models compared \
             on {} {test_name} images by the core (f32 `fast`, int8 `exact` engine){drop}; \
             int8 file {:.2}x the f32 file; {macs} multiply-accumulates per inference.",
            q["method"].as_str().unwrap_or("?"),
            q["calib_images"],
            q["val_images"],
            f(q, "int8_bytes").unwrap_or(0.0) / f(q, "f32_bytes").unwrap_or(f64::NAN),
        )?;
        Ok(r)
    }
}

struct StoreStats {
    bytes_per_sample: f64,
    total_bytes: f64,
    samples: f64,
    epochs: f64,
    mean_top1: Option<f64>,
    mass_kept: Option<f64>,
}

/// The report's section on what distillation transfers, from the analysis stage's files.
fn analysis_section(dir: &Path) -> Result<String> {
    let mut r = String::new();
    writeln!(r, "\n## What distillation transfers\n")?;
    let hard: Value = read_json(&dir.join("hard").join("summary.json"))?;
    let (n, h) = (
        f(&hard, "examined").unwrap_or(0.0),
        f(&hard, "hard").unwrap_or(0.0),
    );
    writeln!(
        r,
        "Hard samples of the training split (label outside the teacher's top-{}, from the \
         store's targets averaged over its epochs): {h:.0} of {n:.0} ({:.2} %). List \
         `analysis/hard/hard.tsv`, contact sheet `analysis/hard/contact.png`, exclusion list \
         `analysis/hard/exclude.txt` (`tinyvit train --exclude`; `--clean-baseline` trains on \
         the rest).\n",
        hard["topk"],
        100.0 * h / n.max(1.0)
    )?;
    let tsv = std::fs::read_to_string(dir.join("hard").join("hard.tsv")).unwrap_or_default();
    let rows: Vec<&str> = tsv.lines().skip(1).take(5).collect();
    if !rows.is_empty() {
        writeln!(
            r,
            "| rank | sample | given | p(given) | teacher top-1 | p |"
        )?;
        writeln!(r, "|---|---|---|---|---|---|")?;
        for l in rows {
            let c: Vec<&str> = l.split('\t').collect();
            if c.len() >= 6 {
                writeln!(
                    r,
                    "| {} | {} | {} | {} | {} | {} |",
                    c[0], c[1], c[2], c[3], c[4], c[5]
                )?;
            }
        }
        writeln!(r)?;
    }
    let corr: Value = read_json(&dir.join("correlation.json"))?;
    writeln!(
        r,
        "Class correlation (Pearson correlation between class logits over {} validation images, \
         8 per class; `analysis/correlation.png`), and each model's similarity to the first \
         (Pearson correlation of the off-diagonal entries):\n",
        corr["images"]
    )?;
    writeln!(
        r,
        "| model | similarity | top-1 on these images % |\n|---|---|---|"
    )?;
    for m in corr["models"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
        writeln!(
            r,
            "| {} | {} | {:.1} |",
            m["name"].as_str().unwrap_or("?"),
            f(m, "score").map_or("-".to_string(), |s| format!("{s:.3}")),
            f(m, "top1").unwrap_or(f64::NAN)
        )?;
    }
    Ok(r)
}

fn read_json(p: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
}

/// The flags that hold `tinyvit contract` to the board budget of the student preset `arch` at
/// `img_size`, and the student's cost. f32: the board's budget as `--mcu` prices it. int8: the
/// same board budget, the int8 file in the board's flash and RAM and no more instructions than
/// the f32 student spends (the board's time), so both engines' winners answer one budget.
fn contract_budget(
    arch: &str,
    img_size: u32,
    int8: bool,
) -> Result<(Vec<String>, tinyvit_core::cost::Cost)> {
    let student = tinyvit_core::config::ModelConfig::preset(arch)
        .with_context(|| format!("`{arch}` is not a preset"))?
        .with_img_size(img_size);
    let sc = tinyvit_core::cost::cost(&student).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut args = vec!["--mcu".to_string(), arch.to_string()];
    if int8 {
        args.extend([
            "--max-instructions".into(),
            sc.f32_instructions[0].to_string(),
        ]);
    }
    Ok((args, sc))
}

fn summary(dir: &Path) -> Result<Value> {
    read_json(&dir.join("summary.json"))
}

fn f(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// Input side of a student preset.
fn student_size(arch: &str) -> Result<u32> {
    tinyvit_core::config::ModelConfig::preset(arch)
        .map(|c| c.img_size)
        .with_context(|| {
            format!(
                "unknown --arch `{arch}` (known: {})",
                tinyvit_core::config::PRESET_NAMES.join(", ")
            )
        })
}

/// Builds the release `tinyvit` (with the `dist` feature for `--nproc`) and returns its path;
/// `$TINYVIT_BIN` names a binary to use instead (`cargo xtask test` passes the one its tests
/// just built).
fn build_tinyvit(dist: bool) -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("TINYVIT_BIN") {
        let bin = PathBuf::from(bin);
        anyhow::ensure!(
            bin.is_file(),
            "$TINYVIT_BIN: {} is not a file",
            bin.display()
        );
        return Ok(bin);
    }
    util::step("building the release `tinyvit` command");
    let mut cmd = util::cargo();
    cmd.args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "tinyvit-host",
        "--bin",
        "tinyvit",
    ]);
    if dist {
        setup::gloo_headers()?;
        cmd.args(["--features", "dist"]);
    }
    setup::torch_env(&mut cmd)?;
    util::run(&mut cmd)?;
    Ok(util::target_dir().join("release").join("tinyvit"))
}

#[cfg(test)]
mod tests {
    fn opts(args: &[&str]) -> Result<super::Opts, clap::Error> {
        super::Opts::parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn the_full_profile_sets_what_the_user_left_alone() {
        let o = opts(&["--profile", "full", "--device", "cuda"]).unwrap();
        assert_eq!(o.arch, "tiny_vit_mcu_h7");
        assert_eq!(o.teacher_arch, "tiny_vit_5m_224");
        assert!(o.train_teacher);
        let p = super::Plan::new(&o).unwrap();
        assert_eq!((p.epochs, p.teacher_epochs, p.batch_size), (40, 60, 256));
        assert_eq!(p.sizes.train, 55_000);
        // Explicit flags win over the profile.
        let o = opts(&[
            "--profile",
            "full",
            "--arch",
            "tiny_vit_mcu_m4",
            "--epochs",
            "7",
        ])
        .unwrap();
        assert_eq!(o.arch, "tiny_vit_mcu_m4");
        assert_eq!(super::Plan::new(&o).unwrap().epochs, 7);
        // The default profile keeps the README's run.
        let o = opts(&[]).unwrap();
        assert_eq!(
            (o.arch.as_str(), o.teacher_arch.as_str()),
            ("tiny_vit_mcu_m4", "tiny_vit_mcu_h7")
        );
        assert!(!o.train_teacher);
        assert_eq!(super::Plan::new(&o).unwrap().epochs, 5);
        let e = opts(&["--profile", "full", "--quick"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--profile full and --quick"), "{e}");
    }

    #[test]
    fn the_contraction_engine_is_f32_or_int8() {
        assert_eq!(opts(&["--contract"]).unwrap().contract_engine, "f32");
        let o = opts(&["--contract", "--contract-engine", "int8"]).unwrap();
        assert_eq!(o.contract_engine, "int8");
        let e = opts(&["--contract", "--contract-engine", "fp16"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("fp16"), "{e}");
    }

    #[test]
    fn the_int8_contraction_answers_the_f32_students_board_budget() {
        let m4 = tinyvit_core::config::ModelConfig::tiny_vit_mcu_m4().with_img_size(28);
        let f32_instr = tinyvit_core::cost::cost(&m4).unwrap().f32_instructions[0];
        let (f32_args, _) = super::contract_budget("tiny_vit_mcu_m4", 28, false).unwrap();
        assert_eq!(f32_args, ["--mcu", "tiny_vit_mcu_m4"]);
        let (q8_args, sc) = super::contract_budget("tiny_vit_mcu_m4", 28, true).unwrap();
        assert_eq!(
            q8_args,
            [
                "--mcu".to_string(),
                "tiny_vit_mcu_m4".into(),
                "--max-instructions".into(),
                f32_instr.to_string()
            ]
        );
        assert_eq!(sc.f32_instructions[0], f32_instr);
        // Both int8 presets at 28 px now run within that instruction budget (the int8 engine of
        // format version 5, README, progressive contraction); the search's start, the H7's int8
        // preset, still has to be contracted, for the M4 board's flash.
        let int8_instr = |c: tinyvit_core::config::ModelConfig| {
            tinyvit_core::cost::cost(&c.with_img_size(28))
                .unwrap()
                .int8_instructions[0]
        };
        use tinyvit_core::config::ModelConfig;
        assert!(int8_instr(ModelConfig::tiny_vit_mcu_h7_q8()) < f32_instr);
        assert!(int8_instr(ModelConfig::tiny_vit_mcu_m4_q8()) < f32_instr);
        let flash = tinyvit_core::config::mcu_budget("tiny_vit_mcu_m4")
            .unwrap()
            .model_bytes;
        let h7_q8 = ModelConfig::tiny_vit_mcu_h7_q8().with_img_size(28);
        assert!(tinyvit_core::int8::layout::data_len(&h7_q8) as u64 > flash);
        assert!(super::contract_budget("nope", 28, true).is_err());
    }

    #[test]
    fn the_k_sweep_chart_has_a_point_per_measured_k() {
        let spec = super::k_sweep_spec(
            &[
                (1, Some(76.1), Some(76.3)),
                (3, Some(76.6), None),
                (5, None, Some(76.9)),
            ],
            "test",
        );
        assert_eq!(spec["x_label"], "K");
        let s = spec["series"].as_array().unwrap();
        assert_eq!(s[0]["name"], "val");
        assert_eq!(s[0]["points"], serde_json::json!([[1, 76.1], [3, 76.6]]));
        assert_eq!(s[1]["name"], "test");
        assert_eq!(s[1]["points"], serde_json::json!([[1, 76.3], [5, 76.9]]));
    }

    use super::*;

    fn device(instr: u64, agree: u64) -> firmware::DeviceRun {
        firmware::DeviceRun {
            board: "qemu".into(),
            images: 32,
            agree,
            instructions_per_image: instr,
            instructions_per_image_m7: Some(instr + 40),
            model_bytes: 1,
            arena_bytes: 1,
        }
    }

    /// Both students' rows from `quantize.json`, the per-MAC figures from the core's count, and
    /// `-` where a device run is missing (the int8 firmware stage failed or was skipped).
    #[test]
    fn int8_section_puts_both_students_side_by_side() {
        let cfg = tinyvit_core::config::ModelConfig::preset("tiny_vit_mcu_m4").unwrap();
        let blob = vec![0f32; tinyvit_core::params::folded_blob_len(&cfg)];
        let tvb = std::env::temp_dir().join(format!("xtask-int8-{}.tvb", std::process::id()));
        std::fs::write(&tvb, tinyvit_core::tvb::write(&cfg, &blob).unwrap()).unwrap();
        let macs = tinyvit_core::engine::macs(&cfg).unwrap();
        let quant = serde_json::json!({
            "f32_bytes": 745168, "int8_bytes": 230388, "int8_arena_bytes": 12176,
            "calib_images": 256, "method": "max", "val_images": 10000,
            "f32_top1": 76.88, "int8_top1": 76.97, "agreement": 99.1,
        });
        let f32_dev = device(macs * 10, 32);
        let fig = Int8Figures {
            quant: quant.clone(),
            f32_tvb: tvb.clone(),
            device: Some(&f32_dev),
            device_q8: None,
        };
        let s = fig.section("test").unwrap();
        let rows: Vec<&str> = s.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 3, "{s}");
        assert!(rows[1].contains("| 76.88 | 100 | 745168 | 29888 | "), "{s}");
        assert!(
            rows[1].contains(&std::format!(
                "| {} (10.00 / MAC) / {} (10.00 / MAC) | 32 / 32 |",
                macs * 10,
                macs * 10 + 40
            )),
            "{s}"
        );
        assert!(
            rows[2].ends_with("| 76.97 | 99.10 | 230388 | 12176 | - | - |"),
            "{s}"
        );
        assert!(s.contains("top-1 change +0.09 points"), "{s}");
        let q8_dev = device(macs * 3 / 2, 31);
        let fig = Int8Figures {
            quant,
            f32_tvb: tvb.clone(),
            device: None,
            device_q8: Some(&q8_dev),
        };
        let s = fig.section("test").unwrap();
        assert!(s.contains("(1.50 / MAC) | 31 / 32 |"), "{s}");
        // A record written before the M7 count was kept says so.
        let old = firmware::DeviceRun {
            instructions_per_image_m7: None,
            ..device(macs * 2, 32)
        };
        let fig = Int8Figures {
            quant: serde_json::json!({"f32_bytes": 1, "int8_bytes": 1}),
            f32_tvb: tvb.clone(),
            device: None,
            device_q8: Some(&old),
        };
        let s = fig.section("test").unwrap();
        assert!(s.contains("(2.00 / MAC) / - | 32 / 32 |"), "{s}");
        std::fs::remove_file(&tvb).unwrap();
    }
}

#[cfg(test)]
mod committed_teacher_tests {
    use super::*;

    /// The committed teacher is what `--train-teacher` would train: the defaults of a plain
    /// `cargo xtask train` give its architecture, input side and epochs, and the file is the
    /// one its record hashes.
    #[test]
    fn committed_teacher_matches_the_default_plan_and_its_hash() {
        let root = util::root();
        let c = CommittedTeacher::read(&root).unwrap();
        let o = Opts::try_parse_from(["cargo xtask train"]).unwrap();
        let plan = Plan::new(&o).unwrap();
        assert_eq!(c.arch, o.teacher_arch);
        assert_eq!(c.img_size, plan.img_size);
        assert_eq!(c.epochs, plan.teacher_epochs);
        let rec = read_json(&root.join(TEACHER_RECORD)).unwrap();
        assert_eq!(rec["batch_size"].as_u64(), Some(u64::from(plan.batch_size)));
        assert_eq!(rec["aug"].as_str(), Some(o.teacher_aug.as_str()));
        assert_eq!(rec["seed"].as_u64(), Some(o.seed));
        assert_eq!(util::sha256_file(&c.path).unwrap(), c.sha256);
    }
}
