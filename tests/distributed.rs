//! Two ranks on torch's c10d (Gloo, CPU tensors), each a child process of this test binary started
//! the way torchrun starts ranks (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).
use dualign::dist::{Group, Launch};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs test `name` of this binary as ranks 0..world in child processes, with `role` telling the
/// child what to do; returns each rank's output.
fn ranks(name: &str, world: usize, role: &str) -> Vec<Output> {
    let port = free_port().to_string();
    let children: Vec<_> = (0..world)
        .map(|rank| {
            Command::new(std::env::current_exe().unwrap())
                .args([name, "--exact", "--nocapture", "--test-threads=1"])
                .env("DUALIGN_DIST_ROLE", role)
                .env("WORLD_SIZE", world.to_string())
                .env("RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    let n = t.numel();
    let mut v = vec![0f32; n];
    t.copy_data(&mut v, n);
    v
}

#[test]
fn two_ranks_sum_broadcast_and_meet_at_a_barrier() {
    if let Ok(role) = std::env::var("DUALIGN_DIST_ROLE") {
        assert_eq!(role, "collectives");
        let launch = Launch::from_env().unwrap().expect("a two-rank launch");
        let g = Group::connect(&launch, Duration::from_secs(60)).unwrap();
        let r = g.rank as f32;
        // Sum: rank r contributes [r + 1, 10 (r + 1)], so both end with [3, 30].
        let mut t = Tensor::from_slice(&[r + 1.0, 10.0 * (r + 1.0)]);
        g.all_reduce_sum(&mut t).unwrap();
        assert_eq!(values(&t), vec![3.0, 30.0], "rank {}", g.rank);
        // Broadcast from rank 1: rank 0's own values are replaced by rank 1's.
        let mut b = Tensor::from_slice(&[r * 7.0, -r]);
        g.broadcast(&mut b, 1).unwrap();
        assert_eq!(values(&b), vec![7.0, -1.0], "rank {}", g.rank);
        g.barrier().unwrap();
        return;
    }
    for (rank, o) in ranks("two_ranks_sum_broadcast_and_meet_at_a_barrier", 2, "collectives").iter().enumerate() {
        assert!(o.status.success(), "rank {rank} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
}

#[test]
fn a_rank_that_dies_makes_the_other_fail_within_the_timeout_not_hang() {
    if let Ok(role) = std::env::var("DUALIGN_DIST_ROLE") {
        assert_eq!(role, "die");
        let launch = Launch::from_env().unwrap().expect("a two-rank launch");
        let g = Group::connect(&launch, Duration::from_secs(10)).unwrap();
        g.barrier().unwrap();
        if g.rank == 1 {
            // Gone without a word, as a killed process would be.
            std::process::exit(0);
        }
        let start = Instant::now();
        let mut t = Tensor::from_slice(&[1f32]);
        let e = g.all_reduce_sum(&mut t).unwrap_err().to_string();
        println!("ERROR after {:.1}s: {e}", start.elapsed().as_secs_f64());
        assert!(e.starts_with("rank 0: all-reduce: "), "{e}");
        assert!(start.elapsed() < Duration::from_secs(20), "{:?}", start.elapsed());
        return;
    }
    let outs = ranks("a_rank_that_dies_makes_the_other_fail_within_the_timeout_not_hang", 2, "die");
    for (rank, o) in outs.iter().enumerate() {
        assert!(o.status.success(), "rank {rank} failed:\n{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    // Rank 0 saw the error, and soon (its line says how soon).
    let said = String::from_utf8_lossy(&outs[0].stdout);
    assert!(said.contains("ERROR after "), "{said}");
}
