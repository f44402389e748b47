//! Shared fixtures: a tiny Conv2d + BatchNorm + Linear classifier, seeded synthetic data, a
//! probe, and an exact byte dump of a training state (independent of the crate's fingerprints).
#![allow(dead_code)]

pub mod checkpointing;

use burn::module::{Module, ModuleVisitor, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::{Device, Int, Tensor, TensorData};
use stab_burn::Probe;

pub const CLASSES: usize = 3;
pub const SIDE: usize = 8;

/// Conv2d(1→4, 3×3) → BatchNorm(4) → ReLU → Linear(4·6·6 → 3).
#[derive(Module, Debug)]
pub struct Net {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub fc: Linear,
}

impl Net {
    pub fn new(device: &Device) -> Self {
        Self {
            conv: Conv2dConfig::new([1, 4], [3, 3]).init(device),
            bn: BatchNormConfig::new(4).init(device),
            fc: LinearConfig::new(4 * 6 * 6, CLASSES).init(device),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let x = relu(self.bn.forward(self.conv.forward(x)));
        let [b, c, h, w] = x.dims();
        self.fc.forward(x.reshape([b, c * h * w]))
    }
}

/// Images and one-hot targets; labels kept for the fault hooks.
#[derive(Debug, Clone)]
pub struct Batch {
    pub x: Tensor<4>,
    pub targets: Tensor<2>,
    pub labels: Tensor<1, Int>,
}

/// Mean cross-entropy.
pub fn loss(net: &Net, batch: &Batch) -> Tensor<1> {
    let logp = log_softmax(net.forward(batch.x.clone()), 1);
    (logp * batch.targets.clone()).sum_dim(1).mean().neg()
}

/// A seeded batch: class c is a faint 3×3 blob at one of three places, under noise; one label
/// in five is replaced by a random class, so no model reaches zero loss and an overconfident
/// one (after a blown-up step) pays for it on the probe.
pub fn batch(seed: u64, n: usize, device: &Device) -> Batch {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xDEAD_BEEF);
    let mut x = vec![0f32; n * SIDE * SIDE];
    let mut targets = vec![0f32; n * CLASSES];
    let mut labels = vec![0i64; n];
    for i in 0..n {
        let class = (rng.next() % CLASSES as u64) as usize;
        let label = if rng.uniform() < 0.2 {
            (rng.next() % CLASSES as u64) as usize
        } else {
            class
        };
        labels[i] = label as i64;
        targets[i * CLASSES + label] = 1.0;
        let (r0, c0) = [(1, 1), (1, 4), (4, 2)][class];
        for r in 0..SIDE {
            for c in 0..SIDE {
                let blob = (r0..r0 + 3).contains(&r) && (c0..c0 + 3).contains(&c);
                let noise = (rng.uniform() + rng.uniform() + rng.uniform() - 1.5) * 1.2;
                x[i * SIDE * SIDE + r * SIDE + c] = if blob { 0.6 } else { 0.0 } + noise as f32;
            }
        }
    }
    Batch {
        x: Tensor::from_data(TensorData::new(x, [n, 1, SIDE, SIDE]), device),
        targets: Tensor::from_data(TensorData::new(targets, [n, CLASSES]), device),
        labels: Tensor::from_data(TensorData::new(labels, [n]), device),
    }
}

/// Two held-out batches of 8 (|P| = 16, the paper's probe size), on the plain device.
pub fn probe(device: &Device) -> Probe<Net, Batch> {
    let plain = device.clone().inner();
    Probe::new(
        vec![batch(10_001, 8, &plain), batch(10_002, 8, &plain)],
        loss,
    )
    .unwrap()
}

/// Training-mode forward and backward: the gradients and the loss value.
pub fn grads(model: &Net, batch: &Batch) -> (GradientsParams, f64) {
    let loss = loss(model, batch);
    let value = loss.clone().into_scalar::<f64>();
    (GradientsParams::from_grads(loss.backward(), model), value)
}

/// AdamW with PyTorch's defaults (the paper's): β = (0.9, 0.999), ε = 1e-8, weight decay 0.01.
pub fn adamw() -> ModuleOptimizer {
    AdamWConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(0.01)
        .init()
}

/// Plain SGD.
pub fn sgd() -> ModuleOptimizer {
    SgdConfig::new().init()
}

pub fn training_device() -> Device {
    stab_burn::training_device().unwrap().device.autodiff()
}

/// Whether the backend's kernels are deterministic, so that two runs of the same steps give the
/// same bits and a resumed or overlapped run can be compared with another run bit for bit: Flex,
/// and LibTorch on the CPU (its kernels split work over a fixed number of threads the same way
/// on every call; measured: the bitwise checkpoint, overlap and failure-path comparisons pass
/// there, docs/TESTING.md). On a GPU backend (wgpu) two runs need not give the same bits (kernel
/// selection, reduction order), and a probe on another thread runs on another stream: the tests
/// check each run's own decisions there instead.
pub fn deterministic_backend() -> bool {
    stab_burn::training_device()
        .map(|d| d.name.contains("Flex") || d.name.contains("LibTorch(Cpu)"))
        .unwrap_or(false)
}

/// Every byte of a training state, keyed by names rather than hashed: module tensors by
/// parameter id and path (running statistics after merging pending updates), optimizer tensors
/// and scalars by name (sorted, so independent of burn's hash-map order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateBytes {
    pub tensors: Vec<(String, String, bool, Vec<u8>)>,
    pub optim_tensors: Vec<(String, Vec<u8>)>,
    pub optim_scalars: Vec<(String, String)>,
    /// Each trainable parameter's numeric id (as the optimizer's record names it) and module path.
    pub ids: Vec<(String, String)>,
}

impl StateBytes {
    pub fn of(model: &Net, optim: &ModuleOptimizer) -> Self {
        let _ = model.valid(); // merge pending running-statistic updates of every thread
        let mut dump = Dump(Vec::new(), Vec::new(), Vec::new());
        model.visit(&mut dump);
        let reader = burn_pack::Reader::from_bytes(optim.into_bytes().unwrap()).unwrap();
        let optim_scalars = reader
            .scalars()
            .iter()
            .map(|(k, v)| (k.clone(), format!("{v:?}")))
            .collect();
        let optim_tensors = reader
            .into_tensors()
            .unwrap()
            .into_iter()
            .map(|t| {
                let name = t.name.clone();
                (name, t.into_bytes().unwrap().to_vec())
            })
            .collect();
        Self {
            tensors: dump.1,
            optim_tensors,
            optim_scalars,
            ids: dump.2,
        }
    }

    /// The same state keyed by module path instead of parameter id, for comparing runs whose
    /// models were built separately (every `Net::new` draws fresh ids).
    pub fn by_path(&self) -> Self {
        let rename = |name: &str| {
            let (head, rest) = name.split_once('.').unwrap_or((name, ""));
            match self.ids.iter().find(|(id, _)| id == head) {
                Some((_, path)) => format!("{path}.{rest}"),
                None => name.to_owned(),
            }
        };
        let mut tensors: Vec<_> = self
            .tensors
            .iter()
            .map(|(_, path, trainable, bytes)| {
                (String::new(), path.clone(), *trainable, bytes.clone())
            })
            .collect();
        tensors.sort_by(|a, b| a.1.cmp(&b.1));
        let mut optim_tensors: Vec<_> = self
            .optim_tensors
            .iter()
            .map(|(name, bytes)| (rename(name), bytes.clone()))
            .collect();
        optim_tensors.sort();
        let mut optim_scalars: Vec<_> = self
            .optim_scalars
            .iter()
            .map(|(name, value)| (rename(name), value.clone()))
            .collect();
        optim_scalars.sort();
        Self {
            tensors,
            optim_tensors,
            optim_scalars,
            ids: Vec::new(),
        }
    }

    /// The running statistics only (tensors that do not require gradients).
    pub fn running(&self) -> Vec<&(String, String, bool, Vec<u8>)> {
        self.tensors.iter().filter(|t| !t.2).collect()
    }

    /// The trainable parameters only.
    pub fn params(&self) -> Vec<&(String, String, bool, Vec<u8>)> {
        self.tensors.iter().filter(|t| t.2).collect()
    }

    /// Names of the parts that differ, for readable assertion messages.
    pub fn diff(&self, other: &Self) -> Vec<String> {
        let mut out = Vec::new();
        for (a, b) in self.tensors.iter().zip(&other.tensors) {
            if a != b {
                out.push(format!("module tensor {} ({})", a.1, a.0));
            }
        }
        for (a, b) in self.optim_tensors.iter().zip(&other.optim_tensors) {
            if a != b {
                out.push(format!("optimizer tensor {}", a.0));
            }
        }
        for (a, b) in self.optim_scalars.iter().zip(&other.optim_scalars) {
            if a != b {
                out.push(format!("optimizer scalar {} {} vs {}", a.0, a.1, b.1));
            }
        }
        if self.tensors.len() != other.tensors.len()
            || self.optim_tensors.len() != other.optim_tensors.len()
            || self.optim_scalars.len() != other.optim_scalars.len()
        {
            out.push("different numbers of tensors or scalars".to_owned());
        }
        out
    }
}

#[track_caller]
pub fn assert_same_state(expected: &StateBytes, actual: &StateBytes) {
    let diff = expected.diff(actual);
    assert!(diff.is_empty(), "states differ in: {diff:#?}");
    assert_eq!(expected, actual);
}

struct Dump(
    Vec<String>,
    Vec<(String, String, bool, Vec<u8>)>,
    Vec<(String, String)>,
);

impl ModuleVisitor for Dump {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.0.push(name.to_owned());
    }
    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.0.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let tensor = param.val();
        let trainable = tensor.is_require_grad();
        if trainable {
            // Only trainable parameters have optimizer state (and a resumed module keeps the
            // running statistics' ids of the module it was loaded into).
            self.2.push((param.id.val().to_string(), self.0.join(".")));
        }
        self.1.push((
            param.id.to_string(),
            self.0.join("."),
            trainable,
            tensor.into_data().as_bytes().to_vec(),
        ));
    }
}

/// A test-local generator (SplitMix64), so the fixtures do not depend on the crate's.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
