//! Building a [`Guard`]: its measurement, observers and store.

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Tensor;
use stab_core::{SignalKind, StepObserver};

use crate::config::GuardConfig;
use crate::error::GuardError;
use crate::guard::{Guard, ReferenceLoss};
use crate::probe::Measure;
use crate::store::StateStore;

/// Builds a [`Guard`]: the measurement, optional observers and store, then
/// [`GuardBuilder::build`].
pub struct GuardBuilder<M: Module> {
    config: GuardConfig,
    probe: Option<Box<dyn Measure<M>>>,
    agreement: Option<ReferenceLoss<M>>,
    observers: Vec<Box<dyn StepObserver + Send>>,
    store: Option<Box<dyn StateStore<M>>>,
    initial_measurement: Option<f64>,
}

impl<M: Module> std::fmt::Debug for GuardBuilder<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardBuilder")
            .field("config", &self.config)
            .field("probe", &self.probe.is_some())
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

impl<M: Module + 'static> GuardBuilder<M> {
    /// A builder with `config` and nothing else (see [`Guard::builder`]).
    pub fn new(config: GuardConfig) -> Self {
        Self {
            config,
            probe: None,
            agreement: None,
            observers: Vec::new(),
            store: None,
            initial_measurement: None,
        }
    }

    /// The measurement of the probe signal (required for [`SignalKind::Probe`], the default),
    /// usually a [`crate::Probe`].
    pub fn probe(mut self, probe: impl Measure<M> + 'static) -> Self {
        self.probe = Some(Box::new(probe));
        self
    }

    /// The loss of a fixed reference minibatch, for [`SignalKind::GradientAgreement`]: the guard
    /// differentiates it at every measured step (running statistics untouched, see
    /// [`crate::reference_gradients`]) unless [`crate::StepInputs::reference_grads`] is given.
    pub fn agreement_reference(mut self, loss: impl Fn(&M) -> Tensor<1> + Send + 'static) -> Self {
        self.agreement = Some(Box::new(loss));
        self
    }

    /// Adds an observer that receives every step record (e.g. stab-core's `JsonLinesWriter`).
    pub fn observer(mut self, observer: impl StepObserver + Send + 'static) -> Self {
        self.observers.push(Box::new(observer));
        self
    }

    /// Uses a custom store instead of the one the configuration names.
    pub fn store(mut self, store: impl StateStore<M> + 'static) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// Starts the reference at `y0` instead of measuring the initial model. For the signals other
    /// than the probe, the default is the first measured step's own measurement.
    pub fn initial_measurement(mut self, y0: f64) -> Self {
        self.initial_measurement = Some(y0);
        self
    }

    /// Measures the initial model (probe signal), saves it as the first accepted snapshot and
    /// returns the guard, which now owns the optimizer.
    ///
    /// # Errors
    /// An invalid configuration, a missing probe, a non-finite y(θ₀), a failing probe or store.
    pub fn build(self, model: &M, optim: ModuleOptimizer) -> Result<Guard<M>, GuardError> {
        let config = self.config;
        config.validate().map_err(stab_core::StabError::from)?;
        if config.controller.signal == SignalKind::Probe && self.probe.is_none() {
            return Err(GuardError::MissingProbe);
        }
        let initial = match (self.initial_measurement, &self.probe) {
            (Some(y0), _) => Some(y0),
            (None, Some(probe)) if config.controller.signal == SignalKind::Probe => Some(
                probe
                    .measure(model)
                    .map_err(|source| GuardError::Probe { step: 0, source })?,
            ),
            _ => None,
        };
        let store = match self.store {
            Some(store) => store,
            None => config
                .store
                .build::<M>()
                .map_err(|source| GuardError::Store {
                    operation: "save",
                    step: 0,
                    source,
                })?,
        };
        let mut guard = Guard::from_parts(
            config,
            optim,
            store,
            self.probe,
            self.agreement,
            self.observers,
            initial,
        )?;
        guard.start(model)?;
        Ok(guard)
    }
}
