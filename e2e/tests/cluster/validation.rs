//! The CRD's schema and CEL rules: the API server itself refuses a bad spec, and the
//! error names the field, before the operator ever sees the object.

use dfastllm_e2e::{apply, diffusion_model, json, kubectl_result, namespace, Value};
use kube::api::ListParams;

use crate::helpers::dm_api;

#[tokio::test]
#[ignore = "needs a control plane: make e2e"]
async fn api_server_rejects_invalid_specs_naming_the_field() {
    let ns = namespace("e2e-invalid");
    let cases: [(&str, Value, &str); 12] = [
        ("gpu-count", json!({"gpu": {"count": 99}}), "spec.gpu.count"),
        (
            "remasking",
            json!({"decoding": {"remasking": "fastest"}}),
            "spec.decoding.remasking: Unsupported value: \"fastest\"",
        ),
        (
            "uri",
            json!({"model": {"uri": "s3://bucket/llada"}}),
            "spec.model.uri",
        ),
        (
            "block",
            json!({"decoding": {"genLength": 64, "blockLength": 24, "steps": null}}),
            "decoding.blockLength must divide decoding.genLength",
        ),
        ("replicas", json!({"replicas": -1}), "spec.replicas"),
        (
            "utilization",
            json!({"gpu": {"memoryUtilization": "1.5"}}),
            "spec.gpu.memoryUtilization",
        ),
        (
            "utilization-zero",
            json!({"gpu": {"memoryUtilization": "0"}}),
            "gpu.memoryUtilization must be above 0 and below 0.95",
        ),
        (
            "recursions",
            json!({"decoding": {"mor": {"enabled": true, "minRecursions": 3, "maxRecursions": 1}}}),
            "mor.minRecursions must not exceed mor.maxRecursions",
        ),
        (
            "no-uri",
            json!({"model": {"uri": null}}),
            "spec.model.uri: Required value",
        ),
        (
            "verifier-model",
            json!({"decoding": {"kvCache": "none", "apd": {"mode": "verifier"}}}),
            "decoding.apd.mode verifier needs decoding.apd.verifier.uri",
        ),
        (
            "verifier-cache",
            json!({"decoding": {"apd": {"mode": "verifier", "verifier": {"uri": "pvc://store/ar"}}}}),
            "decoding.apd.mode verifier needs decoding.kvCache none",
        ),
        (
            "verifier-uri",
            json!({"decoding": {"apd": {"verifier": {"uri": "s3://b/ar"}}}}),
            "spec.decoding.apd.verifier.uri",
        ),
    ];
    for (name, patch, expected) in cases {
        let obj = diffusion_model(&format!("bad-{name}"), "pvc://store/m", patch);
        let err = kubectl_result(&["apply", "-n", &ns, "-f", "-"], Some(&obj.to_string()))
            .expect_err(&format!("the API server accepted bad-{name}"));
        assert!(
            err.contains(expected),
            "bad-{name}: expected the error to name `{expected}`, got: {err}"
        );
    }
    assert!(
        dm_api(&ns)
            .await
            .list(&ListParams::default())
            .await
            .expect("listing DiffusionModels")
            .items
            .is_empty(),
        "a rejected DiffusionModel was stored"
    );
    // The control: the same object without the mistakes is accepted.
    apply(&ns, &diffusion_model("good", "pvc://store/m", json!({})));
    apply(
        &ns,
        &diffusion_model(
            "good-verifier",
            "pvc://store/m",
            json!({"decoding": {"kvCache": "none",
                   "apd": {"mode": "verifier", "verifier": {"uri": "pvc://store/ar", "mix": "0.6"}}}}),
        ),
    );
}
