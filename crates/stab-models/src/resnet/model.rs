//! ResNet-18, CIFAR variant, with a width multiplier and a configurable input channel count.

use burn::nn::conv::Conv2d;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{AdaptiveAvgPool2d, AdaptiveAvgPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, Relu};
use burn::prelude::*;

use super::block::{BasicBlock, conv};
use crate::LossModel;
use crate::batch::ImageBatch;
use crate::error::ModelConfigError;

/// Configuration of [`ResNet18`].
///
/// The CIFAR variant (He et al. 2016, §4.2 style, as in the widely used `kuangliu` code): a 3×3
/// stride-1 stem without max-pool, four stages of two [`BasicBlock`]s with widths
/// `w, 2w, 4w, 8w` (strides 1, 2, 2, 2), global average pooling and a linear head.
/// With `base_width = 64`, 3 input channels and 10 classes this is the paper's model:
/// 11,173,962 trainable parameters.
#[derive(Config, Debug)]
pub struct ResNet18Config {
    /// Number of classes of the linear head (10 for CIFAR-10 and Fashion-MNIST).
    pub num_classes: usize,
    /// Input channels: 3 for CIFAR-10, 1 for Fashion-MNIST.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Width of the first stage; the paper's model is 64. 8 or 16 keep CPU runs short.
    #[config(default = 64)]
    pub base_width: usize,
}

impl ResNet18Config {
    /// Checks that every size is positive.
    ///
    /// # Errors
    /// [`ModelConfigError::ZeroSize`] naming the offending field.
    pub fn validate(&self) -> Result<(), ModelConfigError> {
        for (what, value) in [
            ("num_classes", self.num_classes),
            ("in_channels", self.in_channels),
            ("base_width", self.base_width),
        ] {
            if value == 0 {
                return Err(ModelConfigError::ZeroSize { what });
            }
        }
        Ok(())
    }

    /// Builds the model on `device` (use `device.autodiff()` for training), with burn's default
    /// (Kaiming-uniform) initialization drawn from the device's random generator: call
    /// `device.seed(s)` first for a reproducible initialization.
    ///
    /// # Errors
    /// See [`ResNet18Config::validate`].
    pub fn init(&self, device: &Device) -> Result<ResNet18, ModelConfigError> {
        self.validate()?;
        let w = self.base_width;
        let widths = [w, 2 * w, 4 * w, 8 * w];
        let mut blocks = Vec::with_capacity(8);
        let mut c_in = w;
        for (stage, &c_out) in widths.iter().enumerate() {
            let stride = if stage == 0 { 1 } else { 2 };
            blocks.push(BasicBlock::new([c_in, c_out], stride, device));
            blocks.push(BasicBlock::new([c_out, c_out], 1, device));
            c_in = c_out;
        }
        Ok(ResNet18 {
            stem: conv([self.in_channels, w], 3, 1, 1, device),
            stem_bn: BatchNormConfig::new(w).init(device),
            blocks,
            pool: AdaptiveAvgPool2dConfig::new([1, 1]).init(),
            head: LinearConfig::new(8 * w, self.num_classes).init(device),
            relu: Relu::new(),
        })
    }
}

/// ResNet-18 for small images; see [`ResNet18Config`].
#[derive(Module, Debug)]
pub struct ResNet18 {
    /// 3×3 stride-1 stem convolution.
    pub stem: Conv2d,
    /// Normalization after the stem.
    pub stem_bn: BatchNorm,
    /// The eight basic blocks, two per stage.
    pub blocks: Vec<BasicBlock>,
    /// Global average pooling.
    pub pool: AdaptiveAvgPool2d,
    /// Linear classification head (with bias).
    pub head: Linear,
    /// The activation.
    pub relu: Relu,
}

impl ResNet18 {
    /// Class logits `[batch, num_classes]` for images `[batch, in_channels, h, w]` (any
    /// `h, w ≥ 1`; the model is built for 32×32 CIFAR and 28×28 Fashion-MNIST).
    ///
    /// BatchNorm uses batch statistics (and updates its running statistics) when the module is
    /// on an autodiff device, and the running statistics on the module returned by
    /// [`Module::valid`].
    pub fn forward(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = self
            .relu
            .forward(self.stem_bn.forward(self.stem.forward(images)));
        for block in &self.blocks {
            x = block.forward(x);
        }
        let [batch, channels, _, _] = x.dims();
        let x = self.pool.forward(x).reshape([batch, channels]);
        self.head.forward(x)
    }

    /// Mean cross-entropy of the batch, a one-element tensor.
    pub fn loss(&self, batch: &ImageBatch) -> Tensor<1> {
        let logits = self.forward(batch.images.clone());
        CrossEntropyLossConfig::new()
            .init(&logits.device())
            .forward(logits, batch.targets.clone())
    }
}

impl LossModel for ResNet18 {
    type Batch = ImageBatch;

    fn loss(&self, batch: &ImageBatch) -> Tensor<1> {
        ResNet18::loss(self, batch)
    }
}
