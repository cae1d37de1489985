//! Integration tests of manta-ml through its public API, on the real digits
//! dataset.
#![allow(missing_docs)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod data;
mod loader;
mod ps;
mod sched;
mod training;
mod tune;

use std::path::PathBuf;

use manta_ml::{DatasetSpec, TrainConfig};

/// The committed digits dataset with the example's split settings.
pub fn digits() -> DatasetSpec {
    let mut d =
        DatasetSpec::new(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("data/digits.csv.gz"));
    d.scale = 1.0 / 16.0;
    d
}

/// A training config over `digits()`; tweak its fields per test.
pub fn config(text: &str) -> TrainConfig {
    let base = format!(
        "job = \"t\"\n[data]\npath = {:?}\nscale = 0.0625\n{text}",
        digits().path.display().to_string()
    );
    TrainConfig::parse(&base, "test.toml", std::path::Path::new(".")).unwrap()
}
