use std::fmt::Debug;

use serde::{Deserialize, Serialize};

use super::{EwmaReference, GradientAgreementSignal, ProbeSignal, SpikeSignal};

/// What an innovation means, which decides which safety guarantees apply to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InnovationKind {
    /// ν = y − ŷ with ŷ a convex combination of accepted measurements (starting at y(θ₀)).
    /// Theorem 7.3 and Proposition 7.5 then bound the measurement itself.
    ReferenceDifference,
    /// Any other scalar score (a z-score, a drop in agreement): the rule still bounds ν, but the
    /// measurement envelope of Proposition 7.5 does not follow.
    Score,
}

/// An admissible innovation signal (Definition 5.1).
///
/// The controller calls [`InnovationSignal::innovation`] with a *finite* measurement of the
/// proposal, decides, then calls exactly one of [`InnovationSignal::accept`] or
/// [`InnovationSignal::reject`] with that measurement. Non-finite measurements are rejected by the
/// controller before they reach the signal, so they never enter its history.
///
/// The summary a signal keeps must stay bounded in size (an EWMA, a fixed window), and must not
/// change on a rejection: a rejected proposal never happened.
pub trait InnovationSignal: Debug + Send {
    /// Short stable name used in step records (`"probe"`, `"loss-spike"`, …).
    fn name(&self) -> &'static str;

    /// What the innovation means; see [`InnovationKind`].
    fn kind(&self) -> InnovationKind;

    /// The current reference the next measurement is compared against (ŷ for the probe signal, the
    /// window mean for spike signals), for records and for the safety monitor.
    fn reference(&self) -> f64;

    /// The innovation ν of a finite measurement against the accepted history. May be non-finite
    /// for extreme inputs (e.g. overflow), which the controller treats as a rejection.
    fn innovation(&self, measurement: f64) -> f64;

    /// The proposal measured `measurement` was accepted: fold it into the history.
    fn accept(&mut self, measurement: f64);

    /// A copy of the signal with its history, kept with each snapshot so that a rewind brings the
    /// controller's state back together with the model's (`Box::new(self.clone())`).
    fn clone_box(&self) -> Box<dyn InnovationSignal>;

    /// The signal's history as plain data, for persisting a run ([`crate::ProtocolState`]).
    /// `None` (the default) for a signal that cannot be saved: a protocol driven by it cannot be
    /// checkpointed. Every built-in signal saves itself.
    fn save_state(&self) -> Option<SignalState> {
        None
    }

    /// The proposal measured `measurement` was rejected. The default does nothing, which is what
    /// every signal here wants: the history holds accepted measurements only.
    fn reject(&mut self, _measurement: f64) {}
}

/// The history of a built-in signal as plain data (see [`InnovationSignal::save_state`]): what a
/// checkpoint keeps so that a resumed run computes the same innovations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "kebab-case")]
pub enum SignalState {
    /// [`ProbeSignal`]: its EWMA reference ŷ and smoothing factor α.
    Probe {
        /// ŷ.
        reference: f64,
        /// α.
        alpha: f64,
    },
    /// [`GradientAgreementSignal`]: its EWMA of accepted agreements and α.
    GradientAgreement {
        /// The EWMA of accepted agreements.
        reference: f64,
        /// α.
        alpha: f64,
    },
    /// [`SpikeSignal`]: its name, window length and accepted measurements (oldest first).
    Spike {
        /// `"loss-spike"` or `"gradient-norm-spike"`.
        name: String,
        /// Window length.
        window: usize,
        /// Accepted measurements in the window, oldest first.
        history: Vec<f64>,
    },
}

impl SignalState {
    /// Rebuilds the signal this state was saved from.
    ///
    /// # Errors
    /// The name of a spike signal stab does not know (a corrupted or foreign state).
    pub fn into_signal(self) -> Result<Box<dyn InnovationSignal>, String> {
        Ok(match self {
            Self::Probe { reference, alpha } => Box::new(ProbeSignal::new(reference, alpha)),
            Self::GradientAgreement { reference, alpha } => {
                Box::new(GradientAgreementSignal::new(reference, alpha))
            }
            Self::Spike {
                name,
                window,
                history,
            } => Box::new(SpikeSignal::from_history(&name, window, history)?),
        })
    }

    /// The state of an EWMA reference (shared by the probe and agreement signals).
    pub(crate) fn ewma(reference: &EwmaReference) -> (f64, f64) {
        (reference.value(), reference.alpha())
    }
}
