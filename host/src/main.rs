//! `tinyvit`: the command-line front of the host crate. This file only parses and dispatches;
//! each subcommand lives in its own module.

use clap::{Parser, Subcommand};

use tinyvit_host::device;

#[derive(Parser)]
#[command(name = "tinyvit", version = version(), about = "Fast pretraining distillation for small vision transformers, from GPU servers to microcontrollers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the compute devices this binary can use.
    Devices,
    /// Logits of a TinyViT for images or a normalised .npy batch (core engines or libtorch;
    /// int8 files on the integer engine).
    Infer(tinyvit_host::infer::InferArgs),
    /// Convert a checkpoint (.safetensors, .pth) into a deployable .tvb (BatchNorm folded).
    Convert(tinyvit_host::infer::ConvertArgs),
    /// Print parameters, weight bytes and arena bytes of every preset (or of --arch PRESET or
    /// FILE.toml), in f32 and in int8.
    Presets(tinyvit_host::presets::PresetsArgs),
    /// Run a teacher over E augmented epochs and store its top-K probabilities + replay seeds.
    SaveLogits(tinyvit_host::save_logits::Args),
    /// Inspect a logit store: verify, stats, show.
    #[command(subcommand)]
    Logits(tinyvit_host::logits_cmd::Args),
    /// Train a TinyViT student: from a logit store, on labels, or from an online teacher.
    Train(Box<tinyvit_host::train::TrainArgs>),
    /// Top-1 and top-5 of a model on a labelled data SPEC (its own evaluation view and
    /// normalisation).
    Eval(tinyvit_host::eval_cmd::Args),
    /// Progressive model contraction: the best TinyViT under a device budget (flash, arena,
    /// instructions, params, MACs), every candidate trained from one logit store.
    Contract(Box<tinyvit_host::contraction::ContractArgs>),
    /// Export a checkpoint to .tvb (BN folded), verified against libtorch on validation data.
    Export(tinyvit_host::export::ExportArgs),
    /// Quantise an f32 model (.tvb or checkpoint) to an int8 .tvb with calibration images;
    /// compare f32 and int8 top-1 on --val.
    Quantize(tinyvit_host::quantize::QuantizeArgs),
    /// Render what the student sees: a replayed training view, named RandAugment ops, or the
    /// evaluation view.
    Augment(tinyvit_host::augment::AugmentArgs),
    /// The paper's analyses: hard samples (labels outside the teacher's top-k) and class
    /// correlations of model logits.
    #[command(subcommand)]
    Analyze(tinyvit_host::analyze::Args),
    /// Draw a line chart (axes, ticks, labels, legend) from a JSON description to a PNG.
    Plot(tinyvit_host::plot_cmd::Args),
}

fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        format!(
            "{} (libtorch {}; {})",
            env!("CARGO_PKG_VERSION"),
            tinyvit_host::LIBTORCH_VERSION,
            device::describe()
        )
    })
}

fn main() -> anyhow::Result<()> {
    device::load_cuda();
    let cli = Cli::parse();
    match cli.command {
        Command::Devices => {
            println!("{}", device::describe());
            Ok(())
        }
        Command::Infer(args) if tinyvit_host::infer_int8::is_int8(&args.source.model) => {
            tinyvit_host::infer_int8::run(&args)
        }
        Command::Infer(args) => tinyvit_host::infer::run(&args),
        Command::Convert(args) => tinyvit_host::infer::convert(&args),
        Command::Presets(args) => tinyvit_host::presets::run(&args),
        Command::SaveLogits(args) => tinyvit_host::save_logits::main(args),
        Command::Logits(args) => tinyvit_host::logits_cmd::main(args),
        Command::Train(args) => tinyvit_host::train::main(*args),
        Command::Eval(args) => tinyvit_host::eval_cmd::main(args),
        Command::Contract(args) => tinyvit_host::contraction::main(*args),
        Command::Export(args) => tinyvit_host::export::main(args),
        Command::Quantize(args) => tinyvit_host::quantize::main(args),
        Command::Augment(args) => tinyvit_host::augment::run(&args),
        Command::Analyze(args) => tinyvit_host::analyze::main(args),
        Command::Plot(args) => tinyvit_host::plot_cmd::main(args),
    }
}
