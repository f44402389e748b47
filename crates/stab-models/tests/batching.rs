//! Deterministic minibatch order.

use std::collections::HashSet;

use stab_models::DataError;
use stab_models::data::BatchPlan;

#[test]
fn the_same_seed_and_step_give_the_same_batch() {
    let a = BatchPlan::new(42, 1000, 32).unwrap();
    let b = BatchPlan::new(42, 1000, 32).unwrap();
    for step in [0, 1, 31, 32, 249, 10_000] {
        assert_eq!(a.indices(step), b.indices(step));
    }
}

#[test]
fn different_seeds_give_different_orders() {
    let a = BatchPlan::new(1, 1000, 32).unwrap();
    let b = BatchPlan::new(2, 1000, 32).unwrap();
    assert_ne!(a.indices(0), b.indices(0));
}

#[test]
fn one_epoch_of_batches_visits_every_example_exactly_once() {
    let plan = BatchPlan::new(7, 96, 32).unwrap();
    let mut seen: Vec<usize> = (0..3).flat_map(|s| plan.indices(s)).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..96).collect::<Vec<_>>());
    assert_ne!(plan.indices(0), plan.indices(3), "epochs are reshuffled");
}

#[test]
fn a_batch_straddling_two_epochs_takes_the_tail_and_the_next_head() {
    let plan = BatchPlan::new(3, 10, 4).unwrap();
    let batch = plan.indices(2); // positions 8..12
    assert_eq!(batch.len(), 4);
    assert_eq!(batch[..2], plan.epoch_permutation(0)[8..]);
    assert_eq!(batch[2..], plan.epoch_permutation(1)[..2]);
    assert_eq!(plan.epoch_of(2), 0);
    assert_eq!(plan.epoch_of(3), 1);
}

#[test]
fn every_index_is_in_range_and_unique_within_an_epoch_batch() {
    let plan = BatchPlan::new(9, 60_000, 128).unwrap();
    for step in 0..20 {
        let batch = plan.indices(step);
        assert!(batch.iter().all(|&i| i < 60_000));
        assert_eq!(batch.iter().collect::<HashSet<_>>().len(), 128);
    }
}

#[test]
fn impossible_plans_are_errors() {
    assert!(matches!(
        BatchPlan::new(0, 0, 1),
        Err(DataError::ZeroSize { .. })
    ));
    assert!(matches!(
        BatchPlan::new(0, 5, 0),
        Err(DataError::ZeroSize { .. })
    ));
    assert!(matches!(
        BatchPlan::new(0, 5, 6),
        Err(DataError::BatchTooLarge {
            batch_size: 6,
            len: 5
        })
    ));
}
