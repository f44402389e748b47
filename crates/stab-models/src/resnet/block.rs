//! The basic residual block of ResNet-18 (two 3×3 convolutions) and its projection shortcut.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d, Relu};
use burn::prelude::*;

/// A bias-free convolution: every convolution in ResNet is followed by BatchNorm, whose shift
/// makes a bias redundant (and the paper's 11.17 M parameter count assumes none).
pub(crate) fn conv(
    channels: [usize; 2],
    kernel: usize,
    stride: usize,
    padding: usize,
    device: &Device,
) -> Conv2d {
    Conv2dConfig::new(channels, [kernel, kernel])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(
            padding, padding, padding, padding,
        ))
        .with_bias(false)
        .init(device)
}

/// The 1×1 convolution + BatchNorm that matches shapes when a block changes width or stride.
#[derive(Module, Debug)]
pub struct Projection {
    /// 1×1 convolution with the block's stride.
    pub conv: Conv2d,
    /// Normalization after the projection.
    pub bn: BatchNorm,
}

/// `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, as in He et al. (2016).
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// First 3×3 convolution (carries the block's stride).
    pub conv1: Conv2d,
    /// Normalization after `conv1`.
    pub bn1: BatchNorm,
    /// Second 3×3 convolution.
    pub conv2: Conv2d,
    /// Normalization after `conv2`.
    pub bn2: BatchNorm,
    /// Projection shortcut; `None` means the identity.
    pub shortcut: Option<Projection>,
    /// The activation.
    pub relu: Relu,
}

impl BasicBlock {
    /// A block mapping `channels[0]` to `channels[1]` channels, downsampling by `stride`.
    pub fn new(channels: [usize; 2], stride: usize, device: &Device) -> Self {
        let [c_in, c_out] = channels;
        let shortcut = (stride != 1 || c_in != c_out).then(|| Projection {
            conv: conv([c_in, c_out], 1, stride, 0, device),
            bn: BatchNormConfig::new(c_out).init(device),
        });
        Self {
            conv1: conv([c_in, c_out], 3, stride, 1, device),
            bn1: BatchNormConfig::new(c_out).init(device),
            conv2: conv([c_out, c_out], 3, 1, 1, device),
            bn2: BatchNormConfig::new(c_out).init(device),
            shortcut,
            relu: Relu::new(),
        }
    }

    /// Applies the block to `[batch, c_in, h, w]`, giving `[batch, c_out, h/stride, w/stride]`.
    pub fn forward(&self, input: Tensor<4>) -> Tensor<4> {
        let skip = match &self.shortcut {
            Some(p) => p.bn.forward(p.conv.forward(input.clone())),
            None => input.clone(),
        };
        let x = self
            .relu
            .forward(self.bn1.forward(self.conv1.forward(input)));
        let x = self.bn2.forward(self.conv2.forward(x));
        self.relu.forward(x + skip)
    }
}
