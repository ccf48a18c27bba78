//! The process group handle: rendezvous, bucketed gradient all-reduce, broadcast with an
//! identity check, barrier, and the diagnosis that names a lost rank.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use tch::{Device, Kind, Tensor};

use super::engine::{Group, Store};
use super::{Launch, BUCKET_BYTES};

/// How often each rank bumps its heartbeat counter.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long the diagnosis watches the heartbeats after a failure.
const WATCH: Duration = Duration::from_secs(3);

/// This process's membership of a multi-process run.
pub struct ProcessGroup {
    launch: Launch,
    timeout: Duration,
    // Declared before `store`: the group is torn down while the store is still there.
    group: Option<Group>,
    store: Option<Store>,
    /// A second client with a short timeout, for the diagnosis after a failure.
    watch: Option<Store>,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
    /// Collectives started by this rank, mirrored in the store as `seq/<rank>`.
    seq: std::cell::Cell<u64>,
    /// Set once a collective failed: the engine's handles are then leaked, not torn down, so
    /// that exiting never waits on a peer that is gone.
    failed: std::cell::Cell<bool>,
}

impl ProcessGroup {
    /// Meets the other ranks: connects to (rank 0: serves) the store, starts the heartbeat and
    /// builds the gloo group. Gives up after `timeout` when a rank does not show up.
    pub fn init(launch: &Launch, timeout: Duration) -> Result<ProcessGroup> {
        let l = launch;
        let store = Store::connect(&l.master_addr, l.master_port, l.world, l.rank == 0, timeout)
            .with_context(|| {
                format!(
                    "rank {} of {}: rendezvous at {}:{} (from {}) failed within {:.0} s",
                    l.rank,
                    l.world,
                    l.master_addr,
                    l.master_port,
                    l.source,
                    timeout.as_secs_f64()
                )
            })?;
        let stop = Arc::new(AtomicBool::new(false));
        let beat = store.try_clone()?;
        let (key, flag) = (format!("hb/{}", l.rank), stop.clone());
        let heartbeat = std::thread::Builder::new()
            .name("dist-heartbeat".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    if beat.add(&key, 1).is_err() {
                        break;
                    }
                    std::thread::sleep(HEARTBEAT);
                }
            })?;
        let watch = store.try_clone()?;
        watch.set_timeout(WATCH);
        let iface = std::env::var("GLOO_SOCKET_IFNAME").ok();
        let host = local_address(&l.master_addr, l.master_port);
        let group = Group::new(
            &store,
            "gloo",
            iface.as_deref(),
            &host,
            l.rank,
            l.world,
            timeout,
        )
        .with_context(|| {
            format!(
                "rank {} of {}: connecting the gloo group (this rank's address {host})",
                l.rank, l.world
            )
        })?;
        Ok(ProcessGroup {
            launch: l.clone(),
            timeout,
            group: Some(group),
            store: Some(store),
            watch: Some(watch),
            stop,
            heartbeat: Some(heartbeat),
            seq: 0.into(),
            failed: false.into(),
        })
    }

    pub fn rank(&self) -> usize {
        self.launch.rank
    }

    pub fn world(&self) -> usize {
        self.launch.world
    }

    pub fn local_rank(&self) -> usize {
        self.launch.local_rank
    }

    /// Rank 0: the one that writes files and prints.
    pub fn is_main(&self) -> bool {
        self.launch.rank == 0
    }

    fn group(&self) -> &Group {
        self.group.as_ref().expect("group present until drop")
    }

    fn store(&self) -> &Store {
        self.store.as_ref().expect("store present until drop")
    }

    /// Runs one collective: records its sequence number, and on failure names the lost ranks.
    fn collective<T>(&self, what: &str, f: impl FnOnce(&Group) -> Result<T>) -> Result<T> {
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let me = self.launch.rank;
        let r = self
            .store()
            .add(&format!("seq/{me}"), 1)
            .and_then(|_| f(self.group()));
        r.map_err(|e| {
            self.failed.set(true);
            let lost = self.diagnose(seq);
            anyhow::anyhow!(
                "rank {me} of {}: {what} (collective #{seq}) failed: {lost}; engine: {e:#}",
                self.launch.world
            )
        })
    }

    /// Says which ranks are lost: heartbeats that stop moving, else ranks behind in the
    /// collective sequence.
    fn diagnose(&self, seq: u64) -> String {
        let l = &self.launch;
        let store = self.watch.as_ref().expect("watch present until drop");
        let read = |prefix: &str| -> Result<Vec<i64>> {
            (0..l.world)
                .map(|r| store.add(&format!("{prefix}/{r}"), 0))
                .collect()
        };
        let Ok(before) = read("hb") else {
            return format!(
                "lost rank 0 (its rendezvous store at {}:{} stopped answering)",
                l.master_addr, l.master_port
            );
        };
        std::thread::sleep(WATCH);
        let (Ok(after), Ok(seqs)) = (read("hb"), read("seq")) else {
            return format!(
                "lost rank 0 (its rendezvous store at {}:{} stopped answering)",
                l.master_addr, l.master_port
            );
        };
        let silent: Vec<usize> = (0..l.world)
            .filter(|&r| r != l.rank && after[r] == before[r])
            .collect();
        if !silent.is_empty() {
            return format!(
                "lost rank{} {} (no heartbeat for {:.0} s: exited, killed or frozen)",
                if silent.len() > 1 { "s" } else { "" },
                join(&silent),
                WATCH.as_secs_f64()
            );
        }
        let behind: Vec<usize> = (0..l.world).filter(|&r| (seqs[r] as u64) < seq).collect();
        if !behind.is_empty() {
            return format!(
                "rank{} {} alive but not in collective #{seq} within {:.0} s (hung)",
                if behind.len() > 1 { "s" } else { "" },
                join(&behind),
                self.timeout.as_secs_f64()
            );
        }
        "every rank's heartbeat is alive and in step: a network error".into()
    }

    /// Averages the gradients over the ranks, in place, bucket by bucket. Tensors are grouped
    /// by kind and device, flattened into buckets of at most [`BUCKET_BYTES`]; CUDA buckets go
    /// through host memory.
    pub fn all_reduce_mean(&self, grads: &[Tensor]) -> Result<()> {
        tch::no_grad(|| self.all_reduce_mean_inner(grads))
    }

    fn all_reduce_mean_inner(&self, grads: &[Tensor]) -> Result<()> {
        let n = self.launch.world as f64;
        for bucket in buckets(grads) {
            let flat = Tensor::cat(
                &bucket.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(),
                0,
            );
            let device = flat.device();
            let host = flat.to_device(Device::Cpu).contiguous();
            self.collective("gradient all-reduce", |g| g.all_reduce_sum(&[&host]))?;
            let mean = (host / n).to_device(device);
            let mut off = 0i64;
            for t in bucket {
                let len = t.numel() as i64;
                let mut t = t.shallow_clone();
                t.copy_(&mean.narrow(0, off, len).view_as(&t));
                off += len;
            }
        }
        Ok(())
    }

    /// Sums `values` over the ranks (losses, counts).
    pub fn all_reduce_sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let t = Tensor::from_slice(values).to_kind(Kind::Double);
        self.collective("scalar all-reduce", |g| g.all_reduce_sum(&[&t]))?;
        let v: Vec<f64> = Vec::try_from(&t)?;
        values.copy_from_slice(&v);
        Ok(())
    }

    /// Copies rank 0's tensors into every rank's, then checks that all ranks now hold the same
    /// bytes (a SHA-256 over all tensors, compared through the store).
    pub fn broadcast_and_check(&self, tensors: &[Tensor]) -> Result<String> {
        for bucket in buckets(tensors) {
            let host: Vec<Tensor> = bucket
                .iter()
                .map(|t| t.to_device(Device::Cpu).contiguous())
                .collect();
            let refs: Vec<&Tensor> = host.iter().collect();
            self.collective("broadcast from rank 0", |g| g.broadcast(&refs, 0))?;
            for (t, h) in bucket.iter().zip(&host) {
                let mut t = t.shallow_clone();
                tch::no_grad(|| t.copy_(h));
            }
        }
        let hash = digest(tensors)?;
        self.check_same("weights", &hash)?;
        Ok(hash)
    }

    /// Fails unless every rank passes the same `value` for `what`.
    pub fn check_same(&self, what: &str, value: &str) -> Result<()> {
        let seq = self.seq.get();
        let me = self.launch.rank;
        self.store()
            .set(&format!("check/{seq}/{me}"), value.as_bytes())?;
        self.barrier()?;
        for r in 0..self.launch.world {
            let v = self.store().get(&format!("check/{seq}/{r}"))?;
            if v != value.as_bytes() {
                bail!(
                    "rank {r} has different {what} from rank {me}: {} vs {value}",
                    String::from_utf8_lossy(&v)
                );
            }
        }
        Ok(())
    }

    /// Waits until every rank gets here.
    pub fn barrier(&self) -> Result<()> {
        self.collective("barrier", |g| g.barrier())
    }

    /// The timeout every wait runs under.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if self.failed.get() {
            // A peer is gone: tearing down could wait on it. Leak the handles instead; the
            // process is about to exit with the error.
            std::mem::forget(self.group.take());
            std::mem::forget(self.store.take());
            std::mem::forget(self.watch.take());
            return;
        }
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        drop(self.group.take());
        drop(self.watch.take());
        drop(self.store.take());
    }
}

/// The tensors grouped into contiguous-bucket runs: same kind and device, at most
/// [`BUCKET_BYTES`] each (a larger tensor is a bucket of its own).
fn buckets(ts: &[Tensor]) -> Vec<Vec<&Tensor>> {
    let mut out: Vec<Vec<&Tensor>> = Vec::new();
    let mut bytes = 0usize;
    for t in ts {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let fits = out.last().is_some_and(|b| {
            let first = b[0];
            first.kind() == t.kind() && first.device() == t.device() && bytes + size <= BUCKET_BYTES
        });
        if fits {
            out.last_mut().unwrap().push(t);
            bytes += size;
        } else {
            out.push(vec![t]);
            bytes = size;
        }
    }
    out
}

/// SHA-256 over the tensors' values, in order, as hex.
pub fn digest(ts: &[Tensor]) -> Result<String> {
    let mut h = Sha256::new();
    for t in ts {
        let t = t.to_device(Device::Cpu).contiguous();
        let bytes = t.reshape([-1]).view_dtype(Kind::Uint8);
        let v: Vec<u8> = Vec::try_from(&bytes)?;
        h.update(&v);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn join(ranks: &[usize]) -> String {
    ranks
        .iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The address of this machine on the route to the rendezvous host: what the other ranks can
/// reach us at. A UDP socket "connected" to the master sends nothing; the kernel just picks
/// the local address. Falls back to the master's own name on a lookup failure.
fn local_address(master: &str, port: u16) -> String {
    use std::net::{ToSocketAddrs, UdpSocket};
    let found = (master, port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.find(|a| a.is_ipv4()))
        .and_then(|addr| {
            let s = UdpSocket::bind("0.0.0.0:0").ok()?;
            s.connect(addr).ok()?;
            s.local_addr().ok()
        });
    match found {
        Some(a) => a.ip().to_string(),
        None => master.to_string(),
    }
}
