//! Model-based tests of every innovation signal: the controller built from a configuration
//! against a few-line reference of each signal, over measurement sequences that repeat values
//! (plateaus, y = ŷ), land exactly on the threshold and one ulp above it, and include NaN, ±∞ and
//! extreme magnitudes. Every record field, the counters and the records' JSON round trip are
//! compared with the model.

use proptest::prelude::*;
use stab_core::{
    Action, Controller, ControllerConfig, Counters, Decision, InnovationKind, RejectionReason,
    SignalKind, StepRecord,
};

/// One input of a generated run. The measurement of the relative inputs is computed from the
/// reference model's state at that point, so they hit the boundaries exactly.
#[derive(Debug, Clone, Copy)]
enum Input {
    /// A measurement as it comes.
    Value(f64),
    /// The same measurement as the previous input (a plateau of the raw signal).
    Repeat,
    /// The current reference itself (y = ŷ: a plateau of the reference).
    AtReference,
    /// The measurement whose innovation is the threshold, as the reference computes it.
    AtThreshold,
    /// The next float above [`Input::AtThreshold`].
    JustAboveThreshold,
}

fn value() -> impl Strategy<Value = f64> {
    prop_oneof![
        8 => 0.0..10.0_f64,
        2 => -1e3..1e3_f64,
        1 => prop_oneof![Just(1e300), Just(-1e300), Just(f64::MAX), Just(-f64::MAX)],
        1 => prop_oneof![Just(1e-300), Just(0.0), Just(-0.0), Just(f64::MIN_POSITIVE)],
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
    ]
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => value().prop_map(Input::Value),
        2 => Just(Input::Repeat),
        2 => Just(Input::AtReference),
        2 => Just(Input::AtThreshold),
        1 => Just(Input::JustAboveThreshold),
    ]
}

fn signal_kind() -> impl Strategy<Value = SignalKind> {
    prop_oneof![
        Just(SignalKind::Probe),
        Just(SignalKind::LossSpike),
        Just(SignalKind::GradientNormSpike),
        Just(SignalKind::GradientAgreement),
    ]
}

/// The reference signals, written from the documentation: an EWMA of accepted measurements
/// (probe: ν = y − ŷ; agreement: ν = ŷ − y) or a one-sided z-score against the last `window`
/// accepted values (spikes; zero while fewer than min(window, 5) are known).
#[derive(Debug, Clone)]
enum Model {
    Ewma { y_hat: f64, alpha: f64, sign: f64 },
    Spike { history: Vec<f64>, window: usize },
}

impl Model {
    fn new(kind: SignalKind, config: &ControllerConfig, y0: f64) -> Self {
        match kind {
            SignalKind::Probe => Self::Ewma {
                y_hat: y0,
                alpha: config.alpha,
                sign: 1.0,
            },
            SignalKind::GradientAgreement => Self::Ewma {
                y_hat: y0,
                alpha: config.alpha,
                sign: -1.0,
            },
            SignalKind::LossSpike | SignalKind::GradientNormSpike => Self::Spike {
                history: vec![y0],
                window: config.spike_window,
            },
        }
    }

    /// Mean and population standard deviation, scaled by the largest magnitude first so that
    /// no sum overflows.
    fn mean_and_std(history: &[f64]) -> (f64, f64) {
        let n = history.len() as f64;
        let scale = history
            .iter()
            .fold(f64::MIN_POSITIVE, |m, v| m.max(v.abs()));
        let mean = history.iter().map(|v| v / scale).sum::<f64>() / n;
        let var = history
            .iter()
            .map(|v| (v / scale - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean * scale, var.sqrt() * scale)
    }

    fn reference(&self) -> f64 {
        match self {
            Self::Ewma { y_hat, .. } => *y_hat,
            Self::Spike { history, .. } => Self::mean_and_std(history).0,
        }
    }

    /// The z-score's divisor: the spread, floored at 1e-3 |mean| (and 1e-12).
    fn spread(history: &[f64]) -> (f64, f64) {
        let (mean, std) = Self::mean_and_std(history);
        (mean, std.max((1e-3 * mean.abs()).max(1e-12)))
    }

    fn innovation(&self, y: f64) -> f64 {
        match self {
            Self::Ewma { y_hat, sign, .. } if *sign < 0.0 => y_hat - y,
            Self::Ewma { y_hat, .. } => y - y_hat,
            Self::Spike { history, window } => {
                if history.len() < (*window).min(5) {
                    return 0.0;
                }
                let (mean, spread) = Self::spread(history);
                (y - mean) / spread
            }
        }
    }

    /// The measurement whose innovation is `epsilon`.
    fn at_threshold(&self, epsilon: f64) -> f64 {
        match self {
            Self::Ewma { y_hat, sign, .. } => y_hat + sign * epsilon,
            Self::Spike { history, .. } => {
                let (mean, spread) = Self::spread(history);
                mean + epsilon * spread
            }
        }
    }

    fn accept(&mut self, y: f64) {
        match self {
            Self::Ewma { y_hat, alpha, .. } => {
                let blended = (1.0 - *alpha) * *y_hat + *alpha * y;
                *y_hat = blended.clamp(y_hat.min(y), y_hat.max(y));
            }
            Self::Spike { history, window } => {
                if history.len() == *window {
                    history.remove(0);
                }
                history.push(y);
            }
        }
    }
}

fn name(kind: SignalKind) -> &'static str {
    match kind {
        SignalKind::Probe => "probe",
        SignalKind::LossSpike => "loss-spike",
        SignalKind::GradientNormSpike => "gradient-norm-spike",
        SignalKind::GradientAgreement => "gradient-agreement",
    }
}

/// Bitwise equality, so that a changed rounding or sign of zero is a difference too.
fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// The record the reference expects for measurement `y` at decision `step`, and the model moved
/// on by it.
fn expected_record(
    model: &mut Model,
    kind: SignalKind,
    epsilon: f64,
    step: u64,
    y: f64,
    counters: &mut Counters,
) -> StepRecord {
    let reference = model.reference();
    let (innovation, decision) = if !y.is_finite() {
        let reason = RejectionReason::NonFiniteMeasurement { measurement: y };
        (f64::NAN, Decision::Rejected { reason })
    } else {
        let nu = model.innovation(y);
        if !nu.is_finite() {
            let reason = RejectionReason::NonFiniteInnovation { innovation: nu };
            (nu, Decision::Rejected { reason })
        } else if nu <= epsilon {
            (nu, Decision::Accepted)
        } else {
            let reason = RejectionReason::InnovationAboveThreshold {
                innovation: nu,
                threshold: epsilon,
            };
            (nu, Decision::Rejected { reason })
        }
    };
    counters.steps += 1;
    if decision.is_accepted() {
        model.accept(y);
        counters.accepted += 1;
        counters.consecutive_rejections = 0;
    } else {
        counters.rejected += 1;
        counters.consecutive_rejections += 1;
        counters.longest_rejection_run = counters
            .longest_rejection_run
            .max(counters.consecutive_rejections);
    }
    StepRecord {
        step,
        signal: name(kind).to_owned(),
        innovation_kind: if kind == SignalKind::Probe {
            InnovationKind::ReferenceDifference
        } else {
            InnovationKind::Score
        },
        measurement: y,
        reference,
        reference_after: model.reference(),
        innovation,
        threshold: epsilon,
        decision,
        consecutive_rejections: counters.consecutive_rejections,
        action: Action::Commit,
        rung: None,
    }
}

fn same_reason(a: &Decision, b: &Decision) -> bool {
    use RejectionReason::*;
    match (a.rejection_reason(), b.rejection_reason()) {
        (None, None) => true,
        (
            Some(NonFiniteMeasurement { measurement: x }),
            Some(NonFiniteMeasurement { measurement: y }),
        ) => same(x, y),
        (
            Some(NonFiniteInnovation { innovation: x }),
            Some(NonFiniteInnovation { innovation: y }),
        ) => same(x, y),
        (
            Some(InnovationAboveThreshold {
                innovation: x,
                threshold: s,
            }),
            Some(InnovationAboveThreshold {
                innovation: y,
                threshold: t,
            }),
        ) => same(x, y) && same(s, t),
        _ => false,
    }
}

/// Field-by-field, bitwise comparison of two records (NaN equal to NaN).
fn assert_same_record(actual: &StepRecord, expected: &StepRecord) -> Result<(), TestCaseError> {
    let context = format!("actual {actual:?}\nexpected {expected:?}");
    prop_assert_eq!(actual.step, expected.step, "{}", context);
    prop_assert_eq!(&actual.signal, &expected.signal, "{}", context);
    prop_assert_eq!(
        actual.innovation_kind,
        expected.innovation_kind,
        "{}",
        context
    );
    for (a, e, field) in [
        (actual.measurement, expected.measurement, "measurement"),
        (actual.reference, expected.reference, "reference"),
        (
            actual.reference_after,
            expected.reference_after,
            "reference_after",
        ),
        (actual.innovation, expected.innovation, "innovation"),
        (actual.threshold, expected.threshold, "threshold"),
    ] {
        prop_assert!(same(a, e), "{}: {} != {}\n{}", field, a, e, context);
    }
    prop_assert!(
        same_reason(&actual.decision, &expected.decision),
        "{}",
        context
    );
    prop_assert_eq!(
        actual.consecutive_rejections,
        expected.consecutive_rejections,
        "{}",
        context
    );
    prop_assert_eq!(actual.action, expected.action, "{}", context);
    prop_assert_eq!(actual.rung, expected.rung, "{}", context);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn every_signal_agrees_with_its_reference_record_for_record(
        kind in signal_kind(),
        y0 in prop_oneof![8 => 0.0..10.0_f64, 1 => -1e3..1e3_f64, 1 => Just(0.0)],
        epsilon in prop_oneof![Just(0.5), Just(3.0), 1e-6..10.0_f64],
        alpha in prop_oneof![Just(0.1), Just(0.5), 1e-3..0.999_f64],
        window in prop_oneof![Just(2_usize), Just(3), Just(5), Just(20), 2..40_usize],
        inputs in prop::collection::vec(input(), 0..120),
    ) {
        let config = ControllerConfig::default()
            .with_signal(kind)
            .with_epsilon(epsilon)
            .with_alpha(alpha)
            .with_spike_window(window);
        let mut controller = Controller::from_config(&config, y0).unwrap();
        let mut model = Model::new(kind, &config, y0);
        let mut counters = Counters::default();
        let mut previous = y0;
        for (step, input) in inputs.into_iter().enumerate() {
            let y = match input {
                Input::Value(y) => y,
                Input::Repeat => previous,
                Input::AtReference => model.reference(),
                Input::AtThreshold => model.at_threshold(epsilon),
                Input::JustAboveThreshold => model.at_threshold(epsilon).next_up(),
            };
            previous = y;
            let record = controller.decide(y);
            let expected = expected_record(&mut model, kind, epsilon, step as u64, y, &mut counters);
            assert_same_record(&record, &expected)?;
            prop_assert_eq!(controller.counters(), counters);
            prop_assert!(same(controller.reference(), model.reference()));

            // The record survives its JSON line bit for bit, NaN and infinities included
            // (serde_json parses floats exactly with its `float_roundtrip` feature, which this
            // workspace turns on for checkpoints).
            let line = serde_json::to_string(&record).unwrap();
            let back: StepRecord = serde_json::from_str(&line).unwrap();
            assert_same_record(&back, &record)?;
        }
    }
}

#[test]
fn a_measurement_exactly_on_the_threshold_is_accepted_and_one_ulp_above_is_not() {
    // Dyadic numbers: ŷ + ε and ν = y − ŷ are exact.
    for (kind, epsilon, accepted, rejected) in [
        (SignalKind::Probe, 0.5, 1.5, 1.5_f64.next_up()),
        (
            SignalKind::GradientAgreement,
            0.25,
            0.75,
            0.75_f64.next_down(),
        ),
    ] {
        let y0 = 1.0;
        let config = ControllerConfig::default()
            .with_signal(kind)
            .with_epsilon(epsilon);
        let mut controller = Controller::from_config(&config, y0).unwrap();
        let record = controller.decide(rejected);
        assert!(!record.decision.is_accepted(), "{kind:?}: {record:?}");
        assert_eq!(record.reference_after, y0, "a rejection leaves ŷ");
        let record = controller.decide(accepted);
        assert!(record.decision.is_accepted(), "{kind:?}: {record:?}");
        assert_eq!(record.innovation, epsilon);
    }
}

#[test]
fn spike_scores_are_one_sided_and_measured_in_standard_deviations() {
    // History 1, 3, 1, 3, 1, 3 (six values; the initial one first): mean 2, σ = 1 exactly.
    let config = ControllerConfig::default()
        .with_signal(SignalKind::LossSpike)
        .with_spike_window(6)
        .with_epsilon(3.0);
    let mut controller = Controller::from_config(&config, 1.0).unwrap();
    for y in [3.0, 1.0, 3.0, 1.0, 3.0] {
        assert!(controller.decide(y).decision.is_accepted());
    }
    assert_eq!(controller.reference(), 2.0);
    let (nu, _) = controller.evaluate(6.0);
    assert_eq!(nu, 4.0, "(6 − 2) / σ with σ = 1");
    let (nu, _) = controller.evaluate(-2.0);
    assert_eq!(
        nu, -4.0,
        "a drop is a negative score, accepted: the signal is one-sided"
    );
    assert!(controller.evaluate(-2.0).1.is_accepted());
    // σ = 2: history 0, 4, 0, 4, 0, 4 distinguishes σ from σ² (4).
    let mut controller = Controller::from_config(&config, 0.0).unwrap();
    for y in [4.0, 0.0, 4.0, 0.0, 4.0] {
        controller.decide(y);
    }
    assert_eq!(controller.evaluate(10.0).0, 4.0, "(10 − 2) / 2");
}
