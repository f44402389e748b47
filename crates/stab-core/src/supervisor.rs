//! The generic supervisor: a thin driver of the [`StepProtocol`] for any state type, with
//! closures for the optimizer step and the measurement.

use crate::config::ControllerConfig;
use crate::controller::{Controller, Counters};
use crate::error::StabError;
use crate::protocol::{Completion, Directive, Mode, StepPlan, StepProtocol};
use crate::record::{StepObserver, StepRecord};
use crate::snapshot::SnapshotStore;

/// What happened in one guarded step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The step was decided: the proposal was measured (every step when the probe interval is 1)
    /// or its gradient was gated. The record's `action` says what was done.
    Decided(StepRecord),
    /// No measurement this step (probe interval > 1): the proposal is kept provisionally; the next
    /// probed step decides for it and, if rejected, rolls back past it.
    Unprobed {
        /// Step index.
        step: u64,
    },
}

impl StepOutcome {
    /// The record, if this step was decided.
    pub fn record(&self) -> Option<&StepRecord> {
        match self {
            Self::Decided(record) => Some(record),
            Self::Unprobed { .. } => None,
        }
    }

    /// `true` if this step rejected its proposal (or its gradient).
    pub fn is_rejection(&self) -> bool {
        self.record().is_some_and(|r| !r.decision.is_accepted())
    }
}

/// The state to continue from, and what happened.
#[derive(Debug)]
pub struct GuardedStep<S> {
    /// The proposal if accepted (or unprobed), otherwise the restored state: the last accepted
    /// one, an older one after a rewind, or the last accepted one with a fresh optimizer state.
    pub state: S,
    /// The decision, or why there was none.
    pub outcome: StepOutcome,
}

type FingerprintFn<S> = Box<dyn Fn(&S) -> u64 + Send>;
type ResetFn<S> = Box<dyn Fn(S) -> S + Send>;

/// Runs Algorithm 1 with recovery around any training loop: the caller gives a `propose` closure
/// (one optimizer step) and a `measure` closure (e.g. the probe loss); the [`StepProtocol`]
/// decides, the supervisor obeys (commits the proposal to the snapshot store, restores or rewinds
/// a snapshot, resets the optimizer state) and tells the observers.
///
/// This is how a framework other than Burn adopts stab: the state `S` is whatever holds the
/// parameters *and* optimizer state (and any mutable buffers), the store knows how to copy it.
///
/// When the escalation ladder runs out, [`Supervisor::step`] returns
/// [`StabError::RecoveryExhausted`] and keeps the last accepted state for
/// [`Supervisor::take_last_accepted`]: nothing is lost, and the run does not loop.
pub struct Supervisor<S, St: SnapshotStore<S>> {
    protocol: StepProtocol,
    store: St,
    fingerprint: Option<FingerprintFn<S>>,
    reset: Option<ResetFn<S>>,
    observers: Vec<Box<dyn StepObserver + Send>>,
    last_accepted: Option<S>,
}

impl<S, St: SnapshotStore<S>> std::fmt::Debug for Supervisor<S, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<S, St: SnapshotStore<S>> Supervisor<S, St> {
    /// Starts supervising from `initial_state`, measured `initial_measurement` (y(θ₀)): saves it as
    /// the first accepted snapshot and starts the reference there. The safety monitor is on.
    ///
    /// # Errors
    /// Configuration errors, a non-finite initial measurement, or a failing first save.
    pub fn new(
        config: &ControllerConfig,
        store: St,
        initial_state: &S,
        initial_measurement: f64,
    ) -> Result<Self, StabError> {
        let protocol = StepProtocol::new(config, Mode::Enforce, Some(initial_measurement))?;
        let mut supervisor = Self {
            protocol,
            store,
            fingerprint: None,
            reset: None,
            observers: Vec::new(),
            last_accepted: None,
        };
        let directive = supervisor.protocol.start()?;
        if let Directive::Commit(update) = &directive {
            supervisor.commit(0, initial_state, update)?;
        }
        supervisor.protocol.complete(Completion::default())?;
        Ok(supervisor)
    }

    /// Fingerprints states so that every restore is checked bit for bit (Proposition 7.4). The
    /// function must hash everything a restore must bring back. `initial_state` is the state
    /// given to [`Supervisor::new`].
    pub fn with_fingerprint(
        mut self,
        initial_state: &S,
        fingerprint: impl Fn(&S) -> u64 + Send + 'static,
    ) -> Self {
        self.protocol
            .fingerprint_initial_state(fingerprint(initial_state));
        self.fingerprint = Some(Box::new(fingerprint));
        self
    }

    /// How to clear the optimizer's state of a state (momentum, moments, step counts) while
    /// keeping its parameters: enables the ladder's reset rung.
    pub fn with_optimizer_reset(mut self, reset: impl Fn(S) -> S + Send + 'static) -> Self {
        self.reset = Some(Box::new(reset));
        self.protocol.set_optimizer_reset(true);
        self
    }

    /// Turns the runtime safety monitor off (it is cheap; this exists for benchmarks).
    pub fn without_monitor(mut self) -> Self {
        self.protocol.disable_monitor();
        self
    }

    /// Adds an observer that receives every step record.
    pub fn with_observer(mut self, observer: impl StepObserver + Send + 'static) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    /// The controller (counters, reference).
    pub fn controller(&self) -> &Controller {
        self.protocol
            .controller()
            .expect("the supervisor starts its controller at construction")
    }

    /// The step protocol (ladder level, drift statistic, slots).
    pub fn protocol(&self) -> &StepProtocol {
        &self.protocol
    }

    /// The decision counters.
    pub fn counters(&self) -> Counters {
        self.protocol.counters()
    }

    /// The snapshot store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// The index of the next step.
    pub fn next_step(&self) -> u64 {
        self.protocol.next_step()
    }

    /// The last accepted state, after [`StabError::RecoveryExhausted`] stopped the run.
    pub fn take_last_accepted(&mut self) -> Option<S> {
        self.last_accepted.take()
    }

    /// Runs one guarded step from `state` (the state the last step returned).
    ///
    /// `propose` performs one optimizer step and returns the proposal; `measure` measures it. On
    /// acceptance the proposal is saved and returned; on rejection a snapshot is restored and
    /// returned (see [`GuardedStep::state`]). A non-finite measurement is a rejection, not an
    /// error.
    ///
    /// # Errors
    /// A failing closure or store, a safety violation, a failing observer, or
    /// [`StabError::RecoveryExhausted`] when the escalation ladder has run out.
    pub fn step<E, P, M>(
        &mut self,
        state: S,
        propose: P,
        measure: M,
    ) -> Result<GuardedStep<S>, StabError>
    where
        E: std::error::Error + Send + Sync + 'static,
        P: FnOnce(S) -> Result<S, E>,
        M: FnOnce(&S) -> Result<f64, E>,
    {
        self.run(state, None, propose, measure)
    }

    /// Like [`Supervisor::step`], with the norm of the gradient `propose` is about to apply: the
    /// gradient gate may reject it before `propose` runs (then `propose` is not called and the
    /// state is returned as it was).
    ///
    /// # Errors
    /// As [`Supervisor::step`].
    pub fn step_gated<E, P, M>(
        &mut self,
        state: S,
        gradient_norm: f64,
        propose: P,
        measure: M,
    ) -> Result<GuardedStep<S>, StabError>
    where
        E: std::error::Error + Send + Sync + 'static,
        P: FnOnce(S) -> Result<S, E>,
        M: FnOnce(&S) -> Result<f64, E>,
    {
        self.run(state, Some(gradient_norm), propose, measure)
    }

    fn run<E, P, M>(
        &mut self,
        state: S,
        gradient_norm: Option<f64>,
        propose: P,
        measure: M,
    ) -> Result<GuardedStep<S>, StabError>
    where
        E: std::error::Error + Send + Sync + 'static,
        P: FnOnce(S) -> Result<S, E>,
        M: FnOnce(&S) -> Result<f64, E>,
    {
        let step = self.protocol.next_step();
        let (state, directive) = match self.protocol.begin_step(gradient_norm)? {
            StepPlan::Skip => (state, Directive::Keep),
            StepPlan::Propose { measure: measured } => {
                let proposed = (move || {
                    let proposal = propose(state).map_err(|e| ("propose", e))?;
                    let measurement = if measured {
                        Some(measure(&proposal).map_err(|e| ("measure", e))?)
                    } else {
                        None
                    };
                    Ok((proposal, measurement))
                })();
                match proposed {
                    Ok((proposal, measurement)) => (proposal, self.protocol.decide(measurement)?),
                    Err((stage, e)) => {
                        self.protocol.abandon_step()?;
                        return Err(StabError::Closure {
                            stage,
                            step,
                            source: Box::new(e),
                        });
                    }
                }
            }
        };
        let check = !matches!(directive, Directive::Keep);
        let (state, restored_fingerprint) = self.obey(step, directive, state)?;
        let fingerprint = match (&self.fingerprint, check) {
            (Some(fingerprint), true) => Some(fingerprint(&state)),
            _ => None,
        };
        let completed = self.protocol.complete(Completion {
            fingerprint,
            restored_fingerprint,
        })?;
        if let Some(record) = &completed.record {
            for observer in &mut self.observers {
                observer.on_step(record)?;
            }
        }
        if let Some(exhausted) = self.protocol.exhausted() {
            let error = StabError::RecoveryExhausted(Box::new(exhausted.clone()));
            self.last_accepted = Some(state);
            return Err(error);
        }
        let outcome = match completed.record {
            Some(record) => StepOutcome::Decided(record),
            None => StepOutcome::Unprobed { step },
        };
        Ok(GuardedStep { state, outcome })
    }

    fn store_error(operation: &'static str, step: u64) -> impl FnOnce(St::Error) -> StabError {
        move |e| StabError::Store {
            operation,
            step,
            source: Box::new(e),
        }
    }

    fn commit(
        &mut self,
        step: u64,
        state: &S,
        update: &crate::protocol::RingUpdate,
    ) -> Result<(), StabError> {
        self.store
            .save(state)
            .map_err(Self::store_error("save", step))?;
        for (from, to) in update.copies() {
            self.store
                .copy(from, to)
                .map_err(Self::store_error("copy", step))?;
        }
        Ok(())
    }

    /// Does what the protocol said; returns the state to continue from (and, after an optimizer
    /// reset, the fingerprint of the restored state before the reset).
    fn obey(
        &mut self,
        step: u64,
        directive: Directive,
        state: S,
    ) -> Result<(S, Option<u64>), StabError> {
        let mut restored_fingerprint = None;
        let state = match directive {
            Directive::Keep => state,
            Directive::Commit(update) => {
                self.commit(step, &state, &update)?;
                state
            }
            Directive::Restore | Directive::Stop => {
                drop(state);
                self.store
                    .restore()
                    .map_err(Self::store_error("restore", step))?
            }
            Directive::ResetOptimizer => {
                drop(state);
                let restored = self
                    .store
                    .restore()
                    .map_err(Self::store_error("restore", step))?;
                restored_fingerprint = self.fingerprint.as_ref().map(|f| f(&restored));
                let reset = self
                    .reset
                    .as_ref()
                    .expect("the protocol resets only when a reset function was given");
                let state = reset(restored);
                self.store
                    .save(&state)
                    .map_err(Self::store_error("save", step))?;
                state
            }
            Directive::Rewind { slot, release } => {
                drop(state);
                let restored = self
                    .store
                    .rewind(slot)
                    .map_err(Self::store_error("rewind", step))?;
                for slot in release {
                    self.store
                        .release(slot)
                        .map_err(Self::store_error("release", step))?;
                }
                restored
            }
        };
        Ok((state, restored_fingerprint))
    }
}
