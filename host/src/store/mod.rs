//! The sparse logit store on disk: manifest, shard writer, mmap reader.
//!
//! The bytes of a shard file are specified in [`tinyvit_core::store`] (module doc, with the
//! box diagram); the manifest in [`manifest`]. This module adds the files and folders:
//!
//! ```text
//! DIR/manifest.json
//! DIR/epoch-EEEE/part-IIII-of-NNNN.tvl        closed part (footer written, renamed)
//! DIR/epoch-EEEE/part-IIII-of-NNNN.tvl.tmp    part being written (ignored by readers)
//! ```
//!
//! # API for readers (the trainer)
//!
//! ```text
//! let store = LogitStore::open_for(dir, &dataset.fingerprint(), Some(k), Some(classes))?;
//! for epoch in store.epochs() {                  // complete epochs only
//!     let r = store.record(epoch, sample)?;      // O(1), block crc checked on first touch
//!     if r.is_missing() { continue; }            // image was unreadable at teacher time
//!     let seed = r.seed();                       // aug::replay(&store.manifest().aug, seed, ..)
//!     let n = r.read_into(&mut idx, &mut p)?;    // K indices (u32) and probabilities (f32)
//! }
//! ```
//!
//! `LogitStore` is `Send + Sync`: share one behind an `Arc` across loader threads.
//!
//! # API for writers
//!
//! [`Manifest`] (build it, then [`Manifest::write`] or [`Manifest::check_same`]),
//! [`ShardWriter::open`] -> [`Opened`], [`ShardWriter::push`] / [`ShardWriter::push_missing`] in
//! sample order, [`ShardWriter::finish`].

pub mod manifest;
pub mod reader;
pub mod writer;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use manifest::{create_or_check, Manifest, TeacherInfo, MANIFEST_FILE};
pub use reader::{verify_dir, LogitStore, Shard};
pub use writer::{Opened, PartSummary, ShardWriter};

/// The folder of one epoch.
pub fn epoch_dir(dir: &Path, epoch: u32) -> PathBuf {
    dir.join(format!("epoch-{epoch:04}"))
}

/// The file name of a closed part.
pub fn part_file_name(part: u32, parts: u32) -> String {
    format!("part-{part:04}-of-{parts:04}.tvl")
}

/// Writes `bytes` to `tmp`, fsyncs it, renames it to `dest` and fsyncs the folder. When
/// writing or renaming fails (a full disk), `tmp` is removed: nothing half-written stays.
pub fn write_atomic(tmp: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    let written = File::create(tmp)
        .with_context(|| format!("creating {}", tmp.display()))
        .and_then(|mut f| {
            f.write_all(bytes)
                .and_then(|_| f.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))
        })
        .and_then(|_| {
            std::fs::rename(tmp, dest)
                .with_context(|| format!("renaming {} to {}", tmp.display(), dest.display()))
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    // A bare file name's parent is the empty path: the current folder.
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty());
    sync_dir(dir.unwrap_or(Path::new(".")))
}

/// [`write_atomic`] through the temporary name `DEST.tmp`.
pub fn write_file(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = dest.as_os_str().to_owned();
    tmp.push(".tmp");
    write_atomic(Path::new(&tmp), dest, bytes)
}

/// fsyncs a folder so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing folder {}", dir.display()))
}
