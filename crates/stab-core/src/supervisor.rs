//! The generic supervisor: one guarded step for any state type.

use crate::config::ControllerConfig;
use crate::controller::{Controller, Counters};
use crate::error::StabError;
use crate::monitor::SafetyMonitor;
use crate::record::{StepObserver, StepRecord};
use crate::snapshot::SnapshotStore;

/// What happened in one guarded step.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// The proposal was measured and decided (every step when the probe interval is 1).
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

    /// `true` if this step rolled the state back.
    pub fn is_rejection(&self) -> bool {
        self.record().is_some_and(|r| !r.decision.is_accepted())
    }
}

/// The state to continue from, and what happened.
#[derive(Debug)]
pub struct GuardedStep<S> {
    /// The proposal if accepted (or unprobed), otherwise the restored last accepted state.
    pub state: S,
    /// The decision, or why there was none.
    pub outcome: StepOutcome,
}

type FingerprintFn<S> = Box<dyn Fn(&S) -> u64 + Send>;

/// Runs Algorithm 1 around any training loop: the caller gives a `propose` closure (one optimizer
/// step) and a `measure` closure (e.g. the probe loss); the supervisor decides, commits the
/// proposal to the snapshot store or restores the last accepted state, checks the safety
/// invariants and tells the observers.
///
/// This is how a framework other than Burn adopts stab: the state `S` is whatever holds the
/// parameters *and* optimizer state (and any mutable buffers), the store knows how to copy it.
pub struct Supervisor<S, St: SnapshotStore<S>> {
    controller: Controller,
    store: St,
    monitor: Option<SafetyMonitor>,
    fingerprint: Option<FingerprintFn<S>>,
    last_accepted_fingerprint: Option<u64>,
    observers: Vec<Box<dyn StepObserver + Send>>,
    probe_interval: u64,
    step: u64,
}

impl<S, St: SnapshotStore<S>> std::fmt::Debug for Supervisor<S, St> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("controller", &self.controller)
            .field("monitor", &self.monitor)
            .field("probe_interval", &self.probe_interval)
            .field("step", &self.step)
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
        mut store: St,
        initial_state: &S,
        initial_measurement: f64,
    ) -> Result<Self, StabError> {
        let controller = Controller::from_config(config, initial_measurement)?;
        store.save(initial_state).map_err(|e| StabError::Store {
            operation: "save",
            step: 0,
            source: Box::new(e),
        })?;
        Ok(Self {
            controller,
            store,
            monitor: Some(SafetyMonitor::new(initial_measurement)),
            fingerprint: None,
            last_accepted_fingerprint: None,
            observers: Vec::new(),
            probe_interval: config.probe_interval,
            step: 0,
        })
    }

    /// Fingerprints states so that every restore is checked bit for bit (Proposition 7.4). The
    /// function must hash everything a restore must bring back. `initial_state` is the state
    /// given to [`Supervisor::new`].
    pub fn with_fingerprint(
        mut self,
        initial_state: &S,
        fingerprint: impl Fn(&S) -> u64 + Send + 'static,
    ) -> Self {
        self.last_accepted_fingerprint = Some(fingerprint(initial_state));
        self.fingerprint = Some(Box::new(fingerprint));
        self
    }

    /// Turns the runtime safety monitor off (it is cheap; this exists for benchmarks).
    pub fn without_monitor(mut self) -> Self {
        self.monitor = None;
        self
    }

    /// Adds an observer that receives every step record.
    pub fn with_observer(mut self, observer: impl StepObserver + Send + 'static) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    /// The controller (counters, reference).
    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// The decision counters.
    pub fn counters(&self) -> Counters {
        self.controller.counters()
    }

    /// The snapshot store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// The index of the next step.
    pub fn next_step(&self) -> u64 {
        self.step
    }

    /// Runs one guarded step from `state` (the current accepted state).
    ///
    /// `propose` performs one optimizer step and returns the proposal; `measure` measures it. On
    /// acceptance the proposal is saved and returned; on rejection the last accepted state is
    /// restored from the store and returned. A non-finite measurement is a rejection, not an
    /// error.
    ///
    /// # Errors
    /// A failing closure or store, a safety violation, or a failing observer.
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
        let step = self.step;
        self.step += 1;
        let closure_error = |stage: &'static str| {
            move |e: E| StabError::Closure {
                stage,
                step,
                source: Box::new(e),
            }
        };
        let proposal = propose(state).map_err(closure_error("propose"))?;
        if !(step + 1).is_multiple_of(self.probe_interval) {
            return Ok(GuardedStep {
                state: proposal,
                outcome: StepOutcome::Unprobed { step },
            });
        }
        let measurement = measure(&proposal).map_err(closure_error("measure"))?;
        let mut record = self.controller.decide(measurement);
        record.step = step;
        if let Some(monitor) = &mut self.monitor {
            monitor.check_decision(&record)?;
        }

        let state = if record.decision.is_accepted() {
            self.store.save(&proposal).map_err(|e| StabError::Store {
                operation: "save",
                step,
                source: Box::new(e),
            })?;
            if let Some(fingerprint) = &self.fingerprint {
                self.last_accepted_fingerprint = Some(fingerprint(&proposal));
            }
            proposal
        } else {
            drop(proposal);
            let restored = self.store.restore().map_err(|e| StabError::Store {
                operation: "restore",
                step,
                source: Box::new(e),
            })?;
            if let (Some(fingerprint), Some(expected), Some(monitor)) = (
                &self.fingerprint,
                self.last_accepted_fingerprint,
                &self.monitor,
            ) {
                monitor.check_restore(step, expected, fingerprint(&restored))?;
            }
            restored
        };
        for observer in &mut self.observers {
            observer.on_step(&record)?;
        }
        Ok(GuardedStep {
            state,
            outcome: StepOutcome::Decided(record),
        })
    }
}
