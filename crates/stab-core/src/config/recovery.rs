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

/// A gate on a norm that must not jump: the gradient's (before the optimizer folds it into its
/// state) or the update's (‖θ_prop − θ_t‖, after the optimizer proposed it). A norm far above the
/// norms of accepted steps is rejected. Rejected norms never enter the statistics.
///
/// The gate works from its first handful of steps, in two stages:
/// - **young** (`min_history` ≤ accepted norms < `warmup`): a norm more than `early_ratio` times
///   the median of the accepted norms is rejected. A median of three values is already robust to
///   one outlier, and a ratio needs no spread estimate, so this stage can start almost at once; it
///   is generous because early training legitimately changes its norms by small factors.
/// - **warm** (≥ `warmup` accepted norms): a robust z-score above `z` against the last `window`
///   accepted norms is rejected: `(norm − median) / max(1.4826 · MAD, min_relative_spread ·
///   median)`. Median and MAD, not mean and standard deviation: one outlier let through after
///   `patience` would otherwise inflate the spread and blind the gate to the rest of a long fault
///   (seen on the `cpu` matrix: a ×300 gradient accepted at the 17th step of a 30-step fault let
///   the other 13 through). The floor keeps a run with very steady norms from rejecting noise.
///
/// Both statistics are ratios of norms, so the gate does not depend on the norms' unit. Before
/// `min_history` accepted norms only non-finite norms are rejected. After `patience` gate
/// rejections in a row the next one is let through to the optimizer and the probe, so the gate
/// alone can never freeze a run; the gradient gate lets it through *clipped* to its ceiling (the
/// largest norm it would pass; drivers that can scale the gradient do so, stab-burn's `Guard`
/// does), since one raw ×300 gradient is enough to poison AdamW's second moment for hundreds of
/// steps (seen on the `cpu` matrix: a 30-step fault at step 10, the 17th gradient let through
/// raw, the run stalled and ended 1.6× the clean run's loss). The update gate likewise lets its
/// update through scaled to its ceiling, θ_t + c · (θ_prop − θ_t)
/// (`StepProtocol::update_clip`; stab-burn's `Guard` does it): one raw ×100-learning-rate update
/// let through after the patience was where the damage of the matrix's long learning-rate faults
/// entered. After `restart_after` such
/// let-throughs with no norm passing on its own in between, the gate concludes that the norms
/// changed for good and starts over (young again, from the norms that follow).
///
/// The default limit of the gradient gate, z = 12, aims at blow-ups (a ×300 gradient scores
/// z > 1000 on the `cpu` reproduction), not at ordinary outlier batches, which the probe judges by
/// their effect: the largest robust z of a nominal step seen there was 9.8 (a 3.6× gradient at
/// step 49 of a clean ResNet-18 run; 2.1 for the Transformer; 2.8 for a nominal update). OLMo-core's skip-step optimizer uses 6σ over 128 steps. The young
/// limit, 8 times the median, is 5.5 times the largest young ratio of a nominal gradient seen in
/// the clean `cpu` runs (1.45, ResNet-18, seeds 0–9; 1.01 for the Transformer); a ×300 gradient
/// at step 10 scores about 300. The update gate has the same defaults: AdamW's update sizes are
/// steadier still (largest nominal robust z 2.8, largest young ratio 0.98), and with plain SGD the
/// update is the gradient times the learning rate, so the gradient's margins carry over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GateConfig {
    /// Run the gate (needs the driver to supply the norm; without it the gate is not consulted).
    pub enabled: bool,
    /// Accepted norms kept.
    pub window: usize,
    /// Accepted norms needed before the z-test takes over from the ratio test.
    pub warmup: usize,
    /// z-score above which a norm is rejected once warm.
    pub z: f64,
    /// Floor of the spread, as a fraction of the mean norm.
    pub min_relative_spread: f64,
    /// Accepted norms needed before the young ratio test is armed (≥ 1).
    pub min_history: usize,
    /// While young: the largest ratio of a norm to the median of accepted norms that passes.
    pub early_ratio: f64,
    /// Gate rejections in a row after which one norm is let through.
    pub patience: u64,
    /// Let-throughs in a row (with no norm passing on its own between them) after which the
    /// gate forgets its statistics and starts over.
    pub restart_after: u64,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: 128,
            warmup: 32,
            z: 12.0,
            min_relative_spread: 0.1,
            min_history: 3,
            early_ratio: 8.0,
            patience: 16,
            restart_after: 4,
        }
    }
}

/// How the acceptance threshold ε follows the scale of the measurements when
/// [`crate::ControllerConfig::epsilon`] is `None` (the default).
///
/// At each decision
///
/// `ε_t = max(y_last − ŷ_t, 0) + max(spread_multiple · s_t, r_t · |ŷ_t|, floor_fraction · |y₀|)`
///
/// where `y_last` is the last accepted measurement, `s_t` the normal-consistent median absolute
/// deviation of the changes between consecutive accepted measurements (the last `window`, used
/// once `warmup` of them are held), `r_t` is `relative_floor` once warm and
/// `young_relative_floor` before, ŷ_t the reference and y₀ the first measurement. In words: a
/// proposal may raise the measurement above the higher of the last accepted one and ŷ by at most
/// `spread_multiple` step-to-step spreads, or a fraction of the level, whichever is larger.
///
/// Every term scales with the measurements, so multiplying every measurement by c > 0 multiplies
/// ε by c and leaves every decision as it was: the rule has no unit. The spread is taken over
/// *changes*, not over innovations against the lagging ŷ: during fast descent the innovations
/// are large and all of one sign (the lag), which would inflate any spread of them tenfold. The
/// lag term keeps a run whose measurement rises slowly and steadily (ŷ lagging below it) from
/// being rejected for the lag alone.
///
/// Defaults, from the `cpu` reproduction (clean runs, seeds 0–9, every proposal kept): the
/// largest ν/ε_t of any nominal step was 0.73 for ResNet-18 on Fashion-MNIST (a 16-example probe
/// whose loss jumps by 0.42 in one step at a level of 0.3) and below 0 for the Transformer (its
/// probe loss never rose). `spread_multiple = 12` keeps that margin; the relative floors bound ε
/// from below at a quarter of the level (young and warm: the largest rise of a clean run in its
/// first 16 steps was 3 % of the level), so a tenfold degradation of a loss of
/// 0.058 is caught where the paper's ε = 0.5 would not catch it. Each ε_t is the threshold of
/// that step's record, so the safety monitor checks Theorem 7.3 and Proposition 7.5 with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AcceptanceConfig {
    /// Accepted innovations kept for the spread.
    pub window: usize,
    /// Accepted innovations needed before the spread term is used and the floor drops to
    /// `relative_floor`.
    pub warmup: usize,
    /// Multiple of the spread s_t in ε_t.
    pub spread_multiple: f64,
    /// Fraction of |ŷ| in ε_t once warm.
    pub relative_floor: f64,
    /// Fraction of |ŷ| in ε_t while young.
    pub young_relative_floor: f64,
    /// Fraction of |y₀| below which ε never falls (a measurement that tends to 0).
    pub floor_fraction: f64,
}

impl Default for AcceptanceConfig {
    fn default() -> Self {
        Self {
            window: 64,
            warmup: 16,
            spread_multiple: 12.0,
            relative_floor: 0.25,
            young_relative_floor: 0.25,
            floor_fraction: 1e-3,
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
        self.validate_as(&GRADIENT_GATE_FIELDS)
    }

    /// Checks every field, naming them as `names` says (`gate.…` or `update_gate.…`).
    ///
    /// # Errors
    /// The first bad field.
    pub(crate) fn validate_as(&self, names: &GateFieldNames) -> Result<(), ConfigError> {
        count(names.window, self.window as u64, 2, MAX_WINDOW as u64)?;
        count(names.warmup, self.warmup as u64, 2, self.window as u64)?;
        positive(names.z, self.z)?;
        non_negative(names.min_relative_spread, self.min_relative_spread)?;
        count(
            names.min_history,
            self.min_history as u64,
            1,
            MAX_WINDOW as u64,
        )?;
        if !(self.early_ratio.is_finite() && self.early_ratio > 1.0) {
            return Err(ConfigError::NotAbove {
                field: names.early_ratio,
                value: self.early_ratio,
                bound: 1.0,
            });
        }
        count(names.patience, self.patience, 1, MAX_LADDER_COUNT)?;
        count(names.restart_after, self.restart_after, 1, MAX_LADDER_COUNT)
    }
}

/// The names a gate's fields have in errors (configuration errors carry static names).
pub(crate) struct GateFieldNames {
    window: &'static str,
    warmup: &'static str,
    z: &'static str,
    min_relative_spread: &'static str,
    min_history: &'static str,
    early_ratio: &'static str,
    patience: &'static str,
    restart_after: &'static str,
}

/// The gradient gate's field names.
pub(crate) const GRADIENT_GATE_FIELDS: GateFieldNames = GateFieldNames {
    window: "gate.window",
    warmup: "gate.warmup",
    z: "gate.z",
    min_relative_spread: "gate.min_relative_spread",
    min_history: "gate.min_history",
    early_ratio: "gate.early_ratio",
    patience: "gate.patience",
    restart_after: "gate.restart_after",
};

/// The update gate's field names.
pub(crate) const UPDATE_GATE_FIELDS: GateFieldNames = GateFieldNames {
    window: "update_gate.window",
    warmup: "update_gate.warmup",
    z: "update_gate.z",
    min_relative_spread: "update_gate.min_relative_spread",
    min_history: "update_gate.min_history",
    early_ratio: "update_gate.early_ratio",
    patience: "update_gate.patience",
    restart_after: "update_gate.restart_after",
};

impl AcceptanceConfig {
    /// Checks every field.
    ///
    /// # Errors
    /// The first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        count(
            "acceptance.window",
            self.window as u64,
            2,
            MAX_WINDOW as u64,
        )?;
        count(
            "acceptance.warmup",
            self.warmup as u64,
            2,
            self.window as u64,
        )?;
        non_negative("acceptance.spread_multiple", self.spread_multiple)?;
        positive("acceptance.relative_floor", self.relative_floor)?;
        positive("acceptance.young_relative_floor", self.young_relative_floor)?;
        non_negative("acceptance.floor_fraction", self.floor_fraction)
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
