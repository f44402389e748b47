//! Nothing in a checkpoint directory is lost on any failure path (issue 20):
//!
//! - a write stopped at every one of its stages (a crash, a full disk, an I/O error, a file torn
//!   half-way) leaves the newest good checkpoint readable under its final name, for a write of a
//!   new step, for a rewrite of an existing step, and for the removal of an old one;
//! - a bit flip in any file of a checkpoint makes `latest` skip it, say why, and fall back;
//! - a new run refuses a directory with checkpoints and removes nothing; a resumed run never
//!   removes the newer checkpoints it skipped; only an explicit request discards them;
//! - `latest` says why when nothing verifies, and a failing read is an error, not a skip;
//! - a resume with another configuration is refused, and nothing in the directory changes.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::checkpointing::*;
use common::{Net, adamw, probe};
use stab_burn::checkpoint::{self, Checkpoint};
use stab_burn::{CheckpointError, CheckpointPolicy, Checkpointer, Guard, StoreKind, WriteStage};

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn policy(keep: usize) -> CheckpointPolicy {
    CheckpointPolicy {
        every_accepted: 1,
        keep,
        on_recovery: true,
    }
}

/// A guard and model after `steps` steps of the fixture run.
fn trained(steps: u64) -> (Guard<Net>, Net) {
    let (mut guard, mut model) = fresh(StoreKind::Device);
    for t in 0..steps {
        model = step_report(&mut guard, model, t).0;
    }
    (guard, model)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Every file under `dir` with its bytes, sorted: to prove that nothing changed.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path.strip_prefix(dir).unwrap().to_path_buf(), bytes));
            }
        }
    }
    out.sort();
    out
}

fn newest(dir: &Path) -> Checkpoint {
    checkpoint::latest(dir).unwrap().expect("a checkpoint")
}

/// The stages of one write by a checkpointer built by `make` on a copy of `base`, as text.
fn stages_of(base: &Path, scratch_dir: &Path, write: &dyn Fn(&mut Checkpointer)) -> Vec<String> {
    let dir = scratch_dir.join("dry-run");
    copy_dir(base, &dir);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let mut checkpointer = Checkpointer::resuming(&dir, policy(1), &newest(&dir))
        .unwrap()
        .with_write_hook(move |stage| {
            record.lock().unwrap().push(format!("{stage:?}"));
            Ok(())
        });
    write(&mut checkpointer);
    let _ = std::fs::remove_dir_all(&dir);
    seen.lock().unwrap().clone()
}

/// How a stage fails.
#[derive(Debug, Clone, Copy)]
enum Failure {
    /// The process dies before the stage (the disk keeps what earlier stages made durable).
    Crash,
    /// The stage fails with an OS error; a file being written is left torn (half written).
    Os(i32),
}

/// For every stage of the write `write` does (with keep = 1, so that the old checkpoint is
/// removed), and every failure: stops the write there on a fresh copy of `base`, then checks
/// that `latest` returns a good checkpoint, the new one exactly when its rename has happened;
/// and that the next write, by a checkpointer of the resumed run, succeeds and cleans up.
fn every_stage_is_crash_safe(
    name: &str,
    base: &Path,
    (old_step, new_step): (u64, u64),
    write: &dyn Fn(&mut Checkpointer) -> Result<u64, CheckpointError>,
) {
    let root = scratch(name);
    let stages = stages_of(base, &root, &|c| {
        write(c).unwrap();
    });
    let rename = stages
        .iter()
        .position(|s| s.starts_with("Rename {"))
        .expect("a rename stage");
    assert!(
        stages.iter().any(|s| s.starts_with("RenameForRemoval")),
        "keep = 1 removes the old checkpoint: {stages:#?}"
    );
    let mut trials = 0;
    for (k, stage_name) in stages.iter().enumerate() {
        for failure in [Failure::Crash, Failure::Os(ENOSPC), Failure::Os(EIO)] {
            let dir = root.join(format!("stage-{k}-{failure:?}"));
            copy_dir(base, &dir);
            let mut seen = 0usize;
            let mut checkpointer = Checkpointer::resuming(&dir, policy(1), &newest(&dir))
                .unwrap()
                .with_write_hook(move |stage| {
                    let index = seen;
                    seen += 1;
                    if index != k {
                        return Ok(());
                    }
                    match failure {
                        Failure::Crash => Err(std::io::Error::other("crash")),
                        Failure::Os(code) => {
                            if let WriteStage::WriteFile(path) = stage {
                                std::fs::write(path, b"torn").unwrap();
                            }
                            Err(std::io::Error::from_raw_os_error(code))
                        }
                    }
                });
            let error = write(&mut checkpointer).expect_err("the write stops at the stage");
            let CheckpointError::Io {
                source, operation, ..
            } = &error
            else {
                panic!("stage {k}: {error}");
            };
            if let Failure::Os(code) = failure {
                assert_eq!(source.raw_os_error(), Some(code), "{error}");
            }
            // The error names what the stage was doing.
            let expected = match stage_name.split([' ', '(']).next().unwrap_or_default() {
                "CreateTemporary" => "create directory",
                "WriteFile" => "write",
                "FsyncFile" => "fsync",
                "FsyncTemporary" | "FsyncParent" => "fsync directory",
                "Rename" | "RenameForRemoval" => "rename",
                "Delete" => "remove",
                other => panic!("unknown stage {other}"),
            };
            assert_eq!(*operation, expected, "stage {k} ({stage_name})");
            let found = checkpoint::latest(&dir)
                .unwrap_or_else(|e| panic!("stage {k} ({stage_name}), {failure:?}: {e}"));
            let found = found.unwrap_or_else(|| panic!("stage {k}: no checkpoint left"));
            let expected = if k > rename { new_step } else { old_step };
            assert_eq!(
                found.step(),
                expected,
                "stopped before stage {k} ({stage_name}), {failure:?}"
            );
            assert!(found.skipped().is_empty(), "{:?}", found.skipped());

            // The run goes on: its next write succeeds and leaves no temporary behind.
            let mut next = Checkpointer::resuming(&dir, policy(1), &found).unwrap();
            write(&mut next).unwrap();
            assert!(
                entry_names(&dir).iter().all(|n| !n.starts_with(".tmp-")),
                "{:?}",
                entry_names(&dir)
            );
            assert_eq!(newest(&dir).step(), new_step);
            let _ = std::fs::remove_dir_all(&dir);
            trials += 1;
        }
    }
    eprintln!(
        "{name}: {} stages × 3 failures = {trials} trials",
        stages.len()
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn every_stage_of_a_write_and_a_removal_leaves_the_newest_good_checkpoint() {
    let root = scratch("stages-base");
    let base = root.join("base");
    let (guard, model) = trained(5);
    Checkpointer::new(&base, policy(2))
        .unwrap()
        .write(&guard, &model, &Position { next_batch: 5 })
        .unwrap();
    let (mut guard, mut model) = (guard, model);
    for t in 5..8 {
        model = step_report(&mut guard, model, t).0;
    }
    every_stage_is_crash_safe("stages-new-step", &base, (5, 8), &|c| {
        c.write(&guard, &model, &Position { next_batch: 8 })
            .map(|info| info.step)
    });
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn every_stage_of_a_rewrite_of_the_same_step_leaves_a_good_checkpoint_of_it() {
    let root = scratch("rewrite-base");
    let base = root.join("base");
    let (guard, model) = trained(6);
    let first = Checkpointer::new(&base, policy(2))
        .unwrap()
        .write(&guard, &model, &Position { next_batch: 6 })
        .unwrap();
    assert!(first.path.ends_with("step-000000000006"));
    every_stage_is_crash_safe("stages-rewrite", &base, (6, 6), &|c| {
        c.write(&guard, &model, &Position { next_batch: 6 })
            .map(|info| info.step)
    });

    // Without failures: the rewrite is the next generation, and the older one goes (keep = 1).
    let dir = root.join("plain");
    copy_dir(&base, &dir);
    let mut checkpointer = Checkpointer::resuming(&dir, policy(1), &newest(&dir)).unwrap();
    let info = checkpointer
        .write(&guard, &model, &Position { next_batch: 6 })
        .unwrap();
    assert!(info.path.ends_with("step-000000000006.1"), "{info:?}");
    assert_eq!(entry_names(&dir), ["step-000000000006.1"]);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_bit_flip_in_any_file_is_skipped_with_its_reason_and_the_older_checkpoint_resumes() {
    let root = scratch("bit-flips");
    let base = root.join("base");
    let (mut guard, mut model) = trained(4);
    let mut checkpointer = Checkpointer::new(&base, policy(2)).unwrap();
    checkpointer
        .write(&guard, &model, &Position { next_batch: 4 })
        .unwrap();
    for t in 4..7 {
        model = step_report(&mut guard, model, t).0;
    }
    let newer = checkpointer
        .write(&guard, &model, &Position { next_batch: 7 })
        .unwrap();
    let files = entry_names(&newer.path);
    assert!(files.len() >= 6, "{files:?}");
    for file in &files {
        let dir = root.join(format!("flip-{file}"));
        copy_dir(&base, &dir);
        let target = dir.join("step-000000000007").join(file);
        let mut bytes = std::fs::read(&target).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x08;
        std::fs::write(&target, bytes).unwrap();
        let before = snapshot(&dir);

        let found = newest(&dir);
        assert_eq!(found.step(), 4, "{file}");
        assert_eq!(found.skipped().len(), 1, "{file}");
        let reason = &found.skipped()[0];
        assert!(reason.is_damage(), "{file}: {reason}");
        match reason {
            // A flipped manifest no longer parses, or names another file, length, checksum,
            // step or version.
            CheckpointError::Corrupt { path, .. }
            | CheckpointError::Truncated { path, .. }
            | CheckpointError::MissingFile { path }
            | CheckpointError::Version { path, .. }
            | CheckpointError::Checksum { path, .. }
                if file == "manifest.json" =>
            {
                assert!(path.starts_with(dir.join("step-000000000007")), "{reason}");
            }
            CheckpointError::Checksum { path, .. } => assert!(path.ends_with(file)),
            other => panic!("{file}: {other}"),
        }
        // The older checkpoint resumes; nothing was removed or changed by reading.
        let device = common::training_device();
        let resumed = Guard::builder(config(StoreKind::Device))
            .probe(probe(&device))
            .resume::<Position>(&found, Net::new(&device), adamw())
            .unwrap();
        assert_eq!(resumed.extra.next_batch, 4);
        assert_eq!(snapshot(&dir), before, "{file}");
        let _ = std::fs::remove_dir_all(&dir);
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Writes checkpoints of steps 3 and 6 into `dir` with a checkpointer of a new run.
fn two_checkpoints(dir: &Path) -> (Guard<Net>, Net) {
    let (mut guard, mut model) = trained(3);
    let mut checkpointer = Checkpointer::new(dir, policy(5)).unwrap();
    checkpointer
        .write(&guard, &model, &Position { next_batch: 3 })
        .unwrap();
    for t in 3..6 {
        model = step_report(&mut guard, model, t).0;
    }
    checkpointer
        .write(&guard, &model, &Position { next_batch: 6 })
        .unwrap();
    (guard, model)
}

#[test]
fn a_fresh_start_refuses_a_directory_with_checkpoints_and_removes_nothing() {
    let dir = scratch("fresh-refused");
    let (guard, model) = two_checkpoints(&dir);
    let before = snapshot(&dir);
    let error = Checkpointer::new(&dir, policy(1)).unwrap_err();
    match &error {
        CheckpointError::Occupied { dir: d, found } => {
            assert_eq!(d, &dir);
            assert_eq!(
                found,
                &[dir.join("step-000000000006"), dir.join("step-000000000003")]
            );
        }
        other => panic!("{other}"),
    }
    let message = error.to_string();
    assert!(
        message.contains("step-000000000006") && message.contains("resume"),
        "{message}"
    );
    // A checkpointer resuming from a checkpoint elsewhere is a new run here, refused too.
    let elsewhere = scratch("fresh-refused-elsewhere");
    two_checkpoints(&elsewhere);
    let error = Checkpointer::resuming(&dir, policy(1), &newest(&elsewhere)).unwrap_err();
    assert!(matches!(error, CheckpointError::Occupied { .. }), "{error}");
    assert_eq!(snapshot(&dir), before);

    // A low-level write of a step that exists goes beside it; nothing is removed.
    guard
        .checkpoint_to(&model, &dir, &Position { next_batch: 6 })
        .unwrap();
    assert_eq!(
        entry_names(&dir),
        [
            "step-000000000003",
            "step-000000000006",
            "step-000000000006.1"
        ]
    );

    // Only an explicit request discards them.
    let mut discarding = Checkpointer::discarding_existing(&dir, policy(1)).unwrap();
    assert!(entry_names(&dir).is_empty(), "{:?}", entry_names(&dir));
    assert!(discarding.owned().is_empty());
    discarding
        .write(&guard, &model, &Position { next_batch: 6 })
        .unwrap();
    assert_eq!(entry_names(&dir), ["step-000000000006"]);
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&elsewhere);
}

#[test]
fn a_resumed_run_keeps_the_newer_checkpoints_it_skipped() {
    let dir = scratch("resume-keeps-newer");
    let (_, _) = two_checkpoints(&dir);
    // The newest is damaged: the run resumes from step 3.
    let damaged = dir.join("step-000000000006").join("protocol.json");
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[0] ^= 0x01;
    std::fs::write(&damaged, bytes).unwrap();
    let damaged_before = snapshot(&dir.join("step-000000000006"));
    let found = newest(&dir);
    assert_eq!(found.step(), 3);
    assert_eq!(found.skipped().len(), 1);

    let device = common::training_device();
    let resumed = Guard::builder(config(StoreKind::Device))
        .probe(probe(&device))
        .resume::<Position>(&found, Net::new(&device), adamw())
        .unwrap();
    let (mut guard, mut model) = (resumed.guard, resumed.model);
    let mut checkpointer = Checkpointer::resuming(&dir, policy(1), &found).unwrap();
    assert_eq!(checkpointer.owned(), [dir.join("step-000000000003")]);
    for t in 3..8 {
        let (next, report) = step_report(&mut guard, model, t);
        model = next;
        checkpointer
            .after_step(&guard, &model, &report, &Position { next_batch: t + 1 })
            .unwrap();
    }
    // Its own checkpoints rotate (keep = 1); the damaged one it never wrote is untouched, and
    // its own checkpoint of step 6 went beside it.
    assert_eq!(
        entry_names(&dir),
        ["step-000000000006", "step-000000000008"]
    );
    assert_eq!(snapshot(&dir.join("step-000000000006")), damaged_before);
    let found = newest(&dir);
    assert_eq!(found.step(), 8);
    assert!(found.skipped().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn when_nothing_verifies_latest_says_why_for_each_and_a_fresh_start_is_refused() {
    let dir = scratch("nothing-verifies");
    two_checkpoints(&dir);
    std::fs::remove_file(dir.join("step-000000000006").join("layout.json")).unwrap();
    let manifest = dir.join("step-000000000003").join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();
    let before = snapshot(&dir);

    let error = checkpoint::latest(&dir).unwrap_err();
    match &error {
        CheckpointError::NothingVerifies { dir: d, skipped } => {
            assert_eq!(d, &dir);
            assert_eq!(skipped.len(), 2);
            assert!(
                matches!(&skipped[0], CheckpointError::MissingFile { path } if path.ends_with("layout.json")),
                "{}",
                skipped[0]
            );
            assert!(
                matches!(&skipped[1], CheckpointError::Corrupt { path, .. } if path.ends_with("manifest.json")),
                "{}",
                skipped[1]
            );
        }
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains("layout.json"), "{error}");
    assert!(matches!(
        Checkpointer::new(&dir, policy(1)).unwrap_err(),
        CheckpointError::Occupied { .. }
    ));
    assert_eq!(snapshot(&dir), before);
    // A directory without checkpoints (or none at all) is a new run's.
    assert!(checkpoint::latest(&dir.join("missing")).unwrap().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_failing_read_is_an_error_not_a_skip() {
    let dir = scratch("read-error");
    two_checkpoints(&dir);
    // A file that cannot be read as a file (an I/O error other than its absence: EISDIR here,
    // as a transient EIO would be on a failing disk).
    let file = dir.join("step-000000000006").join("state-0.model.bpk");
    std::fs::remove_file(&file).unwrap();
    std::fs::create_dir(&file).unwrap();
    let error = checkpoint::latest(&dir).unwrap_err();
    assert!(
        matches!(&error, CheckpointError::Io { path, operation: "read", .. } if path == &file),
        "{error}"
    );
    assert!(!error.is_damage());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_removed_by_hand_is_not_an_error_and_paths_are_compared_canonically() {
    let dir = scratch("removed-by-hand");
    let (mut guard, mut model) = two_checkpoints(&dir);
    // The resumed run's directory, spelled differently: still the same directory.
    let spelled = dir.join("sub").join("..");
    std::fs::create_dir(dir.join("sub")).unwrap();
    let mut checkpointer = Checkpointer::resuming(&spelled, policy(2), &newest(&dir)).unwrap();
    assert_eq!(checkpointer.owned().len(), 2);
    let debug = format!("{checkpointer:?}");
    assert!(
        debug.starts_with("Checkpointer") && debug.contains("owned") && debug.contains("keep: 2"),
        "{debug}"
    );
    // The oldest owned checkpoint is deleted by hand: rotating it away is not an error.
    std::fs::remove_dir_all(dir.join("step-000000000003")).unwrap();
    model = step_report(&mut guard, model, 6).0;
    checkpointer
        .write(&guard, &model, &Position { next_batch: 7 })
        .unwrap();
    assert_eq!(
        entry_names(&dir),
        ["step-000000000006", "step-000000000007", "sub"]
    );
    assert_eq!(checkpointer.owned().len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_resume_with_another_configuration_is_refused_and_nothing_is_lost() {
    let dir = scratch("other-configuration");
    two_checkpoints(&dir);
    let before = snapshot(&dir);
    let found = newest(&dir);
    let device = common::training_device();
    let error = Guard::builder(config(StoreKind::Device).with_epsilon(0.25))
        .probe(probe(&device))
        .resume::<Position>(&found, Net::new(&device), adamw())
        .unwrap_err();
    assert!(matches!(error, CheckpointError::Protocol { .. }), "{error}");
    // Starting over there by mistake is refused as well; every file is as it was.
    assert!(matches!(
        Checkpointer::new(&dir, policy(1)).unwrap_err(),
        CheckpointError::Occupied { .. }
    ));
    assert_eq!(snapshot(&dir), before);
    // The right configuration still resumes from the newest one.
    let resumed = Guard::builder(config(StoreKind::Device))
        .probe(probe(&device))
        .resume::<Position>(&found, Net::new(&device), adamw())
        .unwrap();
    assert_eq!(resumed.extra.next_batch, 6);
    let _ = std::fs::remove_dir_all(&dir);
}
