//! The paper's optimizer settings.

use burn::optim::AdamWConfig;

/// Learning rate the paper uses for the character Transformer.
pub const PAPER_TRANSFORMER_LR: f64 = 5e-4;

/// Learning rate of the paper's reference implementation for ResNet-18 (the paper states none).
pub const REFERENCE_RESNET_LR: f64 = 1e-3;

/// AdamW with PyTorch's defaults, which the paper's reference code uses: β = (0.9, 0.999),
/// ε = 1e-8, weight decay 0.01 (decoupled: `θ ← θ(1 − lr·wd) − lr·m̂/(√v̂ + ε)`).
///
/// burn's own `AdamWConfig::new()` defaults differ (ε = 1e-5, weight decay 1e-4), hence this
/// helper. burn takes the learning rate at each step (`optim.step(lr, module, grads)`), not in the
/// config; use [`PAPER_TRANSFORMER_LR`] / [`REFERENCE_RESNET_LR`] there.
pub fn paper_adamw() -> AdamWConfig {
    AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.999)
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
}
