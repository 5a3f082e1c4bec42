//! The one-way layers inside dfastllm-core, which Cargo cannot see: models know nothing
//! of decoding, decoding nothing of the engine (docs/extending.md).

use std::path::{Path, PathBuf};

fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn modules_import_only_downward() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rules: [(&str, &[&str]); 3] = [
        (
            "models",
            &["crate::decoding", "crate::engine", "crate::generation"],
        ),
        ("decoding", &["crate::engine", "crate::generation"]),
        ("engine", &["crate::generation", "crate::demo"]),
    ];
    let mut checked = 0;
    for (module, forbidden) in rules {
        for file in sources(&src.join(module)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for path in forbidden {
                assert!(
                    !text.contains(path),
                    "{} reaches up into {path}",
                    file.display()
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 10, "found the module sources ({checked} files)");
}
