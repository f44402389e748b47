//! What one training run records, step by step, and how it is written to disk.

use std::fmt;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::XtaskError;

/// The arms of every experiment, run with identical initialization and minibatch order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    /// The same seed without the fault, under stab's defaults: what the run would have been, and
    /// every rollback in it a false positive.
    Clean,
    /// No controller: every proposal is executed.
    Baseline,
    /// stab's defaults: the probe signal with drift detection, the gradient gate, the snapshot
    /// ring and the escalation ladder.
    Controlled,
    /// The same without the gradient and update gates: the probe signal alone decides (with the
    /// scale-free ε, drift detection and the ladder).
    ProbeOnly,
    /// Algorithm 1 exactly as the paper states it: probe signal, `ν ≤ ε`, plain rollback.
    Algorithm1,
    /// The naive comparison (§9.5): rollback on training-loss spikes.
    LossRollback,
}

impl Arm {
    /// All arms in report order.
    pub const ALL: [Arm; 6] = [
        Arm::Clean,
        Arm::Baseline,
        Arm::Controlled,
        Arm::ProbeOnly,
        Arm::Algorithm1,
        Arm::LossRollback,
    ];

    /// Stable name used in file names.
    pub fn name(self) -> &'static str {
        match self {
            Arm::Clean => "clean",
            Arm::Baseline => "baseline",
            Arm::Controlled => "controlled",
            Arm::ProbeOnly => "probe-only",
            Arm::Algorithm1 => "algorithm-1",
            Arm::LossRollback => "loss-rollback",
        }
    }

    /// Human label for figures and tables.
    pub fn label(self) -> &'static str {
        match self {
            Arm::Clean => "clean (no fault, stab defaults)",
            Arm::Baseline => "baseline (no controller)",
            Arm::Controlled => "controlled (stab defaults)",
            Arm::ProbeOnly => "controlled, gates off (probe alone)",
            Arm::Algorithm1 => "Algorithm 1 (plain rollback)",
            Arm::LossRollback => "loss-spike rollback",
        }
    }

    /// `true` for the arms whose fault is injected (all but the clean one).
    pub fn faulted(self) -> bool {
        self != Arm::Clean
    }

    /// `true` for the arms that act on a controller's decisions.
    pub fn guarded(self) -> bool {
        self != Arm::Baseline
    }
}

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The two models of the paper.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    /// ResNet-18 (CIFAR variant) on images.
    Resnet18,
    /// Character-level Transformer encoder on text.
    Transformer,
}

impl ModelKind {
    /// Stable name used in file names.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Resnet18 => "resnet18",
            ModelKind::Transformer => "transformer",
        }
    }

    /// Human label.
    pub fn label(self) -> &'static str {
        match self {
            ModelKind::Resnet18 => "ResNet-18",
            ModelKind::Transformer => "Character Transformer",
        }
    }
}

/// One optimization step of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// Step index t.
    pub step: u64,
    /// Training loss of this step's minibatch at θ_t (before the update).
    #[serde(deserialize_with = "nan_if_null")]
    pub train_loss: f64,
    /// Probe loss of the state carried forward, y(θ_{t+1}) (after a rejection: the restored one).
    /// `null` in JSON when not finite (read back as NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub probe_loss: f64,
    /// The controller's measurement of the proposal (arms with a controller).
    pub measurement: Option<f64>,
    /// Innovation ν_t (arms with a controller).
    pub innovation: Option<f64>,
    /// Reference ŷ_t before the decision (arms with a controller).
    pub reference: Option<f64>,
    /// Threshold ε (arms with a controller).
    pub threshold: Option<f64>,
    /// Whether the proposal (or its gradient) was rejected and the state carried forward is not
    /// the proposal.
    pub rejected: bool,
    /// What the controller did (`commit`, `restore`, `rewind`, `reset-optimizer`, `skip`,
    /// `observe`, …; arms with a controller).
    #[serde(default)]
    pub action: Option<String>,
    /// The rung of the escalation ladder that fired at this step, if one did.
    #[serde(default)]
    pub rung: Option<u32>,
    /// Whether a fault was injected at this step.
    pub fault: bool,
    /// Global ℓ2 norm of this step's (possibly faulted) gradient: what the gradient gate judges.
    #[serde(default)]
    pub grad_norm: Option<f64>,
    /// Size of the proposed update ‖θ_prop − θ_t‖: what the update gate judges (measured steps
    /// of arms with the update gate on).
    #[serde(default)]
    pub update_norm: Option<f64>,
    /// Loss of the state carried forward on the evaluation set (512 test images, or 128
    /// held-out text windows), on the last 10 steps of a run only.
    #[serde(default)]
    pub eval_loss: Option<f64>,
    /// ℓ2 norm of all parameters of the state carried forward.
    #[serde(deserialize_with = "nan_if_null")]
    pub param_norm: f64,
    /// Wall time of forward, backward and optimizer step (no probe), seconds.
    #[serde(deserialize_with = "nan_if_null")]
    pub step_seconds: f64,
    /// Wall time of the controller's work this step (probe evaluation, snapshot or restore), seconds.
    #[serde(deserialize_with = "nan_if_null")]
    pub control_seconds: f64,
}

/// Reads an `f64` that JSON may hold as `null` (serde_json writes NaN and ±∞ as `null`): a
/// diverged run's records read back as NaN instead of failing.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Option::<f64>::deserialize(deserializer).map(|v| v.unwrap_or(f64::NAN))
}

/// A whole run: one model, one arm, one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunLog {
    /// Which model.
    pub model: ModelKind,
    /// Which arm.
    pub arm: Arm,
    /// Seed of initialization and minibatch order.
    pub seed: u64,
    /// Where the data came from (e.g. "Fashion-MNIST (/usr/share/datasets/fashion-mnist)").
    pub data_source: String,
    /// Burn device the run used.
    pub device: String,
    /// Minibatch size |B|.
    pub batch_size: usize,
    /// Probe size |P|.
    pub probe_size: usize,
    /// Every step.
    pub steps: Vec<StepLog>,
}

impl RunLog {
    /// [`RunLog::write_jsonl`] under a temporary name, then renamed into `path`: a run's records
    /// exist only once complete, so neither `--resume` nor the matrix ever keeps half a run.
    ///
    /// # Errors
    /// [`XtaskError::Io`] naming the file.
    ///
    /// # Errors
    /// [`XtaskError::Io`] naming the file.
    pub fn write_jsonl_atomically(&self, path: &Path) -> Result<(), XtaskError> {
        // A name of this process's own: two matrix shards may write the same clean run at once.
        let partial = path.with_extension(format!("jsonl.{}.tmp", std::process::id()));
        self.write_jsonl(&partial)?;
        std::fs::rename(&partial, path).map_err(|source| XtaskError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the steps as JSON lines (one object per step, with the run's identity first).
    ///
    /// # Errors
    /// [`XtaskError::Io`] naming the file.
    pub fn write_jsonl(&self, path: &Path) -> Result<(), XtaskError> {
        let io = |source| XtaskError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::create(path).map_err(io)?;
        let mut out = BufWriter::new(file);
        for step in &self.steps {
            let line = serde_json::json!({
                "model": self.model,
                "arm": self.arm,
                "seed": self.seed,
                "data_source": self.data_source,
                "device": self.device,
                "batch_size": self.batch_size,
                "probe_size": self.probe_size,
                "step": step,
            });
            serde_json::to_writer(&mut out, &line).map_err(|e| io(e.into()))?;
            out.write_all(b"\n").map_err(io)?;
        }
        out.flush().map_err(io)
    }
}

/// One line of a run's JSON-lines file.
#[derive(Deserialize)]
struct RecordLine {
    model: ModelKind,
    arm: Arm,
    seed: u64,
    data_source: String,
    device: String,
    batch_size: usize,
    probe_size: usize,
    step: StepLog,
}

impl RunLog {
    /// Reads a run back from the JSON-lines file [`RunLog::write_jsonl`] wrote.
    ///
    /// # Errors
    /// [`XtaskError::Io`] for a missing file, [`XtaskError::Records`] for a line that does not
    /// parse, an empty file, or lines of different runs mixed in one file.
    pub fn read_jsonl(path: &Path) -> Result<Self, XtaskError> {
        let text = std::fs::read_to_string(path).map_err(|source| XtaskError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |why: String| XtaskError::Records {
            path: path.to_path_buf(),
            why,
        };
        let mut run: Option<RunLog> = None;
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let line: RecordLine =
                serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
            let run = run.get_or_insert_with(|| RunLog {
                model: line.model,
                arm: line.arm,
                seed: line.seed,
                data_source: line.data_source.clone(),
                device: line.device.clone(),
                batch_size: line.batch_size,
                probe_size: line.probe_size,
                steps: Vec::new(),
            });
            if (run.model, run.arm, run.seed) != (line.model, line.arm, line.seed) {
                return Err(bad(format!("line {} belongs to another run", i + 1)));
            }
            run.steps.push(line.step);
        }
        run.ok_or_else(|| bad("no records".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(t: u64, probe: f64) -> StepLog {
        StepLog {
            step: t,
            train_loss: 1.0,
            probe_loss: probe,
            measurement: Some(probe),
            innovation: Some(0.1),
            reference: Some(1.0),
            threshold: Some(0.5),
            rejected: t == 1,
            action: Some(if t == 1 { "rewind" } else { "commit" }.to_owned()),
            rung: (t == 1).then_some(2),
            fault: false,
            grad_norm: Some(3.5),
            update_norm: Some(0.02),
            eval_loss: None,
            param_norm: 2.0,
            step_seconds: 0.01,
            control_seconds: 0.001,
        }
    }

    #[test]
    fn run_records_read_back_what_was_written_and_refuse_bad_files() {
        let dir = std::env::temp_dir().join(format!("stab-records-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let run = RunLog {
            model: ModelKind::Transformer,
            arm: Arm::ProbeOnly,
            seed: 3,
            data_source: "synthetic".into(),
            device: "Flex(Cpu)".into(),
            batch_size: 64,
            probe_size: 16,
            steps: vec![step(0, 0.9), step(1, 0.8), step(2, 0.7)],
        };
        let path = dir.join("run.jsonl");
        run.write_jsonl(&path).unwrap();
        assert_eq!(RunLog::read_jsonl(&path).unwrap(), run);
        // A diverged run: JSON holds its NaN probe loss as null; it reads back as NaN.
        let mut diverged = run.clone();
        diverged.steps[2].probe_loss = f64::NAN;
        diverged.write_jsonl(&path).unwrap();
        let back = RunLog::read_jsonl(&path).unwrap();
        assert!(back.steps[2].probe_loss.is_nan());
        assert_eq!(back.steps[..2], diverged.steps[..2]);

        let empty = dir.join("empty.jsonl");
        std::fs::write(&empty, "").unwrap();
        let err = RunLog::read_jsonl(&empty).unwrap_err();
        assert!(err.to_string().contains("no records"), "{err}");
        let garbled = dir.join("garbled.jsonl");
        std::fs::write(&garbled, "{not json\n").unwrap();
        let err = RunLog::read_jsonl(&garbled).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
        let mixed = dir.join("mixed.jsonl");
        let mut other = run.clone();
        other.seed = 4;
        other.write_jsonl(&mixed).unwrap();
        let text =
            std::fs::read_to_string(&path).unwrap() + &std::fs::read_to_string(&mixed).unwrap();
        std::fs::write(&mixed, text).unwrap();
        let err = RunLog::read_jsonl(&mixed).unwrap_err();
        assert!(err.to_string().contains("another run"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
