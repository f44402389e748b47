//! The guard: one guarded optimizer step (propose, measure, decide, commit or roll back).

use std::time::Instant;

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::Tensor;
use stab_core::{Controller, Counters, SafetyMonitor, SafetyViolation, SignalKind, StepObserver};

use crate::builder::GuardBuilder;
use crate::config::{GuardConfig, GuardMode};
use crate::error::{GuardError, ProbeError, StoreError};
use crate::fingerprint::state_fingerprint;
use crate::probe::Measure;
use crate::report::{GuardedStep, StepAction, StepReport, StepTimings};
use crate::signals::{gradient_cosine, gradient_norm, reference_gradients};
use crate::store::{StateStore, StoreMemory};

/// Inputs a step's measurement may need besides the model and its gradients.
#[derive(Default)]
pub struct StepInputs {
    /// The training loss of the batch that produced the gradients: the measurement of the
    /// [`SignalKind::LossSpike`] signal (required there).
    pub training_loss: Option<f64>,
    /// The gradient of a reference minibatch at the same parameters: the other side of the
    /// [`SignalKind::GradientAgreement`] cosine. When absent, the guard computes it with the
    /// reference loss given to [`GuardBuilder::agreement_reference`].
    pub reference_grads: Option<GradientsParams>,
}

impl std::fmt::Debug for StepInputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepInputs")
            .field("training_loss", &self.training_loss)
            .field("reference_grads", &self.reference_grads.is_some())
            .finish()
    }
}

impl StepInputs {
    /// Inputs carrying the batch's training loss (for [`SignalKind::LossSpike`]).
    pub fn training_loss(loss: f64) -> Self {
        Self {
            training_loss: Some(loss),
            reference_grads: None,
        }
    }
}

pub(crate) type ReferenceLoss<M> = Box<dyn Fn(&M) -> Tensor<1> + Send>;

/// A guard around Burn's [`ModuleOptimizer`]: runs each optimizer step under Algorithm 1.
///
/// [`Guard::step`] replaces `optim.step(lr, model, grads)`: the optimizer proposes, the
/// configured signal measures the proposal, stab-core's [`Controller`] decides, and the guard
/// either commits (and snapshots) the proposal or restores the last accepted model *and*
/// optimizer state, BatchNorm running statistics included. The safety monitor checks every
/// decision; with [`GuardConfig::verify_restores`] it also checks, bit for bit, that every
/// restore brings back the last accepted state.
///
/// # What a rejection does not rewind
/// The guarantees concern θ and O only. A learning-rate scheduler has already advanced (the
/// step index counts proposals, rejected ones included); the data loader has consumed the batch
/// (a rejected batch is skipped, not retried); random number generators (dropout masks, data
/// augmentation) have moved on. Rewinding them would replay the same failure deterministically.
///
/// # Measurements by signal
/// | signal | measurement | taken |
/// |---|---|---|
/// | [`SignalKind::Probe`] | mean probe loss of the proposal | after the step |
/// | [`SignalKind::LossSpike`] | [`StepInputs::training_loss`] (the batch's loss at θ_t) | before |
/// | [`SignalKind::GradientNormSpike`] | global L2 norm of the (possibly faulted) gradient | before |
/// | [`SignalKind::GradientAgreement`] | cosine with a reference minibatch's gradient | before |
///
/// The loss-spike baseline measures the *current* parameters on the batch that produced the
/// update, not the proposal: a destabilizing update shows up one step later, when the damaged
/// parameters are already the accepted state (the "delayed detection" the paper reports).
/// Gradient agreement is blind to a pure rescaling of the gradient (the cosine is scale-free);
/// it reacts to NaN/∞ and to corrupted batches.
pub struct Guard<M: Module> {
    config: GuardConfig,
    optim: ModuleOptimizer,
    store: Box<dyn StateStore<M>>,
    probe: Option<Box<dyn Measure<M>>>,
    agreement: Option<ReferenceLoss<M>>,
    controller: Option<Controller>,
    monitor: Option<SafetyMonitor>,
    observers: Vec<Box<dyn StepObserver + Send>>,
    last_accepted: Option<u64>,
    step: u64,
}

impl<M: Module> std::fmt::Debug for Guard<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("config", &self.config)
            .field("store", &self.store.name())
            .field("controller", &self.controller)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl<M: Module + 'static> Guard<M> {
    /// Starts building a guard with `config`.
    pub fn builder(config: GuardConfig) -> GuardBuilder<M> {
        GuardBuilder::new(config)
    }

    /// A guard that has not started: no controller, nothing saved.
    pub(crate) fn from_parts(
        config: GuardConfig,
        optim: ModuleOptimizer,
        store: Box<dyn StateStore<M>>,
        probe: Option<Box<dyn Measure<M>>>,
        agreement: Option<ReferenceLoss<M>>,
        observers: Vec<Box<dyn StepObserver + Send>>,
    ) -> Self {
        Self {
            config,
            optim,
            store,
            probe,
            agreement,
            controller: None,
            monitor: None,
            observers,
            last_accepted: None,
            step: 0,
        }
    }

    /// Starts the controller at `initial` (if known) and saves `model` as the first accepted
    /// state.
    pub(crate) fn start(&mut self, model: &M, initial: Option<f64>) -> Result<(), GuardError> {
        if let Some(y0) = initial {
            self.start_controller(y0)?;
        }
        if self.config.mode == GuardMode::Enforce {
            self.store
                .save(model, &self.optim)
                .map_err(|source| GuardError::Store {
                    operation: "save",
                    step: 0,
                    source,
                })?;
            if self.config.verify_restores {
                self.last_accepted = Some(self.fingerprint(0, model)?);
            }
        }
        Ok(())
    }

    /// One guarded step, in place of `optim.step(lr, model, grads)`: returns the model to
    /// continue with and what happened.
    ///
    /// # Errors
    /// See [`Guard::step_with`].
    pub fn step(
        &mut self,
        lr: impl Into<ModuleLearningRate>,
        model: M,
        grads: GradientsParams,
    ) -> Result<GuardedStep<M>, GuardError> {
        self.step_with(lr, model, grads, StepInputs::default())
    }

    /// One guarded step with the extra inputs a signal may need ([`StepInputs`]).
    ///
    /// A non-finite measurement is a rejection with its own reason, not an error.
    ///
    /// # Errors
    /// A missing input, a failing probe, signal, store or observer, or a safety violation. An
    /// error ends the run: `model` has been consumed; the last accepted state stays in the store.
    pub fn step_with(
        &mut self,
        lr: impl Into<ModuleLearningRate>,
        model: M,
        grads: GradientsParams,
        inputs: StepInputs,
    ) -> Result<GuardedStep<M>, GuardError> {
        let step = self.step;
        self.step += 1;
        let mut timings = StepTimings::default();
        let measured = (step + 1).is_multiple_of(self.config.controller.probe_interval);
        let clock = Instant::now();
        let before = if measured {
            self.measure_before(step, &model, &grads, inputs)?
        } else {
            None
        };
        timings.measure = clock.elapsed();

        let clock = Instant::now();
        let proposal = self.optim.step(lr, model, grads);
        timings.optimizer = clock.elapsed();
        if !measured {
            return Ok(GuardedStep {
                model: proposal,
                report: StepReport {
                    step,
                    action: StepAction::Unprobed,
                    record: None,
                    counters: self.counters(),
                    timings,
                },
            });
        }

        let clock = Instant::now();
        let measurement = match before {
            Some(y) => y,
            None => self.probe_proposal(step, &proposal)?,
        };
        timings.measure += clock.elapsed();
        let Some(controller) = self.controller.as_mut() else {
            // A signal that starts from its first measurement: this one is y(θ₀).
            self.start_controller(measurement)?;
            if self.config.mode == GuardMode::Enforce {
                let clock = Instant::now();
                self.commit(step, &proposal)?;
                timings.snapshot = clock.elapsed();
            }
            return Ok(GuardedStep {
                model: proposal,
                report: StepReport {
                    step,
                    action: StepAction::Calibrated,
                    record: None,
                    counters: self.counters(),
                    timings,
                },
            });
        };
        let mut record = controller.decide(measurement);
        record.step = step;
        if let Some(monitor) = &mut self.monitor {
            monitor.check_decision(&record)?;
        }
        let accepted = record.decision.is_accepted();
        let (model, action) = match (accepted, self.config.mode) {
            (false, GuardMode::Observe) => (proposal, StepAction::Observed),
            (true, GuardMode::Observe) => (proposal, StepAction::Committed),
            (true, GuardMode::Enforce) => {
                let clock = Instant::now();
                self.commit(step, &proposal)?;
                timings.snapshot = clock.elapsed();
                (proposal, StepAction::Committed)
            }
            (false, GuardMode::Enforce) => {
                let clock = Instant::now();
                let restored = self.roll_back(step, proposal)?;
                timings.restore = clock.elapsed();
                (restored, StepAction::RolledBack)
            }
        };
        for observer in &mut self.observers {
            observer.on_step(&record)?;
        }
        Ok(GuardedStep {
            model,
            report: StepReport {
                step,
                action,
                record: Some(record),
                counters: self.counters(),
                timings,
            },
        })
    }

    /// The optimizer (its state is the accepted one after every decided step).
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    /// Ends guarding and hands the optimizer back.
    pub fn into_optimizer(self) -> ModuleOptimizer {
        self.optim
    }

    /// The decision counters so far (all zero before the first decision).
    pub fn counters(&self) -> Counters {
        self.controller
            .as_ref()
            .map(Controller::counters)
            .unwrap_or_default()
    }

    /// The current reference ŷ, once the controller has started.
    pub fn reference(&self) -> Option<f64> {
        self.controller.as_ref().map(Controller::reference)
    }

    /// The controller, once started (the probe signal starts it at build time, the others at
    /// their first measured step).
    pub fn controller(&self) -> Option<&Controller> {
        self.controller.as_ref()
    }

    /// The configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Index of the next step.
    pub fn next_step(&self) -> u64 {
        self.step
    }

    /// Measures `model` with the guard's probe, if it has one, whatever the signal: for logging
    /// the probe loss of a run driven by another signal (or of an observed baseline).
    ///
    /// # Errors
    /// The probe's error.
    pub fn measure_probe(&self, model: &M) -> Option<Result<f64, ProbeError>> {
        self.probe.as_ref().map(|probe| probe.measure(model))
    }

    /// The snapshot store.
    pub fn store(&self) -> &dyn StateStore<M> {
        self.store.as_ref()
    }

    /// What the snapshot costs in memory (reads the optimizer state to count it).
    pub fn store_memory(&self) -> StoreMemory {
        self.store.memory()
    }

    /// The signal's measurement when it is computed from the step's inputs, before the step.
    fn measure_before(
        &self,
        step: u64,
        model: &M,
        grads: &GradientsParams,
        inputs: StepInputs,
    ) -> Result<Option<f64>, GuardError> {
        let signal = self.config.controller.signal;
        let signal_error = |source| GuardError::Signal { step, source };
        match signal {
            SignalKind::Probe => Ok(None),
            SignalKind::LossSpike => {
                inputs
                    .training_loss
                    .map(Some)
                    .ok_or(GuardError::MissingInput {
                        step,
                        signal,
                        input: "training_loss",
                    })
            }
            SignalKind::GradientNormSpike => {
                gradient_norm(grads, model).map(Some).map_err(signal_error)
            }
            SignalKind::GradientAgreement => {
                let reference = match (inputs.reference_grads, &self.agreement) {
                    (Some(reference), _) => reference,
                    (None, Some(loss)) => {
                        reference_gradients(model, loss).map_err(|source| GuardError::Store {
                            operation: "restore running statistics after the reference gradient",
                            step,
                            source,
                        })?
                    }
                    (None, None) => {
                        return Err(GuardError::MissingInput {
                            step,
                            signal,
                            input: "reference_grads (or GuardBuilder::agreement_reference)",
                        });
                    }
                };
                gradient_cosine(grads, &reference, model)
                    .map(Some)
                    .map_err(signal_error)
            }
        }
    }

    fn probe_proposal(&self, step: u64, proposal: &M) -> Result<f64, GuardError> {
        let probe = self.probe.as_ref().ok_or(GuardError::MissingProbe)?;
        probe
            .measure(proposal)
            .map_err(|source| GuardError::Probe { step, source })
    }

    fn start_controller(&mut self, y0: f64) -> Result<(), GuardError> {
        let controller = Controller::from_config(&self.config.controller, y0)?;
        if self.config.monitor {
            self.monitor = Some(SafetyMonitor::new(y0));
        }
        self.controller = Some(controller);
        Ok(())
    }

    fn commit(&mut self, step: u64, proposal: &M) -> Result<(), GuardError> {
        self.store
            .save(proposal, &self.optim)
            .map_err(|source| GuardError::Store {
                operation: "save",
                step,
                source,
            })?;
        if self.config.verify_restores {
            self.last_accepted = Some(self.fingerprint(step, proposal)?);
        }
        Ok(())
    }

    fn roll_back(&mut self, step: u64, proposal: M) -> Result<M, GuardError> {
        let (model, optim) =
            self.store
                .restore(proposal, self.optim.clone())
                .map_err(|source| GuardError::Store {
                    operation: "restore",
                    step,
                    source,
                })?;
        self.optim = optim;
        if let (true, Some(expected)) = (self.config.verify_restores, self.last_accepted) {
            let actual = self.fingerprint(step, &model)?;
            match &self.monitor {
                Some(monitor) => monitor.check_restore(step, expected, actual)?,
                None if expected != actual => {
                    return Err(SafetyViolation::InexactRestore {
                        step,
                        expected,
                        actual,
                    }
                    .into());
                }
                None => {}
            }
        }
        Ok(model)
    }

    fn fingerprint(&self, step: u64, model: &M) -> Result<u64, GuardError> {
        state_fingerprint(model, &self.optim)
            .map_err(|source: StoreError| GuardError::Fingerprint { step, source })
    }
}
