//! Crash-safe checkpoints of a guarded run, and exact resume.
//!
//! A checkpoint holds everything a [`crate::Guard`] needs to continue a run as if it had never stopped:
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
//! Write one with [`crate::Guard::checkpoint_to`], or let a [`Checkpointer`] write them on the cadence
//! of a [`CheckpointPolicy`]. Resume with [`latest`] (the newest checkpoint that verifies) and
//! [`crate::GuardBuilder::resume`].
//!
//! # Durability
//! A checkpoint is a directory written under a temporary name, every file fsynced, a manifest
//! with each file's length and CRC-32 and the format version written last, the directory
//! fsynced, renamed into place under a name no other checkpoint has (a rewrite of a step is a
//! new *generation* beside the old one) and its parent fsynced. A [`Checkpointer`] removes its
//! older checkpoints only once the new one is durable (the newest `keep` are kept), each by a
//! rename to a temporary name before it is deleted. At every instant of a write or a removal,
//! the newest good checkpoint exists under its final name: a process killed at any point leaves
//! the previous checkpoints intact and at most a temporary directory, which [`latest`] ignores
//! and the next write removes. `docs/ARCHITECTURE.md` lists every crash point and its test.
//!
//! # The directory is the user's data
//! Nothing removes a checkpoint it did not write, unless asked: a new run refuses a directory
//! with checkpoints ([`CheckpointError::Occupied`]), [`latest`] skips damaged checkpoints
//! without removing them, says why ([`Checkpoint::skipped`], [`CheckpointError::NothingVerifies`])
//! and treats a failing read as an error, not as damage ([`CheckpointError::is_damage`]).
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

mod error;
mod files;
mod policy;
mod resume;
mod write;

use serde::{Deserialize, Serialize};

pub use error::CheckpointError;
pub use files::{CHECKPOINT_FORMAT_VERSION, WriteHook, WriteStage};
pub use policy::{CheckpointPolicy, Checkpointer};
pub use resume::{Checkpoint, Resumed, Verification, latest, verify_all};
pub use write::CheckpointInfo;

const PROTOCOL: &str = "protocol.json";
const LAYOUT: &str = "layout.json";
const EXTRA: &str = "extra.json";

fn model_file(state: usize) -> String {
    format!("state-{state}.model.bpk")
}

fn optim_file(state: usize) -> String {
    format!("state-{state}.optim.bpk")
}

/// How the states are laid out: which state is live and which state each ring slot holds.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layout {
    states: usize,
    live: usize,
    slots: Vec<Option<usize>>,
}
