//! Exclusion lists: samples of one dataset that training leaves out (`tinyvit train
//! --exclude FILE`), as `tinyvit analyze hard` writes them.
//!
//! # Format
//!
//! UTF-8 text, one sample index per line (0-based, the dataset's order). Lines starting with
//! `#` are comments; text after an index and a tab is a comment too (the sample's name). The
//! line `# dataset: N samples, sha256 HEX` pins the dataset: reading the list against another
//! dataset is an error, so a list never silently drops the wrong samples.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use crate::data::Dataset;

const DATASET_TAG: &str = "# dataset: ";

/// Writes `indices` of `ds` as an exclusion list to `path`, after `comment` lines (each
/// written with a leading `# `).
pub fn write(path: &Path, ds: &dyn Dataset, indices: &[usize], comment: &[String]) -> Result<()> {
    let mut text = String::new();
    for c in comment {
        writeln!(text, "# {c}")?;
    }
    writeln!(text, "{DATASET_TAG}{}", ds.fingerprint())?;
    for &i in indices {
        writeln!(text, "{i}\t{}", ds.name(i))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// Reads the exclusion list at `path` for `ds`: sorted, distinct indices below `ds.len()`.
/// Errors name the file and line.
pub fn read(path: &Path, ds: &dyn Dataset) -> Result<Vec<usize>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading exclusion list {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{}, line {}", path.display(), n + 1);
        let line = line.trim();
        if let Some(fp) = line.strip_prefix(DATASET_TAG.trim_end()) {
            let want = ds.fingerprint().to_string();
            ensure!(
                fp.trim() == want,
                "{}: the list is for dataset `{}`, but {} is `{want}`",
                at(),
                fp.trim(),
                ds.spec()
            );
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let field = line.split('\t').next().unwrap_or("").trim();
        let i: usize = field
            .parse()
            .with_context(|| format!("{}: `{field}` is not a sample index", at()))?;
        if i >= ds.len() {
            bail!(
                "{}: sample {i} is out of range ({} has {} samples)",
                at(),
                ds.spec(),
                ds.len()
            );
        }
        out.push(i);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `all` without the sorted `excluded` indices.
pub fn remove(all: &[usize], excluded: &[usize]) -> Vec<usize> {
    all.iter()
        .copied()
        .filter(|i| excluded.binary_search(i).is_err())
        .collect()
}
