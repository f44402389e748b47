//! The host store: the accepted state offloaded to host memory by a background thread.

use std::marker::PhantomData;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use burn::module::Module;
use burn::optim::{ModuleOptimizer, OptimizerRecord};
use burn::tensor::kind::BridgeTensor;
use burn::tensor::{Bytes, TensorData};

use stab_core::{SlotId, SlotTable};

use super::{SlotExport, StateStore, StoreMemory};
use crate::error::StoreError;
use crate::fingerprint::read_tensor;
use crate::tensors::{self, Captured, Selection};

const NAME: &str = "host";

/// Keeps the last accepted state in host memory, copied there by a background thread.
///
/// `save` does only cheap work on the training thread: it merges pending running-statistic
/// updates and takes copy-on-write handles of every tensor and of the optimizer (the same
/// handles a [`super::DeviceStore`] keeps). A worker thread then reads them to the host (module
/// tensors as `TensorData`, the optimizer as its burnpack record) and drops the handles, so once
/// a copy has landed the store holds no device memory. At most one copy waits: a newer `save`
/// replaces a copy that has not started yet (and frees its handles), so a slow copy never piles
/// up device memory.
///
/// `restore` waits for the copy of the last save, checks that the rejected module has exactly
/// the saved tensors, uploads them onto the devices of the tensors they replace (keeping each
/// parameter's autodiff settings) and loads the optimizer record into the rejected optimizer's
/// configuration. It checks that every optimizer state came back.
///
/// Device reads happen on the worker thread; whether they overlap with training depends on the
/// backend (on a GPU they queue behind the work already submitted). The host buffers are
/// ordinary heap memory: burn 0.22 exposes no pinned allocation for this.
pub struct HostStore<M> {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
    requested: u64,
    /// The ring's older snapshots, by slot (index 0 unused: the current one lives in `shared`).
    /// Finished host snapshots are immutable and shared by `Arc`.
    kept: SlotTable<Arc<HostSnapshot>>,
    _model: PhantomData<fn() -> M>,
}

impl<M> std::fmt::Debug for HostStore<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostStore")
            .field("requested", &self.requested)
            .finish_non_exhaustive()
    }
}

struct Job {
    generation: u64,
    tensors: Captured<BridgeTensor>,
    optim: ModuleOptimizer,
}

/// What the worker produced for one save.
struct HostSnapshot {
    tensors: Captured<TensorData>,
    optim_bytes: Bytes,
    optim_tensors: usize,
    optim_scalars: usize,
    host_bytes: u64,
}

#[derive(Default)]
struct Slot {
    /// The next copy to make; a newer save replaces it.
    pending: Option<Job>,
    /// Set when the store is dropped: the worker finishes its copy and exits.
    shutdown: bool,
    /// Generation of the last finished copy (0: none).
    completed: u64,
    /// Device bytes held by the job in flight.
    in_flight_bytes: u64,
    snapshot: Option<Arc<HostSnapshot>>,
    /// A copy that failed; sticky: every later save, flush and restore reports it.
    failure: Option<StoreError>,
    worker_gone: bool,
}

#[derive(Default)]
struct Shared {
    slot: Mutex<Slot>,
    /// Signalled when a copy finishes (or fails, or the worker stops).
    done: Condvar,
    /// Signalled when a copy is requested or the store shuts down.
    work: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        // A poisoned lock only means the worker panicked while holding it; the slot is plain data.
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<M: Module> HostStore<M> {
    /// An empty store with its copy thread started.
    ///
    /// # Errors
    /// [`StoreError::WorkerUnavailable`] if the thread cannot be spawned.
    pub fn new() -> Result<Self, StoreError> {
        let shared = Arc::new(Shared::default());
        let worker_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("stab-host-store".to_owned())
            .spawn(move || worker(&worker_shared))
            .map_err(|e| StoreError::WorkerUnavailable {
                message: e.to_string(),
            })?;
        Ok(Self {
            shared,
            worker: Some(worker),
            requested: 0,
            kept: SlotTable::new(),
            _model: PhantomData,
        })
    }

    /// Blocks until the copy of the last save has landed in host memory (for benchmarks and
    /// memory reports).
    ///
    /// # Errors
    /// The failure of that copy, if it failed.
    pub fn wait(&self) -> Result<(), StoreError> {
        let slot = self.wait_for_last_save()?;
        drop(slot);
        Ok(())
    }

    fn wait_for_last_save(&self) -> Result<MutexGuard<'_, Slot>, StoreError> {
        let mut slot = self.shared.lock();
        while slot.completed < self.requested && slot.failure.is_none() && !slot.worker_gone {
            slot = self
                .shared
                .done
                .wait(slot)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        if let Some(failure) = &slot.failure {
            return Err(failure.clone());
        }
        if slot.completed < self.requested {
            return Err(StoreError::WorkerUnavailable {
                message: "the copy thread stopped before finishing the last snapshot".to_owned(),
            });
        }
        Ok(slot)
    }

    /// The finished snapshot of the last save.
    fn current(&self) -> Result<Arc<HostSnapshot>, StoreError> {
        let slot = self.wait_for_last_save()?;
        slot.snapshot
            .clone()
            .ok_or(StoreError::Empty { store: NAME })
    }

    fn kept(&self, slot: SlotId) -> Result<Arc<HostSnapshot>, StoreError> {
        if slot == SlotId::CURRENT {
            return self.current();
        }
        self.kept
            .get(slot)
            .cloned()
            .ok_or(StoreError::EmptySlot { store: NAME, slot })
    }
}

/// Uploads a host snapshot into the rejected module's structure and optimizer configuration.
fn restore_from<M: Module>(
    snapshot: &HostSnapshot,
    rejected_model: M,
    rejected_optim: ModuleOptimizer,
) -> Result<(M, ModuleOptimizer), StoreError> {
    // Deserialize and check the optimizer before writing anything into the module.
    let record = OptimizerRecord::from_bytes(snapshot.optim_bytes.clone())
        .map_err(|e| record_error("deserialize", &e))?;
    let optim = rejected_optim.load_record(record);
    let (tensors, scalars) = count_optimizer_state(&optim)?;
    if (tensors, scalars) != (snapshot.optim_tensors, snapshot.optim_scalars) {
        return Err(StoreError::OptimizerStateLost {
            expected_tensors: snapshot.optim_tensors,
            actual_tensors: tensors,
            expected_scalars: snapshot.optim_scalars,
            actual_scalars: scalars,
        });
    }
    tensors::sync_running_states(&rejected_model);
    let model = tensors::restore_into(rejected_model, &snapshot.tensors)?;
    Ok((model, optim))
}

impl<M: Module> StateStore<M> for HostStore<M> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn save(&mut self, model: &M, optim: &ModuleOptimizer) -> Result<(), StoreError> {
        if let Some(failure) = &self.shared.lock().failure {
            return Err(failure.clone());
        }
        tensors::sync_running_states(model);
        let captured = tensors::capture_handles(model, Selection::All);
        self.requested += 1;
        let job = Job {
            generation: self.requested,
            tensors: captured,
            optim: optim.clone(),
        };
        let mut slot = self.shared.lock();
        if slot.worker_gone {
            return Err(StoreError::WorkerUnavailable {
                message: "the copy thread has stopped".to_owned(),
            });
        }
        slot.in_flight_bytes = job.tensors.bytes();
        // Replaces (and frees) a copy that has not started yet.
        slot.pending = Some(job);
        drop(slot);
        self.shared.work.notify_one();
        Ok(())
    }

    fn restore(
        &mut self,
        rejected_model: M,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer), StoreError> {
        let snapshot = self.current()?;
        restore_from(&snapshot, rejected_model, rejected_optim)
    }

    fn copy(&mut self, from: SlotId, to: SlotId) -> Result<(), StoreError> {
        // Copying the current state waits for its background copy (once every few accepted
        // steps, at the ring's cadence).
        let snapshot = self.kept(from)?;
        if to == SlotId::CURRENT {
            self.shared.lock().snapshot = Some(snapshot);
        } else {
            self.kept.put(to, snapshot);
        }
        Ok(())
    }

    fn rewind(
        &mut self,
        slot: SlotId,
        rejected_model: M,
        rejected_optim: ModuleOptimizer,
    ) -> Result<(M, ModuleOptimizer), StoreError> {
        let snapshot = self.kept(slot)?;
        // The copy of the last save has landed (kept() waited, or `slot` is older): nothing in
        // flight can overwrite the rewound snapshot.
        self.wait_for_last_save()?.snapshot = Some(Arc::clone(&snapshot));
        restore_from(&snapshot, rejected_model, rejected_optim)
    }

    fn release(&mut self, slot: SlotId) -> Result<(), StoreError> {
        if slot != SlotId::CURRENT {
            self.kept.release(slot);
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.wait()
    }

    fn export(&self, slot: SlotId) -> Result<SlotExport, StoreError> {
        let snapshot = self.kept(slot)?;
        Ok(SlotExport {
            tensors: snapshot.tensors.clone(),
            optim: snapshot.optim_bytes.clone(),
        })
    }

    fn memory(&self) -> StoreMemory {
        let slot = self.shared.lock();
        let copy_pending = slot.completed < self.requested && !slot.worker_gone;
        // Slots sharing one host snapshot count it once.
        let mut distinct: Vec<&Arc<HostSnapshot>> = Vec::new();
        for snapshot in slot.snapshot.iter().chain(self.kept.iter()) {
            if !distinct.iter().any(|s| Arc::ptr_eq(s, snapshot)) {
                distinct.push(snapshot);
            }
        }
        StoreMemory {
            device_private: if copy_pending {
                slot.in_flight_bytes
            } else {
                0
            },
            device_shared: 0,
            host: distinct.iter().map(|s| s.host_bytes).sum(),
            copy_pending,
            snapshots: usize::from(slot.snapshot.is_some()) + self.kept.occupied(),
        }
    }
}

impl<M> Drop for HostStore<M> {
    fn drop(&mut self) {
        // The worker finishes the copy it is making, drops any pending one and exits.
        self.shared.lock().shutdown = true;
        self.shared.work.notify_all();
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn worker(shared: &Shared) {
    loop {
        let job = {
            let mut slot = shared.lock();
            loop {
                if slot.shutdown {
                    slot.pending = None;
                    slot.worker_gone = true;
                    drop(slot);
                    shared.done.notify_all();
                    return;
                }
                if let Some(job) = slot.pending.take() {
                    break job;
                }
                slot = shared
                    .work
                    .wait(slot)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        };
        let generation = job.generation;
        // A panic inside burn while copying must not leave a restore waiting forever.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| offload(job)))
            .unwrap_or_else(|payload| {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                Err(StoreError::WorkerUnavailable {
                    message: format!("the copy panicked: {message}"),
                })
            });
        let mut slot = shared.lock();
        match result {
            Ok(snapshot) => {
                slot.snapshot = Some(Arc::new(snapshot));
                slot.completed = generation;
            }
            Err(source) => {
                slot.failure = Some(StoreError::BackgroundCopy {
                    generation,
                    source: Box::new(source),
                });
            }
        }
        drop(slot);
        shared.done.notify_all();
    }
}

fn offload(job: Job) -> Result<HostSnapshot, StoreError> {
    let tensors = job
        .tensors
        .try_map(|id, meta, tensor| read_tensor(NAME, id, meta, tensor))?;
    let optim_bytes = job
        .optim
        .into_bytes()
        .map_err(|e| record_error("serialize", &e))?;
    drop(job.optim);
    let (optim_tensors, optim_scalars) = count_record(optim_bytes.clone())?;
    let host_bytes = tensors
        .entries
        .values()
        .map(|(_, data)| data.as_bytes().len() as u64)
        .sum::<u64>()
        + optim_bytes.len() as u64;
    Ok(HostSnapshot {
        tensors,
        optim_bytes,
        optim_tensors,
        optim_scalars,
        host_bytes,
    })
}

/// Number of state tensors and scalars an optimizer holds.
fn count_optimizer_state(optim: &ModuleOptimizer) -> Result<(usize, usize), StoreError> {
    let bytes = optim
        .into_bytes()
        .map_err(|e| record_error("serialize", &e))?;
    count_record(bytes)
}

/// Number of state tensors and scalars in a serialized optimizer record.
fn count_record(bytes: Bytes) -> Result<(usize, usize), StoreError> {
    let reader =
        burn_pack::Reader::from_bytes(bytes).map_err(|e| record_error("deserialize", &e))?;
    Ok((reader.tensor_names().len(), reader.scalars().len()))
}

fn record_error(operation: &'static str, error: &dyn std::fmt::Display) -> StoreError {
    StoreError::OptimizerRecord {
        store: NAME,
        operation,
        message: error.to_string(),
    }
}
