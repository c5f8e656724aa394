//! The MPI transport of a data-parallel run ([`MpiExchange`], feature `mpi`): one process per
//! replica, started by `mpirun`, its sums carried by point-to-point messages in a fixed order.
//! This module owns MPI's lifetime in the process (initialized by [`MpiExchange::init`],
//! finalized when the exchange drops), the order of every sum, and the timeout that turns a
//! lost rank into an `Error::Peer`. What is summed, and when, is the trainer's.
//!
//! A sum is a gather to rank 0 and a broadcast from it, not `MPI_Allreduce`, whose reduction
//! tree is the library's choice: every rank r > 0 sends its vector to rank 0, which adds them
//! in rank order, `((v_0 + v_1) + v_2) + …`, and sends the result back to every rank. So the
//! bits depend on neither the MPI library nor the number of nodes.
//!
//! MPI's blocking calls have no timeout, and while they wait they poll the network at full
//! speed, which on a small machine takes the cores from the (software) GPU driver. So every
//! wait here is a nonblocking call tested in a loop with short sleeps (20 µs, doubling to
//! 1 ms), up to a deadline.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mpi::environment::Universe;
use mpi::point_to_point::Status;
use mpi::request::{Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, Destination, Equivalence, Source};
use mpi::{Tag, Threading};

use super::Exchange;
use crate::error::{Error, Result};

/// The environment variable that sets the exchange's timeout, in seconds (read by
/// [`timeout_from_env`]).
pub const TIMEOUT_ENV: &str = "SOMA_MPI_TIMEOUT";

/// The timeout when [`TIMEOUT_ENV`] is not set.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The first pause between two tests of a pending message, and the longest.
const FIRST_PAUSE: Duration = Duration::from_micros(20);
const LONGEST_PAUSE: Duration = Duration::from_millis(1);

/// The sums of a data-parallel run over the processes of an MPI job (`mpirun -n R`), one
/// replica per process, replica = MPI rank in `MPI_COMM_WORLD`.
///
/// Each sum (`sum_f32`, `sum_u32`) is a gather to rank 0 and a broadcast from it: rank 0
/// adds the vectors in rank order, so every rank gets the bits of `((v_0 + v_1) + v_2) + …`.
/// Rank 0 waits up to the timeout, counted from its own call, for every other rank's vector;
/// the others wait twice as long for the result, so that when a rank r > 0 is lost, rank 0
/// names it before the others give up on rank 0. After a sum fails, the exchange fails
/// every later one (its messages are out of step): call [`MpiExchange::abort`], so that the
/// other ranks stop too instead of waiting for this one.
///
/// MPI is initialized at the `MPI_THREAD_SERIALIZED` level: the exchange may be called from
/// any thread, and it holds a lock through each sum. Drop it on the thread that called
/// `init`, at the end of the run: MPI finalizes then, and cannot start again in the process.
pub struct MpiExchange {
    /// Finalizes MPI when dropped.
    universe: Universe,
    rank: usize,
    size: usize,
    timeout: Duration,
    /// Held through each sum; once a sum has failed, the rank it lost and why.
    broken: Mutex<Option<(usize, String)>>,
}

impl MpiExchange {
    /// Initializes MPI for this process. `timeout` is how long a rank waits for another
    /// before it reports it lost (see [`timeout_from_env`]).
    pub fn init(timeout: Duration) -> Result<MpiExchange> {
        if timeout.is_zero() {
            return Err(Error::Config(format!(
                "the MPI exchange's timeout must be over 0 s (set {TIMEOUT_ENV} in seconds)"
            )));
        }
        if mpi::is_finalized() {
            return Err(Error::Config(
                "MPI has already been finalized in this process (an MpiExchange was dropped), \
                 and it cannot start again: create one MpiExchange per process and keep it \
                 for the whole run"
                    .into(),
            ));
        }
        let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Serialized)
        else {
            return Err(Error::Config(
                "MPI is already initialized in this process: create one MpiExchange per \
                 process (it initializes MPI, and finalizes it when dropped)"
                    .into(),
            ));
        };
        if threading < Threading::Serialized {
            return Err(Error::Config(format!(
                "the MPI library offers threads at level {threading:?} only; the exchange needs \
                 MPI_THREAD_SERIALIZED (one MPI call at a time, from any thread)"
            )));
        }
        let world = universe.world();
        let (rank, size) = (world.rank(), world.size());
        let (Ok(rank), Ok(size)) = (usize::try_from(rank), usize::try_from(size)) else {
            return Err(Error::Config(format!(
                "MPI reports rank {rank} of {size} ranks in MPI_COMM_WORLD"
            )));
        };
        Ok(MpiExchange {
            universe,
            rank,
            size,
            timeout,
            broken: Mutex::new(None),
        })
    }

    /// How long rank 0 waits for another rank's vector (the others wait twice as long for
    /// the result).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The name MPI gives this process's node (`MPI_Get_processor_name`), for logs.
    pub fn processor_name(&self) -> String {
        match mpi::environment::processor_name() {
            Ok(name) => name,
            Err(not_utf8) => String::from_utf8_lossy(not_utf8.as_bytes()).into_owned(),
        }
    }

    /// Ends every process of the job (`MPI_Abort` on `MPI_COMM_WORLD`) with exit code `code`:
    /// what a rank does after an error, so that the others do not wait for it until their
    /// timeout. Does not return.
    pub fn abort(&self, code: i32) -> ! {
        self.universe.world().abort(code)
    }

    fn world(&self) -> SimpleCommunicator {
        self.universe.world()
    }

    /// The lock that serializes the sums, or the failure that broke the exchange.
    fn lock(&self) -> Result<MutexGuard<'_, Option<(usize, String)>>> {
        // A panic inside a sum left its messages in an unknown state: the exchange is broken.
        let mut broken = self.broken.lock().unwrap_or_else(|poisoned| {
            let mut broken = poisoned.into_inner();
            broken.get_or_insert((self.rank, "a sum on this rank panicked".into()));
            broken
        });
        match broken.as_mut() {
            None => Ok(broken),
            Some((rank, message)) => Err(Error::Peer {
                rank: *rank,
                message: format!("an earlier sum failed ({message}); the exchange cannot go on"),
            }),
        }
    }

    /// The sum over the ranks (see [`Exchange::sum_f32`]).
    fn sum<T: Summand>(&self, values: &mut [T]) -> Result<()> {
        let mut broken = self.lock()?;
        if self.size == 1 {
            return Ok(());
        }
        if i32::try_from(values.len()).is_err() {
            return Err(Error::Config(format!(
                "a sum of {} values is over MPI's limit of 2^31 - 1 values per message",
                values.len()
            )));
        }
        let summed = if self.rank == 0 {
            self.gather_and_send(values)
        } else {
            self.send_and_receive(values)
        };
        match summed {
            Ok(()) => Ok(()),
            Err(Lost { rank, message }) => {
                *broken = Some((rank, message.clone()));
                Err(Error::Peer { rank, message })
            }
        }
    }

    /// Rank 0: receives every other rank's vector, in rank order, adds it, and sends the sum
    /// to every rank. Leaves `values` as it was on an error.
    fn gather_and_send<T: Summand>(&self, values: &mut [T]) -> Result<(), Lost> {
        let deadline = Instant::now() + self.timeout;
        let world = self.world();
        let mut sum = values.to_vec();
        let mut incoming = vec![T::default(); values.len()];
        for rank in 1..self.size {
            let source = world.process_at_rank(mpi_rank(rank));
            let Some((message, status)) = poll(deadline, || source.immediate_matched_probe())
            else {
                return Err(Lost::silent(rank, self.timeout));
            };
            if let Err(mismatch) = check::<T>(&status, values.len(), rank) {
                // Not received: the message is abandoned with the exchange.
                std::mem::forget(message);
                return Err(mismatch);
            }
            let received = mpi::request::scope(|scope| {
                let receive = message.immediate_matched_receive_into(scope, &mut incoming[..]);
                settle(receive, Instant::now() + self.timeout)
            });
            if !received {
                // MPI may still write `incoming`.
                std::mem::forget(incoming);
                return Err(Lost::stalled(rank, self.timeout));
            }
            for (total, &term) in sum.iter_mut().zip(&incoming) {
                *total = total.add(term);
            }
        }
        let deadline = Instant::now() + self.timeout;
        let refused = mpi::request::scope(|scope| {
            let sends: Vec<_> = (1..self.size)
                .map(|rank| {
                    let destination = world.process_at_rank(mpi_rank(rank));
                    (
                        rank,
                        destination.immediate_send_with_tag(scope, &sum[..], T::TAG),
                    )
                })
                .collect();
            // After the first failure the deadline has passed: the rest are tested once and,
            // unfinished, abandoned too.
            let mut refused = None;
            for (rank, send) in sends {
                if !settle(send, deadline) {
                    refused = refused.or(Some(rank));
                }
            }
            refused
        });
        if let Some(rank) = refused {
            // MPI may still read `sum`.
            std::mem::forget(sum);
            return Err(Lost {
                rank,
                message: format!(
                    "did not take the sum for {} s: it has stopped or hangs{}",
                    seconds(self.timeout),
                    raise_hint()
                ),
            });
        }
        values.copy_from_slice(&sum);
        Ok(())
    }

    /// A rank r > 0: sends its vector to rank 0 and overwrites `values` with the sum that
    /// rank 0 sends back. Leaves `values` as it was on an error.
    fn send_and_receive<T: Summand>(&self, values: &mut [T]) -> Result<(), Lost> {
        let wait = self.timeout.saturating_mul(2);
        let deadline = Instant::now() + wait;
        let world = self.world();
        let root = world.process_at_rank(0);
        let outgoing = values.to_vec();
        let mut incoming = vec![T::default(); values.len()];
        let summed = mpi::request::scope(|scope| {
            let send = root.immediate_send_with_tag(scope, &outgoing[..], T::TAG);
            let Some((message, status)) = poll(deadline, || root.immediate_matched_probe()) else {
                abandon(send);
                return Err(Lost::silent(0, wait));
            };
            if let Err(mismatch) = check::<T>(&status, values.len(), 0) {
                std::mem::forget(message);
                abandon(send);
                return Err(mismatch);
            }
            let receive = message.immediate_matched_receive_into(scope, &mut incoming[..]);
            if !settle(receive, Instant::now() + self.timeout) {
                abandon(send);
                return Err(Lost::stalled(0, self.timeout));
            }
            // Rank 0 sends the sum after it has received every vector: this send is done,
            // or about to be.
            if !settle(send, Instant::now() + self.timeout) {
                return Err(Lost::stalled(0, self.timeout));
            }
            Ok(())
        });
        if let Err(lost) = summed {
            // MPI may still read `outgoing` and write `incoming`.
            std::mem::forget(outgoing);
            std::mem::forget(incoming);
            return Err(lost);
        }
        values.copy_from_slice(&incoming);
        Ok(())
    }
}

impl Exchange for MpiExchange {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_f32(&self, values: &mut [f32]) -> Result<()> {
        self.sum(values)
    }

    fn sum_u32(&self, values: &mut [u32]) -> Result<()> {
        self.sum(values)
    }

    fn abort(&self, code: i32) -> ! {
        MpiExchange::abort(self, code)
    }
}

/// The exchange's timeout: [`TIMEOUT_ENV`] in seconds (a decimal number over 0, such as `90`
/// or `2.5`), or [`DEFAULT_TIMEOUT`] when it is not set.
pub fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Ok(text) => parse_timeout(&text),
        Err(std::env::VarError::NotPresent) => Ok(DEFAULT_TIMEOUT),
        Err(std::env::VarError::NotUnicode(text)) => Err(bad_timeout(&text.to_string_lossy())),
    }
}

fn parse_timeout(text: &str) -> Result<Duration> {
    text.trim()
        .parse::<f64>()
        .ok()
        .filter(|&seconds| seconds > 0.0)
        .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
        .ok_or_else(|| bad_timeout(text))
}

fn bad_timeout(text: &str) -> Error {
    Error::Config(format!(
        "{TIMEOUT_ENV}={text:?} is not a timeout: give the seconds a rank may wait for another, \
         a number over 0 such as 60 or 2.5 (unset, it is {} s)",
        seconds(DEFAULT_TIMEOUT)
    ))
}

/// A rank that a sum lost, and how.
struct Lost {
    rank: usize,
    message: String,
}

impl Lost {
    /// Nothing came from `rank` within `waited`.
    fn silent(rank: usize, waited: Duration) -> Lost {
        Lost {
            rank,
            message: format!(
                "sent nothing for {} s: it has stopped or hangs{}",
                seconds(waited),
                raise_hint()
            ),
        }
    }

    /// A message from `rank` began to arrive, and did not finish within `waited`.
    fn stalled(rank: usize, waited: Duration) -> Lost {
        Lost {
            rank,
            message: format!(
                "began to send and then sent nothing for {} s: it has stopped or hangs{}",
                seconds(waited),
                raise_hint()
            ),
        }
    }
}

fn raise_hint() -> String {
    format!(" (if it is only slow, raise {TIMEOUT_ENV}, in seconds)")
}

fn seconds(duration: Duration) -> String {
    duration.as_secs_f64().to_string()
}

/// What a sum carries, and how it adds.
trait Summand: Equivalence + Copy + Default {
    /// The tag of this kind's messages, so that ranks that call different sums are found out.
    const TAG: Tag;
    fn add(self, other: Self) -> Self;
}

impl Summand for f32 {
    const TAG: Tag = 1;
    fn add(self, other: f32) -> f32 {
        self + other
    }
}

impl Summand for u32 {
    const TAG: Tag = 2;
    fn add(self, other: u32) -> u32 {
        self.wrapping_add(other)
    }
}

fn kind_of(tag: Tag) -> String {
    match tag {
        <f32 as Summand>::TAG => "an f32 sum".into(),
        <u32 as Summand>::TAG => "a u32 sum".into(),
        other => format!("a message tagged {other}"),
    }
}

/// Checks that the message probed from `rank` is of this sum's kind and length.
fn check<T: Summand>(status: &Status, len: usize, rank: usize) -> Result<(), Lost> {
    if status.tag() != T::TAG {
        return Err(Lost {
            rank,
            message: format!(
                "sent {} where {} expected {}: the ranks call the exchange in different orders",
                kind_of(status.tag()),
                if rank == 0 { "this rank" } else { "rank 0" },
                kind_of(T::TAG)
            ),
        });
    }
    let count = status.count(T::equivalent_datatype());
    if usize::try_from(count).ok() != Some(len) {
        return Err(Lost {
            rank,
            message: format!(
                "sent {count} values to a sum of {len} values: every rank must sum the same length"
            ),
        });
    }
    Ok(())
}

fn mpi_rank(rank: usize) -> i32 {
    // Ranks come from MPI, as an i32.
    i32::try_from(rank).unwrap_or(i32::MAX)
}

/// Calls `attempt` until it gives something or `deadline` passes, sleeping between attempts.
fn poll<R>(deadline: Instant, mut attempt: impl FnMut() -> Option<R>) -> Option<R> {
    let mut pause = FIRST_PAUSE;
    loop {
        if let Some(found) = attempt() {
            return Some(found);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// Waits for `request` up to `deadline`, testing it with sleeps in between. True when it
/// completed; false when it did not, and was abandoned (see [`abandon`]).
fn settle<'a, D: ?Sized, S: Scope<'a>>(request: Request<'a, D, S>, deadline: Instant) -> bool {
    let mut pending = Some(request);
    let done = poll(deadline, || match pending.take()?.test() {
        Ok(_status) => Some(()),
        Err(request) => {
            pending = Some(request);
            None
        }
    });
    if let Some(request) = pending {
        abandon(request);
    }
    done.is_some()
}

/// Gives up on a request that has not completed: it leaves its scope unfinished, and MPI may
/// still use its buffer, so the caller must leak that buffer (`std::mem::forget`) and the
/// exchange fails every later sum.
fn abandon<'a, D: ?Sized, S: Scope<'a>>(request: Request<'a, D, S>) {
    // SAFETY: `into_raw` asks that the request complete while its buffer lives. The request
    // is never completed; instead its buffer is never freed (every caller forgets it), so MPI
    // can still read or write it without touching freed memory.
    let _raw = unsafe { request.into_raw() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_parses_seconds() {
        assert_eq!(parse_timeout("60").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_timeout(" 2.5 ").unwrap(), Duration::from_millis(2500));
        for bad in ["", "0", "-1", "nan", "inf", "1e300", "ten", "5s"] {
            let error = parse_timeout(bad).unwrap_err().to_string();
            assert!(error.contains(TIMEOUT_ENV), "{bad:?}: {error}");
        }
    }

    #[test]
    fn sums_add_in_their_own_arithmetic() {
        assert_eq!(u32::MAX.add(2), 1);
        // f32 holds every eighth integer near 1e8: 1e8 + 1 rounds to 1e8, so
        // (1e8 + 1) + -1e8 is 0, and (1e8 + -1e8) + 1 is 1.
        assert_eq!(1e8f32.add(1.0).add(-1e8), 0.0);
        assert_eq!(1e8f32.add(-1e8).add(1.0), 1.0);
    }
}
