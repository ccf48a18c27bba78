//! `tinyvit logits verify|stats|show`: inspecting a logit store.
//!
//! - `verify DIR`: every block checksum, every footer, coverage of every epoch and part; prints
//!   each fault with its file, epoch and sample range; exits non-zero on any fault.
//! - `stats DIR`: sizes, K, classes, epochs, missing records, mean top-1 probability and mean
//!   probability mass kept by the top K.
//! - `show DIR --epoch E --index I [--data SPEC --image-out PNG]`: one record, and the replayed
//!   view the teacher saw.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::store::LogitStore;

/// `tinyvit logits` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Args {
    /// Check every checksum and that every epoch and sample is present; non-zero exit on a fault.
    Verify { dir: PathBuf },
    /// Sizes, K, classes, epochs, mean top-1 probability, mass kept by top-K.
    Stats {
        dir: PathBuf,
        /// Also print the figures as one JSON line (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Print one record; with --data and --image-out, also write the view the teacher saw.
    Show {
        dir: PathBuf,
        #[arg(long)]
        epoch: u32,
        #[arg(long)]
        index: u64,
        /// The data SPEC the store was written from (checked against its fingerprint).
        #[arg(long)]
        data: Option<String>,
        /// PNG file for the replayed view (needs --data).
        #[arg(long)]
        image_out: Option<PathBuf>,
        /// Class names: a file with one name a line, or `fashion-mnist` (default: the names
        /// `--data` carries, e.g. a folder dataset's sub-folders).
        #[arg(long)]
        class_names: Option<PathBuf>,
    },
}

/// Runs a `tinyvit logits` subcommand.
pub fn main(a: Args) -> Result<()> {
    match a {
        Args::Verify { dir } => verify(&dir),
        Args::Stats { dir, json } => stats(&dir, json),
        Args::Show {
            dir,
            epoch,
            index,
            data,
            image_out,
            class_names,
        } => show(
            &dir,
            epoch,
            index,
            data.as_deref(),
            image_out.as_deref(),
            class_names.as_deref(),
        ),
    }
}

/// Every part of every epoch checked, every damaged place printed; exit 1 when any.
fn verify(dir: &std::path::Path) -> Result<()> {
    let faults = crate::store::verify_dir(dir)?;
    if faults.is_empty() {
        let store = LogitStore::open(dir)?;
        let m = store.manifest();
        println!(
            "OK: {} epochs x {} samples in {} part(s), every block checksum holds",
            store.epochs().len(),
            store.len(),
            m.parts
        );
        return Ok(());
    }
    for f in &faults {
        println!("FAULT: {f}");
    }
    bail!("{}: {} fault(s)", dir.display(), faults.len())
}

fn stats(dir: &std::path::Path, json: bool) -> Result<()> {
    let store = LogitStore::open(dir)?;
    let m = store.manifest();
    let layout = store.layout();
    let epochs = store.epochs();
    let mut bytes = 0u64;
    let mut files = 0usize;
    let (mut n, mut missing, mut top1, mut mass) = (0u64, 0u64, 0f64, 0f64);
    for &e in &epochs {
        for shard in store.shards(e)? {
            bytes += shard.header().file_len();
            files += 1;
        }
        for i in 0..store.len() {
            let r = store.record(e, i)?;
            if r.is_missing() {
                missing += 1;
                continue;
            }
            n += 1;
            top1 += f64::from(r.prob(0));
            mass += (0..r.topk()).map(|k| f64::from(r.prob(k))).sum::<f64>();
        }
    }
    let records = store.len() * epochs.len() as u64;
    let bare = records * layout.record_len() as u64;
    println!("store:        {}", dir.display());
    println!(
        "teacher:      {} {} (sha256 {}), input {}x{}x{}",
        m.teacher.kind,
        m.teacher.file,
        m.teacher.sha256,
        m.teacher.channels,
        m.teacher.input_size,
        m.teacher.input_size
    );
    println!("dataset:      {} ({})", m.data_spec, m.dataset);
    println!(
        "augmentation: preset {}, AUG_VERSION {}, run seed {}",
        m.aug_preset, m.aug_version, m.run_seed
    );
    println!(
        "records:      top-{} of {} classes, {:?} values, {} bytes/sample, {} per block",
        m.topk,
        m.num_classes,
        m.values,
        layout.record_len(),
        m.records_per_block
    );
    println!(
        "epochs:       {} of {} present {:?}",
        epochs.len(),
        m.epochs,
        epochs
    );
    println!(
        "size:         {bytes} bytes in {files} file(s); headers+checksums+footers {} bytes ({:.4}%)",
        bytes.saturating_sub(bare),
        if bare > 0 { 100.0 * (bytes - bare) as f64 / bare as f64 } else { 0.0 }
    );
    println!("missing:      {missing} of {records} records");
    if n > 0 {
        println!("mean top-1:   {:.4}", top1 / n as f64);
        println!("mean top-{} mass kept: {:.4}", m.topk, mass / n as f64);
    }
    if json {
        let mean = |v: f64| (n > 0).then(|| v / n as f64);
        let line = serde_json::json!({
            "samples": store.len(),
            "epochs": epochs.len(),
            "topk": m.topk,
            "num_classes": m.num_classes,
            "bytes_per_sample": layout.record_len(),
            "total_bytes": bytes,
            "overhead_bytes": bytes.saturating_sub(bare),
            "missing": missing,
            "mean_top1_prob": mean(top1),
            "mean_mass_kept": mean(mass),
        });
        println!("{line}");
    }
    Ok(())
}

fn show(
    dir: &std::path::Path,
    epoch: u32,
    index: u64,
    data: Option<&str>,
    image_out: Option<&std::path::Path>,
    class_names: Option<&std::path::Path>,
) -> Result<()> {
    let store = LogitStore::open(dir)?;
    let r = store.record(epoch, index)?;
    if image_out.is_some() && data.is_none() {
        bail!("--image-out needs --data SPEC (the dataset the store was written from)");
    }
    let ds = data.map(crate::data::open).transpose()?;
    if let Some(ds) = &ds {
        store.manifest().check_dataset(&ds.fingerprint())?;
    }
    // Names from --class-names, else from the data; indices alone when neither names them.
    let names: Option<Vec<String>> = match (class_names, &ds) {
        (Some(f), Some(ds)) => Some(
            crate::analyze::ClassNames::resolve(
                Some(f),
                ds.as_ref(),
                store.manifest().num_classes as usize,
            )?
            .0,
        ),
        (Some(f), None) if f == std::path::Path::new("fashion-mnist") && !f.exists() => Some(
            crate::data::FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
        (Some(f), None) => Some(
            crate::contract::read_class_names(f)
                .with_context(|| format!("--class-names {}", f.display()))?,
        ),
        (None, Some(ds)) => ds.class_names(),
        (None, None) => None,
    };
    println!("epoch {epoch}, sample {index}: seed {:#010x}", r.seed());
    if r.is_missing() {
        println!("  missing (the image could not be read when the teacher ran)");
    } else {
        for k in 0..r.topk() {
            let c = r.index(k);
            let name = names
                .as_ref()
                .and_then(|n| n.get(c as usize))
                .map(|n| format!(" {n}"))
                .unwrap_or_default();
            println!(
                "  top-{:<3} class {:>6}{name}  p = {:.6}",
                k + 1,
                c,
                r.prob(k)
            );
        }
        let kept: f32 = (0..r.topk()).map(|k| r.prob(k)).sum();
        println!("  mass kept {kept:.6}");
    }
    if let Some(ds) = ds {
        println!("  source: {}", ds.name(index as usize));
        if let Some(path) = image_out {
            let m = store.manifest();
            let img = crate::save_logits::replay_view(
                &*ds,
                &m.aug,
                m.teacher.channels,
                index as usize,
                r.seed(),
            )?;
            let color = if img.channels == 3 {
                image::ExtendedColorType::Rgb8
            } else {
                image::ExtendedColorType::L8
            };
            image::save_buffer(path, &img.data, img.width, img.height, color)
                .with_context(|| format!("writing {}", path.display()))?;
            println!("  view the teacher saw: {}", path.display());
        }
    }
    Ok(())
}
