//! A guarded Burn training loop on the default (Flex CPU) backend.
//!
//! A small Conv2d + BatchNorm + Linear classifier learns a synthetic task; on steps 20..25 the
//! gradients are multiplied by ζ = 300. The unguarded run diverges; the guarded run rejects
//! exactly those five proposals and keeps training. Then it times a step with and without the
//! guard, and prints what each snapshot store holds.
//!
//! ```text
//! cargo run -p stab-burn --example guarded_training
//! BURN_DEVICE=wgpu cargo run -p stab-burn --features wgpu --example guarded_training
//! ```
//!
//! The optimizer is SGD: AdamW divides each update by the root of its second moment, so a ζ
//! that scales the gradient hardly scales the step, and this small model would shrug it off.

use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::optim::{GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Tensor, TensorData};
use stab_burn::{
    Fault, FaultKind, FaultSchedule, Guard, GuardConfig, GuardMode, Probe, StepAction, StoreKind,
    training_device,
};

const CLASSES: usize = 3;
const SIDE: usize = 8;
const LR: f64 = 0.05;
const BATCH: usize = 32;

#[derive(Module, Debug)]
struct Net {
    conv: Conv2d,
    bn: BatchNorm,
    fc: Linear,
}

impl Net {
    fn new(device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([1, 8], [3, 3]).init(device),
            bn: BatchNormConfig::new(8).init(device),
            fc: LinearConfig::new(8 * 6 * 6, CLASSES).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.bn.forward(self.conv.forward(x)));
        let [b, c, h, w] = x.dims();
        self.fc.forward(x.reshape([b, c * h * w]))
    }
}

#[derive(Debug, Clone)]
struct Batch {
    x: Tensor<4>,
    targets: Tensor<2>,
}

fn loss(net: &Net, batch: &Batch) -> Tensor<1> {
    let logp = log_softmax(net.forward(batch.x.clone()), 1);
    (logp * batch.targets.clone()).sum_dim(1).mean().neg()
}

/// Class c: a faint 3×3 blob at one of three places, under noise; one label in five is random.
fn batch(seed: u64, n: usize, device: &Device) -> Batch {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut x, mut targets) = (vec![0f32; n * SIDE * SIDE], vec![0f32; n * CLASSES]);
    for i in 0..n {
        let class = (next() * CLASSES as f64) as usize;
        let label = if next() < 0.2 {
            (next() * CLASSES as f64) as usize
        } else {
            class
        };
        targets[i * CLASSES + label] = 1.0;
        let (r0, c0) = [(1, 1), (1, 4), (4, 2)][class];
        for r in 0..SIDE {
            for c in 0..SIDE {
                let blob = (r0..r0 + 3).contains(&r) && (c0..c0 + 3).contains(&c);
                let noise = (next() + next() + next() - 1.5) * 1.2;
                x[i * SIDE * SIDE + r * SIDE + c] = if blob { 0.6 } else { 0.0 } + noise as f32;
            }
        }
    }
    Batch {
        x: Tensor::from_data(TensorData::new(x, [n, 1, SIDE, SIDE]), device),
        targets: Tensor::from_data(TensorData::new(targets, [n, CLASSES]), device),
    }
}

fn probe(device: &Device) -> Probe<Net, Batch> {
    let plain = device.clone().inner();
    Probe::new(
        vec![batch(10_001, 8, &plain), batch(10_002, 8, &plain)],
        loss,
    )
    .expect("two batches")
}

fn optimizer() -> ModuleOptimizer {
    SgdConfig::new().init()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let selected = training_device()?;
    println!("device: {}", selected.name);
    let device = selected.device.autodiff();
    device.seed(7);
    let initial = Net::new(&device);

    let faults = FaultSchedule::new(0).with(Fault::new(
        FaultKind::GradientScale { factor: 300.0 },
        20,
        5,
    ));
    let config = GuardConfig::default().with_epsilon(0.5);
    println!("\n== ζ = 300 on steps 20..25, SGD lr {LR}, ε = 0.5, α = 0.1 ==");
    println!(
        "{:>4}  {:>12}  {:>12}  {:>10}  action",
        "step", "baseline y", "guarded y", "ν"
    );
    // Baseline: the guard in observe mode measures the same probe but keeps every proposal.
    let mut baseline = Guard::builder(config.clone().with_mode(GuardMode::Observe))
        .probe(probe(&device))
        .build(&initial, optimizer())?;
    let mut guard = Guard::builder(config.clone())
        .probe(probe(&device))
        .build(&initial, optimizer())?;
    let (mut base_model, mut model) = (initial.clone().valid().train(), initial.clone());
    for t in 0..40 {
        let data = batch(t, BATCH, &device);

        let l = loss(&base_model, &data);
        let g = GradientsParams::from_grads(l.backward(), &base_model);
        let g = faults.grads(t, g, &base_model);
        let base = baseline.step(LR, base_model, g)?;
        base_model = base.model;

        // The guarded loop: the only changes to a plain Burn loop are the two guard lines.
        let l = loss(&model, &data);
        let g = GradientsParams::from_grads(l.backward(), &model);
        let g = faults.grads(t, g, &model);
        let step = guard.step(LR, model, g)?; // was: model = optim.step(LR, model, g);
        model = step.model;

        let r = &step.report;
        let action = match r.action {
            StepAction::Restore => format!(
                "ROLLED BACK ({})",
                r.decision()
                    .and_then(|d| d.rejection_reason())
                    .map_or_else(String::new, |x| x.to_string())
            ),
            other => format!("{other:?}").to_lowercase(),
        };
        println!(
            "{t:>4}  {:>12.4}  {:>12.4}  {:>10.4}  {action}",
            base.report.measurement().unwrap_or(f64::NAN),
            r.measurement().unwrap_or(f64::NAN),
            r.innovation().unwrap_or(f64::NAN),
        );
    }
    let c = guard.counters();
    println!(
        "guarded: {} accepted, {} rejected (longest run {}), final ŷ = {:.4}",
        c.accepted,
        c.rejected,
        c.longest_rejection_run,
        guard.reference().unwrap_or(f64::NAN)
    );

    timing(&device, &initial)?;
    Ok(())
}

/// Mean wall time of one training step, unguarded and guarded, on the same data. Every variant
/// reads the training loss back each step, so the device has finished the step when the clock
/// is read.
fn timing(device: &Device, initial: &Net) -> Result<(), Box<dyn std::error::Error>> {
    const WARMUP: u64 = 20;
    const STEPS: u64 = 300;
    let data: Vec<Batch> = (0..8).map(|s| batch(1000 + s, BATCH, device)).collect();

    let mut results = Vec::new();
    // Unguarded reference.
    {
        let mut model = initial.clone().valid().train();
        let mut optim = optimizer();
        let mut clock = None;
        for t in 0..WARMUP + STEPS {
            if t == WARMUP {
                clock = Some(Instant::now());
            }
            let l = loss(&model, &data[(t % 8) as usize]);
            let _ = l.clone().into_scalar::<f32>();
            let g = GradientsParams::from_grads(l.backward(), &model);
            model = optim.step(LR, model, g);
        }
        let per_step = clock.map_or(0.0, |c| c.elapsed().as_secs_f64() / STEPS as f64);
        results.push(("unguarded".to_owned(), per_step));
    }
    for (name, config) in [
        ("guarded, device store", GuardConfig::default()),
        (
            "guarded, host store",
            GuardConfig::default().with_store(StoreKind::Host),
        ),
        (
            "observe only (probe cost)",
            GuardConfig::default().with_mode(GuardMode::Observe),
        ),
        (
            "guarded, probe every 4 steps",
            GuardConfig::default().with_probe_interval(4),
        ),
        (
            "guarded, verify_restores on",
            GuardConfig::default().with_verify_restores(true),
        ),
    ] {
        let mut model = initial.clone().valid().train();
        let mut guard = Guard::builder(config.with_epsilon(1e9))
            .probe(probe(device))
            .build(&model, optimizer())?;
        let mut clock = None;
        for t in 0..WARMUP + STEPS {
            if t == WARMUP {
                clock = Some(Instant::now());
            }
            let l = loss(&model, &data[(t % 8) as usize]);
            let _ = l.clone().into_scalar::<f32>();
            let g = GradientsParams::from_grads(l.backward(), &model);
            model = guard.step(LR, model, g)?.model;
        }
        guard.store().flush()?;
        let per_step = clock.map_or(0.0, |c| c.elapsed().as_secs_f64() / STEPS as f64);
        results.push((name.to_owned(), per_step));
        if name.ends_with("store") {
            let m = guard.store_memory();
            println!(
                "memory, {name}: {} snapshots (ring ages 8, 64), device-private {} B, \
                 device-shared {} B, host {} B",
                m.snapshots, m.device_private, m.device_shared, m.host
            );
        }
    }
    println!("\n== step time (batch {BATCH}, probe 16 examples, {STEPS} steps) ==");
    let base = results[0].1;
    for (name, per_step) in &results {
        println!(
            "{name:<30} {:>9.3} ms/step  ({:+.1} %)",
            per_step * 1e3,
            (per_step / base - 1.0) * 100.0
        );
    }
    Ok(())
}
