//! Every xtask subcommand answers `--help` (and `-h`, wherever it stands) with its usage and
//! exit status 0, and starts no work: each answer comes back within seconds, with nothing on
//! stderr (issue 15, item 10).

use std::process::Command;
use std::time::{Duration, Instant};

const TASKS: [&str; 10] = [
    "setup", "test", "train", "bench", "install", "firmware", "flash", "replay", "fuzz", "",
];

#[test]
fn every_task_answers_help_without_starting_work() {
    for task in TASKS {
        for args in [vec!["--help"], vec!["--quick", "-h"]] {
            if task.is_empty() && args.len() > 1 {
                continue;
            }
            let start = Instant::now();
            let mut c = Command::new(env!("CARGO_BIN_EXE_xtask"));
            if !task.is_empty() {
                c.arg(task);
            }
            let o = c.args(&args).output().unwrap();
            let out = String::from_utf8_lossy(&o.stdout);
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{task} {args:?}: {err}");
            assert!(
                out.to_lowercase().contains("usage"),
                "{task} {args:?}: {out}"
            );
            assert!(err.is_empty(), "{task} {args:?}: stderr {err}");
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{task} {args:?} took {:?}",
                start.elapsed()
            );
        }
    }
}
