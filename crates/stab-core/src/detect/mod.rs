//! Detectors that add reasons to reject beside `ν ≤ ε`: a CUSUM drift detector over accepted
//! innovations, and a pre-step gate on the gradient norm. Both keep statistics of accepted steps
//! only (a rejected value never shifts what counts as nominal), in bounded windows.

mod drift;
mod gate;
mod window;

pub use drift::{DriftAlarm, DriftDetector};
pub use gate::{GateVerdict, GradientGate};
pub use window::Window;
