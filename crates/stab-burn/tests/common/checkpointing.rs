//! Fixtures of the checkpoint tests: a guarded run with a NaN fault that drives restores, ring
//! rewinds and an optimizer reset, from one fixed initial model.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::Bytes;
use serde::{Deserialize, Serialize};
use stab_burn::{
    Fault, FaultKind, FaultSchedule, Guard, GuardConfig, StepAction, StepReport, StoreKind,
};
use stab_core::{ControllerConfig, LadderConfig, RingConfig, Rung};

use super::{Net, StateBytes, adamw, batch, grads, probe};

pub const LR: f64 = 0.01;
pub const STEPS: u64 = 34;

/// The training loop's own state: which batch comes next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub next_batch: u64,
}

pub fn config(store: StoreKind) -> GuardConfig {
    GuardConfig::default()
        .with_store(store)
        .with_verify_restores(true)
        .with_controller(
            ControllerConfig::default()
                .with_ring(RingConfig { ages: vec![2, 4] })
                .with_ladder(LadderConfig {
                    enabled: true,
                    rejections_per_rung: 2,
                    rejection_window: 3,
                    rungs: vec![
                        Rung::Rewind,
                        Rung::ResetOptimizer,
                        Rung::Rewind,
                        Rung::Rewind,
                        Rung::Rewind,
                    ],
                    cooldown: 4,
                })
                .with_gradient_gate(false),
        )
}

/// NaN gradients for six steps from step 14: restores, then the ladder's rewinds and reset.
pub fn faults() -> FaultSchedule {
    FaultSchedule::new(0).with(Fault::new(FaultKind::GradientNan, 14, 6))
}

pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stab-checkpoint-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Everything but the ids of running statistics (a resumed module keeps the ids of the module
/// it was loaded into; burn does not load those ids). Parameters keep their ids.
pub fn comparable(state: &StateBytes) -> StateBytes {
    let mut state = state.clone();
    for tensor in &mut state.tensors {
        if !tensor.2 {
            tensor.0.clear();
        }
    }
    state
}

/// One guarded step on batch `t`; the report as text (NaN fields compare equal).
pub fn step(guard: &mut Guard<Net>, model: Net, t: u64) -> (Net, String, StepAction) {
    let (model, report) = step_report(guard, model, t);
    (model, format!("{report:?}"), report.action)
}

/// One guarded step on batch `t`, with the report's timings zeroed.
pub fn step_report(guard: &mut Guard<Net>, model: Net, t: u64) -> (Net, StepReport) {
    let device = super::training_device();
    let (g, _) = grads(&model, &batch(t, 16, &device));
    let g = faults().grads(t, g, &model);
    let out = guard.step(LR, model, g).unwrap();
    let mut report = out.report;
    report.timings = Default::default();
    (out.model, report)
}

/// The initial model every run of a test starts from: one seed, one record (so that separate
/// runs, and separate processes, start from the same values and parameter ids).
pub fn initial_record() -> Vec<u8> {
    static RECORD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    RECORD
        .get_or_init(|| {
            let device = super::training_device();
            Net::new(&device)
                .into_record()
                .into_bytes()
                .unwrap()
                .to_vec()
        })
        .clone()
}

pub fn initial_model(record: &[u8]) -> Net {
    let device = super::training_device();
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(record.to_vec())).unwrap();
    Net::new(&device).load_record(record)
}

pub fn fresh(store: StoreKind) -> (Guard<Net>, Net) {
    fresh_from(store, &initial_record())
}

pub fn fresh_from(store: StoreKind, record: &[u8]) -> (Guard<Net>, Net) {
    let device = super::training_device();
    let model = initial_model(record);
    let guard = Guard::builder(config(store))
        .probe(probe(&device))
        .build(&model, adamw())
        .unwrap();
    (guard, model)
}

/// The names of the entries of `dir`, sorted.
pub fn entry_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
