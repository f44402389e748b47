//! Cost of the backend-free parts: one decision, and one supervised step whose snapshot is a host
//! copy of a parameter vector (the cost a framework without copy-on-write pays per accepted step).

use std::convert::Infallible;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use stab_core::{Controller, ControllerConfig, InMemoryStore, Supervisor};

fn decision(c: &mut Criterion) {
    let mut controller = Controller::from_config(&ControllerConfig::default(), 1.0).unwrap();
    let mut y = 1.0_f64;
    c.bench_function("controller_decide", |b| {
        b.iter(|| {
            y = if y > 1.2 { 0.9 } else { y + 0.01 };
            black_box(controller.decide(black_box(y)))
        })
    });
}

fn supervised_step(c: &mut Criterion) {
    let mut group = c.benchmark_group("supervised_step_host_snapshot");
    for params in [10_000usize, 1_000_000] {
        let state = vec![0.5_f32; params];
        let mut sup = Supervisor::new(
            &ControllerConfig::default(),
            InMemoryStore::new(),
            &state,
            1.0,
        )
        .unwrap()
        .without_monitor();
        let mut current = state;
        group.bench_with_input(BenchmarkId::from_parameter(params), &params, |b, _| {
            b.iter(|| {
                let taken = std::mem::take(&mut current);
                let step = sup
                    .step(
                        taken,
                        |mut s| {
                            s[0] += 1e-6;
                            Ok::<_, Infallible>(s)
                        },
                        |_| Ok(1.0),
                    )
                    .unwrap();
                current = step.state;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decision, supervised_step);
criterion_main!(benches);
