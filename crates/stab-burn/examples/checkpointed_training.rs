//! Crash-safe checkpoints and exact resume of a guarded Burn training loop.
//!
//! A small BatchNorm MLP trains 40 steps with a [`Checkpointer`] (a checkpoint every 5 accepted
//! steps and after each recovery action, the newest 2 kept). The run "dies" after step 27 (its
//! guard and model are dropped, as a killed process would lose them); a new guard resumes from the
//! newest checkpoint that verifies, continues from the data position saved with it, and finishes.
//! On Flex the resumed run ends with the same parameters, bit for bit, as a run that was never
//! interrupted; the example checks it and prints what the checkpoints cost.
//!
//! ```text
//! cargo run -p stab-burn --example checkpointed_training
//! ```

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use stab_burn::{
    CheckpointPolicy, Checkpointer, Guard, GuardConfig, Probe, checkpoint, training_device,
};

const STEPS: u64 = 40;
const CRASH_AFTER: u64 = 27;
const LR: f64 = 0.01;

#[derive(Module, Debug)]
struct Mlp {
    fc: Linear,
    bn: BatchNorm,
    out: Linear,
}

impl Mlp {
    fn new(device: &Device) -> Self {
        Self {
            fc: LinearConfig::new(4, 16).init(device),
            bn: BatchNormConfig::new(16).init(device),
            out: LinearConfig::new(16, 1).init(device),
        }
    }

    fn loss(&self, (x, y): &(Tensor<2>, Tensor<2>)) -> Tensor<1> {
        let h = self.bn.forward(self.fc.forward(x.clone())).tanh();
        (self.out.forward(h) - y.clone()).square().mean()
    }
}

/// Batch `step` of a fixed synthetic regression task: the data position is the step index, so
/// the loop's own state is one number.
fn batch(step: u64, device: &Device) -> (Tensor<2>, Tensor<2>) {
    let mut state = step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let x: Vec<f32> = (0..32 * 4).map(|_| uniform()).collect();
    let y: Vec<f32> = x
        .chunks(4)
        .map(|r| r[0] - 2.0 * r[1] + r[2] * r[3])
        .collect();
    (
        Tensor::from_data(TensorData::new(x, [32, 4]), device),
        Tensor::from_data(TensorData::new(y, [32, 1]), device),
    )
}

/// What the loop must know to continue: the next batch.
#[derive(Debug, Serialize, Deserialize)]
struct Position {
    next_batch: u64,
}

/// Every parameter's bytes, by module path.
struct Dump(Vec<String>, Vec<(String, Vec<u8>)>);

impl ModuleVisitor for Dump {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.0.push(name.to_owned());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let bytes = param.val().into_data().as_bytes().to_vec();
        self.1.push((self.0.join("."), bytes));
    }
}

fn parameters(model: &Mlp) -> Vec<(String, Vec<u8>)> {
    let mut dump = Dump(Vec::new(), Vec::new());
    model.valid().visit(&mut dump);
    dump.1
}

/// A fresh run's guard and model, from the initial model's record (same start for every run).
fn start(
    initial: &Bytes,
    device: &Device,
) -> Result<(Guard<Mlp>, Mlp), Box<dyn std::error::Error>> {
    let model = Mlp::new(device).load_record(ModuleRecord::from_bytes(initial.clone())?);
    let guard = builder(device)?.build(&model, AdamWConfig::new().init())?;
    Ok((guard, model))
}

fn builder(device: &Device) -> Result<stab_burn::GuardBuilder<Mlp>, Box<dyn std::error::Error>> {
    let plain = device.clone().inner();
    let probe = Probe::new(vec![batch(u64::MAX, &plain)], |m: &Mlp, b| m.loss(b))?;
    Ok(Guard::builder(GuardConfig::default()).probe(probe))
}

/// Trains from `from` to `to`, checkpointing on the policy's cadence.
fn train(
    guard: &mut Guard<Mlp>,
    mut model: Mlp,
    from: u64,
    to: u64,
    mut checkpointer: Option<&mut Checkpointer>,
    device: &Device,
) -> Result<Mlp, Box<dyn std::error::Error>> {
    for step in from..to {
        let grads =
            GradientsParams::from_grads(model.loss(&batch(step, device)).backward(), &model);
        let out = guard.step(LR, model, grads)?;
        model = out.model;
        if let Some(checkpointer) = checkpointer.as_deref_mut() {
            let position = Position {
                next_batch: step + 1,
            };
            if let Some(info) = checkpointer.after_step(guard, &model, &out.report, &position)? {
                println!(
                    "  step {step:>2}: checkpoint {} ({} states, {} bytes)",
                    info.path.file_name().unwrap_or_default().to_string_lossy(),
                    info.states,
                    info.bytes
                );
            }
        }
    }
    Ok(model)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let selected = training_device()?;
    let device = selected.device.autodiff();
    let initial = Mlp::new(&device).into_record().into_bytes()?;
    let dir = std::env::temp_dir().join(format!("stab-checkpointed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let policy = CheckpointPolicy {
        every_accepted: 5,
        keep: 2,
        on_recovery: true,
    };

    println!("uninterrupted run: {STEPS} steps");
    let (mut guard, model) = start(&initial, &device)?;
    let reference = parameters(&train(&mut guard, model, 0, STEPS, None, &device)?);

    println!("checkpointed run, dies after step {}", CRASH_AFTER - 1);
    {
        // A new run: the directory must hold no checkpoints of an earlier one.
        let mut checkpointer = Checkpointer::new(&dir, policy.clone())?;
        let (mut guard, model) = start(&initial, &device)?;
        train(
            &mut guard,
            model,
            0,
            CRASH_AFTER,
            Some(&mut checkpointer),
            &device,
        )?;
    } // everything in memory is gone

    // A second fresh start in the same directory is refused: the checkpoints are kept.
    if let Err(refused) = Checkpointer::new(&dir, policy.clone()) {
        println!("a fresh start is refused: {refused}");
    } else {
        return Err("a fresh start over existing checkpoints must be refused".into());
    }

    let checkpoint = checkpoint::latest(&dir)?.ok_or("no checkpoint was written")?;
    for skipped in checkpoint.skipped() {
        println!("skipped a damaged checkpoint: {skipped}");
    }
    // The resumed run continues the same history: its checkpointer owns the older checkpoints.
    let mut checkpointer = Checkpointer::resuming(&dir, policy, &checkpoint)?;
    let resumed = resume(&checkpoint, &device)?;
    println!(
        "resumed from {} at step {} (next batch {})",
        dir.display(),
        resumed.step,
        resumed.extra.next_batch
    );
    let (mut guard, model) = (resumed.guard, resumed.model);
    let from = resumed.extra.next_batch;
    let model = train(
        &mut guard,
        model,
        from,
        STEPS,
        Some(&mut checkpointer),
        &device,
    )?;
    let same = parameters(&model) == reference;
    println!(
        "final parameters equal the uninterrupted run's, bit for bit: {same} (backend {})",
        selected.name
    );
    let _ = std::fs::remove_dir_all(&dir);
    if selected.name.contains("Flex") && !same {
        return Err("a resumed run on Flex must equal the uninterrupted one".into());
    }
    Ok(())
}

fn resume(
    checkpoint: &checkpoint::Checkpoint,
    device: &Device,
) -> Result<stab_burn::Resumed<Mlp, Position>, Box<dyn std::error::Error>> {
    Ok(builder(device)?.resume(checkpoint, Mlp::new(device), AdamWConfig::new().init())?)
}
