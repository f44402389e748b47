//! # stab-core
//!
//! The backend-free heart of **stab**: a supervisory controller that makes neural-network training
//! self-healing ("Automatic Stability and Recovery for Neural Network Training", 2026).
//!
//! After the optimizer proposes an update, the proposal is measured on a signal the optimizer never
//! trained on (by default the loss on a small held-out probe set). The innovation
//! `ν = y(θ_prop) − ŷ` against an EWMA `ŷ` of accepted measurements decides: accept iff `ν ≤ ε`,
//! otherwise roll parameters *and* optimizer state back to the last accepted snapshot.
//!
//! This crate depends on no tensor library. It provides:
//! - [`InnovationSignal`] and its implementations: [`ProbeSignal`] (the paper's),
//!   [`SpikeSignal`] (training-loss or gradient-norm z-scores: the naive baseline), and
//!   [`GradientAgreementSignal`];
//! - [`DecisionRule`] with [`ThresholdRule`] (accept iff ν ≤ ε), returning a typed [`Decision`];
//! - [`Controller`]: signal + rule + counters;
//! - [`StepProtocol`]: Algorithm 1 with recovery as a state machine with no I/O — probe cadence,
//!   calibration, observe mode, the decision, the safety monitor, drift detection
//!   ([`detect::DriftDetector`]), the pre-step gradient gate ([`detect::NormGate`]), a ring
//!   of snapshots at spaced ages and an escalation ladder (rewind, reset the optimizer, stop).
//!   Every driver obeys it: the closure [`Supervisor`] here, stab-burn's `Guard`, your own loop;
//! - [`SnapshotStore`] (numbered slots) with [`InMemoryStore`], and the generic [`Supervisor`]
//!   that runs one guarded step (propose, measure, decide, obey) for any state type;
//! - [`SafetyMonitor`]: Theorem 7.3, Propositions 7.4 and 7.5 checked at run time;
//! - [`ControllerConfig`] (serde, validated), [`StepRecord`] and [`JsonLinesWriter`].
//!
//! ```
//! use stab_core::{ControllerConfig, InMemoryStore, Supervisor};
//!
//! // A "model": one parameter and its momentum, trained towards 3.0.
//! #[derive(Clone)]
//! struct State { w: f64, m: f64 }
//! let loss = |s: &State| (s.w - 3.0).powi(2);
//!
//! let config = ControllerConfig::default().with_epsilon(0.5);
//! let state = State { w: 0.0, m: 0.0 };
//! let mut sup = Supervisor::new(&config, InMemoryStore::new(), &state, loss(&state)).unwrap();
//! let mut state = state;
//! for t in 0..20 {
//!     let scale = if t == 10 { 1e6 } else { 1.0 }; // an injected gradient blow-up
//!     let step = sup
//!         .step(
//!             state,
//!             |mut s| {
//!                 let g = 2.0 * (s.w - 3.0) * scale;
//!                 s.m = 0.5 * s.m + g;
//!                 s.w -= 0.1 * s.m;
//!                 Ok::<_, std::convert::Infallible>(s)
//!             },
//!             |s| Ok(loss(s)),
//!         )
//!         .unwrap();
//!     state = step.state;
//! }
//! assert_eq!(sup.counters().rejected, 1);
//! assert!(loss(&state) < 1e-2);
//! ```
#![warn(missing_docs)]

mod config;
mod controller;
mod decision;
pub mod detect;
mod error;
mod fingerprint;
pub mod monitor;
pub mod protocol;
pub mod record;
pub mod signal;
mod snapshot;
mod supervisor;

pub use config::{
    AcceptanceConfig, ControllerConfig, DriftConfig, GateConfig, LadderConfig, MAX_LADDER_COUNT,
    MAX_RING_AGE, MAX_RING_LEVELS, MAX_RUNGS, MAX_WINDOW, PAPER_EPSILON, RingConfig, Rung,
    SignalKind,
};
pub use controller::{Controller, Counters};
pub use decision::{Decision, DecisionRule, RejectionReason, ThresholdRule};
pub use detect::GateTest;
pub use error::{ConfigError, ObserverError, StabError};
pub use fingerprint::Fingerprint;
pub use monitor::{SafetyMonitor, SafetyViolation};
pub use protocol::{
    Completed, Completion, Directive, Mode, PROTOCOL_STATE_VERSION, ProtocolState,
    ProtocolStateError, RecoveryExhausted, RingUpdate, StepPlan, StepProtocol,
};
pub use record::{Action, JsonLinesWriter, RecordCollector, StepObserver, StepRecord};
pub use signal::{
    EwmaReference, GradientAgreementSignal, InnovationKind, InnovationSignal, ProbeSignal,
    SignalState, SpikeSignal,
};
pub use snapshot::{InMemoryStore, InMemoryStoreError, SlotId, SlotTable, SnapshotStore};
pub use supervisor::{GuardedStep, StepOutcome, Supervisor};
