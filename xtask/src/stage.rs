//! Cached pipeline stages: a stage runs once, records what it was run with, and is skipped on
//! the next run when its output folder holds the same record.
//!
//! A stage's *key* is a text that names everything its output depends on (its command line and
//! the keys of the stages it reads). After a stage succeeds, `DIR/.stage` holds that key and the
//! stage's wall time; a later run with the same key skips it, any other key (or `--force`) redoes
//! it from an empty folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::util;

/// The outcome of one stage.
#[derive(Clone, Debug)]
pub struct Done {
    /// The stage's folder.
    pub dir: PathBuf,
    /// The key it was run with (what later stages mix into theirs).
    pub key: String,
    /// Wall time of the run that produced the folder, in seconds (0 when it was cached from a
    /// record without timing).
    pub seconds: f64,
    /// Whether this invocation reused an earlier run.
    pub cached: bool,
}

/// Runs `body` into `dir` unless `dir` already holds the output of a run with the same `key`.
pub fn run(
    title: &str,
    dir: &Path,
    key: &str,
    force: bool,
    body: impl FnOnce(&Path) -> Result<()>,
) -> Result<Done> {
    let record = dir.join(".stage");
    if !force {
        if let Ok(text) = std::fs::read_to_string(&record) {
            if let Some((old_key, secs)) = parse_record(&text) {
                if old_key == key {
                    eprintln!("\n==> {title}: up to date in {} (skipped)", dir.display());
                    return Ok(Done {
                        dir: dir.to_path_buf(),
                        key: key.to_string(),
                        seconds: secs,
                        cached: true,
                    });
                }
            }
        }
    }
    util::step(&format!("{title} -> {}", dir.display()));
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let start = Instant::now();
    body(dir).with_context(|| format!("stage `{title}` failed"))?;
    let seconds = start.elapsed().as_secs_f64();
    std::fs::write(&record, format!("{seconds:.3}\n{key}"))
        .with_context(|| format!("writing {}", record.display()))?;
    eprintln!("    {title}: {seconds:.1} s");
    Ok(Done {
        dir: dir.to_path_buf(),
        key: key.to_string(),
        seconds,
        cached: false,
    })
}

fn parse_record(text: &str) -> Option<(&str, f64)> {
    let (secs, key) = text.split_once('\n')?;
    Some((key, secs.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_run_with_same_key_is_skipped_and_other_key_reruns() {
        let dir = std::env::temp_dir().join(format!("xtask-stage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut runs = 0;
        let a = run("t", &dir, "k1", false, |d| {
            runs += 1;
            std::fs::write(d.join("out"), "1").map_err(Into::into)
        })
        .unwrap();
        assert!(!a.cached);
        let b = run("t", &dir, "k1", false, |_| {
            runs += 1;
            Ok(())
        })
        .unwrap();
        assert!(b.cached);
        assert_eq!(runs, 1);
        let c = run("t", &dir, "k2", false, |d| {
            runs += 1;
            assert!(
                !d.join("out").exists(),
                "a rerun starts from an empty folder"
            );
            Ok(())
        })
        .unwrap();
        assert!(!c.cached);
        assert_eq!(runs, 2);
        let d = run("t", &dir, "k2", true, |_| {
            runs += 1;
            Ok(())
        })
        .unwrap();
        assert!(!d.cached);
        assert_eq!(runs, 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn failed_stage_leaves_no_record() {
        let dir = std::env::temp_dir().join(format!("xtask-stage-fail-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let r = run("t", &dir, "k", false, |_| anyhow::bail!("boom"));
        assert!(r.is_err());
        assert!(!dir.join(".stage").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
