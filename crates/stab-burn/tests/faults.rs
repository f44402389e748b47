//! Fault injection: seeded, composable, serde-configurable, exact on the tensors it touches.

mod common;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Int, Tensor, TensorData};
use common::{Net, batch, grads};
use stab_burn::{Fault, FaultError, FaultKind, FaultSchedule};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

struct Grads<'a>(&'a GradientsParams, Vec<f32>);

impl ModuleVisitor for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.0.get::<D>(param.id) {
            self.1.extend(values(g));
        }
    }
}

fn flat(grads: &GradientsParams, model: &Net) -> Vec<f32> {
    let mut v = Grads(grads, Vec::new());
    model.visit(&mut v);
    v.1
}

#[test]
fn gradient_faults_fire_only_inside_their_window() {
    let device = common::training_device();
    let model = Net::new(&device);
    let schedule =
        FaultSchedule::new(0).with(Fault::new(FaultKind::GradientScale { factor: 300.0 }, 5, 2));
    let (g, _) = grads(&model, &batch(0, 8, &device));
    let base = flat(&g, &model);
    let untouched = flat(&schedule.grads(4, g, &model), &model);
    assert_eq!(untouched, base);
    let (g, _) = grads(&model, &batch(0, 8, &device));
    let scaled = flat(&schedule.grads(5, g, &model), &model);
    assert_eq!(scaled.len(), base.len());
    for (s, b) in scaled.iter().zip(&base) {
        assert_eq!(*s, (f64::from(*b) * 300.0) as f32);
    }
}

#[test]
fn nan_and_inf_faults_poison_every_gradient_element() {
    let device = common::training_device();
    let model = Net::new(&device);
    for (kind, check) in [
        (FaultKind::GradientNan, f32::is_nan as fn(f32) -> bool),
        (FaultKind::GradientInf, |v: f32| v == f32::INFINITY),
    ] {
        let (g, _) = grads(&model, &batch(0, 8, &device));
        let g = FaultSchedule::new(0)
            .with(Fault::new(kind, 0, 1))
            .grads(0, g, &model);
        assert!(flat(&g, &model).into_iter().all(check), "{kind:?}");
    }
}

#[test]
fn input_noise_is_seeded_reproducible_and_sized_by_its_amplitude() {
    let device = common::training_device().inner();
    let x = Tensor::<2>::zeros([64, 64], &device);
    let schedule = |seed| {
        FaultSchedule::new(seed).with(Fault::new(FaultKind::InputNoise { amplitude: 10.0 }, 3, 1))
    };
    let a = values(schedule(1).inputs(3, x.clone()));
    let b = values(schedule(1).inputs(3, x.clone()));
    let c = values(schedule(2).inputs(3, x.clone()));
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(values(schedule(1).inputs(4, x.clone())), vec![0.0; 64 * 64]);
    let std = (a.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / a.len() as f64).sqrt();
    assert!((std - 10.0).abs() < 0.5, "std {std}");
}

#[test]
fn label_flip_maps_y_to_c_minus_one_minus_y_and_checks_the_range() {
    let device = common::training_device().inner();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 2], [4]), &device);
    let schedule =
        FaultSchedule::new(0).with(Fault::new(FaultKind::LabelFlip { num_classes: 3 }, 0, 1));
    let flipped = schedule.checked_labels(0, labels.clone()).unwrap();
    assert_eq!(
        flipped
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap(),
        vec![2, 1, 0, 0]
    );
    let bad = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 5], [2]), &device);
    assert_eq!(
        schedule.checked_labels(0, bad).unwrap_err(),
        FaultError::LabelOutOfRange {
            label: 5,
            num_classes: 3
        }
    );
    // Outside the window, labels pass through untouched (and unread).
    let same = schedule.labels(1, labels);
    assert_eq!(
        same.into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap(),
        vec![0, 1, 2, 2]
    );
}

#[test]
fn schedules_round_trip_through_json_and_compose() {
    let schedule = FaultSchedule::new(42)
        .with(Fault::paper_gradient_blowup())
        .with(Fault::new(
            FaultKind::LearningRateScale { factor: 100.0 },
            125,
            1,
        ))
        .with(Fault::new(FaultKind::GradientNan, 200, 1))
        .with(Fault::new(FaultKind::GradientInf, 201, 1))
        .with(Fault::new(FaultKind::InputNoise { amplitude: 3.0 }, 210, 2))
        .with(Fault::new(FaultKind::LabelFlip { num_classes: 10 }, 220, 5));
    schedule.validate().unwrap();
    let json = serde_json::to_string_pretty(&schedule).unwrap();
    assert!(json.contains("\"kind\": \"gradient-scale\""), "{json}");
    let back: FaultSchedule = serde_json::from_str(&json).unwrap();
    assert_eq!(back, schedule);
    assert_eq!(schedule.lr(125, 0.01), 0.01 * 100.0);
    assert_eq!(
        schedule.active(125).count(),
        2,
        "ζ window and the lr spike overlap"
    );
    assert!(serde_json::from_str::<FaultSchedule>(r#"{"seed":1,"fault":[]}"#).is_err());
}
