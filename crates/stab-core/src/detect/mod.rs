//! Detectors that set or add reasons to reject beside `ν ≤ ε`: the scale-free threshold ε_t, a
//! CUSUM drift detector over accepted innovations, and gates on the gradient's and the update's
//! norms. All keep statistics of accepted steps only (a rejected value never shifts what counts as nominal), in bounded windows.

mod acceptance;
mod drift;
mod gate;
mod window;

pub use acceptance::ScaleFreeThreshold;
pub use drift::{DriftAlarm, DriftDetector};
pub use gate::{GateTest, GateVerdict, NormGate};
pub use window::Window;
