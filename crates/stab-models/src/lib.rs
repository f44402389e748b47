#![warn(missing_docs)]
//! # stab-models
//!
//! The two workloads of *Automatic Stability and Recovery for Neural Network Training*, as burn
//! 0.22 modules, with the data they train on: a CIFAR ResNet-18 and a character-level
//! Transformer, CIFAR-10 / Fashion-MNIST / text loaders, and a deterministic minibatch order.
//! Nothing here knows about the controller: this crate supplies models, batches and losses.
//!
//! ## Models
//!
//! | config | defaults | notes |
//! | --- | --- | --- |
//! | [`ResNet18Config`] `{ num_classes, in_channels = 3, base_width = 64 }` | the paper's model at `base_width = 64` | CIFAR variant: 3×3 stride-1 stem, no max-pool, stages `w, 2w, 4w, 8w`, bias-free convolutions + BatchNorm, global average pool, linear head. 11,173,962 trainable parameters at width 64, 3 channels, 10 classes ([`trainable_param_count`]). |
//! | [`CharTransformerConfig`] `{ vocab_size, seq_len = 64, d_model = 64, n_heads = 4, n_layers = 2, d_ff = 256, dropout = 0, norm_first = false }` | chosen here: the paper gives no sizes | token + learned positional embedding, burn's `TransformerEncoder` (post-norm, ReLU, as PyTorch's default layer) under a causal mask, linear head. Dropout 0 so that a step is a deterministic function of parameters, optimizer state and batch. |
//!
//! Both configs are burn `Config`s (`new`, `with_*`, JSON save/load); `validate()` and
//! `init(&device) -> Result<_, ModelConfigError>` reject bad sizes instead of panicking.
//! Initialization draws from the device's generator: call `device.seed(s)` before `init` for a
//! reproducible model (flex's generator is process-global).
//!
//! Both models offer `forward(input) -> logits` and `loss(&batch) -> Tensor<1>` (mean
//! cross-entropy; for the Transformer over every position), also through the [`LossModel`]
//! trait so one loop serves both tasks.
//!
//! ## Devices, training and probing
//!
//! - Build the model on `device.clone().autodiff()` to train it; `model.valid()` is the
//!   non-autodiff copy for probe evaluations (BatchNorm then uses, and never updates, its
//!   running statistics; no graph is built).
//! - Build batches on the **plain** device (`Device::flex()`, or `device.clone().inner()`):
//!   the same [`ImageBatch`] / [`TextBatch`] then feeds both the training module and the probe
//!   module.
//! - Optimizer: [`paper_adamw`] is burn's AdamW set to PyTorch's defaults, which the paper uses
//!   (β = (0.9, 0.999), ε = 1e-8, weight decay 0.01; burn's own defaults are ε = 1e-5, weight
//!   decay 1e-4). burn takes the learning rate at each `step`: the paper's Transformer uses
//!   [`PAPER_TRANSFORMER_LR`] (5e-4); the paper states none for ResNet-18, the reference code
//!   uses [`REFERENCE_RESNET_LR`] (1e-3).
//!
//! ```no_run
//! use burn::optim::GradientsParams;
//! use burn::prelude::*;
//! use stab_models::data::{BatchPlan, VisionDataset};
//! use stab_models::{LossModel, REFERENCE_RESNET_LR, paper_adamw};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Device::flex();
//! let data = VisionDataset::discover(None)?; // Fashion-MNIST from the Debian package
//! device.seed(0);
//! let mut model = data.resnet_config(8).init(&device.clone().autodiff())?;
//! let mut optim = paper_adamw().init();
//! let plan = BatchPlan::new(0, data.train_len(), 32)?;
//! let probe = data.probe_batch(16, &device)?;
//! for step in 0..250 {
//!     let batch = data.train_batch(&plan.indices(step), &device)?;
//!     let grads = GradientsParams::from_grads(model.loss(&batch).backward(), &model);
//!     model = optim.step(REFERENCE_RESNET_LR, model, grads);
//!     let probe_loss: f32 = model.valid().loss(&probe).into_scalar();
//!     println!("{step} {probe_loss} ({})", data.source_name());
//! }
//! # Ok(()) }
//! ```
//!
//! ## Data conventions
//!
//! - **`--data-dir DIR`** ([`data::VisionDataset::discover`]): CIFAR-10 if
//!   `DIR/cifar-10-batches-bin/` (or `DIR` itself) holds the six official binary files; else
//!   Fashion-MNIST if `DIR` holds its four `*.gz` IDX files; else Fashion-MNIST from
//!   `/usr/share/datasets/fashion-mnist` (Debian's `dataset-fashion-mnist`). A corrupt file is an
//!   error, never a silent fallback. The workspace's shared data directory is `../shared/data`
//!   relative to the workspace root; tests use CIFAR-10 there when present and never require it.
//! - **Provenance**: every data set has a `source_name()` (e.g.
//!   `"fashion-mnist (/usr/share/datasets/fashion-mnist)"`, or the synthetic corpus's phrase and
//!   length) for result files.
//! - **Normalization**: CIFAR-10 per channel mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435,
//!   0.2616); Fashion-MNIST mean 0.2860, std 0.3530; applied on the host when a batch is built.
//! - **Probe set** (|P| = 16 by default): vision, the first |P| images of the *test* split;
//!   text, |P| disjoint windows from a held-out tail of the corpus that no training window
//!   touches ([`data::CharDataset`]).
//! - **Minibatch order**: [`data::BatchPlan`] maps `(seed, step)` to indices with no hidden
//!   cursor (a seeded shuffle per epoch), so all arms of one seed see identical batches, and a
//!   rejected step does not rewind the data.
//! - **Corpora**: [`data::CharCorpus::synthetic`] repeats [`data::SYNTHETIC_PHRASE`] (the paper's
//!   phrase is unpublished) to 16,384 characters; [`data::CharCorpus::from_file`] reads any UTF-8
//!   file. The vocabulary is the sorted set of distinct characters.
//! - **CIFAR-10 archive**: [`data::download`] verifies the official archive's MD5 and unpacks it
//!   (always compiled); fetching it needs the `download` feature.
//!
//! ## Feature flags
//!
//! - `download`: [`data::download`]`::download_cifar10` and friends, over HTTPS (`ureq` with
//!   rustls). Off by default.
//! - `flex-fast`: turns on the Flex backend's SIMD kernels and rayon threads (speed only).
//!
//! ## Sizes for a CPU reproduction
//!
//! See the crate README for the timings measured with `examples/step_timing.rs` and the
//! recommended `cpu` preset.

mod batch;
pub mod data;
mod error;
mod loss_model;
mod optim;
mod params;
mod resnet;
mod transformer;

pub use batch::{ImageBatch, TextBatch};
pub use error::{DataError, ModelConfigError, Result};
pub use loss_model::LossModel;
pub use optim::{PAPER_TRANSFORMER_LR, REFERENCE_RESNET_LR, paper_adamw};
pub use params::trainable_param_count;
pub use resnet::{BasicBlock, Projection, ResNet18, ResNet18Config};
pub use transformer::{CharTransformer, CharTransformerConfig};
