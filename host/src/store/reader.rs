//! Reading a logit store: every closed shard mapped into memory, O(1) random access, each block
//! checked against its crc32 the first time one of its records is read.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use anyhow::{bail, Context, Result};
use memmap2::Mmap;
use tinyvit_core::store::{part_of, BlockSpan, RecordLayout, RecordView, ShardHeader, ShardView};

use super::manifest::Manifest;
use super::{epoch_dir, part_file_name};

const UNCHECKED: u8 = 0;
const GOOD: u8 = 1;

/// One closed, mapped shard file.
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    header: ShardHeader,
    /// Per block: [`UNCHECKED`] or [`GOOD`] (a bad block stays unchecked and fails each read).
    checked: Vec<AtomicU8>,
}

impl Shard {
    fn open(path: &Path, manifest: &Manifest, epoch: u32, part: u32) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: the map is read-only and the file is a closed part: writers only ever write
        // `.tmp` files and rename them into place, never modify a renamed file. A process that
        // truncates the file behind our back would break this (SIGBUS), as for any mmap reader.
        let map =
            unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
        let view = ShardView::open(&map).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let h = view.header();
        let expect = (
            manifest.layout()?,
            manifest.records_per_block,
            manifest.parts,
            manifest.dataset.len,
        );
        if (h.layout, h.records_per_block, h.parts, h.dataset_len) != expect
            || h.epoch != epoch
            || h.part != part
        {
            bail!(
                "{}: header (epoch {}, part {}/{}, K {}, {} classes, {} samples) does not match \
                 the manifest and file name",
                path.display(),
                h.epoch,
                h.part,
                h.parts,
                h.layout.topk(),
                h.layout.num_classes(),
                h.dataset_len
            );
        }
        if h.store_key != manifest.store_key() {
            bail!(
                "{}: shard belongs to another store (store key {:#018x}, manifest {:#018x})",
                path.display(),
                h.store_key,
                manifest.store_key()
            );
        }
        let blocks = h.block_count() as usize;
        let header = *h;
        Ok(Self {
            header,
            path: path.to_path_buf(),
            checked: (0..blocks).map(|_| AtomicU8::new(UNCHECKED)).collect(),
            map,
        })
    }

    /// A view of the mapped bytes (header, length and footer re-checked).
    pub fn view(&self) -> Result<ShardView<'_>, tinyvit_core::store::StoreError> {
        ShardView::open(&self.map)
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The header (checked on open).
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// Checks block `span` unless already checked; errors name the file, epoch and samples.
    fn ensure_block(&self, span: &BlockSpan) -> Result<()> {
        let slot = &self.checked[span.block as usize];
        if slot.load(Ordering::Acquire) == GOOD {
            return Ok(());
        }
        match self.header.check_block(&self.map, span) {
            Ok(_) => {
                slot.store(GOOD, Ordering::Release);
                Ok(())
            }
            Err(e) => bail!(
                "{}: epoch {}, samples {}..{}: {e}",
                self.path.display(),
                self.header.epoch,
                span.first_sample,
                span.first_sample + span.records
            ),
        }
    }
}

/// One epoch: its parts, all present, or what is missing.
enum Epoch {
    Complete(Vec<Shard>),
    Incomplete(String),
}

/// A logit store opened for reading.
pub struct LogitStore {
    dir: PathBuf,
    manifest: Manifest,
    layout: RecordLayout,
    epochs: Vec<Epoch>,
}

impl LogitStore {
    /// Opens the store in `dir`: reads the manifest (format and AUG_VERSION checked), maps every
    /// closed part and checks its header, size, footer and store key. A damaged closed part is
    /// an error; an epoch with parts missing (not yet written) is not, but reading it is.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        let layout = manifest.layout()?;
        let mut epochs = Vec::with_capacity(manifest.epochs as usize);
        for e in 0..manifest.epochs {
            let edir = epoch_dir(dir, e);
            let mut shards = Vec::new();
            let mut missing = Vec::new();
            for p in 0..manifest.parts {
                let path = edir.join(part_file_name(p, manifest.parts));
                if path.exists() {
                    shards.push(Shard::open(&path, &manifest, e, p)?);
                } else {
                    missing.push(path.display().to_string());
                }
            }
            epochs.push(if missing.is_empty() {
                Epoch::Complete(shards)
            } else {
                Epoch::Incomplete(format!(
                    "epoch {e} of {} is incomplete: missing {}",
                    dir.display(),
                    missing.join(", ")
                ))
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            layout,
            epochs,
        })
    }

    /// Opens the store and checks it was made for this dataset, K and class count.
    pub fn open_for(
        dir: &Path,
        dataset: &crate::data::Fingerprint,
        topk: Option<u16>,
        num_classes: Option<u32>,
    ) -> Result<Self> {
        let s = Self::open(dir)?;
        s.manifest
            .check_dataset(dataset)
            .with_context(|| format!("logit store {}", dir.display()))?;
        if let Some(k) = topk {
            if k != s.manifest.topk {
                bail!(
                    "logit store {}: holds top-{} records, top-{k} asked for",
                    dir.display(),
                    s.manifest.topk
                );
            }
        }
        if let Some(c) = num_classes {
            if c != s.manifest.num_classes {
                bail!(
                    "logit store {}: teacher has {} classes, the student {c}",
                    dir.display(),
                    s.manifest.num_classes
                );
            }
        }
        Ok(s)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What the records mean.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Record layout (K, classes, value encoding).
    pub fn layout(&self) -> RecordLayout {
        self.layout
    }

    /// Samples per epoch.
    pub fn len(&self) -> u64 {
        self.manifest.dataset.len
    }

    /// True when the dataset is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Epochs whose parts are all present, ascending.
    pub fn epochs(&self) -> Vec<u32> {
        (0..self.epochs.len() as u32)
            .filter(|&e| matches!(self.epochs[e as usize], Epoch::Complete(_)))
            .collect()
    }

    /// Why each absent epoch is absent.
    pub fn incomplete(&self) -> Vec<String> {
        self.epochs
            .iter()
            .filter_map(|e| match e {
                Epoch::Incomplete(why) => Some(why.clone()),
                Epoch::Complete(_) => None,
            })
            .collect()
    }

    /// The parts of a complete epoch.
    pub fn shards(&self, epoch: u32) -> Result<&[Shard]> {
        match self.epochs.get(epoch as usize) {
            Some(Epoch::Complete(s)) => Ok(s),
            Some(Epoch::Incomplete(why)) => bail!("{why}"),
            None => bail!(
                "logit store {} has epochs 0..{}, epoch {epoch} asked for",
                self.dir.display(),
                self.epochs.len()
            ),
        }
    }

    /// Record `(epoch, sample)`: O(1), zero-copy. The block holding it is checked against its
    /// checksum the first time any of its records is read.
    pub fn record(&self, epoch: u32, sample: u64) -> Result<RecordView<'_>> {
        let shards = self.shards(epoch)?;
        let m = &self.manifest;
        let p =
            part_of(sample, m.dataset.len, m.parts, m.records_per_block).with_context(|| {
                format!(
                    "logit store {}: sample {sample} of {} asked for",
                    self.dir.display(),
                    m.dataset.len
                )
            })?;
        let shard = &shards[p as usize];
        let h = &shard.header;
        let map_err = |e| {
            anyhow::anyhow!(
                "{}: epoch {epoch}, sample {sample}: {e}",
                shard.path.display()
            )
        };
        let span = h.block_of(sample).map_err(map_err)?;
        shard.ensure_block(&span)?;
        let o = h.record_offset(sample).map_err(map_err)? as usize;
        self.layout
            .view(&shard.map[o..o + self.layout.record_len()])
            .map_err(map_err)
    }

    /// Checks every block of every present epoch, the footers' checksums of checksums and
    /// missing counts; returns one line per fault (empty when the store is sound). Absent
    /// epochs are faults too.
    pub fn verify(&self) -> Vec<String> {
        let mut faults = self.incomplete();
        for e in self.epochs() {
            for shard in self.shards(e).unwrap_or(&[]) {
                shard.verify_into(&mut faults);
            }
        }
        faults
    }
}

impl Shard {
    /// Every damaged block (file, epoch, samples, block), then the footer's checksum of
    /// checksums and counts when every block holds.
    fn verify_into(&self, faults: &mut Vec<String>) {
        let h = self.header;
        let mut bad_block = false;
        for b in 0..h.block_count() {
            let Some(span) = h.block(b) else { break };
            if let Err(err) = self.ensure_block(&span) {
                faults.push(format!("{err:#}"));
                bad_block = true;
            }
        }
        if !bad_block {
            if let Err(err) = self.view().and_then(|v| v.verify()) {
                faults.push(format!(
                    "{}: epoch {}, samples {}..{}: {err}",
                    self.path.display(),
                    h.epoch,
                    h.first_sample,
                    h.end_sample()
                ));
            }
        }
    }
}

/// Checks a whole store and lists every damaged place: each part file of each epoch is opened
/// on its own (a missing or damaged one is a fault naming the file, epoch and its sample range;
/// the others are still checked), then every block of every part that opened. Only a manifest
/// that cannot be read is an error. Empty when the store is sound.
pub fn verify_dir(dir: &Path) -> Result<Vec<String>> {
    let manifest = Manifest::load(dir)?;
    let mut faults = Vec::new();
    for e in 0..manifest.epochs {
        let edir = epoch_dir(dir, e);
        for p in 0..manifest.parts {
            let path = edir.join(part_file_name(p, manifest.parts));
            let range = part_of_range(&manifest, p);
            if !path.exists() {
                let tmp = path.with_extension("tvl.tmp");
                faults.push(format!(
                    "{}: epoch {e}, samples {range}: part file missing, the epoch is incomplete{}",
                    path.display(),
                    if tmp.exists() {
                        " (its .tmp is there: an interrupted run, which --resume continues)"
                    } else {
                        ""
                    }
                ));
                continue;
            }
            match Shard::open(&path, &manifest, e, p) {
                Ok(shard) => shard.verify_into(&mut faults),
                Err(err) => faults.push(format!("{err:#} (epoch {e}, samples {range})")),
            }
        }
    }
    Ok(faults)
}

/// `a..b`, the samples part `p` holds by the manifest.
fn part_of_range(m: &Manifest, p: u32) -> String {
    match tinyvit_core::store::part_range(m.dataset.len, m.parts, p, m.records_per_block) {
        Some(r) => format!("{}..{}", r.start, r.end),
        None => "?".into(),
    }
}
