//! Configuration of recovery: drift detection, the gradient gate, the snapshot ring and the
//! escalation ladder. Every size is bounded so that no configuration file can make the controller
//! allocate without limit or panic.

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// The largest window any detector may keep (accepted values).
pub const MAX_WINDOW: usize = 1 << 16;
/// The largest spacing of a snapshot-ring level, in accepted steps.
pub const MAX_RING_AGE: u64 = 1 << 20;
/// The most spaced levels a snapshot ring may have (each costs up to two snapshots).
pub const MAX_RING_LEVELS: usize = 8;
/// The most rungs a ladder may have.
pub const MAX_RUNGS: usize = 32;
/// The largest count-valued ladder setting (rejections per rung, cooldown).
pub const MAX_LADDER_COUNT: u64 = 1 << 20;

/// Detects damage that arrives in small steps: a one-sided CUSUM over the innovations of
/// accepted proposals, `S ← max(0, S + ν − κ)`, alarming when `S > h`.
///
/// `κ` and `h` follow the nominal spread of accepted innovations (median and scaled median
/// absolute deviation over the last `window` accepted values), so the detector needs no tuning
/// per task: `κ = max(median + slack_spreads · spread, 0)`, `h = max(alarm_spreads · spread,
/// min_alarm_epsilons · ε)`. The floor keeps a very smooth run (spread ≈ 0) from alarming on
/// noise. The detector is armed after `warmup` accepted innovations.
///
/// Off by default: on the `cpu` reproduction (ResNet-18 on Fashion-MNIST) a clean run's probe
/// loss rose from 0.34 to 0.76 over nine nominal steps (CUSUM at 1.2 times its alarm level), more
/// evidence than the accepted part of a ×300 gradient failure produced (0.9 times): the detector
/// cannot tell them apart there, and the escalation ladder recovers from the failure anyway.
/// Turn it on where nominal training is smooth and damage creeps in under ε.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DriftConfig {
    /// Run the detector (an alarm rejects the proposal and rewinds past the drift's onset).
    pub enabled: bool,
    /// Accepted innovations kept for the median and spread.
    pub window: usize,
    /// Accepted innovations needed before the detector is armed.
    pub warmup: usize,
    /// κ above the median, in spreads.
    pub slack_spreads: f64,
    /// h, in spreads.
    pub alarm_spreads: f64,
    /// Floor of h, in units of ε.
    pub min_alarm_epsilons: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            window: 64,
            warmup: 20,
            slack_spreads: 2.0,
            alarm_spreads: 8.0,
            min_alarm_epsilons: 1.0,
        }
    }
}

/// A pre-step gate on the gradient norm: a gradient whose norm has a z-score above `z` against
/// the norms of accepted steps (the last `window`) is rejected before the optimizer folds it into
/// its state. Rejected norms never enter the statistics. The spread is floored at
/// `min_relative_spread · mean` so that a run with very steady gradients does not reject noise.
/// After `patience` gate rejections in a row the next gradient is let through to the optimizer
/// and the probe, so the gate alone can never freeze a run whose gradients changed for good.
///
/// The default limit, z = 12, aims at blow-ups (a ×300 gradient scores z > 1000 on the `cpu`
/// reproduction), not at ordinary outlier batches, which the probe judges by their effect: the
/// largest z of a nominal step seen there was 9.6 (a 3.6× gradient at step 49 of a clean
/// ResNet-18 run). OLMo-core's skip-step optimizer uses 6σ over 128 steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    /// Run the gate (needs the driver to supply each step's gradient norm).
    pub enabled: bool,
    /// Accepted gradient norms kept.
    pub window: usize,
    /// Accepted norms needed before the gate is armed.
    pub warmup: usize,
    /// z-score above which a gradient is rejected.
    pub z: f64,
    /// Floor of the spread, as a fraction of the mean norm.
    pub min_relative_spread: f64,
    /// Gate rejections in a row after which one gradient is let through.
    pub patience: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: 128,
            warmup: 32,
            z: 12.0,
            min_relative_spread: 0.1,
            patience: 16,
        }
    }
}

/// One rung of the escalation ladder: what to do when proposals keep being rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rung {
    /// Restore the best-looking snapshot (lowest ŷ when it was accepted; ties to the youngest)
    /// among those older than the detected onset of the damage (or older than
    /// the previous rewind's target, when the ladder is already climbing), with its controller
    /// state, and carry on with the next batches (the ones since are skipped).
    Rewind,
    /// Keep the parameters, clear the optimizer's state (moments, step count).
    ResetOptimizer,
}

/// The escalation ladder: the next rung fires when `rejections_per_rung` of the last
/// `rejection_window` decisions (counted since the last rung) were rejections — so also after
/// `rejections_per_rung` in a row. Defaults: 12 of 16. A burst of up to 11 rejections, such as a
/// 10-step fault caught step by step, is ridden out by plain rollbacks; a run stuck on a poisoned
/// state is caught even when it lets an occasional proposal through (each of which can add
/// damage). After `cooldown` accepted steps in a row the ladder steps down one rung. When a rung
/// is needed and none is left the run stops with a typed error (the last accepted state is kept).
/// A rung that cannot act (no snapshot old enough, a driver that cannot reset its optimizer)
/// passes to the next one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LadderConfig {
    /// Climb the ladder at all. Off: every rejection restores the last accepted state, however
    /// many come in a row (Algorithm 1 exactly as the paper states it, which can freeze a run).
    pub enabled: bool,
    /// Rejections among the last `rejection_window` decisions (since the last rung) that fire the
    /// next rung.
    pub rejections_per_rung: u64,
    /// How many recent decisions the count looks at (≥ `rejections_per_rung`; equal to it: the
    /// rejections must come in a row).
    pub rejection_window: u64,
    /// The rungs, lowest first.
    pub rungs: Vec<Rung>,
    /// Accepted steps in a row after which the ladder steps down one rung.
    pub cooldown: u64,
}

impl Default for LadderConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            rejections_per_rung: 12,
            rejection_window: 16,
            rungs: vec![
                Rung::Rewind,
                Rung::Rewind,
                Rung::ResetOptimizer,
                Rung::Rewind,
            ],
            cooldown: 32,
        }
    }
}

/// The snapshot ring: besides the last accepted state, snapshots at spaced ages. For each age `a`
/// the ring keeps the accepted state at the latest multiple of `a` accepted steps and the one at
/// the multiple before (so one between `a` and `2a` steps old): two snapshots per level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RingConfig {
    /// Spacings in accepted steps, strictly increasing, each ≥ 2. Empty: only the last accepted
    /// state is kept (no rewind possible).
    pub ages: Vec<u64>,
}

impl Default for RingConfig {
    fn default() -> Self {
        Self { ages: vec![8, 64] }
    }
}

impl RingConfig {
    /// Slots the ring needs: the last accepted state plus two per level.
    pub fn slots(&self) -> usize {
        1 + 2 * self.ages.len()
    }
}

fn count(field: &'static str, value: u64, minimum: u64, maximum: u64) -> Result<(), ConfigError> {
    if value < minimum {
        return Err(ConfigError::TooSmall {
            field,
            value,
            minimum,
        });
    }
    if value > maximum {
        return Err(ConfigError::TooLarge {
            field,
            value,
            maximum,
        });
    }
    Ok(())
}

fn positive(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(ConfigError::NotPositive { field, value })
    }
}

fn non_negative(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(ConfigError::Negative { field, value })
    }
}

impl DriftConfig {
    /// Checks every field (see [`crate::ControllerConfig::validate`]).
    ///
    /// # Errors
    /// The first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        count("drift.window", self.window as u64, 2, MAX_WINDOW as u64)?;
        count("drift.warmup", self.warmup as u64, 2, self.window as u64)?;
        non_negative("drift.slack_spreads", self.slack_spreads)?;
        positive("drift.alarm_spreads", self.alarm_spreads)?;
        positive("drift.min_alarm_epsilons", self.min_alarm_epsilons)
    }
}

impl GateConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// The first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        count("gate.window", self.window as u64, 2, MAX_WINDOW as u64)?;
        count("gate.warmup", self.warmup as u64, 2, self.window as u64)?;
        positive("gate.z", self.z)?;
        non_negative("gate.min_relative_spread", self.min_relative_spread)?;
        count("gate.patience", self.patience, 1, MAX_LADDER_COUNT)
    }
}

impl LadderConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// The first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        count(
            "ladder.rejections_per_rung",
            self.rejections_per_rung,
            1,
            MAX_LADDER_COUNT,
        )?;
        count(
            "ladder.rejection_window",
            self.rejection_window,
            self.rejections_per_rung,
            MAX_LADDER_COUNT,
        )?;
        count("ladder.rungs", self.rungs.len() as u64, 0, MAX_RUNGS as u64)?;
        count("ladder.cooldown", self.cooldown, 1, MAX_LADDER_COUNT)
    }
}

impl RingConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// The first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        count(
            "ring.ages (levels)",
            self.ages.len() as u64,
            0,
            MAX_RING_LEVELS as u64,
        )?;
        let mut previous = 1;
        for &age in &self.ages {
            count("ring.ages", age, previous + 1, MAX_RING_AGE)?;
            previous = age;
        }
        Ok(())
    }
}
