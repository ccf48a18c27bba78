//! `cargo xtask`: the project's tasks. This file only dispatches; one module a task.

mod bench;
mod cost;
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
  cost      count firmware instructions of many configs on QEMU (--measure) and fit the core's
            instruction model to them (--fit, the default): prints its coefficient table
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

/// The usage of one task, for `cargo xtask TASK --help` (`None`: no such task).
fn task_help(task: &str) -> Option<String> {
    let text = match task {
        "setup" => "usage: cargo xtask setup\n\nFinds or installs libtorch 2.11 and \
                    qemu-system-arm and prints what was found."
            .to_string(),
        "test" => "usage: cargo xtask test\n\nRuns every test of the project, clippy, rustfmt \
                   and the no_std device build of the core."
            .to_string(),
        "train" => {
            use clap::CommandFactory;
            train::Opts::command().render_long_help().to_string()
        }
        "bench" => "usage: cargo xtask bench\n\nRuns the benchmarks and prints each figure with \
                    its ratio to the named peer (creates the reference Python venv once)."
            .to_string(),
        "cost" => cost::USAGE.to_string(),
        "install" => "usage: cargo xtask install [CARGO INSTALL ARGS]\n\nBuilds the release \
                      `tinyvit` command and installs it into ~/.cargo/bin."
            .to_string(),
        "firmware" | "flash" => firmware::USAGE.to_string(),
        "replay" => "usage: cargo xtask replay [--bless]\n\nHost vs device bit-exact replay on \
                     QEMU, diffed with firmware/expected; --bless rewrites the expected files \
                     (and fails)."
            .to_string(),
        "fuzz" => "usage: cargo xtask fuzz [--seconds S] [--seeds] [TARGET...]\n\nRuns the \
                   libFuzzer targets of fuzz/ (nightly, cargo-fuzz)."
            .to_string(),
        "soak" => "usage: cargo xtask soak [--kills N] [--seed S] [--out DIR]\n\nKills \
                   `tinyvit save-logits` and `tinyvit train` at random points of their progress \
                   on disk, resumes them and compares the results with uninterrupted runs byte \
                   for byte."
            .to_string(),
        _ => return None,
    };
    Some(text)
}

/// Whether the arguments ask for help (then no task starts any work).
fn wants_help(rest: &[String]) -> bool {
    rest.iter().any(|a| a == "-h" || a == "--help")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let task = args.next();
    let rest: Vec<String> = args.collect();
    if let Some(help) = task
        .as_deref()
        .filter(|_| wants_help(&rest))
        .and_then(task_help)
    {
        println!("{}", help.trim_end());
        return;
    }
    let result = match task.as_deref() {
        Some("setup") => setup::run(&rest),
        Some("test") => test::run(&rest),
        Some("train") => train::run(&rest),
        Some("bench") => bench::run(&rest),
        Some("cost") => cost::run(&rest),
        Some("install") => install::run(&rest),
        Some("firmware") if rest.first().is_some_and(|c| c == "bench") => replay::bench(&rest[1..]),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every task of the usage answers `--help` with its own usage.
    #[test]
    fn every_task_has_help() {
        let tasks: Vec<&str> = USAGE
            .lines()
            .skip_while(|l| !l.starts_with("tasks:"))
            .skip(1)
            .filter_map(|l| l.strip_prefix("  ").filter(|r| !r.starts_with(' ')))
            .filter_map(|r| r.split_whitespace().next())
            .collect();
        assert!(tasks.len() >= 9, "{tasks:?}");
        for t in tasks {
            let h = task_help(t).unwrap_or_else(|| panic!("no help for `{t}`"));
            assert!(h.contains("usage") || h.contains("Usage"), "{t}: {h}");
        }
        assert!(wants_help(&["--quick".into(), "-h".into()]));
        assert!(!wants_help(&["--quick".into()]));
    }
}
