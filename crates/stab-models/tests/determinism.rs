//! Reproducibility: the same seed gives the same initialization and the same training run.
//!
//! Kept in its own test binary: flex's generator is process-global, so a test initializing
//! another model on a parallel thread would interleave its draws with these.

mod common;

use burn::prelude::*;
use common::{cpu, scalar, train_step};
use stab_models::data::{BatchPlan, CharCorpus, CharDataset};
use stab_models::{CharTransformer, CharTransformerConfig, paper_adamw};

fn run(seed: u64) -> (Vec<f32>, f32) {
    let device = cpu();
    let data = CharDataset::new(CharCorpus::synthetic(), 16, 4).unwrap();
    let config = CharTransformerConfig::new(data.vocab_size())
        .with_seq_len(16)
        .with_d_model(16)
        .with_n_heads(2)
        .with_n_layers(1)
        .with_d_ff(32);
    device.seed(seed);
    let mut model: CharTransformer = config.init(&device.clone().autodiff()).unwrap();
    let init = model
        .head
        .weight
        .val()
        .into_data()
        .iter::<f32>()
        .collect::<Vec<_>>();
    let plan = BatchPlan::new(seed, data.train_len(), 8).unwrap();
    let mut optim = paper_adamw().init();
    for step in 0..3 {
        let batch = data.train_batch(&plan.indices(step), &device).unwrap();
        model = train_step(model, &mut optim, &batch, 1e-3).0;
    }
    let probe = scalar(model.valid().loss(&data.probe_batch(&device).unwrap()));
    (init, probe)
}

#[test]
fn the_same_seed_gives_the_same_initialization_and_the_same_run() {
    let (init_a, probe_a) = run(5);
    let (init_b, probe_b) = run(5);
    let (init_c, _) = run(6);
    assert_eq!(init_a, init_b);
    assert_eq!(probe_a.to_bits(), probe_b.to_bits());
    assert_ne!(init_a, init_c);
}
