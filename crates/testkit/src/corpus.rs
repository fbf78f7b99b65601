//! Access to the shared corpus of real, public HL7 v2 messages.
//!
//! The corpus lives outside the repository, in `shared/corpus/hl7v2` beside the checkout (see
//! `DEVELOPERS.md`). `CAUSEWAY_CORPUS` overrides the location. A missing corpus is a test
//! failure, never a skip: the tests that use it exist to prove we read every one of them.

use std::path::PathBuf;

/// One corpus file: its name (e.g. `hapi__ADT_A24__1.hl7`) and its bytes, unchanged.
#[derive(Debug, Clone)]
pub struct CorpusFile {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// The corpus directory: `$CAUSEWAY_CORPUS`, else `<workspace>/../shared/corpus/hl7v2`.
pub fn dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CAUSEWAY_CORPUS") {
        return PathBuf::from(dir);
    }
    workspace_root().join("../shared/corpus/hl7v2")
}

/// The workspace root (the folder holding the top `Cargo.toml`).
///
/// Read at run time from `CARGO_MANIFEST_DIR` (cargo sets it to the crate under test, two
/// levels below the root), so a build reused from another checkout still finds its own tree.
pub fn workspace_root() -> PathBuf {
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    crate_dir.join("../..")
}

/// Every `*.hl7` file of the corpus, sorted by name.
///
/// # Panics
/// When the corpus folder cannot be read or holds no messages: tests must not pass vacuously.
pub fn all() -> Vec<CorpusFile> {
    let dir = dir();
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read the HL7 corpus at {}: {e}", dir.display()));
    let mut files: Vec<CorpusFile> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "hl7").then_some(path)
        })
        .map(|path| CorpusFile {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes: std::fs::read(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display())),
        })
        .collect();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(
        !files.is_empty(),
        "the HL7 corpus at {} holds no .hl7 files",
        dir.display()
    );
    files
}

/// One corpus file by name.
///
/// # Panics
/// When the file does not exist.
pub fn file(name: &str) -> Vec<u8> {
    let path = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}
