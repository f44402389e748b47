//! `cargo xtask`: project automation for stab.
//!
//! `cargo xtask reproduce [--preset smoke|cpu|paper] [flags]` runs the paper's experiments
//! (baseline, probe-controlled and loss-spike rollback arms with identical initialization and
//! minibatch order) and writes per-step records, figures and `report.md`.
//!
//! `cargo xtask matrix [flags]` runs the robustness matrix (fault kind × magnitude × onset ×
//! length × model; arms clean, baseline, controlled) and writes `matrix.md`.

mod cli;
mod error;
mod matrix;
mod reproduce;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Reproduce(args) => {
            reproduce::plan::Plan::from_args(&args).and_then(|plan| reproduce::run(&plan))
        }
        cli::Command::Matrix(args) => matrix::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
