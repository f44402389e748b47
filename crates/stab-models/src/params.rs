//! Counting trainable parameters.

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;

/// Number of trainable scalars in `module`: the parameters an optimizer updates.
///
/// burn's [`Module::num_params`] also counts buffers such as BatchNorm's running mean and
/// variance (PyTorch calls those buffers, not parameters), so for ResNet-18 it reports 9,600 more
/// than the 11,173,962 of the literature. This count visits a training-mode copy of the module
/// (`module.clone().train()`: cheap, tensors are shared) and keeps only the tensors that require
/// gradients, which excludes running statistics by construction. It works on a module on either
/// a plain or an autodiff device.
pub fn trainable_param_count<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let tensor = param.val();
            if tensor.is_require_grad() {
                self.0 += tensor.shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    module.clone().train().visit(&mut count);
    count.0
}
