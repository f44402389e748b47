//! Exact snapshots of BatchNorm running statistics (and every other `RunningState`).
//!
//! # Why a module clone is not a snapshot of them
//!
//! Parameters are immutable tensors: `model.clone()` keeps the old values when the optimizer
//! later returns a new module. burn's `RunningState` is different: it derives `Clone` over an
//! `Arc<Mutex<…>>`, so every clone of a module shares the same running statistics, and a
//! training-mode forward writes through that shared handle. The write is also deferred: it sits
//! as a *per-thread pending value* until the next `value_sync()` on that thread merges it (or
//! `Module::valid`, which merges the pending values of all threads).
//!
//! So a snapshot (1) merges every pending value, then (2) keeps the merged tensors; a restore
//! (1) merges every pending value, so that the rejected step's update cannot be merged later over
//! the restored statistics, then (2) writes the saved tensors back through the shared handle.
//! Keeping the tensor handle is as good as a deep copy of the value: an update replaces the
//! shared value with a new tensor instead of writing into the old one, and burn reuses a buffer
//! in place only when no other handle shares it (the snapshot's handle does). The snapshot's
//! device cost is therefore exactly the bytes of the statistics, once the live ones have moved on.

use burn::module::Module;
use burn::tensor::kind::BridgeTensor;

use crate::error::StoreError;
use crate::tensors::{self, Captured, Selection};

/// Merges the pending per-thread updates of every running statistic in `model` into its shared
/// value. Cheap: builds and drops the module's validation view; no tensor data is copied.
pub fn sync_running_states<M: Module>(model: &M) {
    tensors::sync_running_states(model);
}

/// The running statistics of a module at one instant: every float tensor that does not require
/// gradients (BatchNorm running mean and variance, any `RunningState`, frozen parameters).
#[derive(Debug, Clone)]
pub struct RunningStateSnapshot {
    captured: Captured<BridgeTensor>,
}

impl RunningStateSnapshot {
    /// Merges every pending update, then keeps the current values. Works from any thread: the
    /// merge covers updates made by forwards on other threads too.
    pub fn capture<M: Module>(model: &M) -> Self {
        tensors::sync_running_states(model);
        Self {
            captured: tensors::capture_handles(model, Selection::Buffers),
        }
    }

    /// Writes the saved values back into `model`'s running statistics (shared by all its
    /// clones), after discarding any update still pending in any thread.
    ///
    /// # Errors
    /// [`StoreError::MissingTensor`], [`StoreError::UnexpectedTensor`] or [`StoreError::Mismatch`]
    /// if `model` does not have exactly the running statistics that were captured; nothing is
    /// written then.
    pub fn restore<M: Module>(&self, model: M) -> Result<M, StoreError> {
        tensors::sync_running_states(&model);
        tensors::restore_into(model, &self.captured)
    }

    /// The captured handles, by parameter id (for a store's export).
    pub(crate) fn captured(&self) -> &Captured<BridgeTensor> {
        &self.captured
    }

    /// Number of tensors held.
    pub fn len(&self) -> usize {
        self.captured.len()
    }

    /// `true` if the module has no running statistics.
    pub fn is_empty(&self) -> bool {
        self.captured.len() == 0
    }

    /// Device bytes of the held values. They stay alive only through this snapshot once the live
    /// module has taken its next training step, so this is the device memory the snapshot costs.
    pub fn bytes(&self) -> u64 {
        self.captured.bytes()
    }
}
