//! One step protocol, every driver: the same measurements and gradients driven through
//! stab-core's closure `Supervisor` (with its `InMemoryStore`) and through the Burn `Guard` with
//! each store give identical decisions, actions and records.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use common::{Net, adamw, batch, grads};
use stab_burn::{
    Fault, FaultKind, FaultSchedule, Guard, GuardConfig, Measure, ProbeError, StoreKind,
    gradient_norm,
};
use stab_core::{
    Action, ControllerConfig, DriftConfig, GateConfig, InMemoryStore, LadderConfig, RingConfig,
    Rung, StepRecord, Supervisor,
};

/// A probe that replays a script, whatever the model.
#[derive(Clone)]
struct Scripted(Arc<Mutex<VecDeque<f64>>>);

impl Measure<Net> for Scripted {
    fn measure(&self, _model: &Net) -> Result<f64, ProbeError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .pop_front()
            .expect("the script covers every measurement"))
    }
}

fn script() -> Vec<f64> {
    let mut ys = Vec::new();
    for t in 0..12 {
        ys.push(1.0 - 0.01 * f64::from(t) + if t % 3 == 0 { 0.02 } else { -0.01 });
    }
    ys.extend([1.3, 1.35, 1.4]); // small steps up, each under ε: drift
    ys.extend([
        f64::NAN,
        50.0,
        50.0,
        50.0,
        50.0,
        50.0,
        50.0,
        50.0,
        50.0,
        50.0,
        50.0,
    ]);
    for t in 0..12 {
        ys.push(0.9 - 0.005 * f64::from(t));
    }
    ys
}

/// The scripted measurements are in units of the paper's ε; the update gate is off because the
/// closure `Supervisor` has no update norm to give it (the Guard does).
fn config() -> ControllerConfig {
    let update_gate = GateConfig {
        enabled: false,
        ..GateConfig::default()
    };
    ControllerConfig::default()
        .with_epsilon(0.5)
        .with_update_gate(update_gate)
        .with_ring(RingConfig { ages: vec![2, 4] })
        .with_ladder(LadderConfig {
            enabled: true,
            rejections_per_rung: 3,
            rejection_window: 3,
            rungs: vec![
                Rung::Rewind,
                Rung::ResetOptimizer,
                Rung::Rewind,
                Rung::Rewind,
            ],
            cooldown: 5,
        })
        .with_drift(DriftConfig {
            enabled: true,
            warmup: 4,
            ..DriftConfig::default()
        })
        .with_gate(GateConfig {
            warmup: 4,
            ..GateConfig::default()
        })
}

type Trace = Vec<(Action, Option<StepRecord>)>;

/// Drives the Guard; returns its trace and the gradient norms it saw.
fn guard_trace(store: StoreKind) -> (Trace, Vec<f64>) {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let ys = script();
    let steps = ys.len() as u64 + 3;
    let mut measurements: VecDeque<f64> = VecDeque::from([1.0]);
    measurements.extend(ys);
    let probe = Scripted(Arc::new(Mutex::new(measurements)));
    let mut guard = Guard::builder(
        GuardConfig::default()
            .with_controller(config())
            .with_store(store),
    )
    .probe(probe.clone())
    .build(&model, adamw())
    .unwrap();
    let faults =
        FaultSchedule::new(0).with(Fault::new(FaultKind::GradientScale { factor: 300.0 }, 8, 2));
    let mut trace = Vec::new();
    let mut norms = Vec::new();
    for t in 0..steps {
        if probe.0.lock().unwrap().is_empty() {
            break;
        }
        let (g, _) = grads(&model, &batch(t, 16, &device));
        let g = faults.grads(t, g, &model);
        norms.push(gradient_norm(&g, &model).unwrap());
        let out = guard.step(0.01, model, g).unwrap();
        trace.push((out.report.action, out.report.record));
        model = out.model;
    }
    (trace, norms)
}

#[derive(Clone, Debug, PartialEq)]
struct Toy {
    position: u64,
    momentum: f64,
}

fn supervisor_trace(norms: &[f64]) -> Trace {
    let initial = Toy {
        position: 0,
        momentum: 0.0,
    };
    let mut sup = Supervisor::new(&config(), InMemoryStore::new(), &initial, 1.0)
        .unwrap()
        .with_optimizer_reset(|mut s: Toy| {
            s.momentum = 0.0;
            s
        });
    let mut ys: VecDeque<f64> = script().into();
    let mut state = initial;
    let mut trace = Vec::new();
    for &norm in norms {
        let out = sup
            .step_gated(
                state,
                norm,
                |mut s| {
                    s.position += 1;
                    s.momentum += 1.0;
                    Ok::<_, std::convert::Infallible>(s)
                },
                |_| Ok(ys.pop_front().unwrap()),
            )
            .unwrap();
        let record = out.outcome.record().cloned();
        let action = record.as_ref().map_or(Action::Unprobed, |r| r.action);
        trace.push((action, record));
        state = out.state;
    }
    trace
}

fn same(a: &Trace, b: &Trace) {
    assert_eq!(a.len(), b.len());
    for (t, (x, y)) in a.iter().zip(b).enumerate() {
        assert_eq!(x.0, y.0, "step {t}: actions differ");
        let (x, y) = (x.1.as_ref().unwrap(), y.1.as_ref().unwrap());
        assert_eq!(
            x.decision.is_accepted(),
            y.decision.is_accepted(),
            "step {t}"
        );
        assert_eq!(
            serde_json::to_string(x).unwrap(),
            serde_json::to_string(y).unwrap(),
            "step {t}: records differ"
        );
    }
}

#[test]
fn supervisor_and_guard_with_each_store_take_identical_decisions_and_actions() {
    // Each guard run sees its own gradients (the model's initialization is not seeded); the
    // supervisor is fed the same norms and measurements.
    let (device_trace, norms) = guard_trace(StoreKind::Device);
    let sup_trace = supervisor_trace(&norms);
    same(&sup_trace, &device_trace);
    let (host_trace, host_norms) = guard_trace(StoreKind::Host);
    same(&supervisor_trace(&host_norms), &host_trace);
    // The script exercises every action.
    let actions: Vec<Action> = sup_trace.iter().map(|(a, _)| *a).collect();
    for wanted in [
        Action::Commit,
        Action::Restore,
        Action::Skip,
        Action::ResetOptimizer,
    ] {
        assert!(
            actions.contains(&wanted),
            "{wanted:?} missing from {actions:?}"
        );
    }
    assert!(
        actions.iter().any(|a| matches!(a, Action::Rewind { .. })),
        "no rewind in {actions:?}"
    );
}
