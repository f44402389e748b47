//! The snapshot stores on their own: what they hold, and the typed errors they return instead of
//! restoring part of a state.

mod common;

use burn::module::Module;
use common::{Net, StateBytes, adamw, assert_same_state, batch, grads};
use stab_burn::{DeviceStore, HostStore, StateStore, StoreError};

fn trained(steps: u64) -> (Net, burn::optim::ModuleOptimizer) {
    let device = common::training_device();
    let mut model = Net::new(&device);
    let mut optim = adamw();
    for t in 0..steps {
        let (g, _) = grads(&model, &batch(t, 16, &device));
        model = optim.step(0.01, model.clone(), g);
    }
    (model, optim)
}

/// Parameters of the test model: conv 4·1·3·3 + 4, BatchNorm γ, β 4 + 4, linear 144·3 + 3.
const PARAM_BYTES: u64 = 4 * (36 + 4 + 4 + 4 + 432 + 3);
/// BatchNorm running mean and variance: 2 · 4 floats.
const RUNNING_BYTES: u64 = 4 * 8;

#[test]
fn device_store_holds_copies_of_running_stats_and_shares_the_rest() {
    let (model, optim) = trained(2);
    let mut store = DeviceStore::<Net>::new();
    store.save(&model, &optim).unwrap();
    let memory = store.memory();
    assert_eq!(memory.device_private, RUNNING_BYTES);
    // AdamW keeps two moments per parameter.
    assert_eq!(memory.device_shared, PARAM_BYTES + 2 * PARAM_BYTES);
    assert_eq!(memory.host, 0);
}

#[test]
fn host_store_holds_no_device_memory_once_the_copy_has_landed() {
    let (model, optim) = trained(2);
    let mut store = HostStore::<Net>::new().unwrap();
    store.save(&model, &optim).unwrap();
    store.flush().unwrap();
    let memory = store.memory();
    assert!(!memory.copy_pending);
    assert_eq!(memory.device_private + memory.device_shared, 0);
    // Module tensors plus the optimizer's burnpack record (moments plus its small metadata).
    assert!(
        memory.host >= PARAM_BYTES + RUNNING_BYTES + 2 * PARAM_BYTES,
        "{memory:?}"
    );
    assert!(memory.host < 2 * (PARAM_BYTES + RUNNING_BYTES + 2 * PARAM_BYTES));
}

#[test]
fn host_store_keeps_only_the_newest_of_several_quick_saves() {
    let device = common::training_device();
    let (mut model, mut optim) = trained(1);
    let mut store = HostStore::<Net>::new().unwrap();
    for t in 0..5 {
        store.save(&model, &optim).unwrap();
        let (g, _) = grads(&model, &batch(100 + t, 16, &device));
        model = optim.step(0.01, model.clone(), g);
    }
    store.save(&model, &optim).unwrap();
    let expected = StateBytes::of(&model, &optim);
    let (g, _) = grads(&model, &batch(200, 16, &device));
    let rejected = optim.step(0.01, model.clone(), g);
    let (restored, restored_optim) = store.restore(rejected, optim).unwrap();
    assert_same_state(&expected, &StateBytes::of(&restored, &restored_optim));
}

#[test]
fn restoring_before_any_save_is_a_typed_error() {
    let (model, optim) = trained(0);
    let Err(err) = DeviceStore::<Net>::new().restore(model.clone(), optim.clone()) else {
        panic!("restored from an empty store");
    };
    assert_eq!(err, StoreError::Empty { store: "device" });
    let Err(err) = HostStore::<Net>::new().unwrap().restore(model, optim) else {
        panic!("restored from an empty store");
    };
    assert_eq!(err, StoreError::Empty { store: "host" });
}

#[test]
fn host_store_refuses_a_module_whose_tensors_it_did_not_save() {
    let (model, optim) = trained(1);
    let mut store = HostStore::<Net>::new().unwrap();
    store.save(&model, &optim).unwrap();
    // A freshly initialized model has new parameter ids: nothing of the snapshot fits it.
    let stranger = Net::new(&model.devices()[0]);
    let before = StateBytes::of(&stranger, &optim);
    let Err(err) = store.restore(stranger.clone(), optim.clone()) else {
        panic!("restored a snapshot into a module it does not fit");
    };
    assert!(matches!(err, StoreError::MissingTensor { .. }), "{err}");
    // Nothing was written into it.
    assert_eq!(StateBytes::of(&stranger, &optim), before);
}
