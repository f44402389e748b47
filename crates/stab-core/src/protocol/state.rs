//! The protocol's whole state as plain data: what a checkpoint keeps so that a run killed between
//! two steps resumes exactly where it was.
//!
//! [`StepProtocol::save_state`] takes it between steps; [`StepProtocol::from_state`] rebuilds the
//! protocol, after checking the format version and that it belongs to the configuration it is
//! resumed with. It holds the controller (the signal's history: ŷ, or a spike window; the
//! counters), the safety monitor's running extremes, the drift detector, the gradient and update
//! gates and the scale-free threshold (version 2),
//! every ring slot's bookkeeping (position, depth, fingerprint and the controller's state at that
//! snapshot, which a later rewind restores), the escalation ladder, the step index and the
//! gradient norms of unprobed steps waiting for their verdict. The model and optimizer states the
//! ring slots name live in the driver's store; the driver persists them beside this.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::ring::{ControllerState, Ring, SlotMeta};
use super::{Mode, Phase, StepProtocol, ladder::Ladder};
use crate::config::ControllerConfig;
use crate::controller::{Controller, Counters};
use crate::detect::{DriftDetector, NormGate, ScaleFreeThreshold};
use crate::error::StabError;
use crate::monitor::SafetyMonitor;
use crate::signal::SignalState;
use crate::snapshot::SlotId;

/// Format version of [`ProtocolState`]; bumped whenever its serialized form changes. A state of
/// another version is refused ([`ProtocolStateError::Version`]), never guessed at.
pub const PROTOCOL_STATE_VERSION: u32 = 2;

/// Why a protocol state cannot be taken or resumed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolStateError {
    /// The state is taken between steps only (after `complete`, before `begin_step`).
    #[error("the step protocol can be saved only between steps; it expects `{expected}` next")]
    NotBetweenSteps {
        /// The call the protocol expects next.
        expected: &'static str,
    },
    /// The controller's signal cannot save its history (a custom signal).
    #[error("the `{name}` signal cannot save its history, so the protocol cannot be saved")]
    UnsavableSignal {
        /// The signal's name.
        name: &'static str,
    },
    /// The state was written in another format version.
    #[error("protocol state format version {found}; this build reads version {supported}")]
    Version {
        /// The version found.
        found: u32,
        /// The version this build reads and writes.
        supported: u32,
    },
    /// The state belongs to another configuration or mode than the one it is resumed with.
    #[error(
        "the saved protocol state was made with another {what} than the one it is resumed with"
    )]
    Mismatch {
        /// `"controller configuration"` or `"mode"`.
        what: &'static str,
    },
    /// The state contradicts itself (a damaged or hand-edited state).
    #[error("inconsistent protocol state: {reason}")]
    Inconsistent {
        /// What does not fit.
        reason: String,
    },
}

/// The controller's part: its signal's history and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ControllerSave {
    signal: SignalState,
    counters: Counters,
}

/// One ring slot's bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SlotSave {
    position: u64,
    depth: u64,
    fingerprint: Option<u64>,
    signal: Option<SignalState>,
    drift: Option<DriftDetector>,
    acceptance: Option<ScaleFreeThreshold>,
}

/// Everything a [`StepProtocol`] holds between two steps, serializable (serde), with a format
/// version. See the module documentation.
///
/// Floating-point values must come back bit for bit: serialize with a format that round-trips
/// `f64` exactly (a binary format, or `serde_json` with its `float_roundtrip` feature).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProtocolState {
    version: u32,
    config: ControllerConfig,
    mode: Mode,
    can_reset_optimizer: bool,
    monitor_enabled: bool,
    controller: Option<ControllerSave>,
    monitor: Option<SafetyMonitor>,
    drift: Option<DriftDetector>,
    gate: Option<NormGate>,
    update_gate: Option<NormGate>,
    acceptance: Option<ScaleFreeThreshold>,
    slots: Vec<Option<SlotSave>>,
    ladder: Ladder,
    step: u64,
    gate_streak: u64,
    gate_passes: u64,
    update_streak: u64,
    update_passes: u64,
    unprobed_norms: Vec<f64>,
}

impl ProtocolState {
    /// The format version the state was written in.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Index of the next step of the saved run.
    pub fn next_step(&self) -> u64 {
        self.step
    }

    /// Positions of the states held in each ring slot (slot 0 first; `None`: empty). The driver
    /// persists one model and optimizer state per occupied slot.
    pub fn slot_positions(&self) -> Vec<Option<u64>> {
        self.slots
            .iter()
            .map(|slot| slot.as_ref().map(|s| s.position))
            .collect()
    }

    /// The decision counters of the saved run.
    pub fn counters(&self) -> Counters {
        self.controller
            .as_ref()
            .map_or_else(Counters::default, |c| c.counters)
    }

    /// The configuration the state was made with.
    pub fn config(&self) -> &ControllerConfig {
        &self.config
    }

    /// The mode the state was made in.
    pub fn mode(&self) -> Mode {
        self.mode
    }
}

fn save_signal(
    signal: &dyn crate::signal::InnovationSignal,
) -> Result<SignalState, ProtocolStateError> {
    signal
        .save_state()
        .ok_or(ProtocolStateError::UnsavableSignal {
            name: signal.name(),
        })
}

fn inconsistent(reason: impl Into<String>) -> ProtocolStateError {
    ProtocolStateError::Inconsistent {
        reason: reason.into(),
    }
}

impl StepProtocol {
    /// The protocol's whole state, for a checkpoint. Take it between steps: after
    /// [`StepProtocol::complete`] and before the next [`StepProtocol::begin_step`].
    ///
    /// # Errors
    /// [`ProtocolStateError::NotBetweenSteps`] in the middle of a step, before
    /// [`StepProtocol::start`] has completed or after the run stopped;
    /// [`ProtocolStateError::UnsavableSignal`] for a custom signal.
    pub fn save_state(&self) -> Result<ProtocolState, ProtocolStateError> {
        if !matches!(self.phase, Phase::Idle) {
            let expected = match self.out_of_order("save_state") {
                StabError::OutOfOrder { expected, .. } => expected,
                _ => "begin_step",
            };
            return Err(ProtocolStateError::NotBetweenSteps { expected });
        }
        let controller = match &self.controller {
            Some(controller) => Some(ControllerSave {
                signal: save_signal(controller.signal())?,
                counters: controller.counters(),
            }),
            None => None,
        };
        let slots = self
            .ring
            .slots()
            .iter()
            .map(|slot| {
                slot.as_ref()
                    .map(|meta| {
                        Ok(SlotSave {
                            position: meta.position,
                            depth: meta.depth,
                            fingerprint: meta.fingerprint,
                            signal: match &meta.controller.signal {
                                Some(signal) => Some(save_signal(signal.as_ref())?),
                                None => None,
                            },
                            drift: meta.controller.drift.clone(),
                            acceptance: meta.controller.acceptance.clone(),
                        })
                    })
                    .transpose()
            })
            .collect::<Result<Vec<_>, ProtocolStateError>>()?;
        Ok(ProtocolState {
            version: PROTOCOL_STATE_VERSION,
            config: self.config.clone(),
            mode: self.mode,
            can_reset_optimizer: self.can_reset_optimizer,
            monitor_enabled: self.monitor_enabled,
            controller,
            monitor: self.monitor.clone(),
            drift: self.drift.clone(),
            gate: self.gate.clone(),
            update_gate: self.update_gate.clone(),
            acceptance: self.acceptance.clone(),
            slots,
            ladder: self.ladder.clone(),
            step: self.step,
            gate_streak: self.gate_streak,
            gate_passes: self.gate_passes,
            update_streak: self.update_streak,
            update_passes: self.update_passes,
            unprobed_norms: self.unprobed_norms.clone(),
        })
    }

    /// Rebuilds a protocol from a saved state, between steps, exactly as it was: its next call
    /// is [`StepProtocol::begin_step`]. `config` and `mode` are those of the run being resumed;
    /// they must be the ones the state was made with.
    ///
    /// # Errors
    /// [`ProtocolStateError::Version`], [`ProtocolStateError::Mismatch`], an invalid
    /// configuration (as [`ProtocolStateError::Inconsistent`]), or
    /// [`ProtocolStateError::Inconsistent`] when the state contradicts itself.
    pub fn from_state(
        config: &ControllerConfig,
        mode: Mode,
        state: ProtocolState,
    ) -> Result<Self, ProtocolStateError> {
        if state.version != PROTOCOL_STATE_VERSION {
            return Err(ProtocolStateError::Version {
                found: state.version,
                supported: PROTOCOL_STATE_VERSION,
            });
        }
        config
            .validate()
            .map_err(|e| inconsistent(format!("invalid configuration: {e}")))?;
        if state.config != *config {
            return Err(ProtocolStateError::Mismatch {
                what: "controller configuration",
            });
        }
        if state.mode != mode {
            return Err(ProtocolStateError::Mismatch { what: "mode" });
        }
        if state.slots.len() != config.ring.slots() {
            return Err(inconsistent(format!(
                "{} ring slots saved, the configuration has {}",
                state.slots.len(),
                config.ring.slots()
            )));
        }
        if mode == Mode::Enforce && state.slots.first().is_none_or(Option::is_none) {
            return Err(inconsistent("no last accepted state in slot 0"));
        }
        if state.drift.is_some() != config.drift.enabled
            || state.gate.is_some() != config.gate.enabled
            || state.update_gate.is_some() != config.update_gate.enabled
        {
            return Err(inconsistent(
                "detectors saved do not match the configuration",
            ));
        }
        if state.monitor.is_some() && !(state.monitor_enabled && state.controller.is_some()) {
            return Err(inconsistent(
                "a safety monitor without a started controller",
            ));
        }
        if state.acceptance.is_some() != (config.scale_free() && state.controller.is_some()) {
            return Err(inconsistent(
                "the scale-free threshold saved does not match the configuration",
            ));
        }
        // The signal the configuration builds: its name must be the saved signal's.
        let expected_signal = Controller::from_config(config, 0.0)
            .map_err(|e| inconsistent(format!("invalid configuration: {e}")))?
            .signal()
            .name();
        let rebuild = |signal: SignalState| {
            let signal = signal.into_signal().map_err(inconsistent)?;
            if signal.name() != expected_signal {
                return Err(inconsistent(format!(
                    "saved signal `{}`, the configuration uses `{expected_signal}`",
                    signal.name()
                )));
            }
            Ok(signal)
        };
        let controller = match state.controller {
            Some(saved) => {
                let mut controller = Controller::from_config(config, 0.0)
                    .map_err(|e| inconsistent(format!("invalid configuration: {e}")))?;
                controller.restore_signal(rebuild(saved.signal)?);
                *controller.counters_mut() = saved.counters;
                Some(controller)
            }
            None => None,
        };
        let slots = state
            .slots
            .into_iter()
            .map(|slot| {
                slot.map(|s| {
                    Ok(SlotMeta {
                        position: s.position,
                        depth: s.depth,
                        fingerprint: s.fingerprint,
                        controller: ControllerState {
                            signal: s.signal.map(rebuild).transpose()?,
                            drift: s.drift,
                            acceptance: s.acceptance,
                        },
                    })
                })
                .transpose()
            })
            .collect::<Result<Vec<_>, ProtocolStateError>>()?;
        Ok(Self {
            config: config.clone(),
            mode,
            can_reset_optimizer: state.can_reset_optimizer,
            monitor_enabled: state.monitor_enabled,
            controller,
            monitor: state.monitor,
            drift: state.drift,
            gate: state.gate,
            update_gate: state.update_gate,
            acceptance: state.acceptance,
            ring: Ring::from_slots(&config.ring, slots),
            ladder: state.ladder,
            step: state.step,
            phase: Phase::Idle,
            gate_streak: state.gate_streak,
            gate_passes: state.gate_passes,
            gradient_clip: None,
            update_streak: state.update_streak,
            update_passes: state.update_passes,
            step_norm: None,
            unprobed_norms: state.unprobed_norms,
            exhausted: None,
        })
    }

    /// Sets the fingerprint the driver's state in `slot` has, for a driver that rebuilt its
    /// states on resume (fresh modules may give running statistics new ids, and so new
    /// fingerprints). Restores from that slot are then checked against it.
    pub fn set_slot_fingerprint(&mut self, slot: SlotId, fingerprint: Option<u64>) {
        self.ring.set_slot_fingerprint(slot, fingerprint);
    }
}
