use std::io::Write;

use manta_ml::data::{Dataset, ShardPlan, shard_batches};
use manta_ml::{DataError, DatasetSpec};

use crate::digits;

#[test]
fn digits_load_and_split_stratified_80_20() {
    let data = Dataset::load_csv(&digits().path, 1.0 / 16.0).unwrap();
    assert_eq!((data.len(), data.cols, data.classes), (1797, 64, 10));
    assert!(data.features.iter().all(|v| (0.0..=1.0).contains(v)));
    let (train, test) = data.stratified_split(0.2, 0).unwrap();
    assert_eq!((train.len(), test.len()), (1437, 360));
    for c in 0..10u32 {
        let all = data.labels.iter().filter(|&&l| l == c).count() as f64;
        let t = test.labels.iter().filter(|&&l| l == c).count() as f64;
        assert!(
            (t - all * 0.2).abs() <= 1.0,
            "class {c}: {t} of {all} in test"
        );
    }
    // Same seed, same split; another seed, another one.
    let (train2, _) = data.stratified_split(0.2, 0).unwrap();
    assert_eq!(train, train2);
    let (train3, _) = data.stratified_split(0.2, 1).unwrap();
    assert_ne!(train.labels, train3.labels);
    // No row is in both parts: the multiset of rows is preserved.
    let mut rows: Vec<Vec<u32>> = (0..train.len())
        .map(|i| train.row(i).iter().map(|v| (v * 16.0) as u32).collect())
        .chain((0..test.len()).map(|i| test.row(i).iter().map(|v| (v * 16.0) as u32).collect()))
        .collect();
    let mut orig: Vec<Vec<u32>> = (0..data.len())
        .map(|i| data.row(i).iter().map(|v| (v * 16.0) as u32).collect())
        .collect();
    rows.sort();
    orig.sort();
    assert_eq!(rows, orig);
}

#[test]
fn plain_csv_reads_like_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("small.csv");
    std::fs::write(&p, "1,2,0\n3,4,1\n\n5,6,1\n").unwrap();
    let d = Dataset::load_csv(&p, 0.5).unwrap();
    assert_eq!(d.features, vec![0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
    assert_eq!(d.labels, vec![0, 1, 1]);
}

fn parse_err(text: &str) -> DataError {
    Dataset::parse_csv(text, "bad.csv", 1.0).unwrap_err()
}

#[test]
fn malformed_files_name_file_line_and_problem() {
    let e = parse_err("1,2,0\n3,4\n");
    assert_eq!(
        e.to_string(),
        "bad.csv:2: expected 3 columns like the first row, found 2"
    );
    let e = parse_err("1,2,0\n3,x,1\n");
    assert_eq!(e.to_string(), "bad.csv:2: column 2: `x` is not a number");
    let e = parse_err("1,2,0\n3,4,1.5\n");
    assert!(
        e.to_string()
            .starts_with("bad.csv:2: column 3 (the label): `1.5`"),
        "{e}"
    );
    let e = parse_err("1,2,0\n3,4,-1\n");
    assert!(e.to_string().contains("bad.csv:2:"), "{e}");
    let e = parse_err("1,inf,0\n");
    assert_eq!(e.to_string(), "bad.csv:1: column 2: `inf` is not finite");
    assert_eq!(parse_err("\n\n").to_string(), "bad.csv: no data rows");
    assert!(
        parse_err("1,0\n2,0\n")
            .to_string()
            .contains("at least 2 classes")
    );

    let dir = tempfile::tempdir().unwrap();
    let gz = dir.path().join("broken.csv.gz");
    std::fs::File::create(&gz)
        .unwrap()
        .write_all(&[0x1f, 0x8b, 8, 0, 1, 2, 3])
        .unwrap();
    let e = Dataset::load_csv(&gz, 1.0).unwrap_err();
    assert!(
        e.to_string().contains("broken.csv.gz") && e.to_string().contains("gzip"),
        "{e}"
    );
    let e = Dataset::load_csv(&dir.path().join("missing.csv"), 1.0).unwrap_err();
    assert!(e.to_string().contains("missing.csv"), "{e}");
    let e = DatasetSpec {
        test_fraction: Some(1.5),
        ..digits()
    }
    .load_split()
    .unwrap_err();
    assert!(e.to_string().contains("test_fraction"), "{e}");
}

#[test]
fn shards_cover_the_training_rows_and_have_equal_batch_counts() {
    let (train, _) = digits().load_split().unwrap();
    let plan = ShardPlan {
        shards: 3,
        batch_size: 32,
    };
    let bpe = plan.batches_per_epoch(train.len());
    let mut seen = vec![0u32; train.len()];
    for s in 0..3 {
        for r in plan.shard_rows(train.len(), s) {
            seen[r] += 1;
        }
        let batches: Vec<_> = shard_batches(&train, plan, s, 9, 2).collect();
        assert_eq!(batches.len() as u32, 2 * bpe);
        let rows: usize = batches[..bpe as usize].iter().map(|b| b.rows()).sum();
        assert_eq!(
            rows,
            plan.shard_rows(train.len(), s).len(),
            "one epoch covers the shard"
        );
        assert!(batches[bpe as usize - 1].ends_epoch());
        // Each epoch is shuffled differently.
        assert_ne!(batches[0].labels, batches[bpe as usize].labels);
    }
    assert!(
        seen.iter().all(|&n| n == 1),
        "every row in exactly one shard"
    );
}

/// Train and test rows in files of their own (`test_path`): no split is
/// drawn, both files are read as they are, and the classes are counted
/// over both (a class only the test file has still gets an output).
/// Validation rows in a third file (`validation_path`) likewise. A width
/// that differs names both files; `test_fraction` with `test_path` is an
/// error naming the key.
#[test]
fn explicit_train_test_and_validation_files_are_used_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let train = dir.path().join("train.csv");
    let test = dir.path().join("test.csv");
    let val = dir.path().join("val.csv");
    std::fs::write(&train, "1,2,0\n3,4,1\n5,6,0\n7,8,1\n").unwrap();
    std::fs::write(&test, "9,10,2\n11,12,0\n").unwrap();
    std::fs::write(&val, "13,14,1\n").unwrap();
    let spec = DatasetSpec {
        test_path: Some(test.clone()),
        validation_path: Some(val.clone()),
        ..DatasetSpec::new(&train)
    };
    let (mut tr, mut te) = spec.load_split().unwrap();
    assert_eq!(tr.labels, vec![0, 1, 0, 1], "the training file, in order");
    assert_eq!(te.labels, vec![2, 0], "the test file, in order");
    assert_eq!(te.features, vec![9.0, 10.0, 11.0, 12.0]);
    assert_eq!((tr.classes, te.classes), (3, 3));
    let v = spec.load_validation(&mut tr, &mut te).unwrap().unwrap();
    assert_eq!((v.labels.clone(), v.classes), (vec![1], 3));
    // Standardized on the training file's statistics only.
    let std_spec = DatasetSpec {
        standardize: true,
        ..spec.clone()
    };
    let (_, te_std, stats) = std_spec.load_split_with_stats().unwrap();
    let stats = stats.unwrap();
    assert_eq!(stats.mean, vec![4.0, 5.0]);
    assert!((te_std.features[0] - (9.0 - 4.0) / stats.sd[0]).abs() < 1e-6);

    std::fs::write(&test, "9,10,11,2\n").unwrap();
    let e = spec.load_split().unwrap_err().to_string();
    assert!(
        e.contains("test.csv has 3 features per row") && e.contains("train.csv has 2"),
        "{e}"
    );
    let e = DatasetSpec {
        test_fraction: Some(0.3),
        ..spec.clone()
    }
    .load_split()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("data.test_fraction") && e.contains("test_path"),
        "{e}"
    );
}

/// What numeric tools write: whole-number labels as floats (`3.0`,
/// `3.000e+00`), a byte-order mark (a spreadsheet's "CSV UTF-8"). A
/// pandas header of column numbers is refused naming the line, as is a
/// value the scale overflows; a fractional label stays an error.
#[test]
fn files_as_numeric_tools_write_them_are_read_or_refused_clearly() {
    let d = Dataset::parse_csv(
        "\u{feff}1,2,0.0\n3,4,1.000000000000000000e+00\n5,6,1\n",
        "f.csv",
        1.0,
    )
    .unwrap();
    assert_eq!(d.labels, vec![0, 1, 1]);
    assert_eq!(d.features[0], 1.0);
    let e = parse_err("0,1,2\n3,4,1\n").to_string();
    assert!(
        e.starts_with("bad.csv:1:") && e.contains("header line of column numbers"),
        "{e}"
    );
    let e = parse_err("1,2,1.5\n").to_string();
    assert!(
        e.contains("`1.5` is not a non-negative integer class"),
        "{e}"
    );
    let e = Dataset::parse_csv("3e38,1,0\n1,1,1\n", "big.csv", 2.0)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("big.csv:1:") && e.contains("times scale 2 is not finite"),
        "{e}"
    );
}

/// A split that leaves a part empty names the file it was drawn from.
#[test]
fn a_split_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tiny.csv");
    std::fs::write(&p, "1,0\n2,1\n").unwrap();
    let e = DatasetSpec {
        test_fraction: Some(0.9),
        ..DatasetSpec::new(&p)
    }
    .load_split()
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("tiny.csv") && e.contains("leaves a part empty"),
        "{e}"
    );
}
