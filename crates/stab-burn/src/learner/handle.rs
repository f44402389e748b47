//! [`LearnerGuard`]: the guard a model keeps for burn-train's `TrainStep::optimize`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn_train::{Interrupter, LearnerModel, SupervisedTraining};

use super::metrics::{GuardMetric, GuardMetricKind, GuardSample, SampleLog};
use crate::builder::GuardBuilder;
use crate::checkpoint::{Checkpoint, CheckpointError, Checkpointer};
use crate::error::GuardError;
use crate::guard::{Guard, StepInputs};
use crate::report::StepReport;
use crate::running_state::RunningStateSnapshot;

/// What the handle holds: the guard (or the builder until the first step), the error that
/// ended guarding, and where to report it.
enum Stage<M: Module> {
    /// No guard installed: `optimize` is the plain optimizer step.
    Unguarded,
    /// Installed, built at the first step.
    Pending(Box<GuardBuilder<M>>),
    /// Installed, rebuilt from a checkpoint at the first step.
    Resuming(Box<GuardBuilder<M>>, Box<Checkpoint>),
    /// Guarding.
    Running(Box<Guard<M>>),
    /// A guard error ended guarding; the `Learner` has been asked to stop.
    Failed,
}

/// Where the handle writes the guard's checkpoints, and how many guarded steps an epoch has.
struct EpochCheckpoints {
    checkpointer: Checkpointer,
    steps_per_epoch: u64,
}

struct Inner<M: Module> {
    stage: Stage<M>,
    epochs: Option<EpochCheckpoints>,
    error: Option<GuardError>,
    interrupter: Option<Interrupter>,
    last_report: Option<StepReport>,
}

/// A cloneable handle to a [`Guard`] that protects a burn-train `Learner` run: keep it in a
/// `#[module(skip)]` field of the model and call [`LearnerGuard::optimize`] from the model's
/// `TrainStep::optimize` override (see [`crate::learner`] for the pattern and its semantics).
///
/// Clones share one guard (an `Arc<Mutex<…>>`): the `Learner` clones the model every step.
/// [`Default`] is an empty handle, under which `optimize` is burn's plain optimizer step.
pub struct LearnerGuard<M: Module> {
    inner: Arc<Mutex<Inner<M>>>,
    log: Arc<Mutex<SampleLog>>,
}

impl<M: Module> Clone for LearnerGuard<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            log: Arc::clone(&self.log),
        }
    }
}

impl<M: Module> std::fmt::Debug for LearnerGuard<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let stage = match &inner.stage {
            Stage::Unguarded => "unguarded",
            Stage::Pending(_) => "pending",
            Stage::Resuming(..) => "resuming",
            Stage::Running(_) => "running",
            Stage::Failed => "failed",
        };
        f.debug_struct("LearnerGuard")
            .field("stage", &stage)
            .finish_non_exhaustive()
    }
}

impl<M: Module + 'static> Default for LearnerGuard<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Module + 'static> LearnerGuard<M> {
    /// An empty handle: unguarded until [`LearnerGuard::install`].
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                stage: Stage::Unguarded,
                epochs: None,
                error: None,
                interrupter: None,
                last_report: None,
            })),
            log: Arc::new(Mutex::new(SampleLog::default())),
        }
    }

    /// Guards the steps from now on with the guard `builder` describes. The guard is built at
    /// the next `optimize` call, from the model and the `Learner`'s optimizer as they are then
    /// (after any checkpoint the `Learner` resumed from). Replaces a guard installed before.
    pub fn install(&self, builder: GuardBuilder<M>) {
        let mut inner = self.lock();
        inner.stage = Stage::Pending(Box::new(builder));
        inner.error = None;
        inner.last_report = None;
    }

    /// Guards the steps from now on with a guard rebuilt from `checkpoint` (one the handle wrote,
    /// see [`LearnerGuard::checkpoint_epochs`]): its reference, detectors, counters, ladder and
    /// every ring snapshot continue as if the run had never stopped. Resume the `Learner` from
    /// its own checkpoint of the same epoch (`SupervisedTraining::checkpoint(epoch)`, the epoch
    /// being [`Checkpoint::extra`] as a `u64`): at the next `optimize` call the handle checks
    /// that the `Learner`'s parameters are the checkpoint's, and continues with the `Learner`'s
    /// model and optimizer. `builder` gives the probe, observers and store as for
    /// [`LearnerGuard::install`], and must carry the checkpoint's configuration.
    ///
    /// On a deterministic backend the resumed run's steps, parameters and optimizer state equal
    /// the uninterrupted run's bit for bit (`tests/learner.rs`).
    pub fn install_resumed(&self, builder: GuardBuilder<M>, checkpoint: Checkpoint) {
        let mut inner = self.lock();
        inner.stage = Stage::Resuming(Box::new(builder), Box::new(checkpoint));
        inner.error = None;
        inner.last_report = None;
    }

    /// Writes a checkpoint of the guard through `checkpointer` after every `steps_per_epoch`-th
    /// guarded step (the last optimizer step of each epoch, when every epoch has
    /// `steps_per_epoch` of them), with the number of epochs done as its extra value: the
    /// state the `Learner` checkpoints at the end of that epoch, so that a run resumed from
    /// both continues exactly ([`LearnerGuard::install_resumed`]). The `Learner`'s own
    /// checkpoint holds the model, optimizer and scheduler; this one adds what only the guard
    /// knows. A failed write ends guarding like any guard error (the step it follows is kept).
    ///
    /// `steps_per_epoch = 0` is taken as 1.
    pub fn checkpoint_epochs(&self, checkpointer: Checkpointer, steps_per_epoch: u64) {
        self.lock().epochs = Some(EpochCheckpoints {
            checkpointer,
            steps_per_epoch: steps_per_epoch.max(1),
        });
    }

    /// Stops the `Learner` through `interrupter` when guarding fails (a guard error, or the
    /// escalation ladder exhausted); [`LearnerGuard::register`] sets it for you.
    pub fn stop_on_failure(&self, interrupter: Interrupter) {
        self.lock().interrupter = Some(interrupter);
    }

    /// Registers the guard's metrics ([`GuardMetricKind::ALL`]) as numeric training metrics of
    /// `training` (the dashboard and the metric loggers show them) and stops that training when
    /// guarding fails. For a `Learner` without gradient accumulation.
    pub fn register<L: LearnerModel>(
        &self,
        training: SupervisedTraining<L>,
    ) -> SupervisedTraining<L> {
        self.register_accumulated(training, 1)
    }

    /// [`LearnerGuard::register`] for a `Learner` built with `grads_accumulation(k)`: the
    /// metrics then advance one guarded step per `k` items (and at an epoch's last item), as the
    /// `Learner` steps its optimizer. `k = 0` is taken as 1.
    pub fn register_accumulated<L: LearnerModel>(
        &self,
        training: SupervisedTraining<L>,
        grads_accumulation: usize,
    ) -> SupervisedTraining<L> {
        self.stop_on_failure(training.interrupter());
        GuardMetricKind::ALL
            .iter()
            .fold(training, |training, &kind| {
                training
                    .metric_train_numeric(self.metric(kind).grads_accumulation(grads_accumulation))
            })
    }

    /// One metric of the guard, to register yourself (e.g. as a validation-free training metric
    /// with another name): see [`GuardMetric`].
    pub fn metric(&self, kind: GuardMetricKind) -> GuardMetric {
        GuardMetric::new(kind, Arc::clone(&self.log))
    }

    /// The guarded step, in place of `optim.step(lr, model, grads)` inside
    /// `TrainStep::optimize`: returns the model to continue with (the proposal if accepted,
    /// otherwise the restored state) and leaves `optim` holding the matching optimizer state.
    ///
    /// Under an empty handle this is `optim.step(lr, model, grads)`. When guarding fails (the
    /// guard cannot be built, a probe, signal or store fails, or the escalation ladder is
    /// exhausted) the error is kept for [`LearnerGuard::take_error`], the `Learner` is stopped
    /// through the interrupter given to [`LearnerGuard::register`] or
    /// [`LearnerGuard::stop_on_failure`], and later calls keep the model unchanged.
    ///
    /// Whatever the failure, the returned model and `optim` are one consistent state. When the
    /// guard hands a state back ([`Guard::take_last_accepted`]: an exhausted ladder, an
    /// observer that failed after the step completed, a store that failed to save a committed
    /// proposal, a probe that failed before the decision, …) it is that state, bit for bit,
    /// optimizer included. Otherwise (the store could not bring the last accepted state back,
    /// or what it brought back failed its fingerprint check) it is the state before the step:
    /// the model given and the optimizer as it was lent, the step not applied (the running
    /// statistics as this batch's forward left them). For that, the handle keeps a
    /// copy-on-write clone of the lent optimizer during each step: it shares the state tensors,
    /// so the optimizer step writes new ones beside them rather than in place. With the device
    /// store this costs nothing more (its snapshot shares them already); with the host store,
    /// whose snapshot holds no device tensors, it can cost up to one optimizer state of device
    /// memory while the step runs.
    ///
    /// # Panics
    /// When guarding fails and no interrupter was given: `optimize` cannot return an error,
    /// and training on without the guard would be silent.
    pub fn optimize(
        &self,
        model: M,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> M {
        self.optimize_with(model, optim, lr, grads, StepInputs::default())
    }

    /// [`LearnerGuard::optimize`] with the extra inputs a signal may need ([`StepInputs`]).
    ///
    /// # Panics
    /// As [`LearnerGuard::optimize`].
    pub fn optimize_with(
        &self,
        model: M,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
        inputs: StepInputs,
    ) -> M {
        let mut inner = self.lock();
        let stage = std::mem::replace(&mut inner.stage, Stage::Failed);
        let mut guard = match stage {
            Stage::Unguarded => {
                inner.stage = Stage::Unguarded;
                return optim.step(lr, model, grads);
            }
            Stage::Failed => return model,
            Stage::Running(guard) => guard,
            Stage::Pending(builder) => match builder.build(&model, optim.clone()) {
                Ok(mut guard) => {
                    guard.clear_own_optimizer();
                    Box::new(guard)
                }
                Err(error) => {
                    Self::fail(&mut inner, error);
                    return model;
                }
            },
            Stage::Resuming(builder, checkpoint) => {
                match Self::resume(*builder, &checkpoint, &model, optim) {
                    Ok(guard) => Box::new(guard),
                    Err(error) => {
                        Self::fail(&mut inner, error);
                        return model;
                    }
                }
            }
        };
        // Parameters are immutable tensors behind `Arc`s: this clone copies no weights. It is
        // what `optimize` returns if the step fails without handing a model back, with the
        // optimizer as it was before the step (a copy-on-write clone: its states are shared,
        // not copied).
        let given = model.clone();
        let given_optim = optim.clone();
        match guard.step_lent_with(optim, lr, model, grads, inputs) {
            Ok(step) => {
                self.log
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(GuardSample::from_report(&step.report));
                inner.last_report = Some(step.report);
                let written = match &mut inner.epochs {
                    Some(epochs) if guard.next_step().is_multiple_of(epochs.steps_per_epoch) => {
                        let epoch = guard.next_step() / epochs.steps_per_epoch;
                        let checkpointer = &mut epochs.checkpointer;
                        guard.with_lent_optimizer(optim, |guard| {
                            checkpointer.write(guard, &step.model, &epoch).map(|_| ())
                        })
                    }
                    _ => Ok(()),
                };
                match written {
                    Ok(()) => inner.stage = Stage::Running(guard),
                    Err(error) => Self::fail(&mut inner, GuardError::Checkpoint(Box::new(error))),
                }
                step.model
            }
            Err(error) => {
                // The state the decision left, if the guard holds it (`optim` then holds its
                // optimizer state); otherwise the state before the step, model and optimizer.
                let model = match guard.take_last_accepted() {
                    Some(model) => model,
                    None => {
                        *optim = given_optim;
                        given
                    }
                };
                Self::fail(&mut inner, error);
                model
            }
        }
    }

    /// The guard of a resumed run: its state from `checkpoint`, its live model and optimizer
    /// the `Learner`'s (which must have the checkpoint's parameters).
    fn resume(
        builder: GuardBuilder<M>,
        checkpoint: &Checkpoint,
        model: &M,
        optim: &ModuleOptimizer,
    ) -> Result<Guard<M>, GuardError> {
        let error = |e: CheckpointError| GuardError::Checkpoint(Box::new(e));
        // Loading the saved states writes their running statistics into the ones `model`
        // shares with its clones; the Learner's, with this step's forward in them, go back after.
        let forwarded = RunningStateSnapshot::capture(model);
        let resumed = builder
            .resume::<u64>(checkpoint, model.clone(), optim.clone())
            .map_err(error)?;
        forwarded
            .restore(model.clone())
            .map_err(|source| GuardError::Store {
                operation: "restore the Learner's running statistics after a resume",
                step: checkpoint.step(),
                source,
            })?;
        // The Learner's running statistics have this step's forward in them, the checkpoint's
        // do not; its parameters must be the checkpoint's exactly (compared in module order:
        // a module built afresh has other parameter ids).
        if let Some(name) = first_different_parameter(&resumed.model, model) {
            return Err(error(CheckpointError::Record {
                path: checkpoint.path().to_path_buf(),
                message: format!(
                    "the Learner's parameters differ from the checkpoint's (first: parameter \
                     {name}): resume the Learner from its checkpoint of epoch {}",
                    resumed.extra
                ),
            }));
        }
        let mut guard = resumed.guard;
        guard.clear_own_optimizer();
        Ok(guard)
    }

    /// The report of the last guarded step.
    pub fn last_report(&self) -> Option<StepReport> {
        self.lock().last_report.clone()
    }

    /// Runs `f` on the guard, once it is built (counters, reference, store memory).
    pub fn with_guard<R>(&self, f: impl FnOnce(&Guard<M>) -> R) -> Option<R> {
        match &self.lock().stage {
            Stage::Running(guard) => Some(f(guard)),
            _ => None,
        }
    }

    /// The error that ended guarding, if one did (taken: a second call returns `None`).
    pub fn take_error(&self) -> Option<GuardError> {
        self.lock().error.take()
    }

    fn fail(inner: &mut Inner<M>, error: GuardError) {
        inner.stage = Stage::Failed;
        let reason = format!("stab guard: {error}");
        inner.error = Some(error);
        match &inner.interrupter {
            Some(interrupter) => interrupter.stop(Some(&reason)),
            None => panic!(
                "{reason} (no interrupter to stop the Learner: use LearnerGuard::register or stop_on_failure)"
            ),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<M>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The position (in module order) of the first trainable parameter whose values differ between
/// `a` and `b`, two modules of one structure, or that only one of them has.
fn first_different_parameter<M: Module>(a: &M, b: &M) -> Option<usize> {
    struct Values(Vec<burn::tensor::TensorData>);
    impl burn::module::ModuleVisitor for Values {
        fn visit_float<const D: usize>(
            &mut self,
            param: &burn::module::Param<burn::tensor::Tensor<D>>,
        ) {
            self.0.push(param.val().into_data());
        }
    }
    let (mut left, mut right) = (Values(Vec::new()), Values(Vec::new()));
    a.visit(&mut left);
    b.visit(&mut right);
    let count = left.0.len().max(right.0.len());
    (0..count).find(|&i| left.0.get(i) != right.0.get(i))
}
