//! Who this process is in a multi-process run, read from the launcher's environment.
//!
//! Launchers, in order of precedence:
//! - **torchrun** (and `cargo xtask train --nproc N`): `RANK`, `WORLD_SIZE`, `LOCAL_RANK`,
//!   `MASTER_ADDR`, `MASTER_PORT`.
//! - **Slurm's `srun`**: `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS` (set by `srun` for each task of
//!   a step; the batch script itself, which has only `SLURM_NTASKS`, stays one process),
//!   `SLURM_LOCALID`. The rendezvous host is `MASTER_ADDR` when set (the example script sets it
//!   to the first node of the allocation), else `SLURM_LAUNCH_NODE_IPADDR`, the node `srun` was
//!   started on; the port is `MASTER_PORT`, else 29500.
//!
//! Nothing set, or a world of one: a plain single-process run.

use anyhow::{bail, Context, Result};

/// The port torchrun uses when `MASTER_PORT` is not given.
pub const DEFAULT_PORT: u16 = 29500;

/// One rank's place in the run and where to meet the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// Number of processes in the run.
    pub world: usize,
    /// Rank among the processes of this machine: the CUDA device index it takes.
    pub local_rank: usize,
    /// Host of the rendezvous store, served by rank 0.
    pub master_addr: String,
    pub master_port: u16,
    /// The launcher the values came from, for messages.
    pub source: &'static str,
}

impl Launch {
    /// Reads the process environment; `None` for a single-process run.
    pub fn from_env() -> Result<Option<Launch>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// As `from_env`, with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let num = |name: &str| -> Result<Option<usize>> {
            match var(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .map(Some)
                    .with_context(|| format!("${name} = `{v}` is not a non-negative integer")),
            }
        };
        let port = || -> Result<u16> {
            match var("MASTER_PORT") {
                None => Ok(DEFAULT_PORT),
                Some(v) => v
                    .trim()
                    .parse::<u16>()
                    .with_context(|| format!("$MASTER_PORT = `{v}` is not a TCP port")),
            }
        };
        let (rank, world, local_rank, addr, source) = if let Some(world) = num("WORLD_SIZE")? {
            let rank = num("RANK")?.context("$WORLD_SIZE is set but $RANK is not")?;
            let local = num("LOCAL_RANK")?.unwrap_or(0);
            let addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
            (rank, world, local, addr, "torchrun ($RANK, $WORLD_SIZE)")
        } else if let Some(world) = num("SLURM_STEP_NUM_TASKS")? {
            let rank = num("SLURM_PROCID")?
                .context("$SLURM_STEP_NUM_TASKS is set but $SLURM_PROCID is not")?;
            let local = num("SLURM_LOCALID")?.unwrap_or(0);
            let addr = match var("MASTER_ADDR").or_else(|| var("SLURM_LAUNCH_NODE_IPADDR")) {
                Some(a) => a,
                None if world == 1 => "127.0.0.1".into(),
                None => bail!(
                    "Slurm step of {world} tasks but neither $MASTER_ADDR nor \
                     $SLURM_LAUNCH_NODE_IPADDR names the rendezvous host"
                ),
            };
            (
                rank,
                world,
                local,
                addr,
                "Slurm ($SLURM_PROCID, $SLURM_STEP_NUM_TASKS)",
            )
        } else {
            return Ok(None);
        };
        if world == 0 {
            bail!("{source}: a world size of 0");
        }
        if rank >= world {
            bail!("{source}: rank {rank} is not below the world size {world}");
        }
        if world == 1 {
            return Ok(None);
        }
        let addr = addr.trim().to_string();
        if addr.is_empty() {
            bail!("{source}: the rendezvous host ($MASTER_ADDR) is empty");
        }
        Ok(Some(Launch {
            rank,
            world,
            local_rank,
            master_addr: addr,
            master_port: port()?,
            source,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        Launch::from_vars(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn nothing_set_is_one_process() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(launch(&[("SLURM_NTASKS", "8")]).unwrap(), None);
        assert_eq!(launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
    }

    #[test]
    fn torchrun() {
        let l = launch(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "1234"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (3, 8, 1));
        assert_eq!((l.master_addr.as_str(), l.master_port), ("10.0.0.2", 1234));
    }

    #[test]
    fn torchrun_wins_over_slurm() {
        let l = launch(&[
            ("RANK", "1"),
            ("WORLD_SIZE", "2"),
            ("SLURM_PROCID", "5"),
            ("SLURM_STEP_NUM_TASKS", "16"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (1, 2, 0));
        assert_eq!(
            (l.master_addr.as_str(), l.master_port),
            ("127.0.0.1", 29500)
        );
    }

    #[test]
    fn slurm() {
        let l = launch(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_STEP_NUM_TASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_LAUNCH_NODE_IPADDR", "192.168.1.7"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.world, l.local_rank), (9, 16, 1));
        assert_eq!(l.master_addr, "192.168.1.7");
        let l = launch(&[
            ("SLURM_PROCID", "0"),
            ("SLURM_STEP_NUM_TASKS", "2"),
            ("SLURM_LAUNCH_NODE_IPADDR", "192.168.1.7"),
            ("MASTER_ADDR", "node01"),
            ("MASTER_PORT", "29600"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.master_addr.as_str(), l.master_port), ("node01", 29600));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(format!("{e:#}").contains("$RANK = `x`"), "{e:#}");
        let e = launch(&[("WORLD_SIZE", "2")]).unwrap_err();
        assert!(format!("{e:#}").contains("$RANK is not"), "{e:#}");
        let e = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(format!("{e:#}").contains("rank 2 is not below"), "{e:#}");
        let e =
            launch(&[("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_PORT", "70000")]).unwrap_err();
        assert!(format!("{e:#}").contains("$MASTER_PORT"), "{e:#}");
        let e = launch(&[("SLURM_PROCID", "0"), ("SLURM_STEP_NUM_TASKS", "4")]).unwrap_err();
        assert!(
            format!("{e:#}").contains("SLURM_LAUNCH_NODE_IPADDR"),
            "{e:#}"
        );
    }
}
