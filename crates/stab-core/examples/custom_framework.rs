//! stab-core without any tensor library: linear regression trained by SGD with momentum in plain
//! Rust, with a gradient blow-up injected for ten steps, supervised by stab-core alone.
//!
//! Run: `cargo run -p stab-core --example custom_framework`
//!
//! The same seeded run is trained twice: unprotected, and under a [`Supervisor`] whose probe is the
//! mean squared error on a held-out set. The example prints every rejection and both final probe
//! losses, and exits with an error if the controller missed the blow-up or fired outside it.

use std::convert::Infallible;

use stab_core::{ControllerConfig, Fingerprint, InMemoryStore, StepOutcome, Supervisor};

const FEATURES: usize = 8;
const STEPS: u64 = 200;
const BATCH: usize = 16;
const LEARNING_RATE: f64 = 0.02;
const MOMENTUM: f64 = 0.9;
const FAULT_START: u64 = 30;
const FAULT_LEN: u64 = 10;
const FAULT_SCALE: f64 = 300.0;

/// Parameters and optimizer state together: what a rollback must restore.
#[derive(Clone, Debug)]
struct TrainingState {
    weights: [f64; FEATURES],
    velocity: [f64; FEATURES],
    step: u64,
}

/// A tiny deterministic generator (splitmix64), so the example needs no dependency.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

type Sample = ([f64; FEATURES], f64);

fn make_data(rng: &mut Rng, truth: &[f64; FEATURES], n: usize) -> Vec<Sample> {
    (0..n)
        .map(|_| {
            let x: [f64; FEATURES] = std::array::from_fn(|_| rng.next_f64());
            let y = x.iter().zip(truth).map(|(a, b)| a * b).sum::<f64>() + 0.05 * rng.next_f64();
            (x, y)
        })
        .collect()
}

fn mse(weights: &[f64; FEATURES], data: &[Sample]) -> f64 {
    data.iter()
        .map(|(x, y)| (x.iter().zip(weights).map(|(a, b)| a * b).sum::<f64>() - y).powi(2))
        .sum::<f64>()
        / data.len() as f64
}

/// One SGD-with-momentum step on minibatch `t`, with the fault injected inside the window.
fn sgd_step(mut state: TrainingState, train: &[Sample]) -> TrainingState {
    let t = state.step;
    let start = (t as usize * BATCH) % (train.len() - BATCH);
    let batch = &train[start..start + BATCH];
    let mut grad = [0.0; FEATURES];
    for (x, y) in batch {
        let err = x
            .iter()
            .zip(&state.weights)
            .map(|(a, b)| a * b)
            .sum::<f64>()
            - y;
        for (g, xi) in grad.iter_mut().zip(x) {
            *g += 2.0 * err * xi / BATCH as f64;
        }
    }
    let scale = if (FAULT_START..FAULT_START + FAULT_LEN).contains(&t) {
        FAULT_SCALE
    } else {
        1.0
    };
    for ((w, v), g) in state.weights.iter_mut().zip(&mut state.velocity).zip(grad) {
        *v = MOMENTUM * *v + scale * g;
        *w -= LEARNING_RATE * *v;
    }
    state.step += 1;
    state
}

fn fingerprint(state: &TrainingState) -> u64 {
    Fingerprint::new()
        .f64s(&state.weights)
        .f64s(&state.velocity)
        .finish()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng(7);
    let truth: [f64; FEATURES] = std::array::from_fn(|_| rng.next_f64() * 2.0);
    let train = make_data(&mut rng, &truth, 4096);
    let probe = make_data(&mut rng, &truth, 16);
    let initial = TrainingState {
        weights: [0.0; FEATURES],
        velocity: [0.0; FEATURES],
        step: 0,
    };

    // Unprotected run.
    let mut unprotected = initial.clone();
    let mut unprotected_peak = mse(&unprotected.weights, &probe);
    for _ in 0..STEPS {
        unprotected = sgd_step(unprotected, &train);
        unprotected_peak = unprotected_peak.max(mse(&unprotected.weights, &probe));
    }

    // Supervised run. ε is on the scale of this problem's probe MSE (nominal steps move it by
    // < 0.01 late in training). If a scaled step is small enough to be accepted (late in
    // training, when the gradient is tiny), the accepted *velocity* carries the 300x gradient and
    // every later proposal is rejected: a plain rollback would restore that poisoned velocity
    // forever. The escalation ladder then rewinds to an older snapshot (or, with the reset given
    // below, clears the velocity), so the run never freezes.
    // The data position (`step`) advances even when a proposal is rejected: a
    // rejected batch is skipped, not retried. Parameters and velocity roll back.
    let config = ControllerConfig::default()
        .with_epsilon(0.05)
        .with_alpha(0.1);
    let mut supervisor = Supervisor::new(
        &config,
        InMemoryStore::new(),
        &initial,
        mse(&initial.weights, &probe),
    )?
    .with_fingerprint(&initial, fingerprint)
    .with_optimizer_reset(|mut s: TrainingState| {
        s.velocity = [0.0; FEATURES];
        s
    });
    let mut state = initial;
    let mut peak = mse(&state.weights, &probe);
    let mut rejected_steps = Vec::new();
    for t in 0..STEPS {
        let guarded = supervisor.step(
            state,
            |s| Ok::<_, Infallible>(sgd_step(s, &train)),
            |s| Ok(mse(&s.weights, &probe)),
        )?;
        if let StepOutcome::Decided(record) = &guarded.outcome
            && let Some(reason) = record.decision.rejection_reason()
        {
            println!(
                "step {t:3}: rejected ({reason}), probe MSE stays {:.4}",
                record.reference
            );
            rejected_steps.push(t);
        }
        state = guarded.state;
        state.step = t + 1;
        peak = peak.max(mse(&state.weights, &probe));
    }

    let counters = supervisor.counters();
    println!();
    println!(
        "controller: {} steps, {} accepted, {} rejected",
        counters.steps, counters.accepted, counters.rejected
    );
    println!(
        "unprotected: peak probe MSE {unprotected_peak:.3e}, final {:.3e}",
        mse(&unprotected.weights, &probe)
    );
    println!(
        "supervised:  peak probe MSE {peak:.3e}, final {:.3e}",
        mse(&state.weights, &probe)
    );

    let window = FAULT_START..FAULT_START + FAULT_LEN;
    let outside: Vec<u64> = rejected_steps
        .iter()
        .copied()
        .filter(|t| !window.contains(t))
        .collect();
    if rejected_steps.is_empty() || !outside.is_empty() {
        return Err(format!(
            "expected rejections inside {window:?} only; rejected at {rejected_steps:?}"
        )
        .into());
    }
    if mse(&state.weights, &probe) > 0.01 {
        return Err("the supervised model did not recover".into());
    }
    println!("recovered: every rejection fell inside the failure window {window:?}");
    Ok(())
}
