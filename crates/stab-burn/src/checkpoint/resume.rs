//! Finding the newest checkpoint that verifies, and resuming a guard from it.

use std::path::Path;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::de::DeserializeOwned;
use stab_core::{ProtocolState, ProtocolStateError, SlotId, StepProtocol};

use super::{CheckpointError, EXTRA, LAYOUT, Layout, PROTOCOL, files, model_file, optim_file};
use crate::builder::GuardBuilder;
use crate::fingerprint::state_fingerprint;
use crate::guard::Guard;

/// A checkpoint found by [`latest`], verified (every file's length and CRC-32, the format
/// version, the protocol state and layout parsed): ready for [`GuardBuilder::resume`].
#[derive(Debug)]
pub struct Checkpoint {
    contents: files::Contents,
    /// 0 for the first write of its step, then 1, 2, … for rewrites of the same step.
    generation: u64,
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
    /// They are left on disk.
    pub fn skipped(&self) -> &[CheckpointError] {
        &self.skipped
    }

    /// Its step and generation, the order of checkpoints in a directory.
    pub(crate) fn position(&self) -> (u64, u64) {
        (self.contents.step, self.generation)
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
fn open(entry: &files::Entry) -> Result<Checkpoint, CheckpointError> {
    let (path, step) = (entry.path.as_path(), entry.step);
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
        generation: entry.generation,
        protocol,
        layout,
        skipped: Vec::new(),
    })
}

/// The newest checkpoint in `dir` that verifies completely.
///
/// Newer ones that are damaged or unreadable by this build (a file missing, truncated or
/// corrupt, another format version: [`CheckpointError::is_damage`]) are skipped, never loaded,
/// and listed with why in [`Checkpoint::skipped`]; nothing is removed. Temporary directories of
/// unfinished writes are ignored.
///
/// `Ok(None)` means the directory holds no checkpoint at all (or does not exist): a new run may
/// start there.
///
/// # Errors
/// - [`CheckpointError::NothingVerifies`] when there are checkpoints but none verifies, with
///   each one's reason: resuming is impossible, and starting over would silently abandon them.
/// - [`CheckpointError::Io`] when `dir` cannot be listed or a file cannot be read for another
///   reason than its absence (a transient I/O error, permissions): that is not a damaged
///   checkpoint, and skipping it would resume from an older state than the run reached.
pub fn latest(dir: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    let candidates = files::list(dir)?;
    if candidates.is_empty() {
        return Ok(None);
    }
    let mut skipped = Vec::new();
    for entry in candidates {
        match open(&entry) {
            Ok(mut checkpoint) => {
                checkpoint.skipped = skipped;
                return Ok(Some(checkpoint));
            }
            Err(error) if error.is_damage() => skipped.push(error),
            Err(error) => return Err(error),
        }
    }
    Err(CheckpointError::NothingVerifies {
        dir: dir.to_path_buf(),
        skipped,
    })
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
        .map(|entry| (entry.step, open(&entry).map(|_| ())))
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
