//! Data: CIFAR-10 and Fashion-MNIST loaders, character corpora, deterministic batching, and the
//! CIFAR-10 downloader.

mod batching;
pub mod cifar;
pub mod download;
pub mod idx;
mod image_set;
mod rng;
mod synthetic;
mod text;
mod vision;

pub use batching::BatchPlan;
pub use image_set::{ImageSet, ImageShape};
pub use rng::{SplitMix64, mix_seed, permutation};
pub use synthetic::{synthetic_cifar10_images, write_synthetic_cifar10};
pub use text::{CharCorpus, CharDataset, SYNTHETIC_LEN, SYNTHETIC_PHRASE};
pub use vision::{Normalization, Split, VisionDataset, VisionSource};
