//! Helpers shared by the core's integration tests.

use candle_core::Tensor;

/// Largest absolute elementwise difference of two same-shaped tensors.
#[allow(dead_code)]
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// A real checkpoint's metadata fixture (runtime/tests/fixtures/real/<family>).
// Each test binary includes this module and uses part of it.
#[allow(dead_code)]
pub fn real_fixture(family: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/real")
        .join(family)
}

/// The fixture as a real download holds it (vocabularies uncompressed), minus `leave_out`.
#[allow(dead_code)]
pub fn real_download(family: &str, leave_out: &[&str]) -> tempfile::TempDir {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(real_fixture(family)).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let (target, bytes) = match name.strip_suffix(".gz") {
            Some(plain) => {
                let mut bytes = Vec::new();
                flate2::read::GzDecoder::new(std::fs::File::open(&path).unwrap())
                    .read_to_end(&mut bytes)
                    .unwrap();
                (plain.to_string(), bytes)
            }
            None => (name.clone(), std::fs::read(&path).unwrap()),
        };
        if !leave_out.contains(&target.as_str()) {
            std::fs::write(dir.path().join(target), bytes).unwrap();
        }
    }
    dir
}
