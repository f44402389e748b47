//! Snapshot stores: where the last accepted (model, optimizer) state lives between steps.
//!
//! - [`DeviceStore`]: copy-on-write clones of the parameters and optimizer state plus copies of
//!   the running statistics, all on the device. Saving is nearly free; while a step is in flight
//!   the old and the proposed parameters and optimizer state both exist (up to one extra copy).
//! - [`HostStore`]: the accepted state is copied to host memory on a background thread, so the
//!   training step does not wait; once a copy lands the store holds no device memory at all.
//!   A restore waits for any copy still in flight, then uploads.
//!
//! Both restore bit for bit: parameters, running statistics, optimizer moments and step counts.
//! Both validate the whole target before writing and return a [`StoreError`] instead of
//! restoring part of a state.

mod device;
mod host;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use serde::{Deserialize, Serialize};
use stab_core::SlotId;

pub use device::DeviceStore;
pub use host::HostStore;

use burn::tensor::{Bytes, TensorData};

use crate::error::StoreError;
use crate::tensors::Captured;

/// Keeps the last accepted training state and brings it back exactly.
///
/// stab-core's `SnapshotStore` restores without any input; this Burn-specific trait hands the
/// rejected state to `restore` instead, so that a store which keeps no device tensors (the
/// [`HostStore`]) can rebuild the model inside the module structure it already has. A store may
/// ignore it ([`DeviceStore`] does).
pub trait StateStore<M: Module>: Send {
    /// Short name for reports (`"device"`, `"host"`).
    fn name(&self) -> &'static str;

    /// Replaces the snapshot with the newly accepted state. Called before any later training
    /// forward touches the running statistics.
    ///
    /// # Errors
    /// Store-specific; a [`HostStore`] reports here a background copy that failed earlier.
    fn save(&mut self, model: &M, optim: &ModuleOptimizer) -> Result<(), StoreError>;

    /// Returns an exact copy of the last saved state; `rejected_model` and `rejected_optim` are
    /// the discarded proposal (same module structure and parameter ids).
    ///
    /// # Errors
    /// [`StoreError::Empty`] before any save; a validation error if the state cannot be restored
    /// completely (then nothing has been written).
    fn restore(
        &mut self,
        rejected_model: M,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer), StoreError>;

    /// Makes slot `to` hold the snapshot of slot `from` (the step protocol's snapshot ring;
    /// [`SlotId::CURRENT`] is the last accepted state). Snapshots are immutable, so a store may
    /// share rather than copy.
    ///
    /// # Errors
    /// [`StoreError::EmptySlot`] if `from` holds nothing; store-specific failures.
    fn copy(&mut self, from: SlotId, to: SlotId) -> Result<(), StoreError>;

    /// Makes [`SlotId::CURRENT`] hold the snapshot of `slot` and restores it exactly, like
    /// [`StateStore::restore`]: the state to continue from after a rewind.
    ///
    /// # Errors
    /// [`StoreError::EmptySlot`], or a validation error (then nothing has been written).
    fn rewind(
        &mut self,
        slot: SlotId,
        rejected_model: M,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer), StoreError>;

    /// Frees a slot.
    ///
    /// # Errors
    /// Store-specific.
    fn release(&mut self, slot: SlotId) -> Result<(), StoreError>;

    /// Waits until any background copy of the last save has finished (benchmarks, reports,
    /// shutdown). The default does nothing.
    ///
    /// # Errors
    /// The failure of that copy, if it failed.
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// What the snapshot costs in memory right now. May read the optimizer state to measure it
    /// (a device-to-host copy): meant for reports, not for every step.
    fn memory(&self) -> StoreMemory;

    /// A host copy of the state `slot` holds (parameters, running statistics and optimizer
    /// record), leaving the store unchanged: what a checkpoint ([`crate::checkpoint`]) writes for
    /// each ring slot. Waits for a background copy still in flight.
    ///
    /// # Errors
    /// [`StoreError::EmptySlot`] (or [`StoreError::Empty`]), a failed device read, or
    /// [`StoreError::ExportUnsupported`] from a store that does not implement it (the default).
    fn export(&self, slot: SlotId) -> Result<SlotExport, StoreError> {
        let _ = slot;
        Err(StoreError::ExportUnsupported { store: self.name() })
    }
}

/// A host copy of one snapshot, from [`StateStore::export`]: every tensor of the module keyed by
/// parameter id (running statistics with the values saved with the snapshot) and the optimizer's
/// record. Opaque: [`crate::checkpoint`] turns it into burn's record formats.
pub struct SlotExport {
    pub(crate) tensors: Captured<TensorData>,
    pub(crate) optim: Bytes,
}

impl std::fmt::Debug for SlotExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotExport")
            .field("tensors", &self.tensors.len())
            .field("optimizer_bytes", &self.optim.len())
            .finish()
    }
}

/// Which built-in store a [`crate::GuardConfig`] asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StoreKind {
    /// [`DeviceStore`]: fastest, holds up to one extra copy of the state on the device.
    #[default]
    Device,
    /// [`HostStore`]: background offload to host memory, no extra device memory once copied.
    Host,
}

impl StoreKind {
    /// Builds the store.
    ///
    /// # Errors
    /// [`StoreError::WorkerUnavailable`] if the host store's thread cannot be spawned.
    pub fn build<M: Module + 'static>(self) -> Result<Box<dyn StateStore<M>>, StoreError> {
        Ok(match self {
            Self::Device => Box::new(DeviceStore::<M>::new()),
            Self::Host => Box::new(HostStore::<M>::new()?),
        })
    }
}

/// Memory held by a snapshot, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMemory {
    /// Device bytes only the snapshot keeps alive: copies of running statistics (and, for a host
    /// store, tensors whose background copy has not finished).
    pub device_private: u64,
    /// Device bytes shared copy-on-write with the live state: parameters and optimizer state.
    /// They cost nothing while the live state is the snapshot, and up to their full size while a
    /// step is in flight (old and proposed state both alive).
    pub device_shared: u64,
    /// Host bytes: the offloaded parameters, running statistics and optimizer record.
    pub host: u64,
    /// `true` while a background copy is still running.
    pub copy_pending: bool,
    /// Slots holding a snapshot (the last accepted state and the ring's older ones).
    pub snapshots: usize,
}

/// Bytes of the optimizer's state tensors (reads them to the host to count them).
pub(crate) fn optimizer_state_bytes(optim: &ModuleOptimizer) -> u64 {
    let Ok(bytes) = optim.into_bytes() else {
        return 0;
    };
    burn_pack::Reader::from_bytes(bytes)
        .and_then(burn_pack::Reader::into_tensors)
        .map(|tensors| tensors.iter().map(|t| t.byte_len() as u64).sum())
        .unwrap_or(0)
}
