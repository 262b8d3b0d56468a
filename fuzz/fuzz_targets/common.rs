//! Shared by the fuzz targets: a scratch folder per fuzzing process (the parsers read files).
use std::path::PathBuf;

/// `$TMPDIR/dualign-fuzz-<target>-<pid>`, created once.
pub fn scratch(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dualign-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}
