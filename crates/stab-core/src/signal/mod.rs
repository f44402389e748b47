//! Admissible innovation signals (Definition 5.1 of the paper).
//!
//! A signal turns a scalar measurement of a proposal into an innovation ν, using only a bounded
//! summary of the accepted history, and is told what became of each proposal.

mod agreement;
mod base;
mod ewma;
mod probe;
mod spike;

pub use agreement::GradientAgreementSignal;
pub use base::{InnovationKind, InnovationSignal, SignalState};
pub use ewma::EwmaReference;
pub use probe::ProbeSignal;
pub use spike::SpikeSignal;
