//! The controller's numbers as burn-train metrics: shown by the dashboard, written by the
//! `Learner`'s metric loggers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use burn::tensor::TensorReadError;
use burn_train::metric::{
    Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes, NumericEntry,
    SerializedEntry, format_float,
};

use crate::report::{StepAction, StepReport};

/// What the guard did at one step, as the metrics read it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardSample {
    /// The guarded step index (0-based; every optimizer step of the `Learner` counts).
    pub step: u64,
    /// What the guard did.
    pub action: StepAction,
    /// Proposals discarded so far (restores, rewinds, optimizer resets, stop), this one
    /// included.
    pub rollbacks: u64,
    /// Rungs of the escalation ladder fired so far (rewinds and optimizer resets, drift rewinds
    /// included).
    pub recoveries: u64,
    /// The innovation ν, if the step was measured (NaN for a non-finite measurement).
    pub innovation: Option<f64>,
    /// The reference ŷ before the decision, if the step was measured.
    pub reference: Option<f64>,
    /// The threshold ε in force, if the step was measured.
    pub threshold: Option<f64>,
}

impl GuardSample {
    /// The sample of one step's report; `rollbacks` is filled in by the log.
    pub(crate) fn from_report(report: &StepReport) -> Self {
        Self {
            step: report.step,
            action: report.action,
            rollbacks: u64::from(report.rolled_back()),
            recoveries: report.counters.escalations,
            innovation: report.innovation(),
            reference: report.reference(),
            threshold: report.record.as_ref().map(|r| r.threshold),
        }
    }
}

/// The samples of the recent steps, indexed by step. Bounded: the metrics run on burn-train's
/// event thread, a little behind training; a sample older than [`SampleLog::CAPACITY`] steps is
/// dropped (its metrics then read "N/A").
#[derive(Debug, Default)]
pub(crate) struct SampleLog {
    samples: VecDeque<GuardSample>,
    /// Step index of `samples[0]`.
    first: u64,
    rollbacks: u64,
}

impl SampleLog {
    const CAPACITY: usize = 1 << 16;

    pub(crate) fn push(&mut self, mut sample: GuardSample) {
        self.rollbacks += sample.rollbacks;
        sample.rollbacks = self.rollbacks;
        if self.samples.is_empty() {
            self.first = sample.step;
        }
        self.samples.push_back(sample);
        while self.samples.len() > Self::CAPACITY {
            self.samples.pop_front();
            self.first += 1;
        }
    }

    fn get(&self, step: u64) -> Option<GuardSample> {
        let index = usize::try_from(step.checked_sub(self.first)?).ok()?;
        self.samples.get(index).copied()
    }
}

/// Which number of the guard a [`GuardMetric`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardMetricKind {
    /// Proposals rolled back so far ("Stab Rollbacks").
    Rollbacks,
    /// The innovation ν = y(θ_prop) − ŷ of the step ("Stab Innovation").
    Innovation,
    /// The reference ŷ the step was compared with ("Stab Reference").
    Reference,
    /// The threshold ε in force ("Stab Threshold").
    Threshold,
    /// Recovery actions of the escalation ladder so far: rewinds and optimizer resets ("Stab
    /// Recoveries").
    Recoveries,
}

impl GuardMetricKind {
    /// Every kind, in dashboard order.
    pub const ALL: [Self; 5] = [
        Self::Rollbacks,
        Self::Innovation,
        Self::Reference,
        Self::Threshold,
        Self::Recoveries,
    ];

    /// The metric's name (the dashboard's label, the metric logger's file name).
    pub fn name(self) -> &'static str {
        match self {
            Self::Rollbacks => "Stab Rollbacks",
            Self::Innovation => "Stab Innovation",
            Self::Reference => "Stab Reference",
            Self::Threshold => "Stab Threshold",
            Self::Recoveries => "Stab Recoveries",
        }
    }

    /// A running count (reported as its current value) rather than a per-step value (whose
    /// epoch value is the mean).
    fn is_count(self) -> bool {
        matches!(self, Self::Rollbacks | Self::Recoveries)
    }

    fn value(self, sample: &GuardSample) -> Option<f64> {
        match self {
            Self::Rollbacks => Some(sample.rollbacks as f64),
            Self::Recoveries => Some(sample.recoveries as f64),
            Self::Innovation => sample.innovation,
            Self::Reference => sample.reference,
            Self::Threshold => sample.threshold,
        }
    }
}

/// One of the guard's numbers as a burn-train numeric training metric (`Input = ()`: it reads
/// the guard, not the model's output). Made by [`super::LearnerGuard::metric`] and registered by
/// [`super::LearnerGuard::register`].
///
/// burn-train updates metrics on its event thread, behind training. So that each item shows the
/// step it belongs to and not a later one, the metric counts the items it sees, mirrors the
/// `Learner`'s single-device loop (an optimizer step every `grads_accumulation` items and at an
/// epoch's last item) and reads that step's sample. An item of a step that was not measured (or
/// whose ν is not finite) reports "N/A" for ν, ŷ and ε.
#[derive(Clone)]
pub struct GuardMetric {
    kind: GuardMetricKind,
    name: MetricName,
    log: Arc<Mutex<SampleLog>>,
    grads_accumulation: usize,
    /// Items seen in the current accumulation window.
    window: usize,
    /// Optimizer steps the items seen so far have triggered.
    steps: u64,
    current: Option<f64>,
    /// Sum and count of the epoch's finite values (per-step kinds).
    sum: f64,
    count: usize,
}

impl std::fmt::Debug for GuardMetric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardMetric")
            .field("kind", &self.kind)
            .field("steps", &self.steps)
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl GuardMetric {
    pub(crate) fn new(kind: GuardMetricKind, log: Arc<Mutex<SampleLog>>) -> Self {
        Self {
            kind,
            name: Arc::new(kind.name().to_string()),
            log,
            grads_accumulation: 1,
            window: 0,
            steps: 0,
            current: None,
            sum: 0.0,
            count: 0,
        }
    }

    /// For a `Learner` with `grads_accumulation(k)` (`k = 0` is taken as 1).
    pub fn grads_accumulation(mut self, k: usize) -> Self {
        self.grads_accumulation = k.max(1);
        self
    }

    /// Which number this metric reports.
    pub fn kind(&self) -> GuardMetricKind {
        self.kind
    }

    fn precision(&self) -> usize {
        if self.kind.is_count() { 0 } else { 4 }
    }

    fn format(&self, value: Option<f64>) -> String {
        match value {
            Some(v) if self.kind.is_count() => format!("{v:.0}"),
            Some(v) => format_float(v, self.precision()),
            None => SerializedEntry::NOT_AVAILABLE.to_string(),
        }
    }

    fn epoch_value(&self) -> Option<f64> {
        if self.kind.is_count() {
            self.current
        } else {
            (self.count > 0).then(|| self.sum / self.count as f64)
        }
    }
}

impl Metric for GuardMetric {
    type Input = ();

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn description(&self) -> Option<String> {
        Some(
            match self.kind {
                GuardMetricKind::Rollbacks => "proposals the stab guard rolled back so far",
                GuardMetricKind::Innovation => "innovation nu = y(proposal) - reference",
                GuardMetricKind::Reference => "EWMA reference of accepted measurements",
                GuardMetricKind::Threshold => "threshold epsilon in force",
                GuardMetricKind::Recoveries => "rewinds and optimizer resets so far",
            }
            .to_string(),
        )
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }

    fn update(
        &mut self,
        _item: &(),
        metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        // The Learner's loop: its accumulation window restarts with each epoch (iteration 1)
        // and closes every `grads_accumulation` items or at the epoch's last item.
        if metadata.iteration == Some(1) {
            self.window = 0;
        }
        self.window += 1;
        if self.window >= self.grads_accumulation || metadata.progress.is_completed() {
            self.steps += 1;
            self.window = 0;
        }
        let sample = match self.steps.checked_sub(1) {
            Some(step) => self
                .log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(step),
            None => None,
        };
        self.current = sample
            .and_then(|s| self.kind.value(&s))
            .filter(|v| v.is_finite());
        let Some(value) = self.current else {
            return Ok(SerializedEntry::not_available(None));
        };
        if !self.kind.is_count() {
            self.sum += value;
            self.count += 1;
        }
        let formatted = format!(
            "epoch {} - batch {}",
            self.format(self.epoch_value()),
            self.format(Some(value))
        );
        Ok(SerializedEntry::new(
            formatted,
            NumericEntry::Value(value).serialize(),
        ))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(match self.epoch_value() {
            Some(value) => SerializedEntry::new(
                format!("epoch {}", self.format(Some(value))),
                NumericEntry::Final(value).serialize(),
            ),
            None => SerializedEntry::not_available(None),
        })
    }

    fn clear(&mut self) {
        // The step count spans epochs; only the epoch's aggregate restarts.
        self.current = None;
        self.sum = 0.0;
        self.count = 0;
    }
}

impl Numeric for GuardMetric {
    fn value(&self) -> Option<NumericEntry> {
        self.current.map(NumericEntry::Value)
    }

    fn running_value(&self) -> Option<NumericEntry> {
        self.epoch_value().map(|value| NumericEntry::Aggregated {
            aggregated_value: value,
            count: if self.kind.is_count() { 1 } else { self.count },
        })
    }

    fn final_value(&self) -> NumericEntry {
        NumericEntry::Final(self.epoch_value().unwrap_or(f64::NAN))
    }
}
