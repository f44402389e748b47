//! Times one training step and one probe evaluation of each model at CPU-sized settings, to
//! choose the `cpu` reproduction preset.
//!
//! ```text
//! cargo run --release -p stab-models --example step_timing -- [--data-dir DIR] [--quick]
//! ```
//!
//! Vision data follow the `--data-dir` convention (CIFAR-10 if `DIR/cifar-10-batches-bin`
//! exists, else Fashion-MNIST from Debian's package); without either, synthetic CIFAR-format
//! images are used. The device is `Device::default()` (set `BURN_DEVICE` to pick another).

use std::path::PathBuf;
use std::time::Instant;

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use stab_models::data::{
    BatchPlan, CharCorpus, CharDataset, VisionDataset, write_synthetic_cifar10,
};
use stab_models::{
    CharTransformerConfig, LossModel, PAPER_TRANSFORMER_LR, REFERENCE_RESNET_LR, paper_adamw,
};

const PROBE_SIZE: usize = 16;

/// Median of `reps` timings (seconds) of `f`, after one warm-up call.
fn median_secs(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// Times a training step (forward, backward, AdamW update) and a probe loss on the valid module.
fn time_model<M: LossModel>(
    mut model: M,
    batches: &[M::Batch],
    probe: &M::Batch,
    lr: f64,
    device: &Device,
    reps: usize,
) -> (f64, f64) {
    let mut optim: ModuleOptimizer = paper_adamw().init();
    let mut i = 0;
    let step = median_secs(reps, || {
        let m = model.clone();
        let loss = m.loss(&batches[i % batches.len()]);
        i += 1;
        let grads = GradientsParams::from_grads(loss.backward(), &m);
        model = optim.step(lr, m, grads);
        device.sync().ok();
    });
    let probe_time = median_secs(reps, || {
        let value = model.valid().loss(probe).into_scalar::<f32>();
        assert!(value.is_finite());
    });
    (step, probe_time)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut data_dir: Option<PathBuf> = None;
    let mut quick = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--data-dir" => data_dir = args.next().map(PathBuf::from),
            "--quick" => quick = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let reps = if quick { 2 } else { 5 };
    let device = Device::default();
    let train_device = device.clone().autodiff();
    println!("device: {device:?}; median of {reps} after one warm-up");

    let tmp;
    let vision = match VisionDataset::discover(data_dir.as_deref()) {
        Ok(v) => v,
        Err(e) => {
            println!("no vision data ({e}); using synthetic CIFAR-format images");
            tmp = std::env::temp_dir().join("stab-models-step-timing");
            write_synthetic_cifar10(&tmp, 0, 200, 100)?;
            VisionDataset::discover(Some(&tmp))?
        }
    };
    println!("vision data: {}", vision.source_name());
    let probe = vision.probe_batch(PROBE_SIZE, &device)?;
    let widths: &[usize] = if quick { &[8] } else { &[8, 16] };
    let batch_sizes: &[usize] = if quick { &[64] } else { &[32, 64, 128] };
    for &width in widths {
        for &batch_size in batch_sizes {
            device.seed(0);
            let model = vision.resnet_config(width).init(&train_device)?;
            let plan = BatchPlan::new(0, vision.train_len(), batch_size)?;
            let batches = (0..3)
                .map(|s| vision.train_batch(&plan.indices(s), &device))
                .collect::<Result<Vec<_>, _>>()?;
            let (step, probe_t) =
                time_model(model, &batches, &probe, REFERENCE_RESNET_LR, &device, reps);
            println!(
                "resnet18 width {width:>2} batch {batch_size:>3}: step {:>7.1} ms, probe(|P|={PROBE_SIZE}) {:>6.1} ms",
                step * 1e3,
                probe_t * 1e3
            );
        }
    }

    let text = CharDataset::new(CharCorpus::synthetic(), 64, PROBE_SIZE)?;
    println!("text data: {}", text.source_name());
    let probe = text.probe_batch(&device)?;
    let config = CharTransformerConfig::new(text.vocab_size());
    for &batch_size in if quick { &[64][..] } else { &[32, 64][..] } {
        device.seed(0);
        let model = config.init(&train_device)?;
        let plan = BatchPlan::new(0, text.train_len(), batch_size)?;
        let batches = (0..3)
            .map(|s| text.train_batch(&plan.indices(s), &device))
            .collect::<Result<Vec<_>, _>>()?;
        let (step, probe_t) =
            time_model(model, &batches, &probe, PAPER_TRANSFORMER_LR, &device, reps);
        println!(
            "transformer d{} h{} l{} ff{} seq 64 batch {batch_size:>3}: step {:>7.1} ms, probe(|P|={PROBE_SIZE}) {:>6.1} ms",
            config.d_model,
            config.n_heads,
            config.n_layers,
            config.d_ff,
            step * 1e3,
            probe_t * 1e3
        );
    }
    Ok(())
}
