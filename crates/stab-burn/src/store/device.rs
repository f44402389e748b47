//! The device store: copy-on-write snapshots on the training device.

use std::marker::PhantomData;

use burn::module::Module;
use burn::optim::ModuleOptimizer;

use stab_core::{SlotId, SlotTable};

use super::{SlotExport, StateStore, StoreMemory, optimizer_state_bytes};
use crate::error::StoreError;
use crate::fingerprint::read_tensor;
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
    /// Slot 0: the last accepted state; the others: older accepted states (the snapshot ring).
    slots: SlotTable<Snapshot<M>>,
    saves: u64,
    _model: PhantomData<fn() -> M>,
}

#[derive(Clone)]
struct Snapshot<M> {
    /// Which save made it: copies in other slots share the save's tensors.
    generation: u64,
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
            slots: SlotTable::new(),
            saves: 0,
            _model: PhantomData,
        }
    }
}

impl<M: Module> DeviceStore<M> {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn get(&self, slot: SlotId) -> Result<&Snapshot<M>, StoreError> {
        self.slots.get(slot).ok_or(if slot == SlotId::CURRENT {
            StoreError::Empty { store: NAME }
        } else {
            StoreError::EmptySlot { store: NAME, slot }
        })
    }
}

impl<M: Module> StateStore<M> for DeviceStore<M> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn save(&mut self, model: &M, optim: &ModuleOptimizer) -> Result<(), StoreError> {
        self.saves += 1;
        let snapshot = Snapshot {
            generation: self.saves,
            running: RunningStateSnapshot::capture(model),
            model: model.clone(),
            optim: optim.clone(),
        };
        self.slots.put(SlotId::CURRENT, snapshot);
        Ok(())
    }

    fn copy(&mut self, from: SlotId, to: SlotId) -> Result<(), StoreError> {
        let snapshot = self.get(from)?.clone();
        self.slots.put(to, snapshot);
        Ok(())
    }

    fn rewind(
        &mut self,
        slot: SlotId,
        rejected_model: M,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer), StoreError> {
        let snapshot = self.get(slot)?.clone();
        self.slots.put(SlotId::CURRENT, snapshot);
        self.restore(rejected_model, rejected_optim)
    }

    fn release(&mut self, slot: SlotId) -> Result<(), StoreError> {
        self.slots.release(slot);
        Ok(())
    }

    fn restore(
        &mut self,
        rejected_model: M,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer), StoreError> {
        let snapshot = self.get(SlotId::CURRENT)?;
        // The rejected proposal shares the running statistics with the snapshot; restoring
        // through the snapshot's clone writes the shared values, and drops the rejected step's
        // pending update first.
        drop(rejected_model);
        drop(rejected_optim);
        let model = snapshot.running.restore(snapshot.model.clone())?;
        Ok((model, snapshot.optim.clone()))
    }

    fn export(&self, slot: SlotId) -> Result<SlotExport, StoreError> {
        let snapshot = self.get(slot)?;
        // The module clone shares its running statistics with the live module: take every tensor
        // from it, then the running statistics from the values captured at the save.
        let mut captured = tensors::capture_handles(&snapshot.model, Selection::All);
        for (id, (_, handle)) in &snapshot.running.captured().entries {
            if let Some(entry) = captured.entries.get_mut(id) {
                entry.1 = handle.clone();
            }
        }
        let tensors = captured.try_map(|id, meta, tensor| read_tensor(NAME, id, meta, tensor))?;
        let optim = snapshot
            .optim
            .into_bytes()
            .map_err(|e| StoreError::OptimizerRecord {
                store: NAME,
                operation: "serialize",
                message: e.to_string(),
            })?;
        Ok(SlotExport { tensors, optim })
    }

    fn memory(&self) -> StoreMemory {
        // Each slot holding a distinct state keeps its own parameters and optimizer state alive;
        // slots holding the same state (a retain right after a save) share them.
        let mut seen: Vec<u64> = Vec::new();
        let mut memory = StoreMemory::default();
        for snapshot in self.slots.iter() {
            memory.device_private += snapshot.running.bytes();
            if seen.contains(&snapshot.generation) {
                continue;
            }
            seen.push(snapshot.generation);
            let parameters = tensors::capture_handles(&snapshot.model, Selection::All).bytes()
                - tensors::capture_handles(&snapshot.model, Selection::Buffers).bytes();
            memory.device_shared += parameters + optimizer_state_bytes(&snapshot.optim);
        }
        memory.snapshots = self.slots.occupied();
        memory
    }
}
