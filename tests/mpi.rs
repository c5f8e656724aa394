//! The MPI exchange (`parallel::mpi`, feature `mpi`) across real processes: each test runs
//! examples/mpi_exchange.rs under `mpirun` and reads its exit code and output. The example is
//! built beforehand, as .ci/run does:
//!
//! ```text
//! cargo build --release --features mpi --example mpi_exchange
//! cargo test --release --features mpi --test mpi
//! ```
//!
//! A missing `mpirun` or example binary fails the tests; it never skips them.
#![cfg(feature = "mpi")]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

/// One job at a time: they share two cores, and the lost-rank tests measure how soon the job
/// ends.
static ONE_JOB: Mutex<()> = Mutex::new(());

/// Past this a job is killed and its test fails.
const JOB_LIMIT: Duration = Duration::from_secs(120);

/// A finished `mpirun` job.
struct Job {
    /// The exit code; None when a signal ended mpirun.
    code: Option<i32>,
    /// stdout, then stderr.
    output: String,
    took: Duration,
}

/// What builds the example (without --release for a debug test run).
const BUILD: &str = "cargo build --release --features mpi --example mpi_exchange";

/// The example binary, in this profile's target directory (tests run from `<profile>/deps`).
fn example() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lies in target/<profile>/deps");
    let example = profile.join("examples").join("mpi_exchange");
    let built = std::fs::metadata(&example).and_then(|meta| meta.modified());
    let Ok(built) = built else {
        panic!("{} is missing: run `{BUILD}` first", example.display());
    };
    // A binary older than the sources would test old code.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let sources = [root.join("src"), root.join("examples/mpi_exchange.rs")];
    if let Some(newer) = sources.iter().find_map(|path| newer_than(path, built)) {
        panic!(
            "{} is older than {}: run `{BUILD}` again",
            example.display(),
            newer.display()
        );
    }
    example
}

/// A Rust file at or under `path` modified after `time`.
fn newer_than(path: &Path, time: SystemTime) -> Option<PathBuf> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_dir() {
        let entries = std::fs::read_dir(path).ok()?;
        entries
            .filter_map(|entry| entry.ok())
            .find_map(|entry| newer_than(&entry.path(), time))
    } else if path.extension().is_some_and(|ext| ext == "rs") {
        let modified = meta.modified().ok()?;
        (modified > time).then(|| path.to_path_buf())
    } else {
        None
    }
}

/// Runs the example on `ranks` processes with `args`, and `env` on top of this environment.
fn mpirun(ranks: usize, args: &[&str], env: &[(&str, &str)]) -> Job {
    let example = example();
    let _one_job = ONE_JOB
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut command = Command::new("mpirun");
    command
        .args([
            "-n",
            &ranks.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .arg(&example)
        .args(args)
        // Tests (and CI) may run as root, which mpirun refuses without these.
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // MPI's own waits (in MPI_Init and MPI_Finalize) yield the core instead of spinning.
        .env("OMPI_MCA_mpi_yield_when_idle", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!(
            "mpirun is not installed: install Open MPI (apt-get install openmpi-bin \
             libopenmpi-dev) to run the MPI tests"
        ),
        Err(error) => panic!("could not start mpirun: {error}"),
    };
    let readers = [read_all(child.stdout.take()), read_all(child.stderr.take())];
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for mpirun") {
            break status;
        }
        if start.elapsed() > JOB_LIMIT {
            // SIGTERM first: mpirun passes it to its ranks.
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "mpirun -n {ranks} mpi_exchange {args:?} ran past {} s",
                JOB_LIMIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    let output = readers
        .into_iter()
        .map(|reader| reader.join().expect("reading mpirun's output"))
        .collect();
    Job {
        code: status.code(),
        output,
        took,
    }
}

/// Reads `stream` to its end on a thread of its own, so that neither pipe fills up.
fn read_all(stream: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut stream) = stream {
            let _ = stream.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    })
}

fn sums_are_exact(ranks: usize) {
    let job = mpirun(ranks, &[], &[]);
    assert_eq!(job.code, Some(0), "mpirun -n {ranks}:\n{}", job.output);
    for rank in 0..ranks {
        let line = format!("rank {rank} of {ranks} on ");
        assert!(
            job.output.contains(&line),
            "no line from rank {rank}:\n{}",
            job.output
        );
    }
}

#[test]
fn two_ranks_sum_in_rank_order() {
    sums_are_exact(2);
}

/// Three ranks on two cores (`--oversubscribe`); the example checks that its f32 data gives
/// other bits in any other order of addition.
#[test]
fn three_ranks_sum_in_rank_order() {
    sums_are_exact(3);
}

/// A rank killed by SIGKILL before a sum ends the job, with an exit code that is not 0 and a
/// message naming the rank (mpirun's, or rank 0's timeout).
#[test]
fn a_killed_rank_ends_the_job() {
    let job = mpirun(3, &["die"], &[("SOMA_MPI_TIMEOUT", "20")]);
    assert!(
        job.output.contains("rank 1: first sum done"),
        "rank 1 did not reach the second sum:\n{}",
        job.output
    );
    assert_ne!(job.code, Some(0), "the job succeeded:\n{}", job.output);
    assert!(
        job.took < Duration::from_secs(60),
        "the job took {:?}:\n{}",
        job.took,
        job.output
    );
    let names_rank_1 = job.output.contains("process rank 1 ") || job.output.contains("replica 1 ");
    assert!(names_rank_1, "no message names rank 1:\n{}", job.output);
}

/// A rank that hangs past the timeout: rank 0 reports it lost and aborts the job long before
/// it would wake (10 s).
#[test]
fn a_silent_rank_times_out() {
    let job = mpirun(2, &["sleep"], &[("SOMA_MPI_TIMEOUT", "2")]);
    assert_eq!(
        job.code,
        Some(3),
        "exit code (3: an error from the exchange):\n{}",
        job.output
    );
    assert!(
        job.output
            .contains("replica 1 is lost: sent nothing for 2 s: it has stopped or hangs"),
        "rank 0 did not report rank 1 lost:\n{}",
        job.output
    );
    assert!(job.output.contains("SOMA_MPI_TIMEOUT"), "{}", job.output);
    assert!(
        job.took < Duration::from_secs(8),
        "the job took {:?}, though rank 0 gives up after 2 s:\n{}",
        job.took,
        job.output
    );
}

/// Ranks that sum different lengths: rank 0 refuses the sum and names the rank.
#[test]
fn a_length_mismatch_names_the_rank() {
    let job = mpirun(3, &["mismatch"], &[]);
    assert_eq!(
        job.code,
        Some(3),
        "exit code (3: an error from the exchange):\n{}",
        job.output
    );
    assert!(
        job.output
            .contains("replica 1 is lost: sent 8 values to a sum of 7 values"),
        "{}",
        job.output
    );
}

/// Ranks that call different sums: rank 0 refuses the sum and names the rank.
#[test]
fn sums_of_different_kinds_name_the_rank() {
    let job = mpirun(2, &["kinds"], &[]);
    assert_eq!(
        job.code,
        Some(3),
        "exit code (3: an error from the exchange):\n{}",
        job.output
    );
    assert!(
        job.output.contains(
            "replica 1 is lost: sent a u32 sum where rank 0 expected an f32 sum: the ranks \
             call the exchange in different orders"
        ),
        "{}",
        job.output
    );
}

/// A bad SOMA_MPI_TIMEOUT is refused before MPI starts.
#[test]
fn a_bad_timeout_is_refused() {
    let job = mpirun(1, &[], &[("SOMA_MPI_TIMEOUT", "soon")]);
    assert_eq!(job.code, Some(2), "{}", job.output);
    assert!(
        job.output
            .contains("SOMA_MPI_TIMEOUT=\"soon\" is not a timeout"),
        "{}",
        job.output
    );
}
