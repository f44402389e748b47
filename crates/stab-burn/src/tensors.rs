//! Keyed captures of a module's tensors and the two-phase (validate, then write) restore.
//!
//! Both snapshot stores are built on this: a capture walks the module with a [`ModuleVisitor`]
//! and keeps every selected tensor under its [`ParamId`]; a restore first checks the target
//! module against the capture (every selected tensor present, same kind and shape, nothing left
//! over) and only then writes with a [`ModuleMapper`]. A restore that cannot be complete is
//! refused before it touches anything.

use std::collections::{HashMap, HashSet};

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::kind::BridgeTensor;
use burn::tensor::{Bool, DType, Int, Tensor, TensorData};

use crate::error::StoreError;

/// Which tensors a capture holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Selection {
    /// Float tensors that do not require gradients: BatchNorm running statistics (and any other
    /// `RunningState`) plus frozen parameters. These are what a module clone does *not* snapshot,
    /// because running states live behind a shared `Arc<Mutex<…>>`.
    Buffers,
    /// Every tensor: float, int and bool parameters and all buffers.
    All,
}

/// The kind of a captured tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Float,
    Int,
    Bool,
}

/// Where a tensor sits and what it looks like; enough to validate a restore target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub path: String,
    pub kind: Kind,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub trainable: bool,
}

impl Meta {
    pub fn bytes(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.size()) as u64
    }

    fn describe(&self) -> String {
        format!("{:?} {:?} {:?}", self.kind, self.dtype, self.shape)
    }
}

/// One captured tensor: a device handle (cheap, copy-on-write) or host data.
pub(crate) trait Source: Send + Sync {
    /// Builds the float tensor to write in place of `current`.
    fn float<const D: usize>(&self, current: &Tensor<D>) -> Tensor<D>;
    /// Builds the int tensor to write in place of `current`.
    fn int<const D: usize>(&self, current: &Tensor<D, Int>) -> Tensor<D, Int>;
    /// Builds the bool tensor to write in place of `current`.
    fn bool<const D: usize>(&self, current: &Tensor<D, Bool>) -> Tensor<D, Bool>;
}

/// A device handle: restoring it re-installs the exact tensor that was captured.
impl Source for BridgeTensor {
    fn float<const D: usize>(&self, _current: &Tensor<D>) -> Tensor<D> {
        Tensor::from_bridge(self.clone())
    }
    fn int<const D: usize>(&self, _current: &Tensor<D, Int>) -> Tensor<D, Int> {
        Tensor::from_bridge(self.clone())
    }
    fn bool<const D: usize>(&self, _current: &Tensor<D, Bool>) -> Tensor<D, Bool> {
        Tensor::from_bridge(self.clone())
    }
}

/// Host data: uploaded to the device of the tensor it replaces, with that tensor's autodiff
/// context (gradient requirement and checkpointing strategy), as burn's optimizer does.
impl Source for TensorData {
    fn float<const D: usize>(&self, current: &Tensor<D>) -> Tensor<D> {
        let mut tensor = Tensor::<D>::from_data(self.clone(), (&current.device(), self.dtype()));
        if let Some(strategy) = current.gradient_checkpointing_strategy() {
            tensor = tensor.with_gradient_checkpointing_strategy(strategy);
        }
        if current.is_require_grad() {
            tensor = tensor.require_grad();
        }
        tensor
    }
    fn int<const D: usize>(&self, current: &Tensor<D, Int>) -> Tensor<D, Int> {
        Tensor::from_data(self.clone(), (&current.device(), self.dtype()))
    }
    fn bool<const D: usize>(&self, current: &Tensor<D, Bool>) -> Tensor<D, Bool> {
        Tensor::from_data(self.clone(), (&current.device(), self.dtype()))
    }
}

/// Tensors of a module keyed by parameter id.
#[derive(Debug, Clone)]
pub(crate) struct Captured<S> {
    pub selection: Selection,
    pub entries: HashMap<ParamId, (Meta, S)>,
    /// Ids in visit order, for deterministic iteration.
    pub order: Vec<ParamId>,
}

impl<S> Captured<S> {
    /// Bytes of the captured tensors (as stored on the device).
    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|(meta, _)| meta.bytes()).sum()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Converts every source, keeping metadata and order; stops at the first error.
    pub fn try_map<T, E>(
        self,
        mut f: impl FnMut(&ParamId, &Meta, S) -> Result<T, E>,
    ) -> Result<Captured<T>, E> {
        let Captured {
            selection,
            mut entries,
            order,
        } = self;
        let mut out = HashMap::with_capacity(entries.len());
        for id in &order {
            if let Some((meta, source)) = entries.remove(id) {
                let converted = f(id, &meta, source)?;
                out.insert(*id, (meta, converted));
            }
        }
        Ok(Captured {
            selection,
            entries: out,
            order,
        })
    }
}

/// Drains the pending per-thread values of every `RunningState` in `model` into its shared value.
///
/// burn keeps a training-mode update of a running statistic as a *pending value of the thread
/// that ran the forward pass*, merged at the next `value_sync()` on that thread; reading the
/// value from another thread (or before that merge) sees the old one. The only public call that
/// merges the pending values of *all* threads is `Module::valid` (it calls the private
/// `RunningState::sync`), so this builds and drops the validation view: no tensor data is copied.
pub(crate) fn sync_running_states<M: Module>(model: &M) {
    drop(model.valid());
}

/// Captures the selected tensors of `model` as device handles. Call after
/// [`sync_running_states`], or running statistics may be one update stale.
pub(crate) fn capture_handles<M: Module>(
    model: &M,
    selection: Selection,
) -> Captured<BridgeTensor> {
    let mut collector = Collector {
        selection,
        path: Vec::new(),
        captured: Captured {
            selection,
            entries: HashMap::new(),
            order: Vec::new(),
        },
    };
    model.visit(&mut collector);
    collector.captured
}

struct Collector {
    selection: Selection,
    path: Vec<String>,
    captured: Captured<BridgeTensor>,
}

impl Collector {
    fn push(&mut self, id: ParamId, meta: Meta, tensor: BridgeTensor) {
        if self.captured.entries.insert(id, (meta, tensor)).is_none() {
            self.captured.order.push(id);
        }
    }

    fn path(&self) -> String {
        self.path.join(".")
    }
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let trainable = tensor.is_require_grad();
        if self.selection == Selection::Buffers && trainable {
            return;
        }
        let meta = Meta {
            path: self.path(),
            kind: Kind::Float,
            shape: tensor.dims().to_vec(),
            dtype: tensor.dtype(),
            trainable,
        };
        self.push(param.id, meta, tensor.into_bridge());
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        if self.selection == Selection::Buffers {
            return;
        }
        let tensor = param.val();
        let meta = Meta {
            path: self.path(),
            kind: Kind::Int,
            shape: tensor.dims().to_vec(),
            dtype: tensor.dtype(),
            trainable: false,
        };
        self.push(param.id, meta, tensor.into_bridge());
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        if self.selection == Selection::Buffers {
            return;
        }
        let tensor = param.val();
        let meta = Meta {
            path: self.path(),
            kind: Kind::Bool,
            shape: tensor.dims().to_vec(),
            dtype: tensor.dtype(),
            trainable: false,
        };
        self.push(param.id, meta, tensor.into_bridge());
    }
}

/// Checks that `model` can take every tensor of `captured` and nothing is left without a value,
/// then writes them. Running states are written through their shared handle, so every clone of
/// the module sees the restored statistics. Call after [`sync_running_states`] so that no pending
/// value is merged over the restored one later.
///
/// # Errors
/// [`StoreError::MissingTensor`], [`StoreError::UnexpectedTensor`] or [`StoreError::Mismatch`];
/// nothing is written when an error is returned.
pub(crate) fn restore_into<M: Module, S: Source>(
    model: M,
    captured: &Captured<S>,
) -> Result<M, StoreError> {
    let mut checker = Checker {
        captured,
        path: Vec::new(),
        seen: HashSet::new(),
        error: None,
    };
    model.visit(&mut checker);
    if let Some(error) = checker.error {
        return Err(error);
    }
    if checker.seen.len() != captured.len() {
        let present = {
            let mut ids = IdLister {
                selection: captured.selection,
                ids: Vec::new(),
            };
            model.visit(&mut ids);
            ids.ids
        };
        let unexpected = captured
            .order
            .iter()
            .find(|id| !present.contains(id))
            .map_or_else(|| "?".to_owned(), ToString::to_string);
        return Err(StoreError::UnexpectedTensor { id: unexpected });
    }
    Ok(model.map(&mut Writer { captured }))
}

struct Checker<'a, S> {
    captured: &'a Captured<S>,
    path: Vec<String>,
    seen: HashSet<ParamId>,
    error: Option<StoreError>,
}

impl<S> Checker<'_, S> {
    fn check(&mut self, id: ParamId, kind: Kind, shape: Vec<usize>, dtype: DType, trainable: bool) {
        if self.error.is_some() {
            return;
        }
        let selected = match self.captured.selection {
            Selection::All => true,
            Selection::Buffers => kind == Kind::Float && !trainable,
        };
        if !selected {
            return;
        }
        let path = self.path.join(".");
        match self.captured.entries.get(&id) {
            None => {
                self.error = Some(StoreError::MissingTensor {
                    id: id.to_string(),
                    path,
                });
            }
            Some((meta, _)) => {
                if meta.kind != kind || meta.shape != shape {
                    let actual = Meta {
                        path: path.clone(),
                        kind,
                        shape,
                        dtype,
                        trainable,
                    };
                    self.error = Some(StoreError::Mismatch {
                        id: id.to_string(),
                        path,
                        expected: meta.describe(),
                        actual: actual.describe(),
                    });
                } else {
                    self.seen.insert(id);
                }
            }
        }
    }
}

impl<S> ModuleVisitor for Checker<'_, S> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_owned());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        self.check(
            param.id,
            Kind::Float,
            tensor.dims().to_vec(),
            tensor.dtype(),
            tensor.is_require_grad(),
        );
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        let tensor = param.val();
        self.check(
            param.id,
            Kind::Int,
            tensor.dims().to_vec(),
            tensor.dtype(),
            false,
        );
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        let tensor = param.val();
        self.check(
            param.id,
            Kind::Bool,
            tensor.dims().to_vec(),
            tensor.dtype(),
            false,
        );
    }
}

struct IdLister {
    selection: Selection,
    ids: Vec<ParamId>,
}

impl ModuleVisitor for IdLister {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if self.selection == Selection::All || !param.val().is_require_grad() {
            self.ids.push(param.id);
        }
    }
    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<D, Int>>) {
        if self.selection == Selection::All {
            self.ids.push(param.id);
        }
    }
    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<D, Bool>>) {
        if self.selection == Selection::All {
            self.ids.push(param.id);
        }
    }
}

struct Writer<'a, S> {
    captured: &'a Captured<S>,
}

impl<S: Source> ModuleMapper for Writer<'_, S> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.captured.entries.get(&param.id) {
            Some((meta, source)) if meta.kind == Kind::Float => {
                param.map(|current| source.float(&current))
            }
            _ => param,
        }
    }

    fn map_int<const D: usize>(&mut self, param: Param<Tensor<D, Int>>) -> Param<Tensor<D, Int>> {
        match self.captured.entries.get(&param.id) {
            Some((meta, source)) if meta.kind == Kind::Int => {
                param.map(|current| source.int(&current))
            }
            _ => param,
        }
    }

    fn map_bool<const D: usize>(
        &mut self,
        param: Param<Tensor<D, Bool>>,
    ) -> Param<Tensor<D, Bool>> {
        match self.captured.entries.get(&param.id) {
            Some((meta, source)) if meta.kind == Kind::Bool => {
                param.map(|current| source.bool(&current))
            }
            _ => param,
        }
    }
}
