//! Character Transformer: shapes, causality, config checks and a short training run.

mod common;

use burn::prelude::*;
use common::{cpu, scalar, train_step};
use stab_models::data::{BatchPlan, CharCorpus, CharDataset};
use stab_models::{CharTransformerConfig, ModelConfigError, PAPER_TRANSFORMER_LR, paper_adamw};

fn tiny(vocab: usize) -> CharTransformerConfig {
    CharTransformerConfig::new(vocab)
        .with_seq_len(16)
        .with_d_model(32)
        .with_n_heads(2)
        .with_d_ff(64)
}

#[test]
fn default_sizes_are_the_documented_ones() {
    let c = CharTransformerConfig::new(30);
    assert_eq!(
        (
            c.seq_len, c.d_model, c.n_heads, c.n_layers, c.d_ff, c.dropout
        ),
        (64, 64, 4, 2, 256, 0.0)
    );
}

#[test]
fn forward_gives_logits_over_the_vocabulary_at_every_position() {
    let device = cpu();
    let model = tiny(11).init(&device).unwrap();
    let logits = model.forward(Tensor::zeros([3, 16], &device));
    assert_eq!(logits.dims(), [3, 16, 11]);
}

#[test]
fn logits_at_a_position_do_not_depend_on_later_tokens() {
    let device = cpu();
    let model = tiny(11).init(&device).unwrap();
    let a: Vec<i64> = (0..16).map(|i| i % 11).collect();
    let mut b = a.clone();
    b[10] = (b[10] + 5) % 11; // change a token at position 10
    let run = |ids: Vec<i64>| {
        model
            .forward(Tensor::from_data(TensorData::new(ids, [1, 16]), &device))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    };
    let (la, lb) = (run(a), run(b));
    let per_position = 11;
    assert_eq!(
        la[..10 * per_position],
        lb[..10 * per_position],
        "prefix changed"
    );
    assert_ne!(la[10 * per_position..], lb[10 * per_position..]);
}

#[test]
fn heads_that_do_not_divide_the_width_are_rejected() {
    let err = tiny(5).with_n_heads(3).init(&cpu()).unwrap_err();
    assert_eq!(
        err,
        ModelConfigError::HeadsDoNotDivide {
            d_model: 32,
            n_heads: 3
        }
    );
}

#[test]
fn loss_works_on_the_training_module_and_on_its_valid_copy() {
    let device = cpu();
    let data = CharDataset::new(CharCorpus::synthetic(), 16, 4).unwrap();
    let model = tiny(data.vocab_size())
        .init(&device.clone().autodiff())
        .unwrap();
    let probe = data.probe_batch(&device).unwrap();
    let a = scalar(model.loss(&probe));
    let b = scalar(model.valid().loss(&probe));
    assert!(a.is_finite() && (a - b).abs() < 1e-4, "{a} vs {b}");
}

#[test]
fn a_few_adamw_steps_reduce_the_probe_loss_on_the_synthetic_corpus() {
    let device = cpu();
    device.seed(11);
    let data = CharDataset::new(CharCorpus::synthetic(), 16, 8).unwrap();
    let mut model = tiny(data.vocab_size())
        .init(&device.clone().autodiff())
        .unwrap();
    let plan = BatchPlan::new(5, data.train_len(), 16).unwrap();
    let probe = data.probe_batch(&device).unwrap();
    let mut optim = paper_adamw().init();
    let initial = scalar(model.valid().loss(&probe));
    for step in 0..30 {
        let batch = data.train_batch(&plan.indices(step), &device).unwrap();
        model = train_step(model, &mut optim, &batch, 4.0 * PAPER_TRANSFORMER_LR).0;
    }
    let last = scalar(model.valid().loss(&probe));
    println!("probe loss {initial} -> {last}");
    assert!(
        last < initial * 0.8,
        "probe loss went from {initial} to {last}"
    );
}
