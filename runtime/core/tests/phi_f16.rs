//! Phi-2 in f16: its q.k products overflow f16's range, so attention scores and softmax
//! run in f32 (as transformers' Phi does), and the logits stay finite.

use candle_core::{DType, Device};
use dfastllm_core::demo::{write_demo_model, DemoDType, DemoSpec};
use dfastllm_core::models::{self, Architecture, DTypeChoice};
use safetensors::tensor::TensorView;

#[test]
fn phi_attention_scores_do_not_overflow_in_f16() {
    let dir = tempfile::tempdir().unwrap();
    let spec = DemoSpec {
        dtype: DemoDType::F16,
        ..DemoSpec::tiny(Architecture::Phi)
    };
    write_demo_model(&spec, dir.path()).unwrap();
    // Queries and keys 300 times larger: their dot products pass f16's 65504.
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        let mut data = view.data().to_vec();
        if name.contains("q_proj.weight") || name.contains("k_proj.weight") {
            for pair in data.chunks_exact_mut(2) {
                let v = half::f16::from_le_bytes([pair[0], pair[1]]).to_f32() * 300.0;
                pair.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
        }
        tensors.push((name, view.shape().to_vec(), data));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                TensorView::new(safetensors::Dtype::F16, s.clone(), d).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();

    let loaded = models::load(dir.path(), &Device::Cpu, DTypeChoice::F16).unwrap();
    assert_eq!(loaded.dtype, DType::F16);
    let model = loaded.network.causal().unwrap();
    let prompt: Vec<u32> = (0..24).map(|i| 97 + i % 26).collect();
    let logits = model.forward_full(&[&prompt]).unwrap();
    let values: Vec<f32> = logits
        .to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(
        values.iter().all(|v| v.is_finite()),
        "logits must stay finite"
    );
}
