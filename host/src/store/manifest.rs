//! `manifest.json`: what the records of a logit store mean.
//!
//! The shard bytes are specified and parsed in [`tinyvit_core::store`]; the manifest is a small
//! JSON file (readable with `cat`, diffable, parsed with serde_json on the host only). Every
//! writer of a store, one per `--shard I/N` part on any machine, builds the same manifest from
//! its arguments and either creates it (temp file, fsync, rename) or checks that the one on
//! disk is identical; so parts of one store always agree on what their records mean. The
//! manifest holds no timestamps or host names for that reason.
//!
//! The store key written into every shard header is the first 8 bytes (little-endian) of the
//! SHA-256 of the manifest's canonical JSON with `parts` and `epochs` set to 0
//! ([`Manifest::store_key`]): a shard from another store or another run fails to open, while a
//! part of a sharded store has exactly the blocks (checksums included) of the same samples in an
//! unsharded store, and the epochs of a store extended by `save-logits --resume --epochs N`
//! are the bytes of a store written with `N` epochs at once.
//!
//! Key versions (`key_version`): 2 leaves the epoch count out of the key. Version 1, the
//! manifests of earlier builds (they have no `key_version` field, and this build writes none
//! for them), kept it in: such a store still opens, reads, verifies and resumes, but cannot be
//! extended by more epochs (its shards' keys would change); the error says so.
//!
//! ```json
//! {
//!   "format_version": 2,          shard layout version (tinyvit_core::store::FORMAT_VERSION)
//!   "key_version": 2,             what the store key covers (KEY_VERSION; see above)
//!   "aug_version": 1,             tinyvit_core::aug::AUG_VERSION the seeds replay with
//!   "aug_preset": "light",        preset name the augmentation started from
//!   "aug": { ... },               the full AugConfig after overrides (size, mean, std, ...)
//!   "run_seed": 0,                seed of sample_seed(run_seed, epoch, index)
//!   "topk": 10, "num_classes": 10, "values": "f16",
//!   "records_per_block": 1024,
//!   "epochs": 3,                  epochs planned; those present are the epochs whose parts are
//!                                 all closed (LogitStore::epochs). Only an extension
//!                                 (`--resume` with more `--epochs`) rewrites it, to the larger count
//!   "parts": 1, "batch_size": 256,
//!   "teacher": { "kind": "torchscript", "file": "teacher.pt", "sha256": "...",
//!                "input_size": 32, "channels": 1, "mean": [..], "std": [..] },
//!   "dataset": { "spec": "fashion-mnist", "len": 60000, "sha256": "..." }
//! }
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tinyvit_core::aug::AugConfig;
use tinyvit_core::store::{RecordLayout, ValueEncoding, FORMAT_VERSION};

use crate::data::Fingerprint;

/// File name of the manifest inside a store folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// The store key version this build writes: the key leaves `parts` and `epochs` out.
pub const KEY_VERSION: u32 = 2;

/// The key version of a manifest without the field: earlier builds' key, `epochs` included.
pub const LEGACY_KEY_VERSION: u32 = 1;

fn legacy_key_version() -> u32 {
    LEGACY_KEY_VERSION
}

fn is_legacy_key(v: &u32) -> bool {
    *v == LEGACY_KEY_VERSION
}

/// Who produced the probabilities and what input it expects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TeacherInfo {
    /// `torchscript`, or another [`crate::teacher::Teacher`] kind.
    pub kind: String,
    /// File name of the teacher (informational; identity is the hash).
    pub file: String,
    /// SHA-256 of the teacher file, as `sha256sum` prints it.
    pub sha256: String,
    /// Input side in pixels.
    pub input_size: u32,
    /// Input channels (1 grey, 3 RGB).
    pub channels: u32,
    /// Normalisation mean per channel, 0..1 scale.
    pub mean: [f32; 3],
    /// Normalisation standard deviation per channel, 0..1 scale.
    pub std: [f32; 3],
}

/// What the records of a store mean (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u16,
    /// What the store key covers ([`KEY_VERSION`]); absent (version 1) in earlier builds'
    /// manifests, and then not written, so that their bytes and key stay what they were.
    #[serde(default = "legacy_key_version", skip_serializing_if = "is_legacy_key")]
    pub key_version: u32,
    pub aug_version: u32,
    pub aug_preset: String,
    pub aug: AugConfig,
    pub run_seed: u64,
    pub topk: u16,
    pub num_classes: u32,
    pub values: ValueEncoding,
    pub records_per_block: u32,
    pub epochs: u32,
    pub parts: u32,
    pub batch_size: u32,
    pub teacher: TeacherInfo,
    pub dataset: Fingerprint,
    /// The data SPEC the store was written from (informational; identity is the fingerprint).
    pub data_spec: String,
}

impl Manifest {
    /// The record layout the manifest implies.
    pub fn layout(&self) -> Result<RecordLayout> {
        RecordLayout::new(self.topk, self.num_classes, self.values)
            .map_err(|e| anyhow::anyhow!("manifest: {e}"))
    }

    /// The canonical JSON bytes (pretty, fields in declaration order, trailing newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// The key that ties shard files to this manifest (see the module doc).
    pub fn store_key(&self) -> u64 {
        let unsharded = Manifest {
            parts: 0,
            epochs: if self.key_version >= KEY_VERSION {
                0
            } else {
                self.epochs
            },
            ..self.clone()
        };
        let d = Sha256::digest(unsharded.to_json());
        let mut k = [0u8; 8];
        k.copy_from_slice(&d[..8]);
        u64::from_le_bytes(k)
    }

    /// Reads and checks `DIR/manifest.json`: JSON shape, format and augmentation versions,
    /// record layout.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).with_context(|| {
            format!(
                "{}: cannot read the store manifest (is this a logit store?)",
                path.display()
            )
        })?;
        let m: Manifest = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a valid store manifest", path.display()))?;
        if m.format_version != FORMAT_VERSION {
            bail!(
                "{}: store format version {}, this build reads version {FORMAT_VERSION} only \
                 (version 2 rounds 8-bit values ties to even, as tinyvit_core::softlabel does); \
                 write the store again with this build's `tinyvit save-logits`",
                path.display(),
                m.format_version
            );
        }
        if m.aug_version != tinyvit_core::aug::AUG_VERSION {
            bail!(
                "{}: store written with AUG_VERSION {}, this build replays AUG_VERSION {}: \
                 its seeds would not rebuild the images the teacher saw",
                path.display(),
                m.aug_version,
                tinyvit_core::aug::AUG_VERSION
            );
        }
        m.validate().with_context(|| path.display().to_string())?;
        Ok(m)
    }

    /// Checks every field a shard header is built from (record layout, records per block,
    /// parts, epochs, the size of every part), so that a store is refused before anything of
    /// it is written, not after its manifest is on disk.
    pub fn validate(&self) -> Result<()> {
        let layout = self.layout()?;
        if self.key_version != KEY_VERSION && self.key_version != LEGACY_KEY_VERSION {
            bail!(
                "store key version {}, this build knows versions {LEGACY_KEY_VERSION} and \
                 {KEY_VERSION}",
                self.key_version
            );
        }
        if self.parts == 0 || self.epochs == 0 {
            bail!("`parts` and `epochs` must be positive");
        }
        if self.records_per_block == 0
            || self.records_per_block > tinyvit_core::store::MAX_RECORDS_PER_BLOCK
        {
            bail!(
                "records per block (--block-records) {} out of range 1..={}",
                self.records_per_block,
                tinyvit_core::store::MAX_RECORDS_PER_BLOCK
            );
        }
        // Parts differ in size by at most one block: the first and the last bound them all.
        for part in [0, self.parts - 1] {
            tinyvit_core::store::ShardHeader::new(
                layout,
                self.records_per_block,
                0,
                part,
                self.parts,
                self.dataset.len,
                0,
            )
            .map_err(|e| anyhow::anyhow!("part {part} of {}: {e}", self.parts))?;
        }
        Ok(())
    }

    /// Writes `DIR/manifest.json` atomically (temp file, fsync, rename, fsync of the folder).
    pub fn write(&self, dir: &Path, part: u32) -> Result<()> {
        // Parts on other machines may write the same (identical) manifest at the same moment:
        // each uses its own temp name (one part is never written by two processes at once),
        // and the last rename wins with the same bytes. A name fixed per part, not per
        // process, means a killed writer's temp file is the one its resumed run replaces.
        super::write_atomic(
            &Self::temp_name(dir, part),
            &dir.join(MANIFEST_FILE),
            &self.to_json(),
        )
    }

    /// The temporary name part `part`'s writer gives the manifest.
    fn temp_name(dir: &Path, part: u32) -> PathBuf {
        dir.join(format!("{MANIFEST_FILE}.part-{part:04}.tmp"))
    }

    /// Checks that the store on disk means the same as `self`; names every field that differs
    /// with both values.
    pub fn check_same(&self, on_disk: &Manifest, dir: &Path) -> Result<()> {
        let a = serde_json::to_value(on_disk)?;
        let b = serde_json::to_value(self)?;
        let mut diffs = Vec::new();
        diff("", &a, &b, &mut diffs);
        if diffs.is_empty() {
            return Ok(());
        }
        bail!(
            "{}: the store was written with different settings:\n{}",
            dir.join(MANIFEST_FILE).display(),
            diffs.join("\n")
        )
    }

    /// Checks that the store was made for this dataset (count and hash).
    pub fn check_dataset(&self, fp: &Fingerprint) -> Result<()> {
        if &self.dataset != fp {
            bail!(
                "dataset mismatch: the store was written for {} ({}), the data given is {}",
                self.data_spec,
                self.dataset,
                fp
            );
        }
        Ok(())
    }
}

fn diff(path: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            for (k, va) in ma {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match mb.get(k) {
                    Some(vb) => diff(&p, va, vb, out),
                    None => out.push(format!("  {p}: store has {va}, now missing")),
                }
            }
            for (k, vb) in mb {
                if !ma.contains_key(k) {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    out.push(format!("  {p}: store lacks it, now {vb}"));
                }
            }
        }
        _ if a != b && path == "batch_size" => out.push(format!(
            "  batch_size: store has {a}, now {b}. --batch-size is pinned for a store: the \
             teacher runs batches of {a} that never straddle a block, so that a resumed or \
             extended store is byte for byte the store written in one go, and batched kernels \
             may round differently at another batch size; pass --batch-size {a}"
        )),
        _ if a != b => out.push(format!("  {path}: store has {a}, now {b}")),
        _ => {}
    }
}

/// Opens an existing store's manifest, or creates it, for a writer that builds `manifest` from
/// its arguments. An existing manifest must be identical (every differing field is named).
/// The manifest is validated first: a refused one leaves `dir` as it was. `part` is the part
/// this process writes: a temporary manifest that an earlier, killed writer of the same part
/// left behind is removed. ([`open_for_writing`] without extension.)
pub fn create_or_check(dir: &Path, manifest: &Manifest, part: u32) -> Result<()> {
    open_for_writing(dir, manifest, part, false).map(|_| ())
}

/// [`create_or_check`] for `save-logits`: with `resume`, a store of fewer epochs than
/// `manifest` asks for is extended (its manifest rewritten with the larger count, atomically;
/// the closed epochs stay as they are, since the store key leaves the epoch count out).
/// Returns the manifest to write the shards with: `manifest`, or the store's own when it was
/// written by an earlier build (key version 1, which it then keeps: see the module doc).
pub fn open_for_writing(
    dir: &Path,
    manifest: &Manifest,
    part: u32,
    resume: bool,
) -> Result<Manifest> {
    manifest
        .validate()
        .with_context(|| format!("store {}", dir.display()))?;
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    if !dir.join(MANIFEST_FILE).exists() {
        manifest.write(dir, part)?;
        return Ok(manifest.clone());
    }
    let on_disk = Manifest::load(dir)?;
    let (have, want) = (on_disk.epochs, manifest.epochs);
    let ours = Manifest {
        key_version: on_disk.key_version,
        epochs: have,
        ..manifest.clone()
    };
    ours.check_same(&on_disk, dir)?;
    if want != have {
        let path = dir.join(MANIFEST_FILE);
        ensure!(
            want > have,
            "{}: the store has {have} epochs, --epochs {want} asks for fewer (a store is never \
             cut): pass --epochs {have}",
            path.display()
        );
        ensure!(
            resume,
            "{}: the store has {have} epochs; pass --resume to extend it to {want}",
            path.display()
        );
        ensure!(
            on_disk.key_version >= KEY_VERSION,
            "{}: the store was written by an earlier build, whose store key includes the epoch \
             count (key version {}, no `key_version` field): it reads, verifies and resumes as \
             it is, but cannot be extended from {have} to {want} epochs; write it again with \
             this build's `tinyvit save-logits --epochs {want}`",
            path.display(),
            on_disk.key_version
        );
        let extended = Manifest {
            epochs: want,
            ..on_disk
        };
        extended.write(dir, part)?;
        eprintln!(
            "store {}: extended from {have} to {want} epochs",
            dir.display()
        );
        return Ok(extended);
    }
    let stale = Manifest::temp_name(dir, part);
    if stale.exists() {
        std::fs::remove_file(&stale).with_context(|| format!("removing {}", stale.display()))?;
    }
    Ok(on_disk)
}
