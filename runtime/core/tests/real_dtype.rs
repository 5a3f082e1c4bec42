//! `--dtype auto` on the real LLaDA-8B-Instruct config.json, which names no dtype
//! (its weights are bf16): a GPU runs bf16, read from the safetensors headers.

use std::path::Path;

use candle_core::{DType, Device};
use dfastllm_core::demo::{write_demo_model, DemoDType, DemoSpec};
use dfastllm_core::models::dtype::{declared, stored};
use dfastllm_core::models::{self, weight_files, Architecture, DTypeChoice};
use serde_json::Value;

fn real_llada_config() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/real/llada-8b-instruct/config.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn llada_without_a_declared_dtype_runs_in_the_stored_bf16_on_a_gpu_and_f32_on_the_cpu() {
    let config = real_llada_config();
    assert_eq!(declared(&config), None, "the real config names no dtype");
    let dir = tempfile::tempdir().unwrap();
    let spec = DemoSpec {
        dtype: DemoDType::Bf16,
        ..DemoSpec::tiny(Architecture::Llada)
    };
    write_demo_model(&spec, dir.path()).unwrap();
    // The demo's config.json, stripped of its dtype like the real one.
    let config_path = dir.path().join("config.json");
    let mut demo: Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    demo.as_object_mut().unwrap().remove("torch_dtype");
    std::fs::write(&config_path, demo.to_string()).unwrap();

    let files = weight_files(dir.path()).unwrap();
    assert_eq!(stored(&files).unwrap(), Some(DType::BF16));
    let gpu = DTypeChoice::Auto.resolve(declared(&demo), stored(&files).unwrap(), false);
    assert_eq!(gpu.dtype, DType::BF16, "{}", gpu.reason);
    let loaded = models::load(dir.path(), &Device::Cpu, DTypeChoice::Auto).unwrap();
    assert_eq!(loaded.dtype, DType::F32, "{}", loaded.dtype_reason);
}
