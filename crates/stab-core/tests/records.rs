//! Step records as JSON lines: every action, every rejection reason and every non-finite value
//! written and read back unchanged; what an action does to the proposal; observers' errors.

use stab_core::{
    Action, Decision, GateTest, InnovationKind, JsonLinesWriter, RecordCollector, RejectionReason,
    StepObserver, StepRecord,
};

fn record(step: u64, action: Action, decision: Decision, rung: Option<u32>) -> StepRecord {
    StepRecord {
        step,
        signal: "probe".to_owned(),
        innovation_kind: InnovationKind::ReferenceDifference,
        measurement: 2.5,
        reference: 1.25,
        reference_after: 1.25,
        innovation: 1.25,
        threshold: 0.5,
        decision,
        consecutive_rejections: 3,
        action,
        rung,
    }
}

fn rejected(reason: RejectionReason) -> Decision {
    Decision::Rejected { reason }
}

/// Records covering every action, every reason, a rung, and NaN, +∞ and −∞ wherever a record
/// may hold them.
fn all_kinds() -> Vec<StepRecord> {
    let above = rejected(RejectionReason::InnovationAboveThreshold {
        innovation: 1.25,
        threshold: 0.5,
    });
    let mut records = vec![
        record(0, Action::Commit, Decision::Accepted, None),
        record(1, Action::Restore, above, None),
        record(2, Action::Rewind { to_position: 17 }, above, Some(0)),
        record(3, Action::ResetOptimizer, above, Some(2)),
        record(4, Action::Observe, above, None),
        record(5, Action::Stop, above, Some(3)),
        record(
            6,
            Action::Restore,
            rejected(RejectionReason::DriftAlarm {
                statistic: 1.75,
                threshold: 1.5,
                onset: 9,
            }),
            None,
        ),
    ];
    for (i, value) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
        .into_iter()
        .enumerate()
    {
        let step = 7 + 4 * i as u64;
        let mut r = record(
            step,
            Action::Restore,
            rejected(RejectionReason::NonFiniteMeasurement { measurement: value }),
            None,
        );
        (r.measurement, r.innovation) = (value, f64::NAN);
        records.push(r);
        let mut r = record(
            step + 1,
            Action::Restore,
            rejected(RejectionReason::NonFiniteInnovation { innovation: value }),
            None,
        );
        r.innovation = value;
        records.push(r);
        let mut r = record(
            step + 2,
            Action::Skip,
            rejected(RejectionReason::GradientGate {
                norm: value,
                score: value,
                limit: 12.0,
                test: GateTest::NonFinite,
            }),
            None,
        );
        (r.measurement, r.innovation) = (f64::NAN, f64::NAN);
        records.push(r);
        let mut r = record(
            step + 3,
            Action::Restore,
            rejected(RejectionReason::UpdateGate {
                norm: value,
                score: value,
                limit: 10.0,
                test: GateTest::MedianRatio,
            }),
            None,
        );
        r.innovation = -0.25;
        records.push(r);
    }
    records
}

/// The record's floats as bits, NaN normalized, so that `==` compares every bit that matters.
fn bits(record: &StepRecord) -> String {
    let normalized = |v: f64| if v.is_nan() { f64::NAN } else { v }.to_bits();
    let mut r = record.clone();
    for v in [
        &mut r.measurement,
        &mut r.reference,
        &mut r.reference_after,
        &mut r.innovation,
        &mut r.threshold,
    ] {
        *v = f64::from_bits(normalized(*v));
    }
    format!(
        "{r:?} {:?}",
        [record.measurement, record.innovation].map(normalized)
    )
}

#[test]
fn every_kind_of_record_survives_its_json_line() {
    let records = all_kinds();
    let mut writer = JsonLinesWriter::new(Vec::new());
    for r in &records {
        writer.on_step(r).unwrap();
    }
    let text = String::from_utf8(writer.into_inner()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), records.len(), "one line per record:\n{text}");
    for (line, expected) in lines.iter().zip(&records) {
        let back: StepRecord = serde_json::from_str(line).unwrap();
        assert_eq!(bits(&back), bits(expected), "{line}");
    }
    // The non-finite values are named in the line, with their sign.
    assert!(lines[7].contains(r#""measurement":"NaN""#), "{}", lines[7]);
    assert!(
        lines[11].contains(r#""measurement":"inf""#),
        "{}",
        lines[11]
    );
    assert!(
        lines[15].contains(r#""measurement":"-inf""#),
        "{}",
        lines[15]
    );
    assert!(
        lines[2].contains(r#""kind":"rewind","to_position":17"#),
        "{}",
        lines[2]
    );
    assert!(lines[2].contains(r#""rung":0"#), "{}", lines[2]);
    assert!(
        !lines[0].contains("rung"),
        "no rung, no field: {}",
        lines[0]
    );
}

#[test]
fn an_unknown_name_for_a_number_is_refused_with_what_was_found() {
    let line = serde_json::to_string(&all_kinds()[7]).unwrap();
    let bad = line.replace(r#""measurement":"NaN""#, r#""measurement":"nan""#);
    assert_ne!(bad, line);
    let err = serde_json::from_str::<StepRecord>(&bad).unwrap_err();
    assert!(err.to_string().contains(r#"found "nan""#), "{err}");
}

#[test]
fn actions_that_discard_the_proposal_are_exactly_the_recovering_ones() {
    let discarding = [
        Action::Restore,
        Action::Rewind { to_position: 0 },
        Action::ResetOptimizer,
        Action::Stop,
    ];
    let keeping = [
        Action::Commit,
        Action::Skip,
        Action::Observe,
        Action::Unprobed,
        Action::Calibrate,
    ];
    assert!(discarding.iter().all(Action::discards_proposal));
    assert!(!keeping.iter().any(Action::discards_proposal));
}

/// A sink that refuses every write.
struct Full;

impl std::io::Write for Full {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk full"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_sink_names_the_step_whose_record_was_lost() {
    let mut writer = JsonLinesWriter::new(Full);
    let err = writer.on_step(&all_kinds()[3]).unwrap_err();
    assert_eq!(err.step, 3);
    assert!(err.to_string().contains("step 3"), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
}

#[test]
fn the_collector_keeps_every_record_in_order() {
    let mut collector = RecordCollector::default();
    for r in all_kinds() {
        collector.on_step(&r).unwrap();
    }
    let steps: Vec<u64> = collector.records.iter().map(|r| r.step).collect();
    assert_eq!(steps, (0..19).collect::<Vec<_>>());
}
