//! Crash-safe checkpoints of a guarded run, and exact resume.
//!
//! A checkpoint holds everything a [`Guard`] needs to continue a run as if it had never stopped:
//!
//! - the live model (parameters and running statistics, in burn's record format, burnpack) and
//!   the optimizer's state (its burnpack record);
//! - the model and optimizer state of **every occupied snapshot-ring slot**, so that a rewind
//!   after the resume goes to the same older state the uninterrupted run would have gone to
//!   (states held by several slots are written once);
//! - the step protocol's whole state ([`stab_core::ProtocolState`]: ŷ, detector statistics,
//!   counters, the ring's bookkeeping, the escalation ladder);
//! - an *extra* value of the training loop's own (data position, random generator state,
//!   learning-rate schedule position), any serde type.
//!
//! Write one with [`Guard::checkpoint_to`], or let a [`Checkpointer`] write them on the cadence
//! of a [`CheckpointPolicy`]. Resume with [`latest`] (the newest checkpoint that verifies) and
//! [`GuardBuilder::resume`].
//!
//! # Durability
//! A checkpoint is a directory written under a temporary name, every file fsynced, a manifest
//! with each file's length and CRC-32 and the format version written last, the directory
//! fsynced, renamed into place and its parent fsynced. Older checkpoints are removed only once
//! the new one is durable (the newest `keep` are kept). A process killed at any point leaves the
//! previous checkpoints intact and at most a temporary directory, which [`latest`] ignores and
//! the next write removes.
//!
//! # What resume guarantees
//! On a deterministic backend (Flex, the CPU backend, is), a run resumed from a checkpoint
//! produces bit for bit the parameters, optimizer state and step records of the uninterrupted
//! run, provided the training loop restores its own position from the extra value: the batches
//! it feeds, the learning rate it passes, and any random generator it draws from (burn's own
//! device generator cannot be saved: reseed it from the step index, or draw from a generator
//! whose state is in the extra value). It cannot make a non-deterministic backend (GPU kernels
//! with atomic reductions, for example) repeat itself: there the resumed run is a valid
//! continuation from the exact saved state, not a bit-identical replay.
//!
//! A resumed module gets its parameters' ids from the checkpoint (the optimizer's state is keyed
//! by them); running statistics keep the ids of the module passed to resume (burn does not load
//! those ids), so with [`crate::GuardConfig::verify_restores`] the resumed guard re-fingerprints
//! its snapshots.

mod files;

use std::path::{Path, PathBuf};

use burn::module::{Module, ParamId};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use stab_core::{ProtocolState, ProtocolStateError, SlotId, StepProtocol};
use thiserror::Error;

pub use files::CHECKPOINT_FORMAT_VERSION;

use crate::builder::GuardBuilder;
use crate::error::{GuardError, StoreError};
use crate::fingerprint::state_fingerprint;
use crate::guard::Guard;
use crate::report::{StepAction, StepReport};
use crate::store::SlotExport;

const PROTOCOL: &str = "protocol.json";
const LAYOUT: &str = "layout.json";
const EXTRA: &str = "extra.json";

fn model_file(state: usize) -> String {
    format!("state-{state}.model.bpk")
}

fn optim_file(state: usize) -> String {
    format!("state-{state}.optim.bpk")
}

/// A checkpoint could not be written, verified or resumed. Each variant names the file and says
/// what is wrong with it.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// A file-system operation failed.
    #[error("could not {operation} `{path}`: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done (`"write"`, `"fsync"`, `"rename"`, …).
        operation: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file the checkpoint needs is not there.
    #[error("checkpoint file `{path}` is missing")]
    MissingFile {
        /// The file.
        path: PathBuf,
    },
    /// A file is shorter or longer than its manifest says (a write cut short).
    #[error("checkpoint file `{path}` is truncated: {actual} bytes, the manifest says {expected}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the manifest lists.
        expected: u64,
        /// Bytes found.
        actual: u64,
    },
    /// A file's CRC-32 differs from its manifest's: its contents changed after the write.
    #[error(
        "checkpoint file `{path}` is corrupt: CRC-32 {actual:#010x}, the manifest says {expected:#010x}"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// CRC-32 the manifest lists.
        expected: u32,
        /// CRC-32 of the bytes found.
        actual: u32,
    },
    /// The checkpoint was written in another format version.
    #[error("checkpoint `{path}` has format version {found}; this build reads version {supported}")]
    Version {
        /// The manifest.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// A file verifies but its contents do not make sense (or the manifest does not parse).
    #[error("checkpoint file `{path}` is unusable: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The saved protocol state is refused (another version, configuration or mode).
    #[error("checkpoint file `{path}`: {source}")]
    Protocol {
        /// The protocol state's file.
        path: PathBuf,
        /// Why it is refused.
        #[source]
        source: ProtocolStateError,
    },
    /// A saved model or optimizer state does not fit the module or optimizer given to resume.
    #[error("checkpoint file `{path}` does not fit the module or optimizer: {message}")]
    Record {
        /// The file.
        path: PathBuf,
        /// What burn reported.
        message: String,
    },
    /// The store could not hand out or take back a snapshot.
    #[error("the snapshot store failed while {operation}: {source}")]
    Store {
        /// What was being done.
        operation: &'static str,
        /// What the store reported.
        #[source]
        source: StoreError,
    },
    /// Part of the state could not be serialized (the manifest, the protocol state, the extra
    /// value, a record).
    #[error("could not serialize the {what}: {message}")]
    Serialize {
        /// What.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// The guard could not be rebuilt.
    #[error("could not rebuild the guard: {0}")]
    Guard(#[from] GuardError),
    /// A [`CheckpointPolicy`] value is out of bounds.
    #[error("invalid checkpoint policy: {0}")]
    Policy(String),
}

/// When a [`Checkpointer`] writes, and how many checkpoints it keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointPolicy {
    /// Write after every `every_accepted`-th accepted step (counted by the guard's counters),
    /// 1 to 1 000 000.
    pub every_accepted: u64,
    /// Checkpoints kept on disk, newest first, 1 to 1 000.
    pub keep: usize,
    /// Also write after each recovery action of the escalation ladder (a rewind or an optimizer
    /// reset), so that a crash right after one does not resume from before it.
    pub on_recovery: bool,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        Self {
            every_accepted: 100,
            keep: 2,
            on_recovery: true,
        }
    }
}

impl CheckpointPolicy {
    /// Checks the bounds.
    ///
    /// # Errors
    /// [`CheckpointError::Policy`] naming the value out of bounds.
    pub fn validate(&self) -> Result<(), CheckpointError> {
        if !(1..=1_000_000).contains(&self.every_accepted) {
            return Err(CheckpointError::Policy(format!(
                "every_accepted = {} is outside 1..=1000000",
                self.every_accepted
            )));
        }
        if !(1..=1000).contains(&self.keep) {
            return Err(CheckpointError::Policy(format!(
                "keep = {} is outside 1..=1000",
                self.keep
            )));
        }
        Ok(())
    }

    /// Whether the step that produced `report` calls for a checkpoint, given the guard's
    /// accepted-step count after it.
    pub fn due(&self, report: &StepReport) -> bool {
        match report.action {
            StepAction::Commit | StepAction::Calibrate => {
                report.counters.accepted > 0
                    && report.counters.accepted.is_multiple_of(self.every_accepted)
            }
            StepAction::Rewind { .. } | StepAction::ResetOptimizer => self.on_recovery,
            _ => false,
        }
    }
}

/// What a written checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its directory.
    pub path: PathBuf,
    /// The index of the next step of the saved run.
    pub step: u64,
    /// Distinct (model, optimizer) states written: the live one and the ring's.
    pub states: usize,
    /// Bytes of all its files.
    pub bytes: u64,
}

/// How the states are laid out: which state is live and which state each ring slot holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    states: usize,
    live: usize,
    slots: Vec<Option<usize>>,
}

/// Writes checkpoints on the cadence of a [`CheckpointPolicy`]: call
/// [`Checkpointer::after_step`] after every guarded step.
#[derive(Debug, Clone)]
pub struct Checkpointer {
    dir: PathBuf,
    policy: CheckpointPolicy,
}

impl Checkpointer {
    /// Checkpoints into `dir` (created on the first write) following `policy`.
    ///
    /// # Errors
    /// [`CheckpointError::Policy`] if the policy is out of bounds.
    pub fn new(dir: impl Into<PathBuf>, policy: CheckpointPolicy) -> Result<Self, CheckpointError> {
        policy.validate()?;
        Ok(Self {
            dir: dir.into(),
            policy,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The policy.
    pub fn policy(&self) -> &CheckpointPolicy {
        &self.policy
    }

    /// Writes a checkpoint if the step that produced `report` calls for one. `model` is the model
    /// the step returned and `extra` the training loop's own state *after* this step (what it
    /// needs to continue with the next one).
    ///
    /// # Errors
    /// As [`Guard::checkpoint_to`].
    pub fn after_step<M: Module + 'static, E: Serialize>(
        &self,
        guard: &Guard<M>,
        model: &M,
        report: &StepReport,
        extra: &E,
    ) -> Result<Option<CheckpointInfo>, CheckpointError> {
        if !self.policy.due(report) {
            return Ok(None);
        }
        guard
            .checkpoint_to(model, &self.dir, self.policy.keep, extra)
            .map(Some)
    }
}

fn serialize<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CheckpointError> {
    serde_json::to_vec(value).map_err(|e| CheckpointError::Serialize {
        what,
        message: e.to_string(),
    })
}

fn record_bytes(bytes: Bytes) -> Vec<u8> {
    bytes.to_vec()
}

/// The burnpack record of a module: the live module's record (same paths and ids), with every
/// tensor's data taken from a ring slot's export if one is given. Every module file is written by
/// this one writer, so equal states have equal bytes.
fn model_record(
    live_record: &Bytes,
    export: Option<&SlotExport>,
) -> Result<Vec<u8>, CheckpointError> {
    let error = |message: String| CheckpointError::Serialize {
        what: "snapshot's module record",
        message,
    };
    let tensors = burn_pack::Reader::from_bytes(live_record.clone())
        .and_then(burn_pack::Reader::into_tensors)
        .map_err(|e| error(e.to_string()))?;
    let mut out = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let (name, dtype, shape, param_id, live_bytes) =
            tensor.into_parts().map_err(|e| error(e.to_string()))?;
        let Some(export) = export else {
            out.push(burn_pack::Tensor::new(
                name, dtype, shape, param_id, live_bytes,
            ));
            continue;
        };
        let id = param_id.ok_or_else(|| error(format!("`{name}` has no parameter id")))?;
        let (_, data) = export
            .tensors
            .entries
            .get(&ParamId::from(id))
            .ok_or_else(|| error(format!("the snapshot holds no value for `{name}`")))?;
        if data.dtype() != dtype || *data.shape() != shape {
            return Err(error(format!(
                "`{name}`: the snapshot holds {:?} {:?}, the record {dtype:?} {shape:?}",
                data.dtype(),
                data.shape()
            )));
        }
        let (bytes, _, _) = data.clone().into_parts();
        out.push(burn_pack::Tensor::new(name, dtype, shape, Some(id), bytes));
    }
    if let Some(export) = export
        && out.len() != export.tensors.len()
    {
        return Err(error(format!(
            "the snapshot holds {} tensors, the live module {}",
            export.tensors.len(),
            out.len()
        )));
    }
    burn_pack::Writer::new(out)
        .into_bytes()
        .map(record_bytes)
        .map_err(|e| error(e.to_string()))
}

/// The contents of an optimizer record, independent of the order burn wrote them in (its state
/// lives in a hash map, so two records of one state may list their tensors differently).
fn optimizer_contents(bytes: &[u8]) -> Option<impl PartialEq + use<>> {
    let reader = burn_pack::Reader::from_bytes(Bytes::from_bytes_vec(bytes.to_vec())).ok()?;
    let metadata = reader.metadata().clone();
    let scalars: Vec<(String, String)> = reader
        .scalars()
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect();
    let mut tensors = Vec::new();
    for tensor in reader.into_tensors().ok()? {
        let (name, dtype, shape, id, data) = tensor.into_parts().ok()?;
        tensors.push((name, format!("{dtype:?} {shape:?} {id:?}"), data.to_vec()));
    }
    tensors.sort();
    Some((metadata, scalars, tensors))
}

/// Whether two saved (model, optimizer) states are the same state.
fn same_state(a: &(Vec<u8>, Vec<u8>), b: &(Vec<u8>, Vec<u8>)) -> bool {
    a.0 == b.0
        && (a.1 == b.1 || {
            let (x, y) = (optimizer_contents(&a.1), optimizer_contents(&b.1));
            x.is_some() && x == y
        })
}

impl<M: Module + 'static> Guard<M> {
    /// Writes a checkpoint of the run into `dir` (see [`crate::checkpoint`]): `model`
    /// (the model the last step returned), the optimizer, every ring slot's state, the step
    /// protocol's state and `extra`, the training loop's own state. Keeps the newest `keep`
    /// checkpoints (at least 1). Call it between steps.
    ///
    /// # Errors
    /// [`CheckpointError::Protocol`] in the middle of a step or after the run stopped; a store
    /// that cannot export ([`StoreError::ExportUnsupported`]); a serialization or file-system
    /// error (then the previous checkpoints are untouched).
    pub fn checkpoint_to<E: Serialize>(
        &self,
        model: &M,
        dir: &Path,
        keep: usize,
        extra: &E,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let protocol =
            self.protocol()
                .save_state()
                .map_err(|source| CheckpointError::Protocol {
                    path: dir.join(PROTOCOL),
                    source,
                })?;
        let protocol_json = serialize("protocol state", &protocol)?;
        // Every value must parse back exactly (a non-finite number would not).
        match serde_json::from_slice::<ProtocolState>(&protocol_json) {
            Ok(parsed) if parsed == protocol => {}
            _ => {
                return Err(CheckpointError::Serialize {
                    what: "protocol state",
                    message: "it does not parse back to the same values".to_owned(),
                });
            }
        }

        crate::running_state::sync_running_states(model);
        let live_record =
            model
                .clone()
                .into_record()
                .into_bytes()
                .map_err(|e| CheckpointError::Serialize {
                    what: "module record",
                    message: e.to_string(),
                })?;
        let live_optim = self
            .optimizer()
            .into_bytes()
            .map_err(|e| CheckpointError::Serialize {
                what: "optimizer record",
                message: e.to_string(),
            })?;
        let mut states: Vec<(Vec<u8>, Vec<u8>)> =
            vec![(model_record(&live_record, None)?, record_bytes(live_optim))];
        let mut slots = Vec::new();
        for (index, position) in protocol.slot_positions().into_iter().enumerate() {
            if position.is_none() {
                slots.push(None);
                continue;
            }
            let slot = SlotId(u8::try_from(index).unwrap_or(u8::MAX));
            let export = self
                .store()
                .export(slot)
                .map_err(|source| CheckpointError::Store {
                    operation: "exporting a snapshot",
                    source,
                })?;
            let state = (
                model_record(&live_record, Some(&export))?,
                export.optim.to_vec(),
            );
            let index = match states.iter().position(|s| same_state(s, &state)) {
                Some(existing) => existing,
                None => {
                    states.push(state);
                    states.len() - 1
                }
            };
            slots.push(Some(index));
        }
        let layout = Layout {
            states: states.len(),
            live: 0,
            slots,
        };
        let mut files = vec![
            (PROTOCOL.to_owned(), protocol_json),
            (LAYOUT.to_owned(), serialize("layout", &layout)?),
            (EXTRA.to_owned(), serialize("extra value", extra)?),
        ];
        for (index, (model_bytes, optim_bytes)) in states.into_iter().enumerate() {
            files.push((model_file(index), model_bytes));
            files.push((optim_file(index), optim_bytes));
        }
        let bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
        let step = protocol.next_step();
        let path = files::write(dir, step, &files, keep)?;
        Ok(CheckpointInfo {
            path,
            step,
            states: layout.states,
            bytes,
        })
    }
}

/// A checkpoint found by [`latest`], verified (every file's length and CRC-32, the format
/// version, the protocol state and layout parsed): ready for [`GuardBuilder::resume`].
#[derive(Debug)]
pub struct Checkpoint {
    contents: files::Contents,
    protocol: ProtocolState,
    layout: Layout,
    skipped: Vec<CheckpointError>,
}

impl Checkpoint {
    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.contents.path
    }

    /// The index of the next step of the saved run.
    pub fn step(&self) -> u64 {
        self.contents.step
    }

    /// Bytes of its files.
    pub fn bytes(&self) -> u64 {
        self.contents.bytes()
    }

    /// Newer checkpoints that were refused, with why (truncated, corrupt, another version).
    pub fn skipped(&self) -> &[CheckpointError] {
        &self.skipped
    }

    /// The saved protocol state.
    pub fn protocol(&self) -> &ProtocolState {
        &self.protocol
    }

    /// The training loop's extra value.
    ///
    /// # Errors
    /// [`CheckpointError::Corrupt`] if it does not deserialize as `E`.
    pub fn extra<E: DeserializeOwned>(&self) -> Result<E, CheckpointError> {
        serde_json::from_slice(self.contents.file(EXTRA)?).map_err(|e| CheckpointError::Corrupt {
            path: self.contents.path.join(EXTRA),
            reason: format!("the extra value does not deserialize: {e}"),
        })
    }
}

/// Reads and checks one checkpoint directory.
fn open(path: &Path, step: u64) -> Result<Checkpoint, CheckpointError> {
    let contents = files::read(path, step)?;
    let corrupt = |file: &str, reason: String| CheckpointError::Corrupt {
        path: path.join(file),
        reason,
    };
    let protocol: ProtocolState = serde_json::from_slice(contents.file(PROTOCOL)?)
        .map_err(|e| corrupt(PROTOCOL, format!("the protocol state does not parse: {e}")))?;
    if protocol.version() != stab_core::PROTOCOL_STATE_VERSION {
        return Err(CheckpointError::Protocol {
            path: path.join(PROTOCOL),
            source: ProtocolStateError::Version {
                found: protocol.version(),
                supported: stab_core::PROTOCOL_STATE_VERSION,
            },
        });
    }
    if protocol.next_step() != step {
        return Err(corrupt(
            PROTOCOL,
            format!(
                "step {} in a checkpoint of step {step}",
                protocol.next_step()
            ),
        ));
    }
    let layout: Layout = serde_json::from_slice(contents.file(LAYOUT)?)
        .map_err(|e| corrupt(LAYOUT, format!("the layout does not parse: {e}")))?;
    let positions = protocol.slot_positions();
    let fits = layout.live < layout.states
        && layout.slots.len() == positions.len()
        && layout
            .slots
            .iter()
            .zip(&positions)
            .all(|(s, p)| s.is_some() == p.is_some() && s.is_none_or(|s| s < layout.states));
    if !fits {
        return Err(corrupt(
            LAYOUT,
            "it does not fit the protocol state".to_owned(),
        ));
    }
    for state in 0..layout.states {
        contents.file(&model_file(state))?;
        contents.file(&optim_file(state))?;
    }
    contents.file(EXTRA)?;
    Ok(Checkpoint {
        contents,
        protocol,
        layout,
        skipped: Vec::new(),
    })
}

/// The newest checkpoint in `dir` that verifies completely, or `None` if there is none. Newer
/// ones that fail (truncated, corrupt, another format version) are skipped, never loaded, and
/// listed in [`Checkpoint::skipped`]; temporary directories of unfinished writes are ignored.
///
/// # Errors
/// [`CheckpointError::Io`] if `dir` cannot be listed.
pub fn latest(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let mut skipped = Vec::new();
    for (step, path) in files::list(dir)? {
        match open(&path, step) {
            Ok(mut checkpoint) => {
                checkpoint.skipped = skipped;
                return Ok(Some(checkpoint));
            }
            Err(error) => skipped.push(error),
        }
    }
    Ok(None)
}

/// One checkpoint's step and whether it verifies (and if not, why), from [`verify_all`].
pub type Verification = (u64, Result<(), CheckpointError>);

/// Every checkpoint in `dir`, newest first, with whether it verifies and why not (for reports and
/// tests).
///
/// # Errors
/// [`CheckpointError::Io`] if `dir` cannot be listed.
pub fn verify_all(dir: &Path) -> Result<Vec<Verification>, CheckpointError> {
    Ok(files::list(dir)?
        .into_iter()
        .map(|(step, path)| (step, open(&path, step).map(|_| ())))
        .collect())
}

/// A run resumed by [`GuardBuilder::resume`].
pub struct Resumed<M: Module, E> {
    /// The guard, in the state it had when the checkpoint was written.
    pub guard: Guard<M>,
    /// The model to continue with.
    pub model: M,
    /// The training loop's extra value.
    pub extra: E,
    /// The index of the next step.
    pub step: u64,
}

impl<M: Module, E: std::fmt::Debug> std::fmt::Debug for Resumed<M, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumed")
            .field("step", &self.step)
            .field("extra", &self.extra)
            .finish_non_exhaustive()
    }
}

/// Loads one saved (model, optimizer) state into fresh copies of `model` and `optim`.
fn load_state<M: Module>(
    checkpoint: &Checkpoint,
    state: usize,
    model: &M,
    optim: &ModuleOptimizer,
) -> Result<(M, ModuleOptimizer), CheckpointError> {
    let path = checkpoint.path();
    let model_name = model_file(state);
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(
        checkpoint.contents.file(&model_name)?.to_vec(),
    ))
    .map_err(|e| CheckpointError::Record {
        path: path.join(&model_name),
        message: e.to_string(),
    })?;
    let loaded = model
        .clone()
        .try_load_record(record)
        .map_err(|e| CheckpointError::Record {
            path: path.join(&model_name),
            message: e.to_string(),
        })?;
    let optim_name = optim_file(state);
    let optim_bytes = checkpoint.contents.file(&optim_name)?;
    let loaded_optim = optim
        .clone()
        .from_bytes(Bytes::from_bytes_vec(optim_bytes.to_vec()))
        .map_err(|e| CheckpointError::Record {
            path: path.join(&optim_name),
            message: e.to_string(),
        })?;
    // burn skips optimizer states it cannot rebuild: check that all came back.
    let count = |bytes: Bytes| {
        burn_pack::Reader::from_bytes(bytes)
            .map(|r| (r.tensor_names().len(), r.scalars().len()))
            .map_err(|e| e.to_string())
    };
    let saved = count(Bytes::from_bytes_vec(optim_bytes.to_vec()));
    let restored = loaded_optim
        .into_bytes()
        .map_err(|e| e.to_string())
        .and_then(count);
    if saved != restored {
        return Err(CheckpointError::Record {
            path: path.join(&optim_name),
            message: format!(
                "the optimizer took back {restored:?} (tensors, scalars) of the saved {saved:?}"
            ),
        });
    }
    Ok((loaded, loaded_optim))
}

impl<M: Module + 'static> GuardBuilder<M> {
    /// Builds the guard of a run resumed from `checkpoint` (from [`latest`]) instead of starting
    /// one: `model` and `optim` give the module structure and the optimizer's configuration
    /// (built as for a fresh run; their values are replaced), the builder gives the probe,
    /// observers and store as for [`GuardBuilder::build`]. The configuration must be the one the
    /// checkpoint was written with (controller configuration and mode are checked).
    ///
    /// Nothing is measured: the saved ŷ, detectors and snapshots are used as they were.
    ///
    /// # Errors
    /// A configuration or mode that differs from the checkpoint's
    /// ([`CheckpointError::Protocol`]), a saved state that does not fit `model` or `optim`
    /// ([`CheckpointError::Record`]), an extra value that does not deserialize as `E`, or the
    /// errors of [`GuardBuilder::build`].
    pub fn resume<E: DeserializeOwned>(
        self,
        checkpoint: &Checkpoint,
        model: M,
        optim: ModuleOptimizer,
    ) -> Result<Resumed<M, E>, CheckpointError> {
        let extra = checkpoint.extra::<E>()?;
        // Build as for a fresh run (y₀ given: nothing is measured), then put the saved states
        // in place of the initial one.
        let mut guard = self.initial_measurement(0.0).build(&model, optim.clone())?;
        let config = guard.config().clone();
        let mut protocol =
            StepProtocol::from_state(&config.controller, config.mode, checkpoint.protocol.clone())
                .map_err(|source| CheckpointError::Protocol {
                    path: checkpoint.path().join(PROTOCOL),
                    source,
                })?;
        if !config.monitor {
            protocol.disable_monitor();
        }
        let layout = &checkpoint.layout;
        let store_error = |operation| move |source| CheckpointError::Store { operation, source };
        // Ring slots first (the current slot last), then the live state: every state loads its
        // running statistics into the shared ones of `model`, so the live one must come last.
        let current = layout.slots.first().copied().flatten();
        let mut order: Vec<usize> = Vec::new();
        for &state in layout.slots.iter().flatten() {
            if Some(state) != current && !order.contains(&state) {
                order.push(state);
            }
        }
        order.extend(current);
        let (store, optimizer) = guard.resume_parts();
        for state in order {
            let (loaded, loaded_optim) = load_state(checkpoint, state, &model, &optim)?;
            let fingerprint = if config.verify_restores {
                Some(
                    state_fingerprint(&loaded, &loaded_optim)
                        .map_err(store_error("fingerprinting a snapshot"))?,
                )
            } else {
                None
            };
            store
                .save(&loaded, &loaded_optim)
                .map_err(store_error("loading a snapshot"))?;
            for (index, slot) in layout.slots.iter().enumerate() {
                let id = SlotId(u8::try_from(index).unwrap_or(u8::MAX));
                if *slot == Some(state) {
                    if index != 0 {
                        store
                            .copy(SlotId::CURRENT, id)
                            .map_err(store_error("loading a snapshot"))?;
                    }
                    protocol.set_slot_fingerprint(id, fingerprint);
                }
            }
        }
        for (index, slot) in layout.slots.iter().enumerate().skip(1) {
            if slot.is_none() {
                store
                    .release(SlotId(u8::try_from(index).unwrap_or(u8::MAX)))
                    .map_err(store_error("releasing a slot"))?;
            }
        }
        let (model, live_optim) = load_state(checkpoint, layout.live, &model, &optim)?;
        *optimizer = live_optim;
        guard.replace_protocol(protocol);
        Ok(Resumed {
            guard,
            model,
            extra,
            step: checkpoint.step(),
        })
    }
}
