//! When checkpoints are written: every k accepted steps and after recovery actions.

use std::path::{Path, PathBuf};

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::{CheckpointError, CheckpointInfo};
use crate::guard::Guard;
use crate::report::{StepAction, StepReport};

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
