//! The experiment plan: a preset with the user's overrides, validated.

use std::path::PathBuf;

use serde::Serialize;

use crate::cli::{FaultChoice, ModelChoice, PresetName, ReproduceArgs};
use crate::error::XtaskError;
use crate::reproduce::metrics::FailureWindow;
use crate::reproduce::records::{Arm, ModelKind};

/// ResNet-18 settings of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct ResnetPlan {
    /// Width multiplier base (64 = the paper).
    pub width: usize,
    /// Minibatch size.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
}

/// Transformer settings of a plan.
#[derive(Debug, Clone, Serialize)]
pub struct TransformerPlan {
    /// Model width.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// Encoder layers.
    pub layers: usize,
    /// Sequence length.
    pub seq_len: usize,
    /// Minibatch size.
    pub batch: usize,
    /// AdamW learning rate.
    pub lr: f64,
}

/// Everything `reproduce` runs.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Preset name.
    pub preset: String,
    /// Steps per run.
    pub steps: u64,
    /// Seeds first_seed .. first_seed + seeds.
    pub seeds: u64,
    /// The first seed.
    pub first_seed: u64,
    /// The arms to run.
    pub arms: Vec<Arm>,
    /// Models to run.
    pub models: Vec<ModelKind>,
    /// First faulty step.
    pub fault_start: u64,
    /// Faulty steps.
    pub fault_len: u64,
    /// Gradient (or learning-rate) scale in the window.
    pub zeta: f64,
    /// What fails.
    pub fault_kind: FaultChoice,
    /// An absolute ε for the probe controller (`None`: stab's scale-free default; the
    /// Algorithm 1 arm then uses the paper's ε = 0.5).
    pub epsilon: Option<f64>,
    /// α of the probe controller.
    pub alpha: f64,
    /// z threshold of the loss-spike arm.
    pub loss_spike_threshold: f64,
    /// Accepted-loss window of the loss-spike arm.
    pub loss_spike_window: usize,
    /// |P|.
    pub probe_size: usize,
    /// ResNet-18 settings.
    pub resnet: ResnetPlan,
    /// Transformer settings.
    pub transformer: TransformerPlan,
    /// BURN_DEVICE to use, if set.
    pub backend: Option<String>,
    /// Output folder.
    pub out: PathBuf,
    /// CIFAR-10 folder, if given.
    pub data_dir: Option<PathBuf>,
    /// Draw progress bars.
    #[serde(skip)]
    pub progress: bool,
    /// Output folders whose run records to report on instead of training.
    pub from_records: Vec<PathBuf>,
    /// Keep finished runs and resume the one in flight from its checkpoint (`--resume`).
    #[serde(skip)]
    pub resume: bool,
    /// Remove the checkpoints of an interrupted reproduction in `out` and start over (`--fresh`).
    #[serde(skip)]
    pub fresh: bool,
    /// Check detection from the records (`--require-detection`).
    #[serde(skip)]
    pub require_detection: bool,
}

impl Plan {
    /// The failure window.
    pub fn window(&self) -> FailureWindow {
        FailureWindow {
            start: self.fault_start,
            len: self.fault_len,
        }
    }

    /// The preset, with every flag the user gave applied, validated.
    ///
    /// # Errors
    /// [`XtaskError::InvalidSetting`] naming the flag and the bad value.
    pub fn from_args(args: &ReproduceArgs) -> Result<Self, XtaskError> {
        let mut plan = Self::preset(args.preset);
        let a = args.clone();
        if let Some(v) = a.seeds {
            plan.seeds = v;
        }
        if let Some(v) = a.first_seed {
            plan.first_seed = v;
        }
        if let Some(names) = &a.arms {
            let mut arms = Vec::new();
            for name in names {
                let arm = Arm::ALL
                    .into_iter()
                    .find(|arm| arm.name() == name.trim())
                    .ok_or_else(|| XtaskError::InvalidSetting {
                        field: "--arms",
                        value: name.clone(),
                        why: format!("one of {}", Arm::ALL.map(Arm::name).join(", ")),
                    })?;
                if !arms.contains(&arm) {
                    arms.push(arm);
                }
            }
            arms.sort();
            plan.arms = arms;
        }
        if let Some(v) = a.steps {
            plan.steps = v;
        }
        if let Some(m) = a.model {
            plan.models = match m {
                ModelChoice::Resnet18 => vec![ModelKind::Resnet18],
                ModelChoice::Transformer => vec![ModelKind::Transformer],
                ModelChoice::All => vec![ModelKind::Resnet18, ModelKind::Transformer],
            };
        }
        plan.backend = a.backend.or(plan.backend);
        if let Some(v) = a.out {
            plan.out = v;
        }
        plan.data_dir = a.data_dir;
        if let Some(v) = a.epsilon {
            plan.epsilon = Some(v);
        }
        if let Some(v) = a.alpha {
            plan.alpha = v;
        }
        if let Some(v) = a.loss_spike_threshold {
            plan.loss_spike_threshold = v;
        }
        if let Some(v) = a.fault_start {
            plan.fault_start = v;
        }
        if let Some(v) = a.fault_len {
            plan.fault_len = v;
        }
        if let Some(v) = a.zeta {
            plan.zeta = v;
        }
        if let Some(v) = a.fault_kind {
            plan.fault_kind = v;
        }
        if let Some(v) = a.probe_size {
            plan.probe_size = v;
        }
        if let Some(v) = a.resnet_width {
            plan.resnet.width = v;
        }
        if let Some(v) = a.resnet_batch {
            plan.resnet.batch = v;
        }
        if let Some(v) = a.transformer_batch {
            plan.transformer.batch = v;
        }
        plan.progress = !a.quiet;
        plan.from_records = a.from_records.clone();
        plan.resume = a.resume;
        plan.fresh = a.fresh;
        plan.require_detection = a.require_detection;
        plan.validate()?;
        Ok(plan)
    }

    /// The `cpu` preset is the full protocol shape; `smoke` shrinks it, `paper` scales it up.
    pub(crate) fn preset(name: PresetName) -> Self {
        let out = |n: &str| PathBuf::from("target").join("reproduce").join(n);
        let cpu = Self {
            preset: "cpu".into(),
            steps: 250,
            seeds: 5,
            first_seed: 0,
            arms: Arm::ALL.to_vec(),
            models: vec![ModelKind::Resnet18, ModelKind::Transformer],
            fault_start: 120,
            fault_len: 10,
            zeta: 300.0,
            fault_kind: FaultChoice::GradientScale,
            epsilon: None,
            alpha: 0.1,
            loss_spike_threshold: 3.0,
            loss_spike_window: 20,
            probe_size: 16,
            resnet: ResnetPlan {
                width: 8,
                batch: 32,
                lr: 1e-3,
            },
            transformer: TransformerPlan {
                d_model: 64,
                heads: 4,
                layers: 2,
                seq_len: 64,
                batch: 64,
                lr: 5e-4,
            },
            backend: None,
            out: out("cpu"),
            data_dir: None,
            progress: true,
            from_records: Vec::new(),
            resume: false,
            fresh: false,
            require_detection: false,
        };
        match name {
            PresetName::Cpu => cpu,
            PresetName::Smoke => Self {
                preset: "smoke".into(),
                steps: 40,
                seeds: 2,
                fault_start: 20,
                fault_len: 5,
                resnet: ResnetPlan {
                    width: 4,
                    batch: 16,
                    ..cpu.resnet
                },
                transformer: TransformerPlan {
                    d_model: 32,
                    heads: 2,
                    layers: 1,
                    seq_len: 32,
                    batch: 16,
                    ..cpu.transformer
                },
                out: out("smoke"),
                ..cpu
            },
            PresetName::Paper => Self {
                preset: "paper".into(),
                seeds: 20,
                resnet: ResnetPlan {
                    width: 64,
                    batch: 128,
                    lr: 5e-4,
                },
                transformer: TransformerPlan {
                    d_model: 128,
                    ..cpu.transformer
                },
                out: out("paper"),
                ..cpu
            },
        }
    }

    pub(crate) fn validate(&self) -> Result<(), XtaskError> {
        let bad = |field: &'static str, value: String, why: &str| {
            Err(XtaskError::InvalidSetting {
                field,
                value,
                why: why.to_owned(),
            })
        };
        if self.seeds < 1 {
            return bad("--seeds", self.seeds.to_string(), "at least one seed");
        }
        if self.first_seed.checked_add(self.seeds).is_none() {
            return bad(
                "--first-seed",
                self.first_seed.to_string(),
                "first seed + seeds overflows",
            );
        }
        if self.arms.is_empty() {
            return bad("--arms", String::new(), "at least one arm");
        }
        if self.steps < 2 {
            return bad("--steps", self.steps.to_string(), "at least 2 steps");
        }
        if let Some(epsilon) = self.epsilon
            && !(epsilon.is_finite() && epsilon > 0.0)
        {
            return bad("--epsilon", epsilon.to_string(), "must be finite and > 0");
        }
        if !(self.alpha > 0.0 && self.alpha < 1.0) {
            return bad("--alpha", self.alpha.to_string(), "must lie in (0, 1)");
        }
        if !(self.loss_spike_threshold.is_finite() && self.loss_spike_threshold > 0.0) {
            return bad(
                "--loss-spike-threshold",
                self.loss_spike_threshold.to_string(),
                "must be finite and > 0",
            );
        }
        if !(self.zeta.is_finite() && self.zeta > 0.0) {
            return bad("--zeta", self.zeta.to_string(), "must be finite and > 0");
        }
        if self.fault_len < 1 {
            return bad("--fault-len", self.fault_len.to_string(), "at least 1 step");
        }
        if self.fault_start < 10 || self.fault_start + self.fault_len > self.steps {
            return bad(
                "--fault-start",
                self.fault_start.to_string(),
                &format!(
                    "the failure window must start at step ≥ 10 (the pre-failure level is measured \
                     over the 10 steps before it) and end by the last step ({})",
                    self.steps
                ),
            );
        }
        if self.probe_size < 1 {
            return bad("--probe-size", self.probe_size.to_string(), "at least 1");
        }
        if self.resnet.width < 1 {
            return bad(
                "--resnet-width",
                self.resnet.width.to_string(),
                "at least 1",
            );
        }
        if self.resnet.batch < 2 {
            return bad(
                "--resnet-batch",
                self.resnet.batch.to_string(),
                "at least 2 (BatchNorm needs more than one sample)",
            );
        }
        if self.transformer.batch < 1 {
            return bad(
                "--transformer-batch",
                self.transformer.batch.to_string(),
                "at least 1",
            );
        }
        if let Some(backend) = &self.backend {
            let known = ["flex", "wgpu", "cuda", "tch", "cpu", "vulkan"];
            if !known.contains(&backend.as_str()) {
                return bad(
                    "--backend",
                    backend.clone(),
                    &format!("one of {}", known.join(", ")),
                );
            }
        }
        Ok(())
    }

    /// The analytic overhead ratio |P| / (3 |B|) of the paper, for a model's batch size.
    pub fn predicted_overhead(&self, model: ModelKind) -> f64 {
        let batch = match model {
            ModelKind::Resnet18 => self.resnet.batch,
            ModelKind::Transformer => self.transformer.batch,
        };
        self.probe_size as f64 / (3.0 * batch as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Plan, String> {
        let mut argv = vec!["cargo xtask", "reproduce"];
        argv.extend(args);
        let cli = crate::cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let crate::cli::Command::Reproduce(r) = cli.command else {
            return Err("not a reproduce command".to_owned());
        };
        Plan::from_args(&r).map_err(|e| e.to_string())
    }

    #[test]
    fn presets_are_valid_and_flags_override_them() {
        for p in ["smoke", "cpu", "paper"] {
            parse(&["--preset", p]).unwrap();
        }
        let plan = parse(&[
            "--preset",
            "smoke",
            "--seeds",
            "3",
            "--epsilon",
            "0.2",
            "--model",
            "transformer",
        ])
        .unwrap();
        assert_eq!(plan.seeds, 3);
        assert_eq!(plan.epsilon, Some(0.2));
        assert_eq!(plan.models, vec![ModelKind::Transformer]);
        assert_eq!(parse(&[]).unwrap().preset, "cpu");
    }

    #[test]
    fn bad_flags_give_clear_errors() {
        let err = parse(&["--epsilon", "-1"]).unwrap_err();
        assert!(err.contains("--epsilon = -1"), "{err}");
        let err = parse(&["--alpha", "1"]).unwrap_err();
        assert!(err.contains("--alpha"), "{err}");
        let err = parse(&["--steps", "100"]).unwrap_err();
        assert!(err.contains("--fault-start"), "{err}");
        let err = parse(&["--backend", "gpu9000"]).unwrap_err();
        assert!(err.contains("--backend"), "{err}");
        let err = parse(&["--preset", "huge"]).unwrap_err();
        assert!(err.contains("huge"), "{err}");
        let err = parse(&["--seeds", "many"]).unwrap_err();
        assert!(err.contains("many"), "{err}");
        let err = parse(&["--arms", "clean,bogus"]).unwrap_err();
        assert!(err.contains("--arms = bogus"), "{err}");
        let plan = parse(&["--arms", "controlled,clean", "--first-seed", "3"]).unwrap();
        assert_eq!(plan.arms, vec![Arm::Clean, Arm::Controlled]);
        assert_eq!(plan.first_seed, 3);
    }
}
