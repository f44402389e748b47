//! The guard: one guarded optimizer step (propose, measure, decide, commit or roll back).

use std::time::Instant;

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{GradientsParams, ModuleOptimizer, OptimizerRecord};
use burn::tensor::Tensor;
use stab_core::{
    Completion, Controller, Counters, Directive, RingUpdate, SignalKind, StabError, StepObserver,
    StepPlan, StepProtocol,
};

use crate::builder::GuardBuilder;
use crate::config::{GuardConfig, GuardMode};
use crate::error::{GuardError, ProbeError, StoreError};
use crate::fingerprint::state_fingerprint;
use crate::probe::Measure;
use crate::report::{GuardedStep, StepReport, StepTimings};
use crate::signals::{
    gradient_cosine, gradient_norm, reference_gradients, scale_gradients, scale_update, update_norm,
};
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

/// A guard around Burn's [`ModuleOptimizer`]: runs each optimizer step under stab-core's
/// [`StepProtocol`] (Algorithm 1 with drift detection, a gradient gate, a snapshot ring and an
/// escalation ladder).
///
/// [`Guard::step`] replaces `optim.step(lr, model, grads)`: the gate looks at the gradient's
/// norm, the optimizer proposes, the configured signal measures the proposal, the protocol
/// decides, and the guard obeys: it commits (and snapshots) the proposal, restores the last
/// accepted model *and* optimizer state (BatchNorm running statistics included), rewinds to an
/// older snapshot of the ring, or clears the optimizer's state. The safety monitor checks every
/// decision; with [`GuardConfig::verify_restores`] every restore and rewind is also checked bit
/// for bit against the fingerprint taken when the state was saved. When the ladder is exhausted
/// the step returns [`StabError::RecoveryExhausted`] (inside [`GuardError::Controller`]) and
/// [`Guard::take_last_accepted`] hands the last accepted model back.
///
/// # What a rejection does not rewind
/// The guarantees concern θ and O only. A learning-rate scheduler has already advanced (the
/// step index counts proposals, rejected ones included); the data loader has consumed the batch
/// (a rejected batch is skipped, not retried; a rewind skips every batch since the restored
/// snapshot); random number generators (dropout masks, data augmentation) have moved on.
/// Rewinding them would replay the same failure deterministically.
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
    protocol: StepProtocol,
    observers: Vec<Box<dyn StepObserver + Send>>,
    last_accepted: Option<M>,
}

impl<M: Module> std::fmt::Debug for Guard<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("config", &self.config)
            .field("store", &self.store.name())
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<M: Module + 'static> Guard<M> {
    /// Starts building a guard with `config`.
    pub fn builder(config: GuardConfig) -> GuardBuilder<M> {
        GuardBuilder::new(config)
    }

    /// A guard that has not started: nothing saved.
    pub(crate) fn from_parts(
        config: GuardConfig,
        optim: ModuleOptimizer,
        store: Box<dyn StateStore<M>>,
        probe: Option<Box<dyn Measure<M>>>,
        agreement: Option<ReferenceLoss<M>>,
        observers: Vec<Box<dyn StepObserver + Send>>,
        initial: Option<f64>,
    ) -> Result<Self, GuardError> {
        let mut protocol =
            StepProtocol::new(&config.controller, config.mode, initial)?.with_optimizer_reset(true);
        if !config.monitor {
            protocol = protocol.without_monitor();
        }
        Ok(Self {
            config,
            optim,
            store,
            probe,
            agreement,
            protocol,
            observers,
            last_accepted: None,
        })
    }

    /// Saves `model` as the first accepted state (and the first entry of every ring level).
    pub(crate) fn start(&mut self, model: &M) -> Result<(), GuardError> {
        let directive = self.protocol.start()?;
        let fingerprint = match directive {
            Directive::Commit(update) => {
                self.commit(0, model, &update)?;
                self.fingerprint_if_verifying(0, model)?
            }
            _ => None,
        };
        self.protocol.complete(Completion {
            fingerprint,
            restored_fingerprint: None,
        })?;
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
    /// A missing input, a failing probe, signal, store or observer, a safety violation, or
    /// [`StabError::RecoveryExhausted`] when the escalation ladder has run out. `model` has been
    /// consumed. Once the protocol has decided the step, an error hands back the state the
    /// decision left, whenever the guard holds it, through [`Guard::take_last_accepted`] (with
    /// [`Guard::optimizer`] holding the matching optimizer state); an error before the decision
    /// hands back the last accepted state from the store. See there for each error. Every error
    /// but an observer's or one before the decision ends the run.
    pub fn step_with(
        &mut self,
        lr: impl Into<ModuleLearningRate>,
        model: M,
        grads: GradientsParams,
        inputs: StepInputs,
    ) -> Result<GuardedStep<M>, GuardError> {
        let mut proposed = self.propose(lr, model, grads, inputs)?;
        let measurement = if proposed.needs_probe() {
            let clock = Instant::now();
            let y = match self.probe_proposal(proposed.step, &proposed.model) {
                Ok(y) => y,
                Err(error) => return Err(self.abandon(proposed.model, error)),
            };
            proposed.timings.measure += clock.elapsed();
            Some(y)
        } else {
            None
        };
        self.settle(proposed, measurement)
    }

    /// The first half of a guarded step: the gradient gate, the measurement a signal takes before
    /// the step, and the optimizer's proposal. What is left is the probe of the proposal (when
    /// [`Proposed::needs_probe`]) and [`Guard::settle`].
    pub(crate) fn propose(
        &mut self,
        lr: impl Into<ModuleLearningRate>,
        model: M,
        grads: GradientsParams,
        inputs: StepInputs,
    ) -> Result<Proposed<M>, GuardError> {
        // A state handed back by an earlier failed step and not taken is stale now.
        self.last_accepted = None;
        let step = self.protocol.next_step();
        let mut timings = StepTimings::default();
        let clock = Instant::now();
        let gradient_norm = match self.gate_input(step, &model, &grads) {
            Ok(norm) => norm,
            Err(error) => return Err(self.abandon(model, error)),
        };
        timings.measure = clock.elapsed();

        let mut update = None;
        let (model, pending) = match self.protocol.begin_step(gradient_norm)? {
            StepPlan::Skip => (model, Pending::Directed(Directive::Keep)),
            StepPlan::Propose { measure } => {
                let clock = Instant::now();
                let before = if measure {
                    match self.measure_before(step, &model, &grads, gradient_norm, inputs) {
                        Ok(before) => before,
                        Err(error) => return Err(self.abandon(model, error)),
                    }
                } else {
                    None
                };
                timings.measure += clock.elapsed();

                // The update gate judges measured steps: keep θ_t (parameters are shared, not
                // copied) to measure ‖θ_prop − θ_t‖ after the step.
                let previous =
                    (measure && self.config.controller.update_gate.enabled).then(|| model.clone());
                // The gate's patience is spent on an outsized gradient: it passes clipped.
                let grads = match self.protocol.gradient_clip() {
                    Some(factor) => scale_gradients(grads, &model, factor),
                    None => grads,
                };
                let clock = Instant::now();
                let mut proposal = self.optim.step(lr, model, grads);
                timings.optimizer = clock.elapsed();
                let clock = Instant::now();
                if let Some(previous) = previous {
                    let norm = match update_norm(&previous, &proposal) {
                        Ok(norm) => norm,
                        Err(source) => {
                            let error = GuardError::Signal { step, source };
                            return Err(self.abandon(proposal, error));
                        }
                    };
                    // The update gate's patience is spent on an outsized update: it is measured
                    // (and, if accepted, kept) clipped to the gate's ceiling.
                    if let Some(factor) = self.protocol.update_clip(norm) {
                        proposal = scale_update(&previous, proposal, factor);
                    }
                    update = Some(norm);
                }
                timings.measure += clock.elapsed();
                let pending = match (measure, before) {
                    (false, _) => Pending::Measured(None),
                    (true, Some(y)) => Pending::Measured(Some(y)),
                    (true, None) => Pending::Probe,
                };
                (proposal, pending)
            }
        };
        Ok(Proposed {
            step,
            model,
            timings,
            pending,
            update_norm: update,
        })
    }

    /// The second half of a guarded step: decides on the proposal with `probe_measurement` (the
    /// probe's y(θ_prop), required when [`Proposed::needs_probe`]), does what the protocol says
    /// (commit, restore, rewind, reset) and reports.
    pub(crate) fn settle(
        &mut self,
        proposed: Proposed<M>,
        probe_measurement: Option<f64>,
    ) -> Result<GuardedStep<M>, GuardError> {
        let Proposed {
            step,
            model,
            mut timings,
            pending,
            update_norm,
        } = proposed;
        let directive = match pending {
            Pending::Directed(directive) => directive,
            Pending::Measured(measurement) => {
                self.protocol.decide_with_update(measurement, update_norm)?
            }
            Pending::Probe => self.protocol.decide_with_update(
                Some(probe_measurement.ok_or(StabError::MissingMeasurement { step })?),
                update_norm,
            )?,
        };

        let clock = Instant::now();
        let phase = match directive {
            Directive::Keep => None,
            Directive::Commit(_) => Some(&mut timings.snapshot),
            _ => Some(&mut timings.restore),
        };
        let keep = phase.is_none();
        let discards = !matches!(directive, Directive::Keep | Directive::Commit(_));
        // From here on the protocol has decided: every error hands back the state the decision
        // left (when there is one) through `take_last_accepted`, with `self.optim` holding its
        // optimizer state.
        let (model, restored_fingerprint) = match self.obey(step, directive, model) {
            Ok(obeyed) => obeyed,
            Err(Disobeyed { error, state }) => {
                self.last_accepted = state;
                return Err(error);
            }
        };
        let verified = if keep {
            None
        } else {
            match self.fingerprint_if_verifying(step, &model) {
                Ok(verified) => verified,
                Err(error) => {
                    // The state is the one the store brought back or just saved; it could not be
                    // fingerprinted, so it is handed back unverified (see `GuardError::Fingerprint`).
                    self.last_accepted = Some(model);
                    return Err(error);
                }
            }
        };
        if let Some(phase) = phase {
            *phase = clock.elapsed();
        }
        let completed = match self.protocol.complete(Completion {
            fingerprint: verified,
            restored_fingerprint,
        }) {
            Ok(completed) => completed,
            Err(error) => {
                // A restored state that fails its fingerprint check is not the last accepted
                // state: nothing is handed back then. A commit cannot fail the check.
                if !discards {
                    self.last_accepted = Some(model);
                }
                return Err(error.into());
            }
        };
        if let Some(record) = &completed.record {
            for observer in &mut self.observers {
                if let Err(error) = observer.on_step(record) {
                    // The step is complete (committed, restored or kept): only its record is
                    // missing from this observer (and from the observers after it).
                    self.last_accepted = Some(model);
                    return Err(error.into());
                }
            }
        }
        if let Some(exhausted) = self.protocol.exhausted() {
            let error = StabError::RecoveryExhausted(Box::new(exhausted.clone()));
            self.last_accepted = Some(model);
            return Err(error.into());
        }
        Ok(GuardedStep {
            model,
            report: StepReport {
                step,
                action: completed.action,
                record: completed.record,
                counters: self.counters(),
                timings,
                update_norm,
            },
        })
    }

    /// Gives up a step that failed before its decision (a measurement, signal or probe error):
    /// brings the last accepted state back from the store in place of `model` (the proposal, or
    /// the current state when the optimizer has not stepped yet) and keeps it for
    /// [`Guard::take_last_accepted`], the optimizer holding its state; the protocol skips the
    /// step, so the guard can go on from that state. With `verify_restores`, only a state whose
    /// fingerprint matches the one recorded when it was saved is handed back. When the store
    /// cannot restore it nothing changes (the optimizer keeps what the failed step left). In
    /// observe mode, which never goes back (and saves nothing), `model` itself is handed back,
    /// with the optimizer as the failed step left it. Returns `error`.
    pub(crate) fn abandon(&mut self, model: M, error: GuardError) -> GuardError {
        if self.config.mode == GuardMode::Observe {
            let _ = self.protocol.abandon_step();
            self.last_accepted = Some(model);
            return error;
        }
        let Ok((restored, optim)) = self.store.restore(model, self.optim.clone()) else {
            return error;
        };
        if self.config.verify_restores {
            let expected = self.protocol.current_fingerprint();
            let actual = state_fingerprint(&restored, &optim).ok();
            if expected.is_none() || expected != actual {
                return error;
            }
        }
        self.optim = optim;
        // Fails only when no step was open (a gate error comes before `begin_step`): then there
        // is nothing to give up.
        let _ = self.protocol.abandon_step();
        self.last_accepted = Some(restored);
        error
    }

    /// Keeps `model` for [`Guard::take_last_accepted`]: the state a driver's failure after a
    /// decided step leaves (the overlapped guard's).
    pub(crate) fn hand_back(&mut self, model: M) {
        self.last_accepted = Some(model);
    }

    /// Moves the probe out of the guard (for a driver that measures on another thread).
    pub(crate) fn take_probe(&mut self) -> Option<Box<dyn Measure<M>>> {
        self.probe.take()
    }

    /// Puts a probe taken with [`Guard::take_probe`] back.
    pub(crate) fn put_probe(&mut self, probe: Box<dyn Measure<M>>) {
        self.probe = Some(probe);
    }

    /// One guarded step on an optimizer the caller lends, for a training driver that owns its
    /// optimizer (burn-train's `Learner` lends it to `TrainStep::optimize`; see
    /// the `learner` module of the `train` feature). The same step as [`Guard::step_with`], run
    /// on `optim` instead of the guard's own optimizer: on a rejection `optim` is restored in
    /// place, exactly (moments and step counts), like the model.
    ///
    /// The lent optimizer is swapped in for the step and swapped back out, so the two entry
    /// points share one implementation. Build such a guard with a clone of the lent optimizer
    /// (copy-on-write: the first snapshot costs no copy); the guard's own optimizer is not used
    /// while it is lent one.
    ///
    /// # Errors
    /// As [`Guard::step_with`]; `optim` then holds the optimizer state the failed step left:
    /// whenever [`Guard::take_last_accepted`] hands a model back, the state that matches it.
    pub fn step_lent_with(
        &mut self,
        optim: &mut ModuleOptimizer,
        lr: impl Into<ModuleLearningRate>,
        model: M,
        grads: GradientsParams,
        inputs: StepInputs,
    ) -> Result<GuardedStep<M>, GuardError> {
        self.with_lent_optimizer(optim, |guard| guard.step_with(lr, model, grads, inputs))
    }

    /// Runs `f` with `optim` lent in place of the guard's own optimizer, swapped back out after:
    /// a step ([`Guard::step_lent_with`]) or a checkpoint (the `Learner` integration) of a guard
    /// that is lent its optimizer.
    pub(crate) fn with_lent_optimizer<R>(
        &mut self,
        optim: &mut ModuleOptimizer,
        f: impl FnOnce(&mut Self) -> R,
    ) -> R {
        std::mem::swap(&mut self.optim, optim);
        let result = f(self);
        std::mem::swap(&mut self.optim, optim);
        result
    }

    /// Drops the state of the guard's own optimizer (keeps its configuration): for a guard that
    /// will only be lent optimizers ([`Guard::step_lent_with`]), so that its own copy does not
    /// keep the initial optimizer state alive.
    #[cfg(feature = "train")]
    pub(crate) fn clear_own_optimizer(&mut self) {
        self.optim = self.optim.clone().load_record(OptimizerRecord::default());
    }

    /// The store and the optimizer, for a resume that puts saved states in place
    /// ([`crate::checkpoint`]).
    pub(crate) fn resume_parts(&mut self) -> (&mut dyn StateStore<M>, &mut ModuleOptimizer) {
        (self.store.as_mut(), &mut self.optim)
    }

    /// Replaces the step protocol with a resumed one ([`crate::checkpoint`]).
    pub(crate) fn replace_protocol(&mut self, protocol: StepProtocol) {
        self.protocol = protocol;
    }

    /// The optimizer (its state is the accepted one after every decided step).
    pub fn optimizer(&self) -> &ModuleOptimizer {
        &self.optim
    }

    /// Ends guarding and hands the optimizer back.
    pub fn into_optimizer(self) -> ModuleOptimizer {
        self.optim
    }

    /// The model to continue from after a step that failed: the state the step's decision left
    /// (or, before the decision, the last accepted state), bit for bit (parameters and running
    /// statistics), with
    /// [`Guard::optimizer`] (or the lent optimizer of [`Guard::step_lent_with`]) holding its
    /// optimizer state. Taken: a second call returns `None`, and the next step clears it.
    ///
    /// What each error leaves:
    ///
    /// | error of the step | handed back |
    /// |---|---|
    /// | [`StabError::RecoveryExhausted`] | the last accepted state; the run has stopped |
    /// | [`GuardError::Observer`] | the state the completed step left: the committed proposal, the restored or rewound state, or the kept one. Only the record is missing from that observer (and the ones after it); the guard can go on stepping from this state |
    /// | [`GuardError::Store`] `save` or `copy`, on a commit | the accepted proposal. It is *not* in the store: the store's last snapshot is the previous accepted state (or, after a failed `copy`, the ring lacks an older copy) |
    /// | [`GuardError::Store`] `save`, after an optimizer reset | the restored state, its optimizer state cleared, as the reset left it (not saved) |
    /// | [`GuardError::Store`] `release`, after a rewind | the rewound state |
    /// | [`GuardError::Fingerprint`] | the state restored, rewound or committed, *unverified*: the check could not run |
    /// | [`GuardError::Store`] `restore` or `rewind` | `None`: the store could not bring the last accepted state back, and the rejected proposal is not handed back as if accepted. The optimizer holds the rejected proposal's state |
    /// | [`GuardError::Safety`] (`InexactRestore`, with [`GuardConfig::verify_restores`]) | `None`: what the store restored is not the saved state. The optimizer holds the state the store restored |
    /// | an error before the decision ([`GuardError::Probe`], [`GuardError::Signal`], [`GuardError::MissingInput`], [`GuardError::MissingProbe`]) | the last accepted state, brought back from the store (and, with [`GuardConfig::verify_restores`], checked against its fingerprint). The step is given up, its index skipped, and the guard can go on from that state. `None` if the store cannot bring it back or it fails the check; the optimizer then holds what the failed step left. In [`GuardMode::Observe`], which never goes back, the model as the failed step left it (the proposal, if the optimizer stepped) |
    ///
    /// After the other errors the run cannot go on (the protocol did not complete the step):
    /// start a new guard from the state handed back.
    pub fn take_last_accepted(&mut self) -> Option<M> {
        self.last_accepted.take()
    }

    /// The decision counters so far (all zero before the first decision).
    pub fn counters(&self) -> Counters {
        self.protocol.counters()
    }

    /// The current reference ŷ, once the controller has started.
    pub fn reference(&self) -> Option<f64> {
        self.protocol.reference()
    }

    /// The controller, once started (the probe signal starts it at build time, the others at
    /// their first measured step).
    pub fn controller(&self) -> Option<&Controller> {
        self.protocol.controller()
    }

    /// The step protocol: ladder level, drift statistic, snapshot slots.
    pub fn protocol(&self) -> &StepProtocol {
        &self.protocol
    }

    /// The configuration.
    pub fn config(&self) -> &GuardConfig {
        &self.config
    }

    /// Index of the next step.
    pub fn next_step(&self) -> u64 {
        self.protocol.next_step()
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

    /// What the snapshots cost in memory (reads the optimizer state to count it).
    pub fn store_memory(&self) -> StoreMemory {
        self.store.memory()
    }

    /// The gradient's norm when the gate (enforce mode) or the gradient-norm signal needs it.
    fn gate_input(
        &self,
        step: u64,
        model: &M,
        grads: &GradientsParams,
    ) -> Result<Option<f64>, GuardError> {
        let gate = self.config.controller.gate.enabled && self.config.mode == GuardMode::Enforce;
        if !gate {
            return Ok(None);
        }
        gradient_norm(grads, model)
            .map(Some)
            .map_err(|source| GuardError::Signal { step, source })
    }

    /// The signal's measurement when it is computed from the step's inputs, before the step.
    fn measure_before(
        &self,
        step: u64,
        model: &M,
        grads: &GradientsParams,
        gradient_norm_known: Option<f64>,
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
            SignalKind::GradientNormSpike => match gradient_norm_known {
                Some(norm) => Ok(Some(norm)),
                None => gradient_norm(grads, model).map(Some).map_err(signal_error),
            },
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

    fn store_error(operation: &'static str, step: u64) -> impl FnOnce(StoreError) -> GuardError {
        move |source| GuardError::Store {
            operation,
            step,
            source,
        }
    }

    fn commit(&mut self, step: u64, model: &M, update: &RingUpdate) -> Result<(), GuardError> {
        self.store
            .save(model, &self.optim)
            .map_err(Self::store_error("save", step))?;
        for (from, to) in update.copies() {
            self.store
                .copy(from, to)
                .map_err(Self::store_error("copy", step))?;
        }
        Ok(())
    }

    /// Does what the protocol said; returns the model to continue from (the optimizer is
    /// updated in place) and, after an optimizer reset, the fingerprint of the restored state
    /// before the reset (with `verify_restores`). On an error, hands back the state to continue
    /// from when the failure came after that state was in hand (a failed save or copy after a
    /// commit, a failed release after a rewind, a failed fingerprint or save after an optimizer
    /// reset), with `self.optim` holding its optimizer state; `None` when the store could not
    /// bring the last accepted state back (the rejected proposal is not handed back).
    fn obey(
        &mut self,
        step: u64,
        directive: Directive,
        model: M,
    ) -> Result<(M, Option<u64>), Disobeyed<M>> {
        let mut restored_fingerprint = None;
        let model = match directive {
            Directive::Keep => model,
            Directive::Commit(update) => {
                if let Err(error) = self.commit(step, &model, &update) {
                    return Err(Disobeyed::with_state(error, model));
                }
                model
            }
            Directive::Restore | Directive::Stop => {
                let (model, optim) = self
                    .store
                    .restore(model, self.optim.clone())
                    .map_err(Self::store_error("restore", step))
                    .map_err(Disobeyed::without_state)?;
                self.optim = optim;
                model
            }
            Directive::ResetOptimizer => {
                let (model, optim) = self
                    .store
                    .restore(model, self.optim.clone())
                    .map_err(Self::store_error("restore", step))
                    .map_err(Disobeyed::without_state)?;
                self.optim = optim;
                restored_fingerprint = match self.fingerprint_if_verifying(step, &model) {
                    Ok(fingerprint) => fingerprint,
                    Err(error) => return Err(Disobeyed::with_state(error, model)),
                };
                // An empty record clears every parameter's state (moments, step counts); the
                // optimizer's configuration and groups are kept.
                self.optim = self.optim.clone().load_record(OptimizerRecord::default());
                if let Err(error) = self
                    .store
                    .save(&model, &self.optim)
                    .map_err(Self::store_error("save", step))
                {
                    return Err(Disobeyed::with_state(error, model));
                }
                model
            }
            Directive::Rewind { slot, release } => {
                let (model, optim) = self
                    .store
                    .rewind(slot, model, self.optim.clone())
                    .map_err(Self::store_error("rewind", step))
                    .map_err(Disobeyed::without_state)?;
                self.optim = optim;
                for slot in release {
                    if let Err(error) = self
                        .store
                        .release(slot)
                        .map_err(Self::store_error("release", step))
                    {
                        return Err(Disobeyed::with_state(error, model));
                    }
                }
                model
            }
        };
        Ok((model, restored_fingerprint))
    }

    fn fingerprint_if_verifying(&self, step: u64, model: &M) -> Result<Option<u64>, GuardError> {
        if !self.config.verify_restores {
            return Ok(None);
        }
        state_fingerprint(model, &self.optim)
            .map(Some)
            .map_err(|source: StoreError| GuardError::Fingerprint { step, source })
    }
}

/// An error of [`Guard::obey`], with the state to continue from when the failure came after
/// that state was in hand.
struct Disobeyed<M> {
    error: GuardError,
    state: Option<M>,
}

impl<M> Disobeyed<M> {
    fn with_state(error: GuardError, state: M) -> Self {
        Self {
            error,
            state: Some(state),
        }
    }

    fn without_state(error: GuardError) -> Self {
        Self { error, state: None }
    }
}

/// A proposal waiting for its decision: what [`Guard::propose`] leaves for [`Guard::settle`].
pub(crate) struct Proposed<M> {
    /// The step index t.
    pub(crate) step: u64,
    /// θ_prop (or the unchanged model when the gate skipped the step).
    pub(crate) model: M,
    /// Timings so far.
    pub(crate) timings: StepTimings,
    pending: Pending,
    /// ‖θ_prop − θ_t‖ when the update gate judges this step.
    update_norm: Option<f64>,
}

impl<M> Proposed<M> {
    /// Whether the decision waits for the probe's measurement of [`Proposed::model`].
    pub(crate) fn needs_probe(&self) -> bool {
        matches!(self.pending, Pending::Probe)
    }
}

/// What the decision of a proposed step waits for.
enum Pending {
    /// Nothing: the gate already decided.
    Directed(Directive),
    /// Nothing more: the measurement was taken before the step (or the step is unprobed).
    Measured(Option<f64>),
    /// The probe's measurement of the proposal.
    Probe,
}
