//! `cargo xtask matrix`: the robustness matrix. Every cell (model × fault kind × magnitude ×
//! onset × length) trains the baseline (no controller) and the controlled arm (stab's defaults)
//! for each seed; the clean arm (no fault) runs once per model and seed and is shared by the
//! cells. Runs already recorded are kept, so an interrupted matrix continues where it stopped,
//! and `--shard K/N` with `--from-records` splits it across processes and machines.

pub mod cells;
pub mod summary;

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget};

use crate::cli::{FaultChoice, MatrixArgs, ModelChoice, OnsetChoice};
use crate::error::XtaskError;
use crate::reproduce::plan::Plan;
use crate::reproduce::plots::{ChartSpec, Series, palette, render};
use crate::reproduce::records::{Arm, ModelKind, RunLog};
use crate::reproduce::runner::{self, Workload};
use crate::reproduce::{create_dir, write_file};
use cells::{Cell, Onset};
use summary::CellSummary;

fn invalid(field: &'static str, value: impl ToString, why: &str) -> XtaskError {
    XtaskError::InvalidSetting {
        field,
        value: value.to_string(),
        why: why.to_owned(),
    }
}

/// The matrix to run, from the flags.
struct Matrix {
    base: Plan,
    cells: Vec<Cell>,
    shard: (usize, usize),
    out: PathBuf,
    from_records: Vec<PathBuf>,
}

impl Matrix {
    fn from_args(args: &MatrixArgs) -> Result<Self, XtaskError> {
        let mut base = Plan::preset(args.preset);
        base.seeds = args.seeds;
        base.first_seed = args.first_seed;
        base.backend = args.backend.clone().or(base.backend);
        base.data_dir = args.data_dir.clone();
        base.progress = !args.quiet;
        base.validate()?;
        let models = match args.model {
            ModelChoice::Resnet18 => vec![ModelKind::Resnet18],
            ModelChoice::Transformer => vec![ModelKind::Transformer],
            ModelChoice::All => vec![ModelKind::Resnet18, ModelKind::Transformer],
        };
        let positive = |field, values: &[f64]| -> Result<(), XtaskError> {
            match values.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
                Some(bad) => Err(invalid(field, bad, "must be finite and > 0")),
                None if values.is_empty() => Err(invalid(field, "", "at least one value")),
                None => Ok(()),
            }
        };
        positive("--gradient-scales", &args.gradient_scales)?;
        positive("--lr-scales", &args.lr_scales)?;
        let mut kinds = Vec::new();
        for &kind in &args.kinds {
            let magnitudes = match kind {
                FaultChoice::GradientScale => args.gradient_scales.clone(),
                FaultChoice::LrScale => args.lr_scales.clone(),
                FaultChoice::NanGradient => vec![1.0],
            };
            if !kinds.iter().any(|(k, _)| *k == kind) {
                kinds.push((kind, magnitudes));
            }
        }
        let mut onsets: Vec<Onset> = args
            .onsets
            .iter()
            .map(|o| match o {
                OnsetChoice::Early => Onset::Early,
                OnsetChoice::Mid => Onset::Mid,
            })
            .collect();
        onsets.sort();
        onsets.dedup();
        for &len in &args.lengths {
            let last = onsets.iter().map(|o| o.step()).max().unwrap_or(0) + len;
            if len == 0 || last > base.steps {
                return Err(invalid(
                    "--lengths",
                    len,
                    &format!("each length must be ≥ 1 and end by step {}", base.steps),
                ));
            }
        }
        if kinds.is_empty() || onsets.is_empty() {
            return Err(invalid("--kinds/--onsets", "", "at least one of each"));
        }
        let shard = match &args.shard {
            None => (0, 1),
            Some(text) => text
                .split_once('/')
                .and_then(|(k, n)| Some((k.trim().parse().ok()?, n.trim().parse().ok()?)))
                .filter(|&(k, n): &(usize, usize)| n >= 1 && k < n)
                .ok_or_else(|| invalid("--shard", text, "K/N with 0 ≤ K < N"))?,
        };
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("target").join("matrix").join(&base.preset));
        Ok(Self {
            cells: cells::all_cells(&models, &kinds, &onsets, &args.lengths),
            base,
            shard,
            out,
            from_records: args.from_records.clone(),
        })
    }

    /// The plan of one cell's runs.
    fn plan(&self, cell: &Cell) -> Plan {
        let mut plan = self.base.clone();
        plan.models = vec![cell.model];
        plan.fault_kind = cell.kind;
        plan.zeta = cell.magnitude;
        plan.fault_start = cell.onset.step();
        plan.fault_len = cell.len;
        plan.arms = vec![Arm::Baseline, Arm::Controlled];
        plan
    }
}

fn run_path(dir: &Path, model: ModelKind, arm: Arm, seed: u64) -> PathBuf {
    dir.join(format!("{}_{}_seed{seed}.jsonl", model.name(), arm.name()))
}

/// Trains one run unless its records exist; returns its log.
fn run_once(
    workload: &Workload,
    plan: &Plan,
    arm: Arm,
    seed: u64,
    runs_dir: &Path,
) -> Result<RunLog, XtaskError> {
    let model = plan.models[0];
    let records = run_path(runs_dir, model, arm, seed);
    if records.exists() {
        return RunLog::read_jsonl(&records);
    }
    create_dir(runs_dir)?;
    // Of this run and this process alone: two shards may train the same clean run at once.
    let checkpoints = runs_dir.join("checkpoints").join(format!(
        "{}_{}_seed{seed}-{}",
        model.name(),
        arm.name(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&checkpoints);
    let bar = ProgressBar::with_draw_target(
        Some(plan.steps),
        if plan.progress {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    let log = workload.run(plan, arm, seed, &checkpoints, &bar)?;
    bar.finish_and_clear();
    log.write_jsonl_atomically(&records)?;
    let _ = std::fs::remove_dir_all(&checkpoints);
    let rejected = log.steps.iter().filter(|s| s.rejected).count();
    let last = log.steps.last().map_or(f64::NAN, |s| s.probe_loss);
    println!(
        "{:<12} {:<11} seed {seed} {}: final probe loss {last:.4}, {rejected} rejections",
        model.name(),
        arm.name(),
        runs_dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    );
    Ok(log)
}

/// Reads every run record under `dir` (recursively), skipping partial files.
fn read_all(dir: &Path, into: &mut Vec<(PathBuf, RunLog)>) -> Result<(), XtaskError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if path.is_dir() {
            read_all(&path, into)?;
        } else if path.extension().is_some_and(|e| e == "jsonl") {
            let log = RunLog::read_jsonl(&path)?;
            into.push((path, log));
        }
    }
    Ok(())
}

/// Runs the matrix (or reads it back with `--from-records`) and writes `matrix.md` and its figure.
///
/// # Errors
/// Bad flags, data, controller, I/O or drawing errors.
pub fn run(args: &MatrixArgs) -> Result<(), XtaskError> {
    let matrix = Matrix::from_args(args)?;
    if let Some(backend) = &matrix.base.backend {
        runner::select_backend(backend)?;
    }
    crate::reproduce::plots::ensure_font()?;
    create_dir(&matrix.out)?;
    let seeds = matrix.base.first_seed..matrix.base.first_seed + matrix.base.seeds;
    if matrix.from_records.is_empty() {
        let (k, n) = matrix.shard;
        let mine: Vec<&Cell> = matrix
            .cells
            .iter()
            .enumerate()
            .filter(|(i, _)| i % n == k)
            .map(|(_, c)| c)
            .collect();
        let clean_dir = matrix.out.join("clean").join("runs");
        let mut loaded: Option<(ModelKind, Workload)> = None;
        for seed in seeds.clone() {
            for cell in &mine {
                let plan = matrix.plan(cell);
                if loaded.as_ref().is_none_or(|(m, _)| *m != cell.model) {
                    loaded = Some((cell.model, Workload::load(&plan, cell.model)?));
                }
                let workload = &loaded.as_ref().expect("loaded above").1;
                let dir = matrix.out.join("cells").join(cell.name());
                create_dir(&dir)?;
                write_file(
                    &dir.join("cell.json"),
                    &serde_json::to_string_pretty(cell).expect("serializes"),
                )?;
                run_once(workload, &plan, Arm::Clean, seed, &clean_dir)?;
                for arm in [Arm::Baseline, Arm::Controlled] {
                    run_once(workload, &plan, arm, seed, &dir.join("runs"))?;
                }
            }
        }
    }
    let sources = if matrix.from_records.is_empty() {
        vec![matrix.out.clone()]
    } else {
        matrix.from_records.clone()
    };
    let mut records = Vec::new();
    for source in &sources {
        read_all(source, &mut records)?;
    }
    let in_seeds = |log: &RunLog| seeds.contains(&log.seed);
    let mut clean: Vec<RunLog> = records
        .iter()
        .filter(|(_, log)| log.arm == Arm::Clean && in_seeds(log))
        .map(|(_, log)| log.clone())
        .collect();
    clean.sort_by_key(|r| (r.model, r.seed));
    clean.dedup_by_key(|r| (r.model, r.seed));
    let mut summaries: Vec<CellSummary> = Vec::new();
    for cell in &matrix.cells {
        let name = cell.name();
        let mut runs: Vec<RunLog> = records
            .iter()
            .filter(|(path, log)| {
                log.arm != Arm::Clean
                    && in_seeds(log)
                    && path
                        .parent()
                        .and_then(Path::parent)
                        .and_then(Path::file_name)
                        .is_some_and(|n| n.to_string_lossy() == name)
            })
            .map(|(_, log)| log.clone())
            .collect();
        runs.sort_by_key(|r| (r.seed, r.arm));
        runs.dedup_by_key(|r| (r.seed, r.arm));
        let summary = summary::summarize(*cell, &runs, &clean);
        if !summary.seeds.is_empty() {
            summaries.push(summary);
        }
    }
    let data = clean
        .iter()
        .chain(records.iter().map(|(_, l)| l))
        .find(|r| r.model == ModelKind::Resnet18)
        .map(|r| r.data_source.clone())
        .unwrap_or_default();
    let title = format!(
        "Robustness matrix ({} preset, {} steps, seeds {}..{}; vision data: {})",
        matrix.base.preset,
        matrix.base.steps,
        seeds.start,
        seeds.end,
        if data.is_empty() { "none" } else { &data }
    );
    let mut md = summary::render(&summaries, &clean, &title);
    let figure = draw(&summaries, &matrix.out.join("matrix_last10"))?;
    md.push_str(&format!(
        "\n![last-10 ratios](matrix_last10.png)\n\nFigure: {}\n",
        figure
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    let report = matrix.out.join("matrix.md");
    write_file(&report, &md)?;
    println!("{md}");
    println!("wrote {}", report.display());
    Ok(())
}

/// One point per cell (x: the cell's index): the last-10 probe-loss ratio of each arm, log10.
fn draw(summaries: &[CellSummary], stem: &Path) -> Result<Vec<PathBuf>, XtaskError> {
    let series = |arm: &str, color, pick: fn(&CellSummary) -> &[f64]| Series {
        label: format!("{arm}: last-10 probe loss / clean (mean over seeds)"),
        color,
        points: summaries
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let v = pick(s);
                let mean = v.iter().sum::<f64>() / v.len() as f64;
                (i as f64, mean.clamp(1e-3, 1e6).log10())
            })
            .collect(),
        band: Vec::new(),
    };
    render(
        &ChartSpec {
            title: "Robustness matrix: final level relative to the clean run".into(),
            x_label: "cell (order of matrix.md)".into(),
            y_label: "log10(last-10 ratio)".into(),
            series: vec![
                series("baseline", palette::BASELINE, |s| &s.baseline.last10_probe),
                series("controlled", palette::CONTROLLED, |s| {
                    &s.controlled.last10_probe
                }),
            ],
            window: None,
            hline: Some((0.05f64.ln_1p() / 10f64.ln(), "1.05 × clean".into())),
        },
        stem,
    )
}
