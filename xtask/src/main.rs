//! `cargo xtask`: the project's tasks. This file only dispatches; one module a task.

mod bench;
mod firmware;
mod fuzz;
mod install;
mod replay;
mod setup;
mod soak;
mod splits;
mod stage;
mod test;
mod train;
mod util;

const USAGE: &str = "\
usage: cargo xtask <task> [args]

tasks:
  setup     find or install libtorch 2.11 and qemu-system-arm, and print what was found
  test      run every test, clippy, rustfmt and the no_std device build of the core
  train     the main job: teacher, teacher pass, distilled student, baseline, report
  bench     run the benchmarks and print each figure with its ratio to the named peer
  install   build the release `tinyvit` command and install it into ~/.cargo/bin
  firmware  build|run|size|eval|bench the Cortex-M firmware [--board B] [--model F.tvb]
            (cargo xtask firmware --help for the options and boards)
  flash     flash and run the firmware on a real board with probe-rs, installing it when missing
            [--board nucleo-h743|feather-f405] [--model F.tvb]; `--board` alone lists the boards
  replay    host vs device bit-exact replay on QEMU mps2-an386 (M4F), mps2-an500 (M7) and
            netduinoplus2 (STM32F405), diffed with firmware/expected [--bless]
  fuzz      the libFuzzer targets of fuzz/ [--seconds S] [--seeds] [TARGET...] (nightly, cargo-fuzz)
  soak      SIGKILL save-logits and train at random points of progress on disk, resume them,
            compare with uninterrupted runs byte for byte [--kills N] [--seed S] [--out DIR]
";

fn main() {
    let mut args = std::env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();
    let result = match task.as_deref() {
        Some("setup") => setup::run(&rest),
        Some("test") => test::run(&rest),
        Some("train") => train::run(&rest),
        Some("bench") => bench::run(&rest),
        Some("install") => install::run(&rest),
        Some("firmware") if rest.first().is_some_and(|c| c == "bench") => replay::bench(),
        Some("firmware") => firmware::run(&rest),
        Some("flash") => firmware::flash(&rest),
        Some("replay") => replay::run(&rest),
        Some("fuzz") => fuzz::run(&rest),
        Some("soak") => soak::run(&rest),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task `{other}`\n\n{USAGE}")),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e:#}");
        std::process::exit(1);
    }
}
