//! Character corpora and their windows: tokenization, shifting, held-out probe, errors.

mod common;

use std::collections::HashSet;
use std::fs;

use common::cpu;
use stab_models::DataError;
use stab_models::data::{CharCorpus, CharDataset, SYNTHETIC_PHRASE};

#[test]
fn synthetic_corpus_vocabulary_is_the_distinct_characters_of_the_phrase() {
    let corpus = CharCorpus::synthetic();
    let distinct: HashSet<char> = SYNTHETIC_PHRASE.chars().collect();
    assert_eq!(corpus.vocab_size(), distinct.len());
    let head = corpus.decode(&corpus.tokens()[..SYNTHETIC_PHRASE.len()]);
    assert_eq!(head, SYNTHETIC_PHRASE);
}

#[test]
fn targets_are_the_inputs_shifted_by_one_character() {
    let corpus = CharCorpus::from_text("t", &"abcdefghij".repeat(20));
    let data = CharDataset::new(corpus, 8, 2).unwrap();
    let batch = data.train_batch(&[3, 0], &cpu()).unwrap();
    let inputs = batch.inputs.into_data().iter::<i64>().collect::<Vec<_>>();
    let targets = batch.targets.into_data().iter::<i64>().collect::<Vec<_>>();
    assert_eq!(inputs[1..8], targets[..7]);
    assert_eq!(data.corpus().decode(&[inputs[0] as u32]), "d");
    assert_eq!(data.corpus().decode(&[targets[7] as u32]), "b");
}

#[test]
fn probe_windows_lie_in_a_tail_no_training_window_reaches() {
    let corpus = CharCorpus::synthetic();
    let len = corpus.len();
    let data = CharDataset::new(corpus, 64, 16).unwrap();
    let probe = data.probe_range();
    assert_eq!(probe.len(), 16 * 65);
    assert_eq!(probe.end, len);
    // The last training window ends just before the probe tail.
    let last = data.train_len() - 1;
    assert_eq!(last + 64, probe.start - 1);
    assert!(matches!(
        data.train_batch(&[data.train_len()], &cpu()),
        Err(DataError::IndexOutOfRange { .. })
    ));
    assert_eq!(data.probe_batch(&cpu()).unwrap().inputs.dims(), [16, 64]);
}

#[test]
fn file_too_short_for_one_sequence_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.txt");
    fs::write(&path, "hello world").unwrap();
    let corpus = CharCorpus::from_file(&path).unwrap();
    let err = CharDataset::new(corpus, 64, 16).unwrap_err();
    match &err {
        DataError::CorpusTooShort { len, needed, .. } => assert_eq!((*len, *needed), (11, 65 * 17)),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(err.to_string().contains("tiny.txt"), "{err}");
}

#[test]
fn a_utf8_text_file_is_a_second_corpus_and_invalid_utf8_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.txt");
    fs::write(&good, "Grüße, naïve café! ".repeat(100)).unwrap();
    let corpus = CharCorpus::from_file(&good).unwrap();
    assert!(corpus.vocab().contains(&'ü'));
    assert!(CharDataset::new(corpus, 32, 4).is_ok());
    let bad = dir.path().join("bad.txt");
    fs::write(&bad, [b'a', b'b', 0xff, b'c']).unwrap();
    assert!(matches!(
        CharCorpus::from_file(&bad),
        Err(DataError::NotUtf8 { offset: 2, .. })
    ));
}
