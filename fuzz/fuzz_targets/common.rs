//! Shared by the fuzz targets: a scratch folder per fuzzing process (the parsers read files), and
//! the seed files (written by tests/mutation.rs, `write_the_fuzz_seed_corpus`).
use std::path::PathBuf;

/// `$TMPDIR/dualign-fuzz-<target>-<pid>`, created once.
pub fn scratch(target: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dualign-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// `fuzz/seeds/TARGET/NAME` without its first byte (the byte that picks a variant).
pub fn seed_body(target: &str, name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds").join(target).join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e} (run bash fuzz/run.sh, which writes the seeds)", path.display()));
    bytes[1..].to_vec()
}
