//! Summary metrics of the report, computed from the step logs of all seeds of one (model, arm).

use crate::reproduce::records::{Arm, RunLog, StepLog};

/// Where the failure was injected.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureWindow {
    /// First faulty step t₀.
    pub start: u64,
    /// Number of faulty steps w.
    pub len: u64,
}

impl FailureWindow {
    /// `true` if `step` lies in [t₀, t₀ + w).
    pub fn contains(&self, step: u64) -> bool {
        step >= self.start && step < self.start + self.len
    }

    /// t₀ + w.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// `true` if a step inside the window was rejected: the fault was caught.
    pub fn rejected_inside(&self, steps: &[StepLog]) -> bool {
        steps.iter().any(|s| self.contains(s.step) && s.rejected)
    }
}

/// The largest probe loss from step `from` on; a NaN (a diverged run) counts as +∞.
pub fn peak_probe_loss(steps: &[StepLog], from: u64) -> f64 {
    steps
        .iter()
        .filter(|s| s.step >= from)
        .map(|s| {
            if s.probe_loss.is_nan() {
                f64::INFINITY
            } else {
                s.probe_loss
            }
        })
        .fold(f64::NEG_INFINITY, f64::max)
}

/// Mean and standard deviation over seeds, of the finite values; `non_finite` counts the others.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Mean of the finite values (NaN when there is none).
    pub mean: f64,
    /// Population standard deviation of the finite values.
    pub std: f64,
    /// How many values went into mean and std.
    pub count: usize,
    /// How many values were NaN or ±∞ (diverged runs) and were left out.
    pub non_finite: usize,
}

impl Spread {
    /// The spread of `values`.
    pub fn of(values: &[f64]) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let count = finite.len();
        let mean = finite.iter().sum::<f64>() / count as f64;
        let var = finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / count as f64;
        Self {
            mean: if count == 0 { f64::NAN } else { mean },
            std: if count == 0 { f64::NAN } else { var.sqrt() },
            count,
            non_finite: values.len() - count,
        }
    }

    /// "mean ± std" with `digits` significant decimals, plus a note of diverged seeds.
    pub fn display(&self, digits: usize) -> String {
        let mut s = if self.count == 0 {
            "—".to_owned()
        } else {
            format!("{:.*} ± {:.*}", digits, self.mean, digits, self.std)
        };
        if self.non_finite > 0 {
            s.push_str(&format!(" ({} diverged)", self.non_finite));
        }
        s
    }
}

/// The report row of one (model, arm).
#[derive(Debug, Clone, PartialEq)]
pub struct ArmSummary {
    /// Which arm.
    pub arm: Arm,
    /// Seeds summarized.
    pub seeds: usize,
    /// Mean probe loss over the 10 steps before the failure.
    pub pre_failure: Spread,
    /// Largest probe loss from the failure on (NaN/∞ counted as diverged).
    pub peak: Spread,
    /// Steps after the end of the failure window until the probe loss is within 10 % of the
    /// pre-failure level (0 if it never left); seeds that never return are counted separately.
    pub recovery_steps: Spread,
    /// Seeds whose probe loss did not return within 10 % before the run ended.
    pub not_recovered: usize,
    /// Probe loss at the last step.
    pub final_probe: Spread,
    /// Parameter ℓ2 norm at the last step.
    pub final_norm: Spread,
    /// Rollbacks inside the failure window, summed over seeds.
    pub rollbacks_inside: u64,
    /// Rollbacks outside the failure window (false positives), summed over seeds.
    pub rollbacks_outside: u64,
    /// Faulty steps, summed over seeds.
    pub faulty_steps: u64,
    /// Steps from t₀ to the first rollback at or after t₀ (0: caught on the first faulty step).
    pub detection_latency: Spread,
    /// Seeds with no rollback at or after t₀.
    pub undetected: usize,
    /// Measured overhead γ: controller time / training-step time.
    pub overhead: Spread,
    /// Final probe loss relative to the clean run of the same seed (`final / clean final`), over
    /// the seeds that have a clean run.
    pub final_vs_clean: Option<Spread>,
    /// Mean probe loss over the last 10 steps (less noisy than the last step alone).
    pub last10: Spread,
    /// `last10` relative to the clean run of the same seed.
    pub last10_vs_clean: Option<Spread>,
    /// Longest run of consecutive rejected steps, over all seeds.
    pub longest_rejection_run: u64,
    /// Recovery actions, summed over seeds.
    pub actions: ActionCounts,
}

/// How often each recovery action fired, summed over the seeds of an arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ActionCounts {
    /// Gradients rejected by the gate before the step.
    pub skips: u64,
    /// Plain restores of the last accepted state.
    pub restores: u64,
    /// Rewinds to an older snapshot.
    pub rewinds: u64,
    /// Optimizer-state resets.
    pub resets: u64,
    /// Runs stopped by an exhausted ladder.
    pub stops: u64,
    /// Steps at which a rung of the ladder fired (rewinds and resets of the ladder, drift rewinds).
    pub rungs: u64,
}

/// Summarizes all runs of one arm (one model); `clean` are the clean runs of the same model
/// (matched by seed), if any.
pub fn summarize(
    arm: Arm,
    runs: &[&RunLog],
    clean: &[&RunLog],
    window: FailureWindow,
) -> ArmSummary {
    let mut pre = Vec::new();
    let mut peak = Vec::new();
    let mut recovery = Vec::new();
    let mut not_recovered = 0;
    let mut final_probe = Vec::new();
    let mut final_norm = Vec::new();
    let (mut inside, mut outside, mut faulty) = (0, 0, 0);
    let mut latency = Vec::new();
    let mut undetected = 0;
    let mut overhead = Vec::new();
    let mut vs_clean = Vec::new();
    let mut last10 = Vec::new();
    let mut last10_vs_clean = Vec::new();
    let tail_mean = |steps: &[super::records::StepLog]| {
        let tail = &steps[steps.len().saturating_sub(10)..];
        tail.iter().map(|s| s.probe_loss).sum::<f64>() / tail.len().max(1) as f64
    };
    let mut longest = 0_u64;
    let mut actions = ActionCounts::default();

    for run in runs {
        let steps = &run.steps;
        let before: Vec<f64> = steps
            .iter()
            .filter(|s| s.step + 10 >= window.start && s.step < window.start)
            .map(|s| s.probe_loss)
            .collect();
        let level = Spread::of(&before).mean;
        pre.push(level);
        peak.push(peak_probe_loss(steps, window.start));
        let within = |y: f64| y.is_finite() && y <= 1.1 * level;
        let after: Vec<_> = steps.iter().filter(|s| s.step >= window.end()).collect();
        let left = steps
            .iter()
            .filter(|s| s.step >= window.start)
            .any(|s| !within(s.probe_loss));
        match after.iter().position(|s| within(s.probe_loss)) {
            _ if !left => recovery.push(0.0),
            Some(i) => recovery.push(i as f64),
            None => not_recovered += 1,
        }
        let clean_run = clean.iter().find(|c| c.seed == run.seed);
        if !steps.is_empty() {
            last10.push(tail_mean(steps));
            if let Some(c) = clean_run.filter(|c| !c.steps.is_empty()) {
                last10_vs_clean.push(tail_mean(steps) / tail_mean(&c.steps));
            }
        }
        if let Some(last) = steps.last() {
            final_probe.push(last.probe_loss);
            final_norm.push(last.param_norm);
            if let Some(clean_last) = clean
                .iter()
                .find(|c| c.seed == run.seed)
                .and_then(|c| c.steps.last())
            {
                vs_clean.push(last.probe_loss / clean_last.probe_loss);
            }
        }
        let mut current = 0_u64;
        for s in steps {
            current = if s.rejected { current + 1 } else { 0 };
            longest = longest.max(current);
            if s.rung.is_some() {
                actions.rungs += 1;
            }
            match s.action.as_deref() {
                Some("skip") => actions.skips += 1,
                Some("restore") => actions.restores += 1,
                Some("rewind") => actions.rewinds += 1,
                Some("reset-optimizer") => actions.resets += 1,
                Some("stop") => actions.stops += 1,
                _ => {}
            }
        }
        for s in steps {
            if s.fault {
                faulty += 1;
            }
            if s.rejected {
                if window.contains(s.step) {
                    inside += 1;
                } else {
                    outside += 1;
                }
            }
        }
        match steps.iter().find(|s| s.rejected && s.step >= window.start) {
            Some(s) => latency.push((s.step - window.start) as f64),
            None => undetected += 1,
        }
        let control: f64 = steps.iter().map(|s| s.control_seconds).sum();
        let train: f64 = steps.iter().map(|s| s.step_seconds).sum();
        if train > 0.0 {
            overhead.push(control / train);
        }
    }
    ArmSummary {
        arm,
        seeds: runs.len(),
        pre_failure: Spread::of(&pre),
        peak: Spread::of(&peak),
        recovery_steps: Spread::of(&recovery),
        not_recovered,
        final_probe: Spread::of(&final_probe),
        final_norm: Spread::of(&final_norm),
        rollbacks_inside: inside,
        rollbacks_outside: outside,
        faulty_steps: faulty,
        detection_latency: Spread::of(&latency),
        undetected,
        overhead: Spread::of(&overhead),
        final_vs_clean: (!vs_clean.is_empty()).then(|| Spread::of(&vs_clean)),
        last10: Spread::of(&last10),
        last10_vs_clean: (!last10_vs_clean.is_empty()).then(|| Spread::of(&last10_vs_clean)),
        longest_rejection_run: longest,
        actions,
    }
}

/// Per-step mean and standard deviation of one quantity over seeds (finite values only).
pub fn per_step_band(
    runs: &[&RunLog],
    value: impl Fn(&super::records::StepLog) -> Option<f64>,
) -> Vec<(f64, Spread)> {
    let len = runs.iter().map(|r| r.steps.len()).max().unwrap_or(0);
    (0..len)
        .map(|i| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.steps.get(i))
                .filter_map(&value)
                .collect();
            (i as f64, Spread::of(&values))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reproduce::records::{ModelKind, StepLog};

    fn run(probe: &[f64], rejected: &[u64]) -> RunLog {
        RunLog {
            model: ModelKind::Resnet18,
            arm: Arm::Controlled,
            seed: 0,
            data_source: "test".into(),
            device: "test".into(),
            batch_size: 8,
            probe_size: 4,
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
                    rejected: rejected.contains(&(i as u64)),
                    action: None,
                    rung: None,
                    fault: (12..14).contains(&i),
                    grad_norm: None,
                    update_norm: None,
                    eval_loss: None,
                    param_norm: 1.0,
                    step_seconds: 1.0,
                    control_seconds: 0.05,
                })
                .collect(),
        }
    }

    #[test]
    fn summary_counts_rollbacks_latency_and_recovery() {
        // 12 steps at 1.0, failure at 12..14 spikes to 5, back to 1.05 at step 16.
        let mut probe = vec![1.0; 12];
        probe.extend([5.0, 4.0, 3.0, 2.0, 1.05, 1.0]);
        let r = run(&probe, &[13, 17]);
        let s = summarize(
            Arm::Controlled,
            &[&r],
            &[],
            FailureWindow { start: 12, len: 2 },
        );
        assert_eq!(s.rollbacks_inside, 1);
        assert_eq!(s.rollbacks_outside, 1);
        assert_eq!(s.faulty_steps, 2);
        assert_eq!(s.peak.mean, 5.0);
        assert_eq!(s.detection_latency.mean, 1.0);
        assert_eq!(s.recovery_steps.mean, 2.0); // steps 14, 15 above; 16 within 10 %
        assert!((s.overhead.mean - 0.05).abs() < 1e-12);
    }

    #[test]
    fn diverged_runs_are_counted_not_averaged() {
        let mut probe = vec![1.0; 12];
        probe.extend([f64::NAN; 6]);
        let r = run(&probe, &[]);
        let s = summarize(
            Arm::Baseline,
            &[&r],
            &[],
            FailureWindow { start: 12, len: 2 },
        );
        assert_eq!(s.peak.non_finite, 1);
        assert_eq!(s.not_recovered, 1);
        assert_eq!(s.undetected, 1);
        assert!(s.peak.display(2).contains("diverged"));
    }

    #[test]
    fn recovery_metrics_compare_with_the_clean_run_of_the_same_seed() {
        let mut probe = vec![1.0; 12];
        probe.extend([2.0, 2.0, 2.0, 2.0, 2.0, 3.0]);
        let mut r = run(&probe, &[12, 13, 14, 16]);
        let actions = ["restore", "restore", "rewind", "commit", "skip", "commit"];
        for (step, action) in r.steps[12..].iter_mut().zip(actions) {
            step.action = Some(action.to_owned());
        }
        r.steps[14].rung = Some(1);
        let mut clean = run(&[1.5; 18], &[]);
        clean.arm = Arm::Clean;
        let mut other_seed = run(&[100.0; 18], &[]);
        other_seed.seed = 1;
        let s = summarize(
            Arm::Controlled,
            &[&r],
            &[&other_seed, &clean],
            FailureWindow { start: 12, len: 2 },
        );
        assert_eq!(s.longest_rejection_run, 3);
        assert_eq!(
            s.actions,
            ActionCounts {
                skips: 1,
                restores: 2,
                rewinds: 1,
                resets: 0,
                stops: 0,
                rungs: 1
            }
        );
        assert_eq!(s.final_vs_clean.unwrap().mean, 2.0, "3.0 / 1.5, same seed");
        // Last 10 steps: four at 1.0, five at 2.0, one at 3.0 → 1.7; the clean run's 1.5.
        assert!((s.last10.mean - 1.7).abs() < 1e-12);
        assert!((s.last10_vs_clean.unwrap().mean - 1.7 / 1.5).abs() < 1e-12);
        let alone = summarize(
            Arm::Controlled,
            &[&r],
            &[],
            FailureWindow { start: 12, len: 2 },
        );
        assert!(alone.final_vs_clean.is_none() && alone.last10_vs_clean.is_none());
    }
}
