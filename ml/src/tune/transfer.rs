//! Checkpoints between nodes.
//!
//! A trial on another node saves its checkpoints in a scratch directory of
//! that node and sends each one to the controller as bytes ([`Packed`], at
//! most `trial.checkpoint_limit_mb`) with the result it belongs to; the
//! controller stores it in the experiment directory (so `--resume` and the
//! store see it like a local one) and sends it back to whichever node
//! continues the trial. No shared file system is needed, and a node that
//! dies takes nothing with it that the experiment still needs.

use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::TuneError;

/// Files in one checkpoint at most.
pub const MAX_FILES: usize = 10_000;

/// A checkpoint directory as bytes: every regular file under it, by its
/// path relative to the directory (`/`-separated).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    /// The files.
    pub files: Vec<PackedFile>,
}

/// One file of a [`Packed`] checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedFile {
    /// Relative path, `/`-separated, no `..`.
    pub path: String,
    /// Content.
    #[serde(with = "serde_bytes")]
    pub bytes: Vec<u8>,
}

impl Packed {
    /// Bytes of file content.
    pub fn size(&self) -> u64 {
        self.files.iter().map(|f| f.bytes.len() as u64).sum()
    }
}

/// What a directory holds, cheaply: (path, length, modification time) of
/// every file, sorted. Equal fingerprints: nothing to send again.
pub type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut Vec<(String, PathBuf, std::fs::Metadata)>,
) -> Result<(), TuneError> {
    let entries = std::fs::read_dir(dir).map_err(|e| TuneError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TuneError::io(dir, e))?;
        let path = entry.path();
        // Symbolic links are not followed (and not sent).
        let meta = std::fs::symlink_metadata(&path).map_err(|e| TuneError::io(&path, e))?;
        if meta.is_dir() {
            walk(root, &path, out)?;
        } else if meta.is_file() {
            let rel = path
                .strip_prefix(root)
                .map_err(|_| TuneError::Actor(format!("{} escaped its root", path.display())))?;
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push((rel.join("/"), path, meta));
        }
        if out.len() > MAX_FILES {
            return Err(TuneError::Actor(format!(
                "checkpoint {}: more than {MAX_FILES} files",
                root.display()
            )));
        }
    }
    Ok(())
}

/// The fingerprint of `dir` (empty when it does not exist).
pub fn fingerprint(dir: &Path) -> Result<Fingerprint, TuneError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    let mut fp: Fingerprint = files
        .into_iter()
        .map(|(rel, _, meta)| (rel, meta.len(), meta.modified().ok()))
        .collect();
    fp.sort();
    Ok(fp)
}

/// Reads every file under `dir`; more than `limit` bytes in all is an
/// error naming the directory and the limit.
pub fn pack(dir: &Path, limit: u64) -> Result<Packed, TuneError> {
    let mut files = Vec::new();
    walk(dir, dir, &mut files)?;
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let total: u64 = files.iter().map(|f| f.2.len()).sum();
    if total > limit {
        return Err(TuneError::Actor(format!(
            "checkpoint {} holds {total} bytes, more than trial.checkpoint_limit_mb allows ({limit} bytes)",
            dir.display()
        )));
    }
    let mut out = Packed::default();
    for (rel, path, _) in files {
        let bytes = std::fs::read(&path).map_err(|e| TuneError::io(&path, e))?;
        out.files.push(PackedFile { path: rel, bytes });
    }
    if out.size() > limit {
        return Err(TuneError::Actor(format!(
            "checkpoint {} grew past trial.checkpoint_limit_mb ({limit} bytes) while it was read",
            dir.display()
        )));
    }
    Ok(out)
}

/// The relative path of a packed file, checked: plain names only (no
/// root, no `.` or `..`, nothing empty).
fn safe(rel: &str) -> Result<PathBuf, TuneError> {
    let bad = || {
        TuneError::Actor(format!(
            "checkpoint file path `{rel}` is not a plain relative path"
        ))
    };
    if rel.is_empty() || rel.contains('\\') || rel.contains('\0') {
        return Err(bad());
    }
    let mut p = PathBuf::new();
    for part in rel.split('/') {
        let mut c = Path::new(part).components();
        match (c.next(), c.next()) {
            (Some(Component::Normal(n)), None) if n == part => p.push(n),
            _ => return Err(bad()),
        }
    }
    Ok(p)
}

/// Writes `packed` as the directory `dir`, replacing what is there: into
/// `dir.part` first, then renamed, so a crash leaves either the old or the
/// new checkpoint, never half of one. More than `limit` bytes, more than
/// [`MAX_FILES`] files or a path that is not plain is refused before
/// anything is written.
pub fn unpack(packed: &Packed, dir: &Path, limit: u64) -> Result<(), TuneError> {
    if packed.size() > limit {
        return Err(TuneError::Actor(format!(
            "a checkpoint of {} bytes is more than trial.checkpoint_limit_mb allows ({limit} bytes)",
            packed.size()
        )));
    }
    if packed.files.len() > MAX_FILES {
        return Err(TuneError::Actor(format!(
            "a checkpoint of {} files (at most {MAX_FILES})",
            packed.files.len()
        )));
    }
    let rels = packed
        .files
        .iter()
        .map(|f| safe(&f.path))
        .collect::<Result<Vec<_>, _>>()?;
    let mut part = dir.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    if part.exists() {
        std::fs::remove_dir_all(&part).map_err(|e| TuneError::io(&part, e))?;
    }
    std::fs::create_dir_all(&part).map_err(|e| TuneError::io(&part, e))?;
    for (f, rel) in packed.files.iter().zip(rels) {
        let path = part.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| TuneError::io(parent, e))?;
        }
        std::fs::write(&path, &f.bytes).map_err(|e| TuneError::io(&path, e))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| TuneError::io(dir, e))?;
    }
    std::fs::rename(&part, dir).map_err(|e| TuneError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_round_trips_and_bad_paths_and_sizes_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("a.json"), b"{\"x\":1}").unwrap();
        std::fs::write(src.join("sub/b.bin"), [0u8, 1, 2, 255]).unwrap();
        let p = pack(&src, 1 << 20).unwrap();
        assert_eq!(p.files.len(), 2);
        assert_eq!(p.files[1].path, "sub/b.bin");
        let fp = fingerprint(&src).unwrap();
        assert_eq!(fp.len(), 2);
        assert_eq!(fingerprint(&tmp.path().join("none")).unwrap(), Vec::new());

        let dst = tmp.path().join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(dst.join("stale"), b"old").unwrap();
        unpack(&p, &dst, 1 << 20).unwrap();
        assert_eq!(
            std::fs::read(dst.join("sub/b.bin")).unwrap(),
            [0u8, 1, 2, 255]
        );
        assert!(!dst.join("stale").exists(), "replaced, not merged");
        assert_eq!(pack(&dst, 1 << 20).unwrap(), p);

        // Over the limit: refused on both sides.
        let e = pack(&src, 4).unwrap_err().to_string();
        assert!(e.contains("checkpoint_limit_mb"), "{e}");
        assert!(unpack(&p, &tmp.path().join("x"), 4).is_err());
        assert!(!tmp.path().join("x").exists());

        for bad in [
            "../evil",
            "/etc/passwd",
            "a/../../b",
            "",
            "a//b",
            "./a",
            "a\\b",
        ] {
            let evil = Packed {
                files: vec![PackedFile {
                    path: bad.into(),
                    bytes: vec![1],
                }],
            };
            let e = unpack(&evil, &tmp.path().join("evil"), 1 << 20).unwrap_err();
            assert!(
                e.to_string().contains("not a plain relative path"),
                "{bad}: {e}"
            );
        }
        assert!(!tmp.path().join("evil").exists());
        assert!(!tmp.path().join("etc").exists());
    }
}
