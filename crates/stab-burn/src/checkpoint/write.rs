//! Writing a checkpoint: the guard's states as burn records, the protocol's state, the layout.

use std::path::{Path, PathBuf};

use burn::module::{Module, ParamId};
use burn::tensor::Bytes;
use serde::Serialize;
use stab_core::{ProtocolState, SlotId};

use super::files::{self, WriteHook};
use super::{CheckpointError, EXTRA, LAYOUT, Layout, PROTOCOL, model_file, optim_file};
use crate::guard::Guard;
use crate::store::SlotExport;

/// What a written checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// Its directory.
    pub path: PathBuf,
    /// The index of the next step of the saved run.
    pub step: u64,
    /// Distinct (model, optimizer) states written: the live one and the ring's.
    pub states: usize,
    /// Bytes of all its files.
    pub bytes: u64,
}

fn serialize<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, CheckpointError> {
    serde_json::to_vec(value).map_err(|e| CheckpointError::Serialize {
        what,
        message: e.to_string(),
    })
}

fn record_bytes(bytes: Bytes) -> Vec<u8> {
    bytes.to_vec()
}

/// The burnpack record of a module: the live module's record (same paths and ids), with every
/// tensor's data taken from a ring slot's export if one is given. Every module file is written by
/// this one writer, so equal states have equal bytes.
fn model_record(
    live_record: &Bytes,
    export: Option<&SlotExport>,
) -> Result<Vec<u8>, CheckpointError> {
    let error = |message: String| CheckpointError::Serialize {
        what: "snapshot's module record",
        message,
    };
    let tensors = burn_pack::Reader::from_bytes(live_record.clone())
        .and_then(burn_pack::Reader::into_tensors)
        .map_err(|e| error(e.to_string()))?;
    let mut out = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let (name, dtype, shape, param_id, live_bytes) =
            tensor.into_parts().map_err(|e| error(e.to_string()))?;
        let Some(export) = export else {
            out.push(burn_pack::Tensor::new(
                name, dtype, shape, param_id, live_bytes,
            ));
            continue;
        };
        let id = param_id.ok_or_else(|| error(format!("`{name}` has no parameter id")))?;
        let (_, data) = export
            .tensors
            .entries
            .get(&ParamId::from(id))
            .ok_or_else(|| error(format!("the snapshot holds no value for `{name}`")))?;
        if data.dtype() != dtype || *data.shape() != shape {
            return Err(error(format!(
                "`{name}`: the snapshot holds {:?} {:?}, the record {dtype:?} {shape:?}",
                data.dtype(),
                data.shape()
            )));
        }
        let (bytes, _, _) = data.clone().into_parts();
        out.push(burn_pack::Tensor::new(name, dtype, shape, Some(id), bytes));
    }
    if let Some(export) = export
        && out.len() != export.tensors.len()
    {
        return Err(error(format!(
            "the snapshot holds {} tensors, the live module {}",
            export.tensors.len(),
            out.len()
        )));
    }
    burn_pack::Writer::new(out)
        .into_bytes()
        .map(record_bytes)
        .map_err(|e| error(e.to_string()))
}

/// The contents of an optimizer record, independent of the order burn wrote them in (its state
/// lives in a hash map, so two records of one state may list their tensors differently).
fn optimizer_contents(bytes: &[u8]) -> Option<impl PartialEq + use<>> {
    let reader = burn_pack::Reader::from_bytes(Bytes::from_bytes_vec(bytes.to_vec())).ok()?;
    let metadata = reader.metadata().clone();
    let scalars: Vec<(String, String)> = reader
        .scalars()
        .iter()
        .map(|(k, v)| (k.clone(), format!("{v:?}")))
        .collect();
    let mut tensors = Vec::new();
    for tensor in reader.into_tensors().ok()? {
        let (name, dtype, shape, id, data) = tensor.into_parts().ok()?;
        tensors.push((name, format!("{dtype:?} {shape:?} {id:?}"), data.to_vec()));
    }
    tensors.sort();
    Some((metadata, scalars, tensors))
}

/// Whether two saved (model, optimizer) states are the same state.
fn same_state(a: &(Vec<u8>, Vec<u8>), b: &(Vec<u8>, Vec<u8>)) -> bool {
    a.0 == b.0
        && (a.1 == b.1 || {
            let (x, y) = (optimizer_contents(&a.1), optimizer_contents(&b.1));
            x.is_some() && x == y
        })
}

impl<M: Module + 'static> Guard<M> {
    /// Writes a checkpoint of the run into `dir` (see [`crate::checkpoint`]): `model`
    /// (the model the last step returned), the optimizer, every ring slot's state, the step
    /// protocol's state and `extra`, the training loop's own state. Call it between steps.
    ///
    /// It removes no checkpoint: a second write of the same step goes beside the first (the
    /// next generation), and keeping only the newest few is [`crate::Checkpointer`]'s job.
    ///
    /// # Errors
    /// [`CheckpointError::Protocol`] in the middle of a step or after the run stopped; a store
    /// that cannot export ([`crate::StoreError::ExportUnsupported`]); a serialization or file-system
    /// error (then the previous checkpoints are untouched).
    pub fn checkpoint_to<E: Serialize>(
        &self,
        model: &M,
        dir: &Path,
        extra: &E,
    ) -> Result<CheckpointInfo, CheckpointError> {
        self.write_checkpoint(model, dir, extra, &mut |_| Ok(()))
    }

    /// [`Guard::checkpoint_to`] with a hook before each stage of the write.
    pub(crate) fn write_checkpoint<E: Serialize>(
        &self,
        model: &M,
        dir: &Path,
        extra: &E,
        hook: &mut WriteHook,
    ) -> Result<CheckpointInfo, CheckpointError> {
        let protocol =
            self.protocol()
                .save_state()
                .map_err(|source| CheckpointError::Protocol {
                    path: dir.join(PROTOCOL),
                    source,
                })?;
        let protocol_json = serialize("protocol state", &protocol)?;
        // Every value must parse back exactly (a non-finite number would not).
        match serde_json::from_slice::<ProtocolState>(&protocol_json) {
            Ok(parsed) if parsed == protocol => {}
            _ => {
                return Err(CheckpointError::Serialize {
                    what: "protocol state",
                    message: "it does not parse back to the same values".to_owned(),
                });
            }
        }

        crate::running_state::sync_running_states(model);
        let live_record =
            model
                .clone()
                .into_record()
                .into_bytes()
                .map_err(|e| CheckpointError::Serialize {
                    what: "module record",
                    message: e.to_string(),
                })?;
        let live_optim = self
            .optimizer()
            .into_bytes()
            .map_err(|e| CheckpointError::Serialize {
                what: "optimizer record",
                message: e.to_string(),
            })?;
        let mut states: Vec<(Vec<u8>, Vec<u8>)> =
            vec![(model_record(&live_record, None)?, record_bytes(live_optim))];
        let mut slots = Vec::new();
        for (index, position) in protocol.slot_positions().into_iter().enumerate() {
            if position.is_none() {
                slots.push(None);
                continue;
            }
            let slot = SlotId(u8::try_from(index).unwrap_or(u8::MAX));
            let export = self
                .store()
                .export(slot)
                .map_err(|source| CheckpointError::Store {
                    operation: "exporting a snapshot",
                    source,
                })?;
            let state = (
                model_record(&live_record, Some(&export))?,
                export.optim.to_vec(),
            );
            let index = match states.iter().position(|s| same_state(s, &state)) {
                Some(existing) => existing,
                None => {
                    states.push(state);
                    states.len() - 1
                }
            };
            slots.push(Some(index));
        }
        let layout = Layout {
            states: states.len(),
            live: 0,
            slots,
        };
        let mut files = vec![
            (PROTOCOL.to_owned(), protocol_json),
            (LAYOUT.to_owned(), serialize("layout", &layout)?),
            (EXTRA.to_owned(), serialize("extra value", extra)?),
        ];
        for (index, (model_bytes, optim_bytes)) in states.into_iter().enumerate() {
            files.push((model_file(index), model_bytes));
            files.push((optim_file(index), optim_bytes));
        }
        let bytes = files.iter().map(|(_, b)| b.len() as u64).sum();
        let step = protocol.next_step();
        let path = files::write(dir, step, &files, hook)?;
        Ok(CheckpointInfo {
            path,
            step,
            states: layout.states,
            bytes,
        })
    }
}
