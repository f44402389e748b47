//! The training device: which backend runs, chosen at run time by `BURN_DEVICE`.
//!
//! burn 0.22 has no backend type parameter: `Device::default()` picks the first backend compiled
//! in (CUDA, Metal, ROCm, Vulkan, WebGPU, wgpu, CPU, LibTorch, Flex, …) unless the `BURN_DEVICE`
//! environment variable names one (`flex`, `wgpu`, `vulkan`, `cuda`, `tch`, …), and panics when
//! that name is unknown or its cargo feature is off. [`training_device`] checks the name first
//! and turns both cases into a [`DeviceError`].

use burn::tensor::Device;

use crate::error::DeviceError;

/// The names `BURN_DEVICE` accepts in burn 0.22.1 (burn-dispatch `device.rs`).
pub const KNOWN_BACKENDS: &[&str] = &[
    "cuda", "rocm", "metal", "vulkan", "webgpu", "wgpu", "cpu", "tch", "remote", "flex", "ndarray",
];

/// The device a run trains on, and how it was chosen.
#[derive(Debug, Clone)]
pub struct SelectedDevice {
    /// The plain device (wrap it with `.autodiff()` for training).
    pub device: Device,
    /// The device as burn describes it, e.g. `Flex(Cpu)`.
    pub name: String,
    /// The value of `BURN_DEVICE`, if it was set.
    pub requested: Option<String>,
}

/// The device selected by `BURN_DEVICE`, or burn's default backend when it is unset.
///
/// stab-burn always compiles Flex (CPU); its cargo features `wgpu`, `tch` and `cuda` add those
/// backends. With several compiled in and no `BURN_DEVICE`, burn prefers the accelerator.
///
/// # Errors
/// [`DeviceError::UnknownBackend`] if `BURN_DEVICE` names no backend,
/// [`DeviceError::Unavailable`] if the backend is not compiled into this build.
pub fn training_device() -> Result<SelectedDevice, DeviceError> {
    let requested = std::env::var("BURN_DEVICE").ok();
    if let Some(name) = &requested
        && !KNOWN_BACKENDS.contains(&name.to_lowercase().as_str())
    {
        return Err(DeviceError::UnknownBackend {
            requested: name.clone(),
            known: KNOWN_BACKENDS.join(", "),
        });
    }
    // burn reports a backend whose feature is off by panicking; keep that message as an error
    // (the panic hook still prints it once).
    let selected = std::panic::catch_unwind(Device::default);
    let device = selected.map_err(|payload| DeviceError::Unavailable {
        requested: requested.clone().unwrap_or_default(),
        message: panic_message(payload.as_ref()),
    })?;
    Ok(SelectedDevice {
        name: device_name(&device),
        device,
        requested,
    })
}

/// How burn names a device, without its autodiff wrapper: `Flex(Cpu)`, `Cube(Wgpu(…))`, ….
pub fn device_name(device: &Device) -> String {
    let text = format!("{device:?}");
    // `Device<Autodiff { device: Flex(Cpu), checkpointing: Disabled }>` → `Flex(Cpu)`.
    let inner = text
        .strip_prefix("Device<")
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(&text);
    match inner
        .strip_prefix("Autodiff { device: ")
        .and_then(|t| t.split(", checkpointing").next())
    {
        Some(wrapped) => wrapped.to_owned(),
        None => inner.to_owned(),
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "the backend could not be selected".to_owned())
}
