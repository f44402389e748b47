//! A burn-train `Learner` run protected by stab: a small CNN on Fashion-MNIST through an
//! injected learning-rate spike, unguarded, then guarded; and, for reference, a clean run
//! without the spike. Same seed, same initial weights, same batches.
//!
//! ```text
//! cargo run --release -p stab-burn --features train --example learner_fashion_mnist [OUT_DIR]
//! ```
//!
//! Data: the real Fashion-MNIST images of Debian's `dataset-fashion-mnist`
//! (`/usr/share/datasets/fashion-mnist`), the first 6,400 training images (200 steps of 32),
//! the first 16 test images as the probe and the next 512 as the validation set. On steps
//! 80..90 the learning rate is multiplied by 300 (AdamW, 1e-3 → 0.3).
//!
//! In a terminal the `Learner` shows its TUI dashboard, the guard's metrics (Stab Rollbacks,
//! Innovation, Reference, Threshold, Recoveries) beside loss and accuracy; without one (CI) it
//! logs. Either way each run's metric logs land in `OUT_DIR/{unguarded,guarded}/train/…`, and
//! the guarded run's step records in `OUT_DIR/guarded/stab-steps.jsonl`. At the end the example
//! prints each run's validation loss and accuracy and what the guard did.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::data::dataloader::DataLoaderBuilder;
use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::InMemDataset;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Tensor};
use burn_train::metric::{AccuracyMetric, LossMetric};
use burn_train::{
    ClassificationOutput, InferenceStep, Learner, SupervisedTraining, TrainOutput, TrainStep,
};
use stab_burn::learner::LearnerGuard;
use stab_burn::{Fault, FaultKind, FaultSchedule, Guard, GuardConfig, Probe, training_device};
use stab_core::JsonLinesWriter;
use stab_models::ImageBatch;
use stab_models::data::idx::{DEFAULT_FASHION_MNIST_DIR, load_fashion_mnist};
use stab_models::data::{Split, VisionDataset};

const TRAIN_IMAGES: usize = 6_400;
const PROBE_IMAGES: usize = 16;
const VALID_IMAGES: usize = 512;
const BATCH: usize = 32;
const LR: f64 = 1e-3;
const SEED: u64 = 7;

/// The injected fault: ×300 on the learning rate, steps 80..90.
fn faults() -> FaultSchedule {
    FaultSchedule::new(SEED).with(Fault::new(
        FaultKind::LearningRateScale { factor: 300.0 },
        80,
        10,
    ))
}

/// Conv(1→8, 3×3) → BatchNorm → ReLU → MaxPool 2 → Linear(8·13·13 → 10), plus the guard handle
/// (empty in the unguarded run) and the fault injector.
#[derive(Module, Debug)]
struct Cnn {
    conv: Conv2d,
    bn: BatchNorm,
    pool: MaxPool2d,
    fc: Linear,
    #[module(skip)]
    stab: LearnerGuard<Cnn>,
    #[module(skip)]
    faults: Arc<Injector>,
}

/// Counts optimizer steps to apply the fault schedule to the learning rate.
#[derive(Debug)]
struct Injector {
    schedule: FaultSchedule,
    step: std::sync::atomic::AtomicU64,
}

impl Cnn {
    fn new(device: &Device, faults: FaultSchedule) -> Self {
        Self {
            conv: Conv2dConfig::new([1, 8], [3, 3]).init(device),
            bn: BatchNormConfig::new(8).init(device),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            fc: LinearConfig::new(8 * 13 * 13, 10).init(device),
            stab: LearnerGuard::new(),
            faults: Arc::new(Injector {
                schedule: faults,
                step: 0.into(),
            }),
        }
    }

    fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let x = self
            .pool
            .forward(relu(self.bn.forward(self.conv.forward(images))));
        let [b, c, h, w] = x.dims();
        self.fc.forward(x.reshape([b, c * h * w]))
    }

    fn classify(&self, batch: ImageBatch) -> ClassificationOutput {
        let output = self.forward(batch.images);
        let loss = cross_entropy(output.clone(), &batch.targets);
        ClassificationOutput::new(loss, output, batch.targets)
    }
}

fn cross_entropy(logits: Tensor<2>, targets: &Tensor<1, burn::tensor::Int>) -> Tensor<1> {
    let logp = log_softmax(logits, 1);
    let picked = logp.gather(1, targets.clone().unsqueeze_dim(1));
    picked.mean().neg()
}

impl TrainStep for Cnn {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> TrainOutput<ClassificationOutput> {
        let item = self.classify(batch);
        TrainOutput::new(self, item.loss.backward(), item)
    }

    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        grads: GradientsParams,
    ) -> Self {
        // The fault injector (not part of the integration): the learning-rate spike.
        let step = self
            .faults
            .step
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let lr = self.faults.schedule.lr(step, lr.base()).into();
        // The integration: hand the step to the guard.
        self.stab.clone().optimize(self, optim, lr, grads)
    }
}

impl InferenceStep for Cnn {
    type Input = ImageBatch;
    type Output = ClassificationOutput;

    fn step(&self, batch: ImageBatch) -> ClassificationOutput {
        self.classify(batch)
    }
}

/// Builds a batch from image indices of one split.
#[derive(Clone)]
struct Images {
    data: Arc<VisionDataset>,
    split: Split,
}

impl Batcher<usize, ImageBatch> for Images {
    fn batch(&self, indices: Vec<usize>, device: &Device) -> ImageBatch {
        // The indices come from this example's own index lists, all inside the split.
        self.data
            .batch(self.split, &indices, device)
            .expect("indices inside the split")
    }
}

/// Validation loss and accuracy of `model` on the validation images.
fn evaluate(model: &Cnn, data: &VisionDataset, device: &Device) -> (f64, f64) {
    let indices: Vec<usize> = (PROBE_IMAGES..PROBE_IMAGES + VALID_IMAGES).collect();
    let batch = data
        .batch(Split::Test, &indices, device)
        .expect("validation images");
    let targets = batch.targets.clone();
    let logits = model.valid().forward(batch.images);
    let loss = cross_entropy(logits.clone(), &targets).into_scalar::<f64>();
    let correct = logits
        .argmax(1)
        .squeeze_dim::<1>(1)
        .equal(targets)
        .int()
        .sum()
        .into_scalar::<i64>();
    (loss, correct as f64 / VALID_IMAGES as f64)
}

struct Outcome {
    model: Cnn,
}

fn train(
    name: &str,
    out: &Path,
    data: &Arc<VisionDataset>,
    device: &Device,
    guard: bool,
    faulted: bool,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let plain = device.clone().inner();
    device.seed(SEED);
    let schedule = if faulted {
        faults()
    } else {
        FaultSchedule::new(SEED)
    };
    let model = Cnn::new(device, schedule);
    let dir = out.join(name);
    std::fs::create_dir_all(&dir)?;
    if guard {
        let probe_batch = data.probe_batch(PROBE_IMAGES, &plain)?;
        let probe = Probe::new(vec![probe_batch], |m: &Cnn, b: &ImageBatch| {
            cross_entropy(m.forward(b.images.clone()), &b.targets)
        })?;
        let steps = File::create(dir.join("stab-steps.jsonl"))?;
        model.stab.install(
            Guard::builder(GuardConfig::default().with_epsilon(0.5))
                .probe(probe)
                .observer(JsonLinesWriter::new(steps)),
        );
    }

    let train_loader = DataLoaderBuilder::new(Images {
        data: Arc::clone(data),
        split: Split::Train,
    })
    .batch_size(BATCH)
    .shuffle(SEED)
    .set_device(plain.clone())
    .build(InMemDataset::new((0..TRAIN_IMAGES).collect::<Vec<_>>()));
    let valid_loader = DataLoaderBuilder::new(Images {
        data: Arc::clone(data),
        split: Split::Test,
    })
    .batch_size(128)
    .set_device(plain)
    .build(InMemDataset::new(
        (PROBE_IMAGES..PROBE_IMAGES + VALID_IMAGES).collect::<Vec<_>>(),
    ));

    let stab = model.stab.clone();
    let training = SupervisedTraining::new(&dir, train_loader, valid_loader)
        .metrics((LossMetric::new(), AccuracyMetric::new()))
        .num_epochs(1)
        .with_application_logger(None);
    // The guard's metrics on the dashboard (the unguarded runs have none to show).
    let training = if guard {
        stab.register(training)
    } else {
        training
    };
    let learner = Learner::new(model, AdamWConfig::new().init(), LR);
    let result = training.launch(learner);
    if let Some(error) = result.error {
        return Err(format!("{name}: training failed: {error}").into());
    }
    if let Some(error) = stab.take_error() {
        return Err(format!("{name}: the guard failed: {error}").into());
    }
    Ok(Outcome {
        model: result.model,
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("stab-learner-fashion-mnist"));
    let data = load_fashion_mnist(Path::new(DEFAULT_FASHION_MNIST_DIR))
        .map_err(|e| format!("{e} (apt-get install dataset-fashion-mnist)"))?;
    let source = data.source_name();
    let data = Arc::new(data.truncated(TRAIN_IMAGES, PROBE_IMAGES + VALID_IMAGES));
    let selected = training_device()?;
    let device = selected.device.clone().autodiff();
    let plain = device.clone().inner();

    let clean = train("clean", &out, &data, &device, false, false)?;
    let unguarded = train("unguarded", &out, &data, &device, false, true)?;
    let guarded = train("guarded", &out, &data, &device, true, true)?;

    let (c_loss, c_acc) = evaluate(&clean.model, &data, &plain);
    let (u_loss, u_acc) = evaluate(&unguarded.model, &data, &plain);
    let (g_loss, g_acc) = evaluate(&guarded.model, &data, &plain);
    let counters = guarded_counters(&out.join("guarded").join("stab-steps.jsonl"))?;
    println!("data: {source}; device: {}", selected.name);
    println!(
        "{} steps of {BATCH}, lr ×300 on steps 80..90; validation: {VALID_IMAGES} test images",
        TRAIN_IMAGES / BATCH
    );
    let row = |name: &str, loss: f64, accuracy: f64| {
        println!(
            "{name:<22} validation loss {loss:.4}, accuracy {:.1}%",
            100.0 * accuracy
        )
    };
    row("clean (no spike):", c_loss, c_acc);
    row("unguarded, spike:", u_loss, u_acc);
    row("guarded, spike:", g_loss, g_acc);
    println!("guard: {counters}");
    println!("metric logs and step records under {}", out.display());
    Ok(())
}

/// A summary of the guarded run from its step records: which steps were rolled back (an error
/// unless exactly the spiked ones).
fn guarded_counters(path: &Path) -> Result<String, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path)?;
    let mut rolled = Vec::new();
    let mut steps = 0;
    for line in text.lines() {
        let record: stab_core::StepRecord = serde_json::from_str(line)?;
        steps += 1;
        if record.action.discards_proposal() {
            rolled.push(record.step);
        }
    }
    // What this example shows, checked so that CI fails if it stops holding.
    if rolled != (80..90).collect::<Vec<u64>>() {
        return Err(format!("expected the spiked steps 80..90 rolled back, got {rolled:?}").into());
    }
    Ok(format!(
        "{steps} step records, {} rolled back: {rolled:?}",
        rolled.len()
    ))
}
