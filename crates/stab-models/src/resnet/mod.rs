//! ResNet-18 for CIFAR-10 and Fashion-MNIST.

mod block;
mod model;

pub use block::{BasicBlock, Projection};
pub use model::{ResNet18, ResNet18Config};
