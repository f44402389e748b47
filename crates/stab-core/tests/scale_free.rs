//! The default acceptance has no unit: multiplying every probe measurement by c > 0 leaves every
//! decision of the step protocol as it was (Issue 19). For c a power of two the scaled run is
//! the plain run in another exponent, bit for bit (ε, ν and ŷ scale exactly); for any other c
//! rounding may differ in the last place, so decisions must agree up to the first decision that
//! is a tie within rounding.

use proptest::prelude::*;
use stab_core::{
    Action, Completion, ControllerConfig, Directive, Mode, PAPER_EPSILON, StepPlan, StepProtocol,
};

/// What one step came to, comparable across scales.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    plan_skipped: bool,
    directive: Option<Directive>,
    action: Action,
    accepted: Option<bool>,
    /// ν and ε of the record (NaN when none).
    innovation: f64,
    threshold: f64,
}

/// Drives `config` in enforce mode over the measurements `ys` (each times `c`), with the
/// gradient and update norms given (unscaled: another quantity), open loop.
fn drive(config: &ControllerConfig, y0: f64, steps: &[(f64, f64, f64)], c: f64) -> Vec<Outcome> {
    let mut p = StepProtocol::new(config, Mode::Enforce, Some(y0 * c))
        .unwrap()
        .with_optimizer_reset(true);
    p.start().unwrap();
    p.complete(Completion::default()).unwrap();
    let mut outcomes = Vec::new();
    for &(y, gradient, update) in steps {
        let plan = p.begin_step(Some(gradient)).unwrap();
        let (plan_skipped, directive) = match plan {
            StepPlan::Skip => (true, None),
            StepPlan::Propose { .. } => (
                false,
                Some(p.decide_with_update(Some(y * c), Some(update)).unwrap()),
            ),
        };
        let done = p.complete(Completion::default()).unwrap();
        let (accepted, innovation, threshold) = done
            .record
            .as_ref()
            .map_or((None, f64::NAN, f64::NAN), |r| {
                (Some(r.decision.is_accepted()), r.innovation, r.threshold)
            });
        outcomes.push(Outcome {
            plan_skipped,
            directive,
            action: done.action,
            accepted,
            innovation,
            threshold,
        });
        if p.exhausted().is_some() {
            break;
        }
    }
    outcomes
}

/// A run: y₀, then (measurement, gradient norm, update norm) per step. Measurements follow a
/// noisy descent with spikes (a few times to 50 times the level), and a NaN now and then.
fn runs() -> impl Strategy<Value = (f64, Vec<(f64, f64, f64)>)> {
    let step = (
        -0.08f64..0.06,
        prop_oneof![8 => Just(1.0), 1 => 2.0f64..50.0, 1 => Just(f64::NAN)],
        0.5f64..2.0,
        prop_oneof![9 => Just(1.0), 1 => 5.0f64..400.0],
        0.8f64..1.25,
        prop_oneof![9 => Just(1.0), 1 => 3.0f64..100.0],
    );
    (0.05f64..30.0, prop::collection::vec(step, 10..120)).prop_map(|(y0, steps)| {
        let mut level = y0;
        let steps = steps
            .into_iter()
            .map(|(drift, spike, g, g_spike, u, u_spike)| {
                level = (level * (1.0 + drift)).max(1e-3);
                (level * spike, g * g_spike, u * u_spike)
            })
            .collect();
        (y0, steps)
    })
}

/// The decisions of a run, without the numbers.
type Decisions = Vec<(bool, Option<Directive>, Action, Option<bool>)>;

fn decisions(outcomes: &[Outcome]) -> Decisions {
    outcomes
        .iter()
        .map(|o| (o.plan_skipped, o.directive.clone(), o.action, o.accepted))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// c = 2^k, k = −20 … 20 (about 1e-6 … 1e6): every decision identical, ν and ε scaled by c
    /// exactly.
    #[test]
    fn powers_of_two_give_identical_decisions((y0, steps) in runs()) {
        let config = ControllerConfig::default();
        let plain = drive(&config, y0, &steps, 1.0);
        for k in -20..=20 {
            let c = 2f64.powi(k);
            let scaled = drive(&config, y0, &steps, c);
            prop_assert_eq!(decisions(&scaled), decisions(&plain), "c = 2^{}", k);
            for (s, p) in scaled.iter().zip(&plain) {
                if p.threshold.is_finite() {
                    prop_assert_eq!(s.threshold, p.threshold * c, "ε scales by c = 2^{}", k);
                }
                if p.innovation.is_finite() {
                    prop_assert_eq!(s.innovation, p.innovation * c, "ν scales by c = 2^{}", k);
                }
            }
        }
    }

    /// Any c in 1e-6 … 1e6: decisions identical up to the first one that is a tie within
    /// rounding (|ν − ε| within a few ulps), after which the runs may part.
    #[test]
    fn any_positive_scale_gives_identical_decisions(
        (y0, steps) in runs(),
        log_c in -6.0f64..6.0,
    ) {
        let c = 10f64.powf(log_c);
        let config = ControllerConfig::default();
        let plain = drive(&config, y0, &steps, 1.0);
        let scaled = drive(&config, y0, &steps, c);
        for (i, (p, s)) in plain.iter().zip(&scaled).enumerate() {
            let tie = (p.innovation - p.threshold).abs()
                <= 1e-9 * (p.innovation.abs() + p.threshold.abs());
            if tie {
                break;
            }
            prop_assert_eq!(
                (p.plan_skipped, &p.directive, p.action, p.accepted),
                (s.plan_skipped, &s.directive, s.action, s.accepted),
                "step {} at c = {}", i, c
            );
        }
    }
}

/// The absolute rule keeps its unit: the same run scaled by 1000 is judged against the same ε,
/// so decisions change (which is why it is not the default).
#[test]
fn an_absolute_epsilon_depends_on_the_unit() {
    let config = ControllerConfig::default().with_epsilon(PAPER_EPSILON);
    let steps: Vec<(f64, f64, f64)> = [1.0, 0.98, 0.97, 1.2, 0.95]
        .into_iter()
        .map(|y| (y, 1.0, 1.0))
        .collect();
    let plain = drive(&config, 1.0, &steps, 1.0);
    let scaled = drive(&config, 1.0, &steps, 1000.0);
    assert!(plain.iter().all(|o| o.accepted == Some(true)), "{plain:?}");
    assert!(
        scaled.iter().any(|o| o.accepted == Some(false)),
        "{scaled:?}"
    );
    assert!(plain.iter().all(|o| o.threshold == PAPER_EPSILON));
}

/// A ten-line reference of the scale-free rule: ε_t recomputed from the whole accepted history
/// at every step (median and MAD by sorting), ŷ as Algorithm 1's EWMA.
struct Reference {
    yhat: f64,
    last: f64,
    initial_scale: f64,
    changes: Vec<f64>,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        v[mid - 1] / 2.0 + v[mid] / 2.0
    }
}

impl Reference {
    fn epsilon(&self) -> f64 {
        let window = &self.changes[self.changes.len().saturating_sub(64)..];
        let warm = window.len() >= 16;
        let spread = if warm {
            let m = median(window);
            let deviations: Vec<f64> = window.iter().map(|c| (c - m).abs()).collect();
            1.482_602_218_505_602 * median(&deviations)
        } else {
            0.0
        };
        // The young and warm floors are both 0.25 by default.
        let relative = 0.25;
        let headroom = (12.0 * spread)
            .max(relative * self.yhat.abs())
            .max(1e-3 * self.initial_scale);
        (self.last - self.yhat).max(0.0) + headroom
    }

    /// Decides on `y`; returns (accepted, ε).
    fn decide(&mut self, y: f64) -> (bool, f64) {
        let epsilon = self.epsilon();
        let accepted = y.is_finite() && y - self.yhat <= epsilon;
        if accepted {
            self.changes.push(y - self.last);
            self.last = y;
            let blended = 0.9 * self.yhat + 0.1 * y;
            self.yhat = blended.clamp(y.min(self.yhat), y.max(self.yhat));
        }
        (accepted, epsilon)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The protocol's scale-free decisions and ε_t (bit for bit) equal the reference's, on runs
    /// long enough to fill the spread's window (gates and ladder off, so that the rule alone
    /// decides).
    #[test]
    fn the_scale_free_rule_matches_its_reference((y0, steps) in runs(), extra in 0usize..90) {
        let mut config = ControllerConfig::default().with_gradient_gate(false);
        config.update_gate.enabled = false;
        config.ladder.enabled = false;
        let steps: Vec<(f64, f64, f64)> = steps.iter().cycle().take(steps.len() + extra).copied().collect();
        let outcomes = drive(&config, y0, &steps, 1.0);
        let mut reference = Reference {
            yhat: y0,
            last: y0,
            initial_scale: y0.abs(),
            changes: Vec::new(),
        };
        prop_assert_eq!(outcomes.len(), steps.len());
        for (i, (o, &(y, _, _))) in outcomes.iter().zip(&steps).enumerate() {
            let (accepted, epsilon) = reference.decide(y);
            prop_assert_eq!(o.accepted, Some(accepted), "step {}", i);
            prop_assert_eq!(o.threshold.to_bits(), epsilon.to_bits(), "step {}: ε", i);
        }
    }
}
