//! `soma train --distributed mpi` under `mpirun` (feature `mpi`): two ranks on lavapipe give
//! the bits of two replicas in one process (`--devices 0,0`), rank 0 alone writes the run
//! directory, a 2-rank run resumes bit-identically, and `kill -9` of rank 1 ends the job
//! with a non-zero exit within 60 s, naming the lost rank, the last checkpoint kept.
//!
//! A missing `mpirun` fails the tests; it never skips them.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::bin::{self, TempDir};
use serde_json::Value;

/// One job at a time: they share two cores, and the lost-rank test measures how soon its
/// job ends.
static ONE_JOB: Mutex<()> = Mutex::new(());

/// `mpirun -n ranks soma ARGS` in `dir`, with what CI needs to run it (root allowed, MPI's
/// own waits yielding the core).
fn mpirun(ranks: usize, dir: &TempDir, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "-n",
        &ranks.to_string(),
        "--oversubscribe",
        "--bind-to",
        "none",
    ])
    .arg(env!("CARGO_BIN_EXE_soma"))
    .args(args)
    .current_dir(&dir.0)
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    .env("OMPI_MCA_mpi_yield_when_idle", "1")
    .env_remove("RUST_LOG")
    .stdin(Stdio::null());
    c
}

fn run(mut c: Command) -> Output {
    c.output().unwrap_or_else(|e| {
        panic!("cannot start mpirun ({e}): install Open MPI (apt-get install openmpi-bin libopenmpi-dev)")
    })
}

fn ok_json(out: &Output, what: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what}: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{what}: not one JSON document ({e}):\n{stdout}"))
}

fn sha(v: &Value) -> String {
    v["tensors_sha256"].as_str().unwrap().to_string()
}

/// Two ranks against two replicas in one process, on the same adapter: the same bits, since
/// both sum the gradients on the host in replica order; rank 0 alone made a run directory;
/// with `--overlap`, and stopped after an epoch and resumed on two ranks, the same bits
/// again.
#[test]
fn two_ranks_give_the_bits_of_two_replicas_in_one_process_and_resume() {
    let _one = ONE_JOB.lock().unwrap_or_else(|p| p.into_inner());
    let dir = TempDir::new("mpi-train");
    let common = [
        "train",
        "--epochs",
        "3",
        "--seed",
        "5",
        "--batch-size",
        "24",
        "--json",
    ];
    let mut args = common.to_vec();
    args.extend(["--devices", "0,0", "--out", "local"]);
    let local = bin::soma(&dir, &args).ok().json();

    let mut args = common.to_vec();
    args.extend(["--distributed", "mpi", "--out", "ranks"]);
    let out = run(mpirun(2, &dir, &args));
    let ranks = ok_json(&out, "2 ranks");
    assert_eq!(sha(&ranks), sha(&local), "2 ranks against --devices 0,0");
    assert!(ranks["adapter"].as_str().unwrap().contains("x 2 ranks"));
    let made: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut made = made;
    made.sort();
    assert_eq!(made, ["local", "ranks"], "run directories: rank 0's alone");

    // Each layer's gradients handed over as soon as they are done: the same sums.
    let mut args = common.to_vec();
    args.extend(["--distributed", "mpi", "--overlap", "--out", "overlap"]);
    let overlap = ok_json(&run(mpirun(2, &dir, &args)), "2 ranks, --overlap");
    assert_eq!(sha(&overlap), sha(&local), "2 ranks with --overlap");

    let mut args = common.to_vec();
    args.extend([
        "--distributed",
        "mpi",
        "--out",
        "paused",
        "--stop-after",
        "1",
    ]);
    let out = run(mpirun(2, &dir, &args));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir
        .join("paused.partial")
        .join("checkpoint.safetensors")
        .is_file());
    let out = run(mpirun(
        2,
        &dir,
        &[
            "train",
            "--distributed",
            "mpi",
            "--resume",
            "paused.partial",
            "--json",
        ],
    ));
    let resumed = ok_json(&out, "resumed on 2 ranks");
    assert_eq!(sha(&resumed), sha(&local), "stopped and resumed on 2 ranks");
}

/// The pid of the process with `OMPI_COMM_WORLD_RANK=rank` among `parent`'s children.
fn rank_pid(parent: u32, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The parent pid is the second field after the parenthesized command name.
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
        let has = environ.split(|&b| b == 0).any(|v| v == want.as_bytes());
        (ppid == parent && has).then_some(pid)
    })
}

fn checkpoint_epoch(run: &Path) -> usize {
    soma::checkpoint::load(&run.join("checkpoint.safetensors"))
        .ok()
        .and_then(|c| c.resume)
        .map_or(0, |r| r.state.epoch)
}

/// Starts a long 2-rank run, waits for its second checkpoint, sends rank 1 `signal`, and
/// returns the job's exit status, how long it took to end after the signal, and its output.
fn signal_rank_1(
    test: &str,
    signal: &str,
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, Duration, String, TempDir) {
    let dir = TempDir::new(test);
    let mut c = mpirun(
        2,
        &dir,
        &[
            "train",
            "--distributed",
            "mpi",
            "--epochs",
            "100000",
            "--out",
            "long",
        ],
    );
    let mut child = c
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start mpirun: install Open MPI (apt-get install openmpi-bin)");
    let partial = dir.join("long.partial");
    let start = Instant::now();
    while checkpoint_epoch(&partial) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no second checkpoint within 120 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = rank_pid(child.id(), 1).expect("rank 1's process among mpirun's children");
    let sent = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let _ = child.kill();
            panic!("the job still runs 60 s after rank 1 got {signal}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t.elapsed();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (status, took, text, dir)
}

/// `kill -9` of rank 1 in the middle of a run: the job exits non-zero within 60 s, its
/// output names rank 1, and rank 0's last checkpoint is whole (it loads).
#[test]
fn kill_9_of_rank_1_ends_the_job_within_60_s_naming_it() {
    let _one = ONE_JOB.lock().unwrap_or_else(|p| p.into_inner());
    let (status, took, text, dir) = signal_rank_1("mpi-kill", "-9", &[]);
    assert!(
        !status.success(),
        "exit {status} after rank 1 was killed:\n{text}"
    );
    assert!(
        text.contains("rank 1"),
        "the output does not name rank 1:\n{text}"
    );
    println!("the job ended {took:?} after kill -9 of rank 1 ({status})");
    assert!(
        checkpoint_epoch(&dir.join("long.partial")) >= 2,
        "rank 0's last checkpoint is whole"
    );
}

/// A rank that stops answering without dying (SIGSTOP: the launcher sees nothing wrong) is
/// found by the exchange's timeout: rank 0 names it and takes the job down.
#[test]
fn a_rank_that_stops_answering_is_named_after_the_timeout() {
    let _one = ONE_JOB.lock().unwrap_or_else(|p| p.into_inner());
    let (status, took, text, _dir) =
        signal_rank_1("mpi-stop", "-STOP", &[("SOMA_MPI_TIMEOUT", "3")]);
    assert!(
        !status.success(),
        "exit {status} after rank 1 stopped:\n{text}"
    );
    assert!(
        text.contains("replica 1 is lost") && text.contains("rank 0 of 2"),
        "rank 0 did not name rank 1:\n{text}"
    );
    println!("the job ended {took:?} after rank 1 stopped ({status})");
}
