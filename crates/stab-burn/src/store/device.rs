//! The device store: copy-on-write snapshots on the training device.

use std::marker::PhantomData;

use burn::module::Module;
use burn::optim::ModuleOptimizer;

use super::{StateStore, StoreMemory, optimizer_state_bytes};
use crate::error::StoreError;
use crate::running_state::RunningStateSnapshot;
use crate::tensors::{self, Selection};

const NAME: &str = "device";

/// Keeps the last accepted state on the device.
///
/// - Parameters: `model.clone()`. burn parameters are immutable tensors behind `Param`, so the
///   clone keeps the accepted values when the optimizer later returns a new module; no weight is
///   copied.
/// - Optimizer state: `optim.clone()`. Each parameter's state is an `Arc`-wrapped value that a
///   step replaces rather than mutates while it is shared, so the clone is a copy-on-write
///   snapshot of the moments and step counts.
/// - Running statistics: shared by every clone of the module, so they are captured separately
///   (pending updates merged, values kept) with a [`RunningStateSnapshot`] and written back on
///   restore.
///
/// Cost: saving is a module traversal and a few `Arc` clones. The device holds, beyond the live
/// state, the running statistics of the snapshot ([`StoreMemory::device_private`]) and, while a
/// step is in flight, the previous parameters and optimizer state
/// ([`StoreMemory::device_shared`]).
#[derive(Debug)]
pub struct DeviceStore<M> {
    snapshot: Option<Snapshot<M>>,
    _model: PhantomData<fn() -> M>,
}

struct Snapshot<M> {
    model: M,
    optim: ModuleOptimizer,
    running: RunningStateSnapshot,
}

impl<M: std::fmt::Debug> std::fmt::Debug for Snapshot<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("model", &self.model)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl<M> Default for DeviceStore<M> {
    fn default() -> Self {
        Self {
            snapshot: None,
            _model: PhantomData,
        }
    }
}

impl<M: Module> DeviceStore<M> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<M: Module> StateStore<M> for DeviceStore<M> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn save(&mut self, model: &M, optim: &ModuleOptimizer) -> Result<(), StoreError> {
        self.snapshot = Some(Snapshot {
            running: RunningStateSnapshot::capture(model),
            model: model.clone(),
            optim: optim.clone(),
        });
        Ok(())
    }

    fn restore(
        &mut self,
        rejected_model: M,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer), StoreError> {
        let snapshot = self
            .snapshot
            .as_ref()
            .ok_or(StoreError::Empty { store: NAME })?;
        // The rejected proposal shares the running statistics with the snapshot; restoring
        // through the snapshot's clone writes the shared values, and drops the rejected step's
        // pending update first.
        drop(rejected_model);
        drop(rejected_optim);
        let model = snapshot.running.restore(snapshot.model.clone())?;
        Ok((model, snapshot.optim.clone()))
    }

    fn memory(&self) -> StoreMemory {
        let Some(snapshot) = &self.snapshot else {
            return StoreMemory::default();
        };
        let parameters = tensors::capture_handles(&snapshot.model, Selection::All).bytes()
            - tensors::capture_handles(&snapshot.model, Selection::Buffers).bytes();
        StoreMemory {
            device_private: snapshot.running.bytes(),
            device_shared: parameters + optimizer_state_bytes(&snapshot.optim),
            host: 0,
            copy_pending: false,
        }
    }
}
