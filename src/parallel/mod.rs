//! Data-parallel training: one replica of a run per device, each on its fixed shard of every
//! global batch, their gradients summed in a fixed order before every replica applies the
//! same update. This module owns the description of the replicas ([`DataParallel`]) and
//! what carries sums between processes ([`Exchange`]; MPI's is `mpi.rs`, behind the `mpi`
//! feature). Running the replicas is the executor's (`exec/replicas.rs`).
//!
//! The sum of replica gradients g_0 … g_{R-1} is `((g_0 + g_1) + g_2) + …`, elementwise in
//! replica order, whatever carries them: so a run is bitwise reproducible, and R replicas in
//! one process give the same bits as R processes of one replica each on the same adapters.
//! Each replica's loss gradient carries 1/(the global batch's live rows), so the sum is the
//! mean over the global batch.

use crate::error::Result;
use crate::exec::Device;

#[cfg(feature = "mpi")]
pub mod mpi;

/// What carries a data-parallel run's sums between processes: every process holds one
/// replica (its rank), contributes one vector to each sum, and gets back the same result.
pub trait Exchange: Send + Sync {
    /// This process's replica: its rank, 0-based.
    fn rank(&self) -> usize;

    /// Replicas over every process (the number of ranks).
    fn size(&self) -> usize;

    /// Replaces `values` on every rank with the elementwise sum over the ranks' `values`,
    /// added in rank order (`((v_0 + v_1) + v_2) + …`), so that every rank gets the same bits
    /// and they do not depend on the transport's reduction tree. Every rank passes the same
    /// length. A rank that does not answer within the exchange's timeout, or has gone, is an
    /// `Error::Peer` naming it.
    fn sum_f32(&self, values: &mut [f32]) -> Result<()>;

    /// The same for counts (correct predictions), summed exactly (wrapping at 2^32).
    fn sum_u32(&self, values: &mut [u32]) -> Result<()>;

    /// Ends every process of the run with exit code `code`: what a process does after an
    /// error, so that the others stop at once instead of waiting for it until their timeout.
    fn abort(&self, code: i32) -> !;
}

/// Whether any process of a run says yes: `local` summed over the processes, so that all
/// of them take the same decision (stopping at an interrupt that reached only some, say);
/// also a barrier. With no exchange, `local` itself.
pub fn any_agrees(exchange: Option<&dyn Exchange>, local: bool) -> Result<bool> {
    let Some(e) = exchange else {
        return Ok(local);
    };
    let mut count = [local as u32];
    e.sum_u32(&mut count)?;
    Ok(count[0] > 0)
}

/// The replicas of a data-parallel run: the devices this process drives (one replica each,
/// replica `i` on `devices[i]`), or, for a run over several processes, the one device of this
/// process's replica and the exchange between the processes (replica `exchange.rank()`).
pub struct DataParallel<'a> {
    pub devices: Vec<Device<'a>>,
    pub exchange: Option<&'a dyn Exchange>,
    pub overlap: Overlap,
}

/// When a replica's gradients cross the host. The sums are the same either way, bit for bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overlap {
    /// All of them at once, after the whole backward pass: one readback and one exchange
    /// per step.
    #[default]
    Off,
    /// Each layer's as soon as its backward stage is done, while the devices compute the
    /// layers below it (PyTorch DDP's buckets, one per layer): one readback and one
    /// exchange per layer.
    PerLayer,
}

impl std::fmt::Debug for DataParallel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataParallel")
            .field("devices", &self.devices)
            .field("overlap", &self.overlap)
            .field(
                "exchange",
                &self
                    .exchange
                    .map(|e| format!("rank {} of {}", e.rank(), e.size())),
            )
            .finish()
    }
}
