//! `cargo xtask`: the project's tasks. This file only dispatches; one module a task.

mod bench;
mod firmware;
mod fuzz;
mod install;
mod replay;
mod setup;
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
  firmware  build|run|size|eval|bench the Cortex-M firmware [--board qemu-m4|qemu-m7|nucleo-h743]
            [--model F.tvb] (cargo xtask firmware --help for the options)
  flash     flash and run the firmware on a Nucleo-H743ZI with probe-rs [--model F.tvb]
  replay    host vs Cortex-M4F/M7 (QEMU) bit-exact replay, diffed with firmware/expected [--bless]
  fuzz      the libFuzzer targets of fuzz/ [--seconds S] [--seeds] [TARGET...] (nightly, cargo-fuzz)
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
        Some("firmware") => firmware::run(&rest),
        Some("flash") => firmware::flash(&rest),
        Some("replay") => replay::run(&rest),
        Some("fuzz") => fuzz::run(&rest),
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
