//! soma's MPI exchange (`parallel::mpi::MpiExchange`) under `mpirun`: its sums, checked bit for
//! bit against `((v_0 + v_1) + v_2) + …` on every rank, and what happens to the job when a rank
//! is lost. tests/mpi.rs runs each mode.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_exchange
//! mpirun -n 3 target/release/examples/mpi_exchange          # the sums; exit 1 on a wrong bit
//! mpirun -n 2 target/release/examples/mpi_exchange die      # rank 1 kills itself (SIGKILL)
//! SOMA_MPI_TIMEOUT=2 mpirun -n 2 target/release/examples/mpi_exchange sleep
//!                                                           # rank 1 sleeps 10 s before a sum
//! mpirun -n 2 target/release/examples/mpi_exchange mismatch # rank 1 sums 8 values, the rest 7
//! mpirun -n 2 target/release/examples/mpi_exchange kinds    # rank 1 sums u32, the rest f32
//! ```
//! (`--oversubscribe` for more ranks than cores; `--allow-run-as-root` as root.)
//!
//! A rank that meets an error prints it and ends the job (`MpiExchange::abort`): exit code 1
//! for a wrong sum, 3 for an error from the exchange.

use std::io::Write;
use std::process::{Command, ExitCode};
use std::time::Duration;

use soma::parallel::mpi::{timeout_from_env, MpiExchange};
use soma::parallel::Exchange;

/// The lengths summed: empty, odd, over Open MPI's shared-memory eager limit (4 KiB), and
/// large enough to go in several fragments.
const LENGTHS: [usize; 5] = [0, 1, 7, 4099, 100_003];

/// How long rank 1 sleeps before its sum in `sleep` mode.
const SLEEP: Duration = Duration::from_secs(10);

enum Mode {
    /// Sums of f32 and u32 vectors, checked on every rank.
    Sums,
    /// One sum, then rank 1 kills itself with SIGKILL before the second.
    Die,
    /// One sum, then rank 1 sleeps for `SLEEP` before the second.
    Sleep,
    /// Rank 1 sums 8 values where the others sum 7.
    Mismatch,
    /// Rank 1 sums u32 values where the others sum f32.
    Kinds,
}

enum Failure {
    /// A sum came back with other bits than the rank-order sum (or the test data cannot tell
    /// the orders apart).
    Wrong(String),
    /// The exchange returned an error.
    Soma(soma::Error),
}

impl From<soma::Error> for Failure {
    fn from(error: soma::Error) -> Failure {
        Failure::Soma(error)
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] | ["sums"] => Mode::Sums,
        ["die"] => Mode::Die,
        ["sleep"] => Mode::Sleep,
        ["mismatch"] => Mode::Mismatch,
        ["kinds"] => Mode::Kinds,
        _ => {
            eprintln!("usage: mpirun -n RANKS mpi_exchange [sums|die|sleep|mismatch|kinds]");
            return ExitCode::from(2);
        }
    };
    let exchange = match timeout_from_env().and_then(MpiExchange::init) {
        Ok(exchange) => exchange,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let outcome = match mode {
        Mode::Sums => sums(&exchange),
        Mode::Die => lose_rank_1(&exchange, die),
        Mode::Sleep => lose_rank_1(&exchange, || std::thread::sleep(SLEEP)),
        Mode::Mismatch => mismatch(&exchange),
        Mode::Kinds => kinds(&exchange),
    };
    let rank = exchange.rank();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Wrong(message)) => {
            eprintln!("rank {rank}: wrong sum: {message}");
            exchange.abort(1)
        }
        Err(Failure::Soma(error)) => {
            eprintln!("rank {rank}: error: {error}");
            exchange.abort(3)
        }
    }
}

/// Every length in `LENGTHS`, summed as f32 and as u32, the first f32 sum from another thread
/// than the one that initialized MPI.
fn sums(exchange: &MpiExchange) -> Result<(), Failure> {
    let (rank, size) = (exchange.rank(), exchange.size());
    if rank == 0 && size >= 3 {
        order_matters(size, *LENGTHS.iter().max().unwrap_or(&0))?;
    }
    for (i, &len) in LENGTHS.iter().enumerate() {
        let mut values: Vec<f32> = (0..len).map(|index| f32_term(rank, index)).collect();
        if i == 0 {
            std::thread::scope(|threads| threads.spawn(|| exchange.sum_f32(&mut values)).join())
                .map_err(|_| Failure::Wrong("the sum's thread panicked".into()))??;
        } else {
            exchange.sum_f32(&mut values)?;
        }
        let expected = rank_order_sum(size, len, f32_term, |a, b| a + b);
        compare("f32", &values, &expected, f32::to_bits)?;

        let mut counts: Vec<u32> = (0..len).map(|index| u32_term(rank, index)).collect();
        exchange.sum_u32(&mut counts)?;
        let expected = rank_order_sum(size, len, u32_term, u32::wrapping_add);
        compare("u32", &counts, &expected, |count| count)?;
    }
    println!(
        "rank {rank} of {size} on {}: f32 and u32 sums of {LENGTHS:?} values match \
         ((v0 + v1) + v2) + ... bit for bit",
        exchange.processor_name()
    );
    Ok(())
}

/// One sum on every rank; then rank 1 runs `lose` before the second, which the other ranks
/// wait for. The job must not finish.
fn lose_rank_1(exchange: &MpiExchange, lose: impl FnOnce()) -> Result<(), Failure> {
    let rank = exchange.rank();
    let mut values = vec![rank as f32; 7];
    exchange.sum_f32(&mut values)?;
    if rank == 1 {
        println!("rank 1: first sum done; now lost before the second");
        // Flushed before it dies: the test reads this line.
        let _ = std::io::stdout().flush();
        lose();
    }
    exchange.sum_f32(&mut values)?;
    Err(Failure::Wrong(format!(
        "rank {rank}: the second sum returned, though rank 1 was lost before it"
    )))
}

/// Rank 1 sums 8 values, the others 7: rank 0 must refuse the sum.
fn mismatch(exchange: &MpiExchange) -> Result<(), Failure> {
    let rank = exchange.rank();
    let mut values = vec![1.0f32; if rank == 1 { 8 } else { 7 }];
    exchange.sum_f32(&mut values)?;
    Err(Failure::Wrong(format!(
        "rank {rank}: a sum of 7 values on some ranks and 8 on rank 1 returned"
    )))
}

/// Rank 1 sums u32 values, the others f32: rank 0 must refuse the sum.
fn kinds(exchange: &MpiExchange) -> Result<(), Failure> {
    let rank = exchange.rank();
    if rank == 1 {
        exchange.sum_u32(&mut [1; 7])?;
    } else {
        exchange.sum_f32(&mut [1.0; 7])?;
    }
    Err(Failure::Wrong(format!(
        "rank {rank}: a sum of f32 on some ranks and u32 on rank 1 returned"
    )))
}

/// Kills this process with SIGKILL (no handler, no MPI_Finalize, no exit code of its own).
fn die() {
    let pid = std::process::id().to_string();
    let killed = Command::new("kill").args(["-9", &pid]).status();
    // Only reached if `kill` failed: wait to be killed, or for the others to time out.
    eprintln!("rank 1: kill -9 {pid} did not kill it ({killed:?})");
    std::thread::sleep(Duration::from_secs(3600));
}

/// Rank `rank`'s term `index` of the f32 sums: the first two elements need the rank order
/// (see `order_matters`); the rest are spread over 2^-20 … 2^20, signed, so that most sums
/// round.
fn f32_term(rank: usize, index: usize) -> f32 {
    // f32 holds every eighth integer near 1e8: 1e8 + 1 rounds to 1e8. In rank order,
    // element 0 is (1e8 + 1) + -1e8 = 0 where (1e8 + -1e8) + 1 is 1, and element 1 is
    // (1 + -1e8) + 1e8 = 0 where 1 + (-1e8 + 1e8) is 1.
    const ROUNDING: [[f32; 3]; 2] = [[1e8, 1.0, -1e8], [1.0, -1e8, 1e8]];
    if index < 2 {
        return ROUNDING[index].get(rank).copied().unwrap_or(0.0);
    }
    let bits = mix(rank as u64, index as u64);
    let mantissa = 1.0 + (bits & 0xff_ffff) as f32 / (1u32 << 24) as f32;
    let exponent = ((bits >> 24) % 41) as i32 - 20;
    let sign = if bits >> 63 == 0 { 1.0 } else { -1.0 };
    sign * mantissa * 2f32.powi(exponent)
}

/// Rank `rank`'s term `index` of the u32 sums: anywhere in 0 … 2^32 - 1, so that the sums wrap.
fn u32_term(rank: usize, index: usize) -> u32 {
    (mix(rank as u64 + 1000, index as u64) >> 32) as u32
}

/// A 64-bit hash of (a, b) (splitmix64's finalizer).
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(b)
        .wrapping_add(0x632b_e59b_d9b3_e841);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `((v_0 + v_1) + v_2) + …` elementwise, every rank's terms computed here.
fn rank_order_sum<T: Copy>(
    size: usize,
    len: usize,
    term: fn(usize, usize) -> T,
    add: fn(T, T) -> T,
) -> Vec<T> {
    (0..len)
        .map(|index| (1..size).fold(term(0, index), |total, rank| add(total, term(rank, index))))
        .collect()
}

/// Checks that the test data tells the rank order from the other orders of three or more
/// ranks: reversed, and ranks 0 and 2 added first.
fn order_matters(size: usize, len: usize) -> Result<(), Failure> {
    let forward = rank_order_sum(size, len, f32_term, |a, b| a + b);
    let reversed: Vec<f32> = (0..len)
        .map(|index| (0..size).rev().map(|rank| f32_term(rank, index)).sum())
        .collect();
    let zero_two_first: Vec<f32> = (0..len)
        .map(|index| {
            let first = f32_term(0, index) + f32_term(2, index);
            let rest = (1..size).filter(|&rank| rank != 2);
            rest.fold(first, |total, rank| total + f32_term(rank, index))
        })
        .collect();
    for (name, other) in [("reversed", &reversed), ("0 and 2 first", &zero_two_first)] {
        let differ = forward
            .iter()
            .zip(other)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        if differ == 0 {
            return Err(Failure::Wrong(format!(
                "the test data gives the same sums in rank order and in order '{name}'"
            )));
        }
        println!("rank 0: the order '{name}' gives other bits in {differ} of {len} elements");
    }
    Ok(())
}

/// Compares two vectors bit for bit; the error names the kind, the first index that differs
/// and how many do.
fn compare<T: Copy + std::fmt::Debug, B: PartialEq>(
    kind: &str,
    got: &[T],
    expected: &[T],
    bits: fn(T) -> B,
) -> Result<(), Failure> {
    if got.len() != expected.len() {
        return Err(Failure::Wrong(format!(
            "{kind} sum: {} values came back for {}",
            got.len(),
            expected.len()
        )));
    }
    let differ: Vec<usize> = (0..got.len())
        .filter(|&i| bits(got[i]) != bits(expected[i]))
        .collect();
    match differ.first() {
        None => Ok(()),
        Some(&first) => Err(Failure::Wrong(format!(
            "{kind} sum of {} values: {} elements differ from the rank-order sum, the first \
             at {first}: got {:?}, expected {:?}",
            got.len(),
            differ.len(),
            got[first],
            expected[first]
        ))),
    }
}
