//! Writing shard files so that a crash never leaves a store that looks valid but is not.
//!
//! A part is written to `part-IIII-of-NNNN.tvl.tmp` one whole block at a time (records, then the
//! block's crc32). [`ShardWriter::finish`] appends the footer, fsyncs the file, renames it to
//! `part-IIII-of-NNNN.tvl` and fsyncs the folder. Only renamed files count as present.
//!
//! [`ShardWriter::open`] with `resume` continues a temp file after a kill: it re-reads the
//! header (which must be the one this run would write), checks block after block and truncates
//! after the last complete block whose checksum holds; the writer then continues from the next
//! sample. Because batches never straddle blocks and seeds depend only on (run seed, epoch,
//! sample), the result is byte-identical to an uninterrupted run.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tinyvit_core::store::{
    block_checksum, FooterCrc, RecordLayout, ShardFooter, ShardHeader, ShardView, HEADER_LEN,
};

use super::manifest::Manifest;
use super::{epoch_dir, part_file_name, sync_dir};

/// What [`ShardWriter::open`] found.
pub enum Opened {
    /// The part is already closed and verified; nothing to write.
    Done(PartSummary),
    /// A writer positioned at its next sample.
    Writer(ShardWriter),
}

/// What a closed part holds.
#[derive(Clone, Debug)]
pub struct PartSummary {
    pub path: PathBuf,
    pub records: u64,
    pub missing: u64,
    pub bytes: u64,
}

/// Writes one (epoch, part) shard file, block by block.
pub struct ShardWriter {
    file: File,
    tmp: PathBuf,
    dest: PathBuf,
    header: ShardHeader,
    layout: RecordLayout,
    /// Records of the block being filled.
    block: Vec<u8>,
    /// Global index of the next sample to push.
    next: u64,
    acc: FooterCrc,
    missing: u64,
    /// Samples that were already on disk when the writer was opened (resumed).
    resumed: u64,
}

impl ShardWriter {
    /// Opens part `part` of `epoch` in store `dir` for writing. With `resume`, a closed part is
    /// verified and reported done, and a temp file is continued from its last complete block;
    /// without it, an existing part or temp file is an error (nothing is overwritten).
    pub fn open(
        dir: &Path,
        manifest: &Manifest,
        epoch: u32,
        part: u32,
        resume: bool,
    ) -> Result<Opened> {
        let layout = manifest.layout()?;
        let header = ShardHeader::new(
            layout,
            manifest.records_per_block,
            epoch,
            part,
            manifest.parts,
            manifest.dataset.len,
            manifest.store_key(),
        )
        .map_err(|e| anyhow::anyhow!("shard header for epoch {epoch} part {part}: {e}"))?;
        let edir = epoch_dir(dir, epoch);
        std::fs::create_dir_all(&edir).with_context(|| format!("creating {}", edir.display()))?;
        let dest = edir.join(part_file_name(part, manifest.parts));
        let tmp = dest.with_extension("tvl.tmp");
        if dest.exists() {
            if !resume {
                bail!(
                    "{} already exists; pass --resume to continue this store",
                    dest.display()
                );
            }
            let bytes =
                std::fs::read(&dest).with_context(|| format!("reading {}", dest.display()))?;
            let view = ShardView::open(&bytes)
                .and_then(|v| v.verify().map(|_| v))
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{}: closed part is damaged ({e}); delete it and run again with --resume",
                        dest.display()
                    )
                })?;
            if view.header() != &header {
                bail!(
                    "{}: closed part belongs to another run (header differs from this manifest)",
                    dest.display()
                );
            }
            return Ok(Opened::Done(PartSummary {
                path: dest,
                records: view.footer().record_count,
                missing: view.footer().missing_count,
                bytes: bytes.len() as u64,
            }));
        }
        let mut w = ShardWriter {
            file: OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&tmp)
                .with_context(|| format!("opening {}", tmp.display()))?,
            tmp,
            dest,
            header,
            layout,
            block: Vec::with_capacity(manifest.records_per_block as usize * layout.record_len()),
            next: header.first_sample,
            acc: FooterCrc::new(),
            missing: 0,
            resumed: 0,
        };
        let len = w.file.metadata().map(|m| m.len()).unwrap_or(0);
        if len > 0 && !resume {
            bail!(
                "{} exists (an interrupted run?); pass --resume to continue it",
                w.tmp.display()
            );
        }
        if len >= HEADER_LEN as u64 {
            w.recover()?;
        } else {
            w.file.set_len(0)?;
            w.file.seek(SeekFrom::Start(0))?;
            w.file
                .write_all(&header.encode())
                .with_context(|| format!("writing {}", w.tmp.display()))?;
        }
        Ok(Opened::Writer(w))
    }

    /// Re-reads a temp file: keeps every complete block whose checksum holds, truncates the rest.
    fn recover(&mut self) -> Result<()> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", self.tmp.display()))?;
        let found = ShardHeader::decode(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.tmp.display()))?;
        if found != self.header {
            bail!(
                "{}: temp file belongs to another run (its header differs from this manifest); \
                 delete it to start the part again",
                self.tmp.display()
            );
        }
        let mut keep = HEADER_LEN as u64;
        let mut b = 0;
        while let Some(span) = self.header.block(b) {
            match self.header.check_block(&bytes, &span) {
                Ok(crc) => {
                    self.acc.push(crc);
                    for s in span.first_sample..span.first_sample + span.records {
                        let o = self.header.record_offset(s).unwrap_or(0) as usize;
                        let rec = &bytes[o..o + self.layout.record_len()];
                        if self
                            .layout
                            .view(rec)
                            .map(|r| r.is_missing())
                            .unwrap_or(false)
                        {
                            self.missing += 1;
                        }
                    }
                    self.next = span.first_sample + span.records;
                    keep = span.offset + span.len + 4;
                    b += 1;
                }
                Err(_) => break,
            }
        }
        self.resumed = self.next - self.header.first_sample;
        self.file
            .set_len(keep)
            .with_context(|| format!("truncating {}", self.tmp.display()))?;
        self.file.seek(SeekFrom::Start(keep))?;
        Ok(())
    }

    /// The header this writer writes.
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }

    /// Global index of the next sample to push.
    pub fn next_sample(&self) -> u64 {
        self.next
    }

    /// One past the last sample of this part.
    pub fn end_sample(&self) -> u64 {
        self.header.end_sample()
    }

    /// Samples found complete on disk when the writer was opened.
    pub fn resumed(&self) -> u64 {
        self.resumed
    }

    /// Where the temp file lives.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Appends the next sample's record (`indices`, `probs`: K entries, top-K order).
    pub fn push(&mut self, seed: u32, indices: &[u32], probs: &[f32]) -> Result<()> {
        let s = self.start_record()?;
        let n = self.block.len();
        self.block.resize(n + self.layout.record_len(), 0);
        self.layout
            .encode(seed, indices, probs, &mut self.block[n..])
            .map_err(|e| anyhow::anyhow!("{}: sample {s}: {e}", self.tmp.display()))?;
        self.end_record()
    }

    /// Appends the next sample as a missing record (its image could not be read).
    pub fn push_missing(&mut self, seed: u32) -> Result<()> {
        self.start_record()?;
        let n = self.block.len();
        self.block.resize(n + self.layout.record_len(), 0);
        self.layout
            .encode_missing(seed, &mut self.block[n..])
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.tmp.display()))?;
        self.missing += 1;
        self.end_record()
    }

    fn start_record(&self) -> Result<u64> {
        if self.next >= self.header.end_sample() {
            bail!(
                "{}: part is full ({} samples)",
                self.tmp.display(),
                self.header.sample_count
            );
        }
        Ok(self.next)
    }

    fn end_record(&mut self) -> Result<()> {
        self.next += 1;
        let in_block =
            (self.next - self.header.first_sample) % u64::from(self.header.records_per_block);
        if in_block == 0 || self.next == self.header.end_sample() {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<()> {
        let records = (self.block.len() / self.layout.record_len()) as u64;
        let first = self.next - records;
        let crc = block_checksum(self.header.store_key, self.header.epoch, first, &self.block);
        self.block.extend_from_slice(&crc.to_le_bytes());
        self.file
            .write_all(&self.block)
            .with_context(|| format!("writing {}", self.tmp.display()))?;
        self.acc.push(crc);
        self.block.clear();
        Ok(())
    }

    /// Closes the part: footer, fsync, rename, fsync of the folder.
    pub fn finish(mut self) -> Result<PartSummary> {
        if self.next != self.header.end_sample() {
            bail!(
                "{}: cannot close a part at sample {} of {}..{}",
                self.tmp.display(),
                self.next,
                self.header.first_sample,
                self.header.end_sample()
            );
        }
        let footer = ShardFooter {
            record_count: self.header.sample_count,
            missing_count: self.missing,
            blocks_crc: self.acc.value(),
        };
        self.file
            .write_all(&footer.encode())
            .and_then(|_| self.file.sync_all())
            .with_context(|| format!("closing {}", self.tmp.display()))?;
        let bytes = self.file.metadata()?.len();
        if bytes != self.header.file_len() {
            bail!(
                "{}: closed at {bytes} bytes, the header implies {}",
                self.tmp.display(),
                self.header.file_len()
            );
        }
        std::fs::rename(&self.tmp, &self.dest).with_context(|| {
            format!("renaming {} to {}", self.tmp.display(), self.dest.display())
        })?;
        sync_dir(self.dest.parent().unwrap_or(Path::new(".")))?;
        Ok(PartSummary {
            path: self.dest,
            records: self.header.sample_count,
            missing: self.missing,
            bytes,
        })
    }
}
