//! ResNet-18: parameter count, shapes, both execution modes, and a short training run.

mod common;

use burn::prelude::*;
use common::{cpu, scalar, train_step};
use stab_models::data::{ImageShape, synthetic_cifar10_images};
use stab_models::{
    ImageBatch, ModelConfigError, ResNet18Config, paper_adamw, trainable_param_count,
};

fn synthetic_batch(count: usize, seed: u64, device: &Device) -> ImageBatch {
    let set = synthetic_cifar10_images(count, seed);
    let pixels = set
        .pixels()
        .iter()
        .map(|&p| f32::from(p) / 255.0 - 0.5)
        .collect();
    ImageBatch::from_host(pixels, [count, 3, 32, 32], set.labels(), device).unwrap()
}

#[test]
fn full_width_resnet18_has_the_papers_11_173_962_parameters() {
    let model = ResNet18Config::new(10).init(&cpu()).unwrap();
    assert_eq!(trainable_param_count(&model), 11_173_962);
    // burn's own count adds the 2 × 4,800 BatchNorm running statistics.
    assert_eq!(model.num_params(), 11_173_962 + 9_600);
}

#[test]
fn forward_maps_a_batch_of_cifar_images_to_class_logits() {
    let device = cpu();
    let model = ResNet18Config::new(10)
        .with_base_width(8)
        .init(&device)
        .unwrap();
    let logits = model.forward(Tensor::zeros([2, 3, 32, 32], &device));
    assert_eq!(logits.dims(), [2, 10]);
}

#[test]
fn forward_accepts_one_channel_fashion_mnist_images() {
    let device = cpu();
    let shape = ImageShape::FASHION_MNIST;
    let model = ResNet18Config::new(10)
        .with_in_channels(shape.channels)
        .with_base_width(4)
        .init(&device)
        .unwrap();
    let logits = model.forward(Tensor::zeros([3, 1, 28, 28], &device));
    assert_eq!(logits.dims(), [3, 10]);
}

#[test]
fn config_with_zero_width_is_rejected_not_panicking() {
    let err = ResNet18Config::new(10)
        .with_base_width(0)
        .init(&cpu())
        .unwrap_err();
    assert_eq!(err, ModelConfigError::ZeroSize { what: "base_width" });
}

#[test]
fn loss_is_finite_on_the_training_module_and_on_its_valid_copy() {
    let device = cpu();
    let model = ResNet18Config::new(10)
        .with_base_width(4)
        .init(&device.clone().autodiff())
        .unwrap();
    let batch = synthetic_batch(4, 1, &device);
    let train_loss = model.loss(&batch);
    assert!(train_loss.clone().device().is_autodiff());
    assert!(scalar(train_loss).is_finite());
    let probe = model.valid();
    let probe_loss = probe.loss(&batch);
    assert!(!probe_loss.clone().device().is_autodiff());
    assert!(scalar(probe_loss).is_finite());
}

#[test]
fn probe_forward_on_valid_module_leaves_batchnorm_running_stats_untouched() {
    let device = cpu();
    let model = ResNet18Config::new(10)
        .with_base_width(4)
        .init(&device.clone().autodiff())
        .unwrap();
    let before = model.stem_bn.running_mean.value().into_data();
    let _ = model.valid().loss(&synthetic_batch(4, 2, &device));
    let after = model.stem_bn.running_mean.value_sync().into_data();
    assert_eq!(before, after);
    // The training forward, by contrast, does move them (so the check above is not vacuous).
    let _ = model.loss(&synthetic_batch(4, 2, &device));
    let trained = model.stem_bn.running_mean.value_sync().into_data();
    assert_ne!(before, trained);
}

#[test]
fn a_few_adamw_steps_reduce_the_loss_on_a_tiny_problem() {
    let device = cpu();
    device.seed(7);
    let mut model = ResNet18Config::new(10)
        .with_base_width(8)
        .init(&device.clone().autodiff())
        .unwrap();
    let batch = synthetic_batch(16, 3, &device);
    let mut optim = paper_adamw().init();
    let initial = scalar(model.valid().loss(&batch));
    for _ in 0..8 {
        model = train_step(model, &mut optim, &batch, 3e-3).0;
    }
    let last = scalar(model.loss(&batch));
    println!("loss {initial} -> {last}");
    assert!(last < initial * 0.7, "loss went from {initial} to {last}");
}
