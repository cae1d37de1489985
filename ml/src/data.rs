//! Datasets: CSV (plain or gzip) into rows, a seeded stratified train/test
//! split, and the shard/batch plan data loaders follow.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataError;
use crate::rng::SplitMix64;

/// Where a dataset comes from and how it is split. Every loader builds the
/// same split from the same spec, so a loader can start on any node that has
/// the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// A CSV file, plain or gzip-compressed (detected from its first bytes).
    /// One row per line, no header, numbers only; the label is the last
    /// column, an integer class `0..classes` (written `3` or `3.0`). With
    /// `test_path`, this file holds the training rows only.
    pub path: PathBuf,
    /// The test rows in a file of their own (same format and width):
    /// no split is drawn, `path` is all training rows. Not with
    /// `test_fraction`.
    #[serde(default)]
    pub test_path: Option<PathBuf>,
    /// Validation rows in a file of their own, for the tuner's digits
    /// trainable (instead of carving `validation_fraction` out of the
    /// training rows); `manta train` does not use them.
    #[serde(default)]
    pub validation_path: Option<PathBuf>,
    /// Every feature is multiplied by this (the digits pixels are 0..16, so
    /// the example config uses 0.0625).
    #[serde(default = "one")]
    pub scale: f32,
    /// Fraction of rows held out for testing, per class (default 0.2;
    /// see [`DatasetSpec::test_fraction`]). Not with `test_path`.
    #[serde(default)]
    pub test_fraction: Option<f64>,
    /// Seed of the train/test split.
    #[serde(default)]
    pub split_seed: u64,
    /// Standardize every feature: minus its mean over the training rows,
    /// over their standard deviation (after `scale`). The statistics are
    /// those of the training split only; a checkpoint's run directory keeps
    /// them (`input.json`) so that serving folds them into the model.
    #[serde(default)]
    pub standardize: bool,
}

fn one() -> f32 {
    1.0
}

/// The test fraction when none is given.
pub const DEFAULT_TEST_FRACTION: f64 = 0.2;

impl DatasetSpec {
    /// A spec for `path` with the defaults (scale 1, 20% test, seed 0).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            test_path: None,
            validation_path: None,
            scale: 1.0,
            test_fraction: None,
            split_seed: 0,
            standardize: false,
        }
    }

    /// The fraction of rows held out for testing (0.2 unless given).
    pub fn test_fraction(&self) -> f64 {
        self.test_fraction.unwrap_or(DEFAULT_TEST_FRACTION)
    }

    /// Checks the spec's own values; errors name the key.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |key: &str, why: String| Err(DataError::Invalid(format!("data.{key}: {why}")));
        if self.test_path.is_some() && self.test_fraction.is_some() {
            return bad(
                "test_fraction",
                "not with data.test_path (the test rows are that file's)".into(),
            );
        }
        let f = self.test_fraction();
        if !(f > 0.0 && f < 1.0) {
            return bad(
                "test_fraction",
                format!("must be between 0 and 1 (exclusive), got {f}"),
            );
        }
        if !(self.scale.is_finite() && self.scale != 0.0) {
            return bad(
                "scale",
                format!("must be a non-zero number, got {}", self.scale),
            );
        }
        Ok(())
    }

    /// Loads the file and splits it (standardized when the spec says so).
    pub fn load_split(&self) -> Result<(Dataset, Dataset), DataError> {
        let (train, test, _) = self.load_split_with_stats()?;
        Ok((train, test))
    }

    /// [`load_split`](Self::load_split), with the statistics applied when
    /// the spec standardizes.
    pub fn load_split_with_stats(
        &self,
    ) -> Result<(Dataset, Dataset, Option<Standardization>), DataError> {
        let (mut train, mut test) = self.load_raw_split()?;
        if !self.standardize {
            return Ok((train, test, None));
        }
        let stats = Standardization::of(&train);
        stats.apply(&mut train);
        stats.apply(&mut test);
        Ok((train, test, Some(stats)))
    }
}

impl DatasetSpec {
    /// The training and test rows, not standardized: `path` split by
    /// `test_fraction`, or `path` and `test_path` as they are.
    pub fn load_raw_split(&self) -> Result<(Dataset, Dataset), DataError> {
        self.validate()?;
        let data = Dataset::load_csv(&self.path, self.scale)?;
        match &self.test_path {
            None => data
                .stratified_split(self.test_fraction(), self.split_seed)
                .map_err(|e| in_file(e, &self.path)),
            Some(test_path) => {
                let test = Dataset::load_csv(test_path, self.scale)?;
                let (train, test) = Dataset::matched(data, &self.path, test, test_path)?;
                Ok((train, test))
            }
        }
    }

    /// The validation rows of `validation_path`, if given, matched to
    /// `train` (same width; classes the larger of the two). `None` without
    /// a file.
    pub fn load_validation(
        &self,
        train: &mut Dataset,
        test: &mut Dataset,
    ) -> Result<Option<Dataset>, DataError> {
        let Some(p) = &self.validation_path else {
            return Ok(None);
        };
        let val = Dataset::load_csv(p, self.scale)?;
        let (t, mut val) = Dataset::matched(train.clone(), &self.path, val, p)?;
        *train = t;
        test.classes = test.classes.max(val.classes);
        train.classes = test.classes;
        val.classes = test.classes;
        Ok(Some(val))
    }
}

/// `e` with the file it is about in front (split errors know no file).
fn in_file(e: DataError, path: &Path) -> DataError {
    match e {
        DataError::Invalid(m) => DataError::Invalid(format!("{}: {m}", path.display())),
        other => other,
    }
}

/// Per-feature mean and standard deviation of a set of training rows: a
/// model trained on standardized features sees `(x - mean) / sd`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardization {
    /// Mean of each feature.
    pub mean: Vec<f32>,
    /// Standard deviation of each feature (1 where the feature is constant:
    /// such a feature is only centred).
    pub sd: Vec<f32>,
}

impl Standardization {
    /// The statistics of `train`'s features.
    pub fn of(train: &Dataset) -> Self {
        let (cols, n) = (train.cols, train.len().max(1));
        let mut sum = vec![0f64; cols];
        let mut sq = vec![0f64; cols];
        for row in train.features.chunks(cols.max(1)) {
            for (j, &x) in row.iter().enumerate() {
                sum[j] += f64::from(x);
                sq[j] += f64::from(x) * f64::from(x);
            }
        }
        let (mut mean, mut sd) = (Vec::with_capacity(cols), Vec::with_capacity(cols));
        for j in 0..cols {
            let m = sum[j] / n as f64;
            let var = (sq[j] / n as f64 - m * m).max(0.0);
            mean.push(m as f32);
            sd.push(if var > 1e-12 { var.sqrt() as f32 } else { 1.0 });
        }
        Self { mean, sd }
    }

    /// Standardizes `data`'s features in place.
    pub fn apply(&self, data: &mut Dataset) {
        for row in data.features.chunks_mut(data.cols.max(1)) {
            for ((x, &m), &sd) in row.iter_mut().zip(&self.mean).zip(&self.sd) {
                *x = (*x - m) / sd;
            }
        }
    }

    /// Checks that the statistics describe `features` features, every
    /// standard deviation positive and every value finite.
    pub fn check(&self, features: usize) -> Result<(), String> {
        if self.mean.len() != features || self.sd.len() != features {
            return Err(format!(
                "{} means and {} standard deviations for {features} features",
                self.mean.len(),
                self.sd.len()
            ));
        }
        if let Some(j) = (0..features)
            .find(|&j| !self.mean[j].is_finite() || !self.sd[j].is_finite() || self.sd[j] <= 0.0)
        {
            return Err(format!(
                "feature {j}: mean {} and standard deviation {} (must be finite, the deviation positive)",
                self.mean[j], self.sd[j]
            ));
        }
        Ok(())
    }
}

/// Rows of features with an integer class label each.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Row-major features, `rows * cols` values.
    pub features: Vec<f32>,
    /// One class per row.
    pub labels: Vec<u32>,
    /// Features per row.
    pub cols: usize,
    /// Number of classes (largest label + 1).
    pub classes: usize,
}

impl Dataset {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut features = Vec::with_capacity(indices.len() * self.cols);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            features.extend_from_slice(self.row(i));
            labels.push(self.labels[i]);
        }
        Dataset {
            features,
            labels,
            cols: self.cols,
            classes: self.classes,
        }
    }

    /// Reads a CSV file (gzip or plain). Errors name the file, the line and
    /// the problem.
    pub fn load_csv(path: &Path, scale: f32) -> Result<Dataset, DataError> {
        let file = path.display().to_string();
        let raw = std::fs::read(path).map_err(|e| DataError::Io {
            file: file.clone(),
            message: e.to_string(),
        })?;
        let text = if raw.starts_with(&[0x1f, 0x8b]) {
            let mut s = String::new();
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_string(&mut s)
                .map_err(|e| DataError::Io {
                    file: file.clone(),
                    message: format!("not a readable gzip text file: {e}"),
                })?;
            s
        } else {
            String::from_utf8(raw).map_err(|e| DataError::Io {
                file: file.clone(),
                message: format!("not UTF-8 text: {e}"),
            })?
        };
        Self::parse_csv(&text, &file, scale)
    }

    /// Parses CSV text; `file` names the source in errors.
    pub fn parse_csv(text: &str, file: &str, scale: f32) -> Result<Dataset, DataError> {
        let bad = |line: usize, problem: String| DataError::Parse {
            file: file.to_owned(),
            line,
            problem,
        };
        let mut features = Vec::new();
        let mut labels = Vec::new();
        let mut cols: Option<usize> = None;
        // The first line of each class, for the warning about rare ones.
        let mut label_lines: std::collections::BTreeMap<u32, usize> = Default::default();
        // A byte-order mark (a file saved as "CSV UTF-8") is not data.
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (n, line) in text.lines().enumerate() {
            let line_no = n + 1;
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() < 2 {
                return Err(bad(
                    line_no,
                    format!(
                        "expected at least 2 comma-separated columns (features, then the label), found {}",
                        fields.len()
                    ),
                ));
            }
            let width = *cols.get_or_insert(fields.len());
            if fields.len() != width {
                return Err(bad(
                    line_no,
                    format!(
                        "expected {width} columns like the first row, found {}",
                        fields.len()
                    ),
                ));
            }
            let (label_field, feature_fields) = fields.split_last().unwrap_or((&"", &[]));
            for (c, f) in feature_fields.iter().enumerate() {
                let v: f32 = f.parse().map_err(|_| {
                    bad(line_no, format!("column {}: `{f}` is not a number", c + 1))
                })?;
                if !v.is_finite() {
                    return Err(bad(
                        line_no,
                        format!("column {}: `{f}` is not finite", c + 1),
                    ));
                }
                let scaled = v * scale;
                if !scaled.is_finite() {
                    return Err(bad(
                        line_no,
                        format!("column {}: `{f}` times scale {scale} is not finite", c + 1),
                    ));
                }
                features.push(scaled);
            }
            // `3`, and `3.0` or `3e0` as numeric tools write whole numbers.
            let label = label_field
                .parse::<u32>()
                .ok()
                .or_else(|| {
                    let x: f64 = label_field.parse().ok()?;
                    (x.is_finite() && x >= 0.0 && x.fract() == 0.0 && x <= f64::from(u32::MAX))
                        .then_some(x as u32)
                })
                .ok_or_else(|| {
                    bad(
                        line_no,
                        format!(
                            "column {width} (the label): `{label_field}` is not a non-negative integer class"
                        ),
                    )
                })?;
            if label > 1_000_000 {
                return Err(bad(line_no, format!("label {label} is implausibly large")));
            }
            if labels.is_empty() && looks_like_an_index_header(&fields) {
                return Err(bad(
                    line_no,
                    format!(
                        "reads 0, 1, 2, ..., {}: a header line of column numbers (as pandas writes); the file must hold data rows only",
                        fields.len() - 1
                    ),
                ));
            }
            labels.push(label);
            label_lines.entry(label).or_insert(line_no);
        }
        let Some(width) = cols else {
            return Err(DataError::Empty {
                file: file.to_owned(),
            });
        };
        let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        if classes < 2 {
            return Err(DataError::Invalid(format!(
                "{file}: needs at least 2 classes, found {classes}"
            )));
        }
        // Rare classes are legal but often a mistake (a stray line, the
        // label in another column): say so.
        let mut count = vec![0usize; classes];
        for &l in &labels {
            count[l as usize] += 1;
        }
        for (class, &n) in count.iter().enumerate() {
            if n < 2 && labels.len() >= 4 * classes {
                let at = label_lines
                    .get(&(class as u32))
                    .map_or(String::new(), |l| format!(" (line {l})"));
                tracing::warn!(target: "manta::data", file, class, rows = n, "class {class} has {n} row(s){at} of {} in {file}: is the label the last column, and every line a data row?", labels.len());
            }
        }
        Ok(Dataset {
            features,
            labels,
            cols: width - 1,
            classes,
        })
    }

    /// `train` (from `train_file`) and `other` (from `other_file`) as parts
    /// of one dataset: the same width (an error naming both files
    /// otherwise), and the same number of classes (the larger).
    pub fn matched(
        mut train: Dataset,
        train_file: &Path,
        mut other: Dataset,
        other_file: &Path,
    ) -> Result<(Dataset, Dataset), DataError> {
        if train.cols != other.cols {
            return Err(DataError::Invalid(format!(
                "{} has {} features per row, {} has {}: the files must have the same columns",
                other_file.display(),
                other.cols,
                train_file.display(),
                train.cols
            )));
        }
        let classes = train.classes.max(other.classes);
        train.classes = classes;
        other.classes = classes;
        Ok((train, other))
    }

    /// A stratified split: each class keeps its share in both parts. The
    /// number of test rows is `ceil(len * test_fraction)` (as scikit-learn's
    /// `train_test_split`), spread over the classes by largest remainder.
    /// Both parts come out in a seeded random order.
    pub fn stratified_split(
        &self,
        test_fraction: f64,
        seed: u64,
    ) -> Result<(Dataset, Dataset), DataError> {
        if !(test_fraction > 0.0 && test_fraction < 1.0) {
            return Err(DataError::Invalid(format!(
                "test_fraction must be between 0 and 1 (exclusive), got {test_fraction}"
            )));
        }
        let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); self.classes];
        for (i, &l) in self.labels.iter().enumerate() {
            by_class[l as usize].push(i);
        }
        let n_test = ((self.len() as f64) * test_fraction).ceil() as usize;
        // Largest-remainder apportionment of n_test over the classes.
        let exact: Vec<f64> = by_class
            .iter()
            .map(|c| c.len() as f64 * n_test as f64 / self.len() as f64)
            .collect();
        let mut take: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
        let mut rest = n_test - take.iter().sum::<usize>();
        let mut order: Vec<usize> = (0..self.classes).collect();
        order.sort_by(|&a, &b| {
            let ra = exact[a] - exact[a].floor();
            let rb = exact[b] - exact[b].floor();
            rb.total_cmp(&ra).then(a.cmp(&b))
        });
        for &c in &order {
            if rest == 0 {
                break;
            }
            if take[c] < by_class[c].len() {
                take[c] += 1;
                rest -= 1;
            }
        }
        let mut train = Vec::new();
        let mut test = Vec::new();
        for (c, rows) in by_class.iter_mut().enumerate() {
            SplitMix64::derive(seed, &[1, c as u64]).shuffle(rows);
            test.extend_from_slice(&rows[..take[c]]);
            train.extend_from_slice(&rows[take[c]..]);
        }
        SplitMix64::derive(seed, &[2]).shuffle(&mut train);
        SplitMix64::derive(seed, &[3]).shuffle(&mut test);
        if train.is_empty() || test.is_empty() {
            return Err(DataError::Invalid(format!(
                "a split of {} rows with test_fraction {test_fraction} leaves a part empty",
                self.len()
            )));
        }
        Ok((self.select(&train), self.select(&test)))
    }
}

/// Whether a first row reads 0, 1, 2, ..., n (a header of column numbers).
fn looks_like_an_index_header(fields: &[&str]) -> bool {
    fields.len() > 2
        && fields
            .iter()
            .enumerate()
            .all(|(i, f)| f.parse::<f64>().ok() == Some(i as f64))
}

/// One batch of rows, as loaders serve it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The epoch this batch belongs to (from 0).
    pub epoch: u32,
    /// Its index in the epoch (from 0).
    pub index: u32,
    /// Batches in every epoch of this shard.
    pub batches_in_epoch: u32,
    /// Features per row.
    pub cols: u32,
    /// Row-major features.
    #[serde(with = "crate::wire::f32s")]
    pub features: Vec<f32>,
    /// One class per row.
    pub labels: Vec<u32>,
}

impl Batch {
    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Whether this is the last batch of its epoch.
    pub fn ends_epoch(&self) -> bool {
        self.index + 1 == self.batches_in_epoch
    }
}

/// How the training rows are cut into shards and batches. Pure functions of
/// the plan and the seed: any process computes the same batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardPlan {
    /// Number of shards (one per loader).
    pub shards: u32,
    /// Rows per batch.
    pub batch_size: u32,
}

impl ShardPlan {
    /// The training-row indices of `shard`: every `shards`-th row.
    pub fn shard_rows(&self, train_len: usize, shard: u32) -> Vec<usize> {
        (shard as usize..train_len)
            .step_by(self.shards as usize)
            .collect()
    }

    /// Batches per epoch, the same for every shard: the smallest shard cut
    /// into `batch_size` rows, rounded up. A shard with one more row puts it
    /// into its last batch, so every loader serves the same number of
    /// batches (synchronous training needs that).
    pub fn batches_per_epoch(&self, train_len: usize) -> u32 {
        let smallest = train_len / self.shards as usize;
        smallest.div_ceil(self.batch_size as usize) as u32
    }

    /// The row order of `epoch` for a shard of `shard_len` rows.
    pub fn epoch_order(&self, seed: u64, shard: u32, epoch: u32, shard_len: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..shard_len).collect();
        SplitMix64::derive(seed, &[4, shard as u64, epoch as u64]).shuffle(&mut order);
        order
    }

    /// The positions (into the epoch order) of batch `index`.
    pub fn batch_span(
        &self,
        train_len: usize,
        shard_len: usize,
        index: u32,
    ) -> std::ops::Range<usize> {
        let bpe = self.batches_per_epoch(train_len);
        let start = index as usize * self.batch_size as usize;
        let end = if index + 1 == bpe {
            shard_len
        } else {
            (start + self.batch_size as usize).min(shard_len)
        };
        start..end
    }

    /// Checks the plan against a training set.
    pub fn validate(&self, train_len: usize) -> Result<(), DataError> {
        if self.shards == 0 || self.batch_size == 0 {
            return Err(DataError::Invalid(
                "shards and batch_size must be at least 1".into(),
            ));
        }
        if train_len < self.shards as usize {
            return Err(DataError::Invalid(format!(
                "{} training rows cannot be cut into {} shards",
                train_len, self.shards
            )));
        }
        Ok(())
    }
}

/// Every batch of one shard in order, epoch by epoch: the sequence a loader
/// serves. The single-process reference loop and tests use it.
pub fn shard_batches(
    train: &Dataset,
    plan: ShardPlan,
    shard: u32,
    seed: u64,
    epochs: u32,
) -> impl Iterator<Item = Batch> + '_ {
    let rows = plan.shard_rows(train.len(), shard);
    let bpe = plan.batches_per_epoch(train.len());
    (0..epochs).flat_map(move |epoch| {
        let order = plan.epoch_order(seed, shard, epoch, rows.len());
        let rows = rows.clone();
        (0..bpe).map(move |index| {
            let span = plan.batch_span(train.len(), rows.len(), index);
            make_batch(train, &rows, &order[span], epoch, index, bpe)
        })
    })
}

pub(crate) fn make_batch(
    train: &Dataset,
    shard_rows: &[usize],
    positions: &[usize],
    epoch: u32,
    index: u32,
    bpe: u32,
) -> Batch {
    let mut features = Vec::with_capacity(positions.len() * train.cols);
    let mut labels = Vec::with_capacity(positions.len());
    for &p in positions {
        let r = shard_rows[p];
        features.extend_from_slice(train.row(r));
        labels.push(train.labels[r]);
    }
    Batch {
        epoch,
        index,
        batches_in_epoch: bpe,
        cols: train.cols as u32,
        features,
        labels,
    }
}
