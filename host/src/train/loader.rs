//! The training data path: samples built on worker threads, batched in order, with a bounded
//! number of batches in flight so decoding and augmentation overlap the compute without
//! unbounded memory.
//!
//! A [`Source`] turns `(epoch, sample index)` into a normalised `f32` image (CHW) plus whatever
//! target the run uses (label, stored top-K). The [`Loader`] asks for batch `b` of an epoch's
//! order; batch contents depend only on (source, epoch, order), never on the worker count or
//! timing, so a resumed run sees the same batches.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use anyhow::{anyhow, Result};
use tch::Tensor;
use tinyvit_core::aug;

/// What one sample contributes besides its image.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleMeta {
    /// Ground-truth class, when the dataset has labels.
    pub label: Option<u32>,
    /// Stored teacher top-K (class indices, probabilities), for `--logits` runs.
    pub topk: Option<(Vec<i64>, Vec<f32>)>,
    /// With pair mixing: the partner's label and this sample's own weight `lam` (the
    /// image is already mixed); an unpaired sample has its own label and `lam = 1`.
    pub mix: Option<(Option<u32>, f32)>,
}

/// Produces training or evaluation samples.
pub trait Source: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether the source is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `(channels, height, width)` of every produced image.
    fn shape(&self) -> (usize, usize, usize);
    /// Writes sample `index` of `epoch` (normalised, CHW) into `out` and returns its targets.
    fn sample(&self, epoch: u64, index: usize, out: &mut [f32]) -> Result<SampleMeta>;
}

/// A batch on the CPU.
#[derive(Debug)]
pub struct Batch {
    /// Position of this batch in the epoch.
    pub index: u64,
    /// `[B, C, H, W]` f32.
    pub images: Tensor,
    /// `[B]` int64, when every sample has a label.
    pub labels: Option<Tensor>,
    /// `([B, K] int64, [B, K] f32)`, when every sample has stored top-K.
    pub topk: Option<(Tensor, Tensor)>,
    /// `([B] int64 partner labels, [B] f32 own weights)`, when every sample was mixed with a
    /// labelled partner ([`SampleMeta::mix`]).
    pub mix: Option<(Tensor, Tensor)>,
}

struct Raw {
    images: Vec<f32>,
    metas: Vec<SampleMeta>,
}

fn build(source: &dyn Source, epoch: u64, ids: &[usize]) -> Result<Raw> {
    let (c, h, w) = source.shape();
    let per = c * h * w;
    let mut images = vec![0f32; per * ids.len()];
    let mut metas = Vec::with_capacity(ids.len());
    for (k, &i) in ids.iter().enumerate() {
        metas.push(source.sample(epoch, i, &mut images[k * per..(k + 1) * per])?);
    }
    Ok(Raw { images, metas })
}

fn to_batch(index: u64, raw: Raw, shape: (usize, usize, usize)) -> Batch {
    let b = raw.metas.len() as i64;
    let (c, h, w) = (shape.0 as i64, shape.1 as i64, shape.2 as i64);
    let images = Tensor::from_slice(&raw.images).view([b, c, h, w]);
    let labels = raw
        .metas
        .iter()
        .map(|m| m.label.map(|l| l as i64))
        .collect::<Option<Vec<i64>>>()
        .map(|v| Tensor::from_slice(&v));
    let topk = if raw.metas.iter().all(|m| m.topk.is_some()) && !raw.metas.is_empty() {
        let k = raw.metas[0].topk.as_ref().map(|t| t.0.len()).unwrap_or(0) as i64;
        let mut idx = Vec::with_capacity((b * k) as usize);
        let mut p = Vec::with_capacity((b * k) as usize);
        for m in &raw.metas {
            let (i, v) = m.topk.as_ref().expect("checked");
            idx.extend_from_slice(i);
            p.extend_from_slice(v);
        }
        Some((
            Tensor::from_slice(&idx).view([b, k]),
            Tensor::from_slice(&p).view([b, k]),
        ))
    } else {
        None
    };
    let mix = raw
        .metas
        .iter()
        .map(|m| m.mix.and_then(|(l, lam)| l.map(|l| (l as i64, lam))))
        .collect::<Option<Vec<(i64, f32)>>>()
        .filter(|v| !v.is_empty())
        .map(|v| {
            let (l, lam): (Vec<i64>, Vec<f32>) = v.into_iter().unzip();
            (Tensor::from_slice(&l), Tensor::from_slice(&lam))
        });
    Batch {
        index,
        images,
        labels,
        topk,
        mix,
    }
}

/// Iterates over batches `start..` of one epoch, `batch_size` samples each taken in `order`;
/// the last partial batch is dropped when `drop_last` (training, as the reference), kept
/// otherwise (evaluation).
pub struct Loader {
    rx: mpsc::Receiver<(u64, Result<Batch>)>,
    jobs: Option<mpsc::SyncSender<u64>>,
    pending: BTreeMap<u64, Result<Batch>>,
    next: u64,
    sent: u64,
    end: u64,
    prefetch: u64,
    workers: Vec<thread::JoinHandle<()>>,
}

impl Loader {
    /// Starts `workers` threads over `order` (sample indices) of `epoch`.
    pub fn new(
        source: Arc<dyn Source>,
        epoch: u64,
        order: Arc<Vec<usize>>,
        batch_size: usize,
        drop_last: bool,
        start: u64,
        workers: usize,
        prefetch: usize,
    ) -> Self {
        Self::new_pinned(
            source, epoch, order, batch_size, drop_last, start, workers, prefetch, false,
        )
    }

    /// As [`Loader::new`]; with `pin` the workers put the images in page-locked memory so the
    /// copy to a CUDA device can run asynchronously (`to_device_(.., non_blocking = true, ..)`).
    pub fn new_pinned(
        source: Arc<dyn Source>,
        epoch: u64,
        order: Arc<Vec<usize>>,
        batch_size: usize,
        drop_last: bool,
        start: u64,
        workers: usize,
        prefetch: usize,
        pin: bool,
    ) -> Self {
        let n = order.len();
        let batches = if drop_last {
            n / batch_size
        } else {
            n.div_ceil(batch_size)
        } as u64;
        let prefetch = prefetch.max(1) as u64 + workers as u64;
        let shape = source.shape();
        let (job_tx, job_rx) = mpsc::sync_channel::<u64>(prefetch as usize);
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (tx, rx) = mpsc::channel();
        let handles = (0..workers.max(1))
            .map(|_| {
                let job_rx = Arc::clone(&job_rx);
                let tx = tx.clone();
                let source = Arc::clone(&source);
                let order = Arc::clone(&order);
                thread::spawn(move || loop {
                    let job = match job_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(b) = job else { return };
                    let lo = b as usize * batch_size;
                    let hi = (lo + batch_size).min(order.len());
                    // The batch tensors are made here, off the compute thread.
                    let batch = build(source.as_ref(), epoch, &order[lo..hi]).map(|r| {
                        let mut batch = to_batch(b, r, shape);
                        if pin {
                            if let Ok(p) = batch.images.f_internal_pin_memory(tch::Device::Cuda(0))
                            {
                                batch.images = p;
                            }
                        }
                        batch
                    });
                    if tx.send((b, batch)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        let mut l = Loader {
            rx,
            jobs: Some(job_tx),
            pending: BTreeMap::new(),
            next: start,
            sent: start,
            end: batches,
            prefetch,
            workers: handles,
        };
        l.fill();
        l
    }

    fn fill(&mut self) {
        while self.sent < self.end && self.sent < self.next + self.prefetch {
            if let Some(j) = &self.jobs {
                if j.send(self.sent).is_err() {
                    return;
                }
            }
            self.sent += 1;
        }
    }

    /// Number of batches in the epoch.
    pub fn batches(&self) -> u64 {
        self.end
    }
}

impl Iterator for Loader {
    type Item = Result<Batch>;
    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        let want = self.next;
        let raw = loop {
            if let Some(r) = self.pending.remove(&want) {
                break r;
            }
            match self.rx.recv() {
                Ok((b, r)) => {
                    self.pending.insert(b, r);
                }
                Err(_) => return Some(Err(anyhow!("data workers stopped"))),
            }
        };
        self.next += 1;
        self.fill();
        Some(raw)
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.jobs = None;
        // Drain so workers blocked on send see the closed channel and exit.
        while self.rx.try_recv().is_ok() {}
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// The epoch's sample order: position `p` holds `aug::epoch_permutation(seed, epoch, n, p)`
/// (the core's permutation, which the pair mixing also uses: positions `2j` and `2j + 1` are
/// partners), or the identity when `shuffle` is false.
pub fn epoch_order(n: usize, seed: u64, epoch: u64, shuffle: bool) -> Result<Vec<usize>> {
    if !shuffle || n == 0 {
        return Ok((0..n).collect());
    }
    let e = u32::try_from(epoch).map_err(|_| anyhow!("epoch {epoch} beyond the seed codec"))?;
    (0..n as u64)
        .map(|p| {
            aug::epoch_permutation(seed, e, n as u64, p)
                .map(|i| i as usize)
                .map_err(|err| anyhow!("epoch order, position {p}: {err}"))
        })
        .collect()
}

/// Deterministic synthetic data for throughput measurements (`--synthetic N`): pseudo-random
/// pixels per (epoch, index), label `index % classes`, and a top-K whose first class is the
/// label.
#[derive(Debug)]
pub struct Synthetic {
    pub n: usize,
    pub shape: (usize, usize, usize),
    pub classes: usize,
    pub k: usize,
}

impl Source for Synthetic {
    fn len(&self) -> usize {
        self.n
    }
    fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }
    fn sample(&self, epoch: u64, index: usize, out: &mut [f32]) -> Result<SampleMeta> {
        let mut x = (epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index as u64) | 1;
        for o in out.iter_mut() {
            // xorshift64
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *o = ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        }
        let label = (index % self.classes) as u32;
        let k = self.k.min(self.classes);
        let idx: Vec<i64> = (0..k)
            .map(|j| ((label as usize + j) % self.classes) as i64)
            .collect();
        let probs: Vec<f32> = (0..k).map(|j| 0.5 / (1 << j) as f32).collect();
        Ok(SampleMeta {
            mix: None,
            label: Some(label),
            topk: (k > 0).then_some((idx, probs)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_in_order_whatever_the_workers() {
        let src: Arc<dyn Source> = Arc::new(Synthetic {
            n: 50,
            shape: (1, 4, 4),
            classes: 10,
            k: 3,
        });
        let order = Arc::new(epoch_order(50, 7, 2, true).unwrap());
        let collect = |workers| {
            Loader::new(src.clone(), 2, order.clone(), 8, true, 1, workers, 2)
                .map(|b| b.unwrap())
                .collect::<Vec<_>>()
        };
        let a = collect(1);
        let b = collect(3);
        assert_eq!(a.len(), 5); // batches 1..6 of 6 full batches
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.index, y.index);
            assert!(x.images.equal(&y.images));
            assert!(x.labels.as_ref().unwrap().equal(y.labels.as_ref().unwrap()));
        }
        assert_eq!(a[0].topk.as_ref().unwrap().0.size(), [8, 3]);
        // evaluation keeps the last partial batch
        let all: Vec<_> = Loader::new(
            src.clone(),
            0,
            Arc::new(epoch_order(50, 0, 0, false).unwrap()),
            8,
            false,
            0,
            2,
            2,
        )
        .map(|b| b.unwrap())
        .collect();
        assert_eq!(all.len(), 7);
        assert_eq!(all[6].images.size()[0], 2);
    }

    #[test]
    fn order_is_a_seeded_permutation() {
        let a = epoch_order(100, 1, 0, true).unwrap();
        let mut s = a.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_eq!(a, epoch_order(100, 1, 0, true).unwrap());
        assert_ne!(a, epoch_order(100, 1, 1, true).unwrap());
        assert_eq!(epoch_order(5, 1, 0, false).unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(epoch_order(0, 1, 0, true).unwrap().is_empty());
    }

    /// The loader's order is the core's permutation (the one the pairs and the device use):
    /// neighbours at positions 2j, 2j + 1 are each other's mixing partners.
    #[test]
    fn order_is_the_core_permutation() {
        for (n, seed, epoch) in [(1usize, 0u64, 0u64), (7, 5, 3), (64, 11, 0), (1000, 2, 9)] {
            let o = epoch_order(n, seed, epoch, true).unwrap();
            for (p, &i) in o.iter().enumerate() {
                let want = aug::epoch_permutation(seed, epoch as u32, n as u64, p as u64);
                assert_eq!(i as u64, want.unwrap());
                let partner = aug::pair_partner(seed, epoch as u32, n as u64, i as u64).unwrap();
                assert_eq!(partner.map(|k| k as usize), o.get(p ^ 1).copied());
            }
        }
    }
}
