//! The paper's figures, built from the run logs.

use std::path::{Path, PathBuf};

use plotters::style::{BLACK, RGBColor};

use crate::error::XtaskError;
use crate::reproduce::metrics::{FailureWindow, per_step_band};
use crate::reproduce::plots::{ChartSpec, Series, palette, render};
use crate::reproduce::records::{Arm, ModelKind, RunLog, StepLog};

fn color(arm: Arm) -> RGBColor {
    match arm {
        Arm::Clean => palette::CLEAN,
        Arm::Baseline => palette::BASELINE,
        Arm::Controlled => palette::CONTROLLED,
        Arm::ProbeOnly => palette::PROBE_ONLY,
        Arm::Algorithm1 => palette::ALGORITHM_1,
        Arm::LossRollback => palette::LOSS_ROLLBACK,
    }
}

fn runs_of(runs: &[RunLog], model: ModelKind, arm: Arm) -> Vec<&RunLog> {
    runs.iter()
        .filter(|r| r.model == model && r.arm == arm)
        .collect()
}

/// A mean ± std series of `value` over the seeds of one arm. With `log10`, the values are plotted
/// as log₁₀ (probe losses span orders of magnitude after a blow-up).
fn band_series(
    runs: &[RunLog],
    model: ModelKind,
    arm: Arm,
    log10: bool,
    value: impl Fn(&StepLog) -> Option<f64>,
) -> Series {
    let transform = |v: f64| if log10 { v.max(1e-12).log10() } else { v };
    let band = per_step_band(&runs_of(runs, model, arm), |s| value(s).map(transform));
    let n = runs_of(runs, model, arm).len();
    Series {
        label: format!("{} (mean ± std, n = {n})", arm.label()),
        color: color(arm),
        points: band.iter().map(|(x, s)| (*x, s.mean)).collect(),
        band: band
            .iter()
            .map(|(x, s)| (*x, s.mean - s.std, s.mean + s.std))
            .collect(),
    }
}

fn window_span(window: FailureWindow) -> Option<(f64, f64)> {
    Some((window.start as f64, window.end() as f64))
}

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

/// Draws every figure for the models present and returns the files written.
///
/// # Errors
/// Drawing or font errors.
pub fn draw_all(
    runs: &[RunLog],
    window: FailureWindow,
    epsilon: Option<f64>,
    data: &str,
    dir: &Path,
) -> Result<Vec<PathBuf>, XtaskError> {
    let mut files = Vec::new();
    let has = |m| runs.iter().any(|r| r.model == m);
    let present = |model: ModelKind, arms: &[Arm]| -> Vec<Arm> {
        arms.iter()
            .copied()
            .filter(|&arm| runs.iter().any(|r| r.model == model && r.arm == arm))
            .collect()
    };
    let compared = [
        Arm::Clean,
        Arm::Baseline,
        Arm::Algorithm1,
        Arm::ProbeOnly,
        Arm::Controlled,
    ];
    let probe_chart = |model: ModelKind, title: String| ChartSpec {
        title,
        x_label: "step".into(),
        y_label: "log10(probe loss)".into(),
        series: present(model, &compared)
            .into_iter()
            .map(|arm| band_series(runs, model, arm, true, |s| finite(s.probe_loss)))
            .collect(),
        window: window_span(window),
        hline: None,
    };
    if has(ModelKind::Resnet18) {
        files.extend(render(
            &probe_chart(
                ModelKind::Resnet18,
                format!("Fig. 2 — ResNet-18 probe loss ({data})"),
            ),
            &dir.join("fig2_resnet18_probe_loss"),
        )?);
        files.extend(render(
            &ChartSpec {
                title: "Fig. 3 — innovation ν of the controlled ResNet-18 runs".into(),
                x_label: "step".into(),
                y_label: "innovation ν".into(),
                series: present(ModelKind::Resnet18, &[Arm::Controlled, Arm::ProbeOnly])
                    .into_iter()
                    .take(1)
                    .flat_map(|arm| {
                        let innovation = band_series(runs, ModelKind::Resnet18, arm, false, |s| {
                            s.innovation.and_then(finite)
                        });
                        // A scale-free ε moves with the run: draw it beside ν.
                        let threshold = epsilon.is_none().then(|| Series {
                            label: "its threshold ε_t (mean)".into(),
                            color: BLACK,
                            band: Vec::new(),
                            ..band_series(runs, ModelKind::Resnet18, arm, false, |s| {
                                s.threshold.and_then(finite)
                            })
                        });
                        std::iter::once(innovation).chain(threshold)
                    })
                    .collect(),
                window: window_span(window),
                hline: epsilon.map(|e| (e, format!("threshold ε = {e}"))),
            },
            &dir.join("fig3_resnet18_innovation"),
        )?);
        files.extend(render(
            &ChartSpec {
                title: "Fig. 4 — ResNet-18 parameter ℓ2 norm".into(),
                x_label: "step".into(),
                y_label: "‖θ‖₂".into(),
                series: present(ModelKind::Resnet18, &compared)
                    .into_iter()
                    .map(|arm| {
                        band_series(runs, ModelKind::Resnet18, arm, false, |s| {
                            finite(s.param_norm)
                        })
                    })
                    .collect(),
                window: window_span(window),
                hline: None,
            },
            &dir.join("fig4_resnet18_param_norm"),
        )?);
    }
    if has(ModelKind::Transformer) {
        files.extend(render(
            &probe_chart(
                ModelKind::Transformer,
                "Fig. 5 — Character Transformer probe loss".into(),
            ),
            &dir.join("fig5_transformer_probe_loss"),
        )?);
    }
    for model in [ModelKind::Resnet18, ModelKind::Transformer] {
        if !has(model) {
            continue;
        }
        let rollbacks = |arm: Arm| {
            let arm_runs = runs_of(runs, model, arm);
            let len = arm_runs.iter().map(|r| r.steps.len()).max().unwrap_or(0);
            let mut total = 0.0;
            let points = (0..len)
                .map(|i| {
                    total += arm_runs
                        .iter()
                        .filter(|r| r.steps.get(i).is_some_and(|s| s.rejected))
                        .count() as f64;
                    (i as f64, total / arm_runs.len().max(1) as f64)
                })
                .collect();
            Series {
                label: format!("{} (mean over seeds)", arm.label()),
                color: color(arm),
                points,
                band: Vec::new(),
            }
        };
        files.extend(render(
            &ChartSpec {
                title: format!(
                    "Rollbacks so far — probe-based vs loss-based control, {}",
                    model.label()
                ),
                x_label: "step".into(),
                y_label: "cumulative rollbacks per run".into(),
                series: present(
                    model,
                    &[
                        Arm::Algorithm1,
                        Arm::ProbeOnly,
                        Arm::Controlled,
                        Arm::LossRollback,
                    ],
                )
                .into_iter()
                .map(rollbacks)
                .collect(),
                window: window_span(window),
                hline: None,
            },
            &dir.join(format!("fig6_{}_rollbacks", model.name())),
        )?);
    }
    Ok(files)
}
