//! `cargo xtask reproduce`: runs every (model, seed, arm), then writes records, figures, report.

pub mod figures;
pub mod metrics;
pub mod plan;
pub mod plots;
pub mod records;
pub mod report;
pub(crate) mod runner;

use std::path::Path;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::error::XtaskError;
use plan::Plan;
use records::RunLog;

pub(crate) fn create_dir(path: &Path) -> Result<(), XtaskError> {
    std::fs::create_dir_all(path).map_err(|source| XtaskError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn remove_dir(path: &Path) -> Result<(), XtaskError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(XtaskError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Refuses an `out` folder holding checkpoints of an interrupted reproduction (`--resume`
/// continues it, `--fresh` discards them): they are never removed unasked.
fn refuse_interrupted_checkpoints(out: &Path) -> Result<(), XtaskError> {
    let root = out.join("checkpoints");
    let Ok(runs) = std::fs::read_dir(&root) else {
        return Ok(());
    };
    let mut found = Vec::new();
    for run in runs.flatten() {
        // The checkpointer's own occupancy check: it lists the checkpoints without reading them.
        match stab_burn::Checkpointer::new(run.path(), stab_burn::CheckpointPolicy::default()) {
            Ok(_) => {}
            Err(stab_burn::CheckpointError::Occupied { .. }) => {
                found.push(run.file_name().to_string_lossy().into_owned());
            }
            Err(e) => {
                return Err(XtaskError::InvalidSetting {
                    field: "--out",
                    value: out.display().to_string(),
                    why: format!("its checkpoints cannot be listed: {e}"),
                });
            }
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    found.sort();
    Err(XtaskError::InvalidSetting {
        field: "--out",
        value: out.display().to_string(),
        why: format!(
            "it holds checkpoints of an interrupted reproduction ({}): continue it with \
             --resume, or start over with --fresh (which removes them)",
            found.join(", ")
        ),
    })
}

pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), XtaskError> {
    std::fs::write(path, contents).map_err(|source| XtaskError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs the plan and writes everything into `plan.out`.
///
/// # Errors
/// Bad data, a failing controller, I/O or drawing errors.
pub fn run(plan: &Plan) -> Result<(), XtaskError> {
    let started = Instant::now();
    if let Some(backend) = &plan.backend {
        runner::select_backend(backend)?;
    }
    // Figures need a font; fail now rather than after an hour of training.
    plots::ensure_font()?;
    if !plan.resume && !plan.fresh && plan.from_records.is_empty() {
        refuse_interrupted_checkpoints(&plan.out)?;
    }
    let runs_dir = plan.out.join("runs");
    create_dir(&runs_dir)?;
    write_file(
        &plan.out.join("plan.json"),
        &serde_json::to_string_pretty(plan).expect("plan serializes"),
    )?;

    let multi = MultiProgress::with_draw_target(if plan.progress {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    });
    let style = ProgressStyle::with_template(
        "{prefix:>32} [{bar:30}] {pos:>4}/{len} {elapsed_precise} {msg}",
    )
    .expect("valid template")
    .progress_chars("=> ");

    let mut runs: Vec<RunLog> = Vec::new();
    let models: &[records::ModelKind] = if plan.from_records.is_empty() {
        &plan.models
    } else {
        runs = load_records(plan)?;
        // The output folder holds every record it reports on.
        for run in &runs {
            run.write_jsonl(&runs_dir.join(format!(
                "{}_{}_seed{}.jsonl",
                run.model.name(),
                run.arm.name(),
                run.seed
            )))?;
        }
        &[]
    };
    for &model in models {
        let workload = runner::Workload::load(plan, model)?;
        println!("{}: data {}", model.label(), workload.data_source());
        for seed in plan.first_seed..plan.first_seed + plan.seeds {
            for &arm in &plan.arms {
                let name = format!("{}_{}_seed{seed}", model.name(), arm.name());
                let records = runs_dir.join(format!("{name}.jsonl"));
                let checkpoints = plan.out.join("checkpoints").join(&name);
                if plan.resume && records.exists() {
                    // Finished before the interruption: kept as it is.
                    let log = RunLog::read_jsonl(&records)?;
                    println!("{:<12} {:<14} seed {seed}: kept", model.name(), arm.name());
                    runs.push(log);
                    continue;
                }
                if plan.fresh {
                    // Asked for explicitly: the interrupted reproduction's checkpoints go.
                    remove_dir(&checkpoints)?;
                }
                let bar = multi.add(ProgressBar::new(plan.steps));
                bar.set_style(style.clone());
                bar.set_prefix(format!("{} {} seed {seed}", model.name(), arm.name()));
                let log = workload.run(plan, arm, seed, &checkpoints, &bar)?;
                let rejected = log.steps.iter().filter(|s| s.rejected).count();
                bar.finish_with_message(format!("{rejected} rollbacks"));
                multi.remove(&bar);
                let last = log.steps.last().map(|s| s.probe_loss).unwrap_or(f64::NAN);
                multi.suspend(|| {
                    println!(
                        "{:<12} {:<14} seed {seed}: final probe loss {last:.4}, {rejected} rollbacks",
                        model.name(),
                        arm.name()
                        )
                });
                log.write_jsonl_atomically(&records)?;
                remove_dir(&checkpoints)?;
                runs.push(log);
            }
        }
    }

    let data = runs
        .iter()
        .find(|r| r.model == records::ModelKind::Resnet18)
        .map(|r| r.data_source.clone())
        .unwrap_or_default();
    let figures = figures::draw_all(&runs, plan.window(), plan.epsilon, &data, &plan.out)?;
    let seconds = started.elapsed().as_secs_f64();
    let report = report::render(plan, &runs, &figures, &plan.out, seconds);
    write_file(&plan.out.join("report.md"), &report)?;

    verify_outputs(plan, &runs, &figures)?;
    if plan.require_detection {
        check_detection(plan)?;
    }
    println!("\n{}", summary_text(plan, &runs));
    println!(
        "wrote {} run records, {} figures and report.md to {} in {seconds:.0} s",
        runs.len(),
        figures.len(),
        plan.out.display()
    );
    Ok(())
}

/// `--require-detection`: reads the run records back from `runs/` and checks that the controlled
/// arm rejected a step inside the failure window in every (model, seed), and that the clean arm
/// (when run) rejected nothing.
fn check_detection(plan: &Plan) -> Result<(), XtaskError> {
    use records::Arm;
    if !plan.arms.contains(&Arm::Controlled) {
        return Err(XtaskError::Check(
            "--require-detection needs the controlled arm".to_owned(),
        ));
    }
    let window = plan.window();
    let mut failures = Vec::new();
    for &model in &plan.models {
        for seed in plan.first_seed..plan.first_seed + plan.seeds {
            let path = |arm: Arm| {
                plan.out.join("runs").join(format!(
                    "{}_{}_seed{seed}.jsonl",
                    model.name(),
                    arm.name()
                ))
            };
            let controlled = RunLog::read_jsonl(&path(Arm::Controlled))?;
            if !window.rejected_inside(&controlled.steps) {
                failures.push(format!(
                    "{} seed {seed}: the controlled arm rejected no step in [{}, {})",
                    model.name(),
                    window.start,
                    window.end()
                ));
            }
            if plan.arms.contains(&Arm::Clean) {
                let clean = RunLog::read_jsonl(&path(Arm::Clean))?;
                let false_positives: Vec<u64> = clean
                    .steps
                    .iter()
                    .filter(|s| s.rejected)
                    .map(|s| s.step)
                    .collect();
                if !false_positives.is_empty() {
                    failures.push(format!(
                        "{} seed {seed}: the clean arm rejected steps {false_positives:?}",
                        model.name()
                    ));
                }
            }
        }
    }
    if failures.is_empty() {
        println!(
            "detection check: the fault was caught in every seed of every model, and the clean \
             arm rejected nothing"
        );
        Ok(())
    } else {
        Err(XtaskError::Check(format!(
            "detection check failed: {}",
            failures.join("; ")
        )))
    }
}

/// Reads every `runs/*.jsonl` of the `--from-records` folders, keeping the plan's models, arms
/// and seeds.
fn load_records(plan: &Plan) -> Result<Vec<RunLog>, XtaskError> {
    let mut runs = Vec::new();
    for dir in &plan.from_records {
        let dir = dir.join("runs");
        let entries = std::fs::read_dir(&dir).map_err(|source| XtaskError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut paths: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .collect();
        paths.sort();
        for path in paths {
            let run = RunLog::read_jsonl(&path)?;
            let seeds = plan.first_seed..plan.first_seed + plan.seeds;
            if plan.models.contains(&run.model)
                && plan.arms.contains(&run.arm)
                && seeds.contains(&run.seed)
            {
                runs.push(run);
            }
        }
    }
    runs.sort_by_key(|r| (r.model, r.seed, r.arm));
    if runs.is_empty() {
        return Err(XtaskError::Check(
            "--from-records: no run records match the selected models, arms and seeds".to_owned(),
        ));
    }
    Ok(runs)
}

/// The terminal summary: per model and arm, peak and final probe loss and rollbacks.
fn summary_text(plan: &Plan, runs: &[RunLog]) -> String {
    let mut lines = vec![format!(
        "{:<12} {:<14} {:>22} {:>22} {:>10} {:>10}",
        "model", "arm", "peak probe loss", "final probe loss", "rb inside", "rb outside"
    )];
    for &model in &plan.models {
        for s in report::model_summaries(plan, runs, model) {
            lines.push(format!(
                "{:<12} {:<14} {:>22} {:>22} {:>10} {:>10}",
                model.name(),
                s.arm.name(),
                s.peak.display(3),
                s.final_probe.display(3),
                s.rollbacks_inside,
                s.rollbacks_outside
            ));
        }
    }
    lines.join("\n")
}

/// Checks that every promised output exists and is not empty: the per-step records of every run,
/// every figure in both formats, the report. CI relies on this for the smoke preset.
fn verify_outputs(
    plan: &Plan,
    runs: &[RunLog],
    figures: &[std::path::PathBuf],
) -> Result<(), XtaskError> {
    let mut expected: Vec<std::path::PathBuf> = runs
        .iter()
        .map(|r| {
            plan.out.join("runs").join(format!(
                "{}_{}_seed{}.jsonl",
                r.model.name(),
                r.arm.name(),
                r.seed
            ))
        })
        .collect();
    expected.extend(figures.iter().cloned());
    expected.push(plan.out.join("report.md"));
    let per_model_figures = |m: records::ModelKind| match m {
        records::ModelKind::Resnet18 => 4,
        records::ModelKind::Transformer => 2,
    };
    let wanted: usize = plan.models.iter().map(|&m| 2 * per_model_figures(m)).sum();
    if figures.len() != wanted {
        return Err(XtaskError::Check(format!(
            "expected {wanted} figure files, drew {}",
            figures.len()
        )));
    }
    for path in expected {
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            return Err(XtaskError::Check(format!(
                "{} is missing or empty",
                path.display()
            )));
        }
    }
    Ok(())
}
