//! Command-line interface of `cargo xtask`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Project automation for stab.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The xtask commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the paper's experiments (baseline, controlled, loss-spike rollback) and write per-step
    /// records, figures and report.md.
    Reproduce(ReproduceArgs),
    /// Run the robustness matrix: fault kind × magnitude × onset × length × model, arms clean,
    /// baseline and controlled; write per-cell ratios to the clean run of the same seed
    /// (matrix.md) and a figure.
    Matrix(MatrixArgs),
}

/// Which preset to start from; every flag below overrides a field of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PresetName {
    /// Seconds to a couple of minutes on 2 CPU cores: tiny models, few steps, 2 seeds.
    Smoke,
    /// The full protocol shape on CPU: 250 steps, failure at t = 120 (ζ = 300 for 10 steps),
    /// narrow ResNet-18 and a small Transformer, 5 seeds.
    Cpu,
    /// The paper's scale: ResNet-18 full width, batch 128, Transformer batch 64, 20 seeds.
    /// Meant for a GPU backend (`--features wgpu` or `cuda`).
    Paper,
}

/// Which models to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelChoice {
    /// ResNet-18 on images.
    Resnet18,
    /// Character Transformer on text.
    Transformer,
    /// Both.
    All,
}

/// The injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultChoice {
    /// The paper's: every gradient multiplied by ζ.
    GradientScale,
    /// The learning rate multiplied by ζ (a bad learning rate).
    LrScale,
    /// Every gradient element replaced by NaN (a numerical blow-up).
    NanGradient,
}

/// Flags of `cargo xtask reproduce`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReproduceArgs {
    /// Preset to start from.
    #[arg(long, value_enum, default_value_t = PresetName::Cpu)]
    pub preset: PresetName,
    /// Number of seeds (runs per arm).
    #[arg(long)]
    pub seeds: Option<u64>,
    /// Optimization steps per run.
    #[arg(long)]
    pub steps: Option<u64>,
    /// Which model(s).
    #[arg(long, value_enum)]
    pub model: Option<ModelChoice>,
    /// Burn backend (sets BURN_DEVICE): `flex` (default build), `wgpu`, `cuda`, `tch`.
    #[arg(long)]
    pub backend: Option<String>,
    /// Output folder (default: `target/reproduce/<preset>/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Folder holding `cifar-10-batches-bin/`; without it vision runs use Fashion-MNIST.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Acceptance threshold ε of the probe controller.
    #[arg(long, allow_negative_numbers = true)]
    pub epsilon: Option<f64>,
    /// EWMA smoothing factor α of the probe controller.
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: Option<f64>,
    /// z-score threshold of the loss-spike rollback arm.
    #[arg(long, allow_negative_numbers = true)]
    pub loss_spike_threshold: Option<f64>,
    /// First faulty step t₀.
    #[arg(long)]
    pub fault_start: Option<u64>,
    /// Number of faulty steps w.
    #[arg(long)]
    pub fault_len: Option<u64>,
    /// Gradient (or learning-rate) scale ζ during the failure window.
    #[arg(long, allow_negative_numbers = true)]
    pub zeta: Option<f64>,
    /// The injected failure (default: the paper's gradient scaling).
    #[arg(long, value_enum)]
    pub fault_kind: Option<FaultChoice>,
    /// Probe set size |P|.
    #[arg(long)]
    pub probe_size: Option<usize>,
    /// ResNet-18 width (64 = the paper's model).
    #[arg(long)]
    pub resnet_width: Option<usize>,
    /// ResNet-18 minibatch size.
    #[arg(long)]
    pub resnet_batch: Option<usize>,
    /// Transformer minibatch size.
    #[arg(long)]
    pub transformer_batch: Option<usize>,
    /// First seed (runs use seeds first-seed .. first-seed + seeds), to split a reproduction
    /// across processes.
    #[arg(long)]
    pub first_seed: Option<u64>,
    /// Which arms to run, comma-separated (default: all): clean, baseline, controlled,
    /// probe-only, algorithm-1, loss-rollback.
    #[arg(long, value_delimiter = ',')]
    pub arms: Option<Vec<String>>,
    /// Train nothing: read the run records (`runs/*.jsonl`) of these earlier output folders
    /// (repeatable) and write figures and report.md for them into `--out`. The other flags
    /// describe the runs for the report.
    #[arg(long)]
    pub from_records: Vec<PathBuf>,
    /// Do not draw progress bars (logs stay).
    #[arg(long)]
    pub quiet: bool,
    /// Fail unless, in the run records written, the controlled arm rejects a step inside the
    /// failure window in every seed of every model and the clean arm rejects none (CI's check
    /// that protection works on the smoke preset).
    #[arg(long)]
    pub require_detection: bool,
    /// Continue an interrupted reproduction in `--out` (same flags as the interrupted one):
    /// finished runs (`runs/*.jsonl`) are kept, the run that was in flight resumes from its last
    /// checkpoint (`checkpoints/`), the others run.
    #[arg(long, conflicts_with = "fresh")]
    pub resume: bool,
    /// Start over in an `--out` that holds checkpoints of an interrupted reproduction, removing
    /// them. Without `--resume` or `--fresh`, such an `--out` is refused: its checkpoints are
    /// never removed unasked.
    #[arg(long)]
    pub fresh: bool,
}

/// Which onsets the matrix runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnsetChoice {
    /// Step 10, before any statistic of the controller is warm.
    Early,
    /// Step 120, mid-run.
    Mid,
}

/// Flags of `cargo xtask matrix`.
#[derive(Debug, Clone, clap::Args)]
pub struct MatrixArgs {
    /// Preset the runs start from (model sizes, steps, learning rates).
    #[arg(long, value_enum, default_value_t = PresetName::Cpu)]
    pub preset: PresetName,
    /// Seeds per cell.
    #[arg(long, default_value_t = 5)]
    pub seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub first_seed: u64,
    /// Which model(s).
    #[arg(long, value_enum, default_value_t = ModelChoice::All)]
    pub model: ModelChoice,
    /// Fault kinds, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [FaultChoice::GradientScale, FaultChoice::LrScale, FaultChoice::NanGradient])]
    pub kinds: Vec<FaultChoice>,
    /// Magnitudes ζ of the gradient-scale fault, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [300.0])]
    pub gradient_scales: Vec<f64>,
    /// Magnitudes of the learning-rate fault, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [100.0])]
    pub lr_scales: Vec<f64>,
    /// Onsets, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [OnsetChoice::Early, OnsetChoice::Mid])]
    pub onsets: Vec<OnsetChoice>,
    /// Fault lengths in steps, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 30])]
    pub lengths: Vec<u64>,
    /// Run only the cells whose index modulo N is K (`K/N`), to split the matrix across
    /// processes or machines; merge with `--from-records`.
    #[arg(long)]
    pub shard: Option<String>,
    /// Output folder (default: `target/matrix/<preset>/`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Train nothing: report on the records of these earlier matrix folders (repeatable).
    #[arg(long)]
    pub from_records: Vec<PathBuf>,
    /// Burn backend (sets BURN_DEVICE).
    #[arg(long)]
    pub backend: Option<String>,
    /// Folder holding `cifar-10-batches-bin/`; without it vision runs use Fashion-MNIST.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Do not draw progress bars.
    #[arg(long)]
    pub quiet: bool,
}
