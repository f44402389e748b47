//! The training device honours `BURN_DEVICE`, is named for reports, and a bad `BURN_DEVICE` is a
//! typed error rather than burn's panic.

use stab_burn::{DeviceError, device_name, training_device};

#[test]
fn training_device_follows_burn_device_and_names_the_backend() {
    let selected = training_device().unwrap();
    assert_eq!(
        selected.requested,
        std::env::var("BURN_DEVICE").ok(),
        "BURN_DEVICE is reported as given"
    );
    assert!(!selected.name.is_empty());
    assert!(!selected.name.contains("Autodiff"));
    assert_eq!(
        device_name(&selected.device.clone().autodiff()),
        selected.name
    );
    match selected.requested.as_deref() {
        None | Some("flex") => assert!(selected.name.starts_with("Flex"), "{}", selected.name),
        Some("wgpu") => assert!(selected.name.contains("Wgpu"), "{}", selected.name),
        Some("tch") => assert!(selected.name.contains("LibTorch"), "{}", selected.name),
        Some(_) => {}
    }
}

/// Runs `child` in a fresh process of this test binary with `BURN_DEVICE` set (the environment
/// of a running test process cannot be changed safely).
fn run_child_with_burn_device(child: &str, value: &str) {
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([child, "--exact", "--ignored", "--nocapture"])
        .env("BURN_DEVICE", value)
        .status()
        .unwrap();
    assert!(status.success(), "child {child} with BURN_DEVICE={value}");
}

#[test]
fn an_unknown_or_uncompiled_backend_is_a_typed_error_not_a_panic() {
    run_child_with_burn_device("child_unknown_backend", "abacus");
    if !cfg!(feature = "cuda") {
        run_child_with_burn_device("child_uncompiled_backend", "cuda");
    }
}

#[test]
#[ignore = "run by an_unknown_or_uncompiled_backend_is_a_typed_error_not_a_panic"]
fn child_unknown_backend() {
    let err = training_device().unwrap_err();
    assert!(
        matches!(&err, DeviceError::UnknownBackend { requested, .. } if requested == "abacus"),
        "{err}"
    );
}

#[test]
#[ignore = "run by an_unknown_or_uncompiled_backend_is_a_typed_error_not_a_panic"]
fn child_uncompiled_backend() {
    let err = training_device().unwrap_err();
    assert!(
        matches!(&err, DeviceError::Unavailable { message, .. } if message.contains("cuda")),
        "{err}"
    );
}
