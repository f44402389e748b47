//! Step records: one serializable line per decision, and observers that receive them.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::decision::Decision;
use crate::error::ObserverError;
use crate::signal::InnovationKind;

/// Everything the controller knew and decided about one proposal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The guarded step index t (0-based, counts every proposal).
    pub step: u64,
    /// Name of the signal (`"probe"`, `"loss-spike"`, …).
    pub signal: String,
    /// What ν means; decides which safety guarantees apply.
    pub innovation_kind: InnovationKind,
    /// The measurement y(θ_prop). Non-finite values serialize as `"NaN"`, `"inf"`, `"-inf"`.
    #[serde(with = "non_finite_f64")]
    pub measurement: f64,
    /// The reference before the decision (ŷ_t).
    pub reference: f64,
    /// The reference after the decision (ŷ_{t+1}); equal to `reference` after a rejection.
    pub reference_after: f64,
    /// The innovation ν_t (`"NaN"` when the measurement was not finite).
    #[serde(with = "non_finite_f64")]
    pub innovation: f64,
    /// The threshold ε.
    pub threshold: f64,
    /// Accepted, or rejected with its reason.
    #[serde(flatten)]
    pub decision: Decision,
    /// Proposals rejected in a row, this one included (0 after an acceptance).
    pub consecutive_rejections: u64,
    /// What was done with the proposal.
    pub action: Action,
    /// The rung of the escalation ladder that fired at this step (1 = the lowest), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rung: Option<u32>,
}

/// What the step protocol had the driver do with a proposal: one typed action per decided step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// Accepted: the proposal is the new state and the new snapshot.
    Commit,
    /// Rejected: the last accepted state is back (parameters, optimizer state, buffers).
    Restore,
    /// Rejected: an older accepted snapshot is back, with the controller's state of that time;
    /// the batches since are skipped.
    Rewind {
        /// Position (steps completed) of the restored state.
        to_position: u64,
    },
    /// Rejected: the last accepted parameters are back with a fresh optimizer state.
    ResetOptimizer,
    /// The gradient was rejected before the optimizer step: nothing changed.
    Skip,
    /// Observe mode: the decision is only logged, the proposal is kept.
    Observe,
    /// Not measured this step (probe interval > 1): the proposal is kept provisionally; the next
    /// probed step decides for it.
    Unprobed,
    /// The first measurement of a signal started without y(θ₀): the reference starts here and
    /// the proposal is kept undecided.
    Calibrate,
    /// The escalation ladder is exhausted: the last accepted state is back and the run stops.
    Stop,
}

impl Action {
    /// `true` when the state continued from is not the proposal (restore, rewind, reset, stop).
    pub fn discards_proposal(&self) -> bool {
        matches!(
            self,
            Self::Restore | Self::Rewind { .. } | Self::ResetOptimizer | Self::Stop
        )
    }
}

/// Receives every step record: logging, metrics, dashboards.
pub trait StepObserver {
    /// Called once per decision, in step order.
    ///
    /// # Errors
    /// An [`ObserverError`] if the record could not be stored; the supervisor surfaces it.
    fn on_step(&mut self, record: &StepRecord) -> Result<(), ObserverError>;
}

/// Writes each record as one JSON object per line (JSON Lines).
#[derive(Debug)]
pub struct JsonLinesWriter<W: Write> {
    sink: W,
}

impl<W: Write> JsonLinesWriter<W> {
    /// Writes to `sink` (a file, a buffer, stdout).
    pub fn new(sink: W) -> Self {
        Self { sink }
    }

    /// Gives the sink back (e.g. to read a buffer in a test).
    pub fn into_inner(self) -> W {
        self.sink
    }
}

impl<W: Write> StepObserver for JsonLinesWriter<W> {
    fn on_step(&mut self, record: &StepRecord) -> Result<(), ObserverError> {
        let wrap = |source: Box<dyn std::error::Error + Send + Sync>| ObserverError {
            step: record.step,
            source,
        };
        serde_json::to_writer(&mut self.sink, record).map_err(|e| wrap(Box::new(e)))?;
        self.sink.write_all(b"\n").map_err(|e| wrap(Box::new(e)))?;
        self.sink.flush().map_err(|e| wrap(Box::new(e)))
    }
}

/// Collects records in memory (tests, small runs, reports).
#[derive(Debug, Default, Clone)]
pub struct RecordCollector {
    /// The records seen so far, in order.
    pub records: Vec<StepRecord>,
}

impl StepObserver for RecordCollector {
    fn on_step(&mut self, record: &StepRecord) -> Result<(), ObserverError> {
        self.records.push(record.clone());
        Ok(())
    }
}

/// serde helper: an `f64` that may be NaN or ±∞, written as a number when finite and as the
/// strings `"NaN"`, `"inf"`, `"-inf"` otherwise (plain JSON has no such numbers, and serde_json
/// would silently write `null`).
pub mod non_finite_f64 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Serializes `value`.
    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if value.is_finite() {
            serializer.serialize_f64(*value)
        } else if value.is_nan() {
            serializer.serialize_str("NaN")
        } else if *value == f64::INFINITY {
            serializer.serialize_str("inf")
        } else {
            serializer.serialize_str("-inf")
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrName {
        Number(f64),
        Name(String),
    }

    /// Deserializes what [`serialize`] wrote.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        match NumberOrName::deserialize(deserializer)? {
            NumberOrName::Number(v) => Ok(v),
            NumberOrName::Name(name) => match name.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(D::Error::custom(format!(
                    "expected a number, \"NaN\", \"inf\" or \"-inf\", found {other:?}"
                ))),
            },
        }
    }
}
