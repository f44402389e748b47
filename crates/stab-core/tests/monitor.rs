//! Each [`SafetyViolation`] the monitor knows, shown to fire on a record that breaks it — and not
//! on the same record made lawful — so that no check of the monitor is dead or switched off
//! unnoticed.

use stab_core::{
    Action, Decision, InnovationKind, RejectionReason, SafetyMonitor, SafetyViolation, StepRecord,
};

/// A lawful accepted record of the probe signal: ŷ = 1, y = 1.2 ≤ ŷ + ε (ε = 0.5), new ŷ = 1.02.
fn accepted() -> StepRecord {
    StepRecord {
        step: 7,
        signal: "probe".to_owned(),
        innovation_kind: InnovationKind::ReferenceDifference,
        measurement: 1.2,
        reference: 1.0,
        reference_after: 1.02,
        innovation: 0.2,
        threshold: 0.5,
        decision: Decision::Accepted,
        consecutive_rejections: 0,
        action: Action::Commit,
        rung: None,
    }
}

/// A lawful rejected record: ν = 3 > ε, ŷ unchanged.
fn rejected() -> StepRecord {
    StepRecord {
        measurement: 4.0,
        reference_after: 1.0,
        innovation: 3.0,
        decision: Decision::Rejected {
            reason: RejectionReason::InnovationAboveThreshold {
                innovation: 3.0,
                threshold: 0.5,
            },
        },
        consecutive_rejections: 1,
        action: Action::Restore,
        ..accepted()
    }
}

/// Checks `record` on a fresh monitor started at y(θ₀) = 1.
fn check(record: &StepRecord) -> Result<(), SafetyViolation> {
    SafetyMonitor::new(1.0).check_decision(record)
}

#[test]
fn lawful_records_pass() {
    assert_eq!(check(&accepted()), Ok(()));
    assert_eq!(check(&rejected()), Ok(()));
    let mut monitor = SafetyMonitor::new(1.0);
    assert_eq!(monitor.check_decision(&accepted()), Ok(()));
    assert_eq!(monitor.running_max(), 1.2);
}

#[test]
fn an_accepted_non_finite_measurement_or_innovation_fires() {
    for (measurement, innovation) in [
        (f64::NAN, 0.2),
        (f64::INFINITY, 0.2),
        (1.2, f64::NAN),
        (1.2, f64::NEG_INFINITY),
    ] {
        let record = StepRecord {
            measurement,
            innovation,
            ..accepted()
        };
        assert!(
            matches!(
                check(&record),
                Err(SafetyViolation::AcceptedNonFinite { step: 7, .. })
            ),
            "y = {measurement}, ν = {innovation}: {:?}",
            check(&record)
        );
    }
}

#[test]
fn an_accepted_innovation_above_the_threshold_fires() {
    let record = StepRecord {
        innovation: 0.5_f64.next_up(),
        ..accepted()
    };
    let err = check(&record).unwrap_err();
    assert!(
        matches!(err, SafetyViolation::AcceptedAboveThreshold { step: 7, threshold, .. } if threshold == 0.5),
        "{err}"
    );
    let on_the_threshold = StepRecord {
        innovation: 0.5,
        ..accepted()
    };
    assert_eq!(check(&on_the_threshold), Ok(()), "ν = ε is lawful");
}

#[test]
fn theorem_7_3_fires_when_y_exceeds_the_reference_by_more_than_epsilon() {
    // The innovation claims 0.2 but y − ŷ = 0.6 > ε: a signal that under-reports.
    let record = StepRecord {
        measurement: 1.6,
        reference_after: 1.06,
        ..accepted()
    };
    let err = check(&record).unwrap_err();
    assert!(
        matches!(err, SafetyViolation::BoundedDeviation { step: 7, measurement, reference, epsilon }
            if measurement == 1.6 && reference == 1.0 && epsilon == 0.5),
        "{err}"
    );
    assert!(err.to_string().contains("Theorem 7.3"), "{err}");
    // Exactly ŷ + ε is lawful (1.5 − 1.0 = 0.5 exactly).
    let boundary = StepRecord {
        measurement: 1.5,
        reference_after: 1.05,
        ..accepted()
    };
    assert_eq!(check(&boundary), Ok(()));
}

#[test]
fn score_signals_are_not_held_to_theorem_7_3() {
    // A z-score's y and ŷ are not comparable: the same numbers are lawful for a score signal.
    let record = StepRecord {
        measurement: 1.6,
        reference_after: 1.06,
        innovation_kind: InnovationKind::Score,
        ..accepted()
    };
    assert_eq!(check(&record), Ok(()));
}

#[test]
fn the_envelope_fires_when_y_exceeds_the_running_max_by_more_than_epsilon() {
    // y − ŷ = 0.4 ≤ ε, but ŷ = 5 was never accepted: y = 5.4 > max (1) + ε.
    let record = StepRecord {
        measurement: 5.4,
        reference: 5.0,
        reference_after: 5.04,
        innovation: 0.4,
        ..accepted()
    };
    let err = check(&record).unwrap_err();
    assert!(
        matches!(err, SafetyViolation::EnvelopeStep { step: 7, running_max, .. } if running_max == 1.0),
        "{err}"
    );
    assert!(err.to_string().contains("Proposition 7.5"), "{err}");
    // The same step from a monitor whose running max is 5 is lawful.
    let mut monitor = SafetyMonitor::new(5.0);
    assert_eq!(monitor.check_decision(&record), Ok(()));
}

#[test]
fn a_reference_outside_the_accepted_hull_fires() {
    for reference_after in [0.5, 1.3, f64::NAN] {
        let record = StepRecord {
            reference_after,
            ..accepted()
        };
        let err = check(&record).unwrap_err();
        assert!(
            matches!(err, SafetyViolation::ReferenceOutsideHull { step: 7, min, max, .. } if min == 1.0 && max == 1.2),
            "ŷ' = {reference_after}: {err}"
        );
    }
    // The hull's ends are inside it.
    for reference_after in [1.0, 1.2] {
        let record = StepRecord {
            reference_after,
            ..accepted()
        };
        assert_eq!(check(&record), Ok(()), "ŷ' = {reference_after}");
    }
}

#[test]
fn a_reference_moved_by_a_rejection_fires_even_by_one_ulp_or_a_sign_of_zero() {
    for (reference, reference_after) in [(1.0, 1.0_f64.next_up()), (0.0, -0.0), (1.0, f64::NAN)] {
        let record = StepRecord {
            reference,
            reference_after,
            ..rejected()
        };
        let err = check(&record).unwrap_err();
        assert!(
            matches!(
                err,
                SafetyViolation::ReferenceMovedOnRejection { step: 7, .. }
            ),
            "{reference} → {reference_after}: {err}"
        );
    }
}

#[test]
fn an_inexact_restore_fires_and_an_exact_one_does_not() {
    let monitor = SafetyMonitor::new(1.0);
    assert_eq!(monitor.check_restore(3, 0xdead_beef, 0xdead_beef), Ok(()));
    let err = monitor
        .check_restore(3, 0xdead_beef, 0xdead_beee)
        .unwrap_err();
    assert_eq!(
        err,
        SafetyViolation::InexactRestore {
            step: 3,
            expected: 0xdead_beef,
            actual: 0xdead_beee
        }
    );
    assert!(err.to_string().contains("Proposition 7.4"), "{err}");
}

#[test]
fn the_running_max_and_min_follow_accepted_measurements_only() {
    let mut monitor = SafetyMonitor::new(1.0);
    // A rejected 4.0 does not raise the max: an accepted 1.4 (ŷ = 1) is then within max + ε.
    assert_eq!(monitor.check_decision(&rejected()), Ok(()));
    assert_eq!(monitor.running_max(), 1.0);
    let low = StepRecord {
        measurement: 0.6,
        innovation: -0.4,
        reference_after: 0.96,
        ..accepted()
    };
    assert_eq!(monitor.check_decision(&low), Ok(()));
    // The min is now 0.6: a ŷ' of 0.7 is inside the hull, 0.5 is not.
    let inside = StepRecord {
        measurement: 1.0,
        reference: 0.96,
        innovation: 0.04,
        reference_after: 0.7,
        ..accepted()
    };
    assert_eq!(monitor.clone().check_decision(&inside), Ok(()));
    let outside = StepRecord {
        reference_after: 0.5,
        ..inside
    };
    assert!(matches!(
        monitor.check_decision(&outside),
        Err(SafetyViolation::ReferenceOutsideHull { .. })
    ));
}

#[test]
fn the_envelope_allows_the_rounding_of_a_sum_the_controller_never_formed() {
    // ŷ = max = −8e-17, ε = 1, y = 1: the controller's y − ŷ = 1 + 8e-17 rounds to 1 = ε, a
    // lawful acceptance; but max + ε = 1 − 8e-17 rounds to 1 − 2⁻⁵³ < y. Without the rounding
    // allowance the monitor would abort this run.
    let y0 = -8e-17;
    assert_eq!(1.0 - y0, 1.0);
    assert!(y0 + 1.0 < 1.0);
    let record = StepRecord {
        measurement: 1.0,
        reference: y0,
        reference_after: 0.1,
        innovation: 1.0 - y0,
        threshold: 1.0,
        ..accepted()
    };
    assert_eq!(SafetyMonitor::new(y0).check_decision(&record), Ok(()));
    // The allowance is a few ulps, not a licence: one more ulp of y past ŷ + ε still fires.
    let beyond = StepRecord {
        measurement: 1.0_f64.next_up().next_up(),
        innovation: 1.0,
        ..record
    };
    assert!(matches!(
        SafetyMonitor::new(y0).check_decision(&beyond),
        Err(SafetyViolation::BoundedDeviation { .. })
    ));
}

#[test]
fn the_envelope_allowance_is_exactly_eight_ulps_of_the_magnitudes_involved() {
    // max = y(θ₀) = 0.25, ŷ = 0.5, ε = 1: y = 1.25 + 24 ulp sits exactly on
    // max + ε + 8 ulp·(|y| + |ŷ| + |max| + ε); one ulp more is outside the envelope.
    let y = 1.25 + 24.0 * f64::EPSILON;
    let allowance = 8.0 * f64::EPSILON * (y.abs() + 0.5 + 0.25 + 1.0);
    assert_eq!(0.25 + 1.0 + allowance, y, "premise: y is on the boundary");
    let on = StepRecord {
        measurement: y,
        reference: 0.5,
        reference_after: 0.5,
        innovation: y - 0.5,
        threshold: 1.0,
        ..accepted()
    };
    assert_eq!(SafetyMonitor::new(0.25).check_decision(&on), Ok(()));
    let beyond = StepRecord {
        measurement: y.next_up(),
        innovation: y.next_up() - 0.5,
        ..on
    };
    assert!(matches!(
        SafetyMonitor::new(0.25).check_decision(&beyond),
        Err(SafetyViolation::EnvelopeStep { .. })
    ));
}
