//! The collective layer (`tinyvit_host::dist`) with two real processes on 127.0.0.1: the test
//! binary re-runs itself as each rank (the `rank_*` tests, ignored in a plain run, are the
//! ranks' bodies; `RANK`, `WORLD_SIZE`, `MASTER_ADDR` and `MASTER_PORT` tell them who they are).
//!
//! - collectives: bucketed gradient mean (several buckets), scalar sums, broadcast with the
//!   identity check, barrier;
//! - failure: a rank that exits, one that hangs, and rank 0 (the store's host) exiting make the
//!   survivor exit non-zero within the timeout, naming the lost rank.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tch::{Kind, Tensor};
use tinyvit_host::dist::{Launch, ProcessGroup, BUCKET_BYTES};

/// A TCP port free a moment ago, for the rendezvous.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts this test binary as rank `rank` of `world`, running the ignored test `body`.
fn spawn_rank(body: &str, rank: usize, world: usize, port: u16, timeout_s: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            body,
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("LOCAL_RANK", rank.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        .env("TEST_DIST_TIMEOUT", timeout_s)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

struct Ended {
    ok: bool,
    text: String,
    seconds: f64,
}

/// Waits for every rank, with an upper bound so a hang fails the test instead of the CI.
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Ended> {
    let start = Instant::now();
    children
        .into_iter()
        .enumerate()
        .map(|(r, mut c)| {
            loop {
                if c.try_wait().unwrap().is_some() {
                    break;
                }
                if start.elapsed() > limit {
                    let _ = c.kill();
                    panic!("rank {r} still running after {limit:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let seconds = start.elapsed().as_secs_f64();
            let o = c.wait_with_output().unwrap();
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            eprintln!("--- rank {r} ({:?}, {seconds:.1} s):\n{text}", o.status);
            Ended {
                ok: o.status.success(),
                text,
                seconds,
            }
        })
        .collect()
}

/// The group of a rank started by `spawn_rank`.
fn join() -> ProcessGroup {
    let launch = Launch::from_env().unwrap().expect("started as a rank");
    let secs: f64 = std::env::var("TEST_DIST_TIMEOUT").unwrap().parse().unwrap();
    ProcessGroup::init(&launch, Duration::from_secs_f64(secs)).unwrap()
}

#[test]
fn collectives_two_ranks() {
    let port = free_port();
    let kids = (0..2)
        .map(|r| spawn_rank("rank_collectives", r, 2, port, "30"))
        .collect();
    for e in wait_all(kids, Duration::from_secs(60)) {
        assert!(e.ok, "a rank failed:\n{}", e.text);
        assert!(e.text.contains("collectives ok"), "{}", e.text);
    }
}

#[test]
#[ignore = "a rank's body: run by collectives_two_ranks"]
fn rank_collectives() {
    let pg = join();
    let r = pg.rank() as f32;
    assert_eq!(pg.world(), 2);
    // Gradients of rank r: tensor i filled with (r + 1) * (i + 1); the mean over two ranks is
    // 1.5 * (i + 1). One tensor larger than a bucket, and enough small ones for a second.
    let big = BUCKET_BYTES / 4 + 1000;
    let mut sizes = vec![3usize, 7, big, 5];
    sizes.extend(std::iter::repeat_n(1 << 20, 8));
    let grads: Vec<Tensor> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            Tensor::full(
                [n as i64],
                ((r + 1.0) * (i as f32 + 1.0)) as f64,
                (Kind::Float, tch::Device::Cpu),
            )
        })
        .collect();
    pg.all_reduce_mean(&grads).unwrap();
    for (i, g) in grads.iter().enumerate() {
        let want = 1.5 * (i as f64 + 1.0);
        let (lo, hi) = (g.min().double_value(&[]), g.max().double_value(&[]));
        assert!(
            lo == want && hi == want,
            "tensor {i}: {lo}..{hi}, want {want}"
        );
    }
    let mut v = [r as f64, 10.0];
    pg.all_reduce_sum_f64(&mut v).unwrap();
    assert_eq!(v, [1.0, 20.0]);
    // Different weights on each rank; after the broadcast all hold rank 0's.
    tch::manual_seed(pg.rank() as i64);
    let w = vec![
        Tensor::randn([4, 4], tch::kind::FLOAT_CPU),
        Tensor::arange(5, tch::kind::INT64_CPU) + pg.rank() as i64,
    ];
    let hash = pg.broadcast_and_check(&w).unwrap();
    tch::manual_seed(0);
    let w0 = Tensor::randn([4, 4], tch::kind::FLOAT_CPU);
    assert!(w[0].equal(&w0) && w[1].equal(&Tensor::arange(5, tch::kind::INT64_CPU)));
    // A value that differs between ranks is refused, naming the other rank.
    let e = pg
        .check_same("test value", &format!("v{}", pg.rank()))
        .unwrap_err();
    assert!(format!("{e:#}").contains("different test value"), "{e:#}");
    pg.barrier().unwrap();
    println!("collectives ok, weights {hash}");
}

/// Runs two ranks of `body` with a 4 s timeout; `survivor` must fail naming `lost`.
fn lost_rank(body: &str, survivor: usize, lost: &str) {
    let port = free_port();
    let kids = (0..2).map(|r| spawn_rank(body, r, 2, port, "4")).collect();
    let ended = wait_all(kids, Duration::from_secs(60));
    let s = &ended[survivor];
    assert!(!s.ok, "the survivor exited 0:\n{}", s.text);
    assert!(
        s.text.contains(lost),
        "the survivor's error does not say `{lost}`:\n{}",
        s.text
    );
    // Timeout 4 s, diagnosis 3 s, start-up: well inside 20 s.
    assert!(s.seconds < 20.0, "the survivor took {:.1} s", s.seconds);
}

#[test]
fn a_rank_that_exits_is_named() {
    lost_rank("rank_exits", 0, "lost rank 1 (no heartbeat");
}

#[test]
fn a_rank_that_hangs_is_named() {
    lost_rank("rank_hangs", 0, "rank 1 alive but not in collective #2");
}

#[test]
fn losing_rank_0_is_named() {
    lost_rank("rank_0_exits", 1, "lost rank 0");
}

/// Every rank runs all-reduces; rank `victim` stops after the first (`how`: exit or hang).
fn run_until(victim: usize, hang: bool) {
    let pg = join();
    let t = vec![Tensor::ones([16], tch::kind::FLOAT_CPU)];
    pg.all_reduce_mean(&t).unwrap();
    if pg.rank() == victim {
        if hang {
            std::thread::sleep(Duration::from_secs(15));
        }
        std::process::exit(3);
    }
    match pg.all_reduce_mean(&t) {
        Ok(()) => println!("second all-reduce returned"),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

#[test]
#[ignore = "a rank's body: run by a_rank_that_exits_is_named"]
fn rank_exits() {
    run_until(1, false);
}

#[test]
#[ignore = "a rank's body: run by a_rank_that_hangs_is_named"]
fn rank_hangs() {
    run_until(1, true);
}

#[test]
#[ignore = "a rank's body: run by losing_rank_0_is_named"]
fn rank_0_exits() {
    run_until(0, false);
}
