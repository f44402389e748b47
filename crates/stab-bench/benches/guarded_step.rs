//! What protection costs on real work: a guarded training step against the unguarded one, for
//! the narrow ResNet-18 on Fashion-MNIST and the small character Transformer, on the backend
//! `BURN_DEVICE` selects (flex by default), in one run.
//!
//! Cases: each store (device, host) at probe interval k = 1 and 4, sequential and with the probe
//! overlapped with the next step ([`stab_burn::OverlappedGuard`]), and a sweep of the probe size
//! |P|; then the time of one save and one restore against the parameter count, and the bytes
//! each store holds. Every case prints one summary line,
//!
//! ```text
//! gamma resnet18 store=device k=1 P=16 B=32: measured 17.1 % floor 16.7 % ratio 1.03 | probe 14.2 % snapshot 0.1 % restore 0.0 % other 2.8 %
//! ```
//!
//! where *measured* is (guarded − unguarded) / unguarded wall-clock time per step, *floor* the
//! paper's |P| / (3|B|) (divided by k for k > 1), *ratio* their quotient, and the shares split
//! the guarded step's extra time: the probe's forward pass, the snapshot, the restore, and the
//! rest (gradient-gate norm, bookkeeping). For an overlapped case *probe* is the time the step
//! waited for the probe thread. The device is synchronized before every clock read.
//!
//! `STAB_BENCH_QUICK=1` shortens every case (for a smoke run); `cargo bench -p stab-bench --bench
//! guarded_step -- resnet` runs one model's cases.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use criterion::{BenchmarkId, Criterion};
use stab_bench::predicted_overhead;
use stab_burn::{Guard, GuardConfig, OverlappedGuard, Probe, StateStore, StepTimings, StoreKind};
use stab_models::data::{BatchPlan, CharCorpus, CharDataset, VisionDataset};
use stab_models::{CharTransformerConfig, LossModel, paper_adamw, trainable_param_count};

/// ResNet-18 base width and minibatch of the `cpu` preset of `cargo xtask reproduce`.
const RESNET_WIDTH: usize = 8;
const RESNET_BATCH: usize = 32;
/// The Transformer of the `cpu` preset.
const TRANSFORMER_BATCH: usize = 64;
const SEQ_LEN: usize = 64;
const D_MODEL: usize = 64;
/// The paper's probe size.
const PROBE: usize = 16;
/// Distinct minibatches cycled through (data loading is not timed).
const BATCHES: usize = 8;

/// One configuration of the guard, or none (the unguarded baseline).
#[derive(Debug, Clone, Copy)]
struct Case {
    store: Option<StoreKind>,
    interval: u64,
    probe: usize,
    /// The probe on its own thread, beside the next step's forward and backward.
    overlap: bool,
}

impl Case {
    const UNGUARDED: Self = Self {
        store: None,
        interval: 1,
        probe: PROBE,
        overlap: false,
    };

    fn label(&self) -> String {
        match self.store {
            None => "unguarded".to_owned(),
            Some(store) => format!(
                "store={} k={} P={}{}",
                store_name(store),
                self.interval,
                self.probe,
                if self.overlap { " overlapped" } else { "" }
            ),
        }
    }
}

fn store_name(store: StoreKind) -> &'static str {
    match store {
        StoreKind::Device => "device",
        StoreKind::Host => "host",
    }
}

/// The cases of one model: both stores at k = 1 and 4, sequential and (k = 1) overlapped, then
/// the |P| sweep on the device store.
fn cases(probe_sweep: &[usize]) -> Vec<Case> {
    let mut cases = vec![Case::UNGUARDED];
    for store in [StoreKind::Device, StoreKind::Host] {
        for (interval, overlap) in [(1, false), (4, false), (1, true)] {
            cases.push(Case {
                store: Some(store),
                interval,
                probe: PROBE,
                overlap,
            });
        }
    }
    for &probe in probe_sweep {
        for overlap in [false, true] {
            cases.push(Case {
                store: Some(StoreKind::Device),
                interval: 1,
                probe,
                overlap,
            });
        }
    }
    cases
}

/// Time and guard timings accumulated over every measured iteration of a case.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    steps: u64,
    wall: Duration,
    probe: Duration,
    snapshot: Duration,
    restore: Duration,
}

impl Tally {
    fn per_step(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.steps.max(1) as f64
    }
    fn add(&mut self, timings: &StepTimings) {
        self.probe += timings.measure;
        self.snapshot += timings.snapshot;
        self.restore += timings.restore;
    }
}

/// A model being trained, guarded or not, whose training steps the bench times.
struct Trainer<M: LossModel + 'static> {
    model: Option<M>,
    optim: Option<ModuleOptimizer>,
    guard: Option<Guard<M>>,
    overlapped: Option<OverlappedGuard<M>>,
    lr: f64,
}

impl<M> Trainer<M>
where
    M: LossModel + 'static,
    M::Batch: Send + Sync + 'static,
{
    fn new(model: M, case: Case, probes: &[M::Batch], lr: f64) -> Self {
        let optim = paper_adamw().init();
        let Some(store) = case.store else {
            return Self {
                model: Some(model),
                optim: Some(optim),
                guard: None,
                overlapped: None,
                lr,
            };
        };
        let probe = Probe::new(probes[..1].to_vec(), |m: &M, b: &M::Batch| m.loss(b))
            .expect("a non-empty probe");
        let config = GuardConfig::default()
            .with_store(store)
            .with_probe_interval(case.interval);
        let guard = Guard::builder(config)
            .probe(probe)
            .build(&model, optim)
            .expect("the guard builds");
        let (guard, overlapped) = if case.overlap {
            let overlapped = OverlappedGuard::new(guard).expect("the probe thread starts");
            (None, Some(overlapped))
        } else {
            (Some(guard), None)
        };
        Self {
            model: Some(model),
            optim: None,
            guard,
            overlapped,
            lr,
        }
    }

    /// One training step on `batch`: forward, backward, then the optimizer's or the guard's step.
    fn step(&mut self, batch: &M::Batch, tally: &mut Tally) {
        let model = self.model.take().expect("the model is always put back");
        let loss = model.loss(batch);
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = match (&mut self.guard, &mut self.overlapped, &mut self.optim) {
            (Some(guard), _, _) => {
                let guarded = guard.step(self.lr, model, grads).expect("a guarded step");
                tally.add(&guarded.report.timings);
                guarded.model
            }
            (None, Some(overlapped), _) => {
                let regrad = |m: &M| GradientsParams::from_grads(m.loss(batch).backward(), m);
                let out = overlapped
                    .step(self.lr, model, grads, regrad)
                    .expect("an overlapped step");
                for report in &out.decided {
                    tally.add(&report.timings);
                }
                out.model
            }
            (None, None, Some(optim)) => optim.step(self.lr, model, grads),
            (None, None, None) => unreachable!("a trainer has an optimizer or a guard"),
        };
        self.model = Some(black_box(model));
    }
}

/// One model's training data, probes and learning rate.
struct Workload<'a, M: LossModel> {
    name: &'static str,
    batch_size: usize,
    batches: &'a [M::Batch],
    probes: &'a BTreeMap<usize, M::Batch>,
    lr: f64,
}

/// Times every case of one model and prints its summary lines.
fn bench_model<M>(
    c: &mut Criterion,
    work: &Workload<'_, M>,
    init: impl Fn() -> M,
    device: &Device,
    probe_sweep: &[usize],
) -> Vec<Point>
where
    M: LossModel + 'static,
    M::Batch: Send + Sync + 'static,
{
    let Workload {
        name,
        batch_size,
        batches,
        probes,
        lr,
    } = *work;
    let tallies: RefCell<Vec<(Case, Tally)>> = RefCell::new(Vec::new());
    let mut group = c.benchmark_group(format!("guarded_step/{name}"));
    for case in cases(probe_sweep) {
        let probe = [probes[&case.probe].clone()];
        let mut trainer = Trainer::new(init(), case, &probe, lr);
        // Past the guard's start and the optimizer's first (state-allocating) step.
        let mut warm = Tally::default();
        for batch in batches.iter().take(2) {
            trainer.step(batch, &mut warm);
        }
        let mut tally = Tally::default();
        let mut next = 0_usize;
        group.bench_function(BenchmarkId::from_parameter(case.label()), |b| {
            b.iter_custom(|iters| {
                let mut wall = Duration::ZERO;
                for _ in 0..iters {
                    let batch = &batches[next % batches.len()];
                    next += 1;
                    device.sync().expect("the device synchronizes");
                    let started = Instant::now();
                    trainer.step(batch, &mut tally);
                    device.sync().expect("the device synchronizes");
                    wall += started.elapsed();
                }
                tally.steps += iters;
                tally.wall += wall;
                wall
            })
        });
        tallies.borrow_mut().push((case, tally));
    }
    group.finish();
    summarize(name, batch_size, &tallies.into_inner())
}

/// One line per guarded case: measured γ against the floor, and where the extra time went.
fn summarize(name: &str, batch_size: usize, tallies: &[(Case, Tally)]) -> Vec<Point> {
    let mut points = Vec::new();
    let Some((_, base)) = tallies.iter().find(|(c, _)| c.store.is_none()) else {
        return points;
    };
    let unguarded = base.per_step(base.wall);
    println!(
        "\nsummary {name}: unguarded step {:.2} ms (B = {batch_size})",
        1e3 * unguarded
    );
    for (case, t) in tallies.iter().filter(|(c, _)| c.store.is_some()) {
        let guarded = t.per_step(t.wall);
        let measured = guarded / unguarded - 1.0;
        let floor =
            predicted_overhead(case.probe, batch_size).unwrap_or(f64::NAN) / case.interval as f64;
        let share = |d: Duration| 100.0 * t.per_step(d) / unguarded;
        let (probe, snapshot, restore) = (share(t.probe), share(t.snapshot), share(t.restore));
        println!(
            "gamma {name} {} B={batch_size}: measured {:.1} % floor {:.1} % ratio {:.2} | probe {probe:.1} % snapshot {snapshot:.1} % restore {restore:.1} % other {:.1} %",
            case.label(),
            100.0 * measured,
            100.0 * floor,
            measured / floor,
            100.0 * measured - probe - snapshot - restore,
        );
        points.push(Point {
            floor,
            measured,
            overlap: case.overlap,
        });
    }
    points
}

/// One guarded case on the γ plot.
#[derive(Debug, Clone, Copy)]
struct Point {
    floor: f64,
    measured: f64,
    overlap: bool,
}

/// Writes measured γ against the floor |P| / (3|B|) as an SVG scatter plot: sequential cases as
/// circles, overlapped ones as squares, with the lines γ = floor and γ = floor / 2.
fn write_plot(points: &[Point], path: &std::path::Path) -> std::io::Result<()> {
    let (w, h, pad) = (560.0, 400.0, 50.0);
    let max = points
        .iter()
        .flat_map(|p| [p.floor, p.measured])
        .fold(0.05_f64, f64::max)
        * 1.1;
    let min = points.iter().map(|p| p.measured).fold(0.0_f64, f64::min);
    let x = |v: f64| pad + (v / max) * (w - 2.0 * pad);
    let y = |v: f64| h - pad - ((v - min) / (max - min)) * (h - 2.0 * pad);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="black"/>
<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="black"/>
<text x="{xm}" y="{xl}" text-anchor="middle">floor |P|/(3|B|), divided by k</text>
<text x="14" y="{ym}" transform="rotate(-90 14 {ym})" text-anchor="middle">measured γ (wall clock)</text>
<line x1="{x0}" y1="{yz}" x2="{x1}" y2="{yd}" stroke="gray" stroke-dasharray="4"/>
<line x1="{x0}" y1="{yz}" x2="{x1}" y2="{yh}" stroke="gray" stroke-dasharray="1 3"/>
<text x="{x1}" y="{yd}" text-anchor="end" dy="-4">γ = floor</text>
<text x="{x1}" y="{yh}" text-anchor="end" dy="-4">γ = floor / 2</text>
"#,
        x0 = x(0.0),
        x1 = x(max),
        y0 = y(min),
        y1 = y(max),
        xm = w / 2.0,
        xl = h - 12.0,
        ym = h / 2.0,
        yz = y(0.0),
        yd = y(max),
        yh = y(max / 2.0),
    );
    for tick in [0.0, 0.25, 0.5, 0.75, 1.0].map(|f| f * max) {
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0} %</text>\n",
            x(tick),
            y(min) + 16.0,
            100.0 * tick
        );
        svg += &format!(
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0} %</text>\n",
            x(0.0) - 4.0,
            y(tick) + 4.0,
            100.0 * tick
        );
    }
    for p in points {
        let (cx, cy) = (x(p.floor), y(p.measured));
        svg += &if p.overlap {
            format!(
                "<rect x=\"{}\" y=\"{}\" width=\"8\" height=\"8\" style=\"fill:#e67e22\"/>\n",
                cx - 4.0,
                cy - 4.0
            )
        } else {
            format!("<circle cx=\"{cx}\" cy=\"{cy}\" r=\"4\" style=\"fill:#2c7fb8\"/>\n")
        };
    }
    svg += &format!(
        "<circle cx=\"{0}\" cy=\"20\" r=\"4\" style=\"fill:#2c7fb8\"/><text x=\"{1}\" y=\"24\">sequential probe</text>\n<rect x=\"{2}\" y=\"36\" width=\"8\" height=\"8\" style=\"fill:#e67e22\"/><text x=\"{1}\" y=\"44\">overlapped probe</text>\n</svg>\n",
        pad + 10.0,
        pad + 20.0,
        pad + 6.0
    );
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, svg)
}

/// Save and restore time of each store against the parameter count (ResNet-18 widths), and the
/// bytes each store holds after one save.
fn bench_stores(c: &mut Criterion, device: &Device, widths: &[usize]) {
    let data = VisionDataset::discover(None).expect("Fashion-MNIST (dataset-fashion-mnist)");
    let train = device.clone().autodiff();
    let mut group = c.benchmark_group("store");
    let mut lines = Vec::new();
    for &width in widths {
        let model = data
            .resnet_config(width)
            .init(&train)
            .expect("a valid config");
        let params = trainable_param_count(&model);
        // An optimizer with state: one step.
        let batch = data
            .train_batch(&(0..RESNET_BATCH).collect::<Vec<_>>(), device)
            .expect("a batch");
        let mut optim = paper_adamw().init();
        let grads = GradientsParams::from_grads(model.loss(&batch).backward(), &model);
        let model = optim.step(1e-3, model, grads);
        // The live state, handed to each restore and taken back from it.
        let mut live = Some((model, optim));
        for kind in [StoreKind::Device, StoreKind::Host] {
            let mut store: Box<dyn StateStore<_>> = kind.build().expect("a store");
            let label = format!("{} params={params}", store_name(kind));
            let (mut save_time, mut saves) = (Duration::ZERO, 0_u64);
            group.bench_function(BenchmarkId::new("save", &label), |b| {
                b.iter_custom(|iters| {
                    let (model, optim) = live.as_ref().expect("put back");
                    let mut wall = Duration::ZERO;
                    for _ in 0..iters {
                        device.sync().expect("sync");
                        let started = Instant::now();
                        store.save(model, optim).expect("save");
                        store.flush().expect("the copy finishes");
                        device.sync().expect("sync");
                        wall += started.elapsed();
                    }
                    save_time += wall;
                    saves += iters;
                    wall
                })
            });
            let memory = store.memory();
            let (mut restore_time, mut restores) = (Duration::ZERO, 0_u64);
            group.bench_function(BenchmarkId::new("restore", &label), |b| {
                b.iter_custom(|iters| {
                    let mut wall = Duration::ZERO;
                    for _ in 0..iters {
                        let (model, optim) = live.take().expect("put back");
                        device.sync().expect("sync");
                        let started = Instant::now();
                        let restored = store.restore(model, optim).expect("restore");
                        device.sync().expect("sync");
                        wall += started.elapsed();
                        live = Some(restored);
                    }
                    restore_time += wall;
                    restores += iters;
                    wall
                })
            });
            lines.push(format!(
                "store {label}: save {:.3} ms restore {:.3} ms | device private {} B shared {} B host {} B",
                1e3 * save_time.as_secs_f64() / saves.max(1) as f64,
                1e3 * restore_time.as_secs_f64() / restores.max(1) as f64,
                memory.device_private,
                memory.device_shared,
                memory.host,
            ));
        }
    }
    group.finish();
    println!();
    for line in lines {
        println!("{line}");
    }
}

fn main() {
    let quick = std::env::var_os("STAB_BENCH_QUICK").is_some();
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 1000 }))
        .measurement_time(Duration::from_secs(if quick { 1 } else { 4 }))
        .configure_from_args();
    let selected = stab_burn::training_device().expect("a usable BURN_DEVICE");
    let device = selected.device;
    let train = device.clone().autodiff();
    println!(
        "device: {} ({})",
        selected.name,
        if quick { "quick" } else { "full" }
    );
    let sweep: &[usize] = if quick { &[64] } else { &[4, 8, 32, 64] };

    // ResNet-18 on Fashion-MNIST (Debian's dataset-fashion-mnist).
    let data = VisionDataset::discover(None).expect("Fashion-MNIST (dataset-fashion-mnist)");
    println!("data: {}", data.source_name());
    let plan = BatchPlan::new(0, data.train_len(), RESNET_BATCH).expect("a batch plan");
    let batches: Vec<_> = (0..BATCHES as u64)
        .map(|s| {
            data.train_batch(&plan.indices(s), &device)
                .expect("a batch")
        })
        .collect();
    let probes: BTreeMap<_, _> = std::iter::once(PROBE)
        .chain(sweep.iter().copied())
        .map(|p| (p, data.probe_batch(p, &device).expect("a probe batch")))
        .collect();
    device.seed(0);
    let work = Workload {
        name: "resnet18",
        batch_size: RESNET_BATCH,
        batches: &batches,
        probes: &probes,
        lr: stab_models::REFERENCE_RESNET_LR,
    };
    let init = || {
        data.resnet_config(RESNET_WIDTH)
            .init(&train)
            .expect("a valid config")
    };
    let mut points = bench_model(&mut c, &work, init, &device, sweep);

    // The character Transformer on the synthetic repeated-phrase corpus.
    let mut probes = BTreeMap::new();
    let mut text = None;
    for p in std::iter::once(PROBE).chain(sweep.iter().copied()) {
        let data = CharDataset::new(CharCorpus::synthetic(), SEQ_LEN, p).expect("the corpus");
        probes.insert(p, data.probe_batch(&device).expect("a probe batch"));
        text.get_or_insert(data);
    }
    let text = text.expect("one dataset");
    println!("data: {}", text.source_name());
    let plan = BatchPlan::new(0, text.train_len(), TRANSFORMER_BATCH).expect("a batch plan");
    let batches: Vec<_> = (0..BATCHES as u64)
        .map(|s| {
            text.train_batch(&plan.indices(s), &device)
                .expect("a batch")
        })
        .collect();
    let work = Workload {
        name: "transformer",
        batch_size: TRANSFORMER_BATCH,
        batches: &batches,
        probes: &probes,
        lr: stab_models::PAPER_TRANSFORMER_LR,
    };
    let init = || {
        CharTransformerConfig::new(text.vocab_size())
            .with_seq_len(SEQ_LEN)
            .with_d_model(D_MODEL)
            .with_n_heads(4)
            .with_n_layers(2)
            .with_d_ff(4 * D_MODEL)
            .init(&train)
            .expect("a valid config")
    };
    points.extend(bench_model(&mut c, &work, init, &device, sweep));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"),
        std::path::PathBuf::from,
    );
    let plot = target.join("stab-bench").join("gamma.svg");
    match write_plot(&points, &plot) {
        Ok(()) => println!("plot: {}", plot.display()),
        Err(e) => println!("plot not written ({}): {e}", plot.display()),
    }

    bench_stores(&mut c, &device, if quick { &[4] } else { &[4, 8, 16, 32] });
    c.final_summary();
}
