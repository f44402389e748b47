//! When checkpoints are written: every k accepted steps and after recovery actions.

use std::path::{Path, PathBuf};

use burn::module::Module;
use serde::{Deserialize, Serialize};

use super::files::{self, WriteHook, WriteStage};
use super::{Checkpoint, CheckpointError, CheckpointInfo};
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

/// Writes checkpoints on the cadence of a [`CheckpointPolicy`] and keeps the newest
/// [`CheckpointPolicy::keep`] of its own: call [`Checkpointer::after_step`] after every guarded
/// step.
///
/// A checkpoint directory is the user's data. A checkpointer only ever removes the checkpoints
/// it *owns*: those it wrote, and, when it continues a resumed run
/// ([`Checkpointer::resuming`]), the checkpoint resumed from and the older ones of that run.
/// It never removes anything else: a new run refuses a directory that holds checkpoints
/// ([`CheckpointError::Occupied`]) unless told to discard them
/// ([`Checkpointer::discarding_existing`]), and checkpoints newer than the one resumed from
/// (skipped by [`super::latest`] as damaged or written by another version) stay where they are.
pub struct Checkpointer {
    dir: PathBuf,
    policy: CheckpointPolicy,
    /// The checkpoints it may remove, oldest first.
    owned: Vec<PathBuf>,
    hook: Box<WriteHook>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("dir", &self.dir)
            .field("policy", &self.policy)
            .field("owned", &self.owned)
            .finish_non_exhaustive()
    }
}

impl Checkpointer {
    /// Checkpoints of a new run into `dir` (created on the first write) following `policy`.
    ///
    /// # Errors
    /// [`CheckpointError::Policy`] if the policy is out of bounds; [`CheckpointError::Occupied`]
    /// if `dir` already holds checkpoints (they are left alone); [`CheckpointError::Io`] if `dir`
    /// cannot be listed.
    pub fn new(dir: impl Into<PathBuf>, policy: CheckpointPolicy) -> Result<Self, CheckpointError> {
        let checkpointer = Self::unchecked(dir.into(), policy)?;
        let found = files::list(&checkpointer.dir)?;
        if !found.is_empty() {
            return Err(CheckpointError::Occupied {
                dir: checkpointer.dir,
                found: found.into_iter().map(|e| e.path).collect(),
            });
        }
        Ok(checkpointer)
    }

    /// Checkpoints of a run resumed from `checkpoint` (from [`super::latest`]) into `dir`.
    ///
    /// When `checkpoint` is in `dir`, it and the older checkpoints there are the resumed run's
    /// history: the checkpointer owns them, and removes the oldest as it writes new ones (the
    /// newest `keep` stay). Newer ones are never removed. When `checkpoint` is elsewhere, `dir`
    /// is treated as for [`Checkpointer::new`].
    ///
    /// # Errors
    /// As [`Checkpointer::new`] (an occupied `dir` only when `checkpoint` is not in it).
    pub fn resuming(
        dir: impl Into<PathBuf>,
        policy: CheckpointPolicy,
        checkpoint: &Checkpoint,
    ) -> Result<Self, CheckpointError> {
        let mut checkpointer = Self::unchecked(dir.into(), policy)?;
        let parent = checkpoint.path().parent().unwrap_or(Path::new(""));
        if !same_directory(parent, &checkpointer.dir) {
            return Self::new(checkpointer.dir, checkpointer.policy);
        }
        let resumed = checkpoint.position();
        let mut history: Vec<_> = files::list(&checkpointer.dir)?
            .into_iter()
            .filter(|e| (e.step, e.generation) <= resumed)
            .collect();
        history.reverse();
        checkpointer.owned = history.into_iter().map(|e| e.path).collect();
        Ok(checkpointer)
    }

    /// Checkpoints of a new run into `dir`, after removing every checkpoint in it: for a user
    /// who asked for a fresh start explicitly (a `--fresh` flag). Each removal is crash-safe (see
    /// [`WriteStage::RenameForRemoval`]).
    ///
    /// # Errors
    /// As [`Checkpointer::new`], and a removal that fails.
    pub fn discarding_existing(
        dir: impl Into<PathBuf>,
        policy: CheckpointPolicy,
    ) -> Result<Self, CheckpointError> {
        let mut checkpointer = Self::unchecked(dir.into(), policy)?;
        for entry in files::list(&checkpointer.dir)? {
            files::remove(&checkpointer.dir, &entry.path, checkpointer.hook.as_mut())?;
        }
        Ok(checkpointer)
    }

    /// Runs `hook` before every stage of each write and removal (see [`WriteStage`]): to report
    /// progress, or, in tests, to stop a write at a chosen stage as a crash or a full disk would.
    #[must_use]
    pub fn with_write_hook(
        mut self,
        hook: impl FnMut(&WriteStage<'_>) -> std::io::Result<()> + Send + 'static,
    ) -> Self {
        self.hook = Box::new(hook);
        self
    }

    fn unchecked(dir: PathBuf, policy: CheckpointPolicy) -> Result<Self, CheckpointError> {
        policy.validate()?;
        Ok(Self {
            dir,
            policy,
            owned: Vec::new(),
            hook: Box::new(|_| Ok(())),
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

    /// The checkpoints it owns and may remove as it writes newer ones, oldest first.
    pub fn owned(&self) -> &[PathBuf] {
        &self.owned
    }

    /// Writes a checkpoint if the step that produced `report` calls for one (see
    /// [`Checkpointer::write`]). `model` is the model the step returned and `extra` the training
    /// loop's own state *after* this step (what it needs to continue with the next one).
    ///
    /// # Errors
    /// As [`Checkpointer::write`].
    pub fn after_step<M: Module + 'static, E: Serialize>(
        &mut self,
        guard: &Guard<M>,
        model: &M,
        report: &StepReport,
        extra: &E,
    ) -> Result<Option<CheckpointInfo>, CheckpointError> {
        if !self.policy.due(report) {
            return Ok(None);
        }
        self.write(guard, model, extra).map(Some)
    }

    /// Writes a checkpoint now ([`Guard::checkpoint_to`]), then removes its oldest owned
    /// checkpoints beyond the newest [`CheckpointPolicy::keep`]. Removal starts only once the new
    /// checkpoint is durable.
    ///
    /// # Errors
    /// As [`Guard::checkpoint_to`] (the previous checkpoints are untouched), or a removal that
    /// failed (the new checkpoint is written; the one that could not be removed is still owned).
    pub fn write<M: Module + 'static, E: Serialize>(
        &mut self,
        guard: &Guard<M>,
        model: &M,
        extra: &E,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let info = guard.write_checkpoint(model, &self.dir, extra, self.hook.as_mut())?;
        self.owned.push(info.path.clone());
        while self.owned.len() > self.policy.keep {
            let oldest = self.owned[0].clone();
            match files::remove(&self.dir, &oldest, self.hook.as_mut()) {
                Ok(()) => {}
                // Already gone (removed by hand): nothing left to do.
                Err(CheckpointError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound && !oldest.exists() => {}
                Err(error) => return Err(error),
            }
            self.owned.remove(0);
        }
        Ok(info)
    }
}

/// Whether two paths name the same existing directory (compared canonically). A path that does
/// not exist holds no checkpoint to own, so it is never the resumed checkpoint's directory.
fn same_directory(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}
