//! Running a harness over a target's corpus and regression inputs in a regular test, naming the
//! file that panics.

use std::path::PathBuf;

pub fn dir(kind: &str, target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz").join(kind).join(target)
}

/// Every file of `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through `run`.
pub fn run_all(target: &str, run: fn(&[u8])) {
    let mut seen = 0;
    let mut panicked = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(dir(kind, target)) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
            if std::panic::catch_unwind(|| run(&data)).is_err() {
                panicked.push(path.display().to_string());
            }
        }
    }
    assert!(seen >= 5, "only {seen} inputs for {target}: is fuzz/corpus/{target}/ there?");
    assert!(panicked.is_empty(), "these inputs of {target} panic: {panicked:?}");
}
