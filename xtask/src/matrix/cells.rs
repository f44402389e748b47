//! The cells of the robustness matrix: which fault, how strong, when, for how long, on which
//! model.

use serde::{Deserialize, Serialize};

use crate::cli::FaultChoice;
use crate::reproduce::records::ModelKind;

/// When a fault starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Onset {
    /// Step 10: before any statistic of the controller is warm (the gates' z-tests arm after 32
    /// accepted steps, the scale-free ε's spread after 16), with fresh optimizer moments.
    Early,
    /// Step 120: mid-run, every statistic warm (the paper's onset).
    Mid,
}

impl Onset {
    /// The first faulty step.
    pub fn step(self) -> u64 {
        match self {
            Onset::Early => 10,
            Onset::Mid => 120,
        }
    }

    /// Stable name.
    pub fn name(self) -> &'static str {
        match self {
            Onset::Early => "early",
            Onset::Mid => "mid",
        }
    }
}

/// One cell: a model under one fault.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cell {
    /// The model.
    pub model: ModelKind,
    /// What fails.
    pub kind: FaultChoice,
    /// The scale ζ of a gradient or learning-rate fault (1 for NaN gradients).
    pub magnitude: f64,
    /// When it starts.
    pub onset: Onset,
    /// Faulty steps.
    pub len: u64,
}

impl Cell {
    /// The folder name of the cell, e.g. `resnet18_gradient-scale-x300_early_len10`.
    pub fn name(&self) -> String {
        let kind = match self.kind {
            FaultChoice::GradientScale => format!("gradient-scale-x{}", self.magnitude),
            FaultChoice::LrScale => format!("lr-scale-x{}", self.magnitude),
            FaultChoice::NanGradient => "nan-gradient".to_owned(),
        };
        format!(
            "{}_{kind}_{}_len{}",
            self.model.name(),
            self.onset.name(),
            self.len
        )
    }

    /// Short label for tables and figures.
    pub fn label(&self) -> String {
        let kind = match self.kind {
            FaultChoice::GradientScale => format!("grad ×{}", self.magnitude),
            FaultChoice::LrScale => format!("lr ×{}", self.magnitude),
            FaultChoice::NanGradient => "NaN grad".to_owned(),
        };
        format!(
            "{kind}, t₀ = {} ({}), {} step{}",
            self.onset.step(),
            self.onset.name(),
            self.len,
            if self.len == 1 { "" } else { "s" }
        )
    }
}

/// Every combination, in report order (model, kind, magnitude, onset, length).
pub fn all_cells(
    models: &[ModelKind],
    kinds: &[(FaultChoice, Vec<f64>)],
    onsets: &[Onset],
    lengths: &[u64],
) -> Vec<Cell> {
    let mut cells = Vec::new();
    for &model in models {
        for (kind, magnitudes) in kinds {
            for &magnitude in magnitudes {
                for &onset in onsets {
                    for &len in lengths {
                        cells.push(Cell {
                            model,
                            kind: *kind,
                            magnitude,
                            onset,
                            len,
                        });
                    }
                }
            }
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cover_every_combination_with_distinct_names() {
        let cells = all_cells(
            &[ModelKind::Resnet18, ModelKind::Transformer],
            &[
                (FaultChoice::GradientScale, vec![10.0, 300.0]),
                (FaultChoice::NanGradient, vec![1.0]),
            ],
            &[Onset::Early, Onset::Mid],
            &[1, 10, 30],
        );
        assert_eq!(cells.len(), 2 * 3 * 2 * 3);
        let mut names: Vec<String> = cells.iter().map(Cell::name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), cells.len());
        assert_eq!(cells[0].name(), "resnet18_gradient-scale-x10_early_len1");
        assert_eq!(cells[0].label(), "grad ×10, t₀ = 10 (early), 1 step");
        assert_eq!(Onset::Mid.step(), 120);
    }
}
