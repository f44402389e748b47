//! Protecting a burn-train `Learner` run (cargo feature `train`).
//!
//! burn-train's `Learner` owns the optimizer and sends every step through
//! `TrainStep::optimize(self, optim, lr, grads) -> Self`, a default method a model may override.
//! [`LearnerGuard`] is the glue: a cheap, cloneable handle to a [`Guard`] that the model keeps in
//! a `#[module(skip)]` field and hands the step to in its `optimize` override. The guard works
//! on the optimizer the `Learner` lends ([`Guard::step_lent_with`], the same step as the loop
//! API): a rejection restores the parameters, the BatchNorm running statistics *and the
//! `Learner`'s optimizer* in place, bit for bit, and the escalation ladder (rewind, optimizer
//! reset, stop) works as in a hand-written loop.
//!
//! ```ignore
//! #[derive(Module, Debug)]
//! struct Cnn { /* layers */ #[module(skip)] stab: LearnerGuard<Cnn> }        // + 1 field
//! impl TrainStep for Cnn {
//!     // type Input, type Output, fn step: unchanged
//!     fn optimize(self, optim: &mut ModuleOptimizer, lr: ModuleLearningRate, grads: GradientsParams) -> Self {
//!         self.stab.clone().optimize(self, optim, lr, grads)                  // + the override
//!     }
//! }
//! model.stab.install(Guard::builder(GuardConfig::default()).probe(probe));  // + the guard
//! let training = model.stab.register(SupervisedTraining::new(dir, train, valid)); // metrics
//! ```
//!
//! `examples/learner_fashion_mnist.rs` is the full program; `tests/learner.rs` drives a
//! `Learner` through an injected fault.
//!
//! # Where the guard lives between steps
//! `optimize` consumes the model and returns a new one, so the guard cannot be a plain field of
//! the model. [`LearnerGuard`] is an `Arc<Mutex<…>>`: cloning the model (the `Learner` does it
//! every step) clones the handle, and every clone reaches the same guard. The mutex is taken
//! once per step, by the training thread only (the metrics read a separate log), so it is never
//! contended. A static or thread-local registry would work too, but would tie one guard to a
//! process or thread and hide it from the model's type; the field keeps it explicit. The field is
//! `#[module(skip)]`: it is not a parameter and not saved in the model's record.
//!
//! The guard is built at the first `optimize` call, from the model and the optimizer as the
//! `Learner` has them then: after a checkpoint it resumed from (`SupervisedTraining::checkpoint`
//! loads it inside `launch`), so the first snapshot is the resumed state. A configuration or
//! probe error therefore shows at the first step (see [`LearnerGuard::optimize`]).
//!
//! # What a rejection does to the `Learner`'s own bookkeeping
//! The guarantees concern θ (parameters and running statistics) and O (optimizer state) only;
//! the rest of the `Learner`'s state moves on, as in the loop API. `tests/learner.rs` checks the
//! model and optimizer after every rollback, the scheduler and iteration count, gradient
//! accumulation, the state a run ends on, a ladder climb (equal to the same run as a loop) and a
//! resume after an epoch.
//!
//! - **Iteration counter**: counts the rejected step (it counts batches, not accepted updates).
//! - **Learning-rate scheduler**: has already advanced when `optimize` runs (`lr_step` precedes
//!   `optimizer_step`); a rejection does not rewind it. A rewind to an older snapshot does not
//!   either: the schedule keeps its position.
//! - **Gradient accumulation** (`grads_accumulation(k)`): the guard sees the accumulated gradient
//!   of the window, one guarded step per optimizer step; a rejection discards the whole window.
//!   Tell the metrics with [`LearnerGuard::register_accumulated`].
//! - **Data position**: the batch is consumed; a rejected batch is skipped, not retried (a rewind
//!   skips every batch since the restored snapshot).
//! - **Checkpointing**: the `Learner` checkpoints its model and optimizer at the end of an epoch.
//!   After a rejection both already *are* the restored state, so a rejected proposal is never
//!   checkpointed. The guard itself (its reference ŷ, detectors, ladder and ring snapshots) is
//!   not in the `Learner`'s checkpoint: [`LearnerGuard::checkpoint_epochs`] writes it beside, at
//!   each epoch's last optimizer step, and [`LearnerGuard::install_resumed`] rebuilds the guard
//!   from it when the `Learner` resumes from the same epoch (`SupervisedTraining::checkpoint`);
//!   the resumed run then equals the uninterrupted one bit for bit on a deterministic backend
//!   (`tests/learner.rs`). Without them, a resumed run builds a new guard at the resumed state.
//! - **Metrics of the step**: the loss and accuracy the `Learner` reports for a rejected step are
//!   those of the batch's forward pass at the accepted parameters, as for any step.
//!
//! # Limits
//! - Single-device training. `optimize_multi` (multi-device strategy) is not guarded: it would
//!   need every device's gradient for the gate. Under DDP the hook runs on every rank, and each
//!   rank would have to reach the same decision; that is not done here.
//! - One guarded `Learner` run per handle: the metrics map the `Learner`'s items to guarded
//!   steps by counting from the first.
//! - [`stab_core::SignalKind::LossSpike`] needs the batch's loss, which `optimize` does not receive;
//!   use [`LearnerGuard::optimize_with`] with [`StepInputs`] kept from `step`, or another signal.

mod handle;
mod metrics;

pub use handle::LearnerGuard;
pub use metrics::{GuardMetric, GuardMetricKind, GuardSample};

#[allow(unused_imports)] // doc links
use crate::{Guard, StepInputs};
