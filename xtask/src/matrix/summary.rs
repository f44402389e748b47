//! What the matrix reports: per cell, per-seed ratios of each faulted arm to the clean run of the
//! same seed, their mean and spread, and whether the cell meets the acceptance criteria.

use std::fmt::Write as _;

use crate::matrix::cells::Cell;
use crate::reproduce::metrics::{Spread, peak_probe_loss};
use crate::reproduce::records::{Arm, RunLog, StepLog};

/// The last steps averaged for the final level.
const TAIL: usize = 10;

/// Per-seed ratios of one faulted arm of one cell to the clean runs.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmRatios {
    /// Mean probe loss over the last 10 steps / the clean run's, per seed.
    pub last10_probe: Vec<f64>,
    /// Mean evaluation loss over the last 10 steps / the clean run's, per seed (runs that
    /// recorded one).
    pub last10_eval: Vec<f64>,
    /// Largest probe loss from the onset on / the clean run's largest over the same steps.
    pub peak_probe: Vec<f64>,
    /// Rejections (rollbacks and gate skips), summed over seeds.
    pub rejections: usize,
}

/// One cell's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSummary {
    /// The cell.
    pub cell: Cell,
    /// Seeds with all three arms.
    pub seeds: Vec<u64>,
    /// No controller.
    pub baseline: ArmRatios,
    /// stab's defaults.
    pub controlled: ArmRatios,
}

impl CellSummary {
    /// The ratios the criteria judge: the evaluation loss (the yardstick) when every seed of
    /// both arms recorded it, else the probe loss.
    fn yardstick(&self) -> (&[f64], &[f64]) {
        let n = self.seeds.len();
        if self.baseline.last10_eval.len() == n && self.controlled.last10_eval.len() == n {
            (&self.baseline.last10_eval, &self.controlled.last10_eval)
        } else {
            (&self.baseline.last10_probe, &self.controlled.last10_probe)
        }
    }

    /// Criterion 1: the controlled arm's last-10 loss is at most max(1.05 × clean, baseline)
    /// (means of per-seed ratios, on the evaluation set).
    pub fn never_worse(&self) -> bool {
        let (b, c) = self.yardstick();
        mean(c) <= mean(b).max(1.05)
    }

    /// Criterion 2, for cells whose baseline ends more than 20 % above clean: the controlled arm
    /// ends within 10 % of clean. `None` where it does not apply.
    pub fn recovered(&self) -> Option<bool> {
        let (b, c) = self.yardstick();
        (mean(b) > 1.2).then(|| mean(c) <= 1.10)
    }
}

/// Mean of per-seed ratios; a diverged seed (∞) makes it ∞ (the criteria must not drop it).
fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn tail_mean(steps: &[StepLog], value: impl Fn(&StepLog) -> Option<f64>) -> Option<f64> {
    let tail: Vec<f64> = steps[steps.len().saturating_sub(TAIL)..]
        .iter()
        .filter_map(&value)
        .collect();
    (tail.len() == TAIL.min(steps.len()) && !tail.is_empty())
        .then(|| tail.iter().sum::<f64>() / tail.len() as f64)
}

/// A non-finite loss ratio reads as ∞ (a diverged run), never as a silent NaN.
fn ratio(value: f64, clean: f64) -> f64 {
    let r = value / clean;
    if r.is_nan() { f64::INFINITY } else { r }
}

fn arm_ratios(runs: &[&RunLog], clean: &[&RunLog], onset: u64) -> ArmRatios {
    let mut out = ArmRatios {
        last10_probe: Vec::new(),
        last10_eval: Vec::new(),
        peak_probe: Vec::new(),
        rejections: 0,
    };
    for run in runs {
        let Some(c) = clean.iter().find(|c| c.seed == run.seed) else {
            continue;
        };
        let probe = |s: &StepLog| Some(s.probe_loss);
        if let (Some(v), Some(base)) = (tail_mean(&run.steps, probe), tail_mean(&c.steps, probe)) {
            out.last10_probe.push(ratio(v, base));
        }
        let eval = |s: &StepLog| s.eval_loss;
        let diverged = run.steps.last().is_some_and(|s| !s.probe_loss.is_finite());
        match (tail_mean(&run.steps, eval), tail_mean(&c.steps, eval)) {
            (Some(v), Some(base)) => out.last10_eval.push(ratio(v, base)),
            // A diverged run records no finite evaluation loss: infinitely worse.
            (None, Some(_)) if diverged => out.last10_eval.push(f64::INFINITY),
            _ => {}
        }
        out.peak_probe.push(ratio(
            peak_probe_loss(&run.steps, onset),
            peak_probe_loss(&c.steps, onset),
        ));
        out.rejections += run.steps.iter().filter(|s| s.rejected).count();
    }
    out
}

/// Summarizes a cell from its runs and the clean runs of its model.
pub fn summarize(cell: Cell, runs: &[RunLog], clean: &[RunLog]) -> CellSummary {
    let of = |arm: Arm| -> Vec<&RunLog> {
        runs.iter()
            .filter(|r| r.arm == arm && r.model == cell.model)
            .collect()
    };
    let clean: Vec<&RunLog> = clean.iter().filter(|r| r.model == cell.model).collect();
    let (baseline, controlled) = (of(Arm::Baseline), of(Arm::Controlled));
    let mut seeds: Vec<u64> = controlled
        .iter()
        .map(|r| r.seed)
        .filter(|s| baseline.iter().any(|b| b.seed == *s) && clean.iter().any(|c| c.seed == *s))
        .collect();
    seeds.sort_unstable();
    let onset = cell.onset.step();
    let baseline: Vec<&RunLog> = baseline
        .into_iter()
        .filter(|r| seeds.contains(&r.seed))
        .collect();
    let controlled: Vec<&RunLog> = controlled
        .into_iter()
        .filter(|r| seeds.contains(&r.seed))
        .collect();
    CellSummary {
        cell,
        baseline: arm_ratios(&baseline, &clean, onset),
        controlled: arm_ratios(&controlled, &clean, onset),
        seeds,
    }
}

fn show(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".to_owned();
    }
    let s = Spread::of(values);
    if s.count == 0 {
        return format!("diverged ({} of {})", s.non_finite, values.len());
    }
    if s.non_finite > 0 {
        format!("{:.3} ± {:.3} (+{} diverged)", s.mean, s.std, s.non_finite)
    } else {
        format!("{:.3} ± {:.3}", s.mean, s.std)
    }
}

fn mark(ok: bool) -> &'static str {
    if ok { "yes" } else { "**no**" }
}

/// The matrix as a Markdown table, with the clean arm's false positives.
pub fn render(summaries: &[CellSummary], clean: &[RunLog], title: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# {title}\n");
    let clean_steps: usize = clean.iter().map(|r| r.steps.len()).sum();
    let clean_rejections: usize = clean
        .iter()
        .map(|r| r.steps.iter().filter(|s| s.rejected).count())
        .sum();
    let _ = writeln!(
        md,
        "Clean arm (stab's defaults, no fault): {clean_rejections} rejections in {clean_steps} steps \
         of {} runs.\n",
        clean.len()
    );
    let _ = writeln!(
        md,
        "Ratios to the clean run of the same seed, mean ± std over seeds (never a ratio of means). \
         last-10: mean loss over the last 10 steps, on the probe (16 examples, the controller's \
         signal) and on the evaluation set (512 test images / 128 held-out windows, the \
         yardstick); peak: largest probe loss from the onset on. never worse: controlled last-10 \
         eval ≤ max(1.05, baseline); recovered: where the baseline ends > 1.2 × clean, controlled \
         ≤ 1.10 × clean (both on the evaluation loss, the probe's where a run has none).\n"
    );
    let _ = writeln!(
        md,
        "| cell | seeds | baseline last-10 probe | controlled last-10 probe | baseline last-10 eval \
         | controlled last-10 eval | baseline peak | controlled peak | controlled rejections | \
         never worse | recovered |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
    for s in summaries {
        let _ = writeln!(
            md,
            "| {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            s.cell.model.label(),
            s.cell.label(),
            s.seeds.len(),
            show(&s.baseline.last10_probe),
            show(&s.controlled.last10_probe),
            show(&s.baseline.last10_eval),
            show(&s.controlled.last10_eval),
            show(&s.baseline.peak_probe),
            show(&s.controlled.peak_probe),
            s.controlled.rejections,
            if s.seeds.is_empty() {
                "–"
            } else {
                mark(s.never_worse())
            },
            match s.recovered() {
                _ if s.seeds.is_empty() => "–",
                None => "n/a",
                Some(ok) => mark(ok),
            }
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::FaultChoice;
    use crate::matrix::cells::Onset;
    use crate::reproduce::records::ModelKind;

    fn run(arm: Arm, seed: u64, probe: &[f64], rejected: usize) -> RunLog {
        RunLog {
            model: ModelKind::Transformer,
            arm,
            seed,
            data_source: "test".into(),
            device: "test".into(),
            batch_size: 1,
            probe_size: 1,
            steps: probe
                .iter()
                .enumerate()
                .map(|(i, &y)| StepLog {
                    step: i as u64,
                    train_loss: y,
                    probe_loss: y,
                    measurement: None,
                    innovation: None,
                    reference: None,
                    threshold: None,
                    rejected: i < rejected,
                    action: None,
                    rung: None,
                    fault: false,
                    grad_norm: None,
                    update_norm: None,
                    eval_loss: Some(2.0 * y),
                    param_norm: 1.0,
                    step_seconds: 0.0,
                    control_seconds: 0.0,
                })
                .collect(),
        }
    }

    fn cell() -> Cell {
        Cell {
            model: ModelKind::Transformer,
            kind: FaultChoice::GradientScale,
            magnitude: 300.0,
            onset: Onset::Early,
            len: 1,
        }
    }

    #[test]
    fn ratios_are_per_seed_against_the_same_seed_and_criteria_follow_them() {
        let flat = |v: f64| vec![v; 20];
        let clean = vec![
            run(Arm::Clean, 0, &flat(1.0), 0),
            run(Arm::Clean, 1, &flat(2.0), 0),
        ];
        let runs = vec![
            run(Arm::Baseline, 0, &flat(2.0), 0),
            run(Arm::Baseline, 1, &flat(2.0), 0),
            run(Arm::Controlled, 0, &flat(1.0), 3),
            run(Arm::Controlled, 1, &flat(2.1), 0),
            // A seed with no clean run is left out.
            run(Arm::Controlled, 7, &flat(9.0), 0),
        ];
        let s = summarize(cell(), &runs, &clean);
        assert_eq!(s.seeds, vec![0, 1]);
        // Per-seed ratios: baseline 2 and 1 (mean 1.5, not 4/3 as a ratio of means).
        assert_eq!(s.baseline.last10_probe, vec![2.0, 1.0]);
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(&s.controlled.last10_probe, &[1.0, 1.05]), "{s:?}");
        assert!(close(&s.controlled.last10_eval, &[1.0, 1.05]), "{s:?}");
        assert_eq!(s.controlled.rejections, 3);
        assert!(s.never_worse());
        assert_eq!(
            s.recovered(),
            Some(true),
            "baseline 1.5 > 1.2, controlled 1.025"
        );
        let table = render(&[s], &clean, "m");
        assert!(
            table.contains("| 2 | 1.500 ± 0.500 | 1.025 ± 0.025 |"),
            "{table}"
        );
        assert!(
            table.contains("0 rejections in 40 steps of 2 runs"),
            "{table}"
        );
    }

    #[test]
    fn a_diverged_run_is_infinitely_worse_not_nan() {
        let clean = vec![run(Arm::Clean, 0, &[1.0; 12], 0)];
        let runs = vec![
            run(Arm::Baseline, 0, &[f64::NAN; 12], 0),
            run(Arm::Controlled, 0, &[1.2; 12], 0),
        ];
        let s = summarize(cell(), &runs, &clean);
        assert_eq!(s.baseline.last10_probe, vec![f64::INFINITY]);
        assert_eq!(s.baseline.last10_eval, vec![f64::INFINITY]);
        assert_eq!(show(&s.baseline.last10_eval), "diverged (1 of 1)");
        assert!(s.never_worse());
        assert_eq!(s.recovered(), Some(false), "1.2 > 1.10");
    }
}
