//! Bit-exact fingerprints of a training state, for the restore check of Proposition 7.4.
//!
//! A fingerprint hashes every bit of every tensor a restore must bring back: the module's
//! parameters and running statistics (after merging pending updates), and the optimizer's state
//! tensors and scalars (AdamW moments and step counts). Reading them costs a device-to-host copy
//! of the whole state, so the [`crate::Guard`] fingerprints only when asked to
//! ([`crate::GuardConfig::verify_restores`]).

use burn::module::{Module, ParamId};
use burn::optim::ModuleOptimizer;
use burn::tensor::kind::BridgeTensor;
use burn::tensor::{Bool, Int, Tensor, TensorData};
use stab_core::Fingerprint;

use crate::error::StoreError;
use crate::tensors::{self, Kind, Meta, Selection};

/// Fingerprint of a module: ids, kinds, shapes, dtypes and bytes of all its tensors (parameters
/// and running statistics, pending updates merged first), in visit order.
///
/// # Errors
/// [`StoreError::TensorRead`] if a tensor cannot be read from the device.
pub fn module_fingerprint<M: Module>(model: &M) -> Result<u64, StoreError> {
    tensors::sync_running_states(model);
    let captured = tensors::capture_handles(model, Selection::All);
    let mut fp = Fingerprint::new();
    for id in &captured.order {
        let Some((meta, tensor)) = captured.entries.get(id) else {
            continue;
        };
        let data = read_tensor("fingerprint", id, meta, tensor.clone())?;
        fp = fp
            .u64(id.val())
            .bytes(format!("{:?}{:?}{:?}", meta.kind, meta.dtype, meta.shape).as_bytes())
            .bytes(data.as_bytes());
    }
    Ok(fp.finish())
}

/// Fingerprint of an optimizer's state, independent of the order in which burn stores it
/// (a hash map): every state tensor by name with its shape, dtype and bytes, every scalar (step
/// counts, ranks) and every path, each sorted by name.
///
/// # Errors
/// [`StoreError::OptimizerRecord`] if the state cannot be serialized.
pub fn optimizer_fingerprint(optim: &ModuleOptimizer) -> Result<u64, StoreError> {
    let bytes = optim
        .into_bytes()
        .map_err(|e| StoreError::OptimizerRecord {
            store: "fingerprint",
            operation: "serialize",
            message: e.to_string(),
        })?;
    let reader = burn_pack::Reader::from_bytes(bytes).map_err(|e| StoreError::OptimizerRecord {
        store: "fingerprint",
        operation: "deserialize",
        message: e.to_string(),
    })?;
    let mut fp = Fingerprint::new();
    for (name, scalar) in reader.scalars() {
        fp = fp
            .bytes(name.as_bytes())
            .bytes(format!("{scalar:?}").as_bytes());
    }
    for (name, path) in reader.metadata() {
        fp = fp.bytes(name.as_bytes()).bytes(path.as_bytes());
    }
    let tensors = reader
        .into_tensors()
        .map_err(|e| StoreError::OptimizerRecord {
            store: "fingerprint",
            operation: "deserialize",
            message: e.to_string(),
        })?;
    for tensor in tensors {
        let header = format!(
            "{}{:?}{:?}{:?}",
            tensor.name, tensor.dtype, tensor.shape, tensor.param_id
        );
        let data = tensor
            .into_bytes()
            .map_err(|e| StoreError::OptimizerRecord {
                store: "fingerprint",
                operation: "deserialize",
                message: e.to_string(),
            })?;
        fp = fp.bytes(header.as_bytes()).bytes(&data);
    }
    Ok(fp.finish())
}

/// Fingerprint of a whole training state: the module and the optimizer.
///
/// # Errors
/// As [`module_fingerprint`] and [`optimizer_fingerprint`].
pub fn state_fingerprint<M: Module>(model: &M, optim: &ModuleOptimizer) -> Result<u64, StoreError> {
    let module = module_fingerprint(model)?;
    let optimizer = optimizer_fingerprint(optim)?;
    Ok(Fingerprint::new().u64(module).u64(optimizer).finish())
}

/// Reads a captured device tensor back to the host.
pub(crate) fn read_tensor(
    store: &'static str,
    id: &ParamId,
    meta: &Meta,
    tensor: BridgeTensor,
) -> Result<TensorData, StoreError> {
    let error = |message: String| StoreError::TensorRead {
        store,
        id: id.to_string(),
        path: meta.path.clone(),
        message,
    };
    // The high-level tensor type carries its rank as a type parameter; dispatch on the stored
    // rank so that every read goes through a tensor of the right rank.
    macro_rules! read {
        ($($rank:literal),*) => {
            match (meta.kind, meta.shape.len()) {
                $(
                    (Kind::Float, $rank) => Tensor::<$rank>::from_bridge(tensor).try_into_data(),
                    (Kind::Int, $rank) => Tensor::<$rank, Int>::from_bridge(tensor).try_into_data(),
                    (Kind::Bool, $rank) => Tensor::<$rank, Bool>::from_bridge(tensor).try_into_data(),
                )*
                (_, rank) => return Err(error(format!("rank {rank} is not supported (1 to 8)"))),
            }
        };
    }
    read!(1, 2, 3, 4, 5, 6, 7, 8).map_err(|e| error(e.to_string()))
}
